--
-- 03_mirrors: README "SQL API reference", "Mirrors" and "Monitoring"
--
-- Mirrors here use peer "nowhere" (unreachable, never validated): their
-- workers fail in the background.  Nothing below depends on worker state.
--
\set VERBOSITY sqlstate

CREATE VIEW catalog_counts AS
	SELECT (SELECT count(*) FROM bunny.mirror) AS mirrors,
		   (SELECT count(*) FROM bunny.mirror_table) AS mirror_tables;

SELECT * FROM catalog_counts;

-- invalid mirror names: 22023
SELECT bunny.create_mirror('Bad', 'nowhere', '["public.t1"]');
SELECT bunny.create_mirror('', 'nowhere', '["public.t1"]');
SELECT bunny.create_mirror(repeat('a', 49), 'nowhere', '["public.t1"]');
SELECT bunny.create_mirror('a b', 'nowhere', '["public.t1"]');
SELECT bunny.create_mirror('x;drop', 'nowhere', '["public.t1"]');
SELECT bunny.create_mirror(E'abc\n', 'nowhere', '["public.t1"]');
SELECT bunny.create_mirror('ab.c', 'nowhere', '["public.t1"]');
SELECT bunny.create_mirror('ümlaut', 'nowhere', '["public.t1"]');
SELECT bunny.create_mirror(NULL, 'nowhere', '["public.t1"]');
SELECT * FROM catalog_counts;

-- unknown peer: 42704; NULL peer: 22004
SELECT bunny.create_mirror('m_nopeer', 'nosuch', '["public.t1"]');
SELECT bunny.create_mirror('m_nopeer', NULL, '["public.t1"]');
SELECT * FROM catalog_counts;

-- malformed mappings: 22023 (NULL: 22004)
SELECT bunny.create_mirror('m_bad', 'nowhere', NULL);
SELECT bunny.create_mirror('m_bad', 'nowhere', '{}');
SELECT bunny.create_mirror('m_bad', 'nowhere', '{"source_table": "public.t1"}');
SELECT bunny.create_mirror('m_bad', 'nowhere', '"public.t1"');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[1]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[null]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[["public.t1"]]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": 5}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": null}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"destination_table": "public.t1"}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": "public.t1", "bogus": 1}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["a.b.c"]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[""]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public."]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["\"unterminated"]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": "public.t1", "destination_table": 7}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": "public.t1", "destination_table": "a.b.c"}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": "public.t1", "exclude_columns": "c"}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": "public.t1", "exclude_columns": [1]}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": "public.t1", "exclude_columns": [""]}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": "public.t1", "partition_key": 1}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": "public.t1", "partition_key": ""}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": "public.t1", "partition_key": "c", "exclude_columns": ["c"]}]');
-- one valid mapping does not save a bad one later in the list
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1", 1]');
SELECT * FROM catalog_counts;

-- the same destination twice in one call: 42710
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1", "public.t1"]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["t1", "public.t1"]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1", {"source_table": "public.t2", "destination_table": "public.t1"}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.T1", "public.t1"]');
SELECT * FROM catalog_counts;

-- options out of range: 22023; NULL options: 22004
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', max_batch_size => 0);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', max_batch_size => 1000001);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', idle_timeout_seconds => 0);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', idle_timeout_seconds => 86401);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', snapshot_num_rows_per_partition => 0);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', snapshot_max_parallel_workers => 0);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', snapshot_max_parallel_workers => 65);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', snapshot_num_tables_in_parallel => 0);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', snapshot_num_tables_in_parallel => 65);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', resync_strategy => 'foo');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', resync_strategy => 'TRUNCATE');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', resync_strategy => NULL);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', max_batch_size => NULL);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', idle_timeout_seconds => NULL);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', snapshot_num_rows_per_partition => NULL);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', snapshot_max_parallel_workers => NULL);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', snapshot_num_tables_in_parallel => NULL);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', do_initial_snapshot => NULL);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', replicate_indexes => NULL);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', replicate_foreign_keys => NULL);
SELECT * FROM catalog_counts;

-- a few messages in full
\set VERBOSITY terse
SELECT bunny.create_mirror('Bad', 'nowhere', '["public.t1"]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": "public.t1", "bogus": 1}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["a.b.c"]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1", "t1"]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1", {"source_table": "public.t2", "destination_table": "t1"}]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', max_batch_size => 0);
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]', resync_strategy => 'foo');
\set VERBOSITY sqlstate

