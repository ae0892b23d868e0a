/*-------------------------------------------------------------------------
 *
 * apply_internal.h
 *		What the files of the CDC apply share, and nothing else: the other
 *		roles see only apply_stream() and apply_stream_close() in
 *		bunnydb.h.
 *
 * The apply's layers, from the connection down:
 *
 *	applystream.c	the replication connection: receive loop, keepalives,
 *					feedback, restarts; the CopyRunSource of COPY runs
 *	apply.c			dispatch of pgoutput messages, their handlers
 *	applyxact.c		streamed transactions (protocol version 2)
 *	applybatch.c	the destination transaction of a batch; the flush map
 *	applywriter.c	how changes are written (ApplyWriter)
 *	fold.c			folded UPDATEs, for the writer
 *	relmap.c		the relation map and its prepared statements
 *	resync.c		changes of tables being copied again (asked by apply.c)
 *
 * Each file's state is its own (static); what another layer needs it gets
 * as an argument: the mirror, the binary mode, the ApplyBatch.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BUNNYDB_APPLY_INTERNAL_H
#define BUNNYDB_APPLY_INTERNAL_H

#include "bunnydb.h"

#include "executor/spi.h"
#include "replication/logicalproto.h"
#include "utils/hsearch.h"
#include "utils/rel.h"

#define STREAM_MAX_SUBXACTS		64	/* savepoints of one streamed transaction */

/* a prepared statement for one shape of change on one relation */
typedef struct ApplyPlan
{
	char	   *key;
	SPIPlanPtr	plan;
} ApplyPlan;

/* what we know of a source relation, keyed by its remote OID */
typedef struct RelMapEntry
{
	LogicalRepRelId remoteid;	/* hash key */
	LogicalRepRelation *remoterel;
	int32	   *remote_typmods;
	bool	   *remote_skip;	/* per column sent: an excluded column that a
								 * source without column lists sent anyway;
								 * NULL when none */
	int			remote_natts_sent;	/* columns in the source's tuples */
	MirrorTable *mt;
	const char *target_table;	/* replaying a resync queue into this table
								 * instead of the mapped one; NULL: not */
	char	   *qualname;		/* quoted destination name */
	bool		valid;			/* destination side below is built */
	Oid			localrelid;
	AttrNumber *attmap;			/* remote column -> local attnum */
	Oid		   *typid;			/* local type of each remote column */
	int32	   *typmod;
	int16	   *typlen;
	bool	   *typbyval;
	FmgrInfo   *infunc;
	Oid		   *inioparam;
	FmgrInfo   *recvfunc;
	Oid		   *recvioparam;
	bool	   *recv_ready;
	char	  **colsql;			/* quoted column names */
	bool	   *iskey;			/* remote column identifies the row */
	bool	   *text_eq;		/* compare through text (no equality operator) */
	bool		full_match;		/* match on all columns, one row via ctid */
	List	   *plans;			/* of ApplyPlan * */
	char	   *raw_relmsg;		/* the Relation message as received */
	int			raw_relmsg_len;
	bool		fold_checked;	/* fold.c has looked at the table since the
								 * entry was built: */
	bool		foldable;		/* UPDATEs of a key may be folded in a batch */
	HTAB	   *fold_hash;		/* folded UPDATEs of the open batch, by key */
	struct FoldEntry **fold_rows;	/* the same, in order of arrival */
	int			fold_nrows;
	int			fold_maxrows;
	MemoryContext fold_cxt;
	int64		n_ins;			/* counters of the open batch */
	int64		n_upd;
	int64		n_del;
	int64		saved_counts[STREAM_MAX_SUBXACTS][3];	/* at each savepoint */
} RelMapEntry;

/* a source type named by a Type message */
typedef struct RemoteType
{
	Oid			remoteid;
	char	   *nspname;
	char	   *typname;
} RemoteType;

/* relmap.c: the relation map, its prepared statements, decoded values */

