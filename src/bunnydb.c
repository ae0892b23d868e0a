/*-------------------------------------------------------------------------
 *
 * bunnydb.c
 *		Module entry point: settings, shared memory, the launcher's
 *		registration, the check that we were preloaded, and the guard
 *		against dropping the extension while mirrors exist.
 *
 * bunnydb only works when loaded through shared_preload_libraries: the
 * launcher is a static background worker and the worker slots live in
 * shared memory sized at server start.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"

#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

int			bunny_max_mirror_workers = 16;
int			bunny_retry_backoff_min = 1000;
int			bunny_retry_backoff_max = 60000;
int			bunny_log_retention_days = 7;
int			bunny_launcher_naptime = 60000;
int			bunny_max_batch_latency = 50;
bool		bunny_stream_large_transactions = true;

BunnyShared *BunnyState = NULL;

static bool preloaded = false;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

/* size of BunnyShared with its slot array */
static Size
bunny_shmem_size(void)
{
	return add_size(offsetof(BunnyShared, slots),
					mul_size(bunny_max_mirror_workers, sizeof(BunnyWorkerSlot)));
}

/* ask for our shared memory and lock (PostgreSQL 15 request hook) */
static void
bunny_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(bunny_shmem_size());
	RequestNamedLWLockTranche("bunnydb", 1);
}

/* create or attach the shared state */
static void
bunny_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	BunnyState = ShmemInitStruct("bunnydb", bunny_shmem_size(), &found);
	if (!found)
	{
		int			i;

		memset(BunnyState, 0, bunny_shmem_size());
		BunnyState->lock = &(GetNamedLWLockTranche("bunnydb"))->lock;
		BunnyState->rescan_all = true;
		for (i = 0; i < bunny_max_mirror_workers; i++)
		{
			SpinLockInit(&BunnyState->slots[i].mutex);
			ConditionVariableInit(&BunnyState->slots[i].progress_cv);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* true when this library was loaded by shared_preload_libraries */
bool
bunny_loaded_at_preload(void)
{
	return preloaded;
}

/*
 * DROP EXTENSION bunnydb while mirrors exist would remove their catalog rows
 * but leave their replication slots and publications on the sources, where
 * a forgotten slot keeps WAL until the disk fills.  Refuse it, as
 * PostgreSQL refuses DROP DATABASE while subscriptions exist: drop_mirror()
 * removes both on the source (or warns when the source is unreachable).
 */
static void
bunny_check_drop_extension(DropStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->objects)
	{
		Node	   *obj = lfirst(lc);
		int64		nmirrors;
		char	   *names;
		bool		isnull;

		if (!IsA(obj, String) || strcmp(strVal(obj), "bunnydb") != 0)
			continue;
		if (!OidIsValid(get_extension_oid("bunnydb", true)))
			return;				/* IF EXISTS of a missing extension */

		/*
		 * Lock the mirror table first, for the rest of the DROP: no mirror
		 * can be created between this check and the drop, and the
		 * launcher's scan, which reads bunny.mirror before anything else
		 * of ours, waits here holding nothing rather than deadlocking with
		 * the drop's locks on the other bunny tables.
		 */
		SPI_connect();
		if (SPI_execute("LOCK TABLE bunny.mirror IN ACCESS EXCLUSIVE MODE", false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not lock bunny.mirror");
		if (SPI_execute("SELECT count(*), string_agg(name, ', ' ORDER BY name) "
						"  FROM bunny.mirror", true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read bunny.mirror");
		nmirrors = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
		names = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		if (nmirrors > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("cannot drop extension bunnydb while mirrors exist"),
					 errdetail_plural("Mirror %s has a replication slot and a publication on its source, which would be left behind and keep holding WAL there.",
									  "Mirrors %s have replication slots and publications on their sources, which would be left behind and keep holding WAL there.",
									  nmirrors, names),
					 errhint("Drop the mirrors first with bunny.drop_mirror(name); it removes the slot and the publication on the source, and only warns when the source is unreachable.")));
		SPI_finish();
		return;
	}
}

/* utility hook: only DROP EXTENSION is looked at */
static void
bunny_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					  ProcessUtilityContext context, ParamListInfo params,
					  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, DropStmt) && ((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION)
		bunny_check_drop_extension((DropStmt *) parsetree);

	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context, params,
								  queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;					/* bunny_check_preload() reports it */
	preloaded = true;

	DefineCustomIntVariable("bunny.max_mirror_workers",
							"Maximum number of mirrors that can run at the same time.",
							"Each running mirror uses one background worker; "
							"max_worker_processes must leave room for them.",
							&bunny_max_mirror_workers,
							16, 1, 1024,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("bunny.retry_backoff_min",
							"Delay before the first retry after a mirror worker error.",
							NULL,
							&bunny_retry_backoff_min,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("bunny.retry_backoff_max",
							"Upper bound of the exponential retry backoff.",
							NULL,
							&bunny_retry_backoff_max,
							60000, 10, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("bunny.log_retention_days",
							"Rows of bunny.mirror_logs older than this many days are deleted.",
							NULL,
							&bunny_log_retention_days,
							7, 1, 3650,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("bunny.launcher_naptime",
							"How often the launcher rescans databases for mirrors that should run.",
							"Control functions wake the launcher at once; this is a safety net.",
							&bunny_launcher_naptime,
							60000, 1000, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("bunny.max_batch_latency",
							"A batch ends at the next source commit once it is this old.",
							"Bounds the replication lag under a steady load, when the "
							"connection never runs dry; 0 leaves it to max_batch_size.",
							&bunny_max_batch_latency,
							50, 0, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomBoolVariable("bunny.stream_large_transactions",
							 "Apply large source transactions while they are still running.",
							 "Uses protocol version 2 streaming (sources from PostgreSQL 14 on); "
							 "the transaction's changes become visible at its commit only.",
							 &bunny_stream_large_transactions,
							 true,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	MarkGUCPrefixReserved("bunny");

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = bunny_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = bunny_shmem_startup;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = bunny_process_utility;

	bunny_register_launcher();
}