-- a mirror with defaults; string mappings, unqualified name -> public
SELECT bunny.create_mirror('m1', 'nowhere', '["public.t1", "t2"]');
SELECT * FROM catalog_counts;
-- options lists only what differs from create_mirror's defaults: none here;
-- mirror_status() has every value
SELECT name, source_peer, slot_name, publication_name, options, created_at <= now() AS created_ok
  FROM bunny.mirrors WHERE name = 'm1';
SELECT bunny.mirror_status('m1')->'config' AS config;
-- so that psql's \x draws no rule wider than a terminal for such a mirror
-- (but for an error message, which may be long)
SELECT coalesce(string_agg(f.key || ': ' || f.value, ', '), 'none') AS fields_60_wide
  FROM bunny.mirrors v, jsonb_each(to_jsonb(v)) f
 WHERE v.name = 'm1' AND f.key <> 'error_message' AND length(f.value::text) >= 60;
SELECT mirror, source_table, destination_table, rows_snapshotted, rows_inserted,
	   rows_updated, rows_deleted
  FROM bunny.mirror_tables WHERE mirror = 'm1' ORDER BY source_table;
SELECT t.source_schema, t.source_table, t.destination_schema, t.destination_table,
	   t.partition_key, t.exclude_columns
  FROM bunny.mirror_table t JOIN bunny.mirror m ON m.id = t.mirror_id
 WHERE m.name = 'm1' ORDER BY 1, 2;

-- duplicate mirror: 42710
SELECT bunny.create_mirror('m1', 'nowhere', '["public.other"]');
-- destination already used by another mirror: 42710
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '["t2"]');
SELECT bunny.create_mirror('m_bad', 'nowhere', '[{"source_table": "other.x", "destination_table": "public.t2"}]');
\set VERBOSITY default
SELECT bunny.create_mirror('m_bad', 'nowhere', '["public.t1"]');
\set VERBOSITY sqlstate
SELECT * FROM catalog_counts;

-- every option, object mappings, quoted names
SELECT bunny.create_mirror('m-two', 'nowhere',
	'[{"source_table": "public.orders", "destination_table": "archive.orders",
	   "partition_key": "user_id", "exclude_columns": ["internal_notes", "Secret Col"]},
	  {"source_table": "\"public\".\"Mixed Case\""},
	  {"source_table": "src.\"UPPER\"", "destination_table": "Dst.\"Lower\"", "partition_key": null, "exclude_columns": null},
	  "\"Quoted\".Unquoted"]',
	do_initial_snapshot => false, max_batch_size => 1000000, idle_timeout_seconds => 86400,
	snapshot_num_rows_per_partition => 1, snapshot_max_parallel_workers => 64,
	snapshot_num_tables_in_parallel => 1, replicate_indexes => false,
	replicate_foreign_keys => false, resync_strategy => 'swap');
SELECT name, source_peer, slot_name, publication_name, options
  FROM bunny.mirrors WHERE name = 'm-two';
SELECT t.source_schema, t.source_table, t.destination_schema, t.destination_table,
	   t.partition_key, t.exclude_columns
  FROM bunny.mirror_table t JOIN bunny.mirror m ON m.id = t.mirror_id
 WHERE m.name = 'm-two' ORDER BY 1, 2;
-- the view quotes names as SQL identifiers
SELECT source_table, destination_table
  FROM bunny.mirror_tables WHERE mirror = 'm-two' ORDER BY source_table;
-- the bounds themselves are accepted
SELECT bunny.create_mirror('m3', 'nowhere', '["public.t3"]', max_batch_size => 1,
	idle_timeout_seconds => 1, snapshot_max_parallel_workers => 1,
	snapshot_num_tables_in_parallel => 64, replicate_indexes => true);
-- replicate_indexes => true is its default: not among the options shown
SELECT options FROM bunny.mirrors WHERE name = 'm3';
-- the longest name: 48 characters
SELECT bunny.create_mirror(repeat('z', 48), 'nowhere', '["public.t48"]');
SELECT length(name), slot_name = 'bunny_slot_' || repeat('z', 48) AS slot_ok
  FROM bunny.mirrors WHERE name = repeat('z', 48);

-- names that differ only by "-" and "_" clash (same slot name): 42710
SELECT bunny.create_mirror('a-b', 'nowhere', '["public.ab1"]');
SELECT bunny.create_mirror('a_b', 'nowhere', '["public.ab2"]');
SELECT bunny.create_mirror('m_two', 'nowhere', '["public.ab3"]');
SELECT name, slot_name, publication_name FROM bunny.mirrors ORDER BY name;
SELECT * FROM catalog_counts;

