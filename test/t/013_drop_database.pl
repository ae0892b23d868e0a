# Copyright (c) bunnydb authors
#
# 013_drop_database: DROP DATABASE of a destination database that still has
# mirrors is refused (55006, the mirrors named), because their replication
# slots and publications would stay on the source and the slots would hold
# WAL there.  The check reads the target database's catalog through a
# short-lived worker, so it also holds for a FAILED mirror (no worker), for
# DROP DATABASE ... WITH (FORCE) and for a database that no longer allows
# connections; a standby of the destination gives its usual read-only
# error at once.  Once the mirrors are dropped, DROP DATABASE goes through and
# nothing of them is left on the source; databases without mirrors (with or
# without the extension) are dropped as usual.  DROP OWNED BY the
# extension's owner, which drops the extension, is refused like DROP
# EXTENSION while mirrors exist.  When the check cannot be made (no worker
# can be started, or the worker fails: here it times out on a lock held on
# the mirror catalog), DROP DATABASE warns and goes on.  Runs in about
# 15 s.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my ($source, $dest) = setup_pair(peer => '');

$source->safe_psql('postgres', <<'EOS');
CREATE TABLE t (id int PRIMARY KEY, v text);
CREATE TABLE full_one (id int PRIMARY KEY);
INSERT INTO t VALUES (1, 'a');
INSERT INTO full_one VALUES (1);
EOS

# the mirrors live in database appdb, the DROP DATABASE runs from postgres
$dest->safe_psql('postgres', 'CREATE DATABASE appdb');
sub app { return $dest->safe_psql('appdb', $_[0]); }
app('CREATE EXTENSION bunnydb');
app('SELECT bunny.create_peer(' . sql_literal('src') . ', '
	  . sql_literal($source->connstr('postgres')) . ')');
app('CREATE TABLE t (id int PRIMARY KEY, v text)');
app(q{SELECT bunny.create_mirror('live', 'src', '["public.t"]', do_initial_snapshot => false)});

sub app_status
{
	my ($name) = @_;
	return app("SELECT status FROM bunny.mirrors WHERE name = '$name'");
}
ok(poll_until(sub { app_status('live') eq 'RUNNING' }, 60, 0.2), 'mirror live RUNNING in appdb');

# the destination already has a row of full_one: the copy is refused, the
# mirror FAILED (a permanent error), and it has no worker (the row comes
# in create_mirror's transaction, after its own check, which would refuse
# the mapping at once)
app('CREATE TABLE full_one (id int PRIMARY KEY)');
app(q{BEGIN; SELECT bunny.create_mirror('stuck', 'src', '["public.full_one"]');
      INSERT INTO full_one VALUES (42); COMMIT;});
ok(poll_until(sub { app_status('stuck') eq 'FAILED' }, 60, 0.2), 'mirror stuck FAILED');

sub src_objects
{
	return $source->safe_psql('postgres',
		"SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bunny%') || '/' || "
		  . "(SELECT count(*) FROM pg_publication WHERE pubname LIKE 'bunny%')");
}
is(src_objects(), '2/2', 'both mirrors have a slot and a publication on the source');

# DROP DATABASE from another database, verbose: SQLSTATE, detail, hint
sub drop_appdb
{
	my ($how) = @_;
	my ($ret, $out, $err) = $dest->psql('postgres',
		"\\set VERBOSITY verbose\nDROP DATABASE appdb$how");
	return ($ret, $err);
}

my ($ret, $err) = drop_appdb('');
isnt($ret, 0, 'DROP DATABASE refused');
like($err, qr/ERROR:  55006: cannot drop database "appdb" while it has bunnydb mirrors/,
	'55006 and the message');
like($err, qr/DETAIL:  Mirrors live, stuck have replication slots and publications on their sources/,
	'the detail names both mirrors, the FAILED one too');
like($err, qr/HINT:  Connect to database "appdb" and drop the mirrors first with bunny.drop_mirror\(name\)/,
	'the hint says what to do');

($ret, $err) = drop_appdb(' WITH (FORCE)');
isnt($ret, 0, 'DROP DATABASE ... WITH (FORCE) refused too');
like($err, qr/55006: cannot drop database "appdb"/, 'same error with FORCE');

# the refused drops broke nothing: the mirror still replicates
$source->safe_psql('postgres', "INSERT INTO t VALUES (2, 'b')");
ok(poll_until(sub { app('SELECT count(*) FROM t WHERE id = 2') eq '1' }, 60, 0.2),
	'mirror live still applies changes after the refused drops');
is(app_status('live'), 'RUNNING', 'mirror live still RUNNING');

