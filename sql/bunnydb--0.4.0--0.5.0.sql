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
-- A mirror whose worker waits for a lock (a reader's on the table a
-- resync truncates or swaps, say) applies nothing meanwhile, for any of
-- its tables; it said "streaming" with lag 0 and health ok.  state_detail
-- now says "waiting 12 s for a lock held by process 4242", and the
-- overview's health is "blocked" after 10 s of it.  bunny.mirrors gets
-- worker_pid, for pg_stat_activity and pg_locks.
--
-- A STALE table (its copy was cancelled after it had started to replace
-- rows; its changes are skipped) is not in sync with the source: its
-- mirror is not healthy, state_detail counts such tables, and the
-- overview's health says "stale".
--
-- "retrying in N s" counted from the catalog's error count, which the
-- launcher's backoff no longer follows after alter_peer or retry_mirror,
-- with the backoff settings read from pg_settings (a scan of every
-- setting, twice per mirror); the launcher's own next start time
-- (_worker_stats().next_start) is used now.

-- what a mirror's worker is doing, in a few words
CREATE FUNCTION bunny._state_detail(status text, error_count integer, last_error_at timestamptz,
									worker_pid integer, next_start timestamptz,
									tables_copying bigint, tables_stale bigint,
									lock_wait_since timestamptz, lock_holders integer[])
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
			 || CASE WHEN lock_wait_since IS NOT NULL
					 THEN format('; waiting %s s for a lock held by process %s',
								 floor(extract(epoch FROM clock_timestamp() - lock_wait_since)),
								 coalesce(array_to_string(lock_holders, ', '), '?'))
					 ELSE '' END
			 || CASE WHEN error_count = 1 THEN ', trying again after 1 failure'
					 WHEN error_count > 1 THEN format(', trying again after %s failures', error_count)
					 ELSE '' END
	END
	|| CASE WHEN tables_stale = 1 THEN '; 1 table STALE (not in sync: resync it)'
			WHEN tables_stale > 1 THEN format('; %s tables STALE (not in sync: resync them)', tables_stale)
			ELSE '' END
	  -- the launcher's own time for the next start; without it (a launcher
	  -- that restarted has not decided yet) the retry is as good as now
	  FROM (SELECT next_start AS retry_at) r
