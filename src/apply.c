/*-------------------------------------------------------------------------
 *
 * apply.c
 *		CDC phase: apply the pgoutput messages of the mirror's slot to the
 *		destination tables.  The dispatcher and the message handlers; the
 *		layers around them are listed in apply_internal.h: the connection
 *		(applystream.c), streamed transactions (applyxact.c), the batch's
 *		transaction (applybatch.c), the writing of changes (applywriter.c,
 *		fold.c), the relation map (relmap.c) and resyncs (resync.c).
 *
 * NOTES
 *
 *	Exactly once.  Data and the replication origin's position commit in
 *	one destination transaction, and the slot only hears of positions whose
 *	commit is on disk: see applybatch.c.
 *
 *	Batching.  Protocol version 1 sends each source transaction whole,
 *	after its commit.  Changes of many source transactions are applied in
 *	one destination transaction, which only ever ends at a source COMMIT:
 *	readers never see half of a source transaction.  A batch ends when
 *	max_batch_size changes are pending, when idle_timeout_seconds (or, under
 *	a steady load, bunny.max_batch_latency) have passed since it began, or --
 *	the common case when the source is not flooding us -- as soon as nothing
 *	more is waiting on the connection (applystream.c), which keeps latency
 *	low.  A transaction streamed while it runs (protocol version 2) is a
 *	batch of its own: applyxact.c.
 *
 *	Statements.  The handlers decide what to write and hand it to the
 *	writer (applywriter.c) through its function table: one prepared
 *	statement, a row for a multi-row INSERT, a COPY run for a long run of
 *	INSERTs, an UPDATE to fold.  Buffered rows wait across source
 *	transactions of the batch; the dispatcher and the handlers flush them
 *	before anything that could see them or depend on their order.
 *
 *	Folding.  Within a batch, UPDATEs that keep their row's key are merged
 *	per key and written as multi-row UPDATEs where that cannot be told
 *	apart from applying each of them (fold.c).  Other tables are applied
 *	change by change.
 *
 *	Applying.  Each change becomes one execution of a prepared statement
 *	through SPI.  Statements are prepared (in relmap.c) once per relation
 *	and shape (which columns are set, which identify the row) and kept
 *	across batches; relcache invalidation of the destination table throws
 *	them away.
 *	UPDATEs leave out columns the source marks as unchanged TOAST, so the
 *	destination keeps its value.  Identity columns GENERATED ALWAYS get the
 *	source's values, as in PostgreSQL's own apply: INSERTs say OVERRIDING
 *	SYSTEM VALUE, and UPDATEs, which SQL does not let assign them at all,
 *	leave them out where they identify the row and keep their value.
 *	Rows are identified by the replica identity columns; for REPLICA
 *	IDENTITY FULL without a primary key on the destination, by all columns
 *	with IS NOT DISTINCT FROM (through text for types without equality),
 *	one row at a time via its ctid, so that of two identical rows only one
 *	is touched.  A row to update that does not exist is an error (the
 *	destination has diverged; skipping would lose data); a row to delete
 *	that does not exist is only a warning.  A row that a destination
 *	BEFORE trigger firing for the worker (ENABLE REPLICA or ALWAYS) skips
 *	by returning NULL is skipped, as in PostgreSQL's own apply: when a
 *	statement touched fewer rows than it should have, the rows are looked
 *	for by key to tell the two apart, so the common path costs nothing.
 *
 *	Resyncs.  Whether a change of a table being copied again is applied,
 *	skipped or queued is resync.c's decision (resync_route, asked in one
 *	place, change_route); the queue is replayed later through the handlers
 *	here, which resync.c reaches only through the ResyncReplayer given to
 *	resync_tick.
 *
 *	Memory.  Every message is decoded and applied in a context that is
 *	reset after the message (applystream.c), so nothing grows with the
 *	size of a source transaction; plans and the relation map live in a
 *	cache context.
 *
 *-------------------------------------------------------------------------
 */
