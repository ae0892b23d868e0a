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

dst("SELECT bunny.drop_mirror('short')");
$source->stop;
$dest->stop;
done_testing();
