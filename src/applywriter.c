/*-------------------------------------------------------------------------
 *
 * applywriter.c
 *		How the apply writes changes into the destination, behind one small
 *		function table (ApplyWriter, like pglogical's apply_api): single
 *		prepared statements, multi-row INSERTs from a buffer, COPY runs for
 *		long runs of INSERTs, and folded UPDATEs (fold.c).  apply.c decides
 *		what to write; this file decides how.
 *
 * NOTES
 *
 *	Statements.  Inside a batch one SPI connection serves every change
 *	(writer_batch_begin/end), and runs of INSERTs into one table go out as
 *	multi-row INSERTs of up to INSERT_BUFFER_ROWS rows.  A run that goes on
 *	past that goes through the COPY machinery instead (BeginCopyFrom with a
 *	data-source callback, CopyFrom): the callback reads the following
 *	messages through a CopyRunSource (the stream layer, applystream.c:
 *	the only code that reads the connection) and turns each INSERT of the
 *	run into a COPY row -- pgoutput's binary values are COPY BINARY fields
 *	as they are -- so a bulk load costs no statement per row and writes
 *	through CopyFrom's multi-row heap inserts and buffer ring.  In a
 *	streamed transaction a run goes on across the transaction's blocks, so
 *	a bulk load keeps one COPY and one ring of shared buffers.
 *
 *	Order.  Buffered INSERTs and folded UPDATEs are written before anything
 *	that could see them or depend on their order: the apply calls
 *	flush_inserts and flush_folded at those points, and writer_batch_end
 *	writes everything before the batch commits.
 *
 *-------------------------------------------------------------------------
 */
#include "apply_internal.h"

#include "access/table.h"
#include "access/xact.h"
#include "libpq/pqformat.h"
#include "nodes/value.h"
#include "utils/datum.h"
#include "utils/memutils.h"
#include "utils/rel.h"

/* the writer's own state; the stream's format and the batch's SPI */
typedef struct WriterState
{
	bool		binary;			/* pgoutput binary transfer */
	bool		batch_spi;		/* the batch holds an SPI connection */
	const CopyRunSource *source;	/* where COPY runs read their rows */
} WriterState;

static WriterState writer = {false, false, NULL};

/*
 * Runs of INSERTs into one table are sent as multi-row INSERTs of up to
 * INSERT_BUFFER_ROWS rows: one executor start-up for many rows.  The buffer
 * is flushed before any other message, so changes keep their order.
 */
#define INSERT_BUFFER_ROWS	100

typedef struct InsertBuffer
{
	RelMapEntry *rel;			/* the table of the buffered rows; NULL: none */
	char	   *mask;			/* the columns present in them */
	int			rows;
	int			ncols;
	Datum	   *values;			/* rows * ncols parameters */
	char	   *nulls;
	MemoryContext cxt;			/* reset at each flush */
	RelMapEntry *copy_candidate;	/* its next INSERT starts a COPY run */
} InsertBuffer;

static InsertBuffer ins = {0};

/*
 * COPY runs.  Once a run of INSERTs into one table has filled the insert
 * buffer, the rest of the run goes through the destination's COPY
 * machinery: CopyFrom pulls rows from a data-source callback that reads the
 * next messages from the stream and turns each INSERT straight into a COPY
 * row (pgoutput's binary column values are COPY BINARY fields; text values
 * only need COPY's escaping), with no per-row statement at all and
 * CopyFrom's multi-row heap inserts through a bulk-write buffer ring.  The
 * first message that is not such an INSERT ends the run; the source keeps
 * it for the main loop.
 *
 * The COPY writes its buffered rows (heap and index entries) every
 * COPY_RUN_FLUSH_ROWS rows, not every 1000 as CopyFrom would for binary
 * input.  The worker reads nothing from the socket while it writes, and a
 * unix socket holds only about half a millisecond of a walsender's output,
 * less than writing 1000 rows takes, so the walsender would stall once per
 * flush.  Ending the runs sooner would do the same but give every run a
 * new bulk-write buffer ring, i.e. spread the new pages over all of
 * shared_buffers.
 */
#define COPY_RUN_FLUSH_ROWS 128

typedef struct CopyRun
{
	RelMapEntry *rel;			/* the table being copied into; NULL: none */
	TransactionId xid;			/* in a streamed block, the changes' xid */
	StringInfoData row;			/* the COPY row being handed out */
	int			row_pos;
	bool		eof;
} CopyRun;

static CopyRun copy = {0};

/*
 * Run a prepared change; returns the number of rows it touched.  Inside a
 * batch the batch's SPI connection is used: connecting per row would cost
 * two memory contexts per change.
 */