-- unknown mirror: 42704; NULL: 22004
SELECT bunny.pause_mirror('nosuch');
SELECT bunny.resume_mirror('nosuch');
SELECT bunny.retry_mirror('nosuch');
SELECT bunny.drop_mirror('nosuch');
SELECT bunny.mirror_status('nosuch');
SELECT bunny.wait_for_lsn('nosuch', '0/0', 0);
SELECT bunny.pause_mirror(NULL);
SELECT bunny.drop_mirror(NULL);

-- mirror_status of a known mirror
SELECT k FROM jsonb_object_keys(bunny.mirror_status('m1')) AS k ORDER BY k;
SELECT s->>'name' AS name, s->>'source_peer' AS peer, s->>'slot_name' AS slot,
	   jsonb_typeof(s->'tables') AS tables_type,
	   jsonb_array_length(s->'tables') AS n_tables,
	   s->'tables'->0->>'source_table' AS first_table,
	   s->'tables'->0 ? 'mirror' AS has_mirror_key,
	   s ? 'status' AS has_status
  FROM bunny.mirror_status('m1') AS s;
SELECT k FROM jsonb_object_keys(bunny.mirror_status('m1')->'tables'->0) AS k ORDER BY k;

-- wait_for_lsn: timeout 0 returns false at once; bad arguments
SELECT bunny.wait_for_lsn('m1', 'FFFFFFFF/FFFFFFFF', 0);
SELECT bunny.wait_for_lsn('m1', 'FFFFFFFF/FFFFFFFF', 10);
SELECT bunny.wait_for_lsn('m1', NULL, 0);
SELECT bunny.wait_for_lsn('m1', '0/1', NULL);
SELECT bunny.wait_for_lsn('m1', '0/1', -1);

-- logs(): every create_mirror wrote an INFO line "mirror created"
SELECT mirror, level, message, details->>'source_peer' AS peer, details->'tables' AS tables,
	   details->'config'->>'resync_strategy' AS strategy
  FROM bunny.logs('m1', 'INFO', 'mirror created');
SELECT count(*) FROM bunny.logs('m1', 'info', 'MIRROR CREATED');
SELECT count(*) FROM bunny.logs('m1', 'ERROR', 'mirror created');
SELECT count(*) FROM bunny.logs('m1', NULL, 'no such text');
-- search also matches details
SELECT count(*) FROM bunny.logs('m-two', 'INFO', '"resync_strategy": "swap"');
SELECT count(*) FROM bunny.logs('m1', 'INFO', 'SWAP');
-- limit and offset
SELECT count(*) FROM bunny.logs('nosuch');  -- 42704: neither a mirror nor log lines
SELECT count(*) FROM bunny.logs('m1', NULL, 'mirror created', 0);
SELECT count(*) FROM bunny.logs('m1', NULL, 'mirror created', 1);
SELECT count(*) FROM bunny.logs('m1', NULL, 'mirror created', 1, 1);
SELECT count(*) FROM bunny.logs('m1', 'INFO', 'mirror created', "limit" => 5, "offset" => 0);
-- alter_peer writes one line per mirror of the peer: two more lines for m1
SELECT bunny.alter_peer('nowhere', 'host=127.0.0.1 port=1 connect_timeout=2 dbname=x', validate => false);
SELECT bunny.alter_peer('nowhere', 'host=127.0.0.1 port=1 connect_timeout=2 dbname=x', validate => false);
SELECT level, message FROM bunny.logs('m1', 'INFO', 'reconnecting');
SELECT count(*) FROM bunny.logs('m1', 'INFO', 'Reconnecting', 1);
SELECT count(*) FROM bunny.logs('m1', 'INFO', 'reconnecting', 1, 1);
SELECT count(*) FROM bunny.logs('m1', 'INFO', 'reconnecting', 5, 2);
-- newest first
SELECT (array_agg(id))[1] > (array_agg(id))[2] AS newest_first
  FROM bunny.logs('m1', 'INFO', 'reconnecting');
SELECT count(*) FROM bunny.logs('m1', 'INFO', 'peer "nowhere" changed');
-- bad arguments
SELECT * FROM bunny.logs('m1', 'nope');
SELECT * FROM bunny.logs('m1', 'INFO', NULL, -1);
SELECT * FROM bunny.logs('m1', 'INFO', NULL, 1, -1);
\set VERBOSITY terse
SELECT * FROM bunny.logs('m1', 'nope');
\set VERBOSITY sqlstate

-- the log lines of all mirrors so far (only the rows written by the calls)
SELECT mirror, level, message FROM bunny.mirror_logs
 WHERE message = 'mirror created' ORDER BY id;

