# Copyright (c) bunnydb authors
#
# 020_table_shapes: every table shape through every operation (README
# "Table mappings", "SQL API reference", "Operations", "Switching over").
# A PostgreSQL 15 source holds one table per shape, with rows; the mirrors
# create the destination tables (one is created beforehand, as a user
# would).  After each step every table of the mirror is compared row by
# row with the source (count and md5 of the rows' text, computed on the
# server), and at the larger steps the destination's columns (type, NOT
# NULL, collation, generated expression, identity) and primary key are
# compared with the source's and the publication with the mapping.
#
#  shapes   identity GENERATED ALWAYS (becomes BY DEFAULT) and BY DEFAULT;
#           a stored generated column (generated on the destination too:
#           pg_attribute.attgenerated); columns dropped and added on the
#           source before the mirror; a destination table made beforehand
#           with its own column order, an extra column with a default and a
#           dropped column; an inheritance parent and child mapped as two
#           tables (the parent's own rows only); a partitioned table of two
#           levels mapped through its root; composite type and array of it;
#           a domain over an array; ranges and multiranges; tsvector and
#           tsquery; xml; columns with collations "C", "POSIX" and
#           "und-x-icu"; an enum and an array of it; a table of 1 000
#           columns; rows with a 100 MB text and a 100 MB bytea value; names
#           that need quoting: reserved words, mixed case, spaces, unicode, a
#           63-byte table name made of two-byte characters, a 63-byte column
#           name, dots and double quotes in schema, table and column names
#  steps    initial copy with inserts, updates, key-changing updates (across
#           partitions too, and of rows with unchanged TOAST values) and
#           deletes running; resync_table truncate, then swap, of each table
#           in turn, with writes going on; resync_mirror truncate and swap;
#           update_tables removing half of the tables and adding them back
#           (destination dropped, or emptied for the pre-made table), twice,
#           so that each table is removed once; ADD COLUMN and DROP COLUMN on
#           the source and sync_schema; sync_sequences after inserts that
#           use the identity and serial defaults, then INSERTs on the
#           destination with the defaults (rolled back) must not collide.
#  end      every mirror RUNNING with error_count 0, no *_resync table left.
#
# The tables are spread over six mirrors that work side by side (the
# per-table resyncs of each mirror one after the other): table kinds, column
# types, names, the 63-byte name with a plain table, the identity columns,
# and the two heavy tables (1 000 columns, 100 MB values).  The 63-byte
# name and the identity columns have mirrors of their own because a swap
# that keeps failing leaves its mirror's operation pending for good: such
# a mirror refuses every later operation (55006), so the later steps skip
# it, and it is checked again at the end (its stream goes on, but its
# tables lack the schema step).  Runs in about 3 minutes on 2 cores.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;
use ShapeTest;

use List::Util qw(max);
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $t0 = time();

# failed attempts are retried quickly, so that a failing operation is
# recognised after a few seconds (ShapeTest::wait_ops)
# six mirrors, each with its slot and, while it resyncs, a temporary one
my ($source, $dest) = setup_pair(
	source_conf => "max_replication_slots = 16\nmax_wal_senders = 16\n",
	dest_conf   => "bunny.retry_backoff_max = '2s'\n");

# ---------------------------------------------------------------------------
# The shapes.  Each table has an integer key (key), is written by
# generated SQL (insert cols/vals in terms of g, update upd, a key change,
# a delete) unless it brings its own dml, has a column dropme that the
# schema step drops, and an add clause for that step.  This file is kept
# in UTF-8 and its strings are bytes (no "use utf8"): lengths are bytes.
# ---------------------------------------------------------------------------

# 63 bytes of two-byte characters, 56 bytes being a character and a half
my $long_table = 'L' . ('ü' x 31);
my $long_col   = '☃' x 21;                    # 63 bytes
my $long_add   = 'a' x 63;
my $wide_cols  = join(', ', map { "c$_" } 1 .. 998);
my $wide_vals  = join(', ', map { "g + $_" } 1 .. 998);

# columns of the source's precreated table compared on both sides (the
# destination has its own order and an extra column)
my $pre_cols = 'id, a, b, c, dropme';

