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
 *		sync_schema keeps collations, adds stored generated columns as
 *		generated, drops only columns that came from the source, and
 *		creates secondary indexes only with replicate_indexes.
 *		A resync under way, even one failing again and again, no longer
 *		keeps out pause_mirror, retry_mirror or a new resync of the same
 *		tables (which replaces it).  drop_mirror drops a swap's half-built
 *		<table>_resync.
 */

\echo Use "ALTER EXTENSION bunnydb UPDATE TO '0.2.0'" to load this file. \quit

-- The status a failed or paused mirror goes back to: where its phase is,
-- or RESYNCING when it stopped in a resync (or a copy of tables added by
-- update_tables), which then goes on.  A pause in the middle of a resync
-- clears pending_op; the tables still being copied say so.
CREATE FUNCTION bunny._status_after_failure(m bunny.mirror) RETURNS text
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE
		WHEN m.phase = 'CDC' AND (m.pending_op = 'resync' OR
								  EXISTS (SELECT 1 FROM bunny.mirror_table t
										   WHERE t.mirror_id = m.id AND t.resync_state IS NOT NULL))
			THEN 'RESYNCING'
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
		-- a resync (perhaps one failing again and again) does not keep a
		-- pause out: the worker stops, and the resync goes on after resume
		IF m.pending_op IS DISTINCT FROM 'resync' THEN
			PERFORM bunny._check_no_pending(m);
		END IF;
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
	-- a paused mirror's only pending operation is one it failed or was
	-- paused in: it goes on
	UPDATE bunny.mirror
	   SET status = bunny._status_after_failure(m),
		   pending_op = CASE WHEN bunny._status_after_failure(m) = 'RESYNCING' THEN 'resync'
							 ELSE pending_op END,
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
	-- a failed mirror keeps the operation it failed in, and a resync may be
	-- retrying: retrying goes on with it (at once)
	IF m.status <> 'FAILED' AND m.pending_op IS DISTINCT FROM 'resync' THEN
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

