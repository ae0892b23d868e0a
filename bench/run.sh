#!/usr/bin/env bash
#
# bunnydb benchmark: bunnydb against PostgreSQL's built-in logical replication
# (CREATE PUBLICATION / CREATE SUBSCRIPTION), same machine, same run, same
# clusters, same data.  The targets are in the README, section "Performance".
#
#     bash bench/run.sh [--scale N] [--only copy,tpcb,bigtxn,lag] [--keep]
#                            [--copy-pairs 1|2] [--no-pglogical]
#                            [--long-wait] [--dir DIR] [--smoke]
#                            [--port-base P]
#     bash bench/run.sh --only tables [--tables 100,1000] [--stats]
#                            [--smoke] [--dir DIR] [--port-base P] [--keep]
#     bash bench/run.sh --only mirrors [--mirrors 1,10,30] [--rate 200]
#                            [--smoke] [--dir DIR] [--port-base P] [--keep]
#     bash bench/run.sh --only values [--value-mb 100]
#                            [--smoke] [--dir DIR] [--port-base P] [--keep]
#     bash bench/run.sh --only bigtable [--bigtable-gb 3]
#                            [--smoke] [--dir DIR] [--port-base P] [--keep]
#
# --port-base P: the source listens on port P, the destination on P+1
# (default 5541 and 5542).  Environment BUNNY_PREFIX=/opt/x: use the
# PostgreSQL 15 copy under $BUNNY_PREFIX/usr/lib/postgresql/15 (made with
# cp -a of /usr/lib/postgresql/15 and /usr/share/postgresql/15 into it,
# bunnydb installed there with `make install DESTDIR=$BUNNY_PREFIX`) for
# both clusters, so a private build of bunnydb is measured without
# installing it into the system's PostgreSQL.
#
# --smoke runs every step on tiny sizes (scale 1 unless --scale is given,
# 1 000 TPC-B transactions, a 20 000-row transaction, 5 s of lag sampling):
# under a minute, too small for the targets to mean anything (the built-in's
# catch-ups then mostly measure its launcher's 5 s wait before it restarts
# a subscription's worker), but it checks that the bench works end to end
# and that every destination matches the source.  The test suite
# (test/run_tests.sh) runs it that way.  With --only mirrors: --mirrors 1,3
# and 5 s of load; with --only values: 5 MB values and 500 wide rows (unless
# --mirrors / --value-mb say otherwise); with --only tables: --tables 20,100
# (unless --tables is given); with --only bigtable: 1 000 000 rows copied
# in parts of 100 000 (snapshot_num_rows_per_partition), sampled every 0.25 s.
#
# Requirements: Debian 12, PostgreSQL 15 (/usr/lib/postgresql/15/bin, with
# pgbench and the contrib module dblink), bunnydb built and installed
# (`make install`).  Run as root; the clusters run as the `postgres` OS user.
# pglogical (apt-get install postgresql-15-pglogical), when installed, is
# measured as a third system in the same run (--no-pglogical: leave it out).
#
# Layout (everything under --dir, default /tmp/bunnydb-bench, owned by postgres;
# unix sockets only, no TCP):
#     source cluster       port 5541, database `bench` (pgbench tables + bigt),
#                          publication bench_pub, database `sampler` (dblink)
#     destination cluster  port 5542, shared_preload_libraries=bunnydb
#                          database dest_bunny   : extension, mirror `bench`
#                          database dest_builtin : subscription bench_sub
#                          database dest_pglogical : pglogical subscription
#                          bench_pgl (node bench_provider in `bench` on the
#                          source; tables in its sets default and, for
#                          pgbench_history, which has no key,
#                          default_insert_only)
# Both clusters are stopped and removed on exit (unless --keep).
#
# Workloads (the row "copy" always runs: the others need the mirror and the
# subscription it creates; --only selects the later workloads):
#   copy    pgbench -i -s N (with primary keys) + empty bigt; time from
#           create_mirror to status RUNNING, and from CREATE SUBSCRIPTION to all
#           pg_subscription_rel rows in state 'r'.  Two pairs: bunnydb then
#           built-in, then (into scratch databases) built-in then bunnydb;
#           the ratio is the sum over both pairs (--copy-pairs 1: first only).
#           pglogical: create_subscription until status 'replicating' and
#           every pglogical.local_sync_status row 'r'; third in the first
#           pair, first in the second.
#   tpcb    both paused; pgbench -n -c 4 -t 20000 (80 000 TPC-B transactions);
#           time the catch-up of each, one after the other.
#   bigtxn  both paused; one INSERT of 1 000 000 rows into bigt; time the
#           catch-up of each; peak memory of the bunnydb mirror worker (and,
#           for comparison, of the built-in apply worker).
#   lag     pgbench -n -c 8 -T 30 with both replicating live; every 0.2 s a
#           sampler takes the source's WAL insert position and measures how
#           long until each side has applied it; p50/p99.  With pglogical a
#           second pgbench run of the same length has bunnydb and pglogical
#           live (built-in disabled): each comparison is between two systems
#           that share the machine in the same way.
#   tables  (alone: --only tables; no pgbench data, no other workload) for
#           each N of --tables (default 100,1000; 10000 works with the disk
#           and time it needs), a source database tbl_N of N tables of
#           1 000 rows each (id int primary key, k int with a secondary
#           index, v text), published FOR ALL TABLES.  bunnydb: create_mirror
#           of the N tables into an empty database (bunnydb creates the
#           tables) until status RUNNING.  built-in: the schema pre-created
#           with pg_dump -s, CREATE SUBSCRIPTION until every
#           pg_subscription_rel row is 'r'.  bunnydb first, then built-in,
#           for each N in increasing order; each mirror and subscription is
#           dropped before the next N.  Printed per N: both times, the ratio,
#           the time per table of each (its growth with N shows a cost that
#           is not linear), bunnydb's phases from its log, and a check that
#           every destination table equals the source (row count and an
#           order-independent checksum per table, index count).  Both
#           clusters get max_locks_per_transaction = 1024 (bunnydb creates
#           the tables, and pg_dump -s locks them all, in one transaction).
#           Memory: from create_mirror until 3 s after RUNNING, every
#           0.2 s, the processes titled exactly "bunnydb mirror tblN" and
#           "bunnydb snapshot tblN" (see mem_sampler): peaks of VmRSS
#           minus RssShmem (the target's measure: README, mirror worker
#           under 200 MB at 10 000 tables), RssAnon and VmHWM, per N, and
#           KB per table from the growth between two Ns.
#           --stats: pg_stat_statements on both clusters (track = all), the
#           statements with the largest total time of each bunnydb copy, and
#           the wait events of bunnydb's processes sampled every 0.2 s
#           (environment BENCH_STATS_KEEP=DIR: the full statement lists of
#           each N are copied there as stats-N-source.txt, -destination.txt).
#   mirrors  (alone: --only mirrors) M mirrors from one source database
#           `mir` for each M of --mirrors (default 1,10,30).  Mirror i has
#           3 small pgbench-like tables: acc_i (1 000 rows), tel_i (11),
#           his_i (empty, bigserial key); the built-in has one publication
#           mpub_i and one subscription msub_i per mirror.  All M mirrors go
#           into one destination database mir_bunny_M (bunnydb creates the
#           tables), all M subscriptions into mir_builtin_M (tables
#           pre-created, untimed).  Start: from the first of M create calls
#           (one statement each, in one session) until every mirror is
#           RUNNING, then (6 s later) from the first of M CREATE SUBSCRIPTION
#           until every table of every subscription is 'r'; ratio.  Lag:
#           both systems live, pgbench -c 4 -R --rate (default 200
#           transactions/s, the same load for both) for 30 s: each transaction updates one row of acc_i and tel_i and
#           inserts into his_i of a random mirror i.  Every 0.2 s the
#           sampler commits one heartbeat transaction that updates the row
#           tid = 0 of every tel_i (the load never touches it), taking the
#           source's WAL insert position just before its COMMIT, and polls
#           both destinations every 5 ms until each mirror has applied it
#           (bunny.wait_for_lsn(name, lsn, 0); built-in: origin remote_lsn
#           or slot confirmed_flush_lsn), at most 10 s.  Per mirror p50/p99;
#           reported: the worst mirror's p99 and the median of the mirrors'
#           p99 of each system, their ratios, and the target (README: lag
#           p99 < 1 s for every mirror).  Then every table of both
#           destinations is checked against the source (as in tables), and
#           all mirrors and subscriptions are dropped before the next M.
#           The source commits with synchronous_commit = on here (with off,
#           the WAL writer's 200 ms delay would be most of the lag).  The
#           destination gets max_worker_processes = 260,
#           bunny.max_mirror_workers = 64, max_logical_replication_workers =
#           100, max_replication_slots = 160 (origins); the source 160
#           slots and walsenders.  Last, the worker-exhaustion step (an
#           observation, not timed): the destination restarted with
#           max_worker_processes = 8 and 10 mirrors created; what
#           bunny.mirrors, mirror_tables, the logs and the server log show
#           after 30 s; then half of the running mirrors paused, and (if the
#           others still do not run) all of them, 150 s each, to see whether
#           the stalled ones start by themselves; a paused mirror keeps its
#           worker, so (if they still do not run) the paused mirrors are
#           then dropped, and 180 s more.
#   values  (alone: --only values) rows with huge values and a table of
#           1 000 columns, in binary and in text transfer.  Source database
#           `vals`: big_b / big_t (id, t text, b bytea), row 1 with a
#           --value-mb (default 100) MB text and a --value-mb MB bytea
#           (incompressible: md5 hex and its bytes), 19 small rows;
#           wide_b / wide_t, 1 000 columns (int and short text), 5 000 rows.
#           The _t tables' key is of the domain bench_int (a user-defined
#           type): bunnydb then copies them and streams their mirror in text
#           (there is no setting to force text).  Four systems, each into
#           its own destination database: bunnydb mirror vbin (big_b,
#           wide_b), built-in subscription binary = true (same tables),
#           bunnydb mirror vtxt (big_t, wide_t), built-in binary = false
#           (same tables).  Initial copy: each alone, until RUNNING / every
#           table 'r'.  CDC: each alone (the others paused or disabled),
#           caught up untimed, then four statements, each timed from its
#           start on the source until applied: INSERT of a huge row, UPDATE
#           of it (both values replaced), INSERT of 1 000 wide rows, UPDATE
#           of them.  Memory (VmRSS minus RssShmem, every 0.2 s, by scanning
#           /proc for the destination postmaster's children by title): the
#           snapshot workers (largest one, and their sum) and the mirror
#           worker during the copy, the mirror worker during each CDC
#           statement; the built-in's table sync and apply workers alike.
#           Ratios bunnydb/built-in per mode, memory per MB of value.  Then
#           each destination is compared with the source: per big row the
#           length and md5 of both values, per wide table its row count
#           and an order-independent checksum.
#   bigtable  (alone: --only bigtable) one table bigtable (id bigint
#           primary key, two int columns, a 64-character text; about 116
#           bytes a row, 9.25 million rows per GB) of --bigtable-gb GB
#           (default 3, at most 3.5; the destination's shared_buffers is
#           1 GB), published as bt_pub.  Three copies, one after the other,
#           each alone, each into a database of its own: bunnydb
#           create_mirror with the default split (heap block ranges), the
#           built-in CREATE SUBSCRIPTION (table with its primary key
#           pre-created, untimed), bunnydb with "partition_key": "id" (key
#           ranges; README "Table mappings").  Each is timed until RUNNING /
#           'r'; ratio against the built-in.  Throughput: every 0.5 s a DO
#           block in `sampler` reads, through dblink, the copy's rows done
#           (bunny.copy_progress; the built-in: its COPY's
#           pg_stat_progress_copy) and bunnydb's running parts; printed:
#           the rows/s of each quarter and each tenth of the copy window
#           (first sample with rows to the first with all of them), last
#           quarter / first, slowest / fastest, and the median time of a
#           part started in the first and in the last quarter.  The split:
#           rows_copied of bunny.snapshot_part per part (min, max, mean,
#           stddev, cv; the same without the open-ended first and last
#           parts), parts and rows per snapshot worker.  Memory peaks of the
#           mirror and snapshot workers (the built-in's apply and table sync
#           workers), the peak disk use of --dir, and from dst.log the
#           checkpoints and the autovacuum and autoanalyze runs on the
#           table during each copy (log_autovacuum_min_duration = 0 on
#           the destination here).  Each copy is checked
#           against the source (row count, checksum of all rows, primary
#           key present) and its table then dropped, so the disk holds the
#           source and one copy at a time (at most 15.8 GB in --dir with
#           the WAL at 3 GB; both clusters get max_wal_size = 4GB here).
#           Environment BENCH_STATS_KEEP=DIR: each copy's samples (time,
#           rows, bytes, parts done and total, state, parts running) are
#           copied there as samples-<system>.txt.
#   references  (not systems under test; rows under the table): what
#           PostgreSQL itself needs on this machine.  After the copies, one
#           binary COPY pipe (psql | psql) of pgbench_accounts into a table
#           without indexes in a scratch database, then its primary key;
#           compared with one built-in copy.  After the bigtxn catch-ups,
#           pg_recvlogical draining the 1M-row transaction into /dev/null
#           from a slot made before it, with bunnydb's options (protocol
#           version 2, streaming, binary): the source's decoding and sending,
#           which every subscriber waits for.  After the tpcb catch-ups
#           (with two copy pairs), the backlog's net effect applied on the
#           destination alone: its history rows summed into one UPDATE per
#           table (keys in order) plus one INSERT, in one transaction, in the
#           built-in's scratch copy of the second pair.
#
# How the timed waits wait: on the server (srv_wait), one DO block per wait
# in database `sampler` that polls the destination through dblink every
# 10 ms (every 2 ms in the lag sampler), the same way for every system; for
# bunnydb it polls bunny.wait_for_lsn(name, lsn, 0).  A single long call
# bunny.wait_for_lsn(name, lsn, 600000) (--long-wait) waits the same way
# users do; it drops its xmin while it sleeps, so it does not hold back HOT
# pruning either.  A wait that keeps one snapshot for its whole length
# must not be used for any system: the apply then slows down on the
# bloating pgbench_branches/tellers (the built-in took 7-10 s instead of
# 2.5 s that way, bench/RESULTS.md session 12), i.e. the measurement would
# slow down what it measures.
#
# Catch-up criteria (the target LSN is pg_current_wal_insert_lsn() on the
# source right after the workload: with synchronous_commit=off on the source
# pg_current_wal_lsn() can be behind the last commit records):
#   bunnydb   bunny.wait_for_lsn('bench', target, timeout) returns true
#             (the mirror has committed everything up to target).
#   built-in  the subscription's replication origin on the destination
#             (pg_replication_origin_status.remote_lsn = end of the last
#             applied source commit) >= target, OR the slot's
#             confirmed_flush_lsn on the source >= target (needed when the
#             source wrote unpublished WAL after the last published commit:
#             the apply worker then confirms the position once idle).
#
set -euo pipefail

PGBIN=${BUNNY_PREFIX:+$BUNNY_PREFIX}/usr/lib/postgresql/15/bin
SCALE=50
ONLY="copy,tpcb,bigtxn,lag"
DIR=/tmp/bunnydb-bench
KEEP=0
WAIT_MODE=poll             # --long-wait: one long bunny.wait_for_lsn call instead
SRC_PORT=5541
DST_PORT=5542
MIRROR=bench
SUB=bench_sub
PUB=bench_pub
TPCB_CLIENTS=4
TPCB_TXNS=20000            # per client: 4 x 20 000 = 80 000
LAG_CLIENTS=8
LAG_SECONDS=30
LAG_INTERVAL_MS=200
BIGTXN_ROWS=1000000
COPY_TIMEOUT=1800          # seconds
CATCHUP_TIMEOUT=600        # seconds
COPY_PAIRS=2               # --copy-pairs 1: only the first (bunnydb first) pair
SMOKE=0                    # --smoke: tiny sizes, see the header
SCALE_GIVEN=0
PGL=auto                   # pglogical as a third system when installed
PGL_SUB=bench_pgl
TABLES_LIST=100,1000        # --only tables: the table counts, increasing
TABLES_GIVEN=0
TABLE_ROWS=1000            # rows per table of the tables workload
STATS=0                    # --stats: pg_stat_statements and wait-event sampling
MIRRORS_LIST=1,10,30       # --only mirrors: the mirror counts, increasing
MIRRORS_GIVEN=0
MIRROR_ROWS=1000           # rows of each mirror's accounts-like table
MIRROR_RATE=200            # --rate: pgbench transactions per second, all mirrors together
MIRRORS_EXH=10             # mirrors created in the worker-exhaustion step ...
MIRRORS_EXH_WORKERS=8      # ... with this max_worker_processes on the destination
VALUE_MB=100               # --only values: size of each huge value
VALUE_GIVEN=0
WIDE_ROWS=5000             # rows of the 1 000-column tables
BIGTABLE_GB=3              # --only bigtable: the table's size (heap), GB
BT_PART_ROWS=""            # --smoke: snapshot_num_rows_per_partition of its mirrors
BT_SAMPLE_S=0.5            # seconds between two samples of a copy's progress
TABLES_JSON='["public.pgbench_accounts","public.pgbench_branches","public.pgbench_tellers","public.pgbench_history","public.bigt"]'

CMDLINE="bash $0 $*"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --scale) SCALE=${2:?}; SCALE_GIVEN=1; shift 2 ;;
        --scale=*) SCALE=${1#*=}; SCALE_GIVEN=1; shift ;;
        --only) ONLY=${2:?}; shift 2 ;;
        --copy-pairs) COPY_PAIRS=${2:?}; shift 2 ;;
        --only=*) ONLY=${1#*=}; shift ;;
        --dir) DIR=${2:?}; shift 2 ;;
        --dir=*) DIR=${1#*=}; shift ;;
        --keep) KEEP=1; shift ;;
        --long-wait) WAIT_MODE=long; shift ;;
        --no-pglogical) PGL=0; shift ;;
        --smoke) SMOKE=1; shift ;;
        --tables) TABLES_LIST=${2:?}; TABLES_GIVEN=1; shift 2 ;;
        --tables=*) TABLES_LIST=${1#*=}; TABLES_GIVEN=1; shift ;;
        --stats) STATS=1; shift ;;
        --mirrors) MIRRORS_LIST=${2:?}; MIRRORS_GIVEN=1; shift 2 ;;
        --mirrors=*) MIRRORS_LIST=${1#*=}; MIRRORS_GIVEN=1; shift ;;
        --rate) MIRROR_RATE=${2:?}; shift 2 ;;
        --rate=*) MIRROR_RATE=${1#*=}; shift ;;
        --bigtable-gb) BIGTABLE_GB=${2:?}; shift 2 ;;
        --bigtable-gb=*) BIGTABLE_GB=${1#*=}; shift ;;
        --value-mb) VALUE_MB=${2:?}; VALUE_GIVEN=1; shift 2 ;;
        --value-mb=*) VALUE_MB=${1#*=}; VALUE_GIVEN=1; shift ;;
        --port-base) SRC_PORT=${2:?}; DST_PORT=$((SRC_PORT + 1)); shift 2 ;;
        --port-base=*) SRC_PORT=${1#*=}; DST_PORT=$((SRC_PORT + 1)); shift ;;
        -h|--help) usage 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage 2 ;;
    esac
