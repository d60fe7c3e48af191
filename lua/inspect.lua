-- inspect: read everything the section scripts decide from, in one atomic
-- step, so reconcile sees one point of the section's history: the sequence
-- and outbox length tell which point, the rest is the state at that point.
-- Reads only; every key is the section's (one hash slot).
--
-- KEYS[1] meta, KEYS[2] seats, KEYS[3] enrolled, KEYS[4] waitlist,
-- KEYS[5] seq, KEYS[6] outbox (as in reserve.lua), KEYS[7] offers
-- No ARGV.
--
-- Returns {code, seq, outbox, ...}; seq is 0 where the key is absent,
-- outbox the number of entries waiting:
--   {"absent", seq, outbox}          no meta hash: the section has no state
--   {"present", seq, outbox, capacity, waitlist_limit, active, reg_start,
--    reg_end, seats, enrolled, waitlist, wl_mode, offer_ttl, offers}
--                                    meta fields as stored (nil where a
--                                    field is missing), seats the free-seat
--                                    counter (nil where missing), enrolled
--                                    the roster's ids, waitlist the ids in
--                                    order (head first), offers the
--                                    offers hash flat (student, deadline)
local seq = tonumber(redis.call('GET', KEYS[5]) or '0')
local outbox = redis.call('XLEN', KEYS[6])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'absent', seq, outbox}
end
local meta = redis.call('HMGET', KEYS[1], 'capacity', 'waitlist_limit', 'active', 'reg_start',
  'reg_end', 'wl_mode', 'offer_ttl')
return {'present', seq, outbox, meta[1], meta[2], meta[3], meta[4], meta[5],
  redis.call('GET', KEYS[2]), redis.call('SMEMBERS', KEYS[3]),
  redis.call('ZRANGE', KEYS[4], 0, -1), meta[6], meta[7], redis.call('HGETALL', KEYS[7])}
