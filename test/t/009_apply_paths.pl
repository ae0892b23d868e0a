# Copyright (c) bunnydb authors
#
# 009_apply_paths: the newer apply paths of the CDC worker: folded UPDATEs,
# COPY runs, and both inside streamed (protocol v2) transactions.
#
#  A. Folding of UPDATEs within a destination batch. The mirrors are paused
#     while many source transactions run, so that resuming applies them in
#     big batches; every scenario ends with a fingerprint comparison:
#       * pgbench-like transactions hammering a few rows (branches, tellers)
#         plus random other rows, and one transaction updating the same
#         5 rows 600 times
#       * UPDATEs leaving a TOASTed column unchanged (pgoutput sends it as
#         'unchanged') mixed with UPDATEs changing it, on the same rows
#       * UPDATE, DELETE, INSERT of the same key, UPDATE again
#       * UPDATEs changing the primary key (also away and back, swaps
#         through a temporary key, reuse of a deleted key)
#       * an extra UNIQUE column (folding off) with chains of unique values
#         that are only valid in order; the same with a unique index that
#         exists only on the destination
#       * text, composite, uuid, timestamp, date and bigint keys; enum /
#         timestamptz / (int, date) keys in a text-mode mirror
#       * ENABLE ALWAYS / ENABLE REPLICA triggers created on the destination
#         (folding off: the trigger sees every UPDATE), an ordinary trigger
#         (does not fire, folding stays on)
#       * NULLs, values set to NULL and back
#       * more distinct keys in one batch than the fold buffer holds
#  B. COPY runs for long runs of INSERTs (binary and text mode):
#       * 5000-row transactions with tricky text values (tab, newline, CR,
#         backslash, the two characters \N, empty strings), NULLs in every
#         nullable column and many types; an enum column in text mode
#       * an order-sensitive mix: 300 inserts into A, an update of one of
#         them, 300 more, A/B interleaved, 500 into B; run-length boundaries
#       * a destination table with an extra column with a DEFAULT
#       * a unique violation inside a COPY run: error recorded, nothing
#         applied, recovery after the conflict is removed + retry_mirror
#       * SIGKILL of the mirror worker while it COPYs a 300 000-row
#         transaction (found in pg_stat_progress_copy), once sent whole after
#         its commit and once streamed while it runs: no loss, no duplicates
#       * a COPY run writes its buffered rows every 128 rows: with a
#         streamed transaction still open, the destination table has grown
#         by the rows the run took in (CopyFrom alone would keep up to 1000)
#  C. bunny.mirror_tables rows_inserted / rows_updated / rows_deleted equal
#     the committed changes, counted by the source's own pg_stat_user_tables
#     (minus the aborted work it also counts, where the test made some).
#  S. The same paths inside large transactions that the source streams while
#     they run (protocol v2, logical_decoding_work_mem lowered on the
#     source): COPY runs, folded UPDATEs, unchanged TOAST, key changes,
#     unique chains and triggers inside streamed blocks; savepoints rolled
#     back and released around them; an aborted streamed transaction; a
#     transaction committing while a streamed one runs (the worker falls
#     back to whole transactions); the counters after a rolled-back savepoint.
#
# Runs in about a minute on two cores.

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
	dest_conf => "bunny.retry_backoff_min = '200ms'\n"
	  . "bunny.retry_backoff_max = '2s'\n"
	  . "bunny.max_batch_latency = 0\n");


# Statements -> one script, each statement its own transaction.
sub autocommit { return join(";\n", @_) . ";\n"; }
# Statements -> one script, all in one transaction.
sub one_txn { return "BEGIN;\n" . join(";\n", @_) . ";\nCOMMIT;\n"; }

# Two statement lists interleaved, each statement its own transaction.
sub interleave
{
	my ($x, $y) = @_;
	my @out;
	while (@$x || @$y)
	{
		push @out, shift @$x if @$x;
		push @out, shift @$y if @$y;
	}
	return autocommit(@out);
}

# ---------------------------------------------------------------------------
# Source schema
# ---------------------------------------------------------------------------

src(<<'EOS');
CREATE FUNCTION big(seed text) RETURNS text LANGUAGE sql IMMUTABLE
  AS $$ SELECT string_agg(md5(seed || i), '') FROM generate_series(1, 250) i $$;

-- mirror "fold" (binary transfer)
CREATE TABLE branches (bid int PRIMARY KEY, bbalance bigint NOT NULL, filler text);
CREATE TABLE tellers (tid int PRIMARY KEY, bid int, tbalance bigint NOT NULL, filler text);
CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance bigint NOT NULL, filler text);
CREATE TABLE history (hid bigserial PRIMARY KEY, tid int, bid int, aid int, delta int,
                      mtime timestamptz);
CREATE TABLE toasty (id int PRIMARY KEY, big text, n int, small text);
ALTER TABLE toasty ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE cycle (id int PRIMARY KEY, v text, n int);
CREATE TABLE pkch (id int PRIMARY KEY, v text, n int);
CREATE TABLE uq (id int PRIMARY KEY, u int NOT NULL UNIQUE, v text);
CREATE TABLE uq2 (id int PRIMARY KEY, u int NOT NULL, v text);
CREATE TABLE tpk (k text PRIMARY KEY, v int, note text);
CREATE TABLE cpk (a int, b text, v int, w text, PRIMARY KEY (a, b));
CREATE TABLE ukey (u uuid PRIMARY KEY, v int);
CREATE TABLE tskey (ts timestamp PRIMARY KEY, v int);
CREATE TABLE dkey (d date PRIMARY KEY, v int);
CREATE TABLE bkey (b bigint PRIMARY KEY, v int);
CREATE TABLE trg_always (id int PRIMARY KEY, v int);
CREATE TABLE trg_replica (id int PRIMARY KEY, v int);
CREATE TABLE trg_origin (id int PRIMARY KEY, v int);
CREATE TABLE nul (id int PRIMARY KEY, a int, b text, c numeric, d timestamptz, e jsonb, f int[]);
CREATE TABLE many (id int PRIMARY KEY, v int, w text);
CREATE TABLE cnt (id int PRIMARY KEY, v int);
CREATE TABLE poke (id int PRIMARY KEY);

-- mirror "txt" (text transfer: user-defined types)
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'Very Happy', 'back\slash');
CREATE TABLE tf (ts timestamptz PRIMARY KEY, m mood, v int, note text);
CREATE TABLE tk (k text PRIMARY KEY, m mood, v int);
CREATE TABLE tc (a int, d date, m mood, v int, PRIMARY KEY (a, d));
CREATE TABLE tn (id bigint PRIMARY KEY, m mood, a int, b text);
CREATE TABLE tu (id int PRIMARY KEY, u int NOT NULL UNIQUE, m mood);
CREATE TABLE cnt_t (id int PRIMARY KEY, v int, m mood);
CREATE TABLE poke_t (id int PRIMARY KEY);

-- COPY runs: mirror "copyb" (binary) and the same shapes in "txt"
CREATE TABLE cpb (id int PRIMARY KEY, t text, vc varchar(40), n numeric, ts timestamptz,
                  j jsonb, js json, b bytea, ia int[], ta text[], f float8, r real, d date,
                  bo boolean, i8 bigint, i2 smallint, u uuid, iv interval, ch char(3));
CREATE TABLE cpt (id int PRIMARY KEY, t text, vc varchar(40), n numeric, ts timestamptz,
                  j jsonb, js json, b bytea, ia int[], ta text[], f float8, r real, d date,
                  bo boolean, i8 bigint, i2 smallint, u uuid, iv interval, ch char(3),
                  m mood, ma mood[]);
CREATE TABLE ia (id int PRIMARY KEY, v text, n int);
CREATE TABLE ib (id int PRIMARY KEY, v text, n int);
CREATE TABLE ic (id int PRIMARY KEY, v text, n int);
CREATE TABLE ia_t (id int PRIMARY KEY, v text, n int);
CREATE TABLE ib_t (id int PRIMARY KEY, v text, n int);
CREATE TABLE ic_t (id int PRIMARY KEY, v text, n int);

-- destination tables with an extra DEFAULT column: mirrors "defb", "deft"
CREATE TYPE mood2 AS ENUM ('x', 'y', 'z');
CREATE TABLE dflt_b (id int PRIMARY KEY, v text);
CREATE TABLE dflt_t (id int PRIMARY KEY, v text, m mood2);

-- unique violation inside a COPY run: mirror "conf"
CREATE TABLE cf (id int PRIMARY KEY, v text, n int);
CREATE TABLE cf2 (id int PRIMARY KEY, v text);

-- SIGKILL during a COPY run: mirror "bulk" (no key: duplicates would show)
CREATE TABLE bk (txno int, g int, pad text);
ALTER TABLE bk REPLICA IDENTITY FULL;
EOS

my @fold_tables = map { "public.$_" } qw(
  branches tellers accounts history toasty cycle pkch uq uq2 tpk cpk
  ukey tskey dkey bkey trg_always trg_replica trg_origin nul many cnt poke);
my @txt_fold_tables = map { "public.$_" } qw(tf tk tc tn tu cnt_t poke_t);
my @txt_copy_tables = map { "public.$_" } qw(cpt ia_t ib_t ic_t);
my @txt_tables = (@txt_fold_tables, @txt_copy_tables);
my @copyb_tables = map { "public.$_" } qw(cpb ia ib ic);

# ---------------------------------------------------------------------------
# Destination: tables with an extra DEFAULT column, created before the mirror
# ---------------------------------------------------------------------------

dst(<<'EOS');
CREATE TYPE public.mood2 AS ENUM ('x', 'y', 'z');
CREATE TABLE public.dflt_b (id int PRIMARY KEY,
                            extra text NOT NULL DEFAULT 'filled by default',
                            v text,
                            extra_n int DEFAULT 42);
