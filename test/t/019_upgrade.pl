# Copyright (c) bunnydb authors
#
# 019_upgrade: users upgrade in place (README "Installation").  The
# extension is installed at its first released version (0.1.0), a mirror
# runs under a steady source write load, and ALTER EXTENSION bunnydb UPDATE
# runs while it streams: no row is lost or duplicated, the mirror keeps
# running, and the new version's behaviour is there (a failed mirror can be
# paused while the operation it failed in is pending).  Every upgrade
# script ships with a step here: 0.1.0 -> 0.2.0, 0.2.0 -> 0.3.0 and
# 0.3.0 -> 0.4.0 all run under the load.  0.3.0's test_peer and drop_mirror work on the source
# through the workers' C (bunny._test_peer, bunny._source_drop_slot): the
# peer tests as before, and dropping the mirror leaves neither slot nor
# publication on the source; status changes are checked against the
# transition table, and the mirror's options survive as typed columns.

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
sleep 1;
$dest->safe_psql('postgres', 'ALTER EXTENSION bunnydb UPDATE');
is($dest->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'bunnydb'"),
	'0.4.0', 'updated to 0.4.0 while the mirror streams');
is($dest->safe_psql('postgres', "SELECT max_batch_size || ' ' || replicate_indexes FROM bunny.mirror WHERE name = 'up'"),
	'1000 true', 'the options of the mirror made on 0.1.0 are typed columns now');

finish_source_load($load, 'upgrade');

ok(wait_synced($source, $dest, 'up', ['public.acc', 'public.hist']), 'caught up after the update');
compare_tables($source, $dest, ['public.acc', 'public.hist'], 'after ALTER EXTENSION UPDATE');
is($dest->safe_psql('postgres', 'SELECT count(*) FROM public.hist'), '1500', 'every change applied once');
is(mirror_field($dest, 'up', 'status'), 'RUNNING', 'still running');

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
