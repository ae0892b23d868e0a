/*
 * bunnydb--0.2.0--0.3.0.sql
 *		Upgrade from 0.2.0: every change of a mirror's status or phase is
 *		checked against the transition table of state.c by a trigger, so
 *		that a transition nobody planned fails at once instead of leaving a
 *		mirror in a state without a way out.  The statuses that were
 *		documented but never set (SYNCING_SCHEMA and TERMINATING for a
 *		mirror, ERROR for a table) are gone from the catalog's checks.
 *		A mirror's options are typed columns of bunny.mirror, given by
 *		create_mirror (whose parameter defaults are the only defaults);
 *		config, the jsonb that held them, is now generated from them, so
 *		bunny.mirrors and everything reading config see the same values.
 *		bunny.mirrors shows rows_copied next to total_rows_synced, which
 *		counts only the changes applied by CDC.
 *		bunny.logs() takes level as the least severity to show, and
 *		without one shows INFO and above: DEBUG lines only when asked.
 *		Peers and mirrors follow one naming rule (bunny._check_name): 1 to
 *		48 lower-case letters, digits, "_" and "-"; peers made before keep
 *		their names.
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

-- options as typed columns, filled from config with the defaults 0.2.0
-- applied when reading it
ALTER TABLE bunny.mirror
	ADD COLUMN do_initial_snapshot boolean,
	ADD COLUMN max_batch_size integer,
	ADD COLUMN idle_timeout_seconds integer,
	ADD COLUMN snapshot_num_rows_per_partition integer,
	ADD COLUMN snapshot_max_parallel_workers integer,
	ADD COLUMN snapshot_num_tables_in_parallel integer,
	ADD COLUMN replicate_indexes boolean,
	ADD COLUMN replicate_foreign_keys boolean,
	ADD COLUMN resync_strategy text;
UPDATE bunny.mirror
   SET do_initial_snapshot = coalesce((config->>'do_initial_snapshot')::boolean, true),
	   max_batch_size = coalesce((config->>'max_batch_size')::integer, 1000),
	   idle_timeout_seconds = coalesce((config->>'idle_timeout_seconds')::integer, 60),
	   snapshot_num_rows_per_partition = coalesce((config->>'snapshot_num_rows_per_partition')::integer, 250000),
	   snapshot_max_parallel_workers = coalesce((config->>'snapshot_max_parallel_workers')::integer, 8),
	   snapshot_num_tables_in_parallel = coalesce((config->>'snapshot_num_tables_in_parallel')::integer, 4),
	   replicate_indexes = coalesce((config->>'replicate_indexes')::boolean, true),
	   replicate_foreign_keys = coalesce((config->>'replicate_foreign_keys')::boolean, true),
	   resync_strategy = coalesce(config->>'resync_strategy', 'truncate');
ALTER TABLE bunny.mirror
	ALTER COLUMN do_initial_snapshot SET NOT NULL,
	ALTER COLUMN max_batch_size SET NOT NULL,
	ALTER COLUMN idle_timeout_seconds SET NOT NULL,
	ALTER COLUMN snapshot_num_rows_per_partition SET NOT NULL,
	ALTER COLUMN snapshot_max_parallel_workers SET NOT NULL,
	ALTER COLUMN snapshot_num_tables_in_parallel SET NOT NULL,
	ALTER COLUMN replicate_indexes SET NOT NULL,
	ALTER COLUMN replicate_foreign_keys SET NOT NULL,
	ALTER COLUMN resync_strategy SET NOT NULL;

-- config becomes a function of the typed columns; bunny.mirrors reads it,
-- so the view is made again around the change (with its grant)
DROP VIEW bunny.mirrors;
ALTER TABLE bunny.mirror DROP COLUMN config;
-- jsonb_build_object is only STABLE (some types print by settings); for
-- booleans, integers and text it does not depend on any, so this is
-- immutable, as a generated column needs
CREATE FUNCTION bunny._mirror_config(do_initial_snapshot boolean, max_batch_size integer,
									 idle_timeout_seconds integer,
									 snapshot_num_rows_per_partition integer,
									 snapshot_max_parallel_workers integer,
									 snapshot_num_tables_in_parallel integer,
									 replicate_indexes boolean, replicate_foreign_keys boolean,
									 resync_strategy text)
	RETURNS jsonb
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT jsonb_build_object(
		'do_initial_snapshot', do_initial_snapshot,
		'max_batch_size', max_batch_size,
		'idle_timeout_seconds', idle_timeout_seconds,
		'snapshot_num_rows_per_partition', snapshot_num_rows_per_partition,
		'snapshot_max_parallel_workers', snapshot_max_parallel_workers,
		'snapshot_num_tables_in_parallel', snapshot_num_tables_in_parallel,
		'replicate_indexes', replicate_indexes,
		'replicate_foreign_keys', replicate_foreign_keys,
		'resync_strategy', resync_strategy)
$$;
REVOKE ALL ON FUNCTION bunny._mirror_config(boolean, integer, integer, integer, integer, integer,
											boolean, boolean, text) FROM PUBLIC;

ALTER TABLE bunny.mirror ADD COLUMN config jsonb GENERATED ALWAYS AS (
	bunny._mirror_config(do_initial_snapshot, max_batch_size, idle_timeout_seconds,
						 snapshot_num_rows_per_partition, snapshot_max_parallel_workers,
						 snapshot_num_tables_in_parallel, replicate_indexes,
						 replicate_foreign_keys, resync_strategy)) STORED;

CREATE VIEW bunny.mirrors AS
	SELECT m.name, m.source_peer, m.status, m.phase, m.slot_name, m.publication_name,
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

-- the one naming rule of peers and mirrors: a mirror's name becomes part
-- of its slot's and publication's names on the source, which allow only
-- lower-case letters, digits and "_"; a peer follows the same rule so that
-- nobody has to remember two
CREATE FUNCTION bunny._check_name(kind text, name text) RETURNS void
	LANGUAGE plpgsql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF name IS NULL THEN
		RAISE EXCEPTION '% name must not be null', kind USING ERRCODE = '22004';
	END IF;
	IF name !~ '^[a-z0-9_-]{1,48}$' THEN
		RAISE EXCEPTION 'invalid % name "%"', kind, name
			USING ERRCODE = '22023',
				  DETAIL = format('A %s name consists of 1 to 48 lower-case letters, digits, "_" and "-".', kind),
				  HINT = format('For example: %s.', quote_literal(coalesce(nullif(left(
						  regexp_replace(lower(name), '[^a-z0-9_-]+', '_', 'g'), 48), ''), kind || '1')));
	END IF;
END
$$;
REVOKE ALL ON FUNCTION bunny._check_name(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION bunny.create_mirror(
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

	PERFORM bunny._log(create_mirror.name, 'INFO', 'mirror created',
					   jsonb_build_object('source_peer', create_mirror.source_peer,
										  'tables', jsonb_array_length(table_mappings),
										  'config', v_config));
	PERFORM bunny._notify(v_id);
END
$$;

-- level is the least severity shown, as log_min_messages reads; without
-- one, DEBUG lines (written at every reconnection) stay out of the way
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

CREATE OR REPLACE FUNCTION bunny.create_peer(name text, conninfo text, validate boolean DEFAULT true)
	RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM bunny._check_name('peer', create_peer.name);
	IF EXISTS (SELECT 1 FROM bunny.peer p WHERE p.name = create_peer.name) THEN
		RAISE EXCEPTION 'peer "%" already exists', create_peer.name USING ERRCODE = '42710';
	END IF;
	PERFORM bunny._check_peer_conninfo(create_peer.conninfo, validate);
	BEGIN
		INSERT INTO bunny.peer (name, conninfo, require_password)
		VALUES (create_peer.name, create_peer.conninfo, NOT bunny._caller_is_superuser());
	EXCEPTION WHEN unique_violation THEN
		RAISE EXCEPTION 'peer "%" already exists', create_peer.name USING ERRCODE = '42710';
	END;
END
$$;

-- The API functions that return one value become entry points in C
-- (api.c) that call their PL/pgSQL body and raise its errors without the
-- CONTEXT lines of every PL/pgSQL function they passed through.  The
-- bodies keep their names (PL/pgSQL qualifies parameters by the function's
-- name) in schema bunny_impl, which nobody is granted; the grants move to
-- the entry points.  Later versions redefine a body as bunny_impl.<name>.
CREATE SCHEMA bunny_impl;
REVOKE ALL ON SCHEMA bunny_impl FROM PUBLIC;

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
		   AND p.proname IN ('create_peer', 'alter_peer', 'drop_peer',
							 'create_mirror', 'drop_mirror', 'pause_mirror',
							 'resume_mirror', 'retry_mirror', 'resync_table',
							 'resync_mirror', 'update_tables', 'sync_schema',
							 'wait_for_lsn', 'mirror_status')
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
