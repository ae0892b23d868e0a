
# Copyright (c) bunnydb authors
#
# 008_security: the README on passwords ("Peers", "Guarantees": secrets stay
# secret), roles ("Roles and privileges") and quoting (every identifier is
# quoted in generated SQL, "Guarantees")
#
#  1. A non-superuser source role (LOGIN REPLICATION, scram-sha-256 over
#     TCP) owns the replicated tables; a non-superuser bunny_admin member on
#     the destination creates the peer with that role's password and a
#     mirror (initial snapshot + CDC); data ends equal.
#  2. The password never shows: bunny.peers, bunny.mirror_logs (messages and
#     details), bunny.mirrors.error_message, the destination server log,
#     pg_stat_activity (query, application_name) on both sides, also after
#     provoked errors (a wrong password validated by alter_peer, a mirror
#     whose peer password becomes wrong).
#  3. Roles: bunny_monitor reads but cannot act (42501); a role with neither
#     reads nothing (42501); every SECURITY DEFINER function of schema bunny
#     pins search_path; a non-superuser cannot create a password-less peer to
#     a server that trusts it (2F003 "password is required").
#  4. Hostile identifiers end to end: schema "sch ema", table
#     "we'ird; DROP TABLE x; --" with column "cöl ümn", a 63-byte table name.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;

use Time::HiRes qw(usleep time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $PW     = 'S3cr3t-Pw-xyz';
my $BAD_PW = 'Wr0ng-Pw-qrs';

# The statements this test types contain the password; PostgreSQL itself
# would log their text (log_statement = all from PostgreSQL::Test::Cluster,
# STATEMENT lines of failing calls). That is the user's own input, not
# something bunnydb logs, so statement logging is off: what remains in the
# log is what the server and bunnydb's workers write.
my ($source, $dest) = setup_pair(
	peer => '',
	source_conf => "listen_addresses = '127.0.0.1'\n"
	  . "log_statement = none\nlog_min_error_statement = panic\n"
	  . "password_encryption = 'scram-sha-256'\n",
	dest_conf => "log_statement = none\nlog_min_error_statement = panic\n"
	  . "bunny.retry_backoff_min = '200ms'\n"
	  . "bunny.retry_backoff_max = '3s'\n");

my $mirror = 'sec';
my $tcp = 'host=127.0.0.1 port=' . $source->port . ' dbname=postgres';

# ---------------------------------------------------------------------------
# Source: role, tables, pg_hba.conf (scram-sha-256 for bunny_src)
# ---------------------------------------------------------------------------

my $long_table = 'l' . ('o' x 61) . 'g';    # 63 bytes
is(length($long_table), 63, 'long table name has 63 bytes');
my $weird_table = q{"sch ema"."we'ird; DROP TABLE x; --"};
my $long_qual   = qq{"sch ema".$long_table};

$source->safe_psql(
	'postgres', qq{
CREATE ROLE bunny_src LOGIN REPLICATION PASSWORD '$PW';
GRANT CREATE ON DATABASE postgres TO bunny_src;
CREATE TABLE public.x (id int PRIMARY KEY);          -- the target of the "injection"
CREATE TABLE public.accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text);
CREATE SCHEMA "sch ema" AUTHORIZATION bunny_src;
CREATE TABLE $weird_table (id int PRIMARY KEY, "cöl ümn" text, "Mixed ""Q"" col" int);
CREATE TABLE $long_qual (id int PRIMARY KEY, v text);
ALTER TABLE public.accounts OWNER TO bunny_src;
ALTER TABLE $weird_table OWNER TO bunny_src;
ALTER TABLE $long_qual OWNER TO bunny_src;
INSERT INTO public.accounts SELECT g, g * 10, 'n' || g FROM generate_series(1, 2000) g;
INSERT INTO $weird_table SELECT g, 'wert ' || g || ' ''q'' ;--', g FROM generate_series(1, 500) g;
INSERT INTO $long_qual SELECT g, repeat('v', g % 50) FROM generate_series(1, 300) g;
});

