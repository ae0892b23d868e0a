/*-------------------------------------------------------------------------
 *
 * copypool.c
 *		The parallel copy that the initial snapshot (snapshot.c) and resync
 *		(resync.c) share: the part table, claiming parts, and the pool of
 *		snapshot workers that copy them.
 *
 * The coordinator (the mirror worker) stores the parts of the tables to
 * copy in bunny.snapshot_part (copypool_insert_parts), one row per row of
 * bunny.mirror_table_part, the plan setup or the resync recorded
 * (catalog_record_copy_plan), and runs up to
 * snapshot_max_parallel_workers snapshot workers (copypool_start, then
 * copypool_tick until every part is DONE).  Each worker imports the
 * snapshot exported with the slot (SET TRANSACTION SNAPSHOT), claims parts
 * one by one -- starting new tables only while fewer than
 * snapshot_num_tables_in_parallel are in progress -- and copies each
 * (copypart.c).  A worker exits on any error; the coordinator puts its
 * part back, and gives up after SNAPSHOT_MAX_ATTEMPTS attempts at one part.
 *
 *-------------------------------------------------------------------------
 */
#include "copypool.h"
#include "schema.h"
#include "source.h"

#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#define SNAPSHOT_MAX_ATTEMPTS	3

/* what a snapshot worker is told at start (bgw_extra) */
typedef struct SnapshotWorkerArgs
{
	Oid			dboid;
	int32		mirror_id;
	int32		slotno;
	pid_t		coordinator_pid;
	char		snapshot[64];
} SnapshotWorkerArgs;

/* in a snapshot worker: whose work we do */
static SnapshotWorkerArgs my_args;

/* a snapshot worker gives up when its coordinator is gone */
static void
check_coordinator(void)
{
	bool		alive;

	if (my_args.coordinator_pid == 0)
		return;					/* we are the coordinator */
	LWLockAcquire(BunnyState->lock, LW_SHARED);
	alive = BunnyState->slots[my_args.slotno].pid == my_args.coordinator_pid;
	LWLockRelease(BunnyState->lock);
	if (!alive)
		ereport(FATAL,
				(errcode(ERRCODE_ADMIN_SHUTDOWN),
				 errmsg("bunnydb snapshot worker exits: its mirror worker is gone")));
}

/* the claim of 0.2.0 and older catalogs, under the advisory lock */
#define CLAIM_GROUPED_SQL \
	"WITH tables AS ( " \
	"  SELECT source_schema, source_table, " \
	"         bool_or(status <> 'PENDING') AS started, " \
	"         bool_or(status <> 'DONE') AS unfinished " \
	"    FROM bunny.snapshot_part WHERE mirror_id = $1 " \
	"   GROUP BY 1, 2) " \
	"SELECT p.source_schema::text, p.source_table::text, p.part_no " \
	"  FROM bunny.snapshot_part p " \
	"  JOIN tables t USING (source_schema, source_table) " \
	" WHERE p.mirror_id = $1 AND p.status = 'PENDING' " \
	"   AND (t.started OR (SELECT count(*) FROM tables " \
	"                       WHERE started AND unfinished) < $2) " \
	" ORDER BY t.started DESC, p.source_schema, p.source_table, p.part_no " \
	" LIMIT 1"

/*
 * The first pending part of a table in progress, locked, in the order
 * (schema, table, part_no).  The tables in progress are at most
 * snapshot_num_tables_in_parallel rows of their partial index; for each,
 * in order, the first pending part is one probe of the index of unfinished
 * parts, and the scan stops at the first table that has one.  A part
 * another worker is claiming right now is skipped, not waited for.  The
 * table's row is key-share locked so that crash recovery, which clears the
 * flag of tables left with no part started, waits for this claim.
 */
