# Copyright (c) bunnydb authors
#
# 018_source_guard: a mirror never makes a statement on the source fail,
# and shapes it cannot carry are refused up front (README "Requirements",
# "Table mappings").  create_mirror and update_tables refuse each such
# mapping at once, with the SQLSTATE, an error naming the table and a hint;
# nothing is created on the source (no publication, no slot) or the
# destination, and the application's UPDATE and DELETE on the source still
# work.  An unreachable source is left to the worker.
#
# Also: destination object names that collide with existing relations
# (destination_table next to a table holding the source's constraint,
# index and sequence names) get names of their own; and a mirror that
# failed while update_tables' copy was pending can be retried, paused and
# resumed (README "Troubleshooting").

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;
use PostgreSQL::Test::Utils;
use Test::More;

my ($source, $dest) = setup_pair();

$source->safe_psql('postgres', q{
CREATE TABLE p (a int, b text) PARTITION BY LIST (a);
CREATE TABLE p1 PARTITION OF p DEFAULT;
ALTER TABLE p REPLICA IDENTITY FULL;
INSERT INTO p VALUES (1, 'one'), (2, 'two');

CREATE TABLE full_t (id int, c text, d text);
ALTER TABLE full_t REPLICA IDENTITY FULL;
INSERT INTO full_t VALUES (1, 'x', 'y');

CREATE TABLE ri_idx (id int NOT NULL, c int NOT NULL, d text);
CREATE UNIQUE INDEX ri_idx_key ON ri_idx (id, c);
ALTER TABLE ri_idx REPLICA IDENTITY USING INDEX ri_idx_key;
INSERT INTO ri_idx VALUES (1, 1, 'z');

CREATE UNLOGGED TABLE unlogged_t (id int PRIMARY KEY);
CREATE TABLE base_t (id int PRIMARY KEY, v text);
CREATE MATERIALIZED VIEW mv AS SELECT * FROM base_t;
CREATE TABLE no_cols ();
ALTER TABLE no_cols REPLICA IDENTITY FULL;
INSERT INTO no_cols DEFAULT VALUES;

CREATE TABLE q (a int PRIMARY KEY, b text) PARTITION BY RANGE (a);
CREATE TABLE q1 PARTITION OF q FOR VALUES FROM (0) TO (100);
});

# The source's own workload on every table involved: must keep working.
sub source_writes_work
{
	my ($label) = @_;
	my ($ret, $out, $err) = $source->psql('postgres', q{
BEGIN;
UPDATE p SET b = b || '!';
DELETE FROM p WHERE a = 2;
UPDATE full_t SET d = 'y2';
UPDATE ri_idx SET d = 'z2';
DELETE FROM ri_idx WHERE false;
ROLLBACK;
}, on_error_stop => 1);
	is($ret, 0, "$label: UPDATE and DELETE on the source still work")
	  or diag($err);
}

# Nothing of mirror $name on the source or the destination.
sub nothing_created
{
	my ($name, $dest_tables, $label) = @_;
	is($source->safe_psql('postgres',
			"SELECT count(*) FROM pg_publication WHERE pubname LIKE 'bunny_pub_$name%'"),
		'0', "$label: no publication on the source");
	is($source->safe_psql('postgres',
			"SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bunny_slot_$name%'"),
		'0', "$label: no slot on the source");
	foreach my $t (@$dest_tables)
	{
		is($dest->safe_psql('postgres', "SELECT to_regclass('$t') IS NULL"),
			't', "$label: no destination table $t");
	}
}

# create_mirror must refuse at once: the error, and nothing left anywhere
sub refused
{
	my ($name, $json, $pattern, $dest_tables, $label, $sqlstate) = @_;
	my ($ret, $out, $err) = $dest->psql('postgres',
		"\\set VERBOSITY verbose\nSELECT bunny.create_mirror('$name', 'src', '$json')");
	isnt($ret, 0, "$label: create_mirror refuses");
	like($err, $pattern, "$label: the error names the table and the cause");
	like($err, qr/ERROR:  $sqlstate:/, "$label: SQLSTATE $sqlstate") if $sqlstate;
	like($err, qr/HINT:  /, "$label: with a hint") unless $label =~ /without columns|partition next to/;
	is($dest->safe_psql('postgres', "SELECT count(*) FROM bunny.mirror WHERE name = '$name'"),
		'0', "$label: no mirror is left in the catalog");
	nothing_created($name, $dest_tables, $label);
	source_writes_work($label);
}