extern void relmap_init(Mirror *m, bool binary);
extern void relmap_set_mirror(Mirror *m);
extern void relmap_update(LogicalRepRelation *rel, int32 *typmods, MirrorTable *mt,
						  const char *raw, int rawlen);
extern void relmap_update_type(LogicalRepTyp *typ);
extern void relmap_seq_init(HASH_SEQ_STATUS *status);
extern MemoryContext relmap_context(void);
extern MirrorTable *relmap_mirror_table(const char *nsp, const char *rel);
extern void relmap_retarget(MirrorTable *mt, const char *table);
extern void relmap_invalidate(Datum arg, Oid relid);
extern void relmap_free_plans(RelMapEntry *e);
extern RelMapEntry *relmap_get(LogicalRepRelId remoteid);
extern void relmap_strip_excluded(RelMapEntry *e, LogicalRepTupleData *tup);
extern RelMapEntry *relmap_find_table(MirrorTable *mt);
extern void relmap_tuple_to_datums(RelMapEntry *e, LogicalRepTupleData *tup,
								   Datum *values, char *nulls, char *present);
extern SPIPlanPtr relmap_get_plan(RelMapEntry *e, char kind, const char *setmask,
								  const char *wheremask, int nrows);
extern List *apply_list_append_in(MemoryContext cxt, List *list, void *datum);

/*
 * applywriter.c: how changes are written.  A COPY run reads the messages
 * that follow through a CopyRunSource: next() returns the next pgoutput
 * message of the stream (keepalives and the boundaries between blocks of
 * the streamed transaction are handled by the source; has_xid: it names
 * its transaction), NULL when the stream brings something else; keep()
 * keeps the last one returned, which ended the run, for the main loop.
 */
typedef struct CopyRunSource
{
	const char *(*next) (int *len, bool *has_xid);
	void		(*keep) (void);
} CopyRunSource;

typedef struct ApplyWriter
{
	/* one statement, through the batch's SPI connection if it has one */
	uint64		(*exec) (SPIPlanPtr plan, Datum *values, char *nulls);
	/* an INSERT row, buffered for a multi-row statement */
	void		(*insert) (RelMapEntry *e, const char *present, Datum *values, char *nulls);
	/* write the buffered INSERT rows if they are e's (NULL: whoever's) */
	void		(*flush_inserts) (RelMapEntry *e);
	/*
	 * An INSERT of e comes: its folded UPDATEs are written first; true if
	 * it is to start a COPY run (a long run of INSERTs)
	 */
	bool		(*begin_insert) (RelMapEntry *e);
	/* COPY into e from msg on; the rows, or -1 if msg cannot start one */
	int64		(*copy_run) (RelMapEntry *e, const char *msg, int len, TransactionId xid);
	/* fold an UPDATE into the pending rows of its key; false: write it now */
	bool		(*fold) (RelMapEntry *e, LogicalRepTupleData *newtup);
	/* write the folded UPDATEs of e (NULL: of every table) */
	void		(*flush_folded) (RelMapEntry *e);
	/* a message that is not an INSERT: the run of INSERTs is over */
	void		(*end_run) (void);
	/* forget whatever is pending, unwritten */
	void		(*discard) (void);
} ApplyWriter;

extern const ApplyWriter apply_writer;
extern void writer_init(bool binary, const CopyRunSource *source);
extern void writer_batch_begin(void);
extern void writer_batch_end(bool write);

/* the batch being applied; apply.c's, handed to the layers that need it */
typedef struct ApplyBatch
{
	bool		in_remote_txn;	/* inside a source transaction */
	bool		in_local_txn;	/* the destination transaction is open */
	XLogRecPtr	remote_final_lsn;	/* commit LSN of the source transaction
									 * (a lower bound for a streamed one) */
	int64		changes;		/* applied or queued in the batch */
	TimestampTz start;
	XLogRecPtr	last_end;		/* end LSN of its last source commit */
	TimestampTz last_commit_time;
	XLogRecPtr	keepalive_lsn;	/* keepalives received while it was open */
	XLogRecPtr	received_end;	/* latest source commit end seen, for the
								 * stream layer; Invalid after an abort */
	BunnyErrorContext errctx;	/* names the source transaction (its
								 * commit LSN) and the table of the change
								 * being applied; pushed by apply_init */
} ApplyBatch;