#define CLAIM_STARTED_SQL \
	"SELECT p.source_schema::text, p.source_table::text, p.part_no " \
	"  FROM (SELECT t.source_schema, t.source_table FROM bunny.mirror_table t " \
	"         WHERE t.mirror_id = $1 AND t.copy_in_progress " \
	"         ORDER BY t.source_schema, t.source_table FOR KEY SHARE) t, " \
	"       LATERAL (SELECT q.source_schema, q.source_table, q.part_no " \
	"                  FROM bunny.snapshot_part q " \
	"                 WHERE q.mirror_id = $1 AND q.source_schema = t.source_schema " \
	"                   AND q.source_table = t.source_table AND q.status = 'PENDING' " \
	"                 ORDER BY q.part_no LIMIT 1 FOR UPDATE SKIP LOCKED) p " \
	" LIMIT 1"

/* the first pending part of any table, locked */
#define CLAIM_ANY_SQL \
	"SELECT p.source_schema::text, p.source_table::text, p.part_no FROM bunny.snapshot_part p " \
	" WHERE p.mirror_id = $1 AND p.status = 'PENDING' " \
	" ORDER BY p.source_schema, p.source_table, p.part_no LIMIT 1 FOR UPDATE SKIP LOCKED"

/*
 * Tables started and not finished.  The flag alone would do; the probe of
 * an unfinished part keeps a flag that outlived its parts from holding a
 * place for ever.
 */
#define COUNT_STARTED_SQL \
	"SELECT count(*)::int FROM bunny.mirror_table t " \
	" WHERE t.mirror_id = $1 AND t.copy_in_progress " \
	"   AND EXISTS (SELECT 1 FROM bunny.snapshot_part q " \
	"                WHERE q.mirror_id = $1 AND q.source_schema = t.source_schema " \
	"                  AND q.source_table = t.source_table AND q.status <> 'DONE')"

/*
 * Run a CLAIM_*_SQL; on a row, mark the part claimed (and its table in
 * progress, unless grouped: CLAIM_GROUPED_SQL) and return true.
 */
static bool
claim_with(const char *sql, bool grouped, int32 mirror_id, int tables_in_parallel,
	   MemoryContext cxt, char **schema, char **table, int *part_no)
{
	Oid			types[4] = {INT4OID, INT4OID, TEXTOID, INT4OID};
	Datum		vals[4];
	bool		isnull;

	vals[0] = Int32GetDatum(mirror_id);
	vals[1] = Int32GetDatum(tables_in_parallel);
	SPI_execute_with_args(sql, grouped ? 2 : 1, types, vals, NULL, false, 1);
	if (SPI_processed != 1)
		return false;
	*schema = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	*table = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
	*part_no = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	types[1] = TEXTOID;
	vals[1] = CStringGetTextDatum(*schema);
	vals[2] = CStringGetTextDatum(*table);
	vals[3] = Int32GetDatum(*part_no);
	SPI_execute_with_args("UPDATE bunny.snapshot_part "
						  "   SET status = 'RUNNING', worker_pid = pg_backend_pid(), "
						  "       attempts = attempts + 1 "
						  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3 "
						  "   AND part_no = $4", 4, types, vals, NULL, false, 0);
	if (grouped)
		return true;
	/* a no-op for a table in progress; starts a new one */
	SPI_execute_with_args("UPDATE bunny.mirror_table SET copy_in_progress = true "
						  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3 "
						  "   AND NOT copy_in_progress", 3, types, vals, NULL, false, 0);
	return true;
}

/*
 * Claim the next part, or return false.  A part of a table already in
 * progress comes first; a new table is started only while fewer than
 * tables_in_parallel tables are in progress.  Claims from tables in
 * progress run side by side (row locks, SKIP LOCKED); starting a new table
 * is serialised per mirror by an advisory lock so that the limit holds,
 * and looks at the tables in progress again once it holds the lock: one
 * may have been started meanwhile.
 */
