# Copyright (c) bunnydb authors
#
# 019_upgrade: users upgrade in place (README "Installation").  The
# extension is installed at its first released version (0.1.0), a mirror
# runs under a steady source write load, and ALTER EXTENSION bunnydb UPDATE
# runs while it streams: no row is lost or duplicated, the mirror keeps
# running, and the new version's behaviour is there (a failed mirror can be
# paused while the operation it failed in is pending).  Every upgrade
# script ships with a step here: 0.1.0 -> 0.2.0, 0.2.0 -> 0.3.0 and
# 0.3.0 -> 0.4.0 and 0.4.0 -> 0.5.0 all run under the load.  0.3.0's test_peer and drop_mirror work on the source
# through the workers' C (bunny._test_peer, bunny._source_drop_slot): the
# peer tests as before, and dropping the mirror leaves neither slot nor
# publication on the source; status changes are checked against the
# transition table, and the mirror's options survive as typed columns.
# 0.4.0 keeps a table's copy parts, later DDL and sequences as typed rows
# instead of jsonb columns: a mirror set up on 0.3.0 is stopped in the
# middle of its initial copy (its first table locked on the destination)
# while ALTER EXTENSION UPDATE runs; its copy then finishes with what the
# update moved over (constraints, indexes, foreign key, sequence values),
# the moved rows match the parts the copy was running, and dropping the
# mirror removes them.  0.5.0's bunny.mirrors shows only the options that
# differ from their defaults (options), while mirror_status() keeps every
# value (config).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;
use PostgreSQL::Test::Utils;
use Test::More;

my ($source, $dest) = setup_pair(create_extension => 0);
$dest->safe_psql('postgres', q{
CREATE EXTENSION bunnydb VERSION '0.1.0';
});
$dest->safe_psql('postgres',
	'SELECT bunny.create_peer(' . sql_literal('src') . ', '
	  . sql_literal($source->connstr('postgres')) . ')');

$source->safe_psql('postgres', q{
CREATE TABLE acc (id int PRIMARY KEY, balance bigint NOT NULL, note text);
INSERT INTO acc SELECT g, 0, 'n' || g FROM generate_series(1, 2000) g;
CREATE TABLE hist (id bigserial PRIMARY KEY, acc int, delta int, at timestamptz DEFAULT now());
CREATE TABLE cp_parent (id int PRIMARY KEY, name text);
INSERT INTO cp_parent SELECT g, 'p' || g FROM generate_series(1, 100) g;
CREATE TABLE cp_child (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                       parent int NOT NULL REFERENCES cp_parent, qty int CHECK (qty > 0),
                       code serial);
CREATE INDEX cp_child_qty_idx ON cp_child (qty);
INSERT INTO cp_child (parent, qty) SELECT 1 + g % 100, 1 + g % 7 FROM generate_series(1, 20000) g;
ANALYZE cp_parent, cp_child;
});
ok(create_mirror($dest, 'up', ['public.acc', 'public.hist'], do_initial_snapshot => 'true'),
	'mirror running on 0.1.0');

# a steady load: one transaction of an update and an insert every few ms
my $load_sql = q{
DO $$
BEGIN
  FOR i IN 1..1500 LOOP
    UPDATE acc SET balance = balance + 1 WHERE id = 1 + (i * 7) % 2000;
    INSERT INTO hist (acc, delta) VALUES (1 + (i * 7) % 2000, 1);
    COMMIT;
    PERFORM pg_sleep(0.002);
  END LOOP;
END
$$;
};
my $load = start_source_load($source, $load_sql);

sleep 1;
$dest->safe_psql('postgres', "ALTER EXTENSION bunnydb UPDATE TO '0.2.0'");
is($dest->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'bunnydb'"),
	'0.2.0', 'updated to 0.2.0 while the mirror streams');
sleep 1;
$dest->safe_psql('postgres', "ALTER EXTENSION bunnydb UPDATE TO '0.3.0'");
is($dest->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'bunnydb'"),
	'0.3.0', 'updated to 0.3.0 while the mirror streams');

# a mirror set up on 0.3.0 (by this library, into the jsonb columns),
# copying with one worker: its first table is locked on the destination as
# soon as setup has made it, so the copy stops at its first part (or at
# its second, when the first was under way).  SHARE mode: it keeps the
# copy's COPY FROM out but lets the worker's check that the table is
# empty through; an ACCESS EXCLUSIVE lock taken before that check stopped
# the copy before its parts were planned (a race lost on a loaded machine).
ok(create_mirror($dest, 'cp', ['public.cp_parent', 'public.cp_child'], do_initial_snapshot => 'true',
		snapshot_num_rows_per_partition => 2000, snapshot_max_parallel_workers => 1, wait => 0),
	'mirror cp created on 0.3.0');
