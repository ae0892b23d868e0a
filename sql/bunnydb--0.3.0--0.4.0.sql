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
	-- a STALE table's message (cancel_operation) says what it needs, not
	-- what failed: it stays until the table is copied again
	UPDATE bunny.mirror_table SET error_message = NULL
	 WHERE mirror_id = NEW.id AND error_message IS NOT NULL AND status <> 'STALE';
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

-- Progress of the copies, and a one-line-per-mirror overview
-- ------------------------------------------------------------------------
-- The initial copy and every resync show how far they are, per table
-- (bunny.copy_progress) and per mirror (bunny.mirror_copy_progress), as
-- pg_stat_progress_copy does for one COPY; bunny.mirror_overview is the
-- short answer to "how are my mirrors?" that fits an 80-column terminal.
--
-- What is done is the parts already DONE (rows_copied, and now
-- bytes_copied, committed with the part) plus, for the parts running, what
-- their snapshot worker's COPY has written so far.  That comes from the
-- worker's progress report in shared memory (pg_stat_progress_copy, which
-- COPY FROM updates on every row anyway): nothing is written during a
-- part's copy, so the copy is not slowed.  The report names its part and
-- carries the worker's previous part's final counts, so that a part is
-- counted once, and in full, whichever of its worker's steps the reader's
-- snapshot falls between.  The totals are estimates: the source's
-- row count and size as setup or the resync's plan found them
-- (mirror_table.source_rows, source_pages).

ALTER TABLE bunny.snapshot_part ADD COLUMN bytes_copied bigint;

-- the COPY progress of the snapshot workers running a part: what
-- pg_stat_progress_copy shows, and the slots of our own the workers add
-- (src/copypart.c): which part the counts are of, and the counts of the
-- worker's previous part.  SECURITY DEFINER: the progress of other users'
-- backends shows only to members of pg_read_all_stats, and the workers
-- run as the bootstrap superuser
CREATE FUNCTION bunny._copy_progress_live()
	RETURNS TABLE (pid integer, relid oid, part_no integer, rows_copied bigint,
				   bytes_copied bigint, prev_relid oid, prev_part_no integer,
				   prev_rows_copied bigint, prev_bytes_copied bigint)
	LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT p.pid, p.relid, (p.param11 - 1)::integer, p.param3, p.param1,
		   p.param12::oid, (p.param13 - 1)::integer, p.param14, p.param15
	  FROM pg_stat_get_progress_info('COPY') p
	 WHERE p.datid = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
	   AND p.pid IN (SELECT s.worker_pid FROM bunny.snapshot_part s WHERE s.status = 'RUNNING')
$$;

-- a duration in at most four characters: 59s, 59m, 47h, 999d
CREATE FUNCTION bunny._short_duration(seconds double precision) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN seconds IS NULL THEN NULL
				WHEN seconds < 60 THEN greatest(round(seconds), 0) || 's'
				WHEN seconds < 3600 THEN floor(seconds / 60) || 'm'
				WHEN seconds < 172800 THEN floor(seconds / 3600) || 'h'
				ELSE least(floor(seconds / 86400), 999) || 'd' END
$$;

-- percent, rate and eta of a copy from what is done and what is estimated:
-- below 100 % until every part is in; by rows where there is an estimate,
-- else by parts
CREATE FUNCTION bunny._copy_rate(parts_done bigint, parts_total bigint, rows_done bigint,
								 rows_total bigint, seconds double precision,
								 OUT percent numeric, OUT rows_per_second bigint, OUT eta interval)
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN parts_done = parts_total THEN 100
				WHEN rows_total > 0 THEN least(99.9, round(100.0 * rows_done / rows_total, 1))
				ELSE round(100.0 * parts_done / nullif(parts_total, 0), 1) END,
		   round(r.rate)::bigint,
		   CASE WHEN parts_done = parts_total THEN interval '0'
				WHEN r.rate > 0 AND rows_total > rows_done
				THEN make_interval(secs => round((rows_total - rows_done) / r.rate)) END
	  FROM (SELECT CASE WHEN seconds > 0 AND rows_done > 0 THEN rows_done / seconds END AS rate) r