done
[[ "$SCALE" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --scale must be a positive integer" >&2; exit 2; }
if [ "$SMOKE" = 1 ]; then
    [ "$SCALE_GIVEN" = 1 ] || SCALE=1
    TPCB_TXNS=250
    BIGTXN_ROWS=20000
    LAG_SECONDS=5
    [ "$MIRRORS_GIVEN" = 1 ] || MIRRORS_LIST=1,3
    [ "$VALUE_GIVEN" = 1 ] || VALUE_MB=5
    [ "$TABLES_GIVEN" = 1 ] || TABLES_LIST=20,100
    BT_PART_ROWS=100000
    BT_SAMPLE_S=0.25
    WIDE_ROWS=500
fi
for w in ${ONLY//,/ }; do
    case "$w" in copy|tpcb|bigtxn|lag|tables|mirrors|values|bigtable) ;; *) echo "run.sh: unknown workload in --only: $w" >&2; exit 2 ;; esac
done
# tables, mirrors, values and bigtable run alone, on clusters of their own
SOLO=""
for w in tables mirrors values bigtable; do
    if [[ ",$ONLY," == *",$w,"* ]]; then
        [ "$ONLY" = "$w" ] || { echo "run.sh: --only $w runs alone" >&2; exit 2; }
        SOLO=$w
    fi
done
if [ "$SOLO" = mirrors ]; then
    [[ "$MIRRORS_LIST" =~ ^[1-9][0-9]{0,2}(,[1-9][0-9]{0,2})*$ ]] || { echo "run.sh: --mirrors takes a list of integers from 1 to 999: 1,10,30" >&2; exit 2; }
    MIRRORS_LIST=$(tr ',' '\n' <<<"$MIRRORS_LIST" | sort -n | paste -sd,)
    [[ "$MIRROR_RATE" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --rate must be a positive integer" >&2; exit 2; }
fi
if [ "$SOLO" = values ]; then
    [[ "$VALUE_MB" =~ ^[1-9][0-9]*$ ]] && [ "$VALUE_MB" -le 300 ] || { echo "run.sh: --value-mb takes an integer from 1 to 300 (a text COPY line of the row must stay under 1 GB)" >&2; exit 2; }
fi
if [ "$SOLO" = bigtable ]; then
    # heap size in GB, so that source + one copy + WAL stay under 20 GB
    [[ "$BIGTABLE_GB" =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v g="$BIGTABLE_GB" 'BEGIN { exit !(g > 0 && g <= 3.5) }' \
        || { echo "run.sh: --bigtable-gb takes a size in GB above 0 and at most 3.5 (about 5 GB of disk per GB, see the header)" >&2; exit 2; }
    # about 116 bytes a row on disk (see bigtable_source)
    BT_ROWS=$(awk -v g="$BIGTABLE_GB" 'BEGIN { printf "%d", g * 9250000 }')
    BT_WARM_MB=$(awk -v g="$BIGTABLE_GB" 'BEGIN { m = g * 1100; if (m > 3500) m = 3500; printf "%d", m }')
    if [ "$SMOKE" = 1 ]; then
        BT_ROWS=1000000
        BT_WARM_MB=100
    fi
fi
TABLES_MODE=0
if [ "$SOLO" = tables ]; then
    TABLES_MODE=1
    # (table names are t00001 ... t99999)
    [[ "$TABLES_LIST" =~ ^[1-9][0-9]{0,4}(,[1-9][0-9]{0,4})*$ ]] || { echo "run.sh: --tables takes a list of integers from 1 to 99999: 100,1000" >&2; exit 2; }
    TABLES_LIST=$(tr ',' '\n' <<<"$TABLES_LIST" | sort -n | paste -sd,)
fi
want() { [[ ",$ONLY," == *",$1,"* ]]; }

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '\nrun.sh: ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
ratio() {   # a b -> a/b or n/a
    if [[ "$1" =~ ^[0-9.]+$ ]] && [[ "$2" =~ ^[0-9.]+$ ]] && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
    else
        echo n/a
    fi
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
kb_mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
fmt2() { awk -v x="$1" 'BEGIN { printf "%.2f", x }'; }
# pct FILE Q: nearest-rank percentile of the numbers in FILE
pct() { sort -n "$1" | awk -v q="$2" '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit } i = int(q * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; printf "%.1f", v[i] }'; }

as_pg() { (cd / && runuser -u postgres -- env PATH="$PGBIN:/usr/bin:/bin" "$@"); }
# q PORT DB SQL: one value (or rows), unaligned, no decoration
q() { as_pg psql -X -qAt -v ON_ERROR_STOP=1 -h "$DIR" -p "$1" -d "$2" -c "$3"; }
qs() { q "$SRC_PORT" "$1" "$2"; }
qd() { q "$DST_PORT" "$1" "$2"; }

SRC_CONNINFO="host=$DIR port=$SRC_PORT dbname=bench"
DST_BUNNY_CONNINFO="host=$DIR port=$DST_PORT dbname=dest_bunny"
DST_BUILTIN_CONNINFO="host=$DIR port=$DST_PORT dbname=dest_builtin"
DST_PGL_CONNINFO="host=$DIR port=$DST_PORT dbname=dest_pglogical"

BG_PIDS=()

stop_cluster() {
    local d=$1
    if [ -f "$d/postmaster.pid" ]; then
        as_pg pg_ctl -D "$d" -m fast -w -t 60 stop >/dev/null 2>&1 \
            || as_pg pg_ctl -D "$d" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
}

cleanup() {
    local rc=$?
    set +e
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ "$KEEP" = 1 ]; then
        log "--keep: clusters left running in $DIR (stop: pg_ctl -D $DIR/dst stop; pg_ctl -D $DIR/src stop)"
    else
        # destination first: its workers hold replication connections to the source
        stop_cluster "$DIR/dst"
        stop_cluster "$DIR/src"
        rm -rf "$DIR"
    fi
    exit $rc
}

# ---------------------------------------------------------------------------
# preflight
# ---------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root (sudo bash bench/run.sh)"
id postgres >/dev/null 2>&1 || die "no postgres OS user (apt-get install postgresql-15)"
for b in postgres initdb pg_ctl psql pgbench pg_dump; do
    [ -x "$PGBIN/$b" ] || die "$PGBIN/$b not found (apt-get install postgresql-15)"
done
LIBDIR=$("$PGBIN/pg_config" --pkglibdir)
SHAREDIR=$("$PGBIN/pg_config" --sharedir)
[ -f "$LIBDIR/bunnydb.so" ] || die "$LIBDIR/bunnydb.so not found: build and install bunnydb first (make && make install)"
[ -f "$SHAREDIR/extension/bunnydb.control" ] || die "bunnydb.control not installed"
[ -f "$SHAREDIR/extension/dblink.control" ] || die "dblink (PostgreSQL contrib) not installed; it is part of postgresql-15"
if [ "$PGL" = auto ]; then
    if [ -f "$LIBDIR/pglogical.so" ] && [ -f "$SHAREDIR/extension/pglogical.control" ]; then PGL=1; else PGL=0; fi
fi
[ -n "$SOLO" ] && PGL=0     # the tables, mirrors and values workloads compare bunnydb and the built-in only
if [ "$STATS" = 1 ]; then
    [ -f "$LIBDIR/pg_stat_statements.so" ] || die "--stats needs pg_stat_statements (PostgreSQL contrib)"
fi

# ---------------------------------------------------------------------------
# header
# ---------------------------------------------------------------------------
echo "== bunnydb benchmark =="
echo "date:      $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "command:   $CMDLINE"
echo "machine:   $(uname -srm), nproc=$(nproc), memory=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "cpu:       $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
echo "postgres:  $("$PGBIN/postgres" --version)"
echo "bunnydb:   $LIBDIR/bunnydb.so md5=$(md5sum "$LIBDIR/bunnydb.so" | cut -c1-12) mtime=$(date -u -r "$LIBDIR/bunnydb.so" '+%Y-%m-%d %H:%M:%S UTC')"
if [ "$PGL" = 1 ]; then
    echo "pglogical: $(sed -n "s/^default_version = '\(.*\)'/\1/p" "$SHAREDIR/extension/pglogical.control") ($LIBDIR/pglogical.so)"
else
    echo "pglogical: not measured ($([ -f "$LIBDIR/pglogical.so" ] && echo "--no-pglogical" || echo "not installed: apt-get install postgresql-15-pglogical"))"
fi
echo "repo:      $(git -c safe.directory='*' -C "$REPO" describe --always --dirty 2>/dev/null || echo "none ($REPO is not a git checkout; the bunnydb line above identifies the library)")"
echo "wait mode: $WAIT_MODE (bunny.wait_for_lsn $([ "$WAIT_MODE" = long ] && echo "one long call" || echo "polled with timeout 0"))"
if [ "$SOLO" = mirrors ]; then
    echo "mirrors:   $MIRRORS_LIST mirrors of 3 tables each, $MIRROR_RATE transactions/s for ${LAG_SECONDS} s; workload: mirrors only"
elif [ "$SOLO" = bigtable ]; then
    echo "bigtable:  one table of $BT_ROWS rows (about $BIGTABLE_GB GB$([ "$SMOKE" = 1 ] && echo ", --smoke: parts of $BT_PART_ROWS rows")) with a primary key; workload: bigtable only"
elif [ "$SOLO" = values ]; then
    echo "values:    $VALUE_MB MB text + $VALUE_MB MB bytea in one row; $WIDE_ROWS rows of 1 000 columns; workload: values only"
elif [ "$TABLES_MODE" = 1 ]; then
    echo "tables:    $TABLES_LIST tables of $TABLE_ROWS rows (primary key + one secondary index each); workload: tables only$([ "$STATS" = 1 ] && echo ", --stats")"
else
    echo "scale:     $SCALE ($((SCALE * 100000)) pgbench_accounts rows); workloads: $ONLY (copy always runs)"
fi
echo "ports:     source $SRC_PORT, destination $DST_PORT; binaries $PGBIN"
[ "$SMOKE" = 1 ] && echo "smoke:     $((TPCB_CLIENTS * TPCB_TXNS)) TPC-B transactions, a $BIGTXN_ROWS-row transaction, ${LAG_SECONDS} s of lag sampling"
echo
echo "NOTE: these machines are noisy (shared, few cores).  The result is the"
echo "      ratio bunnydb/built-in measured in the same run, not the absolute times."
echo

# ---------------------------------------------------------------------------
# clusters
# ---------------------------------------------------------------------------
trap cleanup EXIT
trap 'exit 130' INT TERM

# leftovers of an earlier run
stop_cluster "$DIR/dst"
stop_cluster "$DIR/src"
rm -rf "$DIR"
mkdir -p "$DIR"
chown postgres:postgres "$DIR"
chmod 700 "$DIR"

for port in $SRC_PORT $DST_PORT; do
    if [ -S "$DIR/.s.PGSQL.$port" ]; then die "a server already listens on $DIR/.s.PGSQL.$port"; fi
done

make_cluster() {   # name port extra-conf
    local d=$DIR/$1
    as_pg initdb -D "$d" -U postgres --auth=trust -E UTF8 --locale=C >"$DIR/initdb-$1.log" 2>&1 \
        || { cat "$DIR/initdb-$1.log"; die "initdb $1 failed"; }
    cat >>"$d/postgresql.conf" <<EOF

# bunnydb benchmark
listen_addresses = ''
unix_socket_directories = '$DIR'
port = $2
logging_collector = off
log_min_messages = warning
$3
EOF
    as_pg pg_ctl -D "$d" -l "$DIR/$1.log" -w -t 60 start >/dev/null \
        || { tail -30 "$DIR/$1.log"; die "could not start the $1 cluster"; }
}

log "creating clusters in $DIR"
# pglogical: its output plugin must be allowed on the source (this
# PostgreSQL build only loads the plugins that output_plugin_libraries names)
PGL_SRC_CONF=""
PGL_DST_PRELOAD=""
if [ "$PGL" = 1 ]; then
    PGL_SRC_CONF="shared_preload_libraries = 'pglogical'"
    # (grep without -q: reading to the end spares postgres a SIGPIPE, which pipefail would report)
    if as_pg "$PGBIN/postgres" --describe-config 2>/dev/null | grep '^output_plugin_libraries' >/dev/null; then
        PGL_SRC_CONF="$PGL_SRC_CONF
output_plugin_libraries = 'pgoutput, test_decoding, pglogical_output'"
    fi
    PGL_DST_PRELOAD=",pglogical"
fi
# the tables workload: bunnydb creates all tables of a mirror in one
# transaction, pg_dump -s locks them all in one; --stats: statement
# statistics of both clusters (nested statements too: bunnydb's SPI and
# PL/pgSQL)
TABLES_CONF=""
TABLES_DST_PRELOAD=""
if [ "$TABLES_MODE" = 1 ]; then
    TABLES_CONF="max_locks_per_transaction = 1024"
    if [ "$STATS" = 1 ]; then
        TABLES_CONF="$TABLES_CONF
pg_stat_statements.track = all
pg_stat_statements.max = 10000"
        PGL_SRC_CONF="shared_preload_libraries = 'pg_stat_statements'"
        TABLES_DST_PRELOAD=",pg_stat_statements"
    fi
fi
# the mirrors workload: up to 30 mirrors and 30 subscriptions (and the
# built-in's table sync workers, each with a slot and a walsender of its
# own, and bunnydb's snapshot workers, each with a connection of its own)
SOLO_SRC_CONF=""
SOLO_DST_CONF=""
if [ "$SOLO" = mirrors ]; then
    # commits flushed at once (the default): with synchronous_commit = off
    # a walsender sees a commit only when the WAL writer flushes it, up to
    # wal_writer_delay (200 ms) later, which at a low rate would be most of
    # both systems' lag
    SOLO_SRC_CONF="synchronous_commit = on
max_replication_slots = 160
max_wal_senders = 160
max_connections = 400"
    SOLO_DST_CONF="max_worker_processes = 260
bunny.max_mirror_workers = 64
max_logical_replication_workers = 100
max_replication_slots = 160
max_connections = 200"
fi
if [ "$SOLO" = bigtable ]; then
    # recycled WAL segments are kept up to max_wal_size: with 8 GB on both
    # clusters, their WAL alone could take 16 GB of the disk
    SOLO_SRC_CONF="max_wal_size = 4GB"
    # what else runs during a copy, in dst.log (checkpoints are logged by
    # default): autovacuum and autoanalyze of the copied table
    SOLO_DST_CONF="max_wal_size = 4GB
log_autovacuum_min_duration = 0"
fi
make_cluster src $SRC_PORT "wal_level = logical
$PGL_SRC_CONF
$TABLES_CONF
max_replication_slots = 20
max_wal_senders = 20
shared_buffers = 1GB
max_wal_size = 8GB
checkpoint_timeout = 30min
synchronous_commit = off
$SOLO_SRC_CONF"
make_cluster dst $DST_PORT "shared_preload_libraries = 'bunnydb$PGL_DST_PRELOAD$TABLES_DST_PRELOAD'
$TABLES_CONF
max_worker_processes = 40
max_logical_replication_workers = 8
max_sync_workers_per_subscription = 4
shared_buffers = 1GB
max_wal_size = 8GB
checkpoint_timeout = 30min
synchronous_commit = off
$SOLO_DST_CONF"

checkpoint_both() { qs postgres "CHECKPOINT" && qd postgres "CHECKPOINT"; }

# settle_copy DB: VACUUM (ANALYZE) a destination database right after its
# timed copy, untimed.  Millions of fresh rows make autovacuum pick the table
# up within a minute, and its pass (a scan of the whole table that also
# writes each page) would otherwise land in whichever copy is timed next.
settle_copy() { log "$1: VACUUM (ANALYZE), untimed"; qd "$1" "VACUUM (ANALYZE)"; }

# ---------------------------------------------------------------------------
# bunnydb / built-in primitives
# ---------------------------------------------------------------------------
BUNNY_OK=1
BUILTIN_OK=1
declare -A RES      # RES[workload,bunny|builtin] = seconds or FAIL


# srv_wait WHAT TIMEOUT DB DEST_SQL [SRC_SQL]: wait on the server, not in the
# shell, for every timed wait (copies and catch-ups, all systems alike).
# One psql call runs a DO block in `sampler` on the source that holds one
# dblink connection to destination database DB and, every 10 ms, runs
# DEST_SQL there.  DEST_SQL returns one text value: 'ok' (done), NULL or
# 'wait' (poll again), 'down' (poll again, but fail after 30 s of 'down' in
# a row) or anything else (fail, with that text).  SRC_SQL, when given, is
# a boolean query on the source that also ends the wait (a slot's confirmed
# position).  The block commits after every poll, so it holds no snapshot
# between polls.  A shell loop starting runuser + psql for each poll costs
# about 40 ms of CPU per poll, a third of a core at ten polls a second,
# taken from the systems it measures, and sees the end of a wait up to
# 0.1 s late.
srv_wait() {
    local what=$1 timeout=$2 db=$3 dsql=$4 ssql=${5:-false} out
    out=$(as_pg psql -X -qAt -v ON_ERROR_STOP=1 -h "$DIR" -p "$SRC_PORT" -d sampler 2>&1 <<EOF
DO \$w\$
DECLARE
    r text;
    down_since timestamptz;
    deadline timestamptz := clock_timestamp() + interval '$timeout s';
BEGIN
    PERFORM dblink_connect('w', 'host=$DIR port=$DST_PORT dbname=$db');
    LOOP
        SELECT t.x INTO r FROM dblink('w', \$q\$$dsql\$q\$) AS t(x text);
        IF r IS DISTINCT FROM 'ok' AND ($ssql) THEN
            r := 'ok';
        END IF;
        EXIT WHEN r = 'ok';
        IF r = 'down' THEN
            down_since := coalesce(down_since, clock_timestamp());
            IF clock_timestamp() - down_since > interval '30 s' THEN
                RAISE EXCEPTION 'WAITFAIL % down for 30 s', '$what';
            END IF;
        ELSIF coalesce(r, 'wait') <> 'wait' THEN
            RAISE EXCEPTION 'WAITFAIL %: %', '$what', r;
        ELSE
            down_since := NULL;
        END IF;
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'WAITFAIL timeout: % after % s (last value: %)', '$what', $timeout, coalesce(r, 'NULL');
        END IF;
        COMMIT;
        PERFORM pg_sleep(0.01);
    END LOOP;
    PERFORM dblink_disconnect('w');
END
\$w\$;
EOF
) && return 0
    printf '%s\n' "$out" | sed 's/.*WAITFAIL //' | head -5 >&2
    return 1
}

bunny_diagnostics() {
    echo "---- bunnydb diagnostics ----"
    qd dest_bunny "SELECT 'status=' || status || ' phase=' || phase || ' error_count=' || error_count || E'\nerror_message: ' || coalesce(error_message, '(none)') FROM bunny.mirrors WHERE name = '$MIRROR'" || true
    echo "-- bunny.mirror_tables:"
    qd dest_bunny "SELECT source_table || ' ' || status || ' rows_snapshotted=' || coalesce(rows_snapshotted::text, '-') || coalesce(' error: ' || error_message, '') FROM bunny.mirror_tables WHERE mirror = '$MIRROR'" || true
    echo "-- bunny.logs (newest 30):"
    qd dest_bunny "SELECT created_at::time(0) || ' ' || level || ' ' || message || coalesce(' ' || details::text, '') FROM bunny.logs('$MIRROR', NULL, NULL, 30)" || true
    echo "-- destination server log (last 20 lines):"
    tail -20 "$DIR/dst.log" || true
    echo "-----------------------------"
}

# bunny_wait_status_in DB MIRROR WANT TIMEOUT: wait until the bunnydb mirror
# reaches status WANT; returns 1 on FAILED/timeout
bunny_wait_status_in() {
    srv_wait "bunnydb mirror $2 status $3" "$4" "$1" \
        "SELECT CASE status WHEN '$3' THEN 'ok' WHEN 'FAILED' THEN 'bunnydb mirror is FAILED (waiting for $3)' ELSE 'wait' END FROM bunny.mirrors WHERE name = '$2'"
}
bunny_wait_status() { bunny_wait_status_in dest_bunny "$MIRROR" "$1" "$2"; }   # want timeout

src_slot_inactive() {   # slot name, timeout: wait until no walsender holds it
    local deadline=$(( $(date +%s) + $2 ))
    while [ "$(qs postgres "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$1' AND active")" != 0 ]; do
        [ "$(date +%s)" -ge "$deadline" ] && { echo "timeout: slot $1 still active on the source"; return 1; }
        sleep 0.1
    done
}

bunny_pause_in() {   # db mirror: paused, and its walsender gone
    qd "$1" "SELECT bunny.pause_mirror('$2')" >/dev/null || return 1
    bunny_wait_status_in "$1" "$2" PAUSED 120 || return 1
    src_slot_inactive "$(qd "$1" "SELECT slot_name FROM bunny.mirrors WHERE name = '$2'")" 60
}
bunny_pause() { bunny_pause_in dest_bunny "$MIRROR"; }

sub_disable() {   # db subscription: disabled, its apply worker and walsender gone
    qd "$1" "ALTER SUBSCRIPTION $2 DISABLE" || return 1
    local deadline=$(( $(date +%s) + 60 ))
    while [ "$(qd "$1" "SELECT count(*) FROM pg_stat_subscription WHERE subname = '$2' AND pid IS NOT NULL")" != 0 ]; do
        [ "$(date +%s)" -ge "$deadline" ] && { echo "timeout: built-in apply worker of $2 still running"; return 1; }
        sleep 0.1
    done
    src_slot_inactive "$2" 60
}
builtin_pause() { sub_disable dest_builtin "$SUB"; }

SUB_ORIGIN=""

# peer_wait_lsn NAME DB ORIGIN SLOT LSN TIMEOUT
peer_wait_lsn() {
    srv_wait "$1 caught up with $5" "$6" "$2" \
        "SELECT CASE WHEN coalesce(max(remote_lsn), '0/0') >= '$5' THEN 'ok' ELSE 'wait' END FROM pg_replication_origin_status WHERE external_id = '$3'" \
        "SELECT coalesce(bool_or(confirmed_flush_lsn >= '$5'), false) FROM pg_replication_slots WHERE slot_name = '$4'"
}

builtin_wait_lsn() { peer_wait_lsn built-in dest_builtin "$SUB_ORIGIN" "$SUB" "$1" "$2"; }   # lsn timeout
builtin_resume() { qd dest_builtin "ALTER SUBSCRIPTION $SUB ENABLE"; }
builtin_apply_pid_sql="SELECT pid FROM pg_stat_subscription WHERE subname = '$SUB' AND relid IS NULL AND pid IS NOT NULL"

target_lsn() { qs postgres "SELECT pg_current_wal_insert_lsn()"; }

# ---- pglogical primitives (PGL_OK=1 while it is measured and has not failed)
PGL_OK=$PGL
PGL_ORIGIN=""   # its slot on the source, and its replication origin here

# pgl_subscribe DB SUB: subscribe DB's node to bench_provider and wait until
# the subscription replicates with every table synchronised
pgl_subscribe() {
    qd "$1" "SELECT pglogical.create_subscription('$2', '$SRC_CONNINFO', '{default,default_insert_only}')" >/dev/null || return 1
    # an apply worker that keeps failing (see the server log) leaves it down
    srv_wait "pglogical subscription $2 replicating with all tables ready" "$COPY_TIMEOUT" "$1" \
        "SELECT CASE WHEN s.status = 'replicating' AND t.ready THEN 'ok' WHEN s.status = 'down' THEN 'down' ELSE 'wait' END FROM pglogical.show_subscription_status('$2') s, (SELECT count(*) >= 6 AND bool_and(sync_status = 'r') AS ready FROM pglogical.local_sync_status) t"
}

pgl_apply_pid_sql="SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'pglogical apply%' AND datname = 'dest_pglogical'"

pgl_pause() {
    qd dest_pglogical "SELECT pglogical.alter_subscription_disable('$PGL_SUB', true)" >/dev/null || return 1
    local deadline=$(( $(date +%s) + 60 ))
    while [ -n "$(qd postgres "$pgl_apply_pid_sql")" ]; do
        [ "$(date +%s)" -ge "$deadline" ] && { echo "timeout: pglogical apply worker still running"; return 1; }
        sleep 0.1
    done
    src_slot_inactive "$PGL_ORIGIN" 60
}

pgl_resume() { qd dest_pglogical "SELECT pglogical.alter_subscription_enable('$PGL_SUB', true)" >/dev/null; }

pgl_wait_lsn() { peer_wait_lsn pglogical dest_pglogical "$PGL_ORIGIN" "$PGL_ORIGIN" "$1" "$2"; }   # lsn timeout

# bunny_wait_lsn_in DB MIRROR LSN TIMEOUT: the mirror caught up with LSN
# within TIMEOUT seconds (see WAIT_MODE)
bunny_wait_lsn_in() {
    local r
    if [ "$WAIT_MODE" = long ]; then
        r=$(qd "$1" "SELECT bunny.wait_for_lsn('$2', '$3', $(($4 * 1000)))") || return 1
        [ "$r" = t ]; return
    fi
    srv_wait "bunnydb $2 caught up with $3" "$4" "$1" \
        "SELECT CASE WHEN bunny.wait_for_lsn('$2', '$3', 0) THEN 'ok' WHEN status = 'FAILED' THEN 'bunnydb mirror FAILED while waiting for $3' ELSE 'wait' END FROM bunny.mirrors WHERE name = '$2'"
}
bunny_wait_lsn() { bunny_wait_lsn_in dest_bunny "$MIRROR" "$1" "$2"; }   # lsn timeout

# ---- memory sampler: peak VmRSS / RssAnon of a backend, every 0.2 s --------
# rss_sampler OUTFILE STOPFILE PORT DB PID-SQL CMDLINE-PATTERN
rss_sampler() {
    local out=$1 stop=$2 port=$3 db=$4 sql=$5 pat=$6 pid="" rss anon priv peak=0 peak_anon=0 peak_priv=0 n=0
    while [ ! -e "$stop" ]; do
        if [ -z "$pid" ] || ! tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "$pat"; then
            pid=$(q "$port" "$db" "$sql" 2>/dev/null | head -1) || pid=""
        fi
        rss=""
        if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
            read -r rss anon priv < <(awk '/^VmRSS:/ {r=$2} /^RssAnon:/ {a=$2} /^RssShmem:/ {s=$2} END {print r+0, a+0, r-s}' "/proc/$pid/status" 2>/dev/null) || true
            if [ -n "${rss:-}" ] && [ "$rss" -gt 0 ]; then
                n=$((n + 1))
                [ "$rss" -gt "$peak" ] && peak=$rss
                [ "$anon" -gt "$peak_anon" ] && peak_anon=$anon
                [ "$priv" -gt "$peak_priv" ] && peak_priv=$priv
            fi
        fi
        sleep 0.2
    done
    echo "$peak $peak_anon $peak_priv $n" >"$out"
}

start_rss() {   # name port db sql pattern
    rm -f "$DIR/rss-$1.stop" "$DIR/rss-$1.out"
    rss_sampler "$DIR/rss-$1.out" "$DIR/rss-$1.stop" "$2" "$3" "$4" "$5" &
    RSS_PID=$!
    BG_PIDS+=("$RSS_PID")
}
stop_rss() {    # name pid -> sets RSS_PEAK_MB RSS_ANON_MB RSS_PRIV_MB RSS_N
    touch "$DIR/rss-$1.stop"
    wait "$2" 2>/dev/null || true
    local peak anon priv n
    read -r peak anon priv n <"$DIR/rss-$1.out" || { peak=0; anon=0; priv=0; n=0; }
    RSS_N=$n
    # no sample: the process lived less than one sampling interval (a
    # --smoke catch-up); say so instead of printing 0.0 MB
    if [ "$n" -eq 0 ]; then
        RSS_PEAK_MB=n/a; RSS_ANON_MB=n/a; RSS_PRIV_MB=n/a
        return
    fi
    RSS_PEAK_MB=$(kb_mb "$peak")
    RSS_ANON_MB=$(kb_mb "$anon")
    RSS_PRIV_MB=$(kb_mb "$priv")
}

# ---------------------------------------------------------------------------
# tables (--only tables): N tables of 1 000 rows, for each N of --tables
# ---------------------------------------------------------------------------
# One line per table: name, row count and an order-independent checksum of
# its rows (sum of the hashes of their text forms), computed by one
# set-based aggregate per table; then the number of indexes of the schema.
# check_sql [CONDITION on c.relname]: that query for the tables that meet CONDITION
check_sql() {
    echo "SELECT c.relname || ' ' || (xpath('/row/n/text()', x))[1]::text || ' ' || (xpath('/row/s/text()', x))[1]::text
  FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace,
       LATERAL query_to_xml(format('SELECT count(*) AS n, coalesce(sum(hashtext(r::text)::bigint), 0) AS s FROM %I.%I r',
                                   s.nspname, c.relname), false, true, '') x
 WHERE s.nspname = 'public' AND c.relkind = 'r' AND (${1:-true})
UNION ALL
SELECT '~indexes ' || count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
  JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = 'public' AND (${1:-true})
 ORDER BY 1"
}
TABLES_CHECK_SQL=$(check_sql)

# tables_source N: database tbl_N on the source, N tables of TABLE_ROWS rows,
# publication tbl_pub FOR ALL TABLES; its schema dumped for the built-in
tables_source() {
    local n=$1 t0
    t0=$(now)
    qs postgres "CREATE DATABASE tbl_$n"
    qs "tbl_$n" "DO \$\$
BEGIN
    FOR i IN 1..$n LOOP
        EXECUTE format('CREATE TABLE public.%I (id int PRIMARY KEY, k int NOT NULL, v text NOT NULL)', 't' || lpad(i::text, 5, '0'));
        EXECUTE format('CREATE INDEX ON public.%I (k)', 't' || lpad(i::text, 5, '0'));
        EXECUTE format('INSERT INTO public.%I SELECT g, g %% 97, md5(g::text) FROM generate_series(1, $TABLE_ROWS) g', 't' || lpad(i::text, 5, '0'));
        IF i % 250 = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
END
\$\$"
    qs "tbl_$n" "VACUUM (ANALYZE)"
    qs "tbl_$n" "CREATE PUBLICATION tbl_pub FOR ALL TABLES"
    as_pg bash -c "pg_dump -s -n public -h '$DIR' -p $SRC_PORT tbl_$n" >"$DIR/schema-tbl_$n.sql" 2>"$DIR/schema-dump-$n.log" \
        || { cat "$DIR/schema-dump-$n.log"; die "pg_dump -s of tbl_$n failed"; }
    # the schema public exists in the destination database already
    sed -i -e '/^CREATE SCHEMA public;/d' -e '/^ALTER SCHEMA public OWNER/d' "$DIR/schema-tbl_$n.sql"
    chown postgres "$DIR/schema-tbl_$n.sql"
    log "source: tbl_$n with $n tables of $TABLE_ROWS rows in $(elapsed "$t0" "$(now)") s ($(qs "tbl_$n" "SELECT pg_size_pretty(pg_database_size(current_database()))"))"
}

# wait-event sampler (--stats): on the destination, every 0.2 s, what each
# bunnydb process waits on (CPU when it waits on nothing), until stopped
tables_waits_start() {   # n
    as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$DST_PORT" -d postgres >"$DIR/waits-$1.log" 2>&1 <<EOS &
DO \$\$
DECLARE
    deadline timestamptz := clock_timestamp() + interval '$COPY_TIMEOUT s';
BEGIN
    WHILE clock_timestamp() < deadline AND NOT EXISTS (SELECT FROM bench_waits_stop WHERE n = $1) LOOP
        INSERT INTO bench_waits
        SELECT $1, clock_timestamp(), regexp_replace(backend_type, ' \S+\$', ''),
               coalesce(split_part(split_part(query, ' public.', 1), ' "', 1), ''),
               coalesce(wait_event_type || ':' || wait_event, 'CPU')
          FROM pg_stat_activity WHERE backend_type LIKE 'bunnydb%' AND backend_type NOT LIKE '%launcher%';
        COMMIT;
        PERFORM pg_sleep(0.2);
    END LOOP;
END
\$\$;
EOS
    WAITS_PID=$!
    BG_PIDS+=("$WAITS_PID")
}
tables_waits_stop() {   # n
    qd postgres "INSERT INTO bench_waits_stop VALUES ($1)"
    wait "$WAITS_PID" 2>/dev/null || true
    echo "  wait events of bunnydb's processes, sampled every 0.2 s (samples, share of that process type):"
    qd postgres "SELECT format('    %-28s %-26s %-24s %6s %5s%%', backend_type, activity, wait, count(*),
                        round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY backend_type)))
                   FROM bench_waits WHERE n = $1 GROUP BY backend_type, activity, wait
                  ORDER BY backend_type, count(*) DESC" | head -40 || true
}

# statement statistics (--stats): reset before bunnydb's copy, shown after
tables_stats_reset() {
    qs postgres "SELECT pg_stat_statements_reset()" >/dev/null
    qd postgres "SELECT pg_stat_statements_reset()" >/dev/null
}
tables_stats_show() {   # n
    local n=$1 side port db
    for side in source destination; do
        if [ $side = source ]; then port=$SRC_PORT; db=tbl_$n; else port=$DST_PORT; db=dest_bunny_$n; fi
        echo "  $side ($db): $(q $port postgres "SELECT format('%s statements (%s per table), %s ms in all (%s ms per table)',
                sum(calls), round(sum(calls) / $n.0, 1), round(sum(total_exec_time)), round(sum(total_exec_time)::numeric / $n, 2))
              FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '$db' AND toplevel")"
        echo "    top statements by total time (calls, total ms, mean ms, rows, query):"
        q $port postgres "SELECT format('    %8s %9s %9s %9s  %s', calls, round(total_exec_time), round(mean_exec_time::numeric, 3), rows,
                                 left(regexp_replace(query, '\s+', ' ', 'g'), 160))
                            FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                           WHERE d.datname = '$db' ORDER BY total_exec_time DESC LIMIT 14"
        q $port postgres "SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 4), rows, toplevel,
                                 regexp_replace(query, '\s+', ' ', 'g')
                            FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                           WHERE d.datname = '$db' ORDER BY total_exec_time DESC" >"$DIR/stats-$n-$side.txt" 2>&1 || true
        [ -n "${BENCH_STATS_KEEP:-}" ] && cp "$DIR/stats-$n-$side.txt" "$BENCH_STATS_KEEP/" 2>/dev/null
    done
    return 0
}

# bunnydb's phases of mirror M from its log: launch (create_mirror returns
# until the worker logs "setup started"), setup (until the slot exists:
# describing the tables, creating them, the publication), prepare (until
# the copy starts), copy (until the copy finished: copies, indexes), finish
# (until setup complete); t0 = create_mirror called, t1 = RUNNING seen
tables_phases() {   # db mirror t0 tcall t1 n
    qd "$1" "WITH l AS (SELECT created_at AS t, message AS m FROM bunny.mirror_logs WHERE mirror = '$2'),
                  p AS (SELECT min(t) FILTER (WHERE m = 'setup started') AS setup,
                               min(t) FILTER (WHERE m LIKE 'created replication slot%') AS slot,
                               min(t) FILTER (WHERE m LIKE 'initial copy started%') AS copy,
                               min(t) FILTER (WHERE m LIKE 'copied table%') AS first_table,
                               max(t) FILTER (WHERE m LIKE 'copied table%') AS last_table,
                               count(*) FILTER (WHERE m LIKE 'copied table%') AS tables,
                               min(t) FILTER (WHERE m = 'initial copy finished') AS copied,
                               min(t) FILTER (WHERE m LIKE 'setup complete%') AS done
                          FROM l)
             SELECT format('create_mirror call %s s | launch %s s | setup %s s | prepare %s s | copy %s s (%s ms/table, %s tables logged) | finish %s s | to RUNNING %s s',
                           round($4 - $3, 2),
                           round(extract(epoch FROM setup - to_timestamp($4))::numeric, 2),
                           round(extract(epoch FROM slot - setup)::numeric, 2),
                           round(extract(epoch FROM copy - slot)::numeric, 2),
                           round(extract(epoch FROM copied - copy)::numeric, 2),
                           round(1000 * extract(epoch FROM copied - copy)::numeric / $6, 1), tables,
                           round(extract(epoch FROM done - copied)::numeric, 2),
                           round(extract(epoch FROM to_timestamp($5) - done)::numeric, 2))
               FROM p"
}

# tables_check N DB [SQL]: every table of DB equals the source's (its check
# in check-src-N.txt); sets TABLES_BAD
tables_check() {
    local n=$1 db=$2 bad
    q "$DST_PORT" "$db" "${3:-$TABLES_CHECK_SQL}" >"$DIR/check-$db.txt"
    bad=$(diff "$DIR/check-src-$n.txt" "$DIR/check-$db.txt" | grep -c '^[<>]' || true)
    if [ "$bad" = 0 ]; then
        log "$db: all $(grep -vc '^~indexes' "$DIR/check-$db.txt") tables equal the source (rows and checksum per table), $(grep '^~indexes' "$DIR/check-$db.txt" | cut -d' ' -f2) indexes as on the source"
    else
        log "$db: MISMATCH: $bad differing lines against the source (first ones below)"
        diff "$DIR/check-src-$n.txt" "$DIR/check-$db.txt" | head -6
        TABLES_BAD=1
    fi
}

# mem_per_table MB1 MB2 N1 N2: KB per table between two table counts
mem_per_table() {
    if [[ "$1" =~ ^[0-9.]+$ ]] && [[ "$2" =~ ^[0-9.]+$ ]] && [ "$4" -gt "$3" ]; then
        awk -v a="$1" -v b="$2" -v n1="$3" -v n2="$4" 'BEGIN { printf "%.1f", (b - a) * 1024 / (n2 - n1) }'
    else
        echo n/a
    fi
}

tables_main() {
    local n t0 tc t1 first=1 mirror sub sub_oid pm ps
    local -a NS=()
    TABLES_BAD=0
    qs postgres "CREATE DATABASE sampler"
    qs sampler "CREATE EXTENSION dblink"
    if [ "$STATS" = 1 ]; then
        qs postgres "CREATE EXTENSION pg_stat_statements"
        qd postgres "CREATE EXTENSION pg_stat_statements"
        qd postgres "CREATE TABLE bench_waits (n int, at timestamptz, backend_type text, activity text, wait text)"
        qd postgres "CREATE TABLE bench_waits_stop (n int)"
    fi
    # see the copy workload: new clusters have no WAL segments to recycle
    log "destination: writing and dropping about 1.3 GB of WAL, untimed (new clusters have no WAL segments to recycle)"
    qd postgres "CREATE TABLE bench_wal_warmup AS SELECT g, repeat('x', 400) AS v FROM generate_series(1, 3000000) g"
    qd postgres "DROP TABLE bench_wal_warmup"
    qd postgres "CHECKPOINT"
    for n in ${TABLES_LIST//,/ }; do
        echo
        log "== tables: $n tables of $TABLE_ROWS rows =="
        NS+=("$n")
        tables_source "$n"
        q "$SRC_PORT" "tbl_$n" "$TABLES_CHECK_SQL" >"$DIR/check-src-$n.txt"
        qd postgres "CREATE DATABASE dest_bunny_$n"
        qd "dest_bunny_$n" "CREATE EXTENSION bunnydb"
        qd "dest_bunny_$n" "SELECT bunny.create_peer('src', 'host=$DIR port=$SRC_PORT dbname=tbl_$n')" >/dev/null
        qd postgres "CREATE DATABASE dest_builtin_$n"
        as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p $DST_PORT -d "dest_builtin_$n" -f "$DIR/schema-tbl_$n.sql" >"$DIR/schema-load-$n.log" 2>&1 \
            || { tail -20 "$DIR/schema-load-$n.log"; die "could not load the schema into dest_builtin_$n"; }

        mirror=tbl$n
        checkpoint_both
        [ "$STATS" = 1 ] && { tables_stats_reset; tables_waits_start "$n"; }
        start_mem "tbl$n-mirror" title "bunnydb mirror $mirror"; pm=$MEM_PID
        start_mem "tbl$n-snap" title "bunnydb snapshot $mirror"; ps=$MEM_PID
        log "bunnydb: create_mirror of $n tables ... until status RUNNING"
        t0=$(now)
        if qd "dest_bunny_$n" "SELECT bunny.create_mirror('$mirror', 'src',
                 (SELECT jsonb_agg(format('public.%I', 't' || lpad(g::text, 5, '0'))) FROM generate_series(1, $n) g))" >/dev/null \
           && tc=$(now) \
           && bunny_wait_status_in "dest_bunny_$n" "$mirror" RUNNING "$COPY_TIMEOUT"; then
            t1=$(now)
            RES[tables$n,bunny]=$(elapsed "$t0" "$t1")
            log "bunnydb, $n tables: ${RES[tables$n,bunny]} s"
            RES[tables$n,phases]=$(tables_phases "dest_bunny_$n" "$mirror" "$t0" "$tc" "$t1" "$n") || RES[tables$n,phases]=n/a
            log "bunnydb phases: ${RES[tables$n,phases]}"
        else
            RES[tables$n,bunny]=FAIL
            qd "dest_bunny_$n" "SELECT status || ' ' || coalesce(error_message, '') FROM bunny.mirrors WHERE name = '$mirror'" || true
            qd "dest_bunny_$n" "SELECT created_at::time(0) || ' ' || level || ' ' || message FROM bunny.logs('$mirror', NULL, NULL, 20)" || true
            tail -20 "$DIR/dst.log"
        fi
        # memory: the mirror worker into its first seconds of streaming
        # (untimed), the snapshot workers over the whole copy
        sleep 3
        stop_mem "tbl$n-mirror" "$pm"
        RES[tables$n,mir_priv]=$M_PRIV; RES[tables$n,mir_hwm]=$M_HWM; RES[tables$n,mir_anon]=$M_ANON; RES[tables$n,mir_rss]=$M_RSS
        stop_mem "tbl$n-snap" "$ps"
        RES[tables$n,snap_priv]=$M_PRIV; RES[tables$n,snap_hwm]=$M_HWM; RES[tables$n,snap_sum]=$M_SUM; RES[tables$n,snap_n]=$M_PROCS
        log "bunnydb memory, $n tables: mirror worker peak VmRSS-RssShmem ${RES[tables$n,mir_priv]} MB, RssAnon ${RES[tables$n,mir_anon]} MB, VmHWM ${RES[tables$n,mir_hwm]} MB; snapshot workers (at most $M_PROCS at once): largest VmRSS-RssShmem ${RES[tables$n,snap_priv]} MB, VmHWM ${RES[tables$n,snap_hwm]} MB, sum ${RES[tables$n,snap_sum]} MB"
        if [ "$STATS" = 1 ]; then
            tables_waits_stop "$n"
            tables_stats_show "$n"
        fi

        # the built-in launcher starts a subscription's worker at most once
        # per wal_retrieve_retry_interval (5 s): let that pass, untimed
        [ "$first" = 1 ] || sleep 6
        first=0
        sub=tbl_sub_$n
        checkpoint_both
        log "built-in: CREATE SUBSCRIPTION of $n tables ... until every table is ready ('r')"
        t0=$(now)
        qd "dest_builtin_$n" "CREATE SUBSCRIPTION $sub CONNECTION 'host=$DIR port=$SRC_PORT dbname=tbl_$n' PUBLICATION tbl_pub"
        sub_oid=$(qd "dest_builtin_$n" "SELECT oid FROM pg_subscription WHERE subname = '$sub'")
        if srv_wait "built-in subscription $sub with all tables ready" "$COPY_TIMEOUT" "dest_builtin_$n" \
            "SELECT CASE WHEN count(*) = $n AND bool_and(srsubstate = 'r') THEN 'ok' ELSE 'wait' END FROM pg_subscription_rel WHERE srsubid = $sub_oid"; then
            RES[tables$n,builtin]=$(elapsed "$t0" "$(now)")
            log "built-in, $n tables: ${RES[tables$n,builtin]} s"
        else
            RES[tables$n,builtin]=FAIL
            tail -20 "$DIR/dst.log"
        fi
        log "$n tables: ratio bunnydb/built-in $(ratio "${RES[tables$n,bunny]}" "${RES[tables$n,builtin]}")"

        [ "${RES[tables$n,bunny]}" != FAIL ] && tables_check "$n" "dest_bunny_$n"
        [ "${RES[tables$n,builtin]}" != FAIL ] && tables_check "$n" "dest_builtin_$n"

        # free the slots and workers before the next N
        qd "dest_bunny_$n" "SELECT bunny.drop_mirror('$mirror')" >/dev/null || true
        qd "dest_builtin_$n" "DROP SUBSCRIPTION $sub" || true
    done

    # report: per N both times, the ratio, the time per table, and how the
    # time per table grew against the smallest N
    local b i r bpt ipt b0="" i0=""
    echo
    echo "== results: tables (nproc $(nproc); $TABLE_ROWS rows, primary key + 1 index per table) =="
    printf '%8s | %10s | %10s | %9s | %13s | %13s | %s\n' tables bunnydb built-in ratio "bunnydb/table" "built-in/table" "per-table growth vs $(cut -d, -f1 <<<"$TABLES_LIST") tables (bunnydb, built-in)"
    printf '%s\n' "---------+------------+------------+-----------+---------------+---------------+-----------------------------"
    for n in "${NS[@]}"; do
        b=${RES[tables$n,bunny]:-FAIL}; i=${RES[tables$n,builtin]:-FAIL}
        r=$(ratio "$b" "$i")
        bpt=$([[ "$b" =~ ^[0-9.]+$ ]] && awk -v t="$b" -v n="$n" 'BEGIN { printf "%.1f", 1000 * t / n }' || echo n/a)
        ipt=$([[ "$i" =~ ^[0-9.]+$ ]] && awk -v t="$i" -v n="$n" 'BEGIN { printf "%.1f", 1000 * t / n }' || echo n/a)
        [ -z "$b0" ] && b0=$bpt && i0=$ipt
        printf '%8s | %10s | %10s | %9s | %10s ms | %10s ms | x%s, x%s\n' "$n" "$(unit "$b" s)" "$(unit "$i" s)" "$r" "$bpt" "$ipt" "$(ratio "$bpt" "$b0")" "$(ratio "$ipt" "$i0")"
        RESULT_LINES+=("RESULT tables n=$n ratio=$r bunnydb_s=$b builtin_s=$i bunnydb_ms_per_table=$bpt builtin_ms_per_table=$ipt")
    done
    echo
    for n in "${NS[@]}"; do
        echo "bunnydb phases, $n tables: ${RES[tables$n,phases]:-n/a}"
    done
    # memory per N, and per table: the growth from the previous N divided
    # by the tables added (what a fixed cost per process does not blur)
    local pn="" mp ma mh sp sh kp ka ks v
    echo
    echo "bunnydb memory, peaks in MB (private = VmRSS-RssShmem, the target's measure; anon = RssAnon, the heap;"
    echo "HWM = VmHWM, the kernel's peak VmRSS, shared_buffers pages included); KB/table = growth from the previous N:"
    printf '%8s | %8s | %8s | %8s | %10s | %10s | %9s | %9s | %9s\n' tables "mir.priv" "mir.anon" "mir.HWM" "snap.priv" "snap.sum" "KB/t priv" "KB/t anon" "KB/t snap"
    printf '%s\n' "---------+----------+----------+----------+------------+------------+-----------+-----------+----------"
    for n in "${NS[@]}"; do
        mp=${RES[tables$n,mir_priv]:-n/a}; ma=${RES[tables$n,mir_anon]:-n/a}; mh=${RES[tables$n,mir_hwm]:-n/a}
        sp=${RES[tables$n,snap_priv]:-n/a}; sh=${RES[tables$n,snap_sum]:-n/a}
        kp=n/a; ka=n/a; ks=n/a
        if [ -n "$pn" ]; then
            kp=$(mem_per_table "${RES[tables$pn,mir_priv]:-}" "$mp" "$pn" "$n")
            ka=$(mem_per_table "${RES[tables$pn,mir_anon]:-}" "$ma" "$pn" "$n")
            ks=$(mem_per_table "${RES[tables$pn,snap_priv]:-}" "$sp" "$pn" "$n")
        fi
        v=$(awk -v m="$mp" -v n="$n" 'BEGIN { if (n < 10000 || m !~ /^[0-9.]+$/) print "-"; else print (m < 200 ? "PASS" : "FAIL") }')
        printf '%8s | %8s | %8s | %8s | %10s | %10s | %9s | %9s | %9s\n' "$n" "$mp" "$ma" "$mh" "$sp" "$sh" "$kp" "$ka" "$ks"
        RESULT_LINES+=("RESULT tables_mem n=$n mirror_private_mb=$mp mirror_rssanon_mb=$ma mirror_vmhwm_mb=$mh snapshot_private_mb=$sp snapshot_vmhwm_mb=${RES[tables$n,snap_hwm]:-n/a} snapshot_sum_private_mb=$sh snapshot_workers=${RES[tables$n,snap_n]:-0} mirror_private_kb_per_table=$kp mirror_rssanon_kb_per_table=$ka snapshot_private_kb_per_table=$ks target=mirror_private<200@10000 $v")
        pn=$n
    done
    echo
    printf '%s\n' "${RESULT_LINES[@]}"
    echo "RESULT tables_consistency $([ "$TABLES_BAD" = 0 ] && echo OK || echo MISMATCH)"
    echo
    echo "Notes: bunnydb creates the destination tables (create_mirror into an empty database);"
    echo "the built-in's tables are pre-created untimed (pg_dump -s).  For each N bunnydb runs"
    echo "first, then the built-in, never both at once; both copy with up to 4 processes"
    echo "(snapshot workers: twice the CPUs at most; max_sync_workers_per_subscription = 4)."
    echo "Memory: every 0.2 s from create_mirror until 3 s after RUNNING, processes matched by their exact"
    echo "title (bunnydb mirror / snapshot <mirror>); KB/table = growth from the previous N / tables added."
    echo "Reminder: noisy machine; compare ratios and per-table growth, not absolute times."
    [ "$TABLES_BAD" = 0 ] || return 1
    for n in "${NS[@]}"; do
        [ "${RES[tables$n,bunny]}" != FAIL ] && [ "${RES[tables$n,builtin]}" != FAIL ] || return 1
    done
    return 0
}


# ---- memory of the destination's processes of a title, every 0.2 s --------
# For workers that come and go or run several at once (snapshot workers,
# table sync workers) as for one: /proc is scanned for the destination
# postmaster's children whose command line has MATCH in it (MODE
# substring) or whose title is exactly "postgres: MATCH" (MODE title: the
# mirror worker of tbl1000 must not match the one of tbl10000).  The title
# is read with the shell's read up to the first NUL of /proc/PID/cmdline:
# no process is started per candidate.  Kept: the largest single process's
# peak VmRSS, VmRSS-RssShmem, RssAnon and VmHWM (the kernel's own peak,
# which no sampling interval misses), the peak sum of VmRSS-RssShmem over
# all of them, the most processes seen at once, the samples that saw one.
# mem_sampler OUTFILE STOPFILE MODE MATCH
mem_sampler() {
    local out=$1 stop=$2 mode=$3 match=$4 ppid f pid t line n rss priv anon hwm sum cnt
    local peak=0 ppriv=0 panon=0 phwm=0 psum=0 pmax=0 samples=0
    ppid=$(head -1 "$DIR/dst/postmaster.pid")
    while [ ! -e "$stop" ]; do
        sum=0; cnt=0
        for f in $(grep -l -a -F -- "$match" /proc/[0-9]*/cmdline 2>/dev/null); do
            if [ "$mode" = title ]; then
                t=""
                # (the process may be gone: the redirection fails first)
                { IFS= read -r -d '' t <"$f"; } 2>/dev/null || true
                t=${t%"${t##*[! ]}"}
                [ "$t" = "postgres: $match" ] || continue
            fi
            pid=${f#/proc/}; pid=${pid%/cmdline}
            line=$(awk '/^PPid:/ {p=$2} /^VmRSS:/ {r=$2} /^RssAnon:/ {a=$2} /^RssShmem:/ {s=$2} /^VmHWM:/ {h=$2} END {print p+0, r+0, r-s, a+0, h+0}' "/proc/$pid/status" 2>/dev/null) || continue
            read -r n rss priv anon hwm <<<"$line"
            [ "$n" = "$ppid" ] && [ "$rss" -gt 0 ] || continue
            cnt=$((cnt + 1)); sum=$((sum + priv))
            [ "$rss" -gt "$peak" ] && peak=$rss
            [ "$priv" -gt "$ppriv" ] && ppriv=$priv
            [ "$anon" -gt "$panon" ] && panon=$anon
            [ "$hwm" -gt "$phwm" ] && phwm=$hwm
        done
        if [ "$cnt" -gt 0 ]; then
            samples=$((samples + 1))
            [ "$sum" -gt "$psum" ] && psum=$sum
            [ "$cnt" -gt "$pmax" ] && pmax=$cnt
        fi
        sleep 0.2
    done
    echo "$peak $ppriv $panon $phwm $psum $pmax $samples" >"$out"
}
start_mem() {   # name mode match -> MEM_PID
    rm -f "$DIR/mem-$1.stop" "$DIR/mem-$1.out"
    mem_sampler "$DIR/mem-$1.out" "$DIR/mem-$1.stop" "$2" "$3" &
    MEM_PID=$!
    BG_PIDS+=("$MEM_PID")
}
# stop_mem name pid -> M_RSS M_PRIV M_ANON M_HWM M_SUM (MB, n/a without
# a sample) M_PROCS
stop_mem() {
    touch "$DIR/mem-$1.stop"
    wait "$2" 2>/dev/null || true
    local peak priv anon hwm sum procs n
    read -r peak priv anon hwm sum procs n <"$DIR/mem-$1.out" || { peak=0; priv=0; anon=0; hwm=0; sum=0; procs=0; n=0; }
    M_PROCS=$procs
    if [ "$n" -eq 0 ]; then
        M_RSS=n/a; M_PRIV=n/a; M_ANON=n/a; M_HWM=n/a; M_SUM=n/a
        return
    fi
    M_RSS=$(kb_mb "$peak"); M_PRIV=$(kb_mb "$priv"); M_ANON=$(kb_mb "$anon")
    M_HWM=$(kb_mb "$hwm"); M_SUM=$(kb_mb "$sum")
}

# psql_in PORT DB: run the SQL on stdin, stop at the first error
psql_in() { as_pg psql -X -qAt -v ON_ERROR_STOP=1 -h "$DIR" -p "$1" -d "$2"; }

# ---------------------------------------------------------------------------
# mirrors (--only mirrors): M mirrors from one source database
# ---------------------------------------------------------------------------
# mirrors_ddl FROM TO DATA: the tables of mirrors FROM..TO (acc_i with
# MIRROR_ROWS rows, tel_i with 11 (tid 0, the lag sampler's, and 1..10), his_i empty with a bigserial key); with
# DATA=1 (the source) also their rows and the built-in's publication mpub_i
mirrors_ddl() {
    local i
    for ((i = $1; i <= $2; i++)); do
        echo "CREATE TABLE acc_$i (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler char(84));"
        echo "CREATE TABLE tel_$i (tid int PRIMARY KEY, bid int NOT NULL, tbalance int NOT NULL, filler char(84));"
        echo "CREATE TABLE his_$i (id bigserial PRIMARY KEY, tid int NOT NULL, aid int NOT NULL, delta int NOT NULL, mtime timestamp NOT NULL);"
        if [ "$3" = 1 ]; then
            echo "INSERT INTO acc_$i SELECT g, 1, 0, '' FROM generate_series(1, $MIRROR_ROWS) g;"
            echo "INSERT INTO tel_$i SELECT g, 1, 0, '' FROM generate_series(0, 10) g;"
            echo "CREATE PUBLICATION mpub_$i FOR TABLE acc_$i, tel_$i, his_$i;"
        fi
    done
}
# the tables of mirrors 1..M, by name (acc_3, tel_3, his_3)
mirrors_filter() { echo "split_part(c.relname, '_', 2) ~ '^[0-9]+\$' AND split_part(c.relname, '_', 2)::int <= $1"; }

# mirrors_sampler_sql M: the lag sampler on the source for all M mirrors
# and all M subscriptions at once.  Every LAG_INTERVAL_MS it updates the
# row tid = 0 of every tel_i (a row the load never touches) in one
# transaction and takes pg_current_wal_insert_lsn() just before its
# COMMIT, so that every mirror has a commit at the sampled position to
# apply (a mirror that waited for its next commit from the load would
# measure the load's sparseness instead).  Then it polls both destination
# databases every 5 ms, one query per system for all that are not there
# yet, until each has applied the position (at most 10 s), and prints one
# NOTICE per system, mirror and sample: ms since the COMMIT, and whether
# it got there.  bunnydb: bunny.wait_for_lsn(name, lsn, 0); built-in: its
# origin's remote_lsn, or its slot's confirmed_flush_lsn on the source (the
# criteria of the lag workload).
mirrors_sampler_sql() {
    local m=$1 bnames inames
    bnames=$(seq -s, -f "'mir_%g'" 1 "$m")
    inames=$(seq -s, -f "'msub_%g'" 1 "$m")
    cat <<SQL
DO \$\$
DECLARE
    bnames text[] := ARRAY[$bnames];
    inames text[] := ARRAY[$inames];
    bpending text[];
    ipending text[];
    got text[];
    n text;
    t0 timestamptz;
    lsn pg_lsn;
    deadline timestamptz := clock_timestamp() + interval '$((LAG_SECONDS - 1)) s';
    next_t timestamptz := clock_timestamp();
BEGIN
    PERFORM dblink_connect('b', 'host=$DIR port=$DST_PORT dbname=mir_bunny_$m');
    PERFORM dblink_connect('i', 'host=$DIR port=$DST_PORT dbname=mir_builtin_$m');
    PERFORM dblink_connect('s', 'host=$DIR port=$SRC_PORT dbname=mir');
    WHILE clock_timestamp() < deadline LOOP
        PERFORM dblink_exec('s', 'BEGIN');
        FOR i IN 1..$m LOOP
            PERFORM dblink_exec('s', format('UPDATE tel_%s SET tbalance = tbalance + 1 WHERE tid = 0', i));
        END LOOP;
        SELECT r.l INTO lsn FROM dblink('s', 'SELECT pg_current_wal_insert_lsn()') AS r(l pg_lsn);
        PERFORM dblink_exec('s', 'COMMIT');
        t0 := clock_timestamp();
        bpending := bnames;
        ipending := inames;
        LOOP
            IF cardinality(bpending) > 0 THEN
                SELECT coalesce(array_agg(x), '{}') INTO got
                  FROM dblink('b', format('SELECT n FROM unnest(%L::text[]) n WHERE bunny.wait_for_lsn(n, %L, 0)', bpending, lsn)) AS r(x text);
                FOREACH n IN ARRAY got LOOP
                    RAISE NOTICE 'SAMPLE bunny % % t', n, round((extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric, 1);
                END LOOP;
                bpending := ARRAY(SELECT unnest(bpending) EXCEPT SELECT unnest(got));
            END IF;
            IF cardinality(ipending) > 0 THEN
                SELECT coalesce(array_agg(x), '{}') INTO got
                  FROM (SELECT r.x FROM dblink('i', format('SELECT s.subname::text FROM pg_subscription s JOIN pg_replication_origin_status o ON o.external_id = ''pg_'' || s.oid WHERE s.subname = ANY (%L::text[]) AND o.remote_lsn >= %L', ipending, lsn)) AS r(x text)
                        UNION SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = ANY (ipending) AND confirmed_flush_lsn >= lsn) u(x);
                FOREACH n IN ARRAY got LOOP
                    RAISE NOTICE 'SAMPLE builtin % % t', n, round((extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric, 1);
                END LOOP;
                ipending := ARRAY(SELECT unnest(ipending) EXCEPT SELECT unnest(got));
            END IF;
            EXIT WHEN cardinality(bpending) + cardinality(ipending) = 0 OR clock_timestamp() > t0 + interval '10 s';
            PERFORM pg_sleep(0.005);
        END LOOP;
        FOREACH n IN ARRAY bpending LOOP
            RAISE NOTICE 'SAMPLE bunny % % f', n, round((extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric, 1);
        END LOOP;
        FOREACH n IN ARRAY ipending LOOP
            RAISE NOTICE 'SAMPLE builtin % % f', n, round((extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric, 1);
        END LOOP;
        COMMIT;
        next_t := greatest(next_t + interval '$LAG_INTERVAL_MS ms', clock_timestamp());
        PERFORM pg_sleep(greatest(extract(epoch FROM next_t - clock_timestamp()), 0));
    END LOOP;
    PERFORM dblink_disconnect('b');
    PERFORM dblink_disconnect('i');
    PERFORM dblink_disconnect('s');
END
\$\$;
SQL
}

# mirrors_lag_stats M SYSTEM: from $DIR/mir-M-SYSTEM.samples (name ms ok)
# the p50 and p99 of each mirror; sets RES[mirM,SYSTEM_*]: the worst and
# the median mirror's p99 (and p50), the samples, the timeouts
mirrors_lag_stats() {
    local m=$1 sys=$2 f=$DIR/mir-$1-$2 name
    : >"$f.p99"; : >"$f.p50"
    for name in $(awk '{print $1}' "$f.samples" | sort -u); do
        awk -v n="$name" '$1 == n {print $2}' "$f.samples" >"$f.one"
        echo "$(pct "$f.one" 0.99) $name" >>"$f.p99"
        echo "$(pct "$f.one" 0.50) $name" >>"$f.p50"
    done
    RES[mir$m,${sys}_names]=$(wc -l <"$f.p99")
    RES[mir$m,${sys}_n]=$(wc -l <"$f.samples")
    RES[mir$m,${sys}_timeouts]=$(awk '$3 != "t"' "$f.samples" | wc -l)
    RES[mir$m,${sys}_p99_worst]=$(pct "$f.p99" 1)
    RES[mir$m,${sys}_p99_worst_name]=$(sort -n "$f.p99" | tail -1 | cut -d' ' -f2)
    RES[mir$m,${sys}_p99_median]=$(pct "$f.p99" 0.5)
    RES[mir$m,${sys}_p50_worst]=$(pct "$f.p50" 1)
    RES[mir$m,${sys}_p50_median]=$(pct "$f.p50" 0.5)
    RES[mir$m,${sys}_over1s]=$(awk '$1 >= 1000' "$f.p99" | wc -l)
    log "$sys: ${RES[mir$m,${sys}_n]} samples of ${RES[mir$m,${sys}_names]} mirrors; p99 worst ${RES[mir$m,${sys}_p99_worst]} ms (${RES[mir$m,${sys}_p99_worst_name]}), median ${RES[mir$m,${sys}_p99_median]} ms; p50 worst ${RES[mir$m,${sys}_p50_worst]} ms, median ${RES[mir$m,${sys}_p50_median]} ms; timeouts ${RES[mir$m,${sys}_timeouts]}; mirrors with p99 >= 1 s: ${RES[mir$m,${sys}_over1s]}"
}

# mirrors_start M SYS DB STATEMENT WAIT_SQL: run STATEMENT (printf format,
# every %d the mirror's number) for mirrors 1..M in DB, one statement each,
# then wait until WAIT_SQL says ok; RES[mirM,SYS] = seconds from the first
# statement (or FAIL), RES[mirM,SYS_calls] = until the statements returned
mirrors_start() {
    local m=$1 sys=$2 db=$3 t0 tc i
    checkpoint_both
    t0=$(now)
    RES[mir$m,${sys}_t0]=$t0
    local nd=${4//[^%]/}
    for ((i = 1; i <= m; i++)); do
        # as many arguments as the format has %d: printf repeats the format for more
        # shellcheck disable=SC2046,SC2059
        printf "$4\n" $(yes "$i" | head -n "${#nd}")
    done | psql_in "$DST_PORT" "$db" >/dev/null || { RES[mir$m,$sys]=FAIL; log "$sys: a create statement failed"; return 1; }
    tc=$(now)
    if srv_wait "all $m $sys mirrors started" "$COPY_TIMEOUT" "$db" "$5"; then
        RES[mir$m,$sys]=$(elapsed "$t0" "$(now)")
        RES[mir$m,${sys}_calls]=$(elapsed "$t0" "$tc")
        log "$sys, $m mirrors: all started after ${RES[mir$m,$sys]} s (the create statements returned after ${RES[mir$m,${sys}_calls]} s)"
    else
        RES[mir$m,$sys]=FAIL
        tail -20 "$DIR/dst.log"
        return 1
    fi
}

# mirrors_run M: M mirrors and M subscriptions, their start, their lag
# under one pgbench load, their consistency; they are dropped at the end
mirrors_run() {
    local m=$1 dbb=mir_bunny_$1 dbi=mir_builtin_$1 i pgb sb sys lsn
    qd postgres "CREATE DATABASE $dbb"
    qd "$dbb" "CREATE EXTENSION bunnydb"
    qd "$dbb" "SELECT bunny.create_peer('src', 'host=$DIR port=$SRC_PORT dbname=mir')" >/dev/null
    qd postgres "CREATE DATABASE $dbi"
    mirrors_ddl 1 "$m" 0 | psql_in "$DST_PORT" "$dbi"

    log "bunnydb: $m create_mirror calls (3 tables each, one statement each) ... until every mirror is RUNNING"
    if mirrors_start "$m" bunny "$dbb" "SELECT bunny.create_mirror('mir_%d', 'src', '[\"public.acc_%d\", \"public.tel_%d\", \"public.his_%d\"]');" \
        "SELECT CASE WHEN count(*) FILTER (WHERE status = 'RUNNING') = $m THEN 'ok' WHEN count(*) FILTER (WHERE status = 'FAILED') > 0 THEN 'a mirror is FAILED: ' || string_agg(name || ' ' || error_message, '; ') FILTER (WHERE status = 'FAILED') ELSE 'wait' END FROM bunny.mirrors"; then
        # each mirror's "setup started" and "setup complete" log lines: the first and the last
        RES[mir$m,bunny_spread]=$(qd "$dbb" "SELECT format('first mirror set up after %s s, last after %s s, workers started (setup started) from %s s to %s s',
                round(extract(epoch FROM min(created_at) FILTER (WHERE message LIKE 'setup complete%') - to_timestamp(${RES[mir$m,bunny_t0]}))::numeric, 2),
                round(extract(epoch FROM max(created_at) FILTER (WHERE message LIKE 'setup complete%') - to_timestamp(${RES[mir$m,bunny_t0]}))::numeric, 2),
                round(extract(epoch FROM min(created_at) FILTER (WHERE message = 'setup started') - to_timestamp(${RES[mir$m,bunny_t0]}))::numeric, 2),
                round(extract(epoch FROM max(created_at) FILTER (WHERE message = 'setup started') - to_timestamp(${RES[mir$m,bunny_t0]}))::numeric, 2))
              FROM bunny.mirror_logs") || RES[mir$m,bunny_spread]=n/a
        log "bunnydb: ${RES[mir$m,bunny_spread]}"
    else
        qd "$dbb" "SELECT name || ' ' || status || ' ' || phase || ' errors=' || error_count || coalesce(' ' || error_message, '') FROM bunny.mirrors WHERE status <> 'RUNNING' ORDER BY name" || true
    fi

    # the built-in launcher starts a worker at most once per
    # wal_retrieve_retry_interval (5 s) and database: let that pass, untimed
    sleep 6
    log "built-in: $m CREATE SUBSCRIPTION (one publication of 3 tables each) ... until every table of every subscription is ready ('r')"
    mirrors_start "$m" builtin "$dbi" "CREATE SUBSCRIPTION msub_%d CONNECTION 'host=$DIR port=$SRC_PORT dbname=mir' PUBLICATION mpub_%d;" \
        "SELECT CASE WHEN count(*) = 3 * $m AND bool_and(srsubstate = 'r') THEN 'ok' ELSE 'wait' END FROM pg_subscription_rel" || true
    log "$m mirrors: start ratio bunnydb/built-in $(ratio "${RES[mir$m,bunny]}" "${RES[mir$m,builtin]}")"

    # both live, one fixed-rate load over all M mirrors' tables, one lag
    # sampler per system
    if [ "${RES[mir$m,bunny]}" != FAIL ] && [ "${RES[mir$m,builtin]}" != FAIL ]; then
        sed "s/@M@/$m/" >"$DIR/mir-$m.pgbench" <<'PGB'
\set i random(1, @M@)
\set aid random(1, 1000)
\set tid random(1, 10)
\set delta random(-5000, 5000)
BEGIN;
UPDATE acc_:i SET abalance = abalance + :delta WHERE aid = :aid;
UPDATE tel_:i SET tbalance = tbalance + :delta WHERE tid = :tid;
INSERT INTO his_:i (tid, aid, delta, mtime) VALUES (:tid, :aid, :delta, CURRENT_TIMESTAMP);
END;
PGB
        chown postgres "$DIR/mir-$m.pgbench"
        checkpoint_both
        log "lag: pgbench -n -c 4 -j 2 -R $MIRROR_RATE -T $LAG_SECONDS over the $((3 * m)) tables of the $m mirrors (a random mirror per transaction); both systems live"
        as_pg pgbench -n -c 4 -j 2 -R "$MIRROR_RATE" -T "$LAG_SECONDS" -f "$DIR/mir-$m.pgbench" -h "$DIR" -p "$SRC_PORT" mir >"$DIR/pgbench-mir-$m.log" 2>&1 &
        pgb=$!; BG_PIDS+=("$pgb")
        sleep 0.5
        mirrors_sampler_sql "$m" >"$DIR/mir-$m.sql"
        chown postgres "$DIR/mir-$m.sql"
        as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$SRC_PORT" -d sampler -f "$DIR/mir-$m.sql" >"$DIR/mir-$m.raw" 2>&1 &
        sb=$!; BG_PIDS+=("$sb")
        wait "$pgb" || { tail -20 "$DIR/pgbench-mir-$m.log"; MIRRORS_BAD=1; log "pgbench failed"; }
        wait "$sb" || { tail -5 "$DIR/mir-$m.raw"; MIRRORS_BAD=1; log "the lag sampler failed"; }
        log "source: $(grep -E '^tps' "$DIR/pgbench-mir-$m.log" | head -1); $(grep -E 'latency average|schedule lag' "$DIR/pgbench-mir-$m.log" | paste -sd';')"
        for sys in bunny builtin; do
            sed -n "s/.*NOTICE:  SAMPLE $sys \\([^ ]*\\) \\([0-9.]*\\) \\([tf]\\)\$/\\1 \\2 \\3/p" "$DIR/mir-$m.raw" >"$DIR/mir-$m-$sys.samples"
            if [ -s "$DIR/mir-$m-$sys.samples" ]; then
                mirrors_lag_stats "$m" "$sys"
            else
                RES[mir$m,${sys}_p99_worst]=FAIL; RES[mir$m,${sys}_p99_median]=FAIL
                MIRRORS_BAD=1
            fi
        done
    fi

    # consistency: all caught up with the source's last position, then
    # every table of mirrors 1..M on both sides against the source
    lsn=$(target_lsn)
    q "$SRC_PORT" mir "$(check_sql "$(mirrors_filter "$m")")" >"$DIR/check-src-mir$m.txt"
    if [ "${RES[mir$m,bunny]}" != FAIL ]; then
        if srv_wait "all bunnydb mirrors caught up with $lsn" "$CATCHUP_TIMEOUT" "$dbb" \
            "SELECT CASE WHEN bool_and(bunny.wait_for_lsn(name, '$lsn', 0)) THEN 'ok' ELSE 'wait' END FROM bunny.mirrors"; then
            tables_check "mir$m" "$dbb"
        else
            MIRRORS_BAD=1
        fi
        log "bunnydb, $m mirrors: $(qd "$dbb" "SELECT format('error_count sum %s, WARNING/ERROR log lines %s, statuses %s', sum(error_count), (SELECT count(*) FROM bunny.mirror_logs WHERE level IN ('WARNING', 'ERROR')), string_agg(DISTINCT status, ',')) FROM bunny.mirrors")"
        qd "$dbb" "SELECT '  ' || created_at::time(0) || ' ' || mirror || ' ' || level || ' ' || message FROM bunny.mirror_logs WHERE level IN ('WARNING', 'ERROR') ORDER BY id LIMIT 10" || true
    fi
    if [ "${RES[mir$m,builtin]}" != FAIL ]; then
        for ((i = 1; i <= m; i++)); do
            peer_wait_lsn "built-in msub_$i" "$dbi" "pg_$(qd "$dbi" "SELECT oid FROM pg_subscription WHERE subname = 'msub_$i'")" "msub_$i" "$lsn" "$CATCHUP_TIMEOUT" \
                || { MIRRORS_BAD=1; break; }
        done
        tables_check "mir$m" "$dbi"
    fi

    # free the slots and workers before the next M
    for ((i = 1; i <= m; i++)); do
        echo "SELECT bunny.drop_mirror('mir_$i');"
    done | psql_in "$DST_PORT" "$dbb" >/dev/null || log "WARNING: could not drop every mirror of $dbb"
    for ((i = 1; i <= m; i++)); do
        echo "DROP SUBSCRIPTION msub_$i;"
    done | psql_in "$DST_PORT" "$dbi" >/dev/null || log "WARNING: could not drop every subscription of $dbi"
}

# mirrors_exhaustion: the destination restarted with max_worker_processes
# too small for MIRRORS_EXH mirrors; what bunny.mirrors shows for those
# that cannot start, and whether they start by themselves once half of the
# running ones are paused.  An observation: nothing is timed against the
# built-in, and the step fails only if the bench itself fails.
mirrors_exhaustion() {
    local k=$MIRRORS_EXH db=mir_exh i t0 deadline running paused
    echo
    log "== mirrors: max_worker_processes = $MIRRORS_EXH_WORKERS on the destination, $k mirrors =="
    qd postgres "ALTER SYSTEM SET max_worker_processes = $MIRRORS_EXH_WORKERS"
    as_pg pg_ctl -D "$DIR/dst" -l "$DIR/dst.log" -m fast -w -t 120 restart >/dev/null || die "could not restart the destination"
    log "destination restarted: max_worker_processes = $(qd postgres "SHOW max_worker_processes"); background workers running: $(qd postgres "SELECT string_agg(backend_type, ', ') FROM pg_stat_activity WHERE backend_type NOT IN ('client backend', 'checkpointer', 'background writer', 'walwriter', 'autovacuum launcher', 'archiver', 'startup')")"
    qd postgres "CREATE DATABASE $db"
    qd "$db" "CREATE EXTENSION bunnydb"
    qd "$db" "SELECT bunny.create_peer('src', 'host=$DIR port=$SRC_PORT dbname=mir')" >/dev/null
    EXH_LOG_FROM=$(wc -l <"$DIR/dst.log")
    t0=$(now)
    for ((i = 1; i <= k; i++)); do
        echo "SELECT bunny.create_mirror('mir_$i', 'src', '[\"public.acc_$i\", \"public.tel_$i\", \"public.his_$i\"]');"
    done | psql_in "$DST_PORT" "$db" >/dev/null
    for i in 1 2 3 4 5 6; do
        sleep 5
        log "after $(elapsed "$t0" "$(now)") s: $(qd "$db" "SELECT string_agg(status || ' ' || n, ', ' ORDER BY status) FROM (SELECT status, count(*) n FROM bunny.mirrors GROUP BY status) s"); bunnydb processes: $(qd postgres "SELECT string_agg(backend_type || ' x' || n, ', ') FROM (SELECT regexp_replace(backend_type, ' mir_[0-9]+\$', '') backend_type, count(*) n FROM pg_stat_activity WHERE backend_type LIKE 'bunnydb%' GROUP BY 1) s")"
    done
    echo "  bunny.mirrors after 30 s (name status phase error_count error_message lag_seconds):"
    qd "$db" "SELECT format('    %-7s %-8s %-8s %s %s %s', name, status, phase, error_count, coalesce(error_message, '(no error_message)'), coalesce(lag_seconds::text, '-')) FROM bunny.mirrors ORDER BY length(name), name"
    echo "  bunny.mirror_tables of the mirrors not RUNNING (status, rows_snapshotted, error_message):"
    qd "$db" "SELECT format('    %-7s %-14s %-9s %s %s', t.mirror, t.source_table, t.status, coalesce(t.rows_snapshotted::text, '-'), coalesce(t.error_message, '')) FROM bunny.mirror_tables t JOIN bunny.mirrors m ON m.name = t.mirror WHERE m.status <> 'RUNNING' ORDER BY length(t.mirror), t.mirror, t.source_table" | head -15
    echo "  bunny.mirror_logs of this step, WARNING/ERROR (first 10):"
    qd "$db" "SELECT '    ' || created_at::time(0) || ' ' || mirror || ' ' || level || ' ' || message FROM bunny.mirror_logs WHERE level IN ('WARNING', 'ERROR') ORDER BY id LIMIT 10"
    echo "  the first stalled mirror's mirror_status():"
    qd "$db" "SELECT bunny.mirror_status(name)::text FROM bunny.mirrors WHERE status <> 'RUNNING' ORDER BY length(name), name LIMIT 1" | cut -c1-1500 | sed 's/^/    /'
    echo "  destination log of this step, lines about workers (distinct, with counts; first 10):"
    tail -n +"$((EXH_LOG_FROM + 1))" "$DIR/dst.log" | grep -i -E 'worker|slots' | sed -E 's/^[0-9-]+ [0-9:.]+ [A-Z]+ \[[0-9]+\] //' | sort | uniq -c | sort -rn | head -10 | sed 's/^/    /'
    RES[exh,running30]=$(qd "$db" "SELECT count(*) FROM bunny.mirrors WHERE status = 'RUNNING'")
    RES[exh,states30]=$(qd "$db" "SELECT string_agg(status || ' ' || n, ', ' ORDER BY status) FROM (SELECT status, count(*) n FROM bunny.mirrors GROUP BY status) s")
    # free workers: pause half of the running mirrors; the others should
    # start by themselves (pause_mirror wakes the launcher)
    paused=$(qd "$db" "SELECT string_agg(name, ' ') FROM (SELECT name FROM bunny.mirrors WHERE status = 'RUNNING' ORDER BY name LIMIT greatest(${RES[exh,running30]} / 2, 1)) s")
    log "pausing $paused to free their workers"
    for i in $paused; do qd "$db" "SELECT bunny.pause_mirror('$i')" >/dev/null; done
    mirrors_exh_watch "$db" 150 half
    if [ "${RES[exh,restart_half]}" = never ]; then
        # second chance: every running mirror paused, all workers but the
        # launchers' free
        paused=$(qd "$db" "SELECT string_agg(name, ' ') FROM bunny.mirrors WHERE status = 'RUNNING'")
        log "pausing every running mirror too ($paused)"
        for i in $paused; do qd "$db" "SELECT bunny.pause_mirror('$i')" >/dev/null; done
        mirrors_exh_watch "$db" 150 all
    fi
    if [ "${RES[exh,restart_all]:-}" = never ]; then
        # a paused mirror keeps its worker (it watches the source's
        # position): dropping the paused mirrors is what frees workers
        paused=$(qd "$db" "SELECT string_agg(name, ' ') FROM bunny.mirrors WHERE status = 'PAUSED'")
        log "dropping the paused mirrors ($paused): a paused mirror keeps its worker"
        for i in $paused; do qd "$db" "SELECT bunny.drop_mirror('$i')" >/dev/null; done
        mirrors_exh_watch "$db" 180 dropped
    fi
    for i in $(qd "$db" "SELECT name FROM bunny.mirrors"); do
        echo "SELECT bunny.drop_mirror('$i');"
    done | psql_in "$DST_PORT" "$db" >/dev/null || log "WARNING: could not drop every mirror of $db"
}

# mirrors_exh_watch DB SECONDS TAG: wait until every mirror that is not
# paused is RUNNING; RES[exh,restart_TAG] = "after N s" or never
mirrors_exh_watch() {
    local db=$1 tag=$3 t0 deadline running last="" cur
    t0=$(now)
    deadline=$(( $(date +%s) + $2 ))
    RES[exh,restart_$tag]=never
    while [ "$(date +%s)" -lt "$deadline" ]; do
        running=$(qd "$db" "SELECT count(*) FILTER (WHERE status = 'RUNNING') || '/' || count(*) FILTER (WHERE status NOT IN ('PAUSED', 'PAUSING')) FROM bunny.mirrors")
        cur=$(qd "$db" "SELECT string_agg(status || ' ' || n, ', ' ORDER BY status) FROM (SELECT status, count(*) n FROM bunny.mirrors GROUP BY status) s")
        [ "$cur" != "$last" ] && log "  +$(elapsed "$t0" "$(now)") s: $cur; error_count of the others: $(qd "$db" "SELECT string_agg(name || '=' || error_count, ' ' ORDER BY length(name), name) FROM bunny.mirrors WHERE status NOT IN ('RUNNING', 'PAUSED')")"
        last=$cur
        if [ "${running%/*}" = "${running#*/}" ]; then
            RES[exh,restart_$tag]="after $(elapsed "$t0" "$(now)") s"
            break
        fi
        sleep 1
    done
    RES[exh,states_$tag]=$cur
    log "after pausing ($tag): every mirror not paused RUNNING: ${RES[exh,restart_$tag]} (waited at most $2 s); statuses now: $cur"
    qd "$db" "SELECT format('    %-7s %-8s %-8s %s %s', name, status, phase, error_count, coalesce(error_message, '(no error_message)')) FROM bunny.mirrors ORDER BY length(name), name"
    echo "  bunnydb processes now (backend_type, pid, state, wait): $(qd postgres "SELECT string_agg(format('%s pid %s %s %s', backend_type, pid, coalesce(state, '-'), coalesce(wait_event, 'CPU')), '; ' ORDER BY backend_type) FROM pg_stat_activity WHERE backend_type LIKE 'bunnydb%'")"
}

mirrors_main() {
    local m maxm b i r
    local -a MS=()
    MIRRORS_BAD=0
    maxm=$(tr ',' '\n' <<<"$MIRRORS_LIST" | tail -1)
    [ "$maxm" -ge "$MIRRORS_EXH" ] || maxm=$MIRRORS_EXH
    qs postgres "CREATE DATABASE sampler"
    qs sampler "CREATE EXTENSION dblink"
    qs postgres "CREATE DATABASE mir"
    mirrors_ddl 1 "$maxm" 1 | psql_in "$SRC_PORT" mir
    qs mir "VACUUM (ANALYZE)"
    log "source: database mir, $maxm groups of 3 tables (acc_i $MIRROR_ROWS rows, tel_i 10 rows, his_i empty), publication mpub_i per group"
    for m in ${MIRRORS_LIST//,/ }; do
        echo
        log "== mirrors: $m mirrors of 3 tables, one source database, one destination database per system =="
        MS+=("$m")
        mirrors_run "$m"
    done
    mirrors_exhaustion

    local bw bm iw im
    echo
    echo "== results: mirrors (nproc $(nproc); 3 tables per mirror; lag under pgbench -R $MIRROR_RATE for $LAG_SECONDS s) =="
    printf '%4s | %9s | %9s | %6s | %-27s | %-27s | %-13s | %s\n' M "bunnydb" "built-in" ratio "bunnydb p99 worst / median" "built-in p99 worst / median" "ratio w / med" "target p99 < 1 s, every mirror"
    printf '%s\n' "-----+-----------+-----------+--------+-----------------------------+-----------------------------+---------------+------------------------------"
    for m in "${MS[@]}"; do
        b=${RES[mir$m,bunny]:-FAIL}; i=${RES[mir$m,builtin]:-FAIL}
        r=$(ratio "$b" "$i")
        bw=${RES[mir$m,bunny_p99_worst]:-FAIL}; bm=${RES[mir$m,bunny_p99_median]:-FAIL}
        iw=${RES[mir$m,builtin_p99_worst]:-FAIL}; im=${RES[mir$m,builtin_p99_median]:-FAIL}
        v=$(awk -v x="$bw" 'BEGIN { print (x ~ /^[0-9.]+$/ && x < 1000) ? "PASS" : "FAIL" }')
        printf '%4s | %9s | %9s | %6s | %27s | %27s | %13s | %s\n' "$m" "$(unit "$b" s)" "$(unit "$i" s)" "$r" "$bw / $bm ms" "$iw / $im ms" "$(ratio "$bw" "$iw") / $(ratio "$bm" "$im")" \
            "$v (bunnydb timeouts ${RES[mir$m,bunny_timeouts]:-?}, built-in ${RES[mir$m,builtin_timeouts]:-?})"
        RESULT_LINES+=("RESULT mirrors m=$m start_ratio=$r bunnydb_start_s=$b builtin_start_s=$i bunnydb_calls_s=${RES[mir$m,bunny_calls]:-n/a} builtin_calls_s=${RES[mir$m,builtin_calls]:-n/a} p99_worst_ratio=$(ratio "$bw" "$iw") p99_median_ratio=$(ratio "$bm" "$im") bunnydb_p99_worst_ms=$bw bunnydb_p99_median_ms=$bm builtin_p99_worst_ms=$iw builtin_p99_median_ms=$im bunnydb_p50_worst_ms=${RES[mir$m,bunny_p50_worst]:-n/a} bunnydb_p50_median_ms=${RES[mir$m,bunny_p50_median]:-n/a} builtin_p50_worst_ms=${RES[mir$m,builtin_p50_worst]:-n/a} builtin_p50_median_ms=${RES[mir$m,builtin_p50_median]:-n/a} bunnydb_timeouts=${RES[mir$m,bunny_timeouts]:-n/a} builtin_timeouts=${RES[mir$m,builtin_timeouts]:-n/a} target=p99<1000_each $v")
    done
    echo
    for m in "${MS[@]}"; do
        echo "bunnydb, $m mirrors: create calls ${RES[mir$m,bunny_calls]:-n/a} s; ${RES[mir$m,bunny_spread]:-n/a}; built-in CREATE SUBSCRIPTION calls ${RES[mir$m,builtin_calls]:-n/a} s"
    done
    echo "worker exhaustion ($MIRRORS_EXH mirrors, max_worker_processes = $MIRRORS_EXH_WORKERS): after 30 s ${RES[exh,states30]:-n/a}; after pausing half of the running ones every other mirror RUNNING: ${RES[exh,restart_half]:-n/a} (${RES[exh,states_half]:-n/a}); after pausing all running ones: ${RES[exh,restart_all]:-not tried} (${RES[exh,states_all]:-}); after dropping the paused ones: ${RES[exh,restart_dropped]:-not tried} (${RES[exh,states_dropped]:-})"
    echo
    printf '%s\n' "${RESULT_LINES[@]}"
    echo "RESULT mirrors_exhaustion max_worker_processes=$MIRRORS_EXH_WORKERS mirrors=$MIRRORS_EXH after_30s=\"${RES[exh,states30]:-n/a}\" others_running_after_half_paused=\"${RES[exh,restart_half]:-n/a}\" others_running_after_all_paused=\"${RES[exh,restart_all]:-not tried}\" others_running_after_paused_dropped=\"${RES[exh,restart_dropped]:-not tried}\""
    echo "RESULT mirrors_consistency $([ "$TABLES_BAD" = 0 ] && [ "$MIRRORS_BAD" = 0 ] && echo OK || echo MISMATCH)"
    echo
    echo "Notes: all M mirrors in one destination database (mir_bunny_M), all M subscriptions in another"
    echo "(mir_builtin_M, tables pre-created untimed); start = first create call until every mirror RUNNING /"
    echo "every table of every subscription 'r' (bunnydb first, then the built-in).  Lag: both live during the"
    echo "same fixed-rate pgbench run (source synchronous_commit = on); every 0.2 s the sampler commits one heartbeat"
    echo "transaction touching every mirror's tel_i and polls all mirrors of both systems every 5 ms until each applied it;"
    echo "per mirror p50/p99; 'worst' and 'median' are over the mirrors' p99."
    echo "Reminder: noisy machine; compare ratios, not absolute times."
    [ "$TABLES_BAD" = 0 ] && [ "$MIRRORS_BAD" = 0 ] || return 1
    for m in "${MS[@]}"; do
        [ "${RES[mir$m,bunny]}" != FAIL ] && [ "${RES[mir$m,builtin]}" != FAIL ] || return 1
    done
    return 0
}

# ---------------------------------------------------------------------------
# values (--only values): rows with huge values, and 1 000 columns
# ---------------------------------------------------------------------------
# The tables, K = b (binary transfer) or t (text transfer):
#   big_K  (id, t text, b bytea): row 1 with VALUE_MB MB in t and in b,
#          rows 2..20 small
#   wide_K (id, c0001 .. c0999): 1 000 columns, odd ones int, even ones
#          short text; WIDE_ROWS rows
# In the _t tables the key id is of the domain bench_int (over int): a
# user-defined type, so bunnydb copies those tables and streams their mirror
# in text (README "How it works": binary only when every column has the same
# built-in type on both sides; no setting forces text).  The built-in
# subscribes to the _b tables with binary = true and to the _t tables with
# binary = false (its initial copy is text COPY either way in PostgreSQL 15).
values_wide_cols() {   # b|t
    awk -v k="$1" 'BEGIN { printf "id %s PRIMARY KEY", (k == "t" ? "bench_int" : "int")
                           for (i = 1; i <= 999; i++) printf ", c%04d %s", i, (i % 2 ? "int" : "text") }'
}
values_wide_exprs() {   # the 1 000 values of row g
    awk 'BEGIN { printf "g"; for (i = 1; i <= 999; i++) if (i % 2) printf ", g + %d", i; else printf ", %d || chr(58) || g", i }'
}
# what is compared: per big row its length and md5 of both values, per wide
# table its row count and an order-independent checksum of its rows
values_check_sql() {   # b|t
    echo "SELECT 'big_$1 ' || count(*) || ' ' || coalesce(string_agg(id || ':' || coalesce(length(t), -1) || ':' || coalesce(md5(t), '-') || ':' || coalesce(length(b), -1) || ':' || coalesce(md5(b), '-'), ' ' ORDER BY id), '') FROM big_$1
          UNION ALL SELECT 'wide_$1 ' || count(*) || ' ' || coalesce(sum(hashtext(r::text)::bigint), 0) FROM wide_$1 r"
}

values_source() {
    local k t0
    t0=$(now)
    qs postgres "CREATE DATABASE vals"
    qs vals "CREATE DOMAIN bench_int AS int"
    # two huge values of each kind, different: one for the INSERTs, one for the UPDATEs
    qs vals "CREATE TABLE stash (k int PRIMARY KEY, t text, b bytea)"
    qs vals "INSERT INTO stash SELECT k, (SELECT string_agg(md5(k || ':' || g), '') FROM generate_series(1, $VALUE_MB * 32768) g),
                                        (SELECT decode(string_agg(md5(k || '-' || g), ''), 'hex') FROM generate_series(1, $VALUE_MB * 65536) g)
               FROM generate_series(1, 2) k"
    for k in b t; do
        qs vals "CREATE TABLE big_$k (id $([ $k = t ] && echo bench_int || echo int) PRIMARY KEY, t text, b bytea)"
        qs vals "INSERT INTO big_$k SELECT 1, t, b FROM stash WHERE k = 1"
        qs vals "INSERT INTO big_$k SELECT g, 'small ' || g, '\\x00'::bytea FROM generate_series(2, 20) g"
        qs vals "CREATE TABLE wide_$k ($(values_wide_cols $k))"
        qs vals "INSERT INTO wide_$k SELECT $(values_wide_exprs) FROM generate_series(1, $WIDE_ROWS) g"
        qs vals "CREATE PUBLICATION vpub_$k FOR TABLE big_$k, wide_$k"
    done
    qs vals "VACUUM (ANALYZE)"
    as_pg bash -c "pg_dump -s -h '$DIR' -p $SRC_PORT vals" >"$DIR/schema-vals.sql" 2>"$DIR/schema-dump-vals.log" \
        || { cat "$DIR/schema-dump-vals.log"; die "pg_dump -s of vals failed"; }
    sed -i -e '/^CREATE SCHEMA public;/d' -e '/^ALTER SCHEMA public OWNER/d' -e '/^CREATE PUBLICATION/d' -e '/^ALTER PUBLICATION/d' "$DIR/schema-vals.sql"
    chown postgres "$DIR/schema-vals.sql"
    log "source: database vals in $(elapsed "$t0" "$(now)") s ($(qs vals "SELECT pg_size_pretty(pg_database_size(current_database()))")); big_b/big_t row 1: $(qs vals "SELECT pg_size_pretty(length(t)::bigint) || ' text + ' || pg_size_pretty(length(b)::bigint) || ' bytea, stored ' || pg_size_pretty(pg_column_size(t)::bigint + pg_column_size(b)) FROM big_b WHERE id = 1"); wide_b: $(qs vals "SELECT count(*) FROM information_schema.columns WHERE table_name = 'wide_b'") columns"
}

# the four systems: S = bunny_b, bunny_t, builtin_b, builtin_t; their
# destination database val_S, mirror vbin / vtxt, subscription vsub_b / vsub_t
vs_mirror() { [ "${1#*_}" = b ] && echo vbin || echo vtxt; }
vs_label() {
    case $1 in
        bunny_b) echo "bunnydb (binary)" ;;
        bunny_t) echo "bunnydb (text)" ;;
        builtin_b) echo "built-in (binary = true)" ;;
        builtin_t) echo "built-in (binary = false)" ;;
    esac
}
# vs_pattern S: the command line of its worker(s)
vs_pattern() {
    case $1 in
        bunny_*) echo "bunnydb mirror $(vs_mirror "$1")" ;;
        builtin_*) echo "logical replication worker for subscription ${RES[vals,$1_oid]:-x}" ;;
    esac
}

# values_copy S: create the mirror / subscription, time until RUNNING /
# every table 'r', sampling the memory of its processes
values_copy() {
    local s=$1 db=val_$1 k=${1#*_} t0 p1 p2 ok=0
    checkpoint_both
    log "$(vs_label "$s"): initial copy of big_$k and wide_$k into $db"
    if [ "${s%_*}" = bunny ]; then
        start_mem "$s-copy-snap" substring "bunnydb snapshot $(vs_mirror "$s")"; p1=$MEM_PID
        start_mem "$s-copy-main" substring "bunnydb mirror $(vs_mirror "$s")"; p2=$MEM_PID
        t0=$(now)
        qd "$db" "SELECT bunny.create_mirror('$(vs_mirror "$s")', 'src', '[\"public.big_$k\", \"public.wide_$k\"]')" >/dev/null \
            && bunny_wait_status_in "$db" "$(vs_mirror "$s")" RUNNING "$COPY_TIMEOUT" && ok=1
    else
        start_mem "$s-copy-snap" substring "logical replication worker for subscription"; p1=$MEM_PID
        p2=""
        t0=$(now)
        qd "$db" "CREATE SUBSCRIPTION vsub_$k CONNECTION 'host=$DIR port=$SRC_PORT dbname=vals' PUBLICATION vpub_$k WITH (binary = $([ $k = b ] && echo true || echo false))"
        RES[vals,${s}_oid]=$(qd "$db" "SELECT oid FROM pg_subscription WHERE subname = 'vsub_$k'")
        srv_wait "built-in vsub_$k ready" "$COPY_TIMEOUT" "$db" \
            "SELECT CASE WHEN count(*) = 2 AND bool_and(srsubstate = 'r') THEN 'ok' ELSE 'wait' END FROM pg_subscription_rel" && ok=1
    fi
    if [ "$ok" = 1 ]; then
        RES[vals,$s,copy]=$(elapsed "$t0" "$(now)")
    else
        RES[vals,$s,copy]=FAIL
        VALUES_BAD=1
        [ "${s%_*}" = bunny ] && qd "$db" "SELECT status || ' ' || coalesce(error_message, '') FROM bunny.mirrors" || true
        tail -20 "$DIR/dst.log"
    fi
    stop_mem "$s-copy-snap" "$p1"
    RES[vals,$s,copy_snap]=$M_PRIV; RES[vals,$s,copy_snap_rss]=$M_RSS; RES[vals,$s,copy_snap_sum]=$M_SUM; RES[vals,$s,copy_snap_n]=$M_PROCS
    if [ -n "$p2" ]; then
        stop_mem "$s-copy-main" "$p2"
        RES[vals,$s,copy_main]=$M_PRIV
        log "$(vs_label "$s") copy: ${RES[vals,$s,copy]} s; snapshot workers (at most ${RES[vals,$s,copy_snap_n]} at once): largest one peak VmRSS ${RES[vals,$s,copy_snap_rss]} MB, VmRSS-RssShmem ${RES[vals,$s,copy_snap]} MB, sum ${RES[vals,$s,copy_snap_sum]} MB; mirror worker VmRSS-RssShmem $M_PRIV MB"
        log "$(vs_label "$s") copy formats: $(qd "$db" "SELECT string_agg(message, '; ' ORDER BY id) FROM bunny.mirror_logs WHERE message LIKE 'copying table%'")"
    else
        log "$(vs_label "$s") copy: ${RES[vals,$s,copy]} s; its workers (apply and table sync, at most ${RES[vals,$s,copy_snap_n]} at once): largest one peak VmRSS ${RES[vals,$s,copy_snap_rss]} MB, VmRSS-RssShmem ${RES[vals,$s,copy_snap]} MB, sum ${RES[vals,$s,copy_snap_sum]} MB"
    fi
}

vs_pause() {
    case $1 in
        bunny_*) bunny_pause_in "val_$1" "$(vs_mirror "$1")" ;;
        builtin_*) sub_disable "val_$1" "vsub_${1#*_}" ;;
    esac
}
vs_resume() {
    case $1 in
        bunny_*) qd "val_$1" "SELECT bunny.resume_mirror('$(vs_mirror "$1")')" >/dev/null ;;
        builtin_*) qd "val_$1" "ALTER SUBSCRIPTION vsub_${1#*_} ENABLE" ;;
    esac
}
vs_wait() {   # S LSN TIMEOUT
    case $1 in
        bunny_*) bunny_wait_lsn_in "val_$1" "$(vs_mirror "$1")" "$2" "$3" ;;
        builtin_*) peer_wait_lsn "$(vs_label "$1")" "val_$1" "pg_${RES[vals,$1_oid]}" "vsub_${1#*_}" "$2" "$3" ;;
    esac
}

