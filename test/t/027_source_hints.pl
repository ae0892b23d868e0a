# Copyright (c) bunnydb authors
#
# 027_source_hints: every error the source gives for a missing privilege
# or setting arrives with a hint naming the fix (README, "Source database"
# and "Troubleshooting"), and the mirror gets going once the fix is made.
# Each case makes the source refuse one thing, waits for the worker's error
# (or create_mirror's, for what it checks before creating anything), checks
# the hint in bunny.logs() names the statement to run, with the real role,
# schema, table and owner, applies exactly that fix (the statement taken
# from the hint where it has one), and checks the mirror reaches RUNNING:
#
#  * no CREATE on the database (the publication)      GRANT CREATE ON DATABASE
#  * not the table's owner (publishing it)             GRANT "Shop Owner" TO role,
#                                                      the table qualified
#  * no USAGE on the table's schema (publishing it)    GRANT USAGE ON SCHEMA "Sales"
#  * no SELECT on a column's sequence (its value,      GRANT SELECT ON public."Order No"
#    read by sync_sequences)
#  * no REPLICATION attribute (the WAL sender)         ALTER ROLE ... REPLICATION
#  * no SELECT on a table (checked up front)           GRANT SELECT ON ...
#  * the mapped table missing (checked up front)       create it
#  * pg_hba.conf rejecting the role                    a pg_hba.conf line, reload
#  * wal_level = replica                               wal_level = logical
#  * max_wal_senders used up                           raise max_wal_senders
#  * max_replication_slots used up                     raise it or drop a slot
#
# Before any mirror, the refusals of create_peer's validation, where
# nothing is stored yet: a wrong password and a wrong port each get a hint
# naming create_peer (and alter_peer, for a peer that exists), and calling
# create_peer again with the right value works; alter_peer with a wrong
# password gets the same hint, and alter_peer with the right one works.
# And a SELECT refused inside a transaction (as the initial copy's COPY
# would be, run here through the internal bunny._remote_query): the
# transaction is rolled back to look up the table's schema for the hint.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;
use PostgreSQL::Test::Utils;
use Test::More;

my ($source, $dest) = setup_pair(peer => undef);

# the newest ERROR of a mirror's log, as "message | hint"
sub last_error
{
	my ($mirror) = @_;
	return $dest->safe_psql('postgres',
		"SELECT message || ' | ' || coalesce(details->>'hint', '(no hint)') "
		  . "FROM bunny.logs(" . sql_literal($mirror) . ", 'ERROR', \"limit\" => 1)");
}

# wait until the mirror's newest error matches $re; returns it
sub wait_error
{
	my ($mirror, $re) = @_;
	my $seen = '';
	for (1 .. 120)
	{
		$seen = last_error($mirror);
		return $seen if $seen =~ $re;
		sleep 1;
	}
	diag("last error of $mirror: $seen");
	return $seen;
}

sub peer_for
{
	my ($peer, $role) = @_;
	$dest->safe_psql('postgres',
		"SELECT bunny.create_peer(" . sql_literal($peer) . ', '
		  . sql_literal($source->connstr('postgres') . " user=$role")
		  . ', validate => false)');
}

# one case: mirror $name of table $table through peer $peer (made for
# $role unless given).  The refusal must match $msg_re and its hint
# $hint_re, whether create_mirror refuses up front (what it checks before
# creating anything) or the worker meets it (bunny.logs()).  Then $fix
# runs and the mirror, created again or retried, must reach RUNNING.
sub hint_case
{
	my (%c) = @_;
	my $name = $c{name};
	my $peer = $c{peer} // "p_$name";
	peer_for($peer, $c{role}) if $c{role};
	my ($rc, $out, $err) = $dest->psql('postgres',
		"SELECT bunny.create_mirror(" . sql_literal($name) . ', ' . sql_literal($peer) . ', '
		  . sql_literal(tables_json($c{table})) . "::jsonb, do_initial_snapshot => false)");
	my $up_front = $rc != 0;
	if ($up_front)
	{
		$err =~ s/\n(HINT|DETAIL):\s+/ | /g;
	}
	else
	{
		$err = wait_error($name, $c{msg_re});
	}
	like($err, $c{msg_re}, "$name: the source's refusal is the error"
		  . ($up_front ? ' of create_mirror' : ' of the mirror'));
	like($err, $c{hint_re}, "$name: its hint names the fix");
	# what hint_re captures, the statement to run, goes to the fix
	$c{fix}->($err =~ $c{hint_re});
	if ($up_front)
	{
		ok(create_mirror($dest, $name, [ $c{table} ], peer => $peer), "$name: created after the fix");
	}
	else
	{
		$dest->safe_psql('postgres', "SELECT bunny.retry_mirror(" . sql_literal($name) . ")");
		ok(wait_for_status($dest, $name, 'RUNNING', 90), "$name: running after the fix");
	}
	$dest->safe_psql('postgres', "SELECT bunny.drop_mirror(" . sql_literal($name) . ")")
	  unless $c{keep};
}

