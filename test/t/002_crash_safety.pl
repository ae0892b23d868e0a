
# Copyright (c) bunnydb authors
#
# 002_crash_safety: exactly-once apply under continuous source load while
# faults are injected:
#   phase 1: SIGKILL of the mirror worker, several times (postmaster
#            reinitializes; the mirror must resume by itself)
#   phase 2: immediate shutdown + start of the destination server
#   phase 3: restart of the source server (the mirror retries with backoff)
# After each phase the destination must catch up and every table must be
# identical to the source: no lost and no duplicated rows. A counter row
# updated by every transaction, an insert-only table without key and a
# unique constraint on a non-PK column make losses/duplicates visible.
# While the load runs, the destination is sampled for invariants that hold
# at every source commit (counter = number of history rows, sum of balances
# = 0): a reader must never see half of a source transaction.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;

use Time::HiRes qw(usleep time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my ($source, $dest) = setup_pair(
	source_conf => "log_statement = 'ddl'\n",
	dest_conf => "bunny.retry_backoff_min = '200ms'\n"
	  . "bunny.retry_backoff_max = '5s'\n");

my $mirror = 'crash';

$source->safe_psql('postgres', transfer_tables_sql() . q{
CREATE TABLE public.bulk (id bigserial PRIMARY KEY, client int, v int, txno bigint);
});

my @tables = (
	'public.counter', 'public.accounts', 'public.events',
	'public.history', 'public.bulk');

ok( create_mirror(
		$dest, $mirror, \@tables,
		do_initial_snapshot => 'false',
		max_batch_size => 100),
	'mirror reaches RUNNING');

# Initial data goes through CDC (no snapshot).
$source->safe_psql(
	'postgres', q{
INSERT INTO counter VALUES (1, 0);
INSERT INTO accounts SELECT g, 0, 0, NULL FROM generate_series(1, 1000) g;
});
ok(wait_synced($source, $dest, $mirror, \@tables), 'initial rows replicated');

# ---------------------------------------------------------------------------
# Load generator: pgbench, 2 clients, 250 transactions a second in all:
# 9 in 10 are BunnyTest's transfer_script, 1 in 10 this bulk transaction,
# which bumps the counter and writes one history row as a transfer does.
# ---------------------------------------------------------------------------

my $bulk_script = q{
BEGIN;
UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n \gset
INSERT INTO bulk (client, v, txno) SELECT :client_id, g, :n FROM generate_series(1, 300) g;
UPDATE bulk SET v = -v WHERE id IN (SELECT id FROM bulk ORDER BY id DESC LIMIT 50);
DELETE FROM bulk WHERE id IN (SELECT id FROM bulk ORDER BY id LIMIT 150);
INSERT INTO history (client, aid, delta, txno, ts) VALUES (:client_id, 0, 300, :n, clock_timestamp());
COMMIT;
};
my @load = (
	scripts => [ [ transfer_script(), 9 ], [ $bulk_script, 1 ] ],
	rate => 250);

# Invariants that hold on the source at every commit: every transaction
# bumps the counter once and inserts exactly one history row, and transfers
# keep the sum of all balances at 0. A reader on the destination must never
# see a state that breaks them (no half-applied source transaction).
my ($samples, $violations) = (0, 0);

sub sample_invariants
{
	my $r = query_value($dest,
		    "SELECT (SELECT n FROM counter WHERE id = 1) || ':' || "
		  . "(SELECT count(*) FROM history) || ':' || "
		  . "(SELECT coalesce(sum(balance), 0) FROM accounts)",
		timeout => 10);
	return unless defined $r && $r =~ /^(\d+):(\d+):(-?\d+)$/;
	$samples++;
	if ($1 != $2 || $3 != 0)
	{
		$violations++;
		diag("destination shows a partial transaction: counter=$1 "
			  . "history rows=$2 sum(balance)=$3")
		  if $violations <= 5;
	}
	return;
}

# Wait until $offset seconds after the load started, sampling the
# destination's invariants meanwhile.
sub sleep_until
{
	my ($load, $offset) = @_;
	my $deadline = $load->{started} + $offset;
	while (time() < $deadline)
	{
		sample_invariants();
		my $t = $deadline - time();
		$t = 0.1 if $t > 0.1;
		usleep(int($t * 1_000_000)) if $t > 0;
	}
	return;
}

my %faults = (worker_sigkill => 0, dest_immediate => 0, source_restart => 0);
my %stats;    # check_transfer_phase's rows compared and differences

# Kill the mirror worker with SIGKILL; wait until a new worker runs.
sub kill_worker
{
	my @pids = worker_pids($dest, $mirror);
	if (!@pids)
	{
		# it may be restarting after the previous fault
		poll_until(sub { @pids = worker_pids($dest, $mirror); scalar @pids },
			60);
	}
	if (!@pids)
	{
		fail('found a mirror worker to kill');
		dump_mirror_state($dest, $mirror);
		return;
	}
	note("SIGKILL mirror worker pid(s) @pids");
	kill 'KILL', @pids;
	$faults{worker_sigkill}++;

	my %old = map { $_ => 1 } @pids;
	my $back = poll_until(
		sub {
			my @new = worker_pids($dest, $mirror);
			return scalar(grep { !$old{$_} } @new);
		},
		90);
	ok($back, 'mirror worker restarted by itself after SIGKILL');
	dump_mirror_state($dest, $mirror) unless $back;
	return;
}

# ---------------------------------------------------------------------------
# Phase 1: SIGKILL the worker three times under load
# ---------------------------------------------------------------------------

my $load = start_pgbench_load($source, @load, secs => 24);
foreach my $at (4, 10, 16)
{
	sleep_until($load, $at);
	kill_worker();
}
sleep_until($load, 24);
my $tx1 = finish_source_load($load, 'phase 1');
check_transfer_phase($source, $dest, $mirror, \@tables, 'after worker SIGKILLs', \%stats);

# ---------------------------------------------------------------------------
# Phase 2: immediate stop / start of the destination under load
# ---------------------------------------------------------------------------

$load = start_pgbench_load($source, @load, secs => 20);
foreach my $at (4, 12)
{
	sleep_until($load, $at);
	note('immediate shutdown of destination');
	$dest->stop('immediate');
	usleep(1_000_000);
	$dest->start;
	$faults{dest_immediate}++;
	ok(wait_for_status($dest, $mirror, 'RUNNING', 90),
		'mirror RUNNING again after destination crash restart');
}
sleep_until($load, 20);
my $tx2 = finish_source_load($load, 'phase 2');
check_transfer_phase($source, $dest, $mirror, \@tables,
	'after destination immediate restarts', \%stats);

# ---------------------------------------------------------------------------
# Phase 3: restart the source under load. pgbench clients lose their
# connections (expected), so a second load runs after the restart.
# ---------------------------------------------------------------------------

$load = start_pgbench_load($source, @load, secs => 8);
sleep_until($load, 4);
my $t0 = time();
$source->restart;
my $t_source_up = time();
my $restart_secs = $t_source_up - $t0;
$faults{source_restart}++;
note(sprintf('source restart took %.1f s', $restart_secs));
diag(sprintf(
		'source restart took %.1f s: the walsender of the mirror probably '
		  . 'waited for a flush confirmation (wal_sender_timeout)',
		$restart_secs))
  if $restart_secs > 20;
my $tx3 = finish_source_load($load, 'phase 3, across the source restart', may_fail => 1);

# second load runs while we wait for the mirror to reconnect
$load = start_pgbench_load($source, @load, secs => 8);

ok( poll_until(
		sub {
			(query_value($source,
					"SELECT count(*) FROM pg_stat_replication WHERE application_name = 'bunnydb:$mirror'"
				) // '') eq '1';
		},
		120),
	'mirror reconnected to the restarted source');
# bunny.retry_backoff_max is 5 s here: reconnecting must not take much longer.
my $reconnect_secs = time() - $t_source_up;
note(sprintf('mirror reconnected %.1f s after the source came back',
		$reconnect_secs));
ok($reconnect_secs <= 30,
	sprintf('reconnect after source restart honours retry_backoff_max = 5s '
		  . '(took %.1f s)', $reconnect_secs));
my $tx4 = finish_source_load($load, 'phase 3, after the source restart');
check_transfer_phase($source, $dest, $mirror, \@tables, 'after source restart', \%stats);

# ---------------------------------------------------------------------------
# Final
# ---------------------------------------------------------------------------

ok($samples >= 50, "invariants sampled on the destination ($samples samples)");
is($violations, 0,
	'destination never showed half of a source transaction '
	  . '(counter = history rows, sum(balance) = 0)');

is(mirror_field($dest, $mirror, 'status'), 'RUNNING', 'mirror still RUNNING');
ok( poll_until(
		sub { (mirror_field($dest, $mirror, 'error_count') // '') eq '0' }, 30),
	'error_count back to 0 after successful batches');
is( $source->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'bunny_slot_$mirror'"
	),
	'1',
	'slot kept on the source');

my $counter = $source->safe_psql('postgres', 'SELECT n FROM counter');
note(sprintf(
		'faults injected: %d worker SIGKILLs, %d destination immediate restarts, '
		  . '%d source restarts; source transactions (counter) = %s; '
		  . 'pgbench tx per phase: %s/%s/%s/%s; rows compared over all checks: %d',
		$faults{worker_sigkill}, $faults{dest_immediate},
		$faults{source_restart}, $counter,
		$tx1, $tx2, $tx3, $tx4, $stats{rows}));

$dest->stop;
$source->stop;
done_testing();
