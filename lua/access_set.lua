-- access_set: store a student's access record as PostgreSQL has it, unless
-- a newer one is already here. Versions only grow (students.access_version),
-- so writers that race (a request that loaded the record, the admin API
-- after a change, the NOTIFY listener) always leave the newest.
--
-- KEYS[1] the student's access record
-- ARGV[1] version; ARGV[2] token epoch; ARGV[3] '1' if the account is gone;
-- ARGV[4] a registration-blocking hold or ''; ARGV[5] lifetime in ms, 0 for
-- no expiry (a live account's copy is kept current, not aged out)
--
-- Returns 1 if stored, 0 if a record at least as new was kept.
local current = tonumber(redis.call('HGET', KEYS[1], 'v'))
local version = tonumber(ARGV[1])
if current and current >= version then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'ep', ARGV[2], 'gone', ARGV[3], 'hold', ARGV[4])
if ARGV[5] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return 1