# values_cdc S IDX: S alone live (the others paused), caught up untimed,
# then four statements on its tables, each timed from its start on the
# source until S applied it, with the memory of S's worker during it:
#   ins   INSERT of a huge row (id 100+IDX), VALUE_MB MB text + VALUE_MB MB bytea
#   upd   UPDATE of that row, both values replaced by other huge ones
#   wins  INSERT of 1 000 rows of 1 000 columns
#   wupd  UPDATE of those 1 000 rows (one int and one text column)
values_cdc() {
    local s=$1 idx=$2 k=${1#*_} id=$((100 + $2)) base=$((WIDE_ROWS + 10000 * $2)) op sql t0 ts p
    vs_resume "$s" || { RES[vals,$s,ins]=FAIL; VALUES_BAD=1; return; }
    vs_wait "$s" "$(target_lsn)" "$CATCHUP_TIMEOUT" || { log "$(vs_label "$s") did not catch up before its CDC steps"; VALUES_BAD=1; return; }
    for op in ins upd wins wupd; do
        case $op in
            ins) sql="INSERT INTO big_$k SELECT $id, t, b FROM stash WHERE k = 1" ;;
            upd) sql="UPDATE big_$k SET t = s.t, b = s.b FROM stash s WHERE s.k = 2 AND big_$k.id = $id" ;;
            wins) sql="INSERT INTO wide_$k SELECT $(values_wide_exprs) FROM generate_series($((base + 1)), $((base + 1000))) g" ;;
            wupd) sql="UPDATE wide_$k SET c0001 = c0001 + 1, c0002 = c0002 || 'u' WHERE id BETWEEN $((base + 1)) AND $((base + 1000))" ;;
        esac
        checkpoint_both
        start_mem "$s-$op" substring "$(vs_pattern "$s")"; p=$MEM_PID
        t0=$(now)
        qs vals "$sql"
        ts=$(now)
        if vs_wait "$s" "$(target_lsn)" "$CATCHUP_TIMEOUT"; then
            RES[vals,$s,$op]=$(elapsed "$t0" "$(now)")
        else
            RES[vals,$s,$op]=FAIL
            VALUES_BAD=1
            tail -20 "$DIR/dst.log"
        fi
        stop_mem "$s-$op" "$p"
        RES[vals,$s,${op}_mem]=$M_PRIV
        RES[vals,$s,${op}_rss]=$M_RSS
        log "$(vs_label "$s") $op: ${RES[vals,$s,$op]} s (the statement on the source $(elapsed "$t0" "$ts") s); worker peak VmRSS $M_RSS MB, VmRSS-RssShmem $M_PRIV MB"
        [ "${RES[vals,$s,$op]}" = FAIL ] && break
    done
    if [ "${s%_*}" = bunny ]; then
        log "$(vs_label "$s") stream: $(qd "val_$s" "SELECT coalesce(string_agg(DISTINCT regexp_replace(message, '^streaming from [0-9A-F/]+ ', 'streaming '), '; '), 'no stream line') FROM bunny.mirror_logs WHERE message LIKE 'streaming from%' OR message LIKE '%gave up%'")"
    fi
    vs_pause "$s" || { log "$(vs_label "$s"): pause failed"; VALUES_BAD=1; }
}

