/*-------------------------------------------------------------------------
 *
 * state.c
 *		Names of the mirror and table states, and the table of allowed
 *		transitions, checked by a trigger on bunny.mirror.
 *
 * See state.h for the states, their invariants and example flows.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "state.h"

static const char *const mirror_status_names[MIRROR_N_STATUS] = {
	[MIRROR_CREATED] = "CREATED",
	[MIRROR_SETUP] = "SETUP",
	[MIRROR_SNAPSHOT] = "SNAPSHOT",
	[MIRROR_RUNNING] = "RUNNING",
	[MIRROR_PAUSING] = "PAUSING",
	[MIRROR_PAUSED] = "PAUSED",
	[MIRROR_RESYNCING] = "RESYNCING",
	[MIRROR_FAILED] = "FAILED",
};

static const char *const mirror_phase_names[MIRROR_N_PHASE] = {
	[PHASE_SETUP] = "SETUP",
	[PHASE_SNAPSHOT] = "SNAPSHOT",
	[PHASE_CDC] = "CDC",
};

static const char *const table_status_names[TABLE_N_STATUS] = {
	[TABLE_PENDING] = "PENDING",
	[TABLE_SNAPSHOT] = "SNAPSHOT",
	[TABLE_SYNCED] = "SYNCED",
	[TABLE_RESYNCING] = "RESYNCING",
	[TABLE_STALE] = "STALE",
};

/*
 * Who may move a mirror from one status (row) to another (column):
 * 'w' its worker, 'u' a SQL function (pause_mirror, resume_mirror,
 * retry_mirror, resync_table, resync_mirror, cancel_operation), 'b' both,
 * '-' nobody.
 *
 *	CREATED -> SETUP, RUNNING	the worker starts (RUNNING: a mirror already
 *								in CDC whose status lagged behind)
 *	* -> PAUSING				pause_mirror of a mirror with a worker
 *	PAUSING -> PAUSED			the worker, after its last batch
 *	FAILED -> PAUSED			pause_mirror; no worker runs
 *	PAUSED, FAILED -> ...		resume_mirror, retry_mirror, resync: back to
 *								where the phase is (CREATED, SNAPSHOT,
 *								RUNNING or RESYNCING)
 *	RUNNING -> RESYNCING		resync_table, or the worker starting the copy
 *								of tables update_tables added
 *	RESYNCING -> RUNNING		the worker when the copies are in, or
 *								cancel_operation calling them off (so is
 *								FAILED -> RUNNING, when it failed in one)
 *	* -> CREATED				a resync whose slot is gone starts over
 *	* -> FAILED					the worker, on an error retrying cannot cure
 */
static const char mirror_transitions[MIRROR_N_STATUS][MIRROR_N_STATUS + 1] = {
	/* to:           CR SE SN RU PG PD RE FA */
	[MIRROR_CREATED] = "-" "w" "-" "w" "u" "-" "u" "w",
	[MIRROR_SETUP] = "-" "-" "w" "w" "u" "-" "-" "w",
	[MIRROR_SNAPSHOT] = "-" "w" "-" "w" "u" "-" "-" "w",
	[MIRROR_RUNNING] = "u" "-" "-" "-" "u" "-" "b" "w",
	[MIRROR_PAUSING] = "-" "-" "-" "-" "-" "w" "-" "w",
	[MIRROR_PAUSED] = "u" "-" "u" "u" "-" "-" "u" "-",
	[MIRROR_RESYNCING] = "u" "-" "-" "b" "u" "-" "-" "w",
	[MIRROR_FAILED] = "u" "-" "u" "u" "-" "u" "u" "-",
};

/*
 * Phases: forward by the worker (SNAPSHOT -> SETUP when the initial copy
 * starts over without its slot), back to SETUP by a resync without a slot.
 */
static const char phase_transitions[MIRROR_N_PHASE][MIRROR_N_PHASE + 1] = {
	/* to:          SE SN CD */
	[PHASE_SETUP] = "-" "w" "w",
	[PHASE_SNAPSHOT] = "w" "-" "w",
	[PHASE_CDC] = "u" "-" "-",
};

static int
parse_name(const char *const *names, int n, const char *name, const char *what)
{
	for (int i = 0; i < n; i++)
		if (strcmp(names[i], name) == 0)
			return i;
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("unknown %s \"%s\" in the bunnydb catalog", what, name)));
	return -1;					/* keep the compiler quiet */
}

