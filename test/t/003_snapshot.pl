
# Copyright (c) bunnydb authors
#
# 003_snapshot: the initial snapshot (create_mirror, do_initial_snapshot =>
# true).
#
#  1. snapshot while pgbench inserts/updates/deletes on the copied tables;
#     CDC resumes exactly after the snapshot point
#  2. part boundaries: empty table, one-block table, table with many dead
#     pages split in block ranges, stale statistics (open-ended last range)
#  3. mappings: renamed destination (schema and table), exclude_columns,
#     partition_key ranges on an integer key (with NULL keys), partitioned
#     source (range partitions, one sub-partitioned) into one table; what
#     uses the excluded column only in an index expression or predicate, an
#     INCLUDE list, an exclusion constraint's expression or WHERE, or in a
#     whole-row reference (WHERE t IS NOT NULL, CHECK (t IS NOT NULL)) is not
#     created on the destination (README, Table mappings: excluded columns
#     are left out of the tables bunnydb creates), an index on the other
#     columns is; sync_schema afterwards does not try to create them either
#  4. schema objects after the data: PK, unique, check, exclusion,
#     secondary and expression indexes, FK between mapped tables created
#     DEFERRABLE INITIALLY DEFERRED, FK to an unmapped table left out,
#     serial / identity sequences taken over; replicate_indexes => false
#  5. non-empty destination table: create_mirror refuses it (55000, with a
#     hint, nothing created); a row that arrives after create_mirror makes
#     the worker refuse it: mirror FAILED (55000), row untouched
#  6. SIGKILL of a snapshot worker mid-copy: the mirror resumes by itself,
#     the table already SYNCED is not copied again, the rest ends equal;
#     same with a SIGKILL of the mirror worker

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;

