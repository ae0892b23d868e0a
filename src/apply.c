/*-------------------------------------------------------------------------
 *
 * apply.c
 *		CDC phase: read the pgoutput stream of the mirror's slot and apply
 *		the changes to the destination tables.  What the worker knows of
 *		each source relation, and the statements prepared for it, are in
 *		relmap.c; folding repeated UPDATEs within a batch is in fold.c.
 *
 * NOTES
 *
 *	Exactly once.  The worker's session is bound to the mirror's
 *	replication origin.  Before a destination transaction commits, the
 *	origin's position is set to the end LSN of the last source transaction
 *	it contains, so the data and the progress commit atomically in one
 *	commit record.  After a crash the stream restarts from the origin's
 *	position: whatever was committed is not applied again and whatever was
 *	not is sent again by the source.  The slot is told that a position is
 *	flushed only once the local commit that contains it is on disk (we
 *	commit asynchronously and keep a small map from source end LSN to local
 *	commit LSN, like the built-in apply worker), so the source never
 *	discards WAL we might still need.
 *
 *	Batching.  Protocol version 1 sends each source transaction whole,
 *	after its commit.  Changes of many source transactions are applied in
 *	one destination transaction, which only ever ends at a source COMMIT:
 *	readers never see half of a source transaction.  A batch ends when
 *	max_batch_size changes are pending, when idle_timeout_seconds (or, under
 *	a steady load, bunny.max_batch_latency) have passed since it began, or --
 *	the common case when the source is not flooding us -- as soon as nothing
 *	more is waiting on the connection, which keeps latency low.
 *
 *	Statements.  Inside a batch one SPI connection serves every change, and
 *	runs of INSERTs into one table go out as multi-row INSERTs of up to a
 *	hundred rows.  A run that goes on past that goes through the COPY
 *	machinery instead (BeginCopyFrom with a data-source callback, CopyFrom):
 *	the callback reads the following messages itself and turns each INSERT
 *	of the run into a COPY row -- pgoutput's binary values are COPY BINARY
 *	fields as they are -- so a bulk load costs no statement per row and
 *	writes through CopyFrom's multi-row heap inserts and buffer ring.  In
 *	a streamed transaction a run goes on across the transaction's blocks,
 *	so a bulk load keeps one COPY and one ring of shared buffers.
 *
 *	Folding.  Within a batch, UPDATEs that keep their row's key are merged
 *	per key and written as multi-row UPDATEs where that cannot be told
 *	apart from applying each of them (fold.c).  Other tables are applied
 *	change by change.
 *
 *	Streaming.  With protocol version 2 the source sends a transaction that
 *	outgrows logical_decoding_work_mem while it is still running, in
 *	blocks.  Such a transaction is applied as it comes, in its own
 *	destination transaction that commits at its STREAM COMMIT (savepoints
 *	stand for its subtransactions, so that one can be rolled back alone),
 *	so a large load is applied while the source is still decoding it.  This
 *	only works while nothing else commits on the source in the meantime:
 *	another transaction must become visible before the streamed one, which
 *	may still abort.  Then the worker gives up on it, rolls back and starts
 *	the stream again from its last commit without streaming, so the source
 *	sends it again whole after its commit; streaming is tried again after a
 *	pause that doubles each time it is given up (1 minute to 1 hour).
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
 *	Memory.  Every message is decoded and applied in a context that is
 *	reset after the message, so nothing grows with the size of a source
 *	transaction; plans and the relation map live in a cache context.
 *
 *	Idle sources.  When nothing is pending, keepalives move the position we
 *	report to the slot, so a source that writes only to unpublished tables
 *	does not make the slot hold WAL forever.
 *
 *	Binary transfer.  The stream uses pgoutput's binary mode when every
 *	published column has the same built-in type on both sides; binary array
 *	and record values embed type OIDs that differ between servers for
 *	user-defined types, so those mirrors use text.
 *
 *-------------------------------------------------------------------------
 */
#include "apply_internal.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "replication/logicalproto.h"
#include "replication/origin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#define FEEDBACK_INTERVAL_MS	10000
#define IDLE_WAIT_MS			1000
#define FLUSH_REPORT_WAIT_MS	200 /* about wal_writer_delay */


/* source end LSN of a committed batch and its local commit LSN */
typedef struct FlushPosition
{
	XLogRecPtr	local_end;
	XLogRecPtr	remote_end;
} FlushPosition;

static Mirror *mirror;
static PGconn *conn;
static bool apply_binary_mode = false;
static MemoryContext ApplyMessageContext;
static List *flush_positions = NIL;

static bool in_remote_txn = false;
static bool in_local_txn = false;
static XLogRecPtr remote_final_lsn = InvalidXLogRecPtr;
static int64 batch_changes = 0;
static TimestampTz batch_start = 0;
static XLogRecPtr batch_last_end = InvalidXLogRecPtr;
static TimestampTz batch_last_commit_time = 0;
static XLogRecPtr batch_keepalive_lsn = InvalidXLogRecPtr;

static XLogRecPtr last_received = InvalidXLogRecPtr;

/* streaming of large transactions (protocol version 2), see NOTES */
#define STREAM_RETRY_MIN_MS		60000
#define STREAM_RETRY_MAX_MS		3600000
static bool streaming_on = false;	/* the stream was started with streaming */
static bool in_stream_block = false;	/* between STREAM START and STOP */
static TransactionId stream_xid = InvalidTransactionId; /* being applied */
static TransactionId stream_subxids[STREAM_MAX_SUBXACTS];	/* open savepoints */
static int	stream_nsubxids = 0;
static TransactionId stream_change_xid = InvalidTransactionId;
static bool stream_restart_pending = false;
static TimestampTz streaming_retry_at = 0;
static int	streaming_retry_ms = STREAM_RETRY_MIN_MS;
static const char *stream_give_up_why = NULL;	/* for the restart's log line */

/* the message being handled, raw, for the resync queue */
static const char *current_msg = NULL;
static int	current_msg_len = 0;

/* replaying a resync queue: apply everything, to this table of this mapping */
static bool apply_replaying = false;
static MirrorTable *apply_replay_mt = NULL;
static XLogRecPtr last_flushed_reported = InvalidXLogRecPtr;
static XLogRecPtr last_write_reported = InvalidXLogRecPtr;
static XLogRecPtr local_flushed_upto = InvalidXLogRecPtr;	/* source end LSN
															 * whose local commit
															 * is on disk */