CREATE TABLE public.dflt_t (id int PRIMARY KEY,
                            extra text NOT NULL DEFAULT 'filled by default',
                            v text, m public.mood2,
                            extra_n int DEFAULT 42);
EOS

# ---------------------------------------------------------------------------
# Mirrors
# ---------------------------------------------------------------------------

ok(create_mirror($dest, 'fold', \@fold_tables, max_batch_size => 200000),
	'mirror fold RUNNING');
ok(create_mirror($dest, 'txt', \@txt_tables, max_batch_size => 200000),
	'mirror txt RUNNING');
ok(create_mirror($dest, 'copyb', \@copyb_tables), 'mirror copyb RUNNING');
ok(create_mirror($dest, 'conf', [ 'public.cf', 'public.cf2' ]),
	'mirror conf RUNNING');
ok(create_mirror($dest, 'bulk', ['public.bk']), 'mirror bulk RUNNING');
my $defb_ok = create_mirror($dest, 'defb', ['public.dflt_b'], timeout => 60);
my $deft_ok = create_mirror($dest, 'deft', ['public.dflt_t'], timeout => 60);
note("mirrors onto pre-created destination tables: defb "
	  . ($defb_ok ? 'RUNNING' : 'refused') . ", deft "
	  . ($deft_ok ? 'RUNNING' : 'refused'));

is(transfer_mode($dest, 'fold'),  'binary', 'fold streams in binary mode');
is(transfer_mode($dest, 'copyb'), 'binary', 'copyb streams in binary mode');
is(transfer_mode($dest, 'txt'),   'text',   'txt streams in text mode (enum columns)');

# Destination-only objects, created after the mirrors: triggers counting
# UPDATEs, a unique index that the source does not have.
dst(<<'EOS');
CREATE TABLE public.trg_log (tbl text PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO public.trg_log VALUES ('trg_always', 0), ('trg_replica', 0), ('trg_origin', 0);
CREATE FUNCTION public.count_upd() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE public.trg_log SET n = n + 1 WHERE tbl = TG_TABLE_NAME;
  RETURN NULL;
END $$;
CREATE TRIGGER count_upd AFTER UPDATE ON public.trg_always
  FOR EACH ROW EXECUTE FUNCTION public.count_upd();
ALTER TABLE public.trg_always ENABLE ALWAYS TRIGGER count_upd;
CREATE TRIGGER count_upd AFTER UPDATE ON public.trg_replica
  FOR EACH ROW EXECUTE FUNCTION public.count_upd();
ALTER TABLE public.trg_replica ENABLE REPLICA TRIGGER count_upd;
CREATE TRIGGER count_upd AFTER UPDATE ON public.trg_origin
  FOR EACH ROW EXECUTE FUNCTION public.count_upd();
CREATE UNIQUE INDEX uq2_u_dest_only ON public.uq2 (u);
EOS

# ---------------------------------------------------------------------------
# A. Folding: initial rows (through CDC), then a backlog while paused
# ---------------------------------------------------------------------------

src(<<'EOS');
INSERT INTO branches SELECT g, 0, 'b' FROM generate_series(1, 5) g;
INSERT INTO tellers SELECT g, (g - 1) / 10 + 1, 0, 't' FROM generate_series(1, 50) g;
INSERT INTO accounts SELECT g, (g - 1) / 2000 + 1, 0, 'a' FROM generate_series(1, 10000) g;
INSERT INTO toasty SELECT g, big('init' || g), 0, 'init' FROM generate_series(1, 40) g;
INSERT INTO cycle SELECT g, 'init' || g, 0 FROM generate_series(1, 60) g;
INSERT INTO pkch SELECT g, 'init' || g, 0 FROM generate_series(1, 300) g;
INSERT INTO uq SELECT g, g, 'init' FROM generate_series(1, 20) g;
INSERT INTO uq2 SELECT g, g, 'init' FROM generate_series(1, 20) g;
INSERT INTO tpk VALUES ('a', 0, NULL), ('A', 0, NULL), ('a ', 0, NULL), ('ä', 0, NULL),
  ('', 0, NULL), ('it''s', 0, NULL), (E'back\\slash', 0, NULL), (E'tab\tkey', 0, NULL),
  (repeat('long', 100), 0, NULL), ('b-old', 0, NULL), ('\N', 0, NULL);
INSERT INTO cpk SELECT a, b, 0, NULL FROM generate_series(1, 4) a,
  unnest(ARRAY['x', 'y', 'Y', '']) b;
INSERT INTO ukey SELECT md5(g::text)::uuid, 0 FROM generate_series(1, 10) g;
INSERT INTO tskey SELECT timestamp '2024-02-29 12:00:00' + g * interval '1.000001 second', 0
  FROM generate_series(1, 10) g;
INSERT INTO dkey SELECT date '2024-01-01' + g, 0 FROM generate_series(1, 10) g;
INSERT INTO bkey SELECT g * 10000000000::bigint, 0 FROM generate_series(-5, 5) g;
INSERT INTO trg_always SELECT g, 0 FROM generate_series(1, 5) g;
INSERT INTO trg_replica SELECT g, 0 FROM generate_series(1, 5) g;
INSERT INTO trg_origin SELECT g, 0 FROM generate_series(1, 5) g;
INSERT INTO nul SELECT g, g, 'b' || g, g * 1.5, timestamptz '2020-01-01 00:00+00' + g * interval '1 day',
  jsonb_build_object('g', g), ARRAY[g] FROM generate_series(1, 20) g;
UPDATE nul SET a = NULL, b = NULL, c = NULL, d = NULL, e = NULL, f = NULL WHERE id = 4;
INSERT INTO nul (id) SELECT g FROM generate_series(21, 30) g;
INSERT INTO many SELECT g, g, NULL FROM generate_series(1, 15000) g;

INSERT INTO tf SELECT timestamptz '2024-01-01 00:00:00+00' + g * interval '1 day 0.5 sec',
  (enum_range(NULL::mood))[g % 5 + 1], 0, NULL FROM generate_series(1, 10) g;
INSERT INTO tk SELECT k, 'ok', 0 FROM unnest(ARRAY['a', 'A', '', 'x y', E'back\\slash', 'ü', 'k-old']) k;
INSERT INTO tc SELECT a, date '2023-12-31' + d, 'sad', 0 FROM generate_series(1, 3) a, generate_series(1, 3) d;
INSERT INTO tn SELECT g, NULL, g, 'b' || g FROM generate_series(1, 20) g;
INSERT INTO tu SELECT g, g, 'ok' FROM generate_series(1, 10) g;
EOS
ok(wait_synced($source, $dest, 'fold', \@fold_tables, timeout => 120),
	'fold: initial rows replicated');
ok(wait_synced($source, $dest, 'txt', \@txt_tables, timeout => 120),
	'txt: initial rows replicated');
compare_tables($source, $dest, [ @fold_tables, @txt_tables ], 'initial rows');

foreach my $m ('fold', 'txt')
{
	dst("SELECT bunny.pause_mirror('$m')");
	ok(wait_for_status($dest, $m, 'PAUSED', 60), "$m PAUSED");
}

# --- A1: pgbench-like load: 2 clients x 1000 transactions -------------------
my $tmpdir = PostgreSQL::Test::Utils::tempdir();
PostgreSQL::Test::Utils::append_to_file(
	"$tmpdir/tpcb.sql", q{
\set aid random(1, 10000)
\set bid random(1, 5)
\set tid random(1, 50)
\set delta random(-5000, 5000)
BEGIN;
UPDATE accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM accounts WHERE aid = :aid;
UPDATE tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
});

sub run_pgbench
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run(
		[
			'pgbench', '-n', @args, '-f', "$tmpdir/tpcb.sql",
			'-h', $source->host, '-p', $source->port, 'postgres'
		],
		'<', \undef, '>', \$out, '2>', \$err);
	my ($tx) = $out =~ /number of transactions actually processed: (\d+)/;
	diag("pgbench failed: $err") unless $ok;
	return $tx // 0;
}
my $tx = run_pgbench('-c', '2', '-j', '2', '-t', '1000');
is($tx, 2000, 'pgbench: 2000 transactions on the source while paused');

# --- A1b: one transaction updates the same 5 rows 600 times; then 200
# transactions updating many tellers and a branch each
src(<<'EOS');
DO $$ BEGIN
  FOR i IN 1 .. 600 LOOP
    UPDATE branches SET bbalance = bbalance + i WHERE bid = i % 5 + 1;
  END LOOP;
END $$;
DO $$ BEGIN
  FOR i IN 1 .. 200 LOOP
    UPDATE tellers SET tbalance = tbalance - 1, filler = 't' || i WHERE tid % 7 = i % 7;
    UPDATE branches SET filler = 'f' || i WHERE bid = i % 5 + 1;
    UPDATE accounts SET abalance = abalance + 1 WHERE aid % 1000 = i;
    COMMIT;
  END LOOP;
END $$;
EOS