# run on the source the statement a hint named (hint_re's capture)
sub run_from_hint
{
	my ($sql) = @_;
	if (!defined $sql)
	{
		fail('the hint names a statement to run');
		return;
	}
	$source->safe_psql('postgres', $sql);
}

# a statement of psql's stderr with its hint: "message | hint"
sub psql_error
{
	my ($sql) = @_;
	my ($rc, $out, $err) = $dest->psql('postgres', $sql);
	$err =~ s/\n(HINT|DETAIL):\s+/ | /g;
	return ($rc, $err);
}

sub peer_count
{
	my ($peer) = @_;
	return $dest->safe_psql('postgres',
		'SELECT count(*) FROM bunny.peer WHERE name = ' . sql_literal($peer));
}

# create_peer with a wrong password stores nothing: its hint must not send
# the user to alter_peer alone
$source->safe_psql('postgres', q{
SET password_encryption = 'scram-sha-256';
CREATE ROLE r_pw LOGIN REPLICATION PASSWORD 'right-pw';
});
my $old_hba_pw = hba_for_role($source, 'r_pw', 'scram-sha-256');
my $pw_base = $source->connstr('postgres') . ' user=r_pw';
my $pw_hint = qr/ \| Correct the password in the connection string \(bunny\.create_peer\(\) for a new peer, bunny\.alter_peer\(\) for an existing one\), or keep it in a password file the server reads/;
my ($rc, $err) = psql_error("SELECT bunny.create_peer('p_pw', "
	  . sql_literal("$pw_base password=wrong-pw") . ')');
isnt($rc, 0, 'create_peer with a wrong password fails');
like($err, qr/password authentication failed for user "r_pw"/, 'create_peer: the source refused the password');
like($err, $pw_hint, 'create_peer: the hint names create_peer for a new peer');
is(peer_count('p_pw'), '0', 'create_peer: nothing was stored');
$dest->safe_psql('postgres', "SELECT bunny.create_peer('p_pw', "
	  . sql_literal("$pw_base password=right-pw") . ')');
is(peer_count('p_pw'), '1', 'create_peer: called again with the right password, it works');
($rc, $err) = psql_error("SELECT bunny.alter_peer('p_pw', "
	  . sql_literal("$pw_base password=wrong-pw") . ')');
like($err, $pw_hint, 'alter_peer with a wrong password: the same hint, naming alter_peer');
($rc, $err) = psql_error("SELECT bunny.alter_peer('p_pw', "
	  . sql_literal("$pw_base password=right-pw") . ')');
is($rc, 0, 'alter_peer with the right password works');
$dest->safe_psql('postgres', "SELECT bunny.drop_peer('p_pw')");
hba_restore($source, $old_hba_pw);

# the same for a port nobody listens on
my $free_port = PostgreSQL::Test::Cluster::get_free_port();
($rc, $err) = psql_error("SELECT bunny.create_peer('p_port', "
	  . sql_literal("host=127.0.0.1 port=$free_port dbname=postgres connect_timeout=10") . ')');
isnt($rc, 0, 'create_peer with a wrong port fails');
like($err, qr/Connection refused/, 'create_peer: the connection was refused');
like($err, qr/ \| Check host and port in the connection string \(bunny\.create_peer\(\) for a new peer, bunny\.alter_peer\(\) for an existing one\), and that the source is running/,
	'create_peer: the hint names create_peer for a new peer');
is(peer_count('p_port'), '0', 'create_peer: nothing was stored for the wrong port');
$dest->safe_psql('postgres', "SELECT bunny.create_peer('p_port', "
	  . sql_literal($source->connstr('postgres')) . ')');
is(peer_count('p_port'), '1', 'create_peer: called again with the right host and port, it works');
$dest->safe_psql('postgres', "SELECT bunny.drop_peer('p_port')");

# and for a socket directory with no server in it
($rc, $err) = psql_error("SELECT bunny.create_peer('p_sock', "
	  . sql_literal("host=/tmp/no-such-socket-dir port=$free_port dbname=postgres") . ')');
