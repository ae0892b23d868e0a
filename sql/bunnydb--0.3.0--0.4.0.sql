/*
 * bunnydb--0.3.0--0.4.0.sql
 *		Upgrade from 0.3.0.  Each change below has a section of its own,
 *		saying what it is for; test/t/019_upgrade.pl runs this script under
 *		a running mirror and compares the result with a fresh install.
 */

\echo Use "ALTER EXTENSION bunnydb UPDATE TO '0.4.0'" to load this file. \quit

-- ------------------------------------------------------------------------
-- sync_schema's statements come from the C schema model
-- ------------------------------------------------------------------------
-- bunny.sync_schema wrote its own ALTER TABLE and CREATE INDEX statements
-- with format() and regexp_replace(), next to the same statements in C for
-- setup, the apply (a column the source gained) and resync.  They now all
-- come from schema.c: these three internal functions return the statement
-- for sync_schema to run, so a column or an index gets the same
-- definition whichever path adds it.  sync_schema keeps its name,
-- signature, messages and SQLSTATEs; only where its statements come from
-- changes.

-- ALTER TABLE ... ADD COLUMN for a source column (schema_add_column_ddl)
CREATE FUNCTION bunny._add_column_ddl(dest text, attname text, type text,
	generated text, def text) RETURNS text
	LANGUAGE c IMMUTABLE AS 'MODULE_PATHNAME', 'bunny_add_column_ddl';
REVOKE ALL ON FUNCTION bunny._add_column_ddl(text, text, text, text, text) FROM PUBLIC;

-- ALTER TABLE ... ALTER/DROP COLUMN: change is 'type', 'default',
-- 'set not null', 'drop not null' or 'drop'
CREATE FUNCTION bunny._alter_column_ddl(dest text, attname text, change text,
	value text) RETURNS text
	LANGUAGE c IMMUTABLE AS 'MODULE_PATHNAME', 'bunny_alter_column_ddl';
REVOKE ALL ON FUNCTION bunny._alter_column_ddl(text, text, text, text) FROM PUBLIC;

-- a source index (bunny._source_indexes) on the destination table, or
-- NULL when its definition is not in a form setup knows (schema_index_ddl)
CREATE FUNCTION bunny._index_ddl(src text, dest text, def text,
	isprimary boolean, cols text[]) RETURNS text
	LANGUAGE c IMMUTABLE AS 'MODULE_PATHNAME', 'bunny_index_ddl';
REVOKE ALL ON FUNCTION bunny._index_ddl(text, text, text, boolean, text[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION bunny_impl.sync_schema(name text) RETURNS void
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
				ddl := bunny._add_column_ddl(dest, c.attname, c.type, c.gen, NULL);
				EXECUTE ddl;
				PERFORM bunny._log(m.name, 'INFO', format('sync_schema: added generated column %I to %s', c.attname, dest),
								   jsonb_build_object('sql', ddl));
				n := n + 1;
				CONTINUE;
			END IF;
			CONTINUE WHEN c.gen IS NOT NULL OR c.dgenerated;
			IF c.missing THEN
				ddl := bunny._add_column_ddl(dest, c.attname, c.type, NULL, c.def);
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
						ddl := bunny._alter_column_ddl(dest, c.attname, 'set not null', NULL);
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
				ddl := bunny._alter_column_ddl(dest, c.attname, 'type', c.type);
				EXECUTE ddl;
				PERFORM bunny._log(m.name, 'INFO', format('sync_schema: column %I of %s is now %s', c.attname, dest, c.type),
								   jsonb_build_object('sql', ddl));
				n := n + 1;
			END IF;
			IF c.def IS DISTINCT FROM c.ddef
			   AND coalesce(c.def, '') NOT LIKE '%nextval(%' AND coalesce(c.ddef, '') NOT LIKE '%nextval(%' THEN
				ddl := bunny._alter_column_ddl(dest, c.attname, 'default', c.def);
				EXECUTE ddl;
				PERFORM bunny._log(m.name, 'INFO', format('sync_schema: %s', ddl), jsonb_build_object('sql', ddl));
				n := n + 1;
			END IF;
			IF c.nn IS DISTINCT FROM c.dnn THEN
				ddl := bunny._alter_column_ddl(dest, c.attname,
											   CASE WHEN c.nn THEN 'set not null' ELSE 'drop not null' END, NULL);
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
			ddl := bunny._alter_column_ddl(dest, c.attname, 'drop', NULL);
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
			-- NULL: a definition not in the form setup knows either
			ddl := bunny._index_ddl(src, dest, ix.def, ix.isprimary, ix.cols);
			CONTINUE WHEN ddl IS NULL;
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
