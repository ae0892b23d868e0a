# Copyright (c) bunnydb authors
#
# 004_monitoring: every figure a DBA reads from psql.
#
#  * rows_copied after the initial copy; bunny.mirror_tables counters
#    after a known mix of changes, and the mirror's total_rows_synced
#    (CDC only) / last_sync_time; pg_stat_user_tables of
#    the destination table complete while the mirror is idle
#  * lag_bytes / lag_seconds positive while paused with pending changes,
#    zero after catch-up
#  * wait_for_lsn: false at its timeout, true once applied
#  * bunny.logs(): level filter, case-insensitive search, limit / offset
#  * bunny.mirror_status(): its keys
#  * an apply error: retried, never skipped, ERROR line with SQLSTATE and a
#    context naming mirror and table; error_count resets after recovery
#  * log retention

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my ($source, $dest) = setup_pair(dest_conf => "bunny.retry_backoff_max = 2s\n");

sub dq { return $dest->safe_psql('postgres', $_[0]); }

# the copy counts in rows_copied, not in total_rows_synced (CDC only)
$source->safe_psql('postgres',
	"CREATE TABLE public.cp (id int PRIMARY KEY); INSERT INTO cp SELECT generate_series(1, 1005)");
ok(create_mirror($dest, 'cp', ['public.cp'], do_initial_snapshot => 'true'), 'mirror cp is RUNNING');
is(dq("SELECT rows_copied || '/' || total_rows_synced FROM bunny.mirrors WHERE name = 'cp'"),
	'1005/0', 'rows_copied counts the initial copy; total_rows_synced only CDC');
$source->safe_psql('postgres', 'DELETE FROM cp WHERE id <= 5');
is(wait_for_lsn($dest, 'cp', source_lsn($source), 60000), 't', 'cp caught up');
is(dq("SELECT rows_copied || '/' || total_rows_synced FROM bunny.mirrors WHERE name = 'cp'"),
	'1005/5', 'changes count in total_rows_synced');
dq("SELECT bunny.drop_mirror('cp')");

$source->safe_psql('postgres',
	'CREATE TABLE public.acc (id int PRIMARY KEY, v text)');
ok(create_mirror($dest, 'mon', ['public.acc']), 'mirror mon is RUNNING');

