/*-------------------------------------------------------------------------
 *
 * catalog.c
 *		Reading and writing bunny.* catalog rows from the workers, and the
 *		workers' error helpers: context frames, permanent errors, details.
 *
 * The catalog functions run inside a transaction the caller has started, and
 * open their own SPI connection (nested SPI is fine), so that they can be
 * called both between batches and from inside an apply batch.  Results are
 * allocated in the caller's memory context.
 *
 * What setup records per table is typed rows, never JSON for another part
 * of the library to parse: the copy plan's parts here, in
 * bunny.mirror_table_part (catalog_record_copy_plan); the later DDL and
 * the sequences in bunny.mirror_table_ddl and mirror_table_sequence
 * (setup.c, read by schema.c).  The JSON this file writes is for the
 * user to read: the details of bunny.mirror_logs.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"
#include "source.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"

/*
 * StartTransactionCommand for a worker.  A background worker has no
 * statements to mark time, so without this every transaction of the worker
 * would report the start time of its first one (now(), xact_start).
 */
void
bunny_start_transaction(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
}

/* run a statement, erroring with its text if SPI fails */
static void
spi_run(const char *sql, int nargs, Oid *argtypes, Datum *values,
		const char *nulls, bool read_only)
{
	int			rc;

	rc = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, read_only, 0);
	if (rc < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("bunnydb catalog statement failed: %s", SPI_result_code_string(rc)),
				 errdetail_internal("Statement: %s", sql)));
}

/* text of column n of the current SPI row, copied into cxt, or NULL */
static char *
spi_text(int row, int col, MemoryContext cxt)
{
	char	   *v = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col);

	return v ? MemoryContextStrdup(cxt, v) : NULL;
}

/* run one statement on the destination, raising on failure */
void
bunny_dest_exec(const char *sql)
{
	SPI_connect();
	spi_run(sql, 0, NULL, NULL, NULL, false);
	SPI_finish();
}

/*
 * First column of the first row of a query as text (copied to the caller's
 * context), or NULL.
 */
char *
bunny_spi_scalar(const char *sql, int nargs, Oid *argtypes, Datum *values,
				 const char *nulls)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *result = NULL;

	SPI_connect();
	spi_run(sql, nargs, argtypes, values, nulls, false);
	if (SPI_processed > 0 && SPI_tuptable != NULL)
		result = spi_text(0, 1, cxt);
	SPI_finish();
	return result;
}

/*
 * A catalog row read by column name, so that a query can gain or reorder
 * columns without the readers counting positions.
 */
typedef struct CatalogRow
{
	HeapTuple	tuple;
	TupleDesc	desc;
	MemoryContext cxt;			/* where strings are copied */
} CatalogRow;

static int
row_attnum(CatalogRow *row, const char *column)
{
	int			attnum = SPI_fnumber(row->desc, column);

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("bunnydb catalog query has no column \"%s\"", column)));
	return attnum;
}

/* text of a column, copied into the row's context, or NULL */
static char *
row_text(CatalogRow *row, const char *column)
{
	char	   *v = SPI_getvalue(row->tuple, row->desc, row_attnum(row, column));

	return v ? MemoryContextStrdup(row->cxt, v) : NULL;
}

/* a column that is NOT NULL in the catalog, as a Datum */
static Datum
row_datum(CatalogRow *row, const char *column, bool *isnull)
{
	return SPI_getbinval(row->tuple, row->desc, row_attnum(row, column), isnull);
}

static bool
row_bool(CatalogRow *row, const char *column)
{
	bool		isnull;
	Datum		d = row_datum(row, column, &isnull);

	return !isnull && DatumGetBool(d);
}

static int32
row_int32(CatalogRow *row, const char *column)
{
	bool		isnull;
	Datum		d = row_datum(row, column, &isnull);

	return isnull ? 0 : DatumGetInt32(d);
}

/*
 * The mirror's options.  Their defaults live in one place, the column
 * defaults of bunny.mirror (extension 0.3.0 on).  A catalog of 0.2.0 or
 * older keeps them in the jsonb column config, which ALTER EXTENSION
 * UPDATE turns into typed columns: until it has run, under a library
 * already replaced, the options are read from config with the defaults
 * those versions had.
 */
