/*-------------------------------------------------------------------------
 *
 * applyxact.c
 *		Streamed transactions (logical replication protocol version 2):
 *		applying a large source transaction while it is still running.
 *
 * NOTES
 *
 *	With protocol version 2 the source sends a transaction that outgrows
 *	logical_decoding_work_mem while it is still running, in blocks (STREAM
 *	START ... STREAM STOP), each change naming its (sub)transaction.  Such
 *	a transaction is applied as it comes, in a batch of its own
 *	(applybatch.c) that commits at its STREAM COMMIT: savepoints stand for
 *	its subtransactions, so that one can be rolled back alone at its
 *	STREAM ABORT, and the batch's counters go back with it.  A large load
 *	is thus applied while the source is still decoding it.
 *
 *	This only works while nothing else commits on the source in the
 *	meantime: another transaction must become visible before the streamed
 *	one, which may still abort.  Then (and when a table is being copied
 *	again, or a subtransaction aborts after changes of its parent, or there
 *	are too many savepoints) the worker gives up on it: streamxact_give_up
 *	marks the stream for a restart, every message until then is ignored,
 *	and the stream layer (applystream.c) rolls back and starts the stream
 *	again from the last commit without streaming, so the source sends the
 *	transaction again whole after its commit.  Streaming is tried again
 *	after a pause that doubles each time it is given up (1 minute to 1
 *	hour) and is reset by a streamed transaction that commits.
 *
 *	A COPY run (applywriter.c) goes on across the blocks of the streamed
 *	transaction: streamxact_pass_boundary lets its source step over STREAM
 *	STOP and the STREAM START of the same transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "apply_internal.h"

#include "access/xact.h"
#include "libpq/pqformat.h"
#include "replication/origin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define STREAM_RETRY_MIN_MS		60000
#define STREAM_RETRY_MAX_MS		3600000

/* the streamed transaction being applied, and when to stream again */
typedef struct StreamXact
{
	bool		in_block;		/* between STREAM START and STOP */
	TransactionId xid;			/* being applied; Invalid: none */
	TransactionId subxids[STREAM_MAX_SUBXACTS];	/* open savepoints */
	int			nsubxids;
	TransactionId change_xid;	/* (sub)transaction of the latest change */
	bool		restart_pending;	/* given up: the stream restarts */
	TimestampTz retry_at;		/* stream again from then on */
	int			retry_ms;		/* the pause after the next give-up */
	const char *give_up_why;	/* for the restart's log line */
} StreamXact;

static bool streamxact_enter(TransactionId xid);

static StreamXact sx = {
	.xid = InvalidTransactionId,
	.change_xid = InvalidTransactionId,
	.retry_ms = STREAM_RETRY_MIN_MS,
};

/* forget the streamed transaction (its batch was rolled back) */
void
streamxact_reset(void)
{
	sx.in_block = false;
	sx.xid = InvalidTransactionId;
	sx.change_xid = InvalidTransactionId;
	sx.nsubxids = 0;
}

/* is a streamed transaction being applied? */
bool
streamxact_active(void)
{
	return sx.xid != InvalidTransactionId;
}

/* between STREAM START and STREAM STOP? */
bool
streamxact_in_block(void)
{
	return sx.in_block;
}

/* the (sub)transaction of the changes now coming */
TransactionId
streamxact_change_xid(void)
{
	return sx.change_xid;
}

/* did we give up on a streamed transaction, so that the stream restarts? */
bool
streamxact_restart_pending(void)
{
	return sx.restart_pending;
}

/*
 * The stream restarts: the next restart is not pending any more.  Returns
 * why we gave up (NULL if we did not), once, and when streaming is to be
 * tried again.
 */
const char *
streamxact_restarting(TimestampTz *retry_at)
{
	const char *why = sx.give_up_why;

	sx.restart_pending = false;
	sx.give_up_why = NULL;
	*retry_at = sx.retry_at;
	return why;
}

/* may the source stream large transactions to us now (if it can)? */
bool
streamxact_retry_due(void)
{
	return GetCurrentTimestamp() >= sx.retry_at;
}

/* STREAM STOP: the end of a block */
void
streamxact_stop(void)
{
	sx.in_block = false;
}

