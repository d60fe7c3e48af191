-- 0007: registrations and waitlist partitioned by semester (issue 12, SPEC §13).
--
-- A semester's enrolment rows are written for a few weeks and then only
-- read, ever more rarely; partitioned by semester, an old semester can be
-- detached from the live tables and archived (`registrar semester detach`,
-- README "Semester partitions") without a long DELETE, and every statement
-- that names a section and its semester touches one partition only.
--
-- LIST, not RANGE: a semester is a key, not an interval of some ordered
-- column. Semesters may overlap in time (a summer session beside a spring
-- one), and uuids have no meaningful order, so one list value per semester
-- is the only shape where "this semester's rows" is exactly one partition.
--
-- Partitioned: registrations and waitlist. Each gains semester_id, the
-- partition key, copied from its section. Unique keys and primary keys must
-- include the partition key; semester_id is a function of section_id
-- (enforced by the composite foreign key to sections (id, semester_id)),
-- so (student_id, section_id, semester_id) is as unique as
-- (student_id, section_id) was, and likewise for the waitlist positions.
--
-- Not partitioned, deliberately:
-- * applied_events (the journal of applied sequences): its rows live one day
--   and are pruned by time through a BRIN index; a semester partition would
--   never hold more than that day, so there is nothing to archive and its
--   per-event insert would gain a column for nothing.
-- * dead_letters: a handful of rows, and the record an undo in Redis must be
--   able to write whatever happened to the semester (no undo without a
--   record): a partitioned table refuses a row whose partition was detached.
--   `semester detach` moves a semester's dead letters into the archive with
--   its partitions instead.
--
-- No DEFAULT partition: every semester gets its partitions when its row is
-- inserted (trigger below, whoever inserts: the admin API, `registrar seed`,
-- psql), so a default one would only ever receive rows of a detached
-- semester, which should be refused rather than silently kept. Without one,
-- DETACH PARTITION ... CONCURRENTLY is also allowed.
--
-- New partitions are made as plain tables and then attached, because
-- ATTACH PARTITION takes only a SHARE UPDATE EXCLUSIVE lock on the parent
-- (reads and writes go on), where CREATE TABLE ... PARTITION OF would take
-- ACCESS EXCLUSIVE and stall the persistence workers while a semester is
-- created. The new table is empty, so attaching validates nothing.
--
-- The conversion is in place, inside this migration's transaction: each
-- table is renamed aside, a partitioned one is created under the old name,
-- the rows are copied (with their semester from sections), the old table is
-- dropped. The enrolled_count triggers are created after the copy, so the
-- copied rows are not counted a second time.

-- The composite foreign keys below need a unique key on sections that
-- includes the semester. A section's semester then cannot change while it
-- has registrations or waitlist entries (they would be in the wrong
-- partition); nothing in the engine moves a section between semesters.
alter table sections add constraint sections_id_semester_key unique (id, semester_id);

-- The partition of `parent` holding semester `semester`, named after the
-- semester id so an archived table says whose rows it holds.
create function semester_partition_name(parent text, semester uuid) returns text
language sql immutable as $$
    select parent || '_' || replace(semester::text, '-', '')
$$;

-- Creates and attaches the partitions of one semester; a no-op for a
-- partition that already exists.
create function semester_partitions_create(semester uuid) returns void
language plpgsql as $$
declare
    parent text;
    part   text;
begin
    foreach parent in array array['registrations', 'waitlist'] loop
        part := semester_partition_name(parent, semester);
        if to_regclass(format('public.%I', part)) is null then
            execute format('create table public.%I (like public.%I including defaults including constraints)',
                           part, parent);
            execute format('alter table public.%I attach partition public.%I for values in (%L)',
                           parent, part, semester);
        end if;
    end loop;
end
$$;

create function semesters_create_partitions() returns trigger
language plpgsql as $$
begin
    perform semester_partitions_create(new.id);
    return null;
end
$$;

-- registrations ---------------------------------------------------------

