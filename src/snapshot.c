/*-------------------------------------------------------------------------
 *
 * snapshot.c
 *		SNAPSHOT phase: copy the existing rows of the mapped tables as of one
 *		consistent snapshot of the source, in parallel.
 *
 * The mirror worker is the coordinator.  It cuts every table into parts
 * (planned by setup: leaf partitions, partition_key ranges, or heap block
 * ranges), stores them in bunny.snapshot_part, and starts up to
 * snapshot_max_parallel_workers snapshot workers.  Each worker imports the
 * snapshot exported with the slot (SET TRANSACTION SNAPSHOT), claims parts
 * one by one -- starting new tables only while fewer than
 * snapshot_num_tables_in_parallel are in progress -- and copies each with
 * binary COPY (SELECT ...) TO STDOUT on the source fed straight into the
 * destination's COPY machinery (BeginCopyFrom with a data-source callback,
 * then CopyFrom).  A part's rows commit together with the part's DONE mark
 * and the table's rows_snapshotted, so a part is copied exactly once or not
 * at all.  The worker that finishes a table's last part builds its
 * constraints and indexes (tables are created bare, which makes the copy
 * cheaper), takes over its sequence values and marks it SYNCED.  Foreign
 * keys follow once every table is in, as DEFERRABLE INITIALLY DEFERRED.
 *
 * Crashes.  The exported snapshot dies with the coordinator's connection,
 * so after a crash the slot is kept and the tables that are not SYNCED are
 * emptied and copied again from a new snapshot, exported by a temporary
 * slot.  Their sync_lsn records that snapshot's position: CDC, which starts
 * at the permanent slot's older position, skips their changes up to it.
 * SYNCED tables are not copied again.
 *
 * A destination table that had rows before the copy is never touched:
 * error 55000 naming the table.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"
#include "source.h"

#include <unistd.h>

#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"
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

/* the COPY OUT stream the data-source callback reads from */
static PGconn *copy_conn = NULL;
static char *copy_buf = NULL;
static int	copy_buf_len = 0;
static int	copy_buf_pos = 0;
static bool copy_done = false;

/*
 * What the callback waits on when the stream runs dry: latch, socket and
 * postmaster death.  Made at the first wait and kept for the process's
 * life: a snapshot worker copies every part over one connection and exits
 * on any error (WaitLatchOrSocket would make and free an epoll set on every
 * wait, which happens every few rows when the destination is faster than
 * the source).
 */
static WaitEventSet *copy_wait_set = NULL;

/* in a snapshot worker: whose work we do */
static SnapshotWorkerArgs my_args;

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

/*
 * Data-source callback of BeginCopyFrom: hand over between minread and
 * maxread bytes of the source's COPY stream; fewer than minread means the
 * end of the data.  The source sends one CopyData message per row: once
 * minread is met, the rows libpq has already buffered are handed over too,
 * without waiting, so that CopyFrom refills its buffer once per many rows
 * instead of once per row.
 */
static int
snapshot_copy_read(void *outbuf, int minread, int maxread)
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
				check_coordinator();
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
	return done;
}

/*
 * Copy one part: COPY (SELECT cols FROM from WHERE pred) TO STDOUT on the
 * source into the destination table through CopyFrom.  Runs in the
 * caller's transaction; returns the number of rows.
 */
static uint64
snapshot_copy_range(PGconn *conn, const char *dest_schema, const char *dest_table,
					List *columns, const char *from, const char *where, bool binary)
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

	rows = bunny_copy_from(rel, attnames, binary, snapshot_copy_read, 0);

	/* drain to the end of the COPY and check how it ended */
	while (!copy_done)
	{
		char		dummy[8192];

		(void) snapshot_copy_read(dummy, sizeof(dummy), sizeof(dummy));
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

	table_close(rel, NoLock);
	return rows;
}

/*
 * Take over the source's current sequence values ([{"source", "dest"}]).
 * Sequences are not replicated by the stream; this sets them once, after
 * the copy, so that the destination can take over writes.
 */
