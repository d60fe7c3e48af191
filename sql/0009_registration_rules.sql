-- 0009: the rules a registrar enforces (issue 14, SPEC §14): time tickets
-- (priority groups), credit limits, prerequisites and corequisites, one
-- section per course, meeting times, and permits that waive a rule.
--
-- Two kinds of fact, kept apart because they reach the hot path apart:
-- - the catalogue's (a semester's default credit limit and its groups'
--   opening times, a course's requisites and whether it repeats, a
--   section's meetings): each server reads them with the catalogue
--   (src/rules.rs) and passes them to the claim script;
-- - a student's (their group, their own credit limit, completed courses,
--   permits): copied into the student's Redis slot ({u:<id>}:rules) and
--   versioned by students.access_version like the holds of 0006, so a
--   change by the API or by psql moves the version, every server hears
--   it (NOTIFY student_access), and the next claim reloads the copy.

-- A semester's default limit on a student's credits (enrolled plus
-- waitlisted); null: no limit.
alter table semesters add column credit_limit integer
    check (credit_limit between 0 and 200);

-- A course repeatable in one semester (a seminar series, a studio): the
-- one-section-per-course rule does not apply to it.
alter table courses add column repeatable boolean not null default false;

-- Time tickets. A student in a group may register from the group's
-- opens_at on (and within the semester's window); a student in no group
-- from the semester's registration_start.
create table priority_groups (
    semester_id uuid not null references semesters (id) on delete cascade,
    code        text not null check (code ~ '^[a-z][a-z0-9_]{0,39}$'),
    opens_at    timestamptz not null,
    primary key (semester_id, code)
);

create table student_priority (
    student_id  uuid not null references students (id) on delete cascade,
    semester_id uuid not null,
    code        text not null,
    primary key (student_id, semester_id),
    foreign key (semester_id, code) references priority_groups (semester_id, code)
        on delete cascade
);

-- A student's own credit limit for a semester, over the semester's default.
create table student_credit_limits (
    student_id   uuid not null references students (id) on delete cascade,
    semester_id  uuid not null references semesters (id) on delete cascade,
    credit_limit integer not null check (credit_limit between 0 and 200),
    primary key (student_id, semester_id)
);

-- Prerequisites as an AND of ORs: every alternative group must be met by
-- one completed course of that group.
create table course_prerequisites (
    course_id          uuid not null references courses (id) on delete cascade,
    alternative_group  integer not null check (alternative_group between 0 and 31),
    required_course_id uuid not null references courses (id) on delete cascade,
    primary key (course_id, alternative_group, required_course_id),
    check (required_course_id <> course_id)
);

-- Corequisites: completed, or a section of it held this semester or asked
-- for in the same request.
create table course_corequisites (
    course_id             uuid not null references courses (id) on delete cascade,
    corequisite_course_id uuid not null references courses (id) on delete cascade,
    primary key (course_id, corequisite_course_id),
    check (corequisite_course_id <> course_id)
);

create table completed_courses (
    student_id   uuid not null references students (id) on delete cascade,
    course_id    uuid not null references courses (id) on delete cascade,
    completed_at timestamptz not null default now(),
    primary key (student_id, course_id)
);

-- When a section meets: days is a bit set (bit 0 Monday ... bit 6 Sunday),
-- minutes from midnight, end exclusive.
create table section_meetings (
    section_id   uuid not null references sections (id) on delete cascade,
    days         smallint not null check (days between 1 and 127),
    start_minute smallint not null check (start_minute between 0 and 1439),
    end_minute   smallint not null check (end_minute between 1 and 1440),
    primary key (section_id, days, start_minute),
    check (end_minute > start_minute)
);

-- A rule waived for one student in one section, with who and when.
create table registration_permits (
    student_id uuid not null references students (id) on delete cascade,
    section_id uuid not null references sections (id) on delete cascade,
    rule       text not null check (rule in
        ('time_ticket', 'prerequisite', 'credit_limit', 'time_conflict', 'course_repeat')),
    granted_by uuid,
    granted_at timestamptz not null default now(),
    note       text not null default '',
    primary key (student_id, section_id, rule)
);

-- A change to a student's own facts moves their access_version (one update
-- per student per statement, so a bulk import of completed courses costs
-- one row update per student), which NOTIFY student_access announces.
create function student_rules_changed() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        update students set access_version = access_version + 1
         where id in (select distinct student_id from old_rows);
    else
        update students set access_version = access_version + 1
         where id in (select distinct student_id from new_rows);
    end if;
    return null;
end
$$;

create trigger student_priority_inserted after insert on student_priority
    referencing new table as new_rows
    for each statement execute function student_rules_changed();
create trigger student_priority_updated after update on student_priority
    referencing new table as new_rows
    for each statement execute function student_rules_changed();
create trigger student_priority_deleted after delete on student_priority
    referencing old table as old_rows
    for each statement execute function student_rules_changed();

create trigger student_credit_limits_inserted after insert on student_credit_limits
    referencing new table as new_rows
    for each statement execute function student_rules_changed();
create trigger student_credit_limits_updated after update on student_credit_limits
    referencing new table as new_rows
    for each statement execute function student_rules_changed();
create trigger student_credit_limits_deleted after delete on student_credit_limits
    referencing old table as old_rows
    for each statement execute function student_rules_changed();

create trigger completed_courses_inserted after insert on completed_courses
    referencing new table as new_rows
    for each statement execute function student_rules_changed();
create trigger completed_courses_deleted after delete on completed_courses
    referencing old table as old_rows
    for each statement execute function student_rules_changed();

create trigger registration_permits_inserted after insert on registration_permits
    referencing new table as new_rows
    for each statement execute function student_rules_changed();
create trigger registration_permits_updated after update on registration_permits
    referencing new table as new_rows
    for each statement execute function student_rules_changed();
create trigger registration_permits_deleted after delete on registration_permits
    referencing old table as old_rows
    for each statement execute function student_rules_changed();

create index student_priority_group_idx on student_priority (semester_id, code);
create index registration_permits_section_idx on registration_permits (section_id);
create index course_prerequisites_required_idx on course_prerequisites (required_course_id);