# the destination has its own "x" too: nothing may drop it
$dest->safe_psql('postgres', 'CREATE TABLE public.x (id int PRIMARY KEY); INSERT INTO public.x VALUES (1);');

hba_for_role($source, 'bunny_src', 'scram-sha-256');

# sanity: bunny_src needs its password over TCP and over the socket
{
	local $ENV{PGPASSWORD};
	delete $ENV{PGPASSWORD};
	my ($ret, $out, $err) = $source->psql('postgres', 'SELECT 1',
		connstr => "$tcp user=bunny_src");
	isnt($ret, 0, 'source refuses bunny_src over TCP without a password');
	($ret, $out, $err) = $source->psql('postgres', 'SELECT current_user',
		connstr => "$tcp user=bunny_src password=$PW");
	is($out, 'bunny_src', 'source accepts bunny_src over TCP with its password');
	($ret, $out, $err) = $source->psql('postgres', 'SELECT 1',
		connstr => 'host=' . $source->host . ' port=' . $source->port
		  . ' dbname=postgres user=bunny_src');
	isnt($ret, 0, 'source refuses bunny_src over the socket without a password');
}

# ---------------------------------------------------------------------------
# Destination roles
# ---------------------------------------------------------------------------

$dest->safe_psql(
	'postgres', q{
CREATE ROLE sec_admin LOGIN IN ROLE bunny_admin;
CREATE ROLE sec_monitor LOGIN IN ROLE bunny_monitor;
CREATE ROLE sec_nobody LOGIN;
});

