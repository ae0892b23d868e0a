--
-- 05_bad_input: every SQL function of README "SQL API reference" called
-- with bad input: wrong types, NULLs, unknown names, malformed JSON, options
-- out of range, hostile names.  Each failure must carry the SQLSTATE listed
-- under README "Error codes" and leave bunny.peer, bunny.mirror and
-- bunny.mirror_table as they were (checked by :same after every failing
-- call).
--
-- Runs after 01-04 or on its own (REGRESS=05_bad_input): it creates the
-- extension if needed and only uses objects whose names start with bi_.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS bunnydb;
RESET client_min_messages;
\set VERBOSITY sqlstate

-- baseline of the catalog row counts; CALL bi_same() raises if they moved
CREATE TABLE bi_base (peers bigint, mirrors bigint, mirror_tables bigint);
CREATE PROCEDURE bi_rebase() LANGUAGE plpgsql AS $$
BEGIN
	DELETE FROM bi_base;
	INSERT INTO bi_base SELECT (SELECT count(*) FROM bunny.peer),
		(SELECT count(*) FROM bunny.mirror), (SELECT count(*) FROM bunny.mirror_table);
END
$$;
CREATE PROCEDURE bi_same() LANGUAGE plpgsql AS $$
DECLARE
	b bi_base;
	p bigint := (SELECT count(*) FROM bunny.peer);
	m bigint := (SELECT count(*) FROM bunny.mirror);
	t bigint := (SELECT count(*) FROM bunny.mirror_table);
BEGIN
	SELECT * INTO b FROM bi_base;
	IF (p, m, t) IS DISTINCT FROM (b.peers, b.mirrors, b.mirror_tables) THEN
		RAISE EXCEPTION 'catalog changed: peers % -> %, mirrors % -> %, mirror_tables % -> %',
			b.peers, p, b.mirrors, m, b.mirror_tables, t;
	END IF;
END
$$;
\set same 'CALL bi_same();'
-- a table that hostile names must not drop
CREATE TABLE bi_canary (x int);
INSERT INTO bi_canary VALUES (42);

-- an unreachable peer and a mirror on it (its worker fails in the
-- background; nothing below depends on its state)
SELECT bunny.create_peer('bi_nowhere', 'host=127.0.0.1 port=1 connect_timeout=1 dbname=x', validate => false);
SELECT bunny.create_mirror('bi_m', 'bi_nowhere', '["bi_src.t1"]');
CALL bi_rebase();

------------------------------------------------------------------------------
-- create_peer / alter_peer / drop_peer / test_peer / peer_tables (README "Peers")
------------------------------------------------------------------------------

-- wrong types and arity: resolved at parse time (42883 / 22P02)
SELECT bunny.create_peer(1, 'host=h', false);
:same
SELECT bunny.create_peer('bi_p', 2, false);
:same
SELECT bunny.create_peer('bi_p', 'host=h', 'maybe');
:same
SELECT bunny.create_peer('bi_p', 'host=h', 2);
:same
SELECT bunny.create_peer('bi_p');
:same
SELECT bunny.create_peer('bi_p', 'host=h', false, 'extra');
:same
SELECT bunny.create_peer(name => 'bi_p', conn => 'host=h');
:same
SELECT bunny.alter_peer('bi_nowhere', 3);
:same
SELECT bunny.drop_peer(1);
:same
SELECT bunny.drop_peer();
:same
SELECT * FROM bunny.test_peer(1);
:same
SELECT * FROM bunny.peer_tables(1);
:same

-- NULLs
SELECT bunny.create_peer(NULL, 'host=h dbname=d', false);
:same
SELECT bunny.create_peer('bi_p', NULL, false);
:same
SELECT bunny.create_peer(NULL, NULL, NULL);
:same
SELECT bunny.alter_peer(NULL, 'host=h dbname=d', false);
:same
SELECT bunny.alter_peer('bi_nowhere', NULL, false);
:same
SELECT bunny.drop_peer(NULL);
:same
SELECT * FROM bunny.test_peer(NULL);
:same
SELECT * FROM bunny.peer_tables(NULL);
:same