isnt($rc, 0, 'create_peer with a wrong socket directory fails');
like($err, qr/ \| Check host \(the socket directory\) and port in the connection string \(bunny\.create_peer\(\) for a new peer/,
	'create_peer: the hint names the socket directory');
is(peer_count('p_sock'), '0', 'create_peer: nothing was stored for the wrong socket directory');

$source->safe_psql('postgres', q{
CREATE TABLE t_create (id int PRIMARY KEY);
CREATE ROLE "Shop Owner" NOLOGIN;
CREATE TABLE t_owner (id int PRIMARY KEY);
ALTER TABLE t_owner OWNER TO "Shop Owner";
CREATE TABLE t_repl (id int PRIMARY KEY);
CREATE TABLE t_select (id int PRIMARY KEY);
CREATE TABLE t_conf (id int PRIMARY KEY);
CREATE ROLE r_nocreate LOGIN REPLICATION;
ALTER TABLE t_create OWNER TO r_nocreate;
CREATE ROLE r_notowner LOGIN REPLICATION;
GRANT CREATE ON DATABASE postgres TO r_notowner;
GRANT SELECT ON t_owner TO r_notowner;
CREATE ROLE r_norepl LOGIN;
GRANT CREATE ON DATABASE postgres TO r_norepl;
ALTER TABLE t_repl OWNER TO r_norepl;
CREATE ROLE r_noselect LOGIN REPLICATION;
GRANT CREATE ON DATABASE postgres TO r_noselect;
ALTER TABLE t_select OWNER TO r_noselect;
REVOKE SELECT ON t_select FROM r_noselect;
CREATE ROLE r_noschema LOGIN REPLICATION;
GRANT CREATE ON DATABASE postgres TO r_noschema;
CREATE SCHEMA "Sales";
CREATE TABLE "Sales".t_schema (id int PRIMARY KEY);
ALTER TABLE "Sales".t_schema OWNER TO r_noschema;
CREATE ROLE r_noseq LOGIN REPLICATION;
GRANT CREATE ON DATABASE postgres TO r_noseq;
CREATE SEQUENCE public."Order No";
CREATE TABLE t_seq (id bigint PRIMARY KEY DEFAULT nextval('public."Order No"'));
ALTER TABLE t_seq OWNER TO r_noseq;
INSERT INTO t_seq DEFAULT VALUES;
CREATE ROLE r_missing LOGIN REPLICATION;
GRANT CREATE ON DATABASE postgres TO r_missing;
});

hint_case(
	name    => 'no_create',
	role    => 'r_nocreate',
	table   => 'public.t_create',
	msg_re  => qr/permission denied for database postgres/,
	hint_re => qr/GRANT CREATE ON DATABASE postgres TO r_nocreate/,
	fix => sub { $source->safe_psql('postgres', 'GRANT CREATE ON DATABASE postgres TO r_nocreate') });

hint_case(
	name    => 'not_owner',
	role    => 'r_notowner',
	table   => 'public.t_owner',
	msg_re  => qr/must be owner of table t_owner/,
	hint_re => qr/ \| Only an owner may publish a table: on the source, make r_notowner the owner of public\.t_owner or a member of its owning role \((GRANT "Shop Owner" TO r_notowner)\), or give the peer a superuser\./,
	fix => \&run_from_hint);

hint_case(
	name    => 'no_schema',
	role    => 'r_noschema',
	table   => '"Sales".t_schema',
	msg_re  => qr/permission denied for schema Sales/,
	hint_re => qr/ \| Run (GRANT USAGE ON SCHEMA "Sales" TO r_noschema) on the source\./,
	fix => \&run_from_hint);

# sync_sequences reads the source's value of the sequence a column's
# default names (README, "Switching over to the destination")
peer_for('p_no_seq', 'r_noseq');
ok(create_mirror($dest, 'no_seq', ['public.t_seq'], peer => 'p_no_seq'), 'no_seq: running');
my $seq_hint = qr/ \| Run (GRANT SELECT ON public\."Order No" TO r_noseq) on the source \(GRANT SELECT ON ALL SEQUENCES IN SCHEMA public for a whole schema\)\./;
($rc, $err) = psql_error("SELECT * FROM bunny.sync_sequences('no_seq')");
like($err, qr/permission denied for sequence Order No/, 'no_seq: the source\'s refusal is the error of sync_sequences');
like($err, $seq_hint, 'no_seq: its hint names the fix');
run_from_hint($err =~ $seq_hint);
is($dest->safe_psql('postgres', "SELECT source_value FROM bunny.sync_sequences('no_seq')"),
	'1', 'no_seq: sync_sequences takes over the value after the fix');
$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('no_seq')");

hint_case(
	name    => 'no_repl',
	role    => 'r_norepl',
	table   => 'public.t_repl',
	msg_re  => qr/replication role|REPLICATION/,
	hint_re => qr/ALTER ROLE r_norepl REPLICATION/,
	fix => sub { $source->safe_psql('postgres', 'ALTER ROLE r_norepl REPLICATION') });

hint_case(
	name    => 'no_select',
	role    => 'r_noselect',
	table   => 'public.t_select',
	msg_re  => qr/permission denied for source table public\.t_select/,
	hint_re => qr/Run GRANT SELECT ON public\.t_select TO r_noselect on the source/,
	fix => sub { $source->safe_psql('postgres', 'GRANT SELECT ON t_select TO r_noselect') });

hint_case(
	name    => 'missing',
	role    => 'r_missing',
	table   => 'public.t_missing',
	msg_re  => qr/source table public\.t_missing does not exist/,
	hint_re => qr/ \| Create the table on the source, or check the mapping: an unquoted name is folded to lower case, and an unqualified one means schema public\.(\n|$)/,
	fix => sub {
		$source->safe_psql('postgres',
			'CREATE TABLE t_missing (id int PRIMARY KEY); ALTER TABLE t_missing OWNER TO r_missing');
	});

# a SELECT refused inside a transaction, as the initial copy's COPY (in
# the snapshot's transaction) would be: the hint still names the schema
$source->safe_psql('postgres', q{
CREATE TABLE "Sales".t_tx (id int PRIMARY KEY);
GRANT USAGE ON SCHEMA "Sales" TO r_noselect;
});
my $tx_query = "SELECT n FROM bunny._remote_query("
  . sql_literal($source->connstr('postgres') . ' user=r_noselect')
  . ", 'BEGIN; SELECT count(*) FROM \"Sales\".t_tx') AS r(n bigint)";
($rc, $err) = psql_error($tx_query);
like($err, qr/permission denied for table t_tx/, 'in a transaction: the source refused the SELECT');
my $tx_hint = qr/ \| Run (GRANT SELECT ON "Sales"\.t_tx TO r_noselect) on the source \(GRANT SELECT ON ALL TABLES IN SCHEMA "Sales" for a whole schema\)\./;
like($err, $tx_hint, 'in a transaction: the hint names the table with its schema');
run_from_hint($err =~ $tx_hint);
is($dest->safe_psql('postgres', $tx_query), '0', 'in a transaction: the SELECT works after the fix');

# pg_hba.conf rejecting the role
$source->safe_psql('postgres', 'CREATE ROLE r_hba LOGIN REPLICATION SUPERUSER');
my $old_hba = hba_for_role($source, 'r_hba', 'reject');
hint_case(
	name    => 'hba',
	role    => 'r_hba',
	table   => 'public.t_conf',
	msg_re  => qr/pg_hba\.conf/,
	hint_re => qr/pg_hba\.conf.*reload/,
	fix => sub { hba_restore($source, $old_hba) });

# settings of the source: each needs a restart, and the peer is the
# source's superuser
$dest->safe_psql('postgres',
	"SELECT bunny.create_peer('p_conf', " . sql_literal($source->connstr('postgres')) . ')');

sub restart_with
{
	my ($conf) = @_;
	$source->append_conf('postgresql.conf', $conf);
	$source->restart;
}

restart_with("wal_level = replica\n");
hint_case(
	name    => 'walconf',
	peer    => 'p_conf',
	table   => 'public.t_conf',
	msg_re  => qr/wal_level/,
	hint_re => qr/\|.*wal_level = logical/,
	fix => sub { restart_with("wal_level = logical\n") });

restart_with("max_wal_senders = 0\n");
hint_case(
	name    => 'senders',
	peer    => 'p_conf',
	table   => 'public.t_conf',
	msg_re  => qr/max_wal_senders/,
	hint_re => qr/\| Raise max_wal_senders on the source/,
	fix => sub { restart_with("max_wal_senders = 10\n") });

# every slot taken before the mirror asks for one
restart_with("max_replication_slots = 1\n");
$source->safe_psql('postgres',
	"SELECT pg_create_logical_replication_slot('squatter', 'pgoutput')");
hint_case(
	name    => 'slots',
	peer    => 'p_conf',
	table   => 'public.t_conf',
	keep    => 1,
	msg_re  => qr/replication slot/,
	hint_re => qr/\| Raise max_replication_slots on the source/,
	fix => sub { $source->safe_psql('postgres', "SELECT pg_drop_replication_slot('squatter')") });
$source->safe_psql('postgres', 'INSERT INTO t_conf SELECT generate_series(1, 100)');
ok(wait_synced($source, $dest, 'slots', ['public.t_conf']), 'and streams');
compare_tables($source, $dest, ['public.t_conf'], 'after the fixes');
$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('slots')");
$source->stop;
$dest->stop;
done_testing();
