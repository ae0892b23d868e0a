
# Copyright (c) bunnydb authors
#
# 007_faults: the crash-safety and nothing-skipped promises of README
# "Guarantees" under a continuous write load on the source
# (background pgbench: updates of a counter row and accounts, inserts and
# deletes of events, an insert-only history table without key, an
# insert-only table with a sequence key), faults injected at random moments:
#
#   A. SIGKILL of the mirror worker and of the launcher, several times
#   B. a 2 M-row initial snapshot (second mirror): source restart during the
#      copy, SIGKILL of a snapshot worker during the copy
#   C. immediate stop/start of the destination; stop/start of the source
#   D. the replication connection cut (walsender terminated) while a
#      300 000-row transaction is streamed
#   E. a destination row that makes the apply fail: retried, never skipped,
#      recovers once the row is deleted
#   F. the slot dropped on the source: FAILED "no longer exists", then
#      resync_mirror recovers
#   G. a 1 000 000-row source transaction: peak RSS of the mirror worker
#   H. an idle source that writes only an unpublished table: the slot's
#      confirmed_flush_lsn keeps moving
#
# Fingerprints of every table are compared after each phase and at the end.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;

use IPC::Run;
use POSIX qw(WNOHANG);
use Time::HiRes qw(usleep time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $seed = $ENV{BUNNY_FAULT_SEED} // time() % 100000;
srand($seed);
note("random seed $seed (set BUNNY_FAULT_SEED to repeat)");
my $t_start = time();

my ($source, $dest) = setup_pair(
	source_conf => "log_statement = 'ddl'\nwal_sender_timeout = '10s'\n",
	dest_conf => "log_statement = 'ddl'\n"
	  . "bunny.retry_backoff_min = '200ms'\n"
	  . "bunny.retry_backoff_max = '3s'\n");

my $mirror = 'fmain';
my $slot   = "bunny_slot_$mirror";

$source->safe_psql('postgres', transfer_tables_sql() . q{
CREATE TABLE public.ins_only (id bigserial PRIMARY KEY, txno bigint NOT NULL, v int);
CREATE TABLE public.conflict_t (id int PRIMARY KEY, v text);
CREATE TABLE public.big_tx (id int PRIMARY KEY, v int);
CREATE TABLE public.unpub (id bigserial PRIMARY KEY, ts timestamptz DEFAULT now());
INSERT INTO counter VALUES (1, 0);
INSERT INTO accounts SELECT g, 0, 0, NULL FROM generate_series(1, 1000) g;
});

my @tables = (
	'public.counter', 'public.accounts', 'public.events', 'public.history',
	'public.ins_only', 'public.conflict_t', 'public.big_tx');

ok( create_mirror(
		$dest, $mirror, \@tables,
		do_initial_snapshot => 'true',
		max_batch_size => 500),
	'main mirror reaches RUNNING');
ok(wait_synced($source, $dest, $mirror, \@tables), 'initial rows replicated');

# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------

# pgbench, 2 clients, 150 transactions a second in all: BunnyTest's
# transfer_script, each transfer also inserting 1 to 4 rows into ins_only
my @load = (
	scripts => [
		transfer_script(
			extra => 'INSERT INTO ins_only (txno, v) SELECT :n, g FROM generate_series(1, :p) g;')
	],
	rate => 150);
my $total_tx = 0;

sub kill_load
{
	my ($load) = @_;
	return unless $load;
	eval { $load->{h}->kill_kill; };
	$total_tx += finish_source_load($load, 'killed load', may_fail => 1);
	return;
}

sub sleep_rand
{
	my ($min, $max) = @_;
	usleep(int(($min + rand($max - $min)) * 1_000_000));
	return;
}

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

my %faults;
my %stats = (rows => 0, differences => 0);    # of check_transfer_phase

sub pids_of
{
	my ($node, $backend_type) = @_;
	my $r = query_value($node,
		    "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE backend_type = "
		  . sql_literal($backend_type),
		timeout => 10);
	return () unless defined $r && $r ne '';
	return split /,/, $r;
}

# SIGKILL every process of the given backend_type on the destination, then
# wait until a new one runs (postmaster restarts everything after a crash).
sub kill_and_wait
{
	my ($backend_type, $fault, $wait_type) = @_;
	$wait_type //= $backend_type;
	my @pids;
	poll_until(sub { @pids = pids_of($dest, $backend_type); scalar @pids }, 60, 0.1);
	if (!@pids)
	{
		fail("found a process '$backend_type' to kill");
		return 0;
	}
	kill 'KILL', @pids;
	$faults{$fault}++;
	note("SIGKILL '$backend_type' pid(s) @pids");
	my %old = map { $_ => 1 } @pids;
	my $back = poll_until(
		sub {
			my @new = pids_of($dest, $wait_type);
			return scalar(grep { !$old{$_} } @new);
		},
		90, 0.2);
	ok($back, "'$wait_type' running again after SIGKILL of '$backend_type'");
	dump_mirror_state($dest, $mirror) unless $back;
	return $back;
}

sub terminate_walsender
{
	my ($m) = @_;
	my $r = query_value($source,
		"SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
	  . "WHERE backend_type = 'walsender' AND application_name = 'bunnydb:$m') s");
	return $r // 0;
}

# ---------------------------------------------------------------------------
# A. SIGKILL of the mirror worker and of the launcher under load
# ---------------------------------------------------------------------------

my $load = start_pgbench_load($source, @load, secs => 20);
foreach my $i (1 .. 3)
{
	sleep_rand(1.5, 4);
	kill_and_wait("bunnydb mirror $mirror", 'mirror worker SIGKILL');
	sleep_rand(1, 3);
	kill_and_wait('bunnydb launcher', 'launcher SIGKILL', "bunnydb mirror $mirror") if $i <= 2;
}
$total_tx += finish_source_load($load, 'A');
check_transfer_phase($source, $dest, $mirror, \@tables,
	'A: after worker/launcher SIGKILLs', \%stats);

# ---------------------------------------------------------------------------
# B. initial snapshot of 2 M rows (second mirror): source restart during the
#    copy, then SIGKILL of a snapshot worker during the copy
# ---------------------------------------------------------------------------

$source->safe_psql('postgres', q{
CREATE TABLE public.big (id int PRIMARY KEY, v int);
INSERT INTO public.big SELECT g, g % 1000 FROM generate_series(1, 2000000) g;
ANALYZE public.big;
});
my $snap = 'fsnap';
$load = start_pgbench_load($source, @load, secs => 30);
# one part copied by one worker: every interrupted copy starts over, so each
# fault has the whole copy as its window.  That window is short (the 2M rows
# copy in about a second on a fast machine): the faults below come 0.05 to
# 0.3 s after the worker appears.
ok( create_mirror(
		$dest, $snap, ['public.big'],
		do_initial_snapshot => 'true',
		snapshot_num_rows_per_partition => 10000000,
		snapshot_max_parallel_workers => 1,
		wait => 0),
	'snapshot mirror created');

sub snapshot_copying
{
	return poll_until(sub { scalar(my @p = pids_of($dest, "bunnydb snapshot $snap")) }, 120, 0.02);
}

# SIGKILL of the snapshot worker during the copy
if (snapshot_copying())
{
	sleep_rand(0.05, 0.3);
	my @sp = pids_of($dest, "bunnydb snapshot $snap");
	if (@sp)
	{
		note("SIGKILL snapshot worker(s) @sp");
		kill 'KILL', @sp;
		$faults{'snapshot worker SIGKILL'}++;
	}
}
ok($faults{'snapshot worker SIGKILL'}, 'a snapshot worker was killed during the copy')
  or diag('no snapshot worker seen copying (the copy ended too fast?)');

# source restart during the copy that follows
my $restarted = 0;
if (snapshot_copying())
{
	sleep_rand(0.05, 0.3);
	my $still = scalar(my @p = pids_of($dest, "bunnydb snapshot $snap"));
	note("source restart while the snapshot copies (snapshot workers running: $still)");
	$source->restart;
	$restarted = $still;
	$faults{'source restart during snapshot'}++ if $still;
}
ok($restarted, 'the source restarted while a snapshot worker was copying');
kill_load($load);
$load = start_pgbench_load($source, @load, secs => 15);

my $snap_ok = wait_for_status($dest, $snap, 'RUNNING', 90);
ok($snap_ok, 'snapshot mirror RUNNING after the faults');
if ($snap_ok)
{
	check_transfer_phase($source, $dest, $snap, ['public.big'],
		'B: 2M-row snapshot after snapshot worker SIGKILL + source restart', \%stats);
	is( $dest->safe_psql('postgres',
			"SELECT string_agg(status, ',') FROM bunny.mirror_tables WHERE mirror = '$snap'"),
		'SYNCED', 'big table SYNCED');
}
else
{
	$stats{differences}++;
	my $loops = () = slurp_file($dest->logfile) =~ /background worker "bunnydb snapshot $snap" \(PID \d+\) exited/g;
	diag("snapshot of $snap did not finish; snapshot worker exits logged so far: $loops");
}
$total_tx += finish_source_load($load, 'B');
check_transfer_phase($source, $dest, $mirror, \@tables,
	'B: main mirror after the source restart', \%stats);
$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('$snap')");

# ---------------------------------------------------------------------------
# C. immediate stop/start of the destination; stop/start of the source
# ---------------------------------------------------------------------------

$load = start_pgbench_load($source, @load, secs => 16);
foreach my $i (1 .. 2)
{
	sleep_rand(2, 5);
	note('immediate shutdown of the destination');
	$dest->stop('immediate');
	sleep_rand(0.2, 1.5);
	$dest->start;
	$faults{'destination immediate restart'}++;
	ok(wait_for_status($dest, $mirror, 'RUNNING', 90), 'mirror RUNNING after destination crash restart');
}
sleep_rand(1, 3);
note('stop/start of the source');
$source->stop('fast');
sleep_rand(1, 3);
$source->start;
$faults{'source stop/start'}++;
kill_load($load);
$load = start_pgbench_load($source, @load, secs => 8);
$total_tx += finish_source_load($load, 'C');
check_transfer_phase($source, $dest, $mirror, \@tables,
	'C: after destination crashes and source stop/start', \%stats);

# ---------------------------------------------------------------------------
# D. replication connection cut while a 300 000-row transaction streams
# ---------------------------------------------------------------------------

$load = start_pgbench_load($source, @load, secs => 16);
sleep_rand(1, 2);
my $big_insert = IPC::Run::start(
	[
		'psql', '-X', '-q', '-h', $source->host, '-p', $source->port, '-d', 'postgres',
		'-c', 'INSERT INTO public.ins_only (txno, v) SELECT -1, g FROM generate_series(1, 300000) g'
	],
	'<', \undef, '>', \my $bi_out, '2>', \my $bi_err);
# the stream starts at the commit (or earlier, if the worker streams
# in-progress transactions): cut it several times while it runs
my $cuts = 0;
my $t_cut = time();
while (time() - $t_cut < 12 && $cuts < 4)
{
	sleep_rand(0.3, 1.5);
	my $n = terminate_walsender($mirror);
	if ($n)
	{
		$cuts++;
		$faults{'replication connection cut'}++;
		note("walsender of $mirror terminated (cut $cuts)");
	}
}
$big_insert->finish;
is($big_insert->result(0), 0, 'the 300k-row INSERT on the source saw no error') or diag($bi_err);
ok($cuts >= 2, "replication connection cut $cuts times around the 300k-row transaction");
# one more cut right after the commit, while the transaction is decoded/sent
sleep_rand(0.1, 0.5);
$faults{'replication connection cut'}++ if terminate_walsender($mirror);
$total_tx += finish_source_load($load, 'D');
check_transfer_phase($source, $dest, $mirror, \@tables,
	'D: after replication connection cuts', \%stats);
is( $dest->safe_psql('postgres', 'SELECT count(*) FROM ins_only WHERE txno = -1'),
	'300000', 'the 300k-row transaction applied exactly once');

# ---------------------------------------------------------------------------
# E. an apply error: retried, never skipped, recovers once fixed
# ---------------------------------------------------------------------------

$load = start_pgbench_load($source, @load, secs => 14);
my $logs_before = $dest->safe_psql('postgres',
	"SELECT coalesce(max(id), 0) FROM bunny.mirror_logs");
$dest->safe_psql('postgres', "INSERT INTO conflict_t VALUES (1001, 'local row in the way')");
$source->safe_psql('postgres', "INSERT INTO conflict_t VALUES (1001, 'from the source')");
$source->safe_psql('postgres', "INSERT INTO conflict_t VALUES (1002, 'later')");
my $later_lsn = source_lsn($source);
ok( poll_until(
		sub { (mirror_field($dest, $mirror, 'error_count') // 0) > 0 }, 60),
	'E: apply error counted (error_count > 0)');
my $err = mirror_field($dest, $mirror, 'error_message') // '';
note("E: error_message: $err");
like($err, qr/duplicate key|unique/i, 'E: error_message names the unique violation');
# keep watching for 8 s: the later row must not appear; the error state
# (error_count > 0, error_message) must stay while the conflict stands
my ($skipped, $max_count, $cleared, $esamples) = (0, 0, 0, 0);
my %seen_counts;
my $t_e = time();
while (time() - $t_e < 8)
{
	my $r = query_value($dest,
		    "SELECT (SELECT count(*) FROM conflict_t WHERE id = 1002) || '|' || error_count || '|' "
		  . "|| CASE WHEN error_message IS NULL THEN 't' ELSE 'f' END FROM bunny.mirrors WHERE name = '$mirror'",
		timeout => 10);
	if (defined $r && $r =~ /^(\d+)\|(\d+)\|([tf])$/)
	{
		$esamples++;
		$skipped++ if $1 ne '0';
		$max_count = $2 if $2 > $max_count;
		$seen_counts{$2}++;
		$cleared++ if $2 == 0 || $3 eq 't';
	}
	usleep(100_000);
}
note('E: error_count values seen while the conflict stood: '
	  . join(', ', map { "$_ ($seen_counts{$_}x)" } sort { $a <=> $b } keys %seen_counts));
is($skipped, 0, 'E: the later row never appears while the conflict stands (nothing skipped)');
is( $dest->safe_psql('postgres', 'SELECT v FROM conflict_t WHERE id = 1001'),
	'local row in the way', 'E: the local row is still there');
my $retries = $dest->safe_psql('postgres',
	"SELECT count(*) FROM bunny.mirror_logs WHERE mirror = '$mirror' AND level = 'ERROR' "
  . "AND id > $logs_before AND message LIKE '%duplicate key%'");
ok($retries >= 2, "E: the apply was retried ($retries failed attempts logged)");
ok($max_count > 1, "E: error_count grows with the failed retries (max seen $max_count)");
is($cleared, 0,
	"E: error_count/error_message never reset while the conflict stands ($esamples samples)");
isnt(mirror_field($dest, $mirror, 'status'), 'FAILED', 'E: an apply error is retried, not FAILED');
$faults{'apply conflict'}++;
$dest->safe_psql('postgres', 'DELETE FROM conflict_t WHERE id = 1001');
$dest->safe_psql('postgres', "SELECT bunny.retry_mirror('$mirror')");
is(wait_for_lsn($dest, $mirror, $later_lsn, 60000), 't', 'E: caught up once the row is gone');
$total_tx += finish_source_load($load, 'E');
check_transfer_phase($source, $dest, $mirror, \@tables,
	'E: after the apply conflict', \%stats);
ok( poll_until(sub { (mirror_field($dest, $mirror, 'error_count') // '') eq '0' }, 30),
	'E: error_count back to 0');

# ---------------------------------------------------------------------------
# F. the slot dropped on the source
# ---------------------------------------------------------------------------

$load = start_pgbench_load($source, @load, secs => 14);
sleep_rand(1, 3);
my $dropped = $source->safe_psql(
	'postgres', qq{
DO \$\$
BEGIN
	FOR i IN 1 .. 200 LOOP
		PERFORM pg_terminate_backend(active_pid) FROM pg_replication_slots
		 WHERE slot_name = '$slot' AND active_pid IS NOT NULL;
		BEGIN
			PERFORM pg_drop_replication_slot('$slot');
			RETURN;
		EXCEPTION WHEN object_in_use THEN
			PERFORM pg_sleep(0.05);
		END;
	END LOOP;
	RAISE EXCEPTION 'could not drop the slot';
END
\$\$;
SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot';
});
is($dropped, '0', 'F: slot dropped on the source');
$faults{'slot dropped'}++;
ok(wait_for_status($dest, $mirror, 'FAILED', 60), 'F: mirror FAILED without its slot');
like(mirror_field($dest, $mirror, 'error_message') // '', qr/no longer exists/,
	'F: error_message says the slot no longer exists');
# retry does not help, and does not create a new slot
$dest->safe_psql('postgres', "SELECT bunny.retry_mirror('$mirror')");
usleep(2_000_000);
ok(wait_for_status($dest, $mirror, 'FAILED', 30), 'F: still FAILED after retry_mirror');
$dest->safe_psql('postgres', "SELECT bunny.resync_mirror('$mirror')");
ok(wait_for_status($dest, $mirror, 'RUNNING', 120), 'F: RUNNING again after resync_mirror');
$total_tx += finish_source_load($load, 'F');
check_transfer_phase($source, $dest, $mirror, \@tables,
	'F: after slot loss and resync', \%stats);

# ---------------------------------------------------------------------------
# G. one 1 000 000-row transaction: peak RSS of the mirror worker
# ---------------------------------------------------------------------------

my ($wpid) = pids_of($dest, "bunnydb mirror $mirror");
ok($wpid, 'G: mirror worker pid found');
# the INSERT runs in a child process while this one samples the worker
my $big_pid = fork();
die "fork: $!" unless defined $big_pid;
if ($big_pid == 0)
{
	exec('psql', '-X', '-q', '-o', '/dev/null', '-h', $source->host, '-p', $source->port,
		'-d', 'postgres', '-c',
		'INSERT INTO public.big_tx SELECT g, g % 977 FROM generate_series(1, 1000000) g')
	  or POSIX::_exit(1);
}
my ($peak_rss, $peak_anon, $samples) = (0, 0, 0);
my ($g_lsn, $g_done, $last_r);
my $t_g = Time::HiRes::time();
my $g_deadline = $t_g + 240;
my $next_check = 0;
while (Time::HiRes::time() < $g_deadline)
{
	if ($wpid && open(my $fh, '<', "/proc/$wpid/status"))
	{
		while (my $l = <$fh>)
		{
			$peak_rss = $1 if $l =~ /^VmRSS:\s+(\d+)/ && $1 > $peak_rss;
			$peak_anon = $1 if $l =~ /^RssAnon:\s+(\d+)/ && $1 > $peak_anon;
		}
		close $fh;
		$samples++;
	}
	if (!defined $g_lsn)
	{
		my $w = waitpid($big_pid, WNOHANG);
		if ($w == $big_pid || $w < 0)
		{
			is($w == $big_pid ? $? >> 8 : 0, 0, 'G: the 1M-row INSERT committed on the source');
			$g_lsn = source_lsn($source);
			note(sprintf('G: INSERT committed after %.1f s (source at %s)',
					Time::HiRes::time() - $t_g, $g_lsn));
		}
	}
	if (defined $g_lsn && Time::HiRes::time() >= $next_check)
	{
		$next_check = Time::HiRes::time() + 1;
		# wait_for_lsn, not last_lsn: the source may write WAL after the
		# commit (pruning, vacuum) that no later commit will ever cover
		$last_r = query_value($dest,
			"SELECT bunny.wait_for_lsn('$mirror', '$g_lsn', 0)::text",
			timeout => 10);
		$last_r = 't' if defined $last_r && $last_r eq 'true';
		if (defined $last_r && $last_r eq 't')
		{
			$g_done = 1;
			last;
		}
	}
	usleep(200_000);
}
ok($g_done, 'G: the mirror applied the 1M-row transaction')
  or diag('last check: ' . ($last_r // 'undef') . '; ' . mirror_state($dest, $mirror));
my $g_secs = Time::HiRes::time() - $t_g;
note(sprintf('G: mirror worker %s peak VmRSS %.1f MB, peak RssAnon %.1f MB '
		  . '(%d samples every 0.2 s over %.1f s)',
		$wpid // '?', $peak_rss / 1024, $peak_anon / 1024, $samples, $g_secs));
diag(sprintf('peak resident memory of the mirror worker during the 1M-row transaction: '
		  . 'VmRSS %.1f MB (RssAnon %.1f MB)', $peak_rss / 1024, $peak_anon / 1024));
ok($samples >= 5, "G: worker memory sampled ($samples samples)");
ok($peak_rss > 0 && $peak_rss < 200 * 1024,
	sprintf('G: peak VmRSS %.1f MB < 200 MB', $peak_rss / 1024));
is((pids_of($dest, "bunnydb mirror $mirror"))[0] // '', $wpid // '-',
	'G: the same worker applied the whole transaction (no crash/restart)');
check_transfer_phase($source, $dest, $mirror, \@tables,
	'G: after the 1M-row transaction', \%stats);

# ---------------------------------------------------------------------------
# H. idle source writing only an unpublished table: the slot moves on
# ---------------------------------------------------------------------------

sub confirmed
{
	return $source->safe_psql('postgres',
		"SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$slot'");
}

sub lsn_gt
{
	my ($a, $b) = @_;
	return $source->safe_psql('postgres', "SELECT '$a'::pg_lsn > '$b'::pg_lsn") eq 't';
}

my @conf = (confirmed());
my @wal  = (source_lsn($source));
my $t_h = time();
foreach my $half (1, 2)
{
	while (time() - $t_h < 35 * $half)
	{
		$source->safe_psql('postgres', 'INSERT INTO public.unpub DEFAULT VALUES');
		usleep(3_000_000);
	}
	push @conf, confirmed();
	push @wal, source_lsn($source);
	note("H: after " . int(time() - $t_h) . " s: confirmed_flush_lsn $conf[-1], source WAL at $wal[-1]");
}
ok(lsn_gt($conf[1], $conf[0]), "H: confirmed_flush_lsn moved in the first half ($conf[0] -> $conf[1])");
ok(lsn_gt($conf[2], $conf[1]), "H: confirmed_flush_lsn moved in the second half ($conf[1] -> $conf[2])");
ok(lsn_gt($conf[2], $wal[1]),
	"H: confirmed_flush_lsn passed WAL written during the idle period ($conf[2] > $wal[1])");
$faults{'idle source (unpublished writes only)'}++;

# ---------------------------------------------------------------------------
# final
# ---------------------------------------------------------------------------

check_transfer_phase($source, $dest, $mirror, \@tables, 'final', \%stats);
is(mirror_field($dest, $mirror, 'status'), 'RUNNING', 'main mirror RUNNING at the end');
is( $source->safe_psql('postgres',
		"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot'"),
	'1', 'one slot on the source');
is($stats{differences}, 0, 'no differences in any comparison');

my $nfaults = 0;
$nfaults += $_ for values %faults;
my $counter = $source->safe_psql('postgres', 'SELECT n FROM counter WHERE id = 1');
diag(sprintf(
		"fault summary: %d faults injected (%s); %s load transactions committed "
		  . "(pgbench reported %d); "
		  . "%d rows compared over all checks; %d differences; %.0f s",
		$nfaults,
		join(', ', map { "$_: $faults{$_}" } sort keys %faults),
		$counter, $total_tx, $stats{rows}, $stats{differences}, time() - $t_start));

$dest->stop;
$source->stop;
done_testing();