my @shapes = (
	# --- types and table kinds ---
	{
		name => 'generated', mirror => 'kinds', table => 'public.gen_stored',
		src => 'CREATE TABLE gen_stored (id int PRIMARY KEY, a int, '
		  . 'b int GENERATED ALWAYS AS (a * 2 + id) STORED, dropme int)',
		cols => 'a', vals => 'g', upd => 'a = a + 1',
		add => q{ADD COLUMN g2 text GENERATED ALWAYS AS ('g' || a) STORED},
	},
	{
		name => 'dropped columns', mirror => 'kinds', table => 'public.dropped_col',
		src => q{CREATE TABLE dropped_col (id int PRIMARY KEY, gone1 int, a text, gone2 text, b numeric, dropme int);
INSERT INTO dropped_col SELECT g, g, 'a' || g, 'gone' || g, g / 3.0, g FROM generate_series(1, 30) g;
ALTER TABLE dropped_col DROP COLUMN gone1, DROP COLUMN gone2;
ALTER TABLE dropped_col ADD COLUMN late int DEFAULT 7;
INSERT INTO dropped_col (id, a, b, late) SELECT g, 'a' || g, g / 3.0, g FROM generate_series(31, 40) g;},
		nofill => 1,
		cols => 'a, b, late', vals => q{'a' || g, g / 3.0, g}, upd => 'b = b + 1, late = late + 1',
		add => 'ADD COLUMN added bigint DEFAULT 9',
	},
	{
		name => 'pre-made destination', mirror => 'kinds', table => 'public.precreated',
		src => 'CREATE TABLE precreated (id int PRIMARY KEY, a text, b int, c date, dropme int)',
		# other column order, an extra column with a default, a dropped column
		dst => q{CREATE TABLE precreated (c date, zz int, extra text NOT NULL DEFAULT 'dflt', b int, a text,
                         dropme int, id int PRIMARY KEY);
ALTER TABLE precreated DROP COLUMN zz;},
		cmp => sub { "(SELECT $pre_cols FROM public.precreated)" },
		cols => 'a, b, c', vals => q{'a' || g, g, date '2020-01-01' + g},
		upd => 'b = b + 1, c = c + 1',
		add => q{ADD COLUMN added date DEFAULT '2020-01-01'},
	},
	{
		name => 'inheritance parent', mirror => 'kinds', table => 'public.inh_parent',
		src => 'CREATE TABLE inh_parent (id int PRIMARY KEY, v text, dropme int)',
		# the parent's own rows: the child is a table of its own
		cmp => sub { '(SELECT * FROM ONLY public.inh_parent)' },
		rel => 'ONLY public.inh_parent',
		cols => 'v', vals => q{'p' || g}, upd => q{v = v || '.'},
		# an UPDATE of the parent that also changes rows of the child
		extra_dml => "UPDATE inh_parent SET v = v || '+' WHERE id % 11 = 0;\n",
		add => q{ADD COLUMN added text DEFAULT 'p'},
	},
	{
		name => 'inheritance child', mirror => 'kinds', table => 'public.inh_child',
		src => 'CREATE TABLE inh_child (w text) INHERITS (inh_parent); '
		  . 'ALTER TABLE inh_child ADD PRIMARY KEY (id)',
		cols => 'v, w', vals => q{'c' || g, 'w' || g}, upd => q{w = w || '.'},
		# its dropme is the parent's, dropped with it
		add => 'ADD COLUMN child_added int DEFAULT 3', nodrop => 1,
	},
	{
		name => 'partitioned', mirror => 'kinds', table => 'public.parted',
		src => q{CREATE TABLE parted (id int, k int NOT NULL, v text, dropme int, PRIMARY KEY (id)) PARTITION BY RANGE (id);
CREATE TABLE parted_p1 PARTITION OF parted FOR VALUES FROM (MINVALUE) TO (100000);
CREATE TABLE parted_p2 PARTITION OF parted FOR VALUES FROM (100000) TO (MAXVALUE) PARTITION BY RANGE (id);
CREATE TABLE parted_p2a PARTITION OF parted_p2 FOR VALUES FROM (100000) TO (200000);
CREATE TABLE parted_p2b PARTITION OF parted_p2 FOR VALUES FROM (200000) TO (MAXVALUE);
INSERT INTO parted SELECT g * 7919, g, 'v' || g, g FROM generate_series(1, 30) g;},
		nofill => 1,
		cols => 'k, v', vals => q{g, 'v' || g}, upd => q{v = v || '.'},
		# key changes move rows from one leaf partition to another
		keychange => 'id + 100000', keychange_where => ' WHERE id < 100000',
		extra_dml => 'UPDATE parted SET id = id + 100000 WHERE id = '
		  . "(SELECT max(id) FROM parted WHERE id >= 100000 AND id < 200000);\n",
		add => q{ADD COLUMN added text DEFAULT 'pt'},
	},
	{
		name => 'composite', mirror => 'types', table => 'public.comp_t',
		src => 'CREATE TYPE comp AS (x int, y text, z numeric[]); '
		  . 'CREATE TABLE comp_t (id int PRIMARY KEY, c comp, ca comp[], dropme int)',
		cols => 'c, ca',
		vals => q{ROW(g, 'y' || g, ARRAY[g, 1.5])::comp, ARRAY[ROW(g, 'q"', NULL)::comp, NULL]},
		upd => 'c.x = (c).x + 1',
		add => q{ADD COLUMN c2 comp DEFAULT ROW(0, 'd', '{}')::comp},
	},
	{
		name => 'domain over array', mirror => 'types', table => 'public.dom_t',
		src => 'CREATE DOMAIN int_list AS int[] CHECK (cardinality(VALUE) <= 5); '
		  . 'CREATE TABLE dom_t (id int PRIMARY KEY, d int_list NOT NULL, dropme int)',
		cols => 'd', vals => 'ARRAY[g, g + 1]', upd => 'd = ARRAY[d[1] + 1, 0]',
		add => q{ADD COLUMN d2 int_list DEFAULT '{1}'},
	},
	{
		name => 'range and multirange', mirror => 'types', table => 'public.rng_t',
		src => 'CREATE TABLE rng_t (id int PRIMARY KEY, r int4range, tr tstzrange, '
		  . 'mr int4multirange, dm datemultirange, dropme int)',
		cols => 'r, tr, mr, dm',
		vals => q{int4range(g, g + 10), tstzrange(timestamptz '2020-01-01 00:00+00' + g * interval '1 day', NULL),
int4multirange(int4range(g, g + 2), int4range(g + 5, g + 7)),
datemultirange(daterange(date '2021-01-01' + g, date '2021-02-01' + g))},
		upd => 'r = int4range(lower(r), upper(r) + 1), mr = mr + int4multirange(int4range(1000, 1001))',
		add => q{ADD COLUMN nr nummultirange DEFAULT '{[1.5,2.5)}'},
	},
	{
		name => 'tsvector', mirror => 'types', table => 'public.tsv_t',
		src => 'CREATE TABLE tsv_t (id int PRIMARY KEY, doc text, tsv tsvector, q tsquery, dropme int)',
		cols => 'doc, tsv, q',
		vals => q{'the quick brown fox ' || g, to_tsvector('english', 'the quick brown fox jumps ' || g),
to_tsquery('english', 'fox & ' || g)},
		upd => q{tsv = tsv || to_tsvector('simple', 'extra')},
		add => q{ADD COLUMN tsv2 tsvector DEFAULT 'a:1 b:2'},
	},
	{
		name => 'xml', mirror => 'types', table => 'public.xml_t',
		src => 'CREATE TABLE xml_t (id int PRIMARY KEY, x xml, dropme int)',
		cols => 'x', vals => q{xmlelement(name "row", xmlattributes(g AS id), 'text & ' || g)},
		upd => q{x = xmlconcat(x, '<e/>'::xml)},
		add => q{ADD COLUMN x2 xml DEFAULT '<d/>'},
	},
	{
		name => 'collations', mirror => 'types', table => 'public.coll_t',
		src => 'CREATE TABLE coll_t (id int PRIMARY KEY, c text COLLATE "C", p text COLLATE "POSIX", '
		  . 'u text COLLATE "und-x-icu", dropme int); CREATE INDEX coll_t_u ON coll_t (u)',
		cols => 'c, p, u', vals => q{'c' || g, 'p' || g, 'ü' || g}, upd => q{c = c || 'x', u = u || 'ß'},
		add => q{ADD COLUMN c2 text COLLATE "POSIX" DEFAULT 'z'},
	},
	{
		name => 'enum', mirror => 'types', table => 'public.enum_t',
		src => q{CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE enum_t (id int PRIMARY KEY, m mood, ms mood[], dropme int)},
		cols => 'm, ms', vals => q{(ARRAY['sad', 'ok', 'happy']::mood[])[g % 3 + 1], ARRAY['ok', 'happy']::mood[]},
		upd => q{m = 'happy'},
		add => q{ADD COLUMN m2 mood DEFAULT 'ok'},
	},

	# --- names that need quoting ---
	{
		name => 'reserved words', mirror => 'names', table => 'public."select"',
		src => 'CREATE TABLE "select" ("from" serial PRIMARY KEY, "where" text, "Group By" int, dropme int)',
		key => '"from"', key_default => 1,
		cols => '"where", "Group By"', vals => q{'w' || g, g}, upd => '"Group By" = "Group By" + 1',
		add => q{ADD COLUMN "order" text DEFAULT 'o'},
		seq_insert => q{INSERT INTO "select" ("where") VALUES ('on the destination')},
	},
	{
		name => 'unicode, spaces, mixed case', mirror => 'names', table => '"Weird Schema"."Zürich ☃"',
		src => 'CREATE SCHEMA "Weird Schema"; '
		  . 'CREATE TABLE "Weird Schema"."Zürich ☃" (id bigserial PRIMARY KEY, "Straße ☃" text, '
		  . '"MixedCase" int, dropme int)',
		key_default => 1,
		cols => '"Straße ☃", "MixedCase"', vals => q{'☃' || g, g}, upd => q{"Straße ☃" = "Straße ☃" || 'ß'},
		add => q{ADD COLUMN "Ünïcødé ☃ added" text DEFAULT '☃'},
		seq_insert => q{INSERT INTO "Weird Schema"."Zürich ☃" ("MixedCase") VALUES (-1)},
	},
	{
		# a plain table next to it, so that update_tables can remove it
		name => 'plain', mirror => 'long', table => 'public.plain',
		src => 'CREATE TABLE plain (id int PRIMARY KEY, v text, dropme int)',
		cols => 'v', vals => q{'v' || g}, upd => q{v = v || '.'},
		add => q{ADD COLUMN added text DEFAULT 'a'},
	},
	{
		name => '63-byte names', mirror => 'long', table => qq{public."$long_table"},
		src => qq{CREATE TABLE "$long_table" (id serial PRIMARY KEY, "$long_col" text, dropme int)},
		key_default => 1,
		cols => qq{"$long_col"}, vals => q{'s' || g}, upd => qq{"$long_col" = "$long_col" || '.'},
		add => qq{ADD COLUMN "$long_add" int DEFAULT 1},
		seq_insert => qq{INSERT INTO "$long_table" ("$long_col") VALUES ('on the destination')},
	},
	{
		name => 'dots', mirror => 'names', table => '"my.schema"."tab.le"',
		src => 'CREATE SCHEMA "my.schema"; '
		  . 'CREATE TABLE "my.schema"."tab.le" (id int PRIMARY KEY, "co.l" text, dropme int)',
		cols => '"co.l"', vals => q{'d.' || g}, upd => q{"co.l" = "co.l" || '.'},
		add => q{ADD COLUMN "new.col" text DEFAULT '.'},
	},
	{
		name => 'double quotes', mirror => 'names', table => 'public."say ""hi"""',
		src => 'CREATE TABLE "say ""hi""" ("k""ey" serial PRIMARY KEY, "x""y" text, dropme int)',
		key => '"k""ey"', key_default => 1,
		cols => '"x""y"', vals => q{'"q"' || g}, upd => q{"x""y" = "x""y" || '"'},
		add => q{ADD COLUMN "a""b" text DEFAULT '"'},
		seq_insert => q{INSERT INTO "say ""hi""" ("x""y") VALUES ('on the destination')},
	},

	# --- identity columns ---
	{
		name => 'identity always', mirror => 'ident', table => 'public.ident_always',
		src => 'CREATE TABLE ident_always (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text, dropme int)',
		key_default => 1, keychange => 'DEFAULT',
		cols => 'v', vals => q{'v' || g}, upd => q{v = v || '.'},
		add => q{ADD COLUMN added text DEFAULT 'a'},
		seq_insert => q{INSERT INTO ident_always (v) VALUES ('on the destination')},
	},
	{
		name => 'identity by default', mirror => 'ident', table => 'public.ident_default',
		src => 'CREATE TABLE ident_default (id bigint GENERATED BY DEFAULT AS IDENTITY '
		  . '(START WITH 100 INCREMENT BY 3) PRIMARY KEY, v text, dropme int)',
		key_default => 1,
		cols => 'v', vals => q{'v' || g}, upd => q{v = v || '.'},
		add => q{ADD COLUMN added text DEFAULT 'a'},
		seq_insert => q{INSERT INTO ident_default (v) VALUES ('on the destination')},
	},

	# --- the heavy ones ---
	{
		name => '1000 columns', mirror => 'bulk', table => 'public.wide',
		src => "CREATE TABLE wide (id int PRIMARY KEY, "
		  . join(', ', map { "c$_ int" } 1 .. 998) . ', dropme int)',
		cols => $wide_cols, vals => $wide_vals, upd => 'c1 = c1 + 1, c500 = -c500, c998 = c998 + 3',
		add => 'ADD COLUMN added int DEFAULT 42',
	},
	{
		name => '100 MB values', mirror => 'bulk', table => 'public.big',
		src => q{CREATE TABLE big (id int PRIMARY KEY, small int, txt text, bin bytea, dropme int);
INSERT INTO big (id, small, txt) VALUES (1, 0, repeat(md5('t'), 3276800));
INSERT INTO big (id, small, bin) VALUES (2, 0, decode(repeat(md5('b'), 6553600), 'hex'));},
		nofill => 1,
		# two rows always: unchanged TOAST values in updates and a key
		# change; a new 100 MB row of either kind in the first rounds
		dml => sub {
			my ($r, $heavy) = @_;
			my $s = "UPDATE big SET small = small + 1;\n"
			  . "UPDATE big SET id = id + 2 WHERE bin IS NOT NULL;\n";
			$s .= "DELETE FROM big WHERE txt IS NOT NULL;\n"
			  . "INSERT INTO big (id, small, txt) VALUES ($r * 1000 + 1, $r, repeat(md5('t$r'), 3276800));\n"
			  if $heavy == 1;
			$s .= "DELETE FROM big WHERE bin IS NOT NULL;\n"
			  . "INSERT INTO big (id, small, bin) VALUES ($r * 1000 + 2, $r, "
			  . "decode(repeat(md5('b$r'), 6553600), 'hex'));\n"
			  if $heavy == 2;
			return $s;
		},
		add => 'ADD COLUMN added int DEFAULT 5',
	},
);