values_main() {
    local s k lsn op
    VALUES_BAD=0
    qs postgres "CREATE DATABASE sampler"
    qs sampler "CREATE EXTENSION dblink"
    values_source
    for s in bunny_b bunny_t builtin_b builtin_t; do
        qd postgres "CREATE DATABASE val_$s"
        if [ "${s%_*}" = bunny ]; then
            qd "val_$s" "CREATE EXTENSION bunnydb"
            qd "val_$s" "SELECT bunny.create_peer('src', 'host=$DIR port=$SRC_PORT dbname=vals')" >/dev/null
        else
            psql_in "$DST_PORT" "val_$s" <"$DIR/schema-vals.sql" >"$DIR/schema-load-$s.log" 2>&1 \
                || { tail -20 "$DIR/schema-load-$s.log"; die "could not load the schema into val_$s"; }
        fi
    done

    echo
    log "== values: initial copy (each system alone, the others idle) =="
    for s in bunny_b builtin_b bunny_t builtin_t; do
        values_copy "$s"
        # the built-in launcher starts a worker at most once per 5 s
        [ "${s%_*}" = builtin ] && sleep 6
    done
    echo
    log "== values: CDC (each system alone, the others paused) =="
    for s in bunny_b builtin_b bunny_t builtin_t; do
        [ "${RES[vals,$s,copy]}" != FAIL ] && { vs_pause "$s" || VALUES_BAD=1; }
    done
    # in each pair the built-in goes first once and bunnydb once
    local i=0
    for s in bunny_b builtin_b builtin_t bunny_t; do
        i=$((i + 1))
        [ "${RES[vals,$s,copy]}" != FAIL ] || continue
        echo
        values_cdc "$s" "$i"
        [ "${s%_*}" = builtin ] && sleep 6
    done

    echo
    log "== values: consistency =="
    lsn=$(target_lsn)
    for k in b t; do
        q "$SRC_PORT" vals "$(values_check_sql $k)" >"$DIR/check-src-val$k.txt"
    done
    for s in bunny_b builtin_b bunny_t builtin_t; do
        [ "${RES[vals,$s,copy]}" != FAIL ] || continue
        k=${s#*_}
        vs_resume "$s" && vs_wait "$s" "$lsn" "$CATCHUP_TIMEOUT" || { log "$(vs_label "$s") not caught up"; VALUES_BAD=1; continue; }
        q "$DST_PORT" "val_$s" "$(values_check_sql "$k")" >"$DIR/check-val_$s.txt"
        if cmp -s "$DIR/check-src-val$k.txt" "$DIR/check-val_$s.txt"; then
            log "val_$s: big_$k ($(cut -d' ' -f2 <"$DIR/check-val_$s.txt" | head -1) rows, md5 and length of every value) and wide_$k ($(sed -n 2p "$DIR/check-val_$s.txt" | cut -d' ' -f2) rows, checksum) equal the source"
        else
            log "val_$s: MISMATCH against the source:"
            diff "$DIR/check-src-val$k.txt" "$DIR/check-val_$s.txt" | cut -c1-300 | head -6
            VALUES_BAD=1
        fi
    done
    for s in bunny_b bunny_t; do
        log "$(vs_label "$s"): $(qd "val_$s" "SELECT format('status %s, error_count %s, WARNING/ERROR log lines %s', status, error_count, (SELECT count(*) FROM bunny.mirror_logs WHERE level IN ('WARNING', 'ERROR'))) FROM bunny.mirrors")"
        qd "val_$s" "SELECT '  ' || created_at::time(0) || ' ' || level || ' ' || left(message, 300) FROM bunny.mirror_logs WHERE level IN ('WARNING', 'ERROR') ORDER BY id LIMIT 5" || true
    done

    local label v bb ib bt it rb rt
    echo
    echo "== results: values (nproc $(nproc); row 1 of big_*: $VALUE_MB MB text + $VALUE_MB MB bytea; wide_*: 1 000 columns) =="
    printf '%-30s | %11s | %11s | %6s | %11s | %11s | %6s\n' step "bunnydb bin" "built-in bin" ratio "bunnydb txt" "built-in txt" ratio
    printf '%s\n' "-------------------------------+-------------+--------------+--------+-------------+--------------+-------"
    for op in copy ins upd wins wupd; do
        case $op in
            copy) label="initial copy (big + $WIDE_ROWS wide)" ;;
            ins) label="INSERT huge row" ;;
            upd) label="UPDATE huge row (both values)" ;;
            wins) label="INSERT 1000 wide rows" ;;
            wupd) label="UPDATE 1000 wide rows" ;;
        esac
        bb=${RES[vals,bunny_b,$op]:-FAIL}; ib=${RES[vals,builtin_b,$op]:-FAIL}
        bt=${RES[vals,bunny_t,$op]:-FAIL}; it=${RES[vals,builtin_t,$op]:-FAIL}
        rb=$(ratio "$bb" "$ib"); rt=$(ratio "$bt" "$it")
        printf '%-30s | %11s | %12s | %6s | %11s | %12s | %6s\n' "$label" "$(unit "$bb" s)" "$(unit "$ib" s)" "$rb" "$(unit "$bt" s)" "$(unit "$it" s)" "$rt"
        RESULT_LINES+=("RESULT values_$op value_mb=$VALUE_MB binary_ratio=$rb text_ratio=$rt bunnydb_binary_s=$bb builtin_binary_s=$ib bunnydb_text_s=$bt builtin_text_s=$it")
    done
    echo
    echo "memory, peak VmRSS-RssShmem of the largest process (MB; per MB of value = / $VALUE_MB):"
    printf '%-44s | %11s | %12s | %11s | %12s\n' "" "bunnydb bin" "built-in bin" "bunnydb txt" "built-in txt"
    for op in copy ins upd wins wupd; do
        case $op in
            copy) label="copy: snapshot workers / sync+apply workers" ;;
            ins) label="INSERT huge row: mirror / apply worker" ;;
            upd) label="UPDATE huge row: mirror / apply worker" ;;
            wins) label="INSERT 1000 wide rows" ;;
            wupd) label="UPDATE 1000 wide rows" ;;
        esac
        if [ $op = copy ]; then
            bb=${RES[vals,bunny_b,copy_snap]:-n/a}; ib=${RES[vals,builtin_b,copy_snap]:-n/a}
            bt=${RES[vals,bunny_t,copy_snap]:-n/a}; it=${RES[vals,builtin_t,copy_snap]:-n/a}
        else
            bb=${RES[vals,bunny_b,${op}_mem]:-n/a}; ib=${RES[vals,builtin_b,${op}_mem]:-n/a}
            bt=${RES[vals,bunny_t,${op}_mem]:-n/a}; it=${RES[vals,builtin_t,${op}_mem]:-n/a}
        fi
        printf '%-44s | %11s | %12s | %11s | %12s\n' "$label" "$bb" "$ib" "$bt" "$it"
        RESULT_LINES+=("RESULT values_mem_$op value_mb=$VALUE_MB bunnydb_binary_mb=$bb builtin_binary_mb=$ib bunnydb_text_mb=$bt builtin_text_mb=$it bunnydb_binary_per_value_mb=$(ratio "$bb" "$VALUE_MB") bunnydb_text_per_value_mb=$(ratio "$bt" "$VALUE_MB")")
    done
    printf '%-44s | %11s | %12s | %11s | %12s\n' "copy: snapshot workers, sum over all" "${RES[vals,bunny_b,copy_snap_sum]:-n/a}" "${RES[vals,builtin_b,copy_snap_sum]:-n/a}" "${RES[vals,bunny_t,copy_snap_sum]:-n/a}" "${RES[vals,builtin_t,copy_snap_sum]:-n/a}"
    printf '%-44s | %11s | %12s | %11s | %12s\n' "copy: bunnydb mirror worker" "${RES[vals,bunny_b,copy_main]:-n/a}" "" "${RES[vals,bunny_t,copy_main]:-n/a}" ""
    echo
    printf '%s\n' "${RESULT_LINES[@]}"
    echo "RESULT values_consistency $([ "$VALUES_BAD" = 0 ] && echo OK || echo MISMATCH)"
    echo
    echo "Notes: each system runs alone (the others idle during the copies, paused/disabled during CDC);"
    echo "a CDC step is timed from the start of the statement on the source until the system applied it."
    echo "Text transfer of bunnydb: the _t tables' key is of a domain over int (a user-defined type)."
    echo "The built-in's initial copy is a text COPY in both modes (PostgreSQL 15)."
    echo "Memory: VmRSS minus RssShmem (shared_buffers excluded), sampled every 0.2 s."
    echo "Reminder: noisy machine; compare ratios, not absolute times."
    [ "$VALUES_BAD" = 0 ]
}

