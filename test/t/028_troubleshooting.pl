
# Copyright (c) bunnydb authors
#
# 028_troubleshooting: every row of the README's "Troubleshooting" table is
# run by a test, so that no recipe goes stale.  Each case here makes the
# situation happen as a user would meet it, checks that the user sees the
# error the README quotes (bunny.mirrors.error_message or bunny.logs(),
# with the status the row gives: FAILED, or retrying: error_count > 0 and
# not FAILED), runs exactly what the row's "what to run" column says, and
# checks that the mirror is RUNNING again with its tables equal to the
# source's.
#
# The rows, and the file that runs each:
#
#  bunnydb must be loaded via shared_preload_libraries   006_install
#  could not connect to the source (alter_peer)          028 (case 1)
#  ... pg_hba.conf rejects connection (hint)             027_source_hints
#  ... exceeds max_wal_senders (hint)                    027_source_hints
#  source: all replication slots are in use (hint)       027_source_hints
#  source: permission denied for database (hint)         027_source_hints
#  source wal_level is "replica"                         027_source_hints
#  neither the REPLICATION nor the SUPERUSER attribute   027_source_hints
#  permission denied for source table (hint)             027_source_hints
#  source table ... does not exist (pause_mirror,
#    update_tables, resume_mirror, retry_mirror)         028 (case 1; 1b:
#    a table removed after setup had created it)
#  ... no primary key and no usable replica identity     018_source_guard
#  partition ... no primary key ...                      018_source_guard
#  column ... part of its replica identity, excluded     018_source_guard
#  source table ... is unlogged / materialized view      018_source_guard
#  PostgreSQL 12 source cannot publish partitioned       015_source_versions
#  source: must be owner of table (hint)                 027_source_hints
#  publication ... already exists on the source          028 (case 2)
#  replication slot ... already exists on the source     028 (case 3)
#  replication slot ... is active for PID                028 (case 4)
#  replication slot ... no longer exists on the source   005_operations
#  publication ... no longer exists on the source        028 (case 5)
#  initial copy failed: part N ... failed 3 times        028 (case 6; also
#    update_tables in phase SNAPSHOT refused with a hint)
#  destination table ... is not empty                    018_source_guard
#  type ... does not exist on the destination            028 (case 7)
#  duplicate key value violates unique constraint        028 (case 8)
#  row to update was not found in destination table      028 (case 9)
#  another operation is already in progress              005_operations
#  mirror must be paused to update tables                005_operations
#  mirror stays CREATED (max_worker_processes)           028 (case 12)
#  source disk fills with WAL (pg_replication_slots)     028 (case 10)
#  large source transaction applied late ('gave up')     010_streaming
#  lag_bytes or lag_seconds keeps growing               028 (case 11)

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest qw(:DEFAULT sql_error);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my ($source, $dest) = setup_pair(
	dest_conf => "bunny.retry_backoff_min = 200ms\nbunny.retry_backoff_max = 2s\n");

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