# ---------------------------------------------------------------------------
# Counters: 10 inserts, 4 updates, 3 deletes
# ---------------------------------------------------------------------------
$source->safe_psql('postgres', q{
	INSERT INTO acc SELECT g, 'v' || g FROM generate_series(1, 10) g;
	UPDATE acc SET v = 'u' WHERE id <= 4;
	DELETE FROM acc WHERE id > 7;
});
is(wait_for_lsn($dest, 'mon', source_lsn($source), 60000), 't', 'caught up');
is( dq("SELECT rows_inserted || '/' || rows_updated || '/' || rows_deleted
	     FROM bunny.mirror_tables WHERE mirror = 'mon'"),
	'10/4/3', 'rows_inserted / rows_updated / rows_deleted are exact');
is(dq("SELECT total_rows_synced FROM bunny.mirrors WHERE name = 'mon'"),
	'17', 'total_rows_synced counts every change');
is(dq("SELECT last_sync_time IS NOT NULL AND last_sync_time <= now()
	    FROM bunny.mirrors WHERE name = 'mon'"), 't', 'last_sync_time set');
is(dq("SELECT last_synced_at IS NOT NULL FROM bunny.mirror_tables WHERE mirror = 'mon'"),
	't', 'last_synced_at set');
is(dq("SELECT status FROM bunny.mirror_tables WHERE mirror = 'mon'"),
	'SYNCED', 'table status SYNCED');

# PostgreSQL's own statistics of the destination table follow too, also
# for a batch committed right after another one (its counts are held back
# for up to a second) when the mirror then goes idle
$source->safe_psql('postgres', "INSERT INTO acc VALUES (101, 'x')");
is(wait_for_lsn($dest, 'mon', source_lsn($source), 60000), 't', 'one more insert applied');
$source->safe_psql('postgres', "INSERT INTO acc VALUES (102, 'y')");
is(wait_for_lsn($dest, 'mon', source_lsn($source), 60000), 't', 'and one more, at once');
my $stat_query = "SELECT n_tup_ins || '/' || n_tup_upd || '/' || n_tup_del
	FROM pg_stat_user_tables WHERE relid = 'public.acc'::regclass";
ok(poll_until(sub { query_value($dest, $stat_query) eq '12/4/3' }, 15, 0.25),
	'pg_stat_user_tables counts every change while the mirror is idle')
  or diag('n_tup_ins/upd/del: ' . query_value($dest, $stat_query));
$source->safe_psql('postgres', 'DELETE FROM acc WHERE id > 100');
is(wait_for_lsn($dest, 'mon', source_lsn($source), 60000), 't', 'the two rows removed again');

# ---------------------------------------------------------------------------
# Lag while paused, and wait_for_lsn both ways
# ---------------------------------------------------------------------------
dq("SELECT bunny.pause_mirror('mon')");
ok(wait_for_status($dest, 'mon', 'PAUSED', 60), 'paused');
# the batch with the two deletes, committed just before the pause, is
# counted too (pausing ends the streaming worker, which flushes as it exits)
ok(poll_until(sub { query_value($dest, $stat_query) eq '12/4/5' }, 15, 0.25),
	'pg_stat_user_tables counts every change while the mirror is paused')
  or diag('n_tup_ins/upd/del: ' . query_value($dest, $stat_query));
$source->safe_psql('postgres',
	"INSERT INTO acc SELECT g, 'p' FROM generate_series(100, 2099) g");
my $lsn = source_lsn($source);
is(wait_for_lsn($dest, 'mon', $lsn, 500), 'f',
	'wait_for_lsn returns false at its timeout while paused');
ok( poll_until(
		sub {
			query_value($dest,
				"SELECT lag_bytes > 0 AND lag_seconds > 0 FROM bunny.mirrors WHERE name = 'mon'"
			) eq 't';
		},
		30, 0.5),
	'lag_bytes and lag_seconds positive while paused with pending changes');
my $status = dq("SELECT bunny.mirror_status('mon')->>'status'");
is($status, 'PAUSED', 'mirror_status shows PAUSED');

dq("SELECT bunny.resume_mirror('mon')");
is(wait_for_lsn($dest, 'mon', $lsn, 60000), 't', 'wait_for_lsn true after resume');
ok( poll_until(
		sub {
			query_value($dest,
				"SELECT lag_seconds = 0 AND coalesce(lag_bytes, 0) < 1000000 FROM bunny.mirrors WHERE name = 'mon'"
			) eq 't';
		},
		30, 0.5),
	'lag near zero after catch-up');
is(fingerprint($dest, 'public.acc'), fingerprint($source, 'public.acc'),
	'rows equal after resume');

# A waiting wait_for_lsn holds back no cleanup: its backend shows no xmin
# (otherwise every row the mirror updates meanwhile would stay unpruned)
{
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-A', '-t', '-d', $dest->connstr('postgres'), '-c',
		  "SELECT bunny.wait_for_lsn('mon', 'FFFFFFFF/0', 4000)" ],
		'>', \$out, '2>', \$err);
	ok( poll_until(
			sub {
				query_value($dest,
					"SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT bunny.wait_for_lsn(%'"
					  . " AND state = 'active' AND backend_xmin IS NULL") eq '1';
			},
			3, 0.1),
		'wait_for_lsn waits without holding an xmin');
	$h->finish;
	like($out, qr/^f/, 'and returns false at its timeout');
}

# ---------------------------------------------------------------------------
# logs() and mirror_status()
# ---------------------------------------------------------------------------
is(dq("SELECT count(*) > 0 FROM bunny.logs('mon', 'INFO', 'mirror created')"),
	't', 'logs(): INFO line for the creation');
is(dq("SELECT count(*) FROM bunny.logs('mon', 'info', 'PAUSE REQUESTED')"),
	'1', 'logs(): level and search are case-insensitive');
is(dq("SELECT count(*) FROM bunny.logs('mon', 'ERROR')"), '0',
	'logs(): no ERROR line so far');
is(dq("SELECT count(*) FROM bunny.logs('mon', NULL, NULL, 2, 0)"), '2',
	'logs(): limit');
is( dq("SELECT (SELECT id FROM bunny.logs('mon', NULL, NULL, 1, 1))
	        = (SELECT id FROM bunny.logs('mon', NULL, NULL, 2, 0) ORDER BY id LIMIT 1)"),
	't', 'logs(): offset, newest first');
is( dq("SELECT string_agg(k, ',' ORDER BY k) FROM jsonb_object_keys(bunny.mirror_status('mon')) k
	     WHERE k IN ('name', 'status', 'phase', 'last_lsn', 'lag_bytes', 'lag_seconds',
	                 'error_message', 'error_count', 'tables', 'recent_errors',
	                 'total_rows_synced', 'slot_name', 'publication_name', 'config')"),
	'config,error_count,error_message,lag_bytes,lag_seconds,last_lsn,name,phase,publication_name,recent_errors,slot_name,status,tables,total_rows_synced',
	'mirror_status() keys');
is(dq("SELECT jsonb_array_length(bunny.mirror_status('mon')->'tables')"), '1',
	'mirror_status() lists the table');

# ---------------------------------------------------------------------------
# An apply error is retried, logged with SQLSTATE and context, never skipped
# ---------------------------------------------------------------------------
dq("SET session_replication_role = replica; INSERT INTO public.acc VALUES (5000, 'local')");
$source->safe_psql('postgres', "INSERT INTO acc VALUES (5000, 'source'), (5001, 'next')");
ok( poll_until(
		sub {
			query_value($dest,
				"SELECT error_count > 0 FROM bunny.mirrors WHERE name = 'mon'") eq 't';
		},
		60, 0.25),
	'conflicting row: error_count rises');
my $err = dq("SELECT details->>'sqlstate' || '|' || (details->>'context') FROM bunny.logs('mon', 'ERROR', NULL, 1)");
like($err, qr/^23505\|/, 'ERROR line carries SQLSTATE 23505');
like($err, qr/mirror "mon".*table public\.acc.*LSN/, 'context names mirror, table and LSN');
like(dq("SELECT error_message FROM bunny.mirrors WHERE name = 'mon'"),
	qr/duplicate key/, 'error_message says why');
is(dq("SELECT count(*) FROM public.acc WHERE id = 5001"), '0',
	'nothing after the failing change was applied');
ok( poll_until(
		sub {
			query_value($dest,
				"SELECT error_count >= 2 FROM bunny.mirrors WHERE name = 'mon'") eq 't';
		},
		60, 0.25),
	'the mirror keeps retrying');
dq("DELETE FROM public.acc WHERE id = 5000");
is(wait_for_lsn($dest, 'mon', source_lsn($source), 60000), 't',
	'recovers once the conflicting row is gone');
is(dq("SELECT v FROM public.acc WHERE id = 5000"), 'source', 'the source row won');
is(fingerprint($dest, 'public.acc'), fingerprint($source, 'public.acc'),
	'rows equal after recovery');
ok( poll_until(
		sub {
			query_value($dest,
				"SELECT error_count = 0 AND error_message IS NULL FROM bunny.mirrors WHERE name = 'mon'"
			) eq 't';
		},
		30, 0.25),
	'error_count resets after a successful batch');

# ---------------------------------------------------------------------------
# Log retention
# ---------------------------------------------------------------------------
dq("INSERT INTO bunny.mirror_logs (mirror, level, message, created_at)
   VALUES ('mon', 'INFO', 'ancient line', now() - interval '30 days')");
# any control call makes the launcher rescan the database, which prunes
dq("SELECT bunny.retry_mirror('mon')");
ok( poll_until(
		sub {
			query_value($dest,
				"SELECT count(*) FROM bunny.mirror_logs WHERE message = 'ancient line'") eq '0';
		},
		30, 0.5),
	'log lines older than bunny.log_retention_days are deleted');

# ---------------------------------------------------------------------------
# Workers are visible
# ---------------------------------------------------------------------------
is( dq("SELECT count(*) FROM pg_stat_activity
	     WHERE backend_type = 'bunnydb mirror mon' AND application_name = 'bunnydb:mon'"),
	'1', 'worker in pg_stat_activity');
is( $source->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_replication WHERE application_name = 'bunnydb:mon'"),
	'1', 'source connection named bunnydb:mon');

done_testing();
