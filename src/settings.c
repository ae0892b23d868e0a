/*-------------------------------------------------------------------------
 *
 * settings.c
 *		bunnydb's configuration parameters (bunny.*).
 *
 * The variables are written by the GUC machinery only; every other file
 * reads them, the way the server's own modules read their GUC variables.
 * They are defined here, at the bottom of the module graph, so that the
 * files that read them never call up into _PG_init's file.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"

#include "utils/guc.h"

int			bunny_max_mirror_workers = 16;
int			bunny_retry_backoff_min = 1000;
int			bunny_retry_backoff_max = 60000;
int			bunny_log_retention_days = 7;
int			bunny_launcher_naptime = 60000;
int			bunny_max_batch_latency = 50;
bool		bunny_stream_large_transactions = true;

/* set when the parameters are defined, which only a preload does */
static bool preloaded = false;

/* define the bunny.* parameters; called once, from _PG_init */
void
settings_define(void)
{
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
}

/* true when this library was loaded by shared_preload_libraries */
bool
bunny_loaded_at_preload(void)
{
	return preloaded;
}
