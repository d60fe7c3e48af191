-- settle: the student's last step of a registration (SPEC §14), and the
-- repair of entries found stale. Each claim or entry named by its stamp
-- becomes a held entry (the section enrolled or waitlisted the student) or
-- is released; an entry whose stamp moved on (claimed again since) is left
-- to its newer claim. A drop removes the held entry whatever its stamp.
--
-- KEYS[1] schedule hash (lua/claim.lua); KEYS[2] the student's index of
--         sections (their views)
-- ARGV    triples: section id, stamp, verdict: h (held), w (held as a
--         waitlist place whose seat comes only by a new claim: an offer
--         section's, lua/claim.lua), r (release: the
--         section does not have the student), k (kept: the section has
--         the student, as judged by lua/judge.lua: a claim becomes held, a
--         held or w entry stays what it is, since a seat for a w place comes
--         only by a claim that rewrites it), v (void: the claim came to
--         nothing, the section was not asked or refused it; an entry held
--         before the claim stays held), d (dropped: remove a held entry,
--         whatever its stamp)
--
-- Returns how many entries changed.
local changed = 0
for i = 1, #ARGV, 3 do
  local section, stamp, verdict = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local entry = redis.call('HGET', KEYS[1], section)
  if entry then
    local state, mid, own, deadline = string.match(entry, '^(%a)(|.*|)([^|]*)|([^|]*)$')
    if verdict == 'd' then
      if state == 'h' or state == 'w' then
        redis.call('HDEL', KEYS[1], section)
        changed = changed + 1
      end
    elseif own == stamp then
      if verdict == 'k' then
        verdict = 'h'
        if state == 'w' then
          verdict = 'w'
        end
      end
      if verdict == 'h' or verdict == 'w' then
        if state ~= verdict then
          redis.call('HSET', KEYS[1], section, verdict .. mid .. own .. '|' .. deadline)
        end
        changed = changed + 1
      elseif verdict == 'r' or (verdict == 'v' and state == 'c') then
        redis.call('HDEL', KEYS[1], section)
        changed = changed + 1
      end
    end
  end
  if verdict == 'h' or verdict == 'w' or verdict == 'k' then
    redis.call('SADD', KEYS[2], section)
  end
end
return changed