-- unknown and hostile names: 42704, and nothing is dropped
SELECT bunny.alter_peer('bi_nosuch', 'host=h dbname=d', false);
:same
SELECT bunny.alter_peer('BI_NOWHERE', 'host=h dbname=d', false);
:same
SELECT bunny.drop_peer('bi_nowhere ');
:same
SELECT bunny.drop_peer('bi_x''; DROP TABLE bi_canary; --');
:same
SELECT bunny.drop_peer('bi_x"; DROP TABLE bi_canary; --');
:same
SELECT bunny.drop_peer('');
:same
SELECT bunny.drop_peer('bi_ünïcödé');
:same
SELECT bunny.drop_peer(repeat('p', 64));
:same
SELECT * FROM bunny.test_peer('bi_x''; DROP TABLE bi_canary; --');
:same
SELECT * FROM bunny.peer_tables('bi_x''; DROP TABLE bi_canary; --');
:same

-- empty name: 22023; duplicate: 42710
SELECT bunny.create_peer('', 'host=h dbname=d', false);
:same
SELECT bunny.create_peer('bi_nowhere', 'host=h dbname=d', false);
:same

-- malformed conninfo: 22023
SELECT bunny.create_peer('bi_p', 'host', false);
:same
SELECT bunny.create_peer('bi_p', '=h', false);
:same
SELECT bunny.create_peer('bi_p', 'host=h; DROP TABLE bi_canary; --', false);
:same
SELECT bunny.create_peer('bi_p', 'host=h dbname=''x', false);
:same
SELECT bunny.create_peer('bi_p', 'postgresql://h:5432/db?sslmode', false);
:same
SELECT bunny.create_peer('bi_p', 'postgres://u:pw@[::1/db', false);
:same
SELECT bunny.create_peer('bi_p', 'mysql://h/db', false);
:same
SELECT bunny.create_peer('bi_p', 'hôst=h', false);
:same
SELECT bunny.alter_peer('bi_nowhere', 'host=h nosuchkeyword=1', false);
:same
SELECT bunny.alter_peer('bi_nowhere', 'dbname=x password', true);
:same
-- the old conninfo is kept
SELECT name, conninfo FROM bunny.peers WHERE name = 'bi_nowhere';

-- hostile peer names break the naming rule: 22023, nothing stored
SELECT bunny.create_peer('bi_x''; DROP TABLE bi_canary; --', 'host=h dbname=d', false);
:same
SELECT bunny.create_peer('bi_"quoted"', 'host=h dbname=d', false);
:same
SELECT bunny.create_peer('bi_ünïcödé 名前', 'host=h dbname=d', false);
:same
SELECT bunny.create_peer('bi_' || repeat('p', 100), 'host=h dbname=d', false);
:same
-- a peer named before the rule (0.2.0 took any name) is plain data: found
-- and dropped
INSERT INTO bunny.peer (name, conninfo) VALUES ('bi_x''; DROP TABLE bi_canary; --', 'host=h dbname=d');
SELECT name, conninfo FROM bunny.peers WHERE name LIKE 'bi\_x%' ORDER BY name;
SELECT bunny.drop_peer('bi_x''; DROP TABLE bi_canary; --');
:same
SELECT count(*) AS canary FROM bi_canary;

------------------------------------------------------------------------------
-- create_mirror (README "Mirrors")
------------------------------------------------------------------------------

-- wrong types and arity: parse-time errors
SELECT bunny.create_mirror(1, 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m2', 1, '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', 1);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', ARRAY['bi_src.t2']);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', max_batch_size => 'abc');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', max_batch_size => 1.5);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', max_batch_size => 2147483648);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', idle_timeout_seconds => '1 minute');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', do_initial_snapshot => 'maybe');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', replicate_indexes => 2);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', resync_strategy => 1);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', max_batch => 10);
:same

