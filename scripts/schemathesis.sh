#!/usr/bin/env bash
# Checks the implementation against its contract, docs/openapi.json, with
# schemathesis (property-based API testing, from PyPI):
#   bash scripts/schemathesis.sh
# Starts the server (debug build, the one the tests use) on a free port with a
# database and Redis namespace of its own, seeds it, then lets schemathesis
# send generated requests to every operation twice, once with a student's
# token and once with the admin's. It fails on any 5xx, and on any status,
# content type, header or body the document does not allow. The server, its
# database and its namespace are removed afterwards, also on failure.
#
# Bounded: SCHEMATHESIS_EXAMPLES test cases per operation and run (default
# 30), each run cut after SCHEMATHESIS_TIMEOUT seconds (default 80). The
# random seed is printed; SCHEMATHESIS_SEED=<n> replays a run.
# REGISTRAR_BIN=<path> tests that binary instead of building the debug one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services

SCHEMATHESIS_VERSION=4.32.5
VENV=${SCHEMATHESIS_VENV:-$PWD/target/schemathesis/venv}
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-30}
RUN_TIMEOUT=${SCHEMATHESIS_TIMEOUT:-80}
SEED=${SCHEMATHESIS_SEED:-$((RANDOM * 32768 + RANDOM))}
ADMIN_DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
WORK=$PWD/target/schemathesis

log() { printf '[schemathesis] %s\n' "$*" >&2; }

# The tool, pinned: its checks and CLI changed a lot between releases.
if [ "$("$VENV/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
    python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null \
        || apt_install python3 python3-venv
    log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
command -v psql >/dev/null 2>&1 || apt_install postgresql-client
command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools

bin=${REGISTRAR_BIN:-}
if [ -z "$bin" ]; then
    cargo build --quiet --bin registrar
    bin=$(realpath "${CARGO_TARGET_DIR:-target}")/debug/registrar
fi

suffix="$(date +%s)_$$"
database="schemathesis_$suffix"
namespace="st$suffix"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
mkdir -p "$WORK"
server_log="$WORK/server.log"

export APP_ENV=test # rate limits off: one client sends thousands of requests
export APP__HTTP__PORT=$port
export APP__DATABASE__URL="${ADMIN_DATABASE_URL%/*}/$database"
export APP__REDIS__URL=$REDIS_URL
export APP__REDIS__NAMESPACE=$namespace
export APP__LOG__FORMAT=json

server_pid=
cleanup() {
    local status=$?
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    psql -q "$ADMIN_DATABASE_URL" -c "drop database if exists $database with (force)" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" --scan --pattern "$namespace:*" | xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null || true
    if [ "$status" != 0 ] && [ -s "$server_log" ]; then
        log "server log (last 40 lines of $server_log):"
        tail -n 40 "$server_log" >&2
    fi
    exit "$status"
}
trap cleanup EXIT

"$bin" migrate >/dev/null
"$bin" seed --students 20 --courses 3 --sections-per-course 2 --seats 2 --waitlist 2 >/dev/null
student_token=$("$bin" token --student-number S0000001)
admin_token=$("$bin" token --admin)

"$bin" serve >"$server_log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    curl -fs "$base/ready" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { log "the server exited during start-up"; exit 1; }
    sleep 0.2
done
curl -fs "$base/ready" >/dev/null || { log "the server did not become ready"; exit 1; }

# The live streams (`.../events`, text/event-stream) answer 200 and then
# never end, which schemathesis can only report as a timeout: they are left
# out here and tested by tests/api/live.rs with a real stream reader.
checks=not_a_server_error,status_code_conformance,content_type_conformance
checks+=,response_headers_conformance,response_schema_conformance
checks+=,unsupported_method,allow_header_conformance,ignored_auth

run() {
    local who=$1 token=$2
    log "as $who: up to $EXAMPLES cases per operation, seed $SEED, at most $RUN_TIMEOUT s"
    # In a subshell inside $WORK: schemathesis keeps a crash cache in
    # ./.schemathesis. One worker: with two, hypothesis's threads parse Python
    # sources at the same time and CPython 3.11 (gh-106905) fails them with
    # "SystemError: AST constructor recursion depth mismatch". The run is
    # CPU-bound in Python anyway.
    (
        cd "$WORK"
        timeout --signal=INT --kill-after=10 "$RUN_TIMEOUT" \
            "$VENV/bin/schemathesis" run "$base/api/v1/openapi.json" \
            --header "Authorization: Bearer $token" \
            --checks "$checks" \
            --max-examples "$EXAMPLES" \
            --seed "$SEED" \
            --workers 1 \
            --request-timeout 15 \
            --exclude-path-regex '/events$' \
            --generation-database none \
            --no-color
    ) || {
        local status=$?
        [ "$status" = 124 ] && log "as $who: cut off after $RUN_TIMEOUT s (SCHEMATHESIS_TIMEOUT)"
        log "as $who: failed; replay with SCHEMATHESIS_SEED=$SEED"
        return "$status"
    }
}

run student "$student_token"
run admin "$admin_token"
log "no failures"
