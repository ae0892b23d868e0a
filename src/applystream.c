/*-------------------------------------------------------------------------
 *
 * applystream.c
 *		The CDC phase's replication connection: start streaming from the
 *		mirror's slot, receive XLogData and keepalives, hand each pgoutput
 *		message to the apply (apply.c), report progress to the slot, and
 *		restart the stream when needed.  The only code that reads or writes
 *		the connection -- a COPY run (applywriter.c) reads the following
 *		messages through the CopyRunSource here.
 *
 * NOTES
 *
 *	Feedback.  The slot is told that a position is flushed only once the
 *	local commit that contains it is on disk (the flush map of
 *	applybatch.c), so the source never discards WAL we might still need.
 *	Standby status updates go out when a position moved, when the
 *	walsender asks, and at least every FEEDBACK_INTERVAL_MS.
 *
 *	Latency.  When nothing more is waiting on the connection the open
 *	batch is committed at once (the batch also ends at max_batch_size
 *	changes and after idle_timeout_seconds or bunny.max_batch_latency, see
 *	apply.c): a source that does not flood us sees its changes applied
 *	within a round trip.
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
 *	Errors.  A run that failed left its error in bunny.mirror (and the
 *	table it names); the next run clears it once it is over: at a keepalive
 *	with nothing pending at or past both where streaming started and where
 *	the failed run stopped (past the commit of the transaction that failed,
 *	if one did; workerslot_error_lsn).  Everything the source had sent by
 *	then is applied, so the cause is gone.  An idle source sends no
 *	keepalive once we have reported all it sent as flushed, so while an
 *	error waits to be cleared we ask for one every second.  Not while
 *	tables are being copied again, though: a failed resync step (the swap,
 *	say) fails only after the next run has caught up, and its error would
 *	flicker away between the attempts; once the copies are in, the next
 *	keepalive clears it.  A committed batch clears it too (applybatch.c).
 *
 *	Restarts.  Giving up on a streamed transaction (applyxact.c) and a
 *	change of bunny.stream_large_transactions restart the stream from the
 *	origin's position, on a new connection, after rolling the open batch
 *	back.
 *
 *-------------------------------------------------------------------------
 */
#include "apply_internal.h"
#include "source.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "replication/origin.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#define FEEDBACK_INTERVAL_MS	10000
#define IDLE_WAIT_MS			1000
#define FLUSH_REPORT_WAIT_MS	200 /* about wal_writer_delay */

/* the stream and what we told the walsender about it */
typedef struct ApplyStream
{
	PGconn	   *conn;			/* the replication connection */
	SourceInfo *source;			/* what its server can do: asked before
								 * streaming starts, since a connection in
								 * COPY BOTH mode takes no queries */
	Mirror	   *mirror;
	ApplyBatch *batch;			/* the apply's: what is in flight */
	bool		binary;			/* pgoutput binary transfer */
	bool		streaming;		/* started with streaming (protocol 2) */
	MemoryContext message_cxt;	/* reset after each message */
	XLogRecPtr	last_received;	/* everything before it is received */
	XLogRecPtr	last_flushed_reported;
	XLogRecPtr	last_write_reported;
	TimestampTz last_feedback;
	char	   *copy_buf;		/* the message last handed to a COPY run */
	int			copy_len;
	char	   *stashed_buf;	/* the message that ended a COPY run */
	int			stashed_len;
	bool		error_pending;	/* an earlier run's error may still be
								 * recorded: clear it once over */
	XLogRecPtr	error_over_at;	/* ... at a keepalive this far */
	TimestampTz last_reply_request;
} ApplyStream;

static ApplyStream st;

static void apply_copydata(char *buf, int len);
static void send_feedback(bool force, bool request_reply);
static void check_slot_and_publication(bool patient);

/*
 * The header of an XLogData message ('w': WAL start, WAL end, send time);
 * s->cursor is left at the pgoutput message it carries.
 */