$$;
REVOKE ALL ON FUNCTION bunny._state_detail(text, integer, timestamptz, integer, timestamptz,
										   bigint, bigint, timestamptz, integer[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunny._state_detail(text, integer, timestamptz, integer, timestamptz,
											  bigint, bigint, timestamptz, integer[])
	TO bunny_monitor;

-- bunny.mirror_overview reads bunny.mirrors, which reads _worker_stats():
-- all three are made again
DROP VIEW bunny.mirror_overview;
DROP VIEW bunny.mirrors;
DROP FUNCTION bunny._state_detail(text, integer, timestamptz, integer, bigint);
DROP FUNCTION bunny._worker_stats();

-- live figures the workers keep in shared memory, for this database, and
-- when the launcher starts a mirror's next worker while none runs
CREATE FUNCTION bunny._worker_stats(
	OUT mirror_id integer, OUT pid integer, OUT source_lsn pg_lsn,
	OUT processed_lsn pg_lsn, OUT oldest_pending_commit timestamptz,
	OUT last_commit_time timestamptz, OUT behind_since timestamptz,
	OUT next_start timestamptz)
	RETURNS SETOF record
	LANGUAGE c ROWS 10 AS 'MODULE_PATHNAME', 'bunny_worker_stats';
REVOKE ALL ON FUNCTION bunny._worker_stats() FROM PUBLIC;

-- A row per running worker, origin or copy part, not the planner's default
-- of 1 000 for a set-returning function: with that default, a query
-- reading bunny.mirror_overview twice cost some 110 000 and was compiled
-- by JIT on every execution (120 ms); 3 000 with these.
ALTER FUNCTION bunny._origin_progress() ROWS 10;
ALTER FUNCTION bunny._copy_progress_live() ROWS 10;
GRANT EXECUTE ON FUNCTION bunny._worker_stats() TO bunny_monitor;

-- the lock a process waits for, if any: since when (waitstart is set a
-- moment after the wait begins: until then, now) and who holds it; what
-- bunny.mirrors and bunny.mirror_overview both say of a worker
CREATE FUNCTION bunny._lock_wait(pid integer, OUT since timestamptz, OUT holders integer[])
	RETURNS SETOF record
	LANGUAGE sql STABLE ROWS 1
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(min(l.waitstart), clock_timestamp()), pg_blocking_pids(_lock_wait.pid)
	  FROM pg_locks l
	 WHERE l.pid = _lock_wait.pid AND NOT l.granted
	HAVING count(*) > 0
$$;
REVOKE ALL ON FUNCTION bunny._lock_wait(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunny._lock_wait(integer) TO bunny_monitor;

CREATE VIEW bunny.mirrors AS
	SELECT m.name, m.source_peer, m.status, m.phase,
		   (m.status <> 'FAILED' AND m.error_count = 0 AND m.error_message IS NULL
			AND t.stale = 0) AS healthy,
		   bunny._state_detail(m.status, m.error_count, m.last_error_at, w.pid, w.next_start,
							   t.copying, t.stale, lw.since, lw.holders) AS state_detail,
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
		   m.created_at, t.rows_copied, w.pid AS worker_pid
	  FROM bunny.mirror m
	  LEFT JOIN bunny._origin_progress() o ON o.origin_name = m.origin_name
	  LEFT JOIN bunny._worker_stats() w ON w.mirror_id = m.id
	  CROSS JOIN LATERAL (
		SELECT coalesce(sum(t.rows_snapshotted), 0)::bigint AS rows_copied,
			   count(*) FILTER (WHERE t.resync_state IS NOT NULL) AS copying,
			   count(*) FILTER (WHERE t.status = 'STALE') AS stale
		  FROM bunny.mirror_table t WHERE t.mirror_id = m.id) t
	  LEFT JOIN LATERAL bunny._lock_wait(w.pid) lw ON true;
GRANT SELECT ON bunny.mirrors TO bunny_monitor;

CREATE VIEW bunny.mirror_overview AS
	WITH o AS (
		SELECT CASE WHEN length(v.name) > 15 THEN left(v.name, 14) || '~' ELSE v.name END AS mirror,
			   v.status, v.phase,
			   CASE WHEN v.status = 'FAILED' THEN 'failed'
					WHEN v.status IN ('PAUSED', 'PAUSING') THEN 'paused'
					WHEN v.error_count > 0 OR v.error_message IS NOT NULL THEN 'error'
					WHEN NOT v.healthy THEN 'stale'
					WHEN lw.since < clock_timestamp() - interval '10 s' THEN 'blocked'
					WHEN v.lag_seconds IS NULL AND v.phase = 'CDC' THEN 'down'
					WHEN v.lag_seconds > 60 THEN 'behind'
					ELSE 'ok' END AS health,
			   bunny._short_duration(v.lag_seconds) AS lag,
			   floor(c.percent)::int || '%' || coalesce(' ' || bunny._short_duration(extract(epoch FROM c.eta)), '')
				 AS copy,
			   coalesce(regexp_replace(v.error_message, '\s+', ' ', 'g'),
						CASE WHEN NOT v.healthy AND v.status <> 'FAILED'
							 THEN (SELECT format('%s table%s STALE', count(*),
												 CASE WHEN count(*) = 1 THEN '' ELSE 's' END)
									 FROM bunny.mirror_table t JOIN bunny.mirror m ON m.id = t.mirror_id
									WHERE m.name = v.name AND t.status = 'STALE')
							 WHEN lw.since IS NOT NULL
							 THEN format('waiting %s for a lock held by process %s',
										 bunny._short_duration(extract(epoch FROM clock_timestamp() - lw.since)),
										 coalesce(array_to_string(lw.holders, ', '), '?')) END) AS error
		  FROM bunny.mirrors v
		  LEFT JOIN bunny.mirror_copy_progress c ON c.mirror = v.name
		  LEFT JOIN LATERAL bunny._lock_wait(v.worker_pid) lw ON true
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

-- ------------------------------------------------------------------------
-- The set-returning API functions raise their errors without CONTEXT too
-- ------------------------------------------------------------------------
-- 0.3.0 made the API functions that return one value C entry points that
-- call their PL/pgSQL body in bunny_impl and drop the CONTEXT lines of its
-- error (api.c).  logs, peer_tables, test_peer and sync_sequences return
-- sets and were left out, on the belief that an error raised at the top
-- level of a PL/pgSQL function has no context; it has one line, and
-- sync_sequences' "another operation is already in progress" had three.
-- The same entry point serves them now: it hands the body the caller's
-- result set description, which PL/pgSQL fills in materialize mode.
--
-- logs() of a name that is no mirror and has no log lines (a typing
-- error, most likely) says so with 42704, as every other function does,
-- instead of an empty result that reads as "no errors"; a dropped mirror's
-- lines stay readable under its name.
CREATE OR REPLACE FUNCTION bunny.logs(name text, level text DEFAULT NULL, search text DEFAULT NULL,
									  "limit" integer DEFAULT 50, "offset" integer DEFAULT 0)
	RETURNS SETOF bunny.mirror_logs
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	levels	CONSTANT text[] := ARRAY['DEBUG', 'INFO', 'WARNING', 'ERROR'];
	least_level integer := array_position(levels, upper(coalesce(logs.level, 'INFO')));
BEGIN
	IF least_level IS NULL THEN
		RAISE EXCEPTION 'invalid log level "%"', logs.level
			USING ERRCODE = '22023', HINT = 'Use DEBUG, INFO, WARNING or ERROR.';
	END IF;
	IF coalesce("limit", 0) < 0 OR coalesce("offset", 0) < 0 THEN
		RAISE EXCEPTION 'limit and offset must not be negative' USING ERRCODE = '22023';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM bunny.mirror m WHERE m.name = logs.name)
	   AND NOT EXISTS (SELECT 1 FROM bunny.mirror_logs l WHERE l.mirror = logs.name) THEN
		RAISE EXCEPTION 'mirror "%" does not exist', logs.name
			USING ERRCODE = '42704',
				  HINT = 'bunny.mirrors lists the mirrors; the log of a dropped mirror stays readable under its name.';
	END IF;
	RETURN QUERY
	SELECT l.* FROM bunny.mirror_logs l
	 WHERE l.mirror = logs.name
	   AND array_position(levels, l.level) >= least_level
	   AND (logs.search IS NULL
			OR l.message ILIKE '%' || logs.search || '%'
			OR l.details::text ILIKE '%' || logs.search || '%')
	 ORDER BY l.created_at DESC, l.id DESC
	 LIMIT coalesce("limit", 50) OFFSET coalesce("offset", 0);
END
$$;

DO $do$
DECLARE
	f		record;
	g		record;
	who		text;
BEGIN
	FOR f IN
		SELECT p.proname, pg_get_function_arguments(p.oid) AS args,
			   pg_get_function_identity_arguments(p.oid) AS idargs,
			   pg_get_function_result(p.oid) AS result,
			   CASE p.provolatile WHEN 's' THEN 'STABLE' ELSE 'VOLATILE' END AS volatility,
			   coalesce(p.proacl, acldefault('f', p.proowner)) AS acl
		  FROM pg_proc p
		 WHERE p.pronamespace = 'bunny'::regnamespace
		   AND p.proname IN ('logs', 'peer_tables', 'test_peer', 'sync_sequences')
	LOOP
		EXECUTE format('ALTER FUNCTION bunny.%I(%s) SET SCHEMA bunny_impl', f.proname, f.idargs);
		EXECUTE format('CREATE FUNCTION bunny.%I(%s) RETURNS %s LANGUAGE c %s AS %L, %L',
					   f.proname, f.args, f.result, f.volatility,
					   'MODULE_PATHNAME', 'bunny_api_call');
		EXECUTE format('REVOKE ALL ON FUNCTION bunny.%I(%s) FROM PUBLIC', f.proname, f.idargs);
		FOR g IN SELECT a.grantee FROM aclexplode(f.acl) a
				  WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> a.grantor LOOP
			who := CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END;
			EXECUTE format('GRANT EXECUTE ON FUNCTION bunny.%I(%s) TO %s', f.proname, f.idargs, who);
			EXECUTE format('REVOKE EXECUTE ON FUNCTION bunny_impl.%I(%s) FROM %s', f.proname, f.idargs, who);
		END LOOP;
	END LOOP;
END
$do$;

-- "another operation is already in progress" says how to get out of it
CREATE OR REPLACE FUNCTION bunny._check_no_pending(m bunny.mirror) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF m.pending_op IS NOT NULL THEN
		RAISE EXCEPTION 'another operation is already in progress'
			USING ERRCODE = '55006', DETAIL = format('Operation in progress: %s.', m.pending_op),
				  HINT = CASE WHEN m.pending_op = 'resync'
							  THEN format('Wait until it is done (bunny.copy_progress shows how far it is), or call it off with bunny.cancel_operation(%L).', m.name)
							  ELSE 'Wait until it is done (bunny.mirrors.state_detail says what the mirror is doing), then try again.' END;
	END IF;
END
$$;

-- ------------------------------------------------------------------------
-- update_tables refuses while a paused mirror has a resync to finish
-- ------------------------------------------------------------------------
-- A resync failing again and again, then pause_mirror, then update_tables
-- without the table being resynced: it was accepted, the table left the
-- mirror with the log saying its destination table "stays", and that
-- table stayed empty (the truncate resync had emptied it) with nothing left
-- to say so.  Like every operation while another is in progress, it is
-- refused now with 55006, and the hint names the two ways on.  A STALE
-- table may still be removed (one way out of STALE), with a WARNING that
-- its destination table is not in sync.
CREATE OR REPLACE FUNCTION bunny_impl.update_tables(name text, table_mappings jsonb) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m		bunny.mirror;
	r		record;
	added	integer := 0;
	removed	integer := 0;
	resyncing text;
BEGIN
	m := bunny._lock_mirror(update_tables.name);
	PERFORM bunny._check_no_pending(m);
	IF m.status <> 'PAUSED' THEN
		RAISE EXCEPTION 'mirror must be paused to update tables'
			USING ERRCODE = '55000', HINT = format('Call bunny.pause_mirror(%L) first.', m.name);
	END IF;
	IF m.phase = 'SNAPSHOT' THEN
		RAISE EXCEPTION 'mirror "%" has not finished its initial copy', m.name
			USING ERRCODE = '55000',
				  HINT = format('Resume it with bunny.resume_mirror(%L) and wait until the initial copy has finished (phase CDC), or drop the mirror and create it again with the new tables.',
								m.name);
	END IF;

	-- a resync the pause interrupted is an operation in progress too; a
	-- table it removed would stay behind half copied, with nothing to say so
	SELECT string_agg(format('%I.%I', t.source_schema, t.source_table), ', '
					  ORDER BY t.source_schema, t.source_table)
	  INTO resyncing
	  FROM bunny.mirror_table t
	 WHERE t.mirror_id = m.id AND (t.resync_state IS NOT NULL OR t.status = 'RESYNCING');
	IF resyncing IS NOT NULL THEN
		RAISE EXCEPTION 'another operation is already in progress'
			USING ERRCODE = '55006',
				  DETAIL = format('Operation in progress: resync of %s (paused).', resyncing),
				  HINT = format('Resume the mirror with bunny.resume_mirror(%L) and let the resync finish, or call it off with bunny.cancel_operation(%L), then update the tables.',
								m.name, m.name);
	END IF;

	CREATE TEMP TABLE bunny_new_mappings ON COMMIT DROP AS
		SELECT * FROM bunny._parse_mappings(table_mappings, m.id);

	-- a kept table must keep its mapping
	FOR r IN SELECT n.*, t.destination_schema AS old_ds, t.destination_table AS old_dt,
					t.exclude_columns AS old_ex, t.partition_key AS old_pk
			   FROM bunny_new_mappings n
			   JOIN bunny.mirror_table t
				 ON t.mirror_id = m.id AND t.source_schema = n.source_schema
				AND t.source_table = n.source_table LOOP
		IF (r.destination_schema, r.destination_table) IS DISTINCT FROM (r.old_ds, r.old_dt)
		   OR r.exclude_columns IS DISTINCT FROM r.old_ex THEN
			RAISE EXCEPTION 'the mapping of table %.% cannot change', quote_ident(r.source_schema),
				quote_ident(r.source_table)
				USING ERRCODE = '22023',
					  HINT = 'Remove the table with one update_tables call and add it back with another.';
		END IF;
		UPDATE bunny.mirror_table SET partition_key = r.partition_key
		 WHERE mirror_id = m.id AND source_schema = r.source_schema AND source_table = r.source_table;
	END LOOP;

	FOR r IN SELECT t.* FROM bunny.mirror_table t
			  WHERE t.mirror_id = m.id
				AND NOT EXISTS (SELECT 1 FROM bunny_new_mappings n
								 WHERE n.source_schema = t.source_schema
								   AND n.source_table = t.source_table) LOOP
		DELETE FROM bunny.mirror_table
		 WHERE mirror_id = m.id AND source_schema = r.source_schema AND source_table = r.source_table;
		removed := removed + 1;
		PERFORM bunny._log(m.name, CASE WHEN r.status = 'STALE' THEN 'WARNING' ELSE 'INFO' END,
			CASE WHEN r.status = 'STALE'
				 THEN format('table %I.%I removed from the mirror; destination table %I.%I stays, not in sync with the source (it was STALE)',
							 r.source_schema, r.source_table, r.destination_schema, r.destination_table)
				 WHEN m.phase = 'CDC' OR r.created_by_bunny
				 THEN format('table %I.%I removed from the mirror; destination table %I.%I stays',
							 r.source_schema, r.source_table, r.destination_schema, r.destination_table)
				 ELSE format('table %I.%I removed from the mirror', r.source_schema, r.source_table) END);
	END LOOP;

	FOR r IN SELECT n.* FROM bunny_new_mappings n
			  WHERE NOT EXISTS (SELECT 1 FROM bunny.mirror_table t
								 WHERE t.mirror_id = m.id AND t.source_schema = n.source_schema
								   AND t.source_table = n.source_table) LOOP
		INSERT INTO bunny.mirror_table (mirror_id, source_schema, source_table, destination_schema,
										destination_table, partition_key, exclude_columns, status)
		VALUES (m.id, r.source_schema, r.source_table, r.destination_schema, r.destination_table,
				r.partition_key, r.exclude_columns, 'PENDING');
		added := added + 1;
		PERFORM bunny._log(m.name, 'INFO',
			format(CASE WHEN m.phase = 'CDC'
						THEN 'table %I.%I added to the mirror; it is copied when the mirror resumes'
						ELSE 'table %I.%I added to the mirror; it is set up when the mirror resumes' END,
				   r.source_schema, r.source_table));
	END LOOP;

	IF added > 0 OR removed > 0 THEN
		UPDATE bunny.mirror SET publication_dirty = publication_dirty OR m.phase = 'CDC',
			   updated_at = now()
		 WHERE id = m.id;
	END IF;
	IF added > 0 THEN
		-- refuse now, with nothing changed, what setup would refuse
		PERFORM bunny._check_source_tables(m.id);
		PERFORM bunny._check_destinations_empty(m.id, false);
	END IF;
	DROP TABLE bunny_new_mappings;
	PERFORM bunny._notify(m.id);
END
$$;

-- ------------------------------------------------------------------------
-- drop_mirror with the source down: the hint gives the statements
-- ------------------------------------------------------------------------
-- It said "drop them on the source by hand"; the statements, with the
-- names filled in, save looking them up, and a mirror created again with
-- the same name fails until both are gone.
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
			USING HINT = format('Run on the source: SELECT pg_drop_replication_slot(%L); DROP PUBLICATION IF EXISTS %I; An unused slot keeps WAL from being removed, and a new mirror of the same name needs both names free.',
								m.slot_name, m.publication_name);
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

-- ------------------------------------------------------------------------
-- resync_table of a table the mirror does not have: the hint lists its tables
-- ------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION bunny_impl.resync_table(name text, table_name text, strategy text DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m		bunny.mirror;
	parts	record;
	src		text;
BEGIN
	m := bunny._lock_mirror(resync_table.name);
	IF table_name IS NULL THEN
		RAISE EXCEPTION 'table_name must not be null' USING ERRCODE = '22004';
	END IF;
	IF strategy IS NOT NULL THEN
		PERFORM bunny._check_strategy(strategy);
	END IF;
	parts := bunny._parse_table_name(table_name);
	SELECT format('%I.%I', t.source_schema, t.source_table) INTO src
	  FROM bunny.mirror_table t
	 WHERE t.mirror_id = m.id
	   AND ((t.source_schema, t.source_table) = (parts.schema_name, parts.table_name)
			OR (t.destination_schema, t.destination_table) = (parts.schema_name, parts.table_name))
	 ORDER BY (t.source_schema, t.source_table) = (parts.schema_name, parts.table_name) DESC
	 LIMIT 1;
	IF src IS NULL THEN
		RAISE EXCEPTION 'table % is not part of mirror "%"', table_name, m.name
			USING ERRCODE = '42704',
				  HINT = format('Its tables, by source name (an unqualified name means public): %s.',
								(SELECT string_agg(x.n, ', ' ORDER BY x.n)
										|| CASE WHEN (SELECT count(*) FROM bunny.mirror_table t
													   WHERE t.mirror_id = m.id) > 10
												THEN ', ...' ELSE '' END
								   FROM (SELECT format('%I.%I', t.source_schema, t.source_table) AS n
										   FROM bunny.mirror_table t WHERE t.mirror_id = m.id
										  ORDER BY 1 LIMIT 10) x));
	END IF;
	PERFORM bunny._request_resync(m, jsonb_build_array(src), strategy);
END
$$;

-- ------------------------------------------------------------------------
-- A destination table with rows is refused when the mapping is made
-- ------------------------------------------------------------------------
-- The initial copy, and the copy of a table update_tables adds, never
-- overwrite existing rows: a destination table that has some made the
-- worker fail with "destination table ... is not empty" after
-- create_mirror, or after resume_mirror had followed update_tables, and
-- the user learned of it from a FAILED mirror.  create_mirror (with
-- do_initial_snapshot) and update_tables now refuse such a mapping
-- themselves, with nothing created or changed.  The worker keeps its own
-- check: rows may arrive between the call and the copy.

-- the tables of the mirror still to be copied (PENDING) whose destination
-- table exists and has rows: 55000 for the first one
CREATE FUNCTION bunny._check_destinations_empty(p_mirror_id integer, p_at_create boolean)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t		record;
	has_rows boolean;
BEGIN
	-- by name, through pg_class's index: most destination tables do not
	-- exist yet, and only those that do are read
	FOR t IN SELECT format('%I.%I', mt.destination_schema, mt.destination_table) AS dest,
					format('%I.%I', mt.source_schema, mt.source_table) AS src
			   FROM bunny.mirror_table mt
			   JOIN pg_namespace n ON n.nspname = mt.destination_schema
			   JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = mt.destination_table
			  WHERE mt.mirror_id = p_mirror_id AND mt.status = 'PENDING'
			  ORDER BY 1 LOOP
		-- a table someone holds a lock on is left to the worker's own check
		-- rather than making the caller wait for that lock
		BEGIN
			EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE NOWAIT', t.dest);
			EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', t.dest) INTO has_rows;
		EXCEPTION WHEN lock_not_available THEN
			has_rows := false;
		END;
		IF has_rows THEN
			RAISE EXCEPTION 'destination table % is not empty', t.dest
				USING ERRCODE = '55000',
					  DETAIL = format('The copy of %s never overwrites existing rows.', t.src),
					  HINT = CASE WHEN p_at_create
								  THEN 'Empty the table, map the source table to another destination table, or create the mirror with do_initial_snapshot => false to stream only the changes into the rows it has.'
								  ELSE 'Empty the table, or map the source table to another destination table.' END;
		END IF;
	END LOOP;
END
$$;
REVOKE ALL ON FUNCTION bunny._check_destinations_empty(integer, boolean) FROM PUBLIC;
CREATE OR REPLACE FUNCTION bunny_impl.create_mirror(
	name							text,
	source_peer						text,
	table_mappings					jsonb,
	do_initial_snapshot				boolean DEFAULT true,
	max_batch_size					integer DEFAULT 1000,
	idle_timeout_seconds			integer DEFAULT 60,
	snapshot_num_rows_per_partition integer DEFAULT 250000,
	snapshot_max_parallel_workers	integer DEFAULT 8,
	snapshot_num_tables_in_parallel integer DEFAULT 4,
	replicate_indexes				boolean DEFAULT true,
	replicate_foreign_keys			boolean DEFAULT true,
	resync_strategy					text DEFAULT 'truncate')
	RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_id		integer;
	v_suffix	text;
	v_config	jsonb;
	-- names this incarnation: the replication origin and the publication's
	-- comment carry it, so nothing of an older mirror of the same name is
	-- ever mistaken for ours
	v_incarnation text := md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text);
BEGIN
	PERFORM bunny._check_name('mirror', create_mirror.name);
	IF create_mirror.source_peer IS NULL THEN
		RAISE EXCEPTION 'source_peer must not be null' USING ERRCODE = '22004';
	END IF;
	IF do_initial_snapshot IS NULL OR replicate_indexes IS NULL OR replicate_foreign_keys IS NULL THEN
		RAISE EXCEPTION 'boolean options must not be null' USING ERRCODE = '22004';
	END IF;
	PERFORM bunny._check_range('max_batch_size', max_batch_size, 1, 1000000);
	PERFORM bunny._check_range('idle_timeout_seconds', idle_timeout_seconds, 1, 86400);
	PERFORM bunny._check_range('snapshot_num_rows_per_partition', snapshot_num_rows_per_partition, 1, 2147483647);
	PERFORM bunny._check_range('snapshot_max_parallel_workers', snapshot_max_parallel_workers, 1, 64);
	PERFORM bunny._check_range('snapshot_num_tables_in_parallel', snapshot_num_tables_in_parallel, 1, 64);
	PERFORM bunny._check_strategy(resync_strategy);

	-- serialise concurrent create_mirror calls for the same name
	PERFORM pg_advisory_xact_lock(hashtext('bunnydb.create_mirror'));
	IF EXISTS (SELECT 1 FROM bunny.mirror m WHERE m.name = create_mirror.name) THEN
		RAISE EXCEPTION 'mirror "%" already exists', create_mirror.name USING ERRCODE = '42710';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM bunny.peer p WHERE p.name = create_mirror.source_peer) THEN
		RAISE EXCEPTION 'peer "%" does not exist', create_mirror.source_peer USING ERRCODE = '42704';
	END IF;
	v_suffix := replace(create_mirror.name, '-', '_');
	IF EXISTS (SELECT 1 FROM bunny.mirror m WHERE m.slot_name = 'bunny_slot_' || v_suffix) THEN
		RAISE EXCEPTION 'mirror name "%" clashes with an existing mirror', create_mirror.name
			USING ERRCODE = '42710',
				  DETAIL = format('Replication slot name "bunny_slot_%s" is already taken ("-" becomes "_").', v_suffix);
	END IF;

	-- validate the mappings before anything is stored
	PERFORM count(*) FROM bunny._parse_mappings(table_mappings, NULL);

	INSERT INTO bunny.mirror (name, source_peer, slot_name, publication_name, origin_name,
							  incarnation, do_initial_snapshot, max_batch_size,
							  idle_timeout_seconds, snapshot_num_rows_per_partition,
							  snapshot_max_parallel_workers, snapshot_num_tables_in_parallel,
							  replicate_indexes, replicate_foreign_keys, resync_strategy)
	VALUES (create_mirror.name, create_mirror.source_peer,
			'bunny_slot_' || v_suffix, 'bunny_pub_' || v_suffix,
			'bunnydb_' || v_incarnation, v_incarnation, do_initial_snapshot, max_batch_size,
			idle_timeout_seconds, snapshot_num_rows_per_partition,
			snapshot_max_parallel_workers, snapshot_num_tables_in_parallel,
			replicate_indexes, replicate_foreign_keys, resync_strategy)
	RETURNING id, config INTO v_id, v_config;

	INSERT INTO bunny.mirror_table (mirror_id, source_schema, source_table, destination_schema,
									destination_table, partition_key, exclude_columns)
	SELECT v_id, p.source_schema, p.source_table, p.destination_schema, p.destination_table,
		   p.partition_key, p.exclude_columns
	  FROM bunny._parse_mappings(table_mappings, v_id) p;

	-- refuse now, with nothing created, what setup would refuse
	PERFORM bunny._check_source_tables(v_id);
	IF do_initial_snapshot THEN
		PERFORM bunny._check_destinations_empty(v_id, true);
	END IF;

	PERFORM bunny._log(create_mirror.name, 'INFO', 'mirror created',
					   jsonb_build_object('source_peer', create_mirror.source_peer,
										  'tables', jsonb_array_length(table_mappings),
										  'config', v_config));
	PERFORM bunny._notify(v_id);
END
$$;

-- ------------------------------------------------------------------------
-- cancel_operation says why a table it leaves STALE is not in sync
-- ------------------------------------------------------------------------
-- A table update_tables added whose copy never began (its destination was
-- not empty, say) was left STALE with "its copy was cancelled after it had
-- started to replace the rows", which was not true: none had been touched.
CREATE OR REPLACE FUNCTION bunny_impl.cancel_operation(name text) RETURNS void
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
			   error_message = CASE WHEN NOT stale THEN NULL
									WHEN t.resync_strategy = 'add' AND t.resync_state IS DISTINCT FROM 'COPYING'
									THEN 'not in sync: update_tables added it and its first copy was cancelled before it began; changes are skipped until bunny.resync_table() copies it'
									ELSE 'not in sync: its copy was cancelled after it had started to replace the rows; changes are skipped until bunny.resync_table() copies it again'
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

-- ------------------------------------------------------------------------
-- A destination table another mirror uses: the hint says what to do
-- ------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION bunny._parse_mappings(p_mappings jsonb, p_mirror_id integer,
	OUT source_schema name, OUT source_table name,
	OUT destination_schema name, OUT destination_table name,
	OUT partition_key name, OUT exclude_columns name[])
	RETURNS SETOF record
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	elem jsonb;
	src record;
	dst record;
	seen_src text[] := '{}';
	seen_dst text[] := '{}';
	k text;
	col jsonb;
	other text;
BEGIN
	IF p_mappings IS NULL THEN
		RAISE EXCEPTION 'table_mappings must not be null' USING ERRCODE = '22004';
	END IF;
	IF jsonb_typeof(p_mappings) <> 'array' THEN
		RAISE EXCEPTION 'table_mappings must be a JSON array' USING ERRCODE = '22023';
	END IF;
	IF jsonb_array_length(p_mappings) = 0 THEN
		RAISE EXCEPTION 'table_mappings must not be empty' USING ERRCODE = '22023';
	END IF;

	FOR elem IN SELECT value FROM jsonb_array_elements(p_mappings) LOOP
		partition_key := NULL;
		exclude_columns := '{}';
		IF jsonb_typeof(elem) = 'string' THEN
			src := bunny._parse_table_name(elem #>> '{}');
			dst := src;
		ELSIF jsonb_typeof(elem) = 'object' THEN
			FOR k IN SELECT jsonb_object_keys(elem) LOOP
				IF k NOT IN ('source_table', 'destination_table', 'partition_key', 'exclude_columns') THEN
					RAISE EXCEPTION 'unknown key "%" in table mapping', k
						USING ERRCODE = '22023',
							  HINT = 'Valid keys are source_table, destination_table, partition_key and exclude_columns.';
				END IF;
			END LOOP;
			IF jsonb_typeof(elem -> 'source_table') IS DISTINCT FROM 'string' THEN
				RAISE EXCEPTION 'table mapping needs a "source_table" string'
					USING ERRCODE = '22023', DETAIL = format('Mapping: %s', elem);
			END IF;
			src := bunny._parse_table_name(elem ->> 'source_table');
			IF elem ? 'destination_table' AND jsonb_typeof(elem -> 'destination_table') <> 'null' THEN
				IF jsonb_typeof(elem -> 'destination_table') <> 'string' THEN
					RAISE EXCEPTION '"destination_table" must be a string' USING ERRCODE = '22023';
				END IF;
				dst := bunny._parse_table_name(elem ->> 'destination_table');
			ELSE
				dst := src;
			END IF;
			IF elem ? 'partition_key' AND jsonb_typeof(elem -> 'partition_key') <> 'null' THEN
				IF jsonb_typeof(elem -> 'partition_key') <> 'string' OR elem ->> 'partition_key' = ''
				   OR octet_length(elem ->> 'partition_key') > 63 THEN
					RAISE EXCEPTION '"partition_key" must be a column name' USING ERRCODE = '22023';
				END IF;
				partition_key := elem ->> 'partition_key';
			END IF;
			IF elem ? 'exclude_columns' AND jsonb_typeof(elem -> 'exclude_columns') <> 'null' THEN
				IF jsonb_typeof(elem -> 'exclude_columns') <> 'array' THEN
					RAISE EXCEPTION '"exclude_columns" must be an array of column names' USING ERRCODE = '22023';
				END IF;
				FOR col IN SELECT value FROM jsonb_array_elements(elem -> 'exclude_columns') LOOP
					IF jsonb_typeof(col) <> 'string' OR col #>> '{}' = ''
					   OR octet_length(col #>> '{}') > 63 THEN
						RAISE EXCEPTION '"exclude_columns" must be an array of column names' USING ERRCODE = '22023';
					END IF;
					exclude_columns := exclude_columns || (col #>> '{}')::name;
				END LOOP;
				IF partition_key IS NOT NULL AND partition_key = ANY (exclude_columns) THEN
					RAISE EXCEPTION 'partition key "%" cannot be an excluded column', partition_key
						USING ERRCODE = '22023';
				END IF;
			END IF;
		ELSE
			RAISE EXCEPTION 'table mapping must be a string or an object'
				USING ERRCODE = '22023', DETAIL = format('Mapping: %s', elem);
		END IF;

		SELECT m.name INTO other
		  FROM bunny.mirror_table t JOIN bunny.mirror m ON m.id = t.mirror_id
		 WHERE t.destination_schema = dst.schema_name
		   AND t.destination_table = dst.table_name
		   AND t.mirror_id IS DISTINCT FROM p_mirror_id;
		IF FOUND THEN
			RAISE EXCEPTION 'destination table %.% is already used by mirror "%"',
				quote_ident(dst.schema_name), quote_ident(dst.table_name), other
				USING ERRCODE = '42710',
					  HINT = format('Map the source table to another destination with "destination_table", or take it out of mirror %s first with bunny.update_tables().',
									quote_literal(other));
		END IF;
		seen_src := seen_src || format('%I.%I', src.schema_name, src.table_name);
		seen_dst := seen_dst || format('%I.%I', dst.schema_name, dst.table_name);

		source_schema := src.schema_name;
		source_table := src.table_name;
		destination_schema := dst.schema_name;
		destination_table := dst.table_name;
		RETURN NEXT;
	END LOOP;

	-- names mapped twice: one set-based look at all of them (a search of
	-- the names seen so far for each mapping was quadratic)
	SELECT s INTO k FROM unnest(seen_src) s GROUP BY s HAVING count(*) > 1 LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'source table % is mapped twice', k USING ERRCODE = '42710';
	END IF;
	SELECT s INTO k FROM unnest(seen_dst) s GROUP BY s HAVING count(*) > 1 LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'destination table % is mapped twice', k USING ERRCODE = '42710';
	END IF;
END
$$;