# --- A2: unchanged TOAST mixed with changed TOAST ----------------------------
sub toast_steps
{
	my ($o) = @_;
	my ($r1, $r2, $r3, $r4, $r5, $r6, $r7, $r8) = map { $_ + $o } 1 .. 8;
	my $r5b = $r5 + 1000;
	return (
		# r1: unchanged, changed, unchanged, unchanged
		"UPDATE toasty SET n = n + 1 WHERE id = $r1",
		"UPDATE toasty SET big = big('r1v2-$o') WHERE id = $r1",
		"UPDATE toasty SET n = n + 1 WHERE id = $r1",
		"UPDATE toasty SET small = 'r1-$o' WHERE id = $r1",
		# r2: changed, unchanged, changed, unchanged
		"UPDATE toasty SET big = big('r2v2-$o'), n = 5 WHERE id = $r2",
		"UPDATE toasty SET n = 6 WHERE id = $r2",
		"UPDATE toasty SET big = big('r2v3-$o') WHERE id = $r2",
		"UPDATE toasty SET small = 'r2-$o' WHERE id = $r2",
		# r3: only unchanged
		"UPDATE toasty SET n = n + 10 WHERE id = $r3",
		"UPDATE toasty SET small = 'r3-$o' WHERE id = $r3",
		"UPDATE toasty SET n = n + 10 WHERE id = $r3",
		# r4: NULL, unchanged, short inline value, unchanged, big, unchanged
		"UPDATE toasty SET big = NULL WHERE id = $r4",
		"UPDATE toasty SET n = 1 WHERE id = $r4",
		"UPDATE toasty SET big = 'short' WHERE id = $r4",
		"UPDATE toasty SET n = 2 WHERE id = $r4",
		"UPDATE toasty SET big = big('r4v5-$o') WHERE id = $r4",
		"UPDATE toasty SET n = 3 WHERE id = $r4",
		# r5: key change with the TOAST column unchanged, then updates
		"UPDATE toasty SET n = 1 WHERE id = $r5",
		"UPDATE toasty SET id = $r5b WHERE id = $r5",
		"UPDATE toasty SET n = 2 WHERE id = $r5b",
		"UPDATE toasty SET big = big('r5v4-$o') WHERE id = $r5b",
		"UPDATE toasty SET n = 3 WHERE id = $r5b",
		# r6: update, delete, insert, update, update
		"UPDATE toasty SET n = 1 WHERE id = $r6",
		"DELETE FROM toasty WHERE id = $r6",
		"INSERT INTO toasty VALUES ($r6, big('r6new-$o'), 100, 'reinserted')",
		"UPDATE toasty SET n = 101 WHERE id = $r6",
		"UPDATE toasty SET small = 'r6-$o' WHERE id = $r6",
		# r7, r8: multi-row updates around single-row ones
		"UPDATE toasty SET n = n + 1 WHERE id IN ($r7, $r8)",
		"UPDATE toasty SET big = big('r7v2-$o') WHERE id = $r7",
		"UPDATE toasty SET n = n + 1 WHERE id IN ($r7, $r8)",
		"UPDATE toasty SET big = big('r8v2-$o'), small = NULL WHERE id = $r8",
		"UPDATE toasty SET n = n + 1 WHERE id IN ($r7, $r8)");
}
src(autocommit(toast_steps(0)));
src(one_txn(toast_steps(10)));
src(interleave([ toast_steps(20) ], [ toast_steps(30) ]));

# --- A3: UPDATE, DELETE, INSERT same key, UPDATE -----------------------------
sub cycle_steps
{
	my ($o) = @_;
	my ($a, $c, $d) = (1 + $o, 2 + $o, 3 + $o);
	my $b = 500 + $o;
	return (
		"UPDATE cycle SET v = 'u1' WHERE id = $a",
		"UPDATE cycle SET n = n + 1 WHERE id = $a",
		"DELETE FROM cycle WHERE id = $a",
		"INSERT INTO cycle VALUES ($a, 'reborn', 100)",
		"UPDATE cycle SET n = n + 1 WHERE id = $a",
		"UPDATE cycle SET v = 'final' WHERE id = $a",
		"INSERT INTO cycle VALUES ($b, 'new', 0)",
		"UPDATE cycle SET n = 7 WHERE id = $b",
		"DELETE FROM cycle WHERE id = $b",
		"INSERT INTO cycle VALUES ($b, 'new again', 1)",
		"UPDATE cycle SET v = v || '!' WHERE id = $b",
		"UPDATE cycle SET v = 'doomed' WHERE id = $c",
		"DELETE FROM cycle WHERE id = $c",
		"DELETE FROM cycle WHERE id = $d",
		"INSERT INTO cycle VALUES ($d, 'd2', 2)",
		"UPDATE cycle SET n = n * 10 WHERE id IN ($a, $b, $d)",
		"UPDATE cycle SET v = NULL WHERE id = $d");
}
src(autocommit(cycle_steps(0)));
src(one_txn(cycle_steps(10)));
src(interleave([ cycle_steps(20) ], [ cycle_steps(30) ]));

# --- A4: primary key changes -------------------------------------------------
sub pk_steps
{
	my ($o) = @_;
	my ($a, $b, $c, $d, $e, $f) = map { $_ + $o } 1 .. 6;
	my ($a2, $f2) = ($a + 1000, $f + 5000);
	return (
		"UPDATE pkch SET v = 'a1' WHERE id = $a",
		"UPDATE pkch SET n = n + 1 WHERE id = $a",
		"UPDATE pkch SET id = $a2 WHERE id = $a",
		"UPDATE pkch SET v = 'a2' WHERE id = $a2",
		"UPDATE pkch SET n = n + 1 WHERE id = $a2",
		# swap b and c through a temporary key
		"UPDATE pkch SET v = 'b1' WHERE id = $b",
		"UPDATE pkch SET v = 'c1' WHERE id = $c",
		"UPDATE pkch SET id = -$c WHERE id = $c",
		"UPDATE pkch SET id = $c WHERE id = $b",
		"UPDATE pkch SET id = $b WHERE id = -$c",
		"UPDATE pkch SET n = n + 100 WHERE id IN ($b, $c)",
		"UPDATE pkch SET v = v || '-after-swap' WHERE id = $b",
		# reuse a deleted key
		"UPDATE pkch SET v = 'd1' WHERE id = $d",
		"DELETE FROM pkch WHERE id = $d",
		"UPDATE pkch SET id = $d, v = 'moved from e' WHERE id = $e",
		"UPDATE pkch SET n = 99 WHERE id = $d",
		"INSERT INTO pkch VALUES ($e, 'new e', 0)",
		"UPDATE pkch SET n = 5 WHERE id = $e",
		# away and back
		"UPDATE pkch SET n = 1 WHERE id = $f",
		"UPDATE pkch SET id = $f2 WHERE id = $f",
		"UPDATE pkch SET n = 2 WHERE id = $f2",
		"UPDATE pkch SET id = $f WHERE id = $f2",
		"UPDATE pkch SET n = 3 WHERE id = $f");
}
src(autocommit(pk_steps(0)));
src(one_txn(pk_steps(10)));
src(interleave([ pk_steps(20) ], [ pk_steps(30) ]));
src(<<'EOS');
UPDATE pkch SET n = n + 1 WHERE id BETWEEN 100 AND 200;
UPDATE pkch SET id = id + 10000 WHERE id BETWEEN 100 AND 200;
UPDATE pkch SET v = 'shifted' WHERE id BETWEEN 10150 AND 10250;
UPDATE pkch SET n = n + 1 WHERE id BETWEEN 150 AND 250;
BEGIN;
UPDATE pkch SET id = id - 10000 WHERE id BETWEEN 10100 AND 10120;
UPDATE pkch SET v = 'back' WHERE id BETWEEN 100 AND 120;
UPDATE pkch SET n = -n WHERE id BETWEEN 110 AND 130;
COMMIT;
EOS

# --- A5: unique values moved between rows (only valid in order) --------------
foreach my $t ('uq', 'uq2')
{
	src(<<"EOS");
UPDATE $t SET u = 100 WHERE id = 1;
UPDATE $t SET u = 1 WHERE id = 2;
UPDATE $t SET u = 2 WHERE id = 1;
UPDATE $t SET v = 'x' WHERE id = 3;
BEGIN;
UPDATE $t SET u = 200 WHERE id = 4;
UPDATE $t SET u = 4 WHERE id = 5;
UPDATE $t SET u = 5 WHERE id = 4;
UPDATE $t SET v = 'in one txn' WHERE id IN (4, 5);
COMMIT;
DO \$\$ DECLARE x int; y int; z int;
BEGIN
  FOR i IN 1 .. 150 LOOP
    SELECT u INTO x FROM $t WHERE id = 11;
    SELECT u INTO y FROM $t WHERE id = 12;
    SELECT u INTO z FROM $t WHERE id = 13;
    UPDATE $t SET u = -1 WHERE id = 11;
    IF i % 2 = 0 THEN COMMIT; END IF;
    UPDATE $t SET u = x WHERE id = 13;
    UPDATE $t SET u = z, v = 'r' || i WHERE id = 12;
    IF i % 3 = 0 THEN COMMIT; END IF;
    UPDATE $t SET u = y WHERE id = 11;
    COMMIT;
  END LOOP;
END \$\$;
EOS
}

# --- A6: text, composite and other key types ---------------------------------
src(<<'EOS');
DO $$ BEGIN
  FOR i IN 1 .. 100 LOOP
    UPDATE tpk SET v = v + 1, note = 'n' || i WHERE k IN ('a', 'A', 'a ', 'ä');
    UPDATE tpk SET v = v + 2 WHERE k = '' OR k = 'it''s' OR k = '\N';
    UPDATE tpk SET note = repeat('x', i) WHERE k = repeat('long', 100) OR k = E'tab\tkey';
    IF i % 3 = 0 THEN COMMIT; END IF;
  END LOOP;
END $$;
UPDATE tpk SET k = 'b' WHERE k = 'b-old';
UPDATE tpk SET v = 77 WHERE k = 'b';
UPDATE tpk SET k = 'A2' WHERE k = 'A';
UPDATE tpk SET k = 'A' WHERE k = 'a';
UPDATE tpk SET note = 'was a' WHERE k = 'A';
UPDATE tpk SET v = -1 WHERE k = E'back\\slash';
UPDATE tpk SET note = NULL WHERE k = E'tab\tkey';

DO $$ BEGIN
  FOR i IN 1 .. 100 LOOP
    UPDATE cpk SET v = v + 1, w = 'w' || i WHERE a = i % 4 + 1;
    UPDATE cpk SET v = v - 1 WHERE b = '';
    IF i % 2 = 0 THEN COMMIT; END IF;
  END LOOP;
