
# Copyright (c) bunnydb authors
#
# FuzzRun - runs a plan of FuzzPlan against a fresh source/destination
# pair (PostgreSQL::Test::Cluster) and judges it:
#
#   - the source sessions of a step run concurrently, each as one psql
#     with ON_ERROR_STOP; any error they report fails the run (the plan
#     never provokes one; source restarts happen between steps);
#   - operations on the mirror run as planned; each waits until the
#     previous one is done (no pending operation) first, and an operation
#     that does not finish, or a mirror that goes FAILED, fails the run;
#   - faults: SIGKILL of the mirror worker, the snapshot workers or the
#     launcher (found by backend_type), an immediate stop and start of the
#     destination, a restart (fast) or crash (immediate stop) of the
#     source, pg_terminate_backend of the mirror's walsender;
#   - checkpoints: with the sessions stopped, wait_for_lsn up to the
#     source's position, then compare every mapped table with the source
#     row by row on the replicated columns (the source's columns minus
#     the excluded ones), by row fingerprints first and, when they differ,
#     by listing the rows that are missing, extra or different;
#   - at the end: status RUNNING, every table SYNCED, no operation
#     pending, and no destination process that died of a signal we did
#     not send (nor PANIC / TRAP in either server log).
#
# A failed run leaves, in tmp_check/fuzz/seed_<N>/: plan.json (run.pl
# --plan replays it exactly), plan.sql (the same, readable), replay.sh (one
# command), report.txt (what failed, the differences, the mirror's state
# and logs, excerpts of both server logs) and events.txt (what ran when).

package FuzzRun;

use strict;
use warnings;

use Cwd ();
use Exporter 'import';
use File::Path qw(make_path remove_tree);
use File::Spec;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FuzzPlan qw(qi qn lit plan_text);

our @EXPORT_OK = qw(run_plan write_plan_files load_plan);

# a destination or source that is restarting answers with one of these
my $CONN_RE = qr/could not connect|connection to server|the database system is (starting up|in recovery mode|shutting down|not yet accepting)|server closed the connection|terminating connection|no connection to the server|Connection refused|No such file or directory/;

my $JSON = JSON::PP->new->canonical(1)->pretty;

sub load_plan
{
	my ($file) = @_;
	open my $fh, '<:raw', $file or die "cannot read $file: $!";
	local $/;
	my $text = <$fh>;
	close $fh;
	return $JSON->decode($text);
}

sub spew
{
	my ($file, $text) = @_;
	open my $fh, '>:raw', $file or die "cannot write $file: $!";
	print $fh $text;
	close $fh;
	return;
}

# plan.json, plan.sql and replay.sh in $dir
sub write_plan_files
{
	my ($plan, $dir) = @_;
	make_path($dir);
	$dir = File::Spec->rel2abs($dir);
	spew("$dir/plan.json", $JSON->encode($plan));
	spew("$dir/plan.sql", plan_text($plan));
	my @en = grep { $plan->{switches}{$_} } sort keys %{ $plan->{switches} };
	my $seedcmd = "test/fuzz/run.pl --seed $plan->{seed}" . (@en ? ' --enable ' . join(',', @en) : '');
	my $repo = $ENV{BUNNY_FUZZ_REPO} // Cwd::getcwd();
	my $path = $ENV{PATH};
	my $pgr = $ENV{PG_REGRESS} // '';
	spew(
		"$dir/replay.sh", <<"EOS");
#!/bin/sh
# Replays bunnydb fuzz seed $plan->{seed} exactly as planned in plan.json
# (same schema, workload, operations and faults; concurrent timing may
# differ).  From any checkout the same plan is:  $seedcmd
# Run as root (switches to postgres) or as postgres.
set -e
T=\${TESTDIR:-/tmp/bunnyfuzz-replay-$plan->{seed}}
mkdir -p "\$T"
CMD="cd '$repo' && TESTDIR='\$T' PATH='$path' PG_REGRESS='$pgr' PGCLIENTENCODING=UTF8 perl -I '$repo/test/fuzz' -I '$repo/test/perl' -I /usr/lib/postgresql/15/lib/pgxs/src/test/perl test/fuzz/run.pl --plan '$dir/plan.json' --keep"
if [ "\$(id -u)" = 0 ]; then chown postgres "\$T"; exec runuser -u postgres -- sh -c "\$CMD"; else exec sh -c "\$CMD"; fi
EOS
	chmod 0755, "$dir/replay.sh";
	return $seedcmd;
}

# ---------------------------------------------------------------------------
# The run context
# ---------------------------------------------------------------------------