const char *
mirror_status_name(MirrorStatus status)
{
	Assert(status >= 0 && status < MIRROR_N_STATUS);
	return mirror_status_names[status];
}

MirrorStatus
mirror_status_parse(const char *name)
{
	return (MirrorStatus) parse_name(mirror_status_names, MIRROR_N_STATUS, name,
									 "mirror status");
}

const char *
mirror_phase_name(MirrorPhase phase)
{
	Assert(phase >= 0 && phase < MIRROR_N_PHASE);
	return mirror_phase_names[phase];
}

MirrorPhase
mirror_phase_parse(const char *name)
{
	return (MirrorPhase) parse_name(mirror_phase_names, MIRROR_N_PHASE, name,
									"mirror phase");
}

const char *
table_status_name(TableStatus status)
{
	Assert(status >= 0 && status < TABLE_N_STATUS);
	return table_status_names[status];
}

TableStatus
table_status_parse(const char *name)
{
	return (TableStatus) parse_name(table_status_names, TABLE_N_STATUS, name,
									"table status");
}

/* NULL (the column's NULL) is RESYNC_NONE */
ResyncState
resync_state_parse(const char *name)
{
	static const char *const names[RESYNC_N_STATE] = {
		[RESYNC_NONE] = "", [RESYNC_REQUESTED] = "REQUESTED", [RESYNC_COPYING] = "COPYING",
	};

	return name == NULL ? RESYNC_NONE :
		(ResyncState) parse_name(names, RESYNC_N_STATE, name, "resync state");
}

/* NULL (the column's NULL) is STRATEGY_NONE */
ResyncStrategy
resync_strategy_parse(const char *name)
{
	static const char *const names[STRATEGY_N] = {
		[STRATEGY_NONE] = "", [STRATEGY_TRUNCATE] = "truncate", [STRATEGY_SWAP] = "swap",
		[STRATEGY_ADD] = "add",
	};

	return name == NULL ? STRATEGY_NONE :
		(ResyncStrategy) parse_name(names, STRATEGY_N, name, "resync strategy");
}

static bool
allowed(char who, StateActor actor)
{
	return who == 'b' ||
		(who == 'w' && actor == ACTOR_WORKER) ||
		(who == 'u' && actor == ACTOR_USER);
}

bool
mirror_status_transition_ok(MirrorStatus from, MirrorStatus to, StateActor actor)
{
	return from == to || allowed(mirror_transitions[from][to], actor);
}

bool
mirror_phase_transition_ok(MirrorPhase from, MirrorPhase to, StateActor actor)
{
	return from == to || allowed(phase_transitions[from][to], actor);
}

/*
 * bunny._mirror_state_guard(): BEFORE UPDATE trigger on bunny.mirror.
 *
 * Every change of status or phase, by a worker or by a SQL function, goes
 * through here: a transition the table above does not allow is a bug, and
 * failing the statement keeps the mirror in a state with a known way out
 * instead of one nobody planned.
 */
PG_FUNCTION_INFO_V1(bunny_mirror_state_guard);
Datum
bunny_mirror_state_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	StateActor	actor = IsBackgroundWorker ? ACTOR_WORKER : ACTOR_USER;
	const char *const columns[2] = {"status", "phase"};

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("bunny._mirror_state_guard() must be a row trigger on update")));
	desc = RelationGetDescr(trigdata->tg_relation);

	for (int c = 0; c < 2; c++)
	{
		int			attnum = SPI_fnumber(desc, columns[c]);
		char	   *from;
		char	   *to;
		bool		ok;

		if (attnum <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("bunny.mirror has no column \"%s\"", columns[c])));
		from = SPI_getvalue(trigdata->tg_trigtuple, desc, attnum);
		to = SPI_getvalue(trigdata->tg_newtuple, desc, attnum);
		if (from == NULL || to == NULL || strcmp(from, to) == 0)
			continue;
		if (c == 0)
			ok = mirror_status_transition_ok(mirror_status_parse(from),
											 mirror_status_parse(to), actor);
		else
			ok = mirror_phase_transition_ok(mirror_phase_parse(from),
											mirror_phase_parse(to), actor);
		if (!ok)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("bunnydb: invalid mirror %s transition from %s to %s by %s",
							columns[c], from, to,
							actor == ACTOR_WORKER ? "a worker" : "a SQL function"),
					 errdetail("The transitions a mirror may make are listed in state.c."),
					 errhint("This is a bug in bunnydb; please report it with the output of bunny.logs().")));
	}
	return PointerGetDatum(trigdata->tg_newtuple);
}
