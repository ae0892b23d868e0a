--
-- 04_privileges: README "Roles and privileges" (PUBLIC: nothing; bunny_monitor reads; bunny_admin acts)
--
\set VERBOSITY sqlstate

CREATE ROLE bunny_regress_plain;
CREATE ROLE bunny_regress_monitor IN ROLE bunny_monitor;
CREATE ROLE bunny_regress_admin IN ROLE bunny_admin;

-- PUBLIC: nothing (42501)
SET ROLE bunny_regress_plain;
SELECT bunny.create_peer('p_plain', 'host=h dbname=d', validate => false);
SELECT bunny.drop_peer('self');
SELECT bunny.create_mirror('m_plain', 'self', '["public.plain"]');
SELECT bunny.drop_mirror('m1');
SELECT bunny.pause_mirror('m1');
SELECT * FROM bunny.logs('m1');
SELECT bunny.mirror_status('m1');
SELECT * FROM bunny.test_peer('self');
SELECT * FROM bunny.peer_tables('self');
SELECT bunny.wait_for_lsn('m1', '0/0', 0);
SELECT count(*) FROM bunny.peers;
SELECT count(*) FROM bunny.peer;
SELECT count(*) FROM bunny.mirrors;
SELECT count(*) FROM bunny.mirror_tables;
SELECT count(*) FROM bunny.mirror_logs;
SELECT count(*) FROM bunny.mirror;
SELECT count(*) FROM bunny.mirror_table;
RESET ROLE;

-- no privilege of PUBLIC on anything in schema bunny
SELECT has_schema_privilege('bunny_regress_plain', 'bunny', 'USAGE') AS schema_usage;
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args
  FROM pg_proc p
 WHERE p.pronamespace = 'bunny'::regnamespace
   AND has_function_privilege('bunny_regress_plain', p.oid, 'EXECUTE')
 ORDER BY 1, 2;
SELECT c.relname
  FROM pg_class c
 WHERE c.relnamespace = 'bunny'::regnamespace AND c.relkind IN ('r', 'v', 'S')
   AND (has_table_privilege('bunny_regress_plain', c.oid, 'SELECT')
		OR has_table_privilege('bunny_regress_plain', c.oid, 'INSERT')
		OR has_table_privilege('bunny_regress_plain', c.oid, 'UPDATE')
		OR has_table_privilege('bunny_regress_plain', c.oid, 'DELETE'))
 ORDER BY 1;

-- what bunny_monitor may execute, and what it may write: nothing
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args
  FROM pg_proc p
 WHERE p.pronamespace = 'bunny'::regnamespace AND p.proname !~ '^_'
   AND has_function_privilege('bunny_monitor', p.oid, 'EXECUTE')
 ORDER BY 1, 2;
SELECT c.relname
  FROM pg_class c
 WHERE c.relnamespace = 'bunny'::regnamespace AND c.relkind IN ('r', 'v')
   AND (has_table_privilege('bunny_monitor', c.oid, 'INSERT')
		OR has_table_privilege('bunny_monitor', c.oid, 'UPDATE')
		OR has_table_privilege('bunny_monitor', c.oid, 'DELETE')
		OR has_table_privilege('bunny_monitor', c.oid, 'TRUNCATE'))
 ORDER BY 1;

-- what bunny_monitor may read
SELECT c.relname
  FROM pg_class c
 WHERE c.relnamespace = 'bunny'::regnamespace AND c.relkind IN ('r', 'v')
   AND has_table_privilege('bunny_monitor', c.oid, 'SELECT')
 ORDER BY 1;
-- bunny_admin may call every API function
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args
  FROM pg_proc p
 WHERE p.pronamespace = 'bunny'::regnamespace AND p.proname !~ '^_'
   AND NOT has_function_privilege('bunny_admin', p.oid, 'EXECUTE')
 ORDER BY 1, 2;