$$;

CREATE VIEW bunny.copy_progress AS
	WITH live AS MATERIALIZED (
		SELECT * FROM bunny._copy_progress_live()
	), parts AS (
		SELECT p.mirror_id, p.source_schema, p.source_table,
			   count(*) AS parts_total,
			   count(*) FILTER (WHERE p.status = 'DONE') AS parts_done,
			   count(*) FILTER (WHERE p.status = 'RUNNING') AS parts_running,
			   sum(CASE WHEN p.status = 'DONE' THEN coalesce(p.rows_copied, 0)
						WHEN l.part_no = p.part_no AND l.relid = p.target THEN l.rows_copied
						WHEN l.prev_part_no = p.part_no AND l.prev_relid = p.target
						THEN l.prev_rows_copied
						ELSE 0 END)::bigint AS rows_done,
			   sum(CASE WHEN p.status = 'DONE' THEN coalesce(p.bytes_copied, 0)
						WHEN l.part_no = p.part_no AND l.relid = p.target THEN l.bytes_copied
						WHEN l.prev_part_no = p.part_no AND l.prev_relid = p.target
						THEN l.prev_bytes_copied
						ELSE 0 END)::bigint AS bytes_done
		  FROM (SELECT q.*,
					   to_regclass(format('%I.%I', t.destination_schema,
										  coalesce(t.copy_target_table, t.destination_table))) AS target
				  FROM bunny.snapshot_part q
				  JOIN bunny.mirror_table t USING (mirror_id, source_schema, source_table)
				 WHERE t.status = 'SNAPSHOT' OR t.resync_state = 'COPYING') p
		  LEFT JOIN live l ON p.status = 'RUNNING' AND l.pid = p.worker_pid
		 GROUP BY 1, 2, 3
	), tables AS (
		SELECT m.name AS mirror, t.source_schema, t.source_table,
			   CASE WHEN t.resync_state IS NULL THEN 'copy'
					WHEN t.resync_strategy = 'add' THEN 'add'
					ELSE 'resync' END AS phase,
			   CASE WHEN p.parts_done = p.parts_total THEN 'finishing'
					WHEN p.parts_done + p.parts_running > 0 THEN 'copying'
					ELSE 'waiting' END AS state,
			   p.parts_done, p.parts_total, p.rows_done, p.bytes_done,
			   CASE WHEN p.parts_done = p.parts_total THEN p.rows_done
					ELSE greatest(coalesce(t.source_rows, 0), p.rows_done) END AS rows_total,
			   t.source_pages * current_setting('block_size')::bigint AS bytes_total,
			   t.snapshot_started_at AS started_at,
			   extract(epoch FROM clock_timestamp() - t.snapshot_started_at)::double precision AS seconds
		  FROM parts p
		  JOIN bunny.mirror_table t USING (mirror_id, source_schema, source_table)
		  JOIN bunny.mirror m ON m.id = t.mirror_id
	)
	SELECT t.mirror, format('%I.%I', t.source_schema, t.source_table) AS source_table, t.phase, t.state,
		   t.parts_done, t.parts_total, t.rows_done, t.rows_total AS rows_total_estimate,
		   t.bytes_done, t.bytes_total AS bytes_total_estimate, r.percent::numeric(4, 1) AS percent,
		   r.rows_per_second, t.started_at, r.eta
	  FROM tables t,
		   bunny._copy_rate(t.parts_done, t.parts_total, t.rows_done, t.rows_total, t.seconds) r;