# ---------------------------------------------------------------------------
# bigtable (--only bigtable): one table well past shared_buffers
# ---------------------------------------------------------------------------
# The table: bigtable (id bigint primary key, grp int, amount int, note
# text of 64 characters), about 116 bytes a row on disk, so about 9.25
# million rows per GB.  Three copies, one after the other, each into a
# destination database of its own that is emptied (table dropped) once it
# has been checked, so that the disk holds the source and one copy at a
# time: bunnydb with the default split (heap block ranges), the built-in,
# bunnydb with "partition_key": "id" (key ranges).

# the query every copy is checked with: rows, checksum, primary key
BT_CHECK_SQL="SELECT count(*) || ' ' || coalesce(sum(hashtext(r::text)::bigint), 0) || ' pk=' ||
       (SELECT count(*) FROM pg_index WHERE indrelid = 'public.bigtable'::regclass AND indisprimary)
  FROM public.bigtable r"

bigtable_source() {
    local t0 chunk=1000000
    t0=$(now)
    qs postgres "CREATE DATABASE big"
    qs big "CREATE TABLE bigtable (id bigint NOT NULL, grp int NOT NULL, amount int NOT NULL, note text NOT NULL)"
    # in chunks of a million rows, each its own transaction
    qs big "DO \$\$
BEGIN
    FOR lo IN 1..$BT_ROWS BY $chunk LOOP
        INSERT INTO bigtable SELECT g, g % 1000, (g * 7919) % 100000, repeat(md5(g::text), 2)
          FROM generate_series(lo::bigint, least(lo + $chunk - 1, $BT_ROWS)::bigint) g;
        COMMIT;
    END LOOP;
END
\$\$"
    qs big "SET maintenance_work_mem = '1GB'; ALTER TABLE bigtable ADD PRIMARY KEY (id)"
    qs big "VACUUM (ANALYZE) bigtable"
    qs big "CREATE PUBLICATION bt_pub FOR TABLE bigtable"
    as_pg bash -c "pg_dump -s -t public.bigtable -h '$DIR' -p $SRC_PORT big" >"$DIR/schema-big.sql" 2>"$DIR/schema-dump-big.log" \
        || { cat "$DIR/schema-dump-big.log"; die "pg_dump -s of bigtable failed"; }
    sed -i -e '/^CREATE PUBLICATION/d' -e '/^ALTER PUBLICATION/d' "$DIR/schema-big.sql"
    chown postgres "$DIR/schema-big.sql"
    qs postgres "CHECKPOINT"
    BT_TABLE_MB=$(qs big "SELECT pg_relation_size('bigtable') / 1048576")
    log "source: bigtable with $BT_ROWS rows in $(elapsed "$t0" "$(now)") s: heap $(qs big "SELECT pg_size_pretty(pg_relation_size('bigtable'))"), primary key $(qs big "SELECT pg_size_pretty(pg_relation_size('bigtable_pkey'))"), estimate $(qs big "SELECT reltuples::bigint || ' rows, ' || relpages || ' pages' FROM pg_class WHERE relname = 'bigtable'") (destination shared_buffers $(qd postgres "SHOW shared_buffers"))"
}