END $$;
UPDATE cpk SET b = 'z' WHERE a = 1 AND b = 'x';
UPDATE cpk SET v = 1000 WHERE a = 1 AND b = 'z';
UPDATE cpk SET a = 9 WHERE a = 2 AND b = 'y';
UPDATE cpk SET a = 2 WHERE a = 3 AND b = 'y';
UPDATE cpk SET w = NULL WHERE (a, b) IN ((2, 'y'), (9, 'y'), (1, ''));

DO $$ BEGIN
  FOR i IN 1 .. 60 LOOP
    UPDATE ukey SET v = v + i WHERE u = md5((i % 10 + 1)::text)::uuid;
    UPDATE tskey SET v = v + i WHERE ts = timestamp '2024-02-29 12:00:00' + (i % 10 + 1) * interval '1.000001 second';
    UPDATE dkey SET v = v + i WHERE d = date '2024-01-01' + (i % 10 + 1);
    UPDATE bkey SET v = v + i WHERE b = (i % 11 - 5) * 10000000000::bigint;
    IF i % 4 = 0 THEN COMMIT; END IF;
  END LOOP;
END $$;
UPDATE ukey SET u = md5('moved')::uuid WHERE u = md5('1')::uuid;
UPDATE ukey SET v = -1 WHERE u = md5('moved')::uuid;
UPDATE tskey SET ts = ts + interval '1 microsecond' WHERE v = (SELECT max(v) FROM tskey);
UPDATE tskey SET v = -1 WHERE v = (SELECT max(v) FROM tskey);
UPDATE dkey SET d = d + 1000 WHERE d = date '2024-01-02';
UPDATE dkey SET v = -1 WHERE d = date '2024-01-02' + 1000;
UPDATE bkey SET b = b + 1 WHERE b = 10000000000;
UPDATE bkey SET v = -1 WHERE b = 10000000001;
EOS

# --- A7: triggers on the destination -----------------------------------------
my $trg_updates = 0;
foreach my $t ('trg_always', 'trg_replica', 'trg_origin')
{
	src(<<"EOS");
DO \$\$ BEGIN
  FOR i IN 1 .. 300 LOOP
    UPDATE $t SET v = v + 1 WHERE id = i % 5 + 1;
    IF i % 10 <> 0 THEN COMMIT; END IF;
  END LOOP;
END \$\$;
DO \$\$ BEGIN
  FOR i IN 1 .. 10 LOOP
    UPDATE $t SET v = v * 2;
  END LOOP;
END \$\$;
UPDATE $t SET v = v WHERE id = 1;
UPDATE $t SET id = 6 WHERE id = 5;
UPDATE $t SET v = 0 WHERE id = 6;
EOS
}
$trg_updates = 300 + 10 * 5 + 1 + 1 + 1;

# --- A8: NULLs -----------------------------------------------------------------
src(<<'EOS');
UPDATE nul SET a = NULL WHERE id = 1;
UPDATE nul SET a = 5 WHERE id = 1;
UPDATE nul SET a = NULL WHERE id = 1;
UPDATE nul SET b = NULL, c = NULL WHERE id = 2;
UPDATE nul SET b = 'back' WHERE id = 2;
UPDATE nul SET a = NULL, b = NULL, c = NULL, d = NULL, e = NULL, f = NULL WHERE id = 3;
UPDATE nul SET a = 1, b = '', c = 0, d = 'epoch', e = 'null', f = '{NULL}' WHERE id = 4;
UPDATE nul SET e = 'null'::jsonb, b = '' WHERE id = 5;
UPDATE nul SET b = NULL WHERE id = 5;
UPDATE nul SET b = 'NULL' WHERE id = 5;
BEGIN;
UPDATE nul SET c = NULL WHERE id = 7;
UPDATE nul SET c = 7.7, d = NULL WHERE id = 7;
UPDATE nul SET d = 'infinity', f = NULL WHERE id = 7;
UPDATE nul SET f = '{}' WHERE id = 7;
COMMIT;
DO $$ BEGIN
  FOR i IN 1 .. 100 LOOP
    UPDATE nul SET a = CASE WHEN a IS NULL THEN i ELSE NULL END,
                   b = CASE WHEN i % 3 = 0 THEN NULL ELSE 'i' || i END
     WHERE id BETWEEN 8 AND 30;
    IF i % 2 = 0 THEN COMMIT; END IF;
  END LOOP;
END $$;
EOS

# --- A9: more distinct keys in one batch than the fold buffer holds ----------
src(<<'EOS');
UPDATE many SET v = v + 1;
UPDATE many SET w = 'x' || id WHERE id % 3 = 0;
BEGIN;
UPDATE many SET v = v * 2 WHERE id > 5000;
UPDATE many SET w = NULL WHERE id % 6 = 0;
UPDATE many SET w = 'last' WHERE id = 15000;
COMMIT;
EOS

# --- A10: counters, first part ------------------------------------------------
src(<<'EOS');
INSERT INTO cnt SELECT g, 0 FROM generate_series(1, 250) g;
UPDATE cnt SET v = v + 1 WHERE id <= 40;
UPDATE cnt SET v = v + 1 WHERE id <= 40;
BEGIN;
UPDATE cnt SET v = 7 WHERE id = 1;
UPDATE cnt SET v = 8 WHERE id = 1;
UPDATE cnt SET v = 9 WHERE id = 1;
COMMIT;
DELETE FROM cnt WHERE id > 240;
EOS

# --- A11: text-mode mirror, same kinds of sequences ----------------------------
src(<<'EOS');
DO $$ BEGIN
  FOR i IN 1 .. 200 LOOP
    UPDATE tf SET v = v + 1, m = (enum_range(NULL::mood))[i % 5 + 1]
     WHERE extract(day FROM ts)::int % 3 = i % 3;
    UPDATE tk SET v = v + i, m = (enum_range(NULL::mood))[(i + 2) % 5 + 1]
     WHERE k IN ('a', 'A', '', E'back\\slash');
    UPDATE tc SET v = v + 1 WHERE a = i % 3 + 1;
    UPDATE tn SET a = CASE WHEN a IS NULL THEN i END,
                  m = CASE WHEN m IS NULL THEN 'back\slash'::mood END
     WHERE id % 4 = i % 4;
    IF i % 3 = 0 THEN COMMIT; END IF;
  END LOOP;
END $$;
UPDATE tf SET ts = ts + interval '100 years' WHERE ts = (SELECT min(ts) FROM tf);
UPDATE tf SET note = 'moved' WHERE ts = (SELECT max(ts) FROM tf);
UPDATE tk SET k = 'k-new' WHERE k = 'k-old';
UPDATE tk SET v = 1 WHERE k = 'k-new';
UPDATE tc SET d = d + 365 WHERE a = 1 AND d = date '2024-01-01';
UPDATE tc SET m = 'Very Happy' WHERE a = 1;
BEGIN;
UPDATE tn SET b = NULL WHERE id = 1;
UPDATE tn SET b = 'back' WHERE id = 1;
UPDATE tn SET m = NULL, b = NULL WHERE id = 2;
COMMIT;
UPDATE tu SET u = 100 WHERE id = 1;
UPDATE tu SET u = 1 WHERE id = 2;
UPDATE tu SET u = 2, m = 'happy' WHERE id = 1;
DO $$ DECLARE x int; y int;
BEGIN
  FOR i IN 1 .. 100 LOOP
    SELECT u INTO x FROM tu WHERE id = 5;
    SELECT u INTO y FROM tu WHERE id = 6;
    UPDATE tu SET u = -1 WHERE id = 5;
    UPDATE tu SET u = x WHERE id = 6;
    IF i % 2 = 0 THEN COMMIT; END IF;
    UPDATE tu SET u = y WHERE id = 5;
    COMMIT;
  END LOOP;
END $$;
INSERT INTO cnt_t SELECT g, 0, 'ok' FROM generate_series(1, 250) g;
UPDATE cnt_t SET v = v + 1 WHERE id <= 40;
UPDATE cnt_t SET v = v + 1, m = 'sad' WHERE id <= 40;
DELETE FROM cnt_t WHERE id > 240;
EOS

# The destination must still be untouched: the work above is a backlog.
is(dst('SELECT sum(bbalance) FROM branches'), '0',
	'destination still has the state from before the pause');

my $t_resume = time();
dst("SELECT bunny.resume_mirror('fold')");
dst("SELECT bunny.resume_mirror('txt')");
ok(wait_synced($source, $dest, 'fold', \@fold_tables, timeout => 180),
	'fold: backlog applied after resume');
ok(wait_synced($source, $dest, 'txt', \@txt_fold_tables, timeout => 120),
	'txt: backlog applied after resume');
note(sprintf('backlog applied %.1f s after resume', time() - $t_resume));

compare_tables($source, $dest, ['public.branches', 'public.tellers',
		'public.accounts', 'public.history'], 'A1 pgbench-like updates');
compare_tables($source, $dest, ['public.toasty'], 'A2 unchanged TOAST');
is( dst("SELECT string_agg(id || ':' || coalesce(md5(big), 'NULL'), ',' ORDER BY id) FROM toasty"),
	src("SELECT string_agg(id || ':' || coalesce(md5(big), 'NULL'), ',' ORDER BY id) FROM toasty"),
	'A2: every TOASTed value equals the source');
compare_tables($source, $dest, ['public.cycle'], 'A3 update/delete/insert/update');
compare_tables($source, $dest, ['public.pkch'], 'A4 key changes');
compare_tables($source, $dest, ['public.uq', 'public.uq2'],
	'A5 unique values moved in order');
compare_tables($source, $dest,
	[ 'public.tpk', 'public.cpk', 'public.ukey', 'public.tskey', 'public.dkey', 'public.bkey' ],
	'A6 key types');
compare_tables($source, $dest,
	[ 'public.trg_always', 'public.trg_replica', 'public.trg_origin' ],
	'A7 trigger tables');
is(dst("SELECT n FROM trg_log WHERE tbl = 'trg_always'"), $trg_updates,
	"A7: ENABLE ALWAYS trigger saw every one of the $trg_updates UPDATEs");