source_writes_work('before any mirror');

refused('g1', '["public.p"]',
	qr/partition public\.p1 of source table public\.p has no primary key and no usable replica identity/,
	['public.p'], 'partition without replica identity', '55000');
refused('g2', '[{"source_table": "public.full_t", "exclude_columns": ["c"]}]',
	qr/column "c" of source table public\.full_t is part of its replica identity and cannot be excluded/,
	['public.full_t'], 'excluded column of REPLICA IDENTITY FULL', '22023');
refused('g3', '[{"source_table": "public.ri_idx", "exclude_columns": ["c"]}]',
	qr/column "c" of source table public\.ri_idx is part of its replica identity/,
	['public.ri_idx'], 'excluded column of the replica identity index', '22023');
refused('g4', '["public.unlogged_t"]',
	qr/source table public\.unlogged_t is unlogged/,
	['public.unlogged_t'], 'unlogged table', '0A000');
refused('g5', '["public.mv"]',
	qr/source relation public\.mv is a materialized view, and only tables can be mirrored/,
	['public.mv'], 'materialized view', '42809');
refused('g6', '["public.no_cols"]',
	qr/source table public\.no_cols has no columns to replicate/,
	['public.no_cols'], 'table without columns', '0A000');
refused('g7', '["public.q", "public.q1"]',
	qr/source table public\.q1 is a partition of public\.q, which the mirror also maps/,
	['public.q', 'public.q1'], 'partition next to its partitioned table', '22023');
refused('g9', '["public.no_such_table"]',
	qr/source table public\.no_such_table does not exist/,
	['public.no_such_table'], 'missing table', '42P01');

# the hint names the fix; once the source is fixed the same call works
{
	my ($ret, $out, $err) = $dest->psql('postgres',
		q{SELECT bunny.create_mirror('g8', 'src', '["public.p"]', do_initial_snapshot => true)});
	like($err, qr/HINT:  .*ALTER TABLE public\.p1 REPLICA IDENTITY FULL/, 'the hint carries the fix');
	$source->safe_psql('postgres', 'ALTER TABLE p1 REPLICA IDENTITY FULL');
	ok(create_mirror($dest, 'g8', '["public.p"]', do_initial_snapshot => 'true'),
		'after the fix the mirror is created and runs');
	$source->safe_psql('postgres', "UPDATE p SET b = 'changed' WHERE a = 1; DELETE FROM p WHERE a = 2");
	ok(wait_synced($source, $dest, 'g8', ['public.p']), 'g8 caught up');
	compare_tables($source, $dest, ['public.p'], 'partitioned table with FULL identity');
	$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('g8')");
}

# a source that cannot be reached now is no reason to refuse: the worker
# reports it and retries
$dest->safe_psql('postgres',
	"SELECT bunny.create_peer('down', 'host=127.0.0.1 port=1 dbname=postgres', validate => false)");
ok(create_mirror($dest, 'later', '["public.p"]', peer => 'down', wait => 0),
	'create_mirror with an unreachable source is accepted');