-- malformed JSON: 22P02 from the jsonb cast; \u0000: 22P05
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', 'not json');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '[');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2",]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '[''bi_src.t2'']');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '[{"source_table": "bi_src.t2"}');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"] trailing');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t\u0000"]');
:same

-- well-formed JSON of the wrong shape: 22023; NULL: 22004
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '"not an array"');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '"[\"bi_src.t2\"]"');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '123');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', 'null');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', 'true');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '{"bi_src.t2": true}');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '[true]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '[{"source_table": ["bi_src.t2"]}]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '[{"source_table": {"schema": "bi_src", "table": "t2"}}]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '[{"source_table": "bi_src.t2", "exclude_columns": {"c": 1}}]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '[{"source_table": "bi_src.t2", "exclude_columns": [null]}]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '[{"source_table": "bi_src.t2", "partition_key": ["c"]}]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '[{"source_table": "bi_src.t2", "Source_Table": "x"}]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', NULL);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', NULL::jsonb);
:same

-- NULL for every argument: 22004 (a NULL resync_strategy is not
-- 'truncate' or 'swap': 22023)
SELECT bunny.create_mirror(NULL, 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m2', NULL, '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', do_initial_snapshot => NULL);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', max_batch_size => NULL);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', idle_timeout_seconds => NULL);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', snapshot_num_rows_per_partition => NULL);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', snapshot_max_parallel_workers => NULL);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', snapshot_num_tables_in_parallel => NULL);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', replicate_indexes => NULL);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', replicate_foreign_keys => NULL);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', resync_strategy => NULL);
:same
SELECT bunny.create_mirror(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
:same

-- options out of range: 22023
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', max_batch_size => -1);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', max_batch_size => -2147483648);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', max_batch_size => 2147483647);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', idle_timeout_seconds => -1);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', idle_timeout_seconds => 2147483647);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', snapshot_num_rows_per_partition => -5);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', snapshot_max_parallel_workers => -1);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', snapshot_max_parallel_workers => 1000);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', snapshot_num_tables_in_parallel => -64);
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', resync_strategy => '');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', resync_strategy => ' truncate');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', resync_strategy => 'Swap');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2"]', resync_strategy => 'swap''; DROP TABLE bi_canary; --');
:same

-- unknown and hostile peer names: 42704
SELECT bunny.create_mirror('bi_m2', 'bi_nosuch', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m2', '', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m2', 'BI_NOWHERE', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_x''; DROP TABLE bi_canary; --', '["bi_src.t2"]');
:same

-- hostile mirror names: 22023 (^[a-z0-9_-]{1,48}$)
SELECT bunny.create_mirror('', 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror(' ', 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m2''; DROP TABLE bi_canary; --', 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m2"', 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m2;', 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m2/../x', 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m2%', 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_mïrrör', 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi_m２', 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror(E'bi_m2\t', 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('BI_M2', 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror(repeat('m', 63), 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror(repeat('m', 64), 'bi_nowhere', '["bi_src.t2"]');
:same
-- duplicate: 42710, also when only "-" vs "_" differs (same slot name)
SELECT bunny.create_mirror('bi_m', 'bi_nowhere', '["bi_src.t2"]');
:same
SELECT bunny.create_mirror('bi-m', 'bi_nowhere', '["bi_src.t2"]');
:same

-- hostile and bad table names in the mappings
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2; DROP TABLE bi_canary; --"]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.\"t2"]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["\"\".t2"]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.\"\""]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '[" "]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '[".t2"]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src..t2"]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["a.b.c.d"]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t2 x"]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t-2"]');
:same
-- names longer than 63 bytes are refused (22023), never silently truncated,
-- also when the bytes are multi-byte characters; each call runs in its own
-- transaction so that a wrong success cannot disturb what follows
-- (it would show as a create_mirror result instead of the error)
BEGIN;
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', jsonb_build_array('bi_src.' || repeat('t', 64)));
ROLLBACK;
:same
BEGIN;
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', jsonb_build_array(repeat('s', 64) || '.t2'));
ROLLBACK;
:same
BEGIN;
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', jsonb_build_array('bi_src."' || repeat('T', 64) || '"'));
ROLLBACK;
:same
BEGIN;
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere',
	jsonb_build_array(jsonb_build_object('source_table', 'bi_src.t2', 'destination_table', 'bi_dst.' || repeat('d', 64))));
ROLLBACK;
:same
BEGIN;
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', jsonb_build_array('bi_src.' || repeat('ü', 32)));
ROLLBACK;
:same
-- the table of the existing mirror: 42710
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.t1"]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["bi_src.\"t1\""]');
:same
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', '["BI_SRC.T1"]');
:same

