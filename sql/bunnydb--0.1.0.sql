/*
 * bunnydb--0.1.0.sql
 *		Catalog, views and SQL API of bunnydb.
 *
 * The catalog lives in schema bunny of the destination database.  Control
 * functions only change catalog rows and then wake the background workers
 * (bunny._notify) once their transaction commits; all work against the
 * source happens in the workers, except for peer validation and the clean-up
 * done by drop_mirror.
 *
 * Every function is SECURITY DEFINER with a pinned search_path, EXECUTE is
 * revoked from PUBLIC and granted to bunny_admin (control) or bunny_monitor
 * (read-only); see the end of this file.
 */

\echo Use "CREATE EXTENSION bunnydb" to load this file. \quit

-- Refuse to install unless the library was preloaded: without it there is
-- no launcher and no shared memory, so nothing would ever replicate.
CREATE FUNCTION bunny._check_preload() RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'bunny_check_preload';
SELECT bunny._check_preload();

DO $roles$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'bunny_monitor') THEN
		CREATE ROLE bunny_monitor NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'bunny_admin') THEN
		CREATE ROLE bunny_admin NOLOGIN;
	END IF;
END
$roles$;
GRANT bunny_monitor TO bunny_admin;

/* ------------------------------------------------------------------------
 * Catalog tables
 * ------------------------------------------------------------------------ */

