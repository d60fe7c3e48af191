#!/usr/bin/env bash
# Where a real enrolment's CPU goes: a perf profile of the server process
# (every thread) while the load tool's `enrol` scenario runs (every answer a
# new enrolment, persisted), drawn as a flame graph.
#
#   bash scripts/profile-enrol.sh                 # target/profile/enrol.svg
#   STUDENTS=300000 PROFILE_SECONDS=8 bash scripts/profile-enrol.sh
#
# Writes under target/profile/: enrol.svg (the flame graph), enrol.folded
# (collapsed stacks), top.txt (the functions with the most samples, self
# time, and the share of time under each named cost), load.log and the
# load tool's reports. Needs perf (Debian: linux-perf) and inferno
# (`cargo install inferno`); runs as root or with perf_event_paranoid <= 1.
set -euo pipefail
cd "$(dirname "$0")/.."

STUDENTS=${STUDENTS:-300000}
PROFILE_SECONDS=${PROFILE_SECONDS:-5}
CONNECTIONS=${CONNECTIONS:-64}
out=target/profile
mkdir -p "$out"

command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)" >&2; exit 2; }
command -v inferno-collapse-perf >/dev/null || {
    echo "inferno is missing (cargo install inferno)" >&2; exit 2; }

cargo bench --bench load --no-run
cargo bench --bench load -- --scenario enrol --students "$STUDENTS" \
    --connections "$CONNECTIONS" --no-ceilings --out "$out/report" \
    >"$out/load.log" 2>&1 &
load=$!
trap 'kill $load 2>/dev/null || true' EXIT

# The load tool names the server's pid when the scenario phase starts
# (after seeding, warm-up and the access copies).
pid=
for _ in $(seq 1 1200); do
    pid=$(sed -n 's/^scenario phase starts (server pid \([0-9]*\))$/\1/p' "$out/load.log")
    [ -n "$pid" ] && break
    kill -0 $load 2>/dev/null || { cat "$out/load.log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$pid" ] || { echo "the scenario never started" >&2; exit 1; }

perf record -F 499 -g --call-graph dwarf,16384 -p "$pid" -o "$out/perf.data" \
    -- sleep "$PROFILE_SECONDS" 2>"$out/perf.log"
wait $load
trap - EXIT

perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf --kernel >"$out/enrol.folded"
inferno-flamegraph --title "registrar during enrol ($CONNECTIONS connections)" \
    <"$out/enrol.folded" >"$out/enrol.svg"
python3 scripts/profile-top.py "$out/enrol.folded" >"$out/top.txt"
grep -A30 '^Outcome mix' "$out/load.log" | head -6
cat "$out/top.txt"
echo "flame graph: $out/enrol.svg"
