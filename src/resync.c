/*-------------------------------------------------------------------------
 *
 * resync.c
 *		Copying tables again while the mirror keeps streaming: resync_table,
 *		resync_mirror, and tables added by update_tables.
 *
 * The mirror worker drives it between batches.  For the requested tables it
 * creates a temporary slot whose exported snapshot, at position C, is the
 * copy's consistent point, prepares the target (truncate: the table is
 * emptied; swap: an empty <table>_resync is built LIKE the table, indexes
 * included; add: the table must be empty) and lets snapshot workers copy
 * into it, part by part, as for the initial copy.  The stream goes on
 * meanwhile, for every table:
 *
 *	- a change of a table being copied that committed before C is in the
 *	  copy: skipped (truncate, add) or applied to the old table, which
 *	  readers still see (swap);
 *	- a later change is queued, as the raw pgoutput message, in
 *	  bunny.resync_queue, in the same transaction as the batch, and for swap
 *	  also applied to the old table.
 *
 * When a table's copy is in, the worker replays its queue onto the copy and
 * marks it SYNCED in one transaction (the queue is read here and fed to the
 * apply's handlers through the ResyncReplayer the apply hands us); for swap it also exchanges the tables
 * (all swapped tables of the request in one transaction), moving foreign
 * keys that point at the table and the sequences its columns own.  The
 * mirror's slot is never touched.  A crash loses the temporary slot and the
 * running copies: the worker starts the copy of the unfinished tables again
 * from a new snapshot (the queue is emptied, the new copy contains it).
 *
 * bunny.cancel_operation calls a copy off in SQL, with the worker stopped;
 * what it leaves here is a STALE table (state.h) whose copy had emptied
 * it: resync_route skips its changes until a new copy starts, and that
 * copy is a truncate, since a swap would feed the table changes until the
 * exchange.
 *
 *-------------------------------------------------------------------------
 */
#include "apply_internal.h"
#include "copypool.h"
#include "schema.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

static PGconn *snapshot_conn = NULL;	/* holds the temporary slot's snapshot */
static CopyPool *pool = NULL;
static TimestampTz last_tick = 0;

#define RESYNC_TICK_MS	500

/* is any table of the mirror being resynced? */
bool
resync_active(Mirror *m)
{
	ListCell   *lc;

	foreach(lc, m->tables)
		if (((MirrorTable *) lfirst(lc))->resync_state != RESYNC_NONE)
			return true;
	return false;
}

/*
 * How a change of mt, in a source transaction whose commit record starts
 * at final_lsn, is to be applied.  sync_lsn is the consistent point of the
 * snapshot the table's copy reads: a transaction that commits before it
 * is in the copy, one whose commit record starts at it or later is not.
 * The consistent point is the end of the running_xacts record at which the
 * slot's snapshot became consistent; a transaction running then may commit
 * in the very next record, at final_lsn == sync_lsn, and the slot decodes
 * it (its commit is not before the slot's start) while the snapshot does
 * not see it.  With msg (the raw pgoutput message), a
 * change that is to be queued is queued, in the caller's transaction:
 * applied and queued changes commit together with the batch.
 */
ResyncRoute
resync_route(Mirror *m, MirrorTable *mt, XLogRecPtr final_lsn, const char *msg, int len)
{
	ResyncRoute route;

	if (mt->resync_state == RESYNC_COPYING)
	{
		bool		swap = mt->resync_strategy == STRATEGY_SWAP;

		/* swap: the old table stays live until the exchange, so it gets all */
		if (final_lsn < mt->sync_lsn)
			return swap ? RESYNC_APPLY : RESYNC_SKIP;
		route = swap ? RESYNC_APPLY_QUEUED : RESYNC_QUEUED;
	}
	else if (mt->resync_state == RESYNC_NONE && mt->sync_lsn != InvalidXLogRecPtr &&
			 final_lsn < mt->sync_lsn)
		return RESYNC_SKIP;		/* a finished copy (initial or resync) has it */
	else if (mt->sync_lsn == TABLE_STALE_LSN)
		return RESYNC_SKIP;		/* STALE, its new copy not started (state.h) */
	else
		return RESYNC_APPLY;

	if (msg != NULL)
	{
		Oid			types[4] = {INT4OID, TEXTOID, TEXTOID, BYTEAOID};
		Datum		vals[4];
		bytea	   *raw = palloc(VARHDRSZ + len);
		int			rc;

		SET_VARSIZE(raw, VARHDRSZ + len);
		memcpy(VARDATA(raw), msg, len);
		vals[0] = Int32GetDatum(m->id);
		vals[1] = CStringGetTextDatum(mt->source_schema);
		vals[2] = CStringGetTextDatum(mt->source_table);
		vals[3] = PointerGetDatum(raw);
		SPI_connect();
		rc = SPI_execute_with_args("INSERT INTO bunny.resync_queue (mirror_id, source_schema, source_table, message) "
								   "VALUES ($1, $2, $3, $4)", 4, types, vals, NULL, false, 0);
		SPI_finish();
		if (rc < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not queue a change of %s",
							quote_qualified_identifier(mt->dest_schema, mt->dest_table))));
	}
	return route;
}