static uint64
writer_exec(SPIPlanPtr plan, Datum *values, char *nulls)
{
	int			rc;
	uint64		processed;

	if (!writer.batch_spi)
		SPI_connect();
	rc = SPI_execute_plan(plan, values, nulls, false, 0);
	processed = SPI_processed;
	if (!writer.batch_spi)
		SPI_finish();
	if (rc < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not apply change: %s", SPI_result_code_string(rc))));
	return processed;
}

/* send the buffered rows: all of them, or only if they are e's */
static void
writer_flush_inserts(RelMapEntry *e)
{
	BunnyErrorContext errctx;

	if (ins.rows == 0 || (e != NULL && ins.rel != e))
		return;
	/* the rows may be another table's than the change being applied */
	bunny_errcontext_push(&errctx, NULL, ins.rel->qualname, InvalidXLogRecPtr);
	writer_exec(relmap_get_plan(ins.rel, 'I', ins.mask, NULL, ins.rows), ins.values, ins.nulls);
	bunny_errcontext_pop(&errctx);
	ins.rows = 0;
	ins.rel = NULL;
	MemoryContextReset(ins.cxt);
}

/* buffer one row (the first ncols of values are the present columns) */
static void
writer_insert(RelMapEntry *e, const char *present, Datum *values, char *nulls)
{
	int			n = e->remoterel->natts;
	MemoryContext old;
	int			k = 0;

	if (ins.rel != NULL && (ins.rel != e || strcmp(ins.mask, present) != 0))
		writer_flush_inserts(NULL);

	old = MemoryContextSwitchTo(ins.cxt);
	if (ins.rel == NULL)
	{
		ins.rel = e;
		ins.mask = pstrdup(present);
		ins.ncols = 0;
		for (int i = 0; i < n; i++)
			if (present[i] == '1')
				ins.ncols++;
		ins.values = palloc(sizeof(Datum) * ins.ncols * INSERT_BUFFER_ROWS);
		ins.nulls = palloc(ins.ncols * INSERT_BUFFER_ROWS + 1);
	}
	for (int i = 0; i < n; i++)
	{
		int			at = ins.rows * ins.ncols + k;

		if (present[i] != '1')
			continue;
		ins.nulls[at] = nulls[k];
		ins.values[at] = nulls[k] == 'n' ? (Datum) 0 :
			datumCopy(values[k], e->typbyval[i], e->typlen[i]);
		k++;
	}
	MemoryContextSwitchTo(old);
	if (++ins.rows == INSERT_BUFFER_ROWS)
	{
		writer_flush_inserts(NULL);
		ins.copy_candidate = e; /* a long run: the next row starts COPY */
	}
}

/*
 * Append an INSERT message of copy.rel as one COPY row; false (and nothing
 * appended) if it is not an INSERT of that table in the stream's format.
 * This reads the tuple format of proto.c's logicalrep_write_tuple, in
 * place, without decoding the values.
 */
static bool
copy_row_append(const char *msg, int len, bool has_xid, StringInfo out)
{
	StringInfoData s;
	int			natts = copy.rel->remoterel->natts;
	int			natts_sent = copy.rel->remote_natts_sent;
	int			start = out->len;
	int			written = 0;
	bool		binary = writer.binary;

	s.data = (char *) msg;
	s.len = len;
	s.maxlen = -1;
	s.cursor = 0;
	if (len < 12 || pq_getmsgbyte(&s) != LOGICAL_REP_MSG_INSERT)
		return false;
	/* inside a streamed block every change names its (sub)transaction */
	if (has_xid && pq_getmsgint(&s, 4) != copy.xid)
		return false;
	if (pq_getmsgint(&s, 4) != copy.rel->remoteid ||
		pq_getmsgbyte(&s) != 'N' ||
		pq_getmsgint(&s, 2) != (unsigned int) natts_sent)
		return false;
	if (binary)
		pq_sendint16(out, natts);
	for (int i = 0; i < natts_sent; i++)
	{
		/* an excluded column a source before 15 sent: read past it */
		bool		skip = copy.rel->remote_skip && copy.rel->remote_skip[i];
		char		kind;
		int32		vlen = 0;
		const char *v = NULL;

		if (s.cursor >= s.len)
			goto fail;
		kind = pq_getmsgbyte(&s);
		if (kind != LOGICALREP_COLUMN_NULL)
		{
			if (kind != (binary ? LOGICALREP_COLUMN_BINARY : LOGICALREP_COLUMN_TEXT))
				goto fail;
			vlen = pq_getmsgint(&s, 4);
			if (vlen < 0 || vlen > s.len - s.cursor)
				goto fail;
			v = pq_getmsgbytes(&s, vlen);
		}
		if (skip)
			continue;
		if (!binary && written > 0)
			appendStringInfoChar(out, '\t');
		written++;
		if (kind == LOGICALREP_COLUMN_NULL)
		{
			if (binary)
				pq_sendint32(out, -1);
			else
				appendStringInfoString(out, "\\N");
			continue;
		}
		if (binary)
		{
			pq_sendint32(out, vlen);
			appendBinaryStringInfo(out, v, vlen);
			continue;
		}
		for (int c = 0; c < vlen; c++)
		{
			switch (v[c])
			{
				case '\\':
					appendStringInfoString(out, "\\\\");
					break;
				case '\n':
					appendStringInfoString(out, "\\n");
					break;
				case '\r':
					appendStringInfoString(out, "\\r");
					break;
				case '\t':
					appendStringInfoString(out, "\\t");
					break;
				default:
					appendStringInfoChar(out, v[c]);
			}
		}
	}
	if (s.cursor != s.len)
		goto fail;
	if (!binary)
		appendStringInfoChar(out, '\n');
	return true;

fail:
	out->len = start;
	out->data[start] = '\0';
	return false;
}

/* produce the next COPY row into copy.row; false at the end of the run */
static bool
copy_run_next_row(void)
{
	const char *msg;
	int			len;
	bool		has_xid;

	resetStringInfo(&copy.row);
	copy.row_pos = 0;
	msg = writer.source->next(&len, &has_xid);
	if (msg != NULL && copy_row_append(msg, len, has_xid, &copy.row))
		return true;
	/* anything else ends the run; the main loop handles it next */
	if (msg != NULL)
		writer.source->keep();
	return false;
}

/* data-source callback of BeginCopyFrom for a COPY run */
static int
copy_run_read(void *outbuf, int minread, int maxread)
{
	int			done = 0;

	while (done < minread)
	{
		int			n;

		if (copy.row_pos >= copy.row.len)
		{
			if (copy.eof || !copy_run_next_row())
			{
				copy.eof = true;
				break;
			}
		}
		n = Min(maxread - done, copy.row.len - copy.row_pos);
		memcpy((char *) outbuf + done, copy.row.data + copy.row_pos, n);
		copy.row_pos += n;
		done += n;
	}
	return done;
}

/*
 * An INSERT of e comes: write e's folded UPDATEs first (the row may be one
 * of them); true if it is to start a COPY run (a long run of INSERTs).
 */
static bool
writer_begin_insert(RelMapEntry *e)
{
	fold_flush_rel(e);
	return ins.copy_candidate == e;
}

/*
 * Run COPY into e's table, starting with msg (the current INSERT message,
 * of transaction xid in a streamed block), until the stream brings
 * something else; the rows written, or -1 if msg cannot start a run.
 */
static int64
writer_copy_run(RelMapEntry *e, const char *msg, int len, TransactionId xid)
{
	Relation	rel;
	List	   *attnames = NIL;
	uint64		rows;

	if (copy.row.data == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(relmap_context());

		initStringInfo(&copy.row);
		MemoryContextSwitchTo(old);
	}
	copy.rel = e;
	copy.xid = xid;
	copy.row_pos = 0;
	copy.eof = false;
	resetStringInfo(&copy.row);
	if (writer.binary)
	{
		appendBinaryStringInfo(&copy.row, "PGCOPY\n\377\r\n\0", 11);
		pq_sendint32(&copy.row, 0); /* flags */
		pq_sendint32(&copy.row, 0); /* header extension */
	}
	/* the current message is the first row */
	if (!copy_row_append(msg, len, false, &copy.row))
	{
		copy.rel = NULL;
		ins.copy_candidate = NULL;
		return -1;
	}

	rel = table_open(e->localrelid, RowExclusiveLock);
	for (int i = 0; i < e->remoterel->natts; i++)
		attnames = lappend(attnames, makeString(e->remoterel->attnames[i]));
	rows = bunny_copy_from(rel, attnames, writer.binary, copy_run_read, COPY_RUN_FLUSH_ROWS);
	table_close(rel, NoLock);
	CommandCounterIncrement();

	copy.rel = NULL;
	ins.copy_candidate = NULL;
	return (int64) rows;
}

/* a message that is not an INSERT: a run of INSERTs is over */
static void
writer_end_run(void)
{
	ins.copy_candidate = NULL;
}

/* the folded UPDATEs of e, or of every table (NULL) */
static void
writer_flush_folded(RelMapEntry *e)
{
	if (e != NULL)
		fold_flush_rel(e);
	else
		fold_flush_all();
}

/* throw away buffered INSERTs and folded UPDATEs without writing them */
static void
writer_discard(void)
{
	ins.rows = 0;
	ins.rel = NULL;
	MemoryContextReset(ins.cxt);
	ins.copy_candidate = NULL;
	fold_discard_all();
}

const ApplyWriter apply_writer = {
	.exec = writer_exec,
	.insert = writer_insert,
	.flush_inserts = writer_flush_inserts,
	.begin_insert = writer_begin_insert,
	.copy_run = writer_copy_run,
	.fold = fold_update,
	.flush_folded = writer_flush_folded,
	.end_run = writer_end_run,
	.discard = writer_discard,
};

/* start writing a stream of the given format, reading COPY rows from source */
void
writer_init(bool binary, const CopyRunSource *source)
{
	writer.binary = binary;
	writer.source = source;
	fold_init(writer_exec);
	ins.cxt = AllocSetContextCreate(TopMemoryContext, "bunnydb insert buffer",
									ALLOCSET_DEFAULT_SIZES);
}

/* the batch's transaction is open and connected to SPI */
void
writer_batch_begin(void)
{
	writer.batch_spi = true;
}

/*
 * Write everything pending before the batch commits (write) or forget it
 * after it aborted (!write); the batch's SPI connection is gone after.
 */
void
writer_batch_end(bool write)
{
	if (write)
	{
		writer_flush_inserts(NULL);
		fold_flush_all();
	}
	writer.batch_spi = false;
}
