-- 0004: a dead letter records whether its undo in Redis has happened.
--
-- A write that can never succeed is recorded here in the same transaction
-- that moves the section's last_seq past it; only then is the event undone
-- in Redis (compensate.lua, at most once per sequence). A crash between the
-- commit and the undo leaves undone_at null, and recovery runs the undo
-- then: there is never an undo without a record, and never two.
alter table dead_letters
    add column undone_at   timestamptz,
    add column undo_result text;

-- Recovery looks for the few records whose undo is still owed.
create index dead_letters_undo_owed on dead_letters (section_id) where undone_at is null;