is(dst("SELECT n FROM trg_log WHERE tbl = 'trg_replica'"), $trg_updates,
	"A7: ENABLE REPLICA trigger saw every one of the $trg_updates UPDATEs");
is(dst("SELECT n FROM trg_log WHERE tbl = 'trg_origin'"), '0',
	'A7: an ordinary trigger does not fire for replicated rows');
compare_tables($source, $dest, ['public.nul'], 'A8 NULLs');
is( dst("SELECT count(*) FILTER (WHERE a IS NULL) || '/' || count(*) FILTER (WHERE b IS NULL) || '/' || count(*) FILTER (WHERE b = '') FROM nul"),
	src("SELECT count(*) FILTER (WHERE a IS NULL) || '/' || count(*) FILTER (WHERE b IS NULL) || '/' || count(*) FILTER (WHERE b = '') FROM nul"),
	'A8: NULL / empty counts equal');
compare_tables($source, $dest, ['public.many'], 'A9 15000 keys in one batch');
compare_tables($source, $dest, \@txt_fold_tables, 'A11 text-mode mirror');

is( dst("SELECT rows_inserted || '/' || rows_updated || '/' || rows_deleted FROM bunny.mirror_tables WHERE mirror = 'fold' AND source_table = 'public.cnt'"),
	'250/83/10',
	'A10: cnt counters: 250 inserted, 83 updated (folded ones counted each), 10 deleted');

# Evidence that folding happened (and did not where it must not): the
# destination's own UPDATE statistics. The worker flushes its statistics
# at most once a second after a batch, so poke until a fresh row count
# proves a flush after the backlog.
sub flush_dest_stats
{
	my ($mirror, $poke, $tables) = @_;
	my $n = src("SELECT count(*) FROM $poke") + 0;
	return poll_until(
		sub {
			$n++;
			src("INSERT INTO $poke VALUES ($n)");
			wait_for_lsn($dest, $mirror, source_lsn($source), 20000);
			usleep(1_100_000);
			my $seen = query_value($dest,
				"SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = '$poke'::regclass") // -1;
			return $seen >= $n;
		},
		40, 0.1);
}
sub n_upd
{
	my ($node, $t) = @_;
	return query_value($node,
		"SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = '$t'::regclass") // -1;
}
if (ok(flush_dest_stats('fold', 'public.poke'), 'destination statistics flushed'))
{
	my ($s, $d) = (n_upd($source, 'public.branches'), n_upd($dest, 'public.branches'));
	note("branches: $s UPDATEs on the source, $d row updates on the destination");
	ok($d > 0 && $d < $s / 2, "A1: UPDATEs of branches were folded (source $s, destination $d)");
	($s, $d) = (n_upd($source, 'public.trg_always'), n_upd($dest, 'public.trg_always'));
	is($d, $s, 'A7: no folding on the table with an ENABLE ALWAYS trigger');
	($s, $d) = (n_upd($source, 'public.uq'), n_upd($dest, 'public.uq'));
	is($d, $s, 'A5: no folding on the table with an extra unique constraint');
	($s, $d) = (n_upd($source, 'public.uq2'), n_upd($dest, 'public.uq2'));
	is($d, $s, 'A5: no folding on the table with a destination-only unique index');
	($s, $d) = (n_upd($source, 'public.trg_origin'), n_upd($dest, 'public.trg_origin'));
	ok($d < $s, "A7: folding kept with an ordinary (origin) trigger (source $s, destination $d)");
}
if (flush_dest_stats('txt', 'public.poke_t'))
{
	my ($s, $d) = (n_upd($source, 'public.tk'), n_upd($dest, 'public.tk'));
	ok($d > 0 && $d < $s, "A11: text-mode UPDATEs of tk were folded (source $s, destination $d)");
}

# --- A12: the same workload live, without a pause (random batch edges) ------
my $live = IPC::Run::start(
	[
		'pgbench', '-n', '-c', '2', '-j', '2', '-T', '5', '-R', '300',
		'-f', "$tmpdir/tpcb.sql",
		'-h', $source->host, '-p', $source->port, 'postgres'
	],
	'<', \undef, '>', \my $live_out, '2>', \my $live_err);
src(<<'EOS');
INSERT INTO cnt SELECT g, 0 FROM generate_series(1001, 1150) g;
UPDATE cnt SET v = v + 100 WHERE id BETWEEN 1001 AND 1020;
UPDATE toasty SET n = n + 1;
UPDATE toasty SET big = big('live'), n = 0 WHERE id % 4 = 0;
UPDATE toasty SET n = n + 1;
EOS
$live->finish;
is($live->result(0), 0, 'A12: the live load saw no error on the source') or diag($live_err);
ok(wait_synced($source, $dest, 'fold', \@fold_tables, timeout => 120),
	'A12: live load caught up');
compare_tables($source, $dest, [ @fold_tables ], 'A12 after live load');
is( dst("SELECT rows_inserted || '/' || rows_updated || '/' || rows_deleted FROM bunny.mirror_tables WHERE mirror = 'fold' AND source_table = 'public.cnt'"),
	'400/103/10',
	'A10: cnt counters grew by exactly 150 inserted and 20 updated');

# ---------------------------------------------------------------------------
# B. COPY runs
# ---------------------------------------------------------------------------

# 5000 rows with tricky values; $mood adds the enum columns (text mode)
sub types_insert_sql
{
	my ($table, $from, $to, $mood) = @_;
	my $sql = <<'EOS';
INSERT INTO TABLE
SELECT g,
  CASE g % 12 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN E'tab\there' WHEN 3 THEN E'new\nline'
    WHEN 4 THEN E'car\rriage' WHEN 5 THEN E'back\\slash' WHEN 6 THEN '\N' WHEN 7 THEN E'\\.'
    WHEN 8 THEN E'all\t\n\r\\ \\N\\\\N \\t end\\' WHEN 9 THEN 'ünïcödé € ' || g
    WHEN 10 THEN E'\\' ELSE 'plain ' || g END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE left(md5(g::text), g % 40) END,
  CASE WHEN g % 7 = 0 THEN NULL WHEN g % 100 = 1 THEN 'NaN'::numeric
       ELSE g * 1.25 - 1000.0000001 END,
  CASE WHEN g % 7 = 0 THEN NULL WHEN g % 500 = 2 THEN 'infinity'::timestamptz
       ELSE timestamptz '2020-01-01 00:00:00+00' + g * interval '1 hour 1.5 sec' END,
  CASE WHEN g % 7 = 0 THEN NULL
       ELSE jsonb_build_object('g', g, 's', E'q"\t\\\n\\N', 'a', jsonb_build_array(g, NULL, 'x')) END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE json_build_object('s', E'\\N\t', 'g', g) END,
  CASE WHEN g % 7 = 0 THEN NULL WHEN g % 9 = 1 THEN ''::bytea
       ELSE decode(md5(g::text) || '005c0a0d09', 'hex') END,
  CASE WHEN g % 7 = 0 THEN NULL WHEN g % 11 = 1 THEN '{}'::int[] ELSE ARRAY[g, NULL, -g] END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE ARRAY[E'a\tb', 'c"d', E'e\\f', NULL, '', 'NULL', E'n\nl', '\N'] END,
  CASE WHEN g % 7 = 0 THEN NULL WHEN g % 13 = 1 THEN 'Infinity'::float8
       WHEN g % 13 = 2 THEN '-0'::float8 WHEN g % 13 = 3 THEN 'NaN'::float8 ELSE g / 3.0 END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE g / 7.0 END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE date '2000-01-01' + g END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE g % 2 = 0 END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE g::bigint * 1000000007 END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE (g % 30000)::smallint END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE md5(g::text)::uuid END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE g * interval '1 minute 1 microsecond' END,
  CASE WHEN g % 7 = 0 THEN NULL WHEN g % 5 = 1 THEN '' ELSE 'c' || (g % 10) END
  MOODCOLS
FROM generate_series(FROM, TO) g;
EOS
	my $moodcols = $mood
	  ? ",\n  CASE WHEN g % 7 = 0 THEN NULL ELSE (enum_range(NULL::mood))[g % 5 + 1] END,\n"
	  . "  CASE WHEN g % 7 = 0 THEN NULL ELSE ARRAY[(enum_range(NULL::mood))[g % 5 + 1], NULL, 'back\\slash'::mood] END"
	  : '';
	$sql =~ s/TABLE/$table/;
	$sql =~ s/MOODCOLS/$moodcols/;
	$sql =~ s/FROM, TO/$from, $to/;
	return $sql;
}

# 300 into A, update one of them, 300 more, A/B interleaved, 500 into B
sub mix_sql
{
	my ($A, $B, $o) = @_;
	$o //= 0;
	return <<"EOS";
BEGIN;
INSERT INTO $A SELECT g, 'a' || g, g FROM generate_series($o + 1, $o + 300) g;
UPDATE $A SET v = 'updated-250', n = -250 WHERE id = $o + 250;
UPDATE $A SET v = 'updated-50' WHERE id = $o + 50;
INSERT INTO $A SELECT g, 'a' || g, g FROM generate_series($o + 301, $o + 600) g;
DELETE FROM $A WHERE id = $o + 450;
INSERT INTO $A VALUES ($o + 450, 're-inserted', 0);
INSERT INTO $A SELECT g, 'a' || g, g FROM generate_series($o + 601, $o + 700) g;
UPDATE $A SET n = n + 1 WHERE id BETWEEN $o + 600 AND $o + 700;
DO \$\$ BEGIN
  FOR i IN 1 .. 200 LOOP
    INSERT INTO $A VALUES ($o + 1000 + i, 'ab' || i, i);
    INSERT INTO $B VALUES ($o + i, 'ba' || i, i);
  END LOOP;
END \$\$;
INSERT INTO $B SELECT g, 'b' || g, g FROM generate_series($o + 1001, $o + 1500) g;
UPDATE $B SET v = 'last' WHERE id = $o + 1500;
COMMIT;
EOS
}

