/*-------------------------------------------------------------------------
 *
 * bunnydb.h
 *		Declarations shared by the modules of bunnydb.
 *
 * Module map: one file per role, in four layers.  A file calls files of
 * its own layer only where an arrow says so, and otherwise only files of
 * the layers below; nothing calls up (the call graph between the object
 * files has no cycle).
 *
 * 1. entry points: what PostgreSQL or the user calls
 *	bunnydb.c	_PG_init: defines the settings, asks for shared memory,
 *				installs the guards, registers the launcher
 *	api.c		entry points of the SQL API: errors without PL/pgSQL context
 *	functions.c	SQL-callable C functions (the SQL API's remote work)
 *	guard.c		DROP EXTENSION / DROP OWNED / DROP DATABASE guards
 *	launcher.c	the static launcher and the per-database scan worker
 *	worker.c	the per-mirror worker: the state machine driving the
 *				phases (state.h, NOTES), control requests, errors
 *
 * 2. phases: the worker runs them; they never call each other
 *	setup.c		SETUP: source checks, publication, slot, destination tables
 *	snapshot.c	SNAPSHOT: the initial copy, and its recovery after a crash
 *	the apply (CDC), calling downwards (apply_internal.h):
 *	  applystream.c	the replication connection: receive, feedback, restart
 *	  -> apply.c	dispatch of pgoutput messages to their handlers
 *	  -> applyxact.c	transactions streamed while they run (protocol v2)
 *	  -> applybatch.c	the destination transaction of a batch, exactly once
 *	  -> applywriter.c	how changes are written: statements, COPY runs,
 *					folding, behind one function table (ApplyWriter)
 *	  -> fold.c		folding repeated UPDATEs of a batch
 *	resync.c	copies of tables while the others stream on; the apply
 *				reaches it at one point (resync_tick), between batches
 *
 * 3. shared modules the phases call down into
 *	copypool.c	the parallel copy: parts, claims, the snapshot workers
 *	  -> copypart.c	one part's COPY from the source; finishing a table
 *	schema.c	the schema model: a source table's description -> DDL
 *	relmap.c	the relation map of the apply and resync, its statements
 *
 * 4. the base
 *	catalog.c	the bunny.* catalog tables, the log, error helpers
 *	  -> state.c	states, the transition table and its trigger (state.h)
 *	source.c	every question asked of the source (source.h), with
 *	  sourcedesc.c	its tables and the checks that refuse what could not
 *	  sourcetypes.c	be published, and its user-defined types
 *	  -> stream.c	libpq plumbing: non-blocking connect, queries, COPY BOTH
 *	fastrecv.c	COPY from a callback; fast receive of plain-ASCII text
 *	workerslot.c	shared memory: worker slots, this process's own slot,
 *				the control hook the worker registers
 *	  -> settings.c	the bunny.* parameters
 *
 *-------------------------------------------------------------------------
 */
#ifndef BUNNYDB_H
#define BUNNYDB_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "libpq-fe.h"
#include "nodes/pg_list.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"

#include "state.h"

/* settings.c: the bunny.* parameters, written by the GUC machinery only */
extern int	bunny_max_mirror_workers;
extern int	bunny_retry_backoff_min;
extern int	bunny_retry_backoff_max;
extern int	bunny_log_retention_days;
extern int	bunny_launcher_naptime;
extern int	bunny_max_batch_latency;
extern bool bunny_stream_large_transactions;
extern void settings_define(void);
extern bool bunny_loaded_at_preload(void);

/*
 * One slot per mirror that should run (or recently ran) in this cluster.
 * Identity fields are protected by BunnyShared->lock; the live figures by
 * the slot's spinlock.
 */
typedef struct BunnyWorkerSlot
{
	bool		in_use;
	bool		wanted;			/* last scan of its database wants it running */
	bool		scan_pending;	/* its database is to be scanned again; keep the slot */
	bool		stopping;		/* drop_mirror is stopping it: do not start it again */
	bool		registered;		/* launcher holds a bgworker handle for it */
	bool		control_pending;	/* a control function committed: re-read catalog */
	bool		last_exit_failed;	/* worker's last run ended in an error */
	Oid			dboid;
	int32		mirror_id;
	char		mirror_name[NAMEDATALEN];
	pid_t		pid;			/* running worker, or 0 */
	Latch	   *latch;			/* its latch while running */
	int			failures;		/* consecutive failed runs, for the backoff */
	TimestampTz next_start;		/* not to be started before this */

	/* live figures, written by the worker */
	slock_t		mutex;
	XLogRecPtr	source_lsn;		/* source WAL position last reported by the walsender */
	XLogRecPtr	processed_lsn;	/* everything before this is committed here */
	TimestampTz oldest_pending_commit;	/* source commit time of oldest unapplied txn */
	TimestampTz last_commit_time;	/* source commit time of last applied txn */
	TimestampTz behind_since;	/* when the source was first seen ahead of us */
	XLogRecPtr	error_lsn;		/* where the last failed run stopped */
	XLogRecPtr	text_until;		/* stream in text until this is applied:
								 * binary met a column it cannot carry */
	ConditionVariable progress_cv;	/* broadcast when processed_lsn moves */
} BunnyWorkerSlot;

