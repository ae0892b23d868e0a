/*-------------------------------------------------------------------------
 *
 * copypart.c
 *		Copying one part of a table from the copy's snapshot of the source
 *		into the destination, and finishing a table whose parts are all in.
 *
 * A part (a leaf partition, a partition_key range or a heap block range,
 * planned by setup) is read with binary COPY (SELECT ...) TO STDOUT on a
 * connection that imported the copy's snapshot, and fed straight into the
 * destination's COPY machinery (BeginCopyFrom with a data-source callback,
 * then CopyFrom).  A part's rows commit together with the part's DONE mark
 * and the table's rows_snapshotted, so a part is copied exactly once or not
 * at all.  The worker that finishes a table's last part marks it
 * copy_done; for the initial copy it then builds the table's constraints
 * and indexes (tables are created bare, which makes the copy cheaper),
 * takes over its sequence values and marks it SYNCED.
 *
 * A part's progress (rows and bytes so far) is not written anywhere
 * during its copy: it is in the worker's COPY progress report in shared
 * memory, where bunny.copy_progress reads it (copy_range); the part's
 * DONE mark records its rows and bytes.
 *
 * The snapshot workers of copypool.c call this; the snapshot phase
 * (snapshot.c) finishes here the tables whose finishing a crash cut short.
 *
 *-------------------------------------------------------------------------
 */
#include "copypool.h"
#include "schema.h"
#include "source.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/progress.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

/* the COPY OUT stream the data-source callback reads from */
static PGconn *copy_conn = NULL;
static char *copy_buf = NULL;
static int	copy_buf_len = 0;
static int	copy_buf_pos = 0;
static bool copy_done = false;
static int64 copy_bytes = 0;	/* handed to CopyFrom so far */

/*
 * Slots of our own in the backend's COPY progress report, which COPY FROM
 * fills up to index 5 (of PGSTAT_NUM_PROGRESS_PARAM): which part the
 * counts are of, and the counts of this worker's previous part, so that
 * bunny.copy_progress adds a running part's rows exactly once whatever
 * the worker has done since the reader's snapshot (see copy_range).
 */
#define PROGRESS_PART			10	/* part_no + 1 of this COPY */
#define PROGRESS_PREV_RELID		11	/* the previous part: its table */
#define PROGRESS_PREV_PART		12	/* part_no + 1 */
#define PROGRESS_PREV_ROWS		13
#define PROGRESS_PREV_BYTES		14

static int64 progress[5];		/* the values of those slots */
static bool progress_set = false;	/* set in this COPY's report yet? */

/*
 * What the callback waits on when the stream runs dry: latch, socket and
 * postmaster death.  Made at the first wait and kept for the process's
 * life: a snapshot worker copies every part over one connection and exits
 * on any error (WaitLatchOrSocket would make and free an epoll set on every
 * wait, which happens every few rows when the destination is faster than
 * the source).
 */
static WaitEventSet *copy_wait_set = NULL;

/* what the caller checks whenever the stream runs dry */
static void (*copy_on_wait) (void) = NULL;

/* run SQL on the destination through SPI, raising on failure */
static void
dest_sql(const char *sql, int nargs, Oid *types, Datum *values)
{
	int			rc;

	SPI_connect();
	rc = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);
	SPI_finish();
	if (rc < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("bunnydb snapshot statement failed: %s", SPI_result_code_string(rc)),
				 errdetail_internal("Statement: %s", sql)));
}

/*
 * Data-source callback of BeginCopyFrom: hand over between minread and
 * maxread bytes of the source's COPY stream; fewer than minread means the
 * end of the data.  The source sends one CopyData message per row: once
 * minread is met, the rows libpq has already buffered are handed over too,
 * without waiting, so that CopyFrom refills its buffer once per many rows
 * instead of once per row.
 */
