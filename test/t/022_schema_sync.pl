# Copyright (c) bunnydb authors
#
# 022_schema_sync: sync_schema and resyncs after the source's schema
# changed (README "Operations": Schema, Resync).
#  1. a column added on the source of a table with exclude_columns: after
#     sync_schema the publication's column list takes it in, the table is
#     copied again (rows changed before have its value), and later values
#     arrive; the excluded column stays out;
#  2. an index on a table whose names hold spaces, dots and quotes, mapped
#     to another destination name: sync_schema creates it on the
#     destination table;
#  2b. replicate_indexes => false: sync_schema adds no secondary index;
#  2c. sync_schema of a paused mirror drops no column;
#  3. a column dropped on the source while the mirror still has changes
#     carrying it to apply: sync_schema waits for them, then drops it, and
#     a REPLICA IDENTITY FULL table keeps matching its rows;
#  4. an enum label added on the source, then a resync copying rows that
#     use it (the labels are taken over before the copy);
#  5. sync_schema while the worker applies a steady load to the same
#     tables: no deadlock, nothing lost;
#  5b. a NOT NULL column dropped on the source does not stop the inserts;
#  6. drop_mirror during a swap that keeps failing leaves no <table>_resync;
#  7. a snapshot worker replaced after another table of the same resync
#     finished can still import the resync's snapshot.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;
use PostgreSQL::Test::Utils;
use Test::More;

my ($source, $dest) = setup_pair();

src(q{
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE TABLE ex (id int PRIMARY KEY, keep text, secret text);
INSERT INTO ex SELECT g, 'k' || g, 's' || g FROM generate_series(1, 100) g;
CREATE SCHEMA "Odd. ""Schema""";
CREATE TABLE "Odd. ""Schema"""."my table" (id int PRIMARY KEY, "a b" int);
INSERT INTO "Odd. ""Schema"""."my table" SELECT g, g FROM generate_series(1, 50) g;
CREATE TABLE fullt (a int, b text, c text);
ALTER TABLE fullt REPLICA IDENTITY FULL;
INSERT INTO fullt SELECT g, 'b' || g, 'c' || g FROM generate_series(1, 200) g;
CREATE TABLE moods (id int PRIMARY KEY, m mood);
CREATE TABLE dropme (id int PRIMARY KEY, gone text);
INSERT INTO dropme SELECT g, 'g' FROM generate_series(1, 10) g;
INSERT INTO moods SELECT g, 'ok' FROM generate_series(1, 20) g;
});

my $mapping = q{[
 {"source_table": "public.ex", "exclude_columns": ["secret"]},
 {"source_table": "\"Odd. \"\"Schema\"\"\".\"my table\"", "destination_table": "public.odd_copy"},
 "public.fullt", "public.moods", "public.dropme"]};
ok(create_mirror($dest, 'ss', $mapping, do_initial_snapshot => 'true'), 'mirror running');
my @plain = ('public.fullt', 'public.moods');
ok(wait_synced($source, $dest, 'ss', \@plain), 'caught up');

# 1. a new column of a table with a column list
src("ALTER TABLE ex ADD COLUMN extra int DEFAULT 0");
src("UPDATE ex SET extra = id WHERE id <= 5");    # before sync_schema: not published yet
dst("SELECT bunny.sync_schema('ss')");
ok(wait_for_status($dest, 'ss', 'RUNNING', 60), 'running after sync_schema');
ok(poll_until(sub {
			src("UPDATE ex SET extra = id WHERE id <= 10");
			sleep 1;
			dst("SELECT count(*) FROM ex WHERE extra = id AND id <= 10") eq '10'
		}, 60),
	'values of the new column arrive once sync_schema took it into the publication');
is(dst("SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.ex'::regclass AND attname = 'secret'"),
	'0', 'the excluded column stays out');
