//! Student accounts and each student's own registrations and waitlist entries.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{EnrollmentStatus, Role};

/// What login needs of an account.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub id: Uuid,
    pub password_hash: String,
    pub role: Role,
    /// enrollment_status is active: the student may register.
    pub active: bool,
}

pub async fn credentials(
    db: &impl GenericClient,
    student_number: &str,
) -> Result<Option<Credentials>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select id, password_hash, role, enrollment_status = 'active' \
             from students where student_number = $1",
        )
        .await?;
    Ok(db.query_opt(&stmt, &[&student_number]).await?.map(|row| {
        let role: String = row.get(2);
        Credentials {
            id: row.get(0),
            password_hash: row.get(1),
            // The column's CHECK constraint admits only the two known roles.
            role: Role::parse(&role).unwrap_or(Role::Student),
            active: row.get(3),
        }
    }))
}

/// The role of the student with this id, and whether they may register.
pub async fn role_by_id(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<Option<(Role, bool)>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "select role, enrollment_status = 'active' from students where id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|row| {
        let role: String = row.get(0);
        // The column's CHECK constraint admits only the two known roles.
        (Role::parse(&role).unwrap_or(Role::Student), row.get(1))
    }))
}

/// The id of the student with this number.
pub async fn id_by_number(
    db: &impl GenericClient,
    student_number: &str,
) -> Result<Option<(Uuid, Role, bool)>, tokio_postgres::Error> {
    Ok(credentials(db, student_number)
        .await?
        .map(|c| (c.id, c.role, c.active)))
}

/// A new account with its password already hashed.
#[derive(Debug, Clone)]
pub struct NewStudent {
    pub id: Uuid,
    pub student_number: String,
    pub name: String,
    pub email: String,
    pub enrollment_status: EnrollmentStatus,
    pub password_hash: String,
    pub role: Role,
}

/// Inserts all rows in one statement; with `skip_existing` rows whose
/// student number or email exists are left alone (seeding twice is safe),
/// otherwise a duplicate fails the whole statement. Returns rows inserted.
pub async fn insert_many(
    db: &impl GenericClient,
    students: &[NewStudent],
    skip_existing: bool,
) -> Result<u64, tokio_postgres::Error> {
    let ids: Vec<Uuid> = students.iter().map(|s| s.id).collect();
    let numbers: Vec<&str> = students.iter().map(|s| s.student_number.as_str()).collect();
    let names: Vec<&str> = students.iter().map(|s| s.name.as_str()).collect();
    let emails: Vec<&str> = students.iter().map(|s| s.email.as_str()).collect();
    let statuses: Vec<&str> = students
        .iter()
        .map(|s| s.enrollment_status.as_str())
        .collect();
    let hashes: Vec<&str> = students.iter().map(|s| s.password_hash.as_str()).collect();
    let roles: Vec<&str> = students.iter().map(|s| s.role.as_str()).collect();
    let sql = format!(
        "insert into students (id, student_number, name, email, enrollment_status, password_hash, role) \
         select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) {}",
        if skip_existing { "on conflict do nothing" } else { "" }
    );
    db.execute(
        &sql,
        &[&ids, &numbers, &names, &emails, &statuses, &hashes, &roles],
    )
    .await
}

/// One of a student's registrations as PostgreSQL holds it.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    pub section_id: Uuid,
    pub course_code: String,
    pub course_name: String,
    pub section_number: String,
    pub status: String,
    pub registration_date: DateTime<Utc>,
    pub dropped_date: Option<DateTime<Utc>>,
}

pub async fn registrations(
    db: &impl GenericClient,
    student_id: Uuid,
) -> Result<Vec<Registration>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select r.section_id, c.course_code, c.course_name, s.section_number, r.status, \
                    r.registration_date, r.dropped_date \
               from registrations r \
               join sections s on s.id = r.section_id \
               join courses c on c.id = s.course_id \
              where r.student_id = $1 \
              order by r.registration_date, r.section_id",
        )
        .await?;
    Ok(db
        .query(&stmt, &[&student_id])
        .await?
        .iter()
        .map(|row| Registration {
            section_id: row.get(0),
            course_code: row.get(1),
            course_name: row.get(2),
            section_number: row.get(3),
            status: row.get(4),
            registration_date: row.get(5),
            dropped_date: row.get(6),
        })
        .collect())
}

/// One of a student's waitlist entries as PostgreSQL holds it.
#[derive(Debug, Clone, Serialize)]
pub struct WaitlistEntry {
    pub section_id: Uuid,
    pub course_code: String,
    pub section_number: String,
    pub position: i32,
    pub joined_at: DateTime<Utc>,
}

pub async fn waitlist(
    db: &impl GenericClient,
    student_id: Uuid,
) -> Result<Vec<WaitlistEntry>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select w.section_id, c.course_code, s.section_number, w.position, w.created_at \
               from waitlist w \
               join sections s on s.id = w.section_id \
               join courses c on c.id = s.course_id \
              where w.student_id = $1 \
              order by w.created_at, w.section_id",
        )
        .await?;
    Ok(db
        .query(&stmt, &[&student_id])
        .await?
        .iter()
        .map(|row| WaitlistEntry {
            section_id: row.get(0),
            course_code: row.get(1),
            section_number: row.get(2),
            position: row.get(3),
            joined_at: row.get(4),
        })
        .collect())
}

/// How a section is named to a student.
#[derive(Debug, Clone)]
pub struct SectionLabel {
    pub course_code: String,
    pub course_name: String,
    pub section_number: String,
}

pub async fn section_labels(
    db: &impl GenericClient,
    sections: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, SectionLabel>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select s.id, c.course_code, c.course_name, s.section_number \
               from sections s join courses c on c.id = s.course_id where s.id = any($1)",
        )
        .await?;
    Ok(db
        .query(&stmt, &[&sections])
        .await?
        .iter()
        .map(|r| {
            (
                r.get(0),
                SectionLabel {
                    course_code: r.get(1),
                    course_name: r.get(2),
                    section_number: r.get(3),
                },
            )
        })
        .collect())
}
