-- access: may this token act now? Checks the student's access record (what
-- PostgreSQL says a token of theirs vouches for, sql/0006_student_access.sql)
-- and, when asked, charges the student's rate-limit bucket in the same call:
-- both live in the student's slot {u:<id>}, so revocation costs no extra
-- round trip (lua/lib/gcra.lua comes first).
--
-- KEYS[1] the student's access record: hash {v, ep, gone, hold}
-- KEYS[2] (optional) the student's bucket
-- ARGV[1] the token's epoch
-- ARGV[2], ARGV[3] the bucket's interval (us) and burst, with KEYS[2]
--
-- Returns {verdict, wait_ms, hold}:
--   { 1, 0, hold}   the token stands (hold: a registration-blocking hold, or '')
--   { 0, ms, hold}  it stands but its bucket is empty for ms (nothing charged)
--   {-1, 0, ''}     revoked: the account is gone or changed since the token
--   {-2, 0, ''}     no record here yet: the caller loads it from PostgreSQL
--                   (access_set.lua) and asks again; nothing was charged
local rec = redis.call('HMGET', KEYS[1], 'ep', 'gone', 'hold')
if not rec[1] then
  return {-2, 0, ''}
end
if rec[2] == '1' or tonumber(ARGV[1]) < tonumber(rec[1]) then
  return {-1, 0, ''}
end
local hold = rec[3] or ''
if KEYS[2] then
  local wait = gcra_charge(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]))
  if wait > 0 then
    return {0, wait, hold}
  end
end
return {1, 0, hold}