sub new_ctx
{
	my ($plan, %o) = @_;
	my $seed = $plan->{seed};
	my $ctx = bless {
		plan => $plan,
		m => $plan->{mirror}{name},
		seed => $seed,
		t0 => time(),
		deadline => time() + ($o{max_secs} // 420),
		failures => [],
		events => [],
		killed => {},
		hits => {},
		misses => {},
		dir => $o{dir} // "$PostgreSQL::Test::Utils::tmp_check/fuzz/seed_$seed",
		keep => $o{keep},
		verbose => $o{verbose},
	}, 'FuzzRun';
	return $ctx;
}

sub event
{
	my ($ctx, $msg) = @_;
	my $line = sprintf('[%6.1fs] %s', time() - $ctx->{t0}, $msg);
	push @{ $ctx->{events} }, $line;
	note("seed $ctx->{seed}: $line") if $ctx->{verbose};
	return;
}

sub fail_run
{
	my ($ctx, $msg) = @_;
	push @{ $ctx->{failures} }, $msg;
	$ctx->event("FAILURE: " . (split /\n/, $msg)[0]);
	return 0;
}

sub failed { return scalar @{ $_[0]->{failures} }; }

# run SQL on a node: (ok, stdout, stderr); retries while the server is
# restarting (for up to $o{retry} seconds)
sub sql
{
	my ($ctx, $node, $sql, %o) = @_;
	my $retry_until = time() + ($o{retry} // 90);
	while (1)
	{
		my ($ret, $out, $err);
		eval {
			($ret, $out, $err) = $node->psql('postgres', $sql,
				timeout => $o{timeout} // 300, on_error_stop => 1);
		};
		if ($@)
		{
			return (0, '', "psql failed: $@");
		}
		return (1, $out, $err) if defined $ret && $ret == 0;
		$err //= '';
		if ($err =~ $CONN_RE && $err !~ /ERROR:/ && time() < $retry_until)
		{
			usleep(300_000);
			next;
		}
		return (0, $out // '', $err);
	}
}

sub dst { my ($ctx, $sql, %o) = @_; return $ctx->sql($ctx->{dst}, $sql, %o); }
sub src { my ($ctx, $sql, %o) = @_; return $ctx->sql($ctx->{src}, $sql, %o); }

# run SQL that must succeed; a failure fails the run
sub must
{
	my ($ctx, $node, $sql, $what) = @_;
	my ($ok, $out, $err) = $ctx->sql($node, $sql);
	return $out if $ok;
	my $s = length($sql) > 2000 ? substr($sql, 0, 2000) . '...' : $sql;
	$ctx->fail_run("$what failed:\n$err\nSQL: $s");
	return undef;
}

# the mirror's state: status, pending operation, tables not SYNCED,
# error_count, error_message
sub mstate
{
	my ($ctx) = @_;
	my ($ok, $out) = $ctx->dst(
		"SELECT m.status, coalesce(m.pending_op, '-'), "
		  . "(SELECT count(*) FROM bunny.mirror_tables t WHERE t.mirror = m.name AND t.status <> 'SYNCED'), "
		  . "m.error_count, coalesce(replace(m.error_message, E'\\n', ' '), '') "
		  . 'FROM bunny.mirror m WHERE m.name = ' . lit($ctx->{m}));
	return undef unless $ok && $out ne '';
	my ($status, $pending, $unsynced, $ec, $em) = split /\|/, $out, 5;
	return { status => $status, pending => $pending, unsynced => $unsynced, error_count => $ec,
		error => $em, text => "status=$status pending=$pending unsynced_tables=$unsynced error_count=$ec error=$em" };
}

# poll until $cond->(state) holds; FAILED or the timeout fail the run
sub wait_for
{
	my ($ctx, $what, $timeout, $cond) = @_;
	my $end = time() + $timeout;
	my $st;
	while (1)
	{
		$st = $ctx->mstate;
		if ($st)
		{
			if ($st->{status} eq 'FAILED')
			{
				return $ctx->fail_run("mirror FAILED while waiting for $what: $st->{text}");
			}
			return 1 if $cond->($st);
		}
		if (time() > $end)
		{
			return $ctx->fail_run("timeout (${timeout}s) waiting for $what; last state: "
				  . ($st ? $st->{text} : '(unavailable)'));
		}
		if (time() > $ctx->{deadline})
		{
			return $ctx->fail_run("run exceeded its time limit while waiting for $what");
		}
		usleep(200_000);
	}
}

# no operation pending, RUNNING with every table SYNCED (or PAUSED)
sub wait_idle
{
	my ($ctx, $timeout) = @_;
	return $ctx->wait_for(
		'the mirror to be idle (no pending operation)', $timeout // 90,
		sub {
			my $s = shift;
			return $s->{pending} eq '-'
			  && ($s->{status} eq 'PAUSED' || ($s->{status} eq 'RUNNING' && $s->{unsynced} == 0));
		});
}

# pids of the processes of a backend_type, waiting up to $wait seconds
# for one to appear: polled on the server every 2 ms, since a copy may be
# over in a few tens of milliseconds
sub pids_of
{
	my ($ctx, $backend_type, $wait) = @_;
	my ($ok, $out) = $ctx->dst(
		'SELECT public.fuzz_wait_backend(' . lit($backend_type) . ', ' . ($wait // 0) . ')',
		retry => 20, timeout => ($wait // 0) + 60);
	return () unless $ok && $out ne '';
	return split /,/, $out;
}

# SIGKILL the processes of a backend_type (waiting up to $wait seconds
# for one to appear, then $then seconds more)
sub kill_type
{
	my ($ctx, $fault, $backend_type, $wait, $then) = @_;
	my @p = $ctx->pids_of($backend_type, $wait);
	if (@p && $then)
	{
		usleep(int($then * 1_000_000));
		@p = $ctx->pids_of($backend_type);
	}
	my $n = @p ? kill('KILL', @p) : 0;
	if (!$n)
	{
		$ctx->{misses}{$fault}++;
		$ctx->event("$fault: no '$backend_type' process found (missed)");
		return;
	}
	$ctx->{killed}{$_} = 1 for @p;
	$ctx->{hits}{$fault}++;
	$ctx->event("$fault: SIGKILL '$backend_type' pid(s) @p");
	return;
}

# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------

sub act
{
	my ($ctx, $a) = @_;
	my $k = $a->{kind};
	my $m = lit($ctx->{m});
	my $plan = $ctx->{plan};
	$ctx->event('action: ' . FuzzPlan::action_text($a)) unless $k eq 'src_sql';

	if ($k eq 'create_mirror')
	{
		$ctx->must($ctx->{dst}, FuzzPlan::create_mirror_sql($plan), 'create_mirror');
	}
	elsif ($k eq 'wait_running')
	{
		$ctx->wait_for('RUNNING after create_mirror', 240,
			sub { $_[0]{status} eq 'RUNNING' && $_[0]{pending} eq '-' && $_[0]{unsynced} == 0 });
	}
	elsif ($k eq 'wait_idle')
	{
		$ctx->wait_idle;
	}
	elsif ($k eq 'catch_up')
	{
		my ($ok, $lsn) = $ctx->src('SELECT pg_current_wal_lsn()');
		my ($ok2, $w) = $ctx->dst("SELECT bunny.wait_for_lsn($m, '$lsn', 90000)", timeout => 150);
		$ctx->event("catch_up: wait_for_lsn($lsn) = " . ($ok2 ? $w : 'error'));
		$ctx->fail_run("catch_up: the mirror did not apply everything up to $lsn within 90 s: " . ($ctx->mstate // {})->{text})
		  unless $ok2 && $w eq 't';
	}
	elsif ($k eq 'pause')
	{
		$ctx->wait_idle or return;
		$ctx->must($ctx->{dst}, "SELECT bunny.pause_mirror($m)", 'pause_mirror') // return;
		$ctx->wait_for('PAUSED', 90, sub { $_[0]{status} eq 'PAUSED' && $_[0]{pending} eq '-' });
	}
	elsif ($k eq 'resume')
	{
		# a paused mirror may hold an operation requested while it was
		# paused (sync_schema's resync of a table whose column list grew):
		# it waits for this resume, so waiting for it to be idle would wait
		# for ever
		$ctx->wait_for('the mirror to be paused, or idle', 90,
			sub { $_[0]{status} eq 'PAUSED' || $_[0]{pending} eq '-' })
		  or return;
		$ctx->must($ctx->{dst}, "SELECT bunny.resume_mirror($m)", 'resume_mirror') // return;
		$ctx->wait_for('RUNNING after resume', 90, sub { $_[0]{status} ne 'PAUSED' && $_[0]{status} ne 'PAUSING' });
	}
	elsif ($k eq 'resync_table')
	{
		$ctx->wait_idle or return;
		$ctx->must($ctx->{dst},
			"SELECT bunny.resync_table($m, " . lit($a->{name}) . ', ' . lit($a->{strategy}) . ')', 'resync_table');
	}
	elsif ($k eq 'resync_mirror')
	{
		$ctx->wait_idle or return;
		$ctx->must($ctx->{dst}, "SELECT bunny.resync_mirror($m, " . lit($a->{strategy}) . ')', 'resync_mirror');
	}
	elsif ($k eq 'update_tables')
	{
		$ctx->wait_idle or return;
		if (!$a->{was_paused})
		{
			$ctx->must($ctx->{dst}, "SELECT bunny.pause_mirror($m)", 'pause_mirror (for update_tables)') // return;
			$ctx->wait_for('PAUSED (for update_tables)', 90,
				sub { $_[0]{status} eq 'PAUSED' && $_[0]{pending} eq '-' }) or return;
		}
		foreach my $id (@{ $a->{empty} })
		{
			# an added table must be empty: this one was mirrored before
			$ctx->must($ctx->{dst}, "TRUNCATE $plan->{tables}{$id}{dst_qname}", 'emptying a table to add again') // return;
		}
		$ctx->must($ctx->{dst}, "SELECT bunny.update_tables($m, " . lit($a->{mapping}) . '::jsonb)', 'update_tables')
		  // return;
		$ctx->must($ctx->{dst}, "SELECT bunny.resume_mirror($m)", 'resume_mirror (after update_tables)');
	}
	elsif ($k eq 'sync_schema')
	{
		$ctx->wait_idle or return;
		my $sql = "SELECT bunny.sync_schema($m)";
		for my $try (1 .. 5)
		{
			my ($ok, $out, $err) = $ctx->dst($sql);
			last if $ok;
			if ($err =~ /deadlock detected/ && !$plan->{switches}{sync_schema_deadlock} && $try < 5)
			{
				$ctx->event("sync_schema died of a deadlock with the worker (known: switch sync_schema_deadlock); again");
				$ctx->{hits}{sync_schema_deadlock}++;
				next;
			}
			$ctx->fail_run("sync_schema failed:\n$err");
			last;
		}
	}
	elsif ($k eq 'retry_mirror')
	{
		$ctx->wait_idle or return;
		$ctx->must($ctx->{dst}, "SELECT bunny.retry_mirror($m)", 'retry_mirror');
	}
	elsif ($k eq 'src_sql')
	{
		$ctx->event("barrier on the source: $a->{label}");
		$ctx->must($ctx->{src}, join(";\n", @{ $a->{sql} }) . ";\n", "source SQL ($a->{label})");
	}
	elsif ($k eq 'checkpoint')
	{
		$ctx->wait_idle or return;
		$ctx->compare($a->{tables}, $a->{final});
	}
	elsif ($k eq 'kill_worker')
	{
		$ctx->kill_type($k, "bunnydb mirror $ctx->{m}", 5);
	}
	elsif ($k eq 'kill_launcher')
	{
		$ctx->kill_type($k, 'bunnydb launcher', 5);
	}
	elsif ($k eq 'kill_snapshot')
	{
		# a copy can be over in a second: look from the moment the
		# operation is in, then let the copy run a little (how long
		# comes from the plan's offset)
		$ctx->kill_type($k, "bunnydb snapshot $ctx->{m}", 10, $a->{at} - int($a->{at} / 0.1) * 0.1);
	}
	elsif ($k eq 'dest_restart')
	{
		$ctx->{dst}->stop('immediate');
		$ctx->{dst}->start;
		$ctx->{hits}{$k}++;
		$ctx->event('destination stopped (immediate) and started');
	}
	elsif ($k eq 'source_restart')
	{
		$ctx->{src}->restart;
		$ctx->{hits}{$k}++;
		$ctx->event('source restarted (fast)');
	}
	elsif ($k eq 'source_crash')
	{
		$ctx->{src}->stop('immediate');
		$ctx->{src}->start;
		$ctx->{hits}{$k}++;
		$ctx->event('source stopped (immediate) and started');
	}
	elsif ($k eq 'walsender_cut')
	{
		my $n = 0;
		my $end = time() + 3;
		while (time() < $end)
		{
			my ($ok, $out) = $ctx->src(
				'SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity '
				  . "WHERE backend_type = 'walsender' AND application_name = " . lit("bunnydb:$ctx->{m}"));
			$n = $ok ? $out : 0;
			last if $n;
			usleep(100_000);
		}
		if ($n)
		{
			$ctx->{hits}{$k}++;
			$ctx->event("walsender_cut: $n walsender(s) terminated");
		}
		else
		{
			$ctx->{misses}{$k}++;
			$ctx->event('walsender_cut: no walsender of the mirror (missed)');
		}
	}
	else
	{
		die "unknown action $k";
	}
	return;
}

# ---------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------

sub start_sessions
{
	my ($ctx, $st) = @_;
	my @h;
	my $s = 0;
	foreach my $chunk (@{ $st->{sessions} })
	{
		$s++;
		my $file = "$ctx->{dir}/step$st->{n}_s$s.sql";
		spew($file, "SET client_min_messages = warning;\n" . join("\n", @$chunk) . "\n");
		my $err = "$file.err";
		my $h = IPC::Run::start(
			[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', $ctx->{src}->host, '-p', $ctx->{src}->port,
				'-d', 'postgres', '-f', $file ],
			'<', '/dev/null', '>', '/dev/null', '2>', $err, IPC::Run::timeout(900));
		push @h, { h => $h, s => $s, file => $file, err => $err };
	}
	return \@h;
}

sub finish_sessions
{
	my ($ctx, $st, $hs) = @_;
	foreach my $x (@$hs)
	{
		eval { $x->{h}->finish; };
		if ($@)
		{
			eval { $x->{h}->kill_kill; };
			$ctx->fail_run("session $x->{s} of step $st->{n} did not finish: $@");
			next;
		}
		my $rc = $x->{h}->result(0);
		my $err = -s $x->{err} ? do { local (@ARGV, $/) = ($x->{err}); <> } : '';
		if ($rc != 0 || $err =~ /ERROR|FATAL|could not|server closed/)
		{
			$ctx->fail_run("source session $x->{s} of step $st->{n} failed (exit $rc):\n$err"
				  . "(its SQL: $x->{file})");
		}
		unlink $x->{err} unless $err ne '';
	}
	return;
}

# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------

my $SETTINGS = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; "
  . "SET extra_float_digits = 1; SET bytea_output = 'hex';\n";

# the replicated columns of a table: the source's, minus the excluded
sub columns_of
{
	my ($ctx, $id) = @_;
	my $t = $ctx->{plan}{tables}{$id};
	return @{ $t->{compare_cols} } if $t->{compare_cols};
	my ($ok, $out, $err) = $ctx->src(
		"SELECT attname FROM pg_attribute WHERE attrelid = " . lit($t->{qname})
		  . '::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum');
	return undef unless $ok;
	my %ex = map { $_ => 1 } @{ $t->{exclude} };
	return grep { !$ex{$_} } split /\n/, $out;
}

sub select_of
{
	my ($qname, @cols) = @_;
	return 'SELECT ' . join(', ', map { qi($_) } @cols) . " FROM $qname";
}

# fingerprints of the tables on one side: id -> "count|md5", or undef
sub fingerprints
{
	my ($ctx, $node, $side, $cols) = @_;
	my @q;
	foreach my $id (sort keys %$cols)
	{
		my $t = $ctx->{plan}{tables}{$id};
		my $q = $side eq 'src' ? $t->{qname} : $t->{dst_qname};
		push @q, "SELECT '$id', count(*), coalesce(md5(string_agg(h, '' ORDER BY h)), '-') "
		  . 'FROM (SELECT md5(s::text) AS h FROM (' . select_of($q, @{ $cols->{$id} }) . ') s) x';
	}
	my %fp;
	my ($ok, $out, $err) = $ctx->sql($node, $SETTINGS . join("\nUNION ALL ", @q) . ';', timeout => 600);
	if (!$ok)
	{
		# one table at a time, to say which one
		foreach my $i (0 .. $#q)
		{
			my ($ok1, $out1, $err1) = $ctx->sql($node, $SETTINGS . $q[$i] . ';', timeout => 600);
			my $id = (sort keys %$cols)[$i];
			$fp{$id} = $ok1 ? (split /\|/, $out1, 2)[1] : "(query failed: " . (split /\n/, $err1)[0] . ')';
		}
		return \%fp;
	}
	foreach my $l (split /\n/, $out)
	{
		my ($id, $rest) = split /\|/, $l, 2;
		$fp{$id} = $rest;
	}
	return \%fp;
}

sub trunc
{
	my ($s, $n) = @_;
	$n //= 160;
	return length($s) > $n ? substr($s, 0, $n) . "...(" . length($s) . ' bytes)' : $s;
}

# rows that differ between the two sides of a table, as text lines
sub row_diff
{
	my ($ctx, $id, @cols) = @_;
	my $t = $ctx->{plan}{tables}{$id};
	my %rows;
	foreach my $side ([ src => $ctx->{src}, $t->{qname} ], [ dst => $ctx->{dst}, $t->{dst_qname} ])
	{
		my ($name, $node, $q) = @$side;
		my ($ok, $out, $err) = $ctx->sql($node,
			$SETTINGS . 'SELECT md5(s::text), row_to_json(s)::text FROM (' . select_of($q, @cols) . ') s;', timeout => 600);
		return ("  (could not read the rows on $name: $err)") unless $ok;
		foreach my $l (split /\n/, $out)
		{
			my ($h, $j) = split /\|/, $l, 2;
			push @{ $rows{$name}{$h} }, $j;
		}
	}
	my (@only_src, @only_dst);
	foreach my $h (keys %{ $rows{src} })
	{
		my $n = @{ $rows{src}{$h} } - @{ $rows{dst}{$h} // [] };
		push @only_src, (@{ $rows{src}{$h} })[ 0 .. $n - 1 ] if $n > 0;
	}
	foreach my $h (keys %{ $rows{dst} })
	{
		my $n = @{ $rows{dst}{$h} } - @{ $rows{src}{$h} // [] };
		push @only_dst, (@{ $rows{dst}{$h} })[ 0 .. $n - 1 ] if $n > 0;
	}
	# pair them by handle
	my $J = JSON::PP->new->utf8->canonical;
	my @handle = @{ $t->{handle} // [] };
	my $hkey = sub {
		my $o = eval { $J->decode($_[0]) } // {};
		return (join("\x1f", map { defined $o->{$_} ? $J->encode([ $o->{$_} ]) : 'null' } @handle), $o);
	};
	my (%s, %d);
	foreach (@only_src) { my ($k, $o) = $hkey->($_); push @{ $s{$k} }, [ $_, $o ]; }
	foreach (@only_dst) { my ($k, $o) = $hkey->($_); push @{ $d{$k} }, [ $_, $o ]; }
	my @lines;
	my ($nd, $ns, $nx) = (0, 0, 0);
	foreach my $k (sort keys %s)
	{
		if (@handle && $d{$k})
		{
			my ($a, $b) = (shift @{ $s{$k} }, shift @{ $d{$k} });
			delete $d{$k} unless @{ $d{$k} };
			$nd++;
			next if $nd > 8;
			my @dc;
			foreach my $c (@cols)
			{
				my ($va, $vb) = map { $J->encode([ $_->[1]{$c} ]) } $a, $b;
				push @dc, "$c: source " . trunc($va, 120) . ' / destination ' . trunc($vb, 120) if $va ne $vb;
			}
			push @lines, "  differs (" . join(', ', map { "$_=" . ($a->[1]{$_} // 'NULL') } @handle) . "): " . join('; ', @dc);
		}
		foreach my $r (@{ $s{$k} })
		{
			$ns++;
			push @lines, '  missing on the destination: ' . trunc($r->[0], 300) if $ns <= 8;
		}
	}
	foreach my $k (sort keys %d)
	{
		foreach my $r (@{ $d{$k} })
		{
			$nx++;
			push @lines, '  extra on the destination: ' . trunc($r->[0], 300) if $nx <= 8;
		}
	}
	unshift @lines, "  $nd row(s) differ, $ns missing on the destination, $nx extra on the destination";
	return @lines;
}

# wait_for_lsn up to the source's position, then compare (retrying for a
# while: a resync may still replay its queue)
sub compare
{
	my ($ctx, $tables, $final) = @_;
	my %cols;
	foreach my $id (@$tables)
	{
		my @c = $ctx->columns_of($id);
		if (@c == 1 && !defined $c[0])
		{
			return $ctx->fail_run("cannot read the columns of $ctx->{plan}{tables}{$id}{qname} on the source");
		}
		$cols{$id} = \@c;
	}
	my ($ok, $lsn) = $ctx->src('SELECT pg_current_wal_lsn()');
	my ($ok2, $w) = $ctx->dst('SELECT bunny.wait_for_lsn(' . lit($ctx->{m}) . ", '$lsn', 90000)", timeout => 150);
	$ctx->event("checkpoint: wait_for_lsn($lsn) = " . ($ok2 ? $w : 'error'));
	my $end = time() + ($final ? 60 : 30);
	my ($fs, $fd, @bad);
	while (1)
	{
		$fs = $ctx->fingerprints($ctx->{src}, 'src', \%cols);
		$fd = $ctx->fingerprints($ctx->{dst}, 'dst', \%cols);
		@bad = grep { ($fs->{$_} // '') ne ($fd->{$_} // '') } sort keys %cols;
		last if !@bad || time() > $end;
		sleep 1;
	}
	my $rows = 0;
	$rows += (split /\|/, $fs->{$_} // '0')[0] =~ /^(\d+)$/ ? $1 : 0 for keys %$fs;
	$ctx->{rows_compared} += $rows;
	if (!@bad)
	{
		$ctx->event(sprintf('checkpoint: %d tables identical (%d rows)', scalar(keys %cols), $rows));
		$ctx->{checkpoints}++;
		return 1;
	}
	my @msg = ("tables differ after catch-up (wait_for_lsn($lsn) returned " . ($ok2 ? $w : 'error') . '):');
	foreach my $id (@bad)
	{
		my $t = $ctx->{plan}{tables}{$id};
		push @msg, "$id $t->{qname} -> $t->{dst_qname}: source $fs->{$id}, destination $fd->{$id}";
		push @msg, "  columns compared: " . join(', ', map { qi($_) } @{ $cols{$id} });
		push @msg, $ctx->row_diff($id, @{ $cols{$id} }) if $fd->{$id} !~ /query failed/;
	}
	return $ctx->fail_run(join("\n", @msg));
}

# ---------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------

sub read_file
{
	my ($f) = @_;
	return '' unless -f $f;
	open my $fh, '<:raw', $f or return '';
	local $/;
	my $x = <$fh>;
	return $x;
}

# processes that died of a signal we did not send; PANIC and TRAP lines
sub scan_logs
{
	my ($ctx) = @_;
	my @bad;
	my $dlog = read_file($ctx->{dst}->logfile);
	foreach my $l (split /\n/, $dlog)
	{
		if ($l =~ /\(PID (\d+)\) was terminated by signal (\d+)/)
		{
			next if $2 == 9 && $ctx->{killed}{$1};
			push @bad, "destination: $l";
		}
		push @bad, "destination: $l" if $l =~ /PANIC|TRAP:|was terminated by exception/;
	}
	foreach my $l (split /\n/, read_file($ctx->{src}->logfile))
	{
		push @bad, "source: $l" if $l =~ /PANIC|TRAP:|was terminated by signal|terminated by exception/;
	}
	return @bad;
}

sub log_excerpt
{
	my ($file, $re, $n) = @_;
	my @l = grep { /$re/ && !/ statement: / } split /\n/, read_file($file);
	@l = @l[ -$n .. -1 ] if @l > $n;
	return join("\n", map { trunc($_, 400) } @l);
}

sub report
{
	my ($ctx) = @_;
	my @r;
	push @r, "bunnydb fuzz: seed $ctx->{seed} FAILED", '', 'failures:', map { "  - $_" } @{ $ctx->{failures} };
	push @r, '', "replay: $ctx->{replay_cmd}", "   or:  $ctx->{dir}/replay.sh (plan.json, exactly this plan)";
	push @r, "plan (readable): $ctx->{dir}/plan.sql";
	my $st = eval { $ctx->mstate };
	push @r, '', 'mirror: ' . ($st ? $st->{text} : '(unavailable)');
	my ($ok, $out) = eval { $ctx->dst(
		"SELECT string_agg(format('%s -> %s: %s snap=%s ins=%s upd=%s del=%s %s', source_table, destination_table, status, "
		  . "rows_snapshotted, rows_inserted, rows_updated, rows_deleted, coalesce(error_message, '')), E'\\n') "
		  . 'FROM bunny.mirror_tables WHERE mirror = ' . lit($ctx->{m}), retry => 5) };
	push @r, 'tables:', $out // '' if $ok;
	($ok, $out) = eval { $ctx->dst(
		"SELECT string_agg(format('%s %s %s %s', created_at, level, message, coalesce(details::text, '')), E'\\n' ORDER BY id) "
		  . 'FROM (SELECT * FROM bunny.mirror_logs WHERE mirror = ' . lit($ctx->{m}) . ' ORDER BY id DESC LIMIT 60) s', retry => 5) };
	push @r, '', 'bunny.mirror_logs (last 60):', $ok ? $out : '(unavailable)';
	push @r, '', 'destination server log (filtered, last 80 lines):',
	  log_excerpt($ctx->{dst}->logfile, qr/bunny|ERROR|FATAL|PANIC|TRAP|WARNING|terminated|LOG:  (database system|server process)/, 80);
	push @r, '', 'source server log (filtered, last 30 lines):',
	  log_excerpt($ctx->{src}->logfile, qr/ERROR|FATAL|PANIC|TRAP|terminated|walsender|replication/, 30);
	push @r, '', "full logs: " . $ctx->{dst}->logfile . ' and ' . $ctx->{src}->logfile;

	# the key lines, for the test's own output
	($ok, $out) = eval { $ctx->dst(
		"SELECT string_agg(format('%s %s', level, left(message, 300)), E'\\n' ORDER BY id) "
		  . 'FROM (SELECT * FROM bunny.mirror_logs WHERE mirror = ' . lit($ctx->{m})
		  . " AND level IN ('ERROR', 'WARNING') ORDER BY id DESC LIMIT 8) s", retry => 5) };
	$ctx->{excerpt} = join("\n", 'mirror: ' . ($st ? $st->{text} : '(unavailable)'),
		'last errors of bunny.mirror_logs:', ($ok && $out ne '' ? $out : '(none)'),
		'destination server log (last 12 errors):',
		log_excerpt($ctx->{dst}->logfile, qr/ERROR|FATAL|PANIC|TRAP|terminated by signal/, 12));
	return join("\n", @r) . "\n";
}

# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

sub setup_clusters
{
	my ($ctx) = @_;
	my $plan = $ctx->{plan};
	my $tag = "fz$plan->{seed}";
	$tag =~ s/[^A-Za-z0-9_]/_/g;
	my $src = PostgreSQL::Test::Cluster->new("${tag}_src");
	$src->init(allows_streaming => 'logical', extra => [ '--encoding=UTF8', '--locale=C' ]);
	$src->append_conf('postgresql.conf', qq(
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
max_connections = 60
shared_buffers = 32MB
max_wal_size = 1GB
wal_sender_timeout = '20s'
log_line_prefix = '%m [%p] %b '
log_min_messages = info
fsync = off
) . $plan->{source_conf});
	$src->start;
	my $dst = PostgreSQL::Test::Cluster->new("${tag}_dst");
	$dst->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
	$dst->append_conf('postgresql.conf', qq(
shared_preload_libraries = 'bunnydb'
max_worker_processes = 32
max_replication_slots = 10
wal_level = replica
max_connections = 60
restart_after_crash = on
log_line_prefix = '%m [%p] %b '
log_min_messages = info
fsync = off
bunny.retry_backoff_min = '200ms'
bunny.retry_backoff_max = '2s'
) . $plan->{dest_conf});
	$dst->start;
	@$ctx{qw(src dst)} = ($src, $dst);
	$ctx->must($dst, 'CREATE EXTENSION bunnydb', 'CREATE EXTENSION') // return 0;
	$ctx->must($dst, "SELECT bunny.create_peer('src', " . lit($src->connstr('postgres')) . ')', 'create_peer') // return 0;
	$ctx->must($dst, q{
CREATE FUNCTION public.fuzz_wait_backend(btype text, secs float8) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	r text;
	t0 timestamptz := clock_timestamp();
BEGIN
	LOOP
		PERFORM pg_stat_clear_snapshot();
		SELECT string_agg(pid::text, ',') INTO r FROM pg_stat_activity WHERE backend_type = btype;
		IF r IS NOT NULL OR clock_timestamp() - t0 > secs * interval '1 second' THEN
			RETURN r;
		END IF;
		PERFORM pg_sleep(0.002);
	END LOOP;
END
$$}, 'the helper function fuzz_wait_backend') // return 0;
	return 1;
}

# run_plan($plan, %o) -> result hash:
#   ok, seed, secs, failures, hits, misses, dir, replay, rows_compared
sub run_plan
{
	my ($plan, %o) = @_;
	local $ENV{PGCLIENTENCODING} = 'UTF8';
	my $ctx = new_ctx($plan, %o);
	remove_tree($ctx->{dir});
	$ctx->{replay_cmd} = write_plan_files($plan, $ctx->{dir});
	$ctx->{rows_compared} = 0;

	if ($ctx->setup_clusters)
	{
		$ctx->event("clusters up (source port " . $ctx->{src}->port . ', destination port ' . $ctx->{dst}->port . ')');
		$ctx->must($ctx->{src}, join(";\n", @{ $plan->{schema_sql} }) . ";\n", 'source schema');
		$ctx->must($ctx->{src}, join(";\n", @{ $plan->{initial_pre_sql} }) . ";\n", 'source initial rows')
		  unless $ctx->failed;
		$ctx->must($ctx->{dst}, join(";\n", @{ $plan->{dest_pre_sql} }) . ";\n", 'destination preparation')
		  if @{ $plan->{dest_pre_sql} } && !$ctx->failed;
		$ctx->event('source schema and initial rows in');
	}

	foreach my $st (@{ $plan->{steps} })
	{
		last if $ctx->failed;
		if (time() > $ctx->{deadline})
		{
			$ctx->fail_run("run exceeded its time limit before step $st->{n}");
			last;
		}
		$ctx->event(sprintf('step %d (%.1f s planned, %d session(s))', $st->{n}, $st->{dur}, scalar @{ $st->{sessions} }));
		foreach my $a (@{ $st->{pre} })
		{
			$ctx->act($a);
			last if $ctx->failed;
		}
		last if $ctx->failed;
		my $hs = $ctx->start_sessions($st);
		my $t1 = time();
		foreach my $a (@{ $st->{actions} })
		{
			my $wait = $t1 + $a->{at} - time();
			usleep(int($wait * 1_000_000)) if $wait > 0 && $a->{kind} ne 'kill_snapshot';
			$ctx->act($a);
			last if $ctx->failed;
		}
		$ctx->finish_sessions($st, $hs);
		$ctx->event(sprintf('step %d: sessions done after %.1f s', $st->{n}, time() - $t1));
		last if $ctx->failed;
		foreach my $a (@{ $st->{post} })
		{
			$ctx->act($a);
			last if $ctx->failed;
		}
		# a mirror that failed (for good) is seen at once
		my $s = $ctx->mstate;
		$ctx->fail_run("mirror FAILED after step $st->{n}: $s->{text}") if $s && $s->{status} eq 'FAILED';
	}
	if (!$ctx->failed)
	{
		foreach my $a (@{ $plan->{final} })
		{
			$ctx->act($a);
			last if $ctx->failed;
		}
	}
	if (!$ctx->failed)
	{
		my $s = $ctx->mstate;
		if (!$s || $s->{status} ne 'RUNNING' || $s->{pending} ne '-' || $s->{unsynced} != 0)
		{
			$ctx->fail_run('mirror not RUNNING and idle at the end: ' . ($s ? $s->{text} : '(unavailable)'));
		}
	}
	if ($ctx->{dst})
	{
		my @bad = $ctx->scan_logs;
		$ctx->fail_run("unexpected crash or PANIC in a server log:\n" . join("\n", @bad[ 0 .. ($#bad > 9 ? 9 : $#bad) ]))
		  if @bad;
	}

	my $secs = time() - $ctx->{t0};
	my $ok = !$ctx->failed;
	spew("$ctx->{dir}/events.txt", join("\n", @{ $ctx->{events} }) . "\n");
	if (!$ok && $ctx->{dst})
	{
		spew("$ctx->{dir}/report.txt", $ctx->report . "\nevents:\n" . join("\n", @{ $ctx->{events} }) . "\n");
	}
	foreach my $n (grep { defined } @$ctx{qw(src dst)})
	{
		$n->stop('immediate');
		$n->clean_node if $ok && !$ctx->{keep};
	}
	return {
		ok => $ok, seed => $plan->{seed}, secs => $secs, failures => $ctx->{failures},
		hits => $ctx->{hits}, misses => $ctx->{misses}, dir => $ctx->{dir}, replay => $ctx->{replay_cmd},
		rows_compared => $ctx->{rows_compared}, checkpoints => $ctx->{checkpoints} // 0,
		excerpt => $ctx->{excerpt} // '',
		events => $ctx->{events},
	};
}

1;
