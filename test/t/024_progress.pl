
# Copyright (c) bunnydb authors
#
# 024_progress: the progress views of README "Monitoring" ("How far is the
# copy?" and "All mirrors at a glance").
#
#  1. initial copy of a 400 000-row table in 20 parts, sampled every 20 ms
#     from bunny.copy_progress and bunny.mirror_copy_progress: percent,
#     rows_done and bytes_done never go back, rows_done ends equal to the
#     table's row count at 100 % (in the finishing step, when a sample
#     falls in it; the parts DONE always), the estimate is the source's
#     statistics, rows_per_second and eta are sane while copying; the
#     mirror's lag_seconds is unknown (NULL) until it streams, and the
#     overview's health is ok meanwhile
#  2. resync_table of the same table: the copy shows up again with phase
#     resync, grows the same way and ends at the row count; the overview's
#     copy column shows it meanwhile
#  3. bunny.mirror_overview in psql's aligned format fits 80 columns, with
#     a mirror name longer than 15 characters and a long error message

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

my $rows = 400_000;

my ($source, $dest) = setup_pair();

src(
	"CREATE TABLE big (id integer PRIMARY KEY, pad text);
	 INSERT INTO big SELECT g, repeat(md5(g::text), 2) FROM generate_series(1, $rows) g;
	 ANALYZE big;");

# where the samples go: a table of the destination's own, not mirrored
dst(
	"CREATE TABLE samples (n serial, phase text, state text, parts_done bigint,
	                       rows_done bigint, rows_total bigint, bytes_done bigint,
	                       bytes_total bigint, percent numeric, rate bigint,
	                       eta interval, m_percent numeric, m_rows bigint,
	                       overview_copy text, mirror_state text, lag_seconds float8,
	                       overview_health text)");

# A DO block that samples the views every 20 ms, one transaction a sample
# (COMMIT: fresh snapshots, fresh pg_stat_progress_copy), until $until is
# true or 180 s have passed.
sub sampler_sql
{
	my ($until) = @_;
	return "DO \$\$
	DECLARE
		deadline timestamptz := clock_timestamp() + interval '180 s';
	BEGIN
		LOOP
			INSERT INTO samples (phase, state, parts_done, rows_done, rows_total, bytes_done,
			                     bytes_total, percent, rate, eta, m_percent, m_rows, overview_copy,
			                     mirror_state, lag_seconds, overview_health)
			SELECT c.phase, c.state, c.parts_done, c.rows_done, c.rows_total_estimate, c.bytes_done,
			       c.bytes_total_estimate, c.percent, c.rows_per_second, c.eta, m.percent, m.rows_done,
			       (SELECT o.copy FROM bunny.mirror_overview o WHERE o.mirror = 'mp'),
			       (SELECT v.status || '/' || v.phase FROM bunny.mirrors v WHERE v.name = 'mp'),
			       (SELECT v.lag_seconds FROM bunny.mirrors v WHERE v.name = 'mp'),
			       (SELECT o.health FROM bunny.mirror_overview o WHERE o.mirror = 'mp')
			  FROM bunny.copy_progress c
			  JOIN bunny.mirror_copy_progress m USING (mirror)
			 WHERE c.mirror = 'mp' AND c.source_table = 'public.big';
			COMMIT;
			EXIT WHEN ($until) OR clock_timestamp() > deadline;
			PERFORM pg_sleep(0.02);
		END LOOP;
	END
	\$\$;";
}

# the samples of one phase, oldest first, as hashes
sub samples_of
{
	my ($phase) = @_;
	my @out;
	for my $line (
		split /\n/,
		dst("SELECT state, parts_done, rows_done, rows_total, bytes_done, bytes_total, percent,
		            coalesce(rate, -1), coalesce(extract(epoch FROM eta), -1), m_percent, m_rows,
		            coalesce(overview_copy, '')
		       FROM samples WHERE phase = '$phase' ORDER BY n"))
	{
		my @f = split /\|/, $line, -1;
		push @out,
		  {
			state => $f[0],
			parts_done => $f[1],
			rows_done => $f[2],
			rows_total => $f[3],
			bytes_done => $f[4],
			bytes_total => $f[5],
			percent => $f[6],
			rate => $f[7],
			eta => $f[8],
			m_percent => $f[9],
			m_rows => $f[10],
			overview_copy => $f[11]
		  };
	}
	return @out;
}

# the checks both copies share
my $seen_finishing = 0;

sub check_samples
{
	my ($phase, @s) = @_;
	my @copying = grep { $_->{state} eq 'copying' } @s;
	cmp_ok(scalar(@copying), '>=', 5, "$phase: sampled the copy while it ran");

	my @back;
	for my $i (1 .. $#s)
	{
		for my $k (qw(percent rows_done bytes_done parts_done m_percent m_rows))
		{
			push @back, "$k $s[$i-1]{$k} -> $s[$i]{$k} at sample $i"
			  if $s[$i]{$k} < $s[ $i - 1 ]{$k};
		}
	}
	is(join('; ', @back), '', "$phase: percent, rows, bytes, parts never go back")
	  or diag(dst("SELECT n, state, parts_done, rows_done, percent FROM samples ORDER BY n"));

	# The table leaves the view once SYNCED: its last sample is the
	# finishing step (indexes, or a resync's queue) unless that step was
	# quicker than a sample; at least one of the two copies must show it.
	my $last = $s[-1];
	if ($last->{state} eq 'finishing')
	{
		$seen_finishing++;
		is($last->{rows_done}, $rows, "$phase: rows_done ends at the row count");
		is($last->{percent} + 0, 100, "$phase: ends at 100 %");
		is($last->{parts_done}, 20, "$phase: 20 parts done");
	}
	else
	{
		note "$phase: the finishing step fell between two samples";
		cmp_ok($last->{rows_done}, '<=', $rows, "$phase: rows_done last seen within the row count");
	}
	# what the view adds up for parts DONE, once the copy is in
	is( dst("SELECT sum(p.rows_copied), count(*), bool_and(p.bytes_copied > 0)
	           FROM bunny.snapshot_part p JOIN bunny.mirror m ON m.id = p.mirror_id
	          WHERE m.name = 'mp' AND p.status = 'DONE'"),
		"$rows|20|t", "$phase: the 20 parts DONE hold every row and their bytes");
	cmp_ok($last->{bytes_done}, '>', $rows * 60, "$phase: bytes_done counts the COPY data");
	cmp_ok($last->{bytes_done}, '<', $last->{bytes_total} * 2,
		"$phase: bytes_done within reach of the estimate");

	my $first = $copying[0];
	ok($first->{rows_total} >= $rows * 0.9 && $first->{rows_total} <= $rows * 1.1,
		"$phase: rows_total_estimate $first->{rows_total} is the source's statistics")
	  or diag explain $first;
	ok(!grep({ $_->{percent} >= 100 } @copying), "$phase: below 100 % while copying");

	my @rated = grep { $_->{rate} > 0 } @copying;
	cmp_ok(scalar(@rated), '>', 0, "$phase: rows_per_second while copying");
	my @bad_rate = grep { $_->{rate} > 100_000_000 } @rated;
	is(scalar(@bad_rate), 0, "$phase: rows_per_second plausible");
	my @eta = grep { $_->{eta} >= 0 } @rated;
	cmp_ok(scalar(@eta), '>', 0, "$phase: eta while copying");
	my @bad_eta = grep { $_->{eta} > 3600 } @eta;
	is(scalar(@bad_eta), 0, "$phase: eta below an hour for a copy of seconds")
	  or diag explain \@bad_eta;
	my @mid = grep { $_->{overview_copy} =~ /^\d+%/ } @copying;
	cmp_ok(scalar(@mid), '>', 0, "$phase: the overview's copy column shows the copy")
	  or diag explain [ map { $_->{overview_copy} } @copying ];
	return;
}

# ---------------------------------------------------------------------------
# 1. the initial copy
# ---------------------------------------------------------------------------

ok( create_mirror(
		$dest, 'mp', ['public.big'],
		do_initial_snapshot => 'true',
		snapshot_num_rows_per_partition => 20000,
		snapshot_max_parallel_workers => 2,
		wait => 0),
	'mirror mp created');
$dest->safe_psql('postgres',
	sampler_sql(
		"SELECT status = 'SYNCED' FROM bunny.mirror_table WHERE mirror_id = (SELECT id FROM bunny.mirror WHERE name = 'mp')"
	),
	timeout => 240);
ok(wait_for_status($dest, 'mp', 'RUNNING', 120), 'mp RUNNING');
check_samples('copy', samples_of('copy'));
is(dst("SELECT string_agg(DISTINCT mirror_state, ',') FROM samples WHERE phase = 'copy' AND state = 'copying'"),
	'SNAPSHOT/SNAPSHOT', 'the mirror says SNAPSHOT while its initial copy runs (README "Statuses and phases")');
is(dst("SELECT count(*) FILTER (WHERE lag_seconds IS NOT NULL) || ' ' || string_agg(DISTINCT overview_health, ',')
         FROM samples WHERE phase = 'copy' AND state = 'copying'"),
	'0 ok', 'before it streams, its lag_seconds is NULL, not 0, and the overview says ok');
is(dst("SELECT count(*) FROM bunny.copy_progress"), '0', 'nothing in copy_progress once the copy is in');

# ---------------------------------------------------------------------------
# 2. resync_table
# ---------------------------------------------------------------------------

dst("SELECT bunny.resync_table('mp', 'public.big', 'truncate')");
$dest->safe_psql('postgres',
	sampler_sql(
		"SELECT resync_state IS NULL AND status = 'SYNCED' FROM bunny.mirror_table WHERE mirror_id = (SELECT id FROM bunny.mirror WHERE name = 'mp')"
	),
	timeout => 240);
check_samples('resync', samples_of('resync'));
is(dst("SELECT string_agg(DISTINCT mirror_state, ',') FROM samples WHERE phase = 'resync' AND state = 'copying'"),
	'RESYNCING/CDC', 'and RESYNCING in phase CDC while a table is copied again');
is(dst("SELECT count(*) FROM big"), $rows, 'resync copied every row');
cmp_ok($seen_finishing, '>=', 1, 'a copy was seen ending at its row count');

# ---------------------------------------------------------------------------
# 3. the overview fits 80 columns
# ---------------------------------------------------------------------------

# a mirror with a long name that fails, with a long error: its
# destination table is not empty
src("CREATE TABLE a_table_that_is_already_filled (id integer PRIMARY KEY)");
# (filled in create_mirror's transaction, after its own check)
dst("CREATE TABLE a_table_that_is_already_filled (id integer PRIMARY KEY)");
dst(q{BEGIN;
SELECT bunny.create_mirror('a-mirror-with-a-rather-long-name', 'src',
                           '["public.a_table_that_is_already_filled"]');
INSERT INTO a_table_that_is_already_filled VALUES (1);
COMMIT;});
pass('failing mirror created');
ok(wait_for_status($dest, 'a-mirror-with-a-rather-long-name', 'FAILED', 120), 'it FAILED');

my $overview = $dest->safe_psql('postgres',
	"\\pset format aligned\n\\pset tuples_only off\nSELECT * FROM bunny.mirror_overview;");
note $overview;
my @lines = split /\n/, $overview;
cmp_ok(scalar(@lines), '>=', 4, 'overview: header, rule and two mirrors');
my @wide = grep { length($_) > 80 } @lines;
is(join("\n", @wide), '', 'overview: no line wider than 80 columns');
like($overview, qr/^ mp\s+\| RUNNING\s+\| CDC\s+\| ok\s+\|/m, 'overview: mp is RUNNING, CDC, ok');
like($overview, qr/^ a-mirror-with-~ \| FAILED\s+\| \w+\s+\| failed \|.*\| .*\.\.\.$/m,
	'overview: long name and long error cut');

done_testing();
