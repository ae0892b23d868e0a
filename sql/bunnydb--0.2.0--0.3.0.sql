/*
 * bunnydb--0.2.0--0.3.0.sql
 *		Upgrade from 0.2.0: every change of a mirror's status or phase is
 *		checked against the transition table of state.c by a trigger, so
 *		that a transition nobody planned fails at once instead of leaving a
 *		mirror in a state without a way out.  The statuses that were
 *		documented but never set (SYNCING_SCHEMA and TERMINATING for a
 *		mirror, ERROR for a table) are gone from the catalog's checks.
 */

\echo Use "ALTER EXTENSION bunnydb UPDATE TO '0.3.0'" to load this file. \quit

CREATE FUNCTION bunny._mirror_state_guard() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'bunny_mirror_state_guard';
REVOKE ALL ON FUNCTION bunny._mirror_state_guard() FROM PUBLIC;

CREATE TRIGGER mirror_state_guard
	BEFORE UPDATE OF status, phase ON bunny.mirror
	FOR EACH ROW EXECUTE FUNCTION bunny._mirror_state_guard();

ALTER TABLE bunny.mirror DROP CONSTRAINT mirror_status_check;
ALTER TABLE bunny.mirror ADD CONSTRAINT mirror_status_check
	CHECK (status IN ('CREATED', 'SETUP', 'SNAPSHOT', 'RUNNING', 'PAUSING',
					  'PAUSED', 'RESYNCING', 'FAILED'));
ALTER TABLE bunny.mirror_table DROP CONSTRAINT mirror_table_status_check;
ALTER TABLE bunny.mirror_table ADD CONSTRAINT mirror_table_status_check
	CHECK (status IN ('PENDING', 'SNAPSHOT', 'SYNCED', 'RESYNCING'));