#include "apply_internal.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "replication/logicalproto.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

/* the batch being applied: its destination transaction is applybatch.c's */
static ApplyBatch batch = {0};

static Mirror *mirror;

/* the message being handled, raw, for the resync queue */
static const char *current_msg = NULL;
static int	current_msg_len = 0;

/* replaying a resync queue: apply everything, to the table of mt */
typedef struct ApplyReplay
{
	bool		active;
	MirrorTable *mt;
	XLogRecPtr	saved_final_lsn;	/* the live stream's, back after it */
	const char *saved_table;	/* the table errors named before it */
} ApplyReplay;

static ApplyReplay replay = {false, NULL, InvalidXLogRecPtr, NULL};

static const ApplyWriter *writer = &apply_writer;

/*
 * The typmods of a Relation message: logicalrep_read_rel() reads and drops
 * them, and we need them to add a column with the source's exact type.
 */
static int32 *
parse_relation_typmods(const char *data, int len, int start)
{
	StringInfoData s;
	int			natts;
	int32	   *typmods;

	s.data = (char *) data;
	s.len = len;
	s.maxlen = len;
	s.cursor = start;
	(void) pq_getmsgint(&s, 4); /* relid */
	(void) pq_getmsgstring(&s); /* nspname */
	(void) pq_getmsgstring(&s); /* relname */
	(void) pq_getmsgbyte(&s);	/* replident */
	natts = pq_getmsgint(&s, 2);
	typmods = palloc(sizeof(int32) * (natts + 1));
	for (int i = 0; i < natts; i++)
	{
		(void) pq_getmsgbyte(&s);	/* flags */
		(void) pq_getmsgstring(&s); /* name */
		(void) pq_getmsgint(&s, 4); /* type */
		typmods[i] = pq_getmsgint(&s, 4);
	}
	return typmods;
}

/* Relation message: (re)describe a source relation */
static void
apply_handle_relation(StringInfo s)
{
	int			start = s->cursor;
	LogicalRepRelation *rel = logicalrep_read_rel(s);
	int32	   *typmods = parse_relation_typmods(s->data, s->len, start);
	MirrorTable *mt;

	/*
	 * pgoutput also describes the partition a change of a partitioned table
	 * came from, next to the root it is published as: unmapped relations are
	 * remembered, and only a change on one is an error.
	 */
	mt = relmap_mirror_table(rel->nspname, rel->relname);

	relmap_update(rel, typmods, mt, current_msg, current_msg_len);

	/* a table being copied again keeps its latest description for replay */
	if (mt && !replay.active && mt->resync_state == RESYNC_COPYING &&
		IsTransactionState())
		resync_store_relation_message(mirror, mt);
}

/* Type message: remember the name of a source user-defined type */
static void
apply_handle_type(StringInfo s)
{
	LogicalRepTyp typ;

	logicalrep_read_typ(s, &typ);
	relmap_update_type(&typ);
}

/*
 * The entry of the relation a change is for (NULL: not mapped).  Errors
 * name its table from here to the source transaction's commit, when the
 * change may be written (buffered rows, folded UPDATEs).
 */
static RelMapEntry *
apply_get_rel(LogicalRepRelId relid)
{
	RelMapEntry *e = relmap_get(relid);

	if (e != NULL)
		batch.errctx.table = e->qualname;
	return e;
}

/*
 * How a change of e is to be applied, given the copies of its table: the
 * one place the apply asks resync.c.  With queue, a change to be queued is
 * queued (the current message, in the batch's transaction).  A replay
 * applies everything it is given.
 */
static ResyncRoute
change_route(RelMapEntry *e, bool queue)
{
	if (replay.active)
		return RESYNC_APPLY;
	return resync_route(mirror, e->mt, batch.remote_final_lsn,
						queue ? current_msg : NULL, current_msg_len);
}

