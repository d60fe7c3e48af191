-- 0003: a fingerprint of every event applied to a section, by sequence.
--
-- sections.last_seq alone cannot tell a replay (the same event delivered
-- again: skip it) from a different event that reuses an applied sequence
-- (Redis lost events and numbered new ones again, e.g. after a restart from
-- an older AOF). Workers compare an event at or below last_seq with the
-- fingerprint recorded here; a mismatch is counted, logged and makes the
-- section's Redis state be rebuilt from PostgreSQL. Rows are written in the
-- same transaction as the events and pruned after a day (replays come within
-- seconds or minutes; a Redis restart is detected within seconds).
create table applied_events (
    section_id  uuid not null,
    seq         bigint not null,
    fingerprint bigint not null,
    applied_at  timestamptz not null default now(),
    primary key (section_id, seq)
);
-- Rows arrive in time order: a BRIN index makes the daily prune cheap at
-- almost no cost per insert.
create index applied_events_applied_at on applied_events using brin (applied_at);