CREATE VIEW bunny.mirror_copy_progress AS
	WITH sums AS (
		SELECT c.mirror, string_agg(DISTINCT c.phase, ',') AS phase,
			   count(*) FILTER (WHERE c.parts_done = c.parts_total) AS tables_done,
			   count(*) AS tables_total,
			   sum(c.parts_done)::bigint AS parts_done, sum(c.parts_total)::bigint AS parts_total,
			   sum(c.rows_done)::bigint AS rows_done,
			   sum(c.rows_total_estimate)::bigint AS rows_total,
			   sum(c.bytes_done)::bigint AS bytes_done,
			   sum(c.bytes_total_estimate)::bigint AS bytes_total,
			   min(c.started_at) AS started_at,
			   extract(epoch FROM clock_timestamp() - min(c.started_at))::double precision AS seconds
		  FROM bunny.copy_progress c
		 GROUP BY c.mirror
	)
	SELECT s.mirror, s.phase, s.tables_done, s.tables_total, s.rows_done,
		   s.rows_total AS rows_total_estimate, s.bytes_done, s.bytes_total AS bytes_total_estimate,
		   r.percent::numeric(4, 1) AS percent, r.rows_per_second, s.started_at, r.eta
	  FROM sums s,
		   bunny._copy_rate(s.parts_done, s.parts_total, s.rows_done, s.rows_total, s.seconds) r;

