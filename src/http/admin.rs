//! Catalog and account management for admins, without SQL.
//!
//! Bodies reject unknown fields; values are checked before any write; a
//! duplicate answers 409 `already_exists`, an unknown course or semester 422
//! `unknown_reference`.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use hyper::{body::Incoming, http::request::Parts, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{auth::authenticate_admin, body, json, ApiError, ApiResult};
use crate::{
    domain::{check_text, EnrollmentStatus, Role},
    seats::{EnforcedSettings, Resize, SectionChange},
    state::AppState,
    store::{self, catalog, students},
};

/// Largest section accepted; a lecture hall, not a typo of an extra zero.
const MAX_SECTION_SEATS: i32 = 10_000;
/// Largest waitlist accepted per section.
const MAX_WAITLIST: i32 = 10_000;

fn validation(detail: String) -> ApiError {
    ApiError::unprocessable("validation_failed", detail)
}

fn conflict_or(e: tokio_postgres::Error, what: &str) -> ApiError {
    if let Some(constraint) = store::unique_violation(&e) {
        return ApiError::Conflict {
            code: "already_exists",
            detail: format!("{what} already exists ({constraint})"),
        };
    }
    if let Some(constraint) = store::foreign_key_violation(&e) {
        return ApiError::unprocessable(
            "unknown_reference",
            format!("a referenced record does not exist ({constraint})"),
        );
    }
    e.into()
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSemester {
    name: String,
    start_date: NaiveDate,
    end_date: NaiveDate,
    registration_start: DateTime<Utc>,
    registration_end: DateTime<Utc>,
    #[serde(default = "default_true")]
    is_active: bool,
}

pub async fn create_semester(state: &AppState, req: &Parts, body: Incoming) -> ApiResult {
    authenticate_admin(state, req)?;
    let s: CreateSemester = body::json(req, body, state.settings.http.max_body_bytes).await?;
    check_text("name", &s.name, 1, 100).map_err(validation)?;
    // chrono parses years far outside PostgreSQL's date range (which starts
    // in 4713 BC); a semester is dated within the years 1 to 9999.
    let years = [
        s.start_date.year(),
        s.end_date.year(),
        s.registration_start.year(),
        s.registration_end.year(),
    ];
    if years.iter().any(|y| !(1..=9999).contains(y)) {
        return Err(validation("dates must lie in the years 1 to 9999".into()));
    }
    if s.end_date < s.start_date {
        return Err(validation("end_date must not precede start_date".into()));
    }
    if s.registration_end <= s.registration_start {
        return Err(validation(
            "registration_end must be after registration_start".into(),
        ));
    }
    let new = catalog::NewSemester {
        name: s.name.trim().to_string(),
        start_date: s.start_date,
        end_date: s.end_date,
        registration_start: s.registration_start,
        registration_end: s.registration_end,
        is_active: s.is_active,
    };
    let db = state.db.get().await?;
    let created = catalog::insert_semester(&db, &new)
        .await
        .map_err(|e| conflict_or(e, "a semester with this name"))?;
    state.catalog_cache.clear();
    json(StatusCode::CREATED, &created)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCourse {
    course_code: String,
    course_name: String,
    #[serde(default)]
    description: String,
    credits: i32,
    #[serde(default)]
    department: String,
}

pub async fn create_course(state: &AppState, req: &Parts, body: Incoming) -> ApiResult {
    authenticate_admin(state, req)?;
    let c: CreateCourse = body::json(req, body, state.settings.http.max_body_bytes).await?;
    check_text("course_code", &c.course_code, 1, 32).map_err(validation)?;
    check_text("course_name", &c.course_name, 1, 200).map_err(validation)?;
    check_text("description", &c.description, 0, 4000).map_err(validation)?;
    check_text("department", &c.department, 0, 100).map_err(validation)?;
    if !(0..=30).contains(&c.credits) {
        return Err(validation("credits must be between 0 and 30".into()));
    }
    let new = catalog::NewCourse {
        course_code: c.course_code.trim().to_string(),
        course_name: c.course_name.trim().to_string(),
        description: c.description,
        credits: c.credits,
        department: c.department.trim().to_string(),
    };
    let db = state.db.get().await?;
    let created = catalog::insert_course(&db, &new)
        .await
        .map_err(|e| conflict_or(e, "a course with this code"))?;
    state.catalog_cache.clear();
    json(StatusCode::CREATED, &created)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSection {
    course_id: Uuid,
    semester_id: Uuid,
    section_number: String,
    #[serde(default)]
    instructor: String,
    #[serde(default)]
    schedule: String,
    #[serde(default)]
    room: String,
    total_seats: i32,
    #[serde(default)]
    waitlist_limit: i32,
    #[serde(default = "default_true")]
    is_active: bool,
}

pub async fn create_section(state: &AppState, req: &Parts, body: Incoming) -> ApiResult {
    authenticate_admin(state, req)?;
    let s: CreateSection = body::json(req, body, state.settings.http.max_body_bytes).await?;
    check_text("section_number", &s.section_number, 1, 16).map_err(validation)?;
    check_text("instructor", &s.instructor, 0, 200).map_err(validation)?;
    check_text("schedule", &s.schedule, 0, 200).map_err(validation)?;
    check_text("room", &s.room, 0, 100).map_err(validation)?;
    if !(0..=MAX_SECTION_SEATS).contains(&s.total_seats) {
        return Err(validation(format!(
            "total_seats must be between 0 and {MAX_SECTION_SEATS}"
        )));
    }
    if !(0..=MAX_WAITLIST).contains(&s.waitlist_limit) {
        return Err(validation(format!(
            "waitlist_limit must be between 0 and {MAX_WAITLIST}"
        )));
    }
    let new = catalog::NewSection {
        course_id: s.course_id,
        semester_id: s.semester_id,
        section_number: s.section_number.trim().to_string(),
        instructor: s.instructor.trim().to_string(),
        schedule: s.schedule.trim().to_string(),
        room: s.room.trim().to_string(),
        total_seats: s.total_seats,
        waitlist_limit: s.waitlist_limit,
        is_active: s.is_active,
    };
    let db = state.db.get().await?;
    let id = catalog::insert_section(&db, &new)
        .await
        .map_err(|e| conflict_or(e, "this section number for the course and semester"))?;
    let created = catalog::section_by_id(&db, id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("section {id} vanished after insert")))?;
    drop(db);
    // Ready for registrations at once; if Redis is away now, the first
    // registration loads it instead.
    if let Err(e) = state.registrar.ensure_loaded(&[id]).await {
        tracing::warn!(error = %e, section = %id, "new section not loaded into Redis yet");
    }
    state.catalog_cache.clear();
    json(StatusCode::CREATED, &created)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateStudent {
    student_number: String,
    name: String,
    email: String,
    password: String,
    #[serde(default = "default_role")]
    role: Role,
    #[serde(default = "default_status")]
    enrollment_status: EnrollmentStatus,
}

fn default_role() -> Role {
    Role::Student
}

fn default_status() -> EnrollmentStatus {
    EnrollmentStatus::Active
}

#[derive(Serialize)]
struct CreatedStudent {
    id: Uuid,
    student_number: String,
}

#[derive(Serialize)]
struct CreatedStudents {
    created: usize,
    students: Vec<CreatedStudent>,
}

fn check_student(i: usize, s: &CreateStudent) -> Result<(), ApiError> {
    let at = |e: String| validation(format!("students[{i}]: {e}"));
    if s.student_number.is_empty()
        || s.student_number.len() > 32
        || !s
            .student_number
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(at(
            "student_number must be 1 to 32 ASCII letters, digits, '-' or '_'".into(),
        ));
    }
    check_text("name", &s.name, 1, 200).map_err(at)?;
    let email_ok = s.email.len() <= 254
        && s.email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !s
                    .email
                    .contains(|c: char| c.is_whitespace() || c.is_control())
        });
    if !email_ok {
        return Err(at("email is not a valid address".into()));
    }
    let len = s.password.chars().count();
    if !(8..=128).contains(&len) {
        return Err(at("password must be 8 to 128 characters".into()));
    }
    Ok(())
}

