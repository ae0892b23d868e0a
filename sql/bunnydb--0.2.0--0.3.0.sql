/*
 * bunnydb--0.2.0--0.3.0.sql
 *		Upgrade from 0.2.0: what the SQL API asks of or does on the source
 *		is the same C the workers use (src/source.c).  bunny.test_peer
 *		reads the source through bunny._test_peer, which applies setup's
 *		own check of wal_level and the REPLICATION attribute;
 *		bunny.drop_mirror drops the slot (terminating the walsender that
 *		holds it) and the publication through bunny._source_drop_slot and
 *		bunny._source_drop_publication instead of a DO block run on the
 *		source.  Results, messages and SQLSTATEs are unchanged.
 */

\echo Use "ALTER EXTENSION bunnydb UPDATE TO '0.3.0'" to load this file. \quit

-- bunny.test_peer's row for a source: connecting failures raise
CREATE FUNCTION bunny._test_peer(conninfo text,
	OUT ok boolean, OUT server_version text, OUT wal_level text,
	OUT can_replicate boolean, OUT error text)
	RETURNS record
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_test_peer';
REVOKE ALL ON FUNCTION bunny._test_peer(text) FROM PUBLIC;

-- drop a replication slot on the source if it exists, terminating the
-- walsender that holds it (waits up to ten seconds for it to let go)
CREATE FUNCTION bunny._source_drop_slot(conninfo text, slot text) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_source_drop_slot';
REVOKE ALL ON FUNCTION bunny._source_drop_slot(text, text) FROM PUBLIC;

-- drop a publication on the source if it exists
CREATE FUNCTION bunny._source_drop_publication(conninfo text, publication text) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'bunny_source_drop_publication';
REVOKE ALL ON FUNCTION bunny._source_drop_publication(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION bunny.test_peer(name text)
	RETURNS TABLE (ok boolean, server_version text, wal_level text,
				   can_replicate boolean, error text)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ci text;
BEGIN
	SELECT p.conninfo INTO ci FROM bunny.peer p WHERE p.name = test_peer.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'peer "%" does not exist', test_peer.name USING ERRCODE = '42704';
	END IF;
	BEGIN
		SELECT r.ok, r.server_version, r.wal_level, r.can_replicate, r.error
		  INTO ok, server_version, wal_level, can_replicate, error
		  FROM bunny._test_peer(ci) r;
	EXCEPTION WHEN OTHERS THEN
		ok := false;
		error := SQLERRM;
	END;
	RETURN NEXT;
END
$$;

CREATE OR REPLACE FUNCTION bunny.drop_mirror(name text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	m		bunny.mirror;
	ci		text;
	t		record;
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
