-- seat: how a section passes on a freed seat. Prepended after emit.lua to
-- every script that frees or holds seats (src/seats/scripts.rs).
--
-- A section's waitlist mode (meta `wl_mode`) decides what a freed seat
-- does while students wait:
--   auto  (absent or 'auto') the waitlist head is enrolled at once (promote);
--   offer the seat is held for the first waitlisted student without an
--         offer until Redis's clock + meta `offer_ttl` (ms): an `offer`
--         event with its deadline (`until`). The student stays on the
--         waitlist (same position) until they accept (reserve.lua), decline
--         (drop.lua) or let it lapse (`lapse_offers`: an `unwait` event
--         with `lapsed` = the deadline, and the seat passes on).
-- An offered seat is never free: free + enrolled + offered = capacity.
-- Meta `offer_due` is a lower bound of the earliest deadline, so a script
-- skips the offers hash while nothing can be due.
--
-- S is a table of the calling script's keys and the section's settings:
--   {since = key, offers = key, mode = 'offer' | other, ttl = ms}
-- and KEYS[1..6] are the core keys (reserve.lua).

local function redis_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function note_due(deadline)
  local due = tonumber(redis.call('HGET', KEYS[1], 'offer_due') or '')
  if not due or deadline < due then
    redis.call('HSET', KEYS[1], 'offer_due', deadline)
  end
end

-- Gives one freed seat to whoever waits for it; false when nobody does
-- (the caller returns it to the pool).
local function give_seat(S, now, clock)
  if S.mode ~= 'offer' then
    local head = redis.call('ZRANGE', KEYS[4], 0, 0)[1]
    if not head then
      return false
    end
    redis.call('ZREM', KEYS[4], head)
    redis.call('SADD', KEYS[3], head)
    redis.call('HSET', S.since, head, emit('promote', head, now))
    return true
  end
  -- Offers go in waitlist order, so the offered students are (almost
  -- always) the first in line: look just past them, then further on.
  local from, batch = 0, redis.call('HLEN', S.offers) + 1
  while true do
    local line = redis.call('ZRANGE', KEYS[4], from, from + batch - 1)
    if #line == 0 then
      return false
    end
    for _, student in ipairs(line) do
      if redis.call('HEXISTS', S.offers, student) == 0 then
        local deadline = clock + S.ttl
        redis.call('HSET', S.offers, student, deadline)
        note_due(deadline)
        emit('offer', student, now, 'until', deadline)
        return true
      end
    end
    from, batch = from + batch, 100
  end
end

-- Lapses every offer due at `clock`, passing each seat on.
local function lapse_offers(S, now, clock)
  local due = tonumber(redis.call('HGET', KEYS[1], 'offer_due') or '')
  if not due or due > clock then
    return
  end
  local flat = redis.call('HGETALL', S.offers)
  local next_due = nil
  for i = 1, #flat, 2 do
    local deadline = tonumber(flat[i + 1])
    if deadline <= clock then
      redis.call('HDEL', S.offers, flat[i])
      redis.call('ZREM', KEYS[4], flat[i])
      emit('unwait', flat[i], now, 'lapsed', flat[i + 1])
    elseif not next_due or deadline < next_due then
      next_due = deadline
    end
  end
  if next_due then
    redis.call('HSET', KEYS[1], 'offer_due', next_due)
  else
    redis.call('HDEL', KEYS[1], 'offer_due')
  end
  for i = 1, #flat, 2 do
    if tonumber(flat[i + 1]) <= clock and not give_seat(S, now, clock) then
      redis.call('INCR', KEYS[2])
    end
  end
end

-- `student` left the waitlist: the seat offered to them, if any, passes on.
local function pass_offer(S, student, now, clock)
  if redis.call('HDEL', S.offers, student) == 1 and not give_seat(S, now, clock) then
    redis.call('INCR', KEYS[2])
  end
end

-- The section's waitlist settings from meta, into S.
local function waitlist_settings(S, mode, ttl)
  S.mode = mode
  S.ttl = tonumber(ttl or '86400000')
  return S
end
