/*
 * bunnydb--0.3.0--0.4.0.sql
 *		Upgrade from 0.3.0.  Each change below has a section of its own,
 *		saying what it is for; test/t/019_upgrade.pl runs this script under
 *		a running mirror and compares the result with a fresh install.
 */

\echo Use "ALTER EXTENSION bunnydb UPDATE TO '0.4.0'" to load this file. \quit

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