static const char *
mirror_options_sql(void)
{
	Oid			nsp = get_namespace_oid("bunny", false);
	Oid			mirror_rel = get_relname_relid("mirror", nsp);

	if (get_attnum(mirror_rel, "max_batch_size") != InvalidAttrNumber)
		return "";
	return ", coalesce((m.config->>'do_initial_snapshot')::boolean, true) AS do_initial_snapshot, "
		"coalesce((m.config->>'max_batch_size')::integer, 1000) AS max_batch_size, "
		"coalesce((m.config->>'idle_timeout_seconds')::integer, 60) AS idle_timeout_seconds, "
		"coalesce((m.config->>'snapshot_num_rows_per_partition')::integer, 250000) "
		"  AS snapshot_num_rows_per_partition, "
		"coalesce((m.config->>'snapshot_max_parallel_workers')::integer, 8) "
		"  AS snapshot_max_parallel_workers, "
		"coalesce((m.config->>'snapshot_num_tables_in_parallel')::integer, 4) "
		"  AS snapshot_num_tables_in_parallel, "
		"coalesce((m.config->>'replicate_indexes')::boolean, true) AS replicate_indexes, "
		"coalesce((m.config->>'replicate_foreign_keys')::boolean, true) AS replicate_foreign_keys";
}

/* a name[] column (exclude_columns), as a List of char * */
static List *
row_name_list(CatalogRow *row, const char *column)
{
	bool		isnull;
	Datum		d = row_datum(row, column, &isnull);
	Datum	   *elems;
	int			nelems;
	List	   *result = NIL;
	MemoryContext old;

	if (isnull)
		return NIL;
	deconstruct_array(DatumGetArrayTypeP(d), NAMEOID, NAMEDATALEN, false,
					  TYPALIGN_CHAR, &elems, NULL, &nelems);
	old = MemoryContextSwitchTo(row->cxt);
	for (int j = 0; j < nelems; j++)
		result = lappend(result, pstrdup(NameStr(*DatumGetName(elems[j]))));
	MemoryContextSwitchTo(old);
	return result;
}

/*
 * Load a mirror with its peer and tables.  lock_row takes FOR KEY SHARE on
 * the mirror row: a worker starting while drop_mirror holds the row waits
 * for it, then finds nothing.  Returns NULL if the mirror does not exist.
 */
Mirror *
catalog_load_mirror(int32 mirror_id, bool lock_row)
{
	MemoryContext cxt = CurrentMemoryContext;
	Mirror	   *m = NULL;
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(mirror_id)};
	CatalogRow	row = {.cxt = cxt};
	const char *sql;

	SPI_connect();
	/* the extension may have been dropped under a running worker */
	SPI_execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'bunnydb'", true, 1);
	if (SPI_processed == 0)
	{
		SPI_finish();
		return NULL;
	}
	sql = psprintf("SELECT m.*, p.conninfo, p.require_password%s "
				   "  FROM bunny.mirror m JOIN bunny.peer p ON p.name = m.source_peer "
				   " WHERE m.id = $1 %s",
				   mirror_options_sql(), lock_row ? "FOR KEY SHARE OF m" : "");
	spi_run(sql, 1, argtypes, values, NULL, false);
	if (SPI_processed == 1)
	{
		row.tuple = SPI_tuptable->vals[0];
		row.desc = SPI_tuptable->tupdesc;

		m = MemoryContextAllocZero(cxt, sizeof(Mirror));
		m->id = mirror_id;
		m->name = row_text(&row, "name");
		m->status = mirror_status_parse(row_text(&row, "status"));
		m->phase = mirror_phase_parse(row_text(&row, "phase"));
		m->pending_op = row_text(&row, "pending_op");
		m->conninfo = row_text(&row, "conninfo");
		m->slot_name = row_text(&row, "slot_name");
		m->publication_name = row_text(&row, "publication_name");
		m->origin_name = row_text(&row, "origin_name");
		m->incarnation = row_text(&row, "incarnation");
		m->slot_requested = row_bool(&row, "slot_requested");
		m->publication_dirty = row_bool(&row, "publication_dirty");
		m->require_password = row_bool(&row, "require_password");
		m->error_count = row_int32(&row, "error_count");
		m->do_initial_snapshot = row_bool(&row, "do_initial_snapshot");
		m->max_batch_size = row_int32(&row, "max_batch_size");
		m->idle_timeout_seconds = row_int32(&row, "idle_timeout_seconds");
		m->snapshot_rows_per_partition = row_int32(&row, "snapshot_num_rows_per_partition");
		m->snapshot_max_workers = row_int32(&row, "snapshot_max_parallel_workers");
		m->snapshot_tables_in_parallel = row_int32(&row, "snapshot_num_tables_in_parallel");
		m->replicate_indexes = row_bool(&row, "replicate_indexes");
		m->replicate_foreign_keys = row_bool(&row, "replicate_foreign_keys");

		spi_run("SELECT * FROM bunny.mirror_table WHERE mirror_id = $1 "
				" ORDER BY source_schema, source_table",
				1, argtypes, values, NULL, false);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			MirrorTable *t = MemoryContextAllocZero(cxt, sizeof(MirrorTable));
			bool		isnull;
			Datum		d;
			MemoryContext old;

			row.tuple = SPI_tuptable->vals[i];
			row.desc = SPI_tuptable->tupdesc;
			t->source_schema = row_text(&row, "source_schema");
			t->source_table = row_text(&row, "source_table");
			t->dest_schema = row_text(&row, "destination_schema");
			t->dest_table = row_text(&row, "destination_table");
			t->partition_key = row_text(&row, "partition_key");
			t->exclude_columns = row_name_list(&row, "exclude_columns");
			t->status = table_status_parse(row_text(&row, "status"));
			d = row_datum(&row, "sync_lsn", &isnull);
			t->sync_lsn = isnull ? InvalidXLogRecPtr : DatumGetLSN(d);
			t->resync_strategy = resync_strategy_parse(row_text(&row, "resync_strategy"));
			t->resync_state = resync_state_parse(row_text(&row, "resync_state"));
			t->copy_target = row_text(&row, "copy_target_table");
			t->created_by_bunny = row_bool(&row, "created_by_bunny");
			old = MemoryContextSwitchTo(cxt);
			m->tables = lappend(m->tables, t);
			MemoryContextSwitchTo(old);
		}
	}
	SPI_finish();
	return m;
}

