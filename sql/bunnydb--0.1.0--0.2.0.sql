/*
 * bunnydb--0.1.0--0.2.0.sql
 *		Upgrade from 0.1.0: a failed mirror can be retried, paused and
 *		resumed while the operation it failed in (a resync, or the copy of
 *		tables update_tables added) is still pending; before, all three
 *		were refused with 55006 and only drop_mirror was left.
 */

\echo Use "ALTER EXTENSION bunnydb UPDATE TO '0.2.0'" to load this file. \quit

-- The status a failed or paused mirror goes back to: where its phase is,
-- or RESYNCING when it stopped in a resync (or a copy of tables added by
-- update_tables), which then goes on.
CREATE FUNCTION bunny._status_after_failure(m bunny.mirror) RETURNS text
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE
		WHEN m.phase = 'CDC' AND m.pending_op = 'resync' THEN 'RESYNCING'
		WHEN m.phase = 'CDC' THEN 'RUNNING'
		WHEN m.phase = 'SNAPSHOT' THEN 'SNAPSHOT'
		ELSE 'CREATED' END;
$$;
REVOKE ALL ON FUNCTION bunny._status_after_failure(bunny.mirror) FROM PUBLIC;

CREATE OR REPLACE FUNCTION bunny.pause_mirror(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m bunny.mirror;
BEGIN
	m := bunny._lock_mirror(pause_mirror.name);
	IF m.status IN ('PAUSED', 'PAUSING') THEN
		RETURN;					-- idempotent
	END IF;
	IF m.status = 'FAILED' THEN
		-- no worker runs for a failed mirror: pause at once.  An operation
		-- it failed in (a resync, a table added by update_tables) stays
		-- pending and goes on after bunny.resume_mirror().
		UPDATE bunny.mirror SET status = 'PAUSED', updated_at = now() WHERE id = m.id;
		PERFORM bunny._log(m.name, 'INFO', 'mirror paused');
	ELSE
		PERFORM bunny._check_no_pending(m);
		UPDATE bunny.mirror SET status = 'PAUSING', pending_op = 'pause', updated_at = now()
		 WHERE id = m.id;
		PERFORM bunny._log(m.name, 'INFO', 'pause requested');
	END IF;
	PERFORM bunny._notify(m.id);
END
$$;

CREATE OR REPLACE FUNCTION bunny.resume_mirror(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m bunny.mirror;
BEGIN
	m := bunny._lock_mirror(resume_mirror.name);
	IF m.status <> 'PAUSED' THEN
		PERFORM bunny._check_no_pending(m);
		RETURN;					-- not paused: nothing to resume
	END IF;
	-- a paused mirror's only pending operation is one it failed in
	UPDATE bunny.mirror
	   SET status = bunny._status_after_failure(m),
		   error_count = 0, updated_at = now()
	 WHERE id = m.id;
	PERFORM bunny._log(m.name, 'INFO', 'mirror resumed');
	PERFORM bunny._notify(m.id);
END
$$;

CREATE OR REPLACE FUNCTION bunny.retry_mirror(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m bunny.mirror;
BEGIN
	m := bunny._lock_mirror(retry_mirror.name);
	-- a failed mirror keeps the operation it failed in: retrying goes on with it
	IF m.status <> 'FAILED' THEN
		PERFORM bunny._check_no_pending(m);
	END IF;
	IF m.status = 'PAUSED' THEN
		RAISE EXCEPTION 'mirror "%" is paused', m.name
			USING ERRCODE = '55000', HINT = 'Use bunny.resume_mirror() to resume it.';
	END IF;
	IF m.status = 'FAILED' THEN
		UPDATE bunny.mirror
		   SET status = bunny._status_after_failure(m), updated_at = now()
		 WHERE id = m.id;
	END IF;
	PERFORM bunny._log(m.name, 'INFO', 'retry requested');
	PERFORM bunny._notify(m.id);
END
$$;