# a database that no longer allows connections is still checked
$dest->safe_psql('postgres', 'ALTER DATABASE appdb ALLOW_CONNECTIONS false');
($ret, $err) = drop_appdb('');
isnt($ret, 0, 'refused while appdb does not allow connections');
like($err, qr/55006: cannot drop database "appdb"/, 'same error');
$dest->safe_psql('postgres', 'ALTER DATABASE appdb ALLOW_CONNECTIONS true');

# a physical standby of the destination refuses DROP DATABASE as read-only
# at once (it could not start the check worker before its promotion)
$dest->backup('for_standby');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($dest, 'for_standby', has_streaming => 1);
$standby->start;
$dest->wait_for_catchup($standby, 'replay');
my ($sret, $sout, $serr, $stimed_out);
$sret = $standby->psql('postgres', 'DROP DATABASE appdb',
	stdout => \$sout, stderr => \$serr, timeout => 60, timed_out => \$stimed_out);
ok(!$stimed_out, 'DROP DATABASE on a standby does not wait for a worker');
like($serr, qr/cannot execute DROP DATABASE in a read-only transaction/,
	'the standby gives the usual read-only error');
$standby->stop;

# one mirror left, the FAILED one: still refused, singular detail
app(q{SELECT bunny.drop_mirror('live')});
($ret, $err) = drop_appdb('');
isnt($ret, 0, 'refused with only the FAILED mirror left');
like($err, qr/DETAIL:  Mirror stuck has a replication slot and a publication on its source/,
	'the detail names the FAILED mirror');
is(src_objects(), '1/1', 'the FAILED mirror still has its slot and publication on the source');

# no mirrors left: the drop goes through, nothing is left on the source
app(q{SELECT bunny.drop_mirror('stuck')});
($ret, $err) = drop_appdb('');
is($ret, 0, 'DROP DATABASE goes through once the mirrors are dropped') or diag($err);
is($dest->safe_psql('postgres', "SELECT count(*) FROM pg_database WHERE datname = 'appdb'"),
	'0', 'appdb is gone');
is(src_objects(), '0/0', 'no bunnydb slot or publication left on the source');

# databases without mirrors drop as usual
$dest->safe_psql('postgres', 'CREATE DATABASE with_ext');
$dest->safe_psql('with_ext', 'CREATE EXTENSION bunnydb');
$dest->safe_psql('postgres', 'CREATE DATABASE without_ext');
($ret, undef, $err) = $dest->psql('postgres', 'DROP DATABASE with_ext');
is($ret, 0, 'a database with the extension and no mirrors is dropped') or diag($err);
($ret, undef, $err) = $dest->psql('postgres', 'DROP DATABASE without_ext');
is($ret, 0, 'a database without the extension is dropped') or diag($err);
($ret, undef, $err) = $dest->psql('postgres', 'DROP DATABASE IF EXISTS no_such_db');
is($ret, 0, 'DROP DATABASE IF EXISTS of a missing database');
like($err, qr/database "no_such_db" does not exist, skipping/, 'with the usual notice');
($ret, undef, $err) = $dest->psql('postgres', 'DROP DATABASE no_such_db');
like($err, qr/database "no_such_db" does not exist/, 'a missing database gets the usual error');

# DROP OWNED BY the extension's owner would drop the extension: refused the
# same way while mirrors exist, and goes through once they are dropped
$dest->safe_psql('postgres', 'CREATE ROLE ext_owner SUPERUSER LOGIN');
$dest->safe_psql('postgres', 'CREATE DATABASE owndb');
sub own
{
	return $dest->safe_psql('owndb', $_[0], extra_params => [ '-U', 'ext_owner' ]);
}
own('CREATE EXTENSION bunnydb');
own('SELECT bunny.create_peer(' . sql_literal('src') . ', '
	  . sql_literal($source->connstr('postgres')) . ')');
own('CREATE TABLE t (id int PRIMARY KEY, v text)');
own(q{SELECT bunny.create_mirror('owned', 'src', '["public.t"]', do_initial_snapshot => false)});
ok(poll_until(sub { own(q{SELECT status FROM bunny.mirrors WHERE name = 'owned'}) eq 'RUNNING' }, 60, 0.2),
	'mirror owned RUNNING, extension owned by ext_owner');
($ret, undef, $err) = $dest->psql('owndb', "\\set VERBOSITY verbose\nDROP OWNED BY ext_owner",
	extra_params => [ '-U', 'ext_owner' ]);
isnt($ret, 0, 'DROP OWNED BY the extension owner refused');
like($err, qr/ERROR:  55006: cannot drop extension bunnydb while mirrors exist/, 'with the DROP EXTENSION error');
like($err, qr/DETAIL:  Mirror owned has a replication slot/, 'naming the mirror');
is(own(q{SELECT count(*) FROM bunny.mirrors WHERE name = 'owned'}), '1', 'the mirror is still there');
$dest->safe_psql('postgres', 'CREATE ROLE other_role');
($ret, undef, $err) = $dest->psql('owndb', 'DROP OWNED BY other_role');
is($ret, 0, 'DROP OWNED BY another role is not concerned') or diag($err);
own(q{SELECT bunny.drop_mirror('owned')});
($ret, undef, $err) = $dest->psql('owndb', 'DROP OWNED BY ext_owner',
	extra_params => [ '-U', 'ext_owner' ]);
