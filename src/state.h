/*-------------------------------------------------------------------------
 *
 * state.h
 *		The states of a mirror and of its tables, and the transitions
 *		between them.
 *
 * The catalog keeps states as text (bunny.mirror.status and .phase,
 * bunny.mirror_table.status and .resync_state), because people read them
 * from psql.  C code works with the codes below: a row's text is turned
 * into a code once, when the row is loaded (state_parse_*), and back into
 * text only when it is written.
 *
 * NOTES
 *
 * A mirror has a phase, where it is in its life, and a status, what it is
 * doing now.  The phase only moves forward, except that a resync whose
 * slot is gone starts the mirror over:
 *
 *		SETUP -> SNAPSHOT -> CDC		(SETUP -> CDC without an initial copy)
 *
 * The status follows the phase while the worker runs (SETUP, SNAPSHOT,
 * RUNNING or RESYNCING in CDC) and leaves it when someone intervenes
 * (PAUSING, PAUSED) or when retrying cannot help (FAILED).  Who may move a
 * mirror from one status to another is written down once, in
 * mirror_transitions[] (state.c), and a trigger on bunny.mirror checks
 * every change of status and phase against it, so that a transition
 * nobody planned is an error at the moment it happens instead of a mirror
 * in a state no one can get it out of.
 *
 * Invariants the transition table keeps:
 *
 *	- A worker never takes a mirror out of PAUSED or FAILED: only
 *	  resume_mirror, retry_mirror, pause_mirror and the resync functions do.
 *	- Only pause_mirror sets PAUSING, and only the worker turns PAUSING into
 *	  PAUSED, after it has committed its last batch; a mirror whose worker
 *	  is not running (FAILED) is paused at once.
 *	- Everything that runs ends in RUNNING or FAILED: every status a worker
 *	  can be in has a way to FAILED, and every status a user can be left in
 *	  (PAUSED, FAILED) has a way out by a function.
 *	- While pending_op is set, the operation it names owns the mirror:
 *	  other operations are refused (55006), except that pause, retry and a
 *	  new resync may end a resync (a resync never wedges a mirror), and
 *	  cancel_operation calls it off.
 *	- cancel_operation is the one way a SQL function takes a mirror from
 *	  RESYNCING to RUNNING (the worker does when the copies are in): it
 *	  stops the worker first, so the two never race for the transition.
 *	  A FAILED mirror that failed in the operation goes to RUNNING too, a
 *	  PAUSED one stays PAUSED.  A pause (PAUSING) and a resync that sets
 *	  a mirror up again without its slot (phase SETUP) cannot be called
 *	  off: the first ends on its own, the second has nothing to go back to.
 *
 * Tables have a status of their own (PENDING, SNAPSHOT, SYNCED, RESYNCING,
 * STALE) and, while they are copied again, a resync_state: REQUESTED
 * (nothing done yet), then COPYING (a temporary slot and its snapshot
 * exist, changes of the table are held back until the copy reaches the
 * slot's position), then NULL again when the table is SYNCED.
 *
 * A cancelled copy leaves a table SYNCED when it had not touched its rows
 * (a swap, which built its copy beside the live table; a truncate still
 * REQUESTED) and STALE when it had (a truncate or add already COPYING: the
 * rows are emptied or half copied).  A STALE table's sync_lsn is
 * TABLE_STALE_LSN, so that every change of it is skipped rather than
 * failing on rows it lacks, while it waits for a resync and while that
 * resync is REQUESTED; the resync copies it with truncate even when swap
 * was asked for, because a swap applies changes to the live table until
 * the exchange.
 *
 * Example flows
 *
 * create -> copy -> CDC.  create_mirror inserts the mirror CREATED/SETUP and
 * its tables PENDING.  The worker sets SETUP, creates the publication, the
 * destination tables and the slot, and records the copy plan; with an
 * initial copy it sets SNAPSHOT/SNAPSHOT and the tables SNAPSHOT, copies
 * them in parallel in the slot's exported snapshot, and in one transaction
 * marks every table SYNCED and the mirror RUNNING/CDC.  Streaming starts at
 * the slot's consistent point, so no change is applied twice or missed.
 *
 * Resync of a table, swap strategy.  resync_table sets the table RESYNCING
 * with resync_state REQUESTED and the mirror RESYNCING with pending_op
 * 'resync'.  The worker, between batches, creates a temporary slot, copies
 * the table into <table>_resync in its snapshot and sets COPYING; changes
 * of the table up to the temporary slot's position are dropped, later ones
 * queued.  When the stream reaches that position the queue is replayed into
 * the copy, the copy replaces the table in one transaction, the table
 * becomes SYNCED, and when no table is left the mirror is RUNNING again
 * and pending_op is cleared.  A pause, a retry or a new resync ends a
 * failing one: the half-built copy is dropped with it.
 *
 * Cancel of a resync.  cancel_operation locks the mirror row, stops the
 * worker (its exit ends the connection holding the temporary slot, which
 * the source drops, and its snapshot workers give up), drops the tables'
 * <table>_resync copies, queues and parts, sets the tables SYNCED or
 * STALE (above), and the mirror RUNNING (from RESYNCING or FAILED) with
 * pending_op cleared, in one transaction.  The launcher starts the worker
 * again after the commit, streaming from the origin's position.
 *
 * Crash during the initial copy.  The worker dies with the mirror in
 * SNAPSHOT, some tables SYNCED and others half copied.  The launcher starts
 * a new one, which finds phase SNAPSHOT (snapshot_recover): the exported
 * snapshot died with the old process, but the permanent slot is kept.  The
 * tables that are not SYNCED are emptied and copied again in the snapshot
 * of a new temporary slot, and their sync_lsn records that slot's position;
 * CDC starts at the permanent slot's older position and skips a table's
 * changes up to its sync_lsn, so each row is applied once.  If the
 * permanent slot is gone too, snapshot_recover says so and the worker
 * sends the mirror back to SETUP to start over.  The worker alone moves
 * a mirror from one phase to the next (worker_run_phases): setup and the
 * copy each do their phase and report what the next one needs.

 *-------------------------------------------------------------------------
 */