like(dst("SELECT string_agg(message, ' ') FROM bunny.logs('ss', 'INFO')"),
	qr/column extra of public\.ex joins the publication's column list; the table is copied again/,
	'sync_schema says it copies the table again');
ok(poll_until(sub { dst("SELECT status || coalesce(pending_op, '-') FROM bunny.mirror WHERE name = 'ss'") eq 'RUNNING-' }, 90),
	'the copy is done');
is(dst("SELECT count(*) FROM ex WHERE extra IS DISTINCT FROM " . "(CASE WHEN id <= 10 THEN id ELSE 0 END)"),
	'0', 'every row has the value of the new column');

# 2. an index on names with spaces, dots and quotes
src(q{CREATE INDEX "odd idx" ON "Odd. ""Schema"""."my table" ("a b")});
dst("SELECT bunny.sync_schema('ss')");
is(dst(q{SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = 'public.odd_copy'::regclass AND c.relname = 'odd idx'}),
	'1', 'sync_schema created the index on the destination table');

# 2b. with replicate_indexes => false, sync_schema creates no secondary index
src(q{CREATE TABLE noidx (id int PRIMARY KEY, v int); CREATE INDEX noidx_v ON noidx (v)});
ok(create_mirror($dest, 'ni', ['public.noidx'], replicate_indexes => 'false'), 'mirror ni running');
src(q{CREATE INDEX noidx_v2 ON noidx (v, id)});
dst("SELECT bunny.sync_schema('ni')");
is(dst("SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = 'public.noidx'::regclass"),
	'noidx_pkey', 'sync_schema created no secondary index');
dst("SELECT bunny.drop_mirror('ni')");

# 2c. sync_schema of a paused mirror drops no column: its backlog may
#     still carry it
dst("SELECT bunny.pause_mirror('ss')");
ok(wait_for_status($dest, 'ss', 'PAUSED', 30), 'paused');
src("ALTER TABLE dropme DROP COLUMN gone");
dst("SELECT bunny.sync_schema('ss')");
is(dst("SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.dropme'::regclass AND attname = 'gone' AND NOT attisdropped"),
	'1', 'a paused mirror keeps the column');
like(dst("SELECT string_agg(message, ' ') FROM bunny.logs('ss', 'WARNING')"),
	qr/column gone of public\.dropme is not dropped yet/, 'and says why');
dst("SELECT bunny.resume_mirror('ss')");
ok(wait_for_status($dest, 'ss', 'RUNNING', 30), 'resumed');
is(wait_for_lsn($dest, 'ss', source_lsn($source)), 't', 'caught up');
dst("SELECT bunny.sync_schema('ss')");
is(dst("SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.dropme'::regclass AND attname = 'gone' AND NOT attisdropped"),
	'0', 'running and caught up, sync_schema drops it');

# 3. a column dropped on the source with a backlog that still carries it
dst("SELECT bunny.pause_mirror('ss')");
ok(wait_for_status($dest, 'ss', 'PAUSED', 30), 'paused to build a backlog');
src("UPDATE fullt SET c = c || '!' WHERE a <= 50");
src("ALTER TABLE fullt DROP COLUMN c");
src("UPDATE fullt SET b = b || '?' WHERE a > 150");
dst("SELECT bunny.resume_mirror('ss')");
dst("SELECT bunny.sync_schema('ss')");
ok(wait_synced($source, $dest, 'ss', \@plain), 'caught up after the drop');
compare_tables($source, $dest, ['public.fullt'], 'after a drop with a backlog');
is(dst("SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.fullt'::regclass AND attname = 'c' AND NOT attisdropped"),
	'0', 'the column is gone on the destination');
src("UPDATE fullt SET b = 'again' WHERE a <= 20; DELETE FROM fullt WHERE a BETWEEN 21 AND 30");
ok(wait_synced($source, $dest, 'ss', \@plain), 'REPLICA IDENTITY FULL rows still match');
compare_tables($source, $dest, ['public.fullt'], 'after updates by full identity');