# disk used by the clusters (du of --dir), every 5 s: the peak, in MB;
# and every 0.5 s the kernel's dirty and writeback page cache (kB, from
# /proc/meminfo) into dirty-RUN.txt: a copy that writes faster than the
# disk is throttled by the kernel once dirty memory passes halfway between
# vm.dirty_background_ratio and vm.dirty_ratio, whichever system copies
bt_disk_start() {   # run
    rm -f "$DIR/disk.stop" "$DIR/disk.out" "$DIR/dirty-$1.txt"
    (
        peak=0 n=0
        while [ ! -e "$DIR/disk.stop" ]; do
            if [ $((n % 10)) = 0 ]; then
                u=$(du -sm "$DIR" 2>/dev/null | cut -f1) || u=0
                [ "${u:-0}" -gt "$peak" ] && peak=$u
                echo "$peak" >"$DIR/disk.out"
            fi
            echo "$(date +%s.%N) $(awk '/^Dirty:/ {d=$2} /^Writeback:/ {w=$2} END {print d+0, w+0}' /proc/meminfo)" >>"$DIR/dirty-$1.txt"
            n=$((n + 1))
            sleep 0.5
        done
    ) &
    BT_DISK_PID=$!
    BG_PIDS+=("$BT_DISK_PID")
}

# bt_dirty RUN: the kernel's dirty + writeback memory (MB) at the copy
# window's start, quarter marks and end (bt_rates sets BT_TA, BT_TB), and
# its peak over the whole copy
bt_dirty() {
    if [ -n "${BENCH_STATS_KEEP:-}" ]; then cp "$DIR/dirty-$1.txt" "$BENCH_STATS_KEEP/" 2>/dev/null || true; fi
    [[ "${BT_TA:-}" =~ ^[0-9.]+$ ]] || { echo n/a; return; }
    awk -v a="$BT_TA" -v b="$BT_TB" '
        { t[NR] = $1; v[NR] = ($2 + $3) / 1024; if (v[NR] > pk) pk = v[NR] }
        END {
            for (k = 0; k <= 4; k++) {
                x = a + (b - a) * k / 4; best = 0
                for (i = 1; i <= NR; i++) if (!best || (t[i] - x) ^ 2 < (t[best] - x) ^ 2) best = i
                out = out (k ? " | " : "") (best ? sprintf("%.0f", v[best]) : "n/a")
            }
            printf "%s (peak %.0f)", out, pk
        }' "$DIR/dirty-$1.txt"
}
bt_disk_stop() {
    touch "$DIR/disk.stop"
    wait "$BT_DISK_PID" 2>/dev/null || true
    cat "$DIR/disk.out" 2>/dev/null || echo n/a
}

# bt_sampler_start RUN DB DEST_SQL: on the source (database sampler), one
# DO block that every BT_SAMPLE_S seconds runs DEST_SQL on destination
# database DB through dblink and stores its row in bt_samples, until a row
# for RUN is in bt_stop.  DEST_SQL returns: the destination's clock (epoch),
# rows done, bytes done, parts done, parts total, state, the parts running
# (comma-separated part numbers).  One query per interval on a connection
# that stays open: no process is started per sample.
bt_sampler_start() {
    as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$SRC_PORT" -d sampler >"$DIR/sampler-$1.log" 2>&1 <<EOF &
DO \$s\$
DECLARE
    deadline timestamptz := clock_timestamp() + interval '$COPY_TIMEOUT s';
BEGIN
    PERFORM dblink_connect('s', 'host=$DIR port=$DST_PORT dbname=$2');
    WHILE clock_timestamp() < deadline AND NOT EXISTS (SELECT FROM bt_stop WHERE run = '$1') LOOP
        INSERT INTO bt_samples
        SELECT '$1', x.* FROM dblink('s', \$q\$$3\$q\$)
            AS x(t float8, rows_done bigint, bytes_done bigint, parts_done int, parts_total int, state text, running text);
        COMMIT;
        PERFORM pg_sleep($BT_SAMPLE_S);
    END LOOP;
    PERFORM dblink_disconnect('s');
END
\$s\$;
EOF
    BT_SAMPLER_PID=$!
    BG_PIDS+=("$BT_SAMPLER_PID")
}
bt_sampler_stop() {   # run
    qs sampler "INSERT INTO bt_stop VALUES ('$1')"
    wait "$BT_SAMPLER_PID" 2>/dev/null || true
    grep -v '^$' "$DIR/sampler-$1.log" | head -5 || true
    qs sampler "SELECT t, rows_done, bytes_done, coalesce(parts_done, -1), coalesce(parts_total, -1), state, coalesce(nullif(running, ''), '-')
                  FROM bt_samples WHERE run = '$1' ORDER BY t" | tr '|' ' ' >"$DIR/samples-$1.txt"
    # environment BENCH_STATS_KEEP=DIR: the samples are copied there
    if [ -n "${BENCH_STATS_KEEP:-}" ]; then cp "$DIR/samples-$1.txt" "$BENCH_STATS_KEEP/" || true; fi
}