static void
xlogdata_header(StringInfo s, XLogRecPtr *start, XLogRecPtr *end)
{
	s->cursor = 1;
	*start = pq_getmsgint64(s);
	*end = pq_getmsgint64(s);
	(void) pq_getmsgint64(s);	/* send time */
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
		len = stream_receive(st.conn, buf, &fd);
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
 * The COPY run's source of rows (see CopyRunSource): the messages that
 * follow on the connection.  st.copy_buf is the one last handed out, freed
 * when the next is asked for; st.stashed_buf the one that ended a run,
 * which the main loop handles next.
 */
static const char *
copy_source_next(int *len, bool *has_xid)
{
	if (st.copy_buf != NULL)
		PQfreemem(st.copy_buf);
	st.copy_buf = NULL;
	for (;;)
	{
		char	   *buf;
		int			n = copy_run_receive(&buf);

		if (buf[0] == 'w' && n > 25)
		{
			XLogRecPtr	start;
			XLogRecPtr	end;
			StringInfoData h;

			h.data = buf;
			h.len = n;
			h.maxlen = -1;
			h.cursor = 1;
			xlogdata_header(&h, &start, &end);
			if (streamxact_pass_boundary(h.data + h.cursor, h.len - h.cursor))
			{
				PQfreemem(buf);
				continue;
			}
			workerslot_report_source_lsn(end);
			st.copy_buf = buf;
			st.copy_len = n;
			*len = h.len - h.cursor;
			*has_xid = streamxact_in_block();
			return h.data + h.cursor;
		}
		else if (buf[0] == 'k')
		{
			apply_copydata(buf, n);
			PQfreemem(buf);
			continue;
		}
		st.stashed_buf = buf;
		st.stashed_len = n;
		return NULL;
	}
}

static void
copy_source_keep(void)
{
	st.stashed_buf = st.copy_buf;
	st.stashed_len = st.copy_len;
	st.copy_buf = NULL;
}

static const CopyRunSource copy_source = {
	.next = copy_source_next,
	.keep = copy_source_keep,
};

/* restart the stream from the last commit, with or without streaming */
static void
stream_restart(bool streaming)
{
	XLogRecPtr	startpos;
	MemoryContext old = CurrentMemoryContext;
	const char *give_up_why;
	TimestampTz retry_at;

	batch_abort(st.batch);
	streamxact_reset();
	if (st.stashed_buf != NULL)
		PQfreemem(st.stashed_buf);
	st.stashed_buf = NULL;
	give_up_why = streamxact_restarting(&retry_at);

	stream_disconnect(&st.conn);
	st.conn = mirror_connect(st.mirror, true);
	st.source = source_info(st.conn);
	/* the walsender of the old connection may still hold the slot */
	check_slot_and_publication(true);
	/* durable before it is reported as flushed: see apply_stream */
	startpos = replorigin_session_get_progress(true);
	st.last_received = startpos;
	st.streaming = streaming;
	stream_start_replication(st.conn, st.mirror->slot_name, startpos, st.mirror->publication_name,
							 st.binary, st.streaming);
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	{
		const char *why = "";

		/* after giving up, say why in bunny.logs: a bulk load came late */
		if (!streaming && give_up_why != NULL)
			why = psprintf(": gave up applying one as it came (%s); trying again in %ld s",
						   give_up_why,
						   (TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
															retry_at) + 999) / 1000);
		bunny_log(st.mirror->name, "DEBUG",
				  psprintf("streaming again from %X/%X, %s%s", LSN_FORMAT_ARGS(startpos),
						   streaming ? "applying large transactions while they run" :
						   "large transactions after their commit", why), NULL);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(old);
}

/* may the source stream large transactions to us now? */
static bool
streaming_wanted(void)
{
	return bunny_stream_large_transactions && st.source->streaming &&
		streamxact_retry_due();
}

/*
 * The source position up to which our local commits are flushed, never
 * less than what was reported before.  It does not change what was last
 * reported: send_feedback compares the two to see whether it moved.
 */
static XLogRecPtr
flushed_position(void)
{
	bool		none_pending;
	XLogRecPtr	flushed = Max(st.last_flushed_reported, batch_flushed_upto(&none_pending));

	/* nothing of ours in flight: everything received is done */
	if (none_pending && !st.batch->in_local_txn && !st.batch->in_remote_txn)
		flushed = Max(flushed, st.last_received);
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
	XLogRecPtr	write = Max(st.last_received, flush);
	TimestampTz now = GetCurrentTimestamp();

	if (!force && write == st.last_write_reported && flush == st.last_flushed_reported &&
		!TimestampDifferenceExceeds(st.last_feedback, now, FEEDBACK_INTERVAL_MS))
		return;
	feedback_message(&msg, write, flush, now, request_reply);
	stream_send(st.conn, msg.data, msg.len);
	pfree(msg.data);

	st.last_flushed_reported = flush;
	st.last_write_reported = write;
	st.last_feedback = now;
}

/*
 * The error an earlier run recorded is over (see NOTES, Errors): clear it,
 * and the tables' with it.
 */
static void
clear_error(void)
{
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	catalog_clear_error(st.mirror->id);
	PopActiveSnapshot();
	CommitTransactionCommand();
	st.mirror->error_count = 0;
	st.error_pending = false;
}

/*
 * Idle with an error still to clear: ask the walsender for a keepalive,
 * once a second, since an idle source sends none once we have reported
 * everything it sent as flushed.
 */
static void
request_keepalive(void)
{
	TimestampTz now = GetCurrentTimestamp();

	if (!st.error_pending || st.batch->in_local_txn || st.batch->in_remote_txn ||
		resync_active(st.mirror) ||
		!TimestampDifferenceExceeds(st.last_reply_request, now, IDLE_WAIT_MS))
		return;
	st.last_reply_request = now;
	send_feedback(true, true);
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
		XLogRecPtr	start;
		XLogRecPtr	end;

		xlogdata_header(&s, &start, &end);
		if (start > st.last_received && st.batch->in_remote_txn)
			st.last_received = Max(st.last_received, start);
		workerslot_report_source_lsn(end);
		apply_dispatch(&s);
		/* a source commit: everything up to its end is received */
		st.last_received = Max(st.last_received, st.batch->received_end);
	}
	else if (kind == 'k')
	{
		XLogRecPtr	end = pq_getmsgint64(&s);
		bool		reply;

		(void) pq_getmsgint64(&s);	/* send time */
		reply = pq_getmsgbyte(&s);

		workerslot_report_source_lsn(end);

		if (!st.batch->in_remote_txn)
		{
			/* everything before this keepalive has been received */
			st.last_received = Max(st.last_received, end);
			if (st.batch->in_local_txn)
				st.batch->keepalive_lsn = Max(st.batch->keepalive_lsn, end);
			else
			{
				if (st.error_pending && end >= st.error_over_at &&
					!resync_active(st.mirror))
					clear_error();
				workerslot_report_caught_up(end);
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
 *
 * The destination's side is one query over the catalogs rather than a
 * syscache lookup per column: those lookups left a cache entry per table
 * and column in the worker for good (some 40 MB at 10 000 tables), and
 * finding each column's table in the mirror's list was quadratic.
 */
static bool
decide_binary_mode(void)
{
	ListCell   *lc;
	List	   *schemas = NIL;
	List	   *tables = NIL;
	List	   *types;
	ArrayBuildState *arr[4];
	Oid			argtypes[6] = {INT4OID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, OIDARRAYOID, OIDOID};
	Datum		args[6];
	char	   *answer;
	bool		binary;

	if (!st.source->binary)
		return false;

	/* a column binary could not carry is still ahead in the stream */
	if (workerslot_text_required())
		return false;

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	foreach(lc, st.mirror->tables)
	{
		MirrorTable *mt = lfirst(lc);

		schemas = lappend(schemas, mt->source_schema);
		tables = lappend(tables, mt->source_table);
	}
	types = source_column_types(st.conn, schemas, tables);

	arr[0] = initArrayResult(TEXTOID, CurrentMemoryContext, false);
	arr[1] = initArrayResult(TEXTOID, CurrentMemoryContext, false);
	arr[2] = initArrayResult(TEXTOID, CurrentMemoryContext, false);
	arr[3] = initArrayResult(OIDOID, CurrentMemoryContext, false);
	foreach(lc, types)
	{
		SourceColumnType *ct = lfirst(lc);

		accumArrayResult(arr[0], CStringGetTextDatum(ct->schema), false, TEXTOID, CurrentMemoryContext);
		accumArrayResult(arr[1], CStringGetTextDatum(ct->table), false, TEXTOID, CurrentMemoryContext);
		accumArrayResult(arr[2], CStringGetTextDatum(ct->column), false, TEXTOID, CurrentMemoryContext);
		accumArrayResult(arr[3], ObjectIdGetDatum(ct->typid), false, OIDOID, CurrentMemoryContext);
	}
	args[0] = Int32GetDatum(st.mirror->id);
	for (int i = 0; i < 4; i++)
		args[1 + i] = makeArrayResult(arr[i], CurrentMemoryContext);
	args[5] = ObjectIdGetDatum(FirstNormalObjectId);

	/*
	 * A user-defined type (its OID is the source's own) rules binary out
	 * even where the destination lacks the column yet; a built-in one must
	 * match the destination column's type where there is one.
	 */
	answer = bunny_spi_scalar("SELECT coalesce(pg_catalog.bool_and(s.typid < $6 "
							  "           AND (a.atttypid IS NULL OR a.atttypid = s.typid)), true)::text "
							  "  FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), "
							  "                 pg_catalog.unnest($4), pg_catalog.unnest($5)) s(sch, tab, col, typid) "
							  "  JOIN bunny.mirror_table t "
							  "    ON t.mirror_id = $1 AND t.source_schema = s.sch AND t.source_table = s.tab "
							  "  LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = t.destination_schema "
							  "  LEFT JOIN pg_catalog.pg_class c "
							  "    ON c.relnamespace = n.oid AND c.relname = t.destination_table "
							  "  LEFT JOIN pg_catalog.pg_attribute a "
							  "    ON a.attrelid = c.oid AND a.attname = s.col AND a.attnum > 0 "
							  "   AND NOT a.attisdropped "
							  " WHERE s.col::name <> ALL (coalesce(t.exclude_columns, '{}'))",
							  6, argtypes, args, NULL);
	binary = strcmp(answer, "true") == 0;
	PopActiveSnapshot();
	CommitTransactionCommand();
	return binary;
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
	bool		slot_ok,
				pub_ok;

	slot_ok = source_slot_exists(st.conn, st.mirror->slot_name, NULL, NULL);
	pub_ok = source_publication_exists(st.conn, st.mirror->publication_name, NULL);
	if (!slot_ok)
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("replication slot \"%s\" no longer exists on the source", st.mirror->slot_name),
				 errdetail("Changes made on the source since the last applied position cannot be streamed any more."),
				 errhint("A resync is needed: bunny.resync_mirror('%s').", st.mirror->name)));
	}

	/*
	 * A slot held by someone else is held by a stale connection of ours (a
	 * worker that died without the source noticing yet): free it.  After
	 * our own reconnect (patient) the old walsender is on its way out: give
	 * it ten seconds before terminating it.  Waiting on the latch keeps the
	 * worker responsive to shutdown.
	 */
	for (int tries = 0;; tries++)
	{
		char	   *holder = NULL;

		if (!source_slot_exists(st.conn, st.mirror->slot_name, &holder, NULL) || holder == NULL)
			break;
		if (tries == (patient ? 100 : 0))
		{
			if (!source_terminate_backend(st.conn, holder))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_IN_USE),
						 errmsg("replication slot \"%s\" is active for PID %s", st.mirror->slot_name, holder),
						 errhint("Terminate that connection on the source: SELECT pg_terminate_backend(%s);", holder)));
			bunny_log(st.mirror->name, "WARNING",
					  psprintf("terminated a stale connection (PID %s) that held slot %s", holder,
							   st.mirror->slot_name), NULL);
		}
		if (tries > (patient ? 150 : 50))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("replication slot \"%s\" is still active for PID %s", st.mirror->slot_name, holder)));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	if (!pub_ok)
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("publication \"%s\" no longer exists on the source", st.mirror->publication_name),
				 errdetail("The changes written while it was missing cannot be decoded through the slot any more, even once a publication of that name exists again."),
				 errhint("On the source run SELECT pg_drop_replication_slot('%s'), then call bunny.resync_mirror('%s'): setup creates a new publication and slot and copies the tables again.",
						 st.mirror->slot_name, st.mirror->name)));
	}
}

