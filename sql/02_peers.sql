--
-- 02_peers: README "SQL API reference", "Peers"
--
\set VERBOSITY sqlstate

-- a peer that points to an unreachable source; never validated
SELECT bunny.create_peer('nowhere', 'host=127.0.0.1 port=1 connect_timeout=2 dbname=x', validate => false);
SELECT name, conninfo FROM bunny.peers ORDER BY name;

-- duplicate name: 42710 (with or without validation)
SELECT bunny.create_peer('nowhere', 'host=127.0.0.1 port=1 dbname=x', validate => false);
SELECT bunny.create_peer('nowhere', 'host=127.0.0.1 port=1 dbname=x');

-- unknown peer: 42704
SELECT bunny.alter_peer('nosuch', 'host=h dbname=d', validate => false);
SELECT bunny.drop_peer('nosuch');
SELECT * FROM bunny.test_peer('nosuch');
SELECT * FROM bunny.peer_tables('nosuch');

-- malformed conninfo: 22023
SELECT bunny.create_peer('bad1', 'host=localhost port', validate => false);
SELECT bunny.create_peer('bad2', 'postgresql://[bad', validate => false);
SELECT bunny.create_peer('bad3', 'nosuchkeyword=1', validate => false);
SELECT bunny.create_peer('bad4', 'host=''unterminated', validate => false);
SELECT bunny.create_peer('bad5', 'postgresql://h/db?nosuchparam=1', validate => false);
-- validation does not hide a malformed string either
SELECT bunny.create_peer('bad6', 'host=localhost port');
SELECT bunny.alter_peer('nowhere', 'host=localhost port', validate => false);
SELECT bunny.alter_peer('nowhere', 'postgresql://[bad', validate => false);

-- the message of a malformed conninfo, once in full
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT bunny.create_peer('bad1', 'host=localhost port', validate => false);
\set VERBOSITY sqlstate
\set SHOW_CONTEXT errors

-- NULL and empty arguments
SELECT bunny.create_peer(NULL, 'host=h dbname=d', validate => false);
SELECT bunny.create_peer('', 'host=h dbname=d', validate => false);
-- peers follow the naming rule of mirrors, and the hint offers a name;
-- the error comes without the CONTEXT lines of the PL/pgSQL functions
-- that raised it (create_peer calls _check_name)
\set VERBOSITY default
\set SHOW_CONTEXT always
SELECT bunny.create_peer('Shop Src', 'host=h dbname=d', validate => false);
\set VERBOSITY sqlstate
\set SHOW_CONTEXT errors
SELECT bunny.create_peer('nullci', NULL, validate => false);
SELECT bunny.alter_peer('nowhere', NULL, validate => false);

-- validate => true against an unreachable address fails (libpq's text varies,
-- so only the SQLSTATE and the start of the message are shown) and stores nothing
\set VERBOSITY terse
DO $$
BEGIN
	PERFORM bunny.create_peer('unreachable', 'host=127.0.0.1 port=1 connect_timeout=2 dbname=x');
	RAISE NOTICE 'create_peer succeeded';
EXCEPTION WHEN OTHERS THEN
	RAISE NOTICE 'sqlstate=%, message: %...', SQLSTATE, split_part(SQLERRM, ':', 1);
END
$$;
\set VERBOSITY sqlstate
-- validate defaults to true for alter_peer too; the old conninfo is kept
\set VERBOSITY terse
DO $$
BEGIN
	PERFORM bunny.alter_peer('nowhere', 'host=127.0.0.1 port=2 connect_timeout=2 dbname=y');
	RAISE NOTICE 'alter_peer succeeded';
EXCEPTION WHEN OTHERS THEN
	RAISE NOTICE 'sqlstate=%, message: %...', SQLSTATE, split_part(SQLERRM, ':', 1);
END
$$;
\set VERBOSITY sqlstate

-- nothing was stored by the failed calls
SELECT name, conninfo FROM bunny.peers ORDER BY name;

-- a peer pointing to this very instance (unix socket of the temp instance)
SELECT format('host=%s port=%s dbname=%s',
			  split_part(current_setting('unix_socket_directories'), ',', 1),
			  current_setting('port'), current_database()) AS self_conninfo \gset
