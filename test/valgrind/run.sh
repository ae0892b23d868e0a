#!/bin/bash
#
# Runs the destination cluster, every process of it (postmaster, launcher,
# mirror and snapshot workers, backends), under valgrind memcheck through
# one scenario: a parallel initial copy (text, char(n), enum and enum-array
# columns), CDC with folded UPDATEs, deletes and a COPY run, enum labels
# added on the source, a COPY run in binary transfer (a second mirror, of a
# table with built-in types only; it writes every 128 rows), a swap resync
# of that table (its indexes get their names back), and a refused
# DROP EXTENSION and DROP DATABASE (with the worker that looks into the
# database to be dropped).  Checks that both
# tables end equal to the source and that memcheck reported nothing beyond
# the PostgreSQL reports in postgres.supp.  About half a minute.
#
#     sudo bash test/valgrind/run.sh        (after make install)
#
# Exits non-zero on a memcheck error or a wrong result; the logs stay in
# /tmp/bunnydb-valgrind.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
B=$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)
[ -x "$B/postgres" ] || B=/usr/lib/postgresql/15/bin
D=/tmp/bunnydb-valgrind

if [ "$(id -u)" = 0 ]; then
    command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
    rm -rf "$D"; mkdir -p "$D"; cp "$HERE/postgres.supp" "$D/"; chown -R postgres "$D"
    exec runuser -u postgres -- bash "$0" "$@"
fi

cd "$D"
fail() { echo "valgrind run: FAIL: $*"; "$B/pg_ctl" -D "$D/dst" -w -m immediate stop >/dev/null 2>&1; "$B/pg_ctl" -D "$D/src" -w -m immediate stop >/dev/null 2>&1; exit 1; }
"$B/initdb" -D "$D/src" -U postgres --auth=trust >/dev/null || fail initdb
"$B/initdb" -D "$D/dst" -U postgres --auth=trust >/dev/null || fail initdb
cat >> "$D/src/postgresql.conf" <<EOC
port = 5561
unix_socket_directories = '$D'
listen_addresses = ''
wal_level = logical
EOC
cat >> "$D/dst/postgresql.conf" <<EOC
port = 5562
unix_socket_directories = '$D'
listen_addresses = ''
shared_preload_libraries = 'bunnydb'
bunny.retry_backoff_min = '200ms'
bunny.retry_backoff_max = '2s'
max_worker_processes = 20
EOC
"$B/pg_ctl" -D "$D/src" -l "$D/src.log" -w start >/dev/null || fail "source start"
valgrind --quiet --trace-children=yes --leak-check=no --suppressions="$D/postgres.supp" \
    --log-file="$D/vg.%p.log" "$B/postgres" -D "$D/dst" >"$D/dst.log" 2>&1 &
for _ in $(seq 1 120); do "$B/pg_isready" -h "$D" -p 5562 -q && break; sleep 1; done

S() { "$B/psql" -X -qAt -h "$D" -p 5561 -d postgres -c "$1"; }
T() { "$B/psql" -X -qAt -h "$D" -p 5562 -d postgres -c "$1"; }
S "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
   CREATE TABLE f (id int PRIMARY KEY, m mood, ms mood[], v text, c char(10));
   INSERT INTO f SELECT g, 'ok', '{sad}', 'v' || g, 'c' FROM generate_series(1, 3000) g;
   CREATE TABLE big (id int PRIMARY KEY, v text);
   INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
   CREATE TABLE bin (id int PRIMARY KEY, v text, n numeric);
   INSERT INTO bin SELECT g, md5(g::text), g / 7.0 FROM generate_series(1, 100) g;
   CREATE INDEX bin_by_n ON bin (n);" || fail "source data"
T "CREATE EXTENSION bunnydb" >/dev/null || fail "CREATE EXTENSION"
T "SELECT bunny.create_peer('src', 'host=$D port=5561 dbname=postgres user=postgres')" >/dev/null
T "SELECT bunny.create_mirror('vg', 'src', '[\"public.f\", \"public.big\"]',
                              snapshot_num_rows_per_partition => 5000)" >/dev/null || fail create_mirror