static TimestampTz last_feedback = 0;

static void apply_batch_flush(void);
static void apply_copydata(char *buf, int len);
static void send_feedback(bool force, bool request_reply);
static void stream_give_up(const char *why);
static void check_slot_and_publication(bool patient);

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
	RelMapEntry *e;
	bool		found;
	MemoryContext old;
	MirrorTable *mt;

	/*
	 * pgoutput also describes the partition a change of a partitioned table
	 * came from, next to the root it is published as: unmapped relations are
	 * remembered, and only a change on one is an error.
	 */
	mt = mirror_find_table(mirror, rel->nspname, rel->relname);

	e = hash_search(apply_relmap, &rel->remoteid, HASH_ENTER, &found);
	if (found)
		relmap_free_plans(e);
	else
		memset(((char *) e) + sizeof(LogicalRepRelId), 0,
			   sizeof(RelMapEntry) - sizeof(LogicalRepRelId));

	/* everything of the entry lives in the cache context */
	old = MemoryContextSwitchTo(ApplyCacheContext);
	e->remoterel = palloc0(sizeof(LogicalRepRelation));
	e->remoterel->remoteid = rel->remoteid;
	e->remoterel->nspname = pstrdup(rel->nspname);
	e->remoterel->relname = pstrdup(rel->relname);
	e->remoterel->attnames = palloc(sizeof(char *) * (rel->natts + 1));
	e->remoterel->atttyps = palloc(sizeof(Oid) * (rel->natts + 1));
	e->remote_typmods = palloc(sizeof(int32) * (rel->natts + 1));
	e->remoterel->attkeys = NULL;
	e->remote_skip = NULL;
	e->remote_natts_sent = rel->natts;

	/*
	 * A source without publication column lists (before 15) sends the
	 * excluded columns too: they are left out here, so that everything
	 * after this sees the columns a column list would have sent.
	 */
	if (mt != NULL && mt->exclude_columns != NIL)
	{
		for (int i = 0; i < rel->natts; i++)
		{
			ListCell   *lc;

			foreach(lc, mt->exclude_columns)
				if (strcmp((char *) lfirst(lc), rel->attnames[i]) == 0)
				{
					if (e->remote_skip == NULL)
						e->remote_skip = palloc0(sizeof(bool) * rel->natts);
					e->remote_skip[i] = true;
				}
		}
	}
	{
		int			k = 0;

		for (int i = 0; i < rel->natts; i++)
		{
			if (e->remote_skip && e->remote_skip[i])
				continue;
			e->remoterel->attnames[k] = pstrdup(rel->attnames[i]);
			e->remoterel->atttyps[k] = rel->atttyps[i];
			e->remote_typmods[k] = typmods[i];
			if (bms_is_member(i, rel->attkeys))
				e->remoterel->attkeys = bms_add_member(e->remoterel->attkeys, k);
			k++;
		}
		e->remoterel->natts = k;
	}
	e->remoterel->replident = rel->replident;
	e->mt = mt;
	e->qualname = mt ? pstrdup(quote_qualified_identifier(mt->dest_schema, mt->dest_table)) : NULL;
	if (current_msg != NULL)
	{
		e->raw_relmsg = palloc(current_msg_len);
		memcpy(e->raw_relmsg, current_msg, current_msg_len);
		e->raw_relmsg_len = current_msg_len;
	}
	MemoryContextSwitchTo(old);
	e->valid = false;

	/* a table being copied again keeps its latest description for replay */
	if (mt && !apply_replaying && mt->resync_state && strcmp(mt->resync_state, "COPYING") == 0 &&
		IsTransactionState())
		resync_store_relation_message(mirror, mt);
}

/* Type message: remember the name of a source user-defined type */
static void
apply_handle_type(StringInfo s)
{
	LogicalRepTyp typ;
	RemoteType *t;
	bool		found;

	logicalrep_read_typ(s, &typ);
	t = hash_search(apply_typemap, &typ.remoteid, HASH_ENTER, &found);
	t->nspname = MemoryContextStrdup(ApplyCacheContext, typ.nspname);
	t->typname = MemoryContextStrdup(ApplyCacheContext, typ.typname);
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
	if (apply_replaying)
		return RESYNC_APPLY;
	return resync_route(mirror, e->mt, remote_final_lsn,
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
			batch_changes++;
			(*counter)++;
			return false;
		case RESYNC_APPLY_QUEUED:
			batch_changes++;
			return true;
		case RESYNC_APPLY:
			break;
	}
	return true;
}

/*
 * The next CopyData message of the stream, waiting for it like the main
 * loop does (interrupts, feedback to the source).
 */
