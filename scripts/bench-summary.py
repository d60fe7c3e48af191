#!/usr/bin/env python3
"""Summarises load-tool JSON reports as Markdown: medians over repeated runs.

    python3 scripts/bench-summary.py target/load-reports/matrix

Runs named <group>-<n> (e.g. race-256-1, race-256-2) are grouped; every
figure is the median over the group's runs, ratios included (each ratio is
first taken within one run, on one machine, then the median is reported).
"""
import json
import pathlib
import re
import statistics
import sys


def load(root):
    groups = {}
    for path in sorted(pathlib.Path(root).glob("*/*.json")):
        run = path.parent.name
        group = re.sub(r"-\d+$", "", run)
        groups.setdefault(group, []).append(json.loads(path.read_text()))
    return groups


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def mix(phases):
    """The median share of each outcome of the phase's registrations."""
    outcomes = [p.get("outcomes") for p in phases if p.get("outcomes")]
    if not outcomes:
        return "-"
    def share(key):
        return med([100.0 * o[key] / max(1, sum(o.values())) for o in outcomes])
    return " / ".join(f"{share(k):.1f}%" for k in ("enrolled", "waitlisted", "full", "other"))


def main(root):
    groups = load(root)
    print("| run | n | phase | conns | req/s | p50 ms | p95 ms | p99 ms | max ms | errors | registrations: enrolled / waitlisted / full / other |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for group, runs in groups.items():
        names = [p["name"] for p in runs[0]["phases"]]
        for name in names:
            phases = [next(p for p in r["phases"] if p["name"] == name) for r in runs]
            errors = sum(sum(n for _, n in p["errors"]) for p in phases)
            print(
                f"| {group} | {len(runs)} | {name} | {phases[0]['connections']} "
                f"| {med([p['throughput'] for p in phases]):.0f} "
                f"| {med([p['latency']['p50_ms'] for p in phases]):.2f} "
                f"| {med([p['latency']['p95_ms'] for p in phases]):.2f} "
                f"| {med([p['latency']['p99_ms'] for p in phases]):.2f} "
                f"| {med([p['latency']['max_ms'] for p in phases]):.2f} | {errors} | {mix(phases)} |"
            )
    print()
    print("| run | ratio | median | target | met (runs) | audit | drain s | RSS peak / end MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for group, runs in groups.items():
        audit = "clean" if all(all(c["passed"] for c in r["audit"]) for r in runs) else "FAILED"
        drain = med([r["drain_s"] for r in runs])
        rss = f"{med([r['rss_peak_mib'] for r in runs]):.1f} / {med([r['rss_end_mib'] for r in runs]):.1f}"
        for i, ratio in enumerate(runs[0]["ratios"]):
            values = [r["ratios"][i]["value"] for r in runs if i < len(r["ratios"])]
            met = sum(1 for r in runs if i < len(r["ratios"]) and r["ratios"][i]["met"])
            name = re.sub(r"\(\d[^)]*\)", "", ratio["name"]).strip()
            print(f"| {group} | {name} | {med(values):.3f} | {ratio['target']} | {met}/{len(runs)} | {audit} | {drain:.2f} | {rss} |")
    soak = groups.get("peak-soak")
    if soak:
        samples = [s for s in soak[0]["samples"] if s["phase"] == "peak" and s["rss_mib"] > 0]
        if samples:
            n = len(samples)
            first = statistics.mean(s["rss_mib"] for s in samples[: max(1, n // 10)])
            last = statistics.mean(s["rss_mib"] for s in samples[-max(1, n // 10):])
            print()
            print(f"Soak: server RSS {first:.1f} MiB over the first tenth, {last:.1f} MiB over the last tenth "
                  f"({(last - first) / first * 100:+.1f}%), {n} samples.")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/load-reports/matrix")
