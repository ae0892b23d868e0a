# Copyright (c) bunnydb authors
#
# 006_install: CREATE EXTENSION refuses to run without
# shared_preload_libraries, with a hint saying so, and leaves nothing behind.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('nopreload');
$node->init;
$node->start;

my ($ret, $stdout, $stderr) =
  $node->psql('postgres', 'CREATE EXTENSION bunnydb', extra_params => [ '-v', 'VERBOSITY=verbose' ]);
isnt($ret, 0, 'CREATE EXTENSION fails without shared_preload_libraries');
like($stderr, qr/55000/, 'SQLSTATE 55000');
like($stderr, qr/bunnydb must be loaded via shared_preload_libraries/, 'message says why');
like($stderr, qr/HINT:.*shared_preload_libraries/, 'hint says what to do');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_namespace WHERE nspname = 'bunny'"),
	'0', 'nothing is left behind');

$node->append_conf('postgresql.conf', "shared_preload_libraries = 'bunnydb'\n");
$node->restart;
$node->safe_psql('postgres', 'CREATE EXTENSION bunnydb');
is($node->safe_psql('postgres',
		"SELECT extversion FROM pg_extension WHERE extname = 'bunnydb'"),
	'0.5.0', 'installs once preloaded');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'bunnydb launcher'"),
	'the launcher runs');

$node->stop;
done_testing();