static int
copy_run_receive(char **buf)
{
	for (;;)
	{
		pgsocket	fd = PGINVALID_SOCKET;
		int			len;
		int			rc;

		CHECK_FOR_INTERRUPTS();
		len = stream_receive(conn, buf, &fd);
		if (len > 0)
			return len;
		send_feedback(false, false);
		rc = WaitLatchOrSocket(MyLatch,
							   WL_SOCKET_READABLE | WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							   fd, IDLE_WAIT_MS, PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
			ResetLatch(MyLatch);
	}
}

/*
 * Pass over the boundary between two blocks of the streamed transaction
 * being applied: STREAM STOP, then STREAM START of the same transaction.
 * A run of INSERTs in a large transaction then stays one COPY -- one
 * bulk-insert buffer ring, not one per block.  True if msg was such a
 * message and is done with.
 */
static bool
copy_run_stream_boundary(const char *msg, int len)
{
	if (in_stream_block && len == 1 && msg[0] == LOGICAL_REP_MSG_STREAM_STOP)
	{
		in_stream_block = false;	/* what the main loop would do */
		return true;
	}
	if (!in_stream_block && stream_xid != InvalidTransactionId && !stream_restart_pending &&
		len == 6 && msg[0] == LOGICAL_REP_MSG_STREAM_START)
	{
		StringInfoData m;
		TransactionId xid;
		bool		first;

		m.data = (char *) msg;
		m.len = len;
		m.maxlen = -1;
		m.cursor = 1;
		xid = logicalrep_read_stream_start(&m, &first);
		if (xid == stream_xid && !first)
		{
			in_stream_block = true;
			return true;
		}
	}
	return false;
}

/*
 * The COPY run's source of rows (see CopyRunSource): the messages that
 * follow on the connection.  buf is the one last handed out, freed when
 * the next is asked for; stashed the one that ended a run.
 */
static char *copy_src_buf = NULL;
static int	copy_src_len = 0;
static char *stashed_buf = NULL;
static int	stashed_len = 0;

static const char *
copy_source_next(int *len, bool *has_xid)
{
	if (copy_src_buf != NULL)
		PQfreemem(copy_src_buf);
	copy_src_buf = NULL;
	for (;;)
	{
		char	   *buf;
		int			n = copy_run_receive(&buf);

		if (buf[0] == 'w' && n > 25)
		{
			XLogRecPtr	end;
			StringInfoData h;

			/* XLogData: start, end, send time, then the pgoutput message */
			if (copy_run_stream_boundary(buf + 25, n - 25))
			{
				PQfreemem(buf);
				continue;
			}
			h.data = buf;
			h.len = n;
			h.maxlen = -1;
			h.cursor = 9;
			end = pq_getmsgint64(&h);
			SpinLockAcquire(&MySlot->mutex);
			if (end > MySlot->source_lsn)
				MySlot->source_lsn = end;
			SpinLockRelease(&MySlot->mutex);
			copy_src_buf = buf;
			copy_src_len = n;
			*len = n - 25;
			*has_xid = in_stream_block;
			return buf + 25;
		}
		else if (buf[0] == 'k')
		{
			apply_copydata(buf, n);
			PQfreemem(buf);
			continue;
		}
		stashed_buf = buf;
		stashed_len = n;
		return NULL;
	}
}

static void
copy_source_keep(void)
{
	stashed_buf = copy_src_buf;
	stashed_len = copy_src_len;
	copy_src_buf = NULL;
}

static const CopyRunSource copy_source = {
	.next = copy_source_next,
	.keep = copy_source_keep,
};

static const ApplyWriter *writer = &apply_writer;

/* INSERT */
static void
apply_handle_insert(StringInfo s)
{
	LogicalRepTupleData newtup;
	LogicalRepRelId relid = logicalrep_read_insert(s, &newtup);
	RelMapEntry *e = relmap_get(relid);
	int			n = e ? e->remoterel->natts : 0;
	Datum	   *values = palloc(sizeof(Datum) * (n + 1));
	char	   *nulls = palloc(n + 1);
	char	   *present = palloc0(n + 1);

	relmap_strip_excluded(e, &newtup);

	if (e == NULL)
		return;
	writer->flush_folded(e);
	if (writer->copy_wanted(e) && !apply_replaying && change_route(e, false) == RESYNC_APPLY)
	{
		int64		rows = writer->copy_run(e, current_msg, current_msg_len, stream_change_xid);

		if (rows >= 0)
		{
			e->n_ins += rows;
			batch_changes += rows;
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
	if (!apply_replaying)
		e->n_ins++;
	batch_changes++;
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
	RelMapEntry *e = relmap_get(relid);
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
	if (!has_old && !apply_replaying && change_route(e, false) == RESYNC_APPLY &&
		writer->fold(e, &newtup))
	{
		e->n_upd++;
		batch_changes++;
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
	if (!apply_replaying)
		e->n_upd++;
	batch_changes++;
}

/* DELETE */
static void
apply_handle_delete(StringInfo s)
{
	LogicalRepTupleData oldtup;
	LogicalRepRelId relid = logicalrep_read_delete(s, &oldtup);
	RelMapEntry *e = relmap_get(relid);
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
	if (!apply_replaying)
		e->n_del++;
	batch_changes++;
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
		RelMapEntry *e = relmap_get(lfirst_oid(lc));

		/* a replay truncates only the table it replays */
		if (e == NULL || (apply_replaying ? e->mt != apply_replay_mt : !route_change(e, &dummy)))
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
	batch_changes++;
}

/* open the destination transaction of a batch if none is open */
static void
apply_batch_begin(void)
{
	if (in_local_txn)
		return;
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	writer_batch_begin();
	in_local_txn = true;
	batch_start = GetCurrentTimestamp();
	batch_changes = 0;
}

/* BEGIN of a source transaction */
static void
apply_handle_begin(StringInfo s)
{
	LogicalRepBeginData begin;

	logicalrep_read_begin(s, &begin);
	if (stream_restart_pending)
		return;
	if (stream_xid != InvalidTransactionId)
	{
		/* it must not wait for the streamed one, nor be undone with it */
		stream_give_up("another transaction committed during it");
		return;
	}
	in_remote_txn = true;
	remote_final_lsn = begin.final_lsn;
	bunny_ctx_lsn = begin.final_lsn;
	apply_batch_begin();

	SpinLockAcquire(&MySlot->mutex);
	if (MySlot->oldest_pending_commit == 0)
		MySlot->oldest_pending_commit = begin.committime;
	SpinLockRelease(&MySlot->mutex);
}

/* COMMIT of a source transaction: the only place a batch may end */
static void
apply_handle_commit(StringInfo s)
{
	LogicalRepCommitData commit;

	logicalrep_read_commit(s, &commit);
	in_remote_txn = false;
	batch_last_end = commit.end_lsn;
	batch_last_commit_time = commit.committime;
	last_received = Max(last_received, commit.end_lsn);
	bunny_ctx_table = NULL;

	if (batch_changes >= mirror->max_batch_size ||
		TimestampDifferenceExceeds(batch_start, GetCurrentTimestamp(),
								   mirror->idle_timeout_seconds * 1000) ||
		(bunny_max_batch_latency > 0 &&
		 TimestampDifferenceExceeds(batch_start, GetCurrentTimestamp(), bunny_max_batch_latency)))
		apply_batch_flush();
}

/* roll back the open destination transaction and forget the batch */
static void
apply_batch_abort(void)
{
	HASH_SEQ_STATUS status;
	RelMapEntry *e;

	MemoryContext old = CurrentMemoryContext;

	writer->discard();
	/* with its savepoints: AbortCurrentTransaction would end only the last */
	AbortOutOfAnyTransaction();
	MemoryContextSwitchTo(old);
	writer_batch_end(false);
	in_local_txn = false;
	in_remote_txn = false;
	in_stream_block = false;
	stream_xid = InvalidTransactionId;
	stream_change_xid = InvalidTransactionId;
	stream_nsubxids = 0;
	batch_last_end = InvalidXLogRecPtr;
	batch_keepalive_lsn = InvalidXLogRecPtr;
	batch_changes = 0;
	bunny_ctx_lsn = InvalidXLogRecPtr;
	hash_seq_init(&status, apply_relmap);
	while ((e = hash_seq_search(&status)) != NULL)
		e->n_ins = e->n_upd = e->n_del = 0;
	SpinLockAcquire(&MySlot->mutex);
	MySlot->oldest_pending_commit = 0;
	SpinLockRelease(&MySlot->mutex);
}

/*
 * A streamed transaction cannot be applied as it comes (another transaction
 * interleaves, a table is being resynced, too many savepoints): give up on
 * it and restart the stream without streaming from the last commit, so the
 * source sends it again whole, after its commit.  Done by the main loop
 * once the current message is handled; until then messages are ignored.
 */
static void
stream_give_up(const char *why)
{
	if (stream_restart_pending)
		return;
	stream_restart_pending = true;
	stream_give_up_why = why;
	streaming_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), streaming_retry_ms);
	streaming_retry_ms = Min(streaming_retry_ms * 2, STREAM_RETRY_MAX_MS);
	elog(DEBUG1, "bunnydb: not applying a streamed transaction as it comes: %s", why);
}

/* restart the stream from the last commit, with or without streaming */
static void
stream_restart(bool streaming)
{
	XLogRecPtr	startpos;
	MemoryContext old = CurrentMemoryContext;

	apply_batch_abort();
	if (stashed_buf != NULL)
		PQfreemem(stashed_buf);
	stashed_buf = NULL;
	stream_restart_pending = false;

	conn = worker_reconnect_source(mirror);
	/* the walsender of the old connection may still hold the slot */
	check_slot_and_publication(true);
	startpos = replorigin_session_get_progress(false);
	last_received = startpos;
	streaming_on = streaming;
	stream_start_replication(conn, mirror->slot_name, startpos, mirror->publication_name,
							 apply_binary_mode, streaming_on);
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	{
		const char *why = "";

		/* after giving up, say why in bunny.logs: a bulk load came late */
		if (!streaming && stream_give_up_why != NULL)
			why = psprintf(": gave up applying one as it came (%s); trying again in %ld s",
						   stream_give_up_why,
						   (TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
															streaming_retry_at) + 999) / 1000);
		bunny_log(mirror->name, "DEBUG",
				  psprintf("streaming again from %X/%X, %s%s", LSN_FORMAT_ARGS(startpos),
						   streaming ? "applying large transactions while they run" :
						   "large transactions after their commit", why), NULL);
	}
	stream_give_up_why = NULL;
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(old);
}

/* may the source stream large transactions to us now? */
static bool
streaming_wanted(void)
{
	return bunny_stream_large_transactions && PQserverVersion(conn) >= 140000 &&
		GetCurrentTimestamp() >= streaming_retry_at;
}

/* STREAM START: a block of changes of a transaction in progress */
static void
apply_handle_stream_start(StringInfo s)
{
	bool		first;
	TransactionId xid = logicalrep_read_stream_start(s, &first);
	XLogRecPtr	committed;
	ListCell   *lc;

	if (stream_restart_pending)
		return;
	if (stream_xid == InvalidTransactionId)
	{
		/* the batch so far holds whole transactions: commit it first */
		if (in_local_txn)
			apply_batch_flush();
		if (!first)
		{
			stream_give_up("the stream continues a transaction whose start was not applied");
			return;
		}
		if (resync_active(mirror))
		{
			stream_give_up("a table is being copied again");
			return;
		}

		/*
		 * Its commit is after the last one we applied, but not known yet;
		 * that is enough only if every table's copy is older than that.
		 */
		committed = replorigin_session_get_progress(false);
		foreach(lc, mirror->tables)
		{
			MirrorTable *mt = lfirst(lc);

			if (mt->sync_lsn != InvalidXLogRecPtr && mt->sync_lsn >= committed)
			{
				stream_give_up("a table's copy is newer than the last applied commit");
				return;
			}
		}
		apply_batch_begin();
		stream_xid = xid;
		stream_change_xid = xid;
		stream_nsubxids = 0;
		in_remote_txn = true;
		/* a lower bound for the routing of changes (change_route) */
		remote_final_lsn = committed + 1;
		bunny_ctx_lsn = InvalidXLogRecPtr;
	}
	else if (xid != stream_xid)
	{
		stream_give_up("two large transactions run at once");
		return;
	}
	in_stream_block = true;
}

/*
 * A change inside a streamed block belongs to xid, the transaction or one
 * of its subtransactions: each subtransaction gets a savepoint, so that its
 * abort can be rolled back alone.  False if the change is to be ignored.
 */
static bool
stream_enter_xid(TransactionId xid)
{
	bool		known = (xid == stream_xid);
	HASH_SEQ_STATUS status;
	RelMapEntry *e;

	if (stream_restart_pending)
		return false;
	if (xid == stream_change_xid)
		return true;
	/* what is pending belongs to the previous (sub)transaction's savepoint */
	writer->flush_inserts(NULL);
	writer->flush_folded(NULL);
	for (int i = 0; i < stream_nsubxids && !known; i++)
		known = (stream_subxids[i] == xid);
	if (!known)
	{
		MemoryContext old = CurrentMemoryContext;

		if (stream_nsubxids >= STREAM_MAX_SUBXACTS)
		{
			stream_give_up("too many subtransactions");
			return false;
		}
		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(old);
		/* the counters go back to these if the subtransaction aborts */
		hash_seq_init(&status, apply_relmap);
		while ((e = hash_seq_search(&status)) != NULL)
		{
			e->saved_counts[stream_nsubxids][0] = e->n_ins;
			e->saved_counts[stream_nsubxids][1] = e->n_upd;
			e->saved_counts[stream_nsubxids][2] = e->n_del;
		}
		stream_subxids[stream_nsubxids++] = xid;
	}
	stream_change_xid = xid;
	return true;
}

/* STREAM COMMIT: the streamed transaction committed; so does its batch */
static void
apply_handle_stream_commit(StringInfo s)
{
	LogicalRepCommitData commit;
	TransactionId xid = logicalrep_read_stream_commit(s, &commit);
	MemoryContext old = CurrentMemoryContext;

	if (stream_restart_pending)
		return;
	if (xid != stream_xid)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("commit of streamed transaction %u, but %u is the one applied",
						xid, stream_xid)));
	writer->flush_inserts(NULL);
	writer->flush_folded(NULL);
	while (stream_nsubxids > 0)
	{
		ReleaseCurrentSubTransaction();
		stream_nsubxids--;
	}
	MemoryContextSwitchTo(old);
	in_stream_block = false;
	in_remote_txn = false;
	stream_xid = InvalidTransactionId;
	stream_change_xid = InvalidTransactionId;
	batch_last_end = commit.end_lsn;
	batch_last_commit_time = commit.committime;
	last_received = Max(last_received, commit.end_lsn);
	apply_batch_flush();
	streaming_retry_ms = STREAM_RETRY_MIN_MS;
}

