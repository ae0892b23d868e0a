#!/usr/bin/env bash
#
# bunnydb demo: two PostgreSQL 15 clusters on this machine and one mirror
# between them. Run as root on Debian 12:
#
#     bash test/demo.sh                (re)create the demo from scratch
#     bash test/demo.sh stop           stop both demo clusters (data kept)
#     bash test/demo.sh clean          stop both clusters and delete the demo
#
# Layout (everything owned by the `postgres` OS user):
#
#     /tmp/bunnydb-demo/source     source cluster, port 5434, wal_level=logical
#     /tmp/bunnydb-demo/dest       destination cluster, port 5435,
#                                  shared_preload_libraries='bunnydb'
#     /tmp/bunnydb-demo/*.log      server logs
#
# The clusters listen only on the unix socket directory /tmp/bunnydb-demo (no
# TCP), so they cannot clash with another server on this machine.
#
# Environment:
#   BUNNY_SKIP_APT=1   do not run apt-get (packages already installed)
#   BUNNY_SKIP_BUILD=1 do not build/install the extension (already installed)
#
set -euo pipefail

PGBIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PGBIN/pg_config
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libipc-run-perl make gcc)
DEMO=/tmp/bunnydb-demo
SRC_PORT=5434
DST_PORT=5435
MIRROR=demo
PEER=src
RUNNING_TIMEOUT=60      # seconds to wait for the mirror to reach RUNNING
LSN_TIMEOUT_MS=30000    # bunny.wait_for_lsn timeout

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
if [ -t 1 ]; then BOLD=$'\033[1m' NORM=$'\033[0m'; else BOLD="" NORM=""; fi
say()  { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$NORM"; }
die()  { printf '\ndemo.sh: ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command as the postgres OS user, PostgreSQL 15 binaries first in PATH.
as_pg() {
    (cd / && runuser -u postgres -- env PATH="$PGBIN:/usr/local/bin:/usr/bin:/bin" "$@")
}

psql_src() { as_pg psql -X -v ON_ERROR_STOP=1 -h "$DEMO" -p "$SRC_PORT" -U postgres -d postgres "$@"; }
psql_dst() { as_pg psql -X -v ON_ERROR_STOP=1 -h "$DEMO" -p "$DST_PORT" -U postgres -d postgres "$@"; }

# One value, no decoration.
val_src() { psql_src -qAt -c "$1"; }
val_dst() { psql_dst -qAt -c "$1"; }

# Show a statement the way psql would, then run it.
run_src() { printf 'source=# %s\n' "$1"; psql_src -c "$1"; }
run_dst() { printf 'dest=# %s\n' "$1"; psql_dst -c "$1"; }

is_running() { [ -f "$1/postmaster.pid" ] && as_pg pg_ctl -D "$1" status >/dev/null 2>&1; }

stop_cluster() {
    local dir=$1
    [ -d "$dir" ] || return 0
    if is_running "$dir"; then
        echo "stopping $dir"
        as_pg pg_ctl -D "$dir" -m fast -w -t 60 stop >/dev/null \
            || as_pg pg_ctl -D "$dir" -m immediate -w -t 30 stop >/dev/null \
            || die "could not stop the server in $dir"
    fi
}

stop_demo() {
    # destination first: its workers hold replication connections to the source
    stop_cluster "$DEMO/dest"
    stop_cluster "$DEMO/source"
}

wipe_demo() {
    case "$DEMO" in
        /tmp/?*) ;;
        *) die "refusing to delete unexpected demo directory '$DEMO'" ;;
    esac
    rm -rf "$DEMO"
}

start_cluster() {
    local dir=$1 name=$2
    if ! as_pg pg_ctl -D "$dir" -l "$DEMO/$name.log" -w -t 60 start >/dev/null; then
        echo "----- tail $DEMO/$name.log -----" >&2
        tail -n 30 "$DEMO/$name.log" >&2 || true
        die "the $name server did not start"
    fi
}

show_failure() {
    echo
    echo "----- bunny.mirrors -----"
    psql_dst -x -c "SELECT * FROM bunny.mirrors WHERE name = '$MIRROR'" || true
    echo "----- last bunny.mirror_logs -----"
    psql_dst -c "SELECT created_at, level, message FROM bunny.mirror_logs
                  WHERE mirror = '$MIRROR' ORDER BY id DESC LIMIT 20" || true
    echo "----- tail $DEMO/dest.log -----"
    tail -n 30 "$DEMO/dest.log" || true
    echo
    echo "The demo clusters are still running for inspection:"
    echo "    runuser -u postgres -- psql -h $DEMO -p $DST_PORT postgres"
    echo "Stop them with: bash test/demo.sh stop"
}