# bt_rates RUN: the copy's throughput from its samples.  The copy window
# runs from the first sample with rows done to the first one with all of
# them (the most seen); the rows at the window's quarter marks are
# interpolated between samples.  Sets BT_Q (four rates, rows/s),
# BT_RATE (the whole window), BT_LASTFIRST (q4/q1), BT_MINMAX (slowest
# quarter / fastest), BT_WIN (window seconds), BT_DEC (the window in
# tenths, rows/s each: the shape at a glance) and BT_PARTDUR (per part
# seen running: median seconds of the parts started in the window's first
# quarter and in its last, from the samples' lists of running parts),
# BT_TA and BT_TB (the window's first and last sample, epoch).
bt_rates() {
    local r
    r=$(awk -v iv="$BT_SAMPLE_S" '
        { t[NR] = $1; r[NR] = $2; run[NR] = $7; if ($2 > max) max = $2 }
        END {
            for (i = 1; i <= NR; i++) if (r[i] > 0) { a = i; break }
            for (i = 1; i <= NR; i++) if (r[i] == max && max > 0) { b = i; break }
            if (!a || !b || b <= a) { print "n/a n/a n/a n/a n/a n/a n/a n/a n/a n/a n/a n/a"; exit }
            T = t[b] - t[a]
            for (k = 0; k <= 10; k++) { x = t[a] + T * k / 10; R[k] = at(x) }
            for (k = 0; k <= 4; k++) { x = t[a] + T * k / 4; Q[k] = at(x) }
            mn = -1; mx = 0
            for (k = 1; k <= 4; k++) { q[k] = (Q[k] - Q[k-1]) / (T / 4); if (mn < 0 || q[k] < mn) mn = q[k]; if (q[k] > mx) mx = q[k] }
            dec = ""
            for (k = 1; k <= 10; k++) dec = dec (k > 1 ? "," : "") sprintf("%.0f", (R[k] - R[k-1]) / (T / 10))
            # parts: first and last sample each was seen running in
            for (i = 1; i <= NR; i++) if (run[i] != "-") {
                n = split(run[i], ps, ",")
                for (j = 1; j <= n; j++) { p = ps[j]; if (!(p in fs)) fs[p] = t[i]; ls[p] = t[i] }
            }
            n1 = 0; n4 = 0
            for (p in fs) {
                d = ls[p] - fs[p] + iv
                if (fs[p] < t[a] + T / 4) d1[++n1] = d
                else if (fs[p] >= t[a] + 3 * T / 4) d4[++n4] = d
            }
            pd = (n1 + n4 > 0) ? sprintf("%s/%s", med(d1, n1), med(d4, n4)) : "n/a"
            printf "%.0f %.0f %.0f %.0f %.0f %.2f %.2f %.1f %s %s %.3f %.3f\n", q[1], q[2], q[3], q[4], (r[b] - r[a]) / T, (q[1] > 0 ? q[4] / q[1] : 0), (mx > 0 ? mn / mx : 0), T, dec, pd, t[a], t[b]
        }
        function at(x,   i) {
            for (i = a; i < b; i++) if (t[i + 1] >= x) break
            if (i >= b) return r[b]
            return r[i] + (r[i + 1] - r[i]) * (x - t[i]) / (t[i + 1] - t[i])
        }
        function med(v, n,   i, j, x) {
            if (n == 0) return "n/a"
            for (i = 2; i <= n; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
            return sprintf("%.1f", n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2)
        }' "$DIR/samples-$1.txt")
    read -r q1 q2 q3 q4 BT_RATE BT_LASTFIRST BT_MINMAX BT_WIN BT_DEC BT_PARTDUR BT_TA BT_TB <<<"$r"
    BT_Q="$q1 $q2 $q3 $q4"
}

# bt_bunny RUN DB MIRROR MAPPING LABEL: one bunnydb copy, sampled, checked
bt_bunny() {
    local run=$1 db=$2 mirror=$3 mapping=$4 label=$5 t0 t1 pm ps ok=0 opt="" off
    [ -n "$BT_PART_ROWS" ] && opt=", snapshot_num_rows_per_partition => $BT_PART_ROWS"
    checkpoint_both
    echo
    log "$label: create_mirror of bigtable ... until status RUNNING"
    bt_sampler_start "$run" "$db" "SELECT extract(epoch FROM clock_timestamp())::float8, coalesce(sum(c.rows_done), 0)::bigint, coalesce(sum(c.bytes_done), 0)::bigint,
               coalesce(sum(c.parts_done), 0)::int, coalesce(sum(c.parts_total), 0)::int, coalesce(max(c.state), 'none'),
               (SELECT string_agg(p.part_no::text, ',' ORDER BY p.part_no) FROM bunny.snapshot_part p JOIN bunny.mirror m ON m.id = p.mirror_id
                 WHERE m.name = '$mirror' AND p.status = 'RUNNING')
          FROM bunny.copy_progress c WHERE c.mirror = '$mirror'"
    start_mem "$run-mirror" title "bunnydb mirror $mirror"; pm=$MEM_PID
    start_mem "$run-snap" title "bunnydb snapshot $mirror"; ps=$MEM_PID
    bt_disk_start "$run"
    off=$(stat -c %s "$DIR/dst.log")
    t0=$(now)
    if qd "$db" "SELECT bunny.create_mirror('$mirror', 'src', '[$mapping]'$opt)" >/dev/null \
       && bunny_wait_status_in "$db" "$mirror" RUNNING "$COPY_TIMEOUT"; then
        t1=$(now)
        RES[bt,$run]=$(elapsed "$t0" "$t1")
        ok=1
    else
        RES[bt,$run]=FAIL
        BT_BAD=1
        qd "$db" "SELECT status || ' ' || coalesce(error_message, '') FROM bunny.mirrors" || true
        qd "$db" "SELECT created_at::time(0) || ' ' || level || ' ' || message FROM bunny.logs('$mirror', NULL, NULL, 20)" || true
        tail -20 "$DIR/dst.log"
    fi
    bt_sampler_stop "$run"
    bt_log_events "$run" "$off" "$t0"
    RES[bt,$run,disk]=$(bt_disk_stop)
    stop_mem "$run-mirror" "$pm"
    RES[bt,$run,mir]="$M_PRIV/$M_HWM"
    stop_mem "$run-snap" "$ps"
    RES[bt,$run,snap]="$M_PRIV/$M_HWM/$M_SUM/$M_PROCS"
    log "$label: ${RES[bt,$run]} s"
    [ "$ok" = 1 ] || return 0

    # where the time went, from the log: setup until the copy starts, the
    # parts and then the table's constraints and indexes (until its
    # "copied table" line), the rest until RUNNING; from the samples, the
    # constraints and indexes alone ("finishing": every part in)
    RES[bt,$run,phases]=$(qd "$db" "WITH l AS (SELECT created_at AS t, message AS m FROM bunny.mirror_logs WHERE mirror = '$mirror'),
          p AS (SELECT min(t) FILTER (WHERE m LIKE 'initial copy started%') AS copy,
                       min(t) FILTER (WHERE m LIKE 'copied table%') AS copied,
                       min(m) FILTER (WHERE m LIKE 'initial copy started%') AS cm
                  FROM l)
        SELECT format('setup %s s | parts + index %s s | to RUNNING %s s | %s',
                      round(extract(epoch FROM copy - to_timestamp($t0))::numeric, 1),
                      round(extract(epoch FROM copied - copy)::numeric, 1),
                      round(extract(epoch FROM to_timestamp($t1) - copied)::numeric, 1), cm) FROM p")
    # (until RUNNING when no sample saw the table leave the view)
    RES[bt,$run,finishing]=$(awk -v t1="$t1" '$6 == "finishing" { if (!f) f = $1 } $6 == "none" && f && !e { e = $1 } END { if (f && !e) e = t1; if (f) printf "%.1f", e - f; else print "n/a" }' "$DIR/samples-$run.txt")
    bt_rates "$run"
    RES[bt,$run,q]=$BT_Q; RES[bt,$run,rate]=$BT_RATE; RES[bt,$run,lf]=$BT_LASTFIRST; RES[bt,$run,mm]=$BT_MINMAX
    RES[bt,$run,win]=$BT_WIN; RES[bt,$run,dec]=$BT_DEC; RES[bt,$run,pdur]=$BT_PARTDUR
    RES[bt,$run,dirty]=$(bt_dirty "$run")
    # the parts: their rows, and the workers that copied them
    RES[bt,$run,parts]=$(qd "$db" "SELECT format('%s %s %s %s %s %s %s %s %s', count(*), min(rows_copied), max(rows_copied), round(avg(rows_copied)),
                  round(stddev_pop(rows_copied)), round(100 * stddev_pop(rows_copied) / nullif(avg(rows_copied), 0), 1),
                  (array_agg(part_no + 1 ORDER BY rows_copied))[1], round(max(rows_copied)::numeric / nullif(min(rows_copied), 0), 2),
                  count(DISTINCT worker_pid))
            FROM bunny.snapshot_part p JOIN bunny.mirror m ON m.id = p.mirror_id WHERE m.name = '$mirror'")
    RES[bt,$run,parts_inner]=$(qd "$db" "SELECT format('%s/%s/%s', min(rows_copied), max(rows_copied), round(100 * stddev_pop(rows_copied) / nullif(avg(rows_copied), 0), 1))
            FROM bunny.snapshot_part p JOIN bunny.mirror m ON m.id = p.mirror_id
           WHERE m.name = '$mirror' AND p.part_no > 0 AND p.part_no < (SELECT max(part_no) FROM bunny.snapshot_part q WHERE q.mirror_id = p.mirror_id)")
    RES[bt,$run,workers]=$(qd "$db" "SELECT format('%s parts / %s rows min, %s / %s max', min(n), min(r), max(n), max(r))
            FROM (SELECT worker_pid, count(*) AS n, sum(rows_copied) AS r FROM bunny.snapshot_part p JOIN bunny.mirror m ON m.id = p.mirror_id
                   WHERE m.name = '$mirror' GROUP BY 1) w")
    RES[bt,$run,plan]=$(qd "$db" "SELECT format('%s .. %s', (array_agg(coalesce(predicate, 'all') ORDER BY part_no))[1], (array_agg(coalesce(predicate, 'all') ORDER BY part_no DESC))[1])
            FROM bunny.snapshot_part p JOIN bunny.mirror m ON m.id = p.mirror_id WHERE m.name = '$mirror'")
    bt_show "$run" "$label"
    bt_check "$run" "$db"
    qd "$db" "SELECT bunny.drop_mirror('$mirror')" >/dev/null || true
    qd "$db" "DROP TABLE public.bigtable"
}

bt_show() {   # run label
    local run=$1 label=$2 n mn mx avg sd cv small mm nw
    log "$label: phases: ${RES[bt,$run,phases]:-n/a}; all parts in until SYNCED (primary key built) about ${RES[bt,$run,finishing]:-n/a} s"
    log "$label: rows/s by quarter of the copy window (${RES[bt,$run,win]} s): ${RES[bt,$run,q]// / | }; whole window ${RES[bt,$run,rate]}; last/first quarter ${RES[bt,$run,lf]}, slowest/fastest ${RES[bt,$run,mm]}"
    log "$label: rows/s by tenth of the window: ${RES[bt,$run,dec]}"
    log "$label: kernel dirty + writeback memory (MB) at the window's start, quarter marks and end: ${RES[bt,$run,dirty]:-n/a}"
    if [ -n "${RES[bt,$run,parts]:-}" ]; then
        read -r n mn mx avg sd cv small mm nw <<<"${RES[bt,$run,parts]}"
        log "$label: $n parts: rows min $mn (part $small), max $mx, mean $avg, stddev $sd (cv $cv %), max/min $mm; inner parts (not the open-ended first and last) min/max/cv% ${RES[bt,$run,parts_inner]:-n/a}; $nw workers: ${RES[bt,$run,workers]}; predicates ${RES[bt,$run,plan]}"
        log "$label: median duration of a part (seen running every $BT_SAMPLE_S s) started in the window's first / last quarter: ${RES[bt,$run,pdur]} s"
        log "$label: memory peaks (MB): mirror worker private/VmHWM ${RES[bt,$run,mir]}; snapshot workers largest private/VmHWM/sum private/count ${RES[bt,$run,snap]}; disk used by --dir at most ${RES[bt,$run,disk]} MB"
    fi
    log "$label: meanwhile on the destination: ${RES[bt,$run,events]:-n/a}"
}

# bt_log_events RUN OFFSET T0: what dst.log says happened since byte
# OFFSET: checkpoints (with the second, after T0 (epoch), at which each
# started), and autovacuum / autoanalyze runs on bigtable with their
# seconds
bt_log_events() {
    local t0s
    t0s=$(date -d "@$3" +%H:%M:%S.%N | awk -F: '{ printf "%.3f", $1 * 3600 + $2 * 60 + $3 }')
    RES[bt,$1,events]=$(tail -c +"$(($2 + 1))" "$DIR/dst.log" | awk -v t0="$t0s" '
        /checkpoint starting/ { split($2, hms, ":"); c++; at_s = at_s sprintf("%s%.1f", (c > 1 ? "," : ""), hms[1] * 3600 + hms[2] * 60 + hms[3] - t0) }
        /automatic vacuum of table "[^"]*bigtable"/ { v++; vt = 1 }
        /automatic analyze of table "[^"]*bigtable"/ { a++; at = 1 }
        /elapsed: / { if (vt || at) { match($0, /elapsed: [0-9.]+/); s = substr($0, RSTART + 9, RLENGTH - 9); if (vt) vs += s; else as += s }; vt = 0; at = 0 }
        END { printf "%d checkpoints (started %s s after the copy began), %d autovacuums of bigtable (%.1f s), %d autoanalyzes (%.1f s)", c, (c ? at_s : "-"), v, vs, a, as }')
}

bt_check() {   # run db
    local got
    got=$(qd "$2" "$BT_CHECK_SQL")
    if [ "$got" = "$BT_REF" ]; then
        log "$2: bigtable equals the source (rows, checksum, primary key): $got"
        RES[bt,$1,check]=OK
    else
        log "$2: MISMATCH: $got against the source's $BT_REF"
        RES[bt,$1,check]=MISMATCH
        BT_BAD=1
    fi
}

bt_builtin() {
    local run=builtin db=bt_builtin t0 t1 ps pa sub_oid relid off
    checkpoint_both
    echo
    log "built-in: CREATE SUBSCRIPTION of bigtable ... until its table is ready ('r')"
    bt_sampler_start "$run" "$db" "SELECT extract(epoch FROM clock_timestamp())::float8, coalesce(sum(tuples_processed), 0)::bigint, coalesce(sum(bytes_processed), 0)::bigint,
               NULL::int, NULL::int, coalesce((SELECT string_agg(srsubstate::text, '') FROM pg_subscription_rel), 'none'), NULL::text
          FROM pg_stat_progress_copy WHERE datname = current_database()"
    relid=$(qd "$db" "SELECT 'public.bigtable'::regclass::oid")
    bt_disk_start "$run"
    off=$(stat -c %s "$DIR/dst.log")
    t0=$(now)
    qd "$db" "CREATE SUBSCRIPTION bt_sub CONNECTION 'host=$DIR port=$SRC_PORT dbname=big' PUBLICATION bt_pub"
    sub_oid=$(qd "$db" "SELECT oid FROM pg_subscription WHERE subname = 'bt_sub'")
    # its workers' titles name the subscription: known only now, before
    # either worker has started
    start_mem "$run-sync" title "logical replication worker for subscription $sub_oid sync $relid"; ps=$MEM_PID
    start_mem "$run-apply" title "logical replication worker for subscription $sub_oid"; pa=$MEM_PID
    if srv_wait "built-in bt_sub ready" "$COPY_TIMEOUT" "$db" \
        "SELECT CASE WHEN count(*) = 1 AND bool_and(srsubstate = 'r') THEN 'ok' ELSE 'wait' END FROM pg_subscription_rel WHERE srsubid = $sub_oid"; then
        t1=$(now)
        RES[bt,$run]=$(elapsed "$t0" "$t1")
    else
        RES[bt,$run]=FAIL
        BT_BAD=1
        tail -20 "$DIR/dst.log"
    fi
    bt_sampler_stop "$run"
    bt_log_events "$run" "$off" "$t0"
    RES[bt,$run,disk]=$(bt_disk_stop)
    stop_mem "$run-sync" "$ps"
    RES[bt,$run,snap]="$M_PRIV/$M_HWM/$M_SUM/$M_PROCS"
    stop_mem "$run-apply" "$pa"
    RES[bt,$run,mir]="$M_PRIV/$M_HWM"
    log "built-in: ${RES[bt,$run]} s"
    if [ "${RES[bt,$run]}" != FAIL ]; then
        bt_rates "$run"
        RES[bt,$run,q]=$BT_Q; RES[bt,$run,rate]=$BT_RATE; RES[bt,$run,lf]=$BT_LASTFIRST; RES[bt,$run,mm]=$BT_MINMAX
        RES[bt,$run,win]=$BT_WIN; RES[bt,$run,dec]=$BT_DEC
        RES[bt,$run,dirty]=$(bt_dirty "$run")
        log "built-in: rows/s by quarter of the copy window (${RES[bt,$run,win]} s, its table sync worker's COPY): ${RES[bt,$run,q]// / | }; whole window ${RES[bt,$run,rate]}; last/first quarter ${RES[bt,$run,lf]}, slowest/fastest ${RES[bt,$run,mm]}"
        log "built-in: rows/s by tenth of the window: ${RES[bt,$run,dec]}"
        log "built-in: kernel dirty + writeback memory (MB) at the window's start, quarter marks and end: ${RES[bt,$run,dirty]:-n/a}"
        log "built-in: memory peaks (MB): apply worker private/VmHWM ${RES[bt,$run,mir]}; table sync worker private/VmHWM/sum/count ${RES[bt,$run,snap]}; disk used by --dir at most ${RES[bt,$run,disk]} MB"
        log "built-in: meanwhile on the destination: ${RES[bt,$run,events]:-n/a}"
        bt_check "$run" "$db"
    fi
    qd "$db" "DROP SUBSCRIPTION bt_sub" || true
    qd "$db" "DROP TABLE public.bigtable"
}

bigtable_main() {
    local r
    BT_BAD=0
    qs postgres "CREATE DATABASE sampler"
    qs sampler "CREATE EXTENSION dblink"
    qs sampler "CREATE TABLE bt_samples (run text, t float8, rows_done bigint, bytes_done bigint, parts_done int, parts_total int, state text, running text)"
    qs sampler "CREATE TABLE bt_stop (run text)"
    log "disk: $(df -h --output=avail "$DIR" | tail -1 | tr -d ' ') free where --dir is; vm.dirty_background_ratio $(cat /proc/sys/vm/dirty_background_ratio), vm.dirty_ratio $(cat /proc/sys/vm/dirty_ratio) (% of reclaimable memory)"
    bigtable_source
    BT_REF=$(qs big "$BT_CHECK_SQL")
    log "source: bigtable check: $BT_REF"
    # see the copy workload: new clusters have no WAL segments to recycle;
    # here about as much WAL as one copy writes (up to max_wal_size)
    log "destination: writing and dropping about $BT_WARM_MB MB of WAL, untimed (new clusters have no WAL segments to recycle)"
    qd postgres "CREATE TABLE bench_wal_warmup AS SELECT g, repeat('x', 400) AS v FROM generate_series(1, $((BT_WARM_MB * 2300))) g"
    qd postgres "DROP TABLE bench_wal_warmup"
    qd postgres "CHECKPOINT"
    for db in bt_bunny bt_bunny_key; do
        qd postgres "CREATE DATABASE $db"
        qd "$db" "CREATE EXTENSION bunnydb"
        qd "$db" "SELECT bunny.create_peer('src', 'host=$DIR port=$SRC_PORT dbname=big')" >/dev/null
    done
    qd postgres "CREATE DATABASE bt_builtin"
    psql_in "$DST_PORT" bt_builtin <"$DIR/schema-big.sql" >"$DIR/schema-load-big.log" 2>&1 \
        || { tail -20 "$DIR/schema-load-big.log"; die "could not load the schema into bt_builtin"; }

    bt_bunny bunny bt_bunny btblk '"public.bigtable"' "bunnydb (block ranges)"
    bt_builtin
    bt_bunny bunny_key bt_bunny_key btkey '{"source_table": "public.bigtable", "partition_key": "id"}' "bunnydb (partition_key id)"

    local b i k rb rk
    b=${RES[bt,bunny]:-FAIL}; i=${RES[bt,builtin]:-FAIL}; k=${RES[bt,bunny_key]:-FAIL}
    rb=$(ratio "$b" "$i"); rk=$(ratio "$k" "$i")
    echo
    echo "== results: bigtable (nproc $(nproc); $BT_ROWS rows, heap $BT_TABLE_MB MB, destination shared_buffers $(qd postgres "SHOW shared_buffers")) =="
    printf '%-28s | %10s | %9s | %s\n' system "total" "ratio" "rows/s by quarter of the copy (last/first, slowest/fastest)"
    printf '%s\n' "-----------------------------+------------+-----------+-------------------------------------------------------------"
    for r in bunny builtin bunny_key; do
        case $r in
            bunny) label="bunnydb (block ranges)" ;;
            builtin) label="built-in" ;;
            bunny_key) label="bunnydb (partition_key id)" ;;
        esac
        printf '%-28s | %10s | %9s | %s\n' "$label" "$(unit "${RES[bt,$r]:-FAIL}" s)" "$([ $r = builtin ] && echo 1.00 || ratio "${RES[bt,$r]:-FAIL}" "$i")" \
            "${RES[bt,$r,q]:-n/a} (${RES[bt,$r,lf]:-n/a}, ${RES[bt,$r,mm]:-n/a})"
    done
    echo
    RESULT_LINES+=("RESULT bigtable rows=$BT_ROWS heap_mb=$BT_TABLE_MB ratio=$rb key_ratio=$rk bunnydb_s=$b builtin_s=$i bunnydb_key_s=$k")
    for r in bunny builtin bunny_key; do
        read -r q1 q2 q3 q4 <<<"${RES[bt,$r,q]:-n/a n/a n/a n/a}"
        RESULT_LINES+=("RESULT bigtable_rate system=$r q1=$q1 q2=$q2 q3=$q3 q4=$q4 last_first=${RES[bt,$r,lf]:-n/a} slowest_fastest=${RES[bt,$r,mm]:-n/a} window_s=${RES[bt,$r,win]:-n/a} rows_per_s=${RES[bt,$r,rate]:-n/a} tenths=${RES[bt,$r,dec]:-n/a} dirty_mb=\"${RES[bt,$r,dirty]:-n/a}\" events=\"${RES[bt,$r,events]:-n/a}\"")
    done
    RESULT_LINES+=("RESULT bigtable_mem system=builtin apply_private_hwm_mb=${RES[bt,builtin,mir]:-n/a} sync_private_hwm_sum_count=${RES[bt,builtin,snap]:-n/a} disk_peak_mb=${RES[bt,builtin,disk]:-n/a}")
    for r in bunny bunny_key; do
        local n mn mx avg sd cv small mm nw
        read -r n mn mx avg sd cv small mm nw <<<"${RES[bt,$r,parts]:-n/a n/a n/a n/a n/a n/a n/a n/a n/a}"
        RESULT_LINES+=("RESULT bigtable_parts system=$r parts=$n rows_min=$mn rows_max=$mx rows_mean=$avg rows_stddev=$sd cv_pct=$cv max_min=$mm inner_min_max_cv=${RES[bt,$r,parts_inner]:-n/a} workers=$nw part_s_first_last_quarter=${RES[bt,$r,pdur]:-n/a} finishing_s=${RES[bt,$r,finishing]:-n/a}")
        RESULT_LINES+=("RESULT bigtable_mem system=$r mirror_private_hwm_mb=${RES[bt,$r,mir]:-n/a} snapshot_private_hwm_sum_count=${RES[bt,$r,snap]:-n/a} disk_peak_mb=${RES[bt,$r,disk]:-n/a}")
    done
    printf '%s\n' "${RESULT_LINES[@]}"
    echo "RESULT bigtable_consistency $([ "$BT_BAD" = 0 ] && echo OK || echo MISMATCH) bunnydb=${RES[bt,bunny,check]:-n/a} builtin=${RES[bt,builtin,check]:-n/a} bunnydb_key=${RES[bt,bunny_key,check]:-n/a}"
    echo
    echo "Notes: one after the other, each alone: bunnydb (default split: heap block ranges), the built-in"
    echo "(schema with its primary key pre-created, untimed; one table sync worker, text COPY), bunnydb with"
    echo "partition_key id (key ranges).  Rates: rows done (bunny.copy_progress; the built-in: its COPY in"
    echo "pg_stat_progress_copy) sampled every $BT_SAMPLE_S s; the window runs from the first sample with rows"
    echo "to the first with all of them; bunnydb builds the primary key after that (\"all parts in until SYNCED\")."
    echo "Reminder: noisy machine; compare ratios and the shape of the rates, not absolute times."
    [ "$BT_BAD" = 0 ]
}

if [ -n "$SOLO" ]; then
    RESULT_LINES=()
    unit() { if [[ "$1" =~ ^[0-9.]+$ ]]; then echo "$1 $2"; else echo "$1"; fi; }
    TABLES_BAD=0
    "${SOLO}_main"
    exit $?
fi

# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
log "source: pgbench -i -s $SCALE -I dtgvp, table bigt"
qs postgres "CREATE DATABASE bench"
qs bench "CREATE TABLE bigt (id int PRIMARY KEY, v text)"
t0=$(now)
as_pg pgbench -i -q -s "$SCALE" -I dtgvp -h "$DIR" -p $SRC_PORT bench >"$DIR/pgbench-init.log" 2>&1 \
    || { tail -20 "$DIR/pgbench-init.log"; die "pgbench -i failed"; }
# pgbench_history has no key; replica identity full lets a mirror of it
# publish updates/deletes (pgbench itself only inserts into it)
qs bench "ALTER TABLE pgbench_history REPLICA IDENTITY FULL"
qs bench "ANALYZE"
log "source ready in $(elapsed "$t0" "$(now)") s; pgbench_accounts: $(qs bench "SELECT count(*) FROM pgbench_accounts") rows, $(qs bench "SELECT pg_size_pretty(pg_total_relation_size('pgbench_accounts'))")"

# The tables' schema for the built-in and pglogical destinations, dumped
# once before pglogical adds its TRUNCATE triggers to the source tables
as_pg bash -c "pg_dump -s -t 'pgbench_*' -t bigt -h '$DIR' -p $SRC_PORT bench" >"$DIR/schema.sql" 2>"$DIR/schema-dump.log" \
    || { cat "$DIR/schema-dump.log"; die "pg_dump -s of the source tables failed"; }
chown postgres "$DIR/schema.sql"
load_schema() {   # db
    as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p $DST_PORT -d "$1" -f "$DIR/schema.sql" >"$DIR/schema-$1.log" 2>&1 \
        || { cat "$DIR/schema-$1.log"; die "could not copy the schema to $1"; }
}

# dest_bunny$1 with the extension, dest_builtin$1 with the source's schema,
# dest_pglogical$1 with the schema and a pglogical node
create_dest_dbs() {
    qd postgres "CREATE DATABASE dest_bunny$1"
    qd postgres "CREATE DATABASE dest_builtin$1"
    qd "dest_bunny$1" "CREATE EXTENSION bunnydb"
    load_schema "dest_builtin$1"
    if [ "$PGL" = 1 ]; then
        qd postgres "CREATE DATABASE dest_pglogical$1"
        load_schema "dest_pglogical$1"
        qd "dest_pglogical$1" "CREATE EXTENSION pglogical"
        qd "dest_pglogical$1" "SELECT pglogical.create_node('dest_pglogical$1', 'host=$DIR port=$DST_PORT dbname=dest_pglogical$1')" >/dev/null
    fi
}
log "destination: dest_bunny (CREATE EXTENSION bunnydb), dest_builtin (schema from pg_dump -s)$([ "$PGL" = 1 ] && echo ", dest_pglogical (schema, pglogical node)")"
create_dest_dbs ""
qs bench "CREATE PUBLICATION $PUB FOR TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history, bigt"
if [ "$PGL" = 1 ]; then
    log "source: pglogical node bench_provider; pgbench_history (no key) in set default_insert_only, the other tables in set default"
    qs bench "CREATE EXTENSION pglogical"
    qs bench "SELECT pglogical.create_node('bench_provider', '$SRC_CONNINFO')" >/dev/null
    qs bench "SELECT pglogical.replication_set_add_table('default', t) FROM unnest('{pgbench_accounts,pgbench_branches,pgbench_tellers,bigt}'::regclass[]) t" >/dev/null
    qs bench "SELECT pglogical.replication_set_add_table('default_insert_only', 'pgbench_history')" >/dev/null
fi
# sampler database on the source for the lag workload (dblink to the destination)
qs postgres "CREATE DATABASE sampler"
qs sampler "CREATE EXTENSION dblink"

# ---------------------------------------------------------------------------
# 1. copy
# ---------------------------------------------------------------------------
# A new cluster has no WAL segments to recycle: the first large copy into
# it creates and zero-fills every segment it writes (about 40 for scale 50),
# the later copies get recycled ones.  Whichever system copied first paid
# for that alone (on one machine its copy took 10 s in the first pair and 7 s
# in the second).  Write and drop about 1.3 GB of WAL once, untimed, so
# that every timed copy finds segments to recycle.
log "destination: writing and dropping about 1.3 GB of WAL, untimed (new clusters have no WAL segments to recycle)"
qd postgres "CREATE TABLE bench_wal_warmup AS SELECT g, repeat('x', 400) AS v FROM generate_series(1, 3000000) g"
qd postgres "DROP TABLE bench_wal_warmup"
qd postgres "CHECKPOINT"
log "destination: $(qd postgres "SELECT count(*) FROM pg_ls_waldir()") WAL segments"

echo
log "== copy: initial copy of scale $SCALE =="
qd dest_bunny "SELECT bunny.create_peer('src', '$SRC_CONNINFO')" >/dev/null

checkpoint_both
log "bunnydb: create_mirror ... until status RUNNING"
t0=$(now)
if qd dest_bunny "SELECT bunny.create_mirror('$MIRROR', 'src', '$TABLES_JSON')" >/dev/null \
   && bunny_wait_status RUNNING "$COPY_TIMEOUT"; then
    t1=$(now)
    RES[copy,bunny]=$(elapsed "$t0" "$t1")
    log "bunnydb copy: ${RES[copy,bunny]} s"
    settle_copy dest_bunny
else
    RES[copy,bunny]=FAIL
    BUNNY_OK=0
    bunny_diagnostics
fi

checkpoint_both
log "built-in: CREATE SUBSCRIPTION ... until all tables are ready ('r')"
t0=$(now)
qd dest_builtin "CREATE SUBSCRIPTION $SUB CONNECTION '$SRC_CONNINFO' PUBLICATION $PUB WITH (copy_data = true)"
SUB_OID=$(qd dest_builtin "SELECT oid FROM pg_subscription WHERE subname = '$SUB'")
SUB_ORIGIN="pg_$SUB_OID"
srv_wait "built-in subscription with all tables ready" "$COPY_TIMEOUT" dest_builtin \
    "SELECT CASE WHEN count(*) >= 5 AND bool_and(srsubstate = 'r') THEN 'ok' ELSE 'wait' END FROM pg_subscription_rel WHERE srsubid = $SUB_OID" \
    || BUILTIN_OK=0
if [ "$BUILTIN_OK" = 1 ]; then
    t1=$(now)
    RES[copy,builtin]=$(elapsed "$t0" "$t1")
    log "built-in copy: ${RES[copy,builtin]} s"
    settle_copy dest_builtin
else
    RES[copy,builtin]=FAIL
fi

if [ "$PGL" = 1 ]; then
    checkpoint_both
    log "pglogical: create_subscription ... until replicating with all tables ready"
    t0=$(now)
    if pgl_subscribe dest_pglogical "$PGL_SUB"; then
        RES[copy,pgl]=$(elapsed "$t0" "$(now)")
        log "pglogical copy: ${RES[copy,pgl]} s"
        settle_copy dest_pglogical
        PGL_ORIGIN=$(qd dest_pglogical "SELECT sub_slot_name FROM pglogical.subscription WHERE sub_name = '$PGL_SUB'")
    else
        RES[copy,pgl]=FAIL
        PGL_OK=0
        tail -20 "$DIR/dst.log"
    fi
fi

# sanity: row counts
for db in dest_bunny dest_builtin $([ "$PGL_OK" = 1 ] && echo dest_pglogical); do
    log "$db: pgbench_accounts has $(qd "$db" "SELECT count(*) FROM pgbench_accounts" 2>/dev/null || echo '?') rows"
done

# Second pair, in the reverse order (built-in first), into scratch databases:
# whichever copy runs second finds the source's pages cached and the
# destination busy writing back the first copy, so one order alone is biased.
# The copy ratio is sum(bunnydb) / sum(built-in) over both pairs.
if [ "$COPY_PAIRS" = 2 ] && [ "$BUNNY_OK" = 1 ] && [ "$BUILTIN_OK" = 1 ]; then
    log "second copy pair, reverse order:$([ "$PGL_OK" = 1 ] && echo " pglogical into dest_pglogical2,") built-in into dest_builtin2, then bunnydb into dest_bunny2"
    create_dest_dbs 2
    qd dest_bunny2 "SELECT bunny.create_peer('src', '$SRC_CONNINFO')" >/dev/null

    if [ "$PGL_OK" = 1 ]; then
        checkpoint_both
        t0=$(now)
        if pgl_subscribe dest_pglogical2 "${PGL_SUB}2"; then
            RES[copy,pgl2]=$(elapsed "$t0" "$(now)")
            log "pglogical copy (2nd pair): ${RES[copy,pgl2]} s"
            settle_copy dest_pglogical2
        else
            RES[copy,pgl2]=FAIL
            tail -20 "$DIR/dst.log"
        fi
        qd dest_pglogical2 "SELECT pglogical.drop_subscription('${PGL_SUB}2')" >/dev/null || true
    fi
    # the built-in launcher starts a worker at most once per
    # wal_retrieve_retry_interval (5 s): let that pass, untimed
    sleep 6
    checkpoint_both
    t0=$(now)
    qd dest_builtin2 "CREATE SUBSCRIPTION ${SUB}2 CONNECTION '$SRC_CONNINFO' PUBLICATION $PUB WITH (copy_data = true)"
    srv_wait "second built-in copy" "$COPY_TIMEOUT" dest_builtin2 \
        "SELECT CASE WHEN count(*) = 5 AND bool_and(srsubstate = 'r') THEN 'ok' ELSE 'wait' END FROM pg_subscription_rel" \
        || die "second built-in copy failed"
    RES[copy,builtin2]=$(elapsed "$t0" "$(now)")
    log "built-in copy (2nd pair): ${RES[copy,builtin2]} s"
    settle_copy dest_builtin2

    checkpoint_both
    t0=$(now)
    qd dest_bunny2 "SELECT bunny.create_mirror('${MIRROR}2', 'src', '$TABLES_JSON')" >/dev/null
    bunny_wait_status_in dest_bunny2 "${MIRROR}2" RUNNING "$COPY_TIMEOUT" || die "second bunnydb copy failed"
    RES[copy,bunny2]=$(elapsed "$t0" "$(now)")
    log "bunnydb copy (2nd pair): ${RES[copy,bunny2]} s"
    settle_copy dest_bunny2
    for db in dest_bunny2 dest_builtin2; do
        log "$db: pgbench_accounts has $(qd "$db" "SELECT count(*) FROM pgbench_accounts") rows"
    done

    # clean up: their slots would hold WAL back during the later workloads.
    # The databases stay (they go with the cluster): DROP DATABASE waits
    # until every backend has absorbed a ProcSignalBarrier, and an idle
    # pglogical 2.4 apply worker does not absorb it until its next message.
    qd dest_bunny2 "SELECT bunny.drop_mirror('${MIRROR}2')" >/dev/null
    qd dest_builtin2 "DROP SUBSCRIPTION ${SUB}2"
    log "pair 1 ratio $(ratio "${RES[copy,bunny]}" "${RES[copy,builtin]}"), pair 2 ratio $(ratio "${RES[copy,bunny2]}" "${RES[copy,builtin2]}")"
    if [ "$PGL_OK" = 1 ]; then
        log "bunnydb/pglogical: pair 1 ratio $(ratio "${RES[copy,bunny]}" "${RES[copy,pgl]}"), pair 2 ratio $(ratio "${RES[copy,bunny2]}" "${RES[copy,pgl2]:-}")"
        if [[ "${RES[copy,pgl2]:-}" =~ ^[0-9.]+$ ]]; then
            RES[copy,pgl]=$(awk -v a="${RES[copy,pgl]}" -v b="${RES[copy,pgl2]}" 'BEGIN { printf "%.2f", a + b }')
        else
            RES[copy,pgl]=FAIL
        fi
    fi
    RES[copy,bunny]=$(awk -v a="${RES[copy,bunny]}" -v b="${RES[copy,bunny2]}" 'BEGIN { printf "%.2f", a + b }')
    RES[copy,builtin]=$(awk -v a="${RES[copy,builtin]}" -v b="${RES[copy,builtin2]}" 'BEGIN { printf "%.2f", a + b }')
    log "copy totals over both pairs: bunnydb ${RES[copy,bunny]} s, built-in ${RES[copy,builtin]} s$([ "$PGL_OK" = 1 ] && echo ", pglogical ${RES[copy,pgl]} s")"
fi

# Reference, not a system under test: PostgreSQL's own fastest way to copy
# the big table on this machine.  One binary COPY pipe (psql | psql) of
# pgbench_accounts into a table without indexes, then its primary key built
# with the snapshot workers' maintenance_work_mem: no slot, no catalog work,
# no logical replication.  Its ratio to one built-in copy tells how far
# below PostgreSQL's own copy speed the copy target lies on this machine.
if [ "$BUILTIN_OK" = 1 ]; then
    log "reference: binary COPY pipe of pgbench_accounts into a bare table of a scratch database, then its primary key"
    qd postgres "CREATE DATABASE dest_floor"
    qd dest_floor "CREATE TABLE pgbench_accounts (aid int NOT NULL, bid int, abalance int, filler char(84))"
    checkpoint_both
    t0=$(now)
    if qs bench "COPY pgbench_accounts TO STDOUT (FORMAT binary)" \
        | qd dest_floor "COPY pgbench_accounts FROM STDIN (FORMAT binary)" \
       && t1=$(now) \
       && qd dest_floor "SET maintenance_work_mem = '256MB'; ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid)"; then
        RES[copy,floor]=$(elapsed "$t0" "$(now)")
        # against one built-in copy (the copy row sums both pairs)
        RES[copy,floor_builtin]=$(awk -v t="${RES[copy,builtin]}" -v n="$([[ "${RES[copy,builtin2]:-}" =~ ^[0-9.]+$ ]] && echo 2 || echo 1)" 'BEGIN { printf "%.2f", t / n }')
        log "reference COPY pipe + primary key: ${RES[copy,floor]} s (COPY $(elapsed "$t0" "$t1") s)"
    else
        RES[copy,floor]=FAIL
    fi
    # DROP TABLE, not DROP DATABASE: that waits for every backend to absorb a
    # barrier, which an idle pglogical apply worker does not (see below)
    qd dest_floor "DROP TABLE pgbench_accounts"
fi

# ---------------------------------------------------------------------------
# catch-up helper for tpcb and bigtxn
# ---------------------------------------------------------------------------
pause_both() {
    if [ "$BUNNY_OK" = 1 ]; then
        bunny_pause || { BUNNY_OK=0; echo "bunnydb: pause failed"; bunny_diagnostics; }
    fi
    if [ "$BUILTIN_OK" = 1 ]; then
        builtin_pause || { BUILTIN_OK=0; echo "built-in: disable failed"; }
    fi
    if [ "$PGL_OK" = 1 ]; then
        pgl_pause || { PGL_OK=0; echo "pglogical: disable failed"; }
    fi
}

# right after a catch-up (the source is quiet): the destination must already
# have all rows of the append-only tables, else the catch-up criterion is wrong
check_rows() {
    local src dst
    src=$(qs bench "SELECT (SELECT count(*) FROM pgbench_history) || '/' || (SELECT count(*) FROM bigt)")
    dst=$(qd "$1" "SELECT (SELECT count(*) FROM pgbench_history) || '/' || (SELECT count(*) FROM bigt)")
    if [ "$src" = "$dst" ]; then
        log "$1: history/bigt rows $dst = source (criterion confirmed)"
    else
        log "$1: WARNING: history/bigt rows $dst, source $src: not all applied when the catch-up criterion held"
        CRITERION_BAD=1
    fi
}
CRITERION_BAD=0

# catchup WORKLOAD LSN [rss]: resume bunnydb, time; then enable built-in, time
catchup() {
    local w=$1 lsn=$2 rss=${3:-} t0 t1 ok log_id
    # each system's walsender decodes from its slot's restart_lsn, not from
    # where the stream resumes: a restart point far behind costs decoding
    log "source slots, WAL from restart_lsn to the target: $(qs postgres "SELECT string_agg(slot_name || ' ' || pg_size_pretty('$lsn'::pg_lsn - restart_lsn), ', ' ORDER BY slot_name) FROM pg_replication_slots")"
    if [ "$BUNNY_OK" = 1 ]; then
        checkpoint_both
        [ -n "$rss" ] && start_rss bunny $DST_PORT postgres \
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'bunnydb mirror $MIRROR'" "bunnydb mirror $MIRROR"
        log "bunnydb: resume_mirror + wait_for_lsn($lsn) ($WAIT_MODE)"
        log_id=$(qd dest_bunny "SELECT coalesce(max(id), 0) FROM bunny.mirror_logs")
        t0=$(now)
        ok=$(qd dest_bunny "SELECT bunny.resume_mirror('$MIRROR')" >/dev/null &&
             bunny_wait_lsn "$lsn" "$CATCHUP_TIMEOUT" && echo t) || ok=error
        t1=$(now)
        if [ -n "$rss" ]; then
            stop_rss bunny "$RSS_PID"
            RES[$w,bunny_rss]=$RSS_PEAK_MB
            RES[$w,bunny_anon]=$RSS_ANON_MB
            RES[$w,bunny_priv]=$RSS_PRIV_MB
            log "bunnydb mirror worker: peak VmRSS $RSS_PEAK_MB MB, peak VmRSS-RssShmem $RSS_PRIV_MB MB, peak RssAnon $RSS_ANON_MB MB ($RSS_N samples)"
        fi
        if [ "$ok" = t ]; then
            RES[$w,bunny]=$(elapsed "$t0" "$t1")
            log "bunnydb $w catch-up: ${RES[$w,bunny]} s"
            check_rows dest_bunny
            # whether the stream ran with streaming of large transactions, or
            # gave it up (then a large transaction comes only after its commit)
            log "bunnydb stream: $(qd dest_bunny "SELECT coalesce(string_agg(message, '; ' ORDER BY id), 'no new stream') FROM bunny.mirror_logs WHERE mirror = '$MIRROR' AND id > $log_id AND message LIKE 'streaming%'")"
            log "bunnydb: $(qd dest_bunny "SELECT 'error_count=' || error_count || ', warnings/errors logged so far: ' || (SELECT count(*) FROM bunny.mirror_logs WHERE mirror = '$MIRROR' AND level IN ('WARNING', 'ERROR')) FROM bunny.mirrors WHERE name = '$MIRROR'")"
        else
            RES[$w,bunny]=FAIL
            echo "bunnydb: wait_for_lsn returned '$ok'"
            bunny_diagnostics
            BUNNY_OK=0
        fi
    else
        RES[$w,bunny]=FAIL
    fi

    if [ "$BUILTIN_OK" = 1 ]; then
        peer_catchup "$w" "$lsn" "$rss" builtin built-in dest_builtin builtin_resume builtin_wait_lsn \
            "$builtin_apply_pid_sql" "logical replication" || BUILTIN_OK=0
    else
        RES[$w,builtin]=FAIL
    fi

    if [ "$PGL_OK" = 1 ]; then
        peer_catchup "$w" "$lsn" "$rss" pgl pglogical dest_pglogical pgl_resume pgl_wait_lsn \
            "$pgl_apply_pid_sql" "pglogical apply" || PGL_OK=0
    elif [ "$PGL" = 1 ]; then
        RES[$w,pgl]=FAIL
    fi
}

# peer_catchup WORKLOAD LSN RSS KEY LABEL DB RESUME WAIT PIDSQL PROCNAME:
# time one subscription's catch-up (RESUME, then WAIT LSN) into RES[WORKLOAD,KEY],
# sampling its apply worker's memory when RSS is set; fails if it did not catch up
peer_catchup() {
    local w=$1 lsn=$2 rss=$3 key=$4 label=$5 db=$6 t0 t1 rc=0
    checkpoint_both
    [ -n "$rss" ] && start_rss "$key" $DST_PORT postgres "$9" "${10}"
    log "$label: resume + wait for origin remote_lsn or slot confirmed_flush_lsn >= $lsn"
    t0=$(now)
    if $7 && $8 "$lsn" "$CATCHUP_TIMEOUT"; then
        t1=$(now)
        RES[$w,$key]=$(elapsed "$t0" "$t1")
        log "$label $w catch-up: ${RES[$w,$key]} s"
        check_rows "$db"
    else
        RES[$w,$key]=FAIL
        rc=1
        tail -20 "$DIR/dst.log"
    fi
    if [ -n "$rss" ]; then
        stop_rss "$key" "$RSS_PID"
        RES[$w,${key}_rss]=$RSS_PEAK_MB
        RES[$w,${key}_anon]=$RSS_ANON_MB
        RES[$w,${key}_priv]=$RSS_PRIV_MB
        log "$label apply worker: peak VmRSS $RSS_PEAK_MB MB, peak VmRSS-RssShmem $RSS_PRIV_MB MB, peak RssAnon $RSS_ANON_MB MB ($RSS_N samples)"
    fi
    return $rc
}

# ---------------------------------------------------------------------------
# 2. tpcb
# ---------------------------------------------------------------------------
if want tpcb; then
    echo
    log "== tpcb: catch-up of $((TPCB_CLIENTS * TPCB_TXNS)) pgbench TPC-B transactions =="
    pause_both
    log "source: pgbench -n -c $TPCB_CLIENTS -j 2 -t $TPCB_TXNS -b tpcb-like"
    as_pg pgbench -n -c $TPCB_CLIENTS -j 2 -t $TPCB_TXNS -b tpcb-like -h "$DIR" -p $SRC_PORT bench >"$DIR/pgbench-tpcb.log" 2>&1 \
        || { tail -20 "$DIR/pgbench-tpcb.log"; die "pgbench failed"; }
    log "source: $(grep -E '^tps' "$DIR/pgbench-tpcb.log" | head -1)"
    LSN=$(target_lsn)
    log "target LSN $LSN"
    catchup tpcb "$LSN"
    for db in dest_bunny dest_builtin $([ "$PGL_OK" = 1 ] && echo dest_pglogical); do
        log "$db after tpcb: $(qd $db "SELECT string_agg(format('%s seq_scan=%s idx_scan=%s size=%s', relname, seq_scan, coalesce(idx_scan, 0), pg_size_pretty(pg_relation_size(relid))), '; ' ORDER BY relname) FROM pg_stat_user_tables WHERE relname IN ('pgbench_branches', 'pgbench_tellers', 'pgbench_accounts')")"
    done
    # Reference, not a system under test: the destination alone, with every
    # change of the backlog folded into its net effect.  In the built-in's
    # scratch copy of the second pair (idle since its copy, its tables out of
    # shared_buffers like the catch-ups' tables), the backlog's history rows
    # (brought over untimed) become one UPDATE per table of the summed
    # deltas and one INSERT of the history: the least row work any apply
    # of this backlog can do, in one transaction.  The keys go in order
    # (nested loop over the sorted sums): on this machine that took half
    # the time of the planner's hash order, so it is the lower bound.  Needs
    # the second pair.
    if [ "$BUILTIN_OK" = 1 ] && [[ "${RES[copy,builtin2]:-}" =~ ^[0-9.]+$ ]]; then
        log "reference: the backlog's net effect applied in one transaction (dest_builtin2)"
        qd dest_builtin2 "CREATE TABLE bench_backlog (LIKE pgbench_history)"
        qd dest_builtin "COPY pgbench_history TO STDOUT (FORMAT binary)" \
            | qd dest_builtin2 "COPY bench_backlog FROM STDIN (FORMAT binary)"
        checkpoint_both
        t0=$(now)
        if as_pg psql -X -qAt -v ON_ERROR_STOP=1 -h "$DIR" -p "$DST_PORT" -d dest_builtin2 <<'SQL' >/dev/null
SET jit = off;
SET enable_hashjoin = off;
SET enable_mergejoin = off;
BEGIN;
UPDATE pgbench_accounts a SET abalance = a.abalance + d.s
  FROM (SELECT aid, sum(delta) AS s FROM bench_backlog GROUP BY aid ORDER BY aid) d WHERE a.aid = d.aid;
UPDATE pgbench_tellers t SET tbalance = t.tbalance + d.s
  FROM (SELECT tid, sum(delta) AS s FROM bench_backlog GROUP BY tid ORDER BY tid) d WHERE t.tid = d.tid;
UPDATE pgbench_branches b SET bbalance = b.bbalance + d.s
  FROM (SELECT bid, sum(delta) AS s FROM bench_backlog GROUP BY bid ORDER BY bid) d WHERE b.bid = d.bid;
INSERT INTO pgbench_history SELECT * FROM bench_backlog;
COMMIT;
SQL
        then
            RES[tpcb,floor]=$(elapsed "$t0" "$(now)")
            log "reference net effect: ${RES[tpcb,floor]} s"
        else
            RES[tpcb,floor]=FAIL
        fi
    fi
fi

# ---------------------------------------------------------------------------
# 3. bigtxn
# ---------------------------------------------------------------------------
if want bigtxn; then
    echo
    log "== bigtxn: catch-up of one $BIGTXN_ROWS-row INSERT transaction =="
    pause_both
    # for the reference below: a slot that sees the INSERT as the systems do
    [ "$BUNNY_OK" = 1 ] && qs bench "SELECT pg_create_logical_replication_slot('bench_floor', 'pgoutput')" >/dev/null
    t0=$(now)
    qs bench "INSERT INTO bigt SELECT g, md5(g::text) FROM generate_series(1, $BIGTXN_ROWS) g"
    log "source: INSERT took $(elapsed "$t0" "$(now)") s"
    LSN=$(target_lsn)
    log "target LSN $LSN"
    catchup bigtxn "$LSN" rss
    # Reference, not a system under test: the source alone.  pg_recvlogical
    # takes the transaction from a slot with the options bunnydb asks for
    # (protocol version 2, streaming, binary, bunnydb's publication) and
    # throws it away.  That is the decoding and sending every subscriber
    # waits for; no apply can finish before it.
    if [ "$BUNNY_OK" = 1 ]; then
        checkpoint_both
        log "reference: pg_recvlogical drains the transaction into /dev/null"
        t0=$(now)
        if as_pg timeout "$CATCHUP_TIMEOUT" pg_recvlogical -h "$DIR" -p "$SRC_PORT" -d bench -S bench_floor --start --endpos="$LSN" \
            -o proto_version=2 -o streaming=on -o binary=true -o "publication_names=bunny_pub_$MIRROR" -f /dev/null; then
            RES[bigtxn,floor]=$(elapsed "$t0" "$(now)")
            log "reference drain: ${RES[bigtxn,floor]} s"
        else
            RES[bigtxn,floor]=FAIL
        fi
        qs bench "SELECT pg_drop_replication_slot('bench_floor')" >/dev/null \
            || log "could not drop the reference's slot bench_floor (it holds WAL until the clusters go)"
    fi
fi

# ---------------------------------------------------------------------------
# 4. lag
# ---------------------------------------------------------------------------
# The sampler runs on the source in database `sampler`: every LAG_INTERVAL_MS
# it takes t0 and pg_current_wal_insert_lsn(), then waits (through dblink, one
# persistent connection to the destination) until that LSN is applied, and
# prints the elapsed ms as a NOTICE.  It commits after every sample so that it
# holds no snapshot on the source.
lag_sampler_sql() {   # bunny|builtin|pgl
    local conn wait_sql
    if [ "$1" = bunny ]; then
        conn=$DST_BUNNY_CONNINFO
        if [ "$WAIT_MODE" = long ]; then
            wait_sql="SELECT r.ok INTO ok FROM dblink('d', format('SELECT bunny.wait_for_lsn(%L, %L, 10000)', '$MIRROR', lsn)) AS r(ok boolean);"
        else
            wait_sql="LOOP
            SELECT r.ok INTO ok FROM dblink('d', format('SELECT bunny.wait_for_lsn(%L, %L, 0)', '$MIRROR', lsn)) AS r(ok boolean);
            EXIT WHEN ok OR clock_timestamp() > t0 + interval '10 s';
            PERFORM pg_sleep(0.002);
        END LOOP;"
        fi
    else
        local origin=$SUB_ORIGIN slot=$SUB
        conn=$DST_BUILTIN_CONNINFO
        [ "$1" = pgl ] && { origin=$PGL_ORIGIN; slot=$PGL_ORIGIN; conn=$DST_PGL_CONNINFO; }
        wait_sql="LOOP
            SELECT r.l >= lsn INTO ok FROM dblink('d', 'SELECT coalesce(max(remote_lsn), ''0/0'') FROM pg_replication_origin_status WHERE external_id = ''$origin''') AS r(l pg_lsn);
            IF NOT ok THEN
                SELECT coalesce(bool_or(confirmed_flush_lsn >= lsn), false) INTO ok FROM pg_replication_slots WHERE slot_name = '$slot';
            END IF;
            EXIT WHEN ok OR clock_timestamp() > t0 + interval '10 s';
            PERFORM pg_sleep(0.002);
        END LOOP;"
    fi
    cat <<EOF
DO \$\$
DECLARE
    t0 timestamptz;
    lsn pg_lsn;
    ok boolean;
    deadline timestamptz := clock_timestamp() + interval '$((LAG_SECONDS - 1)) s';
    next_t timestamptz := clock_timestamp();
BEGIN
    PERFORM dblink_connect('d', '$conn');
    WHILE clock_timestamp() < deadline LOOP
        t0 := clock_timestamp();
        lsn := pg_current_wal_insert_lsn();
        $wait_sql
        RAISE NOTICE 'SAMPLE % %', round((extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric, 1), ok;
        COMMIT;
        next_t := greatest(next_t + interval '$LAG_INTERVAL_MS ms', clock_timestamp());
        PERFORM pg_sleep(greatest(extract(epoch FROM next_t - clock_timestamp()), 0));
    END LOOP;
    PERFORM dblink_disconnect('d');
END
\$\$;
EOF
}


# is system $1 (bunny, builtin, pgl) still measured?
sys_ok() {
    case "$1" in
        bunny) [ "$BUNNY_OK" = 1 ] ;;
        builtin) [ "$BUILTIN_OK" = 1 ] ;;
        pgl) [ "$PGL_OK" = 1 ] ;;
    esac
}
sys_failed() {
    case "$1" in
        bunny) BUNNY_OK=0; bunny_diagnostics ;;
        builtin) BUILTIN_OK=0 ;;
        pgl) PGL_OK=0 ;;
    esac
}