/* STREAM ABORT of the streamed transaction or of one of its subtransactions */
static void
apply_handle_stream_abort(StringInfo s)
{
	TransactionId xid;
	TransactionId subxid;
	int			level = -1;
	int			change_level = -1;
	MemoryContext old = CurrentMemoryContext;
	HASH_SEQ_STATUS status;
	RelMapEntry *e;

	logicalrep_read_stream_abort(s, &xid, &subxid);
	if (stream_restart_pending || xid != stream_xid)
		return;					/* nothing of it was applied */
	if (subxid == xid)
	{
		apply_batch_abort();
		return;
	}
	for (int i = 0; i < stream_nsubxids; i++)
	{
		if (stream_subxids[i] == subxid)
			level = i;
		if (stream_subxids[i] == stream_change_xid)
			change_level = i;
	}
	if (level < 0)
		return;					/* none of its changes came */

	/*
	 * The pending rows belong to stream_change_xid; they go with the abort
	 * only if that is the aborted subtransaction or one inside it.
	 */
	if (change_level < level)
	{
		stream_give_up("a subtransaction aborted after changes of its parent");
		return;
	}
	writer->discard();
	while (stream_nsubxids > level)
	{
		RollbackAndReleaseCurrentSubTransaction();
		stream_nsubxids--;
	}
	MemoryContextSwitchTo(old);
	hash_seq_init(&status, apply_relmap);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		e->n_ins = e->saved_counts[level][0];
		e->n_upd = e->saved_counts[level][1];
		e->n_del = e->saved_counts[level][2];
	}
	stream_change_xid = level > 0 ? stream_subxids[level - 1] : stream_xid;
}