/*
 * Keep the table's latest Relation message in bunny.mirror_table: a queue
 * replayed after a restart needs it before the stream sends it again.
 * Runs in the caller's transaction.
 */
void
resync_store_relation_message(Mirror *m, MirrorTable *mt)
{
	RelMapEntry *e = relmap_find_table(mt);
	Oid			types[4] = {INT4OID, TEXTOID, TEXTOID, BYTEAOID};
	Datum		vals[4];
	bytea	   *msg;

	if (e == NULL || e->raw_relmsg == NULL)
		return;
	msg = palloc(VARHDRSZ + e->raw_relmsg_len);
	SET_VARSIZE(msg, VARHDRSZ + e->raw_relmsg_len);
	memcpy(VARDATA(msg), e->raw_relmsg, e->raw_relmsg_len);
	vals[0] = Int32GetDatum(m->id);
	vals[1] = CStringGetTextDatum(mt->source_schema);
	vals[2] = CStringGetTextDatum(mt->source_table);
	vals[3] = PointerGetDatum(msg);
	SPI_connect();
	SPI_execute_with_args("UPDATE bunny.mirror_table SET resync_relation_msg = $4 "
						  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
						  4, types, vals, NULL, false, 0);
	SPI_finish();
}

/*
 * Apply a table's resync queue, in order, to target_table (the copy of a
 * swap) or to the table itself, through the apply's handlers.  Runs in the
 * caller's transaction; reads the queue through a cursor so that a long
 * queue does not sit in memory.
 */
static void
resync_replay_queue(Mirror *m, MirrorTable *mt, const char *target_table,
					const ResyncReplayer *replayer)
{
	Oid			types[3] = {INT4OID, TEXTOID, TEXTOID};
	Datum		vals[3];
	Portal		portal;
	SPIPlanPtr	plan;
	MemoryContext replaycxt = AllocSetContextCreate(CurrentMemoryContext, "bunnydb replay",
													ALLOCSET_DEFAULT_SIZES);

	vals[0] = Int32GetDatum(m->id);
	vals[1] = CStringGetTextDatum(mt->source_schema);
	vals[2] = CStringGetTextDatum(mt->source_table);

	replayer->begin(mt);
	PG_TRY();
	{
		SPI_connect();
		/* the description first, in case the stream has not sent it yet */
		SPI_execute_with_args("SELECT resync_relation_msg FROM bunny.mirror_table "
							  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3 "
							  "   AND resync_relation_msg IS NOT NULL",
							  3, types, vals, NULL, true, 1);
		if (SPI_processed == 1)
		{
			bool		isnull;
			bytea	   *msg = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0],
															SPI_tuptable->tupdesc, 1, &isnull));
			MemoryContext old = MemoryContextSwitchTo(replaycxt);

			replayer->message(VARDATA_ANY(msg), VARSIZE_ANY_EXHDR(msg));
			MemoryContextSwitchTo(old);
		}
		/* after the Relation message, which (re)creates the entry */
		relmap_retarget(mt, target_table);

		plan = SPI_prepare("SELECT message FROM bunny.resync_queue "
						   " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3 "
						   " ORDER BY seq", 3, types);
		portal = SPI_cursor_open(NULL, plan, vals, NULL, true);
		for (;;)
		{
			SPI_cursor_fetch(portal, true, 1000);
			if (SPI_processed == 0)
				break;
			for (uint64 i = 0; i < SPI_processed; i++)
			{
				bool		isnull;
				bytea	   *msg = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[i],
																SPI_tuptable->tupdesc, 1, &isnull));
				MemoryContext old = MemoryContextSwitchTo(replaycxt);

				replayer->message(VARDATA_ANY(msg), VARSIZE_ANY_EXHDR(msg));
				MemoryContextSwitchTo(old);
				MemoryContextReset(replaycxt);
			}
			SPI_freetuptable(SPI_tuptable);
			CHECK_FOR_INTERRUPTS();
		}
		SPI_cursor_close(portal);
		replayer->finish();		/* the last rows go to the replay target too */
		SPI_finish();
	}
	PG_FINALLY();
	{
		replayer->end();
		relmap_retarget(mt, NULL);	/* back to the table itself */
	}
	PG_END_TRY();
	MemoryContextDelete(replaycxt);
}

