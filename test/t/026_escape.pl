# Copyright (c) bunnydb authors
#
# 026_escape: every operation is escapable (README "Operations", "Cancel",
# and Troubleshooting "An operation keeps failing").  Each case drives a
# mirror into a failure loop and gets it out, then checks that nothing is
# left on either side -- no temporary replication slot on the source (nor
# the mirror's slot and publication after a drop), no <table>_resync table
# or sequence on the destination -- and, where the mirror goes on, that its
# tables match the source:
#
#  1. cancel_operation's errors: unknown mirror (42704), NULL (22004),
#     nothing to cancel (55000, with a hint);
#  2. a swap resync failing on every attempt (a view made on the table
#     after the request): cancel_operation ends it, the table is SYNCED
#     again and kept every change, the mirror RUNNING;
#  3. a truncate resync failing on every attempt (a destination CHECK
#     constraint, NOT VALID, that a source row breaks): the README recipe,
#     run as written, cancels it; the table is STALE (and the mirror not
#     healthy until it is copied again) and its changes are
#     skipped without an error while the other tables stream on; once the
#     cause is fixed the recipe's resync_table copies it again; paused in
#     the loop, update_tables cannot remove the table half copied (55006);
#  4. a truncate resync stuck on a lock a destination session holds on the
#     table: state_detail names the process holding it and the overview
#     says blocked; pause_mirror pauses it, cancel_operation calls it off (the table
#     was not emptied: SYNCED), and the data matches once the lock is gone;
#  5. an initial copy stuck on such a lock: cancel_operation refuses
#     (55000), pause_mirror pauses it, drop_mirror drops it and nothing of
#     it stays on the source;
#  6. a setup retrying against an unreachable source: cancel_operation
#     refuses (55000), pause_mirror and resume_mirror work, drop_mirror
#     drops it.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest qw(:DEFAULT sql_error);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my ($source, $dest) = setup_pair(
	dest_conf => "bunny.retry_backoff_min = 200\nbunny.retry_backoff_max = 1000\n");

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

sub temp_slots
{
	return query_value($source,
		"SELECT count(*) FROM pg_replication_slots WHERE temporary") // -1;
}

# relations (tables, sequences, indexes) named *_resync* on the destination
sub resync_leftovers
{
	return dst("SELECT count(*) FROM pg_class WHERE relname LIKE '%\\_resync%'");
}

# "status|pending_op" of a mirror
sub op_state
{
	my ($mirror) = @_;
	my $r = query_value($dest,
		"SELECT status || '|' || coalesce(pending_op, '-') FROM bunny.mirror WHERE name = "
		  . sql_literal($mirror));
	return !defined $r ? '(query failed)' : $r eq '' ? '(gone)' : $r;
}