CREATE OR REPLACE FUNCTION bunny.sync_schema(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m		bunny.mirror;
	ci		text;
	t		record;
	c		record;
	ix		record;
	dest	text;
	src		text;
	ddl		text;
	n		integer := 0;
	src_lsn	pg_lsn;
	caught_up boolean := true;
	new_published boolean := false;
	recopy	jsonb := '[]';
BEGIN
	IF sync_schema.name IS NULL THEN
		RAISE EXCEPTION 'mirror name must not be null' USING ERRCODE = '22004';
	END IF;
	SELECT * INTO m FROM bunny.mirror WHERE mirror.name = sync_schema.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'mirror "%" does not exist', sync_schema.name USING ERRCODE = '42704';
	END IF;
	SELECT p.conninfo INTO ci FROM bunny.peer p WHERE p.name = m.source_peer;

	-- Changes already committed on the source may still carry a column
	-- the source has dropped since; dropped here first, the worker would
	-- add it back.  So wait (without holding the mirror row, which the
	-- worker needs at every commit) until the mirror has applied what the
	-- source had committed; if it cannot within a minute, columns are not
	-- dropped this time.
	-- A mirror that is not running (paused, failed) applies nothing: its
	-- backlog may carry the column, so it is not dropped this time.
	IF m.status = 'RUNNING' THEN
		SELECT r.x INTO src_lsn
		  FROM bunny._remote_query(ci, 'SELECT pg_catalog.pg_current_wal_lsn()') AS r(x pg_lsn);
		caught_up := bunny._wait_for_lsn(m.id, src_lsn, 60000);
	ELSE
		caught_up := false;
	END IF;

	m := bunny._lock_mirror(sync_schema.name);
	PERFORM bunny._check_no_pending(m);
	-- The worker applies changes to these tables while we alter them, and
	-- takes its locks in the other order (a table, then the mirror row at
	-- commit): stop it; it waits for our row lock before it starts again.
	IF NOT bunny._stop_worker(m.id, 30000) THEN
		RAISE EXCEPTION 'could not stop the worker of mirror "%"', m.name
			USING ERRCODE = '55006', HINT = 'Try again.';
	END IF;
	PERFORM bunny._log(m.name, 'INFO', 'schema sync started');

	FOR t IN SELECT * FROM bunny.mirror_table WHERE mirror_id = m.id
			  ORDER BY source_schema, source_table LOOP
		src := format('%I.%I', t.source_schema, t.source_table);
		dest := format('%I.%I', t.destination_schema, t.destination_table);
		IF to_regclass(dest) IS NULL THEN
			RAISE EXCEPTION 'destination table % does not exist', dest USING ERRCODE = '42P01';
		END IF;

		CREATE TEMP TABLE bunny_src_cols ON COMMIT DROP AS
		SELECT * FROM bunny._remote_query(ci, format($q$
			SET search_path = pg_catalog;
			SELECT a.attname,
				   format_type(a.atttypid, a.atttypmod) ||
				   coalesce((SELECT ' COLLATE ' || quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
							   FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
							  WHERE co.oid = a.attcollation
								AND a.attcollation <> (SELECT typcollation FROM pg_type WHERE oid = a.atttypid)), ''),
				   a.attnotnull,
				   CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END,
				   CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END
			  FROM pg_attribute a
			  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
			 WHERE a.attrelid = %L::regclass AND a.attnum > 0 AND NOT a.attisdropped
			$q$, src)) AS r(attname name, type text, nn boolean, def text, gen text)
		 WHERE NOT (r.attname = ANY (t.exclude_columns));

		IF NOT EXISTS (SELECT 1 FROM bunny_src_cols) THEN
			RAISE EXCEPTION 'source table % has no columns or does not exist', src USING ERRCODE = '42P01';
		END IF;

		-- the destination as it is
		CREATE TEMP TABLE bunny_dst_cols ON COMMIT DROP AS
		SELECT a.attname,
			   format_type(a.atttypid, a.atttypmod) ||
			   coalesce((SELECT ' COLLATE ' || quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
						   FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
						  WHERE co.oid = a.attcollation
							AND a.attcollation <> (SELECT typcollation FROM pg_type WHERE oid = a.atttypid)), '') AS type,
			   a.attnotnull AS nn,
			   CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END AS def,
			   a.attgenerated <> '' AS generated
		  FROM pg_attribute a
		  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		 WHERE a.attrelid = dest::regclass AND a.attnum > 0 AND NOT a.attisdropped;

		FOR c IN SELECT s.*, d.type AS dtype, d.nn AS dnn, d.def AS ddef,
						d.attname IS NULL AS missing, coalesce(d.generated, false) AS dgenerated
				   FROM bunny_src_cols s LEFT JOIN bunny_dst_cols d USING (attname) LOOP
			IF c.missing AND c.gen IS NOT NULL THEN
				-- a stored generated column: computed here, never written by the apply
				ddl := format('ALTER TABLE %s ADD COLUMN %I %s GENERATED ALWAYS AS (%s) STORED',
							  dest, c.attname, c.type, c.gen);
				EXECUTE ddl;
				PERFORM bunny._log(m.name, 'INFO', format('sync_schema: added generated column %I to %s', c.attname, dest),
								   jsonb_build_object('sql', ddl));
				n := n + 1;
				CONTINUE;
			END IF;
			CONTINUE WHEN c.gen IS NOT NULL OR c.dgenerated;
			IF c.missing THEN
				ddl := format('ALTER TABLE %s ADD COLUMN %I %s', dest, c.attname, c.type);
				IF c.def IS NOT NULL AND c.def NOT LIKE '%nextval(%' THEN
					ddl := ddl || ' DEFAULT ' || c.def;
				END IF;
				EXECUTE ddl;
				PERFORM bunny._log(m.name, 'INFO', format('sync_schema: added column %I to %s', c.attname, dest),
								   jsonb_build_object('sql', ddl));
				n := n + 1;
				IF cardinality(t.exclude_columns) > 0 THEN
					-- The publication's column list must take it in, and
					-- rows changed on the source since it was added there
					-- came without its value: the table is copied again
					-- once the publication has it.
					new_published := true;
					IF NOT recopy ? src THEN
						recopy := recopy || to_jsonb(src);
					END IF;
					PERFORM bunny._log(m.name, 'INFO',
						format('sync_schema: column %I of %s joins the publication''s column list; the table is copied again so that every row has its value',
							   c.attname, dest));
				END IF;
				IF c.nn AND NOT EXISTS (SELECT 1 FROM pg_attribute
											  WHERE attrelid = dest::regclass AND attname = c.attname
												AND attnotnull) THEN
					BEGIN
						ddl := format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', dest, c.attname);
						EXECUTE ddl;
						PERFORM bunny._log(m.name, 'INFO', format('sync_schema: %s', ddl), jsonb_build_object('sql', ddl));
					EXCEPTION WHEN not_null_violation THEN
						PERFORM bunny._log(m.name, 'WARNING',
							format('sync_schema: column %I of %s stays nullable: it holds NULLs', c.attname, dest));
					END;
				END IF;
				CONTINUE;
			END IF;
			IF c.type IS DISTINCT FROM c.dtype THEN
				ddl := format('ALTER TABLE %s ALTER COLUMN %I TYPE %s USING %I::%s',
							  dest, c.attname, c.type, c.attname,
							  regexp_replace(c.type, ' COLLATE .*$', ''));
				EXECUTE ddl;
				PERFORM bunny._log(m.name, 'INFO', format('sync_schema: column %I of %s is now %s', c.attname, dest, c.type),
								   jsonb_build_object('sql', ddl));
				n := n + 1;
			END IF;
			IF c.def IS DISTINCT FROM c.ddef
			   AND coalesce(c.def, '') NOT LIKE '%nextval(%' AND coalesce(c.ddef, '') NOT LIKE '%nextval(%' THEN
				IF c.def IS NULL THEN
					ddl := format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', dest, c.attname);
				ELSE
					ddl := format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', dest, c.attname, c.def);
				END IF;
				EXECUTE ddl;
				PERFORM bunny._log(m.name, 'INFO', format('sync_schema: %s', ddl), jsonb_build_object('sql', ddl));
				n := n + 1;
			END IF;
			IF c.nn IS DISTINCT FROM c.dnn THEN
				ddl := format('ALTER TABLE %s ALTER COLUMN %I %s NOT NULL', dest, c.attname,
							  CASE WHEN c.nn THEN 'SET' ELSE 'DROP' END);
				BEGIN
					EXECUTE ddl;
					PERFORM bunny._log(m.name, 'INFO', format('sync_schema: %s', ddl), jsonb_build_object('sql', ddl));
					n := n + 1;
				EXCEPTION WHEN not_null_violation OR invalid_table_definition THEN
					PERFORM bunny._log(m.name, 'WARNING', format('sync_schema: could not run %s: %s', ddl, SQLERRM));
				END;
			END IF;
		END LOOP;

		-- columns the source no longer has: only those that came from it (the
		-- columns the copy was last planned with); a column the destination
		-- table has of its own stays
		FOR c IN SELECT d.attname FROM bunny_dst_cols d
				  WHERE NOT EXISTS (SELECT 1 FROM bunny_src_cols s WHERE s.attname = d.attname)
					AND NOT (d.attname = ANY (t.exclude_columns))
					AND d.attname = ANY (coalesce(t.copy_columns, '{}')) LOOP
			IF NOT caught_up THEN
				PERFORM bunny._log(m.name, 'WARNING',
					format('sync_schema: column %I of %s is not dropped yet: the mirror has not applied everything the source committed before (or is not running); call bunny.sync_schema(%L) again once it runs and has caught up',
						   c.attname, dest, m.name));
				CONTINUE;
			END IF;
			ddl := format('ALTER TABLE %s DROP COLUMN %I', dest, c.attname);
			EXECUTE ddl;
			PERFORM bunny._log(m.name, 'INFO', format('sync_schema: dropped column %I of %s (gone on the source)', c.attname, dest),
							   jsonb_build_object('sql', ddl));
			n := n + 1;
		END LOOP;

		-- indexes the destination lacks (by name), unless they use excluded columns
		FOR ix IN SELECT * FROM bunny._remote_query(ci, format($q$
				SET search_path = pg_catalog;
				SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisprimary,
					   ARRAY(SELECT attname FROM pg_attribute
							  WHERE attrelid = i.indrelid AND attnum = ANY (i.indkey))::text[]
				  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
				 WHERE i.indrelid = %L::regclass
				$q$, src)) AS r(idxname name, def text, isprimary boolean, cols text[]) LOOP
			CONTINUE WHEN ix.cols && t.exclude_columns::text[];
			-- secondary indexes only when the mirror replicates them
			CONTINUE WHEN NOT ix.isprimary
					  AND NOT coalesce((m.config ->> 'replicate_indexes')::boolean, true);
			CONTINUE WHEN EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
								   WHERE i.indrelid = dest::regclass
									 AND (ic.relname = ix.idxname OR (ix.isprimary AND i.indisprimary)));
			IF ix.isprimary THEN
				ddl := format('ALTER TABLE %s ADD PRIMARY KEY (%s)', dest,
							  (SELECT string_agg(quote_ident(x), ', ') FROM unnest(ix.cols) x));
			ELSE
				-- pg_get_indexdef names the table as format('%I.%I') does
				ddl := replace(replace(ix.def, ' ON ONLY ' || src || ' USING ', ' ON ' || dest || ' USING '),
							   ' ON ' || src || ' USING ', ' ON ' || dest || ' USING ');
				CONTINUE WHEN position(' ON ' || dest || ' USING ' IN ddl) = 0;
				ddl := regexp_replace(ddl, '^CREATE (UNIQUE )?INDEX ', 'CREATE \1INDEX IF NOT EXISTS ');
			END IF;
			EXECUTE ddl;
			PERFORM bunny._log(m.name, 'INFO', format('sync_schema: created index %I on %s', ix.idxname, dest),
							   jsonb_build_object('sql', ddl));
			n := n + 1;
		END LOOP;

		-- the source's columns now present here, as a copy would read them;
		-- while drops wait, the columns still to drop stay known as the
		-- source's, or a later call would take them for our own
		UPDATE bunny.mirror_table mt
		   SET copy_columns = ARRAY(SELECT s.attname FROM bunny_src_cols s
									 WHERE s.gen IS NULL
									   AND EXISTS (SELECT 1 FROM pg_attribute a
												   WHERE a.attrelid = dest::regclass AND a.attname = s.attname
													 AND NOT a.attisdropped AND a.attgenerated = '')
									UNION
									SELECT k FROM unnest(coalesce(t.copy_columns, '{}')) k
									 WHERE NOT caught_up
									   AND EXISTS (SELECT 1 FROM pg_attribute a
												   WHERE a.attrelid = dest::regclass AND a.attname = k
													 AND NOT a.attisdropped))
		 WHERE mt.mirror_id = m.id AND mt.source_schema = t.source_schema
		   AND mt.source_table = t.source_table;

		DROP TABLE bunny_src_cols;
		DROP TABLE bunny_dst_cols;
	END LOOP;
	IF new_published THEN
		-- the worker, stopped above, refreshes the publication when it
		-- starts again, before the resync takes its snapshot
		UPDATE bunny.mirror SET publication_dirty = true WHERE id = m.id;
		SELECT * INTO m FROM bunny.mirror WHERE id = m.id;
		PERFORM bunny._request_resync(m, recopy, NULL);
	END IF;
	PERFORM bunny._log(m.name, 'INFO', format('schema sync finished: %s change(s)', n));
	PERFORM bunny._notify(m.id);
