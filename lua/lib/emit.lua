-- emit: the one way a section script appends an event. Prepended (at build
-- time, see src/seats/scripts.rs) to every script that changes a section,
-- so the outbox entry and the script's reply can never disagree.
--
-- Uses KEYS[5] seq and KEYS[6] outbox (the section's core keys).
-- emit(kind, student, now, field, value, ...) takes the next sequence,
-- appends the entry "<seq>-0" {kind, student, at, field, value, ...} to the
-- outbox and records the same event in `events`, which the script returns:
-- each event is {seq, kind, student, at, field, value, ...}, the stream
-- entry's id and fields, decoded in Rust by the same code as the outbox.
local events = {}
local function emit(kind, student, now, ...)
  local seq = redis.call('INCR', KEYS[5])
  redis.call('XADD', KEYS[6], seq .. '-0', 'kind', kind, 'student', student, 'at', now, ...)
  events[#events + 1] = {seq, kind, student, now, ...}
  return seq
end