-- One line per mirror, at most 80 characters wide in psql's aligned
-- format: a name longer than 15 characters is cut (bunny.mirrors has it
-- whole), and the error gets what the other columns leave.
CREATE VIEW bunny.mirror_overview AS
	WITH o AS (
		SELECT CASE WHEN length(v.name) > 15 THEN left(v.name, 14) || '~' ELSE v.name END AS mirror,
			   v.status, v.phase,
			   CASE WHEN v.status = 'FAILED' THEN 'failed'
					WHEN v.status IN ('PAUSED', 'PAUSING') THEN 'paused'
					WHEN NOT v.healthy THEN 'error'
					WHEN v.lag_seconds IS NULL THEN 'down'
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

GRANT SELECT ON bunny.copy_progress, bunny.mirror_copy_progress, bunny.mirror_overview
	TO bunny_monitor;
REVOKE ALL ON FUNCTION bunny._copy_progress_live(), bunny._short_duration(double precision),
	bunny._copy_rate(bigint, bigint, bigint, bigint, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bunny._copy_progress_live(), bunny._short_duration(double precision),
	bunny._copy_rate(bigint, bigint, bigint, bigint, double precision) TO bunny_monitor;


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

-- ------------------------------------------------------------------------
-- update_tables before the initial copy
-- ------------------------------------------------------------------------
-- A mirror whose worker met a missing source table in setup (created while
-- the source was unreachable, so create_mirror could not check, or the
-- table dropped before setup ran) is FAILED in phase SETUP, and the
-- README's fix is pause_mirror, update_tables, resume_mirror.  update_tables
-- refused every phase but CDC, so only drop_mirror was left.  In phase
-- SETUP nothing has been copied and setup runs again from the start with
-- the table list it finds, setting the publication's tables itself (so
-- publication_dirty, which asks CDC to refresh them, is left alone).  A
-- removed table's catalog rows go (its copy plan with them); a destination
-- table that an earlier run of setup created for it stays, as it does when
-- update_tables removes a table in CDC.  In phase SNAPSHOT the copy is
-- under way with the slot's snapshot, which cannot take new tables: the
-- refusal now says what to do instead.
CREATE OR REPLACE FUNCTION bunny_impl.update_tables(name text, table_mappings jsonb) RETURNS void
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
	IF m.phase = 'SNAPSHOT' THEN
		RAISE EXCEPTION 'mirror "%" has not finished its initial copy', m.name
			USING ERRCODE = '55000',
				  HINT = format('Resume it with bunny.resume_mirror(%L) and wait until the initial copy has finished (phase CDC), or drop the mirror and create it again with the new tables.',
								m.name);
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
			CASE WHEN m.phase = 'CDC' OR r.created_by_bunny
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
	END IF;
	DROP TABLE bunny_new_mappings;
	PERFORM bunny._notify(m.id);
END
$$;

-- ------------------------------------------------------------------------
-- A table's copy plan, later DDL and sequences as typed rows
-- ------------------------------------------------------------------------
-- Setup recorded in jsonb columns of bunny.mirror_table the parts of a
-- table's copy (copy_parts), the constraints and indexes built after it
-- (post_copy_ddl), the foreign keys built after every copy (fk_ddl) and
-- the sequences whose values are taken over (sequences).  The C code wrote
-- that JSON with escape_json only for C code of the same library to parse
-- it again with jsonb_array_elements, for each of 10 000 tables.  They are
-- rows of the three tables below now: written per table with one INSERT
-- ... SELECT FROM unnest() of typed arrays, read as typed columns, removed
-- with their mirror_table row (update_tables, drop_mirror) by the foreign
-- keys.  The rows of existing mirrors move over; the jsonb columns are
-- dropped (no view showed them).  bunny._apply_ddl reads the rows itself.
--
-- Users replace the library before they run ALTER EXTENSION UPDATE: until
-- this has run, the new library reads and writes the jsonb columns
-- (src/schema.c, schema_rows_typed), so a mirror copying across the update
-- goes on with what it recorded before it.

-- the parts of a table's copy, which bunny.snapshot_part is made from
CREATE TABLE bunny.mirror_table_part (
	mirror_id		integer NOT NULL,
	source_schema	name NOT NULL,
	source_table	name NOT NULL,
	part_no			integer NOT NULL,
	from_relation	text NOT NULL,	-- what to read: ONLY table, or a leaf partition
	predicate		text,			-- WHERE clause on the source, or NULL for all
	PRIMARY KEY (mirror_id, source_schema, source_table, part_no),
	FOREIGN KEY (mirror_id, source_schema, source_table)
		REFERENCES bunny.mirror_table (mirror_id, source_schema, source_table) ON DELETE CASCADE
);

-- the statements that complete a table bunnydb created, in order: its
-- constraints and indexes after its copy, its foreign keys after every copy
CREATE TABLE bunny.mirror_table_ddl (
	mirror_id		integer NOT NULL,
	source_schema	name NOT NULL,
	source_table	name NOT NULL,
	ordinal			integer NOT NULL,
	kind			text NOT NULL CHECK (kind IN ('constraint', 'index', 'foreign key')),
	name			name NOT NULL,	-- the object's name on the destination
	sql				text NOT NULL,
	PRIMARY KEY (mirror_id, source_schema, source_table, ordinal),
	FOREIGN KEY (mirror_id, source_schema, source_table)
		REFERENCES bunny.mirror_table (mirror_id, source_schema, source_table) ON DELETE CASCADE
);

-- the sequences of a table bunnydb created whose values are taken over
-- from the source once its data is in, both names qualified
CREATE TABLE bunny.mirror_table_sequence (
	mirror_id		integer NOT NULL,
	source_schema	name NOT NULL,
	source_table	name NOT NULL,
	ordinal			integer NOT NULL,
	source_seq		text NOT NULL,
	dest_seq		text NOT NULL,
	column_name		name NOT NULL,
	PRIMARY KEY (mirror_id, source_schema, source_table, ordinal),
	FOREIGN KEY (mirror_id, source_schema, source_table)
		REFERENCES bunny.mirror_table (mirror_id, source_schema, source_table) ON DELETE CASCADE
);

SELECT pg_catalog.pg_extension_config_dump('bunny.mirror_table_part', '');
SELECT pg_catalog.pg_extension_config_dump('bunny.mirror_table_ddl', '');
SELECT pg_catalog.pg_extension_config_dump('bunny.mirror_table_sequence', '');

INSERT INTO bunny.mirror_table_part
SELECT t.mirror_id, t.source_schema, t.source_table, (p.n - 1)::integer,
	   p.e ->> 'from', p.e ->> 'where'
  FROM bunny.mirror_table t,
	   jsonb_array_elements(coalesce(t.copy_parts, '[]')) WITH ORDINALITY p(e, n);

INSERT INTO bunny.mirror_table_ddl
SELECT t.mirror_id, t.source_schema, t.source_table, d.n::integer, d.kind,
	   d.e ->> 'name', d.e ->> 'sql'
  FROM bunny.mirror_table t,
	   LATERAL (SELECT x.e, x.n, x.e ->> 'kind' AS kind
				  FROM jsonb_array_elements(t.post_copy_ddl) WITH ORDINALITY x(e, n)
				UNION ALL
				SELECT y.e, jsonb_array_length(t.post_copy_ddl) + y.n, 'foreign key'
				  FROM jsonb_array_elements(t.fk_ddl) WITH ORDINALITY y(e, n)) d;

INSERT INTO bunny.mirror_table_sequence
SELECT t.mirror_id, t.source_schema, t.source_table, s.n::integer,
	   s.e ->> 'source', s.e ->> 'dest', s.e ->> 'column'
  FROM bunny.mirror_table t,
	   jsonb_array_elements(t.sequences) WITH ORDINALITY s(e, n);

ALTER TABLE bunny.mirror_table
	DROP COLUMN copy_parts,
	DROP COLUMN post_copy_ddl,
	DROP COLUMN fk_ddl,
	DROP COLUMN sequences;

DROP FUNCTION bunny._apply_ddl(text, regclass, jsonb);

/*
 * Run the statements of the given kinds that complete a table bunnydb
 * created (bunny.mirror_table_ddl), skipping the ones already done: a
 * crash can interrupt them anywhere.  Each statement is logged.
 */
CREATE FUNCTION bunny._apply_ddl(p_mirror_id integer, p_source_schema name, p_source_table name,
								 p_kinds text[]) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	item record;
	mirror_name text;
	dest regclass;
	done integer := 0;
	saved_timeout text := current_setting('deadlock_timeout');
	may_set boolean := EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND rolsuper);