alter table registrations rename to registrations_0006;
alter index registrations_pkey rename to registrations_0006_pkey;
alter index registrations_student_id_section_id_key rename to registrations_0006_student_section_key;
alter index registrations_section_status_idx rename to registrations_0006_section_status_idx;

create table registrations (
    id                uuid not null,
    student_id        uuid not null constraint registrations_student_id_fkey references students (id),
    section_id        uuid not null,
    semester_id       uuid not null,
    status            text not null
        constraint registrations_status_check check (status in ('enrolled', 'dropped')),
    registration_date timestamptz not null default now(),
    dropped_date      timestamptz,
    version           bigint not null default 1,
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    constraint registrations_pkey primary key (id, semester_id),
    constraint registrations_student_section_key unique (student_id, section_id, semester_id),
    -- Also the foreign key to sections (id) that section_id had.
    constraint registrations_section_fkey foreign key (section_id, semester_id)
        references sections (id, semester_id),
    constraint registrations_check check ((status = 'dropped') = (dropped_date is not null))
) partition by list (semester_id);

create index registrations_section_status_idx on registrations (section_id, status);

-- waitlist --------------------------------------------------------------

alter table waitlist rename to waitlist_0006;
alter index waitlist_pkey rename to waitlist_0006_pkey;
alter index waitlist_student_id_section_id_key rename to waitlist_0006_student_section_key;
alter index waitlist_position_unique rename to waitlist_0006_position_unique;
alter index waitlist_student_idx rename to waitlist_0006_student_idx;

create table waitlist (
    id          uuid not null,
    student_id  uuid not null constraint waitlist_student_id_fkey references students (id),
    section_id  uuid not null,
    semester_id uuid not null,
    position    integer not null constraint waitlist_position_check check (position > 0),
    version     bigint not null default 1,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    constraint waitlist_pkey primary key (id, semester_id),
    constraint waitlist_student_section_key unique (student_id, section_id, semester_id),
    constraint waitlist_section_fkey foreign key (section_id, semester_id)
        references sections (id, semester_id),
    -- Deferred so that closing a gap (position = position - 1) can run in one statement.
    constraint waitlist_position_unique unique (section_id, position, semester_id)
        deferrable initially deferred
) partition by list (semester_id);

create index waitlist_student_idx on waitlist (student_id);

-- One partition per existing semester, then every row copied -------------

select semester_partitions_create(id) from semesters;

insert into registrations (id, student_id, section_id, semester_id, status, registration_date,
                           dropped_date, version, created_at, updated_at)
select r.id, r.student_id, r.section_id, s.semester_id, r.status, r.registration_date,
       r.dropped_date, r.version, r.created_at, r.updated_at
  from registrations_0006 r join sections s on s.id = r.section_id;

insert into waitlist (id, student_id, section_id, semester_id, position, version, created_at,
                      updated_at)
select w.id, w.student_id, w.section_id, s.semester_id, w.position, w.version, w.created_at,
       w.updated_at
  from waitlist_0006 w join sections s on s.id = w.section_id;

drop table registrations_0006;
drop table waitlist_0006;

-- Triggers, as 0001 had them (on the parent: row triggers are cloned onto
-- every partition, statement triggers see the rows of all partitions) ----

create trigger registrations_updated_at before update on registrations
    for each row execute function set_updated_at();
create trigger waitlist_updated_at before update on waitlist
    for each row execute function set_updated_at();

create trigger registrations_count_insert after insert on registrations
    referencing new table as inserted_rows
    for each statement execute function registrations_count_inserted();
create trigger registrations_count_update after update on registrations
    referencing old table as old_rows new table as new_rows
    for each statement execute function registrations_count_updated();
create trigger registrations_count_delete after delete on registrations
    referencing old table as deleted_rows
    for each statement execute function registrations_count_deleted();

-- From now on a semester gets its partitions in the transaction that
-- creates it.
create trigger semesters_create_partitions after insert on semesters
    for each row execute function semesters_create_partitions();