# ---------------------------------------------------------------------------
# sub-commands
# ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (or with sudo): bash test/demo.sh ${1:-}"

case "${1:-start}" in
    stop)
        if [ -d "$DEMO" ]; then
            stop_demo
            echo "demo stopped (data kept in $DEMO; 'test/demo.sh clean' deletes it)"
        else
            echo "no demo in $DEMO"
        fi
        exit 0
        ;;
    clean)
        if [ -d "$DEMO" ]; then stop_demo; wipe_demo; fi
        echo "demo removed"
        exit 0
        ;;
    start) ;;
    -h|--help|help)
        sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        die "unknown command '$1' (use: start, stop, clean)"
        ;;
esac

# ---------------------------------------------------------------------------
# 1. packages, build, install
# ---------------------------------------------------------------------------
if [ "${BUNNY_SKIP_APT:-0}" = 1 ]; then
    say "skipping apt-get (BUNNY_SKIP_APT=1)"
else
    say "installing packages: ${APT_PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o Dpkg::Use-Pty=0 "${APT_PACKAGES[@]}" >/dev/null
fi
[ -x "$PGBIN/initdb" ] || die "$PGBIN/initdb not found (install postgresql-15)"
getent passwd postgres >/dev/null || die "OS user 'postgres' not found (install postgresql-15)"

# A previous demo must be stopped before its bunnydb.so is replaced.
if [ -d "$DEMO" ]; then
    say "removing the previous demo in $DEMO"
    stop_demo
    wipe_demo
fi

if [ "${BUNNY_SKIP_BUILD:-0}" = 1 ]; then
    say "skipping build (BUNNY_SKIP_BUILD=1)"
else
    say "building and installing bunnydb"
    make -C "$REPO" -s PG_CONFIG="$PG_CONFIG" -j"$(nproc)"
    make -C "$REPO" -s PG_CONFIG="$PG_CONFIG" install
fi

# ---------------------------------------------------------------------------
# 2. two clusters
# ---------------------------------------------------------------------------
say "creating the source (port $SRC_PORT) and destination (port $DST_PORT) clusters in $DEMO"
mkdir -p "$DEMO"
chown postgres:postgres "$DEMO"
chmod 755 "$DEMO"

for name in source dest; do
    as_pg initdb -D "$DEMO/$name" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"$DEMO/initdb-$name.log" 2>&1 \
        || { cat "$DEMO/initdb-$name.log" >&2; die "initdb $name failed"; }
done

cat >>"$DEMO/source/postgresql.conf" <<EOF

# ---- bunnydb demo: source ----
port = $SRC_PORT
listen_addresses = ''
unix_socket_directories = '$DEMO'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
EOF

cat >>"$DEMO/dest/postgresql.conf" <<EOF

# ---- bunnydb demo: destination ----
port = $DST_PORT
listen_addresses = ''
unix_socket_directories = '$DEMO'
shared_preload_libraries = 'bunnydb'
max_worker_processes = 32
EOF

start_cluster "$DEMO/source" source
start_cluster "$DEMO/dest" dest
echo "source: $(val_src 'SELECT version()')"
echo "        wal_level = $(val_src 'SHOW wal_level')"
echo "dest:   shared_preload_libraries = $(val_dst 'SHOW shared_preload_libraries')"

# ---------------------------------------------------------------------------
# 3. data on the source
# ---------------------------------------------------------------------------
say "source: a table with 1000 orders"
run_src "CREATE TABLE public.orders (
    id         bigserial PRIMARY KEY,
    customer   text,
    amount     numeric(10,2),
    created_at timestamptz DEFAULT now()
)"
run_src "INSERT INTO public.orders (customer, amount)
SELECT 'customer_' || (g % 50), (g % 97) * 10.25 + 0.99
FROM generate_series(1, 1000) AS g"

# ---------------------------------------------------------------------------
# 4. the mirror
# ---------------------------------------------------------------------------
say "destination: extension, peer, mirror"
run_dst "CREATE EXTENSION bunnydb"
run_dst "SELECT bunny.create_peer('$PEER', 'host=$DEMO port=$SRC_PORT dbname=postgres user=postgres')"
run_dst "SELECT bunny.create_mirror('$MIRROR', '$PEER', '[\"public.orders\"]')"

