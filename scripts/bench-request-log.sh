#!/usr/bin/env bash
# What the per-request INFO line (log.requests) costs, measured from outside
# with wrk against the release binary: GET /api/v1/semesters (an
# authenticated API route, rate limits off so every answer is a 200) and GET
# /live (a probe, logged at DEBUG), each server run with the line on, then
# off, RUNS times (default 3). The log goes to a file, as under a supervisor.
#   bash scripts/bench-request-log.sh
# Uses its own database and Redis namespace and removes both.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
command -v wrk >/dev/null 2>&1 || apt_install wrk
cargo build --release --quiet
bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release/registrar
db=reglogbench_$$
export APP__DATABASE__URL=postgres://postgres:postgres@127.0.0.1:5432/$db
export APP__REDIS__NAMESPACE=reglogbench$$
export APP__HTTP__PORT=${PORT:-18097}
work=$(mktemp -d)
cleanup() {
    [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    psql -q -h 127.0.0.1 -U postgres -c "drop database if exists $db" >/dev/null 2>&1 || true
    redis-cli --scan --pattern "$APP__REDIS__NAMESPACE:*" | xargs -r redis-cli del >/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
"$bin" migrate >/dev/null
"$bin" seed --students 10 >/dev/null
token=$("$bin" token --student-number S0000001 | tail -n 1)
for run in $(seq 1 "${RUNS:-3}"); do
    for lines in true false; do
        APP__RATE_LIMIT__ENABLED=false APP__LOG__REQUESTS=$lines "$bin" serve >"$work/log" 2>&1 &
        pid=$!
        for _ in $(seq 1 100); do
            curl -sf -o /dev/null "http://127.0.0.1:$APP__HTTP__PORT/ready" && break
            sleep 0.1
        done
        api=$(wrk -t2 -c64 -d8s -H "authorization: Bearer $token" \
            "http://127.0.0.1:$APP__HTTP__PORT/api/v1/semesters" | awk '/Requests\/sec/ {print $2}')
        live=$(wrk -t2 -c64 -d4s "http://127.0.0.1:$APP__HTTP__PORT/live" | awk '/Requests\/sec/ {print $2}')
        kill -TERM "$pid"
        wait "$pid" || true
        pid=
        echo "run $run log.requests=$lines: GET /api/v1/semesters $api/s, GET /live $live/s, $(wc -l <"$work/log") log lines"
    done
done
