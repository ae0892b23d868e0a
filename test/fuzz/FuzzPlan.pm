
# Copyright (c) bunnydb authors
#
# FuzzPlan - the deterministic half of the randomized differential test
# (test/fuzz/run.pl, test/t/016_fuzz.pl): from a seed, a complete plan of
# what the run does, as data, before anything runs:
#
#   - the source schema: tables of varied shapes (primary keys of several
#     types, composite, uuid, REPLICA IDENTITY FULL without key, identity
#     columns ALWAYS and BY DEFAULT, serial, stored generated columns,
#     TOAST-size text and bytea, jsonb, arrays, numeric, timestamptz, enum,
#     domain and composite types, ranges, names that need quoting,
#     partitioned tables mirrored through the root, a dropped column, a
#     renamed destination, excluded columns) and its initial rows;
#   - the mirror and its options;
#   - steps: per step, the SQL every source session runs (concurrently),
#     barrier actions run before the sessions start (source DDL, source
#     restarts, comparisons), and timed actions run while they run
#     (operations on the mirror, faults);
#   - the final catch-up and comparison.
#
# Everything comes from FuzzRng streams derived from the seed, so the same
# seed and switches give the same plan (see plan_text for a readable
# listing).  The workload never fails on its own: every session inserts
# keys from its own disjoint range and updates or deletes only rows it
# inserted, so sessions never wait for each other's rows (no deadlocks),
# and a statement that finds its row gone (a TRUNCATE of another session,
# a rolled-back savepoint) simply changes nothing.
#
# Generation of features that hit known product bugs is behind the
# switches in %KNOWN_BUG_SWITCHES (on once fixed).

package FuzzRng;

use strict;
use warnings;
use Digest::MD5 qw(md5);

# xorshift128 over 32-bit words, seeded from md5(seed, stream name): one
# independent stream per aspect, so that a change in how one aspect is
# generated does not reshuffle the others.
sub new
{
	my ($class, $seed, $stream) = @_;
	my @s = unpack('N4', md5("bunnyfuzz/$seed/$stream"));
	$s[0] ||= 0x9e3779b9;
	return bless { s => \@s }, $class;
}

sub next32
{
	my ($self) = @_;
	my $s = $self->{s};
	my $t = $s->[0] ^ (($s->[0] << 11) & 0xffffffff);
	@$s[ 0 .. 2 ] = @$s[ 1 .. 3 ];
	$s->[3] = ($s->[3] ^ ($s->[3] >> 19) ^ $t ^ ($t >> 8)) & 0xffffffff;
	return $s->[3];
}

sub float { return $_[0]->next32 / 4294967296; }

# integer in [0, n)
sub below
{
	my ($self, $n) = @_;
	return int($self->float * $n);
}

# integer in [a, b]
sub range
{
	my ($self, $a, $b) = @_;
	return $a + $self->below($b - $a + 1);
}

sub real
{
	my ($self, $a, $b) = @_;
	return $a + ($b - $a) * $self->float;
}

sub chance { return $_[0]->float < $_[1]; }

sub pick
{
	my ($self, @l) = @_;
	return $l[ $self->below(scalar @l) ];
}

# pick from [item, weight] pairs
sub pick_w
{
	my ($self, @pairs) = @_;
	my $total = 0;
	$total += $_->[1] for @pairs;
	my $x = $self->float * $total;
	foreach my $p (@pairs)
	{
		return $p->[0] if ($x -= $p->[1]) < 0;
	}
	return $pairs[-1][0];
}

