/*
 * bunnydb--0.1.0--0.2.0.sql
 *		Upgrade from 0.1.0: a failed mirror can be retried, paused and
 *		resumed while the operation it failed in (a resync, or the copy of
 *		tables update_tables added) is still pending; before, all three
 *		were refused with 55006 and only drop_mirror was left.
 *		create_mirror and update_tables check the source and its tables
 *		before they commit (bunny._check_source_tables), so that what the
 *		mirror could not carry, or what would make the source's own
 *		statements fail, is refused at once with nothing created.
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

-- setup's checks of the source, run before create_mirror and update_tables
-- commit; a source that cannot be reached now is left to the worker
CREATE FUNCTION bunny._check_source_tables(mirror_id integer) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_check_source_tables';
REVOKE ALL ON FUNCTION bunny._check_source_tables(integer) FROM PUBLIC;

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
	IF create_mirror.name IS NULL THEN
		RAISE EXCEPTION 'mirror name must not be null' USING ERRCODE = '22004';
	END IF;
	IF create_mirror.name !~ '^[a-z0-9_-]{1,48}$' THEN
		RAISE EXCEPTION 'invalid mirror name "%"', create_mirror.name
			USING ERRCODE = '22023',
				  DETAIL = 'A mirror name consists of 1 to 48 lower-case letters, digits, "_" and "-".';
	END IF;
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

	v_config := jsonb_build_object(
		'do_initial_snapshot', do_initial_snapshot,
		'max_batch_size', max_batch_size,
		'idle_timeout_seconds', idle_timeout_seconds,
		'snapshot_num_rows_per_partition', snapshot_num_rows_per_partition,
		'snapshot_max_parallel_workers', snapshot_max_parallel_workers,
		'snapshot_num_tables_in_parallel', snapshot_num_tables_in_parallel,
		'replicate_indexes', replicate_indexes,
		'replicate_foreign_keys', replicate_foreign_keys,
		'resync_strategy', resync_strategy);

	INSERT INTO bunny.mirror (name, source_peer, slot_name, publication_name, origin_name,
							  incarnation, config)
	VALUES (create_mirror.name, create_mirror.source_peer,
			'bunny_slot_' || v_suffix, 'bunny_pub_' || v_suffix,
			'bunnydb_' || v_incarnation, v_incarnation, v_config)
	RETURNING id INTO v_id;

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

CREATE OR REPLACE FUNCTION bunny.update_tables(name text, table_mappings jsonb) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m		bunny.mirror;
	r		record;
	added	integer := 0;
	removed	integer := 0;
BEGIN
	m := bunny._lock_mirror(update_tables.name);
	PERFORM bunny._check_no_pending(m);
	IF m.status <> 'PAUSED' THEN
		RAISE EXCEPTION 'mirror must be paused to update tables'
			USING ERRCODE = '55000', HINT = format('Call bunny.pause_mirror(%L) first.', m.name);
	END IF;
	IF m.phase <> 'CDC' THEN
		RAISE EXCEPTION 'mirror "%" has not finished its initial copy', m.name USING ERRCODE = '55000';
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
		PERFORM bunny._log(m.name, 'INFO',
			format('table %I.%I removed from the mirror; destination table %I.%I stays',
				   r.source_schema, r.source_table, r.destination_schema, r.destination_table));
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
			format('table %I.%I added to the mirror; it is copied when the mirror resumes',
				   r.source_schema, r.source_table));
	END LOOP;

	IF added > 0 OR removed > 0 THEN
		UPDATE bunny.mirror SET publication_dirty = true, updated_at = now() WHERE id = m.id;
	END IF;
	IF added > 0 THEN
		-- refuse now, with nothing changed, what setup would refuse
		PERFORM bunny._check_source_tables(m.id);
	END IF;
	DROP TABLE bunny_new_mappings;
	PERFORM bunny._notify(m.id);
END
$$;
