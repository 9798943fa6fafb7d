#!/usr/bin/env bash
# Throwaway services for the test suite: a PostgreSQL server on 127.0.0.1.
#
#   scripts/test-services.sh start DIR     start a server whose files live in DIR (created,
#                                          0700); writes DIR/env with REMIT_TEST_PG=...
#   scripts/test-services.sh stop DIR      stop it and delete DIR (safe to call twice)
#   scripts/test-services.sh run CMD ...   start, run CMD with REMIT_TEST_PG and
#                                          REMIT_REQUIRE_PG=1 set, stop (also when CMD
#                                          fails or is interrupted); exits with CMD's status
#
# PostgreSQL is installed with apt when missing (needs root). The server is made with
# initdb under the postgres user (initdb refuses root): TCP connections use
# scram-sha-256 with a random superuser password, so a wrong or revoked password is
# really refused; the Unix socket (in DIR only) trusts local users. PG_PORT picks the
# port (default: a free one).
set -euo pipefail

die() { echo "test-services: $*" >&2; exit 1; }

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$bin" ] && [ -x "$bin/initdb" ] && echo "$bin"
}

ensure_postgres() {
    if [ -n "$(pg_bin)" ]; then return; fi
    [ "$(id -u)" -eq 0 ] || die "PostgreSQL is not installed; run as root (apt-get install -y postgresql)"
    echo "test-services: installing PostgreSQL with apt" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    [ -n "$(pg_bin)" ] || die "apt-get install postgresql did not provide initdb"
}

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local dir=$1 bin port password
    ensure_postgres
    bin=$(pg_bin)
    mkdir -p "$dir"
    chmod 700 "$dir"
    [ ! -e "$dir/data" ] || die "$dir/data exists: stop the old server first"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
    port=${PG_PORT:-$(free_port)}
    password=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    printf '%s\n' "$password" >"$dir/pwfile"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir/pwfile"; fi
    chmod 600 "$dir/pwfile"
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" \
        --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    rm -f "$dir/pwfile"
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start \
        -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        >/dev/null || { cat "$dir/server.log" >&2; die "the PostgreSQL server did not start"; }
    as_postgres "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -qAt \
        -c "CREATE DATABASE remit_test" >/dev/null
    umask 077
    echo "REMIT_TEST_PG=postgresql://postgres:$password@127.0.0.1:$port/remit_test" >"$dir/env"
    echo "test-services: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($dir)" >&2
}

stop() {
    local dir=$1 bin
    [ -d "$dir" ] || return 0
    if [ -f "$dir/data/postmaster.pid" ]; then
        bin=$(pg_bin)
        as_postgres "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

run() {
    [ $# -gt 0 ] || die "usage: $0 run CMD [ARG...]"
    local status=0
    RUN_DIR=$(mktemp -d -t remit-services.XXXXXX)
    trap 'stop "$RUN_DIR"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    start "$RUN_DIR"
    set -a
    # shellcheck disable=SC1091
    . "$RUN_DIR/env"
    set +a
    REMIT_REQUIRE_PG=1 "$@" || status=$?
    exit "$status"
}

case "${1:-}" in
    start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    run) shift; run "$@" ;;
    *) die "usage: $0 start DIR | stop DIR | run CMD [ARG...]" ;;
esac
