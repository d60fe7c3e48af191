-- 0006: what a token vouches for, revocable at once (issue 11, SPEC §15).
--
-- A token carries its student's token_epoch at login. Changing the role,
-- the enrollment status or the password moves the epoch on (trigger
-- below), as does an explicit revocation; a token of an older epoch is
-- refused on its next request. Every server checks that against a copy
-- kept in the student's Redis slot ({u:<id>}:access), in the round trip
-- that already charges the student's rate limit. access_version counts
-- every change to that copy (epoch and holds), so writers that race
-- keep the newest: a copy is only ever replaced by a higher version.
-- Whoever makes the change (the admin API, psql), the servers hear of it
-- through NOTIFY student_access (payload: the student id) and refresh it;
-- a new account is announced the same way, so its copy is in Redis before
-- its first request (registration needs no PostgreSQL round trip).
alter table students
    add column token_epoch bigint not null default 0,
    add column access_version bigint not null default 0;

-- Holds placed by the registrar (financial, advising, ...). Each blocks
-- registration (never dropping) until lifted.
create table student_holds (
    student_id uuid not null references students (id) on delete cascade,
    code       text not null check (code ~ '^[a-z][a-z0-9_]{0,39}$'),
    placed_at  timestamptz not null default now(),
    primary key (student_id, code)
);

create function students_access_epoch() returns trigger language plpgsql as $$
begin
    if new.role is distinct from old.role
       or new.enrollment_status is distinct from old.enrollment_status
       or new.password_hash is distinct from old.password_hash then
        new.token_epoch := greatest(new.token_epoch, old.token_epoch + 1);
    end if;
    if new.token_epoch is distinct from old.token_epoch then
        new.access_version := greatest(new.access_version, old.access_version + 1);
    end if;
    return new;
end
$$;

create trigger students_access_epoch before update on students
    for each row execute function students_access_epoch();

-- Deleted accounts, so that a server that was not listening when one was
-- deleted still learns of it (src/access.rs rereads what changed since).
create table deleted_students (
    id         uuid primary key,
    deleted_at timestamptz not null default now()
);

create function students_access_notify() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        insert into deleted_students (id) values (old.id) on conflict (id) do update set deleted_at = now();
        perform pg_notify('student_access', old.id::text);
        return old;
    end if;
    if tg_op = 'INSERT' or new.access_version is distinct from old.access_version then
        perform pg_notify('student_access', new.id::text);
    end if;
    return new;
end
$$;

create trigger students_access_notify after insert or update or delete on students
    for each row execute function students_access_notify();

create function student_holds_changed() returns trigger language plpgsql as $$
begin
    update students set access_version = access_version + 1
     where id = coalesce(new.student_id, old.student_id);
    return null;
end
$$;

create trigger student_holds_changed after insert or update or delete on student_holds
    for each row execute function student_holds_changed();
