/*
 * bunnydb--0.3.0--0.4.0.sql
 *		Upgrade from 0.3.0.  Each change below has a section of its own,
 *		saying what it is for; test/t/019_upgrade.pl runs this script under
 *		a running mirror and compares the result with a fresh install.
 */

\echo Use "ALTER EXTENSION bunnydb UPDATE TO '0.4.0'" to load this file. \quit

-- ------------------------------------------------------------------------
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
					WHEN v.error_message IS NOT NULL THEN 'error'
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
