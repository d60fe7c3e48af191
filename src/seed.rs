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
