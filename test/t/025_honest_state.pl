# Copyright (c) bunnydb authors
#
# 025_honest_state: what bunny.mirrors and bunny.mirror_tables say about a
# mirror is what is true now (README "Statuses and phases", "Monitoring",
# "Troubleshooting").
#
#  1. A table update_tables added whose destination is not empty fails the
#     mirror (FAILED, "destination table public.kv is not empty"); the
#     table's row in bunny.mirror_tables carries the error too.  Emptied and
#     retried, with no write on the source after it: error_message,
#     error_count and the table's error clear within a few seconds, and the
#     mirror reads healthy.
#  2. The same for a mirror created over a pre-filled table (the initial
#     copy's phase completing clears the error).
#  3. A wrong password (the source role's password changed under a
#     running mirror): retried with backoff, not healthy.  Fixed with
#     alter_peer and retry_mirror, on an idle source: the error clears.
#  4. A batch that fails every time (a CHECK constraint on the destination
#     rejects one replicated row): while it loops the mirror reads
#     healthy = false with a state_detail saying it retries, and the table's
#     row carries the error; once the constraint is dropped the row comes
#     in and everything clears.
#  5. Statuses the other parts do not show: CREATED, PAUSING (and PAUSED
#     above), each with its state_detail; healthy/state_detail in
#     bunny.mirror_status().

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $PW     = 'Gut-Pw-4711';
my $NEW_PW = 'Neu-Pw-0815';

# statement logging off: the statements below carry passwords
my ($source, $dest) = setup_pair(
	source_conf => "listen_addresses = '127.0.0.1'\n"
	  . "log_statement = none\nlog_min_error_statement = panic\n"
	  . "password_encryption = 'scram-sha-256'\n",
	dest_conf => "log_statement = none\nlog_min_error_statement = panic\n"
	  . "bunny.retry_backoff_min = '500ms'\n"
	  . "bunny.retry_backoff_max = '4s'\n");

my $tcp = 'host=127.0.0.1 port=' . $source->port . ' dbname=postgres';

src(qq{
CREATE ROLE pw_src LOGIN SUPERUSER PASSWORD '$PW';
CREATE TABLE a (id int PRIMARY KEY, v int);
CREATE TABLE kv (k int PRIMARY KEY, v text);
INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 100) g;
CREATE TABLE pf (id int PRIMARY KEY, v text);
INSERT INTO pf SELECT g, 'p' || g FROM generate_series(1, 50) g;
CREATE TABLE b (id int PRIMARY KEY, v int);
CREATE TABLE c (id int PRIMARY KEY, v int);
});

# pw_src must give its password; everyone else is trusted
hba_for_role($source, 'pw_src', 'scram-sha-256');

# the mirror's current error, and whether it reads healthy
sub error_state
{
	my ($name) = @_;
	return query_value($dest,
		"SELECT format('%s|%s|%s|%s', error_count, error_message, healthy, state_detail) "
		  . "FROM bunny.mirrors WHERE name = " . sql_literal($name)) // '';
}

# wait up to $timeout seconds until the mirror has no error and reads
# healthy, and none of its tables carries an error
sub wait_clear
{
	my ($name, $timeout) = @_;
	my $ok = poll_until(
		sub {
			query_value($dest,
				"SELECT m.error_count = 0 AND m.error_message IS NULL AND m.healthy "
				  . "   AND NOT EXISTS (SELECT 1 FROM bunny.mirror_tables t "
				  . "                    WHERE t.mirror = m.name AND t.error_message IS NOT NULL) "
				  . "  FROM bunny.mirrors m WHERE m.name = " . sql_literal($name)) eq 't';
		},
		$timeout, 0.2);
	diag("$name: " . error_state($name)) unless $ok;
	return $ok;
}