/* the worker ends: the snapshot workers follow on their own */
void
resync_stop(void)
{
	stream_disconnect(&snapshot_conn);
	pool = NULL;
}

/*
 * Lock the mirror row before any bunny.mirror_table row: control functions
 * take them in that order, and so must we, or we deadlock with them.
 */
static void
resync_lock_mirror_row(Mirror *m)
{
	bunny_dest_exec(psprintf("SELECT 1 FROM bunny.mirror WHERE id = %d FOR NO KEY UPDATE", m->id));
}

/*
 * The name of a swap target: <table>_resync.  The table's name is cut (at a
 * character boundary) so that <table>_resync_old, the live table's name
 * during the exchange, fits in NAMEDATALEN too: else both would be cut to
 * the same 63 bytes.
 */
static char *
swap_target_name(const char *table)
{
	char		buf[NAMEDATALEN];
	int			keep = pg_mbcliplen(table, strlen(table), NAMEDATALEN - 1 - strlen("_resync_old"));

	snprintf(buf, sizeof(buf), "%.*s_resync", keep, table);
	return pstrdup(buf);
}

/*
 * Plan the copy of the tables a resync is about to copy (again), from the
 * source as it is now rather than as setup saw it: a partition attached
 * since is part of the copy and a detached one is not, the parts follow
 * the table's present size, and a column dropped on the source is not
 * asked for.  Columns the source has gained and the destination lacks are
 * added first (schema_plan_resync), so the copy carries their values.  The
 * checks of source_describe_table run again too.  Runs outside any
 * transaction, before the resync's snapshot is taken; conn is a plain
 * connection to the source.
 */
static void
resync_plan(PGconn *conn, Mirror *m)
{
	MemoryContext caller_cxt = CurrentMemoryContext;

	/* the descriptions, some 11 KB a table, die with this context */
	MemoryContext plan_cxt = AllocSetContextCreate(TopMemoryContext, "bunnydb resync plan",
												   ALLOCSET_DEFAULT_SIZES);
	List	   *tables = NIL;
	ListCell   *lc;

	MemoryContextSwitchTo(plan_cxt);
	(void) source_check(conn);

	/*
	 * Labels the source added to an enum since the types were made would
	 * fail the copy (the stream takes them over on the first failure, a
	 * COPY part only fails three times).
	 */
	schema_sync_enum_labels(m);
	MemoryContextSwitchTo(plan_cxt);

	foreach(lc, m->tables)
	{
		MirrorTable *mt = lfirst(lc);
		BunnyErrorContext errctx;

		if (mt->resync_state == RESYNC_NONE)
			continue;
		bunny_errcontext_push(&errctx, NULL,
							  quote_qualified_identifier(mt->source_schema, mt->source_table),
							  InvalidXLogRecPtr);
		tables = lappend(tables, source_describe_table(conn, mt, true));
		bunny_errcontext_pop(&errctx);
	}

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	foreach(lc, tables)
	{
		SourceTable *st = lfirst(lc);
		BunnyErrorContext errctx;

		bunny_errcontext_push(&errctx, NULL,
							  quote_qualified_identifier(st->mt->dest_schema, st->mt->dest_table),
							  InvalidXLogRecPtr);
		catalog_record_copy_plan(st, m, schema_plan_resync(conn, st, m->name));
		bunny_errcontext_pop(&errctx);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_cxt);
	MemoryContextDelete(plan_cxt);
}

/*
 * Start the copy of every REQUESTED table from one new snapshot.
 */
