
# Copyright (c) bunnydb authors
#
# 005_operations: control operations on a streaming mirror.
#
#  1. resync under a write load on the source:
#     a. resync_table truncate: the table is emptied and copied from a new
#        snapshot, changes made during the copy are queued and applied, the
#        other tables keep streaming, the slot is never dropped;
#     b. resync_table swap of a table that a foreign key of another mapped
#        table points at and that owns a serial sequence: readers never see
#        it empty, the foreign key points at the new table, the sequence
#        still belongs to it and nextval works, its indexes keep their
#        names (one is not PostgreSQL's default);
#     c. resync_mirror swap: every table exchanged in one transaction,
#        readers on a concurrent session never see an empty table
#  2. control rules: a second operation while a resync runs fails with
#     55006 (retry, and a resync joining the one under way, are not refused:
#     README Operations); pause of a paused mirror and resume of a running
#     one are no-ops;
#     update_tables of a running mirror and retry_mirror of a paused one fail
#     with 55000
#  3. update_tables under load: one table added, one removed; the kept table
#     is not copied again, the removed one leaves the publication and its
#     destination table stays as it was, the added one ends equal; changing
#     the destination of a kept table is refused (22023)
#  4. slot dropped behind the mirror's back: FAILED with a clear message,
#     retry_mirror keeps it FAILED without creating a slot, resync_mirror
#     sets it up again with a new slot and ends equal
#  5. sync_schema (when the function exists): added, dropped, retyped
#     columns, default, NOT NULL, missing index; an excluded column is
#     neither added nor dropped; no data lost
#  6. drop_mirror while a resync is running: slot and publication are gone
#     on the source, the destination tables stay

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest qw(:DEFAULT sql_error);

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

