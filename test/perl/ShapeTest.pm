
# Copyright (c) bunnydb authors
#
# ShapeTest - helpers of 020_table_shapes that check many tables of several
# mirrors at once: one query per side for the fingerprints or the column
# descriptions of a whole list of tables (a psql call per table and side
# would cost more than the operations being tested), waits for control
# operations of several mirrors running side by side, and the ERROR lines a
# mirror logged since a mark, for the diagnostics of a failed check.
#
# Table expressions are SQL put verbatim after FROM: a table name
# ('"my.schema"."tab.le"') or a subquery ('(SELECT * FROM ONLY p)').

package ShapeTest;

use strict;
use warnings;

use Exporter 'import';
use Time::HiRes qw(usleep time);
use Test::More;
use BunnyTest;

our @EXPORT = qw(
  run_sql
  fingerprints
  describe_tables
  wait_ops
  log_mark
  error_lines
);

# Run SQL, stopping at the first error; returns (ok, stdout, stderr), with
# psql's verbose error (SQLSTATE, detail, context) in stderr.
sub run_sql
{
	my ($node, $sql, %o) = @_;
	my ($ret, $out, $err);
	eval {
		($ret, $out, $err) = $node->psql(
			'postgres', $sql,
			on_error_stop => 1,
			extra_params => [ '-v', 'VERBOSITY=verbose' ],
			timeout => $o{timeout} // 300);
	};
	return (0, '', "psql died: $@") if $@;
	return (defined $ret && $ret == 0, $out // '', $err // '');
}

# One value per expression from one query; if that query fails (a table
# missing on one side, say), each expression is asked alone so that only
# the broken ones come back undef.
sub _per_expr
{
	my ($node, $exprs, $make) = @_;
	my @res = (undef) x @$exprs;
	my $sql = join("\nUNION ALL\n",
		map { "SELECT $_ AS i, (" . $make->($exprs->[$_]) . ') AS v' } 0 .. $#$exprs)
	  . "\nORDER BY 1";
	my ($ok, $out) = run_sql($node, $sql);
	if ($ok)
	{
		foreach my $line (split /\n/, $out)
		{
			my ($i, $v) = split /\|/, $line, 2;
			$res[$i] = $v;
		}
		return \@res;
	}
	foreach my $i (0 .. $#$exprs)
	{
		my ($ok1, $out1) = run_sql($node, 'SELECT (' . $make->($exprs->[$i]) . ')');
		$res[$i] = $out1 if $ok1;
	}
	return \@res;
}

# "rowcount|md5 of the sorted md5s of the rows' text" of each expression,
# as BunnyTest's fingerprint; computed on the server, so a 100 MB value
# never travels through psql.
sub fingerprints
{
	my ($node, $exprs) = @_;
	return _per_expr(
		$node, $exprs,
		sub {
			"SELECT count(*) || '|' || coalesce(md5(string_agg(h, '' ORDER BY h)), '-') "
			  . "FROM (SELECT md5(fp_row::text) AS h FROM $_[0] fp_row) s";
		});
}

# The columns of each table in order (name, type, NOT NULL, a collation
# other than the type's, generated expression, identity) and its primary
# key: what must be alike on both sides.
sub describe_tables
{
	my ($node, $tables) = @_;
	return _per_expr(
		$node, $tables,
		sub {
			my $rel = sql_literal($_[0]) . '::regclass';
			return qq{SELECT coalesce((SELECT string_agg(format('%I %s%s%s%s%s', a.attname,
                    format_type(a.atttypid, a.atttypmod),
                    CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                    CASE WHEN a.attcollation <> 0 AND a.attcollation <> ty.typcollation
                         THEN ' collate ' || a.attcollation::regcollation::text ELSE '' END,
                    CASE WHEN a.attgenerated <> '' THEN ' generated ' || a.attgenerated::text
                         || ' as ' || pg_get_expr(d.adbin, d.adrelid) ELSE '' END,
                    CASE WHEN a.attidentity <> '' THEN ' identity' ELSE '' END),
                  ', ' ORDER BY a.attnum)
           FROM pg_attribute a
           JOIN pg_type ty ON ty.oid = a.atttypid
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE a.attrelid = $rel AND a.attnum > 0 AND NOT a.attisdropped), '')
    || ' / PK(' ||
       coalesce((SELECT string_agg(quote_ident(a.attname), ',' ORDER BY k.ord)
           FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE i.indrelid = $rel AND i.indisprimary), '')
    || ')'};
		});
}

# wait_ops($dest, \@mirrors, marks => \%log_ids, %o): wait until each
# mirror has carried out its control operation: RUNNING, nothing pending,
# every table SYNCED.  A mirror counts as failed once it logged
# $o{max_errors} ERROR lines (default 3) after its mark in $o{marks}: the
# retries keep failing (error_count does not say so: it starts again from
# 0 whenever a batch of the stream goes through between two attempts); or
# when FAILED; or at the timeout.  Returns a hash mirror => '' (done) or
# the reason it is not.
sub wait_ops
{
	my ($dest, $mirrors, %o) = @_;
	my $timeout = $o{timeout} // 90;
	my $max_errors = $o{max_errors} // 3;
	my %left = map { $_ => 1 } @$mirrors;
	my %res;
	my %last;
	my $list = join(', ', map { sql_literal($_) } @$mirrors);
	my $marks = join(', ', map { '(' . sql_literal($_) . ', ' . ($o{marks}{$_} // 0) . ')' } @$mirrors);
	my $deadline = time() + $timeout;
	while (%left)
	{
		my $out = query_value($dest, qq{
SELECT m.name, m.status, coalesce(m.pending_op, '-'), m.error_count,
       (SELECT count(*) FROM bunny.mirror_tables t
         WHERE t.mirror = m.name AND t.status <> 'SYNCED'),
       (SELECT count(*) FROM bunny.mirror_logs l
         WHERE l.mirror = m.name AND l.id > k.mark AND l.level = 'ERROR'),
       coalesce(m.error_message, '')
  FROM bunny.mirror m JOIN (VALUES $marks) k(name, mark) ON k.name = m.name}) // '';
		foreach my $line (split /\n/, $out)
		{
			my ($name, $status, $op, $errs, $notsynced, $logged, $msg) = split /\|/, $line, 7;
			next unless $left{$name};
			$last{$name} = "status $status, pending $op, error_count $errs, "
			  . "$notsynced table(s) not SYNCED, $logged ERROR line(s) logged"
			  . ($msg ne '' ? ", error: $msg" : '');
			if ($status eq 'RUNNING' && $op eq '-' && $notsynced eq '0')
			{
				$res{$name} = '';
				delete $left{$name};
			}
			elsif ($logged >= $max_errors || $status eq 'FAILED')
			{
				$res{$name} = $last{$name};
				delete $left{$name};
			}
		}
		last if time() > $deadline;
		usleep(200_000) if %left;
	}
	$res{$_} = "timeout after ${timeout}s: " . ($last{$_} // '(no state)') foreach keys %left;
	return \%res;
}

# the id of the newest log line of a mirror
sub log_mark
{
	my ($dest, $mirror) = @_;
	return query_value($dest,
		'SELECT coalesce(max(id), 0) FROM bunny.mirror_logs WHERE mirror = ' . sql_literal($mirror)) // 0;
}

# ERROR and WARNING lines of a mirror after log id $mark, with SQLSTATE and
# context, oldest first, repeated lines counted once
sub error_lines
{
	my ($dest, $mirror, $mark) = @_;
	return query_value(
		$dest, qq{
SELECT string_agg(format('%s %s [%s] %s (x%s)', level, message, sqlstate, context, n), E'\\n' ORDER BY first)
  FROM (SELECT level, message, details ->> 'sqlstate' AS sqlstate,
               coalesce(details ->> 'context', '') AS context, min(id) AS first, count(*) AS n
          FROM bunny.mirror_logs
         WHERE mirror = } . sql_literal($mirror) . qq{ AND id > $mark AND level IN ('ERROR', 'WARNING')
         GROUP BY 1, 2, 3, 4) s}) // '';
}

1;
