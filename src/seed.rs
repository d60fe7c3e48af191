//! Demo data: a semester whose registration window is open now, courses,
//! sections, N students sharing one known password, and one admin.
//!
//! Safe to run twice: existing rows are kept (the semester's window is moved
//! to be open again). Students go in batches of [`BATCH`] rows through one
//! `unnest` insert each, so 100,000 students take seconds, not minutes.

use anyhow::Context;
use chrono::{Duration, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::{
    auth::hash_password,
    domain::{EnrollmentStatus, Role},
    store::students::{self, NewStudent},
};

/// Rows per insert statement (PostgreSQL's parameter limit does not apply to
/// arrays; 5,000 keeps each statement well under a megabyte).
const BATCH: usize = 5_000;

/// Name of the demo semester; seeding again reuses it.
pub const DEMO_SEMESTER: &str = "Demo Semester";
/// Student number of the demo admin account.
pub const ADMIN_NUMBER: &str = "admin";

#[derive(Debug, Clone)]
pub struct SeedOptions {
    pub students: usize,
    pub courses: usize,
    pub sections_per_course: usize,
    pub seats: i32,
    pub waitlist: i32,
    pub password: String,
    pub admin_password: String,
}

#[derive(Debug, Clone)]
pub struct SeedReport {
    pub semester_id: Uuid,
    pub section_ids: Vec<Uuid>,
    pub students_inserted: u64,
}

/// The student number of the `i`-th demo student (1-based): S0000001, ...
pub fn student_number(i: usize) -> String {
    format!("S{i:07}")
}

/// Seeds the database; `progress(done, total)` is called after each student batch.
pub async fn seed(
    pool: &Pool,
    opts: &SeedOptions,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<SeedReport> {
    let mut db = pool
        .get()
        .await
        .context("failed to connect to PostgreSQL")?;
    let now = Utc::now();
    let tx = db.transaction().await?;
    let semester_id: Uuid = tx
        .query_one(
            "insert into semesters (id, name, start_date, end_date, registration_start, \
             registration_end, is_active) values ($1, $2, $3, $4, $5, $6, true) \
             on conflict (name) do update set registration_start = excluded.registration_start, \
             registration_end = excluded.registration_end, is_active = true, \
             version = semesters.version + 1 \
             returning id",
            &[
                &Uuid::now_v7(),
                &DEMO_SEMESTER,
                &(now + Duration::days(14)).date_naive(),
                &(now + Duration::days(120)).date_naive(),
                &(now - Duration::hours(1)),
                &(now + Duration::days(7)),
            ],
        )
        .await
        .context("failed to create the demo semester")?
        .get(0);
    let mut section_ids = Vec::with_capacity(opts.courses * opts.sections_per_course);
    for c in 1..=opts.courses {
        let code = format!("DEMO{:03}", 100 + c);
        let course_id: Uuid = tx
            .query_one(
                "insert into courses (id, course_code, course_name, credits, department) \
                 values ($1, $2, $3, 3, 'Demo') \
                 on conflict (course_code) do update set course_name = excluded.course_name \
                 returning id",
                &[&Uuid::now_v7(), &code, &format!("Demo course {c}")],
            )
            .await
            .context("failed to create a demo course")?
            .get(0);
        for s in 1..=opts.sections_per_course {
            let number = format!("{s:03}");
            tx.execute(
                "insert into sections (id, course_id, semester_id, section_number, instructor, \
                 total_seats, waitlist_limit) values ($1, $2, $3, $4, 'Demo Instructor', $5, $6) \
                 on conflict (course_id, semester_id, section_number) do nothing",
                &[
                    &Uuid::now_v7(),
                    &course_id,
                    &semester_id,
                    &number,
                    &opts.seats,
                    &opts.waitlist,
                ],
            )
            .await
            .context("failed to create a demo section")?;
            let id: Uuid = tx
                .query_one(
                    "select id from sections where course_id = $1 and semester_id = $2 \
                     and section_number = $3",
                    &[&course_id, &semester_id, &number],
                )
                .await?
                .get(0);
            section_ids.push(id);
        }
    }
    tx.commit()
        .await
        .context("failed to commit the demo catalog")?;

    // One hash for every demo student: Argon2id costs tens of milliseconds,
    // and these accounts share a published password anyway.
    let password = opts.password.clone();
    let student_hash = tokio::task::spawn_blocking(move || hash_password(&password)).await??;
    let admin_password = opts.admin_password.clone();
    let admin_hash = tokio::task::spawn_blocking(move || hash_password(&admin_password)).await??;
    students::insert_many(
        &db,
        &[NewStudent {
            id: Uuid::now_v7(),
            student_number: ADMIN_NUMBER.into(),
            name: "Demo Admin".into(),
            email: "admin@demo.example.edu".into(),
            enrollment_status: EnrollmentStatus::Active,
            password_hash: admin_hash,
            role: Role::Admin,
        }],
        true,
    )
    .await
    .context("failed to create the admin account")?;

    let mut inserted = 0;
    let mut done = 0;
    while done < opts.students {
        let end = (done + BATCH).min(opts.students);
        let batch: Vec<NewStudent> = (done + 1..=end)
            .map(|i| NewStudent {
                id: Uuid::now_v7(),
                student_number: student_number(i),
                name: format!("Demo Student {i}"),
                email: format!("s{i:07}@demo.example.edu"),
                enrollment_status: EnrollmentStatus::Active,
                password_hash: student_hash.clone(),
                role: Role::Student,
            })
            .collect();
        inserted += students::insert_many(&db, &batch, true)
            .await
            .context("failed to insert demo students")?;
        done = end;
        progress(done, opts.students);
    }
    Ok(SeedReport {
        semester_id,
        section_ids,
        students_inserted: inserted,
    })
}

/// What the demo's rules give to try: section ids by course code and
/// section number, and who plays which part.
#[derive(Debug, Clone)]
pub struct RulesDemo {
    /// (course code, section number, section id)
    pub sections: Vec<(String, String, Uuid)>,
    /// The ids of the first five demo students, S0000001 first.
    pub students: Vec<Uuid>,
}

impl RulesDemo {
    /// The id of a demo section, e.g. `section("DEMO101", "001")`.
    pub fn section(&self, course: &str, number: &str) -> Option<Uuid> {
        self.sections
            .iter()
            .find(|(c, n, _)| c == course && n == number)
            .map(|(_, _, id)| *id)
    }
}

/// Puts the registrar's rules on the demo catalogue (README "Registration
/// rules" shows each one answer): a 9-credit limit (three courses),
/// meetings an hour apart except DEMO102-001, which overlaps DEMO101-001;
/// DEMO103 requires DEMO101 completed (S0000002 has it), DEMO104 requires
/// DEMO105 alongside; a `freshmen` group that opens in a week (S0000003)
/// and a `seniors` group open now; a financial hold on S0000004. Needs at
/// least 5 courses and 4 students. Safe to run again.
pub async fn seed_rules(pool: &Pool, semester: Uuid) -> anyhow::Result<RulesDemo> {
    let mut db = pool
        .get()
        .await
        .context("failed to connect to PostgreSQL")?;
    let tx = db.transaction().await?;
    let rows = tx
        .query(
            "select c.course_code, s.section_number, s.id, c.id from sections s \
               join courses c on c.id = s.course_id \
              where s.semester_id = $1 and c.course_code like 'DEMO%' \
              order by c.course_code, s.section_number",
            &[&semester],
        )
        .await?;
    let sections: Vec<(String, String, Uuid)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let course = |code: &str| -> anyhow::Result<Uuid> {
        rows.iter()
            .find(|r| r.get::<_, String>(0) == code)
            .map(|r| r.get(3))
            .with_context(|| format!("the demo has no course {code}: seed at least 5 courses"))
    };
    tx.execute(
        "update semesters set credit_limit = 9 where id = $1",
        &[&semester],
    )
    .await?;
    for (code, number, id) in &sections {
        let c: i16 = code[4..].parse::<i16>().unwrap_or(101) - 101;
        let odd = number.ends_with(['1', '3', '5', '7', '9']);
        // An hour apart (8:00, 9:00, ...; MWF for odd sections, TR else),
        // except DEMO102-001, half an hour into DEMO101-001.
        let (days, start, length): (i16, i16, i16) = if odd {
            (0b10101, 480 + (c % 10) * 60, 50)
        } else {
            (0b01010, 480 + (c % 10) * 60, 75)
        };
        let start = if code == "DEMO102" && number == "001" {
            510
        } else {
            start
        };
        tx.execute("delete from section_meetings where section_id = $1", &[id])
            .await?;
        tx.execute(
            "insert into section_meetings (section_id, days, start_minute, end_minute) \
             values ($1, $2, $3, $4)",
            &[id, &days, &start, &(start + length)],
        )
        .await?;
    }
    let (c101, c103, c104, c105) = (
        course("DEMO101")?,
        course("DEMO103")?,
        course("DEMO104")?,
        course("DEMO105")?,
    );
    tx.execute(
        "insert into course_prerequisites (course_id, alternative_group, required_course_id) \
         values ($1, 0, $2) on conflict do nothing",
        &[&c103, &c101],
    )
    .await?;
    tx.execute(
        "insert into course_corequisites (course_id, corequisite_course_id) \
         values ($1, $2) on conflict do nothing",
        &[&c104, &c105],
    )
    .await?;
    let now = Utc::now();
    tx.execute(
        "insert into priority_groups (semester_id, code, opens_at) values \
         ($1, 'seniors', $2), ($1, 'freshmen', $3) \
         on conflict (semester_id, code) do update set opens_at = excluded.opens_at",
        &[
            &semester,
            &(now - Duration::hours(1)),
            &(now + Duration::days(7)),
        ],
    )
    .await?;
    let student = |i: usize| student_number(i);
    tx.execute(
        "insert into student_priority (student_id, semester_id, code) \
         select id, $2, 'freshmen' from students where student_number = $1 \
         on conflict (student_id, semester_id) do update set code = excluded.code",
        &[&student(3), &semester],
    )
    .await?;
    tx.execute(
        "insert into completed_courses (student_id, course_id) \
         select id, $2 from students where student_number = $1 on conflict do nothing",
        &[&student(2), &c101],
    )
    .await?;
    tx.execute(
        "insert into student_holds (student_id, code) \
         select id, 'financial' from students where student_number = $1 on conflict do nothing",
        &[&student(4)],
    )
    .await?;
    let numbers: Vec<String> = (1..=5).map(student_number).collect();
    let students = tx
        .query(
            "select id from students where student_number = any($1) order by student_number",
            &[&numbers],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit()
        .await
        .context("failed to commit the demo rules")?;
    Ok(RulesDemo { sections, students })
}

/// Registration rules at scale, for the load tool's registration day
/// (`--rules`): a 15-credit limit; every section meets at one of 30 times
/// (MWF, TR or MW, from 8:00 on the hour), so some requests conflict; every
/// tenth course requires the one before it, which the even-numbered
/// students have completed; priority groups `seniors` (open for an hour,
/// half the students), `juniors` (open for a minute) and `freshmen` (opens
/// tomorrow, one student in twenty); a financial hold on one in fifty.
pub async fn seed_realistic_rules(pool: &Pool, semester: Uuid) -> anyhow::Result<()> {
    let mut db = pool
        .get()
        .await
        .context("failed to connect to PostgreSQL")?;
    let tx = db.transaction().await?;
    let now = Utc::now();
    tx.execute(
        "update semesters set credit_limit = 15 where id = $1",
        &[&semester],
    )
    .await?;
    tx.execute(
        "delete from section_meetings where section_id in (select id from sections where semester_id = $1)",
        &[&semester],
    )
    .await?;
    // Slot k of 30: days (MWF, TR, MW) by k % 3, hour 8 + k / 3.
    tx.execute(
        "insert into section_meetings (section_id, days, start_minute, end_minute) \
         select s.id, (array[21, 10, 5])[k % 3 + 1], 480 + (k / 3) * 60, \
                480 + (k / 3) * 60 + (case when k % 3 = 1 then 75 else 50 end) \
           from (select id, abs(hashtext(id::text)) % 30 as k from sections where semester_id = $1) s",
        &[&semester],
    )
    .await?;
    tx.execute(
        "insert into course_prerequisites (course_id, alternative_group, required_course_id) \
         select c.id, 0, p.id from \
           (select id, row_number() over (order by course_code) as n from courses where course_code like 'DEMO%') c \
           join (select id, row_number() over (order by course_code) as n from courses where course_code like 'DEMO%') p \
             on p.n = c.n - 1 \
          where c.n % 10 = 0 on conflict do nothing",
        &[],
    )
    .await?;
    tx.execute(
        "insert into completed_courses (student_id, course_id) \
         select s.id, p.id from students s, \
           (select id, row_number() over (order by course_code) as n from courses where course_code like 'DEMO%') p \
          where p.n % 10 = 9 and s.student_number like 'S%' \
            and (substring(s.student_number from 2))::int % 2 = 0 \
         on conflict do nothing",
        &[],
    )
    .await?;
    tx.execute(
        "insert into priority_groups (semester_id, code, opens_at) values \
         ($1, 'seniors', $2), ($1, 'juniors', $3), ($1, 'freshmen', $4) \
         on conflict (semester_id, code) do update set opens_at = excluded.opens_at",
        &[
            &semester,
            &(now - Duration::hours(1)),
            &(now - Duration::minutes(1)),
            &(now + Duration::days(1)),
        ],
    )
    .await?;
    tx.execute(
        "insert into student_priority (student_id, semester_id, code) \
         select id, $1, case when n % 20 = 0 then 'freshmen' when n % 2 = 0 then 'seniors' else 'juniors' end \
           from (select id, (substring(student_number from 2))::int as n from students \
                  where student_number like 'S%') s \
         on conflict (student_id, semester_id) do update set code = excluded.code",
        &[&semester],
    )
    .await?;
    tx.execute(
        "insert into student_holds (student_id, code) \
         select id, 'financial' from students where student_number like 'S%' \
            and (substring(student_number from 2))::int % 50 = 7 \
         on conflict do nothing",
        &[],
    )
    .await?;
    tx.commit()
        .await
        .context("failed to commit the registration-day rules")?;
    Ok(())
}