#ifndef BUNNYDB_STATE_H
#define BUNNYDB_STATE_H

/* bunny.mirror.status */
typedef enum MirrorStatus
{
	MIRROR_CREATED,				/* waiting for its worker */
	MIRROR_SETUP,				/* publication, slot, destination tables */
	MIRROR_SNAPSHOT,			/* the initial copy */
	MIRROR_RUNNING,				/* streaming changes (phase CDC) */
	MIRROR_PAUSING,				/* pause asked; the worker finishes its batch */
	MIRROR_PAUSED,				/* stopped by pause_mirror; slot kept */
	MIRROR_RESYNCING,			/* streaming while tables are copied again */
	MIRROR_FAILED,				/* stopped on an error retrying cannot cure */
	MIRROR_N_STATUS
} MirrorStatus;

/* bunny.mirror.phase: only moves forward, except a resync that starts over */
typedef enum MirrorPhase
{
	PHASE_SETUP,
	PHASE_SNAPSHOT,
	PHASE_CDC,
	MIRROR_N_PHASE
} MirrorPhase;

/* bunny.mirror_table.status */
typedef enum TableStatus
{
	TABLE_PENDING,				/* mapped, nothing copied yet */
	TABLE_SNAPSHOT,				/* in the initial copy */
	TABLE_SYNCED,				/* changes are applied */
	TABLE_RESYNCING,			/* being copied again (see resync_state) */
	TABLE_STALE,				/* its copy was cancelled half way; not applied */
	TABLE_N_STATUS
} TableStatus;

/*
 * The sync_lsn of a STALE table: every change commits before it, so
 * every change is skipped until a resync copies the table again.
 */
#define TABLE_STALE_LSN		((XLogRecPtr) UINT64CONST(0xFFFFFFFFFFFFFFFF))

/* bunny.mirror_table.resync_state: NULL, or how far a table's copy is */
typedef enum ResyncState
{
	RESYNC_NONE,				/* NULL: not being copied again */
	RESYNC_REQUESTED,			/* asked for; nothing done yet */
	RESYNC_COPYING,				/* temporary slot made, copy under way */
	RESYNC_N_STATE
} ResyncState;

/* bunny.mirror_table.resync_strategy: how a table is copied again */
typedef enum ResyncStrategy
{
	STRATEGY_NONE,				/* NULL: no copy asked for */
	STRATEGY_TRUNCATE,			/* empty the table and copy into it */
	STRATEGY_SWAP,				/* copy beside it, then swap the two */
	STRATEGY_ADD,				/* first copy of a table update_tables added */
	STRATEGY_N
} ResyncStrategy;

/* who changes a state: a bunnydb worker process, or a SQL function */
typedef enum StateActor
{
	ACTOR_WORKER,
	ACTOR_USER
} StateActor;

extern const char *mirror_status_name(MirrorStatus status);
extern MirrorStatus mirror_status_parse(const char *name);
extern const char *mirror_phase_name(MirrorPhase phase);
extern MirrorPhase mirror_phase_parse(const char *name);
extern const char *table_status_name(TableStatus status);
extern TableStatus table_status_parse(const char *name);
extern ResyncState resync_state_parse(const char *name);
extern ResyncStrategy resync_strategy_parse(const char *name);
extern bool mirror_status_transition_ok(MirrorStatus from, MirrorStatus to,
										StateActor actor);
extern bool mirror_phase_transition_ok(MirrorPhase from, MirrorPhase to,
									   StateActor actor);

#endif							/* BUNNYDB_STATE_H */
