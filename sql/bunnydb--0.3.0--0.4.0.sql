/*
 * bunnydb--0.3.0--0.4.0.sql
 *		Upgrade from 0.3.0.  Each change below has a section of its own,
 *		saying what it is for; test/t/019_upgrade.pl runs this script under
 *		a running mirror and compares the result with a fresh install.
 */

\echo Use "ALTER EXTENSION bunnydb UPDATE TO '0.4.0'" to load this file. \quit

-- ------------------------------------------------------------------------
-- Every operation can be cancelled: bunny.cancel_operation
-- ------------------------------------------------------------------------
-- A resync, or the copy of tables update_tables added, that fails again
-- and again could be paused, retried, replaced or dropped with the mirror,
-- but not called off: the mirror stayed RESYNCING until it went through.
-- bunny.cancel_operation(mirror) calls it off.  It stops the worker (whose
-- exit closes the connection holding the temporary slot, so the source
-- drops that slot, and makes the snapshot workers give up), drops the
-- half-built <table>_resync copies with the sequences they own, empties
-- the resync queue and the copy's parts, and sends the mirror back to what
-- it did before (RUNNING; a paused one stays PAUSED).  A table whose rows
-- the operation had not touched (swap, or a truncate not yet started) is
-- SYNCED again; a table it had already emptied or partly filled (truncate
-- or add, once copying) cannot go back and becomes STALE: its changes are
-- skipped (sync_lsn FFFFFFFF/FFFFFFFF) until a resync copies it again,
-- instead of failing on rows it lacks.  The alternative, refusing to
-- cancel such a resync, would leave a copy that keeps failing with no way
-- out but dropping the mirror.  A pause cannot be cancelled (it ends at the
-- next batch), nor the resync of a mirror whose slot was gone (it sets the
-- mirror up from scratch: there is nothing to go back to).
ALTER TABLE bunny.mirror_table DROP CONSTRAINT mirror_table_status_check;
ALTER TABLE bunny.mirror_table ADD CONSTRAINT mirror_table_status_check
	CHECK (status IN ('PENDING', 'SNAPSHOT', 'SYNCED', 'RESYNCING', 'STALE'));