use IPC::Run;
use Time::HiRes qw(usleep time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $t_start = time();

my ($source, $dest) = setup_pair(
	source_conf => "max_replication_slots = 20\nmax_wal_senders = 20\n"
	  . "max_connections = 60\n");

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# create a mirror with the initial snapshot, without waiting
sub create_snap_mirror
{
	my ($name, $json, %opts) = @_;
	return create_mirror($dest, $name, $json,
		do_initial_snapshot => 'true',
		wait => 0,
		%opts);
}

# number of parts announced by the 'copying table' line of a table
sub parts_of
{
	my ($mirror, $src) = @_;
	my @l = log_lines($dest, $mirror, 0, "copying table $src into %");
	return undef unless @l;
	return $l[0] =~ /\((\d+) parts?,/ ? $1 : undef;
}

# ---------------------------------------------------------------------------
# Source schema and data for every scenario
# ---------------------------------------------------------------------------

$source->safe_psql(
	'postgres', q{
-- 1. write load
CREATE TABLE load_a (id int PRIMARY KEY, v int NOT NULL, t text);
INSERT INTO load_a SELECT g, 0, 'row ' || g FROM generate_series(1, 1000000) g;
CREATE TABLE load_b (id bigint PRIMARY KEY, n int NOT NULL);
INSERT INTO load_b SELECT g, 0 FROM generate_series(1, 60000) g;

-- 2. boundaries
CREATE TABLE b_empty (id int PRIMARY KEY, v text);
CREATE TABLE b_one (id int PRIMARY KEY);
INSERT INTO b_one SELECT generate_series(1, 120);
CREATE TABLE b_dead (id int PRIMARY KEY, pad text) WITH (autovacuum_enabled = false);
INSERT INTO b_dead SELECT g, repeat('x', 100) || g FROM generate_series(1, 200000) g;
DELETE FROM b_dead WHERE id > 100 AND id <= 199900;
CREATE TABLE b_stale (id int PRIMARY KEY, v int) WITH (autovacuum_enabled = false);
INSERT INTO b_stale SELECT g, g FROM generate_series(1, 1000) g;

-- 3. mappings
CREATE TABLE a (id int PRIMARY KEY, v text);
INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 1000) g;
CREATE TABLE excl (id int PRIMARY KEY, keep text, secret text NOT NULL, tail int);
INSERT INTO excl SELECT g, 'keep' || g, 'secret' || g, g FROM generate_series(1, 500) g;
-- indkey alone does not show that these use secret
CREATE INDEX excl_secret_lower_idx ON excl (lower(secret));
CREATE INDEX excl_id_partial_idx ON excl (id) WHERE secret LIKE 'secret1%';
CREATE INDEX excl_keep_incl_idx ON excl (keep) INCLUDE (secret);
ALTER TABLE excl ADD CONSTRAINT excl_tail_key UNIQUE (tail) INCLUDE (secret),
  ADD CONSTRAINT excl_secret_excl EXCLUDE USING btree (lower(secret) WITH =),
  ADD CONSTRAINT excl_keep_excl EXCLUDE USING btree (keep WITH =) WHERE (secret <> '');
-- nor do whole-row references: pg_depend records no column for them
CREATE UNIQUE INDEX excl_keep_row_key ON excl (keep) WHERE excl IS NOT NULL;
ALTER TABLE excl ADD CONSTRAINT excl_row_check CHECK (excl IS NOT NULL),
  ADD CONSTRAINT excl_row_excl EXCLUDE USING btree (tail WITH =) WHERE (excl IS NOT NULL);
CREATE INDEX excl_tail_idx ON excl (tail);
CREATE TABLE pkey (id bigint PRIMARY KEY, k int, v text);
INSERT INTO pkey SELECT g, (g * 7919) % 1000003, 'v' || g FROM generate_series(1, 100000) g;
INSERT INTO pkey SELECT g, NULL, 'null key' FROM generate_series(100001, 100010) g;
CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE parted_p1 PARTITION OF parted FOR VALUES FROM (1) TO (1000);
CREATE TABLE parted_p2 PARTITION OF parted FOR VALUES FROM (1000) TO (2000)
    PARTITION BY RANGE (id);
CREATE TABLE parted_p2a PARTITION OF parted_p2 FOR VALUES FROM (1000) TO (1500);
CREATE TABLE parted_p2b PARTITION OF parted_p2 FOR VALUES FROM (1500) TO (2000);
CREATE TABLE parted_def PARTITION OF parted DEFAULT;
INSERT INTO parted SELECT g, 'p' || g FROM generate_series(1, 2500) g;

-- 4. schema objects
CREATE TABLE s_parent (
    id serial PRIMARY KEY,
    code text NOT NULL UNIQUE,
    qty int CHECK (qty >= 0),
    r int4range,
    EXCLUDE USING gist (r WITH &&)
);
CREATE INDEX s_parent_qty_idx ON s_parent (qty);
CREATE INDEX s_parent_lower_code_idx ON s_parent (lower(code));
INSERT INTO s_parent (code, qty, r)
  SELECT 'C' || g, g % 50, int4range(g * 10, g * 10 + 5) FROM generate_series(1, 500) g;
SELECT setval('s_parent_id_seq', 5000);
CREATE TABLE s_unmapped (id int PRIMARY KEY);
INSERT INTO s_unmapped SELECT generate_series(1, 10);
CREATE TABLE s_child (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent_id int NOT NULL REFERENCES s_parent (id),
    other_id int REFERENCES s_unmapped (id),
    note text
);
CREATE INDEX s_child_parent_idx ON s_child (parent_id);
INSERT INTO s_child (parent_id, other_id, note)
  SELECT 1 + g % 500, 1 + g % 10, 'n' || g FROM generate_series(1, 2000) g;
CREATE TABLE noidx (id int PRIMARY KEY, u int UNIQUE, v int CHECK (v > 0));
CREATE INDEX noidx_v_idx ON noidx (v);
INSERT INTO noidx SELECT g, g, g FROM generate_series(1, 100) g;

-- 5. non-empty destination
CREATE TABLE ne (id int PRIMARY KEY, v text);
INSERT INTO ne SELECT g, 'source' FROM generate_series(1, 10) g;

-- 6. crash
CREATE TABLE c_a_small (id int PRIMARY KEY, v text);
INSERT INTO c_a_small SELECT g, 'small' || g FROM generate_series(1, 1000) g;
CREATE TABLE c_big (id int NOT NULL, v int);
INSERT INTO c_big SELECT g, g % 1000 FROM generate_series(1, 2500000) g;
ALTER TABLE c_big ADD PRIMARY KEY (id);
CREATE TABLE c2_big AS SELECT id, v, v * 2 AS w FROM c_big WHERE id <= 1500000;
ALTER TABLE c2_big ADD PRIMARY KEY (id);
});

# statistics: the part planning uses reltuples
$source->safe_psql('postgres', 'ANALYZE;');

# b_stale: 30000 rows more than its statistics know (open-ended last range)
$source->safe_psql('postgres',
	'INSERT INTO b_stale SELECT g, g FROM generate_series(1001, 31000) g;');
# b_dead: rows added after ANALYZE land at the end of the heap
$source->safe_psql('postgres',
	'INSERT INTO b_dead SELECT g, repeat(\'y\', 100) FROM generate_series(300001, 300010) g;');

is(src("SELECT relpages FROM pg_class WHERE relname = 'b_one'"),
	'1', 'source b_one is exactly one block');
ok(src("SELECT relpages > 1000 AND reltuples < 1000 FROM pg_class WHERE relname = 'b_dead'") eq 't',
	'source b_dead: many pages, few live rows');
is( src(
		"SELECT min((ctid::text::point)[0]) = 0 AND max((ctid::text::point)[0]) + 1 = pg_relation_size('b_dead') / 8192 FROM b_dead"
	),
	't',
	'source b_dead has live rows in its first and last block');

# ---------------------------------------------------------------------------
# 1. Snapshot under a concurrent write load
# ---------------------------------------------------------------------------

my $script = "${PostgreSQL::Test::Utils::tmp_check}/003_load.sql";
PostgreSQL::Test::Utils::append_to_file(
	$script, q{
\set a random(1, 1000000)
\set b random(1, 60000)
\set n random(1000001, 2000000000)
UPDATE load_a SET v = v + 1, t = 'upd' WHERE id = :a;
DELETE FROM load_a WHERE id = :a + 3;
UPDATE load_b SET n = n + 1 WHERE id = :b;
DELETE FROM load_b WHERE id = :b + 5;
BEGIN;
INSERT INTO load_a VALUES (:n, -1, 'ins') ON CONFLICT (id) DO NOTHING;
UPDATE load_a SET t = 'ins+upd' WHERE id = :n;
INSERT INTO load_b VALUES (:n, -1) ON CONFLICT (id) DO NOTHING;
END;
});

my ($pgb_out, $pgb_err) = ('', '');
my $pgbench = IPC::Run::start(
	[
		'pgbench', '-n', '-c', '2', '-j', '2', '-T', '15', '-f', $script,
		'-h', $source->host, '-p', $source->port, 'postgres'
	],
	'<', \undef, '>', \$pgb_out, '2>', \$pgb_err);
usleep(500_000);

ok( create_snap_mirror(
		'm-load', [ 'public.load_a', 'public.load_b' ],
		snapshot_num_rows_per_partition => 50000,
		snapshot_max_parallel_workers => 2),
	'm-load created');
ok(wait_for_status($dest, 'm-load', 'RUNNING', 120), 'm-load RUNNING after its snapshot');
my $load_running_at_end = $pgbench->pumpable ? 1 : 0;
note("pgbench still running when m-load reached RUNNING: $load_running_at_end");
is(mirror_field($dest, 'm-load', 'phase'), 'CDC', 'm-load phase CDC');
ok((parts_of('m-load', 'public.load_a') // 0) > 1, 'load_a copied in several parts')
  or diag('parts: ' . (parts_of('m-load', 'public.load_a') // 'none'));

$pgbench->finish;
my ($pgb_tx) = $pgb_out =~ /number of transactions actually processed: (\d+)/;
is($pgbench->result(0), 0, 'pgbench ran without error') or diag($pgb_err);
ok(($pgb_tx // 0) > 100, 'pgbench committed transactions during the test ('
	  . ($pgb_tx // '?') . ')');

catch_up_compare($source, $dest, 'm-load',
	[ 'public.load_a', 'public.load_b' ],
	'snapshot under load', exact => 1);
is(table_field($dest, 'm-load', 'public.load_a', 'status'), 'SYNCED', 'load_a SYNCED');
is(mirror_field($dest, 'm-load', 'error_count'), '0', 'm-load error_count 0');

# ---------------------------------------------------------------------------
# 2. Part boundaries
# ---------------------------------------------------------------------------

my @bound = qw(public.b_empty public.b_one public.b_dead public.b_stale);
ok( create_snap_mirror(
		'm-bound', \@bound,
		snapshot_num_rows_per_partition => 50,
		snapshot_max_parallel_workers => 4),
	'm-bound created');
ok(wait_for_status($dest, 'm-bound', 'RUNNING', 120), 'm-bound RUNNING');
catch_up_compare($source, $dest, 'm-bound', \@bound, 'boundaries', exact => 1);

is(parts_of('m-bound', 'public.b_one'), 1, 'one-block table copied as one part');
ok((parts_of('m-bound', 'public.b_dead') // 0) > 1,
	'b_dead split in block ranges (' . (parts_of('m-bound', 'public.b_dead') // 'none') . ' parts)');
ok((parts_of('m-bound', 'public.b_stale') // 0) > 1,
	'b_stale split in block ranges (' . (parts_of('m-bound', 'public.b_stale') // 'none') . ' parts)');
is( query_value($dest,
		'SELECT string_agg(id::text, \',\' ORDER BY id) FROM b_dead WHERE id <= 2 OR id >= 300009 OR id IN (100, 199901)'
	),
	'1,2,100,199901,300009,300010',
	'b_dead rows of the first block, around the hole and of the last block present');
is(query_value($dest, 'SELECT count(*) FROM b_stale'), '31000',
	'b_stale rows beyond the statistics copied');
foreach my $t (@bound)
{
	is(table_field($dest, 'm-bound', $t, 'status'), 'SYNCED', "$t SYNCED");
	is(table_field($dest, 'm-bound', $t, 'rows_snapshotted'),
		src("SELECT count(*) FROM $t"), "$t rows_snapshotted = source rows");
}
ok( scalar(log_lines($dest, 'm-bound', 0, 'copied table public.b_dead: 210 rows in %')) == 1,
	"log line 'copied table public.b_dead: 210 rows in ...'")
  or diag(join("\n", log_lines($dest, 'm-bound', 0, 'copied table%')));

# ---------------------------------------------------------------------------
# 3. Mappings
# ---------------------------------------------------------------------------

my $map_json = q{[
  {"source_table": "public.a", "destination_table": "other.b"},
  {"source_table": "public.excl", "exclude_columns": ["secret"]},
  {"source_table": "public.pkey", "partition_key": "k"},
  "public.parted"
]};
ok( create_snap_mirror(
		'm-map', $map_json,
		snapshot_num_rows_per_partition => 20000,
		snapshot_max_parallel_workers => 3),
	'm-map created');
ok(wait_for_status($dest, 'm-map', 'RUNNING', 120), 'm-map RUNNING');
catch_up_compare($source, $dest,
	'm-map',
	[
		[ 'public.a', 'other.b' ],
		[ '(SELECT id, keep, tail FROM public.excl)', 'public.excl' ],
		'public.pkey',
		'public.parted'
	],
	'mappings', exact => 1);

is(query_value($dest, "SELECT to_regclass('public.a') IS NULL"),
	't', 'renamed: no destination table under the source name');
ok( scalar(log_lines($dest, 'm-map', 0, 'copying table public.a into other.b %')) == 1,
	"log line 'copying table public.a into other.b ...'");
is( query_value($dest,
		"SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'public.excl'::regclass AND attnum > 0 AND NOT attisdropped"
	),
	'id,keep,tail',
	'excluded column absent on the destination');

# what uses the excluded column is left out, the rest is there
my $excl_objects_sql = q{SELECT string_agg(c.relname, ',' ORDER BY c.relname)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'public.excl'::regclass};
is(query_value($dest, $excl_objects_sql),
	'excl_pkey,excl_tail_idx',
	'excl: indexes using the excluded column (expression, predicate, INCLUDE, constraints) left out, the others created');
is( query_value($dest,
		"SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'public.excl'::regclass"),
	'excl_pkey',
	'excl: constraints using the excluded column left out');
is( query_value($dest,
		"SELECT count(*) FROM bunny.mirror_logs WHERE mirror = 'm-map' AND level IN ('WARNING', 'ERROR')"),
	'0', 'm-map: no warning or error logged');
ok((parts_of('m-map', 'public.pkey') // 0) > 1,
	'pkey split in partition_key ranges (' . (parts_of('m-map', 'public.pkey') // 'none') . ' parts)');
is(query_value($dest, 'SELECT count(*) FROM public.pkey WHERE k IS NULL'),
	'10', 'rows with a NULL partition_key copied');
is(parts_of('m-map', 'public.parted'), 4, 'partitioned source: one part per leaf partition (4)');
is(query_value($dest, 'SELECT count(*) FROM public.parted'), '2500',
	'partitioned source copied into one destination table');
foreach my $t (qw(public.a public.excl public.pkey public.parted))
{
	is(table_field($dest, 'm-map', $t, 'status'), 'SYNCED', "$t SYNCED");
	is( table_field($dest, 'm-map', $t, 'rows_snapshotted'),
		src("SELECT count(*) FROM $t"),
		"$t rows_snapshotted = source rows");
}

# CDC through the mappings after the snapshot
$source->safe_psql(
	'postgres', q{
INSERT INTO a VALUES (5000, 'after');
UPDATE excl SET keep = 'changed', secret = 'changed secret' WHERE id = 1;
INSERT INTO pkey VALUES (200000, 42, 'after'), (200001, NULL, 'after');
INSERT INTO parted VALUES (2600, 'default after');
UPDATE parted SET v = 'p2b after' WHERE id = 1700;
DELETE FROM parted WHERE id = 5;
});
catch_up_compare($source, $dest,
	'm-map',
	[
		[ 'public.a', 'other.b' ],
		[ '(SELECT id, keep, tail FROM public.excl)', 'public.excl' ],
		'public.pkey',
		'public.parted'
	],
	'mappings after CDC', exact => 1);

# sync_schema takes the same columns (bunny._source_indexes): it must not
# try to create the indexes left out at setup
$dest->safe_psql('postgres', "SELECT bunny.sync_schema('m-map')");
is(query_value($dest, $excl_objects_sql),
	'excl_pkey,excl_tail_idx', 'excl: sync_schema created no index using the excluded column');
ok(wait_for_status($dest, 'm-map', 'RUNNING', 60), 'm-map RUNNING after sync_schema');
is(mirror_field($dest, 'm-map', 'error_count'), '0', 'm-map error_count 0 after sync_schema');
$source->safe_psql('postgres', "UPDATE excl SET keep = 'after sync', secret = 's' WHERE id = 2");
catch_up_compare($source, $dest,
	'm-map',
	[ [ '(SELECT id, keep, tail FROM public.excl)', 'public.excl' ] ],
	'mappings after sync_schema', exact => 1);

# ---------------------------------------------------------------------------
# 4. Schema objects
# ---------------------------------------------------------------------------

ok( create_snap_mirror(
		'm-schema', [ 'public.s_parent', 'public.s_child' ],
		snapshot_num_rows_per_partition => 200),
	'm-schema created');
ok( create_snap_mirror('m-noidx', ['public.noidx'], replicate_indexes => 'false'),
	'm-noidx created');
ok(wait_for_status($dest, 'm-schema', 'RUNNING', 120), 'm-schema RUNNING');
ok(wait_for_status($dest, 'm-noidx', 'RUNNING', 120), 'm-noidx RUNNING');
catch_up_compare($source, $dest, 'm-schema',
	[ 'public.s_parent', 'public.s_child' ],
	'schema objects', exact => 1);

# copy workers: snapshot_max_parallel_workers (8 here), but never more than
# the parts nor than twice the destination's CPUs
{
	my $ncpu = `getconf _NPROCESSORS_ONLN`;
	chomp $ncpu;
	my $line = query_value($dest,
		"SELECT message FROM bunny.mirror_logs WHERE mirror = 'm-schema' "
		  . "AND message LIKE 'initial copy started:%' ORDER BY id LIMIT 1") // '';
	my ($parts, $workers) = $line =~ /(\d+) part\(s\), up to (\d+) worker\(s\)/;
	my $want = 8;
	$want = $parts if defined $parts && $parts < $want;
	$want = 2 * $ncpu if $ncpu =~ /^\d+$/ && 2 * $ncpu < $want;
	is($workers, $want,
		"copy workers = min(snapshot_max_parallel_workers 8, parts, 2 x $ncpu CPUs) ($line)");
}
catch_up_compare($source, $dest, 'm-noidx', [ 'public.noidx' ], 'replicate_indexes false', exact => 1);

# constraints other than foreign keys: same definitions on both sides
my $cons_sql = q{SELECT string_agg(contype::text || ' ' || pg_get_constraintdef(oid), '; ' ORDER BY contype, pg_get_constraintdef(oid))
  FROM pg_constraint WHERE conrelid = '%s'::regclass AND contype <> 'f'};
foreach my $t (qw(public.s_parent public.s_child public.noidx))
{
	my $q = sprintf($cons_sql, $t);
	is(query_value($dest, $q), src($q), "$t: PK/unique/check/exclusion constraints identical");
}
# indexes (names aside)
my $idx_sql = q{SELECT string_agg(d, '; ' ORDER BY d) FROM (SELECT regexp_replace(pg_get_indexdef(indexrelid), '^(CREATE (UNIQUE )?INDEX) \S+ ON', '\1 ON') AS d
  FROM pg_index WHERE indrelid = '%s'::regclass) s};
foreach my $t (qw(public.s_parent public.s_child))
{
	my $q = sprintf($idx_sql, $t);
	is(query_value($dest, $q), src($q), "$t: indexes (secondary, expression) identical");
}
is( query_value($dest,
		"SELECT count(*) FROM pg_index i WHERE i.indrelid = 'public.noidx'::regclass AND pg_get_indexdef(i.indexrelid) LIKE '%(v)%'"
	),
	'0',
	'replicate_indexes => false: plain index left out');
is( query_value($dest,
		"SELECT count(*) FROM pg_index WHERE indrelid = 'public.noidx'::regclass AND indisprimary"),
	'1',
	'replicate_indexes => false: primary key kept');

# foreign keys
is( query_value($dest,
		"SELECT string_agg(format('%s %s %s', pg_get_constraintdef(oid), condeferrable, condeferred), '; ') "
		  . "FROM pg_constraint WHERE conrelid = 'public.s_child'::regclass AND contype = 'f'"),
	'FOREIGN KEY (parent_id) REFERENCES s_parent(id) DEFERRABLE INITIALLY DEFERRED t t',
	'FK between mapped tables is DEFERRABLE INITIALLY DEFERRED; FK to an unmapped table left out');
is(query_value($dest, "SELECT to_regclass('public.s_unmapped') IS NULL"),
	't', 'unmapped referenced table not created');

# sequences
is( query_value($dest,
		"SELECT last_value FROM pg_sequences WHERE sequencename = 's_parent_id_seq'"),
	'5000', 'serial sequence set to the source value');
ok( (query_value($dest,
			"SELECT last_value >= (SELECT max(id) FROM s_child) FROM pg_sequences WHERE schemaname = 'public' AND sequencename = "
			  . "split_part(pg_get_serial_sequence('public.s_child', 'id'), '.', 2)"
		) // '') eq 't',
	'identity sequence >= max(id)');
is(query_value($dest,
		"SELECT attidentity FROM pg_attribute WHERE attrelid = 'public.s_child'::regclass AND attname = 'id'"),
	'd', 'identity column is BY DEFAULT on the destination');
is( query_value($dest,
		q{BEGIN;
INSERT INTO s_parent (code, qty) VALUES ('dest-local', 1);
INSERT INTO s_child (parent_id) SELECT max(id) FROM s_parent;
SELECT (SELECT max(id) FROM s_parent) || ',' || ((SELECT max(id) FROM s_child) > 2000);
ROLLBACK;}),
	'5001,true',
	'nextval on the destination works without key conflict');
# the FK is deferred: a violating pair inside one transaction commits once fixed
is( query_value($dest,
		q{BEGIN;
INSERT INTO s_child (id, parent_id) VALUES (900000, 900000);
INSERT INTO s_parent (id, code) VALUES (900000, 'late parent');
COMMIT;
SELECT count(*) FROM s_child WHERE id = 900000;
BEGIN; DELETE FROM s_child WHERE id = 900000; DELETE FROM s_parent WHERE id = 900000; COMMIT;}),
	'1',
	'FK check is deferred to commit on the destination');

# ---------------------------------------------------------------------------
# 5. Non-empty destination table refused
# ---------------------------------------------------------------------------

$dest->safe_psql('postgres',
	"CREATE TABLE public.ne (id int PRIMARY KEY, v text); INSERT INTO public.ne VALUES (999, 'local');");
# create_mirror refuses it, with nothing created
my ($ne_ret, $ne_out, $ne_err) = $dest->psql('postgres',
	qq{SELECT bunny.create_mirror('m-nonempty', 'src', '["public.ne"]')});
like($ne_err, qr/ERROR:  destination table public\.ne is not empty\nDETAIL:  The copy of public\.ne never overwrites existing rows\.\nHINT:  Empty the table, map .* or create the mirror with do_initial_snapshot => false/,
	'create_mirror refuses a non-empty destination table, with a hint');
is(query_value($dest, "SELECT count(*) FROM bunny.mirror WHERE name = 'm-nonempty'"), '0',
	'... and creates nothing');
# rows that arrive after create_mirror are refused by the worker: the
# mirror is created on an empty table and the row added in the same
# transaction, before the worker can start
$dest->safe_psql('postgres', "DELETE FROM public.ne");
$dest->safe_psql('postgres', qq{BEGIN;
SELECT bunny.create_mirror('m-nonempty', 'src', '["public.ne"]');
INSERT INTO public.ne VALUES (999, 'local');
COMMIT;});
ok(wait_for_status($dest, 'm-nonempty', 'FAILED', 90), 'm-nonempty FAILED');
like(mirror_field($dest, 'm-nonempty', 'error_message') // '',
	qr/destination table .*\bne\b.* is not empty/,
	'error_message names the non-empty table');
is( query_value($dest,
		"SELECT string_agg(DISTINCT details->>'sqlstate', ',') FROM bunny.mirror_logs WHERE mirror = 'm-nonempty' AND level = 'ERROR' AND message LIKE '%not empty%'"
	),
	'55000',
	'ERROR log line carries SQLSTATE 55000');
is(query_value($dest, "SELECT string_agg(id || ':' || v, ',') FROM public.ne"),
	'999:local', 'rows of the non-empty destination table untouched');
$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('m-nonempty')");

# ---------------------------------------------------------------------------
# 6. Crash of a snapshot worker mid-copy
# ---------------------------------------------------------------------------

# A tight loop inside the server: as soon as c_a_small is SYNCED and a
# snapshot worker copies c_big (some of whose parts are already committed,
# so recovery must empty it), return its pid and the xmins of c_a_small.
$dest->safe_psql(
	'postgres', q{
CREATE FUNCTION public.snap_victim(mirror_name text, small text, big text,
                                   backend_like text, timeout_s float8)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v int;
    deadline timestamptz := clock_timestamp() + timeout_s * interval '1 second';
BEGIN
    LOOP
        PERFORM pg_stat_clear_snapshot();
        -- the small table finished, and the big one partly copied: a few
        -- parts committed on the destination, most still to do
        IF (small IS NULL OR EXISTS (
                SELECT 1 FROM bunny.mirror_tables
                 WHERE mirror = mirror_name AND source_table = 'public.' || small
                   AND status = 'SYNCED'))
           AND (SELECT count(*) FILTER (WHERE p.status = 'DONE') BETWEEN 3 AND count(*) - 10
                  FROM bunny.snapshot_part p JOIN bunny.mirror m ON m.id = p.mirror_id
                 WHERE m.name = mirror_name AND p.source_table = big) THEN
            SELECT pid INTO v FROM pg_stat_activity
             WHERE backend_type LIKE backend_like
               AND (backend_type NOT LIKE 'bunnydb snapshot%'
                    OR query LIKE '%copying public.' || big || '%')
             LIMIT 1;
            IF v IS NOT NULL THEN
                RETURN v || '|'
                    || coalesce((SELECT string_agg(DISTINCT xmin::text, ',')
                                   FROM public.c_a_small WHERE small IS NOT NULL), '') || '|'
                    || (SELECT count(*) FILTER (WHERE p.status = 'DONE') || ' of ' || count(*)
                          FROM bunny.snapshot_part p JOIN bunny.mirror m ON m.id = p.mirror_id
                         WHERE m.name = mirror_name AND p.source_table = big);
            END IF;
        END IF;
        IF clock_timestamp() > deadline THEN
            RETURN NULL;
        END IF;
        PERFORM pg_sleep(0.002);
    END LOOP;
END $$;
});

my @crash = qw(public.c_a_small public.c_big);

# writes on both tables before, during and after the crash: changes between
# the slot's snapshot and the recovery's new snapshot must be applied
# exactly once
my $script2 = "${PostgreSQL::Test::Utils::tmp_check}/003_crash_load.sql";
PostgreSQL::Test::Utils::append_to_file(
	$script2, q{
\set a random(1, 2500000)
\set s random(1, 1000)
\set n random(3000000, 2000000000)
UPDATE c_big SET v = v + 1 WHERE id = :a;
DELETE FROM c_big WHERE id = :a + 1;
INSERT INTO c_big VALUES (:n, -1) ON CONFLICT (id) DO NOTHING;
UPDATE c_a_small SET v = v || '+' WHERE id = :s;
INSERT INTO c_a_small VALUES (:n, 'new') ON CONFLICT (id) DO NOTHING;
});
my ($pgb2_out, $pgb2_err) = ('', '');
my $pgbench2 = IPC::Run::start(
	[
		'pgbench', '-n', '-c', '2', '-j', '2', '-T', '10', '-R', '400',
		'-f', $script2, '-h', $source->host, '-p', $source->port, 'postgres'
	],
	'<', \undef, '>', \$pgb2_out, '2>', \$pgb2_err);
usleep(300_000);

ok( create_snap_mirror(
		'm-crash', \@crash,
		snapshot_num_rows_per_partition => 50000,
		snapshot_max_parallel_workers => 2),
	'm-crash created');
my $victim = query_value($dest,
	"SELECT public.snap_victim('m-crash', 'c_a_small', 'c_big', 'bunnydb snapshot m-crash', 90)") // '';
my ($vpid, $small_xmins, $big_done) = split /\|/, $victim;
my $killed = 0;
if ($vpid)
{
	$killed = kill 'KILL', $vpid;
	note("killed snapshot worker $vpid copying c_big ($big_done parts done); c_a_small was SYNCED");
	ok($killed, 'SIGKILL sent to a snapshot worker while it copied c_big');

	ok( poll_until(
			sub {
				slurp_file($dest->logfile) =~
				  /\(PID $vpid\) was terminated by signal 9/;
			},
			30),
		'postmaster saw the snapshot worker die');

	ok(wait_for_status($dest, 'm-crash', 'RUNNING', 150),
		'm-crash resumed by itself and reached RUNNING');
	$pgbench2->finish;
	is($pgbench2->result(0), 0, 'write load during the crash test ran without error')
	  or diag($pgb2_err);
	my ($tx2) = $pgb2_out =~ /number of transactions actually processed: (\d+)/;
	note('write load during the crash test: ' . ($tx2 // '?') . ' transactions');
	catch_up_compare($source, $dest, 'm-crash', \@crash, 'after crash', exact => 1);

	# rows written by the load since have new xmins; every other row must
	# still carry one of the xmins it had before the crash
	my %before = map { $_ => 1 } split /,/, ($small_xmins // '');
	my @after = split /,/,
	  (query_value($dest,
			"SELECT string_agg(DISTINCT xmin::text, ',') FROM public.c_a_small WHERE v NOT LIKE '%+' AND id <= 1000"
		) // '');
	ok(@after && !grep({ !$before{$_} } @after),
		'c_a_small (SYNCED before the crash) not copied again: untouched rows keep their row versions')
	  or diag("xmins before: $small_xmins; after: @after");
	is(scalar(log_lines($dest, 'm-crash', 0, 'copying table public.c_a_small into %')),
		1, "c_a_small announced once ('copying table' log line)");
	ok(scalar(log_lines($dest, 'm-crash', 0, 'resuming the initial copy%')) >= 1,
		'recovery logged as resuming the initial copy');
	note("m-crash log:\n" . join("\n", log_lines($dest, 'm-crash', 0, '%')));
	my $big_rows = table_field($dest, 'm-crash', 'public.c_big', 'rows_snapshotted') // -1;
	ok($big_rows > 2_400_000 && $big_rows < 2_600_000,
		"c_big rows_snapshotted ($big_rows) = one copy of the table, not counted twice");
	my $small_rows = table_field($dest, 'm-crash', 'public.c_a_small', 'rows_snapshotted') // -1;
	my $small_src = src('SELECT count(*) FROM c_a_small');
	ok($small_rows >= 1000 && $small_rows <= $small_src,
		"c_a_small rows_snapshotted ($small_rows) kept from the first copy (source now $small_src)");
	foreach my $t (@crash)
	{
		is(table_field($dest, 'm-crash', $t, 'status'), 'SYNCED', "$t SYNCED after recovery");
	}
	is(query_value($dest,
			"SELECT count(*) FROM pg_index WHERE indrelid = 'public.c_big'::regclass AND indisprimary"),
		'1', 'c_big primary key built after recovery');
}
else
{
	fail('found a snapshot worker copying c_big after c_a_small was SYNCED');
	dump_mirror_state($dest, 'm-crash');
}

# ---------------------------------------------------------------------------
# 6b. Crash of the mirror worker mid-copy (its snapshot workers exit too)
# ---------------------------------------------------------------------------

my @crash2 = qw(public.c2_big);
ok( create_snap_mirror(
		'm-crash2', \@crash2,
		snapshot_num_rows_per_partition => 50000,
		snapshot_max_parallel_workers => 2),
	'm-crash2 created');
my $victim2 = query_value($dest,
	"SELECT public.snap_victim('m-crash2', NULL, 'c2_big', 'bunnydb mirror m-crash2', 90)") // '';
my ($vpid2, undef, $done2) = split /\|/, $victim2;
if ($vpid2)
{
	ok(kill('KILL', $vpid2), "SIGKILL sent to the mirror worker of m-crash2 ($done2 parts done)");
	ok( poll_until(
			sub {
				slurp_file($dest->logfile) =~
				  /\(PID $vpid2\) was terminated by signal 9/;
			},
			30),
		'postmaster saw the mirror worker die');
	ok(wait_for_status($dest, 'm-crash2', 'RUNNING', 150),
		'm-crash2 resumed by itself and reached RUNNING');
	catch_up_compare($source, $dest, 'm-crash2', \@crash2, 'after mirror worker crash', exact => 1);
	is(table_field($dest, 'm-crash2', 'public.c2_big', 'rows_snapshotted'),
		'1500000', 'c2_big rows_snapshotted = source rows');
	is(table_field($dest, 'm-crash2', 'public.c2_big', 'status'), 'SYNCED', 'c2_big SYNCED');
}
else
{
	fail('found the mirror worker of m-crash2 while c2_big was partly copied');
	dump_mirror_state($dest, 'm-crash2');
}

# the other mirrors lived through the destination restarts
foreach my $m (qw(m-load m-bound m-map m-schema m-noidx))
{
	ok(wait_for_status($dest, $m, 'RUNNING', 60), "$m RUNNING at the end");
}
$source->safe_psql('postgres',
	"UPDATE load_a SET v = -5 WHERE id IN (SELECT id FROM load_a ORDER BY id LIMIT 10); INSERT INTO b_empty VALUES (1, 'end');");
catch_up_compare($source, $dest, 'm-load', [ 'public.load_a' ], 'm-load at the end', exact => 1);
catch_up_compare($source, $dest, 'm-bound', [ 'public.b_empty' ], 'm-bound at the end', exact => 1);

my $dest_log = slurp_file($dest->logfile);
my @crashes = $dest_log =~ /terminated by signal (\d+)/g;
is(scalar(grep { $_ != 9 } @crashes), 0, 'no destination process crashed by itself');
unlike($dest_log, qr/PANIC|TRAP:/, 'no PANIC / assertion failure');

note(sprintf('003_snapshot ran in %.0f s', time() - $t_start));
$dest->stop;
$source->stop;
done_testing();