/*
 * A message is about to be dispatched: false if it is to be ignored (we
 * gave up on the streamed transaction, the stream restarts).  Inside a
 * streamed block a change names its (sub)transaction: *msg and *len are
 * then set to the message without it, which the handlers and the resync
 * queue get.
 */
bool
streamxact_accept(char action, StringInfo s, const char **msg, int *len)
{
	/* the stream restarts after this message: the source sends it again */
	if (sx.restart_pending)
		return false;

	if (sx.in_block &&
		(action == LOGICAL_REP_MSG_INSERT || action == LOGICAL_REP_MSG_UPDATE ||
		 action == LOGICAL_REP_MSG_DELETE || action == LOGICAL_REP_MSG_TRUNCATE ||
		 action == LOGICAL_REP_MSG_RELATION || action == LOGICAL_REP_MSG_TYPE ||
		 action == LOGICAL_REP_MSG_MESSAGE))
	{
		TransactionId xid = pq_getmsgint(s, 4);
		char	   *plain = palloc(s->len - s->cursor + 1);

		plain[0] = action;
		memcpy(plain + 1, s->data + s->cursor, s->len - s->cursor);
		s->data = plain;
		s->len = s->len - s->cursor + 1;
		s->cursor = 1;
		*msg = plain;
		*len = s->len;
		if (!streamxact_enter(xid))
			return false;
	}
	return true;
}

/*
 * A streamed transaction cannot be applied as it comes (another transaction
 * interleaves, a table is being resynced, too many savepoints): give up on
 * it and restart the stream without streaming from the last commit, so the
 * source sends it again whole, after its commit.  Done by the main loop
 * once the current message is handled; until then messages are ignored.
 */
void
streamxact_give_up(const char *why)
{
	if (sx.restart_pending)
		return;
	sx.restart_pending = true;
	sx.give_up_why = why;
	sx.retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), sx.retry_ms);
	sx.retry_ms = Min(sx.retry_ms * 2, STREAM_RETRY_MAX_MS);
	elog(DEBUG1, "bunnydb: not applying a streamed transaction as it comes: %s", why);
}

/* STREAM START: a block of changes of a transaction in progress */
void
streamxact_start(StringInfo s, ApplyBatch *b, Mirror *mirror)
{
	bool		first;
	TransactionId xid = logicalrep_read_stream_start(s, &first);
	XLogRecPtr	committed;
	ListCell   *lc;

	if (sx.restart_pending)
		return;
	if (sx.xid == InvalidTransactionId)
	{
		/* the batch so far holds whole transactions: commit it first */
		if (b->in_local_txn)
			batch_flush(b, mirror);
		if (!first)
		{
			streamxact_give_up("the stream continues a transaction whose start was not applied");
			return;
		}
		if (resync_active(mirror))
		{
			streamxact_give_up("a table is being copied again");
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

			/* a STALE table's changes are all skipped: no copy to wait for */
			if (mt->sync_lsn == TABLE_STALE_LSN)
				continue;
			if (mt->sync_lsn != InvalidXLogRecPtr && mt->sync_lsn >= committed)
			{
				streamxact_give_up("a table's copy is newer than the last applied commit");
				return;
			}
		}
		batch_begin(b);
		sx.xid = xid;
		sx.change_xid = xid;
		sx.nsubxids = 0;
		b->in_remote_txn = true;
		/* a lower bound for the routing of changes (change_route) */
		b->remote_final_lsn = committed + 1;
		b->errctx.lsn = InvalidXLogRecPtr;
	}
	else if (xid != sx.xid)
	{
		streamxact_give_up("two large transactions run at once");
		return;
	}
	sx.in_block = true;
}

/*
 * A change inside a streamed block belongs to xid, the transaction or one
 * of its subtransactions: each subtransaction gets a savepoint, so that its
 * abort can be rolled back alone.  False if the change is to be ignored.
 */
