
# Copyright (c) bunnydb authors
#
# 010_streaming: large source transactions streamed while they run
# (protocol version 2, streaming 'on'). The source runs with
# logical_decoding_work_mem = 64kB, so every transaction beyond a few hundred
# rows is sent in STREAM START/STOP blocks before its commit.
#
# Six mirrors, each with its own worker (streaming is given up per worker
# and then paused for a minute, so scenarios that must stream stay on
# mirrors that have not given up, and a mirror that goes wrong does not
# take the others with it):
#   ms  scenarios 1, 2, 3a, 3b, 4, 8, 7 (streamed and applied as they come)
#   mn  scenario 3d (give up with savepoints open)
#   mg  scenario 3c (give up after 64 savepoints)
#   mi  scenario 5 (small commits interleaved with a streamed transaction)
#       and the retry of streaming after the pause
#   mq  scenario 5b (the same while the large transaction is in a savepoint)
#   m2  scenario 6 (two large transactions at once)
#
#  1. 200 000-row INSERT transaction: applied while the source transaction is
#     still open (the worker holds the table, the heap grows), but nothing of
#     it is visible on the destination before its commit.
#  2. INSERT / UPDATE (twice) / DELETE / key change / re-INSERT of the same
#     rows in one large transaction.
#  3. a) SAVEPOINT / ROLLBACK TO / RELEASE sequence; b) a PL/pgSQL loop of
#     exception blocks with fewer than 64 subtransactions (still streamed);
#     c) the same with more than 64 (the worker gives up and falls back);
#     d) a subtransaction aborted after changes of its parent (give up).
#  4. a large transaction rolled back on the source (STREAM ABORT) after the
#     worker applied part of it; a following small transaction replicates.
#  5. small transactions committed while a large one streams: the worker
#     gives up; the small ones reach the destination while the large one is
#     still open; everything matches at the end.
#     5b: the same with the large transaction's rows inside a SAVEPOINT.
#  6. two (three) large transactions interleaved, two commit, one rolls back.
#  7. SIGKILL of the mirror worker while it applies a large streamed
#     transaction (source transaction still open), and shortly after the
#     source commit of another one: no loss, no duplicates.
#  8. bunny.stream_large_transactions = off: nothing streamed, a large
#     transaction still replicates; back on: streaming resumes.
#  9. no ERROR in the destination log or in bunny.mirror_logs during every
#     scenario except 7.
#  +  after the pause that follows a give-up, streaming is tried again
#     (mi, after scenario 5).
#  After every scenario the worker must not keep a transaction open, and
#  the source slot must not be confirmed past what the mirror applied.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;

