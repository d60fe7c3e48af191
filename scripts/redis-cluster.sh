#!/usr/bin/env bash
# A local Redis Cluster of 3 primaries and 3 replicas, for the demo and for
# trying the engine against a cluster by hand:
#
#   bash scripts/redis-cluster.sh start [dir]   # prints the URL (last line)
#   bash scripts/redis-cluster.sh status [dir]  # each node; exit 1 unless all up and ok
#   bash scripts/redis-cluster.sh stop [dir]    # kills the nodes, removes the dir
#
# The nodes are redis-server processes on free loopback ports (each with its
# cluster bus port, port + 10000, free too), one folder each under the state
# dir (default target/redis-cluster), without persistence. `start` waits until
# every node reports cluster_state:ok and all agree on the slot map, then
# prints `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3` (the
# primaries, the form of redis.url / APP__REDIS__URL for a cluster) and
# writes it to <dir>/url. Starting again while that cluster runs only prints
# its URL. Needs redis-server and redis-cli (Debian: the redis-server package;
# scripts/services.sh installs it), and python3 or bash to find free ports.
set -euo pipefail

NODES=6
# A primary silent this long on the cluster bus is failed over to its
# replica. This cluster serves the demo and the tests that run unchanged on a
# cluster (scripts/test.sh), under full load on a shared machine: 1 s (what the
# failover tests' own clusters in tests/kit/cluster.rs use, to fail over
# fast) would let a primary starved of CPU for a second be failed over in
# the middle of a test that kills nothing. Redis's default is 15 s.
NODE_TIMEOUT_MS=${REDIS_CLUSTER_NODE_TIMEOUT_MS:-5000}
WAIT_SECS=30

