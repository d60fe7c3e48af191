#!/usr/bin/env bash
# Where a script's Redis time goes (issue 13, BENCHMARKS.md "What one
# claim costs in Redis"): runs lua/claim.lua, and copies of it cut short at
# each stage, through redis-benchmark against 100,000 students' access
# records with random keys (as on registration day, where every request
# touches another student), and prints Redis's own time per call
# (INFO commandstats, before and after) for each.
#
#   bash scripts/lua-cost.sh            # Redis on 127.0.0.1:6379
#   REDIS_HOST=h REDIS_PORT=p bash scripts/lua-cost.sh
#
# Every key it writes is under a namespace of its own, deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

host=${REDIS_HOST:-127.0.0.1}
port=${REDIS_PORT:-6379}
calls=${CALLS:-50000}
students=100000
ns="luacost$$"
cli() { redis-cli -h "$host" -p "$port" "$@"; }
work=$(mktemp -d)
cleanup() {
  cli eval "local n = 0
    for _, k in ipairs(redis.call('KEYS', ARGV[1] .. ':*')) do redis.call('DEL', k); n = n + 1 end
    return n" 0 "$ns" >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Access records as lua/access_set.lua leaves them (no rule facts beyond
# "schedule known empty"), one per student.
cli eval "for i = 0, tonumber(ARGV[2]) - 1 do
    redis.call('HSET', string.format('%s:{u:%012d}:access', ARGV[1], i),
      'r', '1', 'sc', '1', 'ep', '0', 'gone', '0', 'hold', '', 'v', '1')
  end
  return 1" 0 "$ns" "$students" >/dev/null

# Redis's time in EVALSHA, µs per call, over $calls calls of script $1 with
# the arguments of a one-section registration (a real one, from MONITOR).
evalsha_usec() {
  local sha before after
  sha=$(cli script load "$(cat "$1")")
  before=$(cli info commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2/p')
  redis-benchmark -h "$host" -p "$port" -q -n "$calls" -c 8 -r "$students" \
    evalsha "$sha" 3 "$ns:{u:__rand_int__}:access" "$ns:{u:__rand_int__}:done" "$ns:{u:__rand_int__}:sched" \
    01a23c90-9646-75d3-ad68-bc67e02399c5 "" "" 10000 5000 1 \
    01a23c90-9654-76e4-8935-fc85c8b3a941 01a23c90-9654-76e4-8935-fc84cc068450 3 "" 0 "" "" \
    >/dev/null 2>&1
  after=$(cli info commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2/p')
  read -r c0 u0 <<<"${before:-0 0}"
  read -r c1 u1 <<<"$after"
  awk -v c="$((c1 - c0))" -v u="$((u1 - u0))" 'BEGIN { printf "%.2f", u / c }'
}

# claim.lua returning early just before the line matching $2.
cut_before() {
  awk -v at="$2" 'index($0, at) == 1 && !done { print "do return 1 end"; done = 1 } { print }' lua/claim.lua >"$1"
}
echo 'return 1' >"$work/empty.lua"
cut_before "$work/own.lua" 'local time = redis.call'
cut_before "$work/schedule.lua" 'local grace = tonumber(ARGV[5])'
cut_before "$work/rules.lua" 'local results, accepted ='
cut_before "$work/decided.lua" 'if verify and #suspects'

printf '%-58s %10s\n' "lua/claim.lua up to" "µs/call"
printf '%-58s %10s\n' "nothing (return 1: the cost of any EVALSHA)" "$(evalsha_usec "$work/empty.lua")"
printf '%-58s %10s\n' "the access record read (HMGET)" "$(evalsha_usec "$work/own.lua")"
printf '%-58s %10s\n' "+ the clock and the schedule read (TIME, HGETALL)" "$(evalsha_usec "$work/schedule.lua")"
printf '%-58s %10s\n' "+ the schedule parsed (helpers, entries)" "$(evalsha_usec "$work/rules.lua")"
printf '%-58s %10s\n' "+ every rule checked for the section" "$(evalsha_usec "$work/decided.lua")"
printf '%-58s %10s\n' "+ the claim written (HSET) and answered: all of it" "$(evalsha_usec lua/claim.lua)"
