/*-------------------------------------------------------------------------
 *
 * applybatch.c
 *		The destination transaction of the apply: a batch of whole source
 *		transactions, or one streamed transaction (applyxact.c).  Opens
 *		it, commits it with the replication origin's new position and the
 *		batch's counters, rolls it back, and keeps the flush map: which
 *		source position each committed batch stands for once its local
 *		commit is on disk.
 *
 * Exactly once.  The worker's session is bound to the mirror's replication
 * origin.  Before a destination transaction commits, the origin's position
 * is set to the end LSN of the last source transaction it contains, so the
 * data and the progress commit atomically in one commit record.  After a
 * crash the stream restarts from the origin's position: whatever was
 * committed is not applied again and whatever was not is sent again by the
 * source.  We commit asynchronously; the flush map (source end LSN ->
 * local commit LSN, like the built-in apply worker's) lets the stream
 * layer tell the slot a position is flushed only once the local commit
 * that contains it is on disk, so the source never discards WAL we might
 * still need.
 *
 * The ApplyBatch is the apply's (apply.c); these functions get it as an
 * argument.
 *
 *-------------------------------------------------------------------------
 */
#include "apply_internal.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "pgstat.h"
#include "replication/origin.h"
#include "storage/condition_variable.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* source end LSN of a committed batch and its local commit LSN */
typedef struct FlushPosition
{
	XLogRecPtr	local_end;
	XLogRecPtr	remote_end;
} FlushPosition;

/* committed batches whose local commit may not be on disk yet */
typedef struct FlushMap
{
	List	   *positions;		/* of FlushPosition, in commit order */
	XLogRecPtr	flushed_upto;	/* source end LSN whose local commit is on
								 * disk */
} FlushMap;

static FlushMap flushmap = {NIL, InvalidXLogRecPtr};

/* open the destination transaction of a batch if none is open */
void
batch_begin(ApplyBatch *b)
{
	if (b->in_local_txn)
		return;
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	writer_batch_begin();
	b->in_local_txn = true;
	b->start = GetCurrentTimestamp();
	b->changes = 0;
}

/* a source transaction of the batch committed at end_lsn */
void
batch_source_commit(ApplyBatch *b, XLogRecPtr end_lsn, TimestampTz committime)
{
	b->in_remote_txn = false;
	b->last_end = end_lsn;
	b->last_commit_time = committime;
	b->received_end = Max(b->received_end, end_lsn);
}

/*
 * Roll back the open destination transaction and forget the batch.  What
 * was pending in the writer goes too; the caller forgets its streamed
 * transaction.
 */
void
batch_abort(ApplyBatch *b)
{
	HASH_SEQ_STATUS status;
	RelMapEntry *e;

	MemoryContext old = CurrentMemoryContext;

	apply_writer.discard();
	/* with its savepoints: AbortCurrentTransaction would end only the last */
	AbortOutOfAnyTransaction();
	MemoryContextSwitchTo(old);
	writer_batch_end(false);
	b->in_local_txn = false;
	b->in_remote_txn = false;
	b->last_end = InvalidXLogRecPtr;
	b->keepalive_lsn = InvalidXLogRecPtr;
	b->received_end = InvalidXLogRecPtr;
	b->changes = 0;
	b->errctx.lsn = InvalidXLogRecPtr;
	relmap_seq_init(&status);
	while ((e = hash_seq_search(&status)) != NULL)
		e->n_ins = e->n_upd = e->n_del = 0;
	workerslot_clear_pending_commit();
}

/*
 * Write the batch's counters into bunny.mirror and bunny.mirror_table.  The
 * mirror row first: control functions lock it before the table rows, and
 * taking the locks in the same order keeps the two from deadlocking.
 */