/*
 * Route a change: true if it is to be applied now.  Queued-only changes
 * are counted here, applied ones where they are applied.
 */
static bool
route_change(RelMapEntry *e, int64 *counter)
{
	switch (change_route(e, true))
	{
		case RESYNC_SKIP:
			return false;
		case RESYNC_QUEUED:
			batch.changes++;
			(*counter)++;
			return false;
		case RESYNC_APPLY_QUEUED:
			batch.changes++;
			return true;
		case RESYNC_APPLY:
			break;
	}
	return true;
}

/* INSERT */
static void
apply_handle_insert(StringInfo s)
{
	LogicalRepTupleData newtup;
	LogicalRepRelId relid = logicalrep_read_insert(s, &newtup);
	RelMapEntry *e = apply_get_rel(relid);
	int			n = e ? e->remoterel->natts : 0;
	Datum	   *values = palloc(sizeof(Datum) * (n + 1));
	char	   *nulls = palloc(n + 1);
	char	   *present = palloc0(n + 1);

	relmap_strip_excluded(e, &newtup);

	if (e == NULL)
		return;
	if (writer->begin_insert(e) && !replay.active && change_route(e, false) == RESYNC_APPLY)
	{
		int64		rows = writer->copy_run(e, current_msg, current_msg_len,
											streamxact_change_xid());

		if (rows >= 0)
		{
			e->n_ins += rows;
			batch.changes += rows;
			return;
		}
	}
	if (!route_change(e, &e->n_ins))
		return;
	relmap_tuple_to_datums(e, &newtup, values, nulls, present);
	/* parameters follow the columns present, in order */
	{
		int			k = 0;

		for (int i = 0; i < n; i++)
			if (present[i] == '1')
			{
				values[k] = values[i];
				nulls[k] = nulls[i];
				k++;
			}
	}
	writer->insert(e, present, values, nulls);
	if (!replay.active)
		e->n_ins++;
	batch.changes++;
}

/* parameters for the row-identifying columns of keytup */
static void
key_params(RelMapEntry *e, LogicalRepTupleData *keytup, Datum *values, char *nulls,
		   char *wheremask, int *k)
{
	int			n = e->remoterel->natts;
	Datum	   *kv = palloc(sizeof(Datum) * (n + 1));
	char	   *kn = palloc(n + 1);
	char	   *kp = palloc0(n + 1);

	relmap_tuple_to_datums(e, keytup, kv, kn, kp);
	for (int i = 0; i < n; i++)
	{
		wheremask[i] = (e->iskey[i] && kp[i] == '1') ? '1' : '0';
		if (wheremask[i] == '1')
		{
			values[*k] = kv[i];
			nulls[*k] = kn[i];
			(*k)++;
		}
	}
	wheremask[n] = '\0';
}

/*
 * Mark with 'k' in setmask the key columns an UPDATE leaves as they were:
 * all of them when the source sent no old key, else those whose old and
 * new values are the same bytes.  The statement (relmap_get_plan) leaves
 * such a column out of its SET list where SQL may not assign it.
 */
static void
mark_kept_keys(RelMapEntry *e, LogicalRepTupleData *oldtup,
			   LogicalRepTupleData *newtup, char *setmask)
{
	for (int i = 0; i < e->remoterel->natts; i++)
	{
		if (setmask[i] != '1' || !e->iskey[i])
			continue;
		if (oldtup != NULL &&
			(oldtup->colstatus[i] != newtup->colstatus[i] ||
			 oldtup->colvalues[i].len != newtup->colvalues[i].len ||
			 (newtup->colvalues[i].len > 0 &&
			  memcmp(oldtup->colvalues[i].data, newtup->colvalues[i].data,
					 newtup->colvalues[i].len) != 0)))
			continue;
		setmask[i] = 'k';
	}
}