/*
 * Set the status (and phase, unless NULL) of a mirror; the trigger of
 * state.c checks the transition.
 */
static void
set_status(int32 mirror_id, MirrorStatus status, const MirrorPhase *phase)
{
	Oid			argtypes[3] = {INT4OID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	values[0] = Int32GetDatum(mirror_id);
	values[1] = CStringGetTextDatum(mirror_status_name(status));
	if (phase)
		values[2] = CStringGetTextDatum(mirror_phase_name(*phase));
	else
		nulls[2] = 'n';
	SPI_connect();
	spi_run("UPDATE bunny.mirror SET status = $2, phase = coalesce($3, phase), "
			"       updated_at = now() WHERE id = $1",
			3, argtypes, values, nulls, false);
	SPI_finish();
}

void
catalog_set_status(int32 mirror_id, MirrorStatus status)
{
	set_status(mirror_id, status, NULL);
}

void
catalog_set_status_phase(int32 mirror_id, MirrorStatus status, MirrorPhase phase)
{
	set_status(mirror_id, status, &phase);
}

/* set the status of every table of a mirror */
void
catalog_set_table_status(int32 mirror_id, TableStatus status)
{
	Oid			argtypes[2] = {INT4OID, TEXTOID};
	Datum		values[2];

	values[0] = Int32GetDatum(mirror_id);
	values[1] = CStringGetTextDatum(table_status_name(status));
	SPI_connect();
	spi_run("UPDATE bunny.mirror_table SET status = $2, error_message = NULL "
			" WHERE mirror_id = $1",
			2, argtypes, values, NULL, false);
	SPI_finish();
}

/* remember, durably and before asking the source, that we create the slot */
void
catalog_set_slot_requested(int32 mirror_id)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(mirror_id)};

	SPI_connect();
	spi_run("UPDATE bunny.mirror SET slot_requested = true WHERE id = $1",
			1, argtypes, values, NULL, false);
	SPI_finish();
}

/*
 * The table an error's context names: the line bunny_error_context wrote
 * ('bunnydb mirror "m", table t[, source LSN x]'), or NULL.  The frames
 * are gone by the time the error is caught (they lived on the stack it
 * unwound), so their one line in the context is what is left of them.  A
 * mirror's name never holds a quote (bunny._check_name), and the LSN
 * follows the table last.
 */