static void
batch_counters(Mirror *mirror)
{
	static SPIPlanPtr mirror_plan = NULL;
	static SPIPlanPtr table_plan = NULL;
	HASH_SEQ_STATUS status;
	RelMapEntry *e;
	int64		total = 0;
	Datum		values[6];

	/*
	 * A committed batch means the mirror's last error is over, unless a
	 * resync is pending: its failing step (the swap, say) fails only after
	 * the next run has caught up, and its error would flicker away between
	 * the attempts.
	 */
	bool		clear_error = !resync_active(mirror);

	relmap_seq_init(&status);
	while ((e = hash_seq_search(&status)) != NULL)
		total += e->n_ins + e->n_upd + e->n_del;

	SPI_connect();
	/* once per batch, every batch: parse and plan them once per process */
	if (mirror_plan == NULL)
	{
		Oid			t3[3] = {INT4OID, INT8OID, BOOLOID};
		Oid			t6[6] = {INT4OID, TEXTOID, TEXTOID, INT8OID, INT8OID, INT8OID};
		SPIPlanPtr	mp;
		SPIPlanPtr	tp;

		mp = SPI_prepare("UPDATE bunny.mirror "
						 "   SET total_rows_synced = total_rows_synced + $2, "
						 "       last_sync_time = now(), "
						 "       error_count = CASE WHEN $3 THEN 0 ELSE error_count END, "
						 "       error_message = CASE WHEN $3 THEN NULL ELSE error_message END "
						 " WHERE id = $1", 3, t3);
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
	values[2] = BoolGetDatum(clear_error);
	SPI_execute_plan(mirror_plan, values, NULL, false, 0);
	relmap_seq_init(&status);
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
	if (clear_error)
		mirror->error_count = 0;
}

/*
 * Commit the open batch together with the origin's new position, then
 * remember where it went for the flush feedback.
 */
void
batch_flush(ApplyBatch *b, Mirror *mirror)
{
	FlushPosition *fp;
	XLogRecPtr	processed;

	if (!b->in_local_txn)
		return;
	Assert(!b->in_remote_txn);

	writer_batch_end(true);
	if (b->last_end != InvalidXLogRecPtr)
	{
		batch_counters(mirror);
		replorigin_session_origin_lsn = b->last_end;
		replorigin_session_origin_timestamp = b->last_commit_time;
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
	b->in_local_txn = false;

	processed = Max(b->last_end, b->keepalive_lsn);
	if (b->last_end != InvalidXLogRecPtr)
	{
		fp = MemoryContextAlloc(relmap_context(), sizeof(FlushPosition));
		fp->local_end = XactLastCommitEnd;
		fp->remote_end = b->last_end;
		flushmap.positions = apply_list_append_in(relmap_context(), flushmap.positions, fp);
	}

	workerslot_report_applied(processed, b->last_commit_time);

	b->last_end = InvalidXLogRecPtr;
	b->keepalive_lsn = InvalidXLogRecPtr;
	b->changes = 0;
	b->errctx.lsn = InvalidXLogRecPtr;
}

/* the flush map starts at the position the stream starts from */
void
batch_flushmap_init(XLogRecPtr startpos)
{
	flushmap.flushed_upto = startpos;
}

/*
 * The source position up to which our local commits are on disk; *empty:
 * no committed batch waits for its flush any more.
 */
XLogRecPtr
batch_flushed_upto(bool *empty)
{
	XLogRecPtr	local_flush = GetFlushRecPtr(NULL);

	while (flushmap.positions != NIL)
	{
		FlushPosition *fp = linitial(flushmap.positions);

		if (fp->local_end > local_flush)
			break;
		flushmap.flushed_upto = Max(flushmap.flushed_upto, fp->remote_end);
		flushmap.positions = list_delete_first(flushmap.positions);
		pfree(fp);
	}
	*empty = flushmap.positions == NIL;
	return flushmap.flushed_upto;
}

/* does a committed batch wait for its local commit to reach disk? */
bool
batch_flush_pending(void)
{
	return flushmap.positions != NIL;
}

/* flush the WAL of every committed batch (the worker stops) */
void
batch_flush_wal(void)
{
	if (flushmap.positions != NIL)
		XLogFlush(((FlushPosition *) llast(flushmap.positions))->local_end);
}
