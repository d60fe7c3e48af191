-- 0005: the instances that take part in persistence, for partition leases.
--
-- The section space is cut into `sync.partitions` partitions; each is
-- written by the one instance holding its session advisory lock
-- (pg_try_advisory_lock(namespace key, partition)) on a connection kept
-- for it. Each instance refreshes its row here every
-- `sync.lease_interval_ms`: the live rows tell every instance its fair
-- share of partitions, and the backend pid lets an instance end the
-- lease session of one that stopped refreshing (it died, or lost
-- PostgreSQL while its session lingers), so ownership moves within a
-- bound. See docs/faults.md, "Several writers".
create table persistence_instances (
    namespace   text not null,
    instance    uuid not null,
    backend_pid integer not null,
    seen_at     timestamptz not null default now(),
    primary key (namespace, instance)
);