static void
resync_start(Mirror *m)
{
	XLogRecPtr	lsn;
	char	   *snapshot;
	ListCell   *lc;
	int			nparts;
	StringInfoData names;

	/* plan from the source as it is now, not as setup saw it */
	{
		PGconn	   *plan_conn = mirror_connect(m, false);

		resync_plan(plan_conn, m);
		stream_disconnect(&plan_conn);
	}
	snapshot_conn = mirror_connect(m, true);
	lsn = stream_create_slot(snapshot_conn, psprintf("bunny_tmp_%d_%d", m->id, MyProcPid),
							 true, true, &snapshot);

	initStringInfo(&names);
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	resync_lock_mirror_row(m);
	foreach(lc, m->tables)
	{
		MirrorTable *mt = lfirst(lc);
		char	   *dest = (char *) quote_qualified_identifier(mt->dest_schema, mt->dest_table);
		char	   *target = NULL;
		BunnyErrorContext errctx;
		Oid			types[6] = {INT4OID, TEXTOID, TEXTOID, TEXTOID, LSNOID, TEXTOID};
		Datum		vals[6];
		char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

		if (mt->resync_state == RESYNC_NONE)
			continue;
		bunny_errcontext_push(&errctx, NULL, dest, InvalidXLogRecPtr);
		if (mt->sync_lsn == TABLE_STALE_LSN && mt->resync_strategy == STRATEGY_SWAP)
		{
			/*
			 * A swap would apply changes to the live table, which lacks rows
			 * since a cancelled copy (state.h): copy into the table itself.
			 */
			mt->resync_strategy = STRATEGY_TRUNCATE;
			bunny_dest_exec(psprintf("UPDATE bunny.mirror_table SET resync_strategy = 'truncate' "
									 " WHERE mirror_id = %d AND source_schema = %s AND source_table = %s",
									 m->id, quote_literal_cstr(mt->source_schema),
									 quote_literal_cstr(mt->source_table)));
			bunny_log(m->name, "INFO",
					  psprintf("table %s is stale: copied with truncate instead of swap", dest), NULL);
		}
		if (mt->resync_strategy == STRATEGY_ADD && mt->resync_state == RESYNC_COPYING)
		{
			/* our own partial copy from a run that crashed */
			bunny_dest_exec(psprintf("TRUNCATE %s", dest));
		}
		else if (mt->resync_strategy == STRATEGY_ADD)
		{
			char	   *rows = bunny_spi_scalar(psprintf("SELECT count(*)::text FROM (SELECT 1 FROM %s LIMIT 1) s",
														 dest), 0, NULL, NULL, NULL);

			if (rows && strcmp(rows, "0") != 0)
			{
				bunny_mark_permanent();
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("destination table %s is not empty", dest),
						 errdetail("A table added to a mirror is copied, and the copy never overwrites existing rows."),
						 errhint("Empty the table, then call bunny.retry_mirror().")));
			}
		}
		else if (mt->resync_strategy == STRATEGY_SWAP)
		{
			target = swap_target_name(mt->dest_table);
			bunny_dest_exec(psprintf("DROP TABLE IF EXISTS %s",
								quote_qualified_identifier(mt->dest_schema, target)));
			bunny_dest_exec(psprintf("CREATE TABLE %s (LIKE %s INCLUDING ALL)",
								quote_qualified_identifier(mt->dest_schema, target), dest));
		}
		else
		{
			/* truncate; DELETE where foreign keys point at the table */
			char	   *refs = bunny_spi_scalar(psprintf("SELECT count(*)::text FROM pg_catalog.pg_constraint "
														 " WHERE contype = 'f' AND confrelid = %s::regclass",
														 quote_literal_cstr(dest)), 0, NULL, NULL, NULL);

			if (refs && strcmp(refs, "0") != 0)
				bunny_dest_exec(psprintf("DELETE FROM %s", dest));
			else
				bunny_dest_exec(psprintf("TRUNCATE %s", dest));
		}

		vals[0] = Int32GetDatum(m->id);
		vals[1] = CStringGetTextDatum(mt->source_schema);
		vals[2] = CStringGetTextDatum(mt->source_table);
		vals[3] = CStringGetTextDatum(target ? target : "");
		if (target == NULL)
			nulls[3] = 'n';
		vals[4] = LSNGetDatum(lsn);
		vals[5] = CStringGetTextDatum("");
		SPI_connect();
		SPI_execute_with_args("UPDATE bunny.mirror_table "
							  "   SET resync_state = 'COPYING', copy_target_table = $4, sync_lsn = $5, "
							  "       copy_done = false, rows_snapshotted = 0, snapshot_started_at = NULL "
							  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
							  5, types, vals, nulls, false, 0);
		SPI_execute_with_args("DELETE FROM bunny.resync_queue "
							  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
							  3, types, vals, NULL, false, 0);
		SPI_finish();

		mt->resync_state = RESYNC_COPYING;
		mt->copy_target = target ? MemoryContextStrdup(GetMemoryChunkContext(mt), target) : NULL;
		mt->sync_lsn = lsn;
		resync_store_relation_message(m, mt);
		appendStringInfo(&names, "%s%s", names.len ? ", " : "",
						 quote_qualified_identifier(mt->source_schema, mt->source_table));
		bunny_errcontext_pop(&errctx);
	}
	nparts = copypool_insert_parts(m->id, "t.resync_state = 'COPYING'");
	bunny_log(m->name, "INFO",
			  psprintf("copying %s from a new snapshot at %X/%X (%d part(s)); the stream goes on",
					   names.data, LSN_FORMAT_ARGS(lsn), nparts), NULL);
	PopActiveSnapshot();
	CommitTransactionCommand();
	XLogFlush(XactLastCommitEnd);

	pool = copypool_start(m, snapshot_conn, snapshot, nparts);
	pgstat_report_activity(STATE_RUNNING, "bunnydb: streaming changes, copying tables again");
}

