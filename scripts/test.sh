#!/usr/bin/env bash
# The one command that runs every test:
#   bash scripts/test.sh [extra cargo test arguments]
# Brings up PostgreSQL and Redis (and installs the server binaries that the
# fault tests start privately), then runs the whole suite: the schemathesis
# check of the API contract, the engine tests on a local Redis Cluster, then
# every Rust test. Each test makes its
# own database and Redis namespace, so the suite can run next to a live demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services --with-binaries

export TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}

# The whole suite (no arguments) also checks the API against its contract,
# docs/openapi.json, with schemathesis (bounded, ~1.5 min), and validates
# deploy/kubernetes/ (scripts/check-deploy.sh, seconds) before cargo test,
# whose summary ends the output. With arguments, only cargo test runs them.
if [ $# -eq 0 ]; then
    bash scripts/schemathesis.sh
    # The Kubernetes manifests against the API schemas, and consistent.
    bash scripts/check-deploy.sh
    # The engine suite once more on a Redis Cluster (3 primaries + 3
    # replicas started here from redis-server, stopped on exit): the engine,
    # several-writers, recovery and reconcile tests and the model-based test,
    # in every slot layout a cluster gives them (Redis 7 refuses a script
    # whose keys span slots). TEST_CLUSTER=full runs the whole API suite on
    # it; TEST_CLUSTER=none skips it. The failover and resharding tests
    # (tests/api/failover.rs) start clusters of their own in cargo test below.
    case ${TEST_CLUSTER:-reduced} in
        none) ;;
        full|reduced)
            cluster_dir=target/redis-cluster-test
            trap 'bash scripts/redis-cluster.sh stop "$cluster_dir" >/dev/null 2>&1 || true' EXIT
            cluster_url=$(bash scripts/redis-cluster.sh start "$cluster_dir" | tail -n 1)
            # On a failure, what the nodes said about each other (a primary
            # suspected or failed over under load) before they are removed.
            cluster_said() {
                echo "[redis-cluster] node log lines about failures and failovers:" >&2
                grep -h -i "fail\|marking\|promot" "$cluster_dir"/*/redis.log | tail -n 40 >&2 || true
            }
            if [ "${TEST_CLUSTER:-reduced}" = full ]; then
                TEST_REDIS_URL=$cluster_url cargo test --test api || { cluster_said; exit 1; }
            else
                # One test at a time: six redis-server nodes beside the
                # tests' servers starve this 2-core machine, and a Redis call
                # past redis.response_timeout_ms (1 s) is answered 503 (see
                # docs/faults.md, "Redis Cluster").
                TEST_REDIS_URL=$cluster_url cargo test --test api -- --test-threads 1 \
                    engine:: writers:: recovery:: reconcile:: model:: rules:: scripts:: revocation:: \
                    || { cluster_said; exit 1; }
            fi
            bash scripts/redis-cluster.sh stop "$cluster_dir"
            ;;
        *) echo "TEST_CLUSTER must be reduced, full or none" >&2; exit 2 ;;
    esac
fi
cargo test "$@"