use Time::HiRes qw(usleep time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $t_start = time();

my ($source, $dest) = setup_pair(
	source_conf => "logical_decoding_work_mem = '64kB'\n",
	dest_conf => "bunny.retry_backoff_min = '200ms'\n"
	  . "bunny.retry_backoff_max = '2s'\n"
	  # the worker's reason for giving up on a stream is a DEBUG1 message
	  . "log_min_messages = debug1\n");

# ---------------------------------------------------------------------------
# Schema and mirrors
# ---------------------------------------------------------------------------

$source->safe_psql(
	'postgres', q{
CREATE TABLE s1_big   (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s2_mix   (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s3_sp    (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s3_do    (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s4_rb    (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s7_kill  (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s8_off   (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s3_many  (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s3_nest  (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE sg_retry (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s5_big   (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s5_other (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s5b_big  (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s5b_small (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s6_a     (id int PRIMARY KEY, t text, n numeric);
CREATE TABLE s6_b     (id int PRIMARY KEY, t text, n numeric);
});

my %tables = (
	ms => [
		'public.s1_big', 'public.s2_mix', 'public.s3_sp', 'public.s3_do',
		'public.s4_rb', 'public.s7_kill', 'public.s8_off'
	],
	mn => ['public.s3_nest'],
	mg => ['public.s3_many'],
	mi => [ 'public.s5_big', 'public.s5_other', 'public.sg_retry' ],
	mq => [ 'public.s5b_big', 'public.s5b_small' ],
	m2 => [ 'public.s6_a', 'public.s6_b' ],
);
my @mirrors = ('ms', 'mn', 'mg', 'mi', 'mq', 'm2');

foreach my $m (@mirrors)
{
	ok(create_mirror($dest, $m, $tables{$m}, do_initial_snapshot => 'false'),
		"mirror $m reaches RUNNING");
}
foreach my $m (@mirrors)
{
	ok( poll_until(sub { scalar(worker_pids($dest, $m)) }, 60),
		"worker of mirror $m visible");
	ok( poll_until(
			sub {
				(query_value($source,
					"SELECT count(*) FROM pg_stat_replication WHERE application_name = 'bunnydb:$m'"
				) // '') eq '1';
			},
			60),
		"mirror $m connected to the source");
}
ok( poll_until(
		sub {
			(query_value($dest,
				"SELECT count(*) FROM bunny.mirror_logs WHERE mirror = 'ms' "
				  . "AND message LIKE 'streaming from % large transactions while they run)'"
			) // 0) > 0;
		},
		60),
	'ms logs that it streams with large transactions applied while they run');

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

sub count_rows
{
	my ($node, $table) = @_;
	return query_value($node, "SELECT count(*) FROM $table") // '(error)';
}

# do all tables have the same fingerprint on both sides?
sub tables_match
{
	my ($tabs) = @_;
	foreach my $t (@$tabs)
	{
		my $s = fingerprint($source, $t);
		my $d = fingerprint($dest, $t);
		return 0 unless defined $s && defined $d && $s eq $d;
	}
	return 1;
}

# does the mirror's worker hold a lock on the destination table (it has
# written to it in its open transaction)?
sub worker_holds
{
	my ($m, $table) = @_;
	my $r = query_value($dest,
		    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
		  . "WHERE a.backend_type = 'bunnydb mirror $m' "
		  . "AND l.relation = to_regclass('$table')",
		timeout => 30);
	return defined $r && $r > 0;
}

sub rel_size
{
	my ($node, $table) = @_;
	return query_value($node, "SELECT pg_relation_size('$table')") // -1;
}

# stream_txns and spill_txns of a mirror's slot on the source
sub slot_stats
{
	my ($m) = @_;
	my $r = query_value($source,
		    "SELECT stream_txns || ' ' || spill_txns FROM pg_stat_replication_slots "
		  . "WHERE slot_name = 'bunny_slot_$m'") // '';
	my ($stream, $spill) = split / /, $r;
	return { stream => $stream // -1, spill => $spill // -1 };
}

sub max_log_id
{
	return query_value($dest,
		'SELECT coalesce(max(id), 0) FROM bunny.mirror_logs') // 0;
}

# bunny.mirror_logs rows of $m since $since whose message is LIKE $pattern
sub log_rows
{
	my ($m, $since, $pattern) = @_;
	return query_value($dest,
		    "SELECT count(*) FROM bunny.mirror_logs WHERE mirror = '$m' "
		  . "AND id > $since AND message LIKE "
		  . sql_literal($pattern)) // -1;
}

# the worker restarted its stream without streaming (gave up, or setting off)
sub gave_up_count
{
	my ($m, $since) = @_;
	return log_rows($m, $since,
		'streaming again from %large transactions after their commit%');
}

sub streaming_again_count
{
	my ($m, $since) = @_;
	return log_rows($m, $since,
		'streaming again from %applying large transactions while they run');
}

# destination server log since a byte offset
sub dest_log_since
{
	my ($pos) = @_;
	my $log = eval { slurp_file($dest->logfile) } // '';
	return length($log) > $pos ? substr($log, $pos) : '';
}

# the reasons the worker gave for not applying a stream as it comes
sub give_up_reasons
{
	my ($pos) = @_;
	my @r = dest_log_since($pos) =~
	  /not applying a streamed transaction as it comes: ([^\n]*)/g;
	return @r;
}

# the worker's open transaction (xid, start), '' if none
sub worker_xact
{
	my ($m) = @_;
	return query_value($dest,
		    "SELECT coalesce(string_agg(pid || ' xid=' || backend_xid || ' since ' || xact_start, ', '), '') "
		  . "FROM pg_stat_activity WHERE backend_type = 'bunnydb mirror $m' "
		  . "AND backend_xid IS NOT NULL") // '(query failed)';
}

# the worker has no transaction left open once it caught up
sub check_worker_idle
{
	my ($m, $label, $timeout) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $x = '';
	ok(poll_until(sub { $x = worker_xact($m); $x eq '' }, $timeout // 20),
		"$label: the $m worker keeps no transaction open")
	  or diag("$label: $m worker still in a transaction: $x");
	return;
}

# The slot may only be confirmed past a transaction once the mirror applied
# it: compare the slot's confirmed_flush_lsn with the mirror's last_lsn
# (the replication origin) while the tables differ.
sub check_slot_not_ahead
{
	my ($m, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	return if tables_match($tables{$m});
	my $confirmed = query_value($source,
		"SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'bunny_slot_$m'"
	) // '?';
	my $applied = mirror_field($dest, $m, 'last_lsn') // '?';
	my $ahead = query_value($dest,
		"SELECT '$confirmed'::pg_lsn > '$applied'::pg_lsn") // '?';
	is($ahead, 'f',
		"$label: source slot not confirmed past the mirror's applied position "
		  . "while rows are missing (slot confirmed_flush_lsn $confirmed, "
		  . "mirror last_lsn $applied)");
	return;
}

# Marks for scenario 9: destination log position and bunny.mirror_logs id.
sub mark
{
	return { pos => -s $dest->logfile, id => max_log_id(), t => time() };
}

my %scenario_result;
my @scenario_order;

sub no_errors_since
{
	my ($mk, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my @lines = grep { /\b(ERROR|FATAL|PANIC):  / }
	  split /\n/, dest_log_since($mk->{pos});
	is(scalar(@lines), 0, "$label: no ERROR/FATAL/PANIC in the destination log")
	  or diag(join("\n", @lines[ 0 .. ($#lines < 19 ? $#lines : 19) ]));
	my $errs = query_value($dest,
		    "SELECT count(*) FROM bunny.mirror_logs WHERE level = 'ERROR' AND id > "
		  . $mk->{id}) // -1;
	is($errs, '0', "$label: no ERROR rows in bunny.mirror_logs");
	if ($errs ne '0')
	{
		diag(query_value($dest,
				"SELECT string_agg(mirror || ': ' || message, E'\\n' ORDER BY id) "
				  . "FROM bunny.mirror_logs WHERE level = 'ERROR' AND id > "
				  . $mk->{id}) // '');
	}
	is( query_value($dest,
			"SELECT string_agg(name || '=' || error_count, ',' ORDER BY name) FROM bunny.mirrors"
		),
		'm2=0,mg=0,mi=0,mn=0,mq=0,ms=0',
		"$label: error_count 0 for every mirror");
	return;
}

# Run a scenario, record whether all of its checks passed.
sub scenario
{
	my ($name, $code) = @_;
	my $failed_before =
	  scalar(grep { !$_ } Test::More->builder->summary);
	my $t0 = time();
	note("=== scenario $name ===");
	$code->();
	my $failed_after = scalar(grep { !$_ } Test::More->builder->summary);
	push @scenario_order, $name;
	$scenario_result{$name} = sprintf('%s (%.0fs)',
		$failed_after == $failed_before ? 'pass' : 'FAIL', time() - $t0);
	note("=== scenario $name: $scenario_result{$name} ===");
	return;
}

sub sync_and_compare
{
	my ($m, $label, %opts) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $ok = wait_synced($source, $dest, $m, $tables{$m},
		timeout => $opts{timeout} // 120);
	ok($ok, "$label: destination caught up");
	compare_tables($source, $dest, $tables{$m}, $label);
	if (!$ok)
	{
		diag("$label: $m worker transaction: " . (worker_xact($m) || 'none'));
		check_slot_not_ahead($m, $label);
	}
	# a mirror that did not catch up gets no second long wait
	check_worker_idle($m, $label, $ok ? 20 : 2);
	return;
}

# ---------------------------------------------------------------------------
# Scenario 1: 200 000 rows in one transaction, invisible until its commit
# ---------------------------------------------------------------------------

scenario(
	'1 200k-row INSERT',
	sub {
		my $mk = mark();
		my $st0 = slot_stats('ms');
		my $bg = $source->background_psql('postgres');
		$bg->query_safe('BEGIN');
		$bg->query_safe(
			"INSERT INTO s1_big SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, 100000) g"
		);

		ok(poll_until(sub { worker_holds('ms', 'public.s1_big') }, 90),
			'1: the worker applies the open source transaction (holds s1_big)');
		# let it apply most of the first 100 000 rows
		ok(poll_until(sub { rel_size($dest, 'public.s1_big') > 2_000_000 }, 90),
			'1: destination heap of s1_big grows while the source transaction is open');
		my $seen = 0;
		for (1 .. 5)
		{
			my $c = count_rows($dest, 'public.s1_big');
			$seen = $c if $c ne '0';
			usleep(300_000);
		}
		is($seen, 0,
			'1: destination shows none of the open transaction\'s rows (5 samples)');

		$bg->query_safe(
			"INSERT INTO s1_big SELECT g, md5(g::text), g * 1.5 FROM generate_series(100001, 200000) g"
		);
		usleep(1_000_000);
		is(count_rows($dest, 'public.s1_big'), '0',
			'1: still nothing visible after the second 100 000 rows');
		$bg->query_safe('COMMIT');
		$bg->quit;

		sync_and_compare('ms', '1');
		is(count_rows($dest, 'public.s1_big'), '200000',
			'1: 200 000 rows on the destination');
		my $st1 = slot_stats('ms');
		ok($st1->{stream} > $st0->{stream},
			"1: the source streamed the transaction (stream_txns $st0->{stream} -> $st1->{stream})"
		);
		is(gave_up_count('ms', $mk->{id}), '0',
			'1: ms did not give up on the stream');
		no_errors_since($mk, '1');
	});

# ---------------------------------------------------------------------------
# Scenario 2: INSERT / UPDATE / DELETE of the same rows in one transaction
# ---------------------------------------------------------------------------

scenario(
	'2 mixed DML',
	sub {
		my $mk = mark();
		$source->safe_psql('postgres',
			"INSERT INTO s2_mix SELECT g, 'pre' || g, g FROM generate_series(1, 1000) g");
		ok(wait_synced($source, $dest, 'ms', ['public.s2_mix']),
			'2: pre-existing rows replicated');
		my $st0 = slot_stats('ms');
		$source->safe_psql(
			'postgres', q{
BEGIN;
INSERT INTO s2_mix SELECT g, 'v' || g, g FROM generate_series(1001, 51000) g;
UPDATE s2_mix SET n = n * 2, t = t || '-u1' WHERE id % 2 = 0;
UPDATE s2_mix SET t = t || '-u2', n = n + 0.5 WHERE id % 2 = 0;
DELETE FROM s2_mix WHERE id % 8 IN (1, 2);
UPDATE s2_mix SET id = id + 100000 WHERE id % 10 = 6 AND id <= 20000;
INSERT INTO s2_mix SELECT g, 'again' || g, -g FROM generate_series(1, 2000) g WHERE g % 8 = 1;
UPDATE s2_mix SET t = NULL WHERE id % 100 = 3;
COMMIT;
});
		sync_and_compare('ms', '2');
		is( count_rows($dest, 'public.s2_mix'),
			count_rows($source, 'public.s2_mix'),
			'2: row counts equal (' . count_rows($source, 'public.s2_mix') . ')');
		my $st1 = slot_stats('ms');
		ok($st1->{stream} > $st0->{stream},
			"2: the source streamed the transaction (stream_txns $st0->{stream} -> $st1->{stream})"
		);
		is(gave_up_count('ms', $mk->{id}), '0', '2: ms did not give up');
		no_errors_since($mk, '2');
	});

# ---------------------------------------------------------------------------
# Scenario 3a: savepoints; 3b: exception blocks, fewer than 64
# ---------------------------------------------------------------------------

scenario(
	'3a savepoints',
	sub {
		my $mk = mark();
		my $st0 = slot_stats('ms');
		$source->safe_psql(
			'postgres', q{
BEGIN;
SAVEPOINT a;
INSERT INTO s3_sp SELECT g, 'a1', g FROM generate_series(1, 30000) g;
ROLLBACK TO a;
INSERT INTO s3_sp SELECT g, 'a2', g FROM generate_series(100001, 130000) g;
SAVEPOINT b;
INSERT INTO s3_sp SELECT g, 'b', g FROM generate_series(200001, 230000) g;
UPDATE s3_sp SET n = -n WHERE id BETWEEN 100001 AND 101000;
RELEASE b;
SAVEPOINT c;
INSERT INTO s3_sp SELECT g, 'c', g FROM generate_series(300001, 330000) g;
DELETE FROM s3_sp WHERE id BETWEEN 200001 AND 201000;
ROLLBACK TO c;
INSERT INTO s3_sp SELECT g, 'after c', g FROM generate_series(400001, 400100) g;
COMMIT;
});
		sync_and_compare('ms', '3a');
		is(count_rows($dest, 'public.s3_sp'), '60100',
			'3a: 60 100 rows on the destination');
		is( query_value($dest,
				"SELECT count(*) FROM s3_sp WHERE t IN ('a1', 'c') OR (n < 0 AND id NOT BETWEEN 100001 AND 101000)"
			),
			'0',
			'3a: nothing of the rolled-back savepoints');
		my $st1 = slot_stats('ms');
		ok($st1->{stream} > $st0->{stream}, '3a: the source streamed the transaction');
		is(gave_up_count('ms', $mk->{id}), '0', '3a: ms did not give up');
		no_errors_since($mk, '3a');
	});

# 40 iterations, every 5th rolled back: 32 committed subtransactions, plus a
# row of the top transaction after each exception block
my $do_loop = sub {
	my ($table, $iters, $rows, $every) = @_;
	return qq{
DO \$\$
BEGIN
	FOR i IN 1..$iters LOOP
		BEGIN
			INSERT INTO $table SELECT i * 1000 + g, 'it' || i, g FROM generate_series(1, $rows) g;
			IF i % $every = 0 THEN
				RAISE EXCEPTION 'roll back iteration %', i;
			END IF;
		EXCEPTION WHEN raise_exception THEN
			NULL;
		END;
		INSERT INTO $table VALUES (900000 + i, 'top', i);
	END LOOP;
END
\$\$;
};
};

scenario(
	'3b exception blocks < 64',
	sub {
		my $mk = mark();
		my $st0 = slot_stats('ms');
		$source->safe_psql('postgres', $do_loop->('s3_do', 40, 500, 5));
		sync_and_compare('ms', '3b');
		is(count_rows($dest, 'public.s3_do'), 32 * 500 + 40,
			'3b: 32 x 500 + 40 rows on the destination');
		my $st1 = slot_stats('ms');
		ok($st1->{stream} > $st0->{stream}, '3b: the source streamed the transaction');
		is(gave_up_count('ms', $mk->{id}), '0',
			'3b: ms did not give up (fewer than 64 subtransactions)');
		no_errors_since($mk, '3b');
	});

# ---------------------------------------------------------------------------
# Scenario 4: large transaction rolled back on the source
# ---------------------------------------------------------------------------

scenario(
	'4 rollback',
	sub {
		my $mk = mark();
		$source->safe_psql('postgres',
			"INSERT INTO s4_rb SELECT g, 'keep' || g, g FROM generate_series(1, 100) g");
		ok(wait_synced($source, $dest, 'ms', ['public.s4_rb']),
			'4: pre-existing rows replicated');
		my $bg = $source->background_psql('postgres');
		$bg->query_safe('BEGIN');
		$bg->query_safe("UPDATE s4_rb SET t = 'bad', n = -1 WHERE id <= 50");
		$bg->query_safe("DELETE FROM s4_rb WHERE id BETWEEN 60 AND 70");
		$bg->query_safe(
			"INSERT INTO s4_rb SELECT g, md5(g::text), g FROM generate_series(1001, 101000) g"
		);
		ok(poll_until(sub { worker_holds('ms', 'public.s4_rb') }, 90),
			'4: the worker applies the open source transaction');
		ok(poll_until(sub { rel_size($dest, 'public.s4_rb') > 2_000_000 }, 90),
			'4: destination heap grows');
		is(count_rows($dest, 'public.s4_rb'), '100',
			'4: destination still shows the 100 committed rows');
		$bg->query_safe('ROLLBACK');
		$bg->quit;
		$source->safe_psql('postgres',
			"INSERT INTO s4_rb SELECT g, 'small' || g, g FROM generate_series(200001, 200010) g"
		);
		sync_and_compare('ms', '4');
		is(count_rows($dest, 'public.s4_rb'), '110',
			'4: 100 old + 10 new rows, none of the rolled-back transaction');
		is( query_value($dest,
				"SELECT count(*) FROM s4_rb WHERE t = 'bad' OR id BETWEEN 1001 AND 101000"),
			'0',
			'4: no trace of the rolled-back changes');
		ok(poll_until(sub { !worker_holds('ms', 'public.s4_rb') }, 30),
			'4: the worker no longer holds s4_rb');
		is(gave_up_count('ms', $mk->{id}), '0', '4: ms did not give up');
		no_errors_since($mk, '4');
	});

# ---------------------------------------------------------------------------
# Scenario 8: bunny.stream_large_transactions = off
# ---------------------------------------------------------------------------

scenario(
	'8 streaming off',
	sub {
		my $mk = mark();
		$dest->safe_psql('postgres',
			"ALTER SYSTEM SET bunny.stream_large_transactions = off; SELECT pg_reload_conf();"
		);
		ok(poll_until(sub { gave_up_count('ms', $mk->{id}) > 0 }, 60),
			'8: ms restarted its stream without streaming');
		my $st0 = slot_stats('ms');
		my $bg = $source->background_psql('postgres');
		$bg->query_safe('BEGIN');
		$bg->query_safe(
			"INSERT INTO s8_off SELECT g, md5(g::text), g / 7.0 FROM generate_series(1, 100000) g"
		);
		$bg->query_safe("UPDATE s8_off SET t = 'u' WHERE id % 3 = 0");
		usleep(2_000_000);
		ok(!worker_holds('ms', 'public.s8_off'),
			'8: the worker does not apply the open transaction');
		is(count_rows($dest, 'public.s8_off'), '0', '8: nothing visible');
		$bg->query_safe('COMMIT');
		$bg->quit;
		sync_and_compare('ms', '8');
		is(count_rows($dest, 'public.s8_off'), '100000', '8: 100 000 rows');
		my $st1 = slot_stats('ms');
		is($st1->{stream}, $st0->{stream}, '8: nothing streamed by the source');
		ok($st1->{spill} > $st0->{spill},
			"8: the source spilled the transaction instead (spill_txns $st0->{spill} -> $st1->{spill})"
		);
		no_errors_since($mk, '8');

		my $id = max_log_id();
		$dest->safe_psql('postgres',
			"ALTER SYSTEM RESET bunny.stream_large_transactions; SELECT pg_reload_conf();"
		);
		foreach my $m (@mirrors)
		{
			ok(poll_until(sub { streaming_again_count($m, $id) > 0 }, 60),
				"8: $m streams again after the setting is back on");
		}
	});

# ---------------------------------------------------------------------------
# Scenario 3d: a subtransaction aborted after changes of its parent (mn)
# ---------------------------------------------------------------------------

scenario(
	'3d nested rollback',
	sub {
		my $mk = mark();
		my $st0 = slot_stats('mn');
		$source->safe_psql(
			'postgres', q{
BEGIN;
INSERT INTO s3_nest SELECT g, 'top', g FROM generate_series(1, 5000) g;
SAVEPOINT a;
INSERT INTO s3_nest SELECT g, 'a', g FROM generate_series(10001, 20000) g;
SAVEPOINT b;
INSERT INTO s3_nest SELECT g, 'b', g FROM generate_series(20001, 30000) g;
RELEASE b;
INSERT INTO s3_nest SELECT g, 'a after b', g FROM generate_series(30001, 35000) g;
ROLLBACK TO a;
INSERT INTO s3_nest SELECT g, 'a again', g FROM generate_series(40001, 45000) g;
SAVEPOINT c;
UPDATE s3_nest SET n = -n WHERE id <= 100;
ROLLBACK TO c;
COMMIT;
});
		# a fallback of 35 000 rows takes seconds; do not wait for a stuck
		# mirror much longer than that
		sync_and_compare('mn', '3d', timeout => 30);
		is(count_rows($dest, 'public.s3_nest'), '10000',
			'3d: 5000 + 5000 rows on the destination');
		my $st1 = slot_stats('mn');
		ok($st1->{stream} > $st0->{stream}, '3d: the source streamed the transaction');
		my @why = give_up_reasons($mk->{pos});
		note('3d: give-up reasons: ' . (@why ? join('; ', @why) : 'none'));
		if (@why)
		{
			ok(gave_up_count('mn', $mk->{id}) > 0,
				'3d: mn logged its restart without streaming');
		}
		no_errors_since($mk, '3d');
	});

# ---------------------------------------------------------------------------
# Scenario 7: SIGKILL of the mirror worker during a streamed transaction
# ---------------------------------------------------------------------------

sub kill_ms_worker
{
	my ($label) = @_;
	my @pids = worker_pids($dest, 'ms');
	if (!@pids)
	{
		fail("$label: found the ms worker to kill");
		return;
	}
	note("$label: SIGKILL of ms worker @pids");
	kill 'KILL', @pids;
	my %old = map { $_ => 1 } @pids;
	ok( poll_until(
			sub {
				my @new = worker_pids($dest, 'ms');
				return scalar(grep { !$old{$_} } @new);
			},
			120),
		"$label: ms worker restarted after SIGKILL");
	ok(wait_for_status($dest, 'ms', 'RUNNING', 120),
		"$label: ms RUNNING after the crash restart");
	return;
}

scenario(
	'7 SIGKILL',
	sub {
		# 7a: kill while the source transaction is still open
		my $st0 = slot_stats('ms');
		my $bg = $source->background_psql('postgres');
		$bg->query_safe('BEGIN');
		$bg->query_safe(
			"INSERT INTO s7_kill SELECT g, md5(g::text), g FROM generate_series(1, 250000) g"
		);
		ok(poll_until(sub { worker_holds('ms', 'public.s7_kill') }, 90),
			'7a: the worker applies the open source transaction');
		ok(poll_until(sub { rel_size($dest, 'public.s7_kill') > 4_000_000 }, 90),
			'7a: destination heap grows (' . rel_size($dest, 'public.s7_kill') . ' bytes)');
		is(count_rows($dest, 'public.s7_kill'), '0', '7a: nothing visible yet');
		kill_ms_worker('7a');
		# the new worker streams the open transaction again from its start
		ok(poll_until(sub { worker_holds('ms', 'public.s7_kill') }, 120),
			'7a: the new worker applies the open transaction again');
		$bg->query_safe(
			"INSERT INTO s7_kill SELECT g, md5(g::text), g FROM generate_series(250001, 350000) g"
		);
		$bg->query_safe('COMMIT');
		$bg->quit;
		sync_and_compare('ms', '7a', timeout => 240);
		is(count_rows($dest, 'public.s7_kill'), '350000',
			'7a: 350 000 rows, no loss, no duplicates');
		my $st1 = slot_stats('ms');
		ok($st1->{stream} > $st0->{stream}, '7a: the source streamed the transaction');

		# 7b: kill shortly after the source commit of a large UPDATE
		$source->safe_psql('postgres',
			"UPDATE s7_kill SET n = n + 1, t = t || 'u' WHERE id <= 150000");
		my $state = '';
		poll_until(
			sub {
				if (worker_holds('ms', 'public.s7_kill'))
				{
					$state = 'worker still applying';
					return 1;
				}
				if ((query_value($dest, "SELECT count(*) FROM s7_kill WHERE t LIKE '%u'")
						// '') eq '150000')
				{
					$state = 'already applied';
					return 1;
				}
				return 0;
			},
			60, 0.05);
		note("7b: state at the kill: $state");
		kill_ms_worker('7b');
		sync_and_compare('ms', '7b', timeout => 240);
		is( query_value($dest, "SELECT count(*) FROM s7_kill WHERE t LIKE '%u'"),
			'150000', '7b: the UPDATE applied exactly once (150 000 rows)');
		is( query_value($dest, "SELECT count(*) FROM s7_kill WHERE t LIKE '%uu'"),
			'0', '7b: no row updated twice');
		is(count_rows($dest, 'public.s7_kill'), '350000', '7b: 350 000 rows');

		check_worker_idle('ms', '7');

		# every mirror is back before the next scenarios take their marks
		foreach my $m (@mirrors)
		{
			ok(wait_for_status($dest, $m, 'RUNNING', 120), "7: $m RUNNING");
			ok( poll_until(
					sub {
						(query_value($source,
							"SELECT count(*) FROM pg_stat_replication WHERE application_name = 'bunnydb:$m'"
						) // '') eq '1';
					},
					120),
				"7: $m reconnected");
			# mn's table is checked by 3d and at the end
			next if $m eq 'mn';
			ok(wait_synced($source, $dest, $m, $tables{$m}), "7: $m in sync");
		}
		ok( poll_until(
				sub {
					(query_value($dest,
						"SELECT count(*) FROM bunny.mirrors WHERE error_count > 0") // '')
					  eq '0';
				},
				60),
			'7: error_count back to 0 for every mirror');
	});

# ---------------------------------------------------------------------------
# Scenario 3c: exception blocks, more than 64 subtransactions (mg)
# ---------------------------------------------------------------------------

scenario(
	'3c exception blocks > 64',
	sub {
		my $mk = mark();
		my $st0 = slot_stats('mg');
		# 100 iterations, every 7th rolled back: 86 committed subtransactions
		$source->safe_psql('postgres', $do_loop->('s3_many', 100, 300, 7));
		sync_and_compare('mg', '3c', timeout => 30);
		is(count_rows($dest, 'public.s3_many'), 86 * 300 + 100,
			'3c: 86 x 300 + 100 rows on the destination');
		my $st1 = slot_stats('mg');
		ok($st1->{stream} > $st0->{stream}, '3c: the source streamed the transaction');
		ok(gave_up_count('mg', $mk->{id}) > 0,
			'3c: mg gave up and restarted without streaming');
		my @why = give_up_reasons($mk->{pos});
		ok((grep { /too many subtransactions/ } @why),
			'3c: reason: too many subtransactions (' . join('; ', @why) . ')');
		no_errors_since($mk, '3c');
	});

# ---------------------------------------------------------------------------
# Scenario 5: small transactions commit while a large one streams (mi)
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# Scenario 5b: a small transaction commits while a large one streams with a
# savepoint open (mq)
# ---------------------------------------------------------------------------

scenario(
	'5b interleaved commit, savepoint open',
	sub {
		my $mk = mark();
		my $bg = $source->background_psql('postgres');
		$bg->query_safe('BEGIN');
		$bg->query_safe('SAVEPOINT s1');
		$bg->query_safe(
			"INSERT INTO s5b_big SELECT g, 'L' || g, g FROM generate_series(1, 20000) g");
		ok(poll_until(sub { worker_holds('mq', 'public.s5b_big') }, 90),
			'5b: the worker applies the open large transaction');
		$source->safe_psql('postgres', "INSERT INTO s5b_small VALUES (1, 'small', 1)");
		ok( poll_until(
				sub { count_rows($dest, 'public.s5b_small') eq '1' }, 20),
			'5b: the small transaction reaches the destination while the large one is open'
		);
		$bg->query_safe(
			"INSERT INTO s5b_big SELECT g, 'L' || g, g FROM generate_series(20001, 30000) g");
		$bg->query_safe('RELEASE s1');
		$bg->query_safe('COMMIT');
		$bg->quit;
		sync_and_compare('mq', '5b', timeout => 30);
		is(count_rows($dest, 'public.s5b_big'), '30000', '5b: 30 000 rows in s5b_big');
		is(count_rows($dest, 'public.s5b_small'), '1', '5b: 1 row in s5b_small');
		my @why = give_up_reasons($mk->{pos});
		ok((grep { /another transaction committed during it/ } @why),
			'5b: reason: another transaction committed (' . join('; ', @why) . ')');
		no_errors_since($mk, '5b');
	});

my $mi_mark;

scenario(
	'5 interleaved small commits',
	sub {
		$source->safe_psql(
			'postgres', q{
INSERT INTO s5_big SELECT g, 'pre' || g, g FROM generate_series(1, 1000) g;
INSERT INTO s5_other SELECT g, 'other' || g, g FROM generate_series(1, 100) g;
});
		ok(wait_synced($source, $dest, 'mi', $tables{mi}), '5: initial rows replicated');
		my $mk = mark();
		$mi_mark = $mk;
		my $st0 = slot_stats('mi');

		my $bg = $source->background_psql('postgres');
		$bg->query_safe('BEGIN');
		for my $i (1 .. 5)
		{
			my $lo = 100000 + ($i - 1) * 10000 + 1;
			my $hi = 100000 + $i * 10000;
			$bg->query_safe(
				"INSERT INTO s5_big SELECT g, 'L' || g, g FROM generate_series($lo, $hi) g");
			$bg->query_safe(
				"UPDATE s5_big SET n = n + 1, t = t || 'u' WHERE id BETWEEN $lo AND $lo + 2000");
			if ($i == 1)
			{
				ok(poll_until(sub { worker_holds('mi', 'public.s5_big') }, 90),
					'5: the worker applies the open large transaction');
			}
			usleep(700_000);
			# a small transaction on the other table and on other rows
			$source->safe_psql(
				'postgres', qq{
BEGIN;
INSERT INTO s5_other VALUES (1000 + $i, 'small $i', $i);
UPDATE s5_other SET t = t || '+$i', n = n + $i WHERE id <= $i * 10;
UPDATE s5_big SET t = 'small $i' WHERE id BETWEEN $i * 100 AND $i * 100 + 20;
INSERT INTO s5_big VALUES (5000 + $i, 'small ins $i', $i);
DELETE FROM s5_big WHERE id = 900 + $i;
COMMIT;
});
			usleep(300_000);
		}
		# the small transactions are applied while the large one is open
		ok(poll_until(sub { tables_match($tables{mi}) }, 120),
			'5: small transactions on the destination while the large one is still open'
		);
		is(count_rows($dest, 'public.s5_big'), '1000',
			'5: 1000 + 5 - 5 committed rows of s5_big, none of the open transaction');
		is( query_value($dest,
				"SELECT count(*) FROM s5_other WHERE t LIKE 'small%'"),
			'5', '5: the 5 small inserts into s5_other');
		$bg->query_safe('COMMIT');
		$bg->quit;

		sync_and_compare('mi', '5');
		is(count_rows($dest, 'public.s5_big'), '51000', '5: 51 000 rows in s5_big');
		is(count_rows($dest, 'public.s5_other'), '105', '5: 105 rows in s5_other');
		my $st1 = slot_stats('mi');
		ok($st1->{stream} > $st0->{stream}, '5: the source streamed the large transaction');
		ok(gave_up_count('mi', $mk->{id}) > 0,
			'5: mi gave up on the stream and fell back');
		my @why = give_up_reasons($mk->{pos});
		ok((grep { /another transaction committed during it/ } @why),
			'5: reason: another transaction committed (' . join('; ', @why) . ')');
		no_errors_since($mk, '5');
	});

# ---------------------------------------------------------------------------
# Retry after the pause: mi streams again about a minute after giving up
# in scenario 5
# ---------------------------------------------------------------------------

scenario(
	'retry after pause',
	sub {
		my $mk = mark();
		my $waited = time();
		ok( poll_until(
				sub { streaming_again_count('mi', $mi_mark->{id}) > 0 },
				150, 1),
			'retry: mi tries streaming again after the pause');
		note(sprintf('mi streams again %.0f s after scenario 5 began (waited %.0f s here)',
				time() - $mi_mark->{t}, time() - $waited));
		my $st0 = slot_stats('mi');
		my $bg = $source->background_psql('postgres');
		$bg->query_safe('BEGIN');
		$bg->query_safe(
			"INSERT INTO sg_retry SELECT g, md5(g::text), g FROM generate_series(1, 50000) g");
		ok(poll_until(sub { worker_holds('mi', 'public.sg_retry') }, 90),
			'retry: mi applies the open transaction as it comes again');
		is(count_rows($dest, 'public.sg_retry'), '0', 'retry: nothing visible yet');
		$bg->query_safe('COMMIT');
		$bg->quit;
		sync_and_compare('mi', 'retry');
		my $st1 = slot_stats('mi');
		ok($st1->{stream} > $st0->{stream}, 'retry: the source streamed the transaction');
		is(gave_up_count('mi', $mk->{id}), '0', 'retry: mi did not give up');
		no_errors_since($mk, 'retry');
	});

# ---------------------------------------------------------------------------
# Scenario 6: two large transactions at once (and a third rolled back)
# ---------------------------------------------------------------------------

scenario(
	'6 two large transactions',
	sub {
		my $mk = mark();
		my $st0 = slot_stats('m2');
		my $a = $source->background_psql('postgres');
		my $b = $source->background_psql('postgres');
		my $c = $source->background_psql('postgres');
		$a->query_safe('BEGIN');
		$b->query_safe('BEGIN');
		$c->query_safe('BEGIN');
		$a->query_safe(
			"INSERT INTO s6_a SELECT g, 'A' || g, g FROM generate_series(1, 20000) g");
		ok(poll_until(sub { worker_holds('m2', 'public.s6_a') }, 90),
			'6: m2 applies the first large transaction as it comes');
		$b->query_safe(
			"INSERT INTO s6_b SELECT g, 'B' || g, g FROM generate_series(1, 20000) g");
		$c->query_safe(
			"INSERT INTO s6_a SELECT g, 'C' || g, g FROM generate_series(100001, 120000) g");
		usleep(500_000);
		$a->query_safe(
			"INSERT INTO s6_a SELECT g, 'A' || g, g FROM generate_series(20001, 40000) g");
		$a->query_safe("UPDATE s6_a SET n = n * 2 WHERE id % 3 = 0 AND id <= 40000");
		$b->query_safe(
			"INSERT INTO s6_b SELECT g, 'B' || g, g FROM generate_series(20001, 40000) g");
		$b->query_safe("DELETE FROM s6_b WHERE id % 5 = 0");
		$c->query_safe(
			"INSERT INTO s6_b SELECT g, 'C' || g, g FROM generate_series(100001, 110000) g");
		usleep(500_000);
		$a->query_safe('COMMIT');
		$c->query_safe('ROLLBACK');
		$b->query_safe(
			"INSERT INTO s6_b SELECT g, 'B' || g, g FROM generate_series(40001, 50000) g");
		$b->query_safe('COMMIT');
		$_->quit foreach ($a, $b, $c);

		sync_and_compare('m2', '6');
		is(count_rows($dest, 'public.s6_a'), '40000', '6: 40 000 rows in s6_a');
		is(count_rows($dest, 'public.s6_b'), '42000', '6: 42 000 rows in s6_b');
		is( query_value($dest,
				"SELECT count(*) FROM (SELECT id FROM s6_a WHERE t LIKE 'C%' UNION ALL SELECT id FROM s6_b WHERE t LIKE 'C%') s"
			),
			'0',
			'6: nothing of the rolled-back transaction');
		my $st1 = slot_stats('m2');
		ok($st1->{stream} > $st0->{stream},
			"6: the source streamed the transactions (stream_txns $st0->{stream} -> $st1->{stream})"
		);
		ok(gave_up_count('m2', $mk->{id}) > 0, '6: m2 gave up and fell back');
		my @why = give_up_reasons($mk->{pos});
		ok((grep { /two large transactions run at once/ } @why),
			'6: reason: two large transactions at once (' . join('; ', @why) . ')');
		ok( log_rows(
				'm2', $mk->{id},
				'streaming again from %large transactions after their commit: '
				  . 'gave up applying one as it came (two large transactions run at once); '
				  . 'trying again in % s') > 0,
			'6: bunny.logs says why m2 gave up and when it tries again');
		# the other mirrors saw the same streams (empty for them)
		foreach my $m ('ms', 'mi')
		{
			ok(wait_synced($source, $dest, $m, $tables{$m}), "6: $m still in sync");
		}
		no_errors_since($mk, '6');
	});

# ---------------------------------------------------------------------------
# Final
# ---------------------------------------------------------------------------

foreach my $m (@mirrors)
{
	compare_tables($source, $dest, $tables{$m}, "final $m");
	is(mirror_field($dest, $m, 'status'), 'RUNNING', "final: $m RUNNING");
}

my $runtime = time() - $t_start;
note(sprintf('runtime %.0f s', $runtime));
foreach my $s (@scenario_order)
{
	note("scenario $s: $scenario_result{$s}");
}

$dest->stop;
$source->stop;
done_testing();