static char *
error_table(const char *context)
{
	const char *line = context;

	while (line != NULL && *line != '\0')
	{
		const char *eol = strchr(line, '\n');
		size_t		len = eol ? (size_t) (eol - line) : strlen(line);
		char	   *text = pnstrdup(line, len);
		char	   *table;

		if (strncmp(text, "bunnydb mirror \"", 16) == 0 &&
			(table = strstr(text + 16, "\", table ")) != NULL)
		{
			char	   *lsn;

			table += strlen("\", table ");
			lsn = strstr(table, ", source LSN ");
			if (lsn != NULL)
				*lsn = '\0';
			return table;
		}
		pfree(text);
		line = eol ? eol + 1 : NULL;
	}
	return NULL;
}

/*
 * Record a failed run: error_message, error_count + 1, and FAILED when the
 * problem will not go away by retrying.  The tables carry the same current
 * error: the one the error's context names gets its message, the others
 * lose what an earlier error left (it is not what is wrong now).  A table
 * is named by its destination or, failing that, its source name.
 */
void
catalog_record_error(int32 mirror_id, ErrorData *edata, bool permanent)
{
	Oid			argtypes[4] = {INT4OID, TEXTOID, BOOLOID, TEXTOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	char	   *table = edata->context ? error_table(edata->context) : NULL;

	values[0] = Int32GetDatum(mirror_id);
	values[1] = CStringGetTextDatum(edata->message);
	values[2] = BoolGetDatum(permanent);
	if (table != NULL)
		values[3] = CStringGetTextDatum(table);
	else
		nulls[3] = 'n';
	SPI_connect();
	spi_run("UPDATE bunny.mirror SET error_message = $2, error_count = error_count + 1, "
			"       last_error_at = now(), updated_at = now(), "
			"       status = CASE WHEN $3 THEN 'FAILED' ELSE status END "
			" WHERE id = $1",
			3, argtypes, values, nulls, false);
	spi_run("UPDATE bunny.mirror_table t "
			"   SET error_message = CASE WHEN format('%I.%I', t.source_schema, t.source_table) = n.src "
			"                            THEN $2 END "
			"  FROM (SELECT (SELECT format('%I.%I', x.source_schema, x.source_table) "
			"                  FROM bunny.mirror_table x "
			"                 WHERE x.mirror_id = $1 "
			"                   AND $4 IN (format('%I.%I', x.destination_schema, x.destination_table), "
			"                              format('%I.%I', x.source_schema, x.source_table)) "
			"                 ORDER BY $4 = format('%I.%I', x.destination_schema, x.destination_table) DESC "
			"                 LIMIT 1) AS src) n "
			" WHERE t.mirror_id = $1 "
			"   AND (t.error_message IS NOT NULL "
			"        OR format('%I.%I', t.source_schema, t.source_table) = n.src)",
			4, argtypes, values, nulls, false);
	SPI_finish();
}

/*
 * The current error is over: the mirror's fields, and with them the
 * tables' (a trigger on bunny.mirror clears those whenever the mirror's
 * message goes, whoever clears it).
 */
void
catalog_clear_error(int32 mirror_id)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(mirror_id)};

	SPI_connect();
	spi_run("UPDATE bunny.mirror SET error_message = NULL, error_count = 0 "
			" WHERE id = $1 AND (error_count <> 0 OR error_message IS NOT NULL)",
			1, argtypes, values, NULL, false);
	SPI_finish();
}

/* the worker has stopped consuming: PAUSING becomes PAUSED */
void
catalog_finish_pause(int32 mirror_id)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(mirror_id)};

	SPI_connect();
	spi_run("UPDATE bunny.mirror SET status = 'PAUSED', pending_op = NULL, updated_at = now() "
			" WHERE id = $1",
			1, argtypes, values, NULL, false);
	SPI_finish();
}

/*
 * A resync that went through setup (the slot was gone) is over once setup
 * completes: no per-table step will end it.
 */
void
catalog_finish_resync(int32 mirror_id, const char *mirror_name)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(mirror_id)};

	SPI_connect();
	spi_run("UPDATE bunny.mirror SET pending_op = NULL WHERE id = $1 AND pending_op = 'resync'",
			1, argtypes, values, NULL, false);
	if (SPI_processed > 0)
		bunny_log(mirror_name, "INFO", "resync finished", NULL);
	SPI_finish();
}