-- bunny_monitor reads the views, logs and status
SET ROLE bunny_regress_monitor;
SELECT name, conninfo FROM bunny.peers WHERE name = 'nowhere';
SELECT mirror, source_table FROM bunny.mirror_tables WHERE mirror = 'm1' ORDER BY 2;
SELECT name, source_peer, slot_name FROM bunny.mirrors WHERE name = 'm1';
SELECT count(*) > 0 AS has_logs FROM bunny.mirror_logs WHERE mirror = 'm1';
SELECT level, message FROM bunny.logs('m1', 'INFO', 'mirror created');
SELECT bunny.mirror_status('m1')->>'name' AS status_name;
SELECT bunny.wait_for_lsn('m1', 'FFFFFFFF/FFFFFFFF', 0);
-- but not the base tables, and no control function
SELECT count(*) FROM bunny.peer;
SELECT count(*) FROM bunny.mirror;
SELECT count(*) FROM bunny.mirror_table;
SELECT bunny.create_peer('p_monitor', 'host=h dbname=d', validate => false);
SELECT bunny.alter_peer('self', 'host=h dbname=d', validate => false);
SELECT bunny.drop_peer('self');
SELECT bunny.create_mirror('m_monitor', 'nowhere', '["public.monitor"]');
SELECT bunny.pause_mirror('m1');
SELECT bunny.resume_mirror('m1');
SELECT bunny.retry_mirror('m1');
SELECT bunny.drop_mirror('m1');
DELETE FROM bunny.mirror_logs;
INSERT INTO bunny.mirror_logs (mirror, level, message) VALUES ('m1', 'ERROR', 'forged');
RESET ROLE;

-- bunny_admin acts
SET ROLE bunny_regress_admin;
SELECT bunny.create_peer('p_admin', 'host=127.0.0.1 port=1 dbname=x password=adminsecret', validate => false);
SELECT name, conninfo FROM bunny.peers WHERE name = 'p_admin';
SELECT bunny.alter_peer('p_admin', 'host=127.0.0.1 port=2 dbname=x', validate => false);
SELECT bunny.create_mirror('m_admin', 'p_admin', '["public.admin_t"]');
SELECT mirror, source_table FROM bunny.mirror_tables WHERE mirror = 'm_admin';
SELECT name, slot_name FROM bunny.mirrors WHERE name = 'm_admin';
SELECT level, message FROM bunny.logs('m_admin', 'INFO', 'mirror created');
SELECT bunny.drop_peer('p_admin');
SELECT bunny.drop_mirror('m_admin');
SELECT bunny.drop_peer('p_admin');
SELECT count(*) FROM bunny.peers WHERE name = 'p_admin';
-- still no access to the base tables nor to the internal helpers
SELECT count(*) FROM bunny.peer;
SELECT * FROM bunny._remote_query('host=h', 'SELECT 1') AS r(x int);
SELECT bunny._notify(1);
RESET ROLE;

-- a non-superuser's peer must authenticate with its own password: a
-- password-less conninfo to a server trusting this machine is refused,
-- and so are test_peer / peer_tables through such a peer
SELECT format('host=%s port=%s dbname=%s',
			  split_part(current_setting('unix_socket_directories'), ',', 1),
			  current_setting('port'), current_database()) AS self_conninfo \gset
SELECT bunny.create_peer('trusting', :'self_conninfo', validate => false);
SET ROLE bunny_regress_admin;
SELECT bunny.create_peer('p_trust', :'self_conninfo', validate => true);
SELECT count(*) FROM bunny.peers WHERE name = 'p_trust';
SELECT ok, error FROM bunny.test_peer('trusting');
SELECT count(*) FROM bunny.peer_tables('trusting');
RESET ROLE;
SELECT require_password FROM bunny.peer WHERE name = 'trusting';
SELECT ok FROM bunny.test_peer('trusting');
SELECT bunny.drop_peer('trusting');

-- clean up
DROP ROLE bunny_regress_plain;
DROP ROLE bunny_regress_monitor;
DROP ROLE bunny_regress_admin;
