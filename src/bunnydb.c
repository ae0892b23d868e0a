/*-------------------------------------------------------------------------
 *
 * bunnydb.c
 *		Module entry point: settings, shared memory, the launcher's
 *		registration and the check that we were preloaded.  The guards
 *		against dropping what mirrors need are in guard.c.
 *
 * bunnydb only works when loaded through shared_preload_libraries: the
 * launcher is a static background worker and the worker slots live in
 * shared memory sized at server start.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
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
	bunny_install_guards();

	bunny_register_launcher();
}