/*
 * Is the row identified by these key values there?  Asked only when an
 * UPDATE or DELETE touched no row, which has two causes: the row is
 * missing (the destination has diverged), or a BEFORE ROW trigger that
 * fires for the worker (ENABLE REPLICA or ALWAYS) returned NULL, and
 * PostgreSQL's own apply skips such a row as the trigger asks.
 */
static bool
row_exists(RelMapEntry *e, const char *wheremask, Datum *keyvalues, char *keynulls)
{
	return writer->exec(relmap_get_plan(e, 'E', NULL, wheremask, 1), keyvalues, keynulls) > 0;
}

/* UPDATE */
static void
apply_handle_update(StringInfo s)
{
	LogicalRepTupleData oldtup;
	LogicalRepTupleData newtup;
	bool		has_old;
	LogicalRepRelId relid = logicalrep_read_update(s, &has_old, &oldtup, &newtup);
	RelMapEntry *e = apply_get_rel(relid);
	int			n = e ? e->remoterel->natts : 0;
	Datum	   *nv = palloc(sizeof(Datum) * (n + 1));
	char	   *nn = palloc(n + 1);
	char	   *setmask = palloc0(n + 1);
	char	   *wheremask = palloc0(n + 1);
	Datum	   *values = palloc(sizeof(Datum) * (2 * n + 1));
	char	   *nulls = palloc(2 * n + 1);
	int			k = 0;
	int			nset;

	relmap_strip_excluded(e, &newtup);
	if (has_old)
		relmap_strip_excluded(e, &oldtup);

	if (e == NULL)
		return;
	/* buffered INSERTs of this table may include the row */
	writer->flush_inserts(e);
	if (!has_old && !replay.active && change_route(e, false) == RESYNC_APPLY &&
		writer->fold(e, &newtup))
	{
		e->n_upd++;
		batch.changes++;
		return;
	}
	writer->flush_inserts(NULL);
	writer->flush_folded(e);
	if (!route_change(e, &e->n_upd))
		return;
	relmap_tuple_to_datums(e, &newtup, nv, nn, setmask);
	mark_kept_keys(e, has_old ? &oldtup : NULL, &newtup, setmask);
	for (int i = 0; i < n; i++)
		if (setmask[i] != '0')
		{
			values[k] = nv[i];
			nulls[k] = nn[i];
			k++;
		}
	if (k == 0)
		return;					/* only unchanged TOAST: nothing to write */
	nset = k;
	key_params(e, has_old ? &oldtup : &newtup, values, nulls, wheremask, &k);

	if (writer->exec(relmap_get_plan(e, 'U', setmask, wheremask, 1), values, nulls) == 0)
	{
		if (!row_exists(e, wheremask, values + nset, nulls + nset))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("row to update was not found in destination table %s", e->qualname),
					 errdetail("The destination table has diverged from the source."),
					 errhint("Remove the conflicting local change or resync the table; the mirror retries until then.")));
		elog(DEBUG1, "a trigger skipped the update of a row of %s", e->qualname);
	}
	if (!replay.active)
		e->n_upd++;
	batch.changes++;
}

/* DELETE */
static void
apply_handle_delete(StringInfo s)
{
	LogicalRepTupleData oldtup;
	LogicalRepRelId relid = logicalrep_read_delete(s, &oldtup);
	RelMapEntry *e = apply_get_rel(relid);
	int			n = e ? e->remoterel->natts : 0;
	char	   *wheremask = palloc0(n + 1);
	Datum	   *values = palloc(sizeof(Datum) * (n + 1));
	char	   *nulls = palloc(n + 1);
	int			k = 0;

	relmap_strip_excluded(e, &oldtup);

	if (e == NULL)
		return;
	writer->flush_folded(e);
	if (!route_change(e, &e->n_del))
		return;
	key_params(e, &oldtup, values, nulls, wheremask, &k);
	if (writer->exec(relmap_get_plan(e, 'D', NULL, wheremask, 1), values, nulls) == 0)
	{
		if (!row_exists(e, wheremask, values, nulls))
			ereport(WARNING,
					(errcode(ERRCODE_NO_DATA_FOUND),
					 errmsg("row to delete was not found in destination table %s", e->qualname)));
		else
			elog(DEBUG1, "a trigger skipped the deletion of a row of %s", e->qualname);
	}
	if (!replay.active)
		e->n_del++;
	batch.changes++;
}

