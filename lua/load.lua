-- load: build a section's state from PostgreSQL rows. Four modes decide
-- when it may replace what Redis holds; each decision is made inside the
-- script, so two instances loading the same section cannot race (the second
-- finds the work done and changes nothing), and no event a script appended
-- after the caller read PostgreSQL can be erased.
--
-- KEYS[1] meta, KEYS[2] seats, KEYS[3] enrolled, KEYS[4] waitlist,
-- KEYS[5] seq, KEYS[6] outbox (as in reserve.lua), KEYS[7] offers
-- (KEYS[10] of reserve.lua)
-- ARGV[1] capacity
-- ARGV[2] waitlist limit
-- ARGV[3] the section's own active flag "1"/"0" (sections.is_active)
-- ARGV[4] its semester's active flag "1"/"0" (semesters.is_active)
-- ARGV[5] registration start (unix ms)
-- ARGV[6] registration end (unix ms)
-- ARGV[7] last event sequence PostgreSQL applied (P)
-- ARGV[8] mode:
--   "absent" load only when the section has no state (warm-up, on demand);
--   "behind" also replace a state whose sequence is below P: Redis lost
--            events PostgreSQL already has (restarted from an older AOF or
--            snapshot), so every outbox entry (all <= its sequence < P) is
--            already applied and new events would reuse applied sequences;
--   "force"  replace the state whatever its sequence, provided the outbox
--            holds nothing beyond P (a worker found an event that contradicts
--            PostgreSQL; what is beyond P must drain first);
--   "exact"  replace (or build) the state only while the section's sequence
--            is exactly P (at most P when there is no state) and its outbox is
--            empty: the caller compared Redis with PostgreSQL at that point,
--            and a registration that slipped in since must not be erased
--            (reconcile --fix).
-- ARGV[9] waitlist mode "auto" | "offer"
-- ARGV[10] offer lifetime (ms)
-- ARGV[11] number of open offers m, then m pairs (student id, deadline ms
--         by Redis's clock); each offered student is also in the waitlist
-- then the number of enrolled students n, their n ids, then the waitlisted
--         ids in position order
-- Free seats = capacity - enrolled - offers (lua/lib/seat.lua).
--
-- The meta hash gets `active` = both flags (what reserve.lua enforces),
-- and each flag on its own (`section_active`, `semester_active`) so that
-- resize.lua can change the section's flag without forgetting the
-- semester's.
--
-- Returns {code, dropped}: code 1 loaded (or replaced), 0 nothing to do
-- (present and not behind), -1 refused: the meta hash is gone but events
-- still wait in the outbox (a partial state that needs an operator: see
-- `registrar reconcile`), or in "force" mode the outbox holds events
-- beyond P (drain them, then retry), or in "exact" mode the sequence is not
-- P or the outbox is not empty (compare again). dropped = outbox entries
-- discarded by a replacement (already in PostgreSQL, or contradicting it).
local applied = tonumber(ARGV[7])
local mode = ARGV[8]
local dropped = 0
local seq = tonumber(redis.call('GET', KEYS[5]) or '0')
if mode == 'exact' and redis.call('XLEN', KEYS[6]) > 0 then
  return {-1, 0}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if mode == 'absent' then
    return {0, 0}
  end
  if mode == 'behind' and seq >= applied then
    return {0, 0}
  end
  if mode == 'exact' and seq ~= applied then
    return {-1, 0}
  end
  if mode == 'force' then
    local newest = redis.call('XREVRANGE', KEYS[6], '+', '-', 'COUNT', 1)[1]
    if newest and tonumber(string.match(newest[1], '^(%d+)')) > applied then
      return {-1, 0}
    end
  end
  dropped = redis.call('XLEN', KEYS[6])
elseif redis.call('XLEN', KEYS[6]) > 0 then
  return {-1, 0}
elseif mode == 'exact' and seq > applied then
  return {-1, 0}
end
-- Also forgets the stream's last id, so the sequence can start again at P.
redis.call('DEL', KEYS[6])
local m = tonumber(ARGV[11])
local base = 12 + 2 * m
local n = tonumber(ARGV[base])
local first_enrolled = base + 1
local first_waiting = first_enrolled + n
local waiting = #ARGV - first_waiting + 1
redis.call('DEL', KEYS[3], KEYS[4], KEYS[7])
-- unpack() is limited by the Lua stack: add members in chunks.
local chunk = 1000
for i = first_enrolled, first_waiting - 1, chunk do
  redis.call('SADD', KEYS[3], unpack(ARGV, i, math.min(i + chunk - 1, first_waiting - 1)))
end
-- Scores -waiting .. -1 keep PostgreSQL's order and sort before every later
-- arrival, whose score is its (positive) sequence.
for i = first_waiting, #ARGV do
  redis.call('ZADD', KEYS[4], i - first_waiting - waiting, ARGV[i])
end
local due = nil
for i = 12, base - 1, 2 do
  redis.call('HSET', KEYS[7], ARGV[i], ARGV[i + 1])
  if not due or tonumber(ARGV[i + 1]) < due then
    due = tonumber(ARGV[i + 1])
  end
end
local active = '0'
if ARGV[3] == '1' and ARGV[4] == '1' then
  active = '1'
end
redis.call('SET', KEYS[2], math.max(tonumber(ARGV[1]) - n - m, 0))
redis.call('SET', KEYS[5], ARGV[7])
redis.call('HDEL', KEYS[1], 'offer_due')
redis.call('HSET', KEYS[1], 'capacity', ARGV[1], 'waitlist_limit', ARGV[2], 'active', active,
  'section_active', ARGV[3], 'semester_active', ARGV[4],
  'reg_start', ARGV[5], 'reg_end', ARGV[6], 'loaded', 1, 'wl_mode', ARGV[9], 'offer_ttl', ARGV[10])
if due then
  redis.call('HSET', KEYS[1], 'offer_due', due)
end
return {1, dropped}