/*
 * Write the batch's counters into bunny.mirror and bunny.mirror_table.  The
 * mirror row first: control functions lock it before the table rows, and
 * taking the locks in the same order keeps the two from deadlocking.
 */
static void
apply_batch_counters(void)
{
	static SPIPlanPtr mirror_plan = NULL;
	static SPIPlanPtr table_plan = NULL;
	HASH_SEQ_STATUS status;
	RelMapEntry *e;
	int64		total = 0;
	Datum		values[6];

	hash_seq_init(&status, apply_relmap);
	while ((e = hash_seq_search(&status)) != NULL)
		total += e->n_ins + e->n_upd + e->n_del;

	SPI_connect();
	/* once per batch, every batch: parse and plan them once per process */
	if (mirror_plan == NULL)
	{
		Oid			t2[2] = {INT4OID, INT8OID};
		Oid			t6[6] = {INT4OID, TEXTOID, TEXTOID, INT8OID, INT8OID, INT8OID};
		SPIPlanPtr	mp;
		SPIPlanPtr	tp;

		mp = SPI_prepare("UPDATE bunny.mirror "
						 "   SET total_rows_synced = total_rows_synced + $2, "
						 "       last_sync_time = now(), "
						 "       error_count = 0, error_message = NULL "
						 " WHERE id = $1", 2, t2);
		tp = SPI_prepare("UPDATE bunny.mirror_table "
						 "   SET rows_inserted = rows_inserted + $4, "
						 "       rows_updated = rows_updated + $5, "
						 "       rows_deleted = rows_deleted + $6, "
						 "       last_synced_at = now() "
						 " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
						 6, t6);
		if (mp == NULL || tp == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not prepare the counter updates: %s",
							SPI_result_code_string(SPI_result))));
		SPI_keepplan(mp);
		SPI_keepplan(tp);
		mirror_plan = mp;
		table_plan = tp;
	}
	values[0] = Int32GetDatum(mirror->id);
	values[1] = Int64GetDatum(total);
	SPI_execute_plan(mirror_plan, values, NULL, false, 0);
	hash_seq_init(&status, apply_relmap);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		if (e->n_ins == 0 && e->n_upd == 0 && e->n_del == 0)
			continue;
		values[0] = Int32GetDatum(mirror->id);
		values[1] = CStringGetTextDatum(e->mt->source_schema);
		values[2] = CStringGetTextDatum(e->mt->source_table);
		values[3] = Int64GetDatum(e->n_ins);
		values[4] = Int64GetDatum(e->n_upd);
		values[5] = Int64GetDatum(e->n_del);
		SPI_execute_plan(table_plan, values, NULL, false, 0);
		e->n_ins = e->n_upd = e->n_del = 0;
	}
	SPI_finish();
	mirror->error_count = 0;
}

/*
 * Commit the open batch together with the origin's new position, then
 * remember where it went for the flush feedback.
 */
static void
apply_batch_flush(void)
{
	FlushPosition *fp;
	XLogRecPtr	processed;

	if (!in_local_txn)
		return;
	Assert(!in_remote_txn);

	writer_batch_end(true);
	if (batch_last_end != InvalidXLogRecPtr)
	{
		apply_batch_counters();
		replorigin_session_origin_lsn = batch_last_end;
		replorigin_session_origin_timestamp = batch_last_commit_time;
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	/* the flush position below must never stand for work that did not commit */
	if (IsTransactionOrTransactionBlock())
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("the destination transaction of a batch did not commit")));
	pgstat_report_stat(false);
	in_local_txn = false;

	processed = Max(batch_last_end, batch_keepalive_lsn);
	if (batch_last_end != InvalidXLogRecPtr)
	{
		fp = MemoryContextAlloc(ApplyCacheContext, sizeof(FlushPosition));
		fp->local_end = XactLastCommitEnd;
		fp->remote_end = batch_last_end;
		flush_positions = apply_list_append_in(ApplyCacheContext, flush_positions, fp);
	}

	SpinLockAcquire(&MySlot->mutex);
	if (processed > MySlot->processed_lsn)
		MySlot->processed_lsn = processed;
	if (MySlot->processed_lsn >= MySlot->source_lsn)
		MySlot->behind_since = 0;
	if (batch_last_commit_time)
		MySlot->last_commit_time = batch_last_commit_time;
	MySlot->oldest_pending_commit = 0;
	SpinLockRelease(&MySlot->mutex);
	ConditionVariableBroadcast(&MySlot->progress_cv);

	batch_last_end = InvalidXLogRecPtr;
	batch_keepalive_lsn = InvalidXLogRecPtr;
	batch_changes = 0;
	bunny_ctx_lsn = InvalidXLogRecPtr;
}

