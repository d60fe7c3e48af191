-- 0010: an admin resolves a dead letter, by retrying the student's intent
-- or by dismissing it with a reason; who did it and when are kept.
--
-- A dead letter stays a record of what failed: resolving it never deletes
-- it. `resolution_note` is the dismissal's reason, or what the retry was
-- answered (its status, or its rejection's reason code).
alter table dead_letters
    add column resolved_at     timestamptz,
    add column resolved_by     uuid references students (id) on delete set null,
    add column resolution      text check (resolution in ('retried', 'dismissed')),
    add column resolution_note text,
    add constraint dead_letters_resolution_whole
        check ((resolved_at is null) = (resolution is null));

-- The admin's list of what is still open.
create index dead_letters_open on dead_letters (id) where resolved_at is null;