my $cp_id = $dest->safe_psql('postgres', "SELECT id FROM bunny.mirror WHERE name = 'cp'");
my $locker = $dest->background_psql('postgres');
ok(poll_until(sub { $locker->query_safe("SELECT to_regclass('public.cp_child') IS NOT NULL") eq 't' }, 60, 0.01),
	'cp: setup made the destination tables');
$locker->query_safe('BEGIN');
$locker->query_safe('LOCK TABLE public.cp_child IN SHARE MODE');
ok(poll_until(sub { query_value($dest, "SELECT count(*) > 0 FROM bunny.snapshot_part WHERE mirror_id = $cp_id") eq 't' },
		60, 0.05),
	'cp: the copy is planned');
is($dest->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE status <> 'DONE') > 0 FROM bunny.snapshot_part "
	  . "WHERE mirror_id = $cp_id AND source_table = 'cp_child'"),
	't', 'cp: cp_child has parts left to copy')
  or diag($dest->safe_psql('postgres', "SELECT * FROM bunny.snapshot_part WHERE mirror_id = $cp_id"));

# the update runs while the copy waits; it may wait in turn for the
# copy's transaction (the lock is let go once it waits or is done)
my $updater = $dest->background_psql('postgres');
$updater->query_until(qr/updating/, "\\echo updating\nALTER EXTENSION bunnydb UPDATE TO '0.4.0';\n");
ok(poll_until(sub {
		query_value($dest,
			"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE 'ALTER EXTENSION%' "
		  . "               AND wait_event_type = 'Lock') "
		  . "    OR (SELECT extversion = '0.4.0' FROM pg_extension WHERE extname = 'bunnydb')") eq 't' },
		60, 0.05),
	'ALTER EXTENSION UPDATE ran while cp was copying');
$locker->query_safe('COMMIT');
$locker->quit;
$updater->query_safe('SELECT 1');
$updater->quit;
is($dest->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'bunnydb'"),
	'0.4.0', 'updated to 0.4.0 while the mirror streams');
is($dest->safe_psql('postgres', "SELECT max_batch_size || ' ' || replicate_indexes FROM bunny.mirror WHERE name = 'up'"),
	'1000 true', 'the options of the mirror made on 0.1.0 are typed columns now');

$dest->safe_psql('postgres', 'ALTER EXTENSION bunnydb UPDATE');
is($dest->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'bunnydb'"),
	'0.5.0', 'updated to 0.5.0 while the mirror streams');
is($dest->safe_psql('postgres', "SELECT string_agg(name || ' ' || options, ', ' ORDER BY name) FROM bunny.mirrors"),
	'cp {"snapshot_max_parallel_workers": 1, "snapshot_num_rows_per_partition": 2000}, up {}',
	'bunny.mirrors shows the options that differ from their defaults');
is($dest->safe_psql('postgres', "SELECT bunny.mirror_status('up')->'config'->>'max_batch_size'"),
	'1000', 'mirror_status() still has every option');

finish_source_load($load, 'upgrade');

ok(wait_synced($source, $dest, 'up', ['public.acc', 'public.hist']), 'caught up after the update');
compare_tables($source, $dest, ['public.acc', 'public.hist'], 'after ALTER EXTENSION UPDATE');
is($dest->safe_psql('postgres', 'SELECT count(*) FROM public.hist'), '1500', 'every change applied once');
is(mirror_field($dest, 'up', 'status'), 'RUNNING', 'still running');

# 0.4.0: the copy that spanned the update finished with the typed rows
ok(wait_for_status($dest, 'cp', 'RUNNING', 120), 'cp: the copy finished after the update');
ok(wait_synced($source, $dest, 'cp', ['public.cp_parent', 'public.cp_child']), 'cp: caught up');
compare_tables($source, $dest, ['public.cp_parent', 'public.cp_child'], 'cp after the update');
is($dest->safe_psql('postgres',
		"SELECT string_agg(contype::text, ',' ORDER BY contype) FROM pg_constraint "
	  . "WHERE conrelid = 'public.cp_child'::regclass"),
	'c,f,p', 'cp: check, foreign key and primary key built after the copy');
is($dest->safe_psql('postgres',
		"SELECT condeferred FROM pg_constraint WHERE conrelid = 'public.cp_child'::regclass AND contype = 'f'"),
	't', 'cp: the foreign key is deferred');
is($dest->safe_psql('postgres', "SELECT to_regclass('public.cp_child_qty_idx') IS NOT NULL"),
	't', 'cp: the index built after the copy');
is($dest->safe_psql('postgres',
		"SELECT pg_sequence_last_value(pg_get_serial_sequence('public.cp_child', 'id')) || ' ' || "
	  . "pg_sequence_last_value(pg_get_serial_sequence('public.cp_child', 'code'))"),
	'20000 20000', 'cp: identity and serial sequences taken over');