ok(poll_until(sub { (mirror_field($dest, 'later', 'error_message') // '') =~ /could not connect/ }, 60),
	'the worker reports the unreachable source');
$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('later')");

# the same checks in update_tables: nothing changes
ok(create_mirror($dest, 'ut', ['public.base_t']), 'ut running');
$dest->safe_psql('postgres', "SELECT bunny.pause_mirror('ut')");
ok(wait_for_status($dest, 'ut', 'PAUSED', 30), 'ut paused');
{
	my ($ret, $out, $err) = $dest->psql('postgres',
		q{SELECT bunny.update_tables('ut', '["public.base_t", "public.unlogged_t"]')});
	like($err, qr/source table public\.unlogged_t is unlogged/, 'update_tables refuses an unlogged table');
	is($dest->safe_psql('postgres',
			"SELECT string_agg(source_table, ',') FROM bunny.mirror_table t JOIN bunny.mirror m ON m.id = t.mirror_id WHERE m.name = 'ut'"),
		'base_t', 'the table list is unchanged');
}
$dest->safe_psql('postgres', "SELECT bunny.resume_mirror('ut')");
ok(wait_for_status($dest, 'ut', 'RUNNING', 30), 'ut runs on');
$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('ut')");

# ---------------------------------------------------------------------------
# Destination names that are taken: a destination_table next to a table
# holding the source's constraint, index and sequence names.
# ---------------------------------------------------------------------------
$source->safe_psql('postgres', q{
CREATE TABLE t (id serial PRIMARY KEY, v text UNIQUE, w int);
CREATE INDEX t_w_idx ON t (w);
INSERT INTO t (v, w) SELECT 'v' || g, g FROM generate_series(1, 100) g;
});
$dest->safe_psql('postgres', q{
CREATE TABLE t (id serial PRIMARY KEY, v text UNIQUE, w int);
CREATE INDEX t_w_idx ON t (w);
INSERT INTO t (v, w) VALUES ('mine', 1);
});
my $before_seq = $dest->safe_psql('postgres', "SELECT pg_get_serial_sequence('public.t', 'id')");
ok(create_mirror($dest, 'names', '[{"source_table": "public.t", "destination_table": "public.t_copy"}]',
		do_initial_snapshot => 'true', timeout => 60),
	'a destination_table next to the source-named table reaches RUNNING');
is($dest->safe_psql('postgres', q{
SELECT string_agg(c.relname, ',' ORDER BY c.relname)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'public.t_copy'::regclass}),
	't_copy_idx,t_copy_key,t_copy_pkey',
	'its primary key, unique constraint and index got names of their own');
is($dest->safe_psql('postgres', "SELECT pg_get_serial_sequence('public.t', 'id')"),
	$before_seq, 'the existing table keeps its sequence');
isnt($dest->safe_psql('postgres', "SELECT pg_get_serial_sequence('public.t_copy', 'id')"),
	$before_seq, 'the new table has a sequence of its own');
is($dest->safe_psql('postgres', "SELECT count(*) FROM public.t"), '1', 'the existing table is untouched');
$source->safe_psql('postgres', "UPDATE t SET w = w + 1 WHERE id <= 10; DELETE FROM t WHERE id > 90");
is(wait_for_lsn($dest, 'names', source_lsn($source)), 't', 'caught up');
is($dest->safe_psql('postgres', "SELECT count(*), sum(w) FROM public.t_copy"),
	$source->safe_psql('postgres', "SELECT count(*), sum(w) FROM public.t"),
	't_copy equals the source');
$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('names')");

# ---------------------------------------------------------------------------
# A mirror that failed in the copy of a table update_tables added can be
# retried once the cause is gone (and paused and resumed).
# ---------------------------------------------------------------------------
$source->safe_psql('postgres', q{
CREATE TABLE u1 (id int PRIMARY KEY, v text);
CREATE TABLE u2 (id int PRIMARY KEY, v text);
INSERT INTO u1 SELECT g, 'a' FROM generate_series(1, 50) g;
INSERT INTO u2 SELECT g, 'b' FROM generate_series(1, 50) g;
});
$dest->safe_psql('postgres', q{
CREATE TABLE u2 (id int PRIMARY KEY, v text);
});
ok(create_mirror($dest, 'upd', ['public.u1'], do_initial_snapshot => 'true', timeout => 60), 'upd running');
sub update_tables
{
	my ($json, $fill) = @_;
	$fill //= 'u2';
	$dest->safe_psql('postgres', "SELECT bunny.pause_mirror('upd')");
	ok(wait_for_status($dest, 'upd', 'PAUSED', 30), 'paused for update_tables');
	# a row in the way arrives after update_tables has checked (which
	# refuses a table that has rows already)
	$dest->safe_psql('postgres', "BEGIN; SELECT bunny.update_tables('upd', '$json'); "
		  . "INSERT INTO $fill SELECT 1000, 'in the way' WHERE NOT EXISTS (SELECT 1 FROM $fill); COMMIT;");
	$dest->safe_psql('postgres', "SELECT bunny.resume_mirror('upd')");
}
update_tables('["public.u1", "public.u2"]');
ok(wait_for_status($dest, 'upd', 'FAILED', 60), 'adding a non-empty destination table fails the mirror');
like(mirror_field($dest, 'upd', 'error_message'), qr/not empty/, 'error says the table is not empty');

# pause and resume are not refused while the copy is pending
my ($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.pause_mirror('upd')");
is($ret, 0, 'pause_mirror works on the failed mirror') or diag($err);
ok(wait_for_status($dest, 'upd', 'PAUSED', 30), 'paused');
$dest->safe_psql('postgres', 'TRUNCATE public.u2');
($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.resume_mirror('upd')");
is($ret, 0, 'resume_mirror works') or diag($err);
ok(wait_for_status($dest, 'upd', 'RUNNING', 60), 'the pending copy goes on and the mirror runs');
$source->safe_psql('postgres', "UPDATE u2 SET v = 'c' WHERE id < 10");
ok(wait_synced($source, $dest, 'upd', ['public.u1', 'public.u2']), 'upd caught up');
compare_tables($source, $dest, ['public.u1', 'public.u2'], 'after resume');

# the same through retry_mirror, as the README's troubleshooting says
$source->safe_psql('postgres', q{
CREATE TABLE u3 (id int PRIMARY KEY, v text);
INSERT INTO u3 SELECT g, 'c' FROM generate_series(1, 20) g;
});
$dest->safe_psql('postgres', q{
CREATE TABLE u3 (id int PRIMARY KEY, v text);
INSERT INTO u3 VALUES (1000, 'in the way');
});
# rows there already: update_tables refuses the table, changing nothing
$dest->safe_psql('postgres', "SELECT bunny.pause_mirror('upd')");
ok(wait_for_status($dest, 'upd', 'PAUSED', 30), 'paused');
($ret, $out, $err) = $dest->psql('postgres',
	q{SELECT bunny.update_tables('upd', '["public.u1", "public.u2", "public.u3"]')});
like($err, qr/ERROR:  destination table public\.u3 is not empty\n.*\nHINT:  Empty the table, or map the source table to another destination table\./,
	'update_tables refuses a destination table with rows');
is($dest->safe_psql('postgres', "SELECT count(*) FROM bunny.mirror_tables WHERE mirror = 'upd'"), '2',
	'... and adds nothing');
$dest->safe_psql('postgres', "DELETE FROM u3; SELECT bunny.resume_mirror('upd')");
ok(wait_for_status($dest, 'upd', 'RUNNING', 30), 'resumed');
update_tables('["public.u1", "public.u2", "public.u3"]', 'u3');
ok(wait_for_status($dest, 'upd', 'FAILED', 60), 'fails again on u3');
$dest->safe_psql('postgres', 'TRUNCATE public.u3');
($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.retry_mirror('upd')");
is($ret, 0, 'retry_mirror works on a mirror that failed in update_tables') or diag($err);
ok(wait_for_status($dest, 'upd', 'RUNNING', 60), 'running after the retry');
ok(wait_synced($source, $dest, 'upd', ['public.u1', 'public.u2', 'public.u3']), 'caught up');
compare_tables($source, $dest, ['public.u1', 'public.u2', 'public.u3'], 'after retry');

# cancelled instead: the added table, never copied, is STALE and says so
$source->safe_psql('postgres', q{
CREATE TABLE u4 (id int PRIMARY KEY, v text);
INSERT INTO u4 SELECT g, 'd' FROM generate_series(1, 20) g;
});
$dest->safe_psql('postgres', 'CREATE TABLE u4 (id int PRIMARY KEY, v text)');
update_tables('["public.u1", "public.u2", "public.u3", "public.u4"]', 'u4');
ok(wait_for_status($dest, 'upd', 'FAILED', 60), 'fails on u4');
$dest->safe_psql('postgres', "SELECT bunny.cancel_operation('upd')");
is($dest->safe_psql('postgres', "SELECT status || ': ' || error_message FROM bunny.mirror_tables "
		  . "WHERE mirror = 'upd' AND source_table = 'public.u4'"),
	'STALE: not in sync: update_tables added it and its first copy was cancelled before it began; '
	  . 'changes are skipped until bunny.resync_table() copies it',
	'cancelled before its copy began: STALE, saying so');
is($dest->safe_psql('postgres', 'SELECT count(*) FROM u4'), '1', "u4's own row untouched");
$dest->safe_psql('postgres', "DELETE FROM u4; SELECT bunny.resync_table('upd', 'public.u4')");
ok(poll_until(sub { $dest->safe_psql('postgres',
		"SELECT status FROM bunny.mirror_tables WHERE mirror = 'upd' AND source_table = 'public.u4'") eq 'SYNCED' }, 60),
	'resync_table copies it');
ok(wait_synced($source, $dest, 'upd', ['public.u1', 'public.u4']), 'caught up');
compare_tables($source, $dest, ['public.u4'], 'after the resync');

$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('upd')");
$source->stop;
$dest->stop;
done_testing();
