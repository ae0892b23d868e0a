/*-------------------------------------------------------------------------
 *
 * setup.c
 *		SETUP phase of a mirror: check the source, create the destination
 *		schemas, types and tables, the publication and the slot, then hand
 *		over to the initial copy (snapshot.c) or straight to CDC.
 *
 * Setup is idempotent, so that a crash anywhere in it is cured by running
 * it again: destination objects are created only when missing, the
 * publication is reused when its comment names this mirror's incarnation,
 * and the slot is dropped and created again when bunny.mirror says we asked
 * for it (nothing has been applied from it yet).  A slot or publication of
 * the same name that is not ours is never touched: that is an error.
 *
 * The phase switch to CDC commits together with the replication origin's
 * starting position (the slot's consistent point), so CDC starts exactly
 * where the copy's snapshot ends.
 *
 * What setup asks of the source, and the checks on the answers, are
 * source.c's (source_check, source_describe_tables, ...); the DDL that
 * turns the descriptions into destination objects is schema.c's, the copy
 * plan catalog.c's.  This file runs them in order and keeps the catalog
 * rows that say what was created.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"
#include "schema.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "catalog/namespace.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

static const char *
qname(const char *schema, const char *name)
{
	return quote_qualified_identifier(schema, name);
}

/* the bunny.mirror_table row of a mirror ($1) and source table ($2, $3) */
#define KEY_WHERE " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3"

/*
 * Record what completes a table setup created, replacing what an earlier
 * run recorded: its later DDL (SchemaDdl: constraints and indexes, then
 * foreign keys) as rows of bunny.mirror_table_ddl, its sequences
 * (SchemaSequence, dest known) as rows of bunny.mirror_table_sequence.
 * One INSERT per kind of row, from arrays: a mirror may have 10 000
 * tables.  A catalog not yet updated to 0.4.0 gets them in the jsonb
 * columns it has (schema_rows_typed), foreign keys as kind constraint:
 * its bunny._apply_ddl knows no other.
 */
