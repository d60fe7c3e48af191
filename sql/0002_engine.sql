-- 0002: what the persistence workers need.
--
-- sections.last_seq is the sequence of the last outbox event applied to this
-- section. Workers apply a section's events strictly in order and advance it
-- with an optimistic check ("... where id = $1 and last_seq = $2"), so a
-- replayed event is a no-op and two instances racing on one section cannot
-- both apply the same event.
alter table sections add column last_seq bigint not null default 0 check (last_seq >= 0);

-- Events whose write failed for good (the row cannot exist). Each was undone
-- in Redis by the compensate script; this table says what and why.
create table dead_letters (
    id         bigserial primary key,
    section_id uuid not null,
    seq        bigint not null,
    kind       text not null,
    student_id uuid,
    error      text not null,
    sqlstate   text,
    created_at timestamptz not null default now(),
    unique (section_id, seq)
);