/* append a line to bunny.mirror_logs (in the caller's transaction, if any) */
void
bunny_log(const char *mirror, const char *level, const char *message,
		  const char *details_json)
{
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	bool		own_xact = !IsTransactionState();

	if (own_xact)
	{
		bunny_start_transaction();
		PushActiveSnapshot(GetTransactionSnapshot());
	}
	values[0] = CStringGetTextDatum(mirror);
	values[1] = CStringGetTextDatum(level);
	values[2] = CStringGetTextDatum(message);
	if (details_json)
		values[3] = CStringGetTextDatum(details_json);
	else
		nulls[3] = 'n';
	SPI_connect();
	spi_run("INSERT INTO bunny.mirror_logs (mirror, level, message, details) "
			"VALUES ($1, $2, $3, $4::jsonb)",
			4, argtypes, values, nulls, false);
	SPI_finish();
	if (own_xact)
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
}

static void bunny_error_context(void *arg);

/* the innermost bunnydb frame on the error context stack, or NULL */
static BunnyErrorContext *
errcontext_innermost(void)
{
	for (ErrorContextCallback *cb = error_context_stack; cb != NULL; cb = cb->previous)
		if (cb->callback == bunny_error_context)
			return (BunnyErrorContext *) cb->arg;
	return NULL;
}

/*
 * Error context callback: one line naming mirror, table and LSN.  Frames
 * further out stay silent when an inner one speaks, because the inner one
 * already names what they know (the line would otherwise repeat).
 */
static void
bunny_error_context(void *arg)
{
	BunnyErrorContext *ec = (BunnyErrorContext *) arg;
	const char *mirror = NULL;
	const char *table = NULL;
	XLogRecPtr	lsn = InvalidXLogRecPtr;

	if (errcontext_innermost() != ec)
		return;
	for (ErrorContextCallback *cb = &ec->cb; cb != NULL; cb = cb->previous)
	{
		BunnyErrorContext *f = (BunnyErrorContext *) cb->arg;

		if (cb->callback != bunny_error_context)
			continue;
		if (mirror == NULL)
			mirror = f->mirror;
		if (table == NULL)
			table = f->table;
		if (XLogRecPtrIsInvalid(lsn))
			lsn = f->lsn;
	}
	if (mirror == NULL)
		return;
	if (table && lsn != InvalidXLogRecPtr)
		errcontext("bunnydb mirror \"%s\", table %s, source LSN %X/%X",
				   mirror, table, LSN_FORMAT_ARGS(lsn));
	else if (table)
		errcontext("bunnydb mirror \"%s\", table %s", mirror, table);
	else if (lsn != InvalidXLogRecPtr)
		errcontext("bunnydb mirror \"%s\", source LSN %X/%X",
				   mirror, LSN_FORMAT_ARGS(lsn));
	else
		errcontext("bunnydb mirror \"%s\"", mirror);
}

/*
 * Push ec, naming what its caller knows; ec must stay valid until it is
 * popped (an error unwinds it with the rest of the stack, PG_CATCH restores
 * the stack as it was at PG_TRY).
 */
void
bunny_errcontext_push(BunnyErrorContext *ec, const char *mirror, const char *table,
					  XLogRecPtr lsn)
{
	ec->mirror = mirror;
	ec->table = table;
	ec->lsn = lsn;
	ec->cb.callback = bunny_error_context;
	ec->cb.arg = (void *) ec;
	ec->cb.previous = error_context_stack;
	error_context_stack = &ec->cb;
}

/* pop ec, which must be the innermost frame: frames are strictly nested */
void
bunny_errcontext_pop(BunnyErrorContext *ec)
{
	bool		nested = error_context_stack == &ec->cb;

	/* ec is still valid here, what was pushed after it may not be */
	error_context_stack = ec->cb.previous;
	if (!nested)
		elog(ERROR, "bunnydb error context popped out of order");
}

/*
 * In a worker's PG_CATCH block: report the error to the server log, roll
 * back, and return a copy of it (in TopMemoryContext) to be recorded.
 */
ErrorData *
bunny_catch_error(void)
{
	ErrorData  *edata;

	HOLD_INTERRUPTS();
	MemoryContextSwitchTo(TopMemoryContext);
	edata = CopyErrorData();
	EmitErrorReport();
	FlushErrorState();
	AbortOutOfAnyTransaction();
	RESUME_INTERRUPTS();
	return edata;
}

