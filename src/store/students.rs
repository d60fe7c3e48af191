//! Student accounts and each student's own registrations and waitlist entries.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{AccessRecord, EnrollmentStatus, Role, StudentFacts};

/// What login needs of an account.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub id: Uuid,
    pub password_hash: String,
    pub role: Role,
    /// enrollment_status is active: the student may register.
    pub active: bool,
    /// What its tokens vouch for; the token carries `access.epoch`.
    pub access: AccessRecord,
}

/// The columns of an account's access record, after `from students s`.
const ACCESS_COLUMNS: &str = "s.access_version, s.token_epoch, \
     (select h.code from student_holds h where h.student_id = s.id \
       order by h.placed_at, h.code limit 1), \
     array(select p.semester_id from student_priority p where p.student_id = s.id order by p.semester_id), \
     array(select p.code from student_priority p where p.student_id = s.id order by p.semester_id), \
     array(select l.semester_id from student_credit_limits l where l.student_id = s.id order by l.semester_id), \
     array(select l.credit_limit from student_credit_limits l where l.student_id = s.id order by l.semester_id), \
     array(select r.section_id from registration_permits r where r.student_id = s.id order by r.section_id, r.rule), \
     array(select r.rule from registration_permits r where r.student_id = s.id order by r.section_id, r.rule), \
     array(select c.course_id from completed_courses c where c.student_id = s.id order by c.course_id), \
     array(select r.section_id from registrations r where r.student_id = s.id and r.status = 'enrolled' \
           union select w.section_id from waitlist w where w.student_id = s.id), \
     s.enrollment_status = 'active'";

fn access_of(row: &tokio_postgres::Row, first: usize) -> AccessRecord {
    let pairs = |a: usize| -> Vec<(Uuid, String)> {
        let ids: Vec<Uuid> = row.get(first + a);
        ids.into_iter()
            .zip(row.get::<_, Vec<String>>(first + a + 1))
            .collect()
    };
    AccessRecord {
        version: row.get(first),
        epoch: row.get(first + 1),
        hold: row.get(first + 2),
        gone: false,
        facts: StudentFacts {
            groups: pairs(3),
            credit_limits: row
                .get::<_, Vec<Uuid>>(first + 5)
                .into_iter()
                .zip(row.get::<_, Vec<i32>>(first + 6))
                .collect(),
            permits: pairs(7),
            completed: row.get(first + 9),
        },
        places: row.get(first + 10),
        may_register: row.get(first + 11),
    }
}

pub async fn credentials(
    db: &impl GenericClient,
    student_number: &str,
) -> Result<Option<Credentials>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(&format!(
            "select s.id, s.password_hash, s.role, s.enrollment_status = 'active', {ACCESS_COLUMNS} \
               from students s where s.student_number = $1"
        ))
        .await?;
    Ok(db.query_opt(&stmt, &[&student_number]).await?.map(|row| {
        let role: String = row.get(2);
        Credentials {
            id: row.get(0),
            password_hash: row.get(1),
            // The column's CHECK constraint admits only the two known roles.
            role: Role::parse(&role).unwrap_or(Role::Student),
            active: row.get(3),
            access: access_of(&row, 4),
        }
    }))
}

/// Who a student is now, as a token would say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub role: Role,
    /// enrollment_status is active.
    pub active: bool,
    pub access: AccessRecord,
}

/// The standing of the student with this id.
pub async fn standing(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<Option<Standing>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(&format!(
            "select s.role, s.enrollment_status = 'active', {ACCESS_COLUMNS} \
               from students s where s.id = $1"
        ))
        .await?;
    Ok(db.query_opt(&stmt, &[&id]).await?.map(|row| {
        let role: String = row.get(0);
        Standing {
            // The column's CHECK constraint admits only the two known roles.
            role: Role::parse(&role).unwrap_or(Role::Student),
            active: row.get(1),
            access: access_of(&row, 2),
        }
    }))
}

/// The access record of the student with this id; a gone one if there is none.
pub async fn access(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<AccessRecord, tokio_postgres::Error> {
    Ok(standing(db, id)
        .await?
        .map_or_else(AccessRecord::gone, |s| s.access))
}

/// Students PostgreSQL has on a waitlist although they may not register now
/// (a hold, or a status other than active), at most `limit` of them.
pub async fn waitlisted_ineligible(
    db: &impl GenericClient,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select distinct w.student_id from waitlist w join students s on s.id = w.student_id \
              where s.enrollment_status <> 'active' \
                 or exists (select 1 from student_holds h where h.student_id = w.student_id) \
              limit $1",
        )
        .await?;
    Ok(db
        .query(&stmt, &[&limit])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// The access records of `ids` (a gone one for each id without an account).
pub async fn access_many(
    db: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, AccessRecord)>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(&format!(
            "select s.id, {ACCESS_COLUMNS} from students s where s.id = any($1)"
        ))
        .await?;
    let found: std::collections::HashMap<Uuid, AccessRecord> = db
        .query(&stmt, &[&ids])
        .await?
        .iter()
        .map(|row| (row.get(0), access_of(row, 1)))
        .collect();
    Ok(ids
        .iter()
        .map(|id| {
            (
                *id,
                found.get(id).cloned().unwrap_or_else(AccessRecord::gone),
            )
        })
        .collect())
}

/// A page of every account's access record, by id after `after`.
pub async fn access_page(
    db: &impl GenericClient,
    after: Uuid,
    limit: i64,
) -> Result<Vec<(Uuid, AccessRecord)>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(&format!(
            "select s.id, {ACCESS_COLUMNS} from students s where s.id > $1 order by s.id limit $2"
        ))
        .await?;
    Ok(db
        .query(&stmt, &[&after, &limit])
        .await?
        .iter()
        .map(|row| (row.get(0), access_of(row, 1)))
        .collect())
}