static void
record_table(int32 mirror_id, MirrorTable *mt, List *ddl, List *sequences)
{
	MemoryContext cxt = CurrentMemoryContext;
	ArrayBuildState *arr[6];
	Oid			types[9] = {INT4OID, TEXTOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum		vals[9];
	ListCell   *lc;

	for (int i = 0; i < 6; i++)
		arr[i] = initArrayResult(TEXTOID, cxt, false);
	foreach(lc, ddl)
	{
		SchemaDdl  *d = lfirst(lc);

		accumArrayResult(arr[0], CStringGetTextDatum(d->kind), false, TEXTOID, cxt);
		accumArrayResult(arr[1], CStringGetTextDatum(d->name), false, TEXTOID, cxt);
		accumArrayResult(arr[2], CStringGetTextDatum(d->sql), false, TEXTOID, cxt);
	}
	foreach(lc, sequences)
	{
		SchemaSequence *s = lfirst(lc);

		accumArrayResult(arr[3], CStringGetTextDatum(s->source), false, TEXTOID, cxt);
		accumArrayResult(arr[4], CStringGetTextDatum(s->dest), false, TEXTOID, cxt);
		accumArrayResult(arr[5], CStringGetTextDatum(s->column), false, TEXTOID, cxt);
	}
	vals[0] = Int32GetDatum(mirror_id);
	vals[1] = CStringGetTextDatum(mt->source_schema);
	vals[2] = CStringGetTextDatum(mt->source_table);
	for (int i = 0; i < 6; i++)
		vals[3 + i] = makeArrayResult(arr[i], cxt);

	SPI_connect();
	if (schema_rows_typed())
		SPI_execute_with_args("UPDATE bunny.mirror_table SET created_by_bunny = true " KEY_WHERE "; "
							  "DELETE FROM bunny.mirror_table_ddl " KEY_WHERE "; "
							  "DELETE FROM bunny.mirror_table_sequence " KEY_WHERE "; "
							  "INSERT INTO bunny.mirror_table_ddl "
							  "       (mirror_id, source_schema, source_table, ordinal, kind, name, sql) "
							  "SELECT $1, $2, $3, u.n, u.kind, u.name, u.sql "
							  "  FROM unnest($4, $5, $6) WITH ORDINALITY u(kind, name, sql, n); "
							  "INSERT INTO bunny.mirror_table_sequence "
							  "       (mirror_id, source_schema, source_table, ordinal, source_seq, dest_seq, "
							  "        column_name) "
							  "SELECT $1, $2, $3, u.n, u.src, u.dest, u.col "
							  "  FROM unnest($7, $8, $9) WITH ORDINALITY u(src, dest, col, n)",
							  9, types, vals, NULL, false, 0);
	else
		SPI_execute_with_args("UPDATE bunny.mirror_table "
							  "   SET created_by_bunny = true, "
							  "       post_copy_ddl = (SELECT coalesce(jsonb_agg(jsonb_build_object( "
							  "               'kind', u.kind, 'name', u.name, 'sql', u.sql) ORDER BY u.n), '[]') "
							  "          FROM unnest($4, $5, $6) WITH ORDINALITY u(kind, name, sql, n) "
							  "         WHERE u.kind <> 'foreign key'), "
							  "       fk_ddl = (SELECT coalesce(jsonb_agg(jsonb_build_object( "
							  "               'kind', 'constraint', 'name', u.name, 'sql', u.sql) ORDER BY u.n), '[]') "
							  "          FROM unnest($4, $5, $6) WITH ORDINALITY u(kind, name, sql, n) "
							  "         WHERE u.kind = 'foreign key'), "
							  "       sequences = (SELECT coalesce(jsonb_agg(jsonb_build_object( "
							  "               'source', u.src, 'dest', u.dest, 'column', u.col) ORDER BY u.n), '[]') "
							  "          FROM unnest($7, $8, $9) WITH ORDINALITY u(src, dest, col, n)) "
							  KEY_WHERE,
							  9, types, vals, NULL, false, 0);
	SPI_finish();
}

/*
 * Create the destination table unless it exists (schema.c writes the
 * DDL), and record in bunny.mirror_table what the copy and the post-copy
 * steps need.  A table bunnydb creates gets columns, types, NOT NULL,
 * defaults and their sequences at once; its constraints and indexes come
 * after the copy (or at once when there is no copy).  A table that
 * already existed is the user's: it is used as it is.
 */
static void
ensure_table(SourceTable *st, Mirror *m, List *tables, bool copy)
{
	MirrorTable *mt = st->mt;
	const char *dest = qname(mt->dest_schema, mt->dest_table);
	ListCell   *lc;
	List	   *copy_columns = NIL;
	List	   *ddl = NIL;
	List	   *sequences = NIL;
	Oid			nspid = get_namespace_oid(mt->dest_schema, true);
	Oid			relid = OidIsValid(nspid) ? get_relname_relid(mt->dest_table, nspid) : InvalidOid;
	char		relkind = OidIsValid(relid) ? get_rel_relkind(relid) : '\0';
	bool		created = relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE;

	if (created)
	{
		SchemaTable *t;

		bunny_dest_exec(psprintf("CREATE SCHEMA IF NOT EXISTS %s",
								 quote_identifier(mt->dest_schema)));
		nspid = get_namespace_oid(mt->dest_schema, false);
		t = schema_create_table_ddl(st, nspid);
		foreach(lc, t->statements)
			bunny_dest_exec((char *) lfirst(lc));

		foreach(lc, t->sequences)
		{
			SchemaSequence *s = lfirst(lc);

			if (s->dest == NULL)
			{
				/* an identity column's own */
				Oid			types[2] = {TEXTOID, TEXTOID};
				Datum		vals[2];

				vals[0] = CStringGetTextDatum(dest);
				vals[1] = CStringGetTextDatum(s->column);
				s->dest = bunny_spi_scalar("SELECT pg_catalog.pg_get_serial_sequence($1, $2)",
										   2, types, vals, NULL);
				if (s->dest == NULL)
					continue;
			}
			sequences = lappend(sequences, s);
		}
		bunny_log(m->name, "INFO", psprintf("created destination table %s", dest), NULL);
		ddl = list_concat(schema_post_copy_ddl(st, nspid),
						  schema_foreign_key_ddl(st, tables, m->name));
	}

	foreach(lc, st->columns)
	{
		SourceColumn *col = lfirst(lc);

		if (!col->excluded && !col->generated)
			copy_columns = lappend(copy_columns, col->name);
	}

	CommandCounterIncrement();
	catalog_record_copy_plan(st, m, copy_columns);
	if (created)
		record_table(m->id, mt, ddl, sequences);

	/* without a copy, the table is complete at once */
	if (created && !copy)
		schema_apply_ddl(m->id, mt->source_schema, mt->source_table, false, m->replicate_indexes);
}

/*
 * Create the slot.  A slot of that name that we asked for earlier (a crash
 * during setup) is dropped first: nothing was applied from it.  Returns the
 * consistent point; *snapshot gets the exported snapshot's name if asked.
 */
static XLogRecPtr
create_slot(PGconn *conn, Mirror *m, bool export_snapshot, char **snapshot)
{
	bool		exists = source_slot_exists(conn, m->slot_name, NULL, NULL);

	if (exists && !m->slot_requested)
	{
		bunny_mark_permanent();
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("replication slot \"%s\" already exists on the source and does not belong to this mirror",
						m->slot_name),
				 errhint("If it is a leftover, drop it on the source with SELECT pg_drop_replication_slot('%s'), then call bunny.retry_mirror().",
						 m->slot_name)));
	}
	if (exists)
		source_drop_slot(conn, m->slot_name, 5000);

	/* record the request durably before making it */
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	catalog_set_slot_requested(m->id);
	PopActiveSnapshot();
	CommitTransactionCommand();
	/* the worker commits asynchronously; this one must survive a crash */
	XLogFlush(XactLastCommitEnd);
	m->slot_requested = true;

	return stream_create_slot(conn, m->slot_name, false, export_snapshot, snapshot);
}

