# Copyright (c) bunnydb authors
#
# 012_enum_labels: labels added on the source to an enum type (ALTER TYPE
# ... ADD VALUE, which logical replication does not carry) reach the
# destination's type on their own, in the source's sort order, and the rows
# that use them are applied exactly once.
#
#  types    an enum used directly, as an array and under a domain, by two
#           tables of one mirror; a second enum no mapped column uses
#  labels   added at the end, BEFORE the first label, AFTER a middle one,
#           several in one source transaction, and a label used in the same
#           batch as rows with old labels (the batch fails on it, rolls
#           back, and is applied whole after the labels are taken over)
#  checks   rows equal on both sides (fingerprints), the destination's label
#           order equal to the source's (enum_range), ORDER BY on the enum
#           column equal on both sides, one INFO line per added label in
#           bunny.logs and one for the batch applied again (no ERROR or
#           WARNING; the mirror RUNNING with error_count 0 afterwards),
#           a label only the destination has is left alone, and any other
#           invalid input value (22P02) still fails the batch, with nothing
#           of it applied, until the cause is fixed.  Runs in about 15 s.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my ($source, $dest) = setup_pair(
	dest_conf => "bunny.retry_backoff_min = '200ms'\n"
	  . "bunny.retry_backoff_max = '2s'\n");


src(<<'EOS');
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE unused AS ENUM ('a', 'b');
CREATE DOMAIN dmood AS mood;
CREATE TABLE feelings (id int PRIMARY KEY, m mood, ms mood[], d dmood, u_text text);
CREATE TABLE log (id int PRIMARY KEY, m mood NOT NULL);
INSERT INTO feelings VALUES (1, 'sad', '{sad,ok}', 'ok', 'x'), (2, 'happy', NULL, NULL, 'y');
INSERT INTO log VALUES (1, 'ok');
EOS

my @tables = ('public.feelings', 'public.log');
ok(create_mirror($dest, 'em', \@tables, do_initial_snapshot => 'true'), 'mirror em RUNNING');
ok(wait_synced($source, $dest, 'em', \@tables), 'initial copy');

sub labels
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		"SELECT array_to_string(enum_range(NULL::public.mood), ',')");
}
is(labels($dest), 'sad,ok,happy', 'destination type as created');

my $log0 = dst("SELECT coalesce(max(id), 0) FROM bunny.mirror_logs");

# labels at the end, first and in the middle; one transaction uses all of
# them next to rows with old labels, the next one only old labels
src(<<'EOS');
ALTER TYPE mood ADD VALUE 'ecstatic';
ALTER TYPE mood ADD VALUE 'miserable' BEFORE 'sad';
ALTER TYPE mood ADD VALUE 'meh' AFTER 'ok';
ALTER TYPE unused ADD VALUE 'c';
EOS
src(<<'EOS');
BEGIN;
INSERT INTO log VALUES (2, 'ok'), (3, 'sad');
INSERT INTO feelings VALUES (3, 'ecstatic', '{miserable,meh,happy}', 'meh', 'z');
UPDATE feelings SET m = 'miserable', d = 'ecstatic' WHERE id = 1;
INSERT INTO log VALUES (4, 'meh');
COMMIT;
INSERT INTO log VALUES (5, 'happy');
EOS
ok(wait_synced($source, $dest, 'em', \@tables), 'rows with new labels applied');
compare_tables($source, $dest, \@tables, 'after new labels');
is(labels($dest), labels($source), 'destination labels in the source order');
is(labels($dest), 'miserable,sad,ok,meh,happy,ecstatic', 'order as expected');
is(dst("SELECT string_agg(id::text, ',' ORDER BY m, id) FROM feelings"),
	src("SELECT string_agg(id::text, ',' ORDER BY m, id) FROM feelings"),
	'ORDER BY the enum column equal on both sides');
is(dst("SELECT to_regtype('public.unused') IS NULL"), 't',
	'an enum no mapped column uses is not created');

my @added = split /\n/, dst(
	"SELECT message FROM bunny.mirror_logs WHERE mirror = 'em' AND id > $log0 "
	  . "AND message LIKE 'added label%' ORDER BY id");
is(scalar(@added), 3, 'one log line per added label')
  or diag(join("\n", @added));
like($added[0] // '', qr/^added label '\w+' to enum type public\.mood, as on the source$/,
	'log line wording');
is(dst("SELECT count(*) FROM bunny.mirror_logs WHERE mirror = 'em' AND id > $log0 "
	  . "AND level = 'INFO' AND message LIKE 'applying again after taking over enum labels: "
	  . "invalid input value for enum%'"), '1',
	'the failure that led to it is logged once, as INFO');
is(dst("SELECT count(*) FROM bunny.mirror_logs WHERE mirror = 'em' AND id > $log0 "
	  . "AND level IN ('ERROR', 'WARNING')"), '0',
	'no ERROR or WARNING: the mirror did not fail');
ok(wait_for_status($dest, 'em', 'RUNNING', 30), 'mirror RUNNING');
is(mirror_field($dest, 'em', 'error_count'), '0', 'error_count untouched');
is(mirror_field($dest, 'em', 'error_message') // '', '', 'no error message');
is(dst("SELECT count(*) FROM log"), '5', 'log rows applied exactly once');

# a label only the destination has stays; a later source label goes after
# the last one they share
dst("ALTER TYPE public.mood ADD VALUE 'dest_only'");
src("ALTER TYPE mood ADD VALUE 'zen'");
src("INSERT INTO log VALUES (6, 'zen')");
ok(wait_synced($source, $dest, 'em', \@tables), 'label added next to a destination-only label');
is(labels($dest), 'miserable,sad,ok,meh,happy,ecstatic,zen,dest_only',
	'destination-only label kept');

# any other invalid input value (22P02) is not cured by the labels: the
# batch fails and is retried as before (here a destination column of a
# narrower type than the source's)
dst("ALTER TABLE log ADD COLUMN n int");
src("ALTER TABLE log ADD COLUMN n text");
src("INSERT INTO log VALUES (7, 'ok', 'not a number')");
ok(poll_until(sub { (mirror_field($dest, 'em', 'error_message') // '') =~ /invalid input syntax for type integer/ },
		30, 0.25), 'other 22P02 errors still fail the batch');
is(dst("SELECT count(*) FROM log WHERE id = 7"), '0', 'nothing of that transaction applied');
dst("ALTER TABLE log ALTER COLUMN n SET DATA TYPE text");
ok(wait_synced($source, $dest, 'em', \@tables), 'goes on once the column is fixed');

done_testing();