/// The id of the student with this number, and their standing.
pub async fn id_by_number(
    db: &impl GenericClient,
    student_number: &str,
) -> Result<Option<(Uuid, Standing)>, tokio_postgres::Error> {
    Ok(credentials(db, student_number).await?.map(|c| {
        (
            c.id,
            Standing {
                role: c.role,
                active: c.active,
                access: c.access,
            },
        )
    }))
}

/// One account as an admin sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Account {
    pub id: Uuid,
    pub student_number: String,
    pub name: String,
    pub email: String,
    pub enrollment_status: String,
    pub role: String,
    /// Holds placed on the account (each blocks registration), oldest first.
    pub holds: Vec<String>,
    /// Moves on whenever the account's tokens are revoked.
    pub token_epoch: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn account(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<Option<Account>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select s.id, s.student_number, s.name, s.email, s.enrollment_status, s.role, \
                    coalesce((select array_agg(h.code order by h.placed_at, h.code) \
                                from student_holds h where h.student_id = s.id), '{}'), \
                    s.token_epoch, s.created_at, s.updated_at \
               from students s where s.id = $1",
        )
        .await?;
    Ok(db.query_opt(&stmt, &[&id]).await?.map(|row| Account {
        id: row.get(0),
        student_number: row.get(1),
        name: row.get(2),
        email: row.get(3),
        enrollment_status: row.get(4),
        role: row.get(5),
        holds: row.get(6),
        token_epoch: row.get(7),
        created_at: row.get(8),
        updated_at: row.get(9),
    }))
}

/// Changes to one account; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AccountChange<'a> {
    pub enrollment_status: Option<EnrollmentStatus>,
    pub role: Option<Role>,
    /// The whole set of holds afterwards.
    pub holds: Option<&'a [String]>,
    /// Refuse every token minted so far.
    pub revoke_tokens: bool,
}

/// Applies `change` in one transaction (the triggers of
/// sql/0006_student_access.sql move the epoch and version on). Returns the
/// account's access record afterwards, or `None` if there is no such
/// account.
pub async fn change_account(
    db: &mut deadpool_postgres::Object,
    id: Uuid,
    change: &AccountChange<'_>,
) -> Result<Option<AccessRecord>, tokio_postgres::Error> {
    let tx = db.transaction().await?;
    let updated = tx
        .execute(
            "update students set \
                 enrollment_status = coalesce($2, enrollment_status), \
                 role = coalesce($3, role), \
                 token_epoch = token_epoch + $4::int \
               where id = $1",
            &[
                &id,
                &change.enrollment_status.map(EnrollmentStatus::as_str),
                &change.role.map(Role::as_str),
                &i32::from(change.revoke_tokens),
            ],
        )
        .await?;
    if updated == 0 {
        return Ok(None);
    }
    if let Some(holds) = change.holds {
        // Only what differs is written, so an unchanged set moves no version.
        tx.execute(
            "delete from student_holds where student_id = $1 and not (code = any($2))",
            &[&id, &holds],
        )
        .await?;
        tx.execute(
            "insert into student_holds (student_id, code) \
             select $1, code from unnest($2::text[]) code on conflict do nothing",
            &[&id, &holds],
        )
        .await?;
    }
    let record = access(&tx, id).await?;
    tx.commit().await?;
    Ok(Some(record))
}

/// Accounts changed or deleted at or after `since` (by `updated_at`, which
/// every change of an access record moves, and the deletions' tombstones):
/// what a listener may have missed.
pub async fn changed_since(
    db: &impl GenericClient,
    since: DateTime<Utc>,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = db
        .query(
            "select id from students where updated_at >= $1 \
             union select id from deleted_students where deleted_at >= $1",
            &[&since],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Deletes an account that holds nothing: a student with registrations or
/// waitlist entries (even dropped ones, which are history) is kept and the
/// foreign-key violation returned. Whether a row was deleted.
pub async fn delete_account(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    Ok(db
        .execute("delete from students where id = $1", &[&id])
        .await?
        == 1)
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
    /// The deadline of the seat an offer holds for them, if one does.
    pub offer_expires_at: Option<DateTime<Utc>>,
}

/// Each of `sections` with its semester and its course's credits.
pub async fn section_credits(
    db: &impl GenericClient,
    sections: &[Uuid],
) -> Result<Vec<(Uuid, Uuid, i32)>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select s.id, s.semester_id, c.credits from sections s \
               join courses c on c.id = s.course_id where s.id = any($1)",
        )
        .await?;
    Ok(db
        .query(&stmt, &[&sections])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect())
}

/// The student's credit limit in each of `semesters`: their own, else the
/// semester's (None: no limit).
pub async fn credit_limits(
    db: &impl GenericClient,
    student: Uuid,
    semesters: &[Uuid],
) -> Result<Vec<(Uuid, (Option<i32>, String))>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select s.id, coalesce(l.credit_limit, s.credit_limit), s.credit_counting \
               from semesters s \
               left join student_credit_limits l on l.semester_id = s.id and l.student_id = $1 \
              where s.id = any($2) order by s.id",
        )
        .await?;
    Ok(db
        .query(&stmt, &[&student, &semesters])
        .await?
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect())
}

pub async fn waitlist(
    db: &impl GenericClient,
    student_id: Uuid,
) -> Result<Vec<WaitlistEntry>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select w.section_id, c.course_code, s.section_number, w.position, w.created_at, \
                    w.offer_expires_at \
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
            offer_expires_at: row.get(5),
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