# Run $sql on the destination as $role; returns (ret, stdout, stderr, sqlstate)
sub as_role
{
	my ($role, $sql) = @_;
	my ($ret, $out, $err) = $dest->psql(
		'postgres', "\\set VERBOSITY verbose\n$sql",
		extra_params => [ '-U', $role ]);
	my ($state) = $err =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return ($ret, $out, $err, $state // '');
}

# ---------------------------------------------------------------------------
# 1. non-superuser peer + mirror, over TCP with scram
# ---------------------------------------------------------------------------

my $good_ci = "$tcp user=bunny_src password=$PW connect_timeout=5";
my $bad_ci  = "$tcp user=bunny_src password=$BAD_PW connect_timeout=5";

my ($ret, $out, $err, $state) = as_role('sec_admin',
	'SELECT bunny.create_peer(' . sql_literal('srcpeer') . ', ' . sql_literal($good_ci) . ');');
is($ret, 0, 'bunny_admin member creates a validated peer with the password')
  or diag($err);

my @tables = ('public.accounts', $weird_table, $long_qual);
my $json = tables_json(@tables);
($ret, $out, $err, $state) = as_role('sec_admin',
	'SELECT bunny.create_mirror(' . sql_literal($mirror) . ", 'srcpeer', "
	  . sql_literal($json) . '::jsonb, do_initial_snapshot => true, max_batch_size => 200);');
is($ret, 0, 'bunny_admin member creates a mirror with an initial snapshot') or diag($err);
ok(wait_for_status($dest, $mirror, 'RUNNING', 120), 'mirror of the non-superuser peer RUNNING');
ok(wait_synced($source, $dest, $mirror, \@tables), 'initial snapshot equal');

# pg_stat_activity, sampled while the mirror works
my $pw_pat = "'%' || 'S3cr3t' || '%'";
my $bad_pat = "'%' || 'Wr0ng-Pw' || '%'";
my $activity_leaks = 0;
my $activity_samples = 0;
sub sample_activity
{
	foreach my $node ($source, $dest)
	{
		my $r = query_value($node,
			    "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
			  . "(coalesce(query, '') LIKE $pw_pat OR coalesce(application_name, '') LIKE $pw_pat "
			  . " OR coalesce(query, '') LIKE $bad_pat OR coalesce(application_name, '') LIKE $bad_pat)",
			timeout => 10);
		next unless defined $r;
		$activity_samples++;
		if ($r ne '0')
		{
			$activity_leaks++;
			diag('password visible in pg_stat_activity of ' . $node->name . ': '
				  . (query_value($node,
						"SELECT string_agg(format('%s/%s: %s', backend_type, application_name, left(query, 200)), E'\\n') "
					  . "FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
					  . "(coalesce(query, '') LIKE $pw_pat OR coalesce(application_name, '') LIKE $pw_pat "
					  . " OR coalesce(query, '') LIKE $bad_pat OR coalesce(application_name, '') LIKE $bad_pat)") // '?'));
		}
	}
	return;
}

# CDC with hostile names: insert, update (also of the odd columns), delete
$source->safe_psql(
	'postgres', qq{
INSERT INTO public.accounts SELECT g, g, 'cdc' FROM generate_series(2001, 2500) g;
UPDATE public.accounts SET balance = balance + 1, note = note || ' ''x'' ;--' WHERE id % 7 = 0;
DELETE FROM public.accounts WHERE id % 11 = 0;
INSERT INTO $weird_table SELECT g, E'neu\\n' || g, -g FROM generate_series(501, 700) g;
UPDATE $weird_table SET "cöl ümn" = 'geändert; DROP TABLE x; --', "Mixed ""Q"" col" = 0 WHERE id % 3 = 0;
DELETE FROM $weird_table WHERE id % 5 = 0;
INSERT INTO $long_qual SELECT g, 'cdc' FROM generate_series(301, 400) g;
UPDATE $long_qual SET v = NULL WHERE id % 4 = 0;
DELETE FROM $long_qual WHERE id % 9 = 0;
});
sample_activity();
ok(wait_synced($source, $dest, $mirror, \@tables), 'CDC with hostile names equal');
compare_tables($source, $dest, \@tables, 'after CDC');
is(table_shape($dest, $weird_table), table_shape($source, $weird_table),
	'table with hostile names has the same shape on the destination');
is($dest->safe_psql('postgres', 'SELECT count(*) FROM public.x'), '1',
	'destination table x still there');
is($source->safe_psql('postgres', 'SELECT count(*) FROM public.x'), '0',
	'source table x still there');
is( $dest->safe_psql('postgres',
		"SELECT count(*) FROM pg_class WHERE relname = '$long_table' AND relnamespace = '\"sch ema\"'::regnamespace"),
	'1', '63-byte table name kept exactly');
sample_activity();

# ---------------------------------------------------------------------------
# 2. provoked errors
# ---------------------------------------------------------------------------

# a wrong password, validated: fails, echoes nothing, stores nothing
($ret, $out, $err, $state) = as_role('sec_admin',
	'SELECT bunny.alter_peer(' . sql_literal('srcpeer') . ', ' . sql_literal($bad_ci) . ', validate => true);');
isnt($ret, 0, 'alter_peer with a wrong password and validate => true fails');
like($err, qr/password authentication failed|authentication/i,
	'the error carries libpq\'s message');
unlike($err, qr/Wr0ng-Pw|S3cr3t/, 'the error does not echo the password');
note("alter_peer error: $err");
is( $dest->safe_psql('postgres',
		"SELECT conninfo LIKE '%' || 'S3cr3t' || '%' FROM bunny.peer WHERE name = 'srcpeer'"),
	't', 'the old conninfo is kept');

# create_peer with a wrong password, validated: same
($ret, $out, $err, $state) = as_role('sec_admin',
	'SELECT bunny.create_peer(' . sql_literal('badpeer') . ', ' . sql_literal($bad_ci) . ');');
isnt($ret, 0, 'create_peer with a wrong password fails');
unlike($err, qr/Wr0ng-Pw|S3cr3t/, 'create_peer error does not echo the password');
is($dest->safe_psql('postgres', "SELECT count(*) FROM bunny.peer WHERE name = 'badpeer'"),
	'0', 'nothing stored');

# test_peer through a peer with a wrong password: the error column is clean
$dest->safe_psql('postgres',
	'SELECT bunny.create_peer(' . sql_literal('badpeer2') . ', ' . sql_literal($bad_ci) . ', validate => false);');
my $tp = $dest->safe_psql('postgres', "SELECT ok, error FROM bunny.test_peer('badpeer2')");
like($tp, qr/^f\|/, 'test_peer reports the failed login');
unlike($tp, qr/Wr0ng-Pw|S3cr3t/, 'test_peer error does not echo the password');
($ret, $out, $err) = $dest->psql('postgres', "SELECT * FROM bunny.peer_tables('badpeer2')");
isnt($ret, 0, 'peer_tables through a wrong password fails');
unlike($err, qr/Wr0ng-Pw|S3cr3t/, 'peer_tables error does not echo the password');
$dest->safe_psql('postgres', "SELECT bunny.drop_peer('badpeer2')");

# the mirror's peer gets a wrong password: the worker reconnects and fails
$dest->safe_psql('postgres',
	'SELECT bunny.alter_peer(' . sql_literal('srcpeer') . ', ' . sql_literal($bad_ci) . ', validate => false);');
# force a reconnect even if the worker would keep its open connection
$source->safe_psql('postgres',
	"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bunnydb:$mirror'");
$source->safe_psql('postgres', "INSERT INTO public.accounts VALUES (9001, 1, 'while failing')");
ok( poll_until(
		sub {
			sample_activity();
			my $r = query_value($dest,
				"SELECT error_count > 0 AND error_message IS NOT NULL FROM bunny.mirrors WHERE name = '$mirror'");
			return defined $r && $r eq 't';
		},
		60, 0.5),
	'the mirror records a connection error after the password became wrong')
  or dump_mirror_state($dest, $mirror);
my $errmsg = mirror_field($dest, $mirror, 'error_message') // '';
note("error_message: $errmsg");
like($errmsg, qr/auth|password|connect/i, 'error_message tells about the failed login');
unlike($errmsg, qr/Wr0ng-Pw|S3cr3t/, 'error_message does not contain the password');
ok( poll_until(
		sub {
			(query_value($dest,
					"SELECT count(*) FROM bunny.mirror_logs WHERE mirror = '$mirror' AND level = 'ERROR' "
				  . "AND created_at > now() - interval '5 minutes'") // 0) > 0;
		},
		30),
	'the connection error is logged in bunny.mirror_logs');
usleep(2_000_000);    # a few retries
sample_activity();

# back to the right password: the mirror recovers
$dest->safe_psql('postgres',
	'SELECT bunny.alter_peer(' . sql_literal('srcpeer') . ', ' . sql_literal($good_ci) . ');');
$dest->safe_psql('postgres', "SELECT bunny.retry_mirror('$mirror')");
$source->safe_psql('postgres', "UPDATE public.accounts SET note = 'after recovery' WHERE id = 9001");
ok(wait_for_status($dest, $mirror, 'RUNNING', 60), 'mirror RUNNING with the right password again');
ok(wait_synced($source, $dest, $mirror, \@tables), 'data equal after the password was fixed');
compare_tables($source, $dest, \@tables, 'after recovery');
sample_activity();

# ---------------------------------------------------------------------------
# Leak checks
# ---------------------------------------------------------------------------

my $peers = $dest->safe_psql('postgres', "SELECT conninfo FROM bunny.peers WHERE name = 'srcpeer'");
like($peers, qr/password=\*{8}/, 'bunny.peers masks the password');
unlike($peers, qr/S3cr3t|Wr0ng/, 'bunny.peers does not show the password');
($ret, $out, $err) = as_role('sec_monitor', 'SELECT name, conninfo FROM bunny.peers');
unlike($out, qr/S3cr3t|Wr0ng/, 'bunny.peers as bunny_monitor does not show the password');

is( $dest->safe_psql('postgres',
		"SELECT count(*) FROM bunny.mirror_logs WHERE message LIKE $pw_pat OR coalesce(details::text, '') LIKE $pw_pat "
	  . "OR message LIKE $bad_pat OR coalesce(details::text, '') LIKE $bad_pat"),
	'0', 'no password in bunny.mirror_logs (messages and details)');
note('mirror_logs rows checked: '
	  . $dest->safe_psql('postgres', 'SELECT count(*) FROM bunny.mirror_logs'));
is( $dest->safe_psql('postgres',
		"SELECT count(*) FROM bunny.mirror WHERE coalesce(error_message, '') LIKE $pw_pat OR coalesce(error_message, '') LIKE $bad_pat"),
	'0', 'no password in bunny.mirrors.error_message');
is( $dest->safe_psql('postgres',
		"SELECT count(*) FROM bunny.mirror_table WHERE coalesce(error_message, '') LIKE $pw_pat OR coalesce(error_message, '') LIKE $bad_pat"),
	'0', 'no password in bunny.mirror_tables.error_message');
my $status = $dest->safe_psql('postgres', "SELECT bunny.mirror_status('$mirror')::text");
unlike($status, qr/S3cr3t|Wr0ng/, 'no password in bunny.mirror_status()');

ok($activity_samples >= 10, "pg_stat_activity sampled on both sides ($activity_samples samples)");
is($activity_leaks, 0, 'no password in pg_stat_activity (query, application_name) on either side');

my $dlog = slurp_file($dest->logfile);
my @dleaks = grep { /S3cr3t|Wr0ng-Pw/ } split /\n/, $dlog;
is(scalar(@dleaks), 0, 'no password in the destination server log')
  or diag(join("\n", @dleaks[ 0 .. ($#dleaks > 9 ? 9 : $#dleaks) ]));
note('destination log lines about the failed login: '
	  . scalar(grep { /authentication failed/ } split /\n/, $dlog));
my $slog = slurp_file($source->logfile);
my @sleaks = grep { /S3cr3t|Wr0ng-Pw/ } split /\n/, $slog;
is(scalar(@sleaks), 0, 'no password in the source server log either')
  or diag(join("\n", @sleaks[ 0 .. ($#sleaks > 9 ? 9 : $#sleaks) ]));

# ---------------------------------------------------------------------------
# 3. roles
# ---------------------------------------------------------------------------

# bunny_monitor reads the views and status functions
foreach my $q (
	'SELECT count(*) FROM bunny.mirrors',
	'SELECT count(*) FROM bunny.mirror_tables',
	'SELECT count(*) FROM bunny.mirror_logs',
	'SELECT count(*) FROM bunny.peers',
	"SELECT count(*) FROM bunny.logs('$mirror')",
	"SELECT bunny.mirror_status('$mirror') IS NOT NULL")
{
	($ret, $out, $err, $state) = as_role('sec_monitor', $q);
	is($ret, 0, "bunny_monitor may run: $q") or diag($err);
}
# ... but cannot act, nor read the base tables
foreach my $q (
	"SELECT bunny.pause_mirror('$mirror')",
	"SELECT bunny.resume_mirror('$mirror')",
	"SELECT bunny.retry_mirror('$mirror')",
	"SELECT bunny.resync_mirror('$mirror')",
	"SELECT bunny.resync_table('$mirror', 'public.accounts')",
	"SELECT bunny.sync_schema('$mirror')",
	"SELECT count(*) FROM bunny.sync_sequences('$mirror')",
	"SELECT bunny.update_tables('$mirror', '[\"public.accounts\"]')",
	"SELECT bunny.drop_mirror('$mirror')",
	"SELECT bunny.create_mirror('m_mon', 'srcpeer', '[\"public.y\"]')",
	"SELECT bunny.create_peer('p_mon', 'host=h dbname=d', false)",
	"SELECT bunny.alter_peer('srcpeer', 'host=h dbname=d', false)",
	"SELECT bunny.drop_peer('srcpeer')",
	'SELECT count(*) FROM bunny.peer',
	'SELECT count(*) FROM bunny.mirror',
	'SELECT count(*) FROM bunny.mirror_table',
	"DELETE FROM bunny.mirror_logs",
	"SELECT * FROM bunny._remote_query('host=h', 'SELECT 1') AS r(x int)")
{
	($ret, $out, $err, $state) = as_role('sec_monitor', $q);
	is($state, '42501', "bunny_monitor gets 42501 for: $q") or diag($err);
}

# a role with neither reads nothing
foreach my $q (
	'SELECT count(*) FROM bunny.mirrors',
	'SELECT count(*) FROM bunny.mirror_tables',
	'SELECT count(*) FROM bunny.mirror_logs',
	'SELECT count(*) FROM bunny.peers',
	"SELECT count(*) FROM bunny.logs('$mirror')",
	"SELECT bunny.mirror_status('$mirror')",
	"SELECT bunny.wait_for_lsn('$mirror', '0/0', 0)",
	"SELECT * FROM bunny.test_peer('srcpeer')",
	"SELECT bunny.pause_mirror('$mirror')",
	"SELECT bunny.create_peer('p_no', 'host=h dbname=d', false)")
{
	($ret, $out, $err, $state) = as_role('sec_nobody', $q);
	is($state, '42501', "a role without bunny_* gets 42501 for: $q") or diag($err);
}
is(mirror_field($dest, $mirror, 'status'), 'RUNNING', 'mirror untouched by the refused calls');

# SECURITY DEFINER functions pin their search_path
is( $dest->safe_psql('postgres', q{
SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'bunny' AND p.prosecdef
   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')}),
	'0', 'every SECURITY DEFINER function of schema bunny pins search_path');
is( $dest->safe_psql('postgres', q{
SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'bunny' AND p.prosecdef
   AND EXISTS (SELECT 1 FROM unnest(p.proconfig) c
                WHERE c LIKE 'search_path=%' AND c NOT LIKE 'search_path=pg_catalog%')}),
	'0', 'and that search_path starts with pg_catalog');

# a non-superuser cannot use the server's trust: password required (2F003)
my $trust_ci = 'host=' . $source->host . ' port=' . $source->port . ' dbname=postgres';
($ret, $out, $err, $state) = as_role('sec_admin',
	'SELECT bunny.create_peer(' . sql_literal('trustpeer') . ', ' . sql_literal($trust_ci) . ');');
is($state, '2F003', 'bunny_admin member: password-less peer to a trusting server refused (2F003)')
  or diag($err);
like($err, qr/password is required/, '... with "password is required"');
($ret, $out, $err, $state) = as_role('sec_admin',
	'SELECT bunny.create_peer(' . sql_literal('trustpeer') . ', '
	  . sql_literal("$tcp user=postgres") . ');');
is($state, '2F003', 'same over TCP as another (trusted) user') or diag($err);
is($dest->safe_psql('postgres', "SELECT count(*) FROM bunny.peer WHERE name = 'trustpeer'"),
	'0', 'no trusting peer stored');
# a superuser's password-less peer cannot be borrowed by the admin either:
# repointing srcpeer to the trusting server as bunny_admin is refused
($ret, $out, $err, $state) = as_role('sec_admin',
	'SELECT bunny.alter_peer(' . sql_literal('srcpeer') . ', ' . sql_literal($trust_ci) . ');');
is($state, '2F003', 'alter_peer by bunny_admin to a trusting server refused (2F003)') or diag($err);

# ---------------------------------------------------------------------------
# final state
# ---------------------------------------------------------------------------

$source->safe_psql('postgres', "INSERT INTO $weird_table VALUES (100000, 'letzte ''Zeile''', 1)");
ok(wait_synced($source, $dest, $mirror, \@tables), 'still replicating at the end');
compare_tables($source, $dest, \@tables, 'final');
is($dest->safe_psql('postgres', 'SELECT count(*) FROM public.x'), '1', 'destination x intact at the end');

$dest->stop;
$source->stop;
done_testing();
