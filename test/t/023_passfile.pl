# Copyright (c) bunnydb authors
#
# 023_passfile: keeping the source's password out of the destination's
# server log (README, "Roles and privileges": "Keeping the password out of
# the server log").  PostgreSQL logs the text of a statement that fails
# (log_min_error_statement = error), so a create_peer whose conninfo
# carries a password and fails puts the password into the server log.
#
#  * shown: a failing create_peer with password=... lands in the log
#  * recipe 1: SET log_min_error_statement = panic (and log_statement =
#    none where statements are logged) for the session keeps a failing
#    statement out of the log
#  * recipe 2: no password in the conninfo at all: a superuser's peer
#    names a password file (passfile=...) that the destination server
#    reads; the source asks for the password (scram-sha-256), the mirror
#    copies and streams, and the password is in no log, view or catalog

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Cwd ();

my ($source, $dest) = setup_pair(peer => undef);
my $secret = 'pw-' . int(rand(1e9));

# the source asks this role for its password, on every connection
$source->safe_psql('postgres', qq{
SET password_encryption = 'scram-sha-256';
CREATE ROLE bunny_src LOGIN REPLICATION PASSWORD '$secret';
GRANT CREATE ON DATABASE postgres TO bunny_src;
CREATE TABLE pf (id int PRIMARY KEY, v text);
ALTER TABLE pf OWNER TO bunny_src;
INSERT INTO pf SELECT g, 'v' || g FROM generate_series(1, 100) g;
});
hba_for_role($source, 'bunny_src', 'scram-sha-256');

my $base = 'host=' . $source->host . ' port=' . $source->port . ' dbname=postgres user=bunny_src';

# a failing statement carrying a password is logged with its text
my $log_offset = -s $dest->logfile;
my ($ret) = $dest->psql('postgres',
	"SELECT bunny.create_peer('Bad Name', " . sql_literal("$base password=$secret") . ')');
isnt($ret, 0, 'a create_peer that fails');
like(slurp_file($dest->logfile, $log_offset), qr/\Q$secret\E/,
	'PostgreSQL logs the failing statement, password and all');

# recipe 1: not for this session (the test clusters also log every
# statement, log_statement = all, which the recipe turns off as well)
$log_offset = -s $dest->logfile;
($ret) = $dest->psql('postgres',
	"SET log_statement = none; SET log_min_error_statement = panic; "
	  . "SELECT bunny.create_peer('Bad Name', "
	  . sql_literal("$base password=$secret") . ')');
isnt($ret, 0, 'the same failing create_peer');
unlike(slurp_file($dest->logfile, $log_offset), qr/\Q$secret\E/,
	'with log_min_error_statement = panic and log_statement = none the statement is not logged');

# recipe 2: a password file the destination server reads
my $passfile = Cwd::abs_path($dest->data_dir . '/..') . '/bunny.pgpass';
PostgreSQL::Test::Utils::append_to_file($passfile, "*:*:*:bunny_src:$secret\n");
chmod 0600, $passfile;

$log_offset = -s $dest->logfile;
$dest->safe_psql('postgres', "SELECT bunny.create_peer('nopw', " . sql_literal($base) . ', validate => false)');
my ($rc, $out, $err) = $dest->psql('postgres', "SELECT ok FROM bunny.test_peer('nopw')");
ok($rc != 0 || $out ne 't', 'without the password the source refuses the peer');

$dest->safe_psql('postgres',
	"SELECT bunny.create_peer('src', " . sql_literal("$base passfile=$passfile") . ')');
is($dest->safe_psql('postgres', "SELECT ok FROM bunny.test_peer('src')"), 't',
	'a peer naming a password file connects');
ok(create_mirror($dest, 'pf', ['public.pf'], do_initial_snapshot => 'true'), 'the mirror copies');
$source->safe_psql('postgres', "UPDATE pf SET v = 'changed' WHERE id <= 10; DELETE FROM pf WHERE id > 90");
ok(wait_synced($source, $dest, 'pf', ['public.pf']), 'and streams');
compare_tables($source, $dest, ['public.pf'], 'with a password file');

unlike(slurp_file($dest->logfile, $log_offset), qr/\Q$secret\E/,
	'the password file never puts the password into the log');
is($dest->safe_psql('postgres',
		"SELECT count(*) FROM bunny.peer WHERE conninfo LIKE " . sql_literal("%$secret%")),
	'0', 'nor into the catalog');

$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('pf')");
$source->stop;
$dest->stop;
done_testing();
