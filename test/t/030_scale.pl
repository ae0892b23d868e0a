# Copyright (c) bunnydb authors
#
# 030_scale: correctness at scale, not speed (bench/run.sh --only
# tables / --only mirrors measures the time; nothing here is timed).
#
#  1. One mirror of 1 000 source tables (3 rows each, a primary key and a
#     secondary index on every table, 100 foreign keys between tables, one
#     ON DELETE CASCADE, and tables of other shapes: unique constraint,
#     serial and column defaults, composite key, CHECK, REPLICA IDENTITY
#     FULL without key, identity column, unique expression index, a name
#     that needs quoting) created with the initial copy: it reaches
#     RUNNING with every table SYNCED; every destination table equals its
#     source (one query per side: count and md5 of the ordered rows of
#     each table); columns, defaults, indexes, primary keys, unique, check
#     and foreign keys (DEFERRABLE INITIALLY DEFERRED, README "Table
#     mappings") equal the source's.  Then CDC to a sample of the tables,
#     one transaction across all 1 000 tables and one across 100 with a
#     rolled-back savepoint: applied exactly once (non-idempotent updates,
#     keyless rows, exact rows_inserted / rows_updated / rows_deleted
#     sums of bunny.mirror_tables).  drop_mirror then removes its slot.
#     One more table, of another schema, is set up last; the destination
#     crashes while setup waits at it: the 1 000 tables are committed by
#     then (setup commits in batches), and setup run again after the
#     crash completes the mirror without creating or losing anything.
#  2. 10 mirrors of 3 tables each from one source database into one
#     destination database, created with the initial copy while a pgbench
#     load writes to every mirror's tables (and to all of them in one
#     transaction); the load must see no error.  All reach RUNNING, all
#     catch up (wait_for_lsn) every few seconds while the load runs, and
#     every table equals the source at the end; no mirror logged an ERROR
#     or lacked a worker for its copy (README "Troubleshooting").
#
# Destination sized as README "Destination database" says for 10 mirrors
# copying at once: max_worker_processes for the launcher, a scan worker,
# 10 mirror workers and their snapshot workers (3 each here: one per
# table, so 56 leaves room to spare); max_replication_slots
# (replication origins) above the number of mirrors.  Both sides get
# max_locks_per_transaction = 1024: the source publishes the 1 000
# tables in one transaction (the destination creates them in batches).

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
	source_conf => "max_replication_slots = 20\nmax_wal_senders = 20\n"
	  . "max_connections = 80\nmax_locks_per_transaction = 1024\n",
	dest_conf => "max_worker_processes = 56\nmax_replication_slots = 20\n"
	  . "max_locks_per_transaction = 1024\nbunny.retry_backoff_max = 5s\n");

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# One line "<table> <rows>|<md5 of the rows in order>" per ordinary table
# of $schema on $node, in one query (query_to_xml runs the per-table
# query inside it); a hash table => fingerprint, or undef on error.
sub schema_fingerprints
{
	my ($node, $schema) = @_;
	my $out = query_value(
		$node, qq{
SELECT c.relname || ' ' || (xpath('/row/f/text()', query_to_xml(format(
         'SELECT count(*) || ''|'' || coalesce(md5(string_agg(t::text, chr(10) ORDER BY t::text)), ''-'') AS f FROM %s t',
         c.oid::regclass), false, true, '')))[1]::text
  FROM pg_class c
 WHERE c.relnamespace = '$schema'::regnamespace AND c.relkind IN ('r', 'p')
 ORDER BY c.relname},
		timeout => 300);
	return undef unless defined $out;
	my %fp;
	foreach my $l (split /\n/, $out)
	{
		my ($t, $f) = $l =~ /^(.*) (\S+)$/ or return undef;
		$fp{$t} = $f;
	}
	return \%fp;
}

