#!/usr/bin/env bash
# The one command that runs every test:
#   bash scripts/test.sh [extra cargo test arguments]
# Brings up PostgreSQL and Redis (and installs the server binaries that the
# fault tests start privately), then runs the whole suite: the schemathesis
# check of the API contract, then every Rust test. Each test makes its
# own database and Redis namespace, so the suite can run next to a live demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services --with-binaries

export TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}

# The whole suite (no arguments) also checks the API against its contract,
# docs/openapi.json, with schemathesis (bounded, ~1.5 min) before cargo test,
# whose summary ends the output. With arguments, only cargo test runs them.
if [ $# -eq 0 ]; then
    bash scripts/schemathesis.sh
fi
cargo test "$@"
