
# Copyright (c) bunnydb authors
#
# 001_cdc_basic: CDC without initial snapshot.
#
#  * workers visible in pg_stat_activity / pg_stat_replication
#  * slot and publication created on the source
#  * INSERT / UPDATE / DELETE, large transactions
#  * nearly every built-in data type, NULLs, arrays (2-D, NULL elements,
#    non-default bounds), special float/numeric values
#  * enum and domain created on the destination automatically
#  * quoted mixed-case schema / table / column names
#  * unchanged TOAST values survive an UPDATE of another column
#  * REPLICA IDENTITY FULL without key, duplicate rows, NULLs in the row
#  * TRUNCATE, rolled-back transactions, savepoints
#  * ALTER TABLE ... ADD COLUMN on the source
#  * error_count = 0 at the end, no server crash

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my ($source, $dest) = setup_pair();

# ---------------------------------------------------------------------------
# Source schema (everything exists before the mirrors are created)
# ---------------------------------------------------------------------------

$source->safe_psql(
	'postgres', q{
CREATE TABLE public.t1 (id int PRIMARY KEY, val text, n int);

CREATE SCHEMA "My Schema";
CREATE TABLE "My Schema"."Mixed Case" (
    "Id" int PRIMARY KEY,
    "Select" text,
    "lowercase" int,
    "CamelCol" varchar(20) NOT NULL
);

CREATE TABLE public.big (id int PRIMARY KEY, payload text, counter int);

CREATE TABLE public.nokey (a int, b text, c numeric);
ALTER TABLE public.nokey REPLICA IDENTITY FULL;

CREATE TABLE public.trunc (id int PRIMARY KEY, v text);

CREATE TABLE public.txn (id int PRIMARY KEY, v text);

CREATE TABLE public.evolve (id int PRIMARY KEY, a text);

-- not part of any mirror
CREATE TABLE public.unpublished (id int PRIMARY KEY, v text);

-- types for the second mirror
CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy', 'Very Happy');
CREATE DOMAIN public.posint AS int CHECK (VALUE > 0);

CREATE TABLE public.typed (
    id int PRIMARY KEY,
    m public.mood,
    p public.posint,
    ms public.mood[],
    m_nn public.mood NOT NULL DEFAULT 'ok'
);

CREATE TABLE public.alltypes (
    id            int PRIMARY KEY,
    c_int2        int2,
    c_int4        int4,
    c_int8        int8,
    c_num         numeric,
    c_num_p       numeric(40,20),
    c_float4      float4,
    c_float8      float8,
    c_bool        bool,
    c_text        text,
    c_varchar     varchar(10),
    c_char        char(5),
    c_qchar       "char",
    c_name        name,
    c_bytea       bytea,
    c_date        date,
    c_time        time,
    c_timetz      timetz,
    c_ts          timestamp,
    c_tstz        timestamptz,
    c_ts3         timestamp(3),
    c_interval    interval,
    c_uuid        uuid,
    c_json        json,
    c_jsonb       jsonb,
    c_xml         xml,
    c_inet        inet,
    c_cidr        cidr,
    c_macaddr     macaddr,
    c_macaddr8    macaddr8,
    c_money       money,
    c_point       point,
    c_line        line,
    c_lseg        lseg,
    c_box         box,
    c_path        path,
    c_polygon     polygon,
    c_circle      circle,
    c_bit         bit(8),
    c_varbit      varbit(16),
    c_tsvector    tsvector,
    c_tsquery     tsquery,
    c_int4range   int4range,
    c_int8range   int8range,
    c_numrange    numrange,
    c_daterange   daterange,
    c_tsrange     tsrange,
    c_tstzrange   tstzrange,
    c_int4multi   int4multirange,
    c_int4arr     int4[],
    c_textarr     text[],
    c_int2d       int4[][],
    c_numarr      numeric[],
    c_tsarr       timestamptz[],
    c_jsonbarr    jsonb[],
    c_pg_lsn      pg_lsn,
    c_oid         oid
);
});

my @core_tables = (
	'public.t1', '"My Schema"."Mixed Case"',
	'public.big', 'public.nokey',
	'public.trunc', 'public.txn',
	'public.evolve');
