-- 0001: students, the catalog (semesters, courses, sections) and the two
-- enrolment tables. Append-only: never edit a migration that has shipped;
-- add a new file instead (the runner refuses a changed checksum).
--
-- Every mutable row carries `version` (optimistic concurrency: writers update
-- "... where id = $1 and version = $2" and bump it), `created_at` and
-- `updated_at` (maintained by the set_updated_at trigger).

create function set_updated_at() returns trigger
language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end
$$;

create table students (
    id                uuid primary key,
    student_number    text not null unique,
    name              text not null,
    email             text not null unique,
    -- Only 'active' students may register; the others can still log in and read.
    enrollment_status text not null default 'active'
        check (enrollment_status in ('active', 'inactive', 'suspended', 'graduated')),
    -- Argon2id PHC string.
    password_hash     text not null,
    role              text not null default 'student' check (role in ('student', 'admin')),
    version           bigint not null default 1,
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now()
);

create table semesters (
    id                 uuid primary key,
    name               text not null unique,
    start_date         date not null,
    end_date           date not null,
    registration_start timestamptz not null,
    registration_end   timestamptz not null,
    is_active          boolean not null default true,
    version            bigint not null default 1,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now(),
    check (end_date >= start_date),
    check (registration_end > registration_start)
);

create table courses (
    id          uuid primary key,
    course_code text not null unique,
    course_name text not null,
    description text not null default '',
    credits     integer not null check (credits between 0 and 30),
    department  text not null default '',
    version     bigint not null default 1,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

create table sections (
    id             uuid primary key,
    course_id      uuid not null references courses (id),
    semester_id    uuid not null references semesters (id),
    section_number text not null,
    instructor     text not null default '',
    schedule       text not null default '',
    room           text not null default '',
    total_seats    integer not null check (total_seats >= 0),
    waitlist_limit integer not null default 0 check (waitlist_limit >= 0),
    -- Maintained by the registrations triggers below, never written directly.
    enrolled_count integer not null default 0,
    is_active      boolean not null default true,
    version        bigint not null default 1,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    unique (course_id, semester_id, section_number),
    -- The last line of defence against oversell: even if the cache were
    -- wrong, PostgreSQL refuses an enrolment beyond capacity, and refuses a
    -- capacity below the number enrolled.
    constraint sections_no_oversell check (enrolled_count between 0 and total_seats)
);

create index sections_semester_idx on sections (semester_id);
create index sections_course_idx on sections (course_id);

create table registrations (
    id                uuid primary key,
    student_id        uuid not null references students (id),
    section_id        uuid not null references sections (id),
    status            text not null check (status in ('enrolled', 'dropped')),
    registration_date timestamptz not null default now(),
    dropped_date      timestamptz,
    version           bigint not null default 1,
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    unique (student_id, section_id),
    check ((status = 'dropped') = (dropped_date is not null))
);

create index registrations_section_status_idx on registrations (section_id, status);

create table waitlist (
    id         uuid primary key,
    student_id uuid not null references students (id),
    section_id uuid not null references sections (id),
    position   integer not null check (position > 0),
    version    bigint not null default 1,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (student_id, section_id),
    -- Deferred so that closing a gap (position = position - 1) can run in one statement.
    constraint waitlist_position_unique unique (section_id, position) deferrable initially deferred
);

create index waitlist_student_idx on waitlist (student_id);

create trigger students_updated_at before update on students
    for each row execute function set_updated_at();
create trigger semesters_updated_at before update on semesters
    for each row execute function set_updated_at();
create trigger courses_updated_at before update on courses
    for each row execute function set_updated_at();
create trigger sections_updated_at before update on sections
    for each row execute function set_updated_at();
create trigger registrations_updated_at before update on registrations
    for each row execute function set_updated_at();
create trigger waitlist_updated_at before update on waitlist
    for each row execute function set_updated_at();

-- sections.enrolled_count follows registrations. Statement-level triggers with
-- transition tables do one update per section per statement, so a batched
-- insert of many registrations costs one counter update per section, and the
-- sections_no_oversell check runs on the result.

create function registrations_count_inserted() returns trigger
language plpgsql as $$
begin
    update sections s
       set enrolled_count = s.enrolled_count + d.n
      from (select section_id, count(*)::integer as n
              from inserted_rows
             where status = 'enrolled'
             group by section_id) d
     where s.id = d.section_id;
    return null;
end
$$;

create function registrations_count_updated() returns trigger
language plpgsql as $$
begin
    update sections s
       set enrolled_count = s.enrolled_count + d.n
      from (select section_id, sum(n)::integer as n
              from (select section_id, count(*) filter (where status = 'enrolled') as n
                      from new_rows group by section_id
                    union all
                    select section_id, -count(*) filter (where status = 'enrolled')
                      from old_rows group by section_id) changes
             group by section_id
            having sum(n) <> 0) d
     where s.id = d.section_id;
    return null;
end
$$;

create function registrations_count_deleted() returns trigger
language plpgsql as $$
begin
    update sections s
       set enrolled_count = s.enrolled_count - d.n
      from (select section_id, count(*)::integer as n
              from deleted_rows
             where status = 'enrolled'
             group by section_id) d
     where s.id = d.section_id;
    return null;
end
$$;

create trigger registrations_count_insert after insert on registrations
    referencing new table as inserted_rows
    for each statement execute function registrations_count_inserted();
create trigger registrations_count_update after update on registrations
    referencing old table as old_rows new table as new_rows
    for each statement execute function registrations_count_updated();
create trigger registrations_count_delete after delete on registrations
    referencing old table as deleted_rows
    for each statement execute function registrations_count_deleted();
