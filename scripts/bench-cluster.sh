#!/usr/bin/env bash
# The scale-out figures of BENCHMARKS.md ("Several instances and Redis
# Cluster"): 1 and 2 instances on one Redis and on a local 3+3 Redis Cluster,
# and the cluster with redis.wait_replicas = 1, RUNS times each (default 3),
# alternating, then the summary (medians of each group):
#   bash scripts/bench-cluster.sh            (about 15 minutes with RUNS=3)
# Two workloads: `enrol` (the race scenario with as many seats as students,
# so every answer is a new enrolment, persisted; one section, so one slot)
# and `peak` (200 sections: browse, view, register, drop, spread over every
# primary). Reports under target/load-reports/cluster/<run>/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services --with-binaries
out=target/load-reports/cluster
rm -rf "$out"
cargo bench --no-run
RUNS=${RUNS:-3}
DURATION=${DURATION:-15}
run() { local name=$1; shift; cargo bench --bench load -- --no-ceilings --out "$out/$name" "$@"; }
for i in $(seq "$RUNS"); do
    for shape in "1redis-1inst:--instances 1" "1redis-2inst:--instances 2" \
                 "cluster-1inst:--instances 1 --redis-cluster" "cluster-2inst:--instances 2 --redis-cluster"; do
        name=${shape%%:*}; flags=${shape#*:}
        # shellcheck disable=SC2086
        run "enrol-$name-$i" --scenario race --preset load --connections 64 --students 30000 --seats 30000 --waitlist 0 $flags
        # shellcheck disable=SC2086
        run "peak-$name-$i" --scenario peak --preset load --connections 64 --duration "$DURATION" $flags
    done
    APP__REDIS__WAIT_REPLICAS=1 run "enrol-cluster-2inst-wait1-$i" --scenario race --preset load --connections 64 --students 30000 --seats 30000 --waitlist 0 --instances 2 --redis-cluster
    APP__REDIS__WAIT_REPLICAS=1 run "peak-cluster-2inst-wait1-$i" --scenario peak --preset load --connections 64 --duration "$DURATION" --instances 2 --redis-cluster
done
python3 scripts/bench-summary.py "$out"
