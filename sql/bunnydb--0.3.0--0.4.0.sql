/*
 * bunnydb--0.3.0--0.4.0.sql
 *		Upgrade from 0.3.0.  Each change below has a section of its own,
 *		saying what it is for; test/t/019_upgrade.pl runs this script under
 *		a running mirror and compares the result with a fresh install.
 */

\echo Use "ALTER EXTENSION bunnydb UPDATE TO '0.4.0'" to load this file. \quit

-- ------------------------------------------------------------------------
-- Honest state: healthy and state_detail in bunny.mirrors; tables' errors
-- ------------------------------------------------------------------------
-- A mirror whose worker fails again and again kept its status (RUNNING,
-- say), which told nothing of the loop.  bunny.mirrors now says at one
-- glance whether a mirror is well (healthy: not FAILED, no current error)
-- and what its worker is doing (state_detail: 'streaming', 'copying',
-- 'retrying in 8 s after 3 failures', 'waiting for a worker slot',
-- 'paused' ...).  The retry time is worked out as the launcher does
-- (launcher.c, backoff_ms) from the last error, the failures counted since
-- and the backoff settings (in milliseconds, as pg_settings has them), so
-- that the view asks nothing of shared memory beyond what
-- bunny._worker_stats() already gives.
--
-- An error that names a table (its context does) is also that table's
-- error_message in bunny.mirror_tables; whoever clears the mirror's error
-- (a committed batch, the next run once the error is over), clears the
-- tables' with it, by the trigger below.  Workers apply with
-- session_replication_role = replica, so it fires ALWAYS.

CREATE FUNCTION bunny._mirror_error_cleared() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE bunny.mirror_table SET error_message = NULL
	 WHERE mirror_id = NEW.id AND error_message IS NOT NULL;
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION bunny._mirror_error_cleared() FROM PUBLIC;

CREATE TRIGGER mirror_error_cleared
	AFTER UPDATE OF error_message ON bunny.mirror
	FOR EACH ROW WHEN (OLD.error_message IS NOT NULL AND NEW.error_message IS NULL)
	EXECUTE FUNCTION bunny._mirror_error_cleared();
ALTER TABLE bunny.mirror ENABLE ALWAYS TRIGGER mirror_error_cleared;

-- what a mirror's worker is doing, in a few words
CREATE FUNCTION bunny._state_detail(status text, error_count integer, last_error_at timestamptz,
									worker_pid integer, tables_copying bigint)
	RETURNS text
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE
		WHEN status = 'FAILED' THEN 'failed: fix the cause, then call bunny.retry_mirror()'
		WHEN status = 'PAUSED' THEN 'paused'
		WHEN status = 'PAUSING' THEN 'pausing after the current batch'
		WHEN worker_pid IS NULL AND error_count > 0
		THEN CASE WHEN retry_at > clock_timestamp()
				  THEN format('retrying in %s s', ceil(extract(epoch FROM retry_at - clock_timestamp())))
				  ELSE 'retrying now' END
			 || CASE WHEN error_count = 1 THEN ' after 1 failure'
					 ELSE format(' after %s failures', error_count) END
		WHEN worker_pid IS NULL THEN 'waiting for a worker slot'
		ELSE CASE status
				WHEN 'CREATED' THEN 'starting'
				WHEN 'SETUP' THEN 'setting up'
				WHEN 'SNAPSHOT' THEN 'copying'
				WHEN 'RESYNCING' THEN format('streaming; copying %s table%s', tables_copying,
											 CASE WHEN tables_copying = 1 THEN '' ELSE 's' END)
				ELSE 'streaming' END
			 || CASE WHEN error_count = 1 THEN ', trying again after 1 failure'
					 WHEN error_count > 1 THEN format(', trying again after %s failures', error_count)
					 ELSE '' END
	END
	  FROM (SELECT last_error_at
				   + least(coalesce(b.min_ms, 1000) * power(2, least(greatest(error_count - 1, 0), 30)),
						   coalesce(b.max_ms, 60000)) * interval '1 ms' AS retry_at
			  FROM (SELECT (SELECT s.setting::integer FROM pg_settings s
							 WHERE s.name = 'bunny.retry_backoff_min') AS min_ms,
						   (SELECT s.setting::integer FROM pg_settings s
							 WHERE s.name = 'bunny.retry_backoff_max') AS max_ms) b) r
$$;
REVOKE ALL ON FUNCTION bunny._state_detail(text, integer, timestamptz, integer, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunny._state_detail(text, integer, timestamptz, integer, bigint)
	TO bunny_monitor;

DROP VIEW bunny.mirrors;
CREATE VIEW bunny.mirrors AS
	SELECT m.name, m.source_peer, m.status, m.phase,
		   (m.status <> 'FAILED' AND m.error_count = 0 AND m.error_message IS NULL) AS healthy,
		   bunny._state_detail(m.status, m.error_count, m.last_error_at, w.pid,
							   (SELECT count(*) FROM bunny.mirror_table t
								 WHERE t.mirror_id = m.id AND t.resync_state IS NOT NULL)) AS state_detail,
		   m.slot_name, m.publication_name,
		   nullif(o.remote_lsn, '0/0'::pg_lsn) AS last_lsn,
		   CASE WHEN w.source_lsn IS NULL OR o.remote_lsn IS NULL THEN NULL
				ELSE greatest(w.source_lsn - greatest(o.remote_lsn, w.processed_lsn), 0)::bigint
		   END AS lag_bytes,
		   CASE WHEN w.mirror_id IS NULL THEN NULL
				WHEN w.oldest_pending_commit IS NOT NULL
				THEN greatest(extract(epoch FROM clock_timestamp() - w.oldest_pending_commit), 0)::double precision
				WHEN w.behind_since IS NOT NULL
					 AND w.source_lsn > greatest(o.remote_lsn, w.processed_lsn)
				THEN greatest(extract(epoch FROM clock_timestamp() - w.behind_since), 0)::double precision
				ELSE 0::double precision
		   END AS lag_seconds,
		   m.total_rows_synced, m.last_sync_time, m.error_message, m.error_count,
		   m.config, m.created_at,
		   (SELECT coalesce(sum(t.rows_snapshotted), 0)::bigint FROM bunny.mirror_table t
			 WHERE t.mirror_id = m.id) AS rows_copied
	  FROM bunny.mirror m
	  LEFT JOIN bunny._origin_progress() o ON o.origin_name = m.origin_name
	  LEFT JOIN bunny._worker_stats() w ON w.mirror_id = m.id;
GRANT SELECT ON bunny.mirrors TO bunny_monitor;
