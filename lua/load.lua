-- load: build a section's state from PostgreSQL rows, only if it is absent.
-- Two instances warming the same section cannot race: the second finds
-- KEYS[1] present and changes nothing.
--
-- KEYS[1] meta, KEYS[2] seats, KEYS[3] enrolled, KEYS[4] waitlist,
-- KEYS[5] seq, KEYS[6] outbox (as in reserve.lua)
-- ARGV[1] capacity
-- ARGV[2] waitlist limit
-- ARGV[3] active "1"/"0" (section and semester both active)
-- ARGV[4] registration start (unix ms)
-- ARGV[5] registration end (unix ms)
-- ARGV[6] last event sequence PostgreSQL applied
-- ARGV[7] number of enrolled students n, then ARGV[8 .. 7+n] their ids,
--         then the waitlisted ids in position order
--
-- Returns 1 when loaded, 0 when the state was already there, -1 when the
-- meta hash is gone but events still wait in the outbox (a partial state
-- that needs an operator: see `registrar reconcile`).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if redis.call('XLEN', KEYS[6]) > 0 then
  return -1
end
-- An empty stream remembers its last id; start the sequence afresh.
redis.call('DEL', KEYS[6])
local n = tonumber(ARGV[7])
local first_waiting = 8 + n
local waiting = #ARGV - first_waiting + 1
redis.call('DEL', KEYS[3], KEYS[4])
-- unpack() is limited by the Lua stack: add members in chunks.
local chunk = 1000
for i = 8, 7 + n, chunk do
  redis.call('SADD', KEYS[3], unpack(ARGV, i, math.min(i + chunk - 1, 7 + n)))
end
-- Scores -waiting .. -1 keep PostgreSQL's order and sort before every later
-- arrival, whose score is its (positive) sequence.
for i = first_waiting, #ARGV do
  redis.call('ZADD', KEYS[4], i - first_waiting - waiting, ARGV[i])
end
redis.call('SET', KEYS[2], math.max(tonumber(ARGV[1]) - n, 0))
redis.call('SET', KEYS[5], ARGV[6])
redis.call('HSET', KEYS[1], 'capacity', ARGV[1], 'waitlist_limit', ARGV[2], 'active', ARGV[3],
  'reg_start', ARGV[4], 'reg_end', ARGV[5], 'loaded', 1)
return 1