# runs of INSERTs around the 100-row threshold
sub boundary_sql
{
	my ($C, $o) = @_;
	$o //= 0;
	my $sql = '';
	my $at = $o;
	foreach my $n (99, 100, 101, 102, 200, 201, 1000)
	{
		$sql .= "INSERT INTO $C SELECT g, 'n$n', $n FROM generate_series($at + 1, $at + $n) g;\n";
		$at += $n;
	}
	$sql .= <<"EOS";
BEGIN;
INSERT INTO $C SELECT g, 'x', 0 FROM generate_series($o + 10001, $o + 10101) g;
UPDATE $C SET v = 'only COPY row' WHERE id = $o + 10101;
DELETE FROM $C WHERE id = $o + 10100;
INSERT INTO $C VALUES ($o + 10100, 'again', 1);
INSERT INTO $C SELECT g, 'y', 0 FROM generate_series($o + 10102, $o + 10400) g;
COMMIT;
INSERT INTO $C SELECT g, 'z1', 0 FROM generate_series($o + 20001, $o + 20150) g;
INSERT INTO $C SELECT g, 'z2', 0 FROM generate_series($o + 20151, $o + 20300) g;
EOS
	return $sql;
}

# B1: types, binary and text
src(types_insert_sql('cpb', 1, 5000, 0));
src(types_insert_sql('cpt', 1, 5000, 1));
# B2: mixed runs
src(mix_sql('ia', 'ib'));
src(mix_sql('ia_t', 'ib_t'));
src(boundary_sql('ic'));
src(boundary_sql('ic_t'));

ok(wait_synced($source, $dest, 'copyb', \@copyb_tables, timeout => 120),
	'B: copyb caught up');
ok(wait_synced($source, $dest, 'txt', \@txt_copy_tables, timeout => 120),
	'B: txt caught up');

my $probe = q{SELECT count(*) || '/' || count(*) FILTER (WHERE t IS NULL) || '/'
 || count(*) FILTER (WHERE t = '') || '/' || count(*) FILTER (WHERE t = '\N') || '/'
 || count(*) FILTER (WHERE strpos(t, chr(9)) > 0) || '/' || count(*) FILTER (WHERE strpos(t, chr(10)) > 0) || '/'
 || count(*) FILTER (WHERE strpos(t, chr(13)) > 0) || '/' || count(*) FILTER (WHERE strpos(t, chr(92)) > 0) || '/'
 || count(*) FILTER (WHERE n IS NULL AND ts IS NULL AND j IS NULL AND b IS NULL AND ia IS NULL AND u IS NULL)
 FROM TBL};
foreach my $t ('cpb', 'cpt')
{
	(my $q = $probe) =~ s/TBL/$t/;
	my $mode = $t eq 'cpb' ? 'binary' : 'text';
	is(dst($q), src($q), "B1 ($mode): counts of NULL, empty, \\N, tab, newline, CR, backslash values");
	compare_tables($source, $dest, ["public.$t"], "B1 5000 rows ($mode)");
}
is(dst("SELECT count(*) FROM cpt WHERE m = 'back\\slash' OR 'back\\slash' = ANY (ma)"),
	src("SELECT count(*) FROM cpt WHERE m = 'back\\slash' OR 'back\\slash' = ANY (ma)"),
	'B1 (text): enum values with a backslash');
foreach my $p ([ 'ia', 'ib', 'ic', 'binary' ], [ 'ia_t', 'ib_t', 'ic_t', 'text' ])
{
	my ($A, $B, $C, $mode) = @$p;
	compare_tables($source, $dest, [ "public.$A", "public.$B" ], "B2 A/B mix ($mode)");
	# 300 + 300 + 100 + 200 rows (one of them deleted and inserted again)
	is(dst("SELECT count(*) || '/' || sum(n) FROM $A"), '900/' . src("SELECT sum(n) FROM $A"),
		"B2 ($mode): $A has 900 rows and the right sum");
	is(dst("SELECT count(*) FROM $B"), '700', "B2 ($mode): $B has 700 rows");
	is(dst("SELECT v FROM $A WHERE id = 250") . '|' . dst("SELECT v FROM $A WHERE id = 450"),
		'updated-250|re-inserted', "B2 ($mode): update and re-insert inside the run applied");
	compare_tables($source, $dest, ["public.$C"], "B2 run-length boundaries ($mode)");
	is(dst("SELECT count(*) FROM $C"), src("SELECT count(*) FROM $C"),
		"B2 ($mode): $C row count");
}

# B3: destination table with an extra DEFAULT column
ok($defb_ok && $deft_ok,
	'B3: mirrors onto pre-created destination tables with an extra column reach RUNNING');
{

	is(transfer_mode($dest, 'defb'), 'binary', 'B3: defb streams in binary mode');
	is(transfer_mode($dest, 'deft'), 'text',   'B3: deft streams in text mode');
	src(<<'EOS');
INSERT INTO dflt_b SELECT g, 'v' || g FROM generate_series(1, 1000) g;
INSERT INTO dflt_b SELECT g, NULL FROM generate_series(1001, 1005) g;
INSERT INTO dflt_t SELECT g, 'v' || g, (enum_range(NULL::mood2))[g % 3 + 1] FROM generate_series(1, 1000) g;
INSERT INTO dflt_t SELECT g, NULL, NULL FROM generate_series(1001, 1005) g;
EOS
	my $vb = '(SELECT id, v FROM public.dflt_b)';
	my $vt = '(SELECT id, v, m FROM public.dflt_t)';
	ok(wait_synced($source, $dest, 'defb', [$vb], timeout => 90), 'B3: defb caught up');
	ok(wait_synced($source, $dest, 'deft', [$vt], timeout => 90), 'B3: deft caught up');
	compare_tables($source, $dest, [ $vb, $vt ], 'B3 source columns');
	foreach my $t ('dflt_b', 'dflt_t')
	{
		is( dst("SELECT count(*) FILTER (WHERE extra = 'filled by default' AND extra_n = 42) || '/' || count(*) FROM $t"),
			'1005/1005', "B3: $t: the DEFAULTs are filled for all rows (COPY and single inserts)");
	}
}