/*
 * Close the replication connection, which is ours from apply_stream() on.
 * When the worker stops in good order (pause, a new conninfo, drop)
 * between batches, final_feedback first flushes our WAL and reports how
 * far we got, so that the slot does not keep an old restart point from
 * which the next walsender would decode again what we already applied.
 * Best effort: the stop goes on whatever happens to the message.  Without
 * a stream (setup, the initial copy) there is nothing to do.
 */
void
apply_stream_close(bool final_feedback)
{
	StringInfoData msg;
	XLogRecPtr	flush;

	if (final_feedback && st.conn != NULL && PQstatus(st.conn) == CONNECTION_OK &&
		st.batch != NULL && !st.batch->in_local_txn && !st.batch->in_remote_txn)
	{
		batch_flush_wal();
		flush = flushed_position();
		feedback_message(&msg, Max(st.last_received, flush), flush, GetCurrentTimestamp(), false);
		if (PQputCopyData(st.conn, msg.data, msg.len) == 1)
			(void) PQflush(st.conn);
		pfree(msg.data);
	}
	stream_disconnect(&st.conn);
}

/* between destination transactions: control requests and resync work */
static void
apply_between_batches(void)
{
	Mirror	   *m = bunny_check_control();

	if (m != NULL)
	{
		st.mirror = m;
		apply_set_mirror(m);
	}
	resync_tick(st.mirror, &apply_replayer);

	/* a setting changed, or the pause after giving up on a stream is over */
	if (st.streaming != streaming_wanted())
		stream_restart(!st.streaming);
}