is($dest->safe_psql('postgres',
		"SELECT string_agg(kind, ',' ORDER BY ordinal) FROM bunny.mirror_table_ddl "
	  . "WHERE mirror_id = $cp_id AND source_table = 'cp_child'"),
	'constraint,constraint,index,foreign key', 'cp: its later DDL moved to rows, in order');
is($dest->safe_psql('postgres',
		"SELECT string_agg(column_name || ':' || dest_seq, ',' ORDER BY ordinal) FROM bunny.mirror_table_sequence "
	  . "WHERE mirror_id = $cp_id AND source_table = 'cp_child'"),
	'code:public.cp_child_code_seq,id:public.cp_child_id_seq', 'cp: its sequences moved to rows');
is($dest->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE s.part_no IS NULL OR p.part_no IS NULL "
	  . "                         OR s.from_relation <> p.from_relation "
	  . "                         OR s.predicate IS DISTINCT FROM p.predicate) || ' ' || count(*) "
	  . "  FROM (SELECT * FROM bunny.snapshot_part WHERE mirror_id = $cp_id) s "
	  . "  FULL JOIN (SELECT * FROM bunny.mirror_table_part WHERE mirror_id = $cp_id) p "
	  . " USING (mirror_id, source_schema, source_table, part_no)"),
	'0 ' . $dest->safe_psql('postgres', "SELECT count(*) FROM bunny.snapshot_part WHERE mirror_id = $cp_id"),
	'cp: its copy parts moved to rows, the parts it copied');
$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('cp')");
is($dest->safe_psql('postgres',
		"SELECT (SELECT count(*) FROM bunny.mirror_table_part WHERE mirror_id = $cp_id) "
	  . "     + (SELECT count(*) FROM bunny.mirror_table_ddl WHERE mirror_id = $cp_id) "
	  . "     + (SELECT count(*) FROM bunny.mirror_table_sequence WHERE mirror_id = $cp_id)"),
	'0', 'cp: dropping the mirror removes its rows');

# the new version's SQL is in place: a paused mirror can be resumed,
# and the mirror goes on streaming
$dest->safe_psql('postgres', "SELECT bunny.pause_mirror('up')");
ok(wait_for_status($dest, 'up', 'PAUSED', 30), 'paused');
$source->safe_psql('postgres', 'UPDATE acc SET note = note || \'!\' WHERE id <= 100');
$dest->safe_psql('postgres', "SELECT bunny.resume_mirror('up')");
ok(wait_for_status($dest, 'up', 'RUNNING', 30), 'resumed');
ok(wait_synced($source, $dest, 'up', ['public.acc', 'public.hist']), 'caught up after resume');

# 0.3.0: a status change the transition table does not allow fails, and
# leaves the mirror as it was
my ($guard_ret, $guard_out, $guard_err) = $dest->psql('postgres',
	"UPDATE bunny.mirror SET status = 'SETUP' WHERE name = 'up'");
isnt($guard_ret, 0, 'a status change nobody planned is refused');
like($guard_err, qr/invalid mirror status transition from RUNNING to SETUP/, 'the refusal names the transition');
is(mirror_field($dest, 'up', 'status'), 'RUNNING', 'the mirror is unchanged');

# a fresh install of the default version has the same catalog and functions
# as an updated one
my $catalog_sql = q{
SELECT string_agg(x, E'\n' ORDER BY x) FROM (
  SELECT format('%s(%s) %s', p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc)) AS x
    FROM pg_proc p WHERE p.pronamespace = 'bunny'::regnamespace
  UNION ALL
  SELECT format('%s.%s %s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod))
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
   WHERE c.relnamespace = 'bunny'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped) s
};
my $updated = $dest->safe_psql('postgres', $catalog_sql);
$dest->safe_psql('postgres', 'CREATE DATABASE fresh');
$dest->safe_psql('fresh', 'CREATE EXTENSION bunnydb');
is($dest->safe_psql('fresh', $catalog_sql), $updated,
	'a fresh install and an updated one have the same functions and catalog');

# 0.3.0: test_peer asks the source through bunny._test_peer
is($dest->safe_psql('postgres',
		"SELECT ok, wal_level, can_replicate, error IS NULL, server_version <> '' FROM bunny.test_peer('src')"),
	't|logical|t|t|t', 'test_peer after the update');

# 0.3.0: drop_mirror drops slot and publication through
# bunny._source_drop_slot and bunny._source_drop_publication, without a
# warning
my ($rc, $out, $err) = $dest->psql('postgres', "SELECT bunny.drop_mirror('up')");
is($rc, 0, 'drop_mirror after the update');
unlike($err, qr/could not drop/, 'no warning about the source');
is($source->safe_psql('postgres',
		"SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'bunny_slot_up') + "
	  . "(SELECT count(*) FROM pg_publication WHERE pubname = 'bunny_pub_up')"),
	'0', 'slot and publication dropped on the source');
$source->stop;
$dest->stop;
done_testing();
