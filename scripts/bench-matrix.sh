#!/usr/bin/env bash
# Runs the benchmark matrix behind BENCHMARKS.md and prints its summary:
#   bash scripts/bench-matrix.sh            (about 40 minutes; SOAK_SECONDS=600)
# Each run writes JSON and HTML under target/load-reports/matrix/<run>/.
# Ratios are taken within one run; the summary reports medians of the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
out=target/load-reports/matrix
rm -rf "$out"
cargo bench --no-run
run() { local name=$1; shift; cargo bench --bench load -- --out "$out/$name" "$@"; }
for i in 1 2 3; do
    # Every answer a new enrolment, persisted: 100,000 students over 30 sections.
    run "enrol-64-$i" --scenario enrol --preset load --connections 64 --students 100000
    run "enrol-256-$i" --scenario enrol --preset load --connections 256 --students 100000
done
for i in 1 2 3; do
    # The rejection path: 50,000 students (not the default 10,000) so the race lasts seconds, not a blink.
    run "race-256-$i" --scenario race --preset load --connections 256 --students 50000
    run "race-64-$i" --scenario race --preset load --connections 64 --students 50000
done
for i in 1 2 3; do
    # A login storm, then 10,000 sessions over a Zipf-popular 250-section catalogue.
    run "registration-day-$i" --scenario registration-day --preset load
    # Pages of 100 sections of a 20,000-section semester, picked uniformly.
    run "catalogue-$i" --scenario catalogue --preset load --duration 10
done
for i in 1 2 3; do
    run "peak-load-$i" --scenario peak --preset load
done
run reserve-queue-load --scenario reserve-queue --preset load
run drop-promotion-load --scenario drop-promotion --preset load
run peak-stress --scenario peak --preset stress
run peak-spike --scenario peak --preset spike
run peak-soak --scenario peak --preset soak --duration "${SOAK_SECONDS:-600}"
python3 scripts/bench-summary.py "$out"
