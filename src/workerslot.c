/*-------------------------------------------------------------------------
 *
 * workerslot.c
 *		bunnydb's shared memory: one slot per mirror that should run, and
 *		this process's own slot.
 *
 * The launcher allocates slots and starts workers into them (launcher.c);
 * the SQL API finds a mirror's slot to wake or stop its worker
 * (functions.c); a mirror worker reports in its slot how far it has got,
 * which bunny.mirrors reads.  What those parties do to a slot is written
 * here once, so that the locking protocol lives in one file:
 *
 *	- identity fields (in_use, wanted, mirror_id, pid, latch, ...) are
 *	  protected by BunnyShared->lock;
 *	- the live figures (source_lsn, processed_lsn, commit times,
 *	  error_lsn, text_until) by the slot's spinlock, and a move of
 *	  processed_lsn is broadcast on progress_cv (bunny.wait_for_lsn
 *	  sleeps on it).
 *
 * A mirror worker attaches to its slot once (workerslot_attach); from then
 * on the files of its phases report through the workerslot_* functions
 * below instead of touching the slot.
 *
 * Control requests: a control function sets control_pending at commit.
 * The phases look between units of work with bunny_check_control(), which
 * calls the hook the worker registered (worker.c decides what a request
 * means: pause, drop, reconnect); a phase never calls up into the worker.
 *
 *-------------------------------------------------------------------------
 */
#include "bunnydb.h"

#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

/*
 * The shared state.  Set once when shared memory is created or attached,
 * never reassigned; what it points to is shared and locked as above.
 */
BunnyShared *BunnyState = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* this process's slot, if it is a mirror worker */
static BunnyWorkerSlot *MySlot = NULL;

/* what a control request means, decided by the mirror worker */
static Mirror *(*control_hook) (void) = NULL;

/* size of BunnyShared with its slot array */
static Size
workerslot_shmem_size(void)
{
	return add_size(offsetof(BunnyShared, slots),
					mul_size(bunny_max_mirror_workers, sizeof(BunnyWorkerSlot)));
}

/* ask for our shared memory and lock (PostgreSQL 15 request hook) */
static void
workerslot_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(workerslot_shmem_size());
	RequestNamedLWLockTranche("bunnydb", 1);
}

/* create or attach the shared state */
static void
workerslot_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	BunnyState = ShmemInitStruct("bunnydb", workerslot_shmem_size(), &found);
	if (!found)
	{
		int			i;

		memset(BunnyState, 0, workerslot_shmem_size());
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

/* install the shared memory hooks; called once, from _PG_init */
void
workerslot_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = workerslot_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = workerslot_shmem_startup;
}

/* the slot of a mirror, or NULL; caller holds BunnyState->lock */
BunnyWorkerSlot *
bunny_find_slot(Oid dboid, int32 mirror_id)
{
	int			i;

	for (i = 0; i < bunny_max_mirror_workers; i++)
	{
		BunnyWorkerSlot *slot = &BunnyState->slots[i];

		if (slot->in_use && slot->dboid == dboid && slot->mirror_id == mirror_id)
			return slot;
	}
	return NULL;
}

/* ask the launcher to scan a database again; caller holds the lock */
void
bunny_request_rescan(Oid dboid)
{
	int			i;

	for (i = 0; i < BunnyState->n_rescan; i++)
		if (BunnyState->rescan_dbs[i] == dboid)
			return;
	if (BunnyState->n_rescan < BUNNY_MAX_RESCAN_DBS)
		BunnyState->rescan_dbs[BunnyState->n_rescan++] = dboid;
	else
		BunnyState->rescan_all = true;
}

/*
 * Fill in a dynamic bunnydb worker that calls function, named
 * "bunnydb <what>" in pg_stat_activity, reporting its exit to us.
 */