is($ret, 0, 'DROP OWNED BY goes through once the mirror is dropped') or diag($err);
is($dest->safe_psql('owndb', "SELECT count(*) FROM pg_extension WHERE extname = 'bunnydb'"),
	'0', 'and it dropped the extension');
is(src_objects(), '0/0', 'no bunnydb slot or publication left on the source');

# A session in the database holding a lock on the mirror catalog does not
# hang DROP DATABASE ... WITH (FORCE): the check worker gives up after its
# lock timeout (5 s), and the drop warns that the check could not be made
# and goes on, ending that session as FORCE does.  Without the timeout the
# drop would wait for as long as the session keeps its transaction open.
$dest->safe_psql('postgres', 'CREATE DATABASE lockdb');
$dest->safe_psql('lockdb', 'CREATE EXTENSION bunnydb');
my $holder = $dest->background_psql('lockdb', on_error_stop => 0);
$holder->query_safe('BEGIN; LOCK TABLE bunny.mirror IN ACCESS EXCLUSIVE MODE');
my $log_offset = -s $dest->logfile;
my $drop_timed_out = 0;
($ret, undef, $err) = $dest->psql('postgres',
	"\\set VERBOSITY verbose\nDROP DATABASE lockdb WITH (FORCE)",
	timeout => 60, timed_out => \$drop_timed_out);
ok(!$drop_timed_out, 'a lock held on bunny.mirror does not hang DROP DATABASE ... WITH (FORCE)');
is($ret, 0, 'the drop goes through') or diag($err);
like($err, qr/WARNING:  XX000: could not check database "lockdb" for bunnydb mirrors/,
	'with a warning that the check could not be made');
like($err, qr/DETAIL:  The checking worker ended without an answer; the server log has its error/,
	'saying that the check worker failed');
like($err, qr/HINT:  If the database had mirrors, their replication slots/,
	'and what would be left on the sources');
ok($dest->log_contains(qr/canceling statement due to lock timeout/, $log_offset),
	'the server log has the check worker\'s lock timeout');
is($dest->safe_psql('postgres', "SELECT count(*) FROM pg_database WHERE datname = 'lockdb'"),
	'0', 'database lockdb is gone');
eval { $holder->quit; };

# When the check cannot be made, the drop is not blocked: a destination
# whose only background worker slot is the launcher's cannot start the
# check worker, so DROP DATABASE warns and goes on.  (The mirror there never
# ran: setup needs a worker too, so nothing of it is on the source.)
my $small = PostgreSQL::Test::Cluster->new('dest_small');
$small->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$small->append_conf('postgresql.conf',
	"shared_preload_libraries = 'bunnydb'\nmax_worker_processes = 1\n");
$small->start;
$small->safe_psql('postgres', 'CREATE DATABASE appdb');
$small->safe_psql('appdb', 'CREATE EXTENSION bunnydb');
$small->safe_psql('appdb', 'SELECT bunny.create_peer(' . sql_literal('src') . ', '
	  . sql_literal($source->connstr('postgres')) . ')');
$small->safe_psql('appdb',
	q{SELECT bunny.create_mirror('never_ran', 'src', '["public.t"]', do_initial_snapshot => false)});
# In a transaction block the statement's own error comes first, before any
# check: no warning about a worker that could not start.
($ret, undef, $err) = $small->psql('postgres',
	"\\set VERBOSITY verbose\nBEGIN;\nDROP DATABASE appdb;\nCOMMIT;");
like($err, qr/ERROR:  25001: DROP DATABASE cannot run inside a transaction block/,
	'DROP DATABASE in a transaction block gets its usual error (25001)');
unlike($err, qr/could not check database/, 'without trying to check the database first');
is($small->safe_psql('postgres', "SELECT count(*) FROM pg_database WHERE datname = 'appdb'"),
	'1', 'and the database is still there');
($ret, undef, $err) = $small->psql('postgres', "\\set VERBOSITY verbose\nDROP DATABASE appdb");
is($ret, 0, 'without a free worker slot the drop goes through');
like($err, qr/WARNING:  53400: could not check database "appdb" for bunnydb mirrors/,
	'with a warning that the check could not be made (53400)');
like($err, qr/DETAIL:  No background worker slot was free/, 'saying why');
like($err, qr/HINT:  If the database had mirrors, their replication slots/,
	'and what would be left on the sources');
$small->stop;

done_testing();