END
$$;

CREATE OR REPLACE FUNCTION bunny._request_resync(m bunny.mirror, p_tables jsonb, p_strategy text)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	strat		text := coalesce(p_strategy, m.config ->> 'resync_strategy', 'truncate');
	ci			text;
	slot_ok		boolean;
	deps		text;
	dep_tables	text;
	dep_kinds	text;
	tgt			record;
BEGIN
	PERFORM bunny._check_strategy(strat);
	IF m.pending_op IS DISTINCT FROM 'resync' THEN
		PERFORM bunny._check_no_pending(m);
	END IF;
	IF m.phase <> 'CDC' THEN
		RAISE EXCEPTION 'mirror "%" has not finished its initial copy', m.name
			USING ERRCODE = '55000',
				  HINT = 'A mirror in its initial copy copies its tables anyway; wait until it is RUNNING.';
	END IF;

	-- without its slot the mirror can only start over
	SELECT p.conninfo INTO ci FROM bunny.peer p WHERE p.name = m.source_peer;
	SELECT r.x INTO slot_ok
	  FROM bunny._remote_query(ci, format(
			'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %L)',
			m.slot_name)) AS r(x boolean);

	IF NOT slot_ok THEN
		UPDATE bunny.mirror_table
		   SET status = 'RESYNCING', resync_strategy = 'truncate', resync_state = NULL,
			   copy_done = false
		 WHERE mirror_id = m.id;
		UPDATE bunny.mirror
		   SET status = 'CREATED', phase = 'SETUP', slot_requested = false,
			   pending_op = 'resync', error_message = NULL, error_count = 0, updated_at = now()
		 WHERE id = m.id;
		PERFORM bunny._log(m.name, 'INFO',
			format('resync requested: the slot is gone, so the mirror is set up again with a new slot and every table is emptied and copied%s',
				   CASE WHEN strat = 'swap' THEN ' (the swap strategy needs the old slot; truncate is used)' ELSE '' END));
	ELSE
		-- a swap drops the old table: views on it, and functions that use
		-- it in a SQL-standard body (BEGIN ATOMIC) or take or return its row
		-- type, would make it fail again and again, so say so now, before
		-- anything changes
		IF strat = 'swap' THEN
			WITH swapped AS (
				SELECT to_regclass(format('%I.%I', t.destination_schema, t.destination_table)) AS rel,
					   format('%I.%I', t.destination_schema, t.destination_table) AS tab
				  FROM bunny.mirror_table t
				 WHERE t.mirror_id = m.id
				   AND format('%I.%I', t.source_schema, t.source_table) IN
					   (SELECT jsonb_array_elements_text(p_tables))
			), dep AS (
				SELECT v.oid::regclass::text AS name, true AS is_view, s.tab
				  FROM swapped s
				  JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = s.rel
								  AND d.classid = 'pg_rewrite'::regclass
				  JOIN pg_rewrite r ON r.oid = d.objid
				  JOIN pg_class v ON v.oid = r.ev_class AND v.oid <> s.rel
				UNION ALL
				SELECT f.oid::regprocedure::text, false, s.tab
				  FROM swapped s
				  JOIN pg_class c ON c.oid = s.rel
				  JOIN pg_depend d ON ((d.refclassid = 'pg_class'::regclass AND d.refobjid = s.rel)
									OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = c.reltype))
								  AND d.classid = 'pg_proc'::regclass
				  JOIN pg_proc f ON f.oid = d.objid
			)
			SELECT string_agg(DISTINCT name, ', '), string_agg(DISTINCT tab, ', '),
				   CASE WHEN bool_and(is_view) THEN 'views'
						WHEN bool_or(is_view) THEN 'views and functions'
						ELSE 'functions' END
			  INTO deps, dep_tables, dep_kinds
			  FROM dep;
			IF deps IS NOT NULL THEN
				RAISE EXCEPTION 'cannot resync % with the swap strategy: % depend on it', dep_tables, dep_kinds
					USING ERRCODE = '2BP01',
						  DETAIL = format('The swap replaces the table, and %s would still use the old one.', deps),
						  HINT = format('Use the truncate strategy, which keeps the table, or drop the %s first.', dep_kinds);
			END IF;
		END IF;
		-- A resync already under way (perhaps failing again and again) is
		-- replaced for these tables: the worker is stopped (it waits for
		-- our row lock before it starts again), a swap's half-built copy is
		-- dropped, and the tables are requested anew; the other tables'
		-- copies go on when the worker is back.
		IF m.pending_op = 'resync' THEN
			IF NOT bunny._stop_worker(m.id, 30000) THEN
				RAISE EXCEPTION 'could not stop the worker of mirror "%"', m.name
					USING ERRCODE = '55006', HINT = 'Try again.';
			END IF;
			FOR tgt IN SELECT t.destination_schema, t.copy_target_table FROM bunny.mirror_table t
					  WHERE t.mirror_id = m.id AND t.copy_target_table IS NOT NULL
						AND format('%I.%I', t.source_schema, t.source_table) IN
							(SELECT jsonb_array_elements_text(p_tables)) LOOP
				EXECUTE format('DROP TABLE IF EXISTS %I.%I', tgt.destination_schema, tgt.copy_target_table);
			END LOOP;
			UPDATE bunny.mirror_table t
			   SET copy_target_table = NULL
			 WHERE t.mirror_id = m.id
			   AND format('%I.%I', t.source_schema, t.source_table) IN
				   (SELECT jsonb_array_elements_text(p_tables));
			PERFORM bunny._log(m.name, 'INFO', 'the resync under way is replaced for the tables requested now',
							   jsonb_build_object('tables', p_tables));
		END IF;
		UPDATE bunny.mirror_table t
		   SET status = 'RESYNCING', resync_strategy = strat, resync_state = 'REQUESTED',
			   copy_done = false
		 WHERE t.mirror_id = m.id
		   AND format('%I.%I', t.source_schema, t.source_table) IN
			   (SELECT jsonb_array_elements_text(p_tables));
		UPDATE bunny.mirror
		   SET status = CASE WHEN status IN ('RUNNING', 'FAILED', 'CREATED') THEN 'RESYNCING' ELSE status END,
			   pending_op = 'resync', error_message = NULL, updated_at = now()
		 WHERE id = m.id;
		PERFORM bunny._log(m.name, 'INFO', format('resync requested (%s)', strat),
						   jsonb_build_object('tables', p_tables, 'strategy', strat));
	END IF;
	PERFORM bunny._notify(m.id);