# Compare the fingerprints of every table of $schema on both sides: one
# is() on the number of tables, one ok() that all are equal (naming the
# first differing tables if not).
sub compare_schema
{
	my ($schema, $ntables, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $s = schema_fingerprints($source, $schema) // {};
	my $d = schema_fingerprints($dest, $schema) // {};
	is(scalar(keys %$s), $ntables, "$label: $ntables tables on the source");
	my @diff = grep { ($d->{$_} // '(missing)') ne $s->{$_} } sort keys %$s;
	push @diff, grep { !exists $s->{$_} } sort keys %$d;
	ok(!@diff,
		"$label: all " . scalar(keys %$s) . " destination tables equal their source")
	  or diag(scalar(@diff) . ' tables differ; first ones: '
		  . join('; ', map { "$_ source=" . ($s->{$_} // '(missing)') . ' dest=' . ($d->{$_} // '(missing)') } @diff[ 0 .. ($#diff < 9 ? $#diff : 9) ]));
	return !@diff;
}

# ok() that a catalog query gives the same lines on both sides; if not,
# the first lines found on one side only are shown.  Returns the number
# of source lines.
sub same_catalog
{
	my ($sql, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $s = query_value($source, $sql, timeout => 300);
	my $d = query_value($dest, $sql, timeout => 300);
	my @s = split /\n/, ($s // '(query failed)');
	my @d = split /\n/, ($d // '(query failed)');
	my %n;
	$n{$_}++ foreach @s;
	$n{$_}-- foreach @d;
	my @only_s = grep { $n{$_} > 0 } sort keys %n;
	my @only_d = grep { $n{$_} < 0 } sort keys %n;
	ok(!@only_s && !@only_d, "$label (" . scalar(@s) . ' lines)')
	  or diag(scalar(@only_s) . ' lines only on the source, first ones: '
		  . join('; ', @only_s[ 0 .. ($#only_s < 9 ? $#only_s : 9) ]) . "\n"
		  . scalar(@only_d) . ' lines only on the destination, first ones: '
		  . join('; ', @only_d[ 0 .. ($#only_d < 9 ? $#only_d : 9) ]));
	return scalar(@s);
}

# ---------------------------------------------------------------------------
# 1. One mirror of 1 000 tables
# ---------------------------------------------------------------------------

my $N = 1000;

# table $i's name in SQL syntax; one needs quoting
sub tname
{
	my ($i) = @_;
	return $i == 999 ? 'scale."Tab 999"' : sprintf('scale.t%04d', $i);
}

# table $i's extra columns and constraints by its shape, and the value
# expressions of those columns for row g (undef: the default)
sub shape
{
	my ($i) = @_;
	my $s = $i % 100;
	my %sh = (cols => '', pk => 'PRIMARY KEY (id)', ins => '', insv => '',
		post => '');
	if ($i % 10 == 0)
	{
		my $del = $s == 50 ? ' ON DELETE CASCADE' : '';
		$sh{cols} = ', ref int REFERENCES ' . tname($i - 1) . "(id)$del";
		$sh{ins}  = ', ref';
		$sh{insv} = ', g';
		$sh{child} = 1;
	}
	elsif ($s == 1)
	{
		$sh{cols} = ', code text UNIQUE';
		$sh{ins}  = ', code';
		$sh{insv} = ", 'c' || g";
	}
	elsif ($s == 2)
	{
		$sh{cols} = ", s serial, qty int NOT NULL DEFAULT 7, created date DEFAULT '2001-02-03'";
	}
	elsif ($s == 3)
	{
		$sh{pk} = 'PRIMARY KEY (id, grp)';
	}
	elsif ($s == 4)
	{
		$sh{cols} = ', CONSTRAINT grp_nonneg CHECK (grp >= 0)';
	}
	elsif ($s == 5)
	{
		$sh{pk}   = '';
		$sh{post} = 'ALTER TABLE ' . tname($i) . " REPLICA IDENTITY FULL;\n";
	}
	elsif ($s == 6)
	{
		$sh{cols} = ", j jsonb DEFAULT '{\"k\": 1}', amount numeric(10,2) DEFAULT 0.5";
	}
	elsif ($s == 7)
	{
		$sh{cols} = ', n bigint GENERATED ALWAYS AS IDENTITY';
	}
	elsif ($s == 8)
	{
		$sh{post} = 'CREATE UNIQUE INDEX ON ' . tname($i) . " (lower(v));\n";
	}
	return \%sh;
}

{
	my $ddl = "CREATE SCHEMA scale;\n";
	foreach my $i (1 .. $N)
	{
		my $t  = tname($i);
		my $sh = shape($i);
		my $pk = $sh->{pk} ne '' ? ", $sh->{pk}" : '';
		$ddl .= "CREATE TABLE $t (id int NOT NULL, grp int NOT NULL, v text$sh->{cols}$pk);\n";
		$ddl .= "CREATE INDEX ON $t (grp);\n";
		$ddl .= $sh->{post};
		$ddl .= "INSERT INTO $t (id, grp, v$sh->{ins}) SELECT g, g, 't$i row ' || g$sh->{insv} FROM generate_series(1, 3) g;\n";
	}
	$source->safe_psql('postgres', $ddl);
}
is(src("SELECT count(*) FROM pg_class WHERE relnamespace = 'scale'::regnamespace AND relkind = 'r'"),
	$N, "source has $N tables");
is(src("SELECT count(*) FROM pg_constraint WHERE connamespace = 'scale'::regnamespace AND contype = 'f'"),
	'100', 'source has 100 foreign keys');

# One more table, of another schema: the catalog orders a mirror's tables
# by schema and name, so setup comes to it after the 1 000 of schema
# scale.  A session holds an uncommitted CREATE SCHEMA of that name on the
# destination, so setup's own CREATE SCHEMA IF NOT EXISTS waits there;
# the destination then crashes.
$source->safe_psql('postgres',
	"CREATE SCHEMA scale_late; CREATE TABLE scale_late.t (id int PRIMARY KEY, v text); "
	  . "INSERT INTO scale_late.t SELECT g, 'late ' || g FROM generate_series(1, 5) g");
my $blocker = $dest->background_psql('postgres');
$blocker->query_safe('BEGIN; CREATE SCHEMA scale_late');

my @all = ((map { tname($_) } 1 .. $N), 'scale_late.t');
my $t_create = time();
ok(create_mirror($dest, 'scale1k', \@all, do_initial_snapshot => 'true', wait => 0),
	'create_mirror of ' . ($N + 1) . ' tables');

# Setup commits the tables it creates in batches (README "Limitations",
# "Thousands of tables"): while it waits at the last table, the other
# 1 000 are there for any session to see, each with its catalog rows.
ok( poll_until(
		sub {
			return dst("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bunnydb mirror scale1k' "
				  . "AND wait_event_type = 'Lock'") eq '1';
		},
		120),
	'setup waits for the schema of the last table');
is(dst("SELECT count(*) FROM pg_class WHERE relnamespace = 'scale'::regnamespace AND relkind = 'r'")
	  . ' ' . dst("SELECT count(*) FROM bunny.mirror_table WHERE created_by_bunny"),
	"$N $N",
	'meanwhile the 1 000 tables of schema scale are committed, each recorded as created by bunnydb');

# A crash now: setup runs again, finds those tables, creates the rest.
$dest->stop('immediate');
eval { $blocker->quit; };
$dest->start;
ok(wait_for_status($dest, 'scale1k', 'RUNNING', 240),
	'after a crash in the middle of setup, the mirror reached RUNNING');
note(sprintf('1 000 tables: create_mirror to RUNNING in %.1f s, with a crash', time() - $t_create));
is(dst("SELECT count(*) FROM bunny.logs('scale1k', NULL, 'setup started')"),
	'2', 'setup ran twice');
is(mirror_field($dest, 'scale1k', 'phase'), 'CDC', 'phase CDC');
is(dst("SELECT count(*) || ' ' || count(*) FILTER (WHERE status = 'SYNCED') || ' ' || sum(rows_snapshotted) FROM bunny.mirror_tables WHERE mirror = 'scale1k'"),
	($N + 1) . ' ' . ($N + 1) . ' ' . (3 * $N + 5),
	'bunny.mirror_tables: ' . ($N + 1) . ' tables, all SYNCED, ' . (3 * $N + 5) . ' rows copied');
{
	my $pub = mirror_field($dest, 'scale1k', 'publication_name') // '';
	is(src('SELECT count(*) FROM pg_publication_tables WHERE pubname = ' . sql_literal($pub)),
		$N + 1, "the source publication ($pub) has the " . ($N + 1) . ' tables');
}

compare_schema('scale', $N, 'after the initial copy');
compare_schema('scale_late', 1, 'the table set up after the crash');
is(dst("SELECT count(*) FROM pg_indexes WHERE schemaname = 'scale_late'"), '1',
	'its primary key was made after the copy');

# columns: type, NOT NULL, default (identity columns are GENERATED BY
# DEFAULT on the destination, README "Table mappings": compared apart)
my $cols_sql = q{
SELECT format('%s.%s %s%s%s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
              CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
              coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), ''))
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = 'scale'::regnamespace AND c.relkind = 'r'
   AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY c.relname, a.attnum};
same_catalog($cols_sql, 'columns, types, NOT NULL and defaults equal');
is(dst("SELECT string_agg(c.relname || '.' || a.attname || ' ' || a.attidentity::text, ', ' ORDER BY c.relname) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid WHERE c.relnamespace = 'scale'::regnamespace AND a.attidentity <> ''"),
	join(', ', map { sprintf('t%04d.n d', $_) } grep { $_ % 100 == 7 } 1 .. $N),
	'identity columns are GENERATED BY DEFAULT on the destination');

# every index (primary keys, unique and secondary ones, the expression
# index), by name and definition
my $idx_sql = q{
SELECT tablename || ': ' || indexdef FROM pg_indexes
 WHERE schemaname = 'scale' ORDER BY tablename, indexname};
my $nidx = same_catalog($idx_sql, 'every index equal (name and definition)');
is($nidx, 2 * $N - 10 + 10 + 10,
	'index count: a primary key and a secondary index per table, less 10 keyless tables, '
	  . 'plus 10 unique constraints and 10 unique expression indexes');

# constraints: the same on both sides, foreign keys made DEFERRABLE
# INITIALLY DEFERRED on the destination
my $con_sql = q{
SELECT format('%s %s %s %s', conrelid::regclass, conname, contype,
              regexp_replace(pg_get_constraintdef(oid), ' DEFERRABLE INITIALLY DEFERRED$', ''))
  FROM pg_constraint
 WHERE connamespace = 'scale'::regnamespace
 ORDER BY conrelid::regclass::text, conname};
my $ncon = same_catalog($con_sql,
	'every primary key, unique, check and foreign key constraint equal');
is($ncon, (1000 - 10) + 10 + 10 + 100,
	'constraint count: 990 primary keys, 10 unique, 10 check, 100 foreign keys');
is(dst("SELECT count(*) || ' ' || count(*) FILTER (WHERE condeferrable AND condeferred) FROM pg_constraint WHERE connamespace = 'scale'::regnamespace AND contype = 'f'"),
	'100 100', '100 foreign keys on the destination, all DEFERRABLE INITIALLY DEFERRED');
is(dst("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'scale.t0050'::regclass AND contype = 'f'"),
	'FOREIGN KEY (ref) REFERENCES scale.t0049(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED',
	'ON DELETE CASCADE kept');

# --- CDC on a sample of the tables -----------------------------------------

my $counts_sql = q{SELECT sum(rows_inserted) || '/' || sum(rows_updated) || '/' || sum(rows_deleted)
  FROM bunny.mirror_tables WHERE mirror = 'scale1k'};
my ($ins0, $upd0, $del0) = split m{/}, dst($counts_sql);
my ($ins, $upd, $del) = (0, 0, 0);

# 1a. single-table transactions on a sample: tables 1..9 and 49..50 of
# every hundred (every shape, parents and children), one statement each
my @sample = grep { my $s = $_ % 100; $s <= 9 || $s == 49 || $s == 50 } 1 .. $N;
{
	my $sql = '';
	foreach my $i (@sample)
	{
		my $t  = tname($i);
		my $sh = shape($i);
		$sql .= "INSERT INTO $t (id, grp, v) SELECT g, g, 'cdc $i/' || g FROM generate_series(100, 102) g;\n";
		$ins += 3;
		# not idempotent: applied twice, it would differ
		$sql .= "UPDATE $t SET v = v || '+', grp = grp + 10 WHERE id = 1;\n";
		$upd += 1;
		$sql .= "UPDATE $t SET v = v || '+' WHERE id IN (1, 101);\n";
		$upd += 2;
		if ($sh->{child})
		{
			$sql .= "UPDATE $t SET ref = 1 WHERE id = 3;\n";
			$upd += 1;
		}
		# rows 1..3 of a parent are referenced by its child
		$sql .= "DELETE FROM $t WHERE id = " . ($i % 10 == 9 ? 102 : 2) . ";\n";
		$del += 1;
	}
	# the cascade: deleting t0049 row 1 deletes t0050 rows 1 and 3 (ref = 1)
	$sql .= "DELETE FROM scale.t0049 WHERE id = 1;\n";
	$del += 3;
	$source->safe_psql('postgres', $sql);
}
is(src('SELECT count(*) FROM scale.t0050 WHERE id IN (1, 3)'), '0', 'source: the cascade deleted 2 child rows');

# 1b. one transaction across all 1 000 tables: a row in each, children
# referencing the row of their parent inserted earlier in it
{
	my $sql = "BEGIN;\n";
	foreach my $i (1 .. $N)
	{
		my $t = tname($i);
		my $ref = shape($i)->{child} ? ', ref' : '';
		my $refv = $ref ? ', 200' : '';
		$sql .= "INSERT INTO $t (id, grp, v$ref) VALUES (200, 200, 'one transaction'$refv);\n";
		$ins++;
	}
	$sql .= "COMMIT;\n";
	$source->safe_psql('postgres', $sql);
}

# 1c. one transaction across 100 tables with a savepoint rolled back:
# the rolled-back changes must not arrive
{
	my $sql = "BEGIN;\n";
	foreach my $i (grep { $_ % 10 == 3 } 1 .. $N)
	{
		my $t = tname($i);
		$sql .= "UPDATE $t SET v = v || ' tx2' WHERE id = 200;\n";
		$upd++;
		$sql .= "INSERT INTO $t (id, grp, v) VALUES (300, 300, 'tx2');\n";
		$ins++;
	}
	$sql .= "SAVEPOINT s;\n";
	foreach my $i (grep { $_ % 10 == 3 } 1 .. $N)
	{
		my $t = tname($i);
		$sql .= "INSERT INTO $t (id, grp, v) VALUES (400, 400, 'rolled back');\n";
		$sql .= "DELETE FROM $t WHERE id = 300;\n";
	}
	$sql .= "ROLLBACK TO SAVEPOINT s;\n";
	foreach my $i (grep { $_ % 10 == 3 } 1 .. $N)
	{
		my $t = tname($i);
		$sql .= "DELETE FROM $t WHERE id = 3;\n";
		$del++;
	}
	$sql .= "COMMIT;\n";
	$source->safe_psql('postgres', $sql);
}

is(wait_for_lsn($dest, 'scale1k', source_lsn($source), 120000), 't',
	'CDC: the mirror caught up (wait_for_lsn)');
compare_schema('scale', $N, 'after CDC');
is(dst($counts_sql), ($ins0 + $ins) . '/' . ($upd0 + $upd) . '/' . ($del0 + $del),
	"CDC: each change counted once in bunny.mirror_tables ($ins inserts, $upd updates, $del deletes)");
is(dst("SELECT count(*) FROM scale.t0005 WHERE id = 200"), '1',
	'keyless table: the row of the 1 000-table transaction arrived once');
is(dst("SELECT count(*) FROM scale.t0013 WHERE id = 400"), '0',
	'rolled-back savepoint: its rows did not arrive');
is(dst("SELECT count(*) FROM bunny.logs('scale1k', 'ERROR')"), '0', 'scale1k logged no ERROR');
is(mirror_field($dest, 'scale1k', 'status'), 'RUNNING', 'scale1k still RUNNING');

# the 1 000-table mirror is done: its walsender would decode part 2's load too
dst("SELECT bunny.drop_mirror('scale1k')");
is(src("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '%scale1k%'"),
	'0', 'drop_mirror removed the slot of the 1 000-table mirror');
note(sprintf('part 1 took %.0f s', time() - $t_start));

# ---------------------------------------------------------------------------
# 2. 10 mirrors under a steady write load
# ---------------------------------------------------------------------------

my $t_part2 = time();
my $M = 10;
my @mnames = map { sprintf('mir%02d', $_) } 1 .. $M;
{
	my $ddl = "CREATE SCHEMA mir;\n";
	foreach my $m (1 .. $M)
	{
		$ddl .= qq{
CREATE TABLE mir.acc_$m (id int PRIMARY KEY, bal bigint NOT NULL DEFAULT 0, note text);
INSERT INTO mir.acc_$m SELECT g, 0, 'a' || g FROM generate_series(1, 1000) g;
CREATE TABLE mir.br_$m (id int PRIMARY KEY, bal bigint NOT NULL DEFAULT 0);
INSERT INTO mir.br_$m SELECT g, 0 FROM generate_series(1, 10) g;
CREATE TABLE mir.hist_$m (aid int, delta int, ts timestamptz DEFAULT clock_timestamp());
ALTER TABLE mir.hist_$m REPLICA IDENTITY FULL;
};
	}
	$source->safe_psql('postgres', $ddl);
}

# one script per mirror (transfer-like, history has no key so a change
# applied twice shows), one that writes to every mirror in one transaction
my @scripts;
foreach my $m (1 .. $M)
{
	push @scripts, [ qq{
\\set aid random(1, 1000)
\\set bid random(1, 10)
\\set delta random(-500, 500)
BEGIN;
UPDATE mir.acc_$m SET bal = bal + :delta, note = md5(note) WHERE id = :aid;
UPDATE mir.br_$m SET bal = bal + :delta WHERE id = :bid;
INSERT INTO mir.hist_$m (aid, delta) VALUES (:aid, :delta);
DELETE FROM mir.hist_$m WHERE ctid = (SELECT min(ctid) FROM mir.hist_$m) AND random() < 0.2;
COMMIT;
}, 3 ];
}
push @scripts,
  [
	"\\set aid random(1, 1000)\nBEGIN;\n"
	  . join('', map { "UPDATE mir.acc_$_ SET bal = bal + 1 WHERE id = :aid;\nINSERT INTO mir.hist_$_ (aid, delta) VALUES (:aid, 1);\n" } 1 .. $M)
	  . "COMMIT;\n",
	1
  ];
my $load = start_pgbench_load($source, scripts => \@scripts, secs => 30, rate => 60, clients => 2);

foreach my $m (1 .. $M)
{
	ok( create_mirror($dest, $mnames[ $m - 1 ],
			[ "mir.acc_$m", "mir.br_$m", "mir.hist_$m" ],
			do_initial_snapshot => 'true', wait => 0),
		"$mnames[$m - 1] created under the load");
}
foreach my $name (@mnames)
{
	ok(wait_for_status($dest, $name, 'RUNNING', 150), "$name reached RUNNING");
}
note(sprintf('10 mirrors RUNNING %.1f s after the first create_mirror', time() - $t_part2));
is(dst("SELECT count(*) FROM bunny.mirror_tables WHERE mirror LIKE 'mir%' AND status = 'SYNCED'"),
	3 * $M, 'all 30 tables SYNCED');

# caught up again and again while the load runs: every few seconds, each
# mirror applies up to a position taken then
my ($rounds, %behind) = (0);
while ($load->{h}->pumpable)
{
	my $lsn = source_lsn($source);
	foreach my $name (@mnames)
	{
		my $r = wait_for_lsn($dest, $name, $lsn, 60000) // '(error)';
		push @{ $behind{$name} }, "$lsn: $r" if $r ne 't';
	}
	$rounds++;
	sleep(3);
	$load->{h}->pump_nb;
}
ok($rounds >= 3, "the load ran across $rounds catch-up rounds");
foreach my $name (@mnames)
{
	ok(!$behind{$name}, "$name caught up in every round under the load")
	  or diag("$name: wait_for_lsn " . join('; ', @{ $behind{$name} }));
}

finish_source_load($load, '10 mirrors', min_transactions => 1000);
my $lsn = source_lsn($source);
foreach my $name (@mnames)
{
	is(wait_for_lsn($dest, $name, $lsn, 60000), 't', "$name caught up after the load");
}
compare_schema('mir', 3 * $M, '10 mirrors at the end');
is(dst("SELECT string_agg(name || ' ' || status, ', ' ORDER BY name) FROM bunny.mirrors WHERE name LIKE 'mir%'"),
	join(', ', map { "$_ RUNNING" } @mnames), 'all 10 mirrors RUNNING at the end');
is(dst("SELECT count(*) FROM bunny.mirror_logs WHERE mirror LIKE 'mir%' AND level = 'ERROR'"),
	'0', 'no mirror logged an ERROR');
is(dst("SELECT count(*) FROM bunny.mirror_logs WHERE mirror LIKE 'mir%' AND message LIKE 'no background worker free%'"),
	'0', 'max_worker_processes sufficed: every copy had its snapshot workers');
is(dst("SELECT count(*) FILTER (WHERE healthy) FROM bunny.mirrors WHERE name LIKE 'mir%'"),
	$M, 'all 10 mirrors healthy');
note(sprintf('part 2 took %.0f s', time() - $t_part2));

my $dest_log = slurp_file($dest->logfile);
unlike($dest_log, qr/PANIC|TRAP:|terminated by signal/, 'no destination process crashed');

note(sprintf('030_scale ran in %.0f s', time() - $t_start));
$dest->stop;
$source->stop;
done_testing();
