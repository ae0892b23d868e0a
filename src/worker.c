/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The per-mirror background worker: runs the mirror's phases (SETUP,
 *		SNAPSHOT, CDC), obeys control requests, and turns errors into
 *		catalog state.
 *
 * A worker run is: load the mirror, connect to the source, run whatever
 * phases are left, then stream until told to stop.  Any error ends the run:
 * the transaction is rolled back (so a half-applied batch never commits),
 * the error is written to bunny.mirror (error_message, error_count) and
 * bunny.mirror_logs, and the process exits.  The launcher starts it again
 * after an exponential backoff; retry_mirror cuts the backoff short.  Errors
 * that retrying cannot cure (a missing source table, wal_level, a foreign
 * slot ...) are marked so where they are raised (bunny_mark_permanent) and
 * leave the mirror FAILED.
 *
 * Exiting on error rather than recovering in-process keeps the state
 * simple: a fresh process has no leftover SPI plans, relation maps or
 * half-read stream, and it resumes from the replication origin, which was
 * committed together with the last applied batch.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"
#include "schema.h"
#include "source.h"

#include "access/xact.h"
#include "common/jsonapi.h"
#include "compat.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/origin.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* how often a worker re-reads its catalog row without being asked */
#define CATALOG_RECHECK_MS	10000

static int32 my_mirror_id;
static char *my_mirror_name;
static PGconn *source_conn = NULL;	/* until streaming starts */
static char *current_conninfo = NULL;	/* what the source connection was
										 * opened with */
static MirrorPhase current_phase;	/* the phase this run is in ... */
static bool current_phase_known = false;	/* ... once it streams */

static Mirror *reload_mirror(MemoryContext cxt);

/*
 * After an invalid input value (22P02): if the source has enum labels the
 * destination lacks, take them over (schema_sync_enum_labels); true when
 * some were added, and retrying at once will get further.  Its own
 * failure is only logged: the original error stands.
 */