#define BUNNY_MAX_RESCAN_DBS 64

typedef struct BunnyShared
{
	LWLock	   *lock;
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	bool		rescan_all;
	int			n_rescan;
	Oid			rescan_dbs[BUNNY_MAX_RESCAN_DBS];
	/* result channel of the scan worker */
	bool		scan_found_extension;
	BunnyWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} BunnyShared;

/* workerslot.c: shared memory and this process's slot */
extern BunnyShared *BunnyState;
extern void workerslot_shmem_init(void);
extern BunnyWorkerSlot *bunny_find_slot(Oid dboid, int32 mirror_id);
extern void bunny_request_rescan(Oid dboid);
struct BackgroundWorker;
extern void bunny_dynamic_worker(struct BackgroundWorker *bgw, const char *function,
								 const char *what);
extern void workerslot_attach(int slotno, Oid *dboid, int32 *mirror_id, char **mirror_name);
extern int	workerslot_number(void);
extern bool workerslot_take_control_request(void);
struct Mirror;
extern void workerslot_set_control_hook(struct Mirror *(*hook) (void));
extern struct Mirror *bunny_check_control(void);
extern void workerslot_report_source_lsn(XLogRecPtr end);
extern void workerslot_report_paused_at(XLogRecPtr lsn);
extern void workerslot_report_start(XLogRecPtr startpos);
extern void workerslot_report_pending_commit(TimestampTz committime);
extern void workerslot_clear_pending_commit(void);
extern void workerslot_report_applied(XLogRecPtr processed, TimestampTz last_commit_time);
extern void workerslot_report_caught_up(XLogRecPtr end);
extern XLogRecPtr workerslot_error_lsn(void);
extern void workerslot_report_exit(bool failed, XLogRecPtr error_lsn);
extern void workerslot_text_until_source_lsn(void);
extern bool workerslot_text_required(void);

/* guard.c */
extern void bunny_install_guards(void);
extern PGDLLEXPORT void bunny_dropdb_check_main(Datum arg);

/* launcher.c */
extern PGDLLEXPORT void bunny_launcher_main(Datum arg);
extern PGDLLEXPORT void bunny_scan_main(Datum arg);
extern void bunny_register_launcher(void);

/* worker.c */
extern PGDLLEXPORT void bunny_mirror_worker_main(Datum arg);

/* source.c (the rest of it is in source.h) */
extern PGconn *mirror_connect(struct Mirror *m, bool replication);

/* description of one mapped table, from bunny.mirror_table */
typedef struct MirrorTable
{
	char	   *source_schema;
	char	   *source_table;
	char	   *dest_schema;
	char	   *dest_table;
	char	   *partition_key;
	List	   *exclude_columns;	/* of char * */
	TableStatus status;
	XLogRecPtr	sync_lsn;
	ResyncStrategy resync_strategy;
	ResyncState resync_state;
	char	   *copy_target;	/* table the copy goes to, if not dest_table */
	bool		created_by_bunny;
} MirrorTable;

/* the mirror this worker runs, from bunny.mirror and bunny.peer */
typedef struct Mirror
{
	int32		id;
	char	   *name;
	MirrorStatus status;
	MirrorPhase phase;
	char	   *pending_op;
	char	   *conninfo;
	char	   *slot_name;
	char	   *publication_name;
	char	   *origin_name;
	char	   *incarnation;
	bool		slot_requested;
	bool		publication_dirty;
	bool		require_password;	/* the peer was made by a non-superuser */
	bool		do_initial_snapshot;
	int			max_batch_size;
	int			idle_timeout_seconds;
	int			error_count;
	int			snapshot_rows_per_partition;
	int			snapshot_max_workers;
	int			snapshot_tables_in_parallel;
	bool		replicate_indexes;
	bool		replicate_foreign_keys;
	List	   *tables;			/* of MirrorTable * */
} Mirror;