SELECT bunny.create_peer('self', :'self_conninfo', validate => true);
SELECT conninfo = :'self_conninfo' AS conninfo_kept FROM bunny.peers WHERE name = 'self';

SELECT ok, wal_level, can_replicate, error, server_version IS NOT NULL AS has_version
  FROM bunny.test_peer('self');

-- test_peer of an unreachable peer reports instead of raising
SELECT ok, wal_level, can_replicate, error IS NOT NULL AS has_error
  FROM bunny.test_peer('nowhere');

-- peer_tables lists the source tables
CREATE SCHEMA bunny_src;
CREATE TABLE bunny_src.with_pk (id int PRIMARY KEY, v text);
CREATE TABLE bunny_src.no_pk (id int, v text);
CREATE TABLE bunny_src.full_ident (id int, v text);
ALTER TABLE bunny_src.full_ident REPLICA IDENTITY FULL;
CREATE TABLE bunny_src."Mixed Case" (id int PRIMARY KEY);
CREATE TABLE bunny_src.by_index (id int NOT NULL, v text);
CREATE UNIQUE INDEX by_index_id ON bunny_src.by_index (id);
ALTER TABLE bunny_src.by_index REPLICA IDENTITY USING INDEX by_index_id;
CREATE TABLE bunny_src.parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE bunny_src.parted_1 PARTITION OF bunny_src.parted FOR VALUES FROM (0) TO (100);
CREATE VIEW bunny_src.a_view AS SELECT 1 AS x;
SELECT schema_name, table_name, has_primary_key, replica_identity, estimated_rows >= 0 AS rows_ok
  FROM bunny.peer_tables('self')
 WHERE schema_name = 'bunny_src'
 ORDER BY 1, 2;
-- a table never analyzed is estimated from its size, as the planner does
-- (1 000 rows; autovacuum may have analyzed it meanwhile: either way close)
INSERT INTO bunny_src.with_pk SELECT g, 'value ' || g FROM generate_series(1, 1000) g;
INSERT INTO bunny_src.parted SELECT generate_series(0, 99);
SELECT table_name, estimated_rows BETWEEN 500 AND 2000 AS about_1000
  FROM bunny.peer_tables('self') WHERE schema_name = 'bunny_src' AND table_name = 'with_pk';
SELECT table_name, estimated_rows BETWEEN 50 AND 1000 AS about_100
  FROM bunny.peer_tables('self') WHERE schema_name = 'bunny_src' AND table_name = 'parted';
-- the extension's own catalog shows up too: it is a normal database
SELECT count(*) > 0 AS sees_bunny_catalog
  FROM bunny.peer_tables('self') WHERE schema_name = 'bunny' AND table_name = 'peer';
-- peer_tables of an unreachable peer is an error (libpq text varies)
\set VERBOSITY terse
DO $$
BEGIN
	PERFORM * FROM bunny.peer_tables('nowhere');
	RAISE NOTICE 'peer_tables succeeded';
EXCEPTION WHEN OTHERS THEN
	RAISE NOTICE 'sqlstate=%, message: %...', SQLSTATE, split_part(SQLERRM, ':', 1);
END
$$;
\set VERBOSITY sqlstate

-- alter_peer: validated change, then unvalidated change; updated_at moves
SELECT updated_at AS self_updated FROM bunny.peers WHERE name = 'self' \gset
SELECT bunny.alter_peer('self', :'self_conninfo' || ' application_name=bunny_regress');
SELECT conninfo = :'self_conninfo' || ' application_name=bunny_regress' AS changed,
	   updated_at >= :'self_updated'::timestamptz AS updated
  FROM bunny.peers WHERE name = 'self';
SELECT bunny.alter_peer('self', :'self_conninfo', validate => false);
SELECT conninfo = :'self_conninfo' AS changed_back FROM bunny.peers WHERE name = 'self';