# wait until the mirror's error_message matches $re; returns the
# "status|error_count|phase|error_message" seen last
sub wait_error
{
	my ($m, $re, $timeout) = @_;
	my $seen = '';
	poll_until(
		sub {
			$seen = mirror_field($dest, $m,
				"concat_ws('|', status, error_count, phase, error_message)") // '';
			return $seen =~ $re;
		},
		$timeout // 60, 0.25);
	diag("$m: last seen $seen") unless $seen =~ $re;
	return $seen;
}

# the error is the README's, and the mirror is FAILED
sub failed_with
{
	my ($m, $re, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $seen = wait_error($m, qr/^FAILED\|.*$re/);
	like($seen, qr/^FAILED\|\d+\|\w+\|.*$re/, "$label: FAILED with the README's error");
	return $seen;
}

# the error is the README's, and the mirror retries on its own
sub retrying_with
{
	my ($m, $re, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $seen = wait_error($m, qr/^(?!FAILED)\w+\|[1-9]\d*\|\w+\|.*$re/);
	like($seen, qr/^(?!FAILED)\w+\|[1-9]\d*\|\w+\|.*$re/,
		"$label: retrying (not FAILED) with the README's error");
	return $seen;
}

# RUNNING again, and the tables equal to the source's
sub back_running
{
	my ($m, $tables, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	ok(wait_for_status($dest, $m, 'RUNNING', 90), "$label: RUNNING again");
	ok(wait_synced($source, $dest, $m, $tables), "$label: caught up");
	compare_tables($source, $dest, $tables, $label);
	return;
}

sub drop_mirror
{
	dst("SELECT bunny.drop_mirror(" . sql_literal($_[0]) . ")");
	return;
}

sub publication_tables
{
	my ($pub) = @_;
	return src("SELECT coalesce(string_agg(schemaname || '.' || tablename, ',' ORDER BY tablename), '') "
		  . "FROM pg_publication_tables WHERE pubname = " . sql_literal($pub));
}

# one plain table per case, with rows for the initial copy
foreach my $t (qw(c_a rm_keep rm_drop pub_t slot_t act_t np_t np_more dup_t upd_t wal_t lag_t cr_t))
{
	src("CREATE TABLE $t (id int PRIMARY KEY, v text); "
		  . "INSERT INTO $t SELECT g, '$t' || g FROM generate_series(1, 50) g;");
}
src(q{
CREATE TABLE wide_t (id int PRIMARY KEY, v text);
INSERT INTO wide_t SELECT g, repeat('w', 2 + g % 3) FROM generate_series(1, 300) g;
CREATE EXTENSION citext;
CREATE TABLE ty_t (id int PRIMARY KEY, v citext);
INSERT INTO ty_t SELECT g, 'Ci' || g FROM generate_series(1, 50) g;
});

my $good = $source->connstr('postgres');
# a port nobody listens on
my $bad_port = PostgreSQL::Test::Cluster::get_free_port();
(my $bad = $good) =~ s/port=\d+/port=$bad_port/;

# ---------------------------------------------------------------------------
# 1. could not connect to the source; then a mapped table that does not
#    exist, met by setup (create_mirror could not check an unreachable
#    source): pause_mirror, update_tables, resume_mirror, retry_mirror
# ---------------------------------------------------------------------------
{
	my $l = 'unreachable source';
	dst("SELECT bunny.create_peer('src_bad', " . sql_literal($bad) . ", validate => false)");
	ok(create_mirror($dest, 'tc_conn', [qw(public.c_a public.c_missing)],
			peer => 'src_bad', do_initial_snapshot => 'true', wait => 0),
		"$l: create_mirror accepts a mapping it cannot check");
	retrying_with('tc_conn', qr/could not connect to the source/, $l);
	is(dst("SELECT ok, error IS NOT NULL FROM bunny.test_peer('src_bad')"), 'f|t',
		"$l: test_peer shows what is wrong");
	dst("SELECT bunny.alter_peer('src_bad', " . sql_literal($good) . ")");

	$l = 'missing source table';
	my $seen = failed_with('tc_conn', qr/source table public\.c_missing does not exist/, $l);
	like($seen, qr/^FAILED\|\d+\|SETUP\|/, "$l: in phase SETUP (the alter_peer fix let it connect)");
	dst("SELECT bunny.pause_mirror('tc_conn')");
	dst(q{SELECT bunny.update_tables('tc_conn', '["public.c_a"]')});
	dst("SELECT bunny.resume_mirror('tc_conn')");
	dst("SELECT bunny.retry_mirror('tc_conn')");
	src("INSERT INTO c_a VALUES (1001, 'after')");
	back_running('tc_conn', ['public.c_a'], $l);
	is(publication_tables('bunny_pub_tc_conn'), 'public.c_a',
		"$l: the publication has the tables of the new list");
	is(dst("SELECT count(*) FROM pg_class WHERE relname = 'c_missing'"), '0',
		"$l: nothing on the destination for the removed table");
	is(dst("SELECT string_agg(source_table, ',') FROM bunny.mirror_tables WHERE mirror = 'tc_conn'"),
		'public.c_a', "$l: bunny.mirror_tables lists the new list");
	drop_mirror('tc_conn');
}

# ---------------------------------------------------------------------------
# 1b. update_tables in phase SETUP after setup had created the destination
#     tables (it failed later, at the publication): the removed table's
#     destination table stays, as the README says; the rest follows the
#     new list
# ---------------------------------------------------------------------------
{
	my $l = 'table removed in SETUP';
	src("CREATE PUBLICATION bunny_pub_tc_rm FOR TABLE rm_keep");
	ok(create_mirror($dest, 'tc_rm', [qw(public.rm_keep public.rm_drop)],
			do_initial_snapshot => 'true', wait => 0),
		"$l: mirror created");
	my $seen = failed_with('tc_rm', qr/publication "bunny_pub_tc_rm" already exists on the source/, $l);
	like($seen, qr/^FAILED\|\d+\|SETUP\|/, "$l: in phase SETUP");
	is(dst("SELECT count(*) FROM pg_tables WHERE tablename IN ('rm_keep', 'rm_drop')"), '2',
		"$l: setup had created both destination tables");
	dst("SELECT bunny.pause_mirror('tc_rm')");
	dst(q{SELECT bunny.update_tables('tc_rm', '["public.rm_keep"]')});
	dst("SELECT bunny.resume_mirror('tc_rm')");
	src("DROP PUBLICATION bunny_pub_tc_rm;");
	dst("SELECT bunny.retry_mirror('tc_rm')");
	src("INSERT INTO rm_keep VALUES (1001, 'after'); INSERT INTO rm_drop VALUES (1001, 'after')");
	back_running('tc_rm', ['public.rm_keep'], $l);
	is(publication_tables('bunny_pub_tc_rm'), 'public.rm_keep', "$l: the publication has the new list");
	is(dst("SELECT count(*) FROM rm_drop"), '0', "$l: the removed table's destination table stays, empty");
	is(dst("SELECT string_agg(source_table, ',') FROM bunny.mirror_tables WHERE mirror = 'tc_rm'"),
		'public.rm_keep', "$l: bunny.mirror_tables lists the new list");
	drop_mirror('tc_rm');
}

# ---------------------------------------------------------------------------
# 2. the publication exists on the source and is not ours
# ---------------------------------------------------------------------------
{
	my $l = 'foreign publication';
	src("CREATE PUBLICATION bunny_pub_tc_pub FOR TABLE pub_t");
	ok(create_mirror($dest, 'tc_pub', ['public.pub_t'], do_initial_snapshot => 'true', wait => 0), "$l: mirror created");
	failed_with('tc_pub',
		qr/publication "bunny_pub_tc_pub" already exists on the source and does not belong to this mirror/,
		$l);
	src("DROP PUBLICATION bunny_pub_tc_pub;");
	dst("SELECT bunny.retry_mirror('tc_pub')");
	src("INSERT INTO pub_t VALUES (1001, 'after')");
	back_running('tc_pub', ['public.pub_t'], $l);
	drop_mirror('tc_pub');
}

# ---------------------------------------------------------------------------
# 3. the slot exists on the source and is not ours
# ---------------------------------------------------------------------------
{
	my $l = 'foreign slot';
	src("SELECT pg_create_logical_replication_slot('bunny_slot_tc_slot', 'pgoutput')");
	ok(create_mirror($dest, 'tc_slot', ['public.slot_t'], do_initial_snapshot => 'true', wait => 0), "$l: mirror created");
	failed_with('tc_slot',
		qr/replication slot "bunny_slot_tc_slot" already exists on the source and does not belong to this mirror/,
		$l);
	src("SELECT pg_drop_replication_slot('bunny_slot_tc_slot');");
	dst("SELECT bunny.retry_mirror('tc_slot')");
	src("INSERT INTO slot_t VALUES (1001, 'after')");
	back_running('tc_slot', ['public.slot_t'], $l);
	drop_mirror('tc_slot');
}

# ---------------------------------------------------------------------------
# 4. the slot is held by a connection the mirror's role cannot end (a
#    stale one of its own it terminates by itself)
# ---------------------------------------------------------------------------
{
	my $l = 'slot held';
	src(q{
CREATE ROLE r_act LOGIN REPLICATION;
GRANT CREATE ON DATABASE postgres TO r_act;
ALTER TABLE act_t OWNER TO r_act;
});
	dst("SELECT bunny.create_peer('src_act', " . sql_literal("$good user=r_act") . ")");
	ok(create_mirror($dest, 'tc_act', ['public.act_t'], peer => 'src_act', do_initial_snapshot => 'true'), "$l: mirror RUNNING");
	dst("SELECT bunny.pause_mirror('tc_act')");
	ok(wait_for_status($dest, 'tc_act', 'PAUSED', 30), "$l: paused");
	ok( poll_until(
			sub {
				src("SELECT count(*) FROM pg_replication_slots "
					  . "WHERE slot_name = 'bunny_slot_tc_act' AND active") eq '0';
			},
			30),
		"$l: the mirror let go of its slot");

	# another role's connection takes the slot
	my ($out, $err) = ('', '');
	my $holder = IPC::Run::start(
		[
			'pg_recvlogical', '-d', $good, '-S', 'bunny_slot_tc_act', '--start', '--no-loop',
			'-o', 'proto_version=1', '-o', 'publication_names=bunny_pub_tc_act', '-f', '/dev/null'
		],
		'>', \$out, '2>', \$err);
	ok( poll_until(
			sub {
				src("SELECT count(*) FROM pg_replication_slots "
					  . "WHERE slot_name = 'bunny_slot_tc_act' AND active") eq '1';
			},
			30),
		"$l: another connection holds the slot");

	dst("SELECT bunny.resume_mirror('tc_act')");
	retrying_with('tc_act', qr/replication slot "bunny_slot_tc_act" is active for PID \d+/, $l);
	src("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
		  . "WHERE slot_name = 'bunny_slot_tc_act';");
	dst("SELECT bunny.retry_mirror('tc_act')");
	$holder->finish;
	src("INSERT INTO act_t VALUES (1001, 'after')");
	back_running('tc_act', ['public.act_t'], $l);
	drop_mirror('tc_act');
}

# ---------------------------------------------------------------------------
# 5. the publication dropped on the source.  Changes written while it was
#    missing cannot be decoded through the slot any more, even after the
#    publication is created again (pgoutput looks it up as of each change):
#    the mirror needs a new slot, as when the slot is lost.
# ---------------------------------------------------------------------------
{
	my $l = 'publication dropped';
	ok(create_mirror($dest, 'tc_np', ['public.np_t'], do_initial_snapshot => 'true'), "$l: mirror RUNNING");
	src("DROP PUBLICATION bunny_pub_tc_np");
	src("INSERT INTO np_t VALUES (1001, 'while gone')");
	failed_with('tc_np', qr/publication "bunny_pub_tc_np" no longer exists on the source/, $l);
	src("SELECT pg_drop_replication_slot('bunny_slot_tc_np');");
	dst("SELECT bunny.resync_mirror('tc_np');");
	src("INSERT INTO np_t VALUES (1002, 'after')");
	back_running('tc_np', ['public.np_t'], $l);
	is(publication_tables('bunny_pub_tc_np'), 'public.np_t', "$l: the publication is back");
	# and serves the mirror's later table changes
	dst("SELECT bunny.pause_mirror('tc_np')");
	ok(wait_for_status($dest, 'tc_np', 'PAUSED', 30), "$l: paused");
	dst(q{SELECT bunny.update_tables('tc_np', '["public.np_t", "public.np_more"]')});
	dst("SELECT bunny.resume_mirror('tc_np')");
	src("INSERT INTO np_more VALUES (1001, 'after')");
	back_running('tc_np', ['public.np_t', 'public.np_more'], "$l, then a table added");
	drop_mirror('tc_np');
}

# ---------------------------------------------------------------------------
# 6. a part of the initial copy fails three times: a destination column
#    narrower than the source's values.  On the way, update_tables in phase
#    SNAPSHOT is refused with a hint the user can act on.
# ---------------------------------------------------------------------------
{
	my $l = 'copy failed';
	dst("CREATE TABLE wide_t (id int PRIMARY KEY, v varchar(3))");
	ok(create_mirror($dest, 'tc_copy', ['public.wide_t'], do_initial_snapshot => 'true', wait => 0),
		"$l: mirror created");
	my $seen = wait_error('tc_copy',
		qr/initial copy failed: part \d+ of public\.wide_t failed 3 times, last: .*too long/, 90);
	like($seen, qr/initial copy failed: part \d+ of public\.wide_t failed 3 times, last: /,
		"$l: the README's error");
	note("$l: seen $seen");
	ok(scalar(grep { /value too long/ }
			split /\n/, dst("SELECT message FROM bunny.logs('tc_copy', 'ERROR')")),
		"$l: every attempt's cause is an ERROR line of bunny.logs()");

	# refused in phase SNAPSHOT, with a hint
	my $st = mirror_field($dest, 'tc_copy', 'status');
	dst("SELECT bunny.pause_mirror('tc_copy')");
	ok(wait_for_status($dest, 'tc_copy', 'PAUSED', 30), "$l: paused");
	is(mirror_field($dest, 'tc_copy', 'phase'), 'SNAPSHOT', "$l: in phase SNAPSHOT");
	my ($ret, $o, $e) = $dest->psql('postgres',
		q{SELECT bunny.update_tables('tc_copy', '["public.wide_t", "public.c_a"]')});
	like($e, qr/ERROR:  mirror "tc_copy" has not finished its initial copy/,
		"$l: update_tables refused before the copy is done");
	like($e, qr/HINT:  Resume it with bunny\.resume_mirror\('tc_copy'\) and wait until the initial copy has finished \(phase CDC\), or drop the mirror and create it again/,
		"$l: with a hint saying what to do");
	dst("SELECT bunny.resume_mirror('tc_copy')");
	# it fails again: nothing was fixed yet
	$seen = wait_error('tc_copy', qr/^$st\|[1-9]\d*\|.*initial copy failed/, 60);

	dst("ALTER TABLE wide_t ALTER COLUMN v TYPE text");
	dst("SELECT bunny.retry_mirror('tc_copy')");
	src("INSERT INTO wide_t VALUES (1001, 'after')");
	back_running('tc_copy', ['public.wide_t'], $l);
	drop_mirror('tc_copy');
}

# ---------------------------------------------------------------------------
# 7. a column of a type from an extension missing on the destination
# ---------------------------------------------------------------------------
{
	my $l = 'missing type';
	ok(create_mirror($dest, 'tc_type', ['public.ty_t'], do_initial_snapshot => 'true', wait => 0),
		"$l: mirror created");
	failed_with('tc_type', qr/type public\.citext does not exist on the destination/, $l);
	dst("CREATE EXTENSION citext");
	dst("SELECT bunny.retry_mirror('tc_type')");
	src("INSERT INTO ty_t VALUES (1001, 'After')");
	back_running('tc_type', ['public.ty_t'], $l);
	drop_mirror('tc_type');
}

# ---------------------------------------------------------------------------
# 8. a local row on the destination conflicts with a replicated one
# ---------------------------------------------------------------------------
{
	my $l = 'duplicate key';
	ok(create_mirror($dest, 'tc_dup', ['public.dup_t'], do_initial_snapshot => 'true'),
		"$l: mirror RUNNING");
	dst("INSERT INTO dup_t VALUES (1001, 'local')");
	src("INSERT INTO dup_t VALUES (1001, 'source'); INSERT INTO dup_t VALUES (1002, 'next')");
	retrying_with('tc_dup', qr/duplicate key value violates unique constraint "dup_t_pkey"/, $l);
	is(dst("SELECT count(*) FROM dup_t WHERE id = 1002"), '0', "$l: nothing skipped meanwhile");
	dst("DELETE FROM dup_t WHERE id = 1001");
	back_running('tc_dup', ['public.dup_t'], $l);
	drop_mirror('tc_dup');
}

# ---------------------------------------------------------------------------
# 9. a row deleted on the destination, then updated on the source
# ---------------------------------------------------------------------------
{
	my $l = 'row not found';
	ok(create_mirror($dest, 'tc_upd', ['public.upd_t'], do_initial_snapshot => 'true'),
		"$l: mirror RUNNING");
	dst("DELETE FROM upd_t WHERE id = 7");
	src("UPDATE upd_t SET v = 'changed' WHERE id = 7");
	my $seen = retrying_with('tc_upd', qr/(row to update was|\d+ of \d+ rows to update were) not found in destination table public\.upd_t/, $l);
	is(dst("SELECT details->>'sqlstate' FROM bunny.logs('tc_upd', 'ERROR', 'to update w', 1)"),
		'XX001', "$l: SQLSTATE XX001");
	# put the row back, from the source
	my $row = src("SELECT format('(%s, %L)', id, v) FROM upd_t WHERE id = 7");
	dst("INSERT INTO upd_t VALUES $row");
	back_running('tc_upd', ['public.upd_t'], $l);
	drop_mirror('tc_upd');
}

# ---------------------------------------------------------------------------
# 10. a paused mirror keeps its slot, which keeps WAL on the source
# ---------------------------------------------------------------------------
{
	my $l = 'WAL kept';
	ok(create_mirror($dest, 'tc_wal', ['public.wal_t'], do_initial_snapshot => 'true'), "$l: mirror RUNNING");
	dst("SELECT bunny.pause_mirror('tc_wal')");
	ok(wait_for_status($dest, 'tc_wal', 'PAUSED', 30), "$l: paused");
	src("INSERT INTO wal_t SELECT g, repeat('x', 1000) FROM generate_series(1001, 3000) g");
	my $q = "SELECT slot_name, active, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) "
	  . "FROM pg_replication_slots;";
	like(src($q), qr/^bunny_slot_tc_wal\|f\|\d+ [kM]B$/m,
		"$l: the README's query shows the paused mirror's slot keeping WAL");
	dst("SELECT bunny.resume_mirror('tc_wal')");
	back_running('tc_wal', ['public.wal_t'], $l);
	like(src($q), qr/^bunny_slot_tc_wal\|t\|/m, "$l: the slot is in use again");
	drop_mirror('tc_wal');
}

# ---------------------------------------------------------------------------
# 11. lag_bytes grows while RUNNING: the worker waits on a lock
# ---------------------------------------------------------------------------
{
	my $l = 'lag growing';
	ok(create_mirror($dest, 'tc_lag', ['public.lag_t'], do_initial_snapshot => 'true'), "$l: mirror RUNNING");
	my ($out, $err) = ('', '');
	my $locker = IPC::Run::start(
		[ 'psql', '-X', '-d', $dest->connstr('postgres'), '-c',
		  'BEGIN; LOCK TABLE lag_t; SELECT pg_sleep(8); COMMIT;' ],
		'>', \$out, '2>', \$err);
	ok( poll_until(
			sub { dst("SELECT count(*) FROM pg_locks WHERE relation = 'lag_t'::regclass AND granted") ne '0' },
			20),
		"$l: a session holds a lock on the table");
	src("INSERT INTO lag_t SELECT g, 'late' FROM generate_series(1001, 1100) g");
	my $act = '';
	ok( poll_until(
			sub {
				$act = dst("SELECT backend_type, wait_event_type, wait_event FROM pg_stat_activity "
					  . "WHERE backend_type LIKE 'bunnydb%'");
				return $act =~ /^bunnydb mirror tc_lag\|Lock\|relation$/m;
			},
			20),
		"$l: the README's query shows the worker waiting on a lock");
	note("$l: pg_stat_activity: $act");
	# the worker waits in a change it received: lag_seconds grows (the
	# worker learns of no new source position meanwhile, so lag_bytes stays)
	my @lag;
	ok( poll_until(
			sub {
				push @lag, mirror_field($dest, 'tc_lag', 'lag_seconds') // 0;
				return @lag > 1 && $lag[-2] > 0 && $lag[-1] > $lag[-2];
			},
			5, 0.5),
		"$l: lag_seconds keeps growing meanwhile") or diag("lag_seconds: @lag");
	is(mirror_field($dest, 'tc_lag', 'status'), 'RUNNING', "$l: while RUNNING");
	$locker->finish;
	back_running('tc_lag', ['public.lag_t'], $l);
	drop_mirror('tc_lag');
}

# ---------------------------------------------------------------------------
# 12. no free background worker: the mirror stays CREATED
# ---------------------------------------------------------------------------
{
	my $l = 'no worker';
	$dest->append_conf('postgresql.conf', "max_worker_processes = 2\n");
	# (the launcher may find no slot for its first scan at once, before
	# the mirror is created: the shortage is logged once, when it begins)
	my $logpos = -s $dest->logfile;
	$dest->restart;
	ok(create_mirror($dest, 'tc_cr', ['public.cr_t'], do_initial_snapshot => 'true', wait => 0), "$l: mirror created");
	sleep 5;
	is(mirror_field($dest, 'tc_cr', 'status'), 'CREATED', "$l: it stays CREATED");
	ok( poll_until(
			sub {
				slurp_file($dest->logfile, $logpos) =~ /could not start a (scan )?worker.*\n.*DETAIL:.*\n.*HINT:  Increase max_worker_processes/;
			},
			20),
		"$l: the server log says why");
	$dest->append_conf('postgresql.conf', "max_worker_processes = 16\n");
	$dest->restart;
	src("INSERT INTO cr_t VALUES (1001, 'after')");
	back_running('tc_cr', ['public.cr_t'], $l);
	drop_mirror('tc_cr');
}

done_testing();