/* catalog.c */
extern Mirror *catalog_load_mirror(int32 mirror_id, bool lock_row);
extern void catalog_set_status(int32 mirror_id, MirrorStatus status);
extern void catalog_set_status_phase(int32 mirror_id, MirrorStatus status, MirrorPhase phase);
extern void catalog_set_table_status(int32 mirror_id, TableStatus status);
extern void catalog_set_slot_requested(int32 mirror_id);
extern void catalog_record_error(int32 mirror_id, struct ErrorData *edata, bool permanent);
extern void catalog_clear_error(int32 mirror_id);
extern void catalog_finish_pause(int32 mirror_id);
extern void bunny_start_transaction(void);
extern void catalog_finish_resync(int32 mirror_id, const char *mirror_name);
struct SourceTable;
extern void catalog_record_copy_plan(struct SourceTable *st, Mirror *m, List *copy_columns);
extern void bunny_log(const char *mirror, const char *level, const char *message,
					  const char *details_json);
extern void bunny_dest_exec(const char *sql);
extern struct ErrorData *bunny_catch_error(void);
extern void bunny_mark_permanent(void);
extern bool bunny_error_permanent(void);
extern char *bunny_error_details(struct ErrorData *edata, const char *action);
extern char *bunny_spi_scalar(const char *sql, int nargs, Oid *argtypes,
							  Datum *values, const char *nulls);

/* stream.c */
extern PGconn *stream_connect(const char *conninfo, const char *appname,
							  bool replication);
extern PGresult *stream_exec(PGconn *conn, const char *sql);
extern PGresult *stream_exec_params(PGconn *conn, const char *sql, int nparams,
									const char *const *values);
extern PGresult *stream_exec_ok(PGconn *conn, const char *sql, ExecStatusType expected);
extern void stream_exec_command(PGconn *conn, const char *sql);
extern void stream_raise_result(PGconn *conn, PGresult *res);
extern void stream_disconnect(PGconn **conn);
extern void stream_start_replication(PGconn *conn, const char *slot,
									 XLogRecPtr startpos, const char *publication,
									 bool binary, bool streaming);
extern int	stream_receive(PGconn *conn, char **buffer, pgsocket *wait_fd);
extern void stream_send(PGconn *conn, const char *data, int len);
extern char *stream_scrub_conninfo_error(const char *msg);
extern XLogRecPtr stream_create_slot(PGconn *conn, const char *name, bool temporary,
									 bool export_snapshot, char **snapshot);
extern void bunny_require_password(PGconn *conn, bool required);


/* setup.c */
extern XLogRecPtr setup_run(PGconn *conn, Mirror *mirror, char **snapshot);
extern void setup_refresh_tables(PGconn *conn, Mirror *mirror);
extern void setup_check_source(PGconn *conn, Mirror *mirror);

/* resync.c */
extern void resync_stop(void);
extern bool resync_active(Mirror *m);

/* snapshot.c (the copy itself: copypool.h) */
extern void snapshot_run(Mirror *mirror, PGconn *holder, const char *snapshot_name,
						 XLogRecPtr sync_lsn);
extern XLogRecPtr snapshot_recover(PGconn *conn, Mirror *mirror);

/* applystream.c, apply.c */
extern void apply_stream(PGconn *conn, Mirror *mirror);
extern XLogRecPtr apply_error_lsn(void);
extern void apply_stream_close(bool final_feedback);

/* fastrecv.c */
struct FmgrInfo;
struct RelationData;
extern bool fastrecv_install(struct FmgrInfo *flinfo);
extern uint64 bunny_copy_from(struct RelationData *rel, List *attnames, bool binary,
							  int (*read_data) (void *outbuf, int minread, int maxread),
							  int flush_rows);

/*
 * Error context for workers (catalog.c): 'bunnydb mirror "m", table t,
 * source LSN x'.  The code that knows a piece of it pushes a frame of its
 * own, on the C stack or in state it owns, around the work the piece is
 * true for; what a frame leaves unset (NULL, InvalidXLogRecPtr) the frames
 * around it supply, and only the innermost frame prints, so an error gets
 * one line naming all three.
 */
typedef struct BunnyErrorContext
{
	ErrorContextCallback cb;
	const char *mirror;
	const char *table;			/* quoted, schema-qualified */
	XLogRecPtr	lsn;			/* commit LSN of the source transaction */
} BunnyErrorContext;

extern void bunny_errcontext_push(BunnyErrorContext *ec, const char *mirror,
								  const char *table, XLogRecPtr lsn);
extern void bunny_errcontext_pop(BunnyErrorContext *ec);

#endif							/* BUNNYDB_H */