/*
 * An index of a destination table by what it is apart from its name and
 * its table: what pg_get_indexdef prints after "ON <table> USING " (the
 * method, columns, INCLUDE, WITH, WHERE).  Two indexes of the same shape
 * are interchangeable.
 */
typedef struct IndexShape
{
	char	   *relname;
	char	   *shape;			/* NULL once its name has been handed on */
} IndexShape;

/*
 * The indexes of table (quoted, qualified, as pg_get_indexdef prints it),
 * in the current transaction's memory.
 */
static List *
index_shapes(const char *table)
{
	Oid			types[1] = {TEXTOID};
	Datum		vals[1] = {CStringGetTextDatum(table)};
	List	   *indexes = NIL;

	SPI_connect();
	SPI_execute_with_args("SELECT c.relname::text, "
						  "       substr(d.def, strpos(d.def, d.at) + length(d.at)) "
						  "  FROM pg_catalog.pg_index i "
						  "  JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid, "
						  "       LATERAL (SELECT pg_catalog.pg_get_indexdef(i.indexrelid) AS def, "
						  "                       ' ON ' || $1 || ' USING ' AS at) d "
						  " WHERE i.indrelid = $1::regclass ORDER BY 1",
						  1, types, vals, NULL, true, 0);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		/* not SPI's context, which SPI_finish deletes: the list too */
		MemoryContext spi_cxt = MemoryContextSwitchTo(TopTransactionContext);
		IndexShape *ix = palloc(sizeof(IndexShape));

		ix->relname = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		ix->shape = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		indexes = lappend(indexes, ix);
		MemoryContextSwitchTo(spi_cxt);
	}
	SPI_finish();
	return indexes;
}

/*
 * Exchange a swapped table with its copy, in the caller's transaction:
 * foreign keys that point at the table, its own foreign keys, and the
 * sequences its columns own move over (identity sequences: their position
 * and name); the old table is dropped, the copy's indexes take the names
 * of the old table's and its sequences lose their _resync.
 */