static int
copy_read(void *outbuf, int minread, int maxread)
{
	int			done = 0;

	while (done < maxread && !copy_done)
	{
		if (copy_buf_pos >= copy_buf_len)
		{
			int			r;

			if (copy_buf)
			{
				PQfreemem(copy_buf);
				copy_buf = NULL;
			}
			copy_buf_len = copy_buf_pos = 0;
			r = PQgetCopyData(copy_conn, &copy_buf, 1);
			if (r == 0)
			{
				int			rc;

				WaitEvent	event;

				if (done >= minread)
					break;
				if (copy_wait_set == NULL)
				{
					copy_wait_set = CreateWaitEventSet(TopMemoryContext, 3);
					AddWaitEventToSet(copy_wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
					AddWaitEventToSet(copy_wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
					AddWaitEventToSet(copy_wait_set, WL_SOCKET_READABLE, PQsocket(copy_conn), NULL, NULL);
				}
				rc = WaitEventSetWait(copy_wait_set, 1000, &event, 1, PG_WAIT_EXTENSION);
				if (rc > 0 && (event.events & WL_LATCH_SET))
					ResetLatch(MyLatch);
				CHECK_FOR_INTERRUPTS();
				if (copy_on_wait)
					copy_on_wait();
				if (!PQconsumeInput(copy_conn))
					ereport(ERROR,
							(errcode(ERRCODE_CONNECTION_FAILURE),
							 errmsg("lost the connection to the source during the copy: %s",
									pchomp(PQerrorMessage(copy_conn)))));
				continue;
			}
			if (r == -1)
			{
				copy_done = true;
				break;
			}
			if (r < 0)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("could not read the copy stream from the source: %s",
								pchomp(PQerrorMessage(copy_conn)))));
			copy_buf_len = r;
		}
		{
			int			n = Min(maxread - done, copy_buf_len - copy_buf_pos);

			memcpy((char *) outbuf + done, copy_buf + copy_buf_pos, n);
			copy_buf_pos += n;
			done += n;
		}
	}
	copy_bytes += done;
	if (!progress_set)
	{
		/* BeginCopyFrom started the report afresh: name the part in it */
		const int	index[5] = {PROGRESS_PART, PROGRESS_PREV_RELID, PROGRESS_PREV_PART,
		PROGRESS_PREV_ROWS, PROGRESS_PREV_BYTES};

		pgstat_progress_update_multi_param(5, index, progress);
		progress_set = true;
	}
	return done;
}

/*
 * Copy one part: COPY (SELECT cols FROM from WHERE pred) TO STDOUT on the
 * source into the destination table through CopyFrom.  Runs in the
 * caller's transaction; returns the number of rows, and in *bytes the
 * bytes of COPY data.
 *
 * While it runs, CopyFrom reports the rows and bytes so far in the
 * backend's progress slot (pg_stat_progress_copy), in shared memory, at no
 * cost of ours; bunny.copy_progress adds them to the parts already done.
 * EndCopyFrom ends that report: it is started again with the part's final
 * counts, and left there until the next part's COPY starts or the table
 * is finished, so that a reader whose snapshot still shows the part
 * RUNNING after its DONE mark committed does not count it as nothing; the
 * next COPY's report carries them on as the previous part's.  Every report
 * names its part, so that a reader whose snapshot shows the next part
 * RUNNING does not count these rows twice.
 */
static uint64
copy_range(PGconn *conn, const char *dest_schema, const char *dest_table,
	   List *columns, const char *from, const char *where, bool binary,
	   int part_no, int64 *bytes)
{
	Relation	rel;
	List	   *attnames = NIL;
	ListCell   *lc;
	uint64		rows;
	PGresult   *res;

	rel = table_openrv(makeRangeVar((char *) dest_schema, (char *) dest_table, -1),
					   RowExclusiveLock);

	foreach(lc, columns)
		attnames = lappend(attnames, makeString((char *) lfirst(lc)));
	source_copy_out(conn, columns, from, where, binary);

	copy_conn = conn;
	copy_buf = NULL;
	copy_buf_len = copy_buf_pos = 0;
	copy_done = false;
	copy_bytes = 0;
	progress[0] = part_no + 1;
	progress_set = false;

	rows = bunny_copy_from(rel, attnames, binary, copy_read, 0);

	/* drain to the end of the COPY and check how it ended */
	while (!copy_done)
	{
		char		dummy[8192];

		(void) copy_read(dummy, sizeof(dummy), sizeof(dummy));
	}
	if (copy_buf)
		PQfreemem(copy_buf);
	copy_buf = NULL;
	res = PQgetResult(conn);
	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
		stream_raise_result(conn, res);
	PQclear(res);
	while ((res = PQgetResult(conn)) != NULL)
		PQclear(res);

	*bytes = copy_bytes;
	progress[1] = RelationGetRelid(rel);
	progress[2] = part_no + 1;
	progress[3] = (int64) rows;
	progress[4] = copy_bytes;
	{
		const int	index[7] = {PROGRESS_COPY_TUPLES_PROCESSED, PROGRESS_COPY_BYTES_PROCESSED,
			PROGRESS_PART, PROGRESS_PREV_RELID, PROGRESS_PREV_PART, PROGRESS_PREV_ROWS,
		PROGRESS_PREV_BYTES};
		const int64 value[7] = {(int64) rows, copy_bytes, progress[0], progress[1], progress[2],
		progress[3], progress[4]};

		pgstat_progress_start_command(PROGRESS_COMMAND_COPY, RelationGetRelid(rel));
		pgstat_progress_update_multi_param(7, index, value);
	}

	table_close(rel, NoLock);
	return rows;
}