/*
 * How many tables prepare_destination creates in one transaction.  One
 * transaction for 10 000 tables held 170 MB of transaction memory, and
 * its locks and cache entries for every table at once; a batch of a few
 * hundred keeps the worker's peak near that of one batch, and the 40
 * commits of 10 000 tables did not make setup measurably slower.
 */
#define SETUP_TABLES_PER_TRANSACTION 250

/*
 * Create the types and tables the mapped tables need on the destination
 * (only those still PENDING when pending_only).  Runs in the caller's
 * transaction, and commits it and starts another after every
 * SETUP_TABLES_PER_TRANSACTION tables: a crash between two batches is
 * cured by running setup again, which creates only what is missing
 * (ensure_table), and a table it finds created has its catalog rows
 * from the batch that created it.  What must outlive a batch lives in
 * keep_cxt.  Returns how many tables it handled.
 */
static int
prepare_destination(PGconn *conn, Mirror *m, List *tables, bool copy, bool pending_only,
					MemoryContext keep_cxt)
{
	ListCell   *lc;
	int			n = 0;
	List	   *types_done = NIL;

	schema_forget_names();
	foreach(lc, tables)
	{
		SourceTable *st = lfirst(lc);
		ListCell   *lc2;
		BunnyErrorContext errctx;

		if (pending_only && st->mt->status != TABLE_PENDING)
			continue;
		if (n > 0 && n % SETUP_TABLES_PER_TRANSACTION == 0)
		{
			MemoryContextSwitchTo(keep_cxt);
			types_done = list_copy(types_done);
			PopActiveSnapshot();
			CommitTransactionCommand();
			bunny_start_transaction();
			PushActiveSnapshot(GetTransactionSnapshot());
		}
		bunny_errcontext_push(&errctx, NULL, qname(st->mt->dest_schema, st->mt->dest_table),
							  InvalidXLogRecPtr);
		foreach(lc2, st->columns)
		{
			SourceColumn *col = lfirst(lc2);

			if (!col->excluded)
				schema_ensure_type(conn, col->typid, m->name, &types_done);
		}
		ensure_table(st, m, tables, copy);
		n++;
		bunny_errcontext_pop(&errctx);
	}
	return n;
}

/* apply foreign keys, then sequence values, of every table bunnydb created */
static void
setup_finish_tables_without_copy(PGconn *conn, Mirror *m)
{
	if (m->replicate_foreign_keys)
		schema_apply_ddl(m->id, NULL, NULL, true, false);
	schema_take_over_sequences(conn, m->name, m->id, NULL, NULL, false);
}

/*
 * A context for what setup builds between its transactions: the source's
 * table descriptions and the statements made from them, some 11 KB a
 * table.  After a commit CurrentMemoryContext is TopMemoryContext, where
 * they would stay for the worker's life (113 MB at 10 000 tables); setup
 * switches back to this one after each commit and deletes it at the end.
 */
static MemoryContext
setup_memory_context(void)
{
	return AllocSetContextCreate(TopMemoryContext, "bunnydb setup", ALLOCSET_DEFAULT_SIZES);
}

/*
 * Run the SETUP phase on the given replication connection: destination
 * tables, publication and slot.  Returns the slot's consistent point, where
 * streaming starts.  When the mirror copies its tables first, *snapshot
 * gets the snapshot the slot exported; it lives only as long as conn stays
 * open and idle, so the caller copies with it before using conn again.
 * The copy and the switch to CDC are the worker's next steps, not ours:
 * setup does not know how its mirror goes on.
 */