static bool
worker_sync_enum_labels(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile int added = 0;

	PG_TRY();
	{
		Mirror	   *m = reload_mirror(cxt);

		if (m != NULL)
			added = schema_sync_enum_labels(m);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = bunny_catch_error();
		bunny_start_transaction();
		PushActiveSnapshot(GetTransactionSnapshot());
		bunny_log(my_mirror_name, "WARNING",
				  psprintf("could not compare the enum labels with the source: %s", edata->message),
				  NULL);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return added > 0;
}

/*
 * The run failed: roll back, record the error, and exit so that the
 * launcher restarts us after the backoff.  A value the destination could
 * not take because the source has added enum labels since is no error of
 * the mirror: the labels are taken over (each logged), the failure is
 * logged as INFO only, and we are restarted at once.
 */
static void
worker_handle_error(void)
{
	ErrorData  *edata;
	bool		permanent = bunny_error_permanent();
	XLogRecPtr	error_lsn = apply_error_lsn();
	char	   *details;
	bool		retry_now = false;

	edata = bunny_catch_error();
	apply_stream_close(false);
	stream_disconnect(&source_conn);
	details = bunny_error_details(edata, permanent ?
								  "the mirror is FAILED; fix the cause, then call bunny.retry_mirror()" :
								  NULL);

	if (!permanent && edata->sqlerrcode == ERRCODE_INVALID_TEXT_REPRESENTATION &&
		worker_sync_enum_labels())
		retry_now = true;

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (retry_now)
		bunny_log(my_mirror_name, "INFO",
				  psprintf("applying again after taking over enum labels: %s", edata->message),
				  details);
	else
	{
		catalog_record_error(my_mirror_id, edata, permanent);
		bunny_log(my_mirror_name, "ERROR", edata->message, details);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();

	/*
	 * The failed transaction is behind us once the stream has passed its
	 * commit record, which starts at error_lsn: the error is over from
	 * error_lsn + 1 on (applystream.c).
	 */
	workerslot_report_exit(!permanent && !retry_now,
						   XLogRecPtrIsInvalid(error_lsn) ? error_lsn : error_lsn + 1);
	proc_exit(1);
}

/*
 * The control hook (workerslot.c): between units of work, the phases ask
 * whether a control function has asked for something.  Pausing,
 * dropping and phase changes end the run (cleanly; the launcher starts the
 * next one); a changed conninfo reconnects the same way.  Otherwise the
 * freshly loaded mirror is returned, for the caller to pick up table
 * changes (resync requests); NULL when nothing was loaded.
 *
 * Loaded mirrors live in a memory context of their own, deleted two loads
 * later: the caller switches to the new one at once.
 */
static Mirror *
worker_check_control(void)
{
	static TimestampTz last_check = 0;
	static MemoryContext cxts[2] = {NULL, NULL};
	static int	next_cxt = 0;
	bool		pending;
	Mirror	   *m;
	bool		stop = false;
	MemoryContext old;

	pending = workerslot_take_control_request();
	/* now and then look anyway: the mirror or the extension may be gone */
	if (TimestampDifferenceExceeds(last_check, GetCurrentTimestamp(), CATALOG_RECHECK_MS))
		pending = true;
	if (!pending)
		return NULL;
	last_check = GetCurrentTimestamp();

	if (cxts[next_cxt] != NULL)
		MemoryContextDelete(cxts[next_cxt]);
	cxts[next_cxt] = AllocSetContextCreate(TopMemoryContext, "bunnydb mirror reload",
										   ALLOCSET_SMALL_SIZES);

	old = CurrentMemoryContext;
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	MemoryContextSwitchTo(cxts[next_cxt]);
	m = catalog_load_mirror(my_mirror_id, false);
	next_cxt = 1 - next_cxt;
	if (m == NULL)
		stop = true;			/* dropped */
	else if (m->status == MIRROR_PAUSING)
	{
		catalog_finish_pause(my_mirror_id);
		bunny_log(my_mirror_name, "INFO", "mirror paused", NULL);
		stop = true;
	}
	else if (m->status == MIRROR_PAUSED || m->status == MIRROR_FAILED)
		stop = true;
	else if (current_conninfo != NULL && strcmp(m->conninfo, current_conninfo) != 0)
		stop = true;			/* alter_peer: reconnect with the new conninfo */
	else if (current_phase_known && m->phase != current_phase)
		stop = true;			/* set up again (resync without a slot) */
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(old);

	if (stop)
	{
		resync_stop();
		apply_stream_close(true);
		stream_disconnect(&source_conn);
		proc_exit(0);
	}
	return m;
}

/*
 * A paused mirror keeps its worker, which consumes nothing but looks at the
 * source's WAL position every few seconds, so that bunny.mirrors shows how
 * far behind the pause leaves it.  A source that is down while paused is
 * not an error.  Ends (for the launcher to start a streaming run) when the
 * mirror is resumed.
 */
static void
worker_paused_loop(Mirror *m)
{
	PGconn	   *volatile conn = NULL;

	pgstat_report_activity(STATE_IDLE, "bunnydb: paused");
	for (int round = 0;; round++)
	{
		bool		pending;
		MemoryContext cxt = CurrentMemoryContext;

		pending = workerslot_take_control_request();
		/* every 6th round (30 s) look anyway: the mirror may be gone */
		if (pending || round % 6 == 5)
		{
			Mirror	   *now;
			bool		paused;

			bunny_start_transaction();
			PushActiveSnapshot(GetTransactionSnapshot());
			now = catalog_load_mirror(m->id, false);
			paused = now != NULL && now->status == MIRROR_PAUSED;
			PopActiveSnapshot();
			CommitTransactionCommand();
			MemoryContextSwitchTo(cxt);
			if (!paused)
				break;
		}

		PG_TRY();
		{
			XLogRecPtr	lsn;

			if (conn == NULL)
				conn = mirror_connect(m, false);
			lsn = source_current_wal_lsn(conn);
			workerslot_report_paused_at(lsn);
		}
		PG_CATCH();
		{
			/* the source may well be down while we are paused */
			MemoryContextSwitchTo(cxt);
			FlushErrorState();
			if (conn != NULL)
				PQfinish(conn);
			conn = NULL;
		}
		PG_END_TRY();

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 5000, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	if (conn != NULL)
		PQfinish(conn);
}

/* make sure our replication origin exists and bind this session to it */
static void
worker_setup_origin(Mirror *m)
{
	RepOriginId originid;

	bunny_start_transaction();
	originid = replorigin_by_name(m->origin_name, true);
	if (originid == InvalidRepOriginId)
		originid = replorigin_create(m->origin_name);
	CommitTransactionCommand();

	bunny_replorigin_session_setup(originid);
	replorigin_session_origin = originid;
}

/* the mirror's catalog rows again, into cxt */
static Mirror *
reload_mirror(MemoryContext cxt)
{
	Mirror	   *m;

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	MemoryContextSwitchTo(cxt);
	m = catalog_load_mirror(my_mirror_id, false);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	return m;
}

/*
 * Commit the switch to CDC: every table SYNCED, the mirror RUNNING, and the
 * replication origin at start_lsn, in one transaction, so that streaming
 * after a crash starts exactly where the copy left off.
 */
static void
worker_enter_cdc(Mirror *m, XLogRecPtr start_lsn)
{
	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	catalog_set_table_status(m->id, TABLE_SYNCED);
	catalog_set_status_phase(m->id, MIRROR_RUNNING, PHASE_CDC);
	bunny_log(m->name, "INFO",
			  psprintf("setup complete; streaming changes from %X/%X", LSN_FORMAT_ARGS(start_lsn)),
			  NULL);
	catalog_finish_resync(m->id, m->name);
	/* the phases an earlier run failed in are done: so is its error */
	catalog_clear_error(m->id);
	replorigin_session_origin_lsn = start_lsn;
	replorigin_session_origin_timestamp = GetCurrentTimestamp();
	PopActiveSnapshot();
	CommitTransactionCommand();
	replorigin_session_origin_lsn = InvalidXLogRecPtr;
	replorigin_session_origin_timestamp = 0;
}

/*
 * Drive the phases before CDC (state.h, NOTES): SETUP, then the initial
 * copy if the mirror has one, then the switch to CDC.  A run that finds
 * phase SNAPSHOT resumes the copy; if the slot is gone by then, nothing
 * the copy did can be streamed onto, and the mirror goes back to SETUP.
 * The phases report what comes next (a slot position, an exported
 * snapshot, a missing slot) and this is the one place that decides it.
 */
static void
worker_run_phases(PGconn *conn, Mirror *m)
{
	MirrorPhase phase = m->phase;
	XLogRecPtr	start_lsn = InvalidXLogRecPtr;

	if (phase == PHASE_SNAPSHOT)
	{
		start_lsn = snapshot_recover(conn, m);
		if (XLogRecPtrIsInvalid(start_lsn))
		{
			bunny_log(m->name, "WARNING", "replication slot missing during the initial copy; starting setup over",
					  NULL);
			phase = PHASE_SETUP;
		}
	}
	if (phase == PHASE_SETUP)
	{
		char	   *snapshot;

		start_lsn = setup_run(conn, m, &snapshot);
		/* the copy starts at the slot's consistent point: no sync_lsn */
		if (m->do_initial_snapshot)
			snapshot_run(m, conn, snapshot, InvalidXLogRecPtr);
	}
	worker_enter_cdc(m, start_lsn);
}

/* one run of the mirror: whatever phases are left, then CDC */
static void
worker_run(void)
{
	Mirror	   *m;
	MemoryContext workercxt;

	workercxt = AllocSetContextCreate(TopMemoryContext, "bunnydb mirror",
									  ALLOCSET_DEFAULT_SIZES);

	bunny_start_transaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	MemoryContextSwitchTo(workercxt);
	m = catalog_load_mirror(my_mirror_id, true);
	if (m != NULL && m->status == MIRROR_PAUSING)
	{
		catalog_finish_pause(my_mirror_id);
		bunny_log(m->name, "INFO", "mirror paused", NULL);
		m->status = MIRROR_PAUSED;
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(workercxt);

	if (m == NULL || m->status == MIRROR_FAILED)
		return;
	if (m->status == MIRROR_PAUSED)
	{
		/* where we stand: the origin's position */
		worker_setup_origin(m);
		workerslot_report_start(replorigin_session_get_progress(false));
		worker_paused_loop(m);
		return;
	}

	/* control requests made before we started are covered by this load */
	(void) workerslot_take_control_request();

	worker_setup_origin(m);

	/*
	 * Connecting is part of setting up: a mirror whose source cannot be
	 * reached says SETUP while it retries, not CREATED (which would read as
	 * "no worker yet").
	 */
	if (m->phase == PHASE_SETUP && m->status == MIRROR_CREATED)
	{
		bunny_start_transaction();
		PushActiveSnapshot(GetTransactionSnapshot());
		catalog_set_status_phase(m->id, MIRROR_SETUP, PHASE_SETUP);
		PopActiveSnapshot();
		CommitTransactionCommand();
		m->status = MIRROR_SETUP;
	}

	current_conninfo = m->conninfo;
	pgstat_report_activity(STATE_RUNNING, "bunnydb: connecting to the source");
	source_conn = mirror_connect(m, true);

	if (m->phase != PHASE_CDC)
	{
		worker_run_phases(source_conn, m);
		/* the slot's snapshot connection is spent: stream on a new one */
		stream_disconnect(&source_conn);
		source_conn = mirror_connect(m, true);

		/* the copy may have set per-table start positions (sync_lsn) */
		m = reload_mirror(workercxt);
		if (m == NULL)
			return;
	}
	else if (m->status != MIRROR_RUNNING && m->status != MIRROR_RESYNCING)
	{
		bunny_start_transaction();
		PushActiveSnapshot(GetTransactionSnapshot());
		catalog_set_status(m->id, MIRROR_RUNNING);
		bunny_log(m->name, "INFO", "mirror running", NULL);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}

	/* tables added by update_tables, publication changes */
	if (m->publication_dirty)
	{
		setup_refresh_tables(source_conn, m);
		m = reload_mirror(workercxt);
		if (m == NULL)
			return;
	}

	current_phase = m->phase;
	current_phase_known = true;
	pgstat_report_activity(STATE_RUNNING, "bunnydb: streaming changes");
	{
		PGconn	   *conn = source_conn;

		/*
		 * The stream layer owns the connection from here on: it restarts
		 * the stream on a new one, and apply_stream_close() closes it.
		 */
		source_conn = NULL;
		apply_stream(conn, m);
	}
}

/* entry point of a mirror worker; arg is its slot number */
void
bunny_mirror_worker_main(Datum arg)
{
	int			slotno = DatumGetInt32(arg);
	Oid			dboid;
	BunnyErrorContext errctx;

	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	workerslot_attach(slotno, &dboid, &my_mirror_id, &my_mirror_name);
	workerslot_set_control_hook(worker_check_control);

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	/*
	 * Apply like the built-in subscriber: no user triggers or FK checks on
	 * replicated rows, schema-qualified names only, and asynchronous commit
	 * -- the slot is only told about commits that are flushed (applybatch.c).
	 */
	SetConfigOption("session_replication_role", "replica", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("search_path", "pg_catalog", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("application_name", psprintf("bunnydb:%s", my_mirror_name),
					PGC_USERSET, PGC_S_OVERRIDE);
	SetConfigOption("extra_float_digits", "3", PGC_USERSET, PGC_S_OVERRIDE);
	/*
	 * Rows are found by key: an index scan is always right, while plans
	 * made when a table was small would keep scanning it sequentially as it
	 * grows (tables without a usable index still get their scan).
	 */
	SetConfigOption("enable_seqscan", "off", PGC_USERSET, PGC_S_OVERRIDE);

	/*
	 * With enable_seqscan off, the scan of a table without a usable index
	 * (REPLICA IDENTITY FULL) is costed at 1e10, far above jit_above_cost:
	 * every such UPDATE and DELETE was JIT-compiled, 50 ms a row.  The
	 * apply's statements are small; JIT never pays for them.
	 */
	SetConfigOption("jit", "off", PGC_USERSET, PGC_S_OVERRIDE);
	SetConfigOption("DateStyle", "ISO", PGC_USERSET, PGC_S_OVERRIDE);
	SetConfigOption("IntervalStyle", "postgres", PGC_USERSET, PGC_S_OVERRIDE);

	/* the frame the phases' own frames add the table and LSN to */
	bunny_errcontext_push(&errctx, my_mirror_name, NULL, InvalidXLogRecPtr);

	PG_TRY();
	{
		worker_run();
	}
	PG_CATCH();
	{
		worker_handle_error();
	}
	PG_END_TRY();

	stream_disconnect(&source_conn);
	proc_exit(0);
}
