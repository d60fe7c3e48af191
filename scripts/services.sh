#!/usr/bin/env bash
# Makes sure local PostgreSQL and Redis are up, for the demo and the tests.
#
# Uses servers that already answer on 127.0.0.1:5432 and 127.0.0.1:6379.
# Otherwise installs them from the OS packages (Debian/Ubuntu: apt-get) and
# starts them without systemd, so it also works in containers and CI.
# Sourced by scripts/demo.sh and scripts/test.sh; can be run on its own.
#
# With `--with-binaries`, also makes sure redis-server and the PostgreSQL server
# binaries are installed even when servers already run: some tests start
# private instances of their own to stop and restart them, promtool
# (Debian package prometheus, which on a systemd host also enables a
# Prometheus service: `systemctl disable --now prometheus` if unwanted) and
# Chromium and chromedriver (packages chromium, chromium-driver) for the
# headless browser tests.
set -euo pipefail

PG_PORT=5432
REDIS_PORT=6379

log() { printf '[services] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root privileges for: $*"
        return 1
    fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 what=$2
    for _ in $(seq 1 60); do
        port_open "$port" && return 0
        sleep 0.5
    done
    log "$what did not start listening on port $port within 30 s"
    return 1
}

APT_UPDATED=
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "apt-get not found: install $* with your package manager"
        return 1
    fi
    if [ -z "$APT_UPDATED" ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    log "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

ensure_build_tools() {
    command -v cc >/dev/null 2>&1 || apt_install build-essential
}

ensure_postgres_binaries() {
    [ -n "$(pg_bindir)" ] && [ -x "$(pg_bindir)/initdb" ] || apt_install postgresql postgresql-contrib
}

ensure_postgres() {
    if port_open "$PG_PORT"; then
        log "PostgreSQL answers on 127.0.0.1:$PG_PORT"
        return 0
    fi
    ensure_postgres_binaries
    command -v pg_lsclusters >/dev/null 2>&1 || apt_install postgresql-common
    local version cluster
    version=$(basename "$(dirname "$(pg_bindir)")")
    if ! pg_lsclusters -h | grep -q .; then
        log "creating PostgreSQL $version cluster main"
        as_root pg_createcluster "$version" main >/dev/null
    fi
    read -r version cluster _ < <(pg_lsclusters -h | head -n 1)
    log "starting PostgreSQL $version/$cluster"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start 2>/dev/null \
        || as_root pg_ctlcluster "$version" "$cluster" start
    wait_port "$PG_PORT" PostgreSQL
    # Packaged clusters ask for a password on TCP; give the superuser the one
    # our default URLs use (postgres://postgres:postgres@127.0.0.1/...).
    as_root runuser -u postgres -- psql -q -c "alter user postgres password 'postgres'" >/dev/null
}

ensure_redis() {
    if port_open "$REDIS_PORT"; then
        log "Redis answers on 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    log "starting Redis on 127.0.0.1:$REDIS_PORT"
    mkdir -p /tmp/registrar-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
        --dir /tmp/registrar-redis --appendonly yes --appendfsync everysec \
        --logfile /tmp/registrar-redis/redis.log
    wait_port "$REDIS_PORT" Redis
}

# A local Redis Cluster of 3 primaries and 3 replicas (scripts/redis-cluster.sh,
# state under target/redis-cluster) instead of the Redis on 6379: used by
# scripts/demo.sh with REDIS_CLUSTER=1. Exports APP__REDIS__URL as
# redis+cluster://127.0.0.1:P1,...; a cluster this call started is stopped
# when the calling shell exits (a trap on EXIT), one that already ran is left.
ensure_redis_cluster() {
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 \
        || apt_install redis-server
    local script dir=target/redis-cluster url
    script="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/redis-cluster.sh"
    if ! bash "$script" status "$dir" >/dev/null 2>&1; then
        # shellcheck disable=SC2064 # expanded now: the paths of this call
        trap "bash '$script' stop '$dir'" EXIT
    fi
    url=$(bash "$script" start "$dir" | tail -n 1)
    export APP__REDIS__URL=$url
    log "Redis Cluster: $url"
}

ensure_services() {
    ensure_build_tools
    ensure_postgres
    ensure_redis
    if [ "${1:-}" = --with-binaries ]; then
        command -v redis-server >/dev/null 2>&1 || apt_install redis-server
        # promtool checks and unit-tests the alert rules (tests/api/observability.rs).
        command -v promtool >/dev/null 2>&1 || apt_install prometheus
        # Headless Chromium renders /docs in tests/api/openapi.rs, and
        # chromedriver drives it through the web page in tests/api/page.rs.
        command -v chromium >/dev/null 2>&1 || apt_install chromium
        command -v chromedriver >/dev/null 2>&1 || apt_install chromium-driver
        ensure_postgres_binaries
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    ensure_services "$@"
fi