-- log lines carry the time they were written, not their transaction's
-- start: two lines of one transaction, 10 ms apart
BEGIN;
SELECT bunny._log('m1', 'DEBUG', 'timing 1');
SELECT pg_sleep(0.01);
SELECT bunny._log('m1', 'DEBUG', 'timing 2');
SELECT max(created_at) FILTER (WHERE message = 'timing 2') -
       max(created_at) FILTER (WHERE message = 'timing 1') >= interval '10 ms' AS apart,
       max(created_at) < now() + interval '1 min' AND min(created_at) >= now() AS sane
  FROM bunny.mirror_logs WHERE message LIKE 'timing _';
ROLLBACK;

-- a level is the least severity shown; DEBUG lines only when asked for
BEGIN;
SELECT bunny._log('m1', 'DEBUG', 'a debug line');
SELECT bunny._log('m1', 'WARNING', 'a warning line');
SELECT count(*) AS debug_by_default FROM bunny.logs('m1', search => 'a debug line');
SELECT count(*) AS debug_asked FROM bunny.logs('m1', 'debug', 'a debug line');
SELECT count(*) AS warning_from_info FROM bunny.logs('m1', 'INFO', 'a warning line');
SELECT count(*) AS warning_from_error FROM bunny.logs('m1', 'ERROR', 'a warning line');
ROLLBACK;

-- the DDL that completes a copied table (_apply_ddl) runs with a 10 ms
-- deadlock_timeout, so that an autovacuum already at work on the fresh
-- table is cancelled at once instead of after a second; afterwards the
-- session's own value is back.  The probe is a table of mirror m1 with one
-- statement recorded to complete it, as setup records them.
\set VERBOSITY default
BEGIN;
CREATE TABLE ddl_probe (a int);
SET LOCAL deadlock_timeout = '3s';
INSERT INTO bunny.mirror_table (mirror_id, source_schema, source_table, destination_schema,
								destination_table)
SELECT id, 'probe', 'probe', 'public', 'ddl_probe' FROM bunny.mirror WHERE name = 'm1';
INSERT INTO bunny.mirror_table_ddl (mirror_id, source_schema, source_table, ordinal, kind, name, sql)
SELECT id, 'probe', 'probe', 1, 'index', 'ddl_probe_a',
	   'DO $$BEGIN RAISE NOTICE ''deadlock_timeout during the DDL: %'', '
	   'current_setting(''deadlock_timeout''); END$$'
  FROM bunny.mirror WHERE name = 'm1';
SELECT bunny._apply_ddl(id, 'probe', 'probe', '{index}') FROM bunny.mirror WHERE name = 'm1';
SHOW deadlock_timeout;
ROLLBACK;
\set VERBOSITY sqlstate

-- drop_mirror: the source is unreachable, so it warns (SQLSTATE only:
-- libpq's text varies) and still removes the mirror
SELECT bunny.drop_mirror('m3');
SELECT count(*) FROM bunny.mirrors WHERE name = 'm3';
SELECT count(*) FROM bunny.mirror_table t
 WHERE NOT EXISTS (SELECT 1 FROM bunny.mirror m WHERE m.id = t.mirror_id);
SELECT level, message FROM bunny.logs('m3', NULL, 'dropped');
SELECT bunny.drop_mirror(repeat('z', 48));
SELECT * FROM catalog_counts;
-- dropped is gone
SELECT bunny.drop_mirror('m3');
-- drop_mirror against a reachable source (this instance, peer "self" of
-- 02_peers): no warning.  The mirror is created and dropped in one
-- transaction, so its worker never starts (without the initial copy: the
-- destination table is the source table itself here, rows and all).
BEGIN;
SELECT bunny.create_mirror('dropcheck', 'self', '["bunny_src.with_pk"]', do_initial_snapshot => false);
SELECT bunny.drop_mirror('dropcheck');
COMMIT;
SELECT count(*) FROM bunny.mirror WHERE name = 'dropcheck';
SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'bunny_slot_dropcheck';
SELECT count(*) FROM pg_publication WHERE pubname = 'bunny_pub_dropcheck';

-- the destination name is free again
SELECT bunny.create_mirror('m3b', 'nowhere', '["public.t3"]');
SELECT mirror, destination_table FROM bunny.mirror_tables WHERE mirror = 'm3b';

-- drop_peer of a peer with mirrors: 2BP01
SELECT bunny.drop_peer('nowhere');
SELECT * FROM catalog_counts;

-- DROP EXTENSION while mirrors exist: 55006, nothing dropped (their slots
-- and publications on the sources would be left behind)
\set VERBOSITY default
DROP EXTENSION bunnydb;
DROP EXTENSION IF EXISTS bunnydb CASCADE;
\set VERBOSITY sqlstate
SELECT count(*) AS bunnydb_installed FROM pg_extension WHERE extname = 'bunnydb';
SELECT * FROM catalog_counts;
