/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The bunnydb launcher and the per-database scan worker.
 *
 * The launcher is one static background worker, connected to no database.
 * It cannot read bunny.mirror itself, so for each database that may hold
 * mirrors it starts a short-lived "scan" worker connected to that database;
 * the scan marks the worker slots of the mirrors that should run ("wanted")
 * and exits.  The launcher then starts one dynamic worker per wanted slot
 * and watches it.  When a worker exits, its database is scanned again (the
 * catalog decides whether it should come back) and, if the run failed, the
 * restart is delayed by an exponential backoff.
 *
 * Who wakes the launcher: control functions at commit (bunny_notify), the
 * postmaster when a worker it started exits (bgw_notify_pid), and a timer
 * (bunny.launcher_naptime) as a safety net.  At start -- which includes
 * every restart after a crash, since shared memory is then rebuilt -- every
 * database is scanned.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* launcher-local state */
static BackgroundWorkerHandle **worker_handles = NULL;
static BackgroundWorkerHandle *scan_handle = NULL;
static Oid	scan_dboid = InvalidOid;
static List *scan_queue = NIL;	/* database OIDs still to scan */
static List *ext_databases = NIL;	/* databases known to have the extension */

/*
 * Since when a worker has been waiting for a background worker slot (0: it
 * is not): per mirror worker slot, and for the scan worker.  A shortage is
 * logged when it begins and when it ends, not at every retry, which would
 * write a WARNING a second for as long as the slots stay taken.
 */
static TimestampTz *mirror_waiting_since = NULL;
static TimestampTz scan_waiting_since = 0;

/*
 * Workers are not started before this: a worker that crashes the server
 * (any crash restarts the launcher with fresh shared memory, so failure
 * counts are lost) must not do so in a tight loop.
 */
static TimestampTz first_start_at = 0;

/* register the static launcher; called from _PG_init */
void
bunny_register_launcher(void)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = 5;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "bunnydb");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "bunny_launcher_main");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "bunnydb launcher");
	snprintf(bgw.bgw_type, BGW_MAXLEN, "bunnydb launcher");
	RegisterBackgroundWorker(&bgw);
}

/* delay before the next start after n consecutive failures */
static long
backoff_ms(int failures)
{
	double		delay = bunny_retry_backoff_min;

	while (failures-- > 1 && delay < bunny_retry_backoff_max)
		delay *= 2;
	return (long) Min(delay, (double) bunny_retry_backoff_max);
}

/* OIDs of all databases that accept connections (shared catalog scan) */
static List *
list_databases(void)
{
	List	   *result = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	MemoryContext resultcxt = CurrentMemoryContext;

	bunny_start_transaction();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		MemoryContext old;

		if (!db->datallowconn || db->datistemplate)
			continue;
		old = MemoryContextSwitchTo(resultcxt);
		result = lappend_oid(result, db->oid);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return result;
}

/* whole seconds since a shortage began */
static long
waited_seconds(TimestampTz since)
{
	return (long) ((GetCurrentTimestamp() - since) / USECS_PER_SEC);
}

/* start a scan worker for one database */
static bool
start_scan_worker(Oid dboid)
{
	BackgroundWorker bgw;

	bunny_dynamic_worker(&bgw, "bunny_scan_main", "scan");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "bunnydb scan of database %u", dboid);
	bgw.bgw_main_arg = ObjectIdGetDatum(dboid);

	if (!RegisterDynamicBackgroundWorker(&bgw, &scan_handle))
	{
		scan_handle = NULL;
		if (scan_waiting_since == 0)
		{
			scan_waiting_since = GetCurrentTimestamp();
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("bunnydb launcher could not start a scan worker"),
					 errdetail("All max_worker_processes (%d) background worker slots are taken. "
							   "Mirrors created, resumed or retried are not started until one is free; "
							   "this is logged once.", max_worker_processes),
					 errhint("Increase max_worker_processes.")));
		}
		return false;
	}
	if (scan_waiting_since != 0)
	{
		ereport(LOG,
				(errmsg("bunnydb launcher started a scan worker after waiting %ld s for a background worker slot",
						waited_seconds(scan_waiting_since))));
		scan_waiting_since = 0;
	}
	scan_dboid = dboid;
	return true;
}

/* start the worker of a wanted slot */
static void
start_mirror_worker(int slotno)
{
	BunnyWorkerSlot *slot = &BunnyState->slots[slotno];
	BackgroundWorker bgw;

	bunny_dynamic_worker(&bgw, "bunny_mirror_worker_main",
						 psprintf("mirror %s", slot->mirror_name));
	bgw.bgw_main_arg = Int32GetDatum(slotno);

	if (!RegisterDynamicBackgroundWorker(&bgw, &worker_handles[slotno]))
	{
		worker_handles[slotno] = NULL;
		slot->next_start = GetCurrentTimestamp() + (TimestampTz) bunny_retry_backoff_min * 1000;
		if (mirror_waiting_since[slotno] == 0)
		{
			mirror_waiting_since[slotno] = GetCurrentTimestamp();
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("bunnydb launcher could not start a worker for mirror \"%s\"",
							slot->mirror_name),
					 errdetail("All max_worker_processes (%d) background worker slots are taken. "
							   "The mirror starts as soon as one is free; this is logged once.",
							   max_worker_processes),
					 errhint("Increase max_worker_processes.")));
		}
		return;
	}
	if (mirror_waiting_since[slotno] != 0)
	{
		ereport(LOG,
				(errmsg("bunnydb mirror \"%s\" started after waiting %ld s for a background worker slot",
						slot->mirror_name, waited_seconds(mirror_waiting_since[slotno]))));
		mirror_waiting_since[slotno] = 0;
	}
	slot->registered = true;
}