/*
 * The source position up to which our local commits are flushed, never
 * less than what was reported before.  It does not change what was last
 * reported: send_feedback compares the two to see whether it moved.
 */
static XLogRecPtr
flushed_position(void)
{
	XLogRecPtr	local_flush = GetFlushRecPtr(NULL);
	XLogRecPtr	flushed;

	while (flush_positions != NIL)
	{
		FlushPosition *fp = linitial(flush_positions);

		if (fp->local_end > local_flush)
			break;
		local_flushed_upto = Max(local_flushed_upto, fp->remote_end);
		flush_positions = list_delete_first(flush_positions);
		pfree(fp);
	}
	flushed = Max(last_flushed_reported, local_flushed_upto);
	/* nothing of ours in flight: everything received is done */
	if (flush_positions == NIL && !in_local_txn && !in_remote_txn)
		flushed = Max(flushed, last_received);
	return flushed;
}

/* a standby status update ('r') for the walsender */
static void
feedback_message(StringInfo msg, XLogRecPtr write, XLogRecPtr flush, TimestampTz now,
				 bool request_reply)
{
	initStringInfo(msg);
	pq_sendbyte(msg, 'r');
	pq_sendint64(msg, write);
	pq_sendint64(msg, flush);
	pq_sendint64(msg, flush);
	pq_sendint64(msg, now);
	pq_sendbyte(msg, request_reply ? 1 : 0);
}

/*
 * Send a standby status update to the walsender when a position moved, at
 * least every FEEDBACK_INTERVAL_MS, or when forced.  The flush position
 * is what the slot keeps: a new walsender (after a pause, a reconnect, a
 * stream restart) decodes again from the slot's restart point, which only
 * moves as far as the flush we reported, so it must not lag behind.
 */
static void
send_feedback(bool force, bool request_reply)
{
	StringInfoData msg;
	XLogRecPtr	flush = flushed_position();
	XLogRecPtr	write = Max(last_received, flush);
	TimestampTz now = GetCurrentTimestamp();

	if (!force && write == last_write_reported && flush == last_flushed_reported &&
		!TimestampDifferenceExceeds(last_feedback, now, FEEDBACK_INTERVAL_MS))
		return;
	feedback_message(&msg, write, flush, now, request_reply);
	stream_send(conn, msg.data, msg.len);
	pfree(msg.data);

	last_flushed_reported = flush;
	last_write_reported = write;
	last_feedback = now;
}

/* a pgoutput message */
static void
apply_dispatch(StringInfo s)
{
	char		action;

	current_msg = s->data + s->cursor;
	current_msg_len = s->len - s->cursor;
	action = pq_getmsgbyte(s);

	/* the stream restarts after this message: the source sends it again */
	if (stream_restart_pending)
		return;

	if (in_stream_block &&
		(action == LOGICAL_REP_MSG_INSERT || action == LOGICAL_REP_MSG_UPDATE ||
		 action == LOGICAL_REP_MSG_DELETE || action == LOGICAL_REP_MSG_TRUNCATE ||
		 action == LOGICAL_REP_MSG_RELATION || action == LOGICAL_REP_MSG_TYPE ||
		 action == LOGICAL_REP_MSG_MESSAGE))
	{
		TransactionId xid = pq_getmsgint(s, 4);
		char	   *plain = palloc(s->len - s->cursor + 1);

		/*
		 * Inside a streamed block a change names its (sub)transaction.  The
		 * handlers and the resync queue get the message without it.
		 */
		plain[0] = action;
		memcpy(plain + 1, s->data + s->cursor, s->len - s->cursor);
		s->data = plain;
		s->len = s->len - s->cursor + 1;
		s->cursor = 1;
		current_msg = plain;
		current_msg_len = s->len;
		if (!stream_enter_xid(xid))
			return;
	}

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
			apply_handle_stream_start(s);
			break;
		case LOGICAL_REP_MSG_STREAM_STOP:
			in_stream_block = false;
			break;
		case LOGICAL_REP_MSG_STREAM_COMMIT:
			apply_handle_stream_commit(s);
			break;
		case LOGICAL_REP_MSG_STREAM_ABORT:
			apply_handle_stream_abort(s);
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

/* one CopyData message of the stream: XLogData or keepalive */
static void
apply_copydata(char *buf, int len)
{
	StringInfoData s;
	char		kind;

	s.data = buf;
	s.len = len;
	s.maxlen = -1;
	s.cursor = 0;
	kind = pq_getmsgbyte(&s);

	if (kind == 'w')
	{
		XLogRecPtr	start = pq_getmsgint64(&s);
		XLogRecPtr	end = pq_getmsgint64(&s);

		(void) pq_getmsgint64(&s);	/* send time */
		if (start > last_received && in_remote_txn)
			last_received = Max(last_received, start);
		SpinLockAcquire(&MySlot->mutex);
		if (end > MySlot->source_lsn)
			MySlot->source_lsn = end;
		SpinLockRelease(&MySlot->mutex);
		apply_dispatch(&s);
	}
	else if (kind == 'k')
	{
		XLogRecPtr	end = pq_getmsgint64(&s);
		bool		reply;

		(void) pq_getmsgint64(&s);	/* send time */
		reply = pq_getmsgbyte(&s);

		SpinLockAcquire(&MySlot->mutex);
		if (end > MySlot->source_lsn)
			MySlot->source_lsn = end;
		SpinLockRelease(&MySlot->mutex);

		if (!in_remote_txn)
		{
			/* everything before this keepalive has been received */
			last_received = Max(last_received, end);
			if (in_local_txn)
				batch_keepalive_lsn = Max(batch_keepalive_lsn, end);
			else
			{
				bool		moved = false;

				/*
				 * Caught up with nothing pending, and past where the last
				 * run failed: that error is over.  Not while tables are
				 * being copied again, though: a failed resync step (the
				 * swap, say) fails only after the next run has caught up,
				 * and its error would flicker away between the attempts.
				 */
				XLogRecPtr	error_lsn;

				SpinLockAcquire(&MySlot->mutex);
				error_lsn = MySlot->error_lsn;
				SpinLockRelease(&MySlot->mutex);
				if (mirror->error_count > 0 && end > error_lsn && !resync_active(mirror))
				{
					bunny_start_transaction();
					PushActiveSnapshot(GetTransactionSnapshot());
					catalog_clear_error(mirror->id);
					PopActiveSnapshot();
					CommitTransactionCommand();
					mirror->error_count = 0;
				}

				SpinLockAcquire(&MySlot->mutex);
				if (end > MySlot->processed_lsn)
				{
					MySlot->processed_lsn = end;
					moved = true;
				}
				MySlot->behind_since = 0;
				SpinLockRelease(&MySlot->mutex);
				if (moved)
					ConditionVariableBroadcast(&MySlot->progress_cv);
			}
		}
		if (reply)
			send_feedback(true, false);
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("unexpected message \"%c\" in the replication stream", kind)));
}