/// Bulk account creation: all rows or none.
pub async fn create_students(state: &AppState, req: &Parts, body: Incoming) -> ApiResult {
    authenticate_admin(state, req)?;
    let list: Vec<CreateStudent> =
        body::json(req, body, state.settings.http.max_body_bytes).await?;
    let max = state.settings.api.max_bulk_students;
    if list.is_empty() || list.len() > max {
        return Err(validation(format!(
            "send between 1 and {max} students per call"
        )));
    }
    for (i, s) in list.iter().enumerate() {
        check_student(i, s)?;
    }
    let mut hashing = tokio::task::JoinSet::new();
    for (i, s) in list.iter().enumerate() {
        let passwords = state.passwords.clone();
        let password = s.password.clone();
        hashing.spawn(async move { (i, passwords.hash(password).await) });
    }
    let mut hashes = vec![String::new(); list.len()];
    while let Some(joined) = hashing.join_next().await {
        let (i, hash) = joined.map_err(|e| ApiError::Internal(e.into()))?;
        hashes[i] = hash?;
    }
    let rows: Vec<students::NewStudent> = list
        .into_iter()
        .zip(hashes)
        .map(|(s, password_hash)| students::NewStudent {
            id: Uuid::now_v7(),
            student_number: s.student_number,
            name: s.name.trim().to_string(),
            email: s.email.trim().to_lowercase(),
            enrollment_status: s.enrollment_status,
            password_hash,
            role: s.role,
        })
        .collect();
    let db = state.db.get().await?;
    students::insert_many(&db, &rows, false)
        .await
        .map_err(|e| conflict_or(e, "a student with this number or email"))?;
    json(
        StatusCode::CREATED,
        &CreatedStudents {
            created: rows.len(),
            students: rows
                .into_iter()
                .map(|r| CreatedStudent {
                    id: r.id,
                    student_number: r.student_number,
                })
                .collect(),
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateSection {
    total_seats: Option<i32>,
    waitlist_limit: Option<i32>,
    is_active: Option<bool>,
    waitlist_mode: Option<WaitlistMode>,
    offer_ttl_secs: Option<i32>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum WaitlistMode {
    Auto,
    Offer,
}

/// The longest an offer may be held: 30 days (sql/0011_waitlist_offers.sql).
const MAX_OFFER_TTL_SECS: i32 = 30 * 24 * 3600;

#[derive(Serialize)]
struct UpdatedSection {
    #[serde(flatten)]
    section: catalog::Section,
    /// Waitlisted students who took the new seats, in order (in auto
    /// mode, and those holding an offer when the section switches to auto).
    promoted_student_ids: Vec<Uuid>,
    /// Waitlisted students the new seats are held for (offer mode).
    offered_student_ids: Vec<Uuid>,
}

/// Capacity, waitlist limit and active flag go through `resize.lua`, so new
/// seats reach the waitlist head first and the change is ordered with every
/// registration in the section's outbox; PostgreSQL follows from there.
///
/// `is_active` is the section's own flag: PostgreSQL records it as sent,
/// while registrations are taken only when the section AND its semester
/// are active (Redis keeps both flags, see `lua/resize.lua`). So
/// activating a section of an inactive semester is accepted and recorded,
/// but register keeps answering `inactive` until the semester is active;
/// the answer's `is_active` shows what is enforced.
pub async fn update_section(state: &AppState, req: &Parts, body: Incoming, id: Uuid) -> ApiResult {
    authenticate_admin(state, req)?;
    super::registration::ensure_serving(state)?;
    let u: UpdateSection = body::json(req, body, state.settings.http.max_body_bytes).await?;
    if u.total_seats.is_none()
        && u.waitlist_limit.is_none()
        && u.is_active.is_none()
        && u.waitlist_mode.is_none()
        && u.offer_ttl_secs.is_none()
    {
        return Err(validation(
            "name at least one of total_seats, waitlist_limit, is_active, waitlist_mode, \
             offer_ttl_secs"
                .into(),
        ));
    }
    if u.offer_ttl_secs
        .is_some_and(|n| !(1..=MAX_OFFER_TTL_SECS).contains(&n))
    {
        return Err(validation(format!(
            "offer_ttl_secs must be between 1 and {MAX_OFFER_TTL_SECS}"
        )));
    }
    if u.total_seats
        .is_some_and(|n| !(0..=MAX_SECTION_SEATS).contains(&n))
    {
        return Err(validation(format!(
            "total_seats must be between 0 and {MAX_SECTION_SEATS}"
        )));
    }
    if u.waitlist_limit
        .is_some_and(|n| !(0..=MAX_WAITLIST).contains(&n))
    {
        return Err(validation(format!(
            "waitlist_limit must be between 0 and {MAX_WAITLIST}"
        )));
    }
    if !state.redis.is_loaded(id).await? {
        let known = state.registrar.ensure_loaded(&[id]).await?;
        if known.is_empty() {
            return Err(ApiError::not_found("section"));
        }
    }
    // The answer shows the catalog row, so read it before changing anything:
    // without PostgreSQL the change is refused (503) with nothing changed,
    // rather than made and then answered as if it had failed.
    let mut section = {
        let db = state.db.get().await?;
        catalog::section_by_id(&db, id)
            .await?
            .ok_or_else(|| ApiError::not_found("section"))?
    };
    let now = crate::domain::now_ms();
    let change = SectionChange {
        capacity: u.total_seats,
        waitlist_limit: u.waitlist_limit,
        active: u.is_active,
        offer_mode: u.waitlist_mode.map(|m| m == WaitlistMode::Offer),
        offer_ttl_ms: u.offer_ttl_secs.map(|s| i64::from(s) * 1000),
    };
    let (promoted, offered) = match state.registrar.resize(id, change, now).await? {
        Resize::Resized {
            promoted, offered, ..
        } => (promoted, offered),
        Resize::BelowEnrolled { enrolled } => {
            return Err(ApiError::Conflict {
                code: "below_enrolled",
                detail: format!(
                    "{enrolled} seats are enrolled or held by offers; capacity cannot go below that"
                ),
            })
        }
        Resize::WaitlistNotEmpty { waiting } => {
            return Err(ApiError::Conflict {
                code: "waitlist_not_empty",
                detail: format!(
                    "{waiting} students wait for a seat to be offered to them; the section can \
                     return to auto mode once its waitlist is empty"
                ),
            })
        }
        Resize::NotLoaded => {
            return Err(ApiError::Unavailable {
                code: "section_unavailable",
                detail: "the section is being reloaded; retry shortly",
                retry_after_secs: 1,
            })
        }
    };
    state.catalog_cache.clear();
    crate::http::catalog::overlay_live(state, std::slice::from_mut(&mut section)).await;
    // PostgreSQL learns of the change through the outbox a moment later, so
    // the row read above shows the old settings: answer with what Redis now
    // enforces (the live counts above come from there too). The change is
    // made by now, so a failed read falls back to what the request asked for
    // instead of turning the answer into an error.
    let enforced = state.redis.enforced_settings(id).await.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "section settings unreadable; answering with the request's");
        EnforcedSettings {
            waitlist_limit: u.waitlist_limit,
            active: u.is_active,
            offer_mode: change.offer_mode,
            offer_ttl_ms: change.offer_ttl_ms,
        }
    });
    section.waitlist_limit = enforced.waitlist_limit.unwrap_or(section.waitlist_limit);
    section.is_active = enforced.active.unwrap_or(section.is_active);
    if let Some(offer) = enforced.offer_mode {
        section.waitlist_mode = if offer { "offer" } else { "auto" }.into();
    }
    if let Some(ttl) = enforced.offer_ttl_ms {
        section.offer_ttl_secs = i32::try_from(ttl / 1000).unwrap_or(section.offer_ttl_secs);
    }
    json(
        StatusCode::OK,
        &UpdatedSection {
            section,
            promoted_student_ids: promoted,
            offered_student_ids: offered,
        },
    )
}