# 4. an enum label added on the source, then a resync copying it
src("ALTER TYPE mood ADD VALUE 'glad'");
src("UPDATE moods SET m = 'glad' WHERE id <= 5");
ok(wait_synced($source, $dest, 'ss', \@plain), 'the stream takes over the label');
src("ALTER TYPE mood ADD VALUE 'meh'");
src("UPDATE moods SET m = 'meh' WHERE id > 15");
dst("SELECT bunny.pause_mirror('ss')");
ok(wait_for_status($dest, 'ss', 'PAUSED', 30), 'paused');
dst("SELECT bunny.resume_mirror('ss')");
dst("SELECT bunny.resync_table('ss', 'public.moods', 'truncate')");
ok(poll_until(sub { dst("SELECT status || coalesce(pending_op, '-') FROM bunny.mirror WHERE name = 'ss'") eq 'RUNNING-' }, 90),
	'the resync copying a new label finishes');
compare_tables($source, $dest, ['public.moods'], 'after the resync with a new label');
is(dst("SELECT count(*) FROM bunny.logs('ss', 'ERROR') WHERE message LIKE '%invalid input value for enum%'"),
	'0', 'the copy never failed on the label');

# 4b. a primary key with an INCLUDE list added on the source: the
#     destination's has the same key columns, not the INCLUDE ones as keys
src("ALTER TABLE fullt ADD PRIMARY KEY (a) INCLUDE (b) WITH (fillfactor = 90)");
dst("SELECT bunny.sync_schema('ss')");
my $pkdef = q{SELECT pg_get_constraintdef(oid) FROM pg_constraint
               WHERE conrelid = 'public.fullt'::regclass AND contype = 'p'};
is(dst($pkdef), 'PRIMARY KEY (a) INCLUDE (b)',
	'sync_schema built the primary key as the source has it');
is(dst("SELECT c.reloptions FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = 'public.fullt'::regclass AND i.indisprimary"),
	'{fillfactor=90}', 'with its storage parameters');
ok(wait_synced($source, $dest, 'ss', \@plain), 'caught up after the new primary key');

# 5. sync_schema under a steady load on the same tables
my $load_sql = q{
DO $$
BEGIN
  FOR i IN 1..400 LOOP
    UPDATE fullt SET b = 'l' || i WHERE a = 31 + i % 100;
    UPDATE moods SET m = 'ok' WHERE id = 1 + i % 20;
    COMMIT;
    PERFORM pg_sleep(0.005);
  END LOOP;
END
$$;
};
my $load = start_source_load($source, $load_sql);
my $sync_errors = 0;
for my $i (1 .. 5)
{
	src("ALTER TABLE moods ADD COLUMN x$i int DEFAULT $i");
	my ($ret, $out, $err) = $dest->psql('postgres', "SELECT bunny.sync_schema('ss')");
	$sync_errors++ if $ret != 0;
	diag("sync_schema: $err") if $ret != 0;
}
finish_source_load($load, 'sync_schema under load');
is($sync_errors, 0, 'sync_schema never failed (no deadlock with the worker)');
ok(wait_synced($source, $dest, 'ss', \@plain), 'caught up after the load');
compare_tables($source, $dest, \@plain, 'after sync_schema under load');
is(mirror_field($dest, 'ss', 'status'), 'RUNNING', 'running');

# 5b. a NOT NULL column dropped on the source: inserts go on before any
#     sync_schema (the column is made nullable on a table bunnydb made)
src("ALTER TABLE moods ADD COLUMN must text NOT NULL DEFAULT 'x'");
dst("SELECT bunny.sync_schema('ss')");
dst("ALTER TABLE moods ALTER COLUMN must DROP DEFAULT");
src("ALTER TABLE moods DROP COLUMN must");
src("INSERT INTO moods (id, m) VALUES (1001, 'ok'), (1002, 'sad')");
ok(poll_until(sub { dst("SELECT count(*) FROM moods WHERE id > 1000") eq '2' }, 60),
	'inserts after dropping a NOT NULL column go on');
