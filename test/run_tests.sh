#!/usr/bin/env bash
#
# bunnydb: run the whole test suite on a fresh Debian 12 machine, as root.
#
#     sudo bash test/run_tests.sh
#
# What it does:
#   1. apt-get installs PostgreSQL 15, its server headers, IPC::Run, make,
#      gcc, and nodejs/npm (they fetch the source servers of PostgreSQL
#      12 to 18 that 015_source_versions runs against, cached after the
#      first run)
#   2. builds and installs the extension (as root)
#   3. copies the repository to a scratch directory owned by the `postgres`
#      OS user and runs `make installcheck` there as `postgres`:
#      the pg_regress suite (own temporary instance, test/regress.conf) and
#      the TAP suite (test/t/*.pl, PostgreSQL::Test::Cluster)
#   4. runs the benchmark on tiny sizes (bench/run.sh --smoke --no-pglogical,
#      as root, about a minute): every step of the bench works and every
#      destination matches the source; its timings are not checked
#   5. on failure prints regression.diffs, the tails of the TAP logs and of
#      the bench's output
#   6. ends with one line "N passed, M failed" (pg_regress tests + TAP files
#      + the bench smoke run)
#
# The exit status is non-zero on any failure.
#
# Environment:
#   BUNNY_SKIP_APT=1         skip apt-get (packages already installed)
#   BUNNY_SKIP_BENCH=1       skip the bench smoke run
#   BUNNY_KEEP_TMP=1         keep the scratch directory even if all tests pass
#   BUNNY_TEST_TIMEOUT=SECS  give up on `make installcheck` after SECS seconds
#   BUNNY_SOURCE_VERSIONS="12 18"  source majors 015_source_versions runs
#                            against (default: 12 to 18)
#   BUNNY_PG_CACHE=DIR       where test/pg_sources.sh caches the source
#                            servers (default /var/cache/bunnydb-test)
#   PROVE_TESTS="test/t/001_x.pl ..."   run only these TAP files
#   PROVE_FLAGS="-v"         extra flags for prove
#
set -euo pipefail

PG_MAJOR=15
PGBIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PGBIN/pg_config
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libipc-run-perl make gcc)
# npm fetches the source servers; the machine's own Node.js is used when it
# has one (a Node.js from elsewhere would conflict with Debian's npm)
NPM_PACKAGES=(nodejs npm)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

SCRATCH=""          # mktemp -d, owned by postgres
COPY=""             # $SCRATCH/bunnydb: the copy of the repo the tests run in
REGRESS_PASSED=0
REGRESS_FAILED=0
TAP_PASSED=0
TAP_FAILED=0
TAP_FAILED_FILES=()
BENCH_PASSED=0
BENCH_FAILED=0
BENCH_OUT=""
OTHER_FAILED=0      # build / setup / harness failures
STAGE="start"