/*
 * Decide on binary transfer: only when every published column has the same
 * built-in type on the destination, and the source's pgoutput knows the
 * binary option (PostgreSQL 14 on; an older one refuses to start).
 */
static bool
decide_binary_mode(void)
{
	StringInfoData sql;
	ListCell   *lc;
	PGresult   *res;
	bool		binary = true;

	if (PQserverVersion(conn) < 140000)
		return false;
	initStringInfo(&sql);
	appendStringInfoString(&sql,
						   "SELECT n.nspname, c.relname, a.attname, a.atttypid "
						   "  FROM pg_catalog.pg_attribute a "
						   "  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
						   "  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
						   " WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' "
						   "   AND (n.nspname, c.relname) IN (");
	foreach(lc, mirror->tables)
	{
		MirrorTable *mt = lfirst(lc);

		appendStringInfo(&sql, "%s(%s, %s)", lc == list_head(mirror->tables) ? "" : ", ",
						 quote_literal_cstr(mt->source_schema), quote_literal_cstr(mt->source_table));
	}
	appendStringInfoChar(&sql, ')');
	res = stream_exec_ok(conn, sql.data, PGRES_TUPLES_OK);

	bunny_start_transaction();
	for (int i = 0; i < PQntuples(res) && binary; i++)
	{
		MirrorTable *mt = mirror_find_table(mirror, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
		char	   *att = PQgetvalue(res, i, 2);
		Oid			typid = (Oid) strtoul(PQgetvalue(res, i, 3), NULL, 10);
		Oid			nspid,
					relid;
		AttrNumber	attnum;
		bool		excluded = false;

		if (mt == NULL)
			continue;
		foreach(lc, mt->exclude_columns)
			if (strcmp(lfirst(lc), att) == 0)
				excluded = true;
		if (excluded)
			continue;
		if (typid >= FirstNormalObjectId)
		{
			binary = false;
			break;
		}
		nspid = get_namespace_oid(mt->dest_schema, true);
		relid = OidIsValid(nspid) ? get_relname_relid(mt->dest_table, nspid) : InvalidOid;
		if (!OidIsValid(relid))
			continue;
		attnum = get_attnum(relid, att);
		if (attnum != InvalidAttrNumber && get_atttype(relid, attnum) != typid)
			binary = false;
	}
	CommitTransactionCommand();
	PQclear(res);
	return binary;
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
static XLogRecPtr replay_saved_final = InvalidXLogRecPtr;

static void
replay_begin(MirrorTable *mt)
{
	apply_replaying = true;
	apply_replay_mt = mt;
	replay_saved_final = remote_final_lsn;
}

static void
replay_finish(void)
{
	writer->flush_inserts(NULL);
}

static void
replay_end(void)
{
	apply_replaying = false;
	apply_replay_mt = NULL;
	remote_final_lsn = replay_saved_final;
}

static const ResyncReplayer apply_replayer = {
	.begin = replay_begin,
	.message = dispatch_raw,
	.finish = replay_finish,
	.end = replay_end,
};

/* a reloaded mirror: entries point at its tables from now on */
static void
apply_refresh_mirror(Mirror *m)
{
	mirror = m;
	relmap_set_mirror(m);
}

/*
 * The slot and the publication must still exist on the source.  Without the
 * slot the changes since last_lsn are gone: nothing but a resync can make
 * the destination whole again, so the mirror fails rather than create a new
 * slot silently.
 */
static void
check_slot_and_publication(bool patient)
{
	PGresult   *res;
	bool		slot_ok,
				pub_ok;

	res = stream_exec_ok(conn,
						 psprintf("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots "
								  "                WHERE slot_name = %s), "
								  "       EXISTS (SELECT 1 FROM pg_catalog.pg_publication "
								  "                WHERE pubname = %s)",
								  quote_literal_cstr(mirror->slot_name),
								  quote_literal_cstr(mirror->publication_name)),
						 PGRES_TUPLES_OK);
	slot_ok = PQgetvalue(res, 0, 0)[0] == 't';
	pub_ok = PQgetvalue(res, 0, 1)[0] == 't';
	PQclear(res);
	if (!slot_ok)
	{
		bunny_error_is_permanent = true;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("replication slot \"%s\" no longer exists on the source", mirror->slot_name),
				 errdetail("Changes made on the source since the last applied position cannot be streamed any more."),
				 errhint("A resync is needed: bunny.resync_mirror('%s').", mirror->name)));
	}
	/*
	 * A slot held by someone else is held by a stale connection of ours (a
	 * worker that died without the source noticing yet): free it.  After
	 * our own reconnect (patient) the old walsender is on its way out: give
	 * it ten seconds before terminating it.
	 */
	for (int tries = 0; slot_ok; tries++)
	{
		char	   *holder;

		res = stream_exec_ok(conn,
							 psprintf("SELECT active_pid FROM pg_catalog.pg_replication_slots "
									  " WHERE slot_name = %s AND active_pid IS NOT NULL",
									  quote_literal_cstr(mirror->slot_name)),
							 PGRES_TUPLES_OK);
		holder = PQntuples(res) > 0 ? pstrdup(PQgetvalue(res, 0, 0)) : NULL;
		PQclear(res);
		if (holder == NULL)
			break;
		if (tries == (patient ? 100 : 0))
		{
			res = stream_exec(conn, psprintf("SELECT pg_catalog.pg_terminate_backend(%s)", holder));
			if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK)
			{
				if (res)
					PQclear(res);
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_IN_USE),
						 errmsg("replication slot \"%s\" is active for PID %s", mirror->slot_name, holder),
						 errhint("Terminate that connection on the source: SELECT pg_terminate_backend(%s);", holder)));
			}
			PQclear(res);
			bunny_log(mirror->name, "WARNING",
					  psprintf("terminated a stale connection (PID %s) that held slot %s", holder,
							   mirror->slot_name), NULL);
		}
		if (tries > (patient ? 150 : 50))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("replication slot \"%s\" is still active for PID %s", mirror->slot_name, holder)));
		pg_usleep(100 * 1000L);
		CHECK_FOR_INTERRUPTS();
	}

	if (!pub_ok)
	{
		bunny_error_is_permanent = true;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("publication \"%s\" no longer exists on the source", mirror->publication_name),
				 errhint("Recreate it on the source (CREATE PUBLICATION %s FOR TABLE ...) with the mirror's tables, then call bunny.retry_mirror('%s').",
						 quote_identifier(mirror->publication_name), mirror->name)));
	}
}

