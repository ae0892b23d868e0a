/*-------------------------------------------------------------------------
 *
 * functions.c
 *		SQL-callable C functions: the helpers behind the PL/pgSQL API in
 *		bunnydb--*.sql (connection checks, remote queries, waking and
 *		stopping workers) and the live figures for the views.  What they
 *		ask of or do on the source is source.c's, shared with the
 *		workers.  bunny.sync_schema's statements are schema.c's, the
 *		same that setup and the workers run (bunny._add_column_ddl,
 *		bunny._alter_column_ddl, bunny._index_ddl).
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"
#include "schema.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(bunny_check_preload);
PG_FUNCTION_INFO_V1(bunny_add_column_ddl);
PG_FUNCTION_INFO_V1(bunny_alter_column_ddl);
PG_FUNCTION_INFO_V1(bunny_index_ddl);
PG_FUNCTION_INFO_V1(bunny_conninfo_check);
PG_FUNCTION_INFO_V1(bunny_mask_conninfo);
PG_FUNCTION_INFO_V1(bunny_caller_is_superuser);
PG_FUNCTION_INFO_V1(bunny_remote_query);
PG_FUNCTION_INFO_V1(bunny_test_peer);
PG_FUNCTION_INFO_V1(bunny_source_drop_slot);
PG_FUNCTION_INFO_V1(bunny_source_drop_publication);
PG_FUNCTION_INFO_V1(bunny_source_slot_exists);
PG_FUNCTION_INFO_V1(bunny_source_current_wal_lsn);
PG_FUNCTION_INFO_V1(bunny_source_columns);
PG_FUNCTION_INFO_V1(bunny_source_indexes);
PG_FUNCTION_INFO_V1(bunny_source_tables);
PG_FUNCTION_INFO_V1(bunny_check_source_tables);
PG_FUNCTION_INFO_V1(bunny_notify);
PG_FUNCTION_INFO_V1(bunny_stop_worker);
PG_FUNCTION_INFO_V1(bunny_wait_for_lsn);
PG_FUNCTION_INFO_V1(bunny_worker_stats);

/* refuse CREATE EXTENSION unless preloaded */
Datum
bunny_check_preload(PG_FUNCTION_ARGS)
{
	if (!bunny_loaded_at_preload() || BunnyState == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("bunnydb must be loaded via shared_preload_libraries"),
				 errhint("Add bunnydb to shared_preload_libraries in postgresql.conf and restart the server.")));
	PG_RETURN_VOID();
}

/* raise 22023 unless the string parses as a libpq conninfo or URI */
Datum
bunny_conninfo_check(PG_FUNCTION_ARGS)
{
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &err);

	if (opts == NULL)
	{
		char	   *msg = stream_scrub_conninfo_error(err ? err : "out of memory");

		if (err)
			PQfreemem(err);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid connection string"),
				 errdetail("%s", msg),
				 errhint("Use a libpq connection string such as 'host=... dbname=... user=...' or a postgresql:// URI.")));
	}
	PQconninfoFree(opts);
	PG_RETURN_VOID();
}

/*
 * The conninfo with its password replaced by ********.  A conninfo that
 * holds a password is shown as libpq parsed it, in keyword=value form.  Parsing rather than pattern
 * matching catches every spelling of a password (quoted, escaped, in a URI's
 * userinfo or query string, percent-encoded).
 */
Datum
bunny_mask_conninfo(PG_FUNCTION_ARGS)
{
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
	StringInfoData buf;

	if (opts == NULL)
	{
		if (err)
			PQfreemem(err);
		PG_RETURN_TEXT_P(cstring_to_text("(invalid connection string)"));
	}
	/* nothing to hide: show it as the user wrote it */
	{
		bool		has_password = false;

		for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
			if (strcmp(o->keyword, "password") == 0 && o->val != NULL)
				has_password = true;
		if (!has_password)
		{
			PQconninfoFree(opts);
			PG_RETURN_TEXT_P(cstring_to_text(conninfo));
		}
	}

	initStringInfo(&buf);
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
	{
		const char *val = o->val;

		if (val == NULL)
			continue;
		if (strcmp(o->keyword, "password") == 0)
			val = "********";
		if (buf.len > 0)
			appendStringInfoChar(&buf, ' ');
		appendStringInfo(&buf, "%s=", o->keyword);
		if (*val == '\0' || strpbrk(val, " \t\n\r'\\") != NULL)
		{
			appendStringInfoChar(&buf, '\'');
			for (const char *c = val; *c; c++)
			{
				if (*c == '\'' || *c == '\\')
					appendStringInfoChar(&buf, '\\');
				appendStringInfoChar(&buf, *c);
			}
			appendStringInfoChar(&buf, '\'');
		}
		else
			appendStringInfoString(&buf, val);
	}
	PQconninfoFree(opts);
	PG_RETURN_TEXT_P(cstring_to_text(buf.data));
}

