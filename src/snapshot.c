/*-------------------------------------------------------------------------
 *
 * snapshot.c
 *		SNAPSHOT phase: copy the existing rows of every mapped table as of
 *		the snapshot exported when the mirror's slot was created.
 *
 * Each table is read with COPY (SELECT <mapped columns> ...) TO STDOUT on a
 * connection that imported the exported snapshot, and written through the
 * destination's own COPY machinery (BeginCopyFrom with a data-source
 * callback, then CopyFrom): no row-by-row INSERT.  Binary format is used
 * when every column has the same built-in type on both sides (binary array
 * and record values embed type OIDs, which differ between servers for
 * user-defined types); otherwise text.
 *
 * A table's copy commits together with its status SYNCED and its row count,
 * so a crash leaves every table either fully copied or untouched by the
 * copy.  Because the exported snapshot dies with the crash, setup then runs
 * again with a new slot and every table this phase had claimed (status
 * SNAPSHOT or SYNCED) is emptied and copied again.  A table that was not
 * empty before the copy is never touched: error 55000.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* the COPY OUT stream the data-source callback reads from */
static PGconn *copy_conn = NULL;
static char *copy_buf = NULL;
static int	copy_buf_len = 0;
static int	copy_buf_pos = 0;
static bool copy_done = false;

/*
 * Data-source callback of BeginCopyFrom: hand over between minread and
 * maxread bytes of the source's COPY stream; fewer than minread means the
 * end of the data.
 */
static int
snapshot_copy_read(void *outbuf, int minread, int maxread)
{
	int			done = 0;

	while (done < minread && !copy_done)
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

				rc = WaitLatchOrSocket(MyLatch,
									   WL_EXIT_ON_PM_DEATH | WL_LATCH_SET | WL_SOCKET_READABLE,
									   PQsocket(copy_conn), -1, PG_WAIT_EXTENSION);
				if (rc & WL_LATCH_SET)
					ResetLatch(MyLatch);
				CHECK_FOR_INTERRUPTS();
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

/* {"table": ..., "rows": ...} for the log line of a finished copy */
static char *
snapshot_details_json(const char *table, uint64 rows)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"table\": ");
	escape_json(&buf, table);
	appendStringInfo(&buf, ", \"rows\": " UINT64_FORMAT "}", rows);
	return buf.data;
}

/* true if every column has the same built-in type on both sides */
static bool
snapshot_binary_safe(Relation rel, List *columns)
{
	ListCell   *lc;

	foreach(lc, columns)
	{
		CopyColumn *cc = lfirst(lc);
		AttrNumber	attnum = get_attnum(RelationGetRelid(rel), cc->name);

		if (attnum == InvalidAttrNumber || cc->typid >= FirstNormalObjectId ||
			TupleDescAttr(RelationGetDescr(rel), attnum - 1)->atttypid != cc->typid)
			return false;
	}
	return true;
}

