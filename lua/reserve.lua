-- reserve: enroll a student in a section, or waitlist them, or refuse.
-- Every check precedes the request's first write, so a refusal changes
-- nothing of the student's (lapsed offers, below, are the section's).
--
-- KEYS[1] meta      hash: capacity, waitlist_limit, active (1/0),
--                   reg_start, reg_end (unix ms), loaded (1)
-- KEYS[2] seats     string: free seats
-- KEYS[3] enrolled  set of student ids
-- KEYS[4] waitlist  sorted set: student id, score = arrival sequence
-- KEYS[5] seq       string: the section's last event sequence
-- KEYS[6] outbox    stream: one entry per event, id = "<seq>-0"
-- KEYS[7] reverted  hash: student id -> reason of an undone registration
--                   (not used here: drop.lua clears it; kept so every
--                   section script takes the same keys)
-- KEYS[8] since     hash: enrolled student id -> sequence of the event that
--                   gave them their seat (enroll or promote): an undo
--                   (compensate.lua) removes only that incarnation
-- KEYS[9] fence     hash: student id -> highest claim stamp judged
-- KEYS[10] offers   hash: student id -> deadline of the seat held for them
--                   (lua/lib/seat.lua: the section's waitlist mode `offer`)
-- ARGV[1] student id
-- ARGV[2] now (unix ms, the calling instance's clock): the events' `at`
-- ARGV[3] (optional) the deadline of the student's claim (lua/claim.lua),
--         unix ms by Redis's clock: past it nothing is decided, so a claim
--         judged later from this section is judged on its final state
-- ARGV[4] (with ARGV[3]) the claim's stamp: refused if lua/judge.lua fenced
--         it (KEYS[9])
--
-- The window is judged by Redis's own clock (TIME), not by ARGV[2]: every
-- instance then opens and closes registration at the same instant, however
-- far their clocks drift apart. Redis 7 replicates a script's effects, not
-- the script, so reading TIME is allowed before a write. The events keep
-- ARGV[2] as their `at`, like every other section script's events: it says
-- when the request was handled, as the instance that answered saw it.
--
-- In offer mode (lua/lib/seat.lua) the script first lapses the offers that
-- are due (their unwait and offer events precede the request's own), and
-- a register from a student holding an offer accepts it: the held seat is
-- theirs (a promote event). An offer is the registrar's promise until its
-- deadline, so it can be accepted after the registration window closed;
-- in an inactive section it cannot, and the answer is the student's
-- standing (already_waitlisted): they keep their place and the offer. A
-- claim past its deadline is refused as for anyone (claim_expired).
--
-- Returns {code, events, position}; events as lua/lib/emit.lua describes:
--   {"not_loaded", {}}                   section state absent: load it, then retry
--   {"already_enrolled", {}}
--   {"already_waitlisted", {}, pos, offers}
--                                        pos = live position (1-based);
--                                        offers '1' in offer mode, else '0'
--   {"inactive", {}}                     section or semester inactive
--   {"window_closed", {}}                Redis TIME outside [reg_start, reg_end)
--   {"claim_expired", {}}                Redis TIME at or past ARGV[3], or
--                                        the claim was fenced (judged)
--   {"enrolled", {enroll}}              (or {promote}: an offer accepted)
--   {"waitlisted", {waitlist}, pos, offers}
--   {"full", {}}                         no seat and the waitlist is at its limit
-- Each redis.call costs about a microsecond of Lua overhead on top of the
-- command, so the script makes as few as it can: one HMGET both proves the
-- section is loaded and reads its settings.
local student, now = ARGV[1], tonumber(ARGV[2])
local meta = redis.call('HMGET', KEYS[1], 'active', 'reg_start', 'reg_end', 'waitlist_limit',
  'wl_mode', 'offer_ttl', 'offer_due')
if not meta[1] then
  return {'not_loaded', events}
end
local clock = nil
local S = nil
-- Told with every waitlist answer: '1' when a freed seat is offered here
-- (the place turns into a seat only by the student's registration).
local offers = '0'
if meta[5] == 'offer' then
  offers = '1'
  clock = redis_ms()
  S = waitlist_settings({since = KEYS[8], offers = KEYS[10]}, meta[5], meta[6])
  if meta[7] and tonumber(meta[7]) <= clock then
    lapse_offers(S, now, clock)
  end
end
if redis.call('SISMEMBER', KEYS[3], student) == 1 then
  return {'already_enrolled', events}
end
local rank = redis.call('ZRANK', KEYS[4], student)
local accept = false
if rank then
  if not S or redis.call('HEXISTS', KEYS[10], student) == 0 then
    return {'already_waitlisted', events, rank + 1, offers}
  end
  accept = true
end
if meta[1] ~= '1' then
  if accept then
    -- Not now: the student keeps their place and their offer (until its
    -- deadline), and is told where they stand.
    return {'already_waitlisted', events, rank + 1, offers}
  end
  return {'inactive', events}
end
clock = clock or redis_ms()
if not accept and (clock < tonumber(meta[2]) or clock >= tonumber(meta[3])) then
  return {'window_closed', events}
end
if ARGV[3] then
  if clock >= tonumber(ARGV[3])
    or tonumber(redis.call('HGET', KEYS[9], student) or '0') >= tonumber(ARGV[4]) then
    return {'claim_expired', events}
  end
end
if accept then
  -- The seat was held for this student: no counter moves.
  redis.call('HDEL', KEYS[10], student)
  redis.call('ZREM', KEYS[4], student)
  redis.call('SADD', KEYS[3], student)
  redis.call('HSET', KEYS[8], student, emit('promote', student, now))
  return {'enrolled', events}
end
local seats = tonumber(redis.call('GET', KEYS[2]) or '0')
if seats > 0 then
  -- Writes of the request's own start here.
  redis.call('DECR', KEYS[2])
  redis.call('SADD', KEYS[3], student)
  redis.call('HSET', KEYS[8], student, emit('enroll', student, now))
  return {'enrolled', events}
end
local waiting = redis.call('ZCARD', KEYS[4])
if waiting >= tonumber(meta[4]) then
  return {'full', events}
end
-- The score is the event's sequence: arrival order.
local seq = emit('waitlist', student, now)
redis.call('ZADD', KEYS[4], seq, student)
return {'waitlisted', events, waiting + 1, offers}
