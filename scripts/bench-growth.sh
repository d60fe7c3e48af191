#!/usr/bin/env bash
# Memory and cost growth (issue 13, item 5): the enrol scenario on 10,000,
# 100,000 and 1,000,000 seeded students, over 200 and over 20,000 sections,
# and a table of what each start and each registration cost:
#   bash scripts/bench-growth.sh          (about 15 minutes)
# Every student registers once (one new enrolment each, persisted), so the
# growth per registration is what a registration leaves behind once
# persistence drained: its rows in PostgreSQL, its keys in Redis. The
# ceilings are skipped (--no-ceilings); the throughput is the phase's own.
# Reports under target/load-reports/growth/<run>/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
out=target/load-reports/growth
rm -rf "$out"
cargo bench --no-run
for students in 10000 100000 1000000; do
    for sections in 200 20000; do
        cargo bench --bench load -- --scenario enrol --preset load --no-ceilings \
            --students "$students" --sections "$sections" --out "$out/$students-$sections"
    done
done
python3 - "$out" <<'PY'
import json, pathlib, sys
rows = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("*/*.json")):
    r = json.loads(path.read_text())
    m = {x["name"].split(" (")[0].split(":")[0]: x["value"] for x in r["measures"]}
    phase = next(p for p in r["phases"] if p["name"] == "enrol")
    o = phase["outcomes"]
    students, sections = (int(v) for v in path.parent.name.split("-"))
    rows.append((students, sections, m, phase, o, r))
rows.sort(key=lambda x: (x[0], x[1]))
print("| students | sections | warm-up s | RSS ready / peak / end MiB | Redis B per section | Redis B per registration (section keys) | Redis B per student | PostgreSQL B per registration | enrolments/s | p99 ms | mix (enrolled of answers) | audit |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for students, sections, m, phase, o, r in rows:
    total = sum(o.values())
    audit = "clean" if all(c["passed"] for c in r["audit"]) else "FAILED"
    get = lambda k: f"{m[k]:.0f}" if k in m else "-"
    print(f"| {students:,} | {sections:,} | {m['warm-up to ready']:.1f} "
          f"| {m['server RSS once ready']:.0f} / {r['rss_peak_mib']:.0f} / {r['rss_end_mib']:.0f} "
          f"| {get('Redis bytes per section once ready')} "
          f"| {get('Redis bytes per registration in its section' + chr(39) + 's keys')} "
          f"| {get('Redis bytes per student')} "
          f"| {get('PostgreSQL database growth per registration')} "
          f"| {phase['throughput']:.0f} | {phase['latency']['p99_ms']:.1f} "
          f"| {100 * o['enrolled'] / max(1, total):.1f}% of {total:,} | {audit} |")
PY
