#!/usr/bin/env bash
# The one command that runs the service with demo data:
#   bash scripts/demo.sh            (DEMO_STUDENTS=100000 for a bigger data set)
#   REDIS_CLUSTER=1 bash scripts/demo.sh   (on a local Redis Cluster of six)
# Brings up PostgreSQL and Redis, builds, migrates, seeds, then serves on
# http://127.0.0.1:8080 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
if [ "${REDIS_CLUSTER:-}" = 1 ]; then
    # scripts/redis-cluster.sh's cluster instead of the Redis on 6379; it is
    # stopped when this script exits.
    ensure_build_tools
    ensure_postgres
    ensure_redis_cluster
else
    ensure_services
fi

export APP__DATABASE__URL=${APP__DATABASE__URL:-postgres://postgres:postgres@127.0.0.1:5432/registrar}
export APP__REDIS__URL=${APP__REDIS__URL:-redis://127.0.0.1:6379/0}

# A cold build takes a few minutes: cargo's own progress shows, on stderr.
echo "[demo] building the release binary (a few minutes the first time)..." >&2
cargo build --release
bin=${CARGO_TARGET_DIR:-target}/release/registrar
"$bin" migrate
"$bin" seed --students "${DEMO_STUDENTS:-1000}" --with-rules

cat <<'TXT'

Open http://127.0.0.1:8080/app (S0000001 / password123; admin / admin-password
for the operator view), or the API reference at http://127.0.0.1:8080/docs.

Try it (in another terminal):
  TOKEN=$(curl -s -X POST http://127.0.0.1:8080/api/v1/auth/login \
            -H 'content-type: application/json' \
            -d '{"student_number":"S0000001","password":"password123"}' | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
  curl -s http://127.0.0.1:8080/api/v1/semesters -H "authorization: Bearer $TOKEN"

TXT
if [ "${REDIS_CLUSTER:-}" = 1 ]; then
    # Not exec: this shell stays, to stop the cluster once the server is
    # gone. Ctrl-C or a TERM to the demo reaches the server as a TERM (its
    # graceful shutdown); a signal interrupts `wait`, so wait again.
    "$bin" serve &
    server=$!
    trap 'kill -TERM "$server" 2>/dev/null || true' INT TERM
    while :; do
        status=0
        wait "$server" || status=$?
        kill -0 "$server" 2>/dev/null || break
    done
    exit "$status"
fi
exec "$bin" serve