/* is the role calling the SQL API (outside SECURITY DEFINER) a superuser? */
Datum
bunny_caller_is_superuser(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(superuser_arg(GetOuterUserId()));
}

/*
 * Run one query on a plain connection and return its rows, converted with
 * the caller's column definition list.
 */
Datum
bunny_remote_query(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *query = text_to_cstring(PG_GETARG_TEXT_PP(1));
	PGconn	   *volatile conn = NULL;
	PGresult   *volatile res = NULL;

	InitMaterializedSRF(fcinfo, 0);

	PG_TRY();
	{
		TupleDesc	desc = rsinfo->setDesc;
		AttInMetadata *attinmeta = TupleDescGetAttInMetadata(desc);

		conn = source_connect_as_caller(conninfo);
		res = stream_exec(conn, query);
		if (res == NULL || (PQresultStatus(res) != PGRES_TUPLES_OK &&
							PQresultStatus(res) != PGRES_COMMAND_OK))
		{
			PGresult   *failed = res;

			res = NULL;
			stream_raise_result(conn, failed);
		}
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0)
		{
			int			ncols = PQnfields(res);
			char	  **vals;

			if (ncols != desc->natts)
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("remote query returned %d columns, %d expected",
								ncols, desc->natts)));
			vals = palloc(sizeof(char *) * ncols);
			for (int r = 0; r < PQntuples(res); r++)
			{
				HeapTuple	tup;

				for (int c = 0; c < ncols; c++)
					vals[c] = PQgetisnull(res, r, c) ? NULL : PQgetvalue(res, r, c);
				tup = BuildTupleFromCStrings(attinmeta, vals);
				tuplestore_puttuple(rsinfo->setResult, tup);
			}
		}
	}
	PG_FINALLY();
	{
		if (res)
			PQclear(res);
		if (conn)
			PQfinish(conn);
	}
	PG_END_TRY();
	return (Datum) 0;
}

/*
 * bunny._test_peer(conninfo): what bunny.test_peer reports of a source,
 * from the same SourceInfo and rules (source_problems) as the mirror's own
 * check.  Failing to connect raises: test_peer turns that into its row.
 */