/* {"table": ..., "rows": ..., "seconds": ...} for the log line of a finished table */
static char *
table_done_json(const char *table, int64 rows, double secs)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"table\": ");
	escape_json(&buf, table);
	appendStringInfo(&buf, ", \"rows\": " INT64_FORMAT ", \"seconds\": %.3f}", rows, secs);
	return buf.data;
}

/*
 * A table whose parts are all copied: constraints and indexes, sequences,
 * status SYNCED.  Idempotent (a crash may interrupt it).
 */
void
copypart_finish_table(PGconn *conn, const char *mirror_name, int32 mirror_id,
		      const char *schema, const char *table, bool indexes)
{
	Oid			types[3] = {INT4OID, TEXTOID, TEXTOID};
	Datum		vals[3];
	char	   *dest;
	char	   *rows;
	char	   *secs;
	char	   *src = (char *) quote_qualified_identifier(schema, table);
	BunnyErrorContext errctx;

	vals[0] = Int32GetDatum(mirror_id);
	vals[1] = CStringGetTextDatum(schema);
	vals[2] = CStringGetTextDatum(table);
	dest = bunny_spi_scalar("SELECT format('%I.%I', destination_schema, destination_table) "
							"  FROM bunny.mirror_table "
							" WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
							3, types, vals, NULL);
	bunny_errcontext_push(&errctx, NULL, dest, InvalidXLogRecPtr);
	pgstat_report_activity(STATE_RUNNING, psprintf("bunnydb: indexing %s", dest));
	pgstat_progress_end_command();
	schema_apply_ddl(mirror_id, schema, table, false, indexes);
	schema_take_over_sequences(conn, mirror_name, mirror_id, schema, table, false);
	rows = bunny_spi_scalar("SELECT rows_snapshotted::text FROM bunny.mirror_table "
							" WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
							3, types, vals, NULL);
	secs = bunny_spi_scalar("SELECT extract(epoch FROM clock_timestamp() - snapshot_started_at)::text "
							"  FROM bunny.mirror_table "
							" WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
							3, types, vals, NULL);
	dest_sql("UPDATE bunny.mirror_table SET status = 'SYNCED', last_synced_at = now() "
			 " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
			 3, types, vals);
	bunny_log(mirror_name, "INFO",
			  psprintf("copied table %s: %s rows in %.3f s", src, rows ? rows : "0",
					   secs ? atof(secs) : 0.0),
			  table_done_json(src, rows ? atoll(rows) : 0, secs ? atof(secs) : 0.0));
	bunny_errcontext_pop(&errctx);
}

/*
 * Whether the catalog marks the tables in progress (extension 0.3.0 on).
 * A catalog of 0.2.0 or older, under a library already replaced, is
 * claimed from the old way, by grouping all parts, until ALTER EXTENSION
 * UPDATE has run; a copy that spans the update may then start a table
 * or two beyond snapshot_num_tables_in_parallel, never copy a part twice.
 */
bool
copypart_claim_by_flag(void)
{
	Oid			nsp = get_namespace_oid("bunny", false);

	return get_attnum(get_relname_relid("mirror_table", nsp), "copy_in_progress") != InvalidAttrNumber;
}

/*
 * Whether the catalog records the bytes of a part (extension 0.4.0 on): a
 * library already replaced copies under an older catalog until ALTER
 * EXTENSION UPDATE has run.
 */
static bool
has_bytes_copied(void)
{
	Oid			nsp = get_namespace_oid("bunny", false);

	return get_attnum(get_relname_relid("snapshot_part", nsp), "bytes_copied") != InvalidAttrNumber;
}

/* text[] column of the current SPI row as a List of C strings */
static List *
spi_text_list(int row, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, &isnull);
	List	   *result = NIL;
	Datum	   *elems;
	int			n;

	if (isnull)
		return NIL;
	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, &n);
	for (int i = 0; i < n; i++)
		result = lappend(result, TextDatumGetCString(elems[i]));
	return result;
}

/*
 * Copy one claimed part and commit it with its bookkeeping; returns true if
 * that was the table's last part.
 */