static void
resync_swap(MirrorTable *mt)
{
	const char *dest = quote_qualified_identifier(mt->dest_schema, mt->dest_table);
	const char *copy = quote_qualified_identifier(mt->dest_schema, mt->copy_target);
	const char *old_name = psprintf("%s_old", mt->copy_target);
	char	   *sql;
	uint64		n;
	List	   *readd = NIL;
	List	   *setval_sql = NIL;
	List	   *renames = NIL;
	List	   *old_indexes;
	ListCell   *lc;

	/* foreign keys from other tables to it, and its own: dropped, re-added */
	SPI_connect();
	SPI_execute(psprintf("SELECT format('ALTER TABLE %%s DROP CONSTRAINT %%I', c.conrelid::regclass, c.conname), "
						 "       format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s', "
						 "              CASE WHEN c.conrelid = %s::regclass THEN %s ELSE c.conrelid::regclass::text END, "
						 "              c.conname, pg_get_constraintdef(c.oid)) "
						 "  FROM pg_catalog.pg_constraint c "
						 " WHERE c.contype = 'f' "
						 "   AND (c.confrelid = %s::regclass OR c.conrelid = %s::regclass)",
						 quote_literal_cstr(dest), quote_literal_cstr(dest),
						 quote_literal_cstr(dest), quote_literal_cstr(dest)), false, 0);
	n = SPI_processed;
	{
		char	  **drops = palloc(sizeof(char *) * (n + 1));

		for (uint64 i = 0; i < n; i++)
		{
			MemoryContext old = MemoryContextSwitchTo(CurTransactionContext);

			drops[i] = pstrdup(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
			readd = lappend(readd, pstrdup(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2)));
			MemoryContextSwitchTo(old);
		}
		for (uint64 i = 0; i < n; i++)
			if (SPI_execute(drops[i], false, 0) < 0)
				ereport(ERROR,
						(errcode(ERRCODE_INTERNAL_ERROR),
						 errmsg("could not run \"%s\"", drops[i])));
	}
	SPI_finish();

	/* sequences owned by the old table's columns belong to the copy now */
	sql = psprintf("DO $bunny$ DECLARE r record; BEGIN "
				   "FOR r IN SELECT d.objid::regclass AS seq, a.attname "
				   "           FROM pg_catalog.pg_depend d "
				   "           JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
				   "           JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
				   "          WHERE d.refobjid = %s::regclass AND d.classid = 'pg_class'::regclass "
				   "            AND d.deptype = 'a' AND a.attidentity = '' LOOP "
				   "  EXECUTE format('ALTER SEQUENCE %%s OWNED BY %%s.%%I', r.seq, %s, r.attname); "
				   "END LOOP; END $bunny$",
				   quote_literal_cstr(dest), quote_literal_cstr(copy));
	bunny_dest_exec(sql);

	/*
	 * Identity sequences cannot change hands: LIKE ... INCLUDING IDENTITY
	 * gave the copy's identity columns sequences of their own
	 * (<table>_resync_<column>_seq), and the old ones are dropped with the
	 * old table.  The copy's sequences take over the old ones' position now
	 * and their names once the old table is gone, so the column numbers on
	 * from where it was and bunny.mirror_table_sequence still names its
	 * sequence.  Both are looked up in the catalog, not by their usual
	 * names.
	 */
	SPI_connect();
	SPI_execute(psprintf("SELECT pg_catalog.pg_get_serial_sequence(%s, a.attname), s.relname, "
						 "       pg_catalog.pg_sequence_last_value(s.oid) "
						 "  FROM pg_catalog.pg_attribute a "
						 "  JOIN pg_catalog.pg_class s "
						 "    ON s.oid = pg_catalog.pg_get_serial_sequence(%s, a.attname)::regclass "
						 " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
						 "   AND a.attidentity <> ''",
						 quote_literal_cstr(copy), quote_literal_cstr(dest),
						 quote_literal_cstr(dest)), false, 0);
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(CurTransactionContext);
		char	   *new_seq = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char	   *old_seq_name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		char	   *last = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3);

		if (new_seq == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("identity column of %s has no sequence", copy)));
		/* NULL: the old sequence never handed out a value, nor has the new */
		if (last != NULL)
			setval_sql = lappend(setval_sql,
								 psprintf("SELECT pg_catalog.setval(%s, %s, true)",
										  quote_literal_cstr(new_seq), last));
		renames = lappend(renames,
						  psprintf("ALTER SEQUENCE %s RENAME TO %s", new_seq,
								   quote_identifier(old_seq_name)));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	foreach(lc, setval_sql)
		bunny_dest_exec((char *) lfirst(lc));

	old_indexes = index_shapes(dest);
	bunny_dest_exec(psprintf("ALTER TABLE %s RENAME TO %s", dest, quote_identifier(old_name)));
	bunny_dest_exec(psprintf("ALTER TABLE %s RENAME TO %s", copy, quote_identifier(mt->dest_table)));
	bunny_dest_exec(psprintf("DROP TABLE %s", quote_qualified_identifier(mt->dest_schema, old_name)));
	foreach(lc, renames)
		bunny_dest_exec((char *) lfirst(lc));

	/*
	 * Index names.  LIKE named the copy's indexes after the copy
	 * (<table>_resync_pkey, <table>_resync_v_idx), not as the old table's
	 * were, which a user or setup (with the source's names) may have
	 * chosen.  An index of the same shape as one of the old table's takes
	 * that one's name, free since the old table is gone.  Any other loses
	 * its _resync the way PostgreSQL makes index names (makeObjectName
	 * clips the table's part of a long name, not the suffix), numbered like
	 * ChooseRelationName when the name is taken; after the others, so as
	 * not to take a name one of them gets back.
	 */
	{
		Oid			nspid = get_namespace_oid(mt->dest_schema, false);
		List	   *copy_indexes = index_shapes(dest);
		List	   *unmatched = NIL;
		size_t		prefix = strlen(mt->copy_target) + 1;

		foreach(lc, copy_indexes)
		{
			IndexShape *ix = lfirst(lc);
			IndexShape *was = NULL;
			ListCell   *lc2;

			foreach(lc2, old_indexes)
			{
				IndexShape *o = lfirst(lc2);

				if (o->shape != NULL && strcmp(o->shape, ix->shape) == 0)
				{
					was = o;
					break;
				}
			}
			if (was == NULL)
			{
				unmatched = lappend(unmatched, ix);
				continue;
			}
			was->shape = NULL;
			bunny_dest_exec(psprintf("ALTER INDEX %s RENAME TO %s",
									 quote_qualified_identifier(mt->dest_schema, ix->relname),
									 quote_identifier(was->relname)));
		}
		foreach(lc, unmatched)
		{
			IndexShape *ix = lfirst(lc);
			const char *label = ix->relname + prefix;
			char	   *newname;

			if (strncmp(ix->relname, mt->copy_target, prefix - 1) != 0 ||
				ix->relname[prefix - 1] != '_' || ix->relname[prefix] == '\0')
				continue;
			newname = makeObjectName(mt->dest_table, NULL, label);
			if (OidIsValid(get_relname_relid(newname, nspid)))
				newname = ChooseRelationName(mt->dest_table, NULL, label, nspid, false);
			bunny_dest_exec(psprintf("ALTER INDEX %s RENAME TO %s",
									 quote_qualified_identifier(mt->dest_schema, ix->relname),
									 quote_identifier(newname)));
		}
	}

	foreach(lc, readd)
		bunny_dest_exec((char *) lfirst(lc));
}