/* TRUNCATE of one or more published tables */
static void
apply_handle_truncate(StringInfo s)
{
	bool		cascade,
				restart_seqs;
	List	   *relids = logicalrep_read_truncate(s, &cascade, &restart_seqs);
	StringInfoData sql;
	ListCell   *lc;
	int			rc;

	int			n = 0;
	int64		dummy = 0;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "TRUNCATE ");
	foreach(lc, relids)
	{
		RelMapEntry *e = apply_get_rel(lfirst_oid(lc));

		/* a replay truncates only the table it replays */
		if (e == NULL || (replay.active ? e->mt != replay.mt : !route_change(e, &dummy)))
			continue;
		appendStringInfo(&sql, "%s%s", n++ ? ", " : "", e->qualname);
	}
	if (n == 0)
		return;
	if (restart_seqs)
		appendStringInfoString(&sql, " RESTART IDENTITY");
	SPI_connect();
	rc = SPI_execute(sql.data, false, 0);
	SPI_finish();
	if (rc < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not apply \"%s\"", sql.data)));
	bunny_log(mirror->name, "INFO", psprintf("applied %s", sql.data), NULL);
	batch.changes++;
}

/* BEGIN of a source transaction */
static void
apply_handle_begin(StringInfo s)
{
	LogicalRepBeginData begin;

	logicalrep_read_begin(s, &begin);
	if (streamxact_restart_pending())
		return;
	if (streamxact_active())
	{
		/* it must not wait for the streamed one, nor be undone with it */
		streamxact_give_up("another transaction committed during it");
		return;
	}
	batch.in_remote_txn = true;
	batch.remote_final_lsn = begin.final_lsn;
	batch.errctx.lsn = begin.final_lsn;
	batch_begin(&batch);

	workerslot_report_pending_commit(begin.committime);
}

/* COMMIT of a source transaction: the only place a batch may end */
static void
apply_handle_commit(StringInfo s)
{
	LogicalRepCommitData commit;

	logicalrep_read_commit(s, &commit);
	batch_source_commit(&batch, commit.end_lsn, commit.committime);
	batch.errctx.table = NULL;

	if (batch.changes >= mirror->max_batch_size ||
		TimestampDifferenceExceeds(batch.start, GetCurrentTimestamp(),
								   mirror->idle_timeout_seconds * 1000) ||
		(bunny_max_batch_latency > 0 &&
		 TimestampDifferenceExceeds(batch.start, GetCurrentTimestamp(), bunny_max_batch_latency)))
		batch_flush(&batch, mirror);
}