CREATE FUNCTION bunny_impl.cancel_operation(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	-- the sync_lsn of a STALE table: every change is at or before it
	stale_lsn	CONSTANT pg_lsn := 'FFFFFFFF/FFFFFFFF';
	m			bunny.mirror;
	t			record;
	stale		boolean;
	n_synced	integer := 0;
	stale_list	text[] := '{}';
BEGIN
	m := bunny._lock_mirror(cancel_operation.name);
	IF m.status = 'PAUSING' THEN
		RAISE EXCEPTION 'the pause of mirror "%" cannot be cancelled', m.name
			USING ERRCODE = '55000',
				  DETAIL = 'The worker stops at the end of its current batch.',
				  HINT = format('Wait until the mirror is PAUSED, then call bunny.resume_mirror(%L).', m.name);
	END IF;
	IF m.pending_op = 'resync' AND m.phase <> 'CDC' THEN
		RAISE EXCEPTION 'the resync of mirror "%" cannot be cancelled', m.name
			USING ERRCODE = '55000',
				  DETAIL = 'Its replication slot was gone, so the mirror is set up again and every table copied from scratch: there is nothing to go back to.',
				  HINT = format('Pause it with bunny.pause_mirror(%L), or drop it with bunny.drop_mirror(%L).', m.name, m.name);
	END IF;
	IF NOT EXISTS (SELECT 1 FROM bunny.mirror_table mt
					WHERE mt.mirror_id = m.id AND mt.resync_state IS NOT NULL) THEN
		IF m.phase <> 'CDC' THEN
			RAISE EXCEPTION 'mirror "%" has no operation to cancel', m.name
				USING ERRCODE = '55000',
					  DETAIL = format('It is in its initial %s, which is not an operation.', lower(m.phase)),
					  HINT = format('Stop it with bunny.pause_mirror(%L), or drop it with bunny.drop_mirror(%L).', m.name, m.name);
		END IF;
		RAISE EXCEPTION 'mirror "%" has no operation to cancel', m.name
			USING ERRCODE = '55000',
				  DETAIL = format('Its status is %s and no table is being copied.', m.status),
				  HINT = 'What can be cancelled: resync_table, resync_mirror, and the copy of tables update_tables added.';
	END IF;

	-- The worker blocks on our row lock before it could start again, so
	-- once it is gone it stays gone until we commit; its exit ends the
	-- source connection holding the temporary slot, which the source then
	-- drops, and its snapshot workers give up.
	IF NOT bunny._stop_worker(m.id, 30000) THEN
		RAISE EXCEPTION 'could not stop the worker of mirror "%"', m.name
			USING ERRCODE = '55006', HINT = 'Try again.';
	END IF;

	FOR t IN SELECT mt.* FROM bunny.mirror_table mt
			  WHERE mt.mirror_id = m.id AND mt.resync_state IS NOT NULL
			  ORDER BY mt.source_schema, mt.source_table LOOP
		-- a swap's half-built copy, with the sequences its columns own
		IF t.copy_target_table IS NOT NULL THEN
			EXECUTE format('DROP TABLE IF EXISTS %I.%I', t.destination_schema, t.copy_target_table);
		END IF;
		-- rows already emptied or partly copied cannot come back; a swap
		-- never touched the table, which got every change meanwhile
		stale := coalesce(t.sync_lsn = stale_lsn, false) OR t.resync_strategy = 'add'
			OR (t.resync_strategy = 'truncate' AND t.resync_state = 'COPYING');
		UPDATE bunny.mirror_table mt
		   SET status = CASE WHEN stale THEN 'STALE' ELSE 'SYNCED' END,
			   resync_state = NULL, resync_strategy = NULL, copy_target_table = NULL,
			   resync_relation_msg = NULL, copy_done = false, copy_in_progress = false,
			   -- a swap's copy moved sync_lsn to its snapshot, and the old
			   -- table has every change up to where the stream restarts
			   sync_lsn = CASE WHEN stale THEN stale_lsn
							   WHEN t.resync_state = 'COPYING' THEN NULL
							   ELSE t.sync_lsn END,
			   error_message = CASE WHEN stale
									THEN 'not in sync: its copy was cancelled after it had started to replace the rows; changes are skipped until bunny.resync_table() copies it again'
							   END
		 WHERE mt.mirror_id = m.id AND mt.source_schema = t.source_schema
		   AND mt.source_table = t.source_table;
		DELETE FROM bunny.resync_queue q
		 WHERE q.mirror_id = m.id AND q.source_schema = t.source_schema
		   AND q.source_table = t.source_table;
		DELETE FROM bunny.snapshot_part p
		 WHERE p.mirror_id = m.id AND p.source_schema = t.source_schema
		   AND p.source_table = t.source_table;
		IF stale THEN
			stale_list := stale_list || format('%I.%I', t.source_schema, t.source_table);
		ELSE
			n_synced := n_synced + 1;
		END IF;
	END LOOP;

	UPDATE bunny.mirror
	   SET status = CASE WHEN status IN ('RESYNCING', 'FAILED') THEN 'RUNNING' ELSE status END,
		   pending_op = NULL, error_message = NULL, error_count = 0, updated_at = now()
	 WHERE id = m.id;
	PERFORM bunny._log(m.name, CASE WHEN cardinality(stale_list) > 0 THEN 'WARNING' ELSE 'INFO' END,
		format('operation cancelled: %s table(s) back in sync%s', n_synced,
			   CASE WHEN cardinality(stale_list) > 0
					THEN format('; %s stale until copied again with bunny.resync_table()',
								array_to_string(stale_list, ', '))
					ELSE '' END),
		jsonb_build_object('stale', to_jsonb(stale_list)));
	PERFORM bunny._notify(m.id);
END
$fn$;
REVOKE ALL ON FUNCTION bunny_impl.cancel_operation(text) FROM PUBLIC;

CREATE FUNCTION bunny.cancel_operation(name text) RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'bunny_api_call';
REVOKE ALL ON FUNCTION bunny.cancel_operation(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunny.cancel_operation(text) TO bunny_admin;

-- ------------------------------------------------------------------------
-- Control functions do not wait for a stuck worker
-- ------------------------------------------------------------------------
-- A worker holds its mirror's row while it starts or ends a copy, and if
-- it waits there for a lock someone holds on a destination table (a
-- session keeping ACCESS EXCLUSIVE on it), pause_mirror, cancel_operation
-- and drop_mirror waited behind it for as long.  bunny._lock_mirror now
-- waits a second for the row (a batch commit holds it for an instant),
-- then stops the worker, which is started again after the caller commits,
-- and takes the row.  Stopping a worker is what every crash does, and it
-- resumes from its last commit.  drop_mirror takes the row the same way.
CREATE OR REPLACE FUNCTION bunny._lock_mirror(p_name text) RETURNS bunny.mirror
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m		bunny.mirror;
	caller_timeout text := current_setting('lock_timeout');
	found_it	boolean := false;
BEGIN
	IF p_name IS NULL THEN
		RAISE EXCEPTION 'mirror name must not be null' USING ERRCODE = '22004';
	END IF;
	SELECT * INTO m FROM bunny.mirror WHERE name = p_name;
	IF FOUND THEN
		BEGIN
			PERFORM set_config('lock_timeout', '1s', true);
			SELECT * INTO m FROM bunny.mirror WHERE id = m.id FOR UPDATE;
			found_it := FOUND;
			PERFORM set_config('lock_timeout', caller_timeout, true);
		EXCEPTION WHEN lock_not_available THEN
			-- the setting went back with the subtransaction
			IF NOT bunny._stop_worker(m.id, 30000) THEN
				RAISE EXCEPTION 'could not stop the worker of mirror "%"', m.name
					USING ERRCODE = '55006', HINT = 'Try again.';
			END IF;
			SELECT * INTO m FROM bunny.mirror WHERE id = m.id FOR UPDATE;
			found_it := FOUND;
		END;
	END IF;
	IF NOT found_it THEN
		RAISE EXCEPTION 'mirror "%" does not exist', p_name USING ERRCODE = '42704';
	END IF;
	RETURN m;
END
$$;
REVOKE ALL ON FUNCTION bunny._lock_mirror(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION bunny_impl.drop_mirror(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	m		bunny.mirror;
	ci		text;
	t		record;
BEGIN
	-- waits for a running control operation rather than failing, and
	-- stops a worker that holds the row while it waits: dropping always wins
	m := bunny._lock_mirror(drop_mirror.name);

	-- The worker blocks on our row lock before it could start again, so
	-- once it is gone it stays gone until we commit.
	IF NOT bunny._stop_worker(m.id, 30000) THEN
		RAISE EXCEPTION 'could not stop the worker of mirror "%"', m.name
			USING ERRCODE = '55006', HINT = 'Try again.';
	END IF;

	SELECT p.conninfo INTO ci FROM bunny.peer p WHERE p.name = m.source_peer;
	BEGIN
		-- terminates the walsender still holding the slot, as setup does
		PERFORM bunny._source_drop_slot(ci, m.slot_name);
		PERFORM bunny._source_drop_publication(ci, m.publication_name);
	EXCEPTION WHEN OTHERS THEN
		RAISE WARNING 'could not drop replication slot % and publication % on the source: %',
			m.slot_name, m.publication_name, SQLERRM
			USING HINT = 'Drop them on the source by hand; an unused slot keeps WAL from being removed.';
	END;

	IF EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = m.origin_name) THEN
		PERFORM pg_replication_origin_drop(m.origin_name);
	END IF;
	-- the half-built copies of a swap under way (<table>_resync, with the
	-- sequences their columns own) are ours: nothing stays behind
	FOR t IN SELECT destination_schema, copy_target_table FROM bunny.mirror_table
			  WHERE mirror_id = m.id AND copy_target_table IS NOT NULL LOOP
		EXECUTE format('DROP TABLE IF EXISTS %I.%I', t.destination_schema, t.copy_target_table);
	END LOOP;
	DELETE FROM bunny.mirror WHERE id = m.id;
	PERFORM bunny._log(m.name, 'INFO', 'mirror dropped');
	PERFORM bunny._notify(m.id);
END
$fn$;

-- pause_mirror of a mirror in its initial setup or copy stops the worker
-- at once: there it has no batch boundary to stop at, and one retrying
-- setup or waiting for a copy stuck on a lock would leave the mirror
-- PAUSING for as long.  The worker, started again after the commit, turns
-- PAUSING into PAUSED first thing (the copy resumes after resume_mirror as
-- after a crash).  In CDC the worker still stops at its next batch.
CREATE OR REPLACE FUNCTION bunny_impl.pause_mirror(name text) RETURNS void
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
		-- a resync (perhaps one failing again and again) does not keep a
		-- pause out: the worker stops, and the resync goes on after resume
		IF m.pending_op IS DISTINCT FROM 'resync' THEN
			PERFORM bunny._check_no_pending(m);
		END IF;
		UPDATE bunny.mirror SET status = 'PAUSING', pending_op = 'pause', updated_at = now()
		 WHERE id = m.id;
		IF m.phase <> 'CDC' AND NOT bunny._stop_worker(m.id, 30000) THEN
			RAISE EXCEPTION 'could not stop the worker of mirror "%"', m.name
				USING ERRCODE = '55006', HINT = 'Try again.';
		END IF;
		PERFORM bunny._log(m.name, 'INFO', 'pause requested');
	END IF;
	PERFORM bunny._notify(m.id);
END
$$;