/*
 * The worker stops in good order (pause, a new conninfo, drop) between
 * batches: flush our WAL and report how far we got, so that the slot does
 * not keep an old restart point from which the next walsender would decode
 * again what we already applied.  Best effort: the stop goes on whatever
 * happens to the message.  live_conn is the worker's current connection.
 */
void
apply_send_final_feedback(PGconn *live_conn)
{
	StringInfoData msg;
	XLogRecPtr	flush;

	/* only on the worker's live connection, and only if it is the stream's */
	if (conn == NULL || conn != live_conn || PQstatus(conn) != CONNECTION_OK ||
		in_local_txn || in_remote_txn)
		return;
	if (flush_positions != NIL)
		XLogFlush(((FlushPosition *) llast(flush_positions))->local_end);
	flush = flushed_position();
	feedback_message(&msg, Max(last_received, flush), flush, GetCurrentTimestamp(), false);
	if (PQputCopyData(conn, msg.data, msg.len) == 1)
		(void) PQflush(conn);
	pfree(msg.data);
}

/* between destination transactions: control requests and resync work */
static void
apply_between_batches(void)
{
	Mirror	   *m = bunny_check_control();

	if (m != NULL)
		apply_refresh_mirror(m);
	resync_tick(mirror, &apply_replayer);

	/* a setting changed, or the pause after giving up on a stream is over */
	if (streaming_on != streaming_wanted())
		stream_restart(!streaming_on);
}

/*
 * Stream from the slot and apply until told to stop; returns only by
 * error or proc_exit.
 */
void
apply_stream(PGconn *source_conn, Mirror *m)
{
	XLogRecPtr	startpos;

	mirror = m;
	conn = source_conn;
	ApplyMessageContext = AllocSetContextCreate(TopMemoryContext, "bunnydb apply message",
												ALLOCSET_DEFAULT_SIZES);

	check_slot_and_publication(false);
	apply_binary_mode = decide_binary_mode();
	relmap_init(m, apply_binary_mode);
	writer_init(apply_binary_mode, &copy_source);
	startpos = replorigin_session_get_progress(false);
	last_received = startpos;
	last_flushed_reported = startpos;
	local_flushed_upto = startpos;
	SpinLockAcquire(&MySlot->mutex);
	if (startpos > MySlot->processed_lsn)
		MySlot->processed_lsn = startpos;
	SpinLockRelease(&MySlot->mutex);

	streaming_on = streaming_wanted();
	stream_start_replication(conn, m->slot_name, startpos, m->publication_name, apply_binary_mode,
							 streaming_on);
	{
		bunny_start_transaction();
		PushActiveSnapshot(GetTransactionSnapshot());
		bunny_log(m->name, "DEBUG",
				  psprintf("streaming from %X/%X (%s transfer%s)", LSN_FORMAT_ARGS(startpos),
						   apply_binary_mode ? "binary" : "text",
						   streaming_on ? ", large transactions while they run" : ""), NULL);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}

	for (;;)
	{
		char	   *buf;
		pgsocket	fd = PGINVALID_SOCKET;
		int			len;

		CHECK_FOR_INTERRUPTS();
		if (stashed_buf != NULL)
		{
			/* the message that ended a COPY run */
			buf = stashed_buf;
			len = stashed_len;
			stashed_buf = NULL;
		}
		else
			len = stream_receive(conn, &buf, &fd);
		if (len > 0)
		{
			MemoryContext old = MemoryContextSwitchTo(ApplyMessageContext);

			/* on error the worker exits, so buf needs no PG_TRY */
			apply_copydata(buf, len);
			PQfreemem(buf);
			MemoryContextSwitchTo(old);
			MemoryContextReset(ApplyMessageContext);
			if (stream_restart_pending)
				stream_restart(false);

			if (!in_remote_txn && !in_local_txn)
				apply_between_batches();
			if (TimestampDifferenceExceeds(last_feedback, GetCurrentTimestamp(), FEEDBACK_INTERVAL_MS))
				send_feedback(false, false);
			continue;
		}

		/* nothing is waiting: end the batch now for low latency */
		if (in_local_txn && !in_remote_txn)
			apply_batch_flush();
		if (!in_local_txn)
			apply_between_batches();
		send_feedback(false, false);

		/*
		 * A batch committed within a second of the previous statistics flush
		 * leaves its counts pending, and only the next commit would flush
		 * them: an idle mirror's tables would show too few changes in
		 * pg_stat_user_tables.  As PostgresMain does for an idle backend,
		 * force them out once a wait has passed without anything to do.
		 */
		{
			bool		stats_held = false;
			int			rc;

			if (!in_local_txn && !IsTransactionOrTransactionBlock())
				stats_held = pgstat_report_stat(false) > 0;
			/*
			 * A commit not yet on disk becomes reportable once the WAL
			 * writer flushes it (commits are asynchronous): look again soon
			 * rather than after a whole idle wait.
			 */
			rc = WaitLatchOrSocket(MyLatch,
								   WL_SOCKET_READABLE | WL_LATCH_SET |
								   WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								   fd, flush_positions != NIL ? FLUSH_REPORT_WAIT_MS : IDLE_WAIT_MS,
								   PG_WAIT_EXTENSION);
			if (rc & WL_LATCH_SET)
				ResetLatch(MyLatch);
			if (stats_held && (rc & WL_TIMEOUT))
				pgstat_report_stat(true);
		}
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}