/* a pgoutput message, from the stream (applystream.c) or a resync queue */
void
apply_dispatch(StringInfo s)
{
	char		action;

	current_msg = s->data + s->cursor;
	current_msg_len = s->len - s->cursor;
	action = pq_getmsgbyte(s);

	if (!streamxact_accept(action, s, &current_msg, &current_msg_len))
		return;

	/*
	 * Buffered INSERTs and folded UPDATEs wait across source transactions
	 * of the batch; DML handlers write what they must themselves, any other
	 * message first writes everything.
	 */
	switch (action)
	{
		case LOGICAL_REP_MSG_BEGIN:
		case LOGICAL_REP_MSG_COMMIT:
		case LOGICAL_REP_MSG_INSERT:
		case LOGICAL_REP_MSG_UPDATE:
		case LOGICAL_REP_MSG_STREAM_ABORT:
			break;
		case LOGICAL_REP_MSG_DELETE:
			writer->flush_inserts(NULL);
			break;
		default:
			writer->flush_inserts(NULL);
			writer->flush_folded(NULL);
			break;
	}
	if (action != LOGICAL_REP_MSG_INSERT)
		writer->end_run();

	switch (action)
	{
		case LOGICAL_REP_MSG_BEGIN:
			apply_handle_begin(s);
			break;
		case LOGICAL_REP_MSG_COMMIT:
			apply_handle_commit(s);
			break;
		case LOGICAL_REP_MSG_INSERT:
			apply_handle_insert(s);
			break;
		case LOGICAL_REP_MSG_UPDATE:
			apply_handle_update(s);
			break;
		case LOGICAL_REP_MSG_DELETE:
			apply_handle_delete(s);
			break;
		case LOGICAL_REP_MSG_TRUNCATE:
			apply_handle_truncate(s);
			break;
		case LOGICAL_REP_MSG_RELATION:
			apply_handle_relation(s);
			break;
		case LOGICAL_REP_MSG_TYPE:
			apply_handle_type(s);
			break;
		case LOGICAL_REP_MSG_STREAM_START:
			streamxact_start(s, &batch, mirror);
			break;
		case LOGICAL_REP_MSG_STREAM_STOP:
			streamxact_stop();
			break;
		case LOGICAL_REP_MSG_STREAM_COMMIT:
			streamxact_commit(s, &batch, mirror);
			break;
		case LOGICAL_REP_MSG_STREAM_ABORT:
			streamxact_abort(s, &batch);
			break;
		case LOGICAL_REP_MSG_ORIGIN:
		case LOGICAL_REP_MSG_MESSAGE:
			break;				/* nothing to do */
		default:
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("unexpected logical replication message type \"%c\"", action)));
	}
}

/* feed one raw pgoutput message to the handlers */
static void
dispatch_raw(const char *data, int len)
{
	StringInfoData s;

	s.data = (char *) data;
	s.len = len;
	s.maxlen = -1;
	s.cursor = 0;
	apply_dispatch(&s);
}

/*
 * Replaying a resync queue (resync.c reads it): every change is applied,
 * to the replay's target, with no folding and no COPY runs.
 */
static void
replay_begin(MirrorTable *mt)
{
	replay.active = true;
	replay.mt = mt;
	replay.saved_final_lsn = batch.remote_final_lsn;
	replay.saved_table = batch.errctx.table;
}

static void
replay_finish(void)
{
	writer->flush_inserts(NULL);
}

static void
replay_end(void)
{
	replay.active = false;
	replay.mt = NULL;
	batch.remote_final_lsn = replay.saved_final_lsn;
	batch.errctx.table = replay.saved_table;
}

const ResyncReplayer apply_replayer = {
	.begin = replay_begin,
	.message = dispatch_raw,
	.finish = replay_finish,
	.end = replay_end,
};

/* a reloaded mirror: entries point at its tables from now on */
void
apply_set_mirror(Mirror *m)
{
	mirror = m;
	relmap_set_mirror(m);
}

/*
 * Start applying the stream of m, in the given transfer format, COPY runs
 * reading from source; returns the batch, which the stream layer watches
 * (what is in flight) and commits when nothing more is waiting.
 */
ApplyBatch *
apply_init(Mirror *m, bool binary, const CopyRunSource *source)
{
	mirror = m;
	relmap_init(m, binary);
	writer_init(binary, source);
	/* for the rest of the process: the apply runs until it exits */
	bunny_errcontext_push(&batch.errctx, NULL, NULL, InvalidXLogRecPtr);
	return &batch;
}

/*
 * The source transaction an error interrupted, for the worker to record
 * how far the failed run got; the apply's frame keeps it after the error
 * has unwound the stack.
 */
XLogRecPtr
apply_error_lsn(void)
{
	return batch.errctx.lsn;
}

