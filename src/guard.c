/*-------------------------------------------------------------------------
 *
 * guard.c
 *		Refuse the DDL that would orphan the mirrors' objects on their
 *		sources: DROP EXTENSION bunnydb (also through DROP OWNED BY its
 *		owner) and DROP DATABASE of a database that still has mirrors.
 *
 * A mirror owns a replication slot and a publication on its source.  Only
 * bunny.drop_mirror() removes them (or warns when the source cannot be
 * reached).  Dropping the extension or the destination database instead
 * would delete the mirror's catalog rows and leave the slot behind, where
 * it keeps WAL on the source until its disk fills.  PostgreSQL refuses
 * DROP DATABASE while subscriptions exist for the same reason.
 *
 * The checks run in a ProcessUtility hook, which every backend has since
 * the library is preloaded.  DROP EXTENSION and DROP OWNED run in the
 * database concerned and simply read bunny.mirror.  DROP DATABASE runs in
 * another database, from where bunny.mirror of the target cannot be read,
 * so a short-lived background worker connects to the target, counts its
 * mirrors and reports through a dynamic shared memory segment.  Reading
 * the catalog itself also catches FAILED mirrors, which have no worker,
 * and works with DROP DATABASE ... WITH (FORCE), which would terminate a
 * running one.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"

/* how long the check worker waits for a lock on the mirror catalog */
#define DROPDB_CHECK_LOCK_TIMEOUT "5s"

/* what the check worker found in the database to be dropped */
typedef struct DropDatabaseCheck
{
	bool		done;			/* the worker read the catalog */
	int64		nmirrors;
	char		names[1024];	/* the mirrors' names, cut short if long */
} DropDatabaseCheck;

static ProcessUtility_hook_type prev_process_utility_hook = NULL;