dst("SELECT bunny.sync_schema('ss')");
ok(wait_synced($source, $dest, 'ss', \@plain), 'equal once sync_schema dropped the column');
like(dst("SELECT string_agg(message, ' ') FROM bunny.logs('ss', 'INFO')"),
	qr/column must of public\.moods is nullable now/, 'the worker says so');
is(mirror_field($dest, 'ss', 'error_count'), '0', 'without an error');

# 6. drop_mirror in the middle of a swap that keeps failing leaves no
#    half-built copy behind
{
	my ($ret, $out, $err) = $dest->psql('postgres', q{
BEGIN;
SELECT bunny.resync_table('ss', 'public.moods', 'swap');
CREATE VIEW moods_v AS SELECT * FROM public.moods;
COMMIT;});
	is($ret, 0, 'a swap that will fail is requested') or diag($err);
	ok(poll_until(sub { dst("SELECT count(*) FROM pg_class WHERE relname = 'moods_resync'") eq '1' }, 60, 0.1),
		'its copy table exists');
	ok(poll_until(sub { (mirror_field($dest, 'ss', 'error_count') // 0) >= 1 }, 60, 0.1),
		'the swap fails');
	dst("SELECT bunny.drop_mirror('ss')");
	is(dst("SELECT count(*) FROM pg_class WHERE relname LIKE 'moods\\_resync%'"), '0',
		'drop_mirror left no moods_resync (nor its sequences or indexes)');
	is($source->safe_psql('postgres', "SELECT count(*) FROM pg_replication_slots"), '0',
		'and no slot on the source');
}

# 7. a snapshot worker that ends after another table of the same resync
#    finished (and had its sequences taken over) is replaced, and the new
#    one can still import the resync's snapshot
src(q{
CREATE TABLE aseq (id serial PRIMARY KEY, v text);
INSERT INTO aseq (v) SELECT 'a' FROM generate_series(1, 10);
CREATE TABLE zbig (id int PRIMARY KEY, v text);
INSERT INTO zbig SELECT g, 'b' FROM generate_series(1, 3000000) g;
ANALYZE zbig;
});
ok(create_mirror($dest, 'rs', ['public.aseq', 'public.zbig'], do_initial_snapshot => 'true',
		snapshot_num_rows_per_partition => 100000, snapshot_max_parallel_workers => 1,
		timeout => 120), 'mirror rs running');
dst("SELECT bunny.resync_mirror('rs', 'truncate')");
ok(poll_until(sub {
			dst(q{SELECT (SELECT t.resync_state IS NULL FROM bunny.mirror_table t JOIN bunny.mirror m ON m.id = t.mirror_id
                           WHERE m.name = 'rs' AND t.source_table = 'aseq')
                     AND EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type LIKE 'bunnydb snapshot%')}) eq 't'
		}, 60, 0.02),
	'the small table of the resync is done while the big one is still copied');
my $killed = dst(q{SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                    WHERE backend_type LIKE 'bunnydb snapshot%'});
is($killed, '1', 'the snapshot worker is ended');
ok(poll_until(sub { dst("SELECT status || coalesce(pending_op, '-') FROM bunny.mirror WHERE name = 'rs'") eq 'RUNNING-' }, 90),
	'the resync finishes with a new snapshot worker');
compare_tables($source, $dest, ['public.aseq', 'public.zbig'], 'after the resync');
is(dst("SELECT count(*) FROM bunny.logs('rs', 'ERROR') WHERE message LIKE '%snapshot identifier%'"),
	'0', 'no snapshot worker failed to import the snapshot');
dst("SELECT bunny.drop_mirror('rs')");

$source->stop;
$dest->stop;
done_testing();