void
bunny_dynamic_worker(BackgroundWorker *bgw, const char *function, const char *what)
{
	memset(bgw, 0, sizeof(*bgw));
	bgw->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw->bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw->bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(bgw->bgw_library_name, BGW_MAXLEN, "bunnydb");
	snprintf(bgw->bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(bgw->bgw_name, BGW_MAXLEN, "bunnydb %s", what);
	snprintf(bgw->bgw_type, BGW_MAXLEN, "bunnydb %s", what);
	bgw->bgw_notify_pid = MyProcPid;
}

/* clear our pid from the slot so nobody signals a dead process */
static void
workerslot_on_exit(int code, Datum arg)
{
	if (MySlot == NULL)
		return;
	LWLockAcquire(BunnyState->lock, LW_EXCLUSIVE);
	MySlot->pid = 0;
	MySlot->latch = NULL;
	LWLockRelease(BunnyState->lock);
	ConditionVariableBroadcast(&MySlot->progress_cv);
}

/*
 * A mirror worker takes its slot: our pid and latch go in, and the mirror
 * the launcher put there comes out.
 */
void
workerslot_attach(int slotno, Oid *dboid, int32 *mirror_id, char **mirror_name)
{
	MySlot = &BunnyState->slots[slotno];
	LWLockAcquire(BunnyState->lock, LW_EXCLUSIVE);
	*dboid = MySlot->dboid;
	*mirror_id = MySlot->mirror_id;
	*mirror_name = MemoryContextStrdup(TopMemoryContext, MySlot->mirror_name);
	MySlot->pid = MyProcPid;
	MySlot->latch = MyLatch;
	MySlot->last_exit_failed = false;
	LWLockRelease(BunnyState->lock);
	before_shmem_exit(workerslot_on_exit, (Datum) 0);
}

/* our slot's number, for the snapshot workers to find their coordinator */
int
workerslot_number(void)
{
	Assert(MySlot != NULL);
	return MySlot - BunnyState->slots;
}

/* has a control function asked for something since we last looked? */
bool
workerslot_take_control_request(void)
{
	bool		pending;

	LWLockAcquire(BunnyState->lock, LW_EXCLUSIVE);
	pending = MySlot->control_pending;
	MySlot->control_pending = false;
	LWLockRelease(BunnyState->lock);
	return pending;
}

/* the mirror worker says what a control request means */
void
workerslot_set_control_hook(Mirror *(*hook) (void))
{
	control_hook = hook;
}

/*
 * Between units of work: obey control requests (worker.c's hook may end
 * the process).  Returns the reloaded mirror, or NULL when nothing was
 * loaded.
 */
Mirror *
bunny_check_control(void)
{
	return control_hook ? control_hook() : NULL;
}

/* the walsender has told us about WAL up to end */
void
workerslot_report_source_lsn(XLogRecPtr end)
{
	SpinLockAcquire(&MySlot->mutex);
	if (end > MySlot->source_lsn)
		MySlot->source_lsn = end;
	SpinLockRelease(&MySlot->mutex);
}

/* a paused mirror: the source is at lsn, and nothing is being applied */
void
workerslot_report_paused_at(XLogRecPtr lsn)
{
	SpinLockAcquire(&MySlot->mutex);
	MySlot->source_lsn = lsn;
	if (lsn > MySlot->processed_lsn && MySlot->behind_since == 0)
		MySlot->behind_since = GetCurrentTimestamp();
	SpinLockRelease(&MySlot->mutex);
}

/* streaming (or waiting) starts at startpos: everything before is ours */
void
workerslot_report_start(XLogRecPtr startpos)
{
	SpinLockAcquire(&MySlot->mutex);
	if (startpos > MySlot->processed_lsn)
		MySlot->processed_lsn = startpos;
	SpinLockRelease(&MySlot->mutex);
}

/* a source transaction committed at committime has begun to arrive */
void
workerslot_report_pending_commit(TimestampTz committime)
{
	SpinLockAcquire(&MySlot->mutex);
	if (MySlot->oldest_pending_commit == 0)
		MySlot->oldest_pending_commit = committime;
	SpinLockRelease(&MySlot->mutex);
}

/* the batch was given up: nothing of it is pending any more */
void
workerslot_clear_pending_commit(void)
{
	SpinLockAcquire(&MySlot->mutex);
	MySlot->oldest_pending_commit = 0;
	SpinLockRelease(&MySlot->mutex);
}

/*
 * A batch committed here: everything before processed is applied, the
 * last source commit applied was at last_commit_time (0: none in it).
 */
void
workerslot_report_applied(XLogRecPtr processed, TimestampTz last_commit_time)
{
	SpinLockAcquire(&MySlot->mutex);
	if (processed > MySlot->processed_lsn)
		MySlot->processed_lsn = processed;
	if (MySlot->processed_lsn >= MySlot->source_lsn)
		MySlot->behind_since = 0;
	if (last_commit_time)
		MySlot->last_commit_time = last_commit_time;
	MySlot->oldest_pending_commit = 0;
	SpinLockRelease(&MySlot->mutex);
	ConditionVariableBroadcast(&MySlot->progress_cv);
}

/* idle, with nothing pending: the source has nothing for us before end */
void
workerslot_report_caught_up(XLogRecPtr end)
{
	bool		moved = false;

	SpinLockAcquire(&MySlot->mutex);
	if (end > MySlot->processed_lsn)
	{
		MySlot->processed_lsn = end;
		moved = true;
	}
	MySlot->behind_since = 0;
	SpinLockRelease(&MySlot->mutex);
	if (moved)
		ConditionVariableBroadcast(&MySlot->progress_cv);
}

/* where the last failed run of this mirror stopped */
XLogRecPtr
workerslot_error_lsn(void)
{
	XLogRecPtr	error_lsn;

	SpinLockAcquire(&MySlot->mutex);
	error_lsn = MySlot->error_lsn;
	SpinLockRelease(&MySlot->mutex);
	return error_lsn;
}

/*
 * This run ends: failed says whether the launcher should back off before
 * the next, and a failure remembers where it stopped (never before what
 * was applied).
 */
void
workerslot_report_exit(bool failed, XLogRecPtr error_lsn)
{
	LWLockAcquire(BunnyState->lock, LW_EXCLUSIVE);
	MySlot->last_exit_failed = failed;
	LWLockRelease(BunnyState->lock);
	SpinLockAcquire(&MySlot->mutex);
	MySlot->error_lsn = Max(error_lsn, MySlot->processed_lsn);
	SpinLockRelease(&MySlot->mutex);
}

/*
 * Binary transfer met a column it cannot carry: stream in text until what
 * the source has written by now is applied (everything, if we do not know
 * where the source is).
 */
void
workerslot_text_until_source_lsn(void)
{
	SpinLockAcquire(&MySlot->mutex);
	MySlot->text_until = Max(MySlot->text_until,
							 MySlot->source_lsn != InvalidXLogRecPtr ?
							 MySlot->source_lsn : PG_UINT64_MAX);
	SpinLockRelease(&MySlot->mutex);
}

/* must this run stream in text (workerslot_text_until_source_lsn)? */
bool
workerslot_text_required(void)
{
	XLogRecPtr	text_until;
	XLogRecPtr	processed;

	SpinLockAcquire(&MySlot->mutex);
	text_until = MySlot->text_until;
	processed = MySlot->processed_lsn;
	SpinLockRelease(&MySlot->mutex);
	return text_until != InvalidXLogRecPtr && processed < text_until;
}
