# Copyright (c) bunnydb authors
#
# 029_worker_shortage: a mirror whose initial copy finds no background
# worker free for a snapshot worker (README "Troubleshooting", "no
# background worker free for a snapshot worker") copies the tables in its
# own worker instead of failing and retrying for ever: the destination
# runs with max_worker_processes = 2 (the bunnydb launcher and one mirror
# worker; the built-in logical replication launcher is off).  The copy
# of several parts finishes, the log says why it was slow and which
# setting to raise, the tables equal the source, and the mirror streams.
# A second mirror then finds no background worker at all for itself: it
# waits visibly (state_detail, and one line in the server log naming the
# setting, not one per retry) and starts by itself once the first mirror
# is dropped and its worker's slot is free.  Dropped while the source is
# down, it warns with the two statements that drop its slot and
# publication there, which the test then runs.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;
use PostgreSQL::Test::Utils;
use Test::More;

my ($source, $dest) = setup_pair(dest_conf => "max_worker_processes = 2\nmax_logical_replication_workers = 0\n");

src(q{
CREATE TABLE big (id int PRIMARY KEY, v text);
INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
CREATE TABLE small (id int PRIMARY KEY, v text);
INSERT INTO small SELECT g, 'x' || g FROM generate_series(1, 100) g;
ANALYZE;
});

ok(create_mirror($dest, 'short', [ 'public.big', 'public.small' ],
		do_initial_snapshot => 'true', snapshot_num_rows_per_partition => 5000,
		timeout => 180),
	'the copy finishes with no snapshot worker');
like(dst("SELECT string_agg(message, ' / ') FROM bunny.logs('short', 'WARNING')"),
	qr/no background worker free for a snapshot worker: the mirror worker copies the tables itself/,
	'the log says why');
is(dst("SELECT details->>'hint' FROM bunny.logs('short', 'WARNING', search => 'no background worker') LIMIT 1"),
	'Raise max_worker_processes (the copy uses up to snapshot_max_parallel_workers more).',
	'and which setting to raise');
is(dst("SELECT count(*) FROM bunny.logs('short', 'ERROR')"), '0', 'no error loop');
compare_tables($source, $dest, [ 'public.big', 'public.small' ], 'after the copy');

src("UPDATE big SET v = 'changed' WHERE id % 100 = 0; DELETE FROM small WHERE id > 50");
ok(wait_synced($source, $dest, 'short', [ 'public.big', 'public.small' ]), 'streams after the copy');
compare_tables($source, $dest, [ 'public.big', 'public.small' ], 'after changes');

# a second mirror while the first holds the only free worker slot
src(q{
CREATE TABLE later (id int PRIMARY KEY, v text);
INSERT INTO later SELECT g, 'l' || g FROM generate_series(1, 1000) g;
});
my $logpos = -s $dest->logfile;
ok(create_mirror($dest, 'waits', ['public.later'], do_initial_snapshot => 'true', wait => 0),
	'a second mirror is created');
ok(poll_until(sub { (mirror_field($dest, 'waits', 'state_detail') // '') eq 'waiting for a worker slot' }, 30),
	'it says it waits for a worker slot')
  or diag(mirror_field($dest, 'waits', 'status') . ' ' . (mirror_field($dest, 'waits', 'state_detail') // ''));
# (the launcher cannot even start the scan worker that would read the new
# mirror from the catalog: no slot is free for that either)
ok(poll_until(sub { slurp_file($dest->logfile, $logpos) =~
			/could not start a (scan )?worker.*\n.*DETAIL:  All max_worker_processes \(2\) background worker slots are taken.*\n.*HINT:  Increase max_worker_processes/ }, 30),
	'the server log says why and which setting to raise');
sleep 5;
my $warnings = () = slurp_file($dest->logfile, $logpos) =~ /could not start a (scan )?worker/g;
is($warnings, 1, 'once, not at every retry');
is(mirror_field($dest, 'waits', 'status'), 'CREATED', 'it has not started');
is(mirror_field($dest, 'waits', 'error_count'), '0', 'and is not in an error loop');

dst("SELECT bunny.drop_mirror('short')");
ok(wait_for_status($dest, 'waits', 'RUNNING', 60), 'it starts by itself once a slot is free');
src("INSERT INTO later VALUES (1001, 'after')");
ok(wait_synced($source, $dest, 'waits', ['public.later']), 'and streams');
compare_tables($source, $dest, ['public.later'], 'the second mirror');
like(slurp_file($dest->logfile, $logpos), qr/(started a scan worker|mirror "waits" started) after waiting \d+ s for a background worker slot/,
	'the server log says when it could start');

# dropped while the source is down, it warns with the statements to run
# there later; run as given, they leave nothing behind
$source->stop;
my ($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.drop_mirror('waits')");
is($ret, 0, 'drop_mirror with the source down');
like($err, qr/WARNING:  could not drop replication slot bunny_slot_waits and publication bunny_pub_waits on the source/,
	'it warns that slot and publication stay');
my ($statements) = $err =~ /HINT:  Run on the source: (.*?;.*?;) An unused slot/;
is($statements, q{SELECT pg_drop_replication_slot('bunny_slot_waits'); DROP PUBLICATION IF EXISTS bunny_pub_waits;},
	'the hint gives the two statements');
$source->start;
src($statements);
is(src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'bunny_slot_waits'")
	  . src("SELECT count(*) FROM pg_publication WHERE pubname = 'bunny_pub_waits'"),
	'00', 'run on the source, they drop both');
$source->stop;
$dest->stop;
done_testing();