/* copy one table inside the caller's snapshot transaction on conn */
static void
snapshot_copy_table(PGconn *conn, Mirror *m, CopyTable *ct)
{
	MirrorTable *mt = ct->mt;
	const char *dest = quote_qualified_identifier(mt->dest_schema, mt->dest_table);
	const char *src = quote_qualified_identifier(mt->source_schema, mt->source_table);
	Relation	rel;
	StringInfoData sql;
	List	   *attnames = NIL;
	List	   *options;
	ListCell   *lc;
	bool		binary;
	bool		was_ours = (strcmp(mt->status, "SNAPSHOT") == 0 ||
							strcmp(mt->status, "SYNCED") == 0);
	ParseState *pstate;
	CopyFromState cstate;
	uint64		rows;
	TimestampTz start = GetCurrentTimestamp();
	PGresult   *res;
	Oid			argtypes[4] = {INT4OID, TEXTOID, TEXTOID, INT8OID};
	Datum		values[4];

	bunny_ctx_table = dest;
	pgstat_report_activity(STATE_RUNNING, psprintf("bunnydb: copying %s", src));

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());

	rel = table_openrv(makeRangeVar(mt->dest_schema, mt->dest_table, -1), AccessExclusiveLock);

	/* never overwrite rows that were there before us */
	SPI_connect();
	SPI_execute(psprintf("SELECT 1 FROM %s LIMIT 1", dest), true, 1);
	if (SPI_processed > 0)
	{
		if (!was_ours)
		{
			SPI_finish();
			bunny_error_is_permanent = true;
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("destination table %s is not empty", dest),
					 errdetail("The initial snapshot never overwrites existing rows."),
					 errhint("Empty the table, or create the mirror with do_initial_snapshot => false.")));
		}
		/* our own copy from an attempt that crashed */
		SPI_execute(psprintf("TRUNCATE %s", dest), false, 0);
	}
	values[0] = Int32GetDatum(m->id);
	values[1] = CStringGetTextDatum(mt->source_schema);
	values[2] = CStringGetTextDatum(mt->source_table);
	values[3] = Int64GetDatum(0);
	SPI_execute_with_args("UPDATE bunny.mirror_table SET status = 'SNAPSHOT', rows_snapshotted = 0 "
						  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
						  3, argtypes, values, NULL, false, 0);
	SPI_finish();
	bunny_log(m->name, "INFO", psprintf("copying table %s into %s", src, dest), NULL);

	binary = snapshot_binary_safe(rel, ct->columns);

	initStringInfo(&sql);
	appendStringInfoString(&sql, "COPY (SELECT ");
	foreach(lc, ct->columns)
	{
		CopyColumn *cc = lfirst(lc);

		appendStringInfo(&sql, "%s%s", lc == list_head(ct->columns) ? "" : ", ",
						 quote_identifier(cc->name));
		attnames = lappend(attnames, makeString(cc->name));
	}
	appendStringInfo(&sql, " FROM %s%s) TO STDOUT%s",
					 ct->relkind == 'r' ? "ONLY " : "", src,
					 binary ? " (FORMAT binary)" : "");
	res = stream_exec_ok(conn, sql.data, PGRES_COPY_OUT);
	PQclear(res);

	copy_conn = conn;
	copy_buf = NULL;
	copy_buf_len = copy_buf_pos = 0;
	copy_done = false;

	options = list_make1(makeDefElem("format", (Node *) makeString(binary ? "binary" : "text"), -1));
	pstate = make_parsestate(NULL);
	/* CopyFrom resolves its target through the range table */
	(void) addRangeTableEntryForRelation(pstate, rel, RowExclusiveLock, NULL, false, false);
	cstate = BeginCopyFrom(pstate, rel, NULL, NULL, false, snapshot_copy_read, attnames, options);
	rows = CopyFrom(cstate);
	EndCopyFrom(cstate);
	free_parsestate(pstate);

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
	{
		char	   *msg = res ? pchomp(PQresultErrorMessage(res)) : pstrdup("no result");

		if (res)
			PQclear(res);
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("copy of source table %s failed: %s", src, msg)));
	}
	PQclear(res);
	while ((res = PQgetResult(conn)) != NULL)
		PQclear(res);

	table_close(rel, NoLock);

	SPI_connect();
	values[3] = Int64GetDatum((int64) rows);
	SPI_execute_with_args("UPDATE bunny.mirror_table SET status = 'SYNCED', rows_snapshotted = $4, "
						  "       last_synced_at = now() "
						  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
						  4, argtypes, values, NULL, false, 0);
	SPI_finish();
	bunny_log(m->name, "INFO",
			  psprintf("copied table %s: " UINT64_FORMAT " rows in %.3f s (%s format)", src, rows,
					   (double) (GetCurrentTimestamp() - start) / 1000000.0,
					   binary ? "binary" : "text"),
			  snapshot_details_json(src, rows));
	PopActiveSnapshot();
	CommitTransactionCommand();
	bunny_ctx_table = NULL;
	mt->status = "SYNCED";
}

/* copy every table of the mirror as of the exported snapshot */
void
snapshot_run(Mirror *m, const char *snapshot_name, List *copy_tables)
{
	PGconn	   *conn;
	ListCell   *lc;
	char	   *appname = psprintf("bunnydb:%s", m->name);

	if (snapshot_name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the source exported no snapshot for the initial copy")));

	conn = stream_connect(m->conninfo, appname, false);
	PG_TRY();
	{
		stream_exec_command(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
		stream_exec_command(conn, psprintf("SET TRANSACTION SNAPSHOT %s",
										   quote_literal_cstr(snapshot_name)));
		foreach(lc, copy_tables)
			snapshot_copy_table(conn, m, lfirst(lc));
		stream_exec_command(conn, "COMMIT");
	}
	PG_FINALLY();
	{
		PQfinish(conn);
		copy_conn = NULL;
	}
	PG_END_TRY();
}