static bool
claim_part(int32 mirror_id, int tables_in_parallel, char **schema, char **table,
	   int *part_no)
{
	Oid			types[1] = {INT4OID};
	Datum		vals[1];
	bool		found;
	MemoryContext cxt = CurrentMemoryContext;

	vals[0] = Int32GetDatum(mirror_id);
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (!copypart_claim_by_flag())
	{
		SPI_execute_with_args("SELECT pg_advisory_xact_lock(hashtext('bunnydb.snapshot'), $1)",
							  1, types, vals, NULL, false, 0);
		found = claim_with(CLAIM_GROUPED_SQL, true, mirror_id, tables_in_parallel, cxt, schema, table,
						   part_no);
	}
	else if (!(found = claim_with(CLAIM_STARTED_SQL, false, mirror_id, tables_in_parallel, cxt, schema,
								  table, part_no)))
	{
		bool		isnull;
		int			started;

		SPI_execute_with_args("SELECT pg_advisory_xact_lock(hashtext('bunnydb.snapshot'), $1)",
							  1, types, vals, NULL, false, 0);
		found = claim_with(CLAIM_STARTED_SQL, false, mirror_id, tables_in_parallel, cxt, schema, table,
						   part_no);
		if (!found)
		{
			SPI_execute_with_args(COUNT_STARTED_SQL, 1, types, vals, NULL, false, 1);
			started = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												  &isnull));
			if (started < tables_in_parallel)
				found = claim_with(CLAIM_ANY_SQL, false, mirror_id, tables_in_parallel, cxt, schema,
								   table, part_no);
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return found;
}

/*
 * A part failed: record why -- in the part's row and in bunny.logs(), where
 * the coordinator's "initial copy failed" error sends the user -- then exit;
 * the coordinator puts the part back or gives up after a few attempts.
 */
static void
snapshot_worker_handle_error(const char *mirror_name, int32 mirror_id)
{
	ErrorData  *edata = bunny_catch_error();
	Oid			types[3] = {INT4OID, INT4OID, TEXTOID};
	Datum		vals[3];
	char	   *part;

	vals[0] = Int32GetDatum(mirror_id);
	vals[1] = Int32GetDatum(MyProcPid);
	vals[2] = CStringGetTextDatum(edata->message);
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	part = bunny_spi_scalar("UPDATE bunny.snapshot_part SET error_message = $3 "
							" WHERE mirror_id = $1 AND worker_pid = $2 AND status = 'RUNNING' "
							"RETURNING format('part %s of %I.%I', part_no + 1, source_schema, source_table)",
							3, types, vals, NULL);
	bunny_log(mirror_name, "ERROR",
			  part ? psprintf("copying %s failed: %s", part, edata->message) : edata->message,
			  bunny_error_details(edata, NULL));
	PopActiveSnapshot();
	CommitTransactionCommand();
	proc_exit(1);
}

/*
 * Claim parts and copy them until none is left to claim, finishing each
 * table whose last part this copies.  A snapshot worker runs it, telling
 * its coordinator (the mirror worker in slot slotno) when a table is done;
 * the coordinator runs it itself (slotno -1) when no background worker is
 * free for a snapshot worker, and then obeys control requests between
 * parts.
 */
static void
copy_claimed_parts(PGconn *conn, const char *mirror_name, int32 mirror_id,
				   int tables_in_parallel, bool indexes, int slotno)
{
	for (;;)
	{
		char	   *schema;
		char	   *table;
		int			part_no;

		CHECK_FOR_INTERRUPTS();
		if (slotno < 0)
			(void) bunny_check_control();
		check_coordinator();
		if (!claim_part(mirror_id, tables_in_parallel, &schema, &table, &part_no))
			break;
		if (copypart_copy(conn, mirror_name, mirror_id, schema, table, part_no,
						  check_coordinator))
		{
			Oid			types[3] = {INT4OID, TEXTOID, TEXTOID};
			Datum		vals[3];
			char	   *kind;

			vals[0] = Int32GetDatum(mirror_id);
			vals[1] = CStringGetTextDatum(schema);
			vals[2] = CStringGetTextDatum(table);
			bunny_start_transaction();
			PushActiveSnapshot(GetTransactionSnapshot());
			kind = bunny_spi_scalar("SELECT CASE WHEN resync_state IS NULL THEN 'initial' "
									"            WHEN resync_strategy = 'add' THEN 'add' "
									"            ELSE 'resync' END "
									"  FROM bunny.mirror_table "
									" WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
									3, types, vals, NULL);
			if (kind && strcmp(kind, "initial") == 0)
				copypart_finish_table(conn, mirror_name, mirror_id, schema, table, indexes);
			else if (kind && strcmp(kind, "add") == 0)
			{
				/* a table added by update_tables: complete it; the mirror worker switches it */
				schema_apply_ddl(mirror_id, schema, table, false, indexes);
				schema_take_over_sequences(conn, mirror_name, mirror_id, schema, table, false);
			}
			PopActiveSnapshot();
			CommitTransactionCommand();
			/* the last part's counts, reported until now (copypart.c) */
			pgstat_progress_end_command();
			/* the mirror worker looks for copied tables; tell it now */
			if (slotno >= 0)
			{
				LWLockAcquire(BunnyState->lock, LW_SHARED);
				if (BunnyState->slots[slotno].latch)
					SetLatch(BunnyState->slots[slotno].latch);
				LWLockRelease(BunnyState->lock);
			}
		}
	}
}