sub shuffle
{
	my ($self, @l) = @_;
	for (my $i = $#l; $i > 0; $i--)
	{
		my $j = $self->below($i + 1);
		@l[ $i, $j ] = @l[ $j, $i ];
	}
	return @l;
}

package FuzzPlan;

use strict;
use warnings;
use Digest::MD5 qw(md5_hex);
use Exporter 'import';

our @EXPORT_OK = qw(generate_plan plan_text qi qn lit %KNOWN_BUG_SWITCHES
  @ALL_FEATURES);

# Generation switches for what once broke the product.  On (1): fixed,
# so the seeds keep it covered; off (0): what bunnydb refuses or documents
# as a limitation, which a seed must not generate.  run.pl --enable NAME
# (or BUNNY_FUZZ_ENABLE for 016_fuzz) turns one on.
our %KNOWN_BUG_SWITCHES = (
	# resync_table / resync_mirror with 'swap' of a table with an identity
	# column (fixed: the swap carries identity sequences over)
	identity_swap => 1,
	# TRUNCATE of a single leaf partition of a table mirrored through its
	# root: PostgreSQL does not publish it (README Limitations)
	partition_truncate => 0,
	# a table without columns: create_mirror refuses it (018_source_guard)
	no_column_table => 0,
	# an ENABLE REPLICA BEFORE UPDATE trigger on the destination that
	# returns NULL (fixed: the row is skipped, as PostgreSQL does)
	replica_trigger_null => 1,
	# ALTER TABLE ADD COLUMN on the source of a table with exclude_columns
	# (fixed: sync_schema widens the column list and copies the table)
	add_column_excluded => 1,
	# resync of a table whose columns changed on the source after the
	# mirror was set up (fixed: a resync plans from the source as it is)
	resync_after_ddl => 1,
	# a renamed destination of a source table whose names hold whitespace
	# (fixed: sync_schema rewrites index definitions by exact names)
	sync_schema_index_names => 1,
	# sync_schema dropping a column while the mirror still has changes to
	# apply that carry it (fixed: sync_schema waits for the backlog)
	sync_schema_backlog => 1,
	# a resync or an added table copying rows whose enum label was added
	# on the source after setup (fixed: labels are taken over first)
	enum_label_copy => 1,
	# sync_schema while the worker applies changes to the same table
	# (fixed: sync_schema stops the worker); while off, a sync_schema that
	# dies of a deadlock is retried (and logged) instead of failing the run
	sync_schema_deadlock => 1,
	# DROP COLUMN on the source of a NOT NULL column (fixed: the worker
	# makes it nullable on tables it created)
	drop_not_null_column => 1,
	# a swap resync of a table whose destination name has 56 bytes or
	# more (fixed: the copy's and the old table's names fit)
	long_name_swap => 1,
);

# Every feature the fixed seeds of 016_fuzz must cover between them.
our @ALL_FEATURES = qw(
  pk_int pk_bigint pk_text pk_uuid pk_composite replica_full_no_key
  identity_always identity_by_default serial generated_stored nullable
  toast_text toast_bytea jsonb array numeric timestamptz enum domain
  composite_type range name_reserved name_mixed_case name_space
  name_unicode name_dot name_quote partitioned_range partitioned_hash
  partitioned_list dropped_column renamed_destination exclude_columns
  snapshot_on snapshot_off
  wl_insert wl_update wl_key_update wl_delete wl_truncate wl_savepoint_rollback
  wl_rollback wl_large_txn wl_unchanged_toast wl_upsert wl_full_duplicates
  op_pause_resume op_resync_table_truncate op_resync_table_swap
  op_resync_mirror_truncate op_resync_mirror_swap op_update_tables_add
  op_update_tables_remove op_sync_schema_add_column op_sync_schema_drop_column
  op_retry_mirror op_enum_add_value op_multi_table_truncate
  fault_kill_worker fault_kill_snapshot fault_kill_launcher
  fault_dest_restart fault_source_restart fault_source_crash
  fault_walsender_cut
);

# ---------------------------------------------------------------------------
# SQL text helpers (all strings are UTF-8 byte strings)
# ---------------------------------------------------------------------------

# quoted identifier, always quoted
sub qi
{
	my ($s) = @_;
	$s =~ s/"/""/g;
	return qq("$s");
}

# qualified name
sub qn { return qi($_[0]) . '.' . qi($_[1]); }

# string literal; E'' form when it holds backslashes or control characters
sub lit
{
	my ($s) = @_;
	return 'NULL' unless defined $s;
	if ($s =~ /[\\\x01-\x1f]/)
	{
		$s =~ s/\\/\\\\/g;
		$s =~ s/'/''/g;
		$s =~ s/\n/\\n/g;
		$s =~ s/\r/\\r/g;
		$s =~ s/\t/\\t/g;
		$s =~ s/([\x01-\x1f])/sprintf('\\x%02x', ord $1)/ge;
		return "E'$s'";
	}
	$s =~ s/'/''/g;
	return "'$s'";
}

# md5 of a string as a uuid text
sub md5_uuid
{
	my $h = md5_hex($_[0]);
	return join('-', substr($h, 0, 8), substr($h, 8, 4), substr($h, 12, 4),
		substr($h, 16, 4), substr($h, 20, 12));
}

# ---------------------------------------------------------------------------
# Value pools
# ---------------------------------------------------------------------------

my @TEXT_POOL = (
	'', 'plain', "tab\there", "new\nline", "cr\rlf\r\n", 'back\\slash',
	"quote'single", 'dq"dq', "\xc3\xbcn\xc3\xafc\xc3\xb6d\xc3\xa9",
	"\xe8\xa1\xa8\xe6\xa0\xbc", "\xf0\x9f\x98\x80 emoji", '\\N', '  padded  ',
	'NULL', 'comma,brace{}', ' ', 'a|b', '%_like', "\x7f del");

my @JSON_POOL = (
	'{}', '[]', 'null', '"str"', '123.4500', 'true',
	'{"a": 1, "b": [1, 2.50, null, true], "c": {"d": "\u00fc"}}',
	'{"key with space": "v\\"q", "n": -0.0001, "e": 1e300}',
	'[1, "two", {"three": 3}, [[]]]',
	"{\"unicode\": \"\xe8\xa1\xa8\", \"nl\": \"a\\nb\"}");

my @TS_POOL = (
	'infinity', '-infinity', '1970-01-01 00:00:00+00',
	'2024-02-29 12:34:56.789012+05:30', '1999-12-31 23:59:59.999999-08',
	'0044-03-15 12:00:00+00 BC', '2038-01-19 03:14:08+00');

my @INTERVAL_POOL = (
	'1 year 2 mons 3 days 04:05:06.789', '-1 days +02:00:00', '00:00:00',
	'100 years', '-00:00:00.000001', '1 mon -1 days');

my @NUMERIC_POOL = (
	'0', '-0.000001', '123.4500', '1e-20', '98765432109876543210.0123456789',
	'NaN', '-1', '0.10', '1000000');

my @FLOAT_POOL = ('0', '-0', '1.5', 'NaN', 'Infinity', '-Infinity', '1e-300',
	'3.141592653589793', '-2.5e+100');

my @ENUM_LABELS = ('red', 'Green Light', "\xc3\xbcn\xc3\xaf", "it's", 'a,b',
	'NULL', 'UPPER', 'with "dq"');

# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------

my %NAME_FEATURES = (
	'select' => 'name_reserved', 'order' => 'name_reserved',
	'user' => 'name_reserved', 'group' => 'name_reserved',
	'from' => 'name_reserved', 'table' => 'name_reserved',
	'Mixed Case' => 'name_space', 'with space' => 'name_space',
	'Fuzz Schema' => 'name_space', 'col with space' => 'name_space',
	'CamelCase' => 'name_mixed_case', 'Value' => 'name_mixed_case',
	'MiXeD' => 'name_mixed_case',
	'dot.ted' => 'name_dot', 'sch.ema' => 'name_dot', 'dot.col' => 'name_dot',
	'quo"te' => 'name_quote', "apo'strophe" => 'name_quote',
	'q"s' => 'name_quote', 'q"c' => 'name_quote', "it's" => 'name_quote',
	"t\xc3\xa4st\xc3\xa9" => 'name_unicode',
	"\xe8\xa1\xa8\xe6\xa0\xbc" => 'name_unicode',
	"\xc3\xbcn\xc3\xaf" => 'name_unicode',
	"c\xc3\xb6l" => 'name_unicode');

my @SCHEMA_POOL = ('public', 'Fuzz Schema', 'select', 'sch.ema',
	"\xc3\xbcn\xc3\xaf", 'q"s');

my @TABLE_POOL = (
	'order', 'user', 'Mixed Case', 'with space', 'dot.ted', 'quo"te',
	"apo'strophe", "t\xc3\xa4st\xc3\xa9", "\xe8\xa1\xa8\xe6\xa0\xbc",
	'CamelCase', 'group', 'table', 'a-b', '123start', 'Trailing ',
	'tbl$dollar', 'MiXeD');

my @COL_POOL = ('select', 'Value', 'col with space', 'dot.col', 'q"c', "it's",
	"c\xc3\xb6l", 'from', 'user', 'MiXeD', 'end', 'x$', 'default', 'ORDER');

# 63 bytes: the longest name PostgreSQL keeps (a '<table>_resync' would
# not fit)
my $LONG_NAME = 'long_' . ('n' x 58);

# ---------------------------------------------------------------------------
# Column types
# ---------------------------------------------------------------------------

# Each type: sql (type name in DDL), lit($R) -> SQL expression of one
# value, expr($g, $R) -> SQL expression of a value computed from the
# integer SQL expression $g (set-based inserts), feature (coverage name).
sub builtin_types
{
	my %t;
	$t{int4} = {
		sql => 'integer',
		lit => sub {
			my $R = shift;
			return $R->pick('0', '-1', '2147483647', '-2147483648')
			  if $R->chance(0.1);
			return $R->range(-1000000, 1000000);
		},
		expr => sub { my ($g, $R) = @_; my $k = $R->range(3, 997); "(($g) * $k % 1000003)::integer" },
	};
	$t{int8} = {
		sql => 'bigint',
		lit => sub {
			my $R = shift;
			return $R->pick('9223372036854775807', '-9223372036854775808', '0')
			  if $R->chance(0.1);
			return $R->range(-1000000, 1000000) * 1000003;
		},
		expr => sub { my ($g, $R) = @_; my $k = $R->range(3, 99991); "(($g)::bigint * $k * 1000003)" },
	};
	$t{int2} = {
		sql => 'smallint',
		lit => sub { $_[0]->range(-32768, 32767) },
		expr => sub { "(($_[0]) % 30000)::smallint" },
	};
	$t{numeric} = {
		sql => 'numeric', feature => 'numeric',
		lit => sub {
			my $R = shift;
			return lit($R->pick(@NUMERIC_POOL)) . '::numeric' if $R->chance(0.5);
			return sprintf('%d.%0*d', $R->range(-99999, 99999), $R->range(1, 8), $R->range(0, 9999));
		},
		expr => sub { "(($_[0]) * 1.25 + 0.001)::numeric" },
	};
	$t{numeric_p} = {
		sql => 'numeric(12,3)', feature => 'numeric',
		lit => sub { my $R = shift; sprintf('%d.%d', $R->range(-999999, 999999), $R->range(0, 99)) },
		expr => sub { "((($_[0]) % 100000) + 0.125)::numeric(12,3)" },
	};
	$t{float8} = {
		sql => 'double precision',
		lit => sub {
			my $R = shift;
			return lit($R->pick(@FLOAT_POOL)) . '::float8' if $R->chance(0.5);
			return sprintf('%.6g', $R->real(-1e6, 1e6));
		},
		expr => sub { "(($_[0]) / 7.0)::float8" },
	};
	$t{bool} = {
		sql => 'boolean',
		lit => sub { $_[0]->pick('true', 'false') },
		expr => sub { "(($_[0]) % 2 = 0)" },
	};
	$t{text} = {
		sql => 'text',
		lit => sub { lit(rand_text($_[0], 40)) },
		expr => sub { my ($g, $R) = @_; my $k = $R->range(1, 999); "('b' || ($g) || '-' || md5(($g)::text || '$k'))" },
	};
	$t{varchar} = {
		sql => 'varchar(20)',
		lit => sub { lit(rand_text($_[0], 20, 1)) },
		expr => sub { "left(md5(($_[0])::text), 15)::varchar(20)" },
	};
	$t{char} = {
		sql => 'char(4)',
		lit => sub { my $R = shift; lit($R->pick('', 'ab', "\xc3\xbc", 'abcd', ' x')) },
		expr => sub { "left(md5(($_[0])::text), 3)::char(4)" },
	};
	$t{text_toast} = {
		sql => 'text', feature => 'toast_text', toast => 1,
		lit => sub {
			my $R = shift;
			return lit(rand_text($R, 20)) if $R->chance(0.3);
			my $n = $R->range(80, 400);
			my $salt = $R->range(1, 1e9);
			return "(SELECT string_agg(md5('$salt' || i), '') FROM generate_series(1, $n) i)";
		},
		expr => sub { "repeat(md5(($_[0])::text), 3)" },
	};
	$t{bytea} = {
		sql => 'bytea',
		lit => sub {
			my $R = shift;
			return "'\\x'::bytea" if $R->chance(0.1);
			return "'\\x" . join('', map { sprintf('%02x', $R->below(256)) } 1 .. $R->range(1, 12)) . "'::bytea";
		},
		expr => sub { "decode(md5(($_[0])::text), 'hex')" },
	};
	$t{bytea_toast} = {
		sql => 'bytea', feature => 'toast_bytea', toast => 1,
		lit => sub {
			my $R = shift;
			return "'\\x00ff'::bytea" if $R->chance(0.3);
			my $n = $R->range(150, 500);
			my $salt = $R->range(1, 1e9);
			return "(SELECT decode(string_agg(md5('$salt' || i), ''), 'hex') FROM generate_series(1, $n) i)";
		},
		expr => sub { "decode(md5(($_[0])::text), 'hex')" },
	};
	$t{jsonb} = {
		sql => 'jsonb', feature => 'jsonb',
		lit => sub {
			my $R = shift;
			return lit($R->pick(@JSON_POOL)) . '::jsonb' if $R->chance(0.6);
			return "jsonb_build_object('n', " . $R->range(-1e6, 1e6) . ", 's', " . lit(rand_text($R, 15))
			  . ", 'a', jsonb_build_array(1, NULL, 'x'))";
		},
		expr => sub { "jsonb_build_object('g', ($_[0]), 'h', md5(($_[0])::text), 'a', jsonb_build_array(($_[0]), NULL, true))" },
	};
	$t{int_array} = {
		sql => 'integer[]', feature => 'array',
		lit => sub {
			my $R = shift;
			return lit($R->pick('{}', '{{1,2},{3,4}}', '[0:1]={5,6}', '{NULL}')) . '::integer[]'
			  if $R->chance(0.4);
			return 'ARRAY[' . join(', ', map { $R->chance(0.2) ? 'NULL' : $R->range(-1000, 1000) } 1 .. $R->range(1, 6)) . ']::integer[]';
		},
		expr => sub { "ARRAY[($_[0]), NULL, ($_[0]) * 2]::integer[]" },
	};
	$t{text_array} = {
		sql => 'text[]', feature => 'array',
		lit => sub {
			my $R = shift;
			return "'{}'::text[]" if $R->chance(0.15);
			return 'ARRAY[' . join(', ', map { $R->chance(0.2) ? 'NULL' : lit(rand_text($R, 12)) } 1 .. $R->range(1, 5)) . ']::text[]';
		},
		expr => sub { "ARRAY[md5(($_[0])::text), NULL, 'x,y', '\"q\"']::text[]" },
	};
	$t{timestamptz} = {
		sql => 'timestamptz', feature => 'timestamptz',
		lit => sub {
			my $R = shift;
			return lit($R->pick(@TS_POOL)) . '::timestamptz' if $R->chance(0.4);
			return lit(sprintf('%04d-%02d-%02d %02d:%02d:%02d.%06d%+03d',
					$R->range(1900, 2100), $R->range(1, 12), $R->range(1, 28), $R->range(0, 23),
					$R->range(0, 59), $R->range(0, 59), $R->range(0, 999999), $R->range(-12, 12)))
			  . '::timestamptz';
		},
		expr => sub { "(timestamptz '2020-01-01 00:00:00+00' + ($_[0]) * interval '17.5 seconds')" },
	};
	$t{date} = {
		sql => 'date',
		lit => sub {
			my $R = shift;
			return lit($R->pick('infinity', '-infinity', '2024-02-29', '4713-01-01 BC')) . '::date' if $R->chance(0.3);
			return lit(sprintf('%04d-%02d-%02d', $R->range(1, 9999), $R->range(1, 12), $R->range(1, 28))) . '::date';
		},
		expr => sub { "(date '2000-01-01' + (($_[0]) % 10000)::integer)" },
	};
	$t{interval} = {
		sql => 'interval',
		lit => sub { lit($_[0]->pick(@INTERVAL_POOL)) . '::interval' },
		expr => sub { "(($_[0]) * interval '1 minute 3.5 seconds')" },
	};
	$t{uuid} = {
		sql => 'uuid',
		lit => sub { lit(md5_uuid('v' . $_[0]->next32)) . '::uuid' },
		expr => sub { "md5('u' || ($_[0]))::uuid" },
	};
	$t{int4range} = {
		sql => 'int4range', feature => 'range',
		lit => sub {
			my $R = shift;
			return lit($R->pick('empty', '(,5]', '[-3,)', '(,)')) . '::int4range' if $R->chance(0.3);
			my $a = $R->range(-1000, 1000);
			return "int4range($a, " . ($a + $R->range(1, 100)) . ')';
		},
		expr => sub { "int4range(($_[0])::integer, ($_[0])::integer + 10)" },
	};
	$t{tstzrange} = {
		sql => 'tstzrange', feature => 'range',
		lit => sub {
			my $R = shift;
			return lit($R->pick('empty', '(,infinity)', '[2024-01-01 00:00:00+00,2024-02-01 00:00:00+00)')) . '::tstzrange';
		},
		expr => sub { "tstzrange(timestamptz '2021-01-01 00:00:00+00' + ($_[0]) * interval '1 hour', timestamptz '2021-01-01 00:00:00+00' + ($_[0]) * interval '2 hours', '[]')" },
	};
	$t{numrange} = {
		sql => 'numrange', feature => 'range',
		lit => sub { lit($_[0]->pick('[1.5,2.25]', 'empty', '(,0.001)', '[-1,1)')) . '::numrange' },
		expr => sub { "numrange(($_[0]), ($_[0]) + 0.5)" },
	};
	$t{inet} = {
		sql => 'inet',
		lit => sub { lit($_[0]->pick('192.168.1.5/24', '10.0.0.1', '::1/128', '2001:db8::ff00:42:8329')) . '::inet' },
		expr => sub { "('10.' || (($_[0]) % 256) || '.' || ((($_[0]) / 256) % 256) || '.1')::inet" },
	};
	return \%t;
}

# random text: from the pool of awkward values, or random characters
sub rand_text
{
	my ($R, $max, $chars) = @_;
	if ($R->chance(0.5))
	{
		my $v = $R->pick(@TEXT_POOL);
		# varchar(n) counts characters; the pool's longest has 13
		return $v;
	}
	my @cs = ('a' .. 'z', 'A' .. 'Z', '0' .. '9', ' ', "'", '"', '\\', ',', '{', '}',
		"\xc3\xa9", "\xe2\x82\xac");
	return join('', map { $R->pick(@cs) } 1 .. $R->range(1, $max));
}

# ---------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------

sub new_gen
{
	my ($seed, $switches) = @_;
	my $g = {
		seed => $seed,
		sw => $switches,
		RS => FuzzRng->new($seed, 'schema'),
		RW => FuzzRng->new($seed, 'workload'),
		RO => FuzzRng->new($seed, 'operations'),
		RC => FuzzRng->new($seed, 'config'),
		covers => {},
		used_names => {},
		dst_names => {},
		tables => {},
		order => [],
		types => builtin_types(),
		schema_sql => [],
		model => {},     # table id -> session -> {list => [], idx => {}}
		alloc => {},     # "table/session/kind" -> counter
	};
	return bless $g, 'FuzzPlan';
}

sub cover
{
	my ($g, @f) = @_;
	$g->{covers}{$_}++ for grep { defined } @f;
	return;
}

# With a switch on, what it lets through is recorded as the feature
# switch_<name>: run.pl --coverage --enable <name> shows the seeds that
# exercise it.
sub risk
{
	my ($g, $sw, $cond) = @_;
	$g->cover("switch_$sw") if $cond && $g->{sw}{$sw};
	return;
}

# what copying these tables again risks
sub copy_risks
{
	my ($g, @ids) = @_;
	foreach my $id (@ids)
	{
		my $t = $g->{tables}{$id};
		$g->risk('resync_after_ddl', $t->{ddl_since_setup});
		$g->risk('enum_label_copy', $g->{enum}{added} && grep { ($_->{type} // '') eq 'enum' } @{ $t->{cols} });
	}
	return;
}

sub name_features
{
	my ($g, @names) = @_;
	foreach my $n (@names)
	{
		$g->cover($NAME_FEATURES{$n}) if $NAME_FEATURES{$n};
	}
	return;
}

# a fresh (schema, name) for a source table
sub table_name
{
	my ($g) = @_;
	my $R = $g->{RS};
	for (1 .. 100)
	{
		my $schema = $R->chance(0.4) ? 'public' : $R->pick(@SCHEMA_POOL);
		my $name = $R->chance(0.75) ? $R->pick(@TABLE_POOL, $LONG_NAME) : 't_' . $R->range(1, 99);
		next if $g->{used_names}{"$schema\0$name"}++;
		return ($schema, $name);
	}
	die 'no table name left';
}

# user-defined types of this seed: an enum, a domain, a composite
sub create_types
{
	my ($g) = @_;
	my $R = $g->{RS};
	my $schema = $R->pick('public', 'Fuzz Schema', "\xc3\xbcn\xc3\xaf");
	push @{ $g->{schema_sql} }, 'CREATE SCHEMA IF NOT EXISTS ' . qi($schema)
	  unless $schema eq 'public';

	my @labels = $R->shuffle(@ENUM_LABELS);
	@labels = @labels[ 0 .. $R->range(2, 5) ];
	my $ename = $R->pick('mood', 'Colour Enum', 'select');
	$g->{used_names}{"$schema\0$ename"} = 1;
	my $enum = qn($schema, $ename);
	push @{ $g->{schema_sql} },
	  "CREATE TYPE $enum AS ENUM (" . join(', ', map { lit($_) } @labels) . ')';
	$g->{enum} = { qname => $enum, labels => \@labels, added => 0 };
	$g->{types}{enum} = {
		sql => $enum, feature => 'enum',
		lit => sub { lit($_[0]->pick(@{ $g->{enum}{labels} })) . "::$enum" },
		expr => sub {
			my ($x) = @_;
			my @l = @{ $g->{enum}{labels} };
			"(ARRAY[" . join(', ', map { lit($_) } @l) . "]::${enum}[])[1 + (($x) % " . scalar(@l) . ')]';
		},
	};

	my $dname = $R->pick('posint', 'Dom Ain');
	$g->{used_names}{"$schema\0$dname"} = 1;
	my $dom = qn($schema, $dname);
	if ($R->chance(0.5))
	{
		push @{ $g->{schema_sql} }, "CREATE DOMAIN $dom AS integer CHECK (VALUE >= 0)";
		$g->{types}{domain} = {
			sql => $dom, feature => 'domain',
			lit => sub { $_[0]->range(0, 100000) . "::$dom" },
			expr => sub { "(($_[0]) % 1000)::$dom" },
		};
	}
	else
	{
		push @{ $g->{schema_sql} },
		  "CREATE DOMAIN $dom AS varchar(30) CHECK (VALUE <> 'forbidden')";
		$g->{types}{domain} = {
			sql => $dom, feature => 'domain',
			lit => sub { lit(rand_text($_[0], 20, 1)) . "::$dom" },
			expr => sub { "('d' || ($_[0]))::$dom" },
		};
	}

	my $cname = $R->pick('pair type', 'Comp', 'user');
	$g->{used_names}{"$schema\0$cname"} = 1;
	my $comp = qn($schema, $cname);
	push @{ $g->{schema_sql} },
	  "CREATE TYPE $comp AS (x integer, " . qi('y text') . ' text, z numeric)';
	$g->{types}{composite} = {
		sql => $comp, feature => 'composite_type',
		lit => sub {
			my $R = shift;
			return "ROW(NULL, NULL, NULL)::$comp" if $R->chance(0.15);
			return 'ROW(' . $R->range(-100, 100) . ', ' . lit(rand_text($R, 10)) . ', '
			  . ($R->chance(0.2) ? 'NULL' : $R->range(0, 999) . '.' . $R->range(0, 99)) . ")::$comp";
		},
		expr => sub { "ROW(($_[0])::integer, 'c' || ($_[0]), ($_[0]) / 3.0)::$comp" },
	};
	$g->name_features($schema);
	return;
}

# Key kinds: how rows are identified, and how the workload addresses them.
#   handle: the column(s) the workload uses in WHERE; for sequence-keyed
#   and keyless tables a bigint column filled from the session's range.
my @KEY_KINDS = qw(pk_int pk_bigint pk_text pk_uuid pk_composite
  identity_always identity_by_default serial replica_full_no_key);

sub key_feature
{
	my ($kind) = @_;
	return $kind;
}

# Build one table spec and its DDL.
#   $kind: key kind; %o: part => method, reserved => 1, special => ...
sub make_table
{
	my ($g, $kind, %o) = @_;
	my $R = $g->{RS};
	my $id = 'T' . (scalar(@{ $g->{order} }) + 1);
	my ($schema, $name) = $g->table_name;
	my $t = {
		id => $id, schema => $schema, name => $name, kind => $kind,
		cols => [], exclude => [], reserved => $o{reserved} ? 1 : 0,
		special => $o{special},
	};
	$g->name_features($schema, $name);
	push @{ $g->{schema_sql} }, 'CREATE SCHEMA IF NOT EXISTS ' . qi($schema)
	  unless $schema eq 'public';

	my %colnames;
	my $colname = sub {
		my ($pref) = @_;
		for (1 .. 50)
		{
			my $c = $R->chance(0.45) ? $R->pick(@COL_POOL) : $pref . '_' . $R->range(1, 99);
			next if $colnames{$c}++;
			$g->name_features($c);
			return $c;
		}
		die 'no column name left';
	};

	my @cols;
	my (@key, @handle);
	my $hkind;
	my $keyname = $R->chance(0.3) ? $colname->('id') : do { $colnames{id} = 1; 'id' };
	if ($kind eq 'pk_int' || $kind eq 'pk_bigint')
	{
		push @cols, { name => $keyname, sql => $kind eq 'pk_int' ? 'integer' : 'bigint', role => 'key' };
		@key = @handle = ($keyname);
		$hkind = $kind eq 'pk_int' ? 'int' : 'bigint';
	}
	elsif ($kind eq 'pk_text')
	{
		push @cols, { name => $keyname, sql => 'text', role => 'key' };
		@key = @handle = ($keyname);
		$hkind = 'text';
		$t->{text_suffix} = $R->pick('', " \xc3\xbc", "\xe8\xa1\xa8", ' ', "'q", '\\');
	}
	elsif ($kind eq 'pk_uuid')
	{
		push @cols, { name => $keyname, sql => 'uuid', role => 'key' };
		@key = @handle = ($keyname);
		$hkind = 'uuid';
	}
	elsif ($kind eq 'pk_composite')
	{
		my $b = $colname->('kb');
		push @cols, { name => $keyname, sql => 'integer', role => 'key' },
		  { name => $b, sql => 'text', role => 'key' };
		@key = @handle = ($keyname, $b);
		$hkind = 'comp';
	}
	elsif ($kind eq 'identity_always' || $kind eq 'identity_by_default' || $kind eq 'serial')
	{
		my $sql =
		    $kind eq 'serial' ? $R->pick('serial', 'bigserial')
		  : $kind eq 'identity_always' ? 'bigint GENERATED ALWAYS AS IDENTITY'
		  : 'integer GENERATED BY DEFAULT AS IDENTITY (START WITH 10 INCREMENT BY 3)';
		push @cols, { name => $keyname, sql => $sql, role => 'seqkey' };
		@key = ($keyname);
		$t->{has_identity} = $kind =~ /identity/ ? 1 : 0;
	}
	if ($kind =~ /identity|serial/ || $kind eq 'replica_full_no_key')
	{
		my $rk = $R->chance(0.3) ? $colname->('rk') : do { $colnames{rk} = 1; 'rk' };
		push @cols, { name => $rk, sql => 'bigint', role => 'handle', notnull => 1 };
		@handle = ($rk);
		$hkind = 'rk';
	}
	$t->{key} = \@key;
	$t->{handle} = \@handle;
	$t->{hkind} = $hkind;

	# payload columns: the types this seed still has to place first
	my $npay = $o{special} ? 0 : $R->range(2, 5);
	my @payload;
	foreach (1 .. $npay)
	{
		my $ty = shift @{ $g->{type_queue} } // $R->pick(sort keys %{ $g->{types} });
		push @payload, $ty;
	}
	foreach my $ty (@payload)
	{
		my $T = $g->{types}{$ty};
		my $c = {
			name => $colname->('c'), type => $ty, sql => $T->{sql}, role => 'payload',
			notnull => $R->chance(0.15) ? 1 : 0,
		};
		$c->{toast} = 1 if $T->{toast};
		push @cols, $c;
		$g->cover($T->{feature}) if $T->{feature};
		$g->cover('nullable') unless $c->{notnull};
	}
	# a stored generated column over an integer-ish or text payload column
	if (!$o{special} && ($R->chance(0.35) || $o{generated}))
	{
		my ($src) = grep { $_->{role} eq 'payload' && ($_->{type} =~ /^(int4|int2|text)$/) } @cols;
		my $expr;
		if ($src)
		{
			$src->{generated_ref} = 1;
			$expr = $src->{type} eq 'text'
			  ? 'length(coalesce(' . qi($src->{name}) . ", '')) * 2"
			  : 'coalesce(' . qi($src->{name}) . '::bigint, 0) * 2 + 1';
		}
		else
		{
			my $k = $key[0] // $handle[0];
			my ($kc) = grep { $_->{name} eq $k } @cols;
			$expr = $kc->{sql} =~ /^(integer|bigint|serial|bigserial)/ || $kc->{role} eq 'seqkey' || $kc->{role} eq 'handle'
			  ? qi($k) . ' % 7'
			  : 'length(' . qi($k) . '::text)';
		}
		push @cols, { name => $colname->('gen'), sql => "bigint GENERATED ALWAYS AS ($expr) STORED", role => 'gen' };
		$g->cover('generated_stored');
	}
	$t->{cols} = \@cols;

	# excluded columns: non-key payload columns, not in FULL tables (the
	# source could not update them: the column list must cover the
	# identity) and not under a generated column
	if ($kind ne 'replica_full_no_key' && !$o{special} && $R->chance(0.25))
	{
		my @cand = grep { $_->{role} eq 'payload' && !$_->{generated_ref} } @cols;
		if (@cand > 1)
		{
			my $c = $R->pick(@cand);
			$c->{excluded} = 1;
			push @{ $t->{exclude} }, $c->{name};
			$g->cover('exclude_columns');
		}
	}

	# DDL
	my $qname = qn($schema, $name);
	$t->{qname} = $qname;
	my @defs;
	my $dropped;
	if ($R->chance(0.25) && !$o{special})
	{
		$dropped = $R->pick('gone', 'Dropped Col', 'select');
		$dropped = 'gone' if $colnames{$dropped};
		$colnames{$dropped} = 1;
		$t->{dropped} = $dropped;
	}
	foreach my $c (@cols)
	{
		my $d = qi($c->{name}) . ' ' . $c->{sql};
		$d .= ' NOT NULL' if $c->{notnull} && $c->{role} ne 'gen';
		push @defs, $d;
		# the dropped column sits between the key and the payload
		if ($dropped && $c == $cols[ $#key < 0 ? 0 : $#key ])
		{
			push @defs, qi($dropped) . ' text';
		}
	}
	push @defs, 'PRIMARY KEY (' . join(', ', map { qi($_) } @key) . ')' if @key;
	if ($o{special} && $o{special} eq 'nocols')
	{
		@defs = ();
		$t->{cols} = [];
		$t->{handle} = [];
		$t->{hkind} = 'none';
		$dropped = undef;
		delete $t->{dropped};
	}

	my $part = $o{part};
	if ($part)
	{
		$t->{part} = $part;
		my $pk = $part eq 'list' ? $key[1] : $key[0];
		my $how = $part eq 'range' ? 'RANGE' : $part eq 'hash' ? 'HASH' : 'LIST';
		push @{ $g->{schema_sql} }, "CREATE TABLE $qname (" . join(', ', @defs) . ") PARTITION BY $how (" . qi($pk) . ')';
		my @leaves;
		my $leaf = sub {
			my ($suffix, $bound, $sub) = @_;
			my $ln = substr($name, 0, 40) . $suffix;
			my $lq = qn($schema, $ln);
			push @{ $g->{schema_sql} }, "CREATE TABLE $lq PARTITION OF $qname $bound" . ($sub ? " PARTITION BY $sub" : '');
			return $lq;
		};
		if ($part eq 'range')
		{
			push @leaves, $leaf->('_p0', 'FOR VALUES FROM (MINVALUE) TO (10000000)');
			push @leaves, $leaf->('_p1a', 'FOR VALUES FROM (10000000) TO (10000300)');
			my $sub = $leaf->('_p1b', 'FOR VALUES FROM (10000300) TO (20000000)', 'HASH (' . qi($pk) . ')');
			my $subname = substr($name, 0, 40) . '_p1b';
			foreach my $r (0, 1)
			{
				my $lq = qn($schema, "${subname}_h$r");
				push @{ $g->{schema_sql} }, "CREATE TABLE $lq PARTITION OF $sub FOR VALUES WITH (MODULUS 2, REMAINDER $r)";
				push @leaves, $lq;
			}
			push @leaves, $leaf->('_pdef', 'DEFAULT');
			$g->cover('partitioned_range');
		}
		elsif ($part eq 'hash')
		{
			push @leaves, $leaf->("_h$_", "FOR VALUES WITH (MODULUS 3, REMAINDER $_)") for 0 .. 2;
			$g->cover('partitioned_hash');
		}
		else
		{
			push @leaves, $leaf->('_px', "FOR VALUES IN ('x')");
			push @leaves, $leaf->('_pyz', "FOR VALUES IN ('y', 'z')");
			push @leaves, $leaf->('_pdef', 'DEFAULT');
			$g->cover('partitioned_list');
		}
		$t->{leaves} = \@leaves;
	}
	else
	{
		push @{ $g->{schema_sql} }, "CREATE TABLE $qname (" . join(', ', @defs) . ')';
	}
	if ($kind eq 'replica_full_no_key')
	{
		push @{ $g->{schema_sql} }, "ALTER TABLE $qname REPLICA IDENTITY FULL";
	}
	# a secondary index, sometimes unique on the handle column (folding
	# is off for such tables)
	if (!$o{special} && $R->chance(0.4))
	{
		my ($p) = grep { $_->{role} eq 'payload' && $_->{type} =~ /^(int4|int8|text|timestamptz|uuid|date)$/ } @cols;
		if ($kind =~ /identity|serial/ && $R->chance(0.5))
		{
			push @{ $g->{schema_sql} }, "CREATE UNIQUE INDEX ON $qname (" . qi($handle[0]) . ')';
		}
		elsif ($p)
		{
			push @{ $g->{schema_sql} }, "CREATE INDEX ON $qname (" . qi($p->{name}) . ')';
		}
	}
	$g->cover(key_feature($kind)) unless $o{special};

	# destination: a different name for some
	$t->{dst_schema} = $schema;
	$t->{dst_name} = $name;
	if (!$o{special} && $R->chance(0.25)
		&& ($g->{sw}{sync_schema_index_names} || "$schema$name" !~ /\s/))
	{
		my $ds = $R->pick($schema, 'dst', 'Dest Schema');
		my $dn = $R->pick('copy of ' . substr($name, 0, 50), 'Dest.' . substr($name, 0, 50), 'dst_' . $id);
		if (!$g->{dst_names}{"$ds\0$dn"} && !$g->{used_names}{"$ds\0$dn"})
		{
			@$t{qw(dst_schema dst_name)} = ($ds, $dn);
			$g->cover('renamed_destination');
			$g->risk('sync_schema_index_names', "$schema$name" =~ /\s/);
		}
	}
	$g->{dst_names}{"$t->{dst_schema}\0$t->{dst_name}"} = 1;
	$t->{dst_qname} = qn($t->{dst_schema}, $t->{dst_name});
	$t->{dst_schema_new} = 1 if $t->{dst_schema} ne $schema;

	$g->{tables}{$id} = $t;
	push @{ $g->{order} }, $id;
	return $t;
}

# --- the model: which rows each session inserted (and may touch) -----------

sub model
{
	my ($g, $t, $s) = @_;
	return $g->{model}{ $t->{id} }{$s} //= { list => [], idx => {} };
}

sub model_add
{
	my ($g, $t, $s, $h) = @_;
	my $m = $g->model($t, $s);
	return if exists $m->{idx}{$h};
	push @{ $m->{list} }, $h;
	$m->{idx}{$h} = $#{ $m->{list} };
	return;
}

sub model_del
{
	my ($g, $t, $s, $h) = @_;
	my $m = $g->model($t, $s);
	my $i = delete $m->{idx}{$h};
	return unless defined $i;
	my $last = pop @{ $m->{list} };
	if ($i <= $#{ $m->{list} })
	{
		$m->{list}[$i] = $last;
		$m->{idx}{$last} = $i;
	}
	return;
}

sub model_pick
{
	my ($g, $t, $s) = @_;
	my $m = $g->model($t, $s);
	return undef unless @{ $m->{list} };
	return $m->{list}[ $g->{RW}->below(scalar @{ $m->{list} }) ];
}

sub model_clear
{
	my ($g, $t) = @_;
	delete $g->{model}{ $t->{id} };
	return;
}

# next number of a session's counter
sub alloc
{
	my ($g, $t, $s, $what, $n) = @_;
	my $k = "$t->{id}/$s/" . ($what // 'k');
	my $first = ($g->{alloc}{$k} // 0) + 1;
	$g->{alloc}{$k} = $first + ($n // 1) - 1;
	return $first;
}

# handle values: session s, counter n
sub handle_of
{
	my ($g, $t, $s, $n) = @_;
	my $k = $t->{hkind};
	return $s * 10000000 + $n if $k eq 'int';
	return $s * 1000000000000 + $n * 7 if $k eq 'bigint';
	return sprintf('s%d:%09d', $s, $n) . $t->{text_suffix} if $k eq 'text';
	return md5_uuid("$t->{id}/$s/$n") if $k eq 'uuid';
	return ($s * 10000000 + $n) . "\x1f" . ('x', 'y', 'z', 'w')[ $n % 4 ] if $k eq 'comp';
	return $s * 1000000000 + $n if $k eq 'rk';
	die "no handle for $k";
}

# SQL expressions of the handle columns for n = n0 + g (set-based)
sub handle_exprs
{
	my ($g, $t, $s, $n0, $gx) = @_;
	my $k = $t->{hkind};
	my $n = "($n0 + $gx)";
	return ("($s * 10000000 + $n)") if $k eq 'int';
	return ("(${s}::bigint * 1000000000000 + ${n}::bigint * 7)") if $k eq 'bigint';
	return ("('s$s:' || lpad(${n}::text, 9, '0') || " . lit($t->{text_suffix}) . ')') if $k eq 'text';
	return ("md5('$t->{id}/$s/' || $n)::uuid") if $k eq 'uuid';
	return ("($s * 10000000 + $n)", "(ARRAY['x','y','z','w'])[1 + $n % 4]") if $k eq 'comp';
	return ("(${s}::bigint * 1000000000 + $n)") if $k eq 'rk';
	die "no handle for $k";
}

# literal(s) of a handle value
sub handle_lits
{
	my ($t, $h) = @_;
	my $k = $t->{hkind};
	return ($h) if $k eq 'int' || $k eq 'bigint' || $k eq 'rk';
	return (lit($h)) if $k eq 'text';
	return (lit($h) . '::uuid') if $k eq 'uuid';
	if ($k eq 'comp')
	{
		my ($a, $b) = split /\x1f/, $h;
		return ($a, lit($b));
	}
	die;
}

sub handle_pred
{
	my ($t, $h) = @_;
	my @l = handle_lits($t, $h);
	my @c = map { qi($_) } @{ $t->{handle} };
	return join(' AND ', map { "$c[$_] = $l[$_]" } 0 .. $#c);
}

sub handles_pred
{
	my ($t, @hs) = @_;
	my @c = map { qi($_) } @{ $t->{handle} };
	if (@c == 1)
	{
		return "$c[0] IN (" . join(', ', map { (handle_lits($t, $_))[0] } @hs) . ')';
	}
	return '(' . join(', ', @c) . ') IN (' . join(', ', map { '(' . join(', ', handle_lits($t, $_)) . ')' } @hs) . ')';
}

# columns a statement may write (not generated, not ALWAYS identity)
sub writable_payload
{
	my ($t) = @_;
	return grep { $_->{role} eq 'payload' } @{ $t->{cols} };
}

sub value_lit
{
	my ($g, $c, %o) = @_;
	my $R = $g->{RW};
	return 'NULL' if !$c->{notnull} && $R->chance($o{null_p} // 0.15);
	my $T = $g->{types}{ $c->{type} };
	return $T->{lit}->($R);
}

# --- statements ---------------------------------------------------------------

# one INSERT of k rows (VALUES) by session s; returns SQL
sub stmt_insert_values
{
	my ($g, $t, $s, $k) = @_;
	my $R = $g->{RW};
	my @pay = writable_payload($t);
	my @cols = (@{ $t->{handle} }, map { $_->{name} } @pay);
	my $overriding = '';
	my @rows;
	my @seqkey = grep { $_->{role} eq 'seqkey' } @{ $t->{cols} };
	my $explicit_key = @seqkey && $R->chance(0.1);
	unshift @cols, $seqkey[0]{name} if $explicit_key;
	$overriding = ' OVERRIDING SYSTEM VALUE' if $explicit_key && $t->{kind} eq 'identity_always';
	foreach (1 .. $k)
	{
		my $n = $g->alloc($t, $s);
		my $h = $g->handle_of($t, $s, $n);
		my @v;
		push @v, -($s * 10000000 + $g->alloc($t, $s, 'neg')) if $explicit_key;
		push @v, handle_lits($t, $h);
		push @v, map { $g->value_lit($_) } @pay;
		push @rows, '(' . join(', ', @v) . ')';
		$g->model_add($t, $s, $h);
		# an exact duplicate row in a table without key
		if ($t->{kind} eq 'replica_full_no_key' && $R->chance(0.1))
		{
			push @rows, $rows[-1];
			$g->cover('wl_full_duplicates');
		}
	}
	$g->cover('wl_insert');
	return "INSERT INTO $t->{qname} (" . join(', ', map { qi($_) } @cols) . ")$overriding VALUES " . join(', ', @rows);
}

# set-based INSERT of n rows (generate_series)
sub stmt_insert_bulk
{
	my ($g, $t, $s, $n) = @_;
	my $R = $g->{RW};
	my $n0 = $g->alloc($t, $s, 'k', $n) - 1;
	$g->model_add($t, $s, $g->handle_of($t, $s, $n0 + $_)) for 1 .. $n;
	my @pay = writable_payload($t);
	my @exprs = $g->handle_exprs($t, $s, $n0, 'g');
	foreach my $c (@pay)
	{
		my $e = $g->{types}{ $c->{type} }{expr}->("($n0 + g)", $R);
		$e = "CASE WHEN g % 7 = 3 THEN NULL ELSE $e END" unless $c->{notnull};
		push @exprs, $e;
	}
	my @cols = (@{ $t->{handle} }, map { $_->{name} } @pay);
	$g->cover('wl_insert');
	return "INSERT INTO $t->{qname} (" . join(', ', map { qi($_) } @cols) . ') SELECT '
	  . join(', ', @exprs) . " FROM generate_series(1, $n) g";
}

sub stmt_update_one
{
	my ($g, $t, $s) = @_;
	my $R = $g->{RW};
	my $h = $g->model_pick($t, $s) // return undef;
	my @pay = writable_payload($t);
	return undef unless @pay;
	my @set;
	my @chosen = grep { $R->chance(0.5) } @pay;
	@chosen = ($R->pick(@pay)) unless @chosen;
	# leave TOAST values alone most of the time: the source then sends
	# them as unchanged
	my @toast = grep { $_->{toast} } @pay;
	if (@toast && $R->chance(0.7))
	{
		@chosen = grep { !$_->{toast} } @chosen;
		@chosen = grep { !$_->{toast} } @pay unless @chosen;
		return undef unless @chosen;
		$g->cover('wl_unchanged_toast');
	}
	push @set, qi($_->{name}) . ' = ' . $g->value_lit($_) foreach @chosen;
	$g->cover('wl_update');
	if ($t->{kind} eq 'replica_full_no_key' && $R->chance(0.3))
	{
		# one of possibly identical rows
		return "UPDATE $t->{qname} SET " . join(', ', @set)
		  . " WHERE ctid = (SELECT ctid FROM $t->{qname} WHERE " . handle_pred($t, $h) . ' LIMIT 1)';
	}
	return "UPDATE $t->{qname} SET " . join(', ', @set) . ' WHERE ' . handle_pred($t, $h);
}

sub stmt_update_many
{
	my ($g, $t, $s, $k) = @_;
	my $R = $g->{RW};
	my $m = $g->model($t, $s);
	return undef unless @{ $m->{list} };
	my @pay = grep { !$_->{toast} } writable_payload($t);
	return undef unless @pay;
	my %hs;
	$hs{ $g->model_pick($t, $s) } = 1 for 1 .. $k;
	my $c = $R->pick(@pay);
	my $e = $g->{types}{ $c->{type} }{expr}->('length(' . qi($t->{handle}[0]) . '::text) + ' . $R->range(1, 1000), $R);
	$g->cover('wl_update');
	return "UPDATE $t->{qname} SET " . qi($c->{name}) . " = $e WHERE " . handles_pred($t, sort keys %hs);
}

# an UPDATE that changes the row's key (or, without key, its handle)
sub stmt_update_key
{
	my ($g, $t, $s) = @_;
	my $R = $g->{RW};
	my $h = $g->model_pick($t, $s) // return undef;
	my $k = $t->{kind};
	$g->cover('wl_key_update');
	if ($k eq 'identity_always')
	{
		return "UPDATE $t->{qname} SET " . qi($t->{key}[0]) . ' = DEFAULT WHERE ' . handle_pred($t, $h);
	}
	if ($k eq 'identity_by_default' || $k eq 'serial')
	{
		my $v = $R->chance(0.5) ? 'DEFAULT' : -($s * 10000000 + $g->alloc($t, $s, 'neg'));
		return "UPDATE $t->{qname} SET " . qi($t->{key}[0]) . " = $v WHERE " . handle_pred($t, $h);
	}
	# the handle is (part of) the key, or the whole row is the identity
	my $nh = $g->handle_of($t, $s, $g->alloc($t, $s));
	my @nl = handle_lits($t, $nh);
	my @c = @{ $t->{handle} };
	my @set = map { qi($c[$_]) . " = $nl[$_]" } 0 .. $#c;
	# a composite key: sometimes only its second part (moves list
	# partitions)
	if ($k eq 'pk_composite' && $R->chance(0.5))
	{
		my ($a) = split /\x1f/, $h;
		my $b = $R->pick('x', 'y', 'z', 'w', 'v');
		$nh = "$a\x1f$b";
		$nh = undef if $nh eq $h;
		return undef unless defined $nh;
		return undef if exists $g->model($t, $s)->{idx}{$nh};
		@set = (qi($c[1]) . ' = ' . lit($b));
	}
	$g->model_del($t, $s, $h);
	$g->model_add($t, $s, $nh);
	my $extra = '';
	my @pay = grep { !$_->{toast} } writable_payload($t);
	if (@pay && $R->chance(0.4))
	{
		my $c = $R->pick(@pay);
		$extra = ', ' . qi($c->{name}) . ' = ' . $g->value_lit($c);
	}
	return "UPDATE $t->{qname} SET " . join(', ', @set) . "$extra WHERE " . handle_pred($t, $h);
}

sub stmt_delete
{
	my ($g, $t, $s, $k) = @_;
	my $R = $g->{RW};
	my @hs;
	foreach (1 .. $k)
	{
		my $h = $g->model_pick($t, $s) // last;
		push @hs, $h;
		$g->model_del($t, $s, $h);
	}
	return undef unless @hs;
	$g->cover('wl_delete');
	if ($t->{kind} eq 'replica_full_no_key' && @hs == 1 && $R->chance(0.5))
	{
		return "DELETE FROM $t->{qname} WHERE ctid = (SELECT ctid FROM $t->{qname} WHERE "
		  . handle_pred($t, $hs[0]) . ' LIMIT 1)';
	}
	return "DELETE FROM $t->{qname} WHERE " . handles_pred($t, @hs);
}

# INSERT ... ON CONFLICT DO UPDATE on an existing or a new key
sub stmt_upsert
{
	my ($g, $t, $s) = @_;
	my $R = $g->{RW};
	return undef unless $t->{hkind} =~ /^(int|bigint|text|uuid|comp)$/;
	my $h = $R->chance(0.6) ? $g->model_pick($t, $s) : undef;
	$h //= $g->handle_of($t, $s, $g->alloc($t, $s));
	$g->model_add($t, $s, $h);
	my @pay = writable_payload($t);
	my @cols = (@{ $t->{handle} }, map { $_->{name} } @pay);
	my @v = (handle_lits($t, $h), map { $g->value_lit($_) } @pay);
	my @upd = grep { !$_->{toast} } @pay;
	my $action = @upd
	  ? 'DO UPDATE SET ' . join(', ', map { qi($_->{name}) . ' = EXCLUDED.' . qi($_->{name}) } @upd)
	  : 'DO NOTHING';
	$g->cover('wl_upsert');
	return "INSERT INTO $t->{qname} (" . join(', ', map { qi($_) } @cols) . ') VALUES (' . join(', ', @v)
	  . ') ON CONFLICT (' . join(', ', map { qi($_) } @{ $t->{key} }) . ") $action";
}

# statements for the special tables
sub stmt_special
{
	my ($g, $t, $s) = @_;
	my $R = $g->{RW};
	if ($t->{special} eq 'nocols')
	{
		$g->{nocols_rows}++;
		return $R->pick(
			"INSERT INTO $t->{qname} DEFAULT VALUES",
			"INSERT INTO $t->{qname} SELECT FROM generate_series(1, 3)",
			"DELETE FROM $t->{qname} WHERE ctid = (SELECT ctid FROM $t->{qname} LIMIT 1)");
	}
	# trigger table: flagged updates are skipped on the destination
	my $h = $g->model_pick($t, $s);
	if (!$h || $R->chance(0.4))
	{
		my $n = $g->alloc($t, $s);
		$h = $g->handle_of($t, $s, $n);
		$g->model_add($t, $s, $h);
		return "INSERT INTO $t->{qname} (id, v, flag) VALUES ($h, " . lit(rand_text($R, 10)) . ', false)';
	}
	return "UPDATE $t->{qname} SET v = " . lit(rand_text($R, 10)) . ', flag = ' . ($R->chance(0.5) ? 'true' : 'false')
	  . " WHERE id = $h";
}

# a random statement of session s; undef when the chosen one has nothing
# to work on
sub random_stmt
{
	my ($g, $s, $tables) = @_;
	my $R = $g->{RW};
	my $t = $g->{tables}{ $R->pick(@$tables) };
	return $g->stmt_special($t, $s) if $t->{special};
	my $op = $R->pick_w([ ins1 => 22 ], [ insN => 8 ], [ upd1 => 25 ], [ updN => 6 ],
		[ updkey => 9 ], [ del1 => 9 ], [ delN => 3 ], [ upsert => 6 ], [ bulk => 2 ]);
	my $toast = grep { $_->{toast} } @{ $t->{cols} };
	return $g->stmt_insert_values($t, $s, 1) if $op eq 'ins1';
	return $g->stmt_insert_values($t, $s, $R->range(2, $toast ? 5 : 40)) if $op eq 'insN';
	return $g->stmt_update_one($t, $s) if $op eq 'upd1';
	return $g->stmt_update_many($t, $s, $R->range(2, 60)) if $op eq 'updN';
	return $g->stmt_update_key($t, $s) if $op eq 'updkey';
	return $g->stmt_delete($t, $s, 1) if $op eq 'del1';
	return $g->stmt_delete($t, $s, $R->range(2, 30)) if $op eq 'delN';
	return $g->stmt_upsert($t, $s) if $op eq 'upsert';
	return $g->stmt_insert_bulk($t, $s, $R->range(50, $toast ? 200 : 2000)) if $op eq 'bulk';
	return undef;
}

sub random_stmts
{
	my ($g, $s, $tables, $k) = @_;
	my @out;
	my $tries = 0;
	while (@out < $k && $tries++ < $k * 5)
	{
		my $st = $g->random_stmt($s, $tables);
		push @out, "$st;" if defined $st;
	}
	return @out;
}

# the SQL of one session for one step: transactions paced over $dur seconds
sub session_chunk
{
	my ($g, $s, $dur, %o) = @_;
	my $R = $g->{RW};
	my @tables = grep { !$g->{tables}{$_}{gone} } @{ $g->{order} };
	my @tx;
	my $ntx = $R->range(8, 30);
	my $sleep_total = $dur * 0.8;
	my $big_at = defined $o{big} ? $R->below($ntx) : -1;
	foreach my $i (0 .. $ntx - 1)
	{
		my $r = $R->float;
		my @st;
		if ($i == $big_at)
		{
			# a large transaction: a set-based insert of many rows, and an
			# update of part of what it inserted
			my @cand = grep { !$g->{tables}{$_}{special} && !grep { $_->{toast} } @{ $g->{tables}{$_}{cols} } } @tables;
			@cand = grep { !$g->{tables}{$_}{special} } @tables unless @cand;
			my $t = $g->{tables}{ $R->pick(@cand) };
			my $n = $o{big};
			push @st, 'BEGIN;', $g->stmt_insert_bulk($t, $s, $n) . ';';
			push @st, $g->random_stmts($s, [ $t->{id} ], $R->range(1, 3));
			if ($R->chance(0.4))
			{
				push @st, 'SAVEPOINT big_sp;', $g->random_stmts($s, \@tables, 3), 'ROLLBACK TO SAVEPOINT big_sp;';
				$g->cover('wl_savepoint_rollback');
			}
			push @st, 'COMMIT;';
			$g->cover('wl_large_txn');
		}
		elsif ($r < 0.40)
		{
			@st = $g->random_stmts($s, \@tables, 1);
		}
		elsif ($r < 0.78)
		{
			@st = ('BEGIN;', $g->random_stmts($s, \@tables, $R->range(2, 8)), 'COMMIT;');
		}
		elsif ($r < 0.90)
		{
			@st = ('BEGIN;', $g->random_stmts($s, \@tables, $R->range(0, 4)), 'SAVEPOINT a;',
				$g->random_stmts($s, \@tables, $R->range(1, 5)));
			if ($R->chance(0.3))
			{
				push @st, 'SAVEPOINT b;', $g->random_stmts($s, \@tables, $R->range(1, 3)), 'RELEASE SAVEPOINT b;';
			}
			push @st, 'ROLLBACK TO SAVEPOINT a;', $g->random_stmts($s, \@tables, $R->range(0, 4)), 'COMMIT;';
			$g->cover('wl_savepoint_rollback');
		}
		elsif ($r < 0.96)
		{
			@st = ('BEGIN;', $g->random_stmts($s, \@tables, $R->range(1, 6)), 'ROLLBACK;');
			$g->cover('wl_rollback');
		}
		elsif ($r < 0.975 && $o{truncate})
		{
			# a TRUNCATE alone in its transaction, or followed by inserts
			# into the same table only: it waits for the others but holds
			# nothing they wait for
			my @cand = grep { !$g->{tables}{$_}{special} || $g->{tables}{$_}{special} eq 'nocols' } @tables;
			my $t = $g->{tables}{ $R->pick(@cand) };
			my $target = $t->{qname};
			if ($t->{leaves} && $g->{sw}{partition_truncate} && $R->chance(0.5))
			{
				$target = $R->pick(@{ $t->{leaves} });
				$g->cover('wl_partition_truncate', 'switch_partition_truncate');
			}
			$g->model_clear($t);
			if ($R->chance(0.5) && !$t->{special})
			{
				@st = ('BEGIN;', "TRUNCATE $target;", $g->random_stmts($s, [ $t->{id} ], $R->range(1, 3)), 'COMMIT;');
			}
			else
			{
				@st = ("TRUNCATE $target;");
			}
			$g->cover('wl_truncate');
		}
		else
		{
			@st = $g->random_stmts($s, \@tables, 1);
		}
		push @tx, join("\n", @st) if @st;
		push @tx, sprintf('SELECT pg_sleep(%.3f);', $sleep_total / $ntx * $R->real(0.3, 1.7))
		  if $R->chance(0.8);
	}
	return \@tx;
}

# initial rows of a table, inserted by session 0 and then shared out: row
# n belongs to session 1 + n % S
sub initial_rows
{
	my ($g, $t, $nrows) = @_;
	my $R = $g->{RS};
	my @sql;
	return () if $t->{special} && $t->{special} eq 'trigger';
	if ($t->{special})
	{
		return ("INSERT INTO $t->{qname} SELECT FROM generate_series(1, $nrows)");
	}
	my $S = $g->{S};
	# a few single rows with the awkward values
	my $single = $R->range(0, 6);
	my $saved = $g->{RW};
	$g->{RW} = $R;
	foreach (1 .. $single)
	{
		push @sql, $g->stmt_insert_values($t, 0, 1);
	}
	push @sql, $g->stmt_insert_bulk($t, 0, $nrows) if $nrows;
	$g->{RW} = $saved;
	# share session 0's rows out
	my $m0 = delete $g->{model}{ $t->{id} }{0};
	if ($m0)
	{
		my $i = 0;
		foreach my $h (@{ $m0->{list} })
		{
			$g->model_add($t, 1 + ($i++ % $S), $h);
		}
	}
	return @sql;
}

# ---------------------------------------------------------------------------
# Operations and faults
# ---------------------------------------------------------------------------

my @OP_KINDS = qw(pause_resume resync_table_truncate resync_table_swap
  resync_mirror_truncate resync_mirror_swap update_tables_add
  update_tables_remove ddl_add_column ddl_drop_column retry_mirror
  enum_add_value multi_table_truncate);
my @FAULT_KINDS = qw(kill_worker kill_launcher kill_snapshot dest_restart
  source_restart source_crash walsender_cut);

sub mapped_ids
{
	my ($g) = @_;
	return grep { $g->{mapped}{$_} } @{ $g->{order} };
}

sub swap_ok
{
	my ($g, @ids) = @_;
	foreach my $id (@ids)
	{
		my $t = $g->{tables}{$id};
		return 0 if $t->{has_identity} && !$g->{sw}{identity_swap};
		return 0 if long_for_swap($t) && !$g->{sw}{long_name_swap};
	}
	return 1;
}

# a destination name of 56 bytes or more: its <name>_resync fills the 63
# bytes, and <that>_old is cut back to the same name
sub long_for_swap
{
	my ($t) = @_;
	return length($t->{dst_name}) >= 56;
}

# before a sync_schema that drops a column, the mirror must have applied
# the changes that still carry it
sub must_catch_up
{
	my ($g) = @_;
	return 0 if $g->{sw}{sync_schema_backlog} || $g->{pending_drop_nn};
	return scalar grep { $_ eq 'drop' } @{ $g->{pending_ddl} // [] };
}

sub resync_ok
{
	my ($g, $id) = @_;
	my $t = $g->{tables}{$id};
	return 0 if $t->{ddl_since_setup} && !$g->{sw}{resync_after_ddl};
	return 0 if $g->{enum}{added} && !$g->{sw}{enum_label_copy} && grep { ($_->{type} // '') eq 'enum' } @{ $t->{cols} };
	return 1;
}

sub mapping_json
{
	my ($g, @ids) = @_;
	my @el;
	foreach my $id (@ids)
	{
		my $t = $g->{tables}{$id};
		my $src = $t->{qname};
		my $dst = $t->{dst_qname};
		if ($dst eq $src && !@{ $t->{exclude} } && !$t->{partition_key})
		{
			push @el, json_str($src);
			next;
		}
		my @f = ('"source_table": ' . json_str($src));
		push @f, '"destination_table": ' . json_str($dst) if $dst ne $src;
		push @f, '"exclude_columns": [' . join(', ', map { json_str($_) } @{ $t->{exclude} }) . ']'
		  if @{ $t->{exclude} };
		push @f, '"partition_key": ' . json_str($t->{partition_key}) if $t->{partition_key};
		push @el, '{' . join(', ', @f) . '}';
	}
	return '[' . join(', ', @el) . ']';
}

sub json_str
{
	my ($s) = @_;
	$s =~ s/\\/\\\\/g;
	$s =~ s/"/\\"/g;
	return qq("$s");
}

# is the op kind possible now?
sub op_feasible
{
	my ($g, $kind) = @_;
	my @mapped = grep { !$g->{tables}{$_}{special} } $g->mapped_ids;
	my $paused = $g->{paused};
	return 0 if $g->{pending_sync} && $kind =~ /^ddl_/;
	return !$paused if $kind eq 'pause_resume';
	my @resyncable = grep { $g->resync_ok($_) } @mapped;
	my $all_resyncable = !grep { !$g->resync_ok($_) } $g->mapped_ids;
	return !$paused && @resyncable if $kind eq 'resync_table_truncate';
	return !$paused && grep { $g->swap_ok($_) } @resyncable if $kind eq 'resync_table_swap';
	return !$paused && $all_resyncable if $kind eq 'resync_mirror_truncate';
	return !$paused && $all_resyncable && $g->swap_ok($g->mapped_ids) if $kind eq 'resync_mirror_swap';
	return scalar(grep { !$g->{mapped}{$_} && !$g->{tables}{$_}{special} && $g->resync_ok($_) } @{ $g->{order} })
	  if $kind eq 'update_tables_add';
	return @mapped > 3 if $kind eq 'update_tables_remove';
	# a paused mirror has a backlog for sync_schema to race with
	my $ddl_ok = !$paused || $g->{sw}{sync_schema_backlog};
	return $ddl_ok && scalar($g->ddl_candidates('add')) if $kind eq 'ddl_add_column';
	return $ddl_ok && scalar($g->ddl_candidates('drop')) if $kind eq 'ddl_drop_column';
	return !$paused if $kind eq 'retry_mirror';
	return $g->{enum}{added} < 3 if $kind eq 'enum_add_value';
	return 1 if $kind eq 'multi_table_truncate';
	return 0;
}

sub ddl_candidates
{
	my ($g, $what) = @_;
	my @c;
	foreach my $id ($g->mapped_ids)
	{
		my $t = $g->{tables}{$id};
		next if $t->{special};
		# a table with excluded columns has a publication column list:
		# the source refuses to drop a listed column, and a column added
		# later is not in the list
		next if @{ $t->{exclude} } && !$g->{sw}{add_column_excluded};
		next if @{ $t->{exclude} } && $what eq 'drop';
		if ($what eq 'drop')
		{
			next unless grep {
				$_->{role} eq 'payload' && !$_->{generated_ref} && !$_->{excluded}
				  && (!$_->{notnull} || $g->{sw}{drop_not_null_column})
			} @{ $t->{cols} };
		}
		push @c, $id;
	}
	return @c;
}

my @ADD_COL_TYPES = (
	[ 'integer', undef ], [ 'text', "'dflt'" ], [ 'jsonb', "'{\"d\": 1}'::jsonb" ],
	[ 'numeric(10,2)', '1.50' ], [ 'timestamptz', "'2001-02-03 04:05:06+00'" ],
	[ 'boolean', 'true' ], [ 'integer[]', "'{1,NULL}'" ]);

# barrier SQL of a DDL op; changes the table spec for later steps
sub ddl_sql
{
	my ($g, $what) = @_;
	my $R = $g->{RO};
	my $t = $g->{tables}{ $R->pick($g->ddl_candidates($what)) };
	if ($what eq 'add')
	{
		my ($ty, $def) = @{ $R->pick(@ADD_COL_TYPES) };
		$def = undef if $R->chance(0.4);
		my %have = map { $_->{name} => 1 } @{ $t->{cols} };
		my $name;
		foreach my $cand ($R->shuffle('added col', 'new', "n\xc3\xa9w", 'Added', 'check', 'added_' . $R->range(1, 99)))
		{
			next if $have{$cand} || (defined $t->{dropped} && $cand eq $t->{dropped});
			$name = $cand;
			last;
		}
		return () unless defined $name;
		my $notnull = defined $def && $R->chance(0.3);
		my %tymap = ('integer' => 'int4', 'text' => 'text', 'jsonb' => 'jsonb', 'numeric(10,2)' => 'numeric_p',
			'timestamptz' => 'timestamptz', 'boolean' => 'bool', 'integer[]' => 'int_array');
		push @{ $t->{cols} }, { name => $name, type => $tymap{$ty}, sql => $ty, role => 'payload', notnull => $notnull, added => 1 };
		$t->{ddl_since_setup} = 1;
		$g->name_features($name);
		$g->risk('add_column_excluded', scalar @{ $t->{exclude} });
		return ($t, "ALTER TABLE $t->{qname} ADD COLUMN " . qi($name) . " $ty" . (defined $def ? " DEFAULT $def" : '')
			  . ($notnull ? ' NOT NULL' : ''));
	}
	my @cand = grep { $_->{role} eq 'payload' && !$_->{generated_ref} && !$_->{excluded} } @{ $t->{cols} };
	@cand = grep { !$_->{notnull} } @cand unless $g->{sw}{drop_not_null_column};
	my $c = $R->pick(@cand);
	# the mirror stops at the next INSERT until sync_schema: no catching
	# up first
	$g->{pending_drop_nn} = 1 if $c->{notnull};
	$g->risk('drop_not_null_column', $c->{notnull});
	@{ $t->{cols} } = grep { $_ != $c } @{ $t->{cols} };
	$t->{ddl_since_setup} = 1;
	return ($t, "ALTER TABLE $t->{qname} DROP COLUMN " . qi($c->{name}));
}

# Build the plan.
sub generate_plan
{
	my ($seed, %opt) = @_;
	my %sw = (%KNOWN_BUG_SWITCHES, %{ $opt{switches} // {} });
	my $g = new_gen($seed, \%sw);
	my $RC = $g->{RC};
	my $RS = $g->{RS};
	my $RO = $g->{RO};
	my $S = $g->{S} = $RC->range(2, 3);

	# --- configuration ------------------------------------------------------
	my $snapshot = $RC->chance(0.7) ? 1 : 0;
	my %mopt = (
		do_initial_snapshot => $snapshot ? 'true' : 'false',
		max_batch_size => $RC->pick(1, 7, 100, 1000, 5000, 100000),
		idle_timeout_seconds => $RC->pick(1, 2, 10, 60),
		snapshot_num_rows_per_partition => $RC->pick(300, 2000, 10000, 250000),
		snapshot_max_parallel_workers => $RC->range(1, 4),
		snapshot_num_tables_in_parallel => $RC->range(1, 4),
		replicate_indexes => $RC->pick('true', 'false'),
		replicate_foreign_keys => $RC->pick('true', 'false'),
	);
	$g->cover($snapshot ? 'snapshot_on' : 'snapshot_off');
	my $resync_default = $RC->pick('truncate', 'swap');
	my $source_conf = "logical_decoding_work_mem = '" . $RC->pick('64kB', '256kB', '64MB') . "'\n";
	my $dest_conf =
	    "bunny.stream_large_transactions = " . ($RC->chance(0.8) ? 'on' : 'off') . "\n"
	  . "bunny.max_batch_latency = '" . $RC->pick('0', '50ms', '500ms') . "'\n";

	# --- schema -------------------------------------------------------------
	$g->create_types;
	my @tq = $RS->shuffle(sort keys %{ $g->{types} });
	$g->{type_queue} = \@tq;
	# identity tables keep a seed from swapping them (switch
	# identity_swap): only some seeds have them
	my @kinds = $RS->shuffle(grep { !/identity/ } @KEY_KINDS);
	@kinds = @kinds[ 0 .. $RS->range(4, 6) ];
	push @kinds, grep { $RS->chance(0.5) } 'identity_always', 'identity_by_default';
	# partitioned tables: range (int key), hash (bigint), list (composite)
	my @parts = $RS->shuffle([ 'pk_int', 'range' ], [ 'pk_bigint', 'hash' ], [ 'pk_composite', 'list' ]);
	@parts = @parts[ 0 .. $RS->range(0, 1) ];
	my @specs = ((map { [ $_ ] } @kinds), (map { [ $_->[0], part => $_->[1] ] } @parts));
	@specs = $RS->shuffle(@specs);
	# one or two tables are added later with update_tables
	my $nres = $RS->range(1, 2);
	my @tables;
	foreach my $i (0 .. $#specs)
	{
		my ($k, %o) = @{ $specs[$i] };
		push @tables, $g->make_table($k, %o, reserved => $i < $nres ? 1 : 0);
	}
	# what the queue did not place yet goes into the last tables
	while (@{ $g->{type_queue} })
	{
		my $t = $RS->pick(grep { !$_->{special} } @tables);
		my $ty = shift @{ $g->{type_queue} };
		my $T = $g->{types}{$ty};
		my %have = map { $_->{name} => 1 } @{ $t->{cols} };
		my $name = 'c_' . $ty;
		next if $have{$name};
		push @{ $t->{cols} }, { name => $name, type => $ty, sql => $T->{sql}, role => 'payload' };
		push @{ $g->{schema_sql} }, "ALTER TABLE $t->{qname} ADD COLUMN " . qi($name) . " $T->{sql}";
		$g->cover($T->{feature}, 'nullable');
	}
	if ($sw{no_column_table})
	{
		push @tables, $g->make_table('none', special => 'nocols');
		push @{ $g->{schema_sql} }, "ALTER TABLE $tables[-1]{qname} REPLICA IDENTITY FULL";
		$g->cover('no_column_table', 'switch_no_column_table');
	}
	my @dest_pre;
	if ($sw{replica_trigger_null})
	{
		my $t = { id => 'T' . (scalar(@{ $g->{order} }) + 1), schema => 'public', name => 'trg skip',
			kind => 'pk_int', special => 'trigger', cols => [ { name => 'id', role => 'key' }, { name => 'v' }, { name => 'flag' } ],
			exclude => [], key => ['id'], handle => ['id'], hkind => 'int', compare_cols => ['id'] };
		$t->{qname} = $t->{dst_qname} = qn('public', 'trg skip');
		@$t{qw(dst_schema dst_name)} = ('public', 'trg skip');
		$g->{tables}{ $t->{id} } = $t;
		push @{ $g->{order} }, $t->{id};
		my $ddl = "CREATE TABLE $t->{qname} (id integer PRIMARY KEY, v text, flag boolean)";
		push @{ $g->{schema_sql} }, $ddl;
		push @dest_pre, $ddl,
		  "CREATE FUNCTION public.skip_flagged() RETURNS trigger LANGUAGE plpgsql AS \$\$BEGIN IF NEW.flag THEN RETURN NULL; END IF; RETURN NEW; END\$\$",
		  "CREATE TRIGGER skip_flagged BEFORE UPDATE ON $t->{qname} FOR EACH ROW EXECUTE FUNCTION public.skip_flagged()",
		  "ALTER TABLE $t->{qname} ENABLE REPLICA TRIGGER skip_flagged";
		push @tables, $t;
		$g->cover('replica_trigger_null', 'switch_replica_trigger_null');
	}
	# partition_key for the parallel copy, on some integer keys
	foreach my $t (@tables)
	{
		next if $t->{special} || !$t->{key}[0];
		my ($kc) = grep { $_->{name} eq $t->{key}[0] } @{ $t->{cols} };
		$t->{partition_key} = $t->{key}[0]
		  if $kc && $kc->{sql} =~ /^(integer|bigint)$/ && !$t->{part} && $RS->chance(0.5);
	}

	# --- initial rows (the dropped column is dropped in between) ---------
	my (@init_pre, @init_post);
	foreach my $t (@tables)
	{
		my $n = $RS->pick_w([ 0, 1 ], [ 50, 2 ], [ 500, 3 ], [ 3000, 3 ], [ 15000, 2 ], [ 30000, 1 ]);
		$n = 300 if $n > 300 && grep { $_->{toast} } @{ $t->{cols} };
		# without the initial copy, rows inserted before the mirror exists
		# would never reach the destination: the mapped tables get theirs
		# once it runs (tables added later are copied anyway)
		my $before = $snapshot || $t->{reserved};
		my $target = $before ? \@init_pre : \@init_post;
		if ($t->{dropped} && $before)
		{
			# rows written with the column, then without it
			my ($half) = int($n / 2);
			push @$target, $g->initial_rows($t, $half);
			push @$target, "UPDATE $t->{qname} SET " . qi($t->{dropped}) . " = repeat('gone', 3)";
			push @$target, "ALTER TABLE $t->{qname} DROP COLUMN " . qi($t->{dropped});
			push @$target, $g->initial_rows($t, $n - $half);
			$g->cover('dropped_column');
		}
		elsif ($t->{dropped})
		{
			# dropped before the mirror exists; the rows come later
			push @init_pre, "ALTER TABLE $t->{qname} DROP COLUMN " . qi($t->{dropped});
			push @$target, $g->initial_rows($t, $n);
			$g->cover('dropped_column');
		}
		else
		{
			push @$target, $g->initial_rows($t, $n);
		}
	}
	push @init_pre, 'ANALYZE';

	# --- the mirror ------------------------------------------------------
	$g->{mapped} = { map { $_->{id} => 1 } grep { !$_->{reserved} } @tables };
	$mopt{resync_strategy} = lit($resync_default eq 'swap' && !$g->swap_ok(keys %{ $g->{mapped} }) ? 'truncate' : $resync_default);
	# every resync without a strategy uses this one; swap_ok must hold for
	# whatever is mapped then
	$g->{resync_default} = $mopt{resync_strategy} =~ /swap/ ? 'swap' : 'truncate';
	my $mname = "fz-$seed";
	$mname = substr($mname, 0, 48);
	my $plan = {
		version => 1,
		seed => $seed,
		switches => \%sw,
		sessions => $S,
		mirror => { name => $mname, options => \%mopt, mapping => $g->mapping_json($g->mapped_ids) },
		source_conf => $source_conf,
		dest_conf => $dest_conf,
		schema_sql => $g->{schema_sql},
		initial_pre_sql => \@init_pre,
		dest_pre_sql => \@dest_pre,
	};

	# --- steps -----------------------------------------------------------
	my @steps;
	my $nsteps = $RO->range(6, 8);
	my @todo_ops = $RO->shuffle(@OP_KINDS);
	my @todo_faults = $RO->shuffle(@FAULT_KINDS);
	my $bigs = $RO->range(1, 2);
	my @big_steps = map { $RO->range(1, $nsteps) } 1 .. $bigs;
	my $checkpoints = 0;

	# step 0: create the mirror (the sessions write during the copy)
	{
		my $dur = $RO->real(1.5, 3);
		my $st = { n => 0, dur => $dur, pre => [], actions => [], post => [] };
		$st->{sessions} = $snapshot ? [ map { $g->session_chunk($_, $dur) } 1 .. $S ] : [];
		push @{ $st->{actions} }, { at => 0, kind => 'create_mirror' };
		if ($snapshot && $RO->chance(0.6))
		{
			push @{ $st->{actions} }, { at => $RO->real(0.1, 1), kind => 'kill_snapshot' };
			$g->cover('fault_kill_snapshot');
			@todo_faults = grep { $_ ne 'kill_snapshot' } @todo_faults;
		}
		elsif ($RO->chance(0.3))
		{
			my $f = $RO->pick('kill_worker', 'dest_restart', 'walsender_cut');
			push @{ $st->{actions} }, { at => $RO->real(0.2, 1.5), kind => $f };
			$g->cover("fault_$f");
		}
		push @{ $st->{post} }, { kind => 'wait_running' };
		push @steps, $st;
	}

	$g->{paused} = 0;
	my $resume_at;
	for my $i (1 .. $nsteps)
	{
		my $dur = $RO->real(1.5, 3.5);
		my $st = { n => $i, dur => $dur, pre => [], actions => [], post => [] };
		if ($i == 1 && @init_post)
		{
			push @{ $st->{pre} }, { kind => 'src_sql', label => 'initial rows', sql => [ @init_post, 'ANALYZE' ] };
		}
		my $at = $RO->real(0.2, 0.8);
		my $copying;
		my $paused_at_start = $g->{paused};

		# (switch sync_schema_backlog) a column dropped on the source and
		# on the destination while the paused mirror has changes that
		# still carry it
		if (($g->{backlog_drop_at} // 0) == $i)
		{
			delete $g->{backlog_drop_at};
			my ($t, $sql) = $g->ddl_sql('drop');
			if ($sql)
			{
				push @{ $st->{pre} }, { kind => 'src_sql', label => 'DDL: drop column (mirror paused)', sql => [$sql] };
				push @{ $st->{actions} }, { at => $at, kind => 'sync_schema' };
				$g->cover('op_sync_schema_drop_column');
				$g->risk('sync_schema_backlog', 1);
				$g->{pending_drop_nn} = 0;
				$at += $RO->real(0.2, 0.6);
			}
		}
		# resume a paused mirror, while the sessions run
		if ($g->{paused} && $resume_at == $i)
		{
			push @{ $st->{actions} }, { at => $at, kind => 'resume' };
			$g->{paused} = 0;
			$at += $RO->real(0.2, 0.6);
		}
		# sync_schema after DDL
		my $op;
		if ($g->{pending_sync} && $g->{pending_sync} <= $i && !($g->{paused} && $g->must_catch_up))
		{
			push @{ $st->{actions} }, { at => $at, kind => 'catch_up' } if $g->must_catch_up;
			push @{ $st->{actions} }, { at => $at, kind => 'sync_schema' };
			$g->risk('sync_schema_backlog', $g->{paused} && grep { $_ eq 'drop' } @{ $g->{pending_ddl} });
			$g->cover(map { "op_sync_schema_${_}_column" } @{ $g->{pending_ddl} });
			$g->{pending_sync} = 0;
			$g->{pending_ddl} = [];
			$g->{pending_drop_nn} = 0;
			$at += $RO->real(0.2, 0.6);
		}
		elsif ($i < $nsteps)
		{
			# an operation: what this seed has not done yet first
			my @feasible = grep { $g->op_feasible($_) } @OP_KINDS;
			my ($next) = grep { my $k = $_; grep { $_ eq $k } @feasible } @todo_ops;
			$op = $next && $RO->chance(0.85) ? $next : @feasible ? $RO->pick(@feasible) : undef;
			$op = undef if $RO->chance(0.1);
		}
		if ($op)
		{
			@todo_ops = grep { $_ ne $op } @todo_ops;
			my $before_copy = $op =~ /^resync|update_tables/;
			# compare before a resync could heal a difference
			if ($before_copy && !$paused_at_start && !$g->{pending_sync} && $checkpoints < 4)
			{
				push @{ $st->{pre} }, { kind => 'checkpoint', tables => [ $g->mapped_ids ] };
				$checkpoints++;
			}
			if ($op eq 'pause_resume')
			{
				push @{ $st->{actions} }, { at => $at, kind => 'pause' };
				$g->{paused} = 1;
				$resume_at = $i + $RO->range(0, 1);
				if ($g->{sw}{sync_schema_backlog} && !$g->{pending_sync} && $g->ddl_candidates('drop'))
				{
					$resume_at = $i + 1;
					$g->{backlog_drop_at} = $i + 1;
				}
				if ($resume_at == $i)
				{
					push @{ $st->{actions} }, { at => $at + $RO->real(0.5, 1.5), kind => 'resume' };
					$g->{paused} = 0;
				}
				$g->cover('op_pause_resume');
			}
			elsif ($op =~ /^resync_table_(\w+)/)
			{
				my $strat = $1;
				my @cand = grep { !$g->{tables}{$_}{special} && $g->resync_ok($_) } $g->mapped_ids;
				@cand = grep { $g->swap_ok($_) } @cand if $strat eq 'swap';
				my $id = $RO->pick(@cand);
				my $t = $g->{tables}{$id};
				# by source or destination name; NULL = the mirror's default
				my $name = $RO->chance(0.5) ? $t->{qname} : $t->{dst_qname};
				my $arg = $strat;
				$arg = undef if $strat eq $g->{resync_default} && $RO->chance(0.3);
				push @{ $st->{actions} }, { at => $at, kind => 'resync_table', table => $id, name => $name, strategy => $arg };
				$g->cover("op_resync_table_$strat");
				$g->copy_risks($id);
				$g->risk('identity_swap', $strat eq 'swap' && $t->{has_identity});
				$g->risk('long_name_swap', $strat eq 'swap' && long_for_swap($t));
				$copying = 1;
			}
			elsif ($op =~ /^resync_mirror_(\w+)/)
			{
				my $strat = $1;
				my $arg = $strat;
				$arg = undef if $strat eq $g->{resync_default} && $RO->chance(0.3);
				push @{ $st->{actions} }, { at => $at, kind => 'resync_mirror', strategy => $arg };
				$g->cover("op_resync_mirror_$strat");
				$g->copy_risks($g->mapped_ids);
				$g->risk('identity_swap', $strat eq 'swap' && grep { $g->{tables}{$_}{has_identity} } $g->mapped_ids);
				$g->risk('long_name_swap', $strat eq 'swap' && grep { long_for_swap($g->{tables}{$_}) } $g->mapped_ids);
				$copying = 1;
			}
			elsif ($op eq 'update_tables_add' || $op eq 'update_tables_remove')
			{
				my (@add, @remove, @empty);
				if ($op eq 'update_tables_add')
				{
					my @cand = grep { !$g->{mapped}{$_} && !$g->{tables}{$_}{special} && $g->resync_ok($_) } @{ $g->{order} };
					@add = ($RO->pick(@cand));
					# a table removed earlier: its destination table is
					# emptied first (added tables must be empty)
					@empty = grep { $g->{tables}{$_}{was_mapped} } @add;
					$g->cover('op_update_tables_add');
					$g->copy_risks(@add);
					$copying = 1;
				}
				else
				{
					my @cand = grep { !$g->{tables}{$_}{special} } $g->mapped_ids;
					@remove = ($RO->pick(@cand));
					$g->cover('op_update_tables_remove');
				}
				$g->{mapped}{$_} = 1 for @add;
				foreach (@remove)
				{
					delete $g->{mapped}{$_};
					$g->{tables}{$_}{was_mapped} = 1;
				}
				if (@add || @remove)
				{
					push @{ $st->{actions} }, {
						at => $at, kind => 'update_tables', add => \@add, remove => \@remove,
						empty => \@empty, mapping => $g->mapping_json($g->mapped_ids),
						was_paused => $g->{paused} };
					$g->{paused} = 0;
				}
			}
			elsif ($op =~ /^ddl_(add|drop)_column$/)
			{
				my $what = $1;
				my ($t, $sql) = $g->ddl_sql($what);
				if ($sql)
				{
					# not while a copy runs: it would copy the old columns
					push @{ $st->{pre} }, { kind => 'wait_idle' } unless $g->{sw}{resync_after_ddl};
					push @{ $st->{pre} }, { kind => 'src_sql', label => "DDL: $what column", sql => [$sql] };
					$g->{pending_sync} = $i + $RO->range(0, 1);
					push @{ $g->{pending_ddl} }, $what;
					if ($g->{pending_sync} == $i)
					{
						push @{ $st->{actions} }, { at => $at, kind => 'catch_up' } if $g->must_catch_up;
						push @{ $st->{actions} }, { at => $at, kind => 'sync_schema' };
						$g->risk('sync_schema_backlog', $g->{paused} && $what eq 'drop');
						$g->cover("op_sync_schema_${what}_column");
						$g->{pending_sync} = 0;
						$g->{pending_ddl} = [];
						$g->{pending_drop_nn} = 0;
					}
				}
			}
			elsif ($op eq 'retry_mirror')
			{
				push @{ $st->{actions} }, { at => $at, kind => 'retry_mirror' };
				$g->cover('op_retry_mirror');
			}
			elsif ($op eq 'enum_add_value')
			{
				my $e = $g->{enum};
				my $new = $RO->pick('added ', "n\xc3\xa9w ", 'Z') . ++$e->{added};
				my $pos = $RO->chance(0.5) ? ' BEFORE ' . lit($e->{labels}[0]) : '';
				push @{ $st->{pre} }, { kind => 'src_sql', label => 'enum label added',
					sql => [ "ALTER TYPE $e->{qname} ADD VALUE " . lit($new) . $pos ] };
				push @{ $e->{labels} }, $new;
				$g->cover('op_enum_add_value');
			}
			elsif ($op eq 'multi_table_truncate')
			{
				my @cand = $RO->shuffle(grep { !$g->{tables}{$_}{special} } @{ $g->{order} });
				my @tt = @cand[ 0 .. ($#cand < 2 ? $#cand : $RO->range(1, 2)) ];
				$g->model_clear($g->{tables}{$_}) for @tt;
				push @{ $st->{pre} }, { kind => 'src_sql', label => 'TRUNCATE of several tables',
					sql => [ 'TRUNCATE ' . join(', ', map { $g->{tables}{$_}{qname} } @tt) ] };
				$g->cover('op_multi_table_truncate', 'wl_truncate');
			}
			$at += $RO->real(0.1, 0.6);
		}

		# a fault
		if ($RO->chance(0.8))
		{
			my @feasible = grep { $_ ne 'kill_snapshot' || $copying } @FAULT_KINDS;
			my ($next) = grep { my $k = $_; grep { $_ eq $k } @feasible } @todo_faults;
			my $f = $next && $RO->chance(0.85) ? $next : $RO->pick(@feasible);
			@todo_faults = grep { $_ ne $f } @todo_faults;
			if ($f eq 'source_restart' || $f eq 'source_crash')
			{
				push @{ $st->{pre} }, { kind => $f };
			}
			else
			{
				push @{ $st->{actions} }, { at => $f eq 'kill_snapshot' ? $at : $at + $RO->real(0, 1.5), kind => $f };
			}
			$g->cover("fault_$f");
		}

		my $big = (grep { $_ == $i } @big_steps) ? $RO->range(15000, 50000) : undef;
		my $big_s = $RO->range(1, $S);
		$st->{sessions} = [ map { $g->session_chunk($_, $dur, truncate => 1, big => ($_ == $big_s ? $big : undef)) } 1 .. $S ];
		@{ $st->{actions} } = sort { $a->{at} <=> $b->{at} } @{ $st->{actions} };
		push @steps, $st;
	}

	# --- the end ------------------------------------------------------------
	my @final;
	push @final, { kind => 'resume' } if $g->{paused};
	push @final, { kind => 'wait_idle' };
	if ($g->{pending_sync})
	{
		push @final, { kind => 'catch_up' } if $g->must_catch_up;
		push @final, { kind => 'sync_schema' };
		$g->cover(map { "op_sync_schema_${_}_column" } @{ $g->{pending_ddl} });
	}
	push @final, { kind => 'checkpoint', final => 1, tables => [ $g->mapped_ids ] };

	$plan->{steps} = \@steps;
	$plan->{final} = \@final;
	$plan->{covers} = $g->{covers};
	$plan->{tables} = {
		map {
			my $t = $_;
			$t->{id} => {
				qname => $t->{qname}, dst_qname => $t->{dst_qname}, kind => $t->{kind},
				exclude => $t->{exclude}, compare_cols => $t->{compare_cols},
				has_identity => $t->{has_identity} ? 1 : 0, part => $t->{part},
				handle => $t->{handle}, special => $t->{special},
			}
		} values %{ $g->{tables} } };
	$plan->{table_order} = $g->{order};
	$plan->{known_features} = [@ALL_FEATURES];
	return $plan;
}

# A readable listing of the whole plan, in the order it runs.
sub plan_text
{
	my ($plan) = @_;
	my @o;
	my $sw = join(', ', map { "$_=$plan->{switches}{$_}" } sort keys %{ $plan->{switches} });
	push @o, "-- bunnydb fuzz plan, seed $plan->{seed} (switches: $sw)",
	  "-- $plan->{sessions} source sessions; each step's session blocks run concurrently",
	  "-- source postgresql.conf:", (map { "--   $_" } split /\n/, $plan->{source_conf}),
	  "-- destination postgresql.conf:", (map { "--   $_" } split /\n/, $plan->{dest_conf}),
	  '', '-- ===== source schema', map { "$_;" } @{ $plan->{schema_sql} };
	push @o, '', '-- ===== source rows before the mirror', map { "$_;" } @{ $plan->{initial_pre_sql} };
	if (@{ $plan->{dest_pre_sql} })
	{
		push @o, '', '-- ===== destination, before the mirror', map { "$_;" } @{ $plan->{dest_pre_sql} };
	}
	my $m = $plan->{mirror};
	push @o, '', '-- ===== the mirror (destination)', create_mirror_sql($plan) . ';';
	foreach my $st (@{ $plan->{steps} })
	{
		push @o, '', sprintf('-- ===== step %d (%.1f s)', $st->{n}, $st->{dur});
		push @o, map { '-- barrier: ' . action_text($_) } @{ $st->{pre} };
		push @o, map { sprintf('-- at %.2f s: %s', $_->{at}, action_text($_)) } @{ $st->{actions} };
		push @o, map { '-- after the sessions: ' . action_text($_) } @{ $st->{post} };
		foreach my $pre (grep { $_->{kind} eq 'src_sql' } @{ $st->{pre} })
		{
			push @o, "-- [barrier: $pre->{label}, on the source]", map { "$_;" } @{ $pre->{sql} };
		}
		my $s = 0;
		foreach my $chunk (@{ $st->{sessions} })
		{
			$s++;
			push @o, "-- [session $s]", @$chunk;
		}
	}
	push @o, '', '-- ===== end', map { '-- ' . action_text($_) } @{ $plan->{final} };
	return join("\n", @o) . "\n";
}

sub create_mirror_sql
{
	my ($plan) = @_;
	my $m = $plan->{mirror};
	my $o = $m->{options};
	return 'SELECT bunny.create_mirror(' . lit($m->{name}) . ", 'src', " . lit($m->{mapping}) . '::jsonb'
	  . join('', map { ", $_ => $o->{$_}" } sort keys %$o) . ')';
}

sub action_text
{
	my ($a) = @_;
	my $k = $a->{kind};
	return "$k ($a->{label})" if $k eq 'src_sql';
	return "resync_table($a->{name}, " . ($a->{strategy} // 'NULL') . ')' if $k eq 'resync_table';
	return 'resync_mirror(' . ($a->{strategy} // 'NULL') . ')' if $k eq 'resync_mirror';
	if ($k eq 'update_tables')
	{
		return "update_tables(add: @{ $a->{add} }; remove: @{ $a->{remove} }; empty on the destination first: @{ $a->{empty} }) $a->{mapping}";
	}
	return 'checkpoint: catch up and compare tables ' . join(' ', @{ $a->{tables} }) if $k eq 'checkpoint';
	return 'catch_up: wait_for_lsn up to the source\'s current position' if $k eq 'catch_up';
	return $k;
}

1;