/*
 * Switch the tables whose copy is in: replay their queues, swap where asked
 * (all swapped tables together), mark them SYNCED.  One transaction.
 */
static void
resync_switch_ready(Mirror *m, const ResyncReplayer *replayer)
{
	Oid			types[1] = {INT4OID};
	Datum		vals[1] = {Int32GetDatum(m->id)};
	char	   *done_list;
	bool		swap_waiting = false;
	List	   *ready = NIL;
	ListCell   *lc;
	char	   *left;

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	resync_lock_mirror_row(m);
	done_list = bunny_spi_scalar("SELECT coalesce(string_agg(format('%I.%I', source_schema, source_table), ' '), '') "
								 "  FROM bunny.mirror_table "
								 " WHERE mirror_id = $1 AND resync_state = 'COPYING' AND copy_done",
								 1, types, vals, NULL);
	foreach(lc, m->tables)
	{
		MirrorTable *mt = lfirst(lc);
		char	   *key = psprintf(" %s ", quote_qualified_identifier(mt->source_schema, mt->source_table));
		bool		done;

		if (mt->resync_state != RESYNC_COPYING)
			continue;
		done = strstr(psprintf(" %s ", done_list ? done_list : ""), key) != NULL;
		if (mt->resync_strategy == STRATEGY_SWAP && !done)
			swap_waiting = true;
		if (done)
			ready = lappend(ready, mt);
	}

	foreach(lc, ready)
	{
		MirrorTable *mt = lfirst(lc);
		bool		swap = mt->resync_strategy == STRATEGY_SWAP;
		Oid			t3[3] = {INT4OID, TEXTOID, TEXTOID};
		Datum		v3[3];
		char	   *queued;
		char	   *rows;
		BunnyErrorContext errctx;

		if (swap && swap_waiting)
			continue;			/* all swaps go together */
		v3[0] = Int32GetDatum(m->id);
		v3[1] = CStringGetTextDatum(mt->source_schema);
		v3[2] = CStringGetTextDatum(mt->source_table);
		bunny_errcontext_push(&errctx, NULL,
							  quote_qualified_identifier(mt->dest_schema, mt->dest_table),
							  InvalidXLogRecPtr);
		queued = bunny_spi_scalar("SELECT count(*)::text FROM bunny.resync_queue "
								  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
								  3, t3, v3, NULL);
		rows = bunny_spi_scalar("SELECT rows_snapshotted::text FROM bunny.mirror_table "
								" WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
								3, t3, v3, NULL);
		/* the replay's errors name the table each change is written to */
		bunny_errcontext_pop(&errctx);
		resync_replay_queue(m, mt, swap ? mt->copy_target : NULL, replayer);
		bunny_errcontext_push(&errctx, NULL,
							  quote_qualified_identifier(mt->dest_schema, mt->dest_table),
							  InvalidXLogRecPtr);
		if (swap)
			resync_swap(mt);
		/*
		 * The copy is as new as the snapshot: take the sequences over again.
		 * A column's own sequence (serial, identity) is the one the catalog
		 * names now, whatever was recorded when the table was created.
		 */
		if (mt->created_by_bunny)
		{
			/*
			 * Not on snapshot_conn: a query there ends the snapshot it
			 * exported, and a snapshot worker started later for another
			 * table of this resync could not import it any more.
			 */
			PGconn	   *seq_conn = mirror_connect(m, false);

			schema_take_over_sequences(seq_conn, m->name, m->id, mt->source_schema,
									   mt->source_table, true);
			stream_disconnect(&seq_conn);
		}
		if (mt->resync_strategy == STRATEGY_ADD && m->replicate_foreign_keys && mt->created_by_bunny)
			schema_apply_ddl(m->id, mt->source_schema, mt->source_table, true, false);
		SPI_connect();
		SPI_execute_with_args("DELETE FROM bunny.resync_queue "
							  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
							  3, t3, v3, NULL, false, 0);
		SPI_execute_with_args("UPDATE bunny.mirror_table "
							  "   SET status = 'SYNCED', resync_state = NULL, resync_strategy = NULL, "
							  "       copy_target_table = NULL, resync_relation_msg = NULL, "
							  "       last_synced_at = now(), error_message = NULL "
							  " WHERE mirror_id = $1 AND source_schema = $2 AND source_table = $3",
							  3, t3, v3, NULL, false, 0);
		SPI_finish();
		bunny_log(m->name, "INFO",
				  psprintf("%s table %s: %s rows copied, %s queued change(s) applied",
						   mt->resync_strategy == STRATEGY_ADD ? "added" : "resynced",
						   quote_qualified_identifier(mt->source_schema, mt->source_table),
						   rows ? rows : "0", queued ? queued : "0"),
				  NULL);
		mt->resync_state = RESYNC_NONE;
		mt->resync_strategy = STRATEGY_NONE;
		mt->copy_target = NULL;
		bunny_errcontext_pop(&errctx);
	}

	left = bunny_spi_scalar("SELECT count(*)::text FROM bunny.mirror_table "
							" WHERE mirror_id = $1 AND resync_state IS NOT NULL",
							1, types, vals, NULL);
	if (left && strcmp(left, "0") == 0)
	{
		bunny_dest_exec(psprintf("UPDATE bunny.mirror SET status = CASE WHEN status = 'RESYNCING' THEN 'RUNNING' ELSE status END, "
							"       pending_op = NULL, updated_at = now() WHERE id = %d", m->id));
		bunny_log(m->name, "INFO", "resync finished", NULL);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * Between batches: start requested copies, keep the snapshot workers going,
 * switch the tables whose copy is in (replaying their queues through
 * replayer).  Cheap when nothing is going on.
 */
void
resync_tick(Mirror *m, const ResyncReplayer *replayer)
{
	bool		requested = false;
	bool		copying = false;
	ListCell   *lc;

	foreach(lc, m->tables)
	{
		MirrorTable *mt = lfirst(lc);

		if (mt->resync_state == RESYNC_NONE)
			continue;
		if (mt->resync_state == RESYNC_REQUESTED)
			requested = true;
		else
			copying = true;
	}
	if (!requested && !copying)
		return;

	/*
	 * Without a running pool, start everything asked for -- including the
	 * copies of a run that crashed, whose snapshot is gone.  With one, new
	 * requests wait for it to finish.
	 */
	if (pool == NULL)
	{
		resync_start(m);
		return;
	}
	if (!TimestampDifferenceExceeds(last_tick, GetCurrentTimestamp(), RESYNC_TICK_MS))
		return;
	last_tick = GetCurrentTimestamp();

	(void) copypool_tick(pool, m);
	resync_switch_ready(m, replayer);

	copying = false;
	foreach(lc, m->tables)
	{
		MirrorTable *mt = lfirst(lc);

		if (mt->resync_state == RESYNC_COPYING)
			copying = true;
	}
	if (!copying)
	{
		copypool_wait(pool);
		pool = NULL;
		stream_disconnect(&snapshot_conn);
		pgstat_report_activity(STATE_RUNNING, "bunnydb: streaming changes");
	}
}