/*
 * One pass over the slots: reap workers that exited, start the wanted ones
 * whose backoff has passed.  Returns the time of the next deadline.
 */
static TimestampTz
launcher_manage_slots(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = 0;
	int			i;

	LWLockAcquire(BunnyState->lock, LW_EXCLUSIVE);
	for (i = 0; i < bunny_max_mirror_workers; i++)
	{
		BunnyWorkerSlot *slot = &BunnyState->slots[i];

		if (!slot->in_use)
			continue;

		if (slot->registered)
		{
			pid_t		pid;

			if (GetBackgroundWorkerPid(worker_handles[i], &pid) != BGWH_STOPPED)
				continue;
			pfree(worker_handles[i]);
			worker_handles[i] = NULL;
			slot->registered = false;
			slot->pid = 0;
			slot->latch = NULL;
			if (slot->last_exit_failed)
			{
				slot->failures++;
				slot->next_start = now + (TimestampTz) backoff_ms(slot->failures) * 1000;
			}
			else
			{
				slot->failures = 0;
				slot->next_start = now;
			}
			slot->last_exit_failed = false;
			/*
			 * Whether it comes back is the catalog's decision; the slot (and
			 * its backoff) stays until the scan has answered.
			 */
			slot->wanted = false;
			slot->scan_pending = true;
			bunny_request_rescan(slot->dboid);
			continue;
		}

		if (!slot->wanted)
		{
			if (!slot->scan_pending && !slot->stopping)
			{
				slot->in_use = false;
				mirror_waiting_since[i] = 0;
			}
			continue;
		}
		if (slot->stopping)
			continue;
		if (Max(slot->next_start, first_start_at) > now)
		{
			TimestampTz at = Max(slot->next_start, first_start_at);

			if (next == 0 || at < next)
				next = at;
			continue;
		}
		start_mirror_worker(i);
	}
	LWLockRelease(BunnyState->lock);
	return next;
}

/* take the rescan requests out of shared memory into the local queue */
static void
launcher_collect_rescans(bool periodic)
{
	bool		all;
	int			i;

	LWLockAcquire(BunnyState->lock, LW_EXCLUSIVE);
	all = BunnyState->rescan_all;
	BunnyState->rescan_all = false;
	for (i = 0; i < BunnyState->n_rescan; i++)
		scan_queue = list_append_unique_oid(scan_queue, BunnyState->rescan_dbs[i]);
	BunnyState->n_rescan = 0;
	LWLockRelease(BunnyState->lock);

	if (all)
	{
		ListCell   *lc;
		List	   *dbs = list_databases();

		foreach(lc, dbs)
			scan_queue = list_append_unique_oid(scan_queue, lfirst_oid(lc));
	}
	else if (periodic)
		scan_queue = list_concat_unique_oid(scan_queue, ext_databases);
}

/* reap a finished scan worker and start the next one */
static void
launcher_manage_scans(void)
{
	if (scan_handle != NULL)
	{
		pid_t		pid;

		if (GetBackgroundWorkerPid(scan_handle, &pid) != BGWH_STOPPED)
			return;
		pfree(scan_handle);
		scan_handle = NULL;

		LWLockAcquire(BunnyState->lock, LW_SHARED);
		if (BunnyState->scan_found_extension)
			ext_databases = list_append_unique_oid(ext_databases, scan_dboid);
		else
			ext_databases = list_delete_oid(ext_databases, scan_dboid);
		LWLockRelease(BunnyState->lock);
	}

	while (scan_queue != NIL)
	{
		Oid			dboid = linitial_oid(scan_queue);

		scan_queue = list_delete_first(scan_queue);
		LWLockAcquire(BunnyState->lock, LW_EXCLUSIVE);
		BunnyState->scan_found_extension = false;
		LWLockRelease(BunnyState->lock);
		if (start_scan_worker(dboid))
			return;
		/* no room for a worker now: try again on the next round */
		scan_queue = lappend_oid(scan_queue, dboid);
		return;
	}
}