sub wait_op_state
{
	my ($mirror, $want, $timeout) = @_;
	my $ok = poll_until(sub { op_state($mirror) eq $want }, $timeout // 60, 0.2);
	if (!$ok)
	{
		diag("mirror $mirror not $want (now " . op_state($mirror) . ')');
		dump_mirror_state($dest, $mirror);
	}
	return $ok;
}

# nothing of the mirror's temporary work on either side
sub nothing_left
{
	my ($label) = @_;
	ok(poll_until(sub { temp_slots() == 0 }, 30),
		"$label: no temporary slot on the source");
	is(resync_leftovers(), '0', "$label: no <table>_resync table or sequence");
	return;
}

# whether a bunnydb process on the destination waits for a lock
sub worker_waits_for_lock
{
	return poll_until(
		sub {
			(query_value($dest,
					"SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
					  . "WHERE NOT l.granted AND a.backend_type LIKE 'bunny%'") // 0) > 0;
		},
		60, 0.2);
}

# pause_mirror and resume_mirror of a mirror whose worker is stuck on a
# lock: it pauses, and resumed it is stuck again
sub pause_and_resume_stuck
{
	my ($mirror, $label) = @_;
	my ($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.pause_mirror('$mirror')");
	is($ret, 0, "$label: pause_mirror works") or diag($err);
	ok(wait_op_state($mirror, 'PAUSED|-', 60), "$label: the mirror pauses");
	($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.resume_mirror('$mirror')");
	is($ret, 0, "$label: resume_mirror works") or diag($err);
	ok(worker_waits_for_lock(), "$label: resumed, it waits for the lock again");
	return;
}

# the SQL blocks of README section "An operation keeps failing", in order
sub readme_recipe
{
	my $readme = slurp_file("$FindBin::RealBin/../../README.md");
	my ($section) = $readme =~ /^### An operation keeps failing\n(.*?)^---/ms;
	die "README has no section \"An operation keeps failing\"" unless defined $section;
	my @blocks = $section =~ /```sql\n(.*?)```/gs;
	die "README recipe: expected two SQL blocks" unless @blocks == 2;
	return @blocks;
}

src(q{
CREATE TABLE sw (id int PRIMARY KEY, v text NOT NULL);
CREATE TABLE orders (id int PRIMARY KEY, v text NOT NULL);
CREATE TABLE other (id int PRIMARY KEY, v text NOT NULL);
CREATE TABLE lk (id int PRIMARY KEY, v text NOT NULL);
CREATE TABLE ini (id int PRIMARY KEY, v text NOT NULL);
INSERT INTO sw SELECT g, 'r' || g FROM generate_series(1, 200) g;
INSERT INTO orders SELECT g, 'r' || g FROM generate_series(1, 200) g;
INSERT INTO other SELECT g, 'r' || g FROM generate_series(1, 200) g;
INSERT INTO lk SELECT g, 'r' || g FROM generate_series(1, 200) g;
INSERT INTO ini SELECT g, 'r' || g FROM generate_series(1, 200) g;
});

my $round = 0;

# a write to every table of the source; dies on any error
sub write_all
{
	my @tables = @_;
	$round++;
	my $base = 1000 + $round * 10;
	for my $t (@tables)
	{
		src(    "INSERT INTO $t SELECT g, 'n$round' FROM generate_series($base, $base + 4) g; "
			  . "UPDATE $t SET v = v || '.u$round' WHERE id % 7 = $round % 7; "
			  . "DELETE FROM $t WHERE id = $round");
	}
	return;
}

ok( create_mirror($dest, 'esc', [ 'public.sw', 'public.lk' ],
		do_initial_snapshot => 'true'),
	'mirror esc is RUNNING');
ok( create_mirror($dest, 'orders_mirror', [ 'public.orders', 'public.other' ],
		do_initial_snapshot => 'true'),
	'mirror orders_mirror is RUNNING');

# ---------------------------------------------------------------------------
# 1. errors
# ---------------------------------------------------------------------------
{
	my ($state, $msg) = sql_error($dest, "SELECT bunny.cancel_operation('nosuch')");
	is($state, '42704', 'cancel_operation of an unknown mirror: 42704');
	($state, $msg) = sql_error($dest, 'SELECT bunny.cancel_operation(NULL)');
	is($state, '22004', 'cancel_operation(NULL): 22004');
	($state, $msg) = sql_error($dest, "SELECT bunny.cancel_operation('esc')");
	is($state, '55000', 'cancel_operation with nothing to cancel: 55000');
	like($msg, qr/has no operation to cancel/, '... says so');
	my ($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.cancel_operation('esc')");
	like($err, qr/HINT:.*resync_table/, '... with a hint naming what can be cancelled');
	unlike($err, qr/CONTEXT/, '... and no PL/pgSQL context');
	# nor from the set-returning functions
	($ret, $out, $err) = $dest->psql('postgres', "SELECT * FROM bunny.logs('esc', 'warn')");
	like($err, qr/invalid log level "warn"\nHINT:  Use DEBUG, INFO, WARNING or ERROR\.$/,
		'logs() with a bad level: a hint and no context');
	($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.resync_table('esc', 'nosuch')");
	like($err, qr/HINT:  Its tables, by source name \(an unqualified name means public\): public\.lk, public\.sw\.$/,
		'resync_table of a table the mirror lacks: the hint lists its tables');
}

# ---------------------------------------------------------------------------
# 2. a swap resync failing on every attempt
# ---------------------------------------------------------------------------
{
	my $label = 'failing swap';
	my ($ret, $out, $err) = $dest->psql(
		'postgres', q{
BEGIN;
SELECT bunny.resync_table('esc', 'public.sw', 'swap');
CREATE VIEW sw_v AS SELECT * FROM sw;
COMMIT;});
	is($ret, 0, "$label: request made, a view created after it") or diag($err);
	write_all('sw', 'lk');
	ok(poll_until(sub { (mirror_field($dest, 'esc', 'error_count') // 0) >= 2 }, 90, 0.2),
		"$label: the swap fails again and again");
	like(mirror_field($dest, 'esc', 'error_message') // '', qr/depend/,
		"$label: its error is shown");
	write_all('sw', 'lk');

	($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.cancel_operation('esc')");
	is($ret, 0, "$label: cancel_operation works") or diag($err);
	is(op_state('esc'), 'RUNNING|-', "$label: the mirror is RUNNING with no operation at once");
	is(table_field($dest, 'esc', 'public.sw', 'status'), 'SYNCED',
		"$label: the table is SYNCED again (the swap never touched it)");
	is(mirror_field($dest, 'esc', 'error_count'), '0', "$label: no error left");
	nothing_left($label);
	write_all('sw', 'lk');
	ok(wait_synced($source, $dest, 'esc', [ 'public.sw', 'public.lk' ], timeout => 60),
		"$label: every table equal to the source");
	is(dst('SELECT count(*) FROM sw_v'), dst('SELECT count(*) FROM sw'), "$label: the view works");
	is(op_state('esc'), 'RUNNING|-', "$label: still RUNNING");
	($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.cancel_operation('esc')");
	like($err, qr/no operation to cancel/, "$label: a second cancel has nothing to cancel");
	dst('DROP VIEW sw_v');
}

# ---------------------------------------------------------------------------
# 3. a truncate resync failing on every attempt: the README recipe
# ---------------------------------------------------------------------------
{
	my $label = 'failing truncate';
	my ($inspect_and_cancel, $recopy) = readme_recipe();

	# a row the destination accepts no more, but already has
	src("UPDATE orders SET v = 'bad' WHERE id = 100");
	ok(wait_synced($source, $dest, 'orders_mirror', [ 'public.orders', 'public.other' ]),
		"$label: the bad row is on the destination");
	dst("ALTER TABLE orders ADD CONSTRAINT orders_v_check CHECK (v <> 'bad') NOT VALID");
	dst("SELECT bunny.resync_table('orders_mirror', 'public.orders', 'truncate')");
	ok( poll_until(
			sub {
				(mirror_field($dest, 'orders_mirror', 'error_count') // 0) >= 2
				  || (mirror_field($dest, 'orders_mirror', 'status') // '') eq 'FAILED';
			},
			120, 0.2),
		"$label: the copy fails again and again");
	like(mirror_field($dest, 'orders_mirror', 'error_message') // '', qr/orders_v_check/,
		"$label: its error names the constraint");
	ok(poll_until(sub { (mirror_field($dest, 'orders_mirror', 'error_message') // '') =~ /^copy failed: part \d+ of public\.orders failed \d+ times, last: .*orders_v_check/ }, 90, 0.2),
		"$label: once a part failed three times, it says the copy failed (not an initial copy)");
	write_all('orders', 'other');

	my (undef, undef, $seq_err) = $dest->psql('postgres', "SELECT * FROM bunny.sync_sequences('orders_mirror')");
	like($seq_err, qr/another operation is already in progress\nDETAIL:  Operation in progress: resync\.\nHINT:  .*cancel_operation\('orders_mirror'\)\.$/,
		"$label: another operation's error says how to get on, without context");

	# paused half way, the mirror still has its resync to finish:
	# update_tables cannot take the table out, emptied, with nothing to say so
	dst("SELECT bunny.pause_mirror('orders_mirror')");
	ok(wait_for_status($dest, 'orders_mirror', 'PAUSED', 60), "$label: paused in the loop");
	my ($state, $msg) = sql_error($dest,
		q{SELECT bunny.update_tables('orders_mirror', '["public.other"]')});
	is($state, '55006', "$label: update_tables is refused while the resync is unfinished");
	my (undef, undef, $uerr) = $dest->psql('postgres',
		q{SELECT bunny.update_tables('orders_mirror', '["public.other"]')});
	like($uerr, qr/DETAIL:  Operation in progress: resync of public\.orders \(paused\)\.\nHINT:  .*resume_mirror.*cancel_operation/,
		"$label: ... naming the table and the two ways on");
	unlike($uerr, qr/CONTEXT/, "$label: ... without PL/pgSQL context");
	is(dst("SELECT count(*) FROM bunny.mirror_tables WHERE mirror = 'orders_mirror'"), '2',
		"$label: ... and keeps both tables");
	dst("SELECT bunny.resume_mirror('orders_mirror')");
	ok(poll_until(sub { (mirror_field($dest, 'orders_mirror', 'status') // '') eq 'RESYNCING'
						  && (mirror_field($dest, 'orders_mirror', 'error_count') // 0) >= 1 }, 90, 0.2),
		"$label: resumed, it fails again");

	my ($ret, $out, $err) = $dest->psql('postgres', $inspect_and_cancel);
	is($ret, 0, "$label: the README recipe's first block runs") or diag($err);
	like($out, qr/public\.orders\|RESYNCING/, "$label: the recipe shows the table being copied");
	like($out, qr/public\.orders\|not in sync/, "$label: the recipe lists it STALE afterwards");
	is(op_state('orders_mirror'), 'RUNNING|-', "$label: the mirror is RUNNING");
	is(table_field($dest, 'orders_mirror', 'public.orders', 'status'), 'STALE',
		"$label: the emptied table is STALE");
	is(mirror_field($dest, 'orders_mirror', 'healthy'), 'f',
		"$label: a mirror with a STALE table is not healthy");
	like(mirror_field($dest, 'orders_mirror', 'state_detail'), qr/^streaming; 1 table STALE \(not in sync: resync it\)$/,
		"$label: state_detail says why");
	like(dst("SELECT health || ' ' || error FROM bunny.mirror_overview WHERE mirror = 'orders_mirror'"),
		qr/^stale 1 table STALE$/, "$label: so does the overview");
	is(table_field($dest, 'orders_mirror', 'public.other', 'status'), 'SYNCED',
		"$label: the other table is SYNCED");
	nothing_left($label);
	is(dst("SELECT count(*) FROM bunny.resync_queue q JOIN bunny.mirror m ON m.id = q.mirror_id "
			  . "WHERE m.name = 'orders_mirror'"), '0', "$label: no queued change left");

	# the stale table's changes are skipped, without an error
	write_all('orders', 'other');
	ok(wait_synced($source, $dest, 'orders_mirror', ['public.other'], timeout => 60),
		"$label: the other table streams on");
	is(mirror_field($dest, 'orders_mirror', 'error_count'), '0',
		"$label: the stale table's changes make no error");
	is(op_state('orders_mirror'), 'RUNNING|-', "$label: still RUNNING");

	# fix the cause, then the recipe's second block (asked as swap: the
	# stale table is copied with truncate anyway)
	dst('ALTER TABLE orders DROP CONSTRAINT orders_v_check');
	(my $swap = $recopy) =~ s/'truncate'/'swap'/;
	($ret, $out, $err) = $dest->psql('postgres', $swap);
	is($ret, 0, "$label: the README recipe's resync_table runs") or diag($err);
	write_all('orders', 'other');
	ok(wait_op_state('orders_mirror', 'RUNNING|-', 90), "$label: the new copy finishes");
	ok(wait_synced($source, $dest, 'orders_mirror', [ 'public.orders', 'public.other' ],
			timeout => 60),
		"$label: every table equal to the source");
	is(table_field($dest, 'orders_mirror', 'public.orders', 'status'), 'SYNCED',
		"$label: the table is SYNCED");
	is(mirror_field($dest, 'orders_mirror', 'healthy'), 't', "$label: the mirror is healthy again");
	ok(scalar(log_lines($dest, 'orders_mirror', 0, '%stale: copied with truncate%')),
		"$label: the stale table was copied with truncate");
	nothing_left("$label, copied again");
}

# ---------------------------------------------------------------------------
# 4. a truncate resync stuck on a lock
# ---------------------------------------------------------------------------
{
	my $label = 'resync stuck on a lock';
	my $holder = $dest->background_psql('postgres');
	$holder->query_safe('BEGIN; LOCK TABLE lk IN ACCESS EXCLUSIVE MODE;');
	dst("SELECT bunny.resync_table('esc', 'public.lk', 'truncate')");
	ok(worker_waits_for_lock(), "$label: the worker waits for the lock");
	my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
	ok( poll_until(
			sub {
				(mirror_field($dest, 'esc', 'state_detail') // '') =~
				  /^streaming; copying 1 table; waiting \d+ s for a lock held by process $holder_pid$/;
			},
			30, 0.2),
		"$label: state_detail says the worker waits for the lock, and whose")
	  or diag(mirror_field($dest, 'esc', 'state_detail'));
	ok(poll_until(sub { dst("SELECT health FROM bunny.mirror_overview WHERE mirror = 'esc'") eq 'blocked' }, 30, 0.5),
		"$label: after 10 s the overview says blocked");
	like(dst("SELECT error FROM bunny.mirror_overview WHERE mirror = 'esc'"),
		qr/^waiting \d+s for /, "$label: ... and whose lock");
	is(dst("SELECT a.wait_event_type FROM bunny.mirrors v JOIN pg_stat_activity a ON a.pid = v.worker_pid "
			  . "WHERE v.name = 'esc'"), 'Lock', "$label: worker_pid leads to the worker in pg_stat_activity");

	pause_and_resume_stuck('esc', $label);
	my ($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.cancel_operation('esc')");
	is($ret, 0, "$label: cancel_operation works") or diag($err);
	is(op_state('esc'), 'RUNNING|-', "$label: RUNNING with no operation");
	is(table_field($dest, 'esc', 'public.lk', 'status'), 'SYNCED',
		"$label: the table was not emptied: SYNCED");
	nothing_left($label);
	$holder->query_safe('COMMIT');
	$holder->quit;
	write_all('sw', 'lk');
	ok(wait_synced($source, $dest, 'esc', [ 'public.sw', 'public.lk' ], timeout => 60),
		"$label: every table equal to the source once the lock is gone");
}

# the mirror's slot and publication on the source
sub source_objects
{
	my ($mirror) = @_;
	return $source->safe_psql('postgres',
		    "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'bunny_slot_$mirror') "
		  . "|| '|' || (SELECT count(*) FROM pg_publication WHERE pubname = 'bunny_pub_$mirror')");
}

# ---------------------------------------------------------------------------
# 5. an initial copy stuck on a lock
# ---------------------------------------------------------------------------
{
	my $label = 'initial copy stuck on a lock';
	dst('CREATE TABLE ini (id int PRIMARY KEY, v text NOT NULL)');
	my $holder = $dest->background_psql('postgres');
	$holder->query_safe('BEGIN; LOCK TABLE ini IN ACCESS EXCLUSIVE MODE;');
	ok(create_mirror($dest, 'esc_init', ['public.ini'], do_initial_snapshot => 'true', wait => 0),
		"$label: mirror created");
	ok(worker_waits_for_lock(), "$label: the copy waits for the lock");

	my ($state, $msg) = sql_error($dest, "SELECT bunny.cancel_operation('esc_init')");
	is($state, '55000', "$label: cancel_operation has nothing to cancel (55000)");
	like($msg, qr/no operation to cancel/, "$label: ... and says so");

	pause_and_resume_stuck('esc_init', $label);
	my ($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.drop_mirror('esc_init')");
	is($ret, 0, "$label: drop_mirror works") or diag($err);
	is(source_objects('esc_init'), '0|0', "$label: slot and publication gone from the source");
	nothing_left($label);
	$holder->query_safe('COMMIT');
	$holder->quit;
	ok( poll_until(
			sub {
				(query_value($dest,
						"SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'bunny%snapshot%'")
					  // 1) == 0;
			},
			30),
		"$label: no snapshot worker left");
	is(dst('SELECT count(*) FROM bunny.mirror_table'), '4', "$label: the catalog forgot it");
}

# ---------------------------------------------------------------------------
# 6. a setup retrying: the source is unreachable
# ---------------------------------------------------------------------------
{
	my $label = 'setup retrying';
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	dst(    "SELECT bunny.create_peer('deadsrc', 'host=127.0.0.1 port=$port dbname=postgres "
		  . "connect_timeout=2', validate => false)");
	ok( create_mirror($dest, 'esc_setup',
			'[{"source_table": "public.other", "destination_table": "public.other_setup"}]',
			peer => 'deadsrc', wait => 0),
		"$label: mirror created");
	ok(poll_until(sub { (mirror_field($dest, 'esc_setup', 'error_count') // 0) >= 2 }, 60, 0.2),
		"$label: setup fails again and again");
	is(mirror_field($dest, 'esc_setup', "status || '/' || phase || '/' || healthy"), 'SETUP/SETUP/false',
		"$label: the mirror says SETUP, not healthy (README \"Statuses and phases\")");

	my ($state, $msg) = sql_error($dest, "SELECT bunny.cancel_operation('esc_setup')");
	is($state, '55000', "$label: cancel_operation has nothing to cancel (55000)");
	my ($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.pause_mirror('esc_setup')");
	is($ret, 0, "$label: pause_mirror works") or diag($err);
	ok(wait_op_state('esc_setup', 'PAUSED|-', 60), "$label: the mirror pauses");
	($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.resume_mirror('esc_setup')");
	is($ret, 0, "$label: resume_mirror works") or diag($err);
	my $errors = mirror_field($dest, 'esc_setup', 'error_count') // 0;
	ok(poll_until(sub { (mirror_field($dest, 'esc_setup', 'error_count') // 0) > $errors }, 60, 0.2),
		"$label: resumed, setup retries again");
	($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.drop_mirror('esc_setup')");
	is($ret, 0, "$label: drop_mirror works") or diag($err);
	is(op_state('esc_setup'), '(gone)', "$label: the mirror is gone");
	nothing_left($label);
}

# the mirrors that went on still match the source
write_all('sw', 'lk', 'orders', 'other');
ok(wait_synced($source, $dest, 'esc', [ 'public.sw', 'public.lk' ], timeout => 60),
	'esc: every table equal to the source at the end');
ok(wait_synced($source, $dest, 'orders_mirror', [ 'public.orders', 'public.other' ],
		timeout => 60),
	'orders_mirror: every table equal to the source at the end');

done_testing();