END
$$;

CREATE OR REPLACE FUNCTION bunny.drop_mirror(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	m		bunny.mirror;
	ci		text;
	slot	text;
	pub		text;
	t		record;
BEGIN
	IF drop_mirror.name IS NULL THEN
		RAISE EXCEPTION 'mirror name must not be null' USING ERRCODE = '22004';
	END IF;
	-- waits for a running control operation rather than failing: dropping
	-- always wins
	SELECT * INTO m FROM bunny.mirror WHERE mirror.name = drop_mirror.name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'mirror "%" does not exist', drop_mirror.name USING ERRCODE = '42704';
	END IF;

	-- The worker blocks on our row lock before it could start again, so
	-- once it is gone it stays gone until we commit.
	IF NOT bunny._stop_worker(m.id, 30000) THEN
		RAISE EXCEPTION 'could not stop the worker of mirror "%"', m.name
			USING ERRCODE = '55006', HINT = 'Try again.';
	END IF;

	SELECT p.conninfo INTO ci FROM bunny.peer p WHERE p.name = m.source_peer;
	slot := quote_literal(m.slot_name);
	pub := quote_ident(m.publication_name);
	BEGIN
		PERFORM 1 FROM bunny._remote_query(ci, format($q$
			DO $bunny$
			DECLARE
				tries integer := 0;
			BEGIN
				LOOP
					PERFORM pg_catalog.pg_terminate_backend(active_pid)
					   FROM pg_catalog.pg_replication_slots
					  WHERE slot_name = %1$s AND active_pid IS NOT NULL;
					BEGIN
						PERFORM pg_catalog.pg_drop_replication_slot(slot_name)
						   FROM pg_catalog.pg_replication_slots WHERE slot_name = %1$s;
						EXIT;
					EXCEPTION WHEN object_in_use THEN
						tries := tries + 1;
						IF tries > 100 THEN
							RAISE;
						END IF;
						PERFORM pg_catalog.pg_sleep(0.1);
					END;
				END LOOP;
			END
			$bunny$
			$q$, slot)) AS r(x int);
		PERFORM 1 FROM bunny._remote_query(ci, format('DROP PUBLICATION IF EXISTS %s', pub)) AS r(x int);
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