/* count the mirrors of the current database: their number and names */
static int64
count_mirrors(char **names)
{
	bool		isnull;
	int64		n;

	if (SPI_execute("SELECT count(*), string_agg(name, ', ' ORDER BY name) "
					"  FROM bunny.mirror", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read bunny.mirror");
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*names = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	return n;
}

/*
 * The extension is about to be dropped (by DROP EXTENSION, or by DROP OWNED
 * BY its owner): refuse while mirrors exist.
 */
static void
refuse_extension_drop_with_mirrors(void)
{
	int64		nmirrors;
	char	   *names;

	/*
	 * Lock the mirror table first, for the rest of the statement: no mirror
	 * can be created between this check and the drop, and the launcher's
	 * scan, which reads bunny.mirror before anything else of ours, waits
	 * here holding nothing rather than deadlocking with the drop's locks on
	 * the other bunny tables.
	 */
	SPI_connect();
	if (SPI_execute("LOCK TABLE bunny.mirror IN ACCESS EXCLUSIVE MODE", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not lock bunny.mirror");
	nmirrors = count_mirrors(&names);
	if (nmirrors > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("cannot drop extension bunnydb while mirrors exist"),
				 errdetail_plural("Mirror %s has a replication slot and a publication on its source, which would be left behind and keep holding WAL there.",
								  "Mirrors %s have replication slots and publications on their sources, which would be left behind and keep holding WAL there.",
								  nmirrors, names),
				 errhint("Drop the mirrors first with bunny.drop_mirror(name); it removes the slot and the publication on the source, and only warns when the source is unreachable.")));
	SPI_finish();
}

/* DROP EXTENSION naming bunnydb */
static void
guard_drop_extension(DropStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->objects)
	{
		Node	   *obj = lfirst(lc);

		if (!IsA(obj, String) || strcmp(strVal(obj), "bunnydb") != 0)
			continue;
		if (OidIsValid(get_extension_oid("bunnydb", true)))
			refuse_extension_drop_with_mirrors();
		return;					/* else IF EXISTS of a missing extension */
	}
}

/* DROP OWNED BY a list of roles that includes the extension's owner */
static void
guard_drop_owned(DropOwnedStmt *stmt)
{
	Oid			owner;
	bool		isnull;
	ListCell   *lc;

	if (!OidIsValid(get_extension_oid("bunnydb", true)))
		return;
	SPI_connect();
	if (SPI_execute("SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'bunnydb'",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the owner of extension bunnydb");
	owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();

	foreach(lc, stmt->roles)
	{
		if (get_rolespec_oid(lfirst(lc), true) == owner)
		{
			refuse_extension_drop_with_mirrors();
			return;
		}
	}
}

/*
 * Entry point of the check worker: connected to the database that is to be
 * dropped, report its mirrors.  Connections are let in even where the
 * database no longer allows them (a usual step before dropping one).
 */
void
bunny_dropdb_check_main(Datum arg)
{
	dsm_segment *seg;
	DropDatabaseCheck *check;
	Oid			dboid;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	seg = dsm_attach(DatumGetUInt32(arg));
	if (seg == NULL)
		proc_exit(0);			/* the backend that asked has gone */
	check = dsm_segment_address(seg);
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, BGWORKER_BYPASS_ALLOWCONN);

	/*
	 * A session there may hold a lock on bunny.mirror that blocks reading
	 * it (an explicit LOCK, or ALTER, TRUNCATE or VACUUM FULL of it in a
	 * transaction still open; control functions only take row locks, which
	 * do not).  Waiting for it would hang the DROP DATABASE for as long as
	 * that session stays, even WITH (FORCE), which would have ended it.
	 * Give up instead: the backend then warns that the check could not be
	 * made.
	 */
	SetConfigOption("lock_timeout", DROPDB_CHECK_LOCK_TIMEOUT, PGC_SUSET, PGC_S_OVERRIDE);

	bunny_start_transaction();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "bunnydb: looking for mirrors before DROP DATABASE");
	if (SPI_execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'bunnydb'", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		char	   *names;

		check->nmirrors = count_mirrors(&names);
		if (names)
			strlcpy(check->names, names, sizeof(check->names));
	}
	check->done = true;
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	dsm_detach(seg);
	proc_exit(0);
}

/*
 * DROP DATABASE: refuse while the database has mirrors.  When the check
 * cannot be made (no background worker slot free, the worker failed), say
 * so and let the drop go on: a guard must not make a database impossible
 * to drop.
 */
static void
guard_drop_database(DropdbStmt *stmt, bool isTopLevel)
{
	Oid			dboid = get_database_oid(stmt->dbname, true);
	dsm_segment *seg;
	DropDatabaseCheck *check;
	BackgroundWorker bgw;
	BackgroundWorkerHandle *handle;
	bool		done;
	int64		nmirrors;
	char	   *names;

	/* missing, or the current one: dropdb() reports those */
	if (!OidIsValid(dboid) || dboid == MyDatabaseId)
		return;

	/*
	 * The statement would fail in a transaction block anyway: give that
	 * error first, as standard_ProcessUtility would, without a check worker.
	 */
	PreventInTransactionBlock(isTopLevel, "DROP DATABASE");

	seg = dsm_create(sizeof(DropDatabaseCheck), 0);
	check = dsm_segment_address(seg);
	memset(check, 0, sizeof(DropDatabaseCheck));

	bunny_dynamic_worker(&bgw, "bunny_dropdb_check_main", "drop database check");
	bgw.bgw_main_arg = UInt32GetDatum(dsm_segment_handle(seg));
	memcpy(bgw.bgw_extra, &dboid, sizeof(Oid));
	if (!RegisterDynamicBackgroundWorker(&bgw, &handle))
	{
		dsm_detach(seg);
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not check database \"%s\" for bunnydb mirrors", stmt->dbname),
				 errdetail("No background worker slot was free."),
				 errhint("If the database had mirrors, their replication slots (bunny_slot_<mirror>) and publications (bunny_pub_<mirror>) are left on the sources: drop them there.")));
		return;
	}
	(void) WaitForBackgroundWorkerShutdown(handle);

	done = check->done;
	nmirrors = check->nmirrors;
	names = pstrdup(check->names);
	dsm_detach(seg);

	if (!done)
		ereport(WARNING,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not check database \"%s\" for bunnydb mirrors", stmt->dbname),
				 errdetail("The checking worker ended without an answer; the server log has its error."),
				 errhint("If the database had mirrors, their replication slots (bunny_slot_<mirror>) and publications (bunny_pub_<mirror>) are left on the sources: drop them there.")));
	else if (nmirrors > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("cannot drop database \"%s\" while it has bunnydb mirrors", stmt->dbname),
				 errdetail_plural("Mirror %s has a replication slot and a publication on its source, which would be left behind and keep holding WAL there.",
								  "Mirrors %s have replication slots and publications on their sources, which would be left behind and keep holding WAL there.",
								  nmirrors, names),
				 errhint("Connect to database \"%s\" and drop the mirrors first with bunny.drop_mirror(name).",
						 stmt->dbname)));
}

/* utility hook: only DROP EXTENSION, DROP OWNED and DROP DATABASE are looked at */
static void
guard_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					  ProcessUtilityContext context, ParamListInfo params,
					  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	/*
	 * A standby refuses both statements anyway, and could not start the
	 * check worker before it is promoted: let the standard error come.
	 */
	if (!RecoveryInProgress())
	{
		if (IsA(parsetree, DropStmt) && ((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION)
			guard_drop_extension((DropStmt *) parsetree);
		else if (IsA(parsetree, DropOwnedStmt))
			guard_drop_owned((DropOwnedStmt *) parsetree);
		else if (IsA(parsetree, DropdbStmt))
			guard_drop_database((DropdbStmt *) parsetree,
								context == PROCESS_UTILITY_TOPLEVEL);
	}

	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context, params,
								  queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

/* install the hook; called from _PG_init */
void
bunny_install_guards(void)
{
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = guard_process_utility;
}