sub wait_error_like
{
	my ($name, $re, $timeout) = @_;
	my $ok = poll_until(sub { error_state($name) =~ $re }, $timeout // 60, 0.2);
	diag("$name: " . error_state($name)) unless $ok;
	return $ok;
}

# ---------------------------------------------------------------------------
# 1. update_tables adds a table whose destination is not empty
# ---------------------------------------------------------------------------

ok(create_mirror($dest, 'ne', ['public.a']), 'mirror ne running');
is(mirror_field($dest, 'ne', 'healthy'),      't',         'ne reads healthy');
is(mirror_field($dest, 'ne', 'state_detail'), 'streaming', 'ne is streaming');

dst(q{CREATE TABLE kv (k int PRIMARY KEY, v text)});
dst(q{SELECT bunny.pause_mirror('ne')});
ok(wait_for_status($dest, 'ne', 'PAUSED', 60), 'ne paused');
is(mirror_field($dest, 'ne', 'state_detail'), 'paused', 'state_detail of a paused mirror');
# the row arrives after update_tables has checked the table (it refuses
# one that has rows already)
dst(q{BEGIN; SELECT bunny.update_tables('ne', '["public.a", "public.kv"]');
      INSERT INTO kv VALUES (-1, 'local'); COMMIT;});
dst(q{SELECT bunny.resume_mirror('ne')});

ok(wait_for_status($dest, 'ne', 'FAILED', 60), 'ne fails on the non-empty table');
like(mirror_field($dest, 'ne', 'error_message'), qr/destination table public\.kv is not empty/,
	'the mirror says why');
is(mirror_field($dest, 'ne', 'healthy'), 'f', 'a FAILED mirror is not healthy');
like(mirror_field($dest, 'ne', 'state_detail'), qr/^failed/, 'state_detail says failed');
like(table_field($dest, 'ne', 'public.kv', 'error_message'), qr/is not empty/,
	"the table's row carries the error");
is(table_field($dest, 'ne', 'public.a', 'error_message'), '', 'the other table carries none');

dst('TRUNCATE kv');
dst(q{SELECT bunny.retry_mirror('ne')});
# no write on the source from here on
ok(poll_until(sub { table_field($dest, 'ne', 'public.kv', 'status') eq 'SYNCED' }, 60, 0.2),
	'the added table is copied after the retry');
ok(wait_clear('ne', 5), 'ne: the error clears within seconds on an idle source');
is(mirror_field($dest, 'ne', 'status'), 'RUNNING', 'ne RUNNING');
is(mirror_field($dest, 'ne', 'state_detail'), 'streaming', 'ne streaming');
is(dst('SELECT count(*) FROM kv'), '100', 'kv copied');

# ---------------------------------------------------------------------------
# 2. a mirror created over a pre-filled table
# ---------------------------------------------------------------------------

dst(q{CREATE TABLE pf (id int PRIMARY KEY, v text)});
dst(q{BEGIN; SELECT bunny.create_mirror('pfm', 'src', '["public.pf"]');
      INSERT INTO pf VALUES (-1, 'local'); COMMIT;});
pass('mirror pfm created (the row arrives after its check)');
ok(wait_for_status($dest, 'pfm', 'FAILED', 60), 'pfm fails on the pre-filled table');
like(table_field($dest, 'pfm', 'public.pf', 'error_message'), qr/destination table public\.pf is not empty/,
	"pf's row carries the error");
dst('TRUNCATE pf');
dst(q{SELECT bunny.retry_mirror('pfm')});
ok(wait_for_status($dest, 'pfm', 'RUNNING', 60), 'pfm copies after the retry');
ok(wait_clear('pfm', 5), 'pfm: the error clears');
is(dst('SELECT count(*) FROM pf'), '50', 'pf copied');

# ---------------------------------------------------------------------------
# 3. a wrong password, fixed with alter_peer
# ---------------------------------------------------------------------------

dst('SELECT bunny.create_peer(' . sql_literal('pwpeer') . ', '
	  . sql_literal("$tcp user=pw_src password=$PW connect_timeout=5") . ')');
ok(create_mirror($dest, 'pwm', ['public.b'], peer => 'pwpeer'), 'mirror pwm running');
src(qq{ALTER ROLE pw_src PASSWORD '$NEW_PW'});
# its connections end: the next ones need the new password
src(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bunnydb:pwm'});
ok(wait_error_like('pwm', qr/^[1-9]\d*\|.*password authentication failed.*\|f\|/, 60),
	'pwm: the wrong password is an error, and the mirror is not healthy');
ok(poll_until(sub { mirror_field($dest, 'pwm', 'state_detail') =~ /^retrying in \d+ s after \d+ failures?$/ },
		20, 0.1),
	'pwm: state_detail says when it retries');

dst('SELECT bunny.alter_peer(' . sql_literal('pwpeer') . ', '
	  . sql_literal("$tcp user=pw_src password=$NEW_PW connect_timeout=5") . ')');
dst(q{SELECT bunny.retry_mirror('pwm')});
ok(wait_clear('pwm', 8), 'pwm: the error clears once connected, on an idle source');
is(mirror_field($dest, 'pwm', 'status'), 'RUNNING', 'pwm RUNNING');

# ---------------------------------------------------------------------------
# 4. a batch that fails every time
# ---------------------------------------------------------------------------

ok(create_mirror($dest, 'ck', ['public.c']), 'mirror ck running');
dst('ALTER TABLE c ADD CONSTRAINT c_small CHECK (v < 100)');
src('INSERT INTO c VALUES (1, 1), (2, 500)');
ok(wait_error_like('ck', qr/^([2-9]|\d\d+)\|.*c_small.*\|f\|/, 60),
	'ck: the batch fails again and again, and the mirror is not healthy');
like(table_field($dest, 'ck', 'public.c', 'error_message'), qr/c_small/,
	"ck: the table's row carries the error");
{
	my %seen;
	poll_until(
		sub {
			my $d = mirror_field($dest, 'ck', 'state_detail') // '';
			$seen{retrying} = 1 if $d =~ /^retrying (in \d+ s|now) after \d+ failures$/;
			$seen{trying}   = 1 if $d =~ /^streaming, trying again after \d+ failures$/;
			$seen{healthy}  = 1 if mirror_field($dest, 'ck', 'healthy') ne 'f';
			return 0;
		},
		6, 0.05);
	ok($seen{retrying}, 'ck: state_detail shows the backoff between runs');
	ok(!$seen{healthy}, 'ck: never healthy while it loops');
}
is(mirror_field($dest, 'ck', 'status'), 'RUNNING', 'ck keeps its status: retried, not FAILED');

dst('ALTER TABLE c DROP CONSTRAINT c_small');
ok(poll_until(sub { dst('SELECT count(*) FROM c') eq '2' }, 30, 0.2), 'ck: the rows come in');
ok(wait_clear('ck', 5), 'ck: everything clears');
is(mirror_field($dest, 'ck', 'state_detail'), 'streaming', 'ck streaming');

# ---------------------------------------------------------------------------
# 5. CREATED and PAUSING as the calls leave them (seen inside the calling
#    transaction, before any worker acts), and bunny.mirror_status
# ---------------------------------------------------------------------------

is(dst(q{BEGIN;
SELECT bunny.create_mirror('fresh', 'src', '[{"source_table": "public.a", "destination_table": "public.a_fresh"}]', do_initial_snapshot => false) \\g /dev/null
SELECT status || ' ' || phase || ' ' || healthy FROM bunny.mirrors WHERE name = 'fresh';
ROLLBACK;}),
	'CREATED SETUP true', 'a new mirror is CREATED in phase SETUP');
is(dst(q{BEGIN;
SELECT bunny.pause_mirror('ck') \\g /dev/null
SELECT status || ' | ' || state_detail FROM bunny.mirrors WHERE name = 'ck';
ROLLBACK;}),
	'PAUSING | pausing after the current batch', 'pause_mirror leaves PAUSING');


is(dst(q{SELECT (s->>'healthy') || ' ' || (s->>'state_detail') FROM bunny.mirror_status('ck') s}),
	'true streaming', 'mirror_status carries healthy and state_detail');

done_testing();