-- hostile but legal names are accepted and stored exactly (rolled back)
BEGIN;
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', jsonb_build_array(
	'"sch ema"."we''ird; DROP TABLE bi_canary; --"',
	'"bi_src"."Mixed ""Quoted"" Case"',
	'bi_src.täble_ünïcode',
	'"bi_src"."名前"',
	'bi_src.' || repeat('t', 63),
	'bi_src."' || repeat('T', 63) || '"',
	'bi_src.' || repeat('ü', 31) || 'x',
	jsonb_build_object('source_table', 'bi_src.x', 'destination_table', '"bi dst"."x; --"',
					   'partition_key', 'cöl ümn', 'exclude_columns', jsonb_build_array('a"b', 'c''d', ''))));
ROLLBACK;
BEGIN;
SELECT bunny.create_mirror('bi_m2', 'bi_nowhere', jsonb_build_array(
	'"sch ema"."we''ird; DROP TABLE bi_canary; --"',
	'"bi_src"."Mixed ""Quoted"" Case"',
	'bi_src.täble_ünïcode',
	'"bi_src"."名前"',
	'bi_src.' || repeat('t', 63),
	'bi_src."' || repeat('T', 63) || '"',
	'bi_src.' || repeat('ü', 31) || 'x',
	jsonb_build_object('source_table', 'bi_src.x', 'destination_table', '"bi dst"."x; --"',
					   'partition_key', 'cöl ümn', 'exclude_columns', jsonb_build_array('a"b', 'c''d'))));
SELECT t.source_schema, t.source_table, octet_length(t.source_table) AS bytes,
	   t.destination_schema, t.destination_table, t.partition_key, t.exclude_columns
  FROM bunny.mirror_table t JOIN bunny.mirror m ON m.id = t.mirror_id
 WHERE m.name = 'bi_m2' ORDER BY 1, 2;
SELECT source_table, destination_table
  FROM bunny.mirror_tables WHERE mirror = 'bi_m2' ORDER BY 1;
ROLLBACK;
:same
SELECT count(*) AS canary FROM bi_canary;

------------------------------------------------------------------------------
-- control functions (README "Mirrors"): NULL name 22004, unknown 42704
------------------------------------------------------------------------------

SELECT bunny.pause_mirror(NULL);
:same
SELECT bunny.pause_mirror('bi_nosuch');
:same
SELECT bunny.pause_mirror('bi_m''; DROP TABLE bi_canary; --');
:same
SELECT bunny.pause_mirror(1);
:same
SELECT bunny.resume_mirror(NULL);
:same
SELECT bunny.resume_mirror('bi_nosuch');
:same
SELECT bunny.resume_mirror('');
:same
SELECT bunny.retry_mirror(NULL);
:same
SELECT bunny.retry_mirror('BI_M');
:same
SELECT bunny.drop_mirror(NULL);
:same
SELECT bunny.drop_mirror('bi_nosuch');
:same
SELECT bunny.drop_mirror('bi_m ');
:same
SELECT bunny.drop_mirror('bi_m''; DROP TABLE bi_canary; --');
:same
SELECT bunny.drop_mirror(repeat('m', 64));
:same
SELECT bunny.sync_schema(NULL);
:same
SELECT bunny.sync_schema('bi_nosuch');
:same
SELECT * FROM bunny.sync_sequences(NULL);
:same
SELECT * FROM bunny.sync_sequences('bi_nosuch');
:same