-- passwords are masked in bunny.peers (README "Guarantees": secrets stay secret)
SELECT bunny.create_peer('pw1', 'host=x password=secret dbname=y', validate => false);
SELECT bunny.create_peer('pw2', 'host=x password=''se cret'' dbname=y', validate => false);
SELECT bunny.create_peer('pw3', 'postgresql://u:secret@h/db', validate => false);
SELECT bunny.create_peer('pw4', 'postgresql://h/db?password=secret', validate => false);
SELECT bunny.create_peer('pw5', 'host=x password = secret dbname=y', validate => false);
SELECT bunny.create_peer('pw6', 'password=secret', validate => false);
SELECT bunny.create_peer('pw7', 'postgres://u:secret@h:5432/db?sslmode=disable&password=secret&application_name=a', validate => false);
SELECT bunny.create_peer('pw8', 'host=x password=''it\''s secret'' dbname=y', validate => false);
SELECT bunny.create_peer('pw9', 'postgresql://u:secret@h1:5432,h2:5433/db', validate => false);
-- forms a pattern match would miss: '&' in a keyword value, an escaped
-- space, a percent-encoded key in a URI
SELECT bunny.create_peer('pw10', 'host=x password=ab&secret dbname=y', validate => false);
SELECT bunny.create_peer('pw11', E'host=x password=se\\ cret dbname=y', validate => false);
SELECT bunny.create_peer('pw12', 'postgresql://h/db?pass%77ord=secret', validate => false);
SELECT name, conninfo FROM bunny.peers WHERE name LIKE 'pw%' ORDER BY name;
SELECT count(*) AS leaks FROM bunny.peers WHERE conninfo ILIKE '%secret%' OR conninfo ILIKE '%cret%';
-- the base table keeps the real conninfo (superusers only)
SELECT name, conninfo FROM bunny.peer WHERE name IN ('pw1', 'pw3') ORDER BY name;
-- a peer without password is shown unchanged
SELECT bunny.create_peer('nopw', 'postgresql://u@h:5432/db?sslmode=require', validate => false);
SELECT name, conninfo FROM bunny.peers WHERE name = 'nopw';
-- a failing validation does not echo the password
\set VERBOSITY terse
DO $$
BEGIN
	PERFORM bunny.create_peer('pwfail', 'host=127.0.0.1 port=1 connect_timeout=2 dbname=x user=u password=topsecret');
EXCEPTION WHEN OTHERS THEN
	RAISE NOTICE 'leaks password: %', SQLERRM LIKE '%topsecret%';
END
$$;
\set VERBOSITY sqlstate
\set VERBOSITY terse
DO $$
BEGIN
	PERFORM bunny.create_peer('pwfail', 'host=x password=topsecret port', validate => false);
EXCEPTION WHEN OTHERS THEN
	DECLARE
		d text;
	BEGIN
		GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
		RAISE NOTICE 'sqlstate=%, leaks password: %', SQLSTATE,
			(SQLERRM || coalesce(d, '')) LIKE '%topsecret%';
	END;
END
$$;
\set VERBOSITY sqlstate

-- drop_peer
SELECT bunny.drop_peer('nopw');
SELECT count(*) FROM bunny.peer WHERE name = 'nopw';
SELECT bunny.drop_peer('nopw');
SELECT bunny.drop_peer(NULL);
SELECT bunny.drop_peer('pw1'), bunny.drop_peer('pw2'), bunny.drop_peer('pw3'),
	   bunny.drop_peer('pw4'), bunny.drop_peer('pw5'), bunny.drop_peer('pw6'),
	   bunny.drop_peer('pw7'), bunny.drop_peer('pw8'), bunny.drop_peer('pw9'),
	   bunny.drop_peer('pw10'), bunny.drop_peer('pw11'), bunny.drop_peer('pw12');

-- a peer used by a mirror cannot be dropped: 2BP01
SELECT bunny.create_peer('used', 'host=127.0.0.1 port=1 connect_timeout=2 dbname=x', validate => false);
BEGIN;
SELECT bunny.create_mirror('uses_peer', 'used', '["public.t_uses_peer"]');
SELECT bunny.drop_peer('used');
ROLLBACK;
\set VERBOSITY default
\set SHOW_CONTEXT never
BEGIN;
SELECT bunny.create_mirror('uses_peer', 'used', '["public.t_uses_peer"]');
SELECT bunny.drop_peer('used');
ROLLBACK;
\set VERBOSITY sqlstate
\set SHOW_CONTEXT errors
SELECT bunny.drop_peer('used');

SELECT name, conninfo FROM bunny.peers WHERE name <> 'self' ORDER BY name;