BEGIN
	SELECT m.name, format('%I.%I', t.destination_schema, t.destination_table)::regclass
	  INTO mirror_name, dest
	  FROM bunny.mirror_table t JOIN bunny.mirror m ON m.id = t.mirror_id
	 WHERE t.mirror_id = p_mirror_id AND t.source_schema = p_source_schema
	   AND t.source_table = p_source_table;
	/*
	 * Autovacuum often starts on a table that was just copied.  The DDL
	 * below waits for it until deadlock_timeout (1 s by default), and only
	 * then cancels it; on our own fresh table, cancel it at once.
	 */
	IF may_set THEN
		PERFORM set_config('deadlock_timeout', '10ms', true);
	END IF;
	FOR item IN SELECT d.kind, d.name, d.sql FROM bunny.mirror_table_ddl d
				 WHERE d.mirror_id = p_mirror_id AND d.source_schema = p_source_schema
				   AND d.source_table = p_source_table AND d.kind = ANY (p_kinds)
				 ORDER BY d.ordinal LOOP
		IF item.kind <> 'index' AND EXISTS (
				SELECT 1 FROM pg_constraint
				 WHERE conrelid = dest AND conname = item.name) THEN
			CONTINUE;
		END IF;
		IF item.kind = 'index' AND EXISTS (
				SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
				 WHERE i.indrelid = dest AND c.relname = item.name) THEN
			CONTINUE;
		END IF;
		EXECUTE item.sql;
		done := done + 1;
		PERFORM bunny._log(mirror_name, 'INFO', format('%s %s on %s', CASE item.kind
			WHEN 'index' THEN 'created index' ELSE 'added constraint' END,
			quote_ident(item.name), dest), jsonb_build_object('sql', item.sql));
	END LOOP;
	IF may_set THEN
		PERFORM set_config('deadlock_timeout', saved_timeout, true);
	END IF;
	RETURN done;
END
$$;
REVOKE ALL ON FUNCTION bunny._apply_ddl(integer, name, name, text[]) FROM PUBLIC;

-- ------------------------------------------------------------------------
-- The transition table holds for the workers too
-- ------------------------------------------------------------------------
-- The trigger that checks every change of a mirror's status or phase
-- against the transition table of state.c fired for the SQL functions
-- only: the workers run with session_replication_role = replica, under
-- which an ordinary trigger does not fire.  ALWAYS makes it fire there
-- too, so that a transition a worker makes and nobody planned fails at
-- once, as state.h says.
ALTER TABLE bunny.mirror ENABLE ALWAYS TRIGGER mirror_state_guard;

-- ------------------------------------------------------------------------
-- Table mappings parsed in linear time
-- ------------------------------------------------------------------------
-- _parse_mappings looked for each mapping's names among all those seen
-- before it (= ANY of a growing array), twice per create_mirror: 50
-- million comparisons, seconds, at 10 000 tables.  Duplicates are now
-- found once, after parsing, with GROUP BY; the messages are the same.
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
				USING ERRCODE = '42710';
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