XLogRecPtr
setup_run(PGconn *conn, Mirror *m, char **snapshot)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	MemoryContext setup_cxt = setup_memory_context();
	List	   *tables = NIL;
	XLogRecPtr	start_lsn;
	bool		copy = m->do_initial_snapshot;
	char	   *exported = NULL;

	*snapshot = NULL;
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	catalog_set_status_phase(m->id, MIRROR_SETUP, PHASE_SETUP);
	bunny_log(m->name, "INFO", "setup started", NULL);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(setup_cxt);

	pgstat_report_activity(STATE_RUNNING, "bunnydb: setup");
	(void) source_check(conn);
	tables = source_describe_tables(conn, m, true);

	/* destination: schemas, types, tables (and, without a copy, the rest) */
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	prepare_destination(conn, m, tables, copy, false, setup_cxt);
	if (!copy)
		setup_finish_tables_without_copy(conn, m);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(setup_cxt);

	source_ensure_publication(conn, m, tables);

	start_lsn = create_slot(conn, m, copy, &exported);
	MemoryContextSwitchTo(setup_cxt);
	bunny_log(m->name, "INFO",
			  psprintf("created replication slot %s on the source at %X/%X",
					   m->slot_name, LSN_FORMAT_ARGS(start_lsn)), NULL);

	/* only the exported snapshot's name outlives setup */
	MemoryContextSwitchTo(caller_cxt);
	if (exported)
		*snapshot = pstrdup(exported);
	schema_forget_names();
	MemoryContextDelete(setup_cxt);
	return start_lsn;
}

/*
 * The checks of setup, run by create_mirror and update_tables before they
 * commit, so that what the source cannot carry, or would make the source's
 * own statements fail, is refused at once with nothing created (the
 * caller's transaction rolls back).  conn is a plain connection to the
 * source.  The worker runs the same checks again when it sets up.
 */
void
setup_check_source(PGconn *conn, Mirror *m)
{
	(void) source_check(conn);
	(void) source_describe_tables(conn, m, false);
}

/*
 * After update_tables: create what the added tables need on the destination,
 * point the publication at the new table list, and queue the added tables
 * for a copy (resync strategy 'add': they must be empty) that runs while the
 * others stream on.
 */
void
setup_refresh_tables(PGconn *conn, Mirror *m)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	MemoryContext setup_cxt = setup_memory_context();
	List	   *tables = NIL;
	int			added = 0;

	MemoryContextSwitchTo(setup_cxt);
	pgstat_report_activity(STATE_RUNNING, "bunnydb: updating the table list");
	(void) source_check(conn);
	tables = source_describe_tables(conn, m, true);

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	added = prepare_destination(conn, m, tables, true, true, setup_cxt);
	if (added > 0)
	{
		Oid			types[1] = {INT4OID};
		Datum		vals[1] = {Int32GetDatum(m->id)};

		SPI_connect();
		SPI_execute_with_args("UPDATE bunny.mirror_table "
							  "   SET status = 'SNAPSHOT', resync_state = 'REQUESTED', "
							  "       resync_strategy = 'add', copy_done = false "
							  " WHERE mirror_id = $1 AND status = 'PENDING'",
							  1, types, vals, NULL, false, 0);
		SPI_execute_with_args("UPDATE bunny.mirror SET status = 'RESYNCING', pending_op = 'resync' "
							  " WHERE id = $1", 1, types, vals, NULL, false, 0);
		SPI_finish();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(setup_cxt);

	/* the publication changes before the copies take their snapshot */
	source_ensure_publication(conn, m, tables);

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	{
		Oid			types[1] = {INT4OID};
		Datum		vals[1] = {Int32GetDatum(m->id)};

		SPI_connect();
		SPI_execute_with_args("UPDATE bunny.mirror SET publication_dirty = false WHERE id = $1",
							  1, types, vals, NULL, false, 0);
		SPI_finish();
	}
	bunny_log(m->name, "INFO",
			  psprintf("publication %s now has %d table(s); %d to copy", m->publication_name,
					   list_length(tables), added), NULL);
	PopActiveSnapshot();
	CommitTransactionCommand();
	XLogFlush(XactLastCommitEnd);
	MemoryContextSwitchTo(caller_cxt);
	schema_forget_names();
	MemoryContextDelete(setup_cxt);
}
