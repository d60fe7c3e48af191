-- access_set: store a student's access record as PostgreSQL has it, unless
-- a newer one is already here. Versions only grow (students.access_version),
-- so writers that race (a request that loaded the record, the admin API
-- after a change, the NOTIFY listener) always leave the newest.
--
-- The record carries the student's own facts the registration rules read
-- (sql/0009_registration_rules.sql; lua/claim.lua): their priority group
-- and credit limit per semester, their permits, and, in KEYS[2], the
-- courses they completed. Field r = 1 says a record has them (a record
-- written before the rules existed has not: the claim reloads it).
--
-- A schedule (lua/claim.lua) is started here when the student has none,
-- from the places PostgreSQL has (ARGV after the completed courses): so a
-- student's first registration needs no PostgreSQL round trip. With no
-- places, field sc = 1 says so instead (the claim starts the schedule).
--
-- KEYS[1] the student's access record; KEYS[2] their completed courses (set);
-- KEYS[3] their schedule; KEYS[4] their index of sections (the sections
-- they registered in through the service)
-- ARGV[1] version; ARGV[2] token epoch; ARGV[3] '1' if the account is gone,
-- '2' if it may not register (enrollment_status not active), else '0';
-- ARGV[4] a registration-blocking hold or ''; ARGV[5] lifetime in ms, 0 for
-- no expiry (a live account's copy is kept current, not aged out);
-- ARGV[6] n, the number of fact fields; ARGV[7 .. 6+2n] field, value pairs:
-- g:<semester> group code, c:<semester> credit limit, p:<section> rules a
-- permit waives (comma-separated); then m, the number of completed course
-- ids, and the ids; then '1' to start a schedule if there is none (or '0'),
-- and its entries: section id, "h|semester|course|credits|meetings|0|0"
--
-- Returns 1 if stored, 0 if a record at least as new was kept, 2 if stored
-- and the student lost the right to register with it (a hold or a status
-- other than active, where the record it replaced had neither): the caller
-- takes them off their waitlists
-- (README "Registration rules"). A deleted account has no places to leave
-- (deletion refuses an account with records).
local before = redis.call('HMGET', KEYS[1], 'v', 'gone', 'hold', 'out')
local current = tonumber(before[1])
local version = tonumber(ARGV[1])
if current and current >= version then
  return 0
end
local gone, out = '0', '0'
if ARGV[3] == '1' then
  gone = '1'
elseif ARGV[3] == '2' then
  out = '1'
end
local lost = current and before[2] ~= '1' and before[4] ~= '1' and (before[3] or '') == ''
  and gone == '0' and (out == '1' or ARGV[4] ~= '')
redis.call('DEL', KEYS[1], KEYS[2])
local fields = {'v', ARGV[1], 'ep', ARGV[2], 'gone', gone, 'out', out, 'hold', ARGV[4], 'r', '1'}
local n = tonumber(ARGV[6] or '0')
for i = 7, 6 + 2 * n do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
local m = tonumber(ARGV[7 + 2 * n] or '0')
local first, last = 8 + 2 * n, 7 + 2 * n + m
-- unpack spreads a bounded number of values: add in chunks.
for i = first, last, 1000 do
  redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + 999, last)))
end
if ARGV[5] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  if m > 0 then
    redis.call('PEXPIRE', KEYS[2], ARGV[5])
  end
end
local start = ARGV[last + 1] == '1' and KEYS[3] and redis.call('HEXISTS', KEYS[3], '#') == 0
if start and KEYS[4] then
  -- A section in the index that PostgreSQL's places lack (taken with the
  -- rules off and not yet persisted, say): the places are not the whole
  -- truth, so the first claim rebuilds the schedule from both instead.
  local places = {}
  for i = last + 2, #ARGV, 2 do
    places[ARGV[i]] = true
  end
  for _, section in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    if not places[section] then
      start = false
      break
    end
  end
end
if start then
  if #ARGV == last + 1 then
    -- No places: field sc tells the claim to start an empty schedule
    -- itself, which costs the many students who never register nothing.
    redis.call('HSET', KEYS[1], 'sc', '1')
  else
    -- Stamps start at Redis's clock, as in lua/schedule_init.lua.
    local time = redis.call('TIME')
    local entries = {'#', tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)}
    for i = last + 2, #ARGV do
      entries[#entries + 1] = ARGV[i]
    end
    redis.call('HSET', KEYS[3], unpack(entries))
  end
end
if lost then
  return 2
end
return 1