/* entry point of the launcher */
void
bunny_launcher_main(Datum arg)
{
	TimestampTz last_periodic;

	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	/* connect to no database: we only read the shared pg_database */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	worker_handles = MemoryContextAllocZero(TopMemoryContext,
											sizeof(BackgroundWorkerHandle *) * bunny_max_mirror_workers);
	mirror_waiting_since = MemoryContextAllocZero(TopMemoryContext,
												  sizeof(TimestampTz) * bunny_max_mirror_workers);

	LWLockAcquire(BunnyState->lock, LW_EXCLUSIVE);
	BunnyState->launcher_pid = MyProcPid;
	BunnyState->launcher_latch = MyLatch;
	BunnyState->rescan_all = true;
	/* slots left over from before a launcher restart have no handle now */
	for (int i = 0; i < bunny_max_mirror_workers; i++)
		BunnyState->slots[i].registered = false;
	LWLockRelease(BunnyState->lock);

	ereport(LOG, (errmsg("bunnydb launcher started")));
	first_start_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), bunny_retry_backoff_min);
	last_periodic = GetCurrentTimestamp();

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		TimestampTz next;
		bool		periodic = false;
		long		timeout;

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (TimestampDifferenceExceeds(last_periodic, now, bunny_launcher_naptime))
		{
			periodic = true;
			last_periodic = now;
		}
		launcher_collect_rescans(periodic);
		launcher_manage_scans();
		next = launcher_manage_slots();

		timeout = bunny_launcher_naptime;
		if (next != 0)
			timeout = Min(timeout, TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next) + 1);
		if (scan_queue != NIL && scan_handle == NULL)
			timeout = Min(timeout, 1000);	/* retry a scan that found no room */
		/* a worker that just exited asked for a rescan: no sleeping */
		LWLockAcquire(BunnyState->lock, LW_SHARED);
		if (BunnyState->n_rescan > 0 || BunnyState->rescan_all)
			timeout = 0;
		LWLockRelease(BunnyState->lock);

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Entry point of the scan worker: report which mirrors of this database
 * should run.  A database without the extension is reported as such.
 */
void
bunny_scan_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	bool		has_ext;
	int			i;
	int			nwanted = 0;
	int32	   *ids = NULL;
	char	  **names = NULL;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	bunny_start_transaction();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "bunnydb: scanning for mirrors");

	SPI_execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'bunnydb'", true, 1);
	has_ext = (SPI_processed == 1);
	if (has_ext)
	{
		/* paused mirrors get a worker too: it watches the source's position */
		SPI_execute("SELECT id, name FROM bunny.mirror "
					"WHERE status <> 'FAILED' ORDER BY id", true, 0);
		nwanted = (int) SPI_processed;
		ids = palloc(sizeof(int32) * (nwanted + 1));
		names = palloc(sizeof(char *) * (nwanted + 1));
		for (i = 0; i < nwanted; i++)
		{
			bool		isnull;

			ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
												 SPI_tuptable->tupdesc, 1, &isnull));
			names[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		}

		/* log retention is the scan's side job */
		{
			char		sql[256];

			snprintf(sql, sizeof(sql),
					 "DELETE FROM bunny.mirror_logs WHERE created_at < now() - interval '%d days'",
					 bunny_log_retention_days);
			SPI_execute(sql, false, 0);
		}
	}

	LWLockAcquire(BunnyState->lock, LW_EXCLUSIVE);
	BunnyState->scan_found_extension = has_ext;
	/* mirrors of this database that should no longer run */
	for (i = 0; i < bunny_max_mirror_workers; i++)
	{
		BunnyWorkerSlot *slot = &BunnyState->slots[i];
		bool		found = false;

		if (!slot->in_use || slot->dboid != dboid)
			continue;
		slot->scan_pending = false;
		for (int j = 0; j < nwanted; j++)
			if (ids[j] == slot->mirror_id)
				found = true;
		if (!found)
			slot->wanted = false;
	}
	for (i = 0; i < nwanted; i++)
	{
		BunnyWorkerSlot *slot = bunny_find_slot(dboid, ids[i]);

		if (slot == NULL)
		{
			for (int j = 0; j < bunny_max_mirror_workers; j++)
			{
				if (!BunnyState->slots[j].in_use)
				{
					slot = &BunnyState->slots[j];
					slot->in_use = true;
					slot->registered = false;
					slot->dboid = dboid;
					slot->mirror_id = ids[i];
					slot->pid = 0;
					slot->latch = NULL;
					slot->failures = 0;
					slot->next_start = 0;
					slot->last_exit_failed = false;
					slot->control_pending = false;
					slot->scan_pending = false;
					slot->stopping = false;
					SpinLockAcquire(&slot->mutex);
					slot->source_lsn = InvalidXLogRecPtr;
					slot->processed_lsn = InvalidXLogRecPtr;
					slot->oldest_pending_commit = 0;
					slot->last_commit_time = 0;
					slot->behind_since = 0;
					slot->error_lsn = InvalidXLogRecPtr;
					slot->text_until = InvalidXLogRecPtr;
					SpinLockRelease(&slot->mutex);
					break;
				}
			}
		}
		if (slot == NULL)
		{
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("no free bunnydb worker slot for mirror \"%s\"", names[i]),
					 errhint("Increase bunny.max_mirror_workers.")));
			continue;
		}
		strlcpy(slot->mirror_name, names[i], NAMEDATALEN);
		slot->wanted = true;
	}
	if (BunnyState->launcher_latch)
		SetLatch(BunnyState->launcher_latch);
	LWLockRelease(BunnyState->lock);

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}