/*
 * Stream from the slot and apply until told to stop; returns only by
 * error or proc_exit.  The connection becomes ours: we restart the stream
 * on a new one when options change, and apply_stream_close() closes it.
 */
void
apply_stream(PGconn *conn, Mirror *m)
{
	XLogRecPtr	startpos;

	st.mirror = m;
	st.conn = conn;
	st.source = source_info(st.conn);
	st.message_cxt = AllocSetContextCreate(TopMemoryContext, "bunnydb apply message",
										   ALLOCSET_DEFAULT_SIZES);

	check_slot_and_publication(false);
	st.binary = decide_binary_mode();
	st.batch = apply_init(m, st.binary, &copy_source);

	/*
	 * The position we start from is reported to the walsender as flushed
	 * with the first feedback, and the slot then never sends what lies
	 * before it again.  The origin's position in shared memory is that of
	 * the last local commit, which is asynchronous (synchronous_commit is
	 * off in this worker) and may not be on disk yet: an earlier run of
	 * this mirror can have committed a batch and exited a moment ago.
	 * Were the destination to crash before the WAL writer wrote it, that
	 * batch would be gone here while the slot had moved past it.  true
	 * flushes our WAL up to that commit first.
	 */
	startpos = replorigin_session_get_progress(true);
	st.last_received = startpos;
	st.last_flushed_reported = startpos;
	batch_flushmap_init(startpos);
	workerslot_report_start(startpos);
	st.error_pending = true;
	st.error_over_at = Max(startpos, workerslot_error_lsn());
	st.last_reply_request = 0;

	st.streaming = streaming_wanted();
	stream_start_replication(st.conn, m->slot_name, startpos, m->publication_name, st.binary,
							 st.streaming);
	{
		bunny_start_transaction();
		PushActiveSnapshot(GetTransactionSnapshot());
		bunny_log(m->name, "DEBUG",
				  psprintf("streaming from %X/%X (%s transfer%s)", LSN_FORMAT_ARGS(startpos),
						   st.binary ? "binary" : "text",
						   st.streaming ? ", large transactions while they run" : ""), NULL);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}

	for (;;)
	{
		char	   *buf;
		pgsocket	fd = PGINVALID_SOCKET;
		int			len;

		CHECK_FOR_INTERRUPTS();
		if (st.stashed_buf != NULL)
		{
			/* the message that ended a COPY run */
			buf = st.stashed_buf;
			len = st.stashed_len;
			st.stashed_buf = NULL;
		}
		else
			len = stream_receive(st.conn, &buf, &fd);
		if (len > 0)
		{
			MemoryContext old = MemoryContextSwitchTo(st.message_cxt);

			/* on error the worker exits, so buf needs no PG_TRY */
			apply_copydata(buf, len);
			PQfreemem(buf);
			MemoryContextSwitchTo(old);
			MemoryContextReset(st.message_cxt);
			if (streamxact_restart_pending())
				stream_restart(false);

			if (!st.batch->in_remote_txn && !st.batch->in_local_txn)
				apply_between_batches();
			if (TimestampDifferenceExceeds(st.last_feedback, GetCurrentTimestamp(), FEEDBACK_INTERVAL_MS))
				send_feedback(false, false);
			continue;
		}

		/* nothing is waiting: end the batch now for low latency */
		if (st.batch->in_local_txn && !st.batch->in_remote_txn)
			batch_flush(st.batch, st.mirror);
		if (!st.batch->in_local_txn)
			apply_between_batches();
		send_feedback(false, false);
		request_keepalive();

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

			if (!st.batch->in_local_txn && !IsTransactionOrTransactionBlock())
				stats_held = pgstat_report_stat(false) > 0;
			/*
			 * A commit not yet on disk becomes reportable once the WAL
			 * writer flushes it (commits are asynchronous): look again soon
			 * rather than after a whole idle wait.
			 */
			rc = WaitLatchOrSocket(MyLatch,
								   WL_SOCKET_READABLE | WL_LATCH_SET |
								   WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								   fd, batch_flush_pending() ? FLUSH_REPORT_WAIT_MS : IDLE_WAIT_MS,
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
