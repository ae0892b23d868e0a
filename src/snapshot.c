/*-------------------------------------------------------------------------
 *
 * snapshot.c
 *		SNAPSHOT phase: copy the existing rows of the mapped tables as of one
 *		consistent snapshot of the source, in parallel, and resume that copy
 *		after a crash.
 *
 * The mirror worker is the coordinator.  It prepares every table that is
 * not SYNCED and its parts, and runs a pool of snapshot workers over them
 * (copypool.c) until every part is in; the worker that copies a table's
 * last part finishes the table (copypart.c).  Foreign keys follow once
 * every table is in, as DEFERRABLE INITIALLY DEFERRED.
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
#include "copypool.h"
#include "schema.h"
#include "source.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"

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

	nparts = copypool_insert_parts(m->id, "t.status <> 'SYNCED'");
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

/*
 * Copy every table that is not SYNCED with the given exported snapshot,
 * using snapshot workers, then finish tables, foreign keys and sequences.
 * sync_lsn is the snapshot's position when it is not the slot's own.
 */
void
snapshot_run(Mirror *m, PGconn *holder, const char *snapshot_name, XLogRecPtr sync_lsn)
{
	int			nparts;
	CopyPool *pool;
	Oid			types[1] = {INT4OID};
	Datum		vals[1] = {Int32GetDatum(m->id)};

	if (snapshot_name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the source exported no snapshot for the initial copy")));

	nparts = snapshot_prepare(m, sync_lsn);
	pool = copypool_start(m, holder, snapshot_name, nparts);
	bunny_log(m->name, "INFO",
			  psprintf("initial copy started: %d part(s), up to %d worker(s), %d table(s) at a time",
					   nparts, copypool_size(pool), m->snapshot_tables_in_parallel), NULL);
	pgstat_report_activity(STATE_RUNNING, "bunnydb: initial copy");

	while (copypool_tick(pool, m) > 0)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		(void) bunny_check_control();
	}
	copypool_wait(pool);

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
			copypart_finish_table(conn, m->name, m->id, schemas[i], tables[i], m->replicate_indexes);
		if (m->replicate_foreign_keys)
			schema_apply_ddl(m->id, NULL, NULL, true, false);
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
