/*
 * bunnydb--0.4.0--0.5.0.sql
 *		Upgrade from 0.4.0.  Each change below has a section of its own,
 *		saying what it is for; test/t/019_upgrade.pl runs this script under
 *		a running mirror and compares the result with a fresh install.
 */

\echo Use "ALTER EXTENSION bunnydb UPDATE TO '0.5.0'" to load this file. \quit

-- ------------------------------------------------------------------------
-- bunny.mirrors shows the options that differ from their defaults
-- ------------------------------------------------------------------------
-- bunny.mirrors.config listed all nine options of the mirror, some 300
-- characters, so that "\x" drew a rule that wide for every mirror.  The
-- view now has options instead: only the options a mirror was created
-- with other than their defaults, {} when there are none, as
-- pg_class.reloptions shows only the storage parameters that were set.
-- The column changes its name rather than its meaning, so that a script
-- reading config->>'max_batch_size' from the view fails at once instead
-- of reading NULL for an option left at its default.  Every value,
-- defaults included, stays in bunny.mirror_status() (key config) and in
-- the typed columns of bunny.mirror.
--
-- The defaults have one home: create_mirror's declaration, which \df
-- shows.  _mirror_option_defaults() reads them from there, so the view
-- and create_mirror cannot disagree; the other way round (create_mirror's
-- arguments defaulting to a function's result) would make \df show a
-- function call instead of the value.

-- create_mirror's option defaults, by name; evaluated from the default
-- expressions of its declaration (constants such as 1000 or
-- 'truncate'::text), which only its owner, the extension, can change
CREATE FUNCTION bunny._mirror_option_defaults() RETURNS jsonb
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	create_mirror CONSTANT regprocedure :=
		'bunny.create_mirror(text, text, jsonb, boolean, integer, integer, integer,'
		' integer, integer, boolean, boolean, text)';
	defaults	jsonb := '{}';
	arg			record;
	value		jsonb;
BEGIN
	FOR arg IN
		SELECT a.name, pg_get_function_arg_default(create_mirror, a.position::integer) AS expr
		  FROM pg_proc p, unnest(p.proargnames) WITH ORDINALITY a(name, position)
		 WHERE p.oid = create_mirror
		 ORDER BY a.position
	LOOP
		CONTINUE WHEN arg.expr IS NULL;
		EXECUTE 'SELECT to_jsonb(' || arg.expr || ')' INTO value;
		defaults := defaults || jsonb_build_object(arg.name, value);
	END LOOP;
	RETURN defaults;
END
$$;

-- the options of config whose value is not their default
CREATE FUNCTION bunny._mirror_options(config jsonb, defaults jsonb) RETURNS jsonb
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(jsonb_object_agg(o.key, o.value), '{}')
	  FROM jsonb_each(config) o
	 WHERE o.value IS DISTINCT FROM defaults -> o.key
$$;

REVOKE ALL ON FUNCTION bunny._mirror_option_defaults(), bunny._mirror_options(jsonb, jsonb)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunny._mirror_option_defaults(), bunny._mirror_options(jsonb, jsonb)
	TO bunny_monitor;

-- lag_seconds was 0 for a mirror that had not begun to stream (phases
-- SETUP and SNAPSHOT), however old the copy's snapshot: it is NULL now, as
-- lag_bytes already was, and the copy's progress is in
-- bunny.copy_progress.  mirror_overview says "down" only for a mirror in
-- phase CDC without a lag (without a worker); before CDC, the copy column
-- and state_detail say what is going on.
--
-- bunny.mirror_overview reads bunny.mirrors: both are made again, as 0.4.0
-- made them but for options and lag_seconds
DROP VIEW bunny.mirror_overview;
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
		   CASE WHEN w.mirror_id IS NULL OR m.phase <> 'CDC' THEN NULL
				WHEN w.oldest_pending_commit IS NOT NULL
				THEN greatest(extract(epoch FROM clock_timestamp() - w.oldest_pending_commit), 0)::double precision
				WHEN w.behind_since IS NOT NULL
					 AND w.source_lsn > greatest(o.remote_lsn, w.processed_lsn)
				THEN greatest(extract(epoch FROM clock_timestamp() - w.behind_since), 0)::double precision
				ELSE 0::double precision
		   END AS lag_seconds,
		   m.total_rows_synced, m.last_sync_time, m.error_message, m.error_count,
		   bunny._mirror_options(m.config, (SELECT bunny._mirror_option_defaults())) AS options,
		   m.created_at,
		   (SELECT coalesce(sum(t.rows_snapshotted), 0)::bigint FROM bunny.mirror_table t
			 WHERE t.mirror_id = m.id) AS rows_copied
	  FROM bunny.mirror m
	  LEFT JOIN bunny._origin_progress() o ON o.origin_name = m.origin_name
	  LEFT JOIN bunny._worker_stats() w ON w.mirror_id = m.id;
GRANT SELECT ON bunny.mirrors TO bunny_monitor;

CREATE VIEW bunny.mirror_overview AS
	WITH o AS (
		SELECT CASE WHEN length(v.name) > 15 THEN left(v.name, 14) || '~' ELSE v.name END AS mirror,
			   v.status, v.phase,
			   CASE WHEN v.status = 'FAILED' THEN 'failed'
					WHEN v.status IN ('PAUSED', 'PAUSING') THEN 'paused'
					WHEN NOT v.healthy THEN 'error'
					WHEN v.lag_seconds IS NULL AND v.phase = 'CDC' THEN 'down'
					WHEN v.lag_seconds > 60 THEN 'behind'
					ELSE 'ok' END AS health,
			   bunny._short_duration(v.lag_seconds) AS lag,
			   floor(c.percent)::int || '%' || coalesce(' ' || bunny._short_duration(extract(epoch FROM c.eta)), '')
				 AS copy,
			   regexp_replace(v.error_message, '\s+', ' ', 'g') AS error
		  FROM bunny.mirrors v
		  LEFT JOIN bunny.mirror_copy_progress c ON c.mirror = v.name
	), room AS (
		-- psql's aligned format: " a | b | ... | g": 2 + 6 * 3 characters
		-- around the columns, each as wide as its header or widest value
		SELECT 80 - 20
			   - greatest(6, max(length(mirror))) - greatest(6, max(length(status)))
			   - greatest(5, max(length(phase))) - greatest(6, max(length(health)))
			   - greatest(3, coalesce(max(length(lag)), 0))
			   - greatest(4, coalesce(max(length(copy)), 0)) AS width
		  FROM o
	)
	SELECT o.mirror, o.status, o.phase, o.health, o.lag, o.copy,
		   CASE WHEN length(o.error) <= room.width THEN o.error
				ELSE left(o.error, greatest(room.width, 5) - 3) || '...' END AS error
	  FROM o, room
	 ORDER BY o.mirror;

GRANT SELECT ON bunny.mirror_overview TO bunny_monitor;

-- mirror_status() is the view's row as jsonb: it keeps config, with every
-- value, for the programs that read it
CREATE OR REPLACE FUNCTION bunny.mirror_status(name text) RETURNS jsonb
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result jsonb;
BEGIN
	SELECT to_jsonb(v) || jsonb_build_object('config', m.config) INTO result
	  FROM bunny.mirrors v JOIN bunny.mirror m ON m.name = v.name
	 WHERE v.name = mirror_status.name;
	IF result IS NULL THEN
		RAISE EXCEPTION 'mirror "%" does not exist', mirror_status.name USING ERRCODE = '42704';
	END IF;
	RETURN result || jsonb_build_object(
		'tables', coalesce((SELECT jsonb_agg(to_jsonb(t) - 'mirror' ORDER BY t.source_table)
							  FROM bunny.mirror_tables t WHERE t.mirror = mirror_status.name), '[]'),
		'recent_errors', coalesce((SELECT jsonb_agg(jsonb_build_object('message', l.message,
																	  'details', l.details,
																	  'created_at', l.created_at))
									 FROM bunny.logs(mirror_status.name, 'ERROR', NULL, 5, 0) l), '[]'));
END
$$;