my @mirrors = qw(kinds types names long ident bulk);
my %shapes_of;
push @{ $shapes_of{ $_->{mirror} } }, $_ foreach @shapes;
my %shape_by_name = map { $_->{name} => $_ } @shapes;

sub cmp_expr { my ($s) = @_; return $s->{cmp} ? $s->{cmp}->() : $s->{table}; }

# the writes of round $r on table $s
sub dml_sql
{
	my ($s, $r, $heavy) = @_;
	return $s->{dml}->($r, $heavy) if $s->{dml};
	my $t   = $s->{table};
	my $rel = $s->{rel} // $t;
	my $k   = $s->{key} // 'id';
	my ($lo, $hi) = ($r * 1000 + 1, $r * 1000 + 5);
	my $ins =
	  $s->{key_default}
	  ? "INSERT INTO $t ($s->{cols}) SELECT $s->{vals} FROM generate_series($lo, $hi) g"
	  : "INSERT INTO $t ($k, $s->{cols}) SELECT g, $s->{vals} FROM generate_series($lo, $hi) g";
	my $kc = $s->{keychange} // "$k + 1000000";
	my $kcw = $s->{keychange_where} // '';
	return "$ins;\n"
	  . "UPDATE $rel SET $s->{upd} WHERE $k % 7 = " . ($r % 7) . ";\n"
	  . "UPDATE $rel SET $k = $kc WHERE $k = (SELECT max($k) FROM $rel$kcw);\n"
	  . "DELETE FROM $rel WHERE $k = (SELECT min($k) FROM $rel);\n"
	  . ($s->{extra_dml} // '');
}

sub fill_sql
{
	my ($s) = @_;
	return '' if $s->{nofill};
	my $k = $s->{key} // 'id';
	return $s->{key_default}
	  ? "INSERT INTO $s->{table} ($s->{cols}, dropme) SELECT $s->{vals}, g FROM generate_series(1, 30) g;\n"
	  : "INSERT INTO $s->{table} ($k, $s->{cols}, dropme) SELECT g, $s->{vals}, g FROM generate_series(1, 30) g;\n";
}

# ---------------------------------------------------------------------------
# Step machinery
# ---------------------------------------------------------------------------

my %stuck;    # mirror => the step it got stuck in
my %mark;     # mirror => log id at the start of the current step
my %mapped;   # mirror => [shapes mapped now]
my $round = 0;

sub set_marks { $mark{$_} = log_mark($dest, $_) foreach @_; }

sub diag_mirror
{
	my ($m) = @_;
	diag("mirror $m: " . mirror_state($dest, $m));
	my $e = error_lines($dest, $m, $mark{$m} // 0);
	diag("mirror $m logged since the step began:\n$e") if $e ne '';
}

# one round of writes on every table of the given mirrors (removed tables
# included: they are written too)
sub dml_round
{
	my ($label, $mirrors, $heavy) = @_;
	$round++;
	foreach my $m (@$mirrors)
	{
		my $sql = join('', map { dml_sql($_, $round, $heavy // 0) } @{ $shapes_of{$m} });
		my ($ok, $out, $err) = run_sql($source, $sql);
		ok($ok, "$label: writes on the source tables of mirror $m") or diag($err);
	}
}

# a control function on the destination; true if accepted
sub request
{
	my ($m, $sql, $label) = @_;
	my ($ok, $out, $err) = run_sql($dest, $sql);
	ok($ok, "$label: $sql") or diag("refused: $err");
	return $ok;
}

# wait for the operations of @$mirrors to be carried out
sub finish_ops
{
	my ($labels, $mirrors, %o) = @_;
	return unless @$mirrors;
	my $res = wait_ops($dest, $mirrors, marks => \%mark, %o);
	foreach my $m (@$mirrors)
	{
		if (ok($res->{$m} eq '', "$labels->{$m}: mirror $m carried it out"))
		{
			delete $stuck{$m};
			next;
		}
		diag("$labels->{$m}: mirror $m: $res->{$m}");
		diag_mirror($m);
		$stuck{$m} //= $labels->{$m};
	}
}

# wait for the destination to catch up with the source, then compare the
# tables of each mirror given (default: the mapped ones); a mirror that
# is stuck is compared once, without waiting
sub sync_compare
{
	my ($labels, $mirrors, %o) = @_;
	my $lsn = source_lsn($source);
	foreach my $m (@$mirrors)
	{
		my @sh = @{ $o{tables}{$m} // $mapped{$m} };
		my @exprs = map { cmp_expr($_) } @sh;
		my $src = fingerprints($source, \@exprs);
		my $dst;
		# applied up to the source's position: a difference is not a delay
		my $caught = $stuck{$m} ? '' : (wait_for_lsn($dest, $m, $lsn, 30000) // '');
		my $deadline = time() + ($stuck{$m} ? 0 : $caught eq 't' ? 3 : 15);
		while (1)
		{
			$dst = fingerprints($dest, \@exprs);
			last unless grep { ($src->[$_] // 's') ne ($dst->[$_] // 'd') } 0 .. $#sh;
			last if time() > $deadline;
			usleep(300_000);
		}
		my $bad = 0;
		foreach my $i (0 .. $#sh)
		{
			is($dst->[$i] // '(query failed on the destination)',
				$src->[$i] // '(query failed on the source)',
				"$labels->{$m}: $sh[$i]{name} ($sh[$i]{table}) as on the source")
			  or $bad++;
		}
		diag_mirror($m) if $bad;
	}
}

# normalized names (%I.%I) of the tables, as the source prints them, and
# their bare relation names
my (%norm, %relname);
sub normalize_names
{
	my $list = join(', ', map { sql_literal($_->{table}) . '::regclass' } @shapes);
	my $out = $source->safe_psql('postgres',
		"SELECT format('%I.%I', n.nspname, c.relname), c.relname FROM unnest(ARRAY[$list]) WITH ORDINALITY u(r, i) "
		  . 'JOIN pg_class c ON c.oid = u.r JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY u.i');
	my @n = split /\n/, $out;
	foreach my $i (0 .. $#shapes)
	{
		($norm{ $shapes[$i]{name} }, $relname{ $shapes[$i]{name} }) = split /\|/, $n[$i], 2;
	}
}

# what the pre-made destination table must look like: its own order, the
# extra column, the source's columns
my $pre_shape = 'c date, extra text not null, b integer, a text, dropme integer, id integer not null / PK(id)';

# columns, collations, generated and identity columns, keys, the
# publication, leftovers of swaps
sub shape_checks
{
	my ($label, $mirrors) = @_;
	foreach my $m (@$mirrors)
	{
		my @sh = @{ $mapped{$m} };
		my @tabs = map { $_->{table} } @sh;
		my $src = describe_tables($source, \@tabs);
		my $dst = describe_tables($dest, \@tabs);
		foreach my $i (0 .. $#sh)
		{
			my $want = $sh[$i]{table} eq 'public.precreated' ? $pre_shape : $src->[$i];
			is($dst->[$i] // '(no such table on the destination)', $want // '(query failed on the source)',
				"$label: $sh[$i]{name}: destination columns and key as "
				  . ($sh[$i]{table} eq 'public.precreated' ? 'made beforehand' : 'on the source'));
		}
		my $pub = query_value($source,
			"SELECT coalesce(string_agg(format('%I.%I', schemaname, tablename), ',' ORDER BY schemaname, tablename), '') "
			  . "FROM pg_publication_tables WHERE pubname = 'bunny_pub_$m'");
		my $want = query_value($source,
			"SELECT string_agg(format('%I.%I', n.nspname, c.relname), ',' ORDER BY n.nspname, c.relname) "
			  . 'FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid IN ('
			  . join(', ', map { sql_literal($_) . '::regclass' } @tabs) . ')');
		is($pub // '(query failed)', $want // '(query failed)',
			"$label: publication of $m holds exactly the mapped tables");
	}
	my %on = map { $_->{table} => 1 } map { @{ $mapped{$_} } } @$mirrors;
	if ($on{'public.gen_stored'})
	{
		is(query_value($dest, "SELECT attgenerated FROM pg_attribute "
				  . "WHERE attrelid = 'public.gen_stored'::regclass AND attname = 'b'") // '(error)',
			's', "$label: gen_stored.b is a stored generated column on the destination");
	}
	foreach my $t (grep { $on{$_} } qw(public.ident_always public.ident_default))
	{
		is(query_value($dest, "SELECT attidentity FROM pg_attribute "
				  . "WHERE attrelid = '$t'::regclass AND attname = 'id'") // '(error)',
			'd', "$label: $t.id is an identity column BY DEFAULT on the destination");
	}
	if ($on{'public.precreated'})
	{
		my $has = query_value($dest, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.precreated'::regclass "
			  . "AND attname = 'extra' AND NOT attisdropped") // '(error)';
		is( $has eq '1'
			? query_value($dest, "SELECT count(*) FILTER (WHERE extra IS DISTINCT FROM 'dflt') || '/' || "
				  . '(count(*) > 0) FROM public.precreated') // '(error)'
			: "column extra: $has",
			'0/true', "$label: precreated.extra is there and holds its default in every row");
	}
	# leftovers of the swaps of these mirrors (those of a stuck mirror's
	# failed swap are its own failure)
	my @others = map { substr($relname{ $_->{name} }, 0, 12) }
	  grep { my $sh = $_; $stuck{ $sh->{mirror} } && !grep { $_ eq $sh->{mirror} } @$mirrors } @shapes;
	my @left = grep {
		my $r = $_;
		!grep { index($r, $_) == 0 } @others
	  } split /\n/,
	  query_value($dest, "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
		  . "WHERE c.relname LIKE '%\\_resync%' AND n.nspname <> 'bunny' ORDER BY 1") // '(error)';
	is(join(', ', @left), '', "$label: no *_resync relation left on the destination");
}

sub per_mirror_labels { my ($label) = @_; return { map { $_ => $label } @mirrors }; }

# the mirrors of @_ that are not stuck; for the others one skip saying
# since when: the operation cannot even be asked for (55006 while the
# failed one is pending)
sub live
{
	my ($label, @ms) = @_;
	my @l;
	foreach my $m (@ms)
	{
		if ($stuck{$m})
		{
		  SKIP: { skip("$label: mirror $m is stuck since: $stuck{$m}", 1); }
		}
		else
		{
			push @l, $m;
		}
	}
	return @l;
}

# wait for a status on several mirrors; returns the ones that did not get there
sub wait_status
{
	my ($status, $mirrors, $timeout) = @_;
	my %left = map { $_ => 1 } @$mirrors;
	poll_until(
		sub {
			foreach my $m (keys %left)
			{
				delete $left{$m} if (mirror_field($dest, $m, 'status') // '') eq $status;
			}
			return !%left;
		},
		$timeout, 0.2);
	return sort keys %left;
}

# ---------------------------------------------------------------------------
# Source tables, the pre-made destination table
# ---------------------------------------------------------------------------
is(length($long_table), 63, 'the long table name is 63 bytes');
{
	my $sql = join('', map { "$_->{src};\n" . fill_sql($_) } @shapes) . "ANALYZE;\n";
	my ($ok, $out, $err) = run_sql($source, $sql);
	ok($ok, 'source tables created and filled') or BAIL_OUT("source setup failed: $err");
	normalize_names();
	foreach my $s (grep { $_->{dst} } @shapes)
	{
		($ok, $out, $err) = run_sql($dest, $s->{dst});
		ok($ok, "$s->{name}: destination table made beforehand") or diag($err);
	}
	is(query_value($source, 'SELECT octet_length(txt) FROM big WHERE id = 1') // '', '104857600',
		'source row with a 100 MB text value');
	is(query_value($source, 'SELECT octet_length(bin) FROM big WHERE id = 2') // '', '104857600',
		'source row with a 100 MB bytea value');
	is(query_value($source, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'wide'::regclass "
			  . 'AND attnum > 0 AND NOT attisdropped') // '', '1000', 'the wide table has 1000 columns');
}
note(sprintf('source ready after %.1fs', time() - $t0));

# ---------------------------------------------------------------------------
# 1. Initial copy while the source is written
# ---------------------------------------------------------------------------
{
	my $label = 'initial copy';
	foreach my $m (@mirrors)
	{
		$mapped{$m} = [ @{ $shapes_of{$m} } ];
		set_marks($m);
		ok(create_mirror($dest, $m, [ map { $_->{table} } @{ $shapes_of{$m} } ],
				wait => 0, do_initial_snapshot => 'true',
				snapshot_num_rows_per_partition => 10, snapshot_max_parallel_workers => 2),
			"$label: mirror $m created");
	}
	dml_round($label, \@mirrors, 1);
	poll_until(sub { (query_value($dest, "SELECT bool_and(status IN ('SNAPSHOT', 'RUNNING')) FROM bunny.mirrors") // '') eq 't' },
		30, 0.1);
	dml_round($label, \@mirrors, 0);
	finish_ops(per_mirror_labels($label), \@mirrors, timeout => 180);
	dml_round($label, \@mirrors, 2);
	sync_compare(per_mirror_labels($label), \@mirrors);
	shape_checks($label, \@mirrors);
	note(sprintf('%s done after %.1fs', $label, time() - $t0));
}

# ---------------------------------------------------------------------------
# 2, 3. resync_table of each table, truncate then swap; the mirrors work
# side by side, each on its own next table
# ---------------------------------------------------------------------------
foreach my $strategy (qw(truncate swap))
{
	my $n = max(map { scalar @{ $shapes_of{$_} } } @mirrors);
	foreach my $i (0 .. $n - 1)
	{
		my (%labels, @requested, @active);
		foreach my $m (@mirrors)
		{
			my $s = $shapes_of{$m}[$i] or next;
			next unless live("resync_table $strategy of $s->{name}", $m);
			push @active, $m;
			$labels{$m} = "resync_table $strategy of $s->{name}";
			set_marks($m);
			push @requested, $m
			  if request($m, 'SELECT bunny.resync_table(' . sql_literal($m) . ', '
				  . sql_literal($s->{table}) . ", '$strategy')", $labels{$m});
		}
		next unless @active;
		dml_round("resync_table $strategy, table $i", \@active, 0);
		finish_ops(\%labels, \@requested, timeout => 90);
		sync_compare(\%labels, \@active);
	}
	shape_checks("after resync_table $strategy", [ live("after resync_table $strategy", @mirrors) ]);
	note(sprintf('resync_table %s done after %.1fs', $strategy, time() - $t0));
}

# ---------------------------------------------------------------------------
# 4, 5. resync_mirror, truncate then swap
# ---------------------------------------------------------------------------
foreach my $strategy (qw(truncate swap))
{
	my $label = "resync_mirror $strategy";
	my @requested;
	my @live = live($label, @mirrors);
	foreach my $m (@live)
	{
		set_marks($m);
		push @requested, $m
		  if request($m, 'SELECT bunny.resync_mirror(' . sql_literal($m) . ", '$strategy')", $label);
	}
	dml_round($label, \@mirrors, 0);
	finish_ops(per_mirror_labels($label), \@requested, timeout => 120);
	sync_compare(per_mirror_labels($label), \@live);
	shape_checks($label, \@live);
	note(sprintf('%s done after %.1fs', $label, time() - $t0));
}

# ---------------------------------------------------------------------------
# 6. update_tables: remove every other table, write, add them back (their
# destination tables dropped, the pre-made one emptied); then the others
# ---------------------------------------------------------------------------
sub mappings_json
{
	my ($m) = @_;
	return sql_literal(tables_json(map { $_->{table} } @{ $mapped{$m} })) . '::jsonb';
}

sub pause_all
{
	my ($label, $mirrors) = @_;
	my @paused;
	foreach my $m (@$mirrors)
	{
		push @paused, $m if request($m, 'SELECT bunny.pause_mirror(' . sql_literal($m) . ')', $label);
	}
	my @late = wait_status('PAUSED', \@paused, 30);
	foreach my $m (@paused)
	{
		ok(!grep({ $_ eq $m } @late), "$label: mirror $m PAUSED") or diag_mirror($m);
	}
	return grep { my $m = $_; !grep { $_ eq $m } @late } @paused;
}

foreach my $cycle (0, 1)
{
	my $label = "update_tables (cycle $cycle)";
	my (%removed, @updated);
	my @live = live($label, @mirrors);
	set_marks(@live);
	my @paused = pause_all("$label: pause before removing", \@live);
	foreach my $m (@paused)
	{
		my @all = @{ $shapes_of{$m} };
		$removed{$m} = [ @all[ grep { $_ % 2 == $cycle } 0 .. $#all ] ];
		$mapped{$m} = [ @all[ grep { $_ % 2 != $cycle } 0 .. $#all ] ];
		push @updated, $m
		  if request($m, 'SELECT bunny.update_tables(' . sql_literal($m) . ', ' . mappings_json($m) . ')',
			"$label: remove " . join(', ', map { $_->{name} } @{ $removed{$m} }));
	}
	request($_, 'SELECT bunny.resume_mirror(' . sql_literal($_) . ')', "$label: resume") foreach @paused;
	finish_ops(per_mirror_labels("$label, tables removed"), \@paused, timeout => 60);

	# the removed tables are written on the source; their destination stays
	my %before;
	foreach my $m (keys %removed)
	{
		$before{$m} = fingerprints($dest, [ map { cmp_expr($_) } @{ $removed{$m} } ]);
	}
	dml_round("$label, tables removed", \@mirrors, 0);
	sync_compare(per_mirror_labels("$label, tables removed"), \@live);
	foreach my $m (sort keys %removed)
	{
		my $after = fingerprints($dest, [ map { cmp_expr($_) } @{ $removed{$m} } ]);
		foreach my $i (0 .. $#{ $removed{$m} })
		{
			is($after->[$i] // '(error)', $before{$m}[$i] // '(error)',
				"$label: removed $removed{$m}[$i]{name}: destination table left as it was");
		}
	}
	shape_checks("$label, tables removed", \@live);

	# back: the destination tables must be empty (README "Operations")
	set_marks(@live);
	@paused = pause_all("$label: pause before adding back", \@live);
	my @added;
	foreach my $m (@paused)
	{
		next unless $removed{$m};
		my $sql = join('', map {
				$_->{dst} ? "TRUNCATE $_->{table};\n" : "DROP TABLE $_->{table};\n"
		} @{ $removed{$m} });
		my ($ok, $out, $err) = run_sql($dest, $sql);
		ok($ok, "$label: removed destination tables of $m dropped (pre-made one emptied)") or diag($err);
		$mapped{$m} = [ @{ $shapes_of{$m} } ];
		push @added, $m
		  if request($m, 'SELECT bunny.update_tables(' . sql_literal($m) . ', ' . mappings_json($m) . ')',
			"$label: add back " . join(', ', map { $_->{name} } @{ $removed{$m} }));
	}
	request($_, 'SELECT bunny.resume_mirror(' . sql_literal($_) . ')', "$label: resume") foreach @paused;
	dml_round("$label, tables added back", \@mirrors, 0);
	finish_ops(per_mirror_labels("$label, tables added back"), \@paused, timeout => 120);
	$mapped{$_} = [ @{ $shapes_of{$_} } ] foreach @mirrors;
	sync_compare(per_mirror_labels("$label, tables added back"), \@live);
	shape_checks("$label, tables added back", \@live);
	note(sprintf('%s done after %.1fs', $label, time() - $t0));
}

# ---------------------------------------------------------------------------
# 7. ADD COLUMN and DROP COLUMN on the source, then sync_schema
# ---------------------------------------------------------------------------
{
	my $label = 'sync_schema';
	set_marks(@mirrors);
	my $sql = join('', map {
			"ALTER TABLE $_->{table} $_->{add}" . ($_->{nodrop} ? '' : ', DROP COLUMN dropme') . ";\n"
	} @shapes);
	my ($ok, $out, $err) = run_sql($source, $sql);
	ok($ok, "$label: columns added and dropped on the source") or diag($err);
	$pre_cols  = 'id, a, b, c, added';
	$pre_shape = 'c date, extra text not null, b integer, a text, id integer not null, added date / PK(id)';
	my @live = live($label, @mirrors);
	foreach my $m (@live)
	{
		request($m, 'SELECT bunny.sync_schema(' . sql_literal($m) . ')', $label);
	}
	dml_round($label, \@mirrors, 0);
	sync_compare(per_mirror_labels($label), \@live);
	shape_checks($label, \@live);
	note(sprintf('%s done after %.1fs', $label, time() - $t0));
}

# ---------------------------------------------------------------------------
# 8. sync_sequences after inserts through the defaults; then the
# destination's defaults must not hand out a value the source did
# ---------------------------------------------------------------------------
{
	my $label = 'sync_sequences';
	my @live = live($label, @mirrors);
	set_marks(@live);
	dml_round($label, \@mirrors, 0);
	sync_compare(per_mirror_labels($label), \@live);
	foreach my $m (@live)
	{
		my ($ok, $out, $err) = run_sql($dest,
			"SELECT destination_table, column_name, coalesce(sequence_name, '-'), "
			  . "coalesce(source_value::text, '-'), coalesce(destination_value::text, '-'), updated "
			  . 'FROM bunny.sync_sequences(' . sql_literal($m) . ') ORDER BY 1, 2');
		ok($ok, "$label: bunny.sync_sequences('$m')") or diag($err);
		note("sync_sequences('$m'):\n$out");
		foreach my $s (grep { $_->{seq_insert} } @{ $shapes_of{$m} })
		{
			my $n = $norm{ $s->{name} };
			my ($row) = grep { index($_, "$n|") == 0 } split /\n/, $out;
			my ($dt, $col, $seq, $sv, $dv) = split /\|/, ($row // ''), 6;
			ok(defined $row && $seq ne '-' && $sv ne '-' && $sv eq $dv,
				"$label: $s->{name}: destination sequence taken over from the source")
			  or diag('row: ' . ($row // '(none)'));
			my ($iok, $iout, $ierr) = run_sql($dest, "BEGIN;\n$s->{seq_insert};\nROLLBACK;\n");
			ok($iok, "$label: $s->{name}: INSERT with the defaults on the destination does not collide")
			  or diag($ierr);
		}
	}
	note(sprintf('%s done after %.1fs', $label, time() - $t0));
}

# ---------------------------------------------------------------------------
# The end: everything still equal, every mirror healthy
# ---------------------------------------------------------------------------
{
	my $label = 'end';
	set_marks(@mirrors);
	sync_compare(per_mirror_labels($label), \@mirrors);
	shape_checks($label, \@mirrors);
	foreach my $m (@mirrors)
	{
		is(query_value($dest, "SELECT status || ' ' || error_count FROM bunny.mirrors WHERE name = '$m'") // '(error)',
			'RUNNING 0', "$label: mirror $m RUNNING with error_count 0")
		  or diag_mirror($m);
	}
}

note(sprintf('020_table_shapes ran %.1fs', time() - $t0));
$source->stop;
$dest->stop;
done_testing();
