-- idempotency: claim an idempotency key for one request, or report what an
-- earlier request with the same key did.
--
-- KEYS[1] the record: hash {state = running|done, fp, status, body}
-- ARGV[1] fingerprint (SHA-256 hex of the canonical request)
-- ARGV[2] seconds a running claim lives (a crashed request frees its key)
--
-- Returns:
--   {"new"}                    claimed: run the request, then store or release
--   {"mismatch"}               the key was used with another request body
--   {"in_flight"}              the first request with this key is still running
--   {"done", status, body}     replay this stored answer
local record = redis.call('HMGET', KEYS[1], 'state', 'fp', 'status', 'body')
if not record[1] then
  redis.call('HSET', KEYS[1], 'state', 'running', 'fp', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {'new'}
end
if record[2] ~= ARGV[1] then
  return {'mismatch'}
end
if record[1] == 'running' then
  return {'in_flight'}
end
return {'done', record[3], record[4]}