say "waiting for mirror '$MIRROR' to reach RUNNING (timeout ${RUNNING_TIMEOUT}s)"
start=$SECONDS
last=""
while :; do
    status=$(val_dst "SELECT status FROM bunny.mirrors WHERE name = '$MIRROR'" 2>/dev/null) || status="?"
    elapsed=$((SECONDS - start))
    if [ "$status" != "$last" ] || [ $((elapsed % 5)) -eq 0 ]; then
        printf '  %3ss  status = %s\n' "$elapsed" "${status:-<none>}"
        last=$status
    fi
    case "$status" in
        RUNNING) break ;;
        FAILED)
            echo "  error: $(val_dst "SELECT error_message FROM bunny.mirrors WHERE name = '$MIRROR'" || true)"
            show_failure
            die "mirror '$MIRROR' FAILED"
            ;;
    esac
    if [ "$elapsed" -ge "$RUNNING_TIMEOUT" ]; then
        show_failure
        die "mirror '$MIRROR' did not reach RUNNING within ${RUNNING_TIMEOUT}s (status: $status)"
    fi
    sleep 1
done

# ---------------------------------------------------------------------------
# 5. change data on the source, read your writes on the destination
# ---------------------------------------------------------------------------
say "source: insert, update and delete while the mirror runs"
run_src "INSERT INTO public.orders (customer, amount)
SELECT 'late_customer_' || g, g * 1.50 FROM generate_series(1, 100) AS g"
run_src "UPDATE public.orders SET amount = amount + 1 WHERE id % 10 = 0"
run_src "DELETE FROM public.orders WHERE id % 7 = 0"

lsn=$(val_src "SELECT pg_current_wal_lsn()")
echo "source WAL position after the writes: $lsn"

say "destination: wait until everything up to $lsn is applied"
wait_sql="SELECT bunny.wait_for_lsn('$MIRROR', '$lsn', $LSN_TIMEOUT_MS)"
printf 'dest=# %s\n' "$wait_sql"
caught_up=$(val_dst "$wait_sql")
echo "  -> $caught_up"
if [ "$caught_up" != t ]; then
    show_failure
    die "the mirror did not apply $lsn within ${LSN_TIMEOUT_MS} ms"
fi

# ---------------------------------------------------------------------------
# 6. what it looks like
# ---------------------------------------------------------------------------
say "destination: SELECT * FROM bunny.mirror_overview (one line per mirror)"
psql_dst -c "SELECT * FROM bunny.mirror_overview"

say "destination: SELECT * FROM bunny.mirrors (expanded)"
psql_dst -x -c "SELECT * FROM bunny.mirrors"

say "destination: SELECT * FROM bunny.mirror_tables"
psql_dst -c "SELECT * FROM bunny.mirror_tables"

say "destination: latest bunny.mirror_logs"
psql_dst -c "SELECT created_at, level, message FROM bunny.mirror_logs
              WHERE mirror = '$MIRROR' ORDER BY id DESC LIMIT 10"

say "source vs destination: public.orders"
SUMMARY_SQL="SELECT count(*) AS rows, sum(amount) AS total_amount, max(id) AS max_id,
       md5(string_agg(format('%s|%s|%s|%s', id, customer, amount, extract(epoch FROM created_at)),
                      ',' ORDER BY id)) AS content_md5
FROM public.orders"
echo "source:"
psql_src -c "$SUMMARY_SQL"
echo "destination:"
psql_dst -c "$SUMMARY_SQL"

src_sum=$(psql_src -qAt -F' ' -c "$SUMMARY_SQL")
dst_sum=$(psql_dst -qAt -F' ' -c "$SUMMARY_SQL")
if [ "$src_sum" != "$dst_sum" ]; then
    show_failure
    die "source and destination differ: source [$src_sum] destination [$dst_sum]"
fi
printf '\n%sMATCH: source and destination have the same rows (%s)%s\n' "$BOLD" "$src_sum" "$NORM"

cat <<EOF

------------------------------------------------------------------------
The demo is running.

  destination (bunnydb):  runuser -u postgres -- psql -h $DEMO -p $DST_PORT postgres
  source:                 runuser -u postgres -- psql -h $DEMO -p $SRC_PORT postgres

Try, on the source:       INSERT INTO orders (customer, amount) VALUES ('you', 42);
then on the destination:  SELECT * FROM orders ORDER BY id DESC LIMIT 3;
                          SELECT * FROM bunny.mirror_overview;
                          SELECT * FROM bunny.copy_progress;   -- while a copy runs
                          SELECT bunny.resync_table('$MIRROR', 'public.orders');
                          SELECT bunny.pause_mirror('$MIRROR');
                          SELECT bunny.resume_mirror('$MIRROR');

Server logs: $DEMO/source.log, $DEMO/dest.log

Stop the demo:            bash test/demo.sh stop
Stop and delete it:       bash test/demo.sh clean
------------------------------------------------------------------------
EOF