/* apply.c */
extern ApplyBatch *apply_init(Mirror *m, bool binary, const CopyRunSource *source);
extern void apply_set_mirror(Mirror *m);
extern void apply_dispatch(StringInfo s);

/* applybatch.c */
extern void batch_begin(ApplyBatch *b);
extern void batch_source_commit(ApplyBatch *b, XLogRecPtr end_lsn, TimestampTz committime);
extern void batch_flush(ApplyBatch *b, Mirror *m);
extern void batch_abort(ApplyBatch *b);
extern void batch_flushmap_init(XLogRecPtr startpos);
extern XLogRecPtr batch_flushed_upto(bool *empty);
extern bool batch_flush_pending(void);
extern void batch_flush_wal(void);

/* applyxact.c */
extern bool streamxact_accept(char action, StringInfo s, const char **msg, int *len);
extern void streamxact_start(StringInfo s, ApplyBatch *b, Mirror *m);
extern void streamxact_stop(void);
extern void streamxact_commit(StringInfo s, ApplyBatch *b, Mirror *m);
extern void streamxact_abort(StringInfo s, ApplyBatch *b);
extern void streamxact_give_up(const char *why);
extern void streamxact_reset(void);
extern bool streamxact_active(void);
extern bool streamxact_in_block(void);
extern TransactionId streamxact_change_xid(void);
extern bool streamxact_restart_pending(void);
extern const char *streamxact_restarting(TimestampTz *retry_at);
extern bool streamxact_retry_due(void);
extern bool streamxact_pass_boundary(const char *msg, int len);

/*
 * resync.c: the changes of tables being copied again while the mirror
 * streams.  The apply asks how to route each change (resync_route), and
 * hands resync_tick the means to replay a table's queue through its
 * handlers (ResyncReplayer) instead of resync calling into it.
 */
typedef enum ResyncRoute
{
	RESYNC_APPLY,				/* apply it */
	RESYNC_SKIP,				/* it is in the table's copy */
	RESYNC_QUEUED,				/* queued for after the running copy */
	RESYNC_APPLY_QUEUED			/* both: the old table stays live (swap) */
} ResyncRoute;

typedef struct ResyncReplayer
{
	/* the messages that follow are mt's queue: apply all of them */
	void		(*begin) (MirrorTable *mt);
	/* one raw pgoutput message (the stored Relation message, a change) */
	void		(*message) (const char *data, int len);
	/* write what the replay left pending, into the replay's target */
	void		(*finish) (void);
	/* back to the live stream (after an error too) */
	void		(*end) (void);
} ResyncReplayer;

extern ResyncRoute resync_route(Mirror *m, MirrorTable *mt, XLogRecPtr final_lsn,
								const char *msg, int len);
extern void resync_store_relation_message(Mirror *m, MirrorTable *mt);
extern void resync_tick(Mirror *m, const ResyncReplayer *replayer);
extern const ResyncReplayer apply_replayer; /* apply.c's */

/* fold.c: folded UPDATEs of the open batch, for the writer */
typedef uint64 (*FoldExecFunc) (SPIPlanPtr plan, Datum *values, char *nulls);

extern void fold_init(FoldExecFunc exec);
extern bool fold_update(RelMapEntry *e, LogicalRepTupleData *newtup);
extern void fold_flush_rel(RelMapEntry *e);
extern void fold_flush_all(void);
extern void fold_discard_all(void);

#endif							/* BUNNYDB_APPLY_INTERNAL_H */