# lag_run TAG WHO...: one pgbench run with the systems WHO replicating live
# (they must be running) and one sampler each; RES[TAG,WHO_p50] and so on
lag_run() {
    local tag=$1 who pgb p
    shift
    LSN=$(target_lsn)
    for who in "$@"; do
        sys_ok $who || continue
        case $who in
            bunny) bunny_wait_lsn "$LSN" "$CATCHUP_TIMEOUT" ;;
            builtin) builtin_wait_lsn "$LSN" "$CATCHUP_TIMEOUT" ;;
            pgl) pgl_wait_lsn "$LSN" "$CATCHUP_TIMEOUT" ;;
        esac || { echo "$who not caught up before the lag test"; sys_failed $who; }
    done
    checkpoint_both

    as_pg pgbench -n -c $LAG_CLIENTS -j 2 -T $LAG_SECONDS -b tpcb-like -h "$DIR" -p $SRC_PORT bench >"$DIR/pgbench-$tag.log" 2>&1 &
    pgb=$!; BG_PIDS+=("$pgb")
    sleep 0.5
    SAMPLERS=()
    for who in "$@"; do
        rm -f "$DIR/$tag-$who.raw"
        if sys_ok $who; then
            lag_sampler_sql $who >"$DIR/$tag-$who.sql"
            chown postgres "$DIR/$tag-$who.sql"
            as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p $SRC_PORT -d sampler -f "$DIR/$tag-$who.sql" >"$DIR/$tag-$who.raw" 2>&1 &
            SAMPLERS+=($!); BG_PIDS+=($!)
        fi
    done
    wait "$pgb" || { tail -20 "$DIR/pgbench-$tag.log"; echo "pgbench ($tag) failed"; }
    for p in "${SAMPLERS[@]}"; do wait "$p" || true; done
    log "source: $(grep -E '^tps' "$DIR/pgbench-$tag.log" | head -1)"
    for who in "$@"; do
        if [ -f "$DIR/$tag-$who.raw" ] && grep -q 'SAMPLE' "$DIR/$tag-$who.raw"; then
            sed -n 's/.*NOTICE:  SAMPLE \([0-9.]*\) \(.*\)$/\1 \2/p' "$DIR/$tag-$who.raw" >"$DIR/$tag-$who.samples"
            awk '{print $1}' "$DIR/$tag-$who.samples" >"$DIR/$tag-$who.ms"
            RES[$tag,${who}_n]=$(wc -l <"$DIR/$tag-$who.ms")
            RES[$tag,${who}_timeouts]=$(awk '$2 != "t"' "$DIR/$tag-$who.samples" | wc -l)
            RES[$tag,${who}_p50]=$(pct "$DIR/$tag-$who.ms" 0.50)
            RES[$tag,${who}_p99]=$(pct "$DIR/$tag-$who.ms" 0.99)
            RES[$tag,${who}_max]=$(pct "$DIR/$tag-$who.ms" 1)
            log "$who lag: ${RES[$tag,${who}_n]} samples, p50 ${RES[$tag,${who}_p50]} ms, p99 ${RES[$tag,${who}_p99]} ms, max ${RES[$tag,${who}_max]} ms, timeouts ${RES[$tag,${who}_timeouts]}"
        else
            [ -f "$DIR/$tag-$who.raw" ] && { echo "$who lag sampler output:"; tail -20 "$DIR/$tag-$who.raw"; }
            RES[$tag,${who}_p50]=FAIL; RES[$tag,${who}_p99]=FAIL
        fi
    done
}

if want lag; then
    echo
    log "== lag: pgbench -n -c $LAG_CLIENTS -T $LAG_SECONDS with bunnydb and built-in replicating live =="
    if [ "$BUNNY_OK" = 1 ]; then
        qd dest_bunny "SELECT bunny.resume_mirror('$MIRROR')" >/dev/null
        bunny_wait_status RUNNING 120 || { BUNNY_OK=0; bunny_diagnostics; }
    fi
    if [ "$BUILTIN_OK" = 1 ]; then
        qd dest_builtin "ALTER SUBSCRIPTION $SUB ENABLE"
    fi
    if [ "$PGL_OK" = 1 ]; then
        pgl_pause || { PGL_OK=0; echo "pglogical: disable failed"; }
    fi
    lag_run lag bunny builtin
    if [ "$PGL_OK" = 1 ]; then
        echo
        log "== lag (pglogical): pgbench -n -c $LAG_CLIENTS -T $LAG_SECONDS with bunnydb and pglogical replicating live =="
        if [ "$BUILTIN_OK" = 1 ]; then
            builtin_pause || { BUILTIN_OK=0; echo "built-in: disable failed"; }
        fi
        pgl_resume || PGL_OK=0
        lag_run lag_pgl bunny pgl
    fi
fi

# ---------------------------------------------------------------------------
# consistency check: both destinations equal the source
# ---------------------------------------------------------------------------
echo
log "== consistency check =="
CHECK_SQL="SELECT (SELECT count(*) || '/' || coalesce(sum(abalance), 0) FROM pgbench_accounts) || ' ' ||
                  (SELECT count(*) || '/' || coalesce(sum(bbalance), 0) FROM pgbench_branches) || ' ' ||
                  (SELECT count(*) || '/' || coalesce(sum(tbalance), 0) FROM pgbench_tellers) || ' ' ||
                  (SELECT count(*) || '/' || coalesce(sum(delta), 0) FROM pgbench_history) || ' ' ||
                  (SELECT count(*) || '/' || coalesce(sum(id), 0) FROM bigt)"
[ "$BUNNY_OK" = 1 ] && { qd dest_bunny "SELECT bunny.resume_mirror('$MIRROR')" >/dev/null || true; }
[ "$BUILTIN_OK" = 1 ] && { qd dest_builtin "ALTER SUBSCRIPTION $SUB ENABLE" || true; }
[ "$PGL_OK" = 1 ] && { pgl_resume || true; }
LSN=$(target_lsn)
CONSISTENT=1
REF=$(qs bench "$CHECK_SQL")
echo "source        accounts/branches/tellers/history/bigt (count/sum): $REF"
PGL_CONSISTENT=$PGL
for who in bunny builtin pgl; do
    if [ $who = bunny ]; then
        db=dest_bunny
        [ "$BUNNY_OK" = 1 ] && bunny_wait_lsn "$LSN" "$CATCHUP_TIMEOUT" || { echo "dest_bunny:   not caught up / failed"; CONSISTENT=0; continue; }
    elif [ $who = builtin ]; then
        db=dest_builtin
        [ "$BUILTIN_OK" = 1 ] && builtin_wait_lsn "$LSN" "$CATCHUP_TIMEOUT" || { echo "dest_builtin: not caught up / failed"; CONSISTENT=0; continue; }
    else
        [ "$PGL" = 1 ] || continue
        db=dest_pglogical
        [ "$PGL_OK" = 1 ] && pgl_wait_lsn "$LSN" "$CATCHUP_TIMEOUT" || { echo "dest_pglogical: not caught up / failed"; PGL_CONSISTENT=0; continue; }
    fi
    GOT=$(qd $db "$CHECK_SQL")
    if [ "$GOT" = "$REF" ]; then
        st=OK
    else
        st=MISMATCH
        if [ $who = pgl ]; then PGL_CONSISTENT=0; else CONSISTENT=0; fi
    fi
    printf '%-13s %s  %s\n' "$db" "$st" "$GOT"
done

# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
verdict() {   # value op limit -> PASS/FAIL ("-" for a value of a --smoke run)
    if { [[ "$1" =~ ^[0-9.]+$ ]] || [ "$1" = n/a ]; } && [ "$SMOKE" = 1 ]; then
        echo "-"
    elif [[ "$1" =~ ^[0-9.]+$ ]]; then
        awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN { ok = (op == "<=") ? (v <= l) : (v < l); print ok ? "PASS" : "FAIL" }'
    else
        echo FAIL
    fi
}

# 80000 -> 80k, 1000000 -> 1M: the sizes in the row labels
short_count() { awk -v n="$1" 'BEGIN { if (n >= 1000000 && n % 1000000 == 0) printf "%dM", n / 1000000; else if (n >= 1000 && n % 1000 == 0) printf "%dk", n / 1000; else printf "%d", n }'; }
TPCB_LABEL="$(short_count $((TPCB_CLIENTS * TPCB_TXNS))) txns"
BIGTXN_LABEL="$(short_count "$BIGTXN_ROWS") rows"

echo
echo "== results (scale $SCALE, nproc $(nproc))$([ "$SMOKE" = 1 ] && echo ", --smoke: sizes too small for the targets") =="
printf '%-26s | %10s | %10s | %22s | %s\n' "workload" "bunnydb" "built-in" "ratio (bunnydb/built-in)" "target"
printf '%s\n' "---------------------------+------------+------------+--------------------------+----------------------"
RESULT_LINES=()
unit() { if [[ "$1" =~ ^[0-9.]+$ ]]; then echo "$1 $2"; else echo "$1"; fi; }
row_time() {   # workload label target
    local w=$1 label=$2 tgt=$3 b=${RES[$1,bunny]:-FAIL} i=${RES[$1,builtin]:-FAIL} r v
    r=$(ratio "$b" "$i")
    v=$(verdict "$r" "<=" "$tgt")
    printf '%-26s | %10s | %10s | %24s | <= %s x built-in  %s\n' "$label" "$(unit "$b" s)" "$(unit "$i" s)" "$r" "$tgt" "$v"
    RESULT_LINES+=("RESULT $w ratio=$r bunnydb_s=$b builtin_s=$i target=$tgt $v")
}
# the references (see the header): what PostgreSQL itself needs on this
# machine, each under its workload's row, as a ratio to the built-in
row_floor() {   # workload label builtin-time what
    local f=${RES[$1,floor]:-}
    [[ "$f" =~ ^[0-9.]+$ ]] || return 0
    printf '%-26s | %10s | %10s | %24s | reference: %s\n' "$2" "$(unit "$f" s)" "$(unit "$3" s)" "$(ratio "$f" "$3")" "$4"
    RESULT_LINES+=("RESULT ${1}_reference ratio=$(ratio "$f" "$3") reference_s=$f builtin_s=$3")
}
row_time copy "copy (scale $SCALE)$([ "$COPY_PAIRS" = 2 ] && echo ", 2 pairs")" 0.6
row_floor copy "  raw COPY pipe + PK" "${RES[copy,floor_builtin]:-n/a}" "binary COPY of the big table, then its key (vs one built-in copy)"
if want tpcb; then
    row_time tpcb "tpcb catch-up ($TPCB_LABEL)" 0.5
    row_floor tpcb "  net effect, dest. only" "${RES[tpcb,builtin]:-n/a}" "the backlog folded into 4 statements, keys in order, one transaction"
fi
if want bigtxn; then
    row_time bigtxn "bigtxn catch-up ($BIGTXN_LABEL)" 0.5
    row_floor bigtxn "  decoding alone" "${RES[bigtxn,builtin]:-n/a}" "the source's walsender, pg_recvlogical into /dev/null"
    b=${RES[bigtxn,bunny_rss]:-n/a}; i=${RES[bigtxn,builtin_rss]:-n/a}
    v=$(verdict "$b" "<" 100)
    printf '%-26s | %10s | %10s | %24s | < 100 MB  %s\n' "bigtxn worker peak VmRSS" "$(unit "$b" MB)" "$(unit "$i" MB)" "$(ratio "$b" "$i")" "$v"
    p=${RES[bigtxn,bunny_priv]:-n/a}
    vp=$(verdict "$p" "<" 100)
    printf '%-26s | %10s | %10s | %24s | < 100 MB  %s\n' "  same, minus RssShmem" "$(unit "$p" MB)" "$(unit "${RES[bigtxn,builtin_priv]:-n/a}" MB)" "$(ratio "$p" "${RES[bigtxn,builtin_priv]:-}")" "$vp (shared_buffers excluded)"
    printf '%-26s | %10s | %10s | %24s | (private memory, info)\n' "  RssAnon only" "$(unit "${RES[bigtxn,bunny_anon]:-n/a}" MB)" "$(unit "${RES[bigtxn,builtin_anon]:-n/a}" MB)" "$(ratio "${RES[bigtxn,bunny_anon]:-}" "${RES[bigtxn,builtin_anon]:-}")"
    RESULT_LINES+=("RESULT bigtxn_rss bunnydb_peak_vmrss_mb=$b bunnydb_peak_noshmem_mb=$p bunnydb_peak_rssanon_mb=${RES[bigtxn,bunny_anon]:-n/a} builtin_peak_vmrss_mb=$i builtin_peak_noshmem_mb=${RES[bigtxn,builtin_priv]:-n/a} builtin_peak_rssanon_mb=${RES[bigtxn,builtin_anon]:-n/a} target=100 vmrss:$v noshmem:$vp")
fi
if want lag; then
    b50=${RES[lag,bunny_p50]:-FAIL}; i50=${RES[lag,builtin_p50]:-FAIL}
    b99=${RES[lag,bunny_p99]:-FAIL}; i99=${RES[lag,builtin_p99]:-FAIL}
    v50=$(verdict "$b50" "<" 100); v99=$(verdict "$b99" "<" 1000)
    printf '%-26s | %10s | %10s | %24s | < 100 ms  %s\n' "lag p50 (pgbench -c $LAG_CLIENTS)" "$(unit "$b50" ms)" "$(unit "$i50" ms)" "$(ratio "$b50" "$i50")" "$v50"
    printf '%-26s | %10s | %10s | %24s | < 1000 ms  %s\n' "lag p99 (pgbench -c $LAG_CLIENTS)" "$(unit "$b99" ms)" "$(unit "$i99" ms)" "$(ratio "$b99" "$i99")" "$v99"
    RESULT_LINES+=("RESULT lag p50_ratio=$(ratio "$b50" "$i50") p99_ratio=$(ratio "$b99" "$i99") bunnydb_p50_ms=$b50 bunnydb_p99_ms=$b99 builtin_p50_ms=$i50 builtin_p99_ms=$i99 bunnydb_samples=${RES[lag,bunny_n]:-0} builtin_samples=${RES[lag,builtin_n]:-0} bunnydb_timeouts=${RES[lag,bunny_timeouts]:-0} builtin_timeouts=${RES[lag,builtin_timeouts]:-0} target=p50<100,p99<1000 $v50/$v99")
fi
if [ "$PGL" = 1 ]; then
    # second table: bunnydb against pglogical, same run (no targets: the
    # README's targets are against the built-in replication)
    echo
    echo "== bunnydb against pglogical (same run) =="
    printf '%-26s | %10s | %10s | %s\n' "workload" "bunnydb" "pglogical" "ratio (bunnydb/pglogical)"
    printf '%s\n' "---------------------------+------------+------------+--------------------------"
    row_pgl() {   # label bunnydb pglogical unit key
        local r
        r=$(ratio "$2" "$3")
        printf '%-26s | %10s | %10s | %25s\n' "$1" "$(unit "$2" "$4")" "$(unit "$3" "$4")" "$r"
        RESULT_LINES+=("RESULT pglogical_$5 ratio=$r bunnydb=$2 pglogical=$3 unit=$4")
    }
    row_pgl "copy (scale $SCALE)$([ "$COPY_PAIRS" = 2 ] && echo ", 2 pairs")" "${RES[copy,bunny]:-FAIL}" "${RES[copy,pgl]:-FAIL}" s copy
    want tpcb && row_pgl "tpcb catch-up ($TPCB_LABEL)" "${RES[tpcb,bunny]:-FAIL}" "${RES[tpcb,pgl]:-FAIL}" s tpcb
    want bigtxn && row_pgl "bigtxn catch-up ($BIGTXN_LABEL)" "${RES[bigtxn,bunny]:-FAIL}" "${RES[bigtxn,pgl]:-FAIL}" s bigtxn
    want bigtxn && row_pgl "bigtxn worker peak VmRSS" "${RES[bigtxn,bunny_rss]:-n/a}" "${RES[bigtxn,pgl_rss]:-n/a}" MB bigtxn_rss
    if want lag; then
        row_pgl "lag p50 (pgbench -c $LAG_CLIENTS)" "${RES[lag_pgl,bunny_p50]:-FAIL}" "${RES[lag_pgl,pgl_p50]:-FAIL}" ms lag_p50
        row_pgl "lag p99 (pgbench -c $LAG_CLIENTS)" "${RES[lag_pgl,bunny_p99]:-FAIL}" "${RES[lag_pgl,pgl_p99]:-FAIL}" ms lag_p99
    fi
    echo "pglogical: $([ "$PGL_OK" = 1 ] && echo "measured throughout" || echo "FAILED during the run (see the log above)"); consistency $([ "$PGL_CONSISTENT" = 1 ] && echo OK || echo MISMATCH)"
fi
echo
printf '%s\n' "${RESULT_LINES[@]}"
echo "RESULT consistency $([ "$CONSISTENT" = 1 ] && echo OK || echo MISMATCH)"
[ "$PGL" = 1 ] && echo "RESULT pglogical_consistency $([ "$PGL_CONSISTENT" = 1 ] && echo OK || echo MISMATCH)"
[ "$CRITERION_BAD" = 1 ] && echo "WARNING: a catch-up criterion held before all rows were applied (see the log above)"
if [ "$BUNNY_OK" = 1 ] || [ "${RES[copy,bunny]:-}" != FAIL ]; then
    echo
    echo "bunnydb WARNING/ERROR log lines of this run (newest 10):"
    lines=$(qd dest_bunny "SELECT '  ' || created_at::time(0) || ' ' || level || ' ' || message FROM bunny.mirror_logs WHERE mirror = '$MIRROR' AND level IN ('WARNING', 'ERROR') ORDER BY id DESC LIMIT 10" 2>/dev/null) || true
    echo "${lines:-  (none)}"
fi
echo
echo "Notes: built-in = CREATE SUBSCRIPTION with default options (streaming=off, binary=off);"
echo "its destination tables are pre-created with indexes (pg_dump -s).  bunnydb is measured"
echo "first, then built-in, never both at once.  Catch-up target = source pg_current_wal_insert_lsn();"
echo "built-in caught up = origin remote_lsn or slot confirmed_flush_lsn >= target; bunnydb caught up ="
if [ "$WAIT_MODE" = long ]; then
    echo "one long bunny.wait_for_lsn call (--long-wait; it drops its xmin while it sleeps)."
else
    echo "bunny.wait_for_lsn(..., 0) polled like the built-in side (no snapshot held while waiting)."
fi
echo "Lag: one sampler per system on the source, both during the same pgbench run, each polling every 2 ms."
if [ "$PGL" = 1 ]; then
    echo "pglogical: create_subscription with synchronize_data into pre-created tables (like built-in), measured"
    echo "after built-in; its lag in a second pgbench run with bunnydb and pglogical live (built-in disabled)."
fi
echo "VmRSS includes the shared_buffers pages the worker touched (RssShmem); RssAnon is its private heap."
echo "A memory figure of n/a had no sample: the process lived less than the 0.2 s sampling interval (as in --smoke runs)."
echo "Reminder: noisy machine; compare ratios, not absolute times."

[ "$BUNNY_OK" = 1 ] && [ "$BUILTIN_OK" = 1 ] && [ "$CONSISTENT" = 1 ] || exit 1
exit 0
