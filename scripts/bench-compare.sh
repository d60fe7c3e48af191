#!/usr/bin/env bash
# Compares the load tool's throughput of an earlier revision with the working
# tree's, in alternating runs on the same machine (the machine is shared and
# noisy: only ratios within one session mean anything), each with and
# without the server's rate limits.
#
#   bash scripts/bench-compare.sh <base-revision> [runs] [load-tool arguments...]
#
# Default load arguments: every answer a new, persisted enrolment (one
# section with a seat for each of 40,000 students, 64 connections). The
# base revision is checked out in target/compare/<rev> (its build reuses
# this tree's target directory contents the first time).
set -euo pipefail
base=${1:?usage: bench-compare.sh <base-revision> [runs] [load arguments...]}
runs=${2:-3}
shift $(( $# >= 2 ? 2 : 1 ))
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(--scenario race --preset load --students 40000 --seats 40000 --waitlist 0 --no-ceilings)
fi
root=$(git rev-parse --show-toplevel)
rev=$(git -C "$root" rev-parse --short "$base")
dir="$root/target/compare/$rev"
if [ ! -d "$dir" ]; then
  git -C "$root" worktree add --detach "$dir" "$rev" >/dev/null
  mkdir -p "$dir/target"
  cp -r --reflink=auto "$root/target/release" "$dir/target/" 2>/dev/null || true
fi
# Both builds first, so no run waits for a compiler.
(cd "$dir" && cargo bench --bench load --no-run >/dev/null 2>&1)
(cd "$root" && cargo bench --bench load --no-run >/dev/null 2>&1)
echo "run  tree  limits  phase conns target dur_s requests req/s p50 p95 p99 max errors"
for run in $(seq "$runs"); do
  for limits in off on; do
    extra=()
    [ "$limits" = on ] && extra=(--rate-limits)
    for tree in "$dir" "$root"; do
      name=$([ "$tree" = "$root" ] && echo head || echo "$rev")
      line=$(cd "$tree" && cargo bench --bench load -- "${args[@]}" "${extra[@]}" 2>&1 \
        | grep -E '^  [a-z-]+ +[0-9]+ ' | head -1)
      echo "$run  $name  $limits $line"
    done
  done
done
echo "remove the base checkout with: git worktree remove --force $dir"
