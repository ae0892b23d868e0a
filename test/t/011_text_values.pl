# Copyright (c) bunnydb authors
#
# 011_text_values: text, varchar and bpchar values arrive exactly as the
# server itself would store them, whichever path brings them in binary
# transfer (src/fastrecv.c replaces the receive function of these types
# for plain-ASCII values and falls back to the server's own otherwise):
#
#  paths   (1) the initial snapshot (binary COPY), (2) single changes
#          (INSERTs of one row per transaction, single-row UPDATEs, a
#          multi-row UPDATE, DELETEs matched on all columns of a REPLICA
#          IDENTITY FULL table), (3) a COPY run: one source transaction
#          inserting hundreds of rows into each table (a statement trigger
#          on the destination proves that COPY took them: one statement
#          received more than the 100 rows of a multi-row INSERT)
#  columns text, varchar, varchar(5), char(1), char(10), bpchar (no typmod);
#          destination tables created by the user beforehand with a WIDER
#          typmod (char(10) -> char(12), varchar(10) -> varchar(20),
#          char(10) -> bpchar, varchar(5) -> varchar) and a NARROWER one
#          (varchar(10) -> varchar(3), char(10) -> char(3)) with values whose
#          truncation is legal (only spaces cut off); the destination's
#          columns in another order than the source's, with dropped columns
#          on both sides; a domain over varchar(8) (its own mirror: a
#          user-defined type makes a mirror stream in text mode, so this one
#          is a control)
#  values  '', short values bpchar must pad, exactly-full values, trailing
#          and leading spaces, only spaces, non-ASCII UTF-8 (é, héllo,
#          日本 padded in char(10), 日本語, emoji, a 10-character multibyte
#          value in char(10), 'éé' whose 12 bytes in char(10) equal the
#          12 characters of char(12) but must still be padded),
#          tab / newline / CR / backslash / \N / quotes,
#          DEL and control characters, NULL, TOASTed values (incompressible
#          ASCII, compressible, multibyte, padded with spaces, ASCII ending
#          with one non-ASCII character, 100 kB)
#  errors  a destination narrower than the source for a value that does not
#          fit: varchar(10) -> varchar(3) in the snapshot, in a single
#          INSERT and in a COPY run, char(10) -> char(3) in a single UPDATE:
#          the mirror records the server's own SQLSTATE (22001) and message
#          (compared with a plain INSERT on the destination; for the
#          snapshot the mirror records that the part failed with the cause,
#          and the snapshot worker's ERROR line in bunny.logs() has the
#          SQLSTATE and the COPY context), applies nothing of that
#          transaction nor of the ones after it, and goes on once the
#          destination column is widened.
#
# In the single-change path the INSERT/UPDATE statements coerce their
# parameters to the column's typmod themselves, so only the snapshot, the
# COPY runs and the matching of REPLICA IDENTITY FULL rows would show a
# wrong padding or truncation by the receive function; the test covers
# all of them.  Runs in about 10 seconds.
#
# The expected content of a destination table is what plain INSERTs of
# the source's values (their exact text, padding included) store into a
# table of the destination's column types (exp_<table> on the destination).
# Rows are compared column by column on octet_length (counts the padding
# of bpchar) and the quoted output text (format('%L') also keeps it).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;

