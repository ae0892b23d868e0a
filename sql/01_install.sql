--
-- 01_install: CREATE EXTENSION and the objects it creates
--
\set VERBOSITY terse
CREATE EXTENSION bunnydb;

SELECT extname, extversion, extnamespace::regnamespace AS schema, extrelocatable
  FROM pg_extension WHERE extname = 'bunnydb';

-- the roles of README "Roles and privileges"
SELECT rolname, rolcanlogin, rolsuper
  FROM pg_roles WHERE rolname IN ('bunny_admin', 'bunny_monitor') ORDER BY 1;
-- bunny_admin is a member of bunny_monitor
SELECT pg_has_role('bunny_admin', 'bunny_monitor', 'MEMBER') AS admin_is_monitor;

-- public API functions (README "SQL API reference"): name, arguments, result
SELECT p.proname, pg_get_function_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result
  FROM pg_proc p
 WHERE p.pronamespace = 'bunny'::regnamespace AND p.proname !~ '^_'
 ORDER BY 1, 2;

-- every SQL-level function pins its search_path; report any that does not
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'bunny'::regnamespace AND l.lanname <> 'c'
   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
 ORDER BY 1, 2;

-- relations of schema bunny
SELECT c.relname, c.relkind
  FROM pg_class c
 WHERE c.relnamespace = 'bunny'::regnamespace AND c.relkind IN ('r', 'v', 'p')
 ORDER BY 1;

-- columns of the monitoring relations (README "SQL API reference", "Monitoring")
SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'bunny'::regnamespace
   AND c.relname IN ('peers', 'mirrors', 'mirror_tables', 'mirror_logs',
                     'copy_progress', 'mirror_copy_progress', 'mirror_overview')
   AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY c.relname, a.attnum;

-- settings (README "Settings")
SELECT name, vartype, context
  FROM pg_settings WHERE name LIKE 'bunny.%' ORDER BY 1;

-- the catalog starts empty
SELECT (SELECT count(*) FROM bunny.peer) AS peers,
       (SELECT count(*) FROM bunny.mirror) AS mirrors,
       (SELECT count(*) FROM bunny.mirror_table) AS mirror_tables,
       (SELECT count(*) FROM bunny.mirror_logs) AS logs;

-- drop and re-create: the roles already exist the second time
DROP EXTENSION bunnydb;
SELECT count(*) AS bunny_schemas FROM pg_namespace WHERE nspname = 'bunny';
CREATE EXTENSION bunnydb;
SELECT extversion FROM pg_extension WHERE extname = 'bunnydb';
-- creating it twice fails
CREATE EXTENSION bunnydb;