# B4: unique violation inside a COPY run
{
	dst("INSERT INTO public.cf VALUES (1500, 'local row in the way', 0)");
	my $logs_before = dst("SELECT coalesce(max(id), 0) FROM bunny.mirror_logs");
	src("INSERT INTO cf SELECT g, 'v' || g, g FROM generate_series(1, 3000) g");
	src("INSERT INTO cf2 VALUES (1, 'later transaction')");
	my $later_lsn = source_lsn($source);
	ok( poll_until(sub { (mirror_field($dest, 'conf', 'error_count') // 0) > 0 }, 60),
		'B4: conflicting row: error_count rises');
	like(mirror_field($dest, 'conf', 'error_message') // '', qr/duplicate key/,
		'B4: error_message names the unique violation');
	my $err = query_value($dest,
		"SELECT details->>'sqlstate' || '|' || coalesce(details->>'context', '') FROM bunny.logs('conf', 'ERROR', NULL, 1)") // '';
	like($err, qr/^23505\|.*cf/s, 'B4: ERROR line with SQLSTATE 23505 naming the table');
	ok( poll_until(sub { (mirror_field($dest, 'conf', 'error_count') // 0) >= 2 }, 30),
		'B4: the mirror keeps retrying');
	is(dst('SELECT count(*) FROM cf'), '1', 'B4: nothing of the failing transaction applied');
	is(dst('SELECT count(*) FROM cf2'), '0', 'B4: nothing after it applied');
	isnt(mirror_field($dest, 'conf', 'status'), 'FAILED', 'B4: not FAILED, retrying');
	dst('DELETE FROM public.cf WHERE id = 1500');
	dst("SELECT bunny.retry_mirror('conf')");
	is(wait_for_lsn($dest, 'conf', $later_lsn, 60000), 't',
		'B4: caught up after the conflicting row was removed');
	ok(wait_synced($source, $dest, 'conf', [ 'public.cf', 'public.cf2' ]),
		'B4: synced');
	compare_tables($source, $dest, [ 'public.cf', 'public.cf2' ], 'B4 after recovery');
	is(dst("SELECT v FROM cf WHERE id = 1500"), 'v1500', 'B4: the source row won');
	is( dst("SELECT rows_inserted FROM bunny.mirror_tables WHERE mirror = 'conf' AND source_table = 'public.cf'"),
		'3000', 'B4: rows_inserted counts the rows once, not the failed attempts');
	ok( poll_until(sub { (mirror_field($dest, 'conf', 'error_count') // '') eq '0' }, 30),
		'B4: error_count back to 0');
}

# ---------------------------------------------------------------------------
# C. Counters: bunny.mirror_tables against the source's own statistics
# ---------------------------------------------------------------------------

# The source's pg_stat_user_tables also counts the work of aborted
# (sub)transactions; %$aborted gives those amounts per table (ins, upd, del)
# where the test knows them, so that only committed changes are expected.
sub check_counters
{
	my ($mirror, $tables, $label, $aborted) = @_;
	foreach my $t (@$tables)
	{
		my @s = split /\|/, src("SELECT n_tup_ins || '|' || n_tup_upd || '|' || n_tup_del FROM pg_stat_user_tables WHERE relid = '$t'::regclass");
		my $ab = ($aborted && $aborted->{$t}) ? $aborted->{$t} : [ 0, 0, 0 ];
		my $s = join('/', map { $s[$_] - $ab->[$_] } 0 .. 2);
		my $d = query_value($dest,
			"SELECT rows_inserted || '/' || rows_updated || '/' || rows_deleted FROM bunny.mirror_tables WHERE mirror = '$mirror' AND source_table = '$t'");
		is($d // '(none)', $s,
			"$label: $t rows_inserted/updated/deleted equal the committed source changes");
	}
	return;
}
# let the source flush its statistics (backends flush at exit)
usleep(1_500_000);
check_counters('fold', [ grep { !/poke/ } @fold_tables ], 'C fold');
check_counters('txt', [ grep { !/poke/ } @txt_tables ], 'C txt');
check_counters('copyb', \@copyb_tables, 'C copyb');
check_counters('conf', [ 'public.cf', 'public.cf2' ], 'C conf');

# ---------------------------------------------------------------------------
# S. The same paths inside transactions the source streams while they run
#    (protocol v2; logical_decoding_work_mem lowered on the source): COPY
#    runs and folded UPDATEs inside streamed blocks, subtransactions rolled
#    back around them, and a transaction committing in the middle of a
#    streamed one (the worker falls back to whole transactions).
# ---------------------------------------------------------------------------

sub set_source_ldwm
{
	my ($v) = @_;
	src("ALTER SYSTEM SET logical_decoding_work_mem = '$v'");
	src('SELECT pg_reload_conf()');
	usleep(500_000);
	return;
}
sub stream_txns
{
	my ($m) = @_;
	return src("SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots "
		  . "WHERE slot_name = 'bunny_slot_$m'") + 0;
}
sub stream_starts
{
	my ($m) = @_;
	return query_value($dest,
		"SELECT count(*) FILTER (WHERE message LIKE 'streaming again%after their commit%') "
	  . "FROM bunny.mirror_logs WHERE mirror = '$m'") // 0;
}

src("INSERT INTO toasty SELECT g, big('init' || g), 0, 'init' FROM generate_series(41, 60) g");
ok(wait_synced($source, $dest, 'fold', ['public.toasty']), 'S: extra toasty rows replicated');

my %st_before = map { $_ => stream_txns($_) } qw(fold txt copyb);
my %starts_before = map { $_ => stream_starts($_) } qw(fold txt copyb);
set_source_ldwm('64kB');

# S1/S2: COPY runs in streamed transactions
src(types_insert_sql('cpb', 10001, 15000, 0));
src(types_insert_sql('cpt', 10001, 15000, 1));
src(mix_sql('ia', 'ib', 100000));
src(mix_sql('ia_t', 'ib_t', 100000));
src(boundary_sql('ic', 100000));
src(boundary_sql('ic_t', 100000));

# S3: subtransactions around COPY runs and buffered INSERTs
foreach my $p ([ 'ia', 'ib' ], [ 'ia_t', 'ib_t' ])
{
	my ($A, $B) = @$p;
	my $o = 200000;
	src(<<"EOS");
BEGIN;
INSERT INTO $A SELECT g, 's1', g FROM generate_series($o + 1, $o + 500) g;
SAVEPOINT a;
INSERT INTO $A SELECT g, 's2', g FROM generate_series($o + 501, $o + 1000) g;
UPDATE $A SET n = -n WHERE id BETWEEN $o + 400 AND $o + 600;
ROLLBACK TO a;
INSERT INTO $A SELECT g, 's3', g FROM generate_series($o + 1001, $o + 1500) g;
SAVEPOINT b;
UPDATE $A SET v = 'b' WHERE id BETWEEN $o + 1 AND $o + 50;
INSERT INTO $B SELECT g, 'sb', g FROM generate_series($o + 1, $o + 300) g;
RELEASE b;
SAVEPOINT c;
DELETE FROM $A WHERE id BETWEEN $o + 1001 AND $o + 1100;
INSERT INTO $A SELECT g, 'c', g FROM generate_series($o + 1001, $o + 1100) g;
ROLLBACK TO c;
UPDATE $A SET v = 'after c' WHERE id = $o + 1001;
INSERT INTO $B SELECT g, 'tail', g FROM generate_series($o + 301, $o + 700) g;
COMMIT;
BEGIN;
INSERT INTO $A SELECT g, 'outer', g FROM generate_series($o + 2001, $o + 2300) g;
SAVEPOINT d;
INSERT INTO $A SELECT g, 'inner', g FROM generate_series($o + 2301, $o + 2600) g;
RELEASE d;
INSERT INTO $A SELECT g, 'outer again', g FROM generate_series($o + 2601, $o + 2900) g;
SAVEPOINT e;
INSERT INTO $A SELECT g, 'rolled back', g FROM generate_series($o + 2901, $o + 3200) g;
ROLLBACK TO e;
INSERT INTO $A SELECT g, 'after e', g FROM generate_series($o + 2901, $o + 3000) g;
COMMIT;
BEGIN;
INSERT INTO $A SELECT g, 'will abort', g FROM generate_series($o + 5001, $o + 8000) g;
ROLLBACK;
EOS
}

# S4: folded UPDATEs, unchanged TOAST, key changes, unique chains and
# triggers inside streamed transactions (a filler makes each one large)
my $filler = "UPDATE many SET v = v + 1 WHERE id <= 2000";
src(one_txn($filler, toast_steps(40)));
src(one_txn($filler, cycle_steps(40)));
src(one_txn($filler, pk_steps(40)));
src(<<"EOS");
BEGIN;
$filler;
UPDATE many SET v = v + 1 WHERE id <= 3000;
SAVEPOINT a;
UPDATE many SET v = v + 1000 WHERE id <= 3000;
UPDATE many SET w = 'rolled back' WHERE id <= 100;
ROLLBACK TO a;
UPDATE many SET w = 'kept' WHERE id <= 50;
SAVEPOINT b;
UPDATE many SET v = v * 3 WHERE id BETWEEN 1 AND 10;
RELEASE b;
UPDATE many SET v = v + 1 WHERE id BETWEEN 5 AND 15;
SAVEPOINT c;
UPDATE toasty SET n = n + 1 WHERE id BETWEEN 51 AND 55;
UPDATE toasty SET big = big('in c') WHERE id = 52;
ROLLBACK TO c;
UPDATE toasty SET n = n + 7 WHERE id BETWEEN 51 AND 55;
COMMIT;
BEGIN;
$filler;
UPDATE uq SET u = 300 WHERE id = 6;
UPDATE uq SET u = 6 WHERE id = 7;
UPDATE uq SET u = 7 WHERE id = 6;
UPDATE uq2 SET u = 300 WHERE id = 6;
UPDATE uq2 SET u = 6 WHERE id = 7;
UPDATE uq2 SET u = 7 WHERE id = 6;
COMMIT;
BEGIN;
$filler;
DO \$\$ BEGIN
  FOR i IN 1 .. 20 LOOP
    UPDATE trg_always SET v = v + 1;
    UPDATE trg_replica SET v = v + 1;
  END LOOP;
END \$\$;
COMMIT;
EOS
my $trg_streamed = 20 * 5;

src(<<'EOS');
BEGIN;
UPDATE tn SET a = a + 1;
UPDATE tk SET v = v + 1;
INSERT INTO cnt_t SELECT g, g, 'happy' FROM generate_series(10001, 13000) g;
UPDATE cnt_t SET v = -v WHERE id BETWEEN 10001 AND 10500;
UPDATE tn SET b = NULL WHERE id < 5;
UPDATE tk SET v = v + 1, m = 'back\slash';
COMMIT;
EOS

ok(wait_synced($source, $dest, 'copyb', \@copyb_tables, timeout => 120),
	'S: copyb caught up');
ok(wait_synced($source, $dest, 'txt', \@txt_tables, timeout => 120),
	'S: txt caught up');
ok(wait_synced($source, $dest, 'fold', \@fold_tables, timeout => 120),
	'S: fold caught up');
compare_tables($source, $dest, \@copyb_tables, 'S copyb (streamed)');
compare_tables($source, $dest, \@txt_tables, 'S txt (streamed)');
compare_tables($source, $dest, \@fold_tables, 'S fold (streamed)');
foreach my $t ('cpb', 'cpt')
{
	(my $q = $probe) =~ s/TBL/$t/;
	is(dst($q), src($q), "S: $t counts of special values");
}
is(dst("SELECT count(*) FROM ia WHERE id > 200000"), src("SELECT count(*) FROM ia WHERE id > 200000"),
	'S3: rows of rolled-back subtransactions are not on the destination');
is(dst("SELECT n FROM trg_log WHERE tbl = 'trg_always'"), $trg_updates + $trg_streamed,
	'S4: ENABLE ALWAYS trigger saw every UPDATE of the streamed transaction');
is( dst("SELECT string_agg(id || ':' || coalesce(md5(big), 'NULL'), ',' ORDER BY id) FROM toasty"),
	src("SELECT string_agg(id || ':' || coalesce(md5(big), 'NULL'), ',' ORDER BY id) FROM toasty"),
	'S4: every TOASTed value equals the source');
foreach my $m (qw(fold txt copyb))
{
	my $n = stream_txns($m) - $st_before{$m};
	ok($n > 0, "S: the source streamed $n transactions in progress to $m");
	is(stream_starts($m), $starts_before{$m},
		"S: $m applied the streamed transactions as they came (no fallback)");
}

# S6: the simplest case for the counters: a savepoint rolled back inside a
# streamed transaction must not count
{
	my $before = dst("SELECT rows_inserted || '/' || rows_updated || '/' || rows_deleted FROM bunny.mirror_tables WHERE mirror = 'fold' AND source_table = 'public.cnt'");
	my ($i0, $u0, $d0) = split m{/}, $before;
	src(<<'EOS');
BEGIN;
INSERT INTO cnt SELECT g, 0 FROM generate_series(2001, 4000) g;
SAVEPOINT s;
UPDATE cnt SET v = 1 WHERE id BETWEEN 2001 AND 4000;
DELETE FROM cnt WHERE id BETWEEN 2001 AND 2100;
INSERT INTO cnt SELECT g, 0 FROM generate_series(5001, 7000) g;
ROLLBACK TO s;
UPDATE cnt SET v = 2 WHERE id = 2001;
COMMIT;
EOS
	ok(wait_synced($source, $dest, 'fold', ['public.cnt']), 'S6: caught up');
	is(stream_starts('fold'), $starts_before{fold}, 'S6: applied as it came (no fallback)');
	compare_tables($source, $dest, ['public.cnt'], 'S6');
	is(dst("SELECT rows_inserted || '/' || rows_updated || '/' || rows_deleted FROM bunny.mirror_tables WHERE mirror = 'fold' AND source_table = 'public.cnt'"),
		($i0 + 2000) . '/' . ($u0 + 1) . '/' . $d0,
		'S6: counters grew by 2000 inserted, 1 updated, 0 deleted (rolled-back savepoint not counted)');
}

# S5: another transaction commits while a streamed one is running: the
# worker has to give up applying the streamed one as it comes
{
	my $o = 300000;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[
			'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $source->connstr('postgres'),
			'-c', "BEGIN; INSERT INTO ia SELECT g, 'long', g FROM generate_series($o + 1, $o + 20000) g; "
			  . "SELECT pg_sleep(3); "
			  . "INSERT INTO ia SELECT g, 'long 2', g FROM generate_series($o + 20001, $o + 40000) g; "
			  . "UPDATE ia SET n = -1 WHERE id BETWEEN $o + 1 AND $o + 100; COMMIT;"
		],
		'<', \undef, '>', \$out, '2>', \$err);
	usleep(1_500_000);
	src("INSERT INTO ib SELECT g, 'committed meanwhile', g FROM generate_series($o + 1, $o + 500) g");
	src("UPDATE ib SET v = 'meanwhile 2' WHERE id = $o + 1");
	$h->finish;
	is($h->result(0), 0, 'S5: long streamed transaction committed on the source');
	diag("psql: $err") if $h->result(0);
	ok(wait_synced($source, $dest, 'copyb', \@copyb_tables, timeout => 120),
		'S5: copyb caught up');
	compare_tables($source, $dest, [ 'public.ia', 'public.ib' ], 'S5 interleaved commit');
	my $fallbacks = stream_starts('copyb') - $starts_before{copyb};
	note("S5: copyb fell back to whole transactions $fallbacks time(s)");
	ok($fallbacks >= 1, 'S5: the worker gave up the streamed transaction and restarted without streaming');
}

# aborted work the source counts: S3 (per A table: s2, c, e and the aborted
# transaction), S4 (toasty and many in savepoints rolled back), S6 (cnt)
my $ab_a = [ 500 + 100 + 300 + 3000, 201, 100 ];
check_counters('copyb', \@copyb_tables, 'S counters copyb', { 'public.ia' => $ab_a });
check_counters('txt', [ grep { !/poke/ } @txt_tables ], 'S counters txt', { 'public.ia_t' => $ab_a });
check_counters('fold', [ grep { !/poke/ } @fold_tables ], 'S counters fold',
	{ 'public.toasty' => [ 0, 6, 0 ], 'public.many' => [ 0, 3100, 0 ],
	  'public.cnt' => [ 2000, 2000, 100 ] });

# ---------------------------------------------------------------------------
# B5: SIGKILL of the worker while it COPYs a 300 000-row transaction, once
#     sent whole after its commit, once streamed while it runs
# ---------------------------------------------------------------------------
src("INSERT INTO bk SELECT 1, g, 'small' FROM generate_series(1, 10) g");
ok(wait_synced($source, $dest, 'bulk', ['public.bk']), 'B5: bulk warm-up synced');
my $txno = 1;
foreach my $mode ('whole', 'streamed')
{
	set_source_ldwm($mode eq 'whole' ? '1GB' : '4MB');
	my $st0 = stream_txns('bulk');
	my ($killed_at, $attempts) = (0, 0);
	while (!$killed_at && $attempts < 2)
	{
		$attempts++;
		$txno++;
		my ($out, $err) = ('', '');
		my $h = IPC::Run::start(
			[
				'psql', '-X', '-q', '-d', $source->connstr('postgres'), '-c',
				"INSERT INTO bk SELECT $txno, g, 'pad-' || g || repeat('p', 40) FROM generate_series(1, 300000) g"
			],
			'<', \undef, '>', \$out, '2>', \$err);
		poll_until(
			sub {
				my $r = query_value($dest,
					    "SELECT p.pid || ':' || p.tuples_processed || ':' || p.type FROM pg_stat_progress_copy p "
					  . "JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'bunnydb mirror bulk'",
					timeout => 10);
				if (defined $r && $r =~ /^(\d+):(\d+):(\w+)$/ && $2 >= 2000)
				{
					my ($pid, $rows, $type) = ($1, $2, $3);
					kill 'KILL', $pid;
					$killed_at = $rows;
					note("B5 ($mode): SIGKILL to mirror worker $pid after $rows rows of a COPY run (progress type $type)");
					return 1;
				}
				# already applied: nothing to interrupt any more
				my $c = query_value($dest, "SELECT count(*) FROM bk WHERE txno = $txno", timeout => 10);
				return defined $c && $c > 0 ? -1 : 0;
			},
			120, 0.02);
		$h->finish;
		is($h->result(0), 0, "B5 ($mode): the INSERT on the source saw no error") or diag("B5: insert failed: $err");
	}
	ok($killed_at, "B5 ($mode): the worker was killed in the middle of a COPY run ($killed_at rows in)");
	src("INSERT INTO bk SELECT 100 + $txno, g, 'after' FROM generate_series(1, 150) g");
	ok(wait_synced($source, $dest, 'bulk', ['public.bk'], timeout => 180),
		"B5 ($mode): caught up after the SIGKILL");
	compare_tables($source, $dest, ['public.bk'], "B5 ($mode) after SIGKILL");
	is( dst("SELECT count(*) || '/' || count(DISTINCT (txno, g)) FROM bk"),
		src("SELECT count(*) || '/' || count(DISTINCT (txno, g)) FROM bk"),
		"B5 ($mode): no lost and no duplicated rows");
	is( dst("SELECT rows_inserted FROM bunny.mirror_tables WHERE mirror = 'bulk' AND source_table = 'public.bk'"),
		src("SELECT count(*) FROM bk"), "B5 ($mode): rows_inserted exact across the crash");
	my $streamed = stream_txns('bulk') - $st0;
	if ($mode eq 'whole')
	{
		is($streamed, 0, 'B5 (whole): the source did not stream the transaction');
	}
	else
	{
		ok($streamed > 0, "B5 (streamed): the source streamed the transaction ($streamed)");
	}
}

# ---------------------------------------------------------------------------
# B6: a COPY run writes its buffered rows every 128 rows, not every 1000 as
#     CopyFrom does for binary input (the walsender must not stop while the
#     worker writes).  With a streamed transaction still open on the
#     source, the destination heap must already hold most of the rows the
#     COPY has taken in: its size grows although nothing is committed.  Rows
#     of ~300 bytes: a 64 kB stream block brings over 100 of them, so the
#     run starts in the first block (after the 100 rows of the INSERT
#     buffer) and goes on across the blocks; about 870 rows are streamed
#     before the commit (the last, partial block comes with it).
# ---------------------------------------------------------------------------
{
	set_source_ldwm('64kB');
	my $size0 = dst("SELECT pg_relation_size('bk')");
	my $open = $source->background_psql('postgres');
	$open->query_safe('BEGIN');
	$open->query_safe(
		"INSERT INTO bk SELECT 500, g, repeat('w', 300) FROM generate_series(1, 1000) g");
	my $taken = 0;
	poll_until(
		sub {
			my $r = query_value($dest,
				    "SELECT p.tuples_processed FROM pg_stat_progress_copy p "
				  . "JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'bunnydb mirror bulk'",
				timeout => 10);
			$taken = $r if defined $r && $r =~ /^\d+$/;
			return $taken >= 500 ? 1 : 0;
		},
		60, 0.05);
	ok($taken >= 500, "B6: the open transaction's rows reached a COPY run ($taken rows taken in)");
	my $grown = dst("SELECT pg_relation_size('bk')") - $size0;
	# 100 + 384 or more rows written (about 24 a page): 160 kB or more; with
	# a flush every 1000 rows only the 100 rows before the run (40 kB)
	ok($grown > 120 * 1024,
		"B6: the COPY run wrote its rows every 128 rows while the transaction was open ("
		  . int($grown / 1024) . " kB written)");
	$open->query_safe('COMMIT');
	$open->quit;
	ok(wait_synced($source, $dest, 'bulk', ['public.bk'], timeout => 120),
		'B6: caught up after the commit');
	is( dst("SELECT count(*) FROM bk WHERE txno = 500"), '1000',
		'B6: all 1000 rows of the streamed transaction applied once');
}

src('ALTER SYSTEM RESET logical_decoding_work_mem');
src('SELECT pg_reload_conf()');

# ---------------------------------------------------------------------------
# Final state
# ---------------------------------------------------------------------------

my @all = ([ 'fold', \@fold_tables ], [ 'txt', \@txt_tables ], [ 'copyb', \@copyb_tables ],
	[ 'conf', [ 'public.cf', 'public.cf2' ] ], [ 'bulk', ['public.bk'] ]);
foreach my $p (@all)
{
	my ($m, $tables) = @$p;
	ok(wait_synced($source, $dest, $m, $tables, timeout => 120), "final: $m caught up");
	ok( poll_until(
			sub {
				(query_value($dest,
						"SELECT status || '/' || error_count FROM bunny.mirrors WHERE name = '$m'") // '')
				  eq 'RUNNING/0';
			},
			60),
		"final: $m RUNNING with error_count 0");
}

my $dest_log = slurp_file($dest->logfile);
unlike($dest_log, qr/terminated by signal (?!9:)|PANIC|TRAP:/,
	'no unexpected crash of a destination process (only the SIGKILL of B5)');

note(sprintf('009_apply_paths ran %.1f s', time() - $t_start));
$dest->stop;
$source->stop;
done_testing();