use Time::HiRes qw(time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $t_start = time();

my ($source, $dest) = setup_pair(
	dest_conf => "bunny.retry_backoff_min = '200ms'\n"
	  . "bunny.retry_backoff_max = '2s'\n"
	  . "bunny.max_batch_latency = 0\n"
	  . "log_line_prefix = '%m [%p] %e %q%a '\n");


# ---------------------------------------------------------------------------
# The values, and the tables: [column, longest value (after cutting trailing
# spaces) that both sides accept, undef = any]
# ---------------------------------------------------------------------------

src(<<'EOS');
CREATE TABLE vals (k int PRIMARY KEY, v text, big bool NOT NULL DEFAULT false);
INSERT INTO vals (k, v) VALUES
  (1, ''), (2, 'a'), (3, ' '), (4, '   '), (5, 'ab'), (6, 'abc'), (7, 'abcde'),
  (8, 'abcdefghij'), (9, 'ab   '), (10, 'abc       '), (11, 'ab        '),
  (12, ' lead'), (13, 'a b'), (14, 'héllo'), (15, 'é'), (16, '日本'),
  (17, '日本語'), (18, '日本語  '), (19, '😀'), (20, 'a😀b'),
  (21, E'tab\there'), (22, E'new\nline'), (23, E'back\\slash'), (24, E'cr\r'),
  (25, E'a\tb'), (26, E'\\N'), (27, E'x\t'), (28, 'a' || chr(127)),
  (29, chr(1) || 'b'), (30, 'ÿ'), (31, 'abcdefghijk'), (32, repeat('z', 40)),
  (33, 'abcdefghij   '), (34, '日本語日本語日本語日'), (35, 'ab' || repeat(' ', 20)),
  (36, 'abcde '), (37, NULL), (38, 'héllo wörld'), (39, E'\\'),
  (40, '"quoted"'), (41, ''''), (42, 'abcdefgh'), (43, 'abcdefghi'),
  (44, 'abcdefghijkl'), (45, 'x'), (46, 'éé'), (47, 'é ');
INSERT INTO vals (k, v, big) VALUES
  (51, (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i), true),
  (52, repeat('0123456789', 1200), true),
  (53, repeat('日本語ü', 1500), true),
  (54, rpad('big', 9000), true),
  (55, repeat('a', 9000) || 'é', true),
  (56, repeat('x', 100000), true);

CREATE TABLE tx (id int PRIMARY KEY, t text, vu varchar, v5 varchar(5), c1 char(1),
                 c10 char(10), bp bpchar);
CREATE TABLE wide (id int PRIMARY KEY, gone text, c char(10), v varchar(10), cb char(10),
                   vu varchar(5));
ALTER TABLE wide DROP COLUMN gone;
CREATE TABLE narrow (id int PRIMARY KEY, v varchar(10), c char(10));
CREATE TABLE rif (id int NOT NULL, c char(10), v varchar(10));
ALTER TABLE rif REPLICA IDENTITY FULL;
ALTER TABLE tx ALTER COLUMN t SET STORAGE EXTERNAL;

CREATE DOMAIN vc8 AS varchar(8);
CREATE TABLE dm (id int PRIMARY KEY, d vc8, v varchar(8));

-- errors: destinations narrower than the source
CREATE TABLE ns (id int PRIMARY KEY, v varchar(10), c char(10));
CREATE TABLE nv (id int PRIMARY KEY, v varchar(10));
CREATE TABLE nc (id int PRIMARY KEY, c char(10));
CREATE TABLE ncp (id int PRIMARY KEY, v varchar(10));
CREATE TABLE nlater (id int PRIMARY KEY);
EOS

my %spec = (
	tx     => [ [ t => undef ], [ vu => undef ], [ v5 => 5 ], [ c1 => 1 ], [ c10 => 10 ], [ bp => undef ] ],
	wide   => [ [ c => 10 ], [ v => 10 ], [ cb => 10 ], [ vu => 5 ] ],
	narrow => [ [ v => 3 ], [ c => 3 ] ],
	rif    => [ [ c => 10 ], [ v => 3 ] ],
	dm     => [ [ d => 8 ], [ v => 8 ] ],
	ns     => [ [ v => 10 ], [ c => 10 ] ],
	nv     => [ [ v => 10 ] ],
	nc     => [ [ c => 10 ] ],
	ncp    => [ [ v => 10 ] ],);
my @main = qw(tx wide narrow rif);

# Destination tables created by the user, with other typmods than the source
dst(<<'EOS');
CREATE TABLE wide (id int PRIMARY KEY, x1 int, vu varchar, x2 text, c char(12),
                   v varchar(20), cb bpchar);
ALTER TABLE wide DROP COLUMN x1, DROP COLUMN x2;
CREATE TABLE narrow (id int PRIMARY KEY, v varchar(3), c char(3));
CREATE TABLE rif (id int NOT NULL, c char(12), v varchar(3));
CREATE TABLE ns (id int PRIMARY KEY, v varchar(3), c char(10));
CREATE TABLE nv (id int PRIMARY KEY, v varchar(3));
CREATE TABLE nc (id int PRIMARY KEY, c char(3));
CREATE TABLE ncp (id int PRIMARY KEY, v varchar(3));
-- SQLSTATE and message of a statement, as the server gives them
CREATE FUNCTION try_sql(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE q;
  RETURN 'ok';
EXCEPTION WHEN others THEN
  RETURN SQLSTATE || '|' || SQLERRM;
END $$;
EOS

sub cols { return map { $_->[0] } @{ $spec{ $_[0] } }; }

sub fits
{
	my ($limit, $x) = @_;
	return 'true' unless defined $limit;
	return "($x IS NULL OR char_length(rtrim($x, ' ')) <= $limit)";
}

# INSERT of the values (one row per value and repetition; a column gets
# NULL where the value does not fit), ids $base + 100 * repetition + k.
# TOASTed values only every tenth repetition.
sub fill_sql
{
	my ($tbl, $base, $reps, $kcond) = @_;
	$kcond //= 'true';
	my @sel = map {
		my ($c, $l) = @$_;
		defined $l ? 'CASE WHEN ' . fits($l, 's.v') . ' THEN s.v END' : 's.v'
	} @{ $spec{$tbl} };
	my $any = join(' OR ', map { fits($_->[1], 's.v') } @{ $spec{$tbl} });
	return "INSERT INTO $tbl (id, " . join(', ', cols($tbl)) . ") "
	  . "SELECT $base + 100 * g + s.k, " . join(', ', @sel)
	  . " FROM vals s, generate_series(0, $reps - 1) g"
	  . " WHERE ($any) AND ($kcond) AND (NOT s.big OR g % 10 = 0) ORDER BY g, s.k";
}

# UPDATE of the rows matching $where to the value k = $kexpr
sub update_sql
{
	my ($tbl, $kexpr, $where) = @_;
	my @sel = map {
		my ($c, $l) = @$_;
		defined $l ? 'CASE WHEN ' . fits($l, 's.v') . ' THEN s.v END' : 's.v'
	} @{ $spec{$tbl} };
	return "UPDATE $tbl t SET (" . join(', ', cols($tbl)) . ") = "
	  . "(SELECT " . join(', ', @sel) . " FROM vals s WHERE s.k = $kexpr) WHERE $where";
}

# Fingerprint of a row, sensitive to the padding of bpchar: per column the
# octet length and the quoted value (its md5 for long ones)
sub row_fp
{
	my ($tbl) = @_;
	my @f = map {
		"coalesce(octet_length($_)::text || ':' || CASE WHEN octet_length($_) <= 40 "
		  . "THEN format('%L', $_) ELSE md5(format('%s', $_)) END, 'NULL')"
	} cols($tbl);
	return "concat_ws(' | ', " . join(', ', @f) . ")";
}

# count/md5 over all rows, comparable between the two servers
sub table_fp
{
	my ($node, $tbl) = @_;
	return query_value($node,
		    "SELECT count(*) || '/' || md5(coalesce(string_agg(id || '=' || "
		  . row_fp($tbl)
		  . ", E'\\n' ORDER BY id), '')) FROM $tbl");
}

# exp_<tbl> on the destination := plain INSERTs of the source's values
sub refresh_expected
{
	my ($tbl) = @_;
	my @c = cols($tbl);
	my $fmt = '(%s' . (', %L' x @c) . ')';
	my $rows = src("SELECT coalesce(string_agg(format('$fmt', id, "
		  . join(', ', @c)
		  . "), E',\\n' ORDER BY id), '') FROM $tbl");
	dst("DROP TABLE IF EXISTS exp_$tbl; CREATE TABLE exp_$tbl (LIKE $tbl);"
		  . ($rows ne '' ? " INSERT INTO exp_$tbl (id, " . join(', ', @c) . ") VALUES $rows;" : ''));
	return;
}

# Rows of the destination table that differ from exp_<tbl> ('' = none)
sub diff_expected
{
	my ($tbl) = @_;
	my $fp = row_fp($tbl);
	return query_value($dest, qq{
WITH a AS (SELECT id, $fp AS f FROM $tbl),
     b AS (SELECT id, $fp AS f FROM exp_$tbl),
     d AS (SELECT coalesce(a.id, b.id) AS id,
                  format('id %s: got %s; expected %s', coalesce(a.id, b.id),
                         coalesce(a.f, '(no row)'), coalesce(b.f, '(no row)')) AS line
             FROM a FULL JOIN b ON a.id = b.id
            WHERE a.f IS DISTINCT FROM b.f)
SELECT coalesce((SELECT count(*) FROM d) || ' rows differ:' || E'\\n'
                || (SELECT string_agg(line, E'\\n' ORDER BY id) FROM (SELECT * FROM d ORDER BY id LIMIT 12) x), '')
}) // '(query failed)';
}

# The destination against plain INSERTs of the source's values (and, for
# tables of the same types on both sides, against the source itself)
sub check_tables
{
	my ($label, @tables) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	foreach my $tbl (@tables)
	{
		refresh_expected($tbl);
		my $rows = dst("SELECT count(*) FROM exp_$tbl");
		is(diff_expected($tbl), '', "$label: $tbl ($rows rows) as plain INSERTs on the destination store them");
		if ($tbl eq 'tx' || $tbl eq 'dm')
		{
			is(table_fp($dest, $tbl), table_fp($source, $tbl), "$label: $tbl identical to the source");
		}
	}
	return;
}

sub caught_up
{
	my ($m, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	is(wait_for_lsn($dest, $m, source_lsn($source), 60000), 't', "$label: $m caught up");
	return;
}


# the fingerprint tells padding apart
is( dst("SELECT octet_length('ab'::char(10)) || ' ' || octet_length('ab'::char(12)) || ' ' "
		  . "|| format('%L', 'ab'::char(4)) || ' ' || octet_length('ab   '::varchar(3))"),
	"10 12 'ab  ' 3",
	'octet_length and format(%L) keep the padding of bpchar');

# ---------------------------------------------------------------------------
# (1) Initial snapshot
# ---------------------------------------------------------------------------

foreach my $tbl (@main, 'dm')
{
	src(fill_sql($tbl, 0, 1));
}
src("INSERT INTO ns VALUES (1, 'ab   ', 'x'), (2, 'abc', 'y'), (3, 'abcde', 'z'), (4, '日本語  ', NULL)");

ok(create_mirror($dest, 'tv', [ map { "public.$_" } @main ], do_initial_snapshot => 'true'),
	'mirror tv RUNNING after its snapshot');
ok(create_mirror($dest, 'dom', ['public.dm'], do_initial_snapshot => 'true'),
	'mirror dom RUNNING after its snapshot');
ok(create_mirror($dest, 'ncdc', [ map { "public.$_" } qw(nv nc ncp nlater) ]),
	'mirror ncdc RUNNING');
ok(create_mirror($dest, 'nsnap', ['public.ns'], do_initial_snapshot => 'true', wait => 0),
	'mirror nsnap created');

is(transfer_mode($dest, 'tv'),   'binary', 'tv streams in binary mode');
is(transfer_mode($dest, 'ncdc'), 'binary', 'ncdc streams in binary mode');
is(transfer_mode($dest, 'dom'),  'text',   'dom streams in text mode (domain column)');
foreach my $tbl (@main)
{
	like(query_value($dest, "SELECT message FROM bunny.logs('tv', search => 'copying table public.$tbl ', \"limit\" => 1)") // '',
		qr/binary format/, "snapshot of $tbl in binary format");
}
is(table_shape($dest, 'public.tx'), table_shape($source, 'public.tx'),
	'tx created on the destination with the source types (bpchar without typmod included)');

check_tables('snapshot', @main, 'dm');
is( dst("SELECT octet_length(c) || '/' || octet_length(cb) FROM wide WHERE id = 5"),
	'12/10', "snapshot: 'ab' from char(10) is padded to 12 in char(12), kept at 10 in bpchar");
is( dst("SELECT format('%L|%L', v, c) FROM narrow WHERE id = 9"),
	q('ab '|'ab '), "snapshot: 'ab   ' cut to 'ab ' in varchar(3), 'ab' + 8 spaces to 'ab ' in char(3)");
is( dst("SELECT octet_length(c10) FROM tx WHERE id = 16"),
	'14', "snapshot: '日本' in char(10): 6 bytes + 8 spaces");

# Destination-only statement triggers: the row count of every INSERT
# statement (or COPY) the worker runs on these tables
dst(<<'EOS');
CREATE TABLE stmt_log (tbl text, n bigint);
CREATE FUNCTION log_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.stmt_log SELECT TG_TABLE_NAME, count(*) FROM newrows;
  RETURN NULL;
END $$;
EOS
foreach my $tbl (@main)
{
	dst("CREATE TRIGGER log_stmt AFTER INSERT ON $tbl REFERENCING NEW TABLE AS newrows "
		  . "FOR EACH STATEMENT EXECUTE FUNCTION log_stmt(); "
		  . "ALTER TABLE $tbl ENABLE ALWAYS TRIGGER log_stmt;");
}

# ---------------------------------------------------------------------------
# (2) Single changes
# ---------------------------------------------------------------------------

my @ks = split /\n/, src('SELECT k FROM vals ORDER BY k');
{
	my @stmts;
	foreach my $tbl (@main, 'dm')
	{
		push @stmts, fill_sql($tbl, 1000, 1, "s.k = $_") foreach @ks;
	}
	src(join(";\n", @stmts) . ";\n");
}
caught_up('tv', 'single INSERTs');
caught_up('dom', 'single INSERTs');
check_tables('single INSERTs', @main, 'dm');
cmp_ok(dst("SELECT coalesce(max(n), 0) FROM stmt_log"), '<=', 100,
	'single INSERTs: no COPY (at most 100 rows per statement)');

{
	# every row of 1000.. gets the next value, one UPDATE per transaction;
	# the snapshot's rows the value before, all in one statement
	my @stmts;
	my %next;
	@next{@ks} = (@ks[ 1 .. $#ks ], $ks[0]);
	foreach my $tbl (@main, 'dm')
	{
		push @stmts, update_sql($tbl, $next{$_}, "t.id = 1000 + $_") foreach @ks;
		push @stmts,
		  update_sql($tbl,
			"coalesce((SELECT max(k) FROM vals WHERE k < t.id), (SELECT max(k) FROM vals))",
			't.id < 1000');
		push @stmts, "DELETE FROM $tbl WHERE id IN (1002, 1009, 1016, 1034, 1053, 6, 10)";
	}
	src(join(";\n", @stmts) . ";\n");
}
caught_up('tv', 'single UPDATEs');
caught_up('dom', 'single UPDATEs');
check_tables('single UPDATEs/DELETEs', @main, 'dm');

# ---------------------------------------------------------------------------
# (3) COPY runs: one transaction, hundreds of rows per table
# ---------------------------------------------------------------------------

src("BEGIN;\n" . join(";\n", map { fill_sql($_, 10000, 30) } @main) . ";\nCOMMIT;\n");
src(fill_sql('dm', 10000, 30));
caught_up('tv', 'COPY run');
caught_up('dom', 'COPY run');
foreach my $tbl (@main)
{
	my $n = src("SELECT count(*) FROM $tbl WHERE id >= 10000");
	cmp_ok($n, '>', 300, "COPY run: $n rows into $tbl in one source transaction");
	cmp_ok(dst("SELECT coalesce(max(n), 0) FROM stmt_log WHERE tbl = '$tbl'"), '>', 100,
		"COPY run: one statement took more than 100 rows of $tbl (COPY)");
}
check_tables('COPY run', @main, 'dm');
is( dst("SELECT count(*) FILTER (WHERE octet_length(c) = 12) || '/' || count(c) FROM wide "
		  . "WHERE id >= 10000 AND c !~ '[^ -~]'"),
	dst("SELECT count(c) || '/' || count(c) FROM wide WHERE id >= 10000 AND c !~ '[^ -~]'"),
	'COPY run: every printable-ASCII value of char(12) is 12 bytes long');
is( dst("SELECT count(*) || ' rows, ' || string_agg(DISTINCT octet_length(c)::text, ',') FROM wide WHERE c = 'éé'"),
	src("SELECT count(*) FROM wide WHERE c = 'éé'") . ' rows, 14', "all paths: 'éé' (12 bytes with its padding in char(10)) is 14 bytes in char(12)");

# ---------------------------------------------------------------------------
# Errors: a value too long for the destination column
# ---------------------------------------------------------------------------

my $err_v3 = dst("SELECT try_sql(\$\$INSERT INTO exp_narrow (id, v) VALUES (-1, 'abcde')\$\$)");
my $err_c3 = dst("SELECT try_sql(\$\$INSERT INTO exp_narrow (id, c) VALUES (-1, 'abcd')\$\$)");
like($err_v3, qr/^22001\|value too long for type character varying\(3\)$/,
	'plain INSERT: 22001 for varchar(3)');
like($err_c3, qr/^22001\|value too long for type character\(3\)$/,
	'plain INSERT: 22001 for char(3)');

# The mirror's last error: "sqlstate|message|context"
sub last_error
{
	my ($m) = @_;
	return query_value($dest,
		    "SELECT details->>'sqlstate' || '|' || message || '|' || coalesce(details->>'context', '') "
		  . "FROM bunny.logs('$m', 'ERROR', NULL, 1)") // '';
}

sub expect_error
{
	my ($m, $plain, $label, $ctx) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	ok(poll_until(sub { (mirror_field($dest, $m, 'error_count') // 0) > 0 }, 60),
		"$label: error recorded");
	my $e = last_error($m);
	my ($state, $msg, $context) = split /\|/, $e, 3;
	is("$state|$msg", $plain, "$label: the server's SQLSTATE and message");
	is(mirror_field($dest, $m, 'error_message'), (split /\|/, $plain)[1], "$label: error_message");
	like($context // '', $ctx, "$label: error context") if $ctx;
	ok(poll_until(sub { (mirror_field($dest, $m, 'error_count') // 0) >= 2 }, 30),
		"$label: the mirror retries");
	return;
}

# E1: the snapshot (binary COPY) of varchar(10) -> varchar(3) with 'abcde'.
# A snapshot worker's error ends that worker after it wrote the cause into
# bunny.logs(); the mirror records that the part failed (55000), with the
# last cause.
ok(poll_until(sub { (mirror_field($dest, 'nsnap', 'error_count') // 0) > 0 }, 60),
	'E1 snapshot: error recorded');
{
	my ($state, $msg) = split /\|/, $err_v3, 2;
	like(mirror_field($dest, 'nsnap', 'error_message') // '',
		qr/^initial copy failed: part 1 of public\.ns failed \d+ times, last: \Q$msg\E$/,
		'E1 snapshot: error_message names the failed part and its cause');
	like(slurp_file($dest->logfile),
		qr/\[\d+\] \Q$state\E ERROR:  \Q$msg\E\n[^\n]*CONTEXT:  COPY ns, line 3, column v\n\s*bunnydb mirror "nsnap", table public\.ns/,
		"E1 snapshot: the snapshot worker failed with the server's SQLSTATE and message on row 3");
	my $lines = query_value($dest, "SELECT string_agg(details->>'sqlstate' || '|' || message || '|' || "
		  . "coalesce(details->>'context', ''), E'\\n') FROM bunny.logs('nsnap', 'ERROR')") // '';
	like($lines, qr/^\Q$state\E\|copying part 1 of public\.ns failed: \Q$msg\E\|COPY ns, line 3, column v/m,
		'E1 snapshot: the cause is among the ERROR lines of bunny.logs(), with SQLSTATE and COPY context');
}

is(dst('SELECT count(*) FROM ns'), '0', 'E1: nothing of the copy applied');
isnt(mirror_field($dest, 'nsnap', 'status'), 'RUNNING', 'E1: the mirror is not RUNNING');
dst('ALTER TABLE ns ALTER COLUMN v TYPE varchar(10)');
dst("SELECT bunny.retry_mirror('nsnap')");
ok(wait_for_status($dest, 'nsnap', 'RUNNING', 60), 'E1: RUNNING after widening the column');
check_tables('E1 after recovery', 'ns');

# E2: single INSERTs, varchar(10) -> varchar(3), 'abcde' third of four rows
src("INSERT INTO nv VALUES (1, 'ab'), (2, 'ab   '), (3, 'abcde'), (4, 'xyz')");
src('INSERT INTO nlater VALUES (1)');
my $lsn = source_lsn($source);
expect_error('ncdc', $err_v3, 'E2 single INSERT');
is(dst('SELECT count(*) FROM nv') . '/' . dst('SELECT count(*) FROM nlater'), '0/0',
	'E2: nothing of the transaction nor of the next one applied');
dst('ALTER TABLE nv ALTER COLUMN v TYPE varchar(10)');
dst("SELECT bunny.retry_mirror('ncdc')");
is(wait_for_lsn($dest, 'ncdc', $lsn, 60000), 't', 'E2: caught up after widening the column');
check_tables('E2 after recovery', 'nv');
is(dst('SELECT count(*) FROM nlater'), '1', 'E2: the next transaction applied');

# E3: a single UPDATE, char(10) -> char(3), 'abcd'
src("INSERT INTO nc VALUES (1, 'ab'), (2, 'abc'), (3, '日本語   ')");
caught_up('ncdc', 'E3 setup');
check_tables('E3 before', 'nc');
ok(poll_until(sub { (mirror_field($dest, 'ncdc', 'error_count') // '') eq '0' }, 30),
	'E3: error_count back to 0');
src("BEGIN; INSERT INTO nc VALUES (4, 'ok'); UPDATE nc SET c = 'abcd' WHERE id = 1; "
	  . "UPDATE nc SET c = 'x' WHERE id = 2; COMMIT;");
src('INSERT INTO nlater VALUES (2)');
$lsn = source_lsn($source);
expect_error('ncdc', $err_c3, 'E3 single UPDATE');
is( dst("SELECT string_agg(id || '=' || format('%L', c), ',' ORDER BY id) FROM nc")
	  . '/' . dst('SELECT count(*) FROM nlater'),
	q(1='ab ',2='abc',3='日本語'/1),
	'E3: nothing of the transaction nor of the next one applied');
dst('ALTER TABLE nc ALTER COLUMN c TYPE char(10)');
dst("SELECT bunny.retry_mirror('ncdc')");
is(wait_for_lsn($dest, 'ncdc', $lsn, 60000), 't', 'E3: caught up after widening the column');
check_tables('E3 after recovery', 'nc');

# E4: a COPY run, varchar(10) -> varchar(3), 'abcdef' at row 250 of 400
ok(poll_until(sub { (mirror_field($dest, 'ncdc', 'error_count') // '') eq '0' }, 30),
	'E4: error_count back to 0');
src("INSERT INTO ncp SELECT g, CASE WHEN g = 250 THEN 'abcdef' "
	  . "ELSE (ARRAY['ab   ', 'abc', '日本語  ', '', 'é  ', NULL, 'x'])[g % 7 + 1] END "
	  . "FROM generate_series(1, 400) g");
src('INSERT INTO nlater VALUES (3)');
$lsn = source_lsn($source);
expect_error('ncdc', $err_v3, 'E4 COPY run', qr/COPY ncp, line \d+, column v/);
is(dst('SELECT count(*) FROM ncp') . '/' . dst('SELECT count(*) FROM nlater'), '0/2',
	'E4: nothing of the transaction nor of the next one applied');
dst('ALTER TABLE ncp ALTER COLUMN v TYPE varchar(10)');
dst("SELECT bunny.retry_mirror('ncdc')");
is(wait_for_lsn($dest, 'ncdc', $lsn, 60000), 't', 'E4: caught up after widening the column');
check_tables('E4 after recovery', 'ncp');

# ---------------------------------------------------------------------------
# Final state
# ---------------------------------------------------------------------------

foreach my $m (qw(tv dom nsnap ncdc))
{
	ok( poll_until(
			sub {
				(query_value($dest,
						"SELECT status || '/' || error_count FROM bunny.mirrors WHERE name = '$m'") // '')
				  eq 'RUNNING/0';
			},
			30),
		"final: $m RUNNING with error_count 0") or dump_mirror_state($dest, $m);
}
is(query_value($dest, "SELECT count(*) FROM bunny.logs('tv', 'ERROR')"), '0', 'no error in mirror tv');
is(query_value($dest, "SELECT count(*) FROM bunny.logs('dom', 'ERROR')"), '0', 'no error in mirror dom');

my $dest_log = slurp_file($dest->logfile);
unlike($dest_log, qr/terminated by signal|PANIC|TRAP:/, 'no destination process crashed');

note(sprintf('011_text_values ran %.1f s', time() - $t_start));
$dest->stop;
$source->stop;
done_testing();