/*
 * Errors retrying cannot cure (a missing source table, wal_level, a slot
 * of someone else's ...) leave the mirror FAILED instead of retried.  No
 * SQLSTATE tells them apart (55000 is a non-empty destination table,
 * permanent, and a failed initial copy, retried), so the code raising one
 * says so just before its ereport, and the worker asks when it handles
 * the error.  The flag is this file's alone; it is never cleared, because
 * a worker exits after the error it handles.
 */
static bool error_permanent = false;

void
bunny_mark_permanent(void)
{
	error_permanent = true;
}

bool
bunny_error_permanent(void)
{
	return error_permanent;
}

/* add "key": "value" to a JSON object under construction */
static void
json_add(StringInfo buf, const char *key, const char *value)
{
	if (value == NULL)
		return;
	if (buf->len > 1)
		appendStringInfoString(buf, ", ");
	escape_json(buf, key);
	appendStringInfoString(buf, ": ");
	escape_json(buf, value);
}

/*
 * The details of an error logged in bunny.mirror_logs, as a JSON object:
 * SQLSTATE, detail, hint, context, and what the user should do (if given).
 */
char *
bunny_error_details(ErrorData *edata, const char *action)
{
	StringInfoData details;

	initStringInfo(&details);
	appendStringInfoChar(&details, '{');
	json_add(&details, "sqlstate", unpack_sql_state(edata->sqlerrcode));
	json_add(&details, "detail", edata->detail);
	json_add(&details, "hint", edata->hint);
	json_add(&details, "context", edata->context);
	json_add(&details, "action", action);
	appendStringInfoChar(&details, '}');
	return details.data;
}

