#!/usr/bin/perl

# Copyright (c) bunnydb authors
#
# run.pl - randomized differential test of bunnydb: from a seed, a schema
# of varied table shapes on a source cluster, a mirror of it on a
# destination cluster, concurrent source sessions, operations on the
# mirror and faults, then every mapped table compared with the source row
# by row (test/fuzz/FuzzPlan.pm says what is generated, FuzzRun.pm how it
# runs and what counts as a failure).
#
#   run.pl --seed N               one seed
#   run.pl --seeds N,M,...        several
#   run.pl --minutes M            soak: random seeds until M minutes passed
#   run.pl --plan DIR/plan.json   replay a written plan exactly
#   run.pl --plan-only --seed N   print the plan (SQL in order), run nothing
#   run.pl --coverage --seeds ... print what each seed's plan covers
#
#   --enable a,b    switch on generation that known product bugs break
#                   (FuzzPlan's %KNOWN_BUG_SWITCHES; --enable all)
#   --keep          keep the clusters' data directories of passing seeds
#   --verbose       print every event as it happens
#   --max-secs S    time limit of one seed (default 420)
#
# Run it as the postgres OS user with the environment of the TAP tests:
# PostgreSQL 15's bin (with bunnydb installed) first in PATH, and
#   perl -I test/fuzz -I test/perl -I /usr/lib/postgresql/15/lib/pgxs/src/test/perl test/fuzz/run.pl ...
# (or as root: /work/tools/tap.sh-style, see a failed seed's replay.sh).
# Output is TAP: one test per seed; a failure prints the seed, what
# failed, the differences, the replay command and where the report is
# (tmp_check/fuzz/seed_<N>/report.txt, under $TESTDIR if set).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin", "$FindBin::RealBin/../perl";
use Getopt::Long;
use Time::HiRes qw(time);

use FuzzPlan qw(%KNOWN_BUG_SWITCHES);

# The cluster machinery (PostgreSQL::Test::Utils, loaded by FuzzRun) sets
# up tmp_check and sends STDOUT to its log in an INIT block, so it must be
# loaded at compile time, and only when clusters are run.
my $NO_RUN;

BEGIN
{
	$NO_RUN = grep { /^--?(plan-only|coverage)$/ } @ARGV;
	if (!$NO_RUN)
	{
		require Test::More;
		Test::More->import;
		require FuzzRun;
	}
}

my (%opt, @seeds);
GetOptions(\%opt, 'seed=s', 'seeds=s', 'minutes=f', 'plan=s', 'plan-only', 'coverage',
	'enable=s', 'keep', 'verbose', 'max-secs=i')
  or die "usage: run.pl --seed N | --seeds N,M | --minutes M | --plan FILE [--enable a,b] [--keep]\n";

my %sw;
if ($opt{enable})
{
	foreach my $s (split /,/, $opt{enable})
	{
		if ($s eq 'all')
		{
			$sw{$_} = 1 for keys %KNOWN_BUG_SWITCHES;
			next;
		}
		die "unknown switch $s (known: " . join(', ', sort keys %KNOWN_BUG_SWITCHES) . ")\n"
		  unless exists $KNOWN_BUG_SWITCHES{$s};
		$sw{$s} = 1;
	}
}
push @seeds, $opt{seed} if defined $opt{seed};
push @seeds, split /,/, $opt{seeds} if $opt{seeds};

if ($opt{'plan-only'} || $opt{coverage})
{
	foreach my $seed (@seeds)
	{
		my $plan = FuzzPlan::generate_plan($seed, switches => \%sw);
		if ($opt{'plan-only'})
		{
			print FuzzPlan::plan_text($plan);
		}
		else
		{
			print "seed $seed: " . join(' ', sort keys %{ $plan->{covers} }) . "\n";
		}
	}
	exit 0;
}

my %run = (keep => $opt{keep}, verbose => $opt{verbose}, max_secs => $opt{'max-secs'});
my @results;

sub one
{
	my ($plan) = @_;
	my $r = FuzzRun::run_plan($plan, %run);
	push @results, $r;
	ok($r->{ok}, sprintf('seed %s (%.0f s, %d checkpoints, %d rows compared)',
			$r->{seed}, $r->{secs}, $r->{checkpoints}, $r->{rows_compared}));
	note(sprintf('seed %s: faults hit: %s; missed: %s', $r->{seed},
			join(', ', map { "$_ x$r->{hits}{$_}" } sort keys %{ $r->{hits} }) || '-',
			join(', ', map { "$_ x$r->{misses}{$_}" } sort keys %{ $r->{misses} }) || '-'));
	if (!$r->{ok})
	{
		diag("seed $r->{seed} FAILED:\n" . join("\n", @{ $r->{failures} }));
		diag("replay: $r->{replay}   (exact plan: $r->{dir}/replay.sh)");
		diag("key log lines:\n$r->{excerpt}") if $r->{excerpt};
		diag("report: $r->{dir}/report.txt");
	}
	return $r;
}

if ($opt{plan})
{
	one(FuzzRun::load_plan($opt{plan}));
}
elsif (defined $opt{minutes})
{
	my $end = time() + $opt{minutes} * 60;
	srand();
	while (time() < $end)
	{
		my $seed = int(rand(1_000_000_000));
		one(FuzzPlan::generate_plan($seed, switches => \%sw));
	}
}
else
{
	die "no seed given\n" unless @seeds;
	one(FuzzPlan::generate_plan($_, switches => \%sw)) foreach @seeds;
}

my @failed = map { $_->{seed} } grep { !$_->{ok} } @results;
diag(sprintf('%d seed(s) run, %d failed%s', scalar @results, scalar @failed,
		@failed ? ': ' . join(', ', @failed) : ''));
done_testing();