my @type_tables = ('public.alltypes', 'public.typed');
my @all_tables = (@core_tables, @type_tables);

# ---------------------------------------------------------------------------
# Mirrors: m1 (core behaviour), m-types (data types). Two mirrors keep a
# type problem from hiding the core results, and exercise two mirrors of
# one peer; 'm-types' also checks the '-' -> '_' rule for slot names.
# ---------------------------------------------------------------------------

ok( create_mirror(
		$dest, 'm1', \@core_tables,
		do_initial_snapshot => 'false',
		max_batch_size => 500),
	'mirror m1 reaches RUNNING');
ok( create_mirror(
		$dest, 'm-types', \@type_tables, do_initial_snapshot => 'false'),
	'mirror m-types reaches RUNNING');

is(mirror_field($dest, 'm1', 'phase'), 'CDC', 'm1 phase is CDC');
is(mirror_field($dest, 'm1', 'slot_name'), 'bunny_slot_m1',
	'm1 slot_name in bunny.mirrors');
is(mirror_field($dest, 'm1', 'publication_name'), 'bunny_pub_m1',
	'm1 publication_name in bunny.mirrors');

# --- workers and source-side objects ---------------------------------------

ok( poll_until(
		sub {
			(query_value($dest,
				"SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'bunnydb%launcher%'"
			) // '') eq '1';
		},
		30),
	'launcher visible in pg_stat_activity');
ok( poll_until(
		sub {
			(query_value($dest,
					"SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'bunnydb mirror%'"
				) // 0) >= 2;
		},
		30),
	'mirror workers visible with backend_type bunnydb mirror ...');
is( query_value(
		$dest,
		"SELECT count(*) FROM pg_stat_activity "
		  . "WHERE backend_type LIKE 'bunnydb%' AND backend_type LIKE '%m1%' "
		  . "AND backend_type NOT LIKE '%launcher%'"),
	'1',
	'exactly one worker for m1 (backend_type contains bunnydb and mirror name)');
ok( scalar(worker_pids($dest, 'm-types')) >= 1,
	'worker for m-types visible');

foreach my $m ('m1', 'm-types')
{
	ok( poll_until(
			sub {
				(query_value($source,
					"SELECT count(*) FROM pg_stat_replication WHERE application_name = 'bunnydb:$m'"
				) // '') eq '1';
			},
			30),
		"source pg_stat_replication shows application_name bunnydb:$m");
}

is( $source->safe_psql(
		'postgres',
		"SELECT slot_type || ',' || plugin || ',' || database FROM pg_replication_slots WHERE slot_name = 'bunny_slot_m1'"
	),
	'logical,pgoutput,postgres',
	'logical pgoutput slot bunny_slot_m1 exists on source');
is( $source->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'bunny_slot_m_types'"
	),
	'1',
	"slot of mirror m-types is named bunny_slot_m_types ('-' -> '_')");
is( $source->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_publication WHERE pubname = 'bunny_pub_m_types'"),
	'1',
	'publication bunny_pub_m_types exists on source');
is( $source->safe_psql(
		'postgres',
		"SELECT string_agg(format('%I.%I', schemaname, tablename), ',' ORDER BY format('%I.%I', schemaname, tablename)) "
		  . "FROM pg_publication_tables WHERE pubname = 'bunny_pub_m1'"),
	join(',',
		sort('"My Schema"."Mixed Case"', 'public.big',
			'public.evolve',  'public.nokey',
			'public.t1',      'public.trunc',
			'public.txn')),
	'publication bunny_pub_m1 contains exactly the mapped tables');

# --- destination tables were created by SETUP ------------------------------

foreach my $t (@all_tables)
{
	is(table_shape($dest, $t), table_shape($source, $t),
		"destination table $t created with same columns, types, NOT NULL, PK");
}
is( query_value(
		$dest,
		"SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum "
		  . "WHERE enumtypid = 'public.mood'::regtype"),
	'sad,ok,happy,Very Happy',
	'enum type mood created on destination with labels in order');
is( query_value(
		$dest,
		"SELECT typtype::text || ':' || format_type(typbasetype, typtypmod) FROM pg_type "
		  . "WHERE oid = 'public.posint'::regtype"),
	'd:integer',
	'domain posint created on destination over integer');

# ---------------------------------------------------------------------------
# 1. Basic INSERT / UPDATE / DELETE
# ---------------------------------------------------------------------------

$source->safe_psql(
	'postgres', q{
INSERT INTO t1 VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3), (4, NULL, NULL);
UPDATE t1 SET val = 'TWO', n = 22 WHERE id = 2;
UPDATE t1 SET id = 30 WHERE id = 3;          -- primary key change
DELETE FROM t1 WHERE id = 1;
INSERT INTO t1 VALUES (1, 'one again', 11);  -- re-insert a deleted key
UPDATE t1 SET val = NULL WHERE id = 4;       -- to NULL
UPDATE t1 SET val = 'four' WHERE id = 4;     -- from NULL
});
my ($synced, $wres) = wait_synced($source, $dest, 'm1', ['public.t1']);
ok($synced, 'basic DML caught up');
is($wres, 't', 'bunny.wait_for_lsn returned true after basic DML');
is( query_value($dest,
		q{SELECT string_agg(id || ':' || coalesce(val, 'NULL') || ':' || coalesce(n::text, 'NULL'), ',' ORDER BY id) FROM t1}
	),
	'1:one again:11,2:TWO:22,4:four:NULL,30:three:3',
	'basic DML: destination rows exactly as expected');

# a big transaction spanning many batches (max_batch_size = 500)
$source->safe_psql(
	'postgres', q{
BEGIN;
INSERT INTO t1 SELECT g, 'bulk ' || g, g FROM generate_series(1000, 20999) g;
UPDATE t1 SET n = n * 2 WHERE id BETWEEN 1000 AND 5999;
DELETE FROM t1 WHERE id BETWEEN 20000 AND 20999;
COMMIT;
});
ok(wait_synced($source, $dest, 'm1', ['public.t1']),
	'large multi-batch transaction caught up');
compare_tables($source, $dest, ['public.t1'], 'large transaction');

# The slot must soon know how far the mirror got: a new walsender (after a
# pause or a reconnect) decodes again from the slot's restart point, which
# moves only as far as the flush position we report.  It is reported once
# the WAL writer has flushed the commit (not at the 10 s feedback interval),
# and at once when the mirror is paused.
my $applied_sql =
	"SELECT s.remote_lsn FROM pg_replication_origin_status s "
  . "JOIN bunny.mirror m ON s.external_id = m.origin_name WHERE m.name = 'm1'";
my $slot_confirms = sub {
	my ($lsn) = @_;
	return ($source->safe_psql('postgres',
			"SELECT confirmed_flush_lsn >= '$lsn'::pg_lsn FROM pg_replication_slots "
			  . "WHERE slot_name = 'bunny_slot_m1'") // '') eq 't';
};
$source->safe_psql('postgres', "INSERT INTO t1 VALUES (50000, 'flush report', 1)");
ok(wait_synced($source, $dest, 'm1', ['public.t1']), 'row for the flush report caught up');
my $applied = query_value($dest, $applied_sql);
ok(poll_until(sub { $slot_confirms->($applied) }, 3, 0.05),
	"the slot confirms the applied commit $applied within 3 s");
$source->safe_psql('postgres', "DELETE FROM t1 WHERE id = 50000");
ok(wait_synced($source, $dest, 'm1', ['public.t1']), 'delete for the flush report caught up');
$applied = query_value($dest, $applied_sql);
$dest->safe_psql('postgres', "SELECT bunny.pause_mirror('m1')");
ok(wait_for_status($dest, 'm1', 'PAUSED', 60), 'm1 paused');
ok(poll_until(sub { $slot_confirms->($applied) }, 2, 0.05),
	"after the pause, the slot confirms the last applied commit $applied");
$dest->safe_psql('postgres', "SELECT bunny.resume_mirror('m1')");
ok(wait_for_status($dest, 'm1', 'RUNNING', 60), 'm1 running again');

is( query_value($dest,
		'SELECT bunny.wait_for_lsn(\'m1\', \'FFFFFFFF/FFFFFF00\'::pg_lsn, 500)'),
	'f',
	'wait_for_lsn returns false at timeout for an LSN not reached');

# ---------------------------------------------------------------------------
# 2. Quoted mixed-case names
# ---------------------------------------------------------------------------

$source->safe_psql(
	'postgres', q{
INSERT INTO "My Schema"."Mixed Case" ("Id", "Select", "lowercase", "CamelCol")
VALUES (1, 'select * from x', 1, 'a'), (2, 'O''Reilly "quoted"', 2, 'b'),
       (3, NULL, NULL, 'c');
UPDATE "My Schema"."Mixed Case" SET "Select" = 'updated' WHERE "Id" = 1;
DELETE FROM "My Schema"."Mixed Case" WHERE "Id" = 3;
});
ok(wait_synced($source, $dest, 'm1', ['"My Schema"."Mixed Case"']),
	'mixed-case table caught up');
is( query_value($dest,
		'SELECT string_agg("Id" || \'=\' || "Select", \',\' ORDER BY "Id") FROM "My Schema"."Mixed Case"'
	),
	'1=updated,2=O\'Reilly "quoted"',
	'mixed-case table: column "Select" replicated');

# ---------------------------------------------------------------------------
# 3. All data types
# ---------------------------------------------------------------------------

$source->safe_psql(
	'postgres', q{
INSERT INTO alltypes VALUES (
    1, 32767, 2147483647, 9223372036854775807,
    123456789012345678901234567890.123456789012345678901234567890,
    12345678901234567890.12345678901234567890,
    3.4028235e38, 1.7976931348623157e308,
    true,
    E'tab\there\nnewline ''quote'' "dq" \\\\ backslash \u00fc\u00f1\u00ef \U0001F407 end',
    'varchar10!', 'ab', 'x', 'a name',
    '\x00deadbeef00ff5c27'::bytea,
    '2024-02-29', '23:59:59.999999', '12:34:56.789012-08', '2000-01-01 00:00:00.000001',
    '2024-02-29 12:00:00.123456+05:30', '2024-01-01 01:02:03.456',
    '1 year 2 mons 3 days 04:05:06.789',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '{"b": [1, 2.50, {"c": null}],   "a" : "x",  "a": "dup"}',
    '{"b": [1, 2.50, {"c": null}], "a": "x", "n": 1e2}',
    '<root a="1"><child>text &amp; more</child><!-- c --></root>',
    '192.168.1.5/24', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
    '1234.56',
    '(1.5,-2.25)', '{1,-1,0}', '[(0,0),(1,1)]', '(1,1),(0,0)',
    '[(0,0),(1,1),(2,0)]', '((0,0),(1,1),(1,0))', '<(1,2),3>',
    B'10101010', B'101',
    'a fat cat sat:2 on:3A mat:4B', 'fat & (rat | !cat) <-> sat',
    '[1,10)', '[-9223372036854775808,0)', '(1.5,2.5]', '[2024-01-01,2024-12-31)',
    '[2024-01-01 00:00,2024-01-02 00:00)', '[2024-01-01 00:00+00,infinity)',
    '{[1,3), [5,8)}',
    '{1,NULL,3}', '{"a b","NULL",NULL,"quote\"d","back\\\\slash","",","}',
    '{{1,2},{NULL,4}}', '{1.5,NaN,NULL,-0.0001}',
    '{"2024-01-01 00:00:00+00",infinity,NULL}', ARRAY['{"k": 1}'::jsonb, NULL, '[]'],
    '16/B374D848', 4294967295
), (
    2, -32768, -2147483648, -9223372036854775808,
    'NaN', -0.00000000000000000001,
    'NaN', '-0',
    false, '', '', '     ', E'\\001', '',
    '\x'::bytea,
    '4713-01-01 BC', '00:00:00', '00:00:00+15:59', 'infinity',
    '-infinity', '-infinity',
    '-178000000 years',
    '00000000-0000-0000-0000-000000000000',
    '[]', '{}', '<a/>',
    '::1', '::/0', 'ff:ff:ff:ff:ff:ff', '00:00:00:00:00:00:00:00',
    '-92233720368547758.08',
    '(0,0)', '{0,1,-1}', '[(-1e300,1e-300),(0,0)]', '(0,0),(0,0)',
    '((0,0),(1,1))', '((0,0))', '<(0,0),0>',
    B'00000000', B'',
    '', '',
    'empty', 'empty', '(,)', '(,2000-01-01]',
    '(,)', 'empty',
    '{}',
    '{}', '{}', '[0:1][5:6]={{1,2},{3,4}}', '{}',
    '{}', '{}',
    '0/0', 0
), (
    3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
), (
    4, 0, 0, 0, 'Infinity', 0, 'Infinity', '-Infinity', NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, '2000-01-01', '24:00:00', NULL, '294276-12-31 23:59:59.999999',
    '294276-12-30 23:59:59.999999+00', NULL, '178000000 years', NULL,
    '"just a string"', 'null', NULL, NULL, NULL, NULL, NULL, '0',
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, '[2:4]={7,8,9}', '{"\\\\"}', NULL,
    '{-Infinity}', NULL, NULL, 'FFFFFFFF/FFFFFFFF', NULL
), (
    5, 1, 1, 1, '-Infinity', 1, '1.4e-45', '5e-324', true, 'x', 'x', 'x', 'x',
    'x', '\xff', '1999-12-31', '12:00', '12:00+00', '1999-12-31 23:59:59',
    '1999-12-31 23:59:59+00', NULL, '-1 days +00:00:01', NULL,
    NULL, NULL, NULL, '0.0.0.0', '0.0.0.0/32', NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL
);
-- a float value needing shortest-exact output
UPDATE alltypes SET c_float8 = 0.1 + 0.2, c_float4 = 0.1 WHERE id = 5;
});
ok(wait_synced($source, $dest, 'm-types', ['public.alltypes']),
	'alltypes inserts caught up');
compare_tables($source, $dest, ['public.alltypes'], 'all types (insert)');

# Spot checks with values that would hide in a hash
foreach my $col (
	qw(c_num c_float4 c_float8 c_text c_bytea c_json c_xml c_int2d c_money c_tstz c_interval)
  )
{
	is( query_value($dest,
			"SELECT string_agg(coalesce(${col}::text, '<NULL>'), ' ~ ' ORDER BY id) FROM alltypes"
		),
		$source->safe_psql('postgres',
			"SELECT string_agg(coalesce(${col}::text, '<NULL>'), ' ~ ' ORDER BY id) FROM alltypes"
		),
		"alltypes column $col identical");
}

# Updates: copy every column from another row (exercises UPDATE of all types),
# set everything to NULL, delete one row.
$source->safe_psql(
	'postgres', q{
UPDATE alltypes a SET (c_int2, c_int4, c_int8, c_num, c_num_p, c_float4, c_float8,
    c_bool, c_text, c_varchar, c_char, c_qchar, c_name, c_bytea, c_date, c_time,
    c_timetz, c_ts, c_tstz, c_ts3, c_interval, c_uuid, c_json, c_jsonb, c_xml,
    c_inet, c_cidr, c_macaddr, c_macaddr8, c_money, c_point, c_line, c_lseg,
    c_box, c_path, c_polygon, c_circle, c_bit, c_varbit, c_tsvector, c_tsquery,
    c_int4range, c_int8range, c_numrange, c_daterange, c_tsrange, c_tstzrange,
    c_int4multi, c_int4arr, c_textarr, c_int2d, c_numarr, c_tsarr, c_jsonbarr,
    c_pg_lsn, c_oid)
  = (SELECT c_int2, c_int4, c_int8, c_num, c_num_p, c_float4, c_float8,
    c_bool, c_text, c_varchar, c_char, c_qchar, c_name, c_bytea, c_date, c_time,
    c_timetz, c_ts, c_tstz, c_ts3, c_interval, c_uuid, c_json, c_jsonb, c_xml,
    c_inet, c_cidr, c_macaddr, c_macaddr8, c_money, c_point, c_line, c_lseg,
    c_box, c_path, c_polygon, c_circle, c_bit, c_varbit, c_tsvector, c_tsquery,
    c_int4range, c_int8range, c_numrange, c_daterange, c_tsrange, c_tstzrange,
    c_int4multi, c_int4arr, c_textarr, c_int2d, c_numarr, c_tsarr, c_jsonbarr,
    c_pg_lsn, c_oid FROM alltypes b WHERE b.id = 1)
WHERE a.id = 4;
INSERT INTO alltypes (id) VALUES (6);
UPDATE alltypes SET c_text = 'now set', c_jsonb = '{"set": true}' WHERE id = 6;
UPDATE alltypes SET c_text = NULL, c_jsonb = NULL, c_int2d = NULL WHERE id = 2;
DELETE FROM alltypes WHERE id = 5;
});
ok(wait_synced($source, $dest, 'm-types', ['public.alltypes']),
	'alltypes updates/deletes caught up');
compare_tables($source, $dest, ['public.alltypes'], 'all types (update/delete)');

# --- enum and domain --------------------------------------------------------

$source->safe_psql(
	'postgres', q{
INSERT INTO typed VALUES (1, 'happy', 42, '{sad,"Very Happy",NULL}', 'sad'),
                         (2, NULL, NULL, NULL, DEFAULT),
                         (3, 'Very Happy', 1, '{}', 'happy');
UPDATE typed SET m = 'sad', p = 7 WHERE id = 1;
DELETE FROM typed WHERE id = 3;
});
ok(wait_synced($source, $dest, 'm-types', ['public.typed']),
	'enum/domain table caught up');
compare_tables($source, $dest, ['public.typed'], 'enum/domain');
is( query_value($dest,
		"SELECT string_agg(id || ':' || coalesce(m::text, '-') || ':' || coalesce(p::text, '-') || ':' || coalesce(ms::text, '-') || ':' || m_nn, ',' ORDER BY id) FROM typed"
	),
	'1:sad:7:{sad,"Very Happy",NULL}:sad,2:-:-:-:ok',
	'enum/domain values on destination');

# ---------------------------------------------------------------------------
# 4. TOAST: large value, then UPDATE of another column only
# ---------------------------------------------------------------------------

$source->safe_psql(
	'postgres', q{
INSERT INTO big VALUES (1, (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 30000) i), 0);
INSERT INTO big VALUES (2, repeat('small', 3), 0);
});
ok(wait_synced($source, $dest, 'm1', ['public.big']), 'TOAST insert caught up');
my $src_big = $source->safe_psql('postgres',
	'SELECT length(payload) || \':\' || md5(payload) FROM big WHERE id = 1');
is( query_value($dest,
		'SELECT length(payload) || \':\' || md5(payload) FROM big WHERE id = 1'),
	$src_big, 'large TOASTed value replicated');

$source->safe_psql('postgres',
	'UPDATE big SET counter = counter + 1; UPDATE big SET counter = counter + 1 WHERE id = 1;');
ok(wait_synced($source, $dest, 'm1', ['public.big']),
	'UPDATE of non-TOAST column caught up');
is( query_value($dest,
		'SELECT length(payload) || \':\' || md5(payload) || \':\' || counter FROM big WHERE id = 1'
	),
	"$src_big:2",
	'unchanged TOAST value survives UPDATE of another column');

# TOAST value changed, and a row whose key changes while payload unchanged
$source->safe_psql(
	'postgres', q{
UPDATE big SET payload = payload || 'tail', counter = 10 WHERE id = 1;
UPDATE big SET id = 3 WHERE id = 1;
});
ok(wait_synced($source, $dest, 'm1', ['public.big']),
	'TOAST value change / key change caught up');
compare_tables($source, $dest, ['public.big'], 'TOAST');

# ---------------------------------------------------------------------------
# 5. REPLICA IDENTITY FULL without key, duplicate rows
# ---------------------------------------------------------------------------

$source->safe_psql(
	'postgres', q{
INSERT INTO nokey VALUES (1, 'x', 1.0), (1, 'x', 1.0), (2, 'y', 2.5), (3, NULL, NULL),
                         (4, 'dup', 4), (4, 'dup', 4), (4, 'dup', 4);
});
ok(wait_synced($source, $dest, 'm1', ['public.nokey']),
	'nokey inserts caught up');
$source->safe_psql(
	'postgres', q{
-- delete exactly one of two identical rows
DELETE FROM nokey WHERE ctid = (SELECT ctid FROM nokey WHERE a = 1 LIMIT 1);
-- update exactly one of three identical rows
UPDATE nokey SET b = 'dup-changed' WHERE ctid = (SELECT ctid FROM nokey WHERE a = 4 LIMIT 1);
-- match a row containing NULLs
UPDATE nokey SET c = 3 WHERE a = 3;
UPDATE nokey SET b = 'was null' WHERE a = 3;
-- numeric 2.5 vs 2.50: same value, different text
UPDATE nokey SET c = 2.50 WHERE a = 2;
DELETE FROM nokey WHERE a = 2;
});
ok(wait_synced($source, $dest, 'm1', ['public.nokey']),
	'nokey updates/deletes caught up');
compare_tables($source, $dest, ['public.nokey'], 'replica identity full');
is( query_value($dest,
		"SELECT string_agg(a || ':' || coalesce(b, '-') || ':' || coalesce(c::text, '-'), ',' ORDER BY a, b) FROM nokey"
	),
	'1:x:1.0,3:was null:3,4:dup:4,4:dup:4,4:dup-changed:4',
	'exactly one of the identical rows was deleted/updated');

# ---------------------------------------------------------------------------
# 6. TRUNCATE
# ---------------------------------------------------------------------------

$source->safe_psql('postgres',
	"INSERT INTO trunc SELECT g, 'v' || g FROM generate_series(1, 100) g;");
ok(wait_synced($source, $dest, 'm1', ['public.trunc']),
	'trunc inserts caught up');
is(query_value($dest, 'SELECT count(*) FROM trunc'), '100',
	'100 rows before TRUNCATE');
$source->safe_psql(
	'postgres', q{
TRUNCATE trunc;
INSERT INTO trunc VALUES (1, 'after truncate'), (500, 'new');
BEGIN;
INSERT INTO trunc VALUES (2, 'in tx before truncate');
TRUNCATE trunc;
INSERT INTO trunc VALUES (3, 'in tx after truncate');
COMMIT;
});
ok(wait_synced($source, $dest, 'm1', ['public.trunc']),
	'TRUNCATE caught up');
is( query_value($dest, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM trunc"),
	'3:in tx after truncate',
	'TRUNCATE applied on destination');

# ---------------------------------------------------------------------------
# 7. Rolled-back transactions and savepoints
# ---------------------------------------------------------------------------

$source->safe_psql(
	'postgres', q{
BEGIN;
INSERT INTO txn VALUES (1000, 'rolled back');
INSERT INTO t1 VALUES (-1000, 'rolled back', 0);
UPDATE txn SET v = 'never';
ROLLBACK;

BEGIN;
INSERT INTO txn VALUES (2000, 'kept');
SAVEPOINT a;
INSERT INTO txn VALUES (2001, 'rolled back to savepoint');
UPDATE txn SET v = 'rolled back update' WHERE id = 2000;
ROLLBACK TO SAVEPOINT a;
INSERT INTO txn VALUES (2002, 'after rollback to savepoint');
SAVEPOINT b;
UPDATE txn SET v = 'kept, updated in released savepoint' WHERE id = 2000;
SAVEPOINT c;
DELETE FROM txn WHERE id = 2002;
ROLLBACK TO SAVEPOINT c;
RELEASE SAVEPOINT b;
COMMIT;
});
# a large rolled-back transaction (spills to disk in the walsender)
$source->safe_psql(
	'postgres', q{
BEGIN;
INSERT INTO txn SELECT g, 'big rollback' FROM generate_series(100000, 160000) g;
ROLLBACK;
INSERT INTO txn VALUES (3000, 'marker');
});
ok(wait_synced($source, $dest, 'm1', [ 'public.txn', 'public.t1' ]),
	'transactions with rollback/savepoints caught up');
is( query_value($dest, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM txn"),
	'2000:kept, updated in released savepoint,2002:after rollback to savepoint,3000:marker',
	'rolled-back work absent, savepoint semantics respected');
is(query_value($dest, 'SELECT count(*) FROM t1 WHERE id = -1000'),
	'0', 'rolled-back insert into t1 absent');

# ---------------------------------------------------------------------------
# 8. ALTER TABLE ... ADD COLUMN on the source
# ---------------------------------------------------------------------------

$source->safe_psql(
	'postgres', q{
INSERT INTO evolve VALUES (1, 'before'), (2, 'before');
});
ok(wait_synced($source, $dest, 'm1', ['public.evolve']),
	'evolve initial rows caught up');
$source->safe_psql(
	'postgres', q{
ALTER TABLE evolve ADD COLUMN extra_col integer;
ALTER TABLE evolve ADD COLUMN "Extra Text" text;
INSERT INTO evolve VALUES (3, 'after', 42, 'new column');
UPDATE evolve SET extra_col = 7 WHERE id = 1;
INSERT INTO evolve (id, a) VALUES (4, 'after, new columns null');
});
ok(wait_synced($source, $dest, 'm1', ['public.evolve']),
	'rows using added columns caught up');
is( query_value($dest,
		"SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'public.evolve'::regclass AND attnum > 0 AND NOT attisdropped"
	),
	'id,a,extra_col,Extra Text',
	'added columns exist on destination');
is(table_shape($dest, 'public.evolve'), table_shape($source, 'public.evolve'),
	'added columns have the source types');
compare_tables($source, $dest, ['public.evolve'], 'after ADD COLUMN');
ok( (query_value($dest,
			"SELECT count(*) FROM bunny.logs('m1', search => 'extra_col')") // 0)
	  > 0,
	'column addition is logged in bunny.mirror_logs');

# ---------------------------------------------------------------------------
# Final state
# ---------------------------------------------------------------------------

ok(wait_synced($source, $dest, 'm1', \@core_tables), 'm1 final catch-up');
ok(wait_synced($source, $dest, 'm-types', \@type_tables),
	'm-types final catch-up');
my $rows = compare_tables($source, $dest, \@all_tables, 'final');
note("final comparison covered $rows source rows in "
	  . scalar(@all_tables)
	  . " tables");

foreach my $m ('m1', 'm-types')
{
	is(mirror_field($dest, $m, 'status'),      'RUNNING', "$m still RUNNING");
	is(mirror_field($dest, $m, 'error_count'), '0',       "$m error_count = 0");
	is(mirror_field($dest, $m, 'error_message'), '',
		"$m has no error_message");
}
ok( (query_value($dest,
			"SELECT last_lsn IS NOT NULL AND last_lsn > '0/0' FROM bunny.mirrors WHERE name = 'm1'"
		) // '') eq 't',
	'm1 last_lsn is set');
ok( poll_until(
		sub {
			(query_value($dest,
					"SELECT lag_seconds = 0 FROM bunny.mirrors WHERE name = 'm1'")
				  // '') eq 't';
		},
		20),
	'm1 lag_seconds is 0 once caught up');
ok( (query_value($dest,
			"SELECT total_rows_synced > 0 FROM bunny.mirrors WHERE name = 'm1'")
		  // '') eq 't',
	'm1 total_rows_synced counts applied rows');
is( query_value(
		$dest,
		"SELECT rows_inserted > 0 AND rows_updated > 0 AND rows_deleted > 0 "
		  . "FROM bunny.mirror_tables WHERE mirror = 'm1' AND source_table = 'public.t1'"
	),
	't',
	'bunny.mirror_tables counts inserts, updates and deletes of public.t1');

# Writes only to unpublished tables must not make the slot hold WAL forever.
$source->safe_psql('postgres',
	"INSERT INTO unpublished SELECT g, 'x' FROM generate_series(1, 1000) g");
my $idle_lsn = source_lsn($source);
ok( poll_until(
		sub {
			($source->safe_psql('postgres',
					"SELECT confirmed_flush_lsn >= '$idle_lsn'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'bunny_slot_m1'"
				) // '') eq 't';
		},
		90),
	'slot confirmed_flush_lsn advances past writes to unpublished tables');

my $dest_log = slurp_file($dest->logfile);
unlike($dest_log, qr/terminated by signal|PANIC|TRAP:/,
	'no crash of any destination process');

$dest->stop;
$source->stop;
done_testing();
