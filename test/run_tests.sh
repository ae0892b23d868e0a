#!/usr/bin/env bash
#
# bunnydb: run the whole test suite on a fresh Debian 12 machine, as root.
#
#     sudo bash test/run_tests.sh
#
# What it does, one step after the other:
#   1. apt-get installs what is missing of PostgreSQL 15, its server
#      headers, IPC::Run, make, gcc, and nodejs/npm (they fetch the source
#      servers of PostgreSQL 12 to 18 that 015_source_versions runs
#      against, cached after the first run)
#   2. builds and installs the extension (as root)
#   3. copies the repository to a scratch directory owned by the `postgres`
#      OS user and runs there, as `postgres`, two separate steps:
#        make regresscheck   the pg_regress suite on a temporary instance
#                            of its own (test/regress.conf)
#        make tapcheck       the TAP suite (test/t/*.pl; each file starts
#                            its clusters with PostgreSQL::Test::Cluster)
#      so a failure of one does not keep the other from running
#   4. runs the benchmark on tiny sizes (bench/run.sh --smoke --no-pglogical,
#      as root, about a minute): every step of the bench works and every
#      destination matches the source; its timings are not checked
#
# The verdict is the exit status of each step, nothing read from its
# output.  The run ends with one line per step (name, exit status,
# seconds), then "all N steps passed" or "FAILED: <steps>"; on failure it
# first prints regression.diffs, the logs of the failed TAP files (prove
# --state=save records which) and the tail of the bench's output, and keeps
# the scratch directory.  The exit status is non-zero on any failure; a
# step that the failure of an earlier one makes pointless (build after apt,
# ...) does not run.
#
# Environment:
#   BUNNY_SKIP_APT=1         skip apt-get (packages already installed)
#   BUNNY_SKIP_BENCH=1       skip the bench smoke run
#   BUNNY_KEEP_TMP=1         keep the scratch directory even if all tests pass
#   BUNNY_TEST_TIMEOUT=SECS  give up on each test step after SECS seconds
#   BUNNY_SOURCE_VERSIONS="12 18"  source majors 015_source_versions runs
#                            against (default: 12 to 18)
#   BUNNY_PG_CACHE=DIR       where test/pg_sources.sh caches the source
#                            servers (default /var/cache/bunnydb-test)
#   BUNNY_DRY_RUN=1          print each step's command instead of running
#                            it (no root needed; nothing is installed)
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
DRY=${BUNNY_DRY_RUN:-0}

SCRATCH=""          # mktemp -d, owned by postgres
COPY=""             # $SCRATCH/bunnydb: the copy of the repo the tests run in
BENCH_OUT=""
STEP_LINES=()       # "name exit seconds", in order
FAILED_STEPS=()
TAP_FAILED_FILES=()

say()  { printf '\n==> %s\n' "$*"; }
warn() { printf 'run_tests.sh: %s\n' "$*" >&2; }

# run_step NAME COMMAND...: run COMMAND, record its exit status and time.
# Returns the command's exit status; never stops the script by itself.
run_step() {
    local name=$1 rc=0 t0
    shift
    say "$name: $(printf '%q ' "$@")"
    t0=$(date +%s)
    if [ "$DRY" = 1 ]; then
        echo "(dry run: not executed)"
    else
        "$@" || rc=$?
    fi
    STEP_LINES+=("$(printf '%-28s %5s %8s' "$name" "$rc" "$(( $(date +%s) - t0 ))")")
    if [ "$rc" -ne 0 ]; then
        FAILED_STEPS+=("$name")
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            warn "$name: timed out (exit status $rc)"
        else
            warn "$name: failed (exit status $rc)"
        fi
    fi
    return "$rc"
}

# ---------------------------------------------------------------------------
# Summary, printed on every exit (success, failure, or an abort of set -e
# outside a step).
# ---------------------------------------------------------------------------
# shellcheck disable=SC2317  # invoked through the EXIT trap
on_exit() {
    local rc=$? line
    set +e
    if [ "$rc" -ne 0 ] && [ "${#FAILED_STEPS[@]}" -eq 0 ]; then
        warn "aborted outside a step (exit status $rc)"
        FAILED_STEPS+=("run_tests.sh itself")
    fi
    if [ "${#FAILED_STEPS[@]}" -ne 0 ]; then
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
    printf '%-28s %5s %8s\n' step exit seconds
    for line in "${STEP_LINES[@]}"; do echo "$line"; done
    echo "=================================================================="
    if [ "${#FAILED_STEPS[@]}" -eq 0 ]; then
        echo "all ${#STEP_LINES[@]} steps passed"
    else
        echo "FAILED: ${FAILED_STEPS[*]}"
        if [ "${#TAP_FAILED_FILES[@]}" -ne 0 ]; then
            echo "failed TAP files: ${TAP_FAILED_FILES[*]}"
        fi
    fi
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

# The packages of $@ that dpkg does not have installed.
missing_packages() {
    local p
    for p in "$@"; do
        if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
            echo "$p"
        fi
    done
}

# shellcheck disable=SC2317  # run through run_step
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq &&
        apt-get install -y -qq -o Dpkg::Use-Pty=0 "$@" >/dev/null
}

# shellcheck disable=SC2317  # run through run_step
check_prerequisites() {
    local tool
    for tool in "$PG_CONFIG" "$PGBIN/initdb" "$PGBIN/pg_ctl" /usr/bin/prove; do
        if [ ! -x "$tool" ]; then
            warn "missing $tool (install: ${APT_PACKAGES[*]})"
            return 1
        fi
    done
    if ! perl -MIPC::Run -e 1 2>/dev/null; then
        warn "perl module IPC::Run missing (apt-get install libipc-run-perl)"
        return 1
    fi
    if ! getent passwd postgres >/dev/null; then
        warn "OS user 'postgres' does not exist (it comes with the postgresql-15 package)"
        return 1
    fi
}