/* text[] literal of a list of C strings, for SPI */
static Datum
text_array(List *items)
{
	Datum	   *d = palloc(sizeof(Datum) * (list_length(items) + 1));
	int			n = 0;
	ListCell   *lc;

	foreach(lc, items)
		d[n++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(d, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/* the parts of a copy plan: what each reads, and its WHERE clause or NULL */
typedef struct PartPlan
{
	ArrayBuildState *from;
	ArrayBuildState *where;
} PartPlan;

static void
part_item(PartPlan *plan, const char *from, const char *where)
{
	accumArrayResult(plan->from, CStringGetTextDatum(from), false, TEXTOID, CurrentMemoryContext);
	accumArrayResult(plan->where, where ? CStringGetTextDatum(where) : (Datum) 0, where == NULL,
					 TEXTOID, CurrentMemoryContext);
}

/*
 * Split a table's copy into parts: one per leaf partition of a partitioned
 * source; ranges of an integer partition_key; else ranges of heap blocks
 * (TID range scans).  The first and last ranges are open-ended, so rows
 * beyond the estimates are still copied exactly once.
 */
static void
plan_parts(SourceTable *st, int rows_per_part, PartPlan *plan)
{
	const char *src = quote_qualified_identifier(st->mt->source_schema, st->mt->source_table);
	int64		nparts = 1;

	plan->from = initArrayResult(TEXTOID, CurrentMemoryContext, false);
	plan->where = initArrayResult(TEXTOID, CurrentMemoryContext, false);
	if (st->relkind == 'p')
	{
		ListCell   *lc;

		foreach(lc, st->leaves)
			part_item(plan, (char *) lfirst(lc), NULL);
		if (st->leaves == NIL)
			part_item(plan, src, NULL);
		return;
	}

	if (st->reltuples > rows_per_part)
		nparts = (st->reltuples + rows_per_part - 1) / rows_per_part;
	if (st->key_ranges)
	{
		int64		span = st->key_max - st->key_min + 1;
		const char *k = quote_identifier(st->mt->partition_key);

		nparts = Min(nparts, Max(span, 1));
		for (int64 i = 0; i < nparts; i++)
		{
			int64		lo = st->key_min + span * i / nparts;
			int64		hi = st->key_min + span * (i + 1) / nparts;
			char	   *where;

			if (nparts == 1)
				where = NULL;
			else if (i == 0)
				where = psprintf("%s < " INT64_FORMAT " OR %s IS NULL", k, hi, k);
			else if (i == nparts - 1)
				where = psprintf("%s >= " INT64_FORMAT, k, lo);
			else
				where = psprintf("%s >= " INT64_FORMAT " AND %s < " INT64_FORMAT, k, lo, k, hi);
			part_item(plan, psprintf("ONLY %s", src), where);
		}
	}
	else
	{
		int64		pages = Max(st->relpages, 1);
		int64		per;

		nparts = Min(nparts, pages);
		per = (pages + nparts - 1) / nparts;
		for (int64 i = 0; i < nparts; i++)
		{
			int64		lo = i * per;
			int64		hi = (i + 1) * per;
			char	   *where;

			if (nparts == 1)
				where = NULL;
			else if (i == 0)
				where = psprintf("ctid < '(" INT64_FORMAT ",0)'::tid", hi);
			else if (i == nparts - 1)
				where = psprintf("ctid >= '(" INT64_FORMAT ",0)'::tid", lo);
			else
				where = psprintf("ctid >= '(" INT64_FORMAT ",0)'::tid AND ctid < '(" INT64_FORMAT ",0)'::tid",
								 lo, hi);
			part_item(plan, psprintf("ONLY %s", src), where);
		}
	}
}

/*
 * Binary COPY is safe when every copied column has the same built-in type
 * on both sides: binary array and record values embed type OIDs, which
 * differ between servers for user-defined types.
 */
static bool
copy_binary_safe(SourceTable *st)
{
	Oid			nspid = get_namespace_oid(st->mt->dest_schema, true);
	Oid			relid = OidIsValid(nspid) ? get_relname_relid(st->mt->dest_table, nspid) : InvalidOid;
	ListCell   *lc;

	if (!OidIsValid(relid))
		return false;
	foreach(lc, st->columns)
	{
		SourceColumn *col = lfirst(lc);
		AttrNumber	attnum;

		if (col->excluded || col->generated)
			continue;
		attnum = get_attnum(relid, col->name);
		if (col->typid >= FirstNormalObjectId || attnum == InvalidAttrNumber ||
			get_atttype(relid, attnum) != col->typid)
			return false;
	}
	return true;
}

/*
 * Record in bunny.mirror_table what the copy of st reads and how it is
 * split: the source's kind, the columns, the size estimates and whether
 * binary COPY is safe; the parts are rows of bunny.mirror_table_part.
 * Setup records it when it prepares a table, and a resync again from the
 * source as it is then (copy_columns: the columns both sides have now).  A
 * catalog not yet updated to 0.4.0 keeps the parts in the jsonb column
 * copy_parts (see schema_rows_typed).
 */
void
catalog_record_copy_plan(SourceTable *st, Mirror *m, List *copy_columns)
{
	Oid			types[10] = {INT4OID, TEXTOID, TEXTOID, CHAROID, TEXTARRAYOID, INT8OID, INT8OID,
	BOOLOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum		vals[10];
	PartPlan	plan;
	bool		typed = OidIsValid(get_relname_relid("mirror_table_part",
													 get_namespace_oid("bunny", false)));

	plan_parts(st, m->snapshot_rows_per_partition, &plan);
	vals[0] = Int32GetDatum(m->id);
	vals[1] = CStringGetTextDatum(st->mt->source_schema);
	vals[2] = CStringGetTextDatum(st->mt->source_table);
	vals[3] = CharGetDatum(st->relkind);
	vals[4] = text_array(copy_columns);
	vals[5] = Int64GetDatum(st->relpages);
	vals[6] = Int64GetDatum(st->reltuples);
	vals[7] = BoolGetDatum(copy_binary_safe(st));
	vals[8] = makeArrayResult(plan.from, CurrentMemoryContext);
	vals[9] = makeArrayResult(plan.where, CurrentMemoryContext);
	SPI_connect();
	spi_run(psprintf("UPDATE bunny.mirror_table "
					 "   SET source_relkind = $4, copy_columns = $5::name[], "
					 "       source_pages = $6, source_rows = $7, copy_binary = $8%s "
					 " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
					 typed ? "" :
					 ", copy_parts = (SELECT jsonb_agg(jsonb_build_object('from', u.f, 'where', u.w) "
					 "                                 ORDER BY u.n) "
					 "                  FROM unnest($9, $10) WITH ORDINALITY u(f, w, n))"),
			10, types, vals, NULL, false);
	if (typed)
		spi_run("DELETE FROM bunny.mirror_table_part "
				" WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3; "
				"INSERT INTO bunny.mirror_table_part "
				"       (mirror_id, source_schema, source_table, part_no, from_relation, predicate) "
				"SELECT $1, $2, $3, u.n - 1, u.f, u.w "
				"  FROM unnest($9, $10) WITH ORDINALITY u(f, w, n)",
				10, types, vals, NULL, false);
	SPI_finish();
}