void
snapshot_sync_sequences(PGconn *conn, const char *mirror_name, const char *sequences_json)
{
	Oid			types[1] = {TEXTOID};
	Datum		vals[1];
	int			n;
	char	  **src;
	char	  **dst;

	vals[0] = CStringGetTextDatum(sequences_json ? sequences_json : "[]");
	SPI_connect();
	SPI_execute_with_args("SELECT s->>'source', s->>'dest' FROM jsonb_array_elements($1::jsonb) s",
						  1, types, vals, NULL, true, 0);
	n = (int) SPI_processed;
	src = palloc(sizeof(char *) * (n + 1));
	dst = palloc(sizeof(char *) * (n + 1));
	for (int i = 0; i < n; i++)
	{
		src[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		dst[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
	}
	for (int i = 0; i < n; i++)
	{
		char	   *last_value;
		bool		is_called;
		char	   *sql;

		source_sequence_value(conn, src[i], &last_value, &is_called);
		sql = psprintf("SELECT pg_catalog.setval(%s, %s, %s)",
					   quote_literal_cstr(dst[i]), last_value, is_called ? "true" : "false");
		if (SPI_execute(sql, false, 0) < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not set sequence %s", dst[i])));
	}
	SPI_finish();
	if (n > 0)
		bunny_log(mirror_name, "INFO", psprintf("took over %d sequence value(s) from the source", n),
				  NULL);
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
static void
snapshot_finish_table(PGconn *conn, const char *mirror_name, int32 mirror_id,
					  const char *schema, const char *table, bool indexes)
{
	Oid			types[3] = {INT4OID, TEXTOID, TEXTOID};
	Datum		vals[3];
	char	   *dest;
	char	   *ddl;
	char	   *seqs;
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
	ddl = bunny_spi_scalar("SELECT post_copy_ddl::text FROM bunny.mirror_table "
						   " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
						   3, types, vals, NULL);
	seqs = bunny_spi_scalar("SELECT sequences::text FROM bunny.mirror_table "
							" WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
							3, types, vals, NULL);
	bunny_errcontext_push(&errctx, NULL, dest, InvalidXLogRecPtr);
	pgstat_report_activity(STATE_RUNNING, psprintf("bunnydb: indexing %s", dest));
	catalog_apply_ddl(mirror_name, dest, ddl, indexes);
	snapshot_sync_sequences(conn, mirror_name, seqs);
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
static bool
claim_by_flag(void)
{
	Oid			nsp = get_namespace_oid("bunny", false);

	return get_attnum(get_relname_relid("mirror_table", nsp), "copy_in_progress") != InvalidAttrNumber;
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
snapshot_claim_part(int32 mirror_id, int tables_in_parallel, char **schema, char **table,
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
	if (!claim_by_flag())
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
static bool
snapshot_copy_part(PGconn *conn, const char *mirror_name, int32 mirror_id,
				   const char *schema, const char *table, int part_no)
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

	rows = snapshot_copy_range(conn, dest_schema, dest_table, columns, from, where, binary);

	{
		Oid			t5[5] = {INT4OID, TEXTOID, TEXTOID, INT4OID, INT8OID};
		Datum		v5[5] = {vals[0], vals[1], vals[2], vals[3], Int64GetDatum((int64) rows)};
		char	   *left;

		dest_sql("UPDATE bunny.snapshot_part SET status = 'DONE', rows_copied = $5, error_message = NULL "
				 " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3 AND part_no = $4",
				 5, t5, v5);
		dest_sql("UPDATE bunny.mirror_table SET rows_snapshotted = rows_snapshotted + $5 "
				 " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3 AND $4 >= 0",
				 5, t5, v5);
		/*
		 * Whoever commits the last part finishes the table.  The UPDATE
		 * above row-locks the table's row until we commit, so of two workers
		 * committing the table's last two parts, the second waits for the
		 * first and then, with a new snapshot, sees its part DONE.
		 */
		left = bunny_spi_scalar("SELECT count(*)::text FROM ("
								"SELECT 1 FROM bunny.snapshot_part "
								" WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3 "
								"   AND status <> 'DONE' LIMIT 1) s", 3, t5, v5, NULL);
		last = left && strcmp(left, "0") == 0;
		if (last)
			dest_sql(claim_by_flag() ?
					 "UPDATE bunny.mirror_table SET copy_done = true, copy_in_progress = false "
					 " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3" :
					 "UPDATE bunny.mirror_table SET copy_done = true "
					 " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
					 3, t5, v5);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	bunny_errcontext_pop(&errctx);
	MemoryContextDelete(part_cxt);
	return last;
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
		for (;;)
		{
			char	   *schema;
			char	   *table;
			int			part_no;

			CHECK_FOR_INTERRUPTS();
			check_coordinator();
			if (!snapshot_claim_part(my_args.mirror_id, tables_in_parallel, &schema, &table, &part_no))
				break;
			if (snapshot_copy_part(conn, mirror_name, my_args.mirror_id, schema, table, part_no))
			{
				Oid			types[3] = {INT4OID, TEXTOID, TEXTOID};
				Datum		vals[3];
				char	   *kind;

				vals[0] = Int32GetDatum(my_args.mirror_id);
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
					snapshot_finish_table(conn, mirror_name, my_args.mirror_id, schema, table, indexes);
				else if (kind && strcmp(kind, "add") == 0)
				{
					/* a table added by update_tables: complete it; the mirror worker switches it */
					char	   *dest = bunny_spi_scalar("SELECT format('%I.%I', destination_schema, destination_table) "
														"  FROM bunny.mirror_table "
														" WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
														3, types, vals, NULL);
					char	   *ddl = bunny_spi_scalar("SELECT post_copy_ddl::text FROM bunny.mirror_table "
													   " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
													   3, types, vals, NULL);
					char	   *seqs = bunny_spi_scalar("SELECT sequences::text FROM bunny.mirror_table "
														" WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
														3, types, vals, NULL);

					catalog_apply_ddl(mirror_name, dest, ddl, indexes);
					snapshot_sync_sequences(conn, mirror_name, seqs);
				}
				PopActiveSnapshot();
				CommitTransactionCommand();
				/* the mirror worker looks for copied tables; tell it now */
				LWLockAcquire(BunnyState->lock, LW_SHARED);
				if (BunnyState->slots[my_args.slotno].latch)
					SetLatch(BunnyState->slots[my_args.slotno].latch);
				LWLockRelease(BunnyState->lock);
			}
		}
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

/*
 * (Re)create the parts of the tables of a mirror that match where_clause
 * (on bunny.mirror_table t) from the plan setup stored; returns how many.
 */
int
snapshot_insert_parts(int32 mirror_id, const char *where_clause)
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
								   "SELECT t.mirror_id, t.source_schema, t.source_table, (p.n - 1)::int, "
								   "       p.part->>'from', p.part->>'where' "
								   "  FROM bunny.mirror_table t, "
								   "       jsonb_array_elements(coalesce(t.copy_parts, '[]')) WITH ORDINALITY p(part, n) "
								   " WHERE t.mirror_id = $1 AND (%s)", where_clause),
						  1, types, vals, NULL, false, 0);
	n = (int) SPI_processed;
	/* their parts are all pending again: none of them is in progress */
	if (claim_by_flag())
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

/*
 * Prepare the copy of every table that is not SYNCED: empty our own
 * partial copies, refuse tables that had rows of their own, (re)create
 * their parts.  Committed and flushed before any worker starts.
 */
static int
snapshot_prepare(Mirror *m, XLogRecPtr sync_lsn)
{
	Oid			types[2] = {INT4OID, LSNOID};
	Datum		vals[2];
	char		nulls[2] = {' ', ' '};
	int			nparts;
	uint64		ntables;
	char	  **dest;
	char	  **status;
	BunnyErrorContext errctx;

	vals[0] = Int32GetDatum(m->id);
	vals[1] = LSNGetDatum(sync_lsn);
	if (sync_lsn == InvalidXLogRecPtr)
		nulls[1] = 'n';

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	catalog_set_status_phase(m->id, MIRROR_SNAPSHOT, PHASE_SNAPSHOT);

	SPI_connect();
	SPI_execute_with_args("SELECT format('%I.%I', destination_schema, destination_table), status "
						  "  FROM bunny.mirror_table WHERE mirror_id = $1 AND status <> 'SYNCED' "
						  " ORDER BY 1", 1, types, vals, NULL, true, 0);
	ntables = SPI_processed;
	dest = palloc(sizeof(char *) * (ntables + 1));
	status = palloc(sizeof(char *) * (ntables + 1));
	for (uint64 i = 0; i < ntables; i++)
	{
		dest[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		status[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
	}
	bunny_errcontext_push(&errctx, NULL, NULL, InvalidXLogRecPtr);
	for (uint64 i = 0; i < ntables; i++)
	{
		errctx.table = dest[i];
		SPI_execute(psprintf("SELECT 1 FROM %s LIMIT 1", dest[i]), false, 1);
		if (SPI_processed == 0)
			continue;
		if (strcmp(status[i], "SNAPSHOT") == 0 || strcmp(status[i], "RESYNCING") == 0)
		{
			/* our own copy from an attempt that was interrupted */
			SPI_execute(psprintf("TRUNCATE %s", dest[i]), false, 0);
			continue;
		}
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("destination table %s is not empty", dest[i]),
				 errdetail("The initial snapshot never overwrites existing rows."),
				 errhint("Empty the table, or create the mirror with do_initial_snapshot => false; then call bunny.retry_mirror().")));
	}
	bunny_errcontext_pop(&errctx);

	nparts = snapshot_insert_parts(m->id, "t.status <> 'SYNCED'");
	SPI_execute_with_args("UPDATE bunny.mirror_table "
						  "   SET status = 'SNAPSHOT', rows_snapshotted = 0, copy_done = false, "
						  "       snapshot_started_at = NULL, sync_lsn = $2, error_message = NULL "
						  " WHERE mirror_id = $1 AND status <> 'SYNCED'",
						  2, types, vals, nulls, false, 0);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	XLogFlush(XactLastCommitEnd);
	return nparts;
}

/* RUNNING parts whose worker is gone go back to PENDING (or fail the copy) */
static void
snapshot_reclaim_parts(Mirror *m, List *live_pids)
{
	Oid			types[1] = {INT4OID};
	Datum		vals[1] = {Int32GetDatum(m->id)};
	StringInfoData pids;
	ListCell   *lc;
	char	   *failed;

	initStringInfo(&pids);
	appendStringInfoString(&pids, "{0");
	foreach(lc, live_pids)
		appendStringInfo(&pids, ",%d", lfirst_int(lc));
	appendStringInfoChar(&pids, '}');

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	failed = bunny_spi_scalar(psprintf("SELECT format('part %%s of %%I.%%I failed %%s times', part_no + 1, "
									   "              source_schema, source_table, attempts) "
									   "       || coalesce(', last: ' || error_message, '') "
									   "  FROM bunny.snapshot_part "
									   " WHERE mirror_id = $1 AND status = 'RUNNING' "
									   "   AND NOT (worker_pid = ANY ('%s'::int[])) AND attempts >= %d "
									   " LIMIT 1", pids.data, SNAPSHOT_MAX_ATTEMPTS),
							  1, types, vals, NULL);
	if (failed)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("initial copy failed: %s", failed),
				 errhint("See the ERROR lines of bunny.logs() for the cause.")));
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
	if (SPI_processed > 0 && claim_by_flag())
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
struct SnapshotPool
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
snapshot_worker_cap(void)
{
	long		ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	return ncpu > 0 ? (int) Min(2 * ncpu, 64) : 64;
}

/*
 * A pool of up to snapshot_max_parallel_workers workers for nparts parts,
 * and no more than snapshot_worker_cap().
 */
SnapshotPool *
snapshot_pool_start(Mirror *m, PGconn *holder, const char *snapshot_name, int nparts)
{
	SnapshotPool *pool = MemoryContextAllocZero(TopMemoryContext, sizeof(SnapshotPool));

	pool->snapshot = MemoryContextStrdup(TopMemoryContext, snapshot_name);
	pool->holder = holder;
	pool->nworkers = Max(1, Min(Min(m->snapshot_max_workers, nparts), snapshot_worker_cap()));
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
snapshot_pool_tick(SnapshotPool *pool, Mirror *m)
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
	snapshot_reclaim_parts(m, live);

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
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start any snapshot worker"),
				 errhint("Increase max_worker_processes.")));
	return nleft;
}

/* wait for the pool's workers to exit (one may still be finishing a table) */
void
snapshot_pool_wait(SnapshotPool *pool)
{
	for (int i = 0; i < pool->nworkers; i++)
		if (pool->handles[i] != NULL)
		{
			(void) WaitForBackgroundWorkerShutdown(pool->handles[i]);
			pfree(pool->handles[i]);
			pool->handles[i] = NULL;
		}
}

/*
 * Copy every table that is not SYNCED with the given exported snapshot,
 * using snapshot workers, then finish tables, foreign keys and sequences.
 * sync_lsn is the snapshot's position when it is not the slot's own.
 */
void
snapshot_run(Mirror *m, PGconn *holder, const char *snapshot_name, XLogRecPtr sync_lsn)
{
	int			nparts;
	SnapshotPool *pool;
	Oid			types[1] = {INT4OID};
	Datum		vals[1] = {Int32GetDatum(m->id)};

	if (snapshot_name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the source exported no snapshot for the initial copy")));

	nparts = snapshot_prepare(m, sync_lsn);
	pool = snapshot_pool_start(m, holder, snapshot_name, nparts);
	bunny_log(m->name, "INFO",
			  psprintf("initial copy started: %d part(s), up to %d worker(s), %d table(s) at a time",
					   nparts, pool->nworkers, m->snapshot_tables_in_parallel), NULL);
	pgstat_report_activity(STATE_RUNNING, "bunnydb: initial copy");

	while (snapshot_pool_tick(pool, m) > 0)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		(void) bunny_check_control();
	}
	snapshot_pool_wait(pool);

	/* tables whose finishing step was interrupted, then foreign keys */
	{
		PGconn	   *conn = mirror_connect(m, false);
		uint64		n;
		char	  **schemas;
		char	  **tables;

		bunny_start_transaction();
		PushActiveSnapshot(GetTransactionSnapshot());
		SPI_connect();
		SPI_execute_with_args("SELECT source_schema::text, source_table::text FROM bunny.mirror_table "
							  " WHERE mirror_id = $1 AND status <> 'SYNCED'",
							  1, types, vals, NULL, true, 0);
		n = SPI_processed;
		schemas = palloc(sizeof(char *) * (n + 1));
		tables = palloc(sizeof(char *) * (n + 1));
		for (uint64 i = 0; i < n; i++)
		{
			schemas[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
			tables[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		}
		SPI_finish();
		for (uint64 i = 0; i < n; i++)
			snapshot_finish_table(conn, m->name, m->id, schemas[i], tables[i], m->replicate_indexes);
		if (m->replicate_foreign_keys)
			dest_sql("SELECT bunny._apply_ddl(m.name, "
					 "         format('%I.%I', t.destination_schema, t.destination_table)::regclass, "
					 "         t.fk_ddl) "
					 "  FROM bunny.mirror_table t JOIN bunny.mirror m ON m.id = t.mirror_id "
					 " WHERE t.mirror_id = $1 AND t.created_by_bunny",
					 1, types, vals);
		bunny_log(m->name, "INFO", "initial copy finished", NULL);
		PopActiveSnapshot();
		CommitTransactionCommand();
		PQfinish(conn);
	}
}

/*
 * Resume an interrupted SNAPSHOT phase on the replication connection conn:
 * keep the mirror's slot and copy the unfinished tables from a new snapshot
 * (a temporary slot's).  Returns the permanent slot's position, where
 * streaming starts; InvalidXLogRecPtr when that slot is gone, and nothing
 * was copied: then only setting up again can help, which is the worker's
 * decision (worker.c), not ours.
 */
XLogRecPtr
snapshot_recover(PGconn *conn, Mirror *m)
{
	XLogRecPtr	slot_lsn;
	XLogRecPtr	tmp_lsn;
	char	   *snapshot;
	PGconn	   *tmp;

	if (!source_slot_exists(conn, m->slot_name, NULL, &slot_lsn) || XLogRecPtrIsInvalid(slot_lsn))
		return InvalidXLogRecPtr;
	tmp = mirror_connect(m, true);
	tmp_lsn = stream_create_slot(tmp, psprintf("bunny_tmp_%d_%d", m->id, MyProcPid),
								 true, true, &snapshot);
	bunny_log(m->name, "INFO",
			  psprintf("resuming the initial copy of unfinished tables from a new snapshot at %X/%X",
					   LSN_FORMAT_ARGS(tmp_lsn)), NULL);

	snapshot_run(m, tmp, snapshot, tmp_lsn);
	PQfinish(tmp);
	return slot_lsn;
}