# One assertion on the SQLSTATE (and optionally the message) of a call.
sub fails_with
{
	my ($sql, $state, $msg_re, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($st, $msg) = sql_error($dest, $sql);
	my $ok = is($st, $state, "$label: SQLSTATE $state");
	if (defined $msg_re)
	{
		like($msg, $msg_re, "$label: message");
	}
	diag("$label: got '$st' '$msg'") unless $ok;
	return $ok;
}

sub succeeds
{
	my ($sql, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($st, $msg) = sql_error($dest, $sql);
	return is("$st$msg", '', $label);
}

sub last_log_id
{
	my ($mirror) = @_;
	return query_value($dest,
		"SELECT coalesce(max(id), 0) FROM bunny.mirror_logs WHERE mirror = "
		  . sql_literal($mirror)) // 0;
}

sub pending_op
{
	my ($mirror) = @_;
	return query_value($dest,
		"SELECT coalesce(pending_op, '-') FROM bunny.mirror WHERE name = "
		  . sql_literal($mirror));
}

sub slot_name_of { my $m = shift; $m =~ s/-/_/g; return "bunny_slot_$m"; }
sub pub_name_of  { my $m = shift; $m =~ s/-/_/g; return "bunny_pub_$m"; }

sub slot_exists
{
	my ($mirror) = @_;
	return query_value($source,
		"SELECT count(*) FROM pg_replication_slots WHERE slot_name = "
		  . sql_literal(slot_name_of($mirror)));
}

sub pub_tables
{
	my ($mirror) = @_;
	return query_value($source,
		    "SELECT coalesce(string_agg(schemaname || '.' || tablename, ',' ORDER BY schemaname, tablename), '') "
		  . "FROM pg_publication_tables WHERE pubname = "
		  . sql_literal(pub_name_of($mirror)));
}

sub load_running { my ($l) = @_; return $l->{h}->pumpable ? 1 : 0; }

# Wait until the mirror is RUNNING, has no pending operation and every table
# is SYNCED. Meanwhile: check on the source that the mirror's slot exists,
# and count, from a concurrent session, the rows of the tables in
# $o{sample} (never 0 for swap).
sub watch_resync
{
	my ($mirror, %o) = @_;
	my %st = (
		samples => 0, zero => 0, reader_errors => 0,
		slot_checks => 0, slot_missing => 0, seen => {}, min => {});
	my $slot = sql_literal(slot_name_of($mirror));
	my $t0 = time();
	my $last = '';
	my $data_done_at;
	my $ok = poll_until(
		sub {
			foreach my $t (map { (@{ $o{sample} // [] }) } 1 .. 3)
			{
				my ($out, $err) = $o{reader}->query("SELECT count(*) FROM $t");
				if ($err)
				{
					$st{reader_errors}++;
					$st{last_reader_error} = $o{reader}->{stderr};
					$o{reader}->{stderr} = '';
					next;
				}
				$st{samples}++;
				$st{zero}++ if $out eq '0';
				$st{min}{$t} = $out
				  if !defined $st{min}{$t} || $out < $st{min}{$t};
			}
			my $s = query_value($source,
				"SELECT count(*) FROM pg_replication_slots WHERE slot_name = $slot");
			if (defined $s)
			{
				$st{slot_checks}++;
				$st{slot_missing}++ if $s eq '0';
			}
			my $r = query_value($dest,
				    "SELECT m.status || '|' || coalesce(m.pending_op, '-') || '|' || "
				  . "(SELECT count(*) FROM bunny.mirror_tables t WHERE t.mirror = m.name "
				  . "AND t.status <> 'SYNCED') FROM bunny.mirror m WHERE m.name = "
				  . sql_literal($mirror));
			return 0 unless defined $r;
			$last = $r;
			my ($status, $op, $left) = split /\|/, $r;
			$st{seen}{$status}++;
			if ($status eq 'RUNNING' && $left eq '0')
			{
				$st{data_done} = 1;
				$data_done_at //= time();
				return 1 if $op eq '-';
				# every table in, but the operation never ends
				if (time() - $data_done_at > ($o{op_grace} // 20))
				{
					$st{op_stuck} = $op;
					return 1;
				}
				return 0;
			}
			undef $data_done_at;
			return 0;
		},
		$o{timeout} // 120,
		0.05);
	$ok = 0 if $st{op_stuck};
	$st{done} = $ok;
	$st{secs} = time() - $t0;
	note(sprintf("watch_resync(%s): done=%d in %.1fs, statuses seen: %s, "
			  . "%d slot checks, %d reader samples",
			$mirror, $ok, $st{secs},
			join(',', map { "$_=$st{seen}{$_}" } sort keys %{ $st{seen} }),
			$st{slot_checks}, $st{samples}));
	if (!$ok)
	{
		diag("mirror $mirror did not finish its resync (last: $last)");
		dump_mirror_state($dest, $mirror);
	}
	return \%st;
}

# parse 'resynced table X: N rows copied, M queued change(s) applied'
sub resynced_counts
{
	my ($mirror, $after, $table, $verb) = @_;
	$verb //= 'resynced';
	my @l = log_lines($dest, $mirror, $after, "$verb table $table: %");
	return () unless @l;
	return $l[-1] =~ /: (\d+) rows copied, (\d+) queued change\(s\) applied/
	  ? ($1, $2)
	  : ();
}

sub changes_applied
{
	my ($mirror, $src) = @_;
	return table_field($dest, $mirror, $src,
		'rows_inserted + rows_updated + rows_deleted') // -1;
}

# ---------------------------------------------------------------------------
# Source schema and data
# ---------------------------------------------------------------------------

$source->safe_psql(
	'postgres', q{
-- mirror m1: resync
CREATE TABLE t_trunc (id int PRIMARY KEY, v int NOT NULL, t text);
INSERT INTO t_trunc SELECT g, 0, 'row ' || g FROM generate_series(1, 150000) g;
CREATE TABLE parent (id serial PRIMARY KEY, v int NOT NULL DEFAULT 0, t text);
INSERT INTO parent (v, t) SELECT 0, 'p' || g FROM generate_series(1, 60000) g;
-- a name PostgreSQL would not have chosen: a swap must keep it
CREATE INDEX parent_by_t ON parent (t);
CREATE TABLE child (id bigint PRIMARY KEY,
                    parent_id int NOT NULL REFERENCES parent (id),
                    n int NOT NULL);
CREATE INDEX child_parent_idx ON child (parent_id);
INSERT INTO child SELECT g, 1 + g % 60000, 0 FROM generate_series(1, 60000) g;
CREATE TABLE t_swap (id int PRIMARY KEY, v int NOT NULL, t text);
INSERT INTO t_swap SELECT g, 0, 'swap ' || g FROM generate_series(1, 100000) g;

-- mirror m2: update_tables
CREATE TABLE u_keep (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO u_keep SELECT g, 0 FROM generate_series(1, 100000) g;
CREATE TABLE u_rem (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO u_rem SELECT g, 0 FROM generate_series(1, 20000) g;
CREATE TABLE u_add (id int PRIMARY KEY, v int NOT NULL, t text);
INSERT INTO u_add SELECT g, 0, 'add ' || g FROM generate_series(1, 80000) g;

-- mirror m3: slot lost
CREATE TABLE s_a (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO s_a SELECT g, 0 FROM generate_series(1, 50000) g;
CREATE TABLE s_b (id int PRIMARY KEY, v text);
INSERT INTO s_b SELECT g, 'b' || g FROM generate_series(1, 5000) g;

-- mirror m5: drop during resync
CREATE TABLE big (id int PRIMARY KEY, pad text);
INSERT INTO big SELECT g, 'pad ' || g FROM generate_series(1, 1000000) g;

-- mirror m4: sync_schema
CREATE TABLE ss (id int PRIMARY KEY, a int, b text, c int, keep text NOT NULL);
INSERT INTO ss SELECT g, g, 'b' || g, g % 7, 'k' || g
  FROM generate_series(1, 5000) g;
CREATE TABLE ssx (id int PRIMARY KEY, secret text, v text);
INSERT INTO ssx SELECT g, 's' || g, 'v' || g FROM generate_series(1, 1000) g;

ANALYZE;
});

# load on every table of m1; parents are never deleted (foreign key)
my $load1 = q{
\set a random(1, 150000)
\set s random(1, 100000)
\set p random(1, 60000)
\set c random(1, 60000)
\set n random(1000001, 2000000000)
UPDATE t_trunc SET v = v + 1, t = 'upd' WHERE id = :a;
DELETE FROM t_trunc WHERE id = :a + 7;
INSERT INTO t_trunc VALUES (:n, -1, 'ins') ON CONFLICT (id) DO UPDATE SET v = t_trunc.v - 1;
UPDATE t_swap SET v = v + 1 WHERE id = :s;
DELETE FROM t_swap WHERE id = :s + 3;
INSERT INTO t_swap VALUES (:n, -1, 'ins') ON CONFLICT (id) DO NOTHING;
BEGIN;
INSERT INTO parent (v, t) VALUES (-1, 'new') RETURNING id AS newp \gset
INSERT INTO child VALUES (:n, :newp, 1) ON CONFLICT (id) DO NOTHING;
UPDATE parent SET v = v + 1 WHERE id = :p;
UPDATE child SET n = n + 1, parent_id = :p WHERE id = :c;
COMMIT;
DELETE FROM child WHERE id = :c + 11;
};

# load of m2: u_keep rows with id > 50000 are never touched
my $load2 = q{
\set k random(1, 49000)
\set r random(1, 20000)
\set a random(1, 80000)
\set n random(1000001, 2000000000)
UPDATE u_keep SET v = v + 1 WHERE id = :k;
DELETE FROM u_keep WHERE id = :k + 3;
INSERT INTO u_keep VALUES (:n, 0) ON CONFLICT (id) DO NOTHING;
UPDATE u_rem SET v = v + 1 WHERE id = :r;
INSERT INTO u_rem VALUES (:n, 0) ON CONFLICT (id) DO NOTHING;
UPDATE u_add SET v = v + 1 WHERE id = :a;
DELETE FROM u_add WHERE id = :a + 2;
INSERT INTO u_add VALUES (:n, 0, 'ins') ON CONFLICT (id) DO NOTHING;
};

my $load3 = q{
\set a random(1, 50000)
\set n random(1000001, 2000000000)
UPDATE s_a SET v = v + 1 WHERE id = :a;
DELETE FROM s_a WHERE id = :a + 1;
INSERT INTO s_b VALUES (:n, 'ins') ON CONFLICT (id) DO UPDATE SET v = 'upd';
};

my @m1_tables = qw(public.t_trunc public.parent public.child public.t_swap);

# ---------------------------------------------------------------------------
# 1. Resync under load
# ---------------------------------------------------------------------------

ok( create_mirror(
		$dest, 'm1', \@m1_tables,
		do_initial_snapshot => 'true',
		snapshot_num_rows_per_partition => 20000,
		snapshot_max_parallel_workers => 2,
		timeout => 180),
	'm1 created and RUNNING after its initial copy');
is( query_value($dest,
		"SELECT count(*) FROM bunny.mirror_tables WHERE mirror = 'm1' AND status <> 'SYNCED'"),
	'0', 'm1: every table SYNCED');
is( query_value($dest,
		"SELECT string_agg(pg_get_constraintdef(oid), '; ') FROM pg_constraint "
		  . "WHERE conrelid = 'public.child'::regclass AND contype = 'f'"),
	'FOREIGN KEY (parent_id) REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED',
	'm1: foreign key child -> parent on the destination');
is(query_value($dest, "SELECT pg_get_serial_sequence('public.parent', 'id')"),
	'public.parent_id_seq', 'm1: parent.id owns its serial sequence');

my $reader = $dest->background_psql('postgres', on_error_stop => 0);

# --- 1a. resync_table truncate ------------------------------------------------
{
	my $label = 'resync_table truncate under load';
	my $log0 = last_log_id('m1');
	my $oid_before = dst("SELECT 'public.t_trunc'::regclass::oid");
	my $swap_changes0 = changes_applied('m1', 'public.t_swap');
	my $load = start_pgbench_load($source, scripts => [$load1], secs => 12, rate => 300);
	usleep(1_500_000);

	succeeds("SELECT bunny.resync_table('m1', 'public.t_trunc', 'truncate')",
		"$label: request accepted");
	is(mirror_field($dest, 'm1', 'status'), 'RESYNCING', "$label: mirror RESYNCING at once");
	is(pending_op('m1'), 'resync', "$label: pending_op = resync");
	is(table_field($dest, 'm1', 'public.t_trunc', 'status'), 'RESYNCING',
		"$label: t_trunc RESYNCING");
	is(table_field($dest, 'm1', 'public.t_swap', 'status'), 'SYNCED',
		"$label: the other tables stay SYNCED");

	my $w = watch_resync('m1');
	ok($w->{done}, "$label: mirror back to RUNNING, every table SYNCED");
	ok($w->{slot_checks} > 0 && $w->{slot_missing} == 0,
		"$label: slot bunny_slot_m1 existed at each of $w->{slot_checks} checks");
	my $running = load_running($load);
	note("$label: pgbench still running when the resync finished: $running");
	ok(changes_applied('m1', 'public.t_swap') > $swap_changes0,
		"$label: CDC went on for the other tables");
	finish_source_load($load, $label, min_transactions => 50);

	ok(scalar(log_lines($dest, 'm1', $log0, 'resync requested (truncate)%')),
		"$label: log 'resync requested (truncate)'");
	ok(scalar(log_lines($dest, 'm1', $log0, 'copying %t_trunc% from a new snapshot at %')),
		"$label: log 'copying ... from a new snapshot at ...'");
	my ($rows, $queued) = resynced_counts('m1', $log0, 'public.t_trunc');
	ok(defined $rows && $rows > 100000,
		"$label: log 'resynced table public.t_trunc: N rows copied' (" . ($rows // 'none') . ')');
	ok(defined $queued && $queued > 0,
		"$label: changes made during the copy were queued and applied (" . ($queued // 'none') . ')');
	ok(scalar(log_lines($dest, 'm1', $log0, 'resync finished')), "$label: log 'resync finished'");
	is(dst("SELECT 'public.t_trunc'::regclass::oid"), $oid_before,
		"$label: same table (truncate does not replace it)");
	is(slot_exists('m1'), '1', "$label: slot still there");
	catch_up_compare($source, $dest, 'm1', \@m1_tables, $label);
}

# --- 1b0. a swap is refused up front while views or functions depend on the table
{
	my $label = 'resync swap with a dependent view';
	$dest->safe_psql('postgres', 'CREATE VIEW public.parent_v AS SELECT id FROM public.parent');
	my $log0 = last_log_id('m1');
	fails_with("SELECT bunny.resync_table('m1', 'public.parent', 'swap')", '2BP01',
		qr/cannot resync public\.parent with the swap strategy: views depend on it/, "$label: resync_table");
	fails_with("SELECT bunny.resync_mirror('m1', 'swap')", '2BP01',
		qr/views depend on it/, "$label: resync_mirror");
	my ($st, $out, $err) = $dest->psql('postgres',
		"SELECT bunny.resync_table('m1', 'public.parent', 'swap')");
	like($err, qr/DETAIL:\s+The swap replaces the table, and public\.parent_v would still use the old one/,
		"$label: detail names the view");
	like($err, qr/HINT:\s+Use the truncate strategy/, "$label: hint");
	is(table_field($dest, 'm1', 'public.parent', 'status'), 'SYNCED', "$label: nothing changed");
	is(dst("SELECT status FROM bunny.mirrors WHERE name = 'm1'"), 'RUNNING',
		"$label: mirror still RUNNING");
	my @requested = log_lines($dest, 'm1', $log0, 'resync requested%');
	is(scalar(@requested), 0, "$label: no resync requested");

	# functions whose SQL-standard body uses the table, or that take its
	# row type, would make DROP TABLE fail just the same
	$dest->safe_psql('postgres', <<'EOS');
CREATE FUNCTION public.parent_count() RETURNS bigint LANGUAGE sql
	BEGIN ATOMIC SELECT count(*) FROM public.parent; END;
CREATE FUNCTION public.parent_id(p public.parent) RETURNS int LANGUAGE sql
	AS 'SELECT p.id';
EOS
	($st, $out, $err) = $dest->psql('postgres',
		"\\set VERBOSITY verbose\nSELECT bunny.resync_table('m1', 'public.parent', 'swap')");
	like($err, qr/2BP01: cannot resync public\.parent with the swap strategy: views and functions depend on it/,
		"$label: views and functions named in the message");
	like($err, qr/DETAIL:\s+The swap replaces the table, and public\.parent_count\(\), public\.parent_id\(public\.parent\), public\.parent_v would still use the old one/,
		"$label: detail names the BEGIN ATOMIC function, the row-type function and the view");
	like($err, qr/HINT:\s+Use the truncate strategy, which keeps the table, or drop the views and functions first/,
		"$label: hint for both kinds");
	$dest->safe_psql('postgres', 'DROP VIEW public.parent_v');
	fails_with("SELECT bunny.resync_table('m1', 'public.parent', 'swap')", '2BP01',
		qr/cannot resync public\.parent with the swap strategy: functions depend on it/,
		"$label: functions alone are enough");
	$dest->safe_psql('postgres', 'DROP FUNCTION public.parent_count(); DROP FUNCTION public.parent_id(public.parent)');
	is(table_field($dest, 'm1', 'public.parent', 'status'), 'SYNCED', "$label: still nothing changed");
	@requested = log_lines($dest, 'm1', $log0, 'resync requested%');
	is(scalar(@requested), 0, "$label: still no resync requested");
}

# --- 1b. resync_table swap of a referenced table with a serial column -------
{
	my $label = 'resync_table swap under load';
	my $log0 = last_log_id('m1');
	my $oid_before = dst("SELECT 'public.parent'::regclass::oid");
	my $load = start_pgbench_load($source, scripts => [$load1], secs => 12, rate => 300);
	usleep(1_500_000);

	succeeds("SELECT bunny.resync_table('m1', 'public.parent', 'swap')",
		"$label: request accepted");
	is(table_field($dest, 'm1', 'public.parent', 'status'), 'RESYNCING',
		"$label: parent RESYNCING");
	my $w = watch_resync('m1', sample => ['public.parent'], reader => $reader);
	ok($w->{done}, "$label: mirror back to RUNNING, every table SYNCED");
	ok($w->{slot_checks} > 0 && $w->{slot_missing} == 0,
		"$label: slot existed at each of $w->{slot_checks} checks");
	ok($w->{samples} > 0, "$label: $w->{samples} reader samples of parent");
	is($w->{zero}, 0, "$label: a reader never saw parent empty (min "
		  . ($w->{min}{'public.parent'} // '?') . ')');
	is($w->{reader_errors}, 0, "$label: reader queries never failed")
	  or diag($w->{last_reader_error});
	note("$label: pgbench still running when the resync finished: " . load_running($load));
	finish_source_load($load, $label, min_transactions => 50);

	ok(scalar(log_lines($dest, 'm1', $log0, 'resync requested (swap)%')),
		"$label: log 'resync requested (swap)'");
	my ($rows, $queued) = resynced_counts('m1', $log0, 'public.parent');
	ok(defined $rows && $rows >= 60000,
		"$label: log 'resynced table public.parent' (" . ($rows // 'none') . ' rows, '
		  . ($queued // '?') . ' queued)');
	isnt(dst("SELECT 'public.parent'::regclass::oid"), $oid_before,
		"$label: parent is a new table");
	is( dst(
			"SELECT count(*) FROM pg_class WHERE relname IN ('parent_resync', 'parent_resync_old')"),
		'0', "$label: no leftover copy");
	is( query_value($dest,
			"SELECT string_agg(format('%s %s %s', pg_get_constraintdef(oid), condeferrable, "
			  . "confrelid = 'public.parent'::regclass), '; ') FROM pg_constraint "
			  . "WHERE conrelid = 'public.child'::regclass AND contype = 'f'"),
		'FOREIGN KEY (parent_id) REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED t t',
		"$label: the foreign key of child points at the new parent");
	is( query_value($dest,
			"SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_index i "
			  . "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'public.parent'::regclass"),
		'parent_by_t,parent_pkey', "$label: index names of parent restored (parent_by_t not parent_t_idx)");
	is(query_value($dest,
			"SELECT conname FROM pg_constraint WHERE conrelid = 'public.parent'::regclass AND contype = 'p'"),
		'parent_pkey', "$label: the primary key constraint has its name back with its index");
	is(query_value($dest, "SELECT pg_get_serial_sequence('public.parent', 'id')"),
		'public.parent_id_seq', "$label: the serial sequence belongs to the new parent.id");
	like(
		query_value($dest,
			"SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'public.parent'::regclass "
			  . "AND adnum = 1") // '',
		qr/^nextval\('parent_id_seq'::regclass\)$/,
		"$label: parent.id default still nextval");
	is(query_value($dest, "SELECT nextval('public.parent_id_seq') >= 60000"),
		't', "$label: nextval works on the sequence");
	catch_up_compare($source, $dest, 'm1', \@m1_tables, $label);
	# referential integrity on the destination
	is( dst(
			'SELECT count(*) FROM child c WHERE NOT EXISTS (SELECT 1 FROM parent p WHERE p.id = c.parent_id)'),
		'0', "$label: every child has its parent");
}

# --- 1c. resync_mirror swap ---------------------------------------------------
{
	my $label = 'resync_mirror swap under load';
	my $log0 = last_log_id('m1');
	my %oid_before = map { $_ => dst("SELECT '$_'::regclass::oid") } @m1_tables;
	my $load = start_pgbench_load($source, scripts => [$load1], secs => 14, rate => 300);
	usleep(1_500_000);

	succeeds("SELECT bunny.resync_mirror('m1', 'swap')", "$label: request accepted");
	is( query_value($dest,
			"SELECT count(*) FROM bunny.mirror_tables WHERE mirror = 'm1' AND status = 'RESYNCING'"),
		'4', "$label: all four tables RESYNCING");
	my $w = watch_resync('m1',
		sample => [ 'public.t_swap', 'public.t_trunc', 'public.child' ],
		reader => $reader);
	ok($w->{done}, "$label: mirror back to RUNNING, every table SYNCED");
	ok($w->{slot_checks} > 0 && $w->{slot_missing} == 0,
		"$label: slot existed at each of $w->{slot_checks} checks");
	ok($w->{samples} > 10, "$label: $w->{samples} reader samples");
	is($w->{zero}, 0, "$label: a reader never saw an empty table (minimums "
		  . join(', ', map { "$_=$w->{min}{$_}" } sort keys %{ $w->{min} }) . ')');
	is($w->{reader_errors}, 0, "$label: reader queries never failed")
	  or diag($w->{last_reader_error});
	note("$label: pgbench still running when the resync finished: " . load_running($load));
	finish_source_load($load, $label, min_transactions => 50);

	foreach my $t (@m1_tables)
	{
		my ($rows, $queued) = resynced_counts('m1', $log0, $t);
		ok(defined $rows, "$label: log 'resynced table $t' ("
			  . ($rows // 'none') . ' rows, ' . ($queued // '?') . ' queued)');
		isnt(dst("SELECT '$t'::regclass::oid"), $oid_before{$t},
			"$label: $t is a new table");
	}
	is( dst(
			"SELECT count(DISTINCT xmin::text) FROM pg_class WHERE oid IN ("
			  . join(', ', map { "'$_'::regclass" } @m1_tables) . ')'),
		'1', "$label: all tables exchanged in one transaction");
	is(dst("SELECT count(*) FROM pg_class WHERE relname LIKE '%\\_resync%'"),
		'0', "$label: no leftover copies");
	is( query_value($dest,
			"SELECT string_agg(format('%s %s', pg_get_constraintdef(oid), "
			  . "confrelid = 'public.parent'::regclass), '; ') FROM pg_constraint "
			  . "WHERE conrelid = 'public.child'::regclass AND contype = 'f'"),
		'FOREIGN KEY (parent_id) REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED t',
		"$label: foreign key child -> parent still there");
	is(query_value($dest, "SELECT pg_get_serial_sequence('public.parent', 'id')"),
		'public.parent_id_seq', "$label: serial sequence still owned by parent.id");
	is(query_value($dest, "SELECT nextval('public.parent_id_seq') >= 60000"),
		't', "$label: nextval works");
	ok(scalar(log_lines($dest, 'm1', $log0, 'resync finished')), "$label: log 'resync finished'");
	catch_up_compare($source, $dest, 'm1', \@m1_tables, $label);
	is( dst(
			'SELECT count(*) FROM child c WHERE NOT EXISTS (SELECT 1 FROM parent p WHERE p.id = c.parent_id)'),
		'0', "$label: every child has its parent");
}

# ---------------------------------------------------------------------------
# 2. Control rules
# ---------------------------------------------------------------------------
{
	my $label = 'control rules';
	succeeds("SELECT bunny.resync_table('m1', 'public.t_trunc', 'truncate')",
		"$label: resync_table started");
	my $op_at_start = pending_op('m1');
	is($op_at_start, 'resync', "$label: pending_op = resync");
	my $busy = qr/^another operation is already in progress$/;
	fails_with(qq{SELECT bunny.update_tables('m1', '["public.t_swap"]')}, '55006', $busy,
		"$label: update_tables during a resync");
	fails_with("SELECT bunny.resume_mirror('m1')", '55006', $busy,
		"$label: resume_mirror during a resync");
	# a resync never keeps these out (a failing one would wedge the mirror):
	# retry ends its backoff, a new resync joins it (017 pauses one)
	succeeds("SELECT bunny.retry_mirror('m1')", "$label: retry_mirror during a resync");
	succeeds("SELECT bunny.resync_table('m1', 'public.t_swap')",
		"$label: resync_table of another table during a resync joins it");
	is(pending_op('m1'), 'resync', "$label: one resync pending");

	my $w = watch_resync('m1');
	ok($w->{done}, "$label: the resync finished");
	is(table_field($dest, 'm1', 'public.t_swap', 'status'), 'SYNCED',
		"$label: the joined table was copied too");
	is(table_field($dest, 'm1', 'public.t_trunc', 'status'), 'SYNCED',
		"$label: the first table was copied");

	# no-ops
	succeeds("SELECT bunny.resume_mirror('m1')", "$label: resume_mirror of a RUNNING mirror");
	is(mirror_field($dest, 'm1', 'status'), 'RUNNING', "$label: still RUNNING");
	is(pending_op('m1'), '-', "$label: no pending operation after the no-op resume");
	fails_with(qq{SELECT bunny.update_tables('m1', '["public.t_swap"]')}, '55000',
		qr/^mirror must be paused to update tables$/,
		"$label: update_tables of a RUNNING mirror");
	succeeds("SELECT bunny.pause_mirror('m1')", "$label: pause_mirror");
	ok(wait_for_status($dest, 'm1', 'PAUSED', 60), "$label: PAUSED");
	succeeds("SELECT bunny.pause_mirror('m1')", "$label: pause_mirror of a PAUSED mirror");
	is(mirror_field($dest, 'm1', 'status'), 'PAUSED', "$label: still PAUSED");
	fails_with("SELECT bunny.retry_mirror('m1')", '55000', undef,
		"$label: retry_mirror of a PAUSED mirror");
	succeeds("SELECT bunny.resume_mirror('m1')", "$label: resume_mirror");
	ok(wait_for_status($dest, 'm1', 'RUNNING', 60), "$label: RUNNING again");
	src("UPDATE t_swap SET v = v + 1000 WHERE id = 50000");
	catch_up_compare($source, $dest, 'm1', \@m1_tables, $label);
}

# ---------------------------------------------------------------------------
# 3. update_tables under load
# ---------------------------------------------------------------------------
{
	my $label = 'update_tables';
	ok( create_mirror(
			$dest, 'm2', [ 'public.u_keep', 'public.u_rem' ],
			do_initial_snapshot => 'true',
			snapshot_num_rows_per_partition => 20000,
			timeout => 120),
		"$label: m2 created and RUNNING");
	my $xmins_sql =
	  "SELECT md5(string_agg(id || ':' || xmin::text, ',' ORDER BY id)) FROM u_keep WHERE id > 50000 AND id <= 100000";
	my $xmins0 = dst($xmins_sql);
	my $snap0 = table_field($dest, 'm2', 'public.u_keep', 'rows_snapshotted');
	my $relfile0 = dst("SELECT pg_relation_filenode('public.u_keep')");
	is($snap0, '100000', "$label: u_keep rows_snapshotted after the initial copy");
	is(pub_tables('m2'), 'public.u_keep,public.u_rem', "$label: publication before");

	my $load = start_pgbench_load($source, scripts => [$load2], secs => 14, rate => 300);
	usleep(1_500_000);

	succeeds("SELECT bunny.pause_mirror('m2')", "$label: pause");
	ok(wait_for_status($dest, 'm2', 'PAUSED', 60), "$label: m2 PAUSED");
	my $log0 = last_log_id('m2');

	fails_with(
		q{SELECT bunny.update_tables('m2', '[{"source_table": "public.u_keep", "destination_table": "public.u_keep_other"}, "public.u_rem"]')},
		'22023', undef, "$label: changing the destination of a kept table");
	is( query_value($dest,
			"SELECT string_agg(source_table || '=' || destination_table, ',' ORDER BY source_table) FROM bunny.mirror_tables WHERE mirror = 'm2'"),
		'public.u_keep=public.u_keep,public.u_rem=public.u_rem',
		"$label: the refused call changed nothing");

	succeeds(q{SELECT bunny.update_tables('m2', '["public.u_keep", "public.u_add"]')},
		"$label: add u_add, remove u_rem");
	is( query_value($dest,
			"SELECT string_agg(source_table || '=' || status, ',' ORDER BY source_table) FROM bunny.mirror_tables WHERE mirror = 'm2'"),
		'public.u_add=PENDING,public.u_keep=SYNCED',
		"$label: u_add PENDING, u_keep SYNCED, u_rem gone");
	is(mirror_field($dest, 'm2', 'status'), 'PAUSED', "$label: still PAUSED");
	my $rem_fp = fingerprint($dest, 'public.u_rem');

	succeeds("SELECT bunny.resume_mirror('m2')", "$label: resume");
	my $w = watch_resync('m2');
	ok($w->{done}, "$label: m2 RUNNING with every table SYNCED");
	ok( poll_until(sub { (pub_tables('m2') // '') eq 'public.u_add,public.u_keep' }, 30),
		"$label: publication on the source now has u_add and u_keep only")
	  or diag('publication tables: ' . (pub_tables('m2') // '(error)'));
	note("$label: pgbench still running when the added table was in: " . load_running($load));
	finish_source_load($load, $label, min_transactions => 50);

	# a change of the removed table after the load
	src("INSERT INTO u_rem VALUES (-1, -1); UPDATE u_rem SET v = -5 WHERE id = 1;");
	catch_up_compare($source, $dest, 'm2', [ 'public.u_keep', 'public.u_add' ], $label);

	my ($rows, $queued) = resynced_counts('m2', $log0, 'public.u_add', 'added');
	ok(defined $rows,
		"$label: log 'added table public.u_add' (" . ($rows // 'none') . ' rows, '
		  . ($queued // '?') . ' queued)');
	my @copy_lines = grep { /u_keep/ } log_lines($dest, 'm2', $log0, '%copying%');
	is(scalar(@copy_lines), 0, "$label: no 'copying' log line for u_keep after the update")
	  or diag(join("\n", @copy_lines));
	is(table_field($dest, 'm2', 'public.u_keep', 'rows_snapshotted'), $snap0,
		"$label: u_keep rows_snapshotted unchanged");
	is(dst($xmins_sql), $xmins0,
		"$label: untouched rows of u_keep keep their row versions (not copied again)");
	is(dst("SELECT pg_relation_filenode('public.u_keep')"), $relfile0,
		"$label: u_keep not truncated or replaced");

	is(query_value($dest, "SELECT to_regclass('public.u_rem') IS NOT NULL"),
		't', "$label: removed table stays on the destination");
	ok((query_value($dest, 'SELECT count(*) FROM u_rem') // 0) >= 20000,
		"$label: removed table keeps its rows");
	is(fingerprint($dest, 'public.u_rem'), $rem_fp,
		"$label: removed table received no change after the update");
	is(query_value($dest, 'SELECT count(*) FROM u_rem WHERE id = -1 OR v = -5'),
		'0', "$label: later source changes of the removed table not replicated");
	isnt(fingerprint($source, 'public.u_rem'), $rem_fp,
		"$label: (the source u_rem did change)");
}

# ---------------------------------------------------------------------------
# 4. Slot dropped behind the mirror's back
# ---------------------------------------------------------------------------
{
	my $label = 'lost slot';
	my @tables = qw(public.s_a public.s_b);
	ok( create_mirror(
			$dest, 'm3', \@tables,
			do_initial_snapshot => 'true',
			snapshot_num_rows_per_partition => 20000,
			timeout => 120),
		"$label: m3 created and RUNNING");
	src("UPDATE s_a SET v = 1 WHERE id <= 100");
	catch_up_compare($source, $dest, 'm3', \@tables, "$label: before");

	my $dropped = poll_until(
		sub {
			my ($ret, $out, $err) = $source->psql('postgres',
				"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
				  . "WHERE slot_name = 'bunny_slot_m3' AND active_pid IS NOT NULL;\n"
				  . "SELECT pg_drop_replication_slot('bunny_slot_m3');");
			return $ret == 0;
		},
		30, 0.1);
	ok($dropped, "$label: slot dropped on the source behind the mirror's back");

	# changes the stream cannot deliver any more
	src(
		"UPDATE s_a SET v = 2 WHERE id <= 1000; DELETE FROM s_a WHERE id > 49000; "
		  . "INSERT INTO s_b SELECT g, 'lost' FROM generate_series(5001, 5100) g;");

	ok(wait_for_status($dest, 'm3', 'FAILED', 60), "$label: mirror FAILED");
	like(mirror_field($dest, 'm3', 'error_message') // '',
		qr/^replication slot "bunny_slot_m3" no longer exists on the source/,
		"$label: error_message names the lost slot");

	succeeds("SELECT bunny.retry_mirror('m3')", "$label: retry_mirror accepted");
	my ($slot_seen, $checks) = (0, 0);
	my $t_end = time() + 6;
	while (time() < $t_end)
	{
		my $s = slot_exists('m3');
		$checks++;
		$slot_seen++ if defined $s && $s ne '0';
		usleep(200_000);
	}
	ok(wait_for_status($dest, 'm3', 'FAILED', 30), "$label: still FAILED after retry_mirror");
	like(mirror_field($dest, 'm3', 'error_message') // '',
		qr/^replication slot "bunny_slot_m3" no longer exists on the source/,
		"$label: same error_message after retry_mirror");
	is($slot_seen, 0, "$label: no slot created by the retry ($checks checks)");
	is(slot_exists('m3'), '0', "$label: still no slot on the source");

	my $log0 = last_log_id('m3');
	my $load = start_pgbench_load($source, scripts => [$load3], secs => 8, rate => 200);
	usleep(1_000_000);
	succeeds("SELECT bunny.resync_mirror('m3')", "$label: resync_mirror accepted");
	my $w = watch_resync('m3', timeout => 120, op_grace => 15);
	ok($w->{data_done}, "$label: m3 RUNNING again, every table SYNCED");
	ok($w->{done}, "$label: the resync ends (pending_op cleared)")
	  or diag("$label: pending_op still '" . ($w->{op_stuck} // '?')
		  . "' 15s after the mirror was RUNNING with every table SYNCED");
	is(slot_exists('m3'), '1', "$label: a new slot bunny_slot_m3 exists");
	finish_source_load($load, $label, min_transactions => 50);
	ok(scalar(log_lines($dest, 'm3', $log0, 'resync finished')), "$label: log 'resync finished'");
	# the mirror takes control operations again
	if (succeeds("SELECT bunny.pause_mirror('m3')", "$label: pause_mirror accepted afterwards"))
	{
		ok(wait_for_status($dest, 'm3', 'PAUSED', 30), "$label: m3 PAUSED");
		succeeds("SELECT bunny.resume_mirror('m3')", "$label: resume_mirror accepted");
		ok(wait_for_status($dest, 'm3', 'RUNNING', 30), "$label: m3 RUNNING");
	}
	is(mirror_field($dest, 'm3', 'error_message') // '', '', "$label: error_message cleared");
	catch_up_compare($source, $dest, 'm3', \@tables, "$label: after resync_mirror");
	is(query_value($dest, 'SELECT count(*) FROM s_a WHERE id > 49000'),
		query_value($source, 'SELECT count(*) FROM s_a WHERE id > 49000'),
		"$label: rows deleted while the slot was gone are gone");
	note("$label: resync log: " . join(' / ', log_lines($dest, 'm3', $log0, '%')));
}

# ---------------------------------------------------------------------------
# 5. sync_schema
# ---------------------------------------------------------------------------
my $has_sync_schema =
  query_value($dest, "SELECT to_regprocedure('bunny.sync_schema(text)') IS NOT NULL") // 'f';
SKIP:
{
	if ($has_sync_schema ne 't')
	{
		note('bunny.sync_schema(text) does not exist in the installed extension: '
			  . 'sync_schema checks skipped');
		skip('bunny.sync_schema(text) is not installed', 1);
	}
	my $label = 'sync_schema';
	ok( create_mirror(
			$dest, 'm4',
			q{["public.ss", {"source_table": "public.ssx", "exclude_columns": ["secret"]}]},
			do_initial_snapshot => 'true',
			timeout => 120),
		"$label: m4 created and RUNNING");
	my $cols_sql = '(SELECT id, a, c, keep, d FROM public.ss)';
	my $x_sql = '(SELECT id, v FROM public.ssx)';
	is(table_shape($dest, 'public.ss'),
		'id integer NOT NULL, a integer, b text, c integer, keep text NOT NULL / PK(id)',
		"$label: destination shape of ss before");
	is(table_shape($dest, 'public.ssx'), 'id integer NOT NULL, v text / PK(id)',
		"$label: destination shape of ssx before (secret excluded)");

	# schema changes on the source, without any row change afterwards (the
	# stream alone would not see them)
	src(
		q{ALTER TABLE ss ADD COLUMN d text DEFAULT 'dflt';
ALTER TABLE ss DROP COLUMN b;
ALTER TABLE ss ALTER COLUMN a TYPE bigint;
ALTER TABLE ss ALTER COLUMN c SET DEFAULT 42;
ALTER TABLE ss ALTER COLUMN c SET NOT NULL;
ALTER TABLE ss ALTER COLUMN keep DROP NOT NULL;
CREATE INDEX ss_a_idx ON ss (a);});
	# a destination column named like the excluded one: sync_schema must
	# not drop it
	dst('ALTER TABLE ssx ADD COLUMN secret text');
	my $log0 = last_log_id('m4');
	my $before = fingerprint($dest, '(SELECT id, a, c, keep FROM public.ss)');

	succeeds("SELECT bunny.sync_schema('m4')", "$label: accepted");
	my $done = poll_until(
		sub {
			(mirror_field($dest, 'm4', 'status') // '') eq 'RUNNING'
			  && (pending_op('m4') // '') eq '-';
		},
		60, 0.2);
	ok($done, "$label: m4 RUNNING without a pending operation")
	  or dump_mirror_state($dest, 'm4');

	is(table_shape($dest, 'public.ss'),
		'id integer NOT NULL, a bigint, c integer NOT NULL, keep text, d text / PK(id)',
		"$label: destination columns of ss match the source");
	is( query_value($dest,
			"SELECT string_agg(a.attname || '=' || pg_get_expr(d.adbin, d.adrelid), ',' ORDER BY a.attnum) "
			  . "FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
			  . "WHERE d.adrelid = 'public.ss'::regclass"),
		"c=42,d='dflt'::text", "$label: defaults match the source");
	is( query_value($dest,
			"SELECT count(*) FROM pg_index i WHERE i.indrelid = 'public.ss'::regclass "
			  . "AND pg_get_indexdef(i.indexrelid) LIKE '%USING btree (a)'"),
		'1', "$label: missing index on a created");
	is(table_shape($dest, 'public.ssx'), 'id integer NOT NULL, v text, secret text / PK(id)',
		"$label: ssx: excluded column neither added from the source nor dropped");
	is(fingerprint($dest, '(SELECT id, a, c, keep FROM public.ss)'), $before,
		"$label: no data lost in the kept columns");
	compare_tables($source, $dest, [ $cols_sql, $x_sql ], "$label: right after");

	my @ddl = log_lines($dest, 'm4', $log0, '%');
	my $all = join("\n", @ddl);
	note("$label: log lines:\n$all");
	my $info = query_value($dest,
		"SELECT count(*) FROM bunny.mirror_logs WHERE mirror = 'm4' AND id > $log0 AND level = 'INFO'");
	ok(($info // 0) >= 6, "$label: INFO log lines for the DDL (" . ($info // '?') . ')');
	like($all, qr/add[^\n]*\bd\b/i,     "$label: log mentions adding d");
	like($all, qr/drop[^\n]*\bb\b/i,    "$label: log mentions dropping b");
	like($all, qr/\ba\b[^\n]*bigint/i,  "$label: log mentions the type of a");
	like($all, qr/default/i,            "$label: log mentions a default");
	like($all, qr/not null/i,           "$label: log mentions NOT NULL");
	like($all, qr/ss_a_idx/i,           "$label: log mentions the index");
	unlike($all, qr/secret/i,           "$label: nothing done about the excluded column");

	# the stream goes on with the new shape
	src(
		q{INSERT INTO ss (id, a, keep) VALUES (900001, 9000000000, NULL);
UPDATE ss SET d = 'changed', a = a + 5000000000 WHERE id <= 100;
DELETE FROM ss WHERE id > 4900;
UPDATE ssx SET v = 'x' || id WHERE id <= 10;});
	catch_up_compare($source, $dest, 'm4', [ $cols_sql, $x_sql ], "$label: after more changes");
}

# ---------------------------------------------------------------------------
# 6. drop_mirror while a resync is running
# ---------------------------------------------------------------------------
{
	my $label = 'drop during resync';
	# m5: a table large enough for its copy to take a while; no initial copy
	ok( create_mirror(
			$dest, 'm5', ['public.big'],
			do_initial_snapshot => 'false',
			snapshot_num_rows_per_partition => 20000,
			snapshot_max_parallel_workers => 2,
			timeout => 60),
		"$label: m5 created and RUNNING");
	my $log0 = last_log_id('m5');
	my $load = start_pgbench_load($source, scripts => [$load1], secs => 6, rate => 300);
	succeeds("SELECT bunny.resync_mirror('m5', 'truncate')", "$label: resync_mirror started");
	ok( poll_until(
			sub {
				(table_field($dest, 'm5', 'public.big', 'rows_snapshotted') // 0) > 0;
			},
			60, 0.05),
		"$label: the copy is under way");
	is(pending_op('m5'), 'resync', "$label: resync still in progress");
	is(mirror_field($dest, 'm5', 'status'), 'RESYNCING', "$label: mirror RESYNCING");
	note("$label: rows copied before the drop: "
		  . (table_field($dest, 'm5', 'public.big', 'rows_snapshotted') // '?'));

	my $t0 = time();
	succeeds("SELECT bunny.drop_mirror('m5')", "$label: drop_mirror succeeds");
	note(sprintf('%s: drop_mirror took %.1fs', $label, time() - $t0));
	is(query_value($dest, "SELECT count(*) FROM bunny.mirrors WHERE name = 'm5'"),
		'0', "$label: mirror gone from bunny.mirrors");
	is(query_value($dest, "SELECT count(*) FROM bunny.mirror_tables WHERE mirror = 'm5'"),
		'0', "$label: its tables gone from bunny.mirror_tables");
	is(slot_exists('m5'), '0', "$label: slot bunny_slot_m5 dropped on the source");
	is(query_value($source, "SELECT count(*) FROM pg_publication WHERE pubname = 'bunny_pub_m5'"),
		'0', "$label: publication bunny_pub_m5 dropped on the source");
	ok( poll_until(sub { !worker_pids($dest, 'm5') }, 30),
		"$label: no worker of m5 left on the destination");
	ok( poll_until(
			sub {
				(query_value($source,
						"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'bunnydb:m5%'")
					  // '') eq '0';
			},
			30),
		"$label: no connection of m5 left on the source");
	ok( poll_until(
			sub {
				(query_value($source,
						"SELECT count(*) FROM pg_replication_slots WHERE slot_name NOT IN "
						  . "('bunny_slot_m1', 'bunny_slot_m2', 'bunny_slot_m3', 'bunny_slot_m4')")
					  // '') eq '0';
			},
			30),
		"$label: no other (temporary) slot left on the source")
	  or diag(query_value($source, 'SELECT slot_name, temporary, active_pid FROM pg_replication_slots'));
	is(query_value($dest, "SELECT to_regclass('public.big') IS NOT NULL"),
		't', "$label: destination table stays");
	finish_source_load($load, $label);

	# the other mirrors are not affected
	is(mirror_field($dest, 'm1', 'status'), 'RUNNING', "$label: m1 still RUNNING");
	is(mirror_field($dest, 'm2', 'status'), 'RUNNING', "$label: m2 still RUNNING");
	src('UPDATE u_keep SET v = v + 1 WHERE id = 77777');
	catch_up_compare($source, $dest, 'm1', \@m1_tables, "$label: m1 afterwards");
	catch_up_compare($source, $dest, 'm2', [ 'public.u_keep', 'public.u_add' ], "$label: m2 afterwards");
}

$reader->quit;

note(sprintf('005_operations ran in %.0f s', time() - $t_start));
done_testing();
