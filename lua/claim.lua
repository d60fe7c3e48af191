-- claim: the student's half of a registration (SPEC §14). Checks every
-- student-scoped rule for the sections of one request against what the
-- student holds and has claimed this semester, and claims the sections that
-- pass, all in the student's slot: parallel requests of one student see each
-- other's claims, so no limit can be overshot. The sections' scripts decide
-- the seats afterwards (reserve.lua, which refuses a claim past its
-- deadline), and settle.lua turns each claim into a schedule entry or
-- releases it.
--
-- KEYS[1] access record (lua/access_set.lua), with the student's facts:
--         g:<semester> group, c:<semester> credit limit, p:<section> permits
-- KEYS[2] completed courses (set of course ids)
-- KEYS[3] schedule hash: '#' -> stamp counter; section id ->
--         "state|semester|course|credits|meetings|stamp|deadline", state
--         c (claimed, in flight), h (held: enrolled, or waitlisted where a
--         freed seat enrols the head at once) or w (waitlisted in a section
--         whose freed seats are offered, lua/lib/seat.lua: the place turns
--         into a seat only by a new claim, so its credits count only where
--         the semester counts waitlisted credits), meetings
--         "days:start:end,..." (days a bit set, minutes)
-- ARGV[1] semester id
-- ARGV[2] the semester's group opening times: "code=ms code=ms ..."
-- ARGV[3] the semester's default credit limit, '' for none
-- ARGV[4] claim lifetime (ms); ARGV[5] grace after a deadline before an
--         unsettled claim may be judged from its section (clock skew)
-- ARGV[6] '1': answer 'verify' instead of refusing on entries that may be
--         stale; '0': decide on what is here
-- ARGV[7] '1': the credit limit counts enrolled and waitlisted credits;
--         '0': enrolled only (w entries do not count; accepting an offer
--         claims its credits then)
-- ARGV[8 ..] per section, 7 values: id, course id, credits, meetings,
--         repeatable ('1'/'0'), prerequisites ("a,b;c": AND of ORs of
--         course ids), corequisites ("a,b")
--
-- Returns one of
--   {'not_loaded'}                 the access record lacks the facts (written
--                                  before the rules existed): load it again
--   {'no_schedule'}                no schedule (no '#' field) and no sc = 1
--                                  in the access record: rebuild it
--                                  (lua/schedule_init.lua), then ask again
--   {'verify', {section, stamp, ...}}
--                                  nothing claimed: these entries may be
--                                  stale (an unsettled claim past its
--                                  deadline, or a held entry a refusal rests
--                                  on); settle them from their sections,
--                                  then ask again with ARGV[6] = '0'
--   {'ok', stamp, deadline, {code, detail, ...}} per section, code one of
--     claimed                      detail ''
--     busy                         another request's claim is in flight;
--                                  detail: its stamp (lua/judge.lua)
--     not_your_time_yet            detail: when the student's group opens (ms)
--     prerequisite_missing         detail: missing course ids, comma-separated
--     already_in_course            detail: the other section
--     time_conflict                detail: the other section
--     credit_limit                 detail: "credits held|limit"
-- One read of each key: the access record's facts, then the schedule.
local FIRST = 8
local semester = ARGV[1]
local n = math.floor((#ARGV - FIRST + 1) / 7)
local wanted = {'r', 'sc', 'g:' .. semester, 'c:' .. semester}
for i = 0, n - 1 do
  wanted[#wanted + 1] = 'p:' .. ARGV[FIRST + i * 7]
end
local own = redis.call('HMGET', KEYS[1], unpack(wanted))
if not own[1] then
  return {'not_loaded'}
end
local time = redis.call('TIME')
local clock = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local flat = redis.call('HGETALL', KEYS[3])
local counter = nil
-- Set when this claim starts the student's schedule (below).
local started = false
for i = 1, #flat, 2 do
  if flat[i] == '#' then
    counter = tonumber(flat[i + 1])
    break
  end
end
if not counter then
  if own[2] ~= '1' then
    return {'no_schedule'}
  end
  -- The access record says PostgreSQL had no places for the student when
  -- it was copied: start their schedule empty (stamps from Redis's clock,
  -- as in lua/schedule_init.lua), written with the first claim below.
  counter = clock
  started = true
end
local semester = ARGV[1]
local grace = tonumber(ARGV[5])
local verify = ARGV[6] == '1'
local count_waitlisted = ARGV[7] ~= '0'

local function meetings(text)
  local list = {}
  for d, s, e in string.gmatch(text, '(%d+):(%d+):(%d+)') do
    list[#list + 1] = {tonumber(d), tonumber(s), tonumber(e)}
  end
  return list
end

local function overlap(a, b)
  for _, x in ipairs(a) do
    for _, y in ipairs(b) do
      if bit.band(x[1], y[1]) ~= 0 and x[2] < y[3] and y[2] < x[3] then
        return true
      end
    end
  end
  return false
end

local opens = nil
if own[3] then
  opens = tonumber(string.match(' ' .. ARGV[2] .. ' ', ' ' .. own[3] .. '=(%d+) '))
end
local limit = tonumber(own[4] or ARGV[3])

-- What the student holds and has claimed this semester.
local entries, by_section = {}, {}
for i = 1, #flat, 2 do
  local field = flat[i]
  if field ~= '#' then
    local state, sem, course, credits, meet, stamp, deadline =
      string.match(flat[i + 1], '^(%a)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    if state and sem == semester then
      local e = {
        section = field, state = state, course = course, credits = tonumber(credits),
        meet = meetings(meet), stamp = stamp, deadline = tonumber(deadline),
      }
      -- An unsettled claim past its deadline (and the grace): its section
      -- has decided for good (reserve.lua refuses a late claim).
      e.stale = state == 'h' or state == 'w' or (state == 'c' and clock > e.deadline + grace)
      e.expired = state == 'c' and clock > e.deadline + grace
      entries[#entries + 1] = e
      by_section[field] = e
    end
  end
end

local suspects, suspected = {}, {}
local function suspect(e)
  if e.stale and not suspected[e.section] then
    suspected[e.section] = true
    suspects[#suspects + 1] = e.section
    suspects[#suspects + 1] = e.stamp
  end
end

local results, accepted = {}, {}
local credits_held = 0
for _, e in ipairs(entries) do
  if e.state ~= 'w' or count_waitlisted then
    credits_held = credits_held + e.credits
  end
end

for i = 0, n - 1 do
  local base = FIRST + i * 7
  local id, course, credits = ARGV[base], ARGV[base + 1], tonumber(ARGV[base + 2])
  local meet, repeatable = meetings(ARGV[base + 3]), ARGV[base + 4] == '1'
  local prereqs, coreqs = ARGV[base + 5], ARGV[base + 6]
  local permit = ',' .. (own[5 + i] or '') .. ','
  local function waived(rule)
    return string.find(permit, ',' .. rule .. ',', 1, true) ~= nil
  end
  local code, detail = nil, ''
  local mine = by_section[id]
  if mine then
    if mine.state == 'c' and not mine.expired then
      code, detail = 'busy', mine.stamp
    elseif mine.expired then
      -- Claimed before, never settled: judge it from the section first.
      suspect(mine)
      code, detail = 'busy', mine.stamp
    elseif mine.state == 'w' and not count_waitlisted and limit and not waived('credit_limit')
      and credits_held + credits > limit then
      -- An offer accepted now would add these credits.
      for _, e in ipairs(entries) do
        suspect(e)
      end
      code, detail = 'credit_limit', credits_held .. '|' .. limit
    else
      -- Held already: claimed again (a new stamp), the seat script answers.
      -- An uncounted place (w) counts from here on (written as h), so a
      -- parallel claim sees its credits; settle.lua writes w again if the
      -- student is still only waitlisted.
      code = 'claimed'
      if mine.state == 'w' and not count_waitlisted then
        credits_held = credits_held + credits
      end
    end
  end
  if not code and opens and clock < opens and not waived('time_ticket') then
    code, detail = 'not_your_time_yet', tostring(opens)
  end
  if not code and not waived('prerequisite') then
    for group in string.gmatch(prereqs, '[^;]+') do
      local met = false
      for c in string.gmatch(group, '[^,]+') do
        if redis.call('SISMEMBER', KEYS[2], c) == 1 then
          met = true
          break
        end
      end
      if not met then
        code, detail = 'prerequisite_missing', group
        break
      end
    end
    if not code then
      for c in string.gmatch(coreqs, '[^,]+') do
        local met = redis.call('SISMEMBER', KEYS[2], c) == 1
        for j = 0, n - 1 do
          met = met or ARGV[FIRST + j * 7 + 1] == c
        end
        if not met then
          -- Held this semester. The acceptance rests on the entry, so it is
          -- judged first (a claim of a request that died, or a held entry
          -- its section may have taken back); a claim still in flight does
          -- not count (its request may yet be refused its seat).
          for _, e in ipairs(entries) do
            if e.course == c and e.stale then
              suspect(e)
              met = true
              break
            end
          end
        end
        if not met then
          code, detail = 'prerequisite_missing', c
          break
        end
      end
    end
  end
  if not code and not repeatable and not waived('course_repeat') then
    -- Every entry a refusal could rest on is suspected, not just the
    -- first: after the judging the claim decides on what is here.
    for _, e in ipairs(entries) do
      if e.course == course and e.section ~= id then
        suspect(e)
        if not code then
          code, detail = 'already_in_course', e.section
        end
      end
    end
    for _, a in ipairs(accepted) do
      if not code and a.course == course then
        code, detail = 'already_in_course', a.section
      end
    end
  end
  if not code and not waived('time_conflict') then
    for _, e in ipairs(entries) do
      if e.section ~= id and overlap(meet, e.meet) then
        suspect(e)
        if not code then
          code, detail = 'time_conflict', e.section
        end
      end
    end
    for _, a in ipairs(accepted) do
      if not code and overlap(meet, a.meet) then
        code, detail = 'time_conflict', a.section
      end
    end
  end
  if not code and limit and not waived('credit_limit') and credits_held + credits > limit then
    for _, e in ipairs(entries) do
      suspect(e)
    end
    code, detail = 'credit_limit', credits_held .. '|' .. limit
  end
  if not code then
    code = 'claimed'
    credits_held = credits_held + credits
    accepted[#accepted + 1] = {section = id, course = course, meet = meet}
  end
  results[#results + 1] = code
  results[#results + 1] = detail
end

if verify and #suspects > 0 then
  return {'verify', suspects}
end
local claimed = false
for i = 1, #results, 2 do
  claimed = claimed or results[i] == 'claimed'
end
if not claimed then
  return {'ok', 0, 0, results}
end
local stamp = counter + 1
local deadline = clock + tonumber(ARGV[4])
local writes = {'#', stamp}
for i = 0, n - 1 do
  if results[2 * i + 1] == 'claimed' then
    local base = FIRST + i * 7
    local id = ARGV[base]
    local state = 'c'
    if by_section[id] and (by_section[id].state == 'h' or by_section[id].state == 'w') then
      state = 'h'
    end
    writes[#writes + 1] = id
    writes[#writes + 1] = table.concat({
      state, semester, ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], stamp, deadline,
    }, '|')
  end
end
redis.call('HSET', KEYS[3], unpack(writes))
if started then
  -- From here the schedule is the record of the student's places: should
  -- it be lost, the next claim must rebuild it ('no_schedule') rather than
  -- start an empty one that forgets them.
  redis.call('HDEL', KEYS[1], 'sc')
end
return {'ok', stamp, deadline, results}