static bool
streamxact_enter(TransactionId xid)
{
	bool		known = (xid == sx.xid);
	HASH_SEQ_STATUS status;
	RelMapEntry *e;

	if (sx.restart_pending)
		return false;
	if (xid == sx.change_xid)
		return true;
	/* what is pending belongs to the previous (sub)transaction's savepoint */
	apply_writer.flush_inserts(NULL);
	apply_writer.flush_folded(NULL);
	for (int i = 0; i < sx.nsubxids && !known; i++)
		known = (sx.subxids[i] == xid);
	if (!known)
	{
		MemoryContext old = CurrentMemoryContext;

		if (sx.nsubxids >= STREAM_MAX_SUBXACTS)
		{
			streamxact_give_up("too many subtransactions");
			return false;
		}
		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(old);
		/* the counters go back to these if the subtransaction aborts */
		relmap_seq_init(&status);
		while ((e = hash_seq_search(&status)) != NULL)
		{
			e->saved_counts[sx.nsubxids][0] = e->n_ins;
			e->saved_counts[sx.nsubxids][1] = e->n_upd;
			e->saved_counts[sx.nsubxids][2] = e->n_del;
		}
		sx.subxids[sx.nsubxids++] = xid;
	}
	sx.change_xid = xid;
	return true;
}

/* STREAM COMMIT: the streamed transaction committed; so does its batch */
void
streamxact_commit(StringInfo s, ApplyBatch *b, Mirror *mirror)
{
	LogicalRepCommitData commit;
	TransactionId xid = logicalrep_read_stream_commit(s, &commit);
	MemoryContext old = CurrentMemoryContext;

	if (sx.restart_pending)
		return;
	if (xid != sx.xid)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("commit of streamed transaction %u, but %u is the one applied",
						xid, sx.xid)));
	apply_writer.flush_inserts(NULL);
	apply_writer.flush_folded(NULL);
	while (sx.nsubxids > 0)
	{
		ReleaseCurrentSubTransaction();
		sx.nsubxids--;
	}
	MemoryContextSwitchTo(old);
	sx.in_block = false;
	sx.xid = InvalidTransactionId;
	sx.change_xid = InvalidTransactionId;
	batch_source_commit(b, commit.end_lsn, commit.committime);
	batch_flush(b, mirror);
	sx.retry_ms = STREAM_RETRY_MIN_MS;
}

/* STREAM ABORT of the streamed transaction or of one of its subtransactions */
void
streamxact_abort(StringInfo s, ApplyBatch *b)
{
	TransactionId xid;
	TransactionId subxid;
	int			level = -1;
	int			change_level = -1;
	MemoryContext old = CurrentMemoryContext;
	HASH_SEQ_STATUS status;
	RelMapEntry *e;

	logicalrep_read_stream_abort(s, &xid, &subxid);
	if (sx.restart_pending || xid != sx.xid)
		return;					/* nothing of it was applied */
	if (subxid == xid)
	{
		batch_abort(b);
		streamxact_reset();
		return;
	}
	for (int i = 0; i < sx.nsubxids; i++)
	{
		if (sx.subxids[i] == subxid)
			level = i;
		if (sx.subxids[i] == sx.change_xid)
			change_level = i;
	}
	if (level < 0)
		return;					/* none of its changes came */

	/*
	 * The pending rows belong to sx.change_xid; they go with the abort
	 * only if that is the aborted subtransaction or one inside it.
	 */
	if (change_level < level)
	{
		streamxact_give_up("a subtransaction aborted after changes of its parent");
		return;
	}
	apply_writer.discard();
	while (sx.nsubxids > level)
	{
		RollbackAndReleaseCurrentSubTransaction();
		sx.nsubxids--;
	}
	MemoryContextSwitchTo(old);
	relmap_seq_init(&status);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		e->n_ins = e->saved_counts[level][0];
		e->n_upd = e->saved_counts[level][1];
		e->n_del = e->saved_counts[level][2];
	}
	sx.change_xid = level > 0 ? sx.subxids[level - 1] : sx.xid;
}

/*
 * Pass over the boundary between two blocks of the streamed transaction
 * being applied: STREAM STOP, then STREAM START of the same transaction.
 * A run of INSERTs in a large transaction then stays one COPY -- one
 * bulk-insert buffer ring, not one per block.  True if msg was such a
 * message and is done with.
 */
bool
streamxact_pass_boundary(const char *msg, int len)
{
	if (sx.in_block && len == 1 && msg[0] == LOGICAL_REP_MSG_STREAM_STOP)
	{
		sx.in_block = false;	/* what the main loop would do */
		return true;
	}
	if (!sx.in_block && sx.xid != InvalidTransactionId && !sx.restart_pending &&
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
		if (xid == sx.xid && !first)
		{
			sx.in_block = true;
			return true;
		}
	}
	return false;
}