# shellcheck disable=SC2317  # run through run_step
make_scratch_copy() {
    SCRATCH=$(mktemp -d /tmp/bunnydb-test.XXXXXX) &&
        COPY=$SCRATCH/bunnydb &&
        cp -a "$REPO" "$COPY" &&
        rm -rf "$COPY"/results "$COPY"/log "$COPY"/tmp_check "$COPY"/tmp_regress \
            "$COPY"/regression.diffs "$COPY"/regression.out "$COPY"/.prove &&
        chown -R postgres: "$SCRATCH" &&
        chmod 755 "$SCRATCH"
}

# shellcheck disable=SC2317  # run through run_step
bench_smoke() {
    BENCH_OUT=$SCRATCH/bench-smoke.out
    local rc=0
    timeout -k 30 900 bash "$REPO/bench/run.sh" --smoke --no-pglogical \
        --dir "$SCRATCH/bench" >"$BENCH_OUT" 2>&1 </dev/null || rc=$?
    # the bench's own results table, for the reader
    sed -n '/^== results/,/^RESULT consistency/p' "$BENCH_OUT"
    return "$rc"
}

# Print the tail of a file with a header.
show_tail() {
    local f=$1 n=${2:-60}
    [ -f "$f" ] || return 0
    echo
    echo "----- tail -n $n $f -----"
    tail -n "$n" "$f"
}

failed() {
    local s
    for s in "${FAILED_STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done
    return 1
}

print_failure_details() {
    set +e
    if failed regresscheck; then
        if [ -s "$COPY/regression.diffs" ]; then
            echo
            echo "----- regression.diffs (first 400 lines) -----"
            head -n 400 "$COPY/regression.diffs"
        fi
        show_tail "$COPY/log/postmaster.log" 40
    fi
    if failed tapcheck && [ -d "$COPY/tmp_check/log" ]; then
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
    if failed "bench smoke"; then
        show_tail "$BENCH_OUT" 80
    fi
}

# ---------------------------------------------------------------------------
# 1. Packages
# ---------------------------------------------------------------------------
if [ "$(id -u)" -ne 0 ] && [ "$DRY" != 1 ]; then
    warn "must run as root (try: sudo bash test/run_tests.sh)"
    exit 1
fi

if [ "${BUNNY_SKIP_APT:-0}" = 1 ]; then
    say "skipping apt-get (BUNNY_SKIP_APT=1)"
else
    mapfile -t MISSING < <(missing_packages "${APT_PACKAGES[@]}")
    if ! command -v npm >/dev/null; then
        MISSING+=("${NPM_PACKAGES[@]}")
    fi
    if [ "${#MISSING[@]}" -gt 0 ]; then
        run_step "apt-get install" apt_install "${MISSING[@]}" || exit 1
    else
        say "packages already installed: ${APT_PACKAGES[*]}"
    fi
fi

run_step prerequisites check_prerequisites || exit 1

# ---------------------------------------------------------------------------
# 2. Build and install (as root)
# ---------------------------------------------------------------------------
run_step build make -C "$REPO" PG_CONFIG="$PG_CONFIG" -j"$(nproc)" || exit 1
run_step install make -C "$REPO" PG_CONFIG="$PG_CONFIG" install || exit 1

# ---------------------------------------------------------------------------
# 2b. Source servers of the other majors, for 015_source_versions (as root:
#     the tests run as postgres, which cannot write the cache)
# ---------------------------------------------------------------------------
SOURCE_MAJORS=()
for v in ${BUNNY_SOURCE_VERSIONS:-12 13 14 15 16 17 18}; do
    [ "$v" = "$PG_MAJOR" ] || SOURCE_MAJORS+=("$v")
done
if [ "${#SOURCE_MAJORS[@]}" -gt 0 ]; then
    # cached in ${BUNNY_PG_CACHE:-/var/cache/bunnydb-test}; a failure here
    # fails 015_source_versions, so the suite goes on
    run_step "source servers" bash "$REPO/test/pg_sources.sh" "${SOURCE_MAJORS[@]}" || true
fi

# ---------------------------------------------------------------------------
# 3. The tests, as postgres, in a scratch copy
# ---------------------------------------------------------------------------
run_step "scratch copy" make_scratch_copy || exit 1
[ "$DRY" = 1 ] && COPY=$REPO     # nothing was copied

MAKE_ARGS=(PG_CONFIG="$PG_CONFIG")
if [ -n "${PROVE_TESTS:-}" ]; then MAKE_ARGS+=(PROVE_TESTS="$PROVE_TESTS"); fi
# --state=save: prove records which files failed, for the report below
MAKE_ARGS+=(PROVE_FLAGS="--timer --state=save${PROVE_FLAGS:+ $PROVE_FLAGS}")

run_step regresscheck as_postgres make regresscheck "${MAKE_ARGS[@]}" || true
if ! run_step tapcheck as_postgres make tapcheck "${MAKE_ARGS[@]}" && [ -f "$COPY/.prove" ]; then
    mapfile -t TAP_FAILED_FILES < <(as_postgres prove --state=failed --dry 2>/dev/null)
fi

# ---------------------------------------------------------------------------
# 4. The benchmark on tiny sizes, as root (it runs its clusters as postgres)
# ---------------------------------------------------------------------------
if [ "${BUNNY_SKIP_BENCH:-0}" = 1 ]; then
    say "skipping the bench smoke run (BUNNY_SKIP_BENCH=1)"
else
    run_step "bench smoke" bench_smoke || true
fi

if [ "${#FAILED_STEPS[@]}" -ne 0 ]; then
    say "FAILURES"
    print_failure_details
    exit 1
fi
exit 0