say()  { printf '\n==> %s\n' "$*"; }
warn() { printf 'run_tests.sh: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------
# Summary, printed on every exit (success, test failure, or set -e abort).
# ---------------------------------------------------------------------------
# shellcheck disable=SC2317  # invoked through the EXIT trap
on_exit() {
    local rc=$?
    set +e
    local passed=$((REGRESS_PASSED + TAP_PASSED + BENCH_PASSED))
    local failed=$((REGRESS_FAILED + TAP_FAILED + BENCH_FAILED + OTHER_FAILED))

    if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
        # Aborted before any test could report (apt, build, copy, ...).
        warn "aborted during stage '$STAGE' (exit status $rc)"
        OTHER_FAILED=1
        failed=$((failed + 1))
    fi
    if [ "$rc" -eq 0 ] && [ "$failed" -ne 0 ]; then
        rc=1
    fi

    if [ -n "$SCRATCH" ] && [ -d "$SCRATCH" ]; then
        if [ "$rc" -eq 0 ] && [ "${BUNNY_KEEP_TMP:-0}" != 1 ]; then
            rm -rf "$SCRATCH"
        else
            echo "scratch directory kept for inspection: $COPY"
        fi
    fi

    echo
    echo "=================================================================="
    echo "pg_regress: $REGRESS_PASSED passed, $REGRESS_FAILED failed"
    echo "TAP files:  $TAP_PASSED passed, $TAP_FAILED failed${TAP_FAILED_FILES[*]:+ (${TAP_FAILED_FILES[*]})}"
    if [ $((BENCH_PASSED + BENCH_FAILED)) -ne 0 ]; then
        echo "bench:      $BENCH_PASSED passed, $BENCH_FAILED failed (bench/run.sh --smoke)"
    fi
    if [ "$OTHER_FAILED" -ne 0 ]; then
        echo "other:      $OTHER_FAILED failed (build, setup or test harness; see above)"
    fi
    echo "=================================================================="
    echo "$passed passed, $failed failed"
    exit "$rc"
}
trap on_exit EXIT

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# Run a command as the postgres OS user inside the scratch copy, with the
# PostgreSQL 15 binaries first in PATH (and the optional timeout).
as_postgres() {
    local timeout=()
    if [ -n "${BUNNY_TEST_TIMEOUT:-}" ]; then
        timeout=(timeout -k 60 "$BUNNY_TEST_TIMEOUT")
    fi
    (
        cd "$COPY"
        runuser -u postgres -- env \
            PATH="$PGBIN:/usr/local/bin:/usr/bin:/bin" \
            HOME="$(getent passwd postgres | cut -d: -f6)" \
            "${timeout[@]}" "$@"
    )
}

# Parse pg_regress output (file $1) into REGRESS_PASSED / REGRESS_FAILED.
parse_regress() {
    local out=$1 n m
    grep -q '+++ regress install-check' "$out" || return 0   # no REGRESS tests
    if n=$(grep -Eo 'All [0-9]+ tests passed' "$out" | grep -Eo '[0-9]+' | tail -n1) && [ -n "$n" ]; then
        REGRESS_PASSED=$n
        REGRESS_FAILED=0
    elif m=$(grep -Eo '[0-9]+ of [0-9]+ tests failed' "$out" | tail -n1) && [ -n "$m" ]; then
        REGRESS_FAILED=$(echo "$m" | awk '{print $1}')
        REGRESS_PASSED=$(( $(echo "$m" | awk '{print $3}') - REGRESS_FAILED ))
    else
        # pg_regress did not reach its summary (initdb or server start failed,
        # crash, timeout): count the per-test lines it printed.
        REGRESS_PASSED=$(grep -Ec '\.\.\. +ok( |$)' "$out" || true)
        REGRESS_FAILED=$(grep -Ec '\.\.\. +(FAILED|failed)' "$out" || true)
        if [ "$REGRESS_FAILED" -eq 0 ]; then
            warn "pg_regress did not complete"
            REGRESS_FAILED=1
        fi
    fi
}

# Parse prove output (file $1) into TAP_PASSED / TAP_FAILED.
parse_tap() {
    local out=$1 files
    grep -q '+++ tap install-check' "$out" || return 0
    files=$(grep -Eo '^Files=[0-9]+' "$out" | tail -n1 | cut -d= -f2 || true)
    if [ -z "$files" ]; then
        warn "prove did not complete (no 'Files=' summary)"
        TAP_FAILED=1
        return 0
    fi
    # "Test Summary Report" lists each failed file once:
    #   test/t/002_x.pl (Wstat: 256 (exited 1) Tests: 7 Failed: 1)
    mapfile -t TAP_FAILED_FILES < <(
        sed -n '/^Test Summary Report/,$p' "$out" |
            grep -Eo '^[^[:space:]]+\.(pl|t) +\(Wstat' |
            awk '{print $1}' | sort -u
    )
    TAP_FAILED=${#TAP_FAILED_FILES[@]}
    if [ "$TAP_FAILED" -eq 0 ] && grep -q '^Result: FAIL' "$out"; then
        TAP_FAILED=1
    fi
    TAP_PASSED=$((files - TAP_FAILED))
    if [ "$TAP_PASSED" -lt 0 ]; then TAP_PASSED=0; fi
}

# Print the tail of a file with a header.
show_tail() {
    local f=$1 n=${2:-60}
    [ -f "$f" ] || return 0
    echo
    echo "----- tail -n $n $f -----"
    tail -n "$n" "$f"
}

print_failure_details() {
    set +e
    if [ -s "$COPY/regression.diffs" ]; then
        echo
        echo "----- regression.diffs (first 400 lines) -----"
        head -n 400 "$COPY/regression.diffs"
    fi
    if [ "$REGRESS_FAILED" -ne 0 ]; then
        show_tail "$COPY/log/postmaster.log" 40
    fi
    if [ "$BENCH_FAILED" -ne 0 ]; then
        show_tail "$BENCH_OUT" 80
    fi
    if [ "$TAP_FAILED" -ne 0 ] && [ -d "$COPY/tmp_check/log" ]; then
        local f t base shown=0
        for t in "${TAP_FAILED_FILES[@]}"; do
            base=$(basename "$t"); base=${base%.*}
            for f in "$COPY/tmp_check/log/regress_log_$base" "$COPY/tmp_check/log/${base}"_*.log; do
                [ -f "$f" ] || continue
                show_tail "$f" 80
                shown=1
            done
        done
        if [ "$shown" -eq 0 ]; then
            for f in "$COPY"/tmp_check/log/*; do show_tail "$f" 60; done
        fi
    fi
}

# ---------------------------------------------------------------------------
# 1. Packages
# ---------------------------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
    warn "must run as root (try: sudo bash test/run_tests.sh)"
    exit 1
fi

STAGE="apt"
if [ "${BUNNY_SKIP_APT:-0}" = 1 ]; then
    say "skipping apt-get (BUNNY_SKIP_APT=1)"
else
    say "installing packages: ${APT_PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o Dpkg::Use-Pty=0 "${APT_PACKAGES[@]}" >/dev/null
    if ! command -v npm >/dev/null; then
        say "installing packages: ${NPM_PACKAGES[*]}"
        apt-get install -y -qq -o Dpkg::Use-Pty=0 "${NPM_PACKAGES[@]}" >/dev/null
    fi
fi

STAGE="prerequisites"
for tool in "$PG_CONFIG" "$PGBIN/initdb" "$PGBIN/pg_ctl" /usr/bin/prove; do
    if [ ! -x "$tool" ]; then
        warn "missing $tool (install: ${APT_PACKAGES[*]})"
        exit 1
    fi
done
if ! perl -MIPC::Run -e 1 2>/dev/null; then
    warn "perl module IPC::Run missing (apt-get install libipc-run-perl)"
    exit 1
fi
if ! getent passwd postgres >/dev/null; then
    warn "OS user 'postgres' does not exist (it comes with the postgresql-15 package)"
    exit 1
fi

# ---------------------------------------------------------------------------
# 2. Build and install (as root)
# ---------------------------------------------------------------------------
STAGE="build"
say "building bunnydb ($REPO)"
make -C "$REPO" PG_CONFIG="$PG_CONFIG" -j"$(nproc)"
STAGE="install"
say "installing bunnydb into $("$PG_CONFIG" --pkglibdir)"
make -C "$REPO" PG_CONFIG="$PG_CONFIG" install

# ---------------------------------------------------------------------------
# 2b. Source servers of the other majors, for 015_source_versions (as root:
#     the tests run as postgres, which cannot write the cache)
# ---------------------------------------------------------------------------
STAGE="source servers"
SOURCE_MAJORS=()
for v in ${BUNNY_SOURCE_VERSIONS:-12 13 14 15 16 17 18}; do
    [ "$v" = "$PG_MAJOR" ] || SOURCE_MAJORS+=("$v")
done
if [ "${#SOURCE_MAJORS[@]}" -gt 0 ]; then
    say "fetching source servers of PostgreSQL ${SOURCE_MAJORS[*]} (cached in ${BUNNY_PG_CACHE:-/var/cache/bunnydb-test})"
    bash "$REPO/test/pg_sources.sh" "${SOURCE_MAJORS[@]}" >/dev/null
fi

# ---------------------------------------------------------------------------
# 3. Scratch copy owned by postgres
# ---------------------------------------------------------------------------
STAGE="copy"
SCRATCH=$(mktemp -d /tmp/bunnydb-test.XXXXXX)
COPY=$SCRATCH/bunnydb
cp -a "$REPO" "$COPY"
rm -rf "$COPY"/results "$COPY"/log "$COPY"/tmp_check "$COPY"/tmp_regress \
       "$COPY"/regression.diffs "$COPY"/regression.out
chown -R postgres: "$SCRATCH"
chmod 755 "$SCRATCH"
say "running tests as postgres in $COPY"

# ---------------------------------------------------------------------------
# 4. make installcheck as postgres
# ---------------------------------------------------------------------------
STAGE="installcheck"
MAKE_ARGS=(PG_CONFIG="$PG_CONFIG")
if [ -n "${PROVE_TESTS:-}" ]; then MAKE_ARGS+=(PROVE_TESTS="$PROVE_TESTS"); fi
if [ -n "${PROVE_FLAGS:-}" ]; then MAKE_ARGS+=(PROVE_FLAGS="$PROVE_FLAGS"); fi

OUT=$SCRATCH/installcheck.out
rc=0
as_postgres make installcheck "${MAKE_ARGS[@]}" 2>&1 | tee "$OUT" || rc=$?

parse_regress "$OUT"
parse_tap "$OUT"

# pg_regress failing stops make before the TAP suite: run TAP anyway so the
# report is complete (REGRESS= on the command line disables pg_regress).
if [ "$rc" -ne 0 ] && ! grep -q '+++ tap install-check' "$OUT" \
   && grep -q '+++ regress install-check' "$OUT" && [ -d "$COPY/test/t" ]; then
    say "pg_regress failed; running the TAP suite on its own"
    OUT2=$SCRATCH/installcheck-tap.out
    rc2=0
    as_postgres make installcheck REGRESS= "${MAKE_ARGS[@]}" 2>&1 | tee "$OUT2" || rc2=$?
    parse_tap "$OUT2"
    if [ "$rc2" -ne 0 ] && [ "$TAP_FAILED" -eq 0 ]; then TAP_FAILED=1; fi
fi

if [ "$rc" -ne 0 ]; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        warn "make installcheck timed out after ${BUNNY_TEST_TIMEOUT}s"
    fi
    if [ $((REGRESS_FAILED + TAP_FAILED)) -eq 0 ]; then
        warn "make installcheck failed (exit status $rc) without a failed test"
        OTHER_FAILED=1
    fi
fi

# ---------------------------------------------------------------------------
# 5. The benchmark on tiny sizes, as root (it runs its clusters as postgres)
# ---------------------------------------------------------------------------
STAGE="bench"
if [ "${BUNNY_SKIP_BENCH:-0}" = 1 ]; then
    say "skipping the bench smoke run (BUNNY_SKIP_BENCH=1)"
else
    say "bench smoke run: bash bench/run.sh --smoke --no-pglogical"
    BENCH_OUT=$SCRATCH/bench-smoke.out
    rc=0
    timeout -k 30 900 bash "$REPO/bench/run.sh" --smoke --no-pglogical \
        --dir "$SCRATCH/bench" >"$BENCH_OUT" 2>&1 </dev/null || rc=$?
    sed -n '/^== results/,/^RESULT consistency/p' "$BENCH_OUT"
    if [ "$rc" -eq 0 ] && grep -q '^RESULT consistency OK' "$BENCH_OUT"; then
        BENCH_PASSED=1
    else
        warn "bench/run.sh --smoke failed (exit status $rc); output: $BENCH_OUT"
        BENCH_FAILED=1
    fi
fi

STAGE="report"
if [ $((REGRESS_FAILED + TAP_FAILED + BENCH_FAILED + OTHER_FAILED)) -ne 0 ]; then
    say "FAILURES"
    print_failure_details
    exit 1
fi
say "all tests passed"
exit 0
