/*
 * bunnydb--0.2.0--0.3.0.sql
 *		Upgrade from 0.2.0: what the SQL API asks of or does on the source
 *		is the same C the workers use (src/source.c).  bunny.test_peer
 *		reads the source through bunny._test_peer, which applies setup's
 *		own check of wal_level and the REPLICATION attribute;
 *		bunny.drop_mirror drops the slot (terminating the walsender that
 *		holds it) and the publication through bunny._source_drop_slot and
 *		bunny._source_drop_publication instead of a DO block run on the
 *		source.  bunny.peer_tables, bunny.sync_schema and the resync
 *		request read the source through bunny._source_tables,
 *		bunny._source_columns, bunny._source_indexes,
 *		bunny._source_current_wal_lsn and bunny._source_slot_exists, the
 *		same queries setup uses.  Results, messages and SQLSTATEs are
 *		unchanged; sync_schema now visits a table's indexes by name.
 *		Every change of a mirror's status or phase is
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
 *		their names.  The API functions returning one value are entry
 *		points in C (api.c) over their PL/pgSQL bodies, moved to schema
 *		bunny_impl, so that their errors come without CONTEXT lines.
 */

\echo Use "ALTER EXTENSION bunnydb UPDATE TO '0.3.0'" to load this file. \quit

-- bunny.test_peer's row for a source: connecting failures raise
CREATE FUNCTION bunny._test_peer(conninfo text,
	OUT ok boolean, OUT server_version text, OUT wal_level text,
	OUT can_replicate boolean, OUT error text)
	RETURNS record
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_test_peer';
REVOKE ALL ON FUNCTION bunny._test_peer(text) FROM PUBLIC;

-- drop a replication slot on the source if it exists, terminating the
-- walsender that holds it (waits up to ten seconds for it to let go)
CREATE FUNCTION bunny._source_drop_slot(conninfo text, slot text) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_source_drop_slot';
REVOKE ALL ON FUNCTION bunny._source_drop_slot(text, text) FROM PUBLIC;

-- drop a publication on the source if it exists
CREATE FUNCTION bunny._source_drop_publication(conninfo text, publication text) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_source_drop_publication';
REVOKE ALL ON FUNCTION bunny._source_drop_publication(text, text) FROM PUBLIC;

-- whether a replication slot exists on the source
CREATE FUNCTION bunny._source_slot_exists(conninfo text, slot text) RETURNS boolean
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_source_slot_exists';
REVOKE ALL ON FUNCTION bunny._source_slot_exists(text, text) FROM PUBLIC;

-- the source's current WAL position
CREATE FUNCTION bunny._source_current_wal_lsn(conninfo text) RETURNS pg_lsn
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_source_current_wal_lsn';
REVOKE ALL ON FUNCTION bunny._source_current_wal_lsn(text) FROM PUBLIC;

-- the columns of a source table (quoted, qualified name), as setup reads them
CREATE FUNCTION bunny._source_columns(conninfo text, tbl text,
	OUT attname name, OUT type text, OUT nn boolean, OUT def text, OUT gen text)
	RETURNS SETOF record
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_source_columns';
REVOKE ALL ON FUNCTION bunny._source_columns(text, text) FROM PUBLIC;

-- the indexes of a source table (quoted, qualified name), by name
CREATE FUNCTION bunny._source_indexes(conninfo text, tbl text,
	OUT idxname name, OUT def text, OUT isprimary boolean, OUT cols text[])
	RETURNS SETOF record
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_source_indexes';
REVOKE ALL ON FUNCTION bunny._source_indexes(text, text) FROM PUBLIC;

-- the tables of the source a mirror could map
CREATE FUNCTION bunny._source_tables(conninfo text,
	OUT schema_name name, OUT table_name name, OUT has_primary_key boolean,
	OUT replica_identity text, OUT estimated_rows bigint)
	RETURNS SETOF record
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_source_tables';
REVOKE ALL ON FUNCTION bunny._source_tables(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION bunny.test_peer(name text)
	RETURNS TABLE (ok boolean, server_version text, wal_level text,
				   can_replicate boolean, error text)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ci text;
BEGIN
	SELECT p.conninfo INTO ci FROM bunny.peer p WHERE p.name = test_peer.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'peer "%" does not exist', test_peer.name USING ERRCODE = '42704';
	END IF;
	BEGIN
		SELECT r.ok, r.server_version, r.wal_level, r.can_replicate, r.error
		  INTO ok, server_version, wal_level, can_replicate, error
		  FROM bunny._test_peer(ci) r;
	EXCEPTION WHEN OTHERS THEN
		ok := false;
		error := SQLERRM;
	END;
	RETURN NEXT;
END
$$;

CREATE OR REPLACE FUNCTION bunny.drop_mirror(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	m		bunny.mirror;
	ci		text;
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

CREATE OR REPLACE FUNCTION bunny.peer_tables(name text)
	RETURNS TABLE (schema_name name, table_name name, has_primary_key boolean,
				   replica_identity text, estimated_rows bigint)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ci text;
BEGIN
	SELECT p.conninfo INTO ci FROM bunny.peer p WHERE p.name = peer_tables.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'peer "%" does not exist', peer_tables.name USING ERRCODE = '42704';
	END IF;
	RETURN QUERY
	SELECT * FROM bunny._source_tables(ci);
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
	slot_ok := bunny._source_slot_exists(ci, m.slot_name);

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
		src_lsn := bunny._source_current_wal_lsn(ci);
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
		SELECT * FROM bunny._source_columns(ci, src) AS r
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
		FOR ix IN SELECT * FROM bunny._source_indexes(ci, src) LOOP
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

-- ------------------------------------------------------------------------
-- State machine, typed options, logs, naming, API entry points
-- ------------------------------------------------------------------------

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

-- ------------------------------------------------------------------------
-- Snapshot parts claimed through indexes
-- ------------------------------------------------------------------------
-- A snapshot worker claims its parts one at a time.  The claim used to
-- group every part of the mirror, under one advisory lock per mirror: a
-- scan of all parts per claim (50 ms a claim at 1 000 tables, the whole
-- copy phase, with three of four workers waiting on the lock).  Now a
-- table whose copy is started and not finished says so in its row
-- (copy_in_progress: at most snapshot_num_tables_in_parallel rows, found
-- through their partial index), the parts left to copy have an index in
-- claiming order, and the parts being copied one of their own (at most
-- one per snapshot worker) for the coordinator's crash recovery.
ALTER TABLE bunny.mirror_table
	ADD COLUMN copy_in_progress boolean NOT NULL DEFAULT false;
CREATE INDEX mirror_table_copy_in_progress
	ON bunny.mirror_table (mirror_id) WHERE copy_in_progress;
CREATE INDEX snapshot_part_unfinished
	ON bunny.snapshot_part (mirror_id, source_schema, source_table, part_no)
	WHERE status <> 'DONE';
CREATE INDEX snapshot_part_running
	ON bunny.snapshot_part (mirror_id) WHERE status = 'RUNNING';
