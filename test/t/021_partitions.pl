# Copyright (c) bunnydb authors
#
# 021_partitions: partitioned source tables (README "Table mappings",
# "Limitations").  Mapped through its root, a partitioned table becomes one
# plain destination table that bunnydb creates, or lands in a partition
# tree the user created on the destination beforehand (rows are routed to
# its partitions, whatever their bounds).  Both through the initial copy,
# CDC (inserts, updates that move a row to another partition, deletes), a
# TRUNCATE of the partitioned table, a partition attached and detached on
# the source, and resync_table truncate and swap.  A TRUNCATE of a single
# partition is not published by PostgreSQL (documented); a resync repairs
# it.  Mapped partition by partition into a tree made on the destination,
# a TRUNCATE of one partition is replicated.  A resync plans its copy from the source as it is then (partitions
# attached or detached, columns dropped or added since the mirror was
# created).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use BunnyTest;
use PostgreSQL::Test::Utils;
use Test::More;

my ($source, $dest) = setup_pair();

$source->safe_psql('postgres', q{
CREATE TABLE ev (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE ev_eu PARTITION OF ev FOR VALUES IN ('eu');
CREATE TABLE ev_us PARTITION OF ev FOR VALUES IN ('us');
CREATE TABLE ev_other PARTITION OF ev DEFAULT;
INSERT INTO ev SELECT g, (ARRAY['eu', 'us', 'ap'])[1 + g % 3], 'v' || g FROM generate_series(1, 3000) g;

CREATE TABLE rng (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE rng_1 PARTITION OF rng FOR VALUES FROM (0) TO (1000);
CREATE TABLE rng_2 PARTITION OF rng FOR VALUES FROM (1000) TO (2000)
  PARTITION BY RANGE (id);
CREATE TABLE rng_2a PARTITION OF rng_2 FOR VALUES FROM (1000) TO (1500);
CREATE TABLE rng_2b PARTITION OF rng_2 FOR VALUES FROM (1500) TO (2000);
INSERT INTO rng SELECT g, 'r' || g FROM generate_series(0, 1999) g;
});

# the destination tree of rng is the user's, with other bounds
$dest->safe_psql('postgres', q{
CREATE TABLE rng (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE rng_low PARTITION OF rng FOR VALUES FROM (MINVALUE) TO (500);
CREATE TABLE rng_high PARTITION OF rng FOR VALUES FROM (500) TO (MAXVALUE);
});

my @tables = ('public.ev', 'public.rng');

# resync a table and wait until the resync has finished
sub resync
{
	my ($table, $strategy) = @_;
	$dest->safe_psql('postgres', "SELECT bunny.resync_table('parts', '$table', '$strategy')");
	ok(poll_until(sub {
				$dest->safe_psql('postgres',
					"SELECT pending_op IS NULL AND status = 'RUNNING' FROM bunny.mirror WHERE name = 'parts'") eq 't'
			}, 120),
		"resync ($strategy) of $table finished");
}
ok(create_mirror($dest, 'parts', \@tables, do_initial_snapshot => 'true'), 'mirror running');
compare_tables($source, $dest, \@tables, 'after the initial copy');
is($dest->safe_psql('postgres', "SELECT relkind FROM pg_class WHERE oid = 'public.ev'::regclass"),
	'r', 'a partitioned table mapped through its root becomes one plain table');
is($dest->safe_psql('postgres', "SELECT count(*) FROM ONLY rng_low"), '500',
	'rows land in the destination partitions by their bounds');

$source->safe_psql('postgres', q{
INSERT INTO ev VALUES (5001, 'eu', 'new'), (5002, 'us', 'new'), (5003, 'xx', 'new');
UPDATE ev SET region = 'us' WHERE id BETWEEN 1 AND 30 AND region = 'eu';   -- moves rows across partitions
UPDATE ev SET v = v || '!' WHERE id % 10 = 0;
DELETE FROM ev WHERE id % 17 = 0;
DELETE FROM rng WHERE id >= 1990;
UPDATE rng SET id = id + 1990 WHERE id < 10;                                 -- across partitions and levels
DELETE FROM rng WHERE id BETWEEN 1500 AND 1510;
});
ok(wait_synced($source, $dest, 'parts', \@tables), 'CDC caught up');
compare_tables($source, $dest, \@tables, 'after CDC across partitions');

# a partition attached with rows: its rows are not in the WAL as inserts
$source->safe_psql('postgres', q{
CREATE TABLE ev_ap (id int, region text, v text, PRIMARY KEY (id, region));
INSERT INTO ev_ap SELECT g, 'ap', 'attached' FROM generate_series(9000, 9009) g;
DELETE FROM ev WHERE region = 'ap';
ALTER TABLE ev ATTACH PARTITION ev_ap FOR VALUES IN ('ap');
INSERT INTO ev VALUES (9100, 'ap', 'after attach');
});
ok(wait_synced($source, $dest, 'parts', ['public.rng']), 'caught up after ATTACH');
is($dest->safe_psql('postgres', "SELECT count(*) FROM ev WHERE region = 'ap'"), '1',
	'an attached partition brings only the rows written after it was attached');
resync('public.ev', 'truncate');
ok(wait_synced($source, $dest, 'parts', \@tables), 'a truncate resync repairs it');
compare_tables($source, $dest, \@tables, 'after the resync');

# a TRUNCATE of one partition is not published; of the root it is
$source->safe_psql('postgres', 'TRUNCATE ev_eu');
$source->safe_psql('postgres', "INSERT INTO ev VALUES (9200, 'us', 'marker')");
ok(poll_until(sub { $dest->safe_psql('postgres', 'SELECT count(*) FROM ev WHERE id = 9200') eq '1' }, 60),
	'the change after a partition TRUNCATE arrived');
isnt($dest->safe_psql('postgres', "SELECT count(*) FROM ev WHERE region = 'eu'"), '0',
	'a TRUNCATE of one partition is not replicated (README Limitations)');
resync('public.ev', 'swap');
ok(wait_synced($source, $dest, 'parts', \@tables), 'a swap resync repairs it');
compare_tables($source, $dest, \@tables, 'after the swap resync');

$source->safe_psql('postgres', q{
ALTER TABLE ev DETACH PARTITION ev_us;
INSERT INTO ev_us VALUES (9300, 'us', 'detached: not mirrored');
TRUNCATE rng;
INSERT INTO rng SELECT g, 'again' FROM generate_series(0, 99) g;
});
# the detached partition's rows stay on the destination until a resync
resync('public.ev', 'truncate');
ok(wait_synced($source, $dest, 'parts', \@tables), 'caught up after DETACH and a root TRUNCATE');
compare_tables($source, $dest, \@tables, 'after DETACH, root TRUNCATE and a resync');
is($dest->safe_psql('postgres', "SELECT count(*) FROM ONLY rng_low"), '100',
	'the truncate and the new rows reached the destination partitions');

resync('public.rng', 'truncate');
ok(wait_synced($source, $dest, 'parts', \@tables), 'resync of the table with a destination tree');
compare_tables($source, $dest, \@tables, 'after resync into the destination tree');
ok(wait_for_status($dest, 'parts', 'RUNNING', 60), 'the resync finishes and the mirror runs');
is(mirror_field($dest, 'parts', 'error_count'), '0', 'no errors');

# a resync plans its copy from the source as it is now: a column dropped
# there (and by sync_schema here) is not asked for, one added there is
# added here and copied
$source->safe_psql('postgres', q{
ALTER TABLE ev DROP COLUMN v;
ALTER TABLE ev ADD COLUMN w int DEFAULT 7;
UPDATE ev SET w = id;
});
$dest->safe_psql('postgres', "SELECT bunny.sync_schema('parts')");
resync('public.ev', 'truncate');
ok(wait_synced($source, $dest, 'parts', \@tables), 'caught up after columns changed and a resync');
compare_tables($source, $dest, \@tables, 'after the columns changed');
$source->safe_psql('postgres', 'ALTER TABLE ev ADD COLUMN x text');
$source->safe_psql('postgres', "UPDATE ev SET x = 'x' || id");
resync('public.ev', 'swap');
ok(wait_synced($source, $dest, 'parts', \@tables), 'a column added only on the source is copied by a swap resync');
compare_tables($source, $dest, \@tables, 'after a resync with a new source column');
is(mirror_field($dest, 'parts', 'error_count'), '0', 'still no errors');

$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('parts')");

# Mapped partition by partition (the root not mapped), into the same tree
# made on the destination beforehand: each partition is published as
# itself, so a TRUNCATE of one partition is replicated; a partition created
# later is added with update_tables (README, Table mappings).
$source->safe_psql('postgres', q{
CREATE TABLE lp (id int, k text, v text, PRIMARY KEY (id, k)) PARTITION BY LIST (k);
CREATE TABLE lp_a PARTITION OF lp FOR VALUES IN ('a');
CREATE TABLE lp_b PARTITION OF lp FOR VALUES IN ('b');
INSERT INTO lp SELECT g, (ARRAY['a', 'b'])[1 + g % 2], 'v' || g FROM generate_series(1, 1000) g;
});
$dest->safe_psql('postgres', q{
CREATE TABLE lp (id int, k text, v text, PRIMARY KEY (id, k)) PARTITION BY LIST (k);
CREATE TABLE lp_a PARTITION OF lp FOR VALUES IN ('a');
CREATE TABLE lp_b PARTITION OF lp FOR VALUES IN ('b');
});
my @leaves = ('public.lp_a', 'public.lp_b');
ok(create_mirror($dest, 'leaves', \@leaves, do_initial_snapshot => 'true'), 'partitions mapped one by one');
compare_tables($source, $dest, ['public.lp'], 'partitions mapped one by one, after the copy');
$source->safe_psql('postgres', q{
UPDATE lp SET k = 'b' WHERE id <= 20 AND k = 'a';     -- moves rows from lp_a to lp_b
UPDATE lp SET v = v || '!' WHERE id % 7 = 0;
DELETE FROM lp WHERE id % 11 = 0;
TRUNCATE lp_a;
INSERT INTO lp VALUES (2001, 'a', 'after the partition truncate');
});
ok(wait_synced($source, $dest, 'leaves', ['public.lp']), 'caught up after a partition TRUNCATE');
compare_tables($source, $dest, ['public.lp'], 'a TRUNCATE of a partition mapped on its own');
is($dest->safe_psql('postgres', "SELECT count(*) FROM lp_a"), '1', 'the truncated partition holds only the new row');

$source->safe_psql('postgres', q{
CREATE TABLE lp_c PARTITION OF lp FOR VALUES IN ('c');
INSERT INTO lp SELECT g, 'c', 'c' || g FROM generate_series(3001, 3100) g;
});
$dest->safe_psql('postgres', "CREATE TABLE lp_c PARTITION OF lp FOR VALUES IN ('c')");
$dest->safe_psql('postgres', "SELECT bunny.pause_mirror('leaves')");
ok(wait_for_status($dest, 'leaves', 'PAUSED', 60), 'paused');
$dest->safe_psql('postgres',
	q{SELECT bunny.update_tables('leaves', '["public.lp_a", "public.lp_b", "public.lp_c"]')});
$dest->safe_psql('postgres', "SELECT bunny.resume_mirror('leaves')");
ok(wait_synced($source, $dest, 'leaves', ['public.lp']), 'a partition created later, added with update_tables');
compare_tables($source, $dest, ['public.lp'], 'after update_tables added the new partition');
is(mirror_field($dest, 'leaves', 'error_count'), '0', 'no errors in the partition-by-partition mirror');
$dest->safe_psql('postgres', "SELECT bunny.drop_mirror('leaves')");

$source->stop;
$dest->stop;
done_testing();