CREATE TABLE bunny.peer (
	name		text PRIMARY KEY,
	conninfo	text NOT NULL,
	-- made by a non-superuser: connections must authenticate with the
	-- conninfo's password (see bunny_require_password)
	require_password boolean NOT NULL DEFAULT true,
	created_at	timestamptz NOT NULL DEFAULT now(),
	updated_at	timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bunny.mirror (
	id					serial PRIMARY KEY,
	name				text NOT NULL UNIQUE,
	source_peer			text NOT NULL,
	status				text NOT NULL DEFAULT 'CREATED'
		CHECK (status IN ('CREATED', 'SETUP', 'SNAPSHOT', 'RUNNING', 'PAUSING',
						  'PAUSED', 'RESYNCING', 'SYNCING_SCHEMA', 'FAILED',
						  'TERMINATING')),
	phase				text NOT NULL DEFAULT 'SETUP'
		CHECK (phase IN ('SETUP', 'SNAPSHOT', 'CDC')),
	slot_name			text NOT NULL UNIQUE,
	publication_name	text NOT NULL UNIQUE,
	origin_name			text NOT NULL UNIQUE,
	-- random token naming this incarnation of the mirror; written into the
	-- publication's comment so that leftovers of an older mirror of the same
	-- name are recognised rather than silently reused
	incarnation			text NOT NULL,
	-- set (and committed) before the slot is created on the source: a slot
	-- found later is ours only if this was set
	slot_requested		boolean NOT NULL DEFAULT false,
	pending_op			text,
	-- update_tables changed the table list: the publication must follow
	publication_dirty	boolean NOT NULL DEFAULT false,
	config				jsonb NOT NULL,
	error_message		text,
	error_count			integer NOT NULL DEFAULT 0,
	last_error_at		timestamptz,
	total_rows_synced	bigint NOT NULL DEFAULT 0,
	last_sync_time		timestamptz,
	created_at			timestamptz NOT NULL DEFAULT now(),
	updated_at			timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bunny.mirror_table (
	mirror_id			integer NOT NULL REFERENCES bunny.mirror (id) ON DELETE CASCADE,
	source_schema		name NOT NULL,
	source_table		name NOT NULL,
	destination_schema	name NOT NULL,
	destination_table	name NOT NULL,
	partition_key		name,
	exclude_columns		name[] NOT NULL DEFAULT '{}',
	status				text NOT NULL DEFAULT 'PENDING'
		CHECK (status IN ('PENDING', 'SNAPSHOT', 'SYNCED', 'RESYNCING', 'ERROR')),
	rows_snapshotted	bigint NOT NULL DEFAULT 0,
	rows_inserted		bigint NOT NULL DEFAULT 0,
	rows_updated		bigint NOT NULL DEFAULT 0,
	rows_deleted		bigint NOT NULL DEFAULT 0,
	last_synced_at		timestamptz,
	error_message		text,
	-- changes committed on the source at or before this LSN are already in
	-- the table's copy and are skipped by CDC (NULL: apply everything)
	sync_lsn			pg_lsn,
	-- filled by setup for the initial copy: what to read from the source,
	-- and the DDL that runs once the data is in (constraints and indexes;
	-- foreign keys after all tables; sequence values to take over)
	source_relkind		"char",
	copy_columns		name[],
	copy_parts			jsonb,		-- planned parts: [{"from": ..., "where": ...}]
	copy_binary			boolean NOT NULL DEFAULT false,
	source_pages		bigint,
	source_rows			bigint,
	created_by_bunny	boolean NOT NULL DEFAULT false,
	post_copy_ddl		jsonb NOT NULL DEFAULT '[]',
	fk_ddl				jsonb NOT NULL DEFAULT '[]',
	sequences			jsonb NOT NULL DEFAULT '[]',
	copy_done			boolean NOT NULL DEFAULT false,
	snapshot_started_at	timestamptz,
	-- a resync in progress: strategy, state (REQUESTED -> COPYING), and
	-- the table the copy goes to (the destination itself, or <table>_resync)
	resync_strategy		text,
	resync_state		text CHECK (resync_state IN ('REQUESTED', 'COPYING')),
	copy_target_table	name,
	-- the last Relation message of the source table, to replay the queue
	-- after a restart
	resync_relation_msg	bytea,
	PRIMARY KEY (mirror_id, source_schema, source_table),
	UNIQUE (destination_schema, destination_table)
);

-- units of work of a snapshot: a block range (or key range, or leaf
-- partition) of one table, claimed by snapshot workers
CREATE TABLE bunny.snapshot_part (
	mirror_id		integer NOT NULL,
	source_schema	name NOT NULL,
	source_table	name NOT NULL,
	part_no			integer NOT NULL,
	predicate		text,			-- WHERE clause on the source, or NULL for all
	from_relation	text NOT NULL,	-- what to read: ONLY table, or a leaf partition
	status			text NOT NULL DEFAULT 'PENDING'
		CHECK (status IN ('PENDING', 'RUNNING', 'DONE')),
	worker_pid		integer,
	attempts		integer NOT NULL DEFAULT 0,
	rows_copied		bigint,
	error_message	text,
	PRIMARY KEY (mirror_id, source_schema, source_table, part_no),
	FOREIGN KEY (mirror_id, source_schema, source_table)
		REFERENCES bunny.mirror_table (mirror_id, source_schema, source_table) ON DELETE CASCADE
);

-- changes of a table being resynced that arrived after its copy's
-- snapshot: raw pgoutput messages, replayed in order once the copy is in
CREATE TABLE bunny.resync_queue (
	mirror_id		integer NOT NULL,
	source_schema	name NOT NULL,
	source_table	name NOT NULL,
	seq				bigserial,
	message			bytea NOT NULL,
	PRIMARY KEY (mirror_id, source_schema, source_table, seq),
	FOREIGN KEY (mirror_id, source_schema, source_table)
		REFERENCES bunny.mirror_table (mirror_id, source_schema, source_table) ON DELETE CASCADE
);

CREATE TABLE bunny.mirror_logs (
	id			bigserial PRIMARY KEY,
	mirror		text NOT NULL,
	level		text NOT NULL CHECK (level IN ('DEBUG', 'INFO', 'WARNING', 'ERROR')),
	message		text NOT NULL,
	details		jsonb,
	created_at	timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX mirror_logs_mirror_created_idx ON bunny.mirror_logs (mirror, created_at);

SELECT pg_catalog.pg_extension_config_dump('bunny.peer', '');
SELECT pg_catalog.pg_extension_config_dump('bunny.mirror', '');
SELECT pg_catalog.pg_extension_config_dump('bunny.mirror_table', '');

/* ------------------------------------------------------------------------
 * C helpers (internal; not granted to anyone)
 * ------------------------------------------------------------------------ */

-- whether the role calling the API (outside SECURITY DEFINER) is a superuser
CREATE FUNCTION bunny._caller_is_superuser() RETURNS boolean
	LANGUAGE c AS 'MODULE_PATHNAME', 'bunny_caller_is_superuser';

-- raise 22023 unless conninfo parses as a libpq connection string or URI
CREATE FUNCTION bunny._conninfo_check(conninfo text) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_conninfo_check';

-- run one query on a (non-replication) connection, return its rows as the
-- caller's column definition list; used for validation and clean-up
CREATE FUNCTION bunny._remote_query(conninfo text, query text) RETURNS SETOF record
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_remote_query';

-- wake the launcher (and the mirror's worker) when this transaction commits
CREATE FUNCTION bunny._notify(mirror_id integer) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_notify';

-- terminate the mirror's worker and wait until it has exited
CREATE FUNCTION bunny._stop_worker(mirror_id integer, timeout_ms integer) RETURNS boolean
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_stop_worker';

CREATE FUNCTION bunny._wait_for_lsn(mirror_id integer, lsn pg_lsn, timeout_ms integer) RETURNS boolean
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_wait_for_lsn';

-- live figures the workers keep in shared memory, for this database
CREATE FUNCTION bunny._worker_stats(
	OUT mirror_id integer, OUT pid integer, OUT source_lsn pg_lsn,
	OUT processed_lsn pg_lsn, OUT oldest_pending_commit timestamptz,
	OUT last_commit_time timestamptz, OUT behind_since timestamptz)
	RETURNS SETOF record
	LANGUAGE c AS 'MODULE_PATHNAME', 'bunny_worker_stats';

-- the conninfo with its password masked; parsed by libpq, so every form of
-- password (keyword, quoted, escaped, URI userinfo or query parameter) is
-- caught
CREATE FUNCTION bunny._mask_conninfo(conninfo text) RETURNS text
	LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'bunny_mask_conninfo';

-- progress of the mirrors' replication origins (pg_replication_origin_status
-- is for superusers only; this exposes just the LSNs of bunnydb's origins)
CREATE FUNCTION bunny._origin_progress(OUT origin_name text, OUT remote_lsn pg_lsn)
	RETURNS SETOF record
	LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT r.roname, s.remote_lsn
	  FROM pg_catalog.pg_replication_origin r
	  JOIN pg_catalog.pg_replication_origin_status s ON s.local_id = r.roident
	 WHERE r.roname LIKE 'bunnydb\_%'
$$;

/* ------------------------------------------------------------------------
 * Internal SQL helpers
 * ------------------------------------------------------------------------ */

-- the mirror row, locked against concurrent control operations
CREATE FUNCTION bunny._lock_mirror(p_name text) RETURNS bunny.mirror
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m bunny.mirror;
BEGIN
	IF p_name IS NULL THEN
		RAISE EXCEPTION 'mirror name must not be null' USING ERRCODE = '22004';
	END IF;
	-- A plain FOR UPDATE: the worker holds the row only for the instant of a
	-- batch commit.  Whether an operation is in progress is pending_op's job.
	SELECT * INTO m FROM bunny.mirror WHERE name = p_name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'mirror "%" does not exist', p_name USING ERRCODE = '42704';
	END IF;
	RETURN m;
END
$$;

-- one control operation at a time: 55006 while another is in progress
CREATE FUNCTION bunny._check_no_pending(m bunny.mirror) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF m.pending_op IS NOT NULL THEN
		RAISE EXCEPTION 'another operation is already in progress'
			USING ERRCODE = '55006', DETAIL = format('Operation in progress: %s.', m.pending_op);
	END IF;
END
$$;

CREATE FUNCTION bunny._log(p_mirror text, p_level text, p_message text, p_details jsonb DEFAULT NULL)
	RETURNS void
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
AS $$
	INSERT INTO bunny.mirror_logs (mirror, level, message, details)
	VALUES (p_mirror, p_level, p_message, p_details);
$$;

-- split "schema.table" (SQL identifier rules) into its parts; public if unqualified
CREATE FUNCTION bunny._parse_table_name(p_name text, OUT schema_name name, OUT table_name name)
	LANGUAGE plpgsql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	parts text[];
BEGIN
	BEGIN
		parts := parse_ident(p_name);
	EXCEPTION WHEN OTHERS THEN
		RAISE EXCEPTION 'invalid table name "%"', p_name USING ERRCODE = '22023';
	END;
	-- refuse rather than truncate: a truncated name is another table
	IF EXISTS (SELECT 1 FROM unnest(parts) x WHERE octet_length(x) > 63) THEN
		RAISE EXCEPTION 'table name "%" is too long', p_name
			USING ERRCODE = '22023', DETAIL = 'Identifiers are at most 63 bytes long.';
	END IF;
	IF array_length(parts, 1) = 1 THEN
		schema_name := 'public';
		table_name := parts[1];
	ELSIF array_length(parts, 1) = 2 THEN
		schema_name := parts[1];
		table_name := parts[2];
	ELSE
		RAISE EXCEPTION 'invalid table name "%"', p_name
			USING ERRCODE = '22023',
				  HINT = 'Use "table" or "schema.table".';
	END IF;
END
$$;

/*
 * Validate a table_mappings array and return one row per mapping.  Raises
 * 22023 for malformed input and 42710 for a destination table (or source
 * table) named twice, or already used by another mirror.
 */
CREATE FUNCTION bunny._parse_mappings(p_mappings jsonb, p_mirror_id integer,
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

		IF format('%I.%I', src.schema_name, src.table_name) = ANY (seen_src) THEN
			RAISE EXCEPTION 'source table %.% is mapped twice', quote_ident(src.schema_name), quote_ident(src.table_name)
				USING ERRCODE = '42710';
		END IF;
		IF format('%I.%I', dst.schema_name, dst.table_name) = ANY (seen_dst) THEN
			RAISE EXCEPTION 'destination table %.% is mapped twice', quote_ident(dst.schema_name), quote_ident(dst.table_name)
				USING ERRCODE = '42710';
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
END
$$;

/*
 * Run DDL items built by setup ([{"kind", "name", "sql"}, ...]) against a
 * destination table, skipping the ones already done: a crash can interrupt
 * the list anywhere.  Each item is logged.
 */
CREATE FUNCTION bunny._apply_ddl(p_mirror text, p_table regclass, p_items jsonb) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	item jsonb;
	done integer := 0;
	saved_timeout text := current_setting('deadlock_timeout');
	may_set boolean := EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND rolsuper);
BEGIN
	/*
	 * Autovacuum often starts on a table that was just copied.  The DDL
	 * below waits for it until deadlock_timeout (1 s by default), and only
	 * then cancels it; on our own fresh table, cancel it at once.
	 */
	IF may_set THEN
		PERFORM set_config('deadlock_timeout', '10ms', true);
	END IF;
	FOR item IN SELECT value FROM jsonb_array_elements(coalesce(p_items, '[]')) LOOP
		IF item ->> 'kind' = 'constraint' AND EXISTS (
				SELECT 1 FROM pg_constraint
				 WHERE conrelid = p_table AND conname = item ->> 'name') THEN
			CONTINUE;
		END IF;
		IF item ->> 'kind' = 'index' AND EXISTS (
				SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
				 WHERE i.indrelid = p_table AND c.relname = item ->> 'name') THEN
			CONTINUE;
		END IF;
		EXECUTE item ->> 'sql';
		done := done + 1;
		PERFORM bunny._log(p_mirror, 'INFO', format('%s %s on %s', CASE item ->> 'kind'
			WHEN 'index' THEN 'created index' ELSE 'added constraint' END,
			quote_ident(item ->> 'name'), p_table), jsonb_build_object('sql', item ->> 'sql'));
	END LOOP;
	IF may_set THEN
		PERFORM set_config('deadlock_timeout', saved_timeout, true);
	END IF;
	RETURN done;
END
$$;

CREATE FUNCTION bunny._check_range(p_option text, p_value integer, p_min integer, p_max integer)
	RETURNS void
	LANGUAGE plpgsql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF p_value IS NULL THEN
		RAISE EXCEPTION '% must not be null', p_option USING ERRCODE = '22004';
	END IF;
	IF p_value < p_min OR p_value > p_max THEN
		RAISE EXCEPTION '% must be between % and %', p_option, p_min, p_max
			USING ERRCODE = '22023', DETAIL = format('Value given: %s.', p_value);
	END IF;
END
$$;

CREATE FUNCTION bunny._check_strategy(p_strategy text) RETURNS void
	LANGUAGE plpgsql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF p_strategy IS NULL OR p_strategy NOT IN ('truncate', 'swap') THEN
		RAISE EXCEPTION 'invalid resync strategy "%"', coalesce(p_strategy, 'NULL')
			USING ERRCODE = '22023', HINT = 'Use ''truncate'' or ''swap''.';
	END IF;
END
$$;

/* ------------------------------------------------------------------------
 * Peers
 * ------------------------------------------------------------------------ */

CREATE FUNCTION bunny._check_peer_conninfo(p_conninfo text, p_validate boolean) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	dummy integer;
BEGIN
	IF p_conninfo IS NULL THEN
		RAISE EXCEPTION 'conninfo must not be null' USING ERRCODE = '22004';
	END IF;
	PERFORM bunny._conninfo_check(p_conninfo);
	IF coalesce(p_validate, true) THEN
		SELECT x INTO dummy FROM bunny._remote_query(p_conninfo, 'SELECT 1') AS r(x integer);
	END IF;

END
$$;

CREATE FUNCTION bunny.create_peer(name text, conninfo text, validate boolean DEFAULT true)
	RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF create_peer.name IS NULL OR create_peer.name = '' THEN
		RAISE EXCEPTION 'peer name must not be empty' USING ERRCODE = '22023';
	END IF;
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

CREATE FUNCTION bunny.alter_peer(name text, conninfo text, validate boolean DEFAULT true)
	RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m record;
BEGIN
	PERFORM 1 FROM bunny.peer p WHERE p.name = alter_peer.name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'peer "%" does not exist', alter_peer.name USING ERRCODE = '42704';
	END IF;
	PERFORM bunny._check_peer_conninfo(alter_peer.conninfo, validate);
	UPDATE bunny.peer p SET conninfo = alter_peer.conninfo, updated_at = now(),
		   require_password = NOT bunny._caller_is_superuser()
	 WHERE p.name = alter_peer.name;
	-- running workers reconnect with the new conninfo
	FOR m IN SELECT id, mirror.name FROM bunny.mirror WHERE source_peer = alter_peer.name LOOP
		PERFORM bunny._log(m.name, 'INFO', format('peer "%s" changed; reconnecting', alter_peer.name));
		PERFORM bunny._notify(m.id);
	END LOOP;
END
$$;

CREATE FUNCTION bunny.drop_peer(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	users text;
BEGIN
	PERFORM 1 FROM bunny.peer p WHERE p.name = drop_peer.name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'peer "%" does not exist', drop_peer.name USING ERRCODE = '42704';
	END IF;
	SELECT string_agg(format('%I', m.name), ', ' ORDER BY m.name) INTO users
	  FROM bunny.mirror m WHERE m.source_peer = drop_peer.name;
	IF users IS NOT NULL THEN
		RAISE EXCEPTION 'cannot drop peer "%" because mirrors use it', drop_peer.name
			USING ERRCODE = '2BP01',
				  DETAIL = format('Mirrors using it: %s.', users),
				  HINT = 'Drop those mirrors first with bunny.drop_mirror().';
	END IF;
	DELETE FROM bunny.peer p WHERE p.name = drop_peer.name;
END
$$;

CREATE FUNCTION bunny.test_peer(name text)
	RETURNS TABLE (ok boolean, server_version text, wal_level text,
				   can_replicate boolean, error text)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ci text;
	problems text[] := '{}';
BEGIN
	SELECT p.conninfo INTO ci FROM bunny.peer p WHERE p.name = test_peer.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'peer "%" does not exist', test_peer.name USING ERRCODE = '42704';
	END IF;
	BEGIN
		SELECT r.v, r.w, r.c INTO server_version, wal_level, can_replicate
		  FROM bunny._remote_query(ci,
			$q$SELECT current_setting('server_version'), current_setting('wal_level'),
					  (SELECT rolsuper OR rolreplication FROM pg_catalog.pg_roles
						WHERE rolname = current_user)$q$) AS r(v text, w text, c boolean);
	EXCEPTION WHEN OTHERS THEN
		ok := false;
		error := SQLERRM;
		RETURN NEXT;
		RETURN;
	END;
	IF wal_level <> 'logical' THEN
		problems := problems || format('wal_level is "%s", it must be "logical"', wal_level);
	END IF;
	IF NOT can_replicate THEN
		problems := problems || 'the role has neither REPLICATION nor SUPERUSER';
	END IF;
	ok := cardinality(problems) = 0;
	error := nullif(array_to_string(problems, '; '), '');
	RETURN NEXT;
END
$$;

CREATE FUNCTION bunny.peer_tables(name text)
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
	SELECT r.s, r.t, r.pk, r.ri, r.n
	  FROM bunny._remote_query(ci, $q$
		SELECT n.nspname, c.relname,
			   EXISTS (SELECT 1 FROM pg_catalog.pg_index i
						WHERE i.indrelid = c.oid AND i.indisprimary),
			   CASE c.relreplident WHEN 'd' THEN 'default' WHEN 'f' THEN 'full'
					WHEN 'i' THEN 'index' ELSE 'nothing' END,
			   greatest(c.reltuples, 0)::bigint
		  FROM pg_catalog.pg_class c
		  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
		   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
		   AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
		 ORDER BY 1, 2$q$) AS r(s name, t name, pk boolean, ri text, n bigint);
END
$$;

CREATE VIEW bunny.peers AS
	SELECT p.name, bunny._mask_conninfo(p.conninfo) AS conninfo, p.created_at, p.updated_at
	  FROM bunny.peer p;

/* ------------------------------------------------------------------------
 * Mirrors
 * ------------------------------------------------------------------------ */

CREATE FUNCTION bunny.create_mirror(
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
	IF create_mirror.name IS NULL THEN
		RAISE EXCEPTION 'mirror name must not be null' USING ERRCODE = '22004';
	END IF;
	IF create_mirror.name !~ '^[a-z0-9_-]{1,48}$' THEN
		RAISE EXCEPTION 'invalid mirror name "%"', create_mirror.name
			USING ERRCODE = '22023',
				  DETAIL = 'A mirror name consists of 1 to 48 lower-case letters, digits, "_" and "-".';
	END IF;
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

	v_config := jsonb_build_object(
		'do_initial_snapshot', do_initial_snapshot,
		'max_batch_size', max_batch_size,
		'idle_timeout_seconds', idle_timeout_seconds,
		'snapshot_num_rows_per_partition', snapshot_num_rows_per_partition,
		'snapshot_max_parallel_workers', snapshot_max_parallel_workers,
		'snapshot_num_tables_in_parallel', snapshot_num_tables_in_parallel,
		'replicate_indexes', replicate_indexes,
		'replicate_foreign_keys', replicate_foreign_keys,
		'resync_strategy', resync_strategy);

	INSERT INTO bunny.mirror (name, source_peer, slot_name, publication_name, origin_name,
							  incarnation, config)
	VALUES (create_mirror.name, create_mirror.source_peer,
			'bunny_slot_' || v_suffix, 'bunny_pub_' || v_suffix,
			'bunnydb_' || v_incarnation, v_incarnation, v_config)
	RETURNING id INTO v_id;

	INSERT INTO bunny.mirror_table (mirror_id, source_schema, source_table, destination_schema,
									destination_table, partition_key, exclude_columns)
	SELECT v_id, p.source_schema, p.source_table, p.destination_schema, p.destination_table,
		   p.partition_key, p.exclude_columns
	  FROM bunny._parse_mappings(table_mappings, v_id) p;

	PERFORM bunny._log(create_mirror.name, 'INFO', 'mirror created',
					   jsonb_build_object('source_peer', create_mirror.source_peer,
										  'tables', jsonb_array_length(table_mappings),
										  'config', v_config));
	PERFORM bunny._notify(v_id);
END
$$;

CREATE FUNCTION bunny.pause_mirror(name text) RETURNS void
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
	PERFORM bunny._check_no_pending(m);
	IF m.status = 'FAILED' THEN
		-- no worker runs for a failed mirror: pause at once
		UPDATE bunny.mirror SET status = 'PAUSED', updated_at = now() WHERE id = m.id;
		PERFORM bunny._log(m.name, 'INFO', 'mirror paused');
	ELSE
		UPDATE bunny.mirror SET status = 'PAUSING', pending_op = 'pause', updated_at = now()
		 WHERE id = m.id;
		PERFORM bunny._log(m.name, 'INFO', 'pause requested');
	END IF;
	PERFORM bunny._notify(m.id);
END
$$;

CREATE FUNCTION bunny.resume_mirror(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m bunny.mirror;
BEGIN
	m := bunny._lock_mirror(resume_mirror.name);
	PERFORM bunny._check_no_pending(m);
	IF m.status <> 'PAUSED' THEN
		RETURN;					-- not paused: nothing to resume
	END IF;
	UPDATE bunny.mirror
	   SET status = CASE phase WHEN 'CDC' THEN 'RUNNING' WHEN 'SNAPSHOT' THEN 'SNAPSHOT' ELSE 'CREATED' END,
		   error_count = 0, updated_at = now()
	 WHERE id = m.id;
	PERFORM bunny._log(m.name, 'INFO', 'mirror resumed');
	PERFORM bunny._notify(m.id);
END
$$;

CREATE FUNCTION bunny.retry_mirror(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m bunny.mirror;
BEGIN
	m := bunny._lock_mirror(retry_mirror.name);
	PERFORM bunny._check_no_pending(m);
	IF m.status = 'PAUSED' THEN
		RAISE EXCEPTION 'mirror "%" is paused', m.name
			USING ERRCODE = '55000', HINT = 'Use bunny.resume_mirror() to resume it.';
	END IF;
	IF m.status = 'FAILED' THEN
		UPDATE bunny.mirror
		   SET status = CASE phase WHEN 'CDC' THEN 'RUNNING' WHEN 'SNAPSHOT' THEN 'SNAPSHOT' ELSE 'CREATED' END,
			   updated_at = now()
		 WHERE id = m.id;
	END IF;
	PERFORM bunny._log(m.name, 'INFO', 'retry requested');
	PERFORM bunny._notify(m.id);
END
$$;

CREATE FUNCTION bunny.drop_mirror(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	m		bunny.mirror;
	ci		text;
	slot	text;
	pub		text;
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
	slot := quote_literal(m.slot_name);
	pub := quote_ident(m.publication_name);
	BEGIN
		PERFORM 1 FROM bunny._remote_query(ci, format($q$
			DO $bunny$
			DECLARE
				tries integer := 0;
			BEGIN
				LOOP
					PERFORM pg_catalog.pg_terminate_backend(active_pid)
					   FROM pg_catalog.pg_replication_slots
					  WHERE slot_name = %1$s AND active_pid IS NOT NULL;
					BEGIN
						PERFORM pg_catalog.pg_drop_replication_slot(slot_name)
						   FROM pg_catalog.pg_replication_slots WHERE slot_name = %1$s;
						EXIT;
					EXCEPTION WHEN object_in_use THEN
						tries := tries + 1;
						IF tries > 100 THEN
							RAISE;
						END IF;
						PERFORM pg_catalog.pg_sleep(0.1);
					END;
				END LOOP;
			END
			$bunny$
			$q$, slot)) AS r(x int);
		PERFORM 1 FROM bunny._remote_query(ci, format('DROP PUBLICATION IF EXISTS %s', pub)) AS r(x int);
	EXCEPTION WHEN OTHERS THEN
		RAISE WARNING 'could not drop replication slot % and publication % on the source: %',
			m.slot_name, m.publication_name, SQLERRM
			USING HINT = 'Drop them on the source by hand; an unused slot keeps WAL from being removed.';
	END;

	IF EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = m.origin_name) THEN
		PERFORM pg_replication_origin_drop(m.origin_name);
	END IF;
	DELETE FROM bunny.mirror WHERE id = m.id;
	PERFORM bunny._log(m.name, 'INFO', 'mirror dropped');
	PERFORM bunny._notify(m.id);
END
$fn$;

/*
 * Resync: copy tables again from a fresh snapshot while the stream goes on.
 * The worker carries it out; pending_op stays 'resync' until every table is
 * SYNCED again.  A mirror whose slot is gone (FAILED) is set up again
 * instead, with a new slot, and its tables are emptied and copied.
 */
CREATE FUNCTION bunny._request_resync(m bunny.mirror, p_tables jsonb, p_strategy text)
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
BEGIN
	PERFORM bunny._check_strategy(strat);
	PERFORM bunny._check_no_pending(m);
	IF m.phase <> 'CDC' THEN
		RAISE EXCEPTION 'mirror "%" has not finished its initial copy', m.name
			USING ERRCODE = '55000',
				  HINT = 'A mirror in its initial copy copies its tables anyway; wait until it is RUNNING.';
	END IF;

	-- without its slot the mirror can only start over
	SELECT p.conninfo INTO ci FROM bunny.peer p WHERE p.name = m.source_peer;
	SELECT r.x INTO slot_ok
	  FROM bunny._remote_query(ci, format(
			'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %L)',
			m.slot_name)) AS r(x boolean);

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

CREATE FUNCTION bunny.resync_table(name text, table_name text, strategy text DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m		bunny.mirror;
	parts	record;
	src		text;
BEGIN
	m := bunny._lock_mirror(resync_table.name);
	IF table_name IS NULL THEN
		RAISE EXCEPTION 'table_name must not be null' USING ERRCODE = '22004';
	END IF;
	IF strategy IS NOT NULL THEN
		PERFORM bunny._check_strategy(strategy);
	END IF;
	parts := bunny._parse_table_name(table_name);
	SELECT format('%I.%I', t.source_schema, t.source_table) INTO src
	  FROM bunny.mirror_table t
	 WHERE t.mirror_id = m.id
	   AND ((t.source_schema, t.source_table) = (parts.schema_name, parts.table_name)
			OR (t.destination_schema, t.destination_table) = (parts.schema_name, parts.table_name))
	 ORDER BY (t.source_schema, t.source_table) = (parts.schema_name, parts.table_name) DESC
	 LIMIT 1;
	IF src IS NULL THEN
		RAISE EXCEPTION 'table % is not part of mirror "%"', table_name, m.name USING ERRCODE = '42704';
	END IF;
	PERFORM bunny._request_resync(m, jsonb_build_array(src), strategy);
END
$$;

CREATE FUNCTION bunny.resync_mirror(name text, strategy text DEFAULT NULL) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m bunny.mirror;
BEGIN
	m := bunny._lock_mirror(resync_mirror.name);
	IF strategy IS NOT NULL THEN
		PERFORM bunny._check_strategy(strategy);
	END IF;
	PERFORM bunny._request_resync(m,
		(SELECT jsonb_agg(format('%I.%I', t.source_schema, t.source_table))
		   FROM bunny.mirror_table t WHERE t.mirror_id = m.id),
		strategy);
END
$$;

/*
 * Change the table list of a paused mirror.  Added tables are copied when
 * the mirror resumes (the others keep their position); removed tables stop
 * replicating and their destination tables stay.
 */
CREATE FUNCTION bunny.update_tables(name text, table_mappings jsonb) RETURNS void
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
	IF m.phase <> 'CDC' THEN
		RAISE EXCEPTION 'mirror "%" has not finished its initial copy', m.name USING ERRCODE = '55000';
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
			format('table %I.%I removed from the mirror; destination table %I.%I stays',
				   r.source_schema, r.source_table, r.destination_schema, r.destination_table));
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
			format('table %I.%I added to the mirror; it is copied when the mirror resumes',
				   r.source_schema, r.source_table));
	END LOOP;

	IF added > 0 OR removed > 0 THEN
		UPDATE bunny.mirror SET publication_dirty = true, updated_at = now() WHERE id = m.id;
	END IF;
	DROP TABLE bunny_new_mappings;
	PERFORM bunny._notify(m.id);
END
$$;

/*
 * Make the destination tables match the source's definitions: columns
 * added and dropped, types, defaults, NOT NULL, missing indexes.  Runs in
 * the caller's transaction (all or nothing); every DDL is logged.
 * Excluded columns are left alone on both sides.
 */
CREATE FUNCTION bunny.sync_schema(name text) RETURNS void
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
BEGIN
	m := bunny._lock_mirror(sync_schema.name);
	PERFORM bunny._check_no_pending(m);
	SELECT p.conninfo INTO ci FROM bunny.peer p WHERE p.name = m.source_peer;
	PERFORM bunny._log(m.name, 'INFO', 'schema sync started');

	FOR t IN SELECT * FROM bunny.mirror_table WHERE mirror_id = m.id
			  ORDER BY source_schema, source_table LOOP
		src := format('%I.%I', t.source_schema, t.source_table);
		dest := format('%I.%I', t.destination_schema, t.destination_table);
		IF to_regclass(dest) IS NULL THEN
			RAISE EXCEPTION 'destination table % does not exist', dest USING ERRCODE = '42P01';
		END IF;

		CREATE TEMP TABLE bunny_src_cols ON COMMIT DROP AS
		SELECT * FROM bunny._remote_query(ci, format($q$
			SET search_path = pg_catalog;
			SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
				   CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END
			  FROM pg_attribute a
			  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
			 WHERE a.attrelid = %L::regclass AND a.attnum > 0 AND NOT a.attisdropped
			   AND a.attgenerated = ''
			$q$, src)) AS r(attname name, type text, nn boolean, def text)
		 WHERE NOT (r.attname = ANY (t.exclude_columns));

		IF NOT EXISTS (SELECT 1 FROM bunny_src_cols) THEN
			RAISE EXCEPTION 'source table % has no columns or does not exist', src USING ERRCODE = '42P01';
		END IF;

		-- the destination as it is
		CREATE TEMP TABLE bunny_dst_cols ON COMMIT DROP AS
		SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS nn,
			   pg_get_expr(d.adbin, d.adrelid) AS def
		  FROM pg_attribute a
		  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		 WHERE a.attrelid = dest::regclass AND a.attnum > 0 AND NOT a.attisdropped
		   AND a.attgenerated = '';

		FOR c IN SELECT s.*, d.type AS dtype, d.nn AS dnn, d.def AS ddef,
						d.attname IS NULL AS missing
				   FROM bunny_src_cols s LEFT JOIN bunny_dst_cols d USING (attname) LOOP
			IF c.missing THEN
				ddl := format('ALTER TABLE %s ADD COLUMN %I %s', dest, c.attname, c.type);
				IF c.def IS NOT NULL AND c.def NOT LIKE '%nextval(%' THEN
					ddl := ddl || ' DEFAULT ' || c.def;
				END IF;
				EXECUTE ddl;
				PERFORM bunny._log(m.name, 'INFO', format('sync_schema: added column %I to %s', c.attname, dest),
								   jsonb_build_object('sql', ddl));
				n := n + 1;
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
							  dest, c.attname, c.type, c.attname, c.type);
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

		-- columns the source no longer has
		FOR c IN SELECT d.attname FROM bunny_dst_cols d
				  WHERE NOT EXISTS (SELECT 1 FROM bunny_src_cols s WHERE s.attname = d.attname)
					AND NOT (d.attname = ANY (t.exclude_columns)) LOOP
			ddl := format('ALTER TABLE %s DROP COLUMN %I', dest, c.attname);
			EXECUTE ddl;
			PERFORM bunny._log(m.name, 'INFO', format('sync_schema: dropped column %I of %s (gone on the source)', c.attname, dest),
							   jsonb_build_object('sql', ddl));
			n := n + 1;
		END LOOP;

		-- indexes the destination lacks (by name), unless they use excluded columns
		FOR ix IN SELECT * FROM bunny._remote_query(ci, format($q$
				SET search_path = pg_catalog;
				SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisprimary,
					   ARRAY(SELECT attname FROM pg_attribute
							  WHERE attrelid = i.indrelid AND attnum = ANY (i.indkey))::text[]
				  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
				 WHERE i.indrelid = %L::regclass
				$q$, src)) AS r(idxname name, def text, isprimary boolean, cols text[]) LOOP
			CONTINUE WHEN ix.cols && t.exclude_columns::text[];
			CONTINUE WHEN EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
								   WHERE i.indrelid = dest::regclass
									 AND (ic.relname = ix.idxname OR (ix.isprimary AND i.indisprimary)));
			IF ix.isprimary THEN
				ddl := format('ALTER TABLE %s ADD PRIMARY KEY (%s)', dest,
							  (SELECT string_agg(quote_ident(x), ', ') FROM unnest(ix.cols) x));
			ELSE
				ddl := regexp_replace(ix.def, ' ON (ONLY )?\S+ USING ', ' ON ' || dest || ' USING ');
				ddl := regexp_replace(ddl, '^CREATE (UNIQUE )?INDEX ', 'CREATE \1INDEX IF NOT EXISTS ');
			END IF;
			EXECUTE ddl;
			PERFORM bunny._log(m.name, 'INFO', format('sync_schema: created index %I on %s', ix.idxname, dest),
							   jsonb_build_object('sql', ddl));
			n := n + 1;
		END LOOP;

		DROP TABLE bunny_src_cols;
		DROP TABLE bunny_dst_cols;
	END LOOP;
	PERFORM bunny._log(m.name, 'INFO', format('schema sync finished: %s change(s)', n));
	PERFORM bunny._notify(m.id);
END
$$;

/*
 * The query that lists, for tables given by name, each column's sequence
 * -- owned by the column (serial, identity) or named by its default's
 * nextval() -- and what it has handed out (NULL: nothing yet).  One text
 * for both sides: sync_sequences runs it on the source (which has nothing
 * of bunnydb installed) and on the destination.
 */
CREATE FUNCTION bunny._sequence_columns_query(tables text[]) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format($q$
		SELECT c.tbl, a.attname, s.seq::text, pg_sequence_last_value(s.seq)
		  FROM unnest(%L::text[]) c(tbl)
		  JOIN pg_attribute a ON a.attrelid = c.tbl::regclass
							 AND a.attnum > 0 AND NOT a.attisdropped
		  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		 CROSS JOIN LATERAL (SELECT coalesce(
				pg_get_serial_sequence(c.tbl, a.attname)::regclass,
				(SELECT dep.refobjid::regclass FROM pg_depend dep
				   JOIN pg_class sc ON sc.oid = dep.refobjid AND sc.relkind = 'S'
				  WHERE dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid
					AND dep.refclassid = 'pg_class'::regclass
				  ORDER BY dep.refobjid LIMIT 1)) AS seq) s
		 WHERE s.seq IS NOT NULL
		$q$, tables);
$$;

-- _sequence_columns_query run here
CREATE FUNCTION bunny._sequence_columns(tables text[])
	RETURNS TABLE (tbl text, attname name, seq text, last_value bigint)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN QUERY EXECUTE bunny._sequence_columns_query(tables);
END
$$;

/*
 * Take over the source's sequence values for a cutover: the sequences of
 * the mapped tables' columns on the destination (serial and identity
 * columns, and sequences a column's default names with nextval(), in
 * tables bunnydb created or found) are set to what the source's sequences
 * of the same columns have handed out, so that the destination, once it
 * takes the writes, never hands out a value the source already did.
 * Logical replication does not carry sequences; the initial copy took
 * them over once.  A sequence only ever moves forward: one the destination
 * has already taken past the source's is left alone.  setval is not
 * transactional: a sequence set here stays set even if the caller's
 * transaction rolls back.  One row per column with a sequence on the
 * source.
 */
CREATE FUNCTION bunny.sync_sequences(name text)
	RETURNS TABLE (destination_table text, column_name name, sequence_name text,
				   source_value bigint, destination_value bigint, updated boolean)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m		bunny.mirror;
	ci		text;
	r		record;
	dnext	numeric;
	d_last	bigint;
	d_called boolean;
	inc		bigint;
	n_set	integer := 0;
	n_kept	integer := 0;
	done	jsonb := '[]';
	missing	text;
BEGIN
	m := bunny._lock_mirror(sync_sequences.name);
	PERFORM bunny._check_no_pending(m);
	SELECT p.conninfo INTO ci FROM bunny.peer p WHERE p.name = m.source_peer;
	-- before any sequence is set: setval is not undone by the error
	SELECT format('%I.%I', mt.destination_schema, mt.destination_table) INTO missing
	  FROM bunny.mirror_table mt
	 WHERE mt.mirror_id = m.id
	   AND to_regclass(format('%I.%I', mt.destination_schema, mt.destination_table)) IS NULL
	 ORDER BY 1 LIMIT 1;
	IF missing IS NOT NULL THEN
		RAISE EXCEPTION 'destination table % does not exist', missing USING ERRCODE = '42P01';
	END IF;

	FOR r IN
		WITH t AS (
			SELECT format('%I.%I', mt.source_schema, mt.source_table) AS src,
				   format('%I.%I', mt.destination_schema, mt.destination_table) AS dest,
				   mt.exclude_columns
			  FROM bunny.mirror_table mt WHERE mt.mirror_id = m.id)
		SELECT t.dest, x.attname, x.last_value, d.seq
		  FROM t JOIN bunny._remote_query(ci,
					'SET search_path = pg_catalog; '
					|| bunny._sequence_columns_query((SELECT array_agg(src) FROM t)))
					AS x(tbl text, attname name, seq text, last_value bigint)
			ON x.tbl = t.src
		  LEFT JOIN bunny._sequence_columns((SELECT array_agg(dest) FROM t)) d
			ON d.tbl = t.dest AND d.attname = x.attname
		 WHERE NOT (x.attname = ANY (t.exclude_columns))
		 ORDER BY t.dest, x.attname
	LOOP
		destination_table := r.dest;
		column_name := r.attname;
		source_value := r.last_value;
		sequence_name := r.seq;
		destination_value := NULL;
		updated := false;
		IF sequence_name IS NOT NULL THEN
			EXECUTE format('SELECT last_value, is_called FROM %s', sequence_name) INTO d_last, d_called;
			SELECT seqincrement INTO inc FROM pg_sequence WHERE seqrelid = sequence_name::regclass;
			destination_value := CASE WHEN d_called THEN d_last END;
			-- the value the destination would hand out next
			dnext := CASE WHEN d_called THEN d_last::numeric + inc ELSE d_last END;
			-- NULL: the source's sequence has handed out nothing yet
			IF r.last_value IS NOT NULL
			   AND ((inc > 0 AND r.last_value >= dnext) OR (inc < 0 AND r.last_value <= dnext)) THEN
				PERFORM setval(sequence_name::regclass, r.last_value, true);
				destination_value := r.last_value;
				updated := true;
				n_set := n_set + 1;
				done := done || jsonb_build_object('sequence', sequence_name, 'value', r.last_value);
			ELSE
				n_kept := n_kept + 1;
			END IF;
		END IF;
		RETURN NEXT;
	END LOOP;
	PERFORM bunny._log(m.name, 'INFO',
		format('sync_sequences: took over %s sequence value(s) from the source, left %s as they were',
			   n_set, n_kept),
		jsonb_build_object('set', done));
END
$$;

CREATE FUNCTION bunny.wait_for_lsn(name text, lsn pg_lsn, timeout_ms integer DEFAULT 10000)
	RETURNS boolean
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_id integer;
BEGIN
	IF wait_for_lsn.lsn IS NULL OR timeout_ms IS NULL THEN
		RAISE EXCEPTION 'lsn and timeout_ms must not be null' USING ERRCODE = '22004';
	END IF;
	IF timeout_ms < 0 THEN
		RAISE EXCEPTION 'timeout_ms must not be negative' USING ERRCODE = '22023';
	END IF;
	SELECT id INTO v_id FROM bunny.mirror m WHERE m.name = wait_for_lsn.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'mirror "%" does not exist', wait_for_lsn.name USING ERRCODE = '42704';
	END IF;
	RETURN bunny._wait_for_lsn(v_id, wait_for_lsn.lsn, timeout_ms);
END
$$;

/* ------------------------------------------------------------------------
 * Monitoring
 * ------------------------------------------------------------------------ */

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
		   m.config, m.created_at
	  FROM bunny.mirror m
	  LEFT JOIN bunny._origin_progress() o ON o.origin_name = m.origin_name
	  LEFT JOIN bunny._worker_stats() w ON w.mirror_id = m.id;

CREATE VIEW bunny.mirror_tables AS
	SELECT m.name AS mirror,
		   format('%I.%I', t.source_schema, t.source_table) AS source_table,
		   format('%I.%I', t.destination_schema, t.destination_table) AS destination_table,
		   t.status, t.rows_snapshotted, t.rows_inserted, t.rows_updated, t.rows_deleted,
		   t.last_synced_at, t.error_message
	  FROM bunny.mirror_table t
	  JOIN bunny.mirror m ON m.id = t.mirror_id;

CREATE FUNCTION bunny.logs(name text, level text DEFAULT NULL, search text DEFAULT NULL,
						   "limit" integer DEFAULT 50, "offset" integer DEFAULT 0)
	RETURNS SETOF bunny.mirror_logs
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF logs.level IS NOT NULL AND upper(logs.level) NOT IN ('DEBUG', 'INFO', 'WARNING', 'ERROR') THEN
		RAISE EXCEPTION 'invalid log level "%"', logs.level
			USING ERRCODE = '22023', HINT = 'Use DEBUG, INFO, WARNING or ERROR.';
	END IF;
	IF coalesce("limit", 0) < 0 OR coalesce("offset", 0) < 0 THEN
		RAISE EXCEPTION 'limit and offset must not be negative' USING ERRCODE = '22023';
	END IF;
	RETURN QUERY
	SELECT l.* FROM bunny.mirror_logs l
	 WHERE l.mirror = logs.name
	   AND (logs.level IS NULL OR l.level = upper(logs.level))
	   AND (logs.search IS NULL
			OR l.message ILIKE '%' || logs.search || '%'
			OR l.details::text ILIKE '%' || logs.search || '%')
	 ORDER BY l.created_at DESC, l.id DESC
	 LIMIT coalesce("limit", 50) OFFSET coalesce("offset", 0);
END
$$;

CREATE FUNCTION bunny.mirror_status(name text) RETURNS jsonb
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result jsonb;
BEGIN
	SELECT to_jsonb(v) INTO result FROM bunny.mirrors v WHERE v.name = mirror_status.name;
	IF result IS NULL THEN
		RAISE EXCEPTION 'mirror "%" does not exist', mirror_status.name USING ERRCODE = '42704';
	END IF;
	RETURN result || jsonb_build_object(
		'tables', coalesce((SELECT jsonb_agg(to_jsonb(t) - 'mirror' ORDER BY t.source_table)
							  FROM bunny.mirror_tables t WHERE t.mirror = mirror_status.name), '[]'),
		'recent_errors', coalesce((SELECT jsonb_agg(jsonb_build_object('message', l.message,
																	  'details', l.details,
																	  'created_at', l.created_at))
									 FROM bunny.logs(mirror_status.name, 'ERROR', NULL, 5, 0) l), '[]'));
END
$$;

/* ------------------------------------------------------------------------
 * Privileges: nothing for PUBLIC; bunny_monitor reads, bunny_admin acts.
 * ------------------------------------------------------------------------ */

REVOKE ALL ON ALL TABLES IN SCHEMA bunny FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA bunny FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA bunny FROM PUBLIC;
REVOKE ALL ON SCHEMA bunny FROM PUBLIC;

GRANT USAGE ON SCHEMA bunny TO bunny_monitor, bunny_admin;
GRANT SELECT ON bunny.peers, bunny.mirrors, bunny.mirror_tables, bunny.mirror_logs TO bunny_monitor;
GRANT EXECUTE ON FUNCTION
	bunny._worker_stats(),
	bunny._origin_progress(),
	bunny._mask_conninfo(text),
	bunny.logs(text, text, text, integer, integer),
	bunny.mirror_status(text),
	bunny.wait_for_lsn(text, pg_lsn, integer),
	bunny.test_peer(text),
	bunny.peer_tables(text)
	TO bunny_monitor;
GRANT EXECUTE ON FUNCTION
	bunny.create_peer(text, text, boolean),
	bunny.alter_peer(text, text, boolean),
	bunny.drop_peer(text),
	bunny.create_mirror(text, text, jsonb, boolean, integer, integer, integer, integer,
						integer, boolean, boolean, text),
	bunny.pause_mirror(text),
	bunny.resume_mirror(text),
	bunny.retry_mirror(text),
	bunny.drop_mirror(text),
	bunny.resync_mirror(text, text),
	bunny.resync_table(text, text, text),
	bunny.update_tables(text, jsonb),
	bunny.sync_schema(text),
	bunny.sync_sequences(text)
	TO bunny_admin;