for _ in $(seq 1 600); do [ "$(T "SELECT status FROM bunny.mirrors")" = RUNNING ] && break; sleep 1; done
[ "$(T "SELECT status FROM bunny.mirrors")" = RUNNING ] || fail "mirror not RUNNING"
T "SELECT bunny.create_mirror('vgbin', 'src', '[\"public.bin\"]')" >/dev/null || fail "create_mirror vgbin"
for _ in $(seq 1 600); do [ "$(T "SELECT status FROM bunny.mirrors WHERE name = 'vgbin'")" = RUNNING ] && break; sleep 1; done
[ "$(T "SELECT status FROM bunny.mirrors WHERE name = 'vgbin'")" = RUNNING ] || fail "mirror vgbin not RUNNING"

S "ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok'; ALTER TYPE mood ADD VALUE 'zen';"
S "BEGIN;
   INSERT INTO f VALUES (5001, 'zen', '{meh,zen}', 'x', 'y');
   UPDATE f SET m = 'meh' WHERE id <= 200;
   DELETE FROM f WHERE id BETWEEN 300 AND 400;
   INSERT INTO big SELECT g, 'n' FROM generate_series(20001, 21000) g;
   COMMIT;
   UPDATE big SET v = v || 'u' WHERE id % 7 = 0;
   INSERT INTO bin SELECT g, md5(g::text), g / 7.0 FROM generate_series(101, 1100) g;"
L=$(S "SELECT pg_current_wal_lsn()")
for _ in $(seq 1 600); do [ "$(T "SELECT bunny.wait_for_lsn('vg', '$L', 0)")" = t ] && break; sleep 1; done
for _ in $(seq 1 600); do [ "$(T "SELECT bunny.wait_for_lsn('vgbin', '$L', 0)")" = t ] && break; sleep 1; done
T "SELECT message FROM bunny.mirror_logs WHERE mirror = 'vgbin' AND message LIKE 'streaming from%'" | grep -q "binary transfer" \
    || fail "mirror vgbin does not stream in binary transfer"
oid=$(T "SELECT 'public.bin'::regclass::oid")
T "SELECT bunny.resync_table('vgbin', 'public.bin', 'swap')" >/dev/null || fail "resync_table swap"
for _ in $(seq 1 600); do
    [ "$(T "SELECT status || coalesce(pending_op, '-') || ('public.bin'::regclass::oid <> $oid) FROM bunny.mirror WHERE name = 'vgbin'")" = RUNNING-true ] && break
    sleep 1
done
[ "$(T "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'public.bin'::regclass")" = bin_by_n,bin_pkey ] || fail "the swap of bin did not end with its index names"
for t in f big bin; do
    q="SELECT count(*) || ' ' || md5(string_agg(x::text, '' ORDER BY x::text)) FROM $t x"
    [ "$(S "$q")" = "$(T "$q")" ] || fail "table $t differs from the source"
done
T "DROP EXTENSION bunnydb" >/dev/null 2>&1 && fail "DROP EXTENSION was not refused"
"$B/psql" -X -qAt -h "$D" -p 5562 -d template1 -c "DROP DATABASE postgres" >/dev/null 2>&1 \
    && fail "DROP DATABASE was not refused"
"$B/pg_ctl" -D "$D/dst" -w -m fast stop >/dev/null
"$B/pg_ctl" -D "$D/src" -w -m fast stop >/dev/null

errors=$(cat "$D"/vg.*.log | grep -cE '^==[0-9]+== [A-Z]')
if [ "$errors" != 0 ]; then
    grep -lE '^==[0-9]+== [A-Z]' "$D"/vg.*.log | head -5 | xargs -r head -40
    fail "$errors memcheck report(s); logs in $D"
fi
echo "valgrind run: OK (tables equal to the source, no memcheck reports in $(ls "$D"/vg.*.log | wc -l) processes)"
