# Copyright (c) bunnydb authors
#
# 031_async_commit_crash: a batch the worker committed asynchronously is
# not acknowledged to the source before it is on disk here, even when the
# next worker starts from it.
#
# The worker commits with synchronous_commit = off.  A batch X commits;
# the worker then fails on the next transaction Y (a local row is in the
# way) and exits, and the launcher starts the next run at once.  That run
# starts from the replication origin's position, which is X's end, and
# its first feedback says "flushed" up to there.  The destination's WAL
# writer runs every 10 s here, so X's commit may still be in WAL buffers.
# The destination then stops in immediate mode (a crash).  Before the
# fix X was gone after the restart while the source's slot had moved past
# it: the mirror streamed on from after X, and X's row never arrived
# (fuzz seed 19 showed it after a SIGKILL restarted the destination).
# The test checks the slot has taken X's end as flushed before the
# crash, then removes the local row and expects the tables to be equal.
# Without the fix it fails unless the WAL writer happened to write X in
# the second between X's commit and the crash.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;
use PostgreSQL::Test::Utils;
use Test::More;

my ($source, $dest) = setup_pair(
	dest_conf => "wal_writer_delay = 10000ms\nbunny.retry_backoff_min = '200ms'\n"
	  . "bunny.retry_backoff_max = '1s'\n");

sub src { return $source->safe_psql('postgres', $_[0]); }
sub dst { return $dest->safe_psql('postgres', $_[0]); }

src(q{
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g;
});
ok(create_mirror($dest, 'ac', ['public.t'], do_initial_snapshot => 'true'), 'mirror running');
ok(wait_synced($source, $dest, 'ac', ['public.t']), 'caught up');

# Y will fail on this row, which only the destination has
dst("INSERT INTO t VALUES (1000, 'local')");

# X: committed on the destination, asynchronously
src("INSERT INTO t VALUES (500, 'x')");
my $x_end = src('SELECT pg_current_wal_insert_lsn()');
ok(poll_until(sub { return dst('SELECT count(*) FROM t WHERE id = 500') eq '1'; }, 30),
	'X applied on the destination');

# Y fails; each new run starts from X's end and reports it as flushed
src("INSERT INTO t VALUES (1000, 'y')");
ok( poll_until(
		sub {
			return src("SELECT confirmed_flush_lsn >= '$x_end' FROM pg_replication_slots "
				  . "WHERE slot_name = 'bunny_slot_ac'") eq 't';
		},
		30, 0.05),
	"the source's slot took X as flushed");

# a crash of the destination: what is not written yet is gone
$dest->stop('immediate');
$dest->start;

is(dst('SELECT count(*) FROM t WHERE id = 500'), '1', 'X survived the crash');
dst("DELETE FROM t WHERE id = 1000");
ok(wait_synced($source, $dest, 'ac', ['public.t']), 'caught up after the local row is gone');
compare_tables($source, $dest, ['public.t'], 'after the crash');
is(dst("SELECT v FROM t WHERE id = 1000"), 'y', 'Y arrived');

done_testing();