bool
copypart_copy(PGconn *conn, const char *mirror_name, int32 mirror_id,
	      const char *schema, const char *table, int part_no,
	      void (*on_wait) (void))
{
	Oid			types[4] = {INT4OID, TEXTOID, TEXTOID, INT4OID};
	Datum		vals[4];
	char	   *dest_schema,
			   *dest_table,
			   *from,
			   *where;
	List	   *columns;
	bool		binary,
				first,
				last;
	int			nparts;
	uint64		rows;
	int64		bytes;
	char	   *src = (char *) quote_qualified_identifier(schema, table);
	MemoryContext part_cxt;
	BunnyErrorContext errctx;

	vals[0] = Int32GetDatum(mirror_id);
	vals[1] = CStringGetTextDatum(schema);
	vals[2] = CStringGetTextDatum(table);
	vals[3] = Int32GetDatum(part_no);

	/*
	 * Look the part up, and let the first part of a table announce it, in a
	 * transaction of its own: the row lock of that UPDATE, held for the
	 * part's whole copy, would make every other worker starting on the
	 * same table wait for it.
	 */
	part_cxt = AllocSetContextCreate(TopMemoryContext, "bunnydb snapshot part",
									 ALLOCSET_SMALL_SIZES);
	/* the table is named once the part is looked up */
	bunny_errcontext_push(&errctx, NULL, NULL, InvalidXLogRecPtr);
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	SPI_execute_with_args("SELECT t.destination_schema::text, "
						  "       coalesce(t.copy_target_table, t.destination_table)::text, "
						  "       t.copy_columns::text[], t.copy_binary, p.from_relation, p.predicate, "
						  "       (SELECT count(*) FROM bunny.snapshot_part q "
						  "         WHERE q.mirror_id = t.mirror_id AND q.source_schema = t.source_schema "
						  "           AND q.source_table = t.source_table)::int "
						  "  FROM bunny.mirror_table t JOIN bunny.snapshot_part p USING (mirror_id, source_schema, source_table) "
						  " WHERE t.mirror_id = $1 AND t.source_schema = $2 AND t.source_table = $3 "
						  "   AND p.part_no = $4",
						  4, types, vals, NULL, true, 0);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("snapshot part %d of %s vanished", part_no, src)));
	{
		MemoryContext old = MemoryContextSwitchTo(part_cxt);
		bool		isnull;

		dest_schema = pstrdup(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
		dest_table = pstrdup(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
		columns = spi_text_list(0, 3);
		binary = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
		from = pstrdup(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5));
		where = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6);
		where = where ? pstrdup(where) : NULL;
		nparts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 7, &isnull));
		errctx.table = quote_qualified_identifier(dest_schema, dest_table);
		MemoryContextSwitchTo(old);
	}
	SPI_execute_with_args("UPDATE bunny.mirror_table SET snapshot_started_at = clock_timestamp() "
						  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3 "
						  "   AND snapshot_started_at IS NULL", 3, types, vals, NULL, false, 0);
	first = SPI_processed == 1;
	SPI_finish();
	if (first)
		bunny_log(mirror_name, "INFO",
				  psprintf("copying table %s into %s (%d part%s, %s format)", src, errctx.table,
						   nparts, nparts == 1 ? "" : "s", binary ? "binary" : "text"), NULL);
	PopActiveSnapshot();
	CommitTransactionCommand();

	/* the part's rows commit together with its DONE mark */
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING,
						   psprintf("bunnydb: copying %s part %d of %d", src, part_no + 1, nparts));

	copy_on_wait = on_wait;
	rows = copy_range(conn, dest_schema, dest_table, columns, from, where, binary, part_no,
					  &bytes);

	{
		Oid			t6[6] = {INT4OID, TEXTOID, TEXTOID, INT4OID, INT8OID, INT8OID};
		Datum		v6[6] = {vals[0], vals[1], vals[2], vals[3], Int64GetDatum((int64) rows),
		Int64GetDatum(bytes)};
		char	   *left;

		if (has_bytes_copied())
			dest_sql("UPDATE bunny.snapshot_part "
					 "   SET status = 'DONE', rows_copied = $5, bytes_copied = $6, error_message = NULL "
					 " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3 AND part_no = $4",
					 6, t6, v6);
		else
			dest_sql("UPDATE bunny.snapshot_part SET status = 'DONE', rows_copied = $5, error_message = NULL "
					 " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3 AND part_no = $4",
					 5, t6, v6);
		dest_sql("UPDATE bunny.mirror_table SET rows_snapshotted = rows_snapshotted + $5 "
				 " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3 AND $4 >= 0",
				 5, t6, v6);
		/*
		 * Whoever commits the last part finishes the table.  The UPDATE
		 * above row-locks the table's row until we commit, so of two workers
		 * committing the table's last two parts, the second waits for the
		 * first and then, with a new snapshot, sees its part DONE.
		 */
		left = bunny_spi_scalar("SELECT count(*)::text FROM ("
								"SELECT 1 FROM bunny.snapshot_part "
								" WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3 "
								"   AND status <> 'DONE' LIMIT 1) s", 3, t6, v6, NULL);
		last = left && strcmp(left, "0") == 0;
		if (last)
			dest_sql(copypart_claim_by_flag() ?
					 "UPDATE bunny.mirror_table SET copy_done = true, copy_in_progress = false "
					 " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3" :
					 "UPDATE bunny.mirror_table SET copy_done = true "
					 " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
					 3, t6, v6);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	bunny_errcontext_pop(&errctx);
	MemoryContextDelete(part_cxt);
	return last;
}