Datum
bunny_test_peer(PG_FUNCTION_ARGS)
{
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	PGconn	   *conn;
	TupleDesc	desc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	conn = source_connect_as_caller(conninfo);
	PG_TRY();
	{
		SourceInfo *info = source_info(conn);
		char	   *problems = source_problems(info);

		/* copied out: the SourceInfo goes with the connection */
		values[0] = BoolGetDatum(problems == NULL);
		values[1] = CStringGetTextDatum(info->version_text);
		values[2] = CStringGetTextDatum(info->wal_level);
		values[3] = BoolGetDatum(info->can_replicate);
		values[4] = problems ? CStringGetTextDatum(problems) : (Datum) 0;
		nulls[4] = problems == NULL;
	}
	PG_FINALLY();
	{
		stream_disconnect(&conn);
	}
	PG_END_TRY();
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/*
 * bunny._source_drop_slot(conninfo, slot): drop_mirror's drop of the
 * mirror's slot, terminating the walsender that holds it; the same
 * source_drop_slot setup uses.  Ten seconds for a terminated walsender to
 * let go of the slot.
 */
Datum
bunny_source_drop_slot(PG_FUNCTION_ARGS)
{
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *slot = text_to_cstring(PG_GETARG_TEXT_PP(1));
	PGconn	   *conn = source_connect_as_caller(conninfo);

	PG_TRY();
	{
		source_drop_slot(conn, slot, 10000);
	}
	PG_FINALLY();
	{
		stream_disconnect(&conn);
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}

/* bunny._source_drop_publication(conninfo, publication), if it exists */
Datum
bunny_source_drop_publication(PG_FUNCTION_ARGS)
{
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *pubname = text_to_cstring(PG_GETARG_TEXT_PP(1));
	PGconn	   *conn = source_connect_as_caller(conninfo);

	PG_TRY();
	{
		source_drop_publication(conn, pubname);
	}
	PG_FINALLY();
	{
		stream_disconnect(&conn);
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}

/* bunny._source_slot_exists(conninfo, slot) */
Datum
bunny_source_slot_exists(PG_FUNCTION_ARGS)
{
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *slot = text_to_cstring(PG_GETARG_TEXT_PP(1));
	PGconn	   *conn = source_connect_as_caller(conninfo);
	bool		exists = false;

	PG_TRY();
	{
		exists = source_slot_exists(conn, slot, NULL, NULL);
	}
	PG_FINALLY();
	{
		stream_disconnect(&conn);
	}
	PG_END_TRY();
	PG_RETURN_BOOL(exists);
}

/* bunny._source_current_wal_lsn(conninfo) */
Datum
bunny_source_current_wal_lsn(PG_FUNCTION_ARGS)
{
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	PGconn	   *conn = source_connect_as_caller(conninfo);
	XLogRecPtr	lsn = InvalidXLogRecPtr;

	PG_TRY();
	{
		lsn = source_current_wal_lsn(conn);
	}
	PG_FINALLY();
	{
		stream_disconnect(&conn);
	}
	PG_END_TRY();
	PG_RETURN_LSN(lsn);
}

/*
 * bunny._source_columns(conninfo, table): the columns of a source table
 * (source_table_columns, which setup describes tables with) as
 * bunny.sync_schema compares them: name, type (with COLLATE), NOT NULL,
 * default, generation expression.
 */
Datum
bunny_source_columns(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *table = text_to_cstring(PG_GETARG_TEXT_PP(1));
	PGconn	   *conn;
	List	   *columns = NIL;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	conn = source_connect_as_caller(conninfo);
	PG_TRY();
	{
		columns = source_table_columns(conn, table);
	}
	PG_FINALLY();
	{
		stream_disconnect(&conn);
	}
	PG_END_TRY();
	foreach(lc, columns)
	{
		SourceColumn *col = lfirst(lc);
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		values[0] = DirectFunctionCall1(namein, CStringGetDatum(col->name));
		values[1] = CStringGetTextDatum(col->type_sql);
		values[2] = BoolGetDatum(col->notnull);
		values[3] = col->default_expr ? CStringGetTextDatum(col->default_expr) : (Datum) 0;
		nulls[3] = col->default_expr == NULL;
		values[4] = col->generated ? CStringGetTextDatum(col->generated) : (Datum) 0;
		nulls[4] = col->generated == NULL;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * bunny._source_indexes(conninfo, table): the indexes of a source table
 * (source_table_indexes): name, definition, primary, columns.
 */
Datum
bunny_source_indexes(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *table = text_to_cstring(PG_GETARG_TEXT_PP(1));
	PGconn	   *conn;
	List	   *indexes = NIL;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	conn = source_connect_as_caller(conninfo);
	PG_TRY();
	{
		indexes = source_table_indexes(conn, table);
	}
	PG_FINALLY();
	{
		stream_disconnect(&conn);
	}
	PG_END_TRY();
	foreach(lc, indexes)
	{
		SourceIndex *ix = lfirst(lc);
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		values[0] = DirectFunctionCall1(namein, CStringGetDatum(ix->name));
		values[1] = CStringGetTextDatum(ix->def);
		values[2] = BoolGetDatum(ix->isprimary);
		values[3] = OidInputFunctionCall(F_ARRAY_IN, ix->columns_text, TEXTOID, -1);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* bunny._source_tables(conninfo): what bunny.peer_tables lists */
Datum
bunny_source_tables(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	PGconn	   *conn;
	List	   *tables = NIL;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	conn = source_connect_as_caller(conninfo);
	PG_TRY();
	{
		tables = source_list_tables(conn);
	}
	PG_FINALLY();
	{
		stream_disconnect(&conn);
	}
	PG_END_TRY();
	foreach(lc, tables)
	{
		SourceTableSummary *t = lfirst(lc);
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		values[0] = DirectFunctionCall1(namein, CStringGetDatum(t->schema));
		values[1] = DirectFunctionCall1(namein, CStringGetDatum(t->table));
		values[2] = BoolGetDatum(t->has_primary_key);
		values[3] = CStringGetTextDatum(t->replica_identity);
		values[4] = Int64GetDatum(t->estimated_rows);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* setup's checks of the source on conn, which is closed afterwards */
static void
check_source_and_close(PGconn *conn, Mirror *m)
{
	PG_TRY();
	{
		setup_check_source(conn, m);
	}
	PG_CATCH();
	{
		stream_disconnect(&conn);
		PG_RE_THROW();
	}
	PG_END_TRY();
	stream_disconnect(&conn);
}

/*
 * bunny._check_source_tables(mirror_id): run setup's checks of the source
 * and its tables for a mirror whose catalog rows this transaction wrote
 * (create_mirror, update_tables), so that an error reaches the caller and
 * nothing is created.  A source that cannot be reached now is no error
 * here: the mirror's worker connects, retries and reports it.
 */
Datum
bunny_check_source_tables(PG_FUNCTION_ARGS)
{
	int32		mirror_id = PG_GETARG_INT32(0);
	Mirror	   *m = catalog_load_mirror(mirror_id, false);
	PGconn	   *volatile conn = NULL;
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	if (m == NULL)
		PG_RETURN_VOID();

	/* connecting may fail: in a subtransaction, so that we can go on */
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		conn = mirror_connect(m, false);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		ereport(DEBUG1,
				(errmsg_internal("bunnydb: not checking the source of mirror \"%s\" now: %s",
								 m->name, edata->message)));
		PG_RETURN_VOID();
	}
	PG_END_TRY();

	check_source_and_close(conn, m);
	PG_RETURN_VOID();
}

/*
 * Wake-ups requested by this transaction, sent when it commits: the
 * launcher rescans the database, and running workers re-read their row.
 */
static List *pending_notify = NIL;
static List *pending_stops = NIL;	/* mirrors _stop_worker holds down */
static bool xact_callback_registered = false;

static void
bunny_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;

	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT &&
		event != XACT_EVENT_PARALLEL_ABORT)
		return;

	/* the transaction that stopped a worker is over: it may run again */
	if (pending_stops != NIL)
	{
		LWLockAcquire(BunnyState->lock, LW_EXCLUSIVE);
		foreach(lc, pending_stops)
		{
			BunnyWorkerSlot *slot = bunny_find_slot(MyDatabaseId, lfirst_int(lc));

			if (slot)
				slot->stopping = false;
		}
		bunny_request_rescan(MyDatabaseId);
		if (BunnyState->launcher_latch)
			SetLatch(BunnyState->launcher_latch);
		LWLockRelease(BunnyState->lock);
		pending_stops = NIL;
	}

	if (event != XACT_EVENT_COMMIT)
	{
		pending_notify = NIL;
		return;
	}
	if (pending_notify == NIL)
		return;

	LWLockAcquire(BunnyState->lock, LW_EXCLUSIVE);
	foreach(lc, pending_notify)
	{
		BunnyWorkerSlot *slot = bunny_find_slot(MyDatabaseId, lfirst_int(lc));

		if (slot)
		{
			slot->control_pending = true;
			/* a control call cuts any backoff short */
			slot->failures = 0;
			slot->next_start = 0;
			if (slot->latch)
				SetLatch(slot->latch);
		}
	}
	bunny_request_rescan(MyDatabaseId);
	if (BunnyState->launcher_latch)
		SetLatch(BunnyState->launcher_latch);
	LWLockRelease(BunnyState->lock);
	pending_notify = NIL;
}

static void
register_xact_callback(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(bunny_xact_callback, NULL);
		xact_callback_registered = true;
	}
}

/* wake the launcher and the mirror's worker when this transaction commits */
Datum
bunny_notify(PG_FUNCTION_ARGS)
{
	int32		mirror_id = PG_GETARG_INT32(0);
	MemoryContext old;

	register_xact_callback();
	old = MemoryContextSwitchTo(TopTransactionContext);
	pending_notify = list_append_unique_int(pending_notify, mirror_id);
	MemoryContextSwitchTo(old);
	PG_RETURN_VOID();
}

/* terminate the mirror's worker and wait until it is gone */
Datum
bunny_stop_worker(PG_FUNCTION_ARGS)
{
	int32		mirror_id = PG_GETARG_INT32(0);
	int32		timeout_ms = PG_GETARG_INT32(1);
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	for (;;)
	{
		BunnyWorkerSlot *slot;
		pid_t		pid = 0;

		LWLockAcquire(BunnyState->lock, LW_EXCLUSIVE);
		slot = bunny_find_slot(MyDatabaseId, mirror_id);
		if (slot)
		{
			/* keep the launcher from starting it again until we end */
			if (!slot->stopping)
			{
				MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

				register_xact_callback();
				pending_stops = list_append_unique_int(pending_stops, mirror_id);
				MemoryContextSwitchTo(old);
			}
			slot->stopping = true;
			pid = slot->pid;
		}
		LWLockRelease(BunnyState->lock);

		if (pid == 0)
			PG_RETURN_BOOL(true);
		(void) kill(pid, SIGTERM);
		if (GetCurrentTimestamp() >= deadline)
			PG_RETURN_BOOL(false);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 50, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Wait until the mirror has committed everything up to lsn.  Sleeps on the
 * slot's condition variable, which the worker broadcasts when its
 * processed position moves.
 */
Datum
bunny_wait_for_lsn(PG_FUNCTION_ARGS)
{
	int32		mirror_id = PG_GETARG_INT32(0);
	XLogRecPtr	target = PG_GETARG_LSN(1);
	int32		timeout_ms = PG_GETARG_INT32(2);
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	bool		result = false;
	BunnyWorkerSlot *slot = NULL;

	/*
	 * Waiting must not hold back the cleanup of old row versions: the
	 * caller's snapshot would keep every row the mirror updates meanwhile
	 * from being pruned, and the mirror would slow down for as long as we
	 * wait.  Nothing is read with that snapshot from here on (this function
	 * looks at shared memory only, and bunny.wait_for_lsn returns right
	 * after), so our xmin is dropped for the wait, as SnapshotResetXmin does
	 * when no snapshot is left.
	 */
	MyProc->xmin = InvalidTransactionId;

	for (;;)
	{
		XLogRecPtr	processed = InvalidXLogRecPtr;
		long		left;

		LWLockAcquire(BunnyState->lock, LW_SHARED);
		slot = bunny_find_slot(MyDatabaseId, mirror_id);
		if (slot)
		{
			SpinLockAcquire(&slot->mutex);
			processed = slot->processed_lsn;
			SpinLockRelease(&slot->mutex);
		}
		LWLockRelease(BunnyState->lock);

		if (processed != InvalidXLogRecPtr && processed >= target)
		{
			result = true;
			break;
		}
		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (left <= 0)
			break;
		if (slot)
		{
			/* woken by the worker; the timeout covers a slot being reused */
			(void) ConditionVariableTimedSleep(&slot->progress_cv, Min(left, 1000),
											   PG_WAIT_EXTENSION);
		}
		else
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Min(left, 100), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
		CHECK_FOR_INTERRUPTS();
	}
	if (slot)
		ConditionVariableCancelSleep();
	PG_RETURN_BOOL(result);
}

/* live figures of the workers of this database */
Datum
bunny_worker_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(BunnyState->lock, LW_SHARED);
	for (int i = 0; i < bunny_max_mirror_workers; i++)
	{
		BunnyWorkerSlot *slot = &BunnyState->slots[i];
		Datum		values[8];
		bool		nulls[8] = {false, false, false, false, false, false, false, false};
		XLogRecPtr	source_lsn,
					processed;
		TimestampTz oldest,
					last,
					behind;

		if (!slot->in_use || slot->dboid != MyDatabaseId)
			continue;
		SpinLockAcquire(&slot->mutex);
		source_lsn = slot->source_lsn;
		processed = slot->processed_lsn;
		oldest = slot->oldest_pending_commit;
		last = slot->last_commit_time;
		behind = slot->behind_since;
		SpinLockRelease(&slot->mutex);

		values[0] = Int32GetDatum(slot->mirror_id);
		values[1] = Int32GetDatum(slot->pid);
		nulls[1] = slot->pid == 0;
		values[2] = LSNGetDatum(source_lsn);
		nulls[2] = source_lsn == InvalidXLogRecPtr;
		values[3] = LSNGetDatum(processed);
		nulls[3] = processed == InvalidXLogRecPtr;
		values[4] = TimestampTzGetDatum(oldest);
		nulls[4] = oldest == 0;
		values[5] = TimestampTzGetDatum(last);
		nulls[5] = last == 0;
		values[6] = TimestampTzGetDatum(behind);
		nulls[6] = behind == 0;
		/* when the launcher starts the next worker, while none runs */
		values[7] = TimestampTzGetDatum(slot->next_start);
		nulls[7] = slot->registered || slot->next_start == 0;

		/*
		 * A declaration of 0.4.0 or older has the first seven columns only;
		 * the tuple is formed with the declared number.
		 */
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(BunnyState->lock);
	return (Datum) 0;
}

static char *
text_arg_or_null(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/*
 * bunny._add_column_ddl(dest, attname, type, generated, def): ALTER TABLE
 * ... ADD COLUMN for a source column (type with COLLATE, generation
 * expression or NULL, default or NULL), as the workers add one
 * (schema_add_column_ddl).
 */
Datum
bunny_add_column_ddl(PG_FUNCTION_ARGS)
{
	SourceColumn col = {0};

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	col.name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	col.type_sql = text_to_cstring(PG_GETARG_TEXT_PP(2));
	col.generated = text_arg_or_null(fcinfo, 3);
	col.default_expr = text_arg_or_null(fcinfo, 4);
	PG_RETURN_TEXT_P(cstring_to_text(schema_add_column_ddl(text_to_cstring(PG_GETARG_TEXT_PP(0)),
														   &col)));
}

/*
 * bunny._alter_column_ddl(dest, attname, change, value): the statement
 * that brings a column in line with the source, for change 'type' (value:
 * the type with COLLATE), 'default' (value: the default, NULL for none),
 * 'set not null', 'drop not null' or 'drop'.
 */
Datum
bunny_alter_column_ddl(PG_FUNCTION_ARGS)
{
	char	   *dest;
	char	   *attname;
	char	   *change;
	char	   *value = text_arg_or_null(fcinfo, 3);
	char	   *ddl;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	dest = text_to_cstring(PG_GETARG_TEXT_PP(0));
	attname = text_to_cstring(PG_GETARG_TEXT_PP(1));
	change = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (strcmp(change, "type") == 0 && value != NULL)
		ddl = schema_alter_type_ddl(dest, attname, value);
	else if (strcmp(change, "default") == 0)
		ddl = schema_set_default_ddl(dest, attname, value);
	else if (strcmp(change, "set not null") == 0 || strcmp(change, "drop not null") == 0)
		ddl = schema_not_null_ddl(dest, attname, change[0] == 's');
	else if (strcmp(change, "drop") == 0)
		ddl = schema_drop_column_ddl(dest, attname);
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown column change \"%s\"", change)));
	PG_RETURN_TEXT_P(cstring_to_text(ddl));
}

/*
 * bunny._index_ddl(src, dest, def, isprimary, cols): a source index (as
 * bunny._source_indexes lists it) for the destination table, as setup
 * creates indexes (schema_index_ddl); a primary key as ADD PRIMARY KEY
 * (schema_primary_key_ddl).  NULL when the definition is not in the form
 * we know.  cols is no longer read: the definition has the key columns
 * apart from INCLUDE ones, which a column list cannot say.
 */
Datum
bunny_index_ddl(PG_FUNCTION_ARGS)
{
	char	   *src;
	char	   *dest;
	char	   *def;
	char	   *ddl;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		PG_RETURN_NULL();
	src = text_to_cstring(PG_GETARG_TEXT_PP(0));
	dest = text_to_cstring(PG_GETARG_TEXT_PP(1));
	def = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (PG_GETARG_BOOL(3))
		ddl = schema_primary_key_ddl(src, dest, def);
	else
		ddl = schema_index_ddl(src, dest, def);
	if (ddl == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(ddl));
}