/* entry point of a snapshot worker */
void
bunny_snapshot_worker_main(Datum arg)
{
	PGconn	   *conn;
	char	   *mirror_name;
	char	   *conninfo;
	bool		require_password;
	int			tables_in_parallel;
	bool		indexes;
	BunnyErrorContext errctx;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	memcpy(&my_args, MyBgworkerEntry->bgw_extra, sizeof(SnapshotWorkerArgs));
	BackgroundWorkerInitializeConnectionByOid(my_args.dboid, InvalidOid, 0);

	SetConfigOption("session_replication_role", "replica", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("search_path", "pg_catalog", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	/* the indexes of a copied table are built in one go: give them room */
	SetConfigOption("maintenance_work_mem", "256MB", PGC_SUSET, PGC_S_OVERRIDE);
	/* the copy's own statements are small; JIT never pays for them */
	SetConfigOption("jit", "off", PGC_USERSET, PGC_S_OVERRIDE);

	{
		Mirror	   *m;

		bunny_start_transaction();
		PushActiveSnapshot(GetTransactionSnapshot());
		MemoryContextSwitchTo(TopMemoryContext);
		m = catalog_load_mirror(my_args.mirror_id, false);
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(TopMemoryContext);
		if (m == NULL)
			proc_exit(0);
		mirror_name = m->name;
		conninfo = m->conninfo;
		require_password = m->require_password;
		tables_in_parallel = m->snapshot_tables_in_parallel;
		indexes = m->replicate_indexes;
	}
	SetConfigOption("application_name", psprintf("bunnydb:%s", mirror_name), PGC_USERSET, PGC_S_OVERRIDE);
	bunny_errcontext_push(&errctx, mirror_name, NULL, InvalidXLogRecPtr);

	/* errors end the process; the coordinator puts our part back */
	conn = stream_connect(conninfo, psprintf("bunnydb:%s", mirror_name), false);
	bunny_require_password(conn, require_password);
	source_import_snapshot(conn, my_args.snapshot);

	PG_TRY();
	{
		copy_claimed_parts(conn, mirror_name, my_args.mirror_id, tables_in_parallel, indexes,
						   my_args.slotno);
	}
	PG_CATCH();
	{
		snapshot_worker_handle_error(mirror_name, my_args.mirror_id);
	}
	PG_END_TRY();
	stream_exec_command(conn, "COMMIT");
	PQfinish(conn);
	proc_exit(0);
}

/* start one snapshot worker; NULL if no background worker slot is free */
static BackgroundWorkerHandle *
start_snapshot_worker(Mirror *m, const char *snapshot_name)
{
	BackgroundWorker bgw;
	BackgroundWorkerHandle *handle;
	SnapshotWorkerArgs args;

	memset(&args, 0, sizeof(args));
	args.dboid = MyDatabaseId;
	args.mirror_id = m->id;
	args.slotno = workerslot_number();
	args.coordinator_pid = MyProcPid;
	strlcpy(args.snapshot, snapshot_name, sizeof(args.snapshot));

	bunny_dynamic_worker(&bgw, "bunny_snapshot_worker_main", psprintf("snapshot %s", m->name));
	StaticAssertStmt(sizeof(SnapshotWorkerArgs) <= BGW_EXTRALEN, "snapshot worker args too large");
	memcpy(bgw.bgw_extra, &args, sizeof(args));
	if (!RegisterDynamicBackgroundWorker(&bgw, &handle))
		return NULL;
	return handle;
}

/* the rows of bunny.mirror_table_part, from a catalog of 0.3.0 or older */
#define LEGACY_PART_ROWS \
	"(SELECT t.mirror_id, t.source_schema, t.source_table, (p.n - 1)::int AS part_no, " \
	"        p.e->>'from' AS from_relation, p.e->>'where' AS predicate " \
	"   FROM bunny.mirror_table t, " \
	"        jsonb_array_elements(coalesce(t.copy_parts, '[]')) WITH ORDINALITY p(e, n))"

/*
 * (Re)create the parts of the tables of a mirror that match where_clause
 * (on bunny.mirror_table t) from the plan setup or a resync recorded
 * (catalog_record_copy_plan); returns how many.
 */
int
copypool_insert_parts(int32 mirror_id, const char *where_clause)
{
	Oid			types[1] = {INT4OID};
	Datum		vals[1] = {Int32GetDatum(mirror_id)};
	int			n;

	SPI_connect();
	SPI_execute_with_args(psprintf("DELETE FROM bunny.snapshot_part p USING bunny.mirror_table t "
								   " WHERE p.mirror_id = $1 AND t.mirror_id = p.mirror_id "
								   "   AND t.source_schema = p.source_schema "
								   "   AND t.source_table = p.source_table AND (%s)", where_clause),
						  1, types, vals, NULL, false, 0);
	SPI_execute_with_args(psprintf("INSERT INTO bunny.snapshot_part (mirror_id, source_schema, source_table, "
								   "                                 part_no, from_relation, predicate) "
								   "SELECT t.mirror_id, t.source_schema, t.source_table, p.part_no, "
								   "       p.from_relation, p.predicate "
								   "  FROM bunny.mirror_table t "
								   "  JOIN %s p USING (mirror_id, source_schema, source_table) "
								   " WHERE t.mirror_id = $1 AND (%s)",
								   schema_rows_typed() ? "bunny.mirror_table_part" : LEGACY_PART_ROWS,
								   where_clause),
						  1, types, vals, NULL, false, 0);
	n = (int) SPI_processed;
	/* their parts are all pending again: none of them is in progress */
	if (copypart_claim_by_flag())
		SPI_execute_with_args(psprintf("UPDATE bunny.mirror_table t SET copy_in_progress = false "
									   " WHERE t.mirror_id = $1 AND t.copy_in_progress AND (%s)",
									   where_clause),
							  1, types, vals, NULL, false, 0);

	/*
	 * Nobody else writes the table enough for autovacuum to analyze it in
	 * time: without statistics the planner sorts all pending parts for the
	 * claim of a new table instead of reading the first from the index of
	 * unfinished parts (10 ms against 0.1 ms at 10 000 parts).
	 */
	SPI_execute("ANALYZE bunny.snapshot_part", false, 0);
	SPI_finish();
	return n;
}

/* RUNNING parts whose worker is gone go back to PENDING (or fail the copy) */
static void
reclaim_parts(Mirror *m, List *live_pids)
{
	Oid			types[1] = {INT4OID};
	Datum		vals[1] = {Int32GetDatum(m->id)};
	StringInfoData pids;
	ListCell   *lc;
	char	   *failed;

	/* what this builds lives in the transaction: the loop ticks for hours */
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	initStringInfo(&pids);
	appendStringInfoString(&pids, "{0");
	foreach(lc, live_pids)
		appendStringInfo(&pids, ",%d", lfirst_int(lc));
	appendStringInfoChar(&pids, '}');
	/* the table, a tab, the message: the table's row gets the error too */
	failed = bunny_spi_scalar(psprintf("SELECT format('%%I.%%I', source_schema, source_table) || E'\\t' || "
									   "       format('part %%s of %%I.%%I failed %%s times', part_no + 1, "
									   "              source_schema, source_table, attempts) "
									   "       || coalesce(', last: ' || error_message, '') "
									   "  FROM bunny.snapshot_part "
									   " WHERE mirror_id = $1 AND status = 'RUNNING' "
									   "   AND NOT (worker_pid = ANY ('%s'::int[])) AND attempts >= %d "
									   " LIMIT 1", pids.data, SNAPSHOT_MAX_ATTEMPTS),
							  1, types, vals, NULL);
	if (failed)
	{
		char	   *tab = strchr(failed, '\t');
		BunnyErrorContext errctx;

		*tab = '\0';
		bunny_errcontext_push(&errctx, NULL, failed, InvalidXLogRecPtr);
		/* in phase CDC, the copy is a resync's or that of added tables */
		if (m->phase == PHASE_CDC)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("copy failed: %s", tab + 1),
					 errhint("Fix the cause given after \"last:\" (each attempt's error is an ERROR line of bunny.logs()); the copy is retried with a backoff, or at once by bunny.retry_mirror(). To give it up, call bunny.cancel_operation().")));
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("initial copy failed: %s", tab + 1),
				 errhint("Fix the cause given after \"last:\" (each attempt's error is an ERROR line of bunny.logs()); the copy is retried with a backoff, or at once by bunny.retry_mirror().")));
	}
	SPI_connect();
	SPI_execute_with_args(psprintf("UPDATE bunny.snapshot_part SET status = 'PENDING', worker_pid = NULL "
								   " WHERE mirror_id = $1 AND status = 'RUNNING' "
								   "   AND NOT (worker_pid = ANY ('%s'::int[]))", pids.data),
						  1, types, vals, NULL, false, 0);

	/*
	 * A table left with no part started is not in progress any more (the
	 * claim counts only tables with a part running or copied).  The row
	 * locks wait for claims being made in those tables: a claim's part must
	 * be visible before we decide the table has none.
	 */
	if (SPI_processed > 0 && copypart_claim_by_flag())
	{
		SPI_execute_with_args("SELECT 1 FROM bunny.mirror_table "
							  " WHERE mirror_id = $1 AND copy_in_progress FOR UPDATE",
							  1, types, vals, NULL, false, 0);
		SPI_execute_with_args("UPDATE bunny.mirror_table t SET copy_in_progress = false "
							  " WHERE t.mirror_id = $1 AND t.copy_in_progress "
							  "   AND NOT EXISTS (SELECT 1 FROM bunny.snapshot_part q "
							  "                    WHERE q.mirror_id = $1 "
							  "                      AND q.source_schema = t.source_schema "
							  "                      AND q.source_table = t.source_table "
							  "                      AND q.status <> 'PENDING')",
							  1, types, vals, NULL, false, 0);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* snapshot workers copying the parts of one exported snapshot */
struct CopyPool
{
	char	   *snapshot;
	PGconn	   *holder;			/* the connection that exported the snapshot */
	int			nworkers;
	BackgroundWorkerHandle **handles;
	TimestampTz last_refill;
};

/*
 * The most copy workers worth running at once on this destination: twice
 * its CPUs.  A copy worker is CPU-bound (per row, the destination's COPY
 * costs about three times the source's COPY TO), and all the workers of a
 * table extend the same relation, so workers beyond that only contend: on
 * 2 CPUs, 8 workers copied pgbench_accounts 5-10 % slower than 4.
 */
static int
worker_cap(void)
{
	long		ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	return ncpu > 0 ? (int) Min(2 * ncpu, 64) : 64;
}

/*
 * A pool of up to snapshot_max_parallel_workers workers for nparts parts,
 * and no more than worker_cap().
 */
CopyPool *
copypool_start(Mirror *m, PGconn *holder, const char *snapshot_name, int nparts)
{
	CopyPool *pool = MemoryContextAllocZero(TopMemoryContext, sizeof(CopyPool));

	pool->snapshot = MemoryContextStrdup(TopMemoryContext, snapshot_name);
	pool->holder = holder;
	pool->nworkers = Max(1, Min(Min(m->snapshot_max_workers, nparts), worker_cap()));
	pool->handles = MemoryContextAllocZero(TopMemoryContext,
										   sizeof(BackgroundWorkerHandle *) * pool->nworkers);
	return pool;
}

/*
 * Reap exited workers, put the parts of dead ones back, keep the pool full
 * while there is work.  Returns the number of parts not yet DONE, counted
 * up to one more than the pool's size (which is all the pool needs).
 */
int
copypool_tick(CopyPool *pool, Mirror *m)
{
	Oid			types[1] = {INT4OID};
	Datum		vals[1] = {Int32GetDatum(m->id)};
	List	   *live = NIL;
	int			nlive = 0;
	char	   *left;
	int			nleft;

	/*
	 * The snapshot lives as long as the connection that exported it: if the
	 * source restarted, no worker can import it any more, and the copy must
	 * start over from a new one (the caller's error path does that).
	 */
	if (pool->holder != NULL &&
		(!PQconsumeInput(pool->holder) || PQstatus(pool->holder) == CONNECTION_BAD))
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("lost the source connection that holds the copy's snapshot: %s",
						pchomp(PQerrorMessage(pool->holder))),
				 errdetail("The copy starts again from a new snapshot.")));

	for (int i = 0; i < pool->nworkers; i++)
	{
		pid_t		pid = 0;
		BgwHandleStatus status;

		if (pool->handles[i] == NULL)
			continue;
		status = GetBackgroundWorkerPid(pool->handles[i], &pid);
		if (status == BGWH_STOPPED)
		{
			pfree(pool->handles[i]);
			pool->handles[i] = NULL;
			continue;
		}
		/* a worker not yet started has no pid (and sets none) */
		if (status == BGWH_STARTED && pid > 0)
			live = lappend_int(live, pid);
		nlive++;
	}
	reclaim_parts(m, live);
	list_free(live);

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	/* counting stops where it could start no more workers */
	left = bunny_spi_scalar(psprintf("SELECT count(*)::text FROM ("
									 "SELECT 1 FROM bunny.snapshot_part "
									 " WHERE mirror_id = $1 AND status <> 'DONE' "
									 " ORDER BY source_schema, source_table, part_no LIMIT %d) s",
									 pool->nworkers + 1),
							1, types, vals, NULL);
	PopActiveSnapshot();
	CommitTransactionCommand();
	nleft = left ? atoi(left) : 0;

	/* refill at most once a second: failing workers must not spin */
	if (!TimestampDifferenceExceeds(pool->last_refill, GetCurrentTimestamp(), 1000))
		return nleft;
	pool->last_refill = GetCurrentTimestamp();
	for (int i = 0; i < pool->nworkers && nlive < nleft; i++)
	{
		if (pool->handles[i] != NULL)
			continue;
		pool->handles[i] = start_snapshot_worker(m, pool->snapshot);
		if (pool->handles[i] != NULL)
			nlive++;
	}
	if (nleft > 0 && nlive == 0)
	{
		PGconn	   *conn;

		/*
		 * No background worker is free for a snapshot worker.  Failing here
		 * would give our own worker slot back only to take it again after
		 * the backoff, for ever, while every mirror in the same state did
		 * the same: copy in this process instead, one part at a time, and
		 * say so.
		 */
		bunny_start_transaction();
		PushActiveSnapshot(GetTransactionSnapshot());
		bunny_log(m->name, "WARNING",
				  "no background worker free for a snapshot worker: the mirror worker copies the tables itself, one part at a time",
				  "{\"hint\": \"Raise max_worker_processes (the copy uses up to snapshot_max_parallel_workers more).\"}");
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_activity(STATE_RUNNING, "bunnydb: initial copy, in the mirror worker");
		conn = mirror_connect(m, false);
		source_import_snapshot(conn, pool->snapshot);
		copy_claimed_parts(conn, m->name, m->id, m->snapshot_tables_in_parallel,
						   m->replicate_indexes, -1);
		stream_exec_command(conn, "COMMIT");
		stream_disconnect(&conn);
		pool->last_refill = 0;
		return 1;				/* count again at the next tick */
	}
	return nleft;
}

/* how many workers the pool runs at most */
int
copypool_size(CopyPool *pool)
{
	return pool->nworkers;
}

/* wait for the pool's workers to exit (one may still be finishing a table) */
void
copypool_wait(CopyPool *pool)
{
	for (int i = 0; i < pool->nworkers; i++)
		if (pool->handles[i] != NULL)
		{
			(void) WaitForBackgroundWorkerShutdown(pool->handles[i]);
			pfree(pool->handles[i]);
			pool->handles[i] = NULL;
		}
}