-- resync_mirror / resync_table
SELECT bunny.resync_mirror(NULL);
:same
SELECT bunny.resync_mirror('bi_nosuch');
:same
SELECT bunny.resync_mirror('bi_nosuch', 'swap');
:same
SELECT bunny.resync_mirror('bi_m', 'foo');
:same
SELECT bunny.resync_mirror('bi_m', '');
:same
SELECT bunny.resync_mirror('bi_m', 'TRUNCATE');
:same
SELECT bunny.resync_mirror('bi_m', 1);
:same
SELECT bunny.resync_table(NULL, 'bi_src.t1');
:same
SELECT bunny.resync_table('bi_nosuch', 'bi_src.t1');
:same
SELECT bunny.resync_table('bi_m', NULL);
:same
SELECT bunny.resync_table('bi_m', 'bi_src.nosuch');
:same
SELECT bunny.resync_table('bi_m', 'bi_src.t1; DROP TABLE bi_canary; --');
:same
SELECT bunny.resync_table('bi_m', '');
:same
SELECT bunny.resync_table('bi_m', 'a.b.c');
:same
SELECT bunny.resync_table('bi_m', 'bi_src.' || repeat('t', 64));
:same
SELECT bunny.resync_table('bi_m', 'bi_src.t1', 'foo');
:same
SELECT bunny.resync_table('bi_m', 'bi_src.t1', 1);
:same

-- update_tables
SELECT bunny.update_tables(NULL, '["bi_src.t1"]');
:same
SELECT bunny.update_tables('bi_nosuch', '["bi_src.t1"]');
:same
SELECT bunny.update_tables('bi_nosuch', NULL);
:same
SELECT bunny.update_tables('bi_m', 'not json');
:same
SELECT bunny.update_tables('bi_m', 1);
:same
SELECT bunny.update_tables('bi_m', '["bi_src.t1"]', 'extra');
:same

------------------------------------------------------------------------------
-- wait_for_lsn, logs, mirror_status (README "Mirrors", "Monitoring")
------------------------------------------------------------------------------

SELECT bunny.wait_for_lsn('bi_nosuch', '0/1', 0);
:same
SELECT bunny.wait_for_lsn('bi_m', NULL, 0);
:same
SELECT bunny.wait_for_lsn('bi_m', '0/1', NULL);
:same
SELECT bunny.wait_for_lsn('bi_m', '0/1', -1);
:same
SELECT bunny.wait_for_lsn('bi_m', 'not an lsn', 0);
:same
SELECT bunny.wait_for_lsn('bi_m', '0/1', 'soon');
:same
SELECT bunny.wait_for_lsn('bi_m', '0/1', 2147483648);
:same
SELECT bunny.wait_for_lsn('bi_m', 12345, 0);
:same

SELECT * FROM bunny.logs('bi_m', 'bogus');
:same
SELECT * FROM bunny.logs('bi_m', 'ERROR; DROP TABLE bi_canary; --');
:same
SELECT * FROM bunny.logs('bi_m', "limit" => -1);
:same
SELECT * FROM bunny.logs('bi_m', "offset" => -1);
:same
SELECT * FROM bunny.logs('bi_m', "limit" => 'ten');
:same
SELECT * FROM bunny.logs('bi_m', "limit" => 2147483648);
:same
SELECT * FROM bunny.logs('bi_m', lvl => 'INFO');
:same
-- search text is data, not a pattern injection
SELECT count(*) FROM bunny.logs('bi_m', NULL, ''''' OR true; --');

SELECT bunny.mirror_status(NULL);
:same
SELECT bunny.mirror_status('bi_nosuch');
:same
SELECT bunny.mirror_status('bi_m''; DROP TABLE bi_canary; --');
:same
SELECT bunny.mirror_status(1);
:same

------------------------------------------------------------------------------
-- clean up
------------------------------------------------------------------------------
SELECT count(*) AS canary FROM bi_canary;
-- the source is unreachable: drop_mirror warns (01000) and still drops
SELECT bunny.drop_mirror('bi_m');
SELECT bunny.drop_peer('bi_nowhere');
SELECT count(*) FROM bunny.mirror WHERE name LIKE 'bi\_%';
SELECT count(*) FROM bunny.peer WHERE name LIKE 'bi\_%';
DROP TABLE bi_canary, bi_base;
DROP PROCEDURE bi_same();
DROP PROCEDURE bi_rebase();

-- with every mirror dropped (their sources are unreachable: 01000 each),
-- DROP EXTENSION goes through
SELECT count(*) AS dropped FROM (SELECT bunny.drop_mirror(name) FROM bunny.mirror ORDER BY name) d;
DROP VIEW catalog_counts;
DROP EXTENSION bunnydb;
SELECT count(*) AS bunnydb_installed FROM pg_extension WHERE extname = 'bunnydb';