log() { printf '[redis-cluster] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

cd "$(dirname "$0")/.."
cmd=${1:-}
dir=$(realpath -m "${2:-target/redis-cluster}")

ports_file() { echo "$dir/ports"; }

# The ports of the cluster in $dir, one line, or nothing.
ports() { [ -f "$(ports_file)" ] && cat "$(ports_file)" || true; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The pid in a node's pid file, when that process is still a redis-server.
node_pid() {
    local pidfile=$dir/$1/redis.pid pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -n "$pid" ] && grep -qa redis-server "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

cli() { local port=$1; shift; redis-cli -h 127.0.0.1 -p "$port" "$@"; }

state_ok() { cli "$1" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok'; }

# A node's view of the slot map: "<primary id> <slot ranges>" per primary,
# sorted, so that views can be compared.
slot_map() {
    cli "$1" cluster nodes 2>/dev/null | tr -d '\r' | awk '
        $3 ~ /master/ && $3 !~ /fail/ && NF > 8 {
            s = $1; for (i = 9; i <= NF; i++) if ($i !~ /^\[/) s = s " " $i; print s
        }' | sort
}

# Whether every node is up, reports cluster_state:ok, and all see the same
# slot map covering 16384 slots; prints what is wrong otherwise.
converged() {
    local first="" port map covered
    for port in $(ports); do
        node_pid "$port" >/dev/null || { echo "node $port is not running"; return 1; }
        state_ok "$port" || { echo "node $port: cluster_state is not ok"; return 1; }
        map=$(slot_map "$port")
        if [ -z "$first" ]; then
            first=$map
            covered=$(echo "$map" | awk '{
                for (i = 2; i <= NF; i++) { n = split($i, r, "-"); c += (n == 2 ? r[2] - r[1] + 1 : 1) }
            } END { print c + 0 }')
            [ "$covered" = 16384 ] || { echo "node $port: $covered of 16384 slots served"; return 1; }
        elif [ "$map" != "$first" ]; then
            echo "node $port sees another slot map"; return 1
        fi
    done
}

url() {
    local first
    first=$(ports | awk '{ print $1 }')
    cli "$first" cluster nodes | tr -d '\r' | awk '
        $3 ~ /master/ && $3 !~ /fail/ && NF > 8 { split($2, a, "@"); print a[1] }' \
        | sort | paste -sd, | sed 's|^|redis+cluster://|'
}

# $NODES free loopback ports (below 55536) whose port + 10000 is free as well.
free_ports() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$NODES" <<'PY'
import socket, sys
n, held, ports = int(sys.argv[1]), [], []
while len(ports) < n:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    b = socket.socket()
    try:
        if p > 55535:
            raise OSError
        b.bind(("127.0.0.1", p + 10000))
    except OSError:
        s.close(); b.close(); continue
    held += [s, b]
    ports.append(p)
print(" ".join(map(str, ports)))
PY
    else
        # Below the usual ephemeral range (32768-60999), bus ports included.
        local found=() p
        while [ ${#found[@]} -lt "$NODES" ]; do
            p=$((20000 + RANDOM % 2000))
            port_open "$p" || port_open $((p + 10000)) && continue
            [[ " ${found[*]} " == *" $p "* ]] && continue
            found+=("$p")
        done
        echo "${found[*]}"
    fi
}

stop() {
    local port pid
    for port in $(ports); do
        pid=$(node_pid "$port") && kill -KILL "$pid" 2>/dev/null || true
    done
    for port in $(ports); do
        for _ in $(seq 1 50); do
            node_pid "$port" >/dev/null || break
            sleep 0.1
        done
        rm -rf "${dir:?}/$port"
    done
    rm -f "$dir/ports" "$dir/url" "$dir/create.log"
    rmdir "$dir" 2>/dev/null || true
}

start() {
    command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install redis-server)"
    command -v redis-cli >/dev/null || die "redis-cli is not installed (apt-get install redis-tools)"
    if [ -n "$(ports)" ]; then
        if converged >/dev/null && [ -f "$dir/url" ]; then
            log "already running from $dir"
            cat "$dir/url"
            return 0
        fi
        log "a cluster in $dir is not all up: removing it and starting anew"
        stop
    fi
    mkdir -p "$dir"
    local ports port seeds=()
    ports=$(free_ports)
    echo "$ports" >"$(ports_file)"
    for port in $ports; do
        mkdir -p "$dir/$port"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
            --dir "$dir/$port" --pidfile "$dir/$port/redis.pid" \
            --logfile "$dir/$port/redis.log" \
            --cluster-enabled yes --cluster-config-file nodes.conf \
            --cluster-node-timeout "$NODE_TIMEOUT_MS" \
            --cluster-replica-validity-factor 0 \
            --cluster-allow-replica-migration no \
            --save "" --appendonly no
        seeds+=("127.0.0.1:$port")
    done
    for port in $ports; do
        for _ in $(seq 1 50); do
            cli "$port" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
        cli "$port" ping >/dev/null 2>&1 || { stop; die "node $port did not start (see its redis.log)"; }
    done
    if ! redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1; then
        cat "$dir/create.log" >&2
        stop
        die "redis-cli --cluster create failed"
    fi
    local deadline=$((SECONDS + WAIT_SECS)) why
    until why=$(converged); do
        if [ "$SECONDS" -ge "$deadline" ]; then
            stop
            die "the cluster did not converge within ${WAIT_SECS} s: $why"
        fi
        sleep 0.2
    done
    url >"$dir/url"
    log "6 nodes up under $dir (ports $ports)"
    cat "$dir/url"
}

status() {
    [ -n "$(ports)" ] || { log "no cluster in $dir"; return 1; }
    local port pid role
    for port in $(ports); do
        if pid=$(node_pid "$port"); then
            role=$(cli "$port" role 2>/dev/null | head -n 1)
            printf '%s pid %s %s %s\n' "$port" "$pid" "${role:-?}" \
                "$(cli "$port" cluster info 2>/dev/null | tr -d '\r' | grep cluster_state)"
        else
            printf '%s down\n' "$port"
        fi
    done
    local why
    if why=$(converged); then
        cat "$dir/url"
    else
        log "$why"
        return 1
    fi
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: bash scripts/redis-cluster.sh start|stop|status [dir]" ;;
esac
