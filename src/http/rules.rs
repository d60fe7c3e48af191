//! The registrar's rules, administered (issue 14; `crate::rules` enforces
//! them): a semester's credit limit and priority groups, students' groups,
//! own credit limits, completed courses and permits, a course's requisites,
//! a section's meetings.
//!
//! A change to a student's facts is in force from the next request on every
//! server: the student's access record moves on (sql/0009), and it is
//! stored in Redis before the answer, which makes every server reload the
//! student's rules copy. A catalogue change (a semester's or a course's or
//! a section's) is in force at once on this server and within
//! `rules.facts_ttl_ms` on the others.

use chrono::Datelike;
use hyper::{body::Incoming, http::request::Parts, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{auth::authenticate_admin, body, json, ApiError, ApiResult};
use crate::{
    state::AppState,
    store::{
        self,
        rules::{CourseRules, CourseRulesError, Meeting, PriorityGroup, SemesterRules},
    },
};

/// Priority groups one semester may have.
const MAX_GROUPS: usize = 50;
/// Students one assignment call may name.
const MAX_ASSIGN: usize = 10_000;
/// Completed courses one import call may carry.
const MAX_IMPORT: usize = 10_000;
/// Prerequisite groups (ANDed) and alternatives per group (ORed).
const MAX_PREREQ_GROUPS: usize = 32;
const MAX_ALTERNATIVES: usize = 20;
const MAX_COREQUISITES: usize = 20;
/// Meetings one section may have.
const MAX_MEETINGS: usize = 14;
/// Highest credit limit accepted (sql/0009's check).
const MAX_CREDIT_LIMIT: i32 = 200;
/// The rules a permit may waive (sql/0009's check).
pub const PERMIT_RULES: [&str; 5] = [
    "time_ticket",
    "prerequisite",
    "credit_limit",
    "time_conflict",
    "course_repeat",
];

fn validation(detail: impl Into<String>) -> ApiError {
    ApiError::unprocessable("validation_failed", detail)
}

fn unknown_reference(e: tokio_postgres::Error) -> ApiError {
    if let Some(constraint) = store::foreign_key_violation(&e) {
        return ApiError::unprocessable(
            "unknown_reference",
            format!("a referenced record does not exist ({constraint})"),
        );
    }
    e.into()
}

/// A group or hold code: 1 to 40 of a-z, 0-9 and _, starting with a letter.
fn is_code(code: &str) -> bool {
    let mut chars = code.chars();
    code.len() <= 40
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_limit(limit: Option<i32>) -> Result<(), ApiError> {
    if limit.is_some_and(|l| !(0..=MAX_CREDIT_LIMIT).contains(&l)) {
        return Err(validation(format!(
            "credit_limit must be between 0 and {MAX_CREDIT_LIMIT}"
        )));
    }
    Ok(())
}

/// A change to these students' rule facts is in force before the answer:
/// their access records (moved on by the change) are stored in Redis.
async fn in_force(state: &AppState, students: &[Uuid]) -> Result<(), ApiError> {
    for chunk in students.chunks(1000) {
        crate::access::refresh(state, chunk).await.map_err(|e| {
            tracing::warn!(error = %format!("{e:#}"), "rules changed, but not yet in Redis");
            ApiError::Unavailable {
                code: "change_not_in_force",
                detail:
                    "the change is saved, but not yet in force on every server; repeat the request",
                retry_after_secs: 1,
            }
        })?;
    }
    Ok(())
}

/// The catalogue's facts changed: this server rereads them at once.
async fn catalogue_changed(state: &AppState) {
    state.registrar.catalogue_changed().await;
    state.catalog_cache.clear();
}

pub async fn semester_rules(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    authenticate_admin(state, req)?;
    let db = state.db.get().await?;
    let rules = store::rules::semester_rules(&db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("semester"))?;
    json(StatusCode::OK, &rules)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SemesterRulesBody {
    credit_limit: Option<i32>,
    /// Absent: enrolled_and_waitlisted (this replaces the whole rule set).
    #[serde(default)]
    credit_counting: store::rules::CreditCounting,
    #[serde(default)]
    priority_groups: Vec<PriorityGroup>,
}

/// Replaces the semester's credit limit and priority groups.
pub async fn set_semester_rules(
    state: &AppState,
    req: &Parts,
    body: Incoming,
    id: Uuid,
) -> ApiResult {
    authenticate_admin(state, req)?;
    let b: SemesterRulesBody = body::json(req, body, state.settings.http.max_body_bytes).await?;
    check_limit(b.credit_limit)?;
    if b.priority_groups.len() > MAX_GROUPS {
        return Err(validation(format!("at most {MAX_GROUPS} priority groups")));
    }
    let mut seen = std::collections::HashSet::new();
    for g in &b.priority_groups {
        if !is_code(&g.code) {
            return Err(validation(format!(
                "priority group {:?} is not a code: 1 to 40 of a-z, 0-9 and _, starting with a letter",
                g.code
            )));
        }
        if !seen.insert(&g.code) {
            return Err(validation("priority group codes must not repeat"));
        }
        if !(1..=9999).contains(&g.opens_at.year()) {
            return Err(validation("opens_at must lie in the years 1 to 9999"));
        }
    }
    let rules = SemesterRules {
        credit_limit: b.credit_limit,
        credit_counting: b.credit_counting,
        priority_groups: b.priority_groups,
    };
    let mut db = state.db.get().await?;
    let after = store::rules::set_semester_rules(&mut db, id, &rules)
        .await?
        .ok_or_else(|| ApiError::not_found("semester"))?;
    drop(db);
    catalogue_changed(state).await;
    tracing::info!(semester = %id, groups = after.priority_groups.len(), credit_limit = ?after.credit_limit, "semester rules changed by an admin");
    json(StatusCode::OK, &after)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    /// None: the students leave their group (registration opens for them
    /// with the semester's window).
    priority_group: Option<String>,
    student_ids: Vec<Uuid>,
}

#[derive(Serialize)]
struct Assigned {
    assigned: u64,
}

/// Puts students in one of the semester's priority groups (or in none).
pub async fn assign_group(state: &AppState, req: &Parts, body: Incoming, id: Uuid) -> ApiResult {
    authenticate_admin(state, req)?;
    let b: AssignBody = body::json(req, body, state.settings.http.max_body_bytes).await?;
    if b.student_ids.is_empty() || b.student_ids.len() > MAX_ASSIGN {
        return Err(validation(format!(
            "student_ids must name 1 to {MAX_ASSIGN} students"
        )));
    }
    if let Some(code) = &b.priority_group {
        if !is_code(code) {
            return Err(validation(format!("priority group {code:?} is not a code")));
        }
    }
    let mut students = b.student_ids;
    students.sort_unstable();
    students.dedup();
    let mut db = state.db.get().await?;
    if store::rules::semester_rules(&db, id).await?.is_none() {
        return Err(ApiError::not_found("semester"));
    }
    let assigned = store::rules::assign_group(&mut db, id, b.priority_group.as_deref(), &students)
        .await
        .map_err(unknown_reference)?;
    drop(db);
    in_force(state, &students).await?;
    tracing::info!(semester = %id, group = ?b.priority_group, students = students.len(), "priority group assigned by an admin");
    json(StatusCode::OK, &Assigned { assigned })
}

pub async fn course_rules(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    authenticate_admin(state, req)?;
    let db = state.db.get().await?;
    let rules = store::rules::course_rules(&db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("course"))?;
    json(StatusCode::OK, &rules)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CourseRulesBody {
    #[serde(default)]
    prerequisites: Vec<Vec<String>>,
    #[serde(default)]
    corequisites: Vec<String>,
    #[serde(default)]
    repeatable: bool,
}

/// Replaces a course's prerequisites (an AND of ORs of course codes), its
/// corequisites and whether it repeats.
pub async fn set_course_rules(
    state: &AppState,
    req: &Parts,
    body: Incoming,
    id: Uuid,
) -> ApiResult {
    authenticate_admin(state, req)?;
    let b: CourseRulesBody = body::json(req, body, state.settings.http.max_body_bytes).await?;
    if b.prerequisites.len() > MAX_PREREQ_GROUPS {
        return Err(validation(format!(
            "at most {MAX_PREREQ_GROUPS} prerequisite groups"
        )));
    }
    if b.prerequisites
        .iter()
        .any(|g| g.is_empty() || g.len() > MAX_ALTERNATIVES)
    {
        return Err(validation(format!(
            "each prerequisite group names 1 to {MAX_ALTERNATIVES} course codes"
        )));
    }
    if b.corequisites.len() > MAX_COREQUISITES {
        return Err(validation(format!(
            "at most {MAX_COREQUISITES} corequisites"
        )));
    }
    for code in b.prerequisites.iter().flatten().chain(&b.corequisites) {
        crate::domain::check_text("course_code", code, 1, 32).map_err(validation)?;
    }
    let rules = CourseRules {
        prerequisites: b.prerequisites,
        corequisites: b.corequisites,
        repeatable: b.repeatable,
    };
    let mut db = state.db.get().await?;
    let after = match store::rules::set_course_rules(&mut db, id, &rules).await {
        Ok(after) => after,
        Err(CourseRulesError::NoCourse) => return Err(ApiError::not_found("course")),
        Err(CourseRulesError::UnknownCodes(codes)) => {
            return Err(ApiError::unprocessable(
                "unknown_reference",
                format!("no course has the codes {codes:?}"),
            ))
        }
        Err(CourseRulesError::Db(e)) if store::check_violation(&e).is_some() => {
            return Err(validation("a course cannot require itself"))
        }
        Err(CourseRulesError::Db(e)) => return Err(e.into()),
    };
    drop(db);
    catalogue_changed(state).await;
    tracing::info!(course = %id, "course rules changed by an admin");
    json(StatusCode::OK, &after)
}

/// A meeting as the API writes it: days as letters (M T W R F S U, the
/// registrar's convention) and times as HH:MM, end exclusive.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MeetingBody {
    pub days: String,
    pub start: String,
    pub end: String,
}

const DAY_LETTERS: [char; 7] = ['M', 'T', 'W', 'R', 'F', 'S', 'U'];

fn minutes(text: &str) -> Option<i16> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i16, i16) = (h.parse().ok()?, m.parse().ok()?);
    ((0..=24).contains(&h) && (0..60).contains(&m) && h * 60 + m <= 1440).then_some(h * 60 + m)
}

fn clock(minutes: i16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Parses a meeting; None names what is wrong.
fn meeting_of(m: &MeetingBody) -> Result<Meeting, String> {
    let mut days = 0i16;
    for c in m.days.chars() {
        let bit = DAY_LETTERS
            .iter()
            .position(|d| *d == c)
            .ok_or_else(|| format!("days {:?}: use the letters MTWRFSU", m.days))?;
        if days & (1 << bit) != 0 {
            return Err(format!("days {:?} repeats a day", m.days));
        }
        days |= 1 << bit;
    }
    if days == 0 {
        return Err("days must name at least one day".into());
    }
    let start = minutes(&m.start).ok_or_else(|| format!("start {:?} is not HH:MM", m.start))?;
    let end = minutes(&m.end).ok_or_else(|| format!("end {:?} is not HH:MM", m.end))?;
    if end <= start || start >= 1440 {
        return Err("a meeting ends after it starts, within the day".into());
    }
    Ok(Meeting {
        days,
        start_minute: start,
        end_minute: end,
    })
}

fn body_of(m: &Meeting) -> MeetingBody {
    MeetingBody {
        days: DAY_LETTERS
            .iter()
            .enumerate()
            .filter(|(i, _)| m.days & (1 << i) != 0)
            .map(|(_, d)| *d)
            .collect(),
        start: clock(m.start_minute),
        end: clock(m.end_minute),
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meetings {
    meetings: Vec<MeetingBody>,
}

pub async fn section_meetings(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    authenticate_admin(state, req)?;
    let db = state.db.get().await?;
    if store::catalog::section_by_id(&db, id).await?.is_none() {
        return Err(ApiError::not_found("section"));
    }
    let meetings = store::rules::meetings(&db, id).await?;
    json(
        StatusCode::OK,
        &Meetings {
            meetings: meetings.iter().map(body_of).collect(),
        },
    )
}

/// Replaces when a section meets (the time-conflict rule reads it).
pub async fn set_section_meetings(
    state: &AppState,
    req: &Parts,
    body: Incoming,
    id: Uuid,
) -> ApiResult {
    authenticate_admin(state, req)?;
    let b: Meetings = body::json(req, body, state.settings.http.max_body_bytes).await?;
    if b.meetings.len() > MAX_MEETINGS {
        return Err(validation(format!("at most {MAX_MEETINGS} meetings")));
    }
    let mut meetings = b
        .meetings
        .iter()
        .map(meeting_of)
        .collect::<Result<Vec<_>, _>>()
        .map_err(validation)?;
    meetings.sort_by_key(|m| (m.days, m.start_minute));
    if meetings
        .windows(2)
        .any(|w| w[0].days == w[1].days && w[0].start_minute == w[1].start_minute)
    {
        return Err(validation(
            "two meetings start on the same days at the same time",
        ));
    }
    let mut db = state.db.get().await?;
    if !store::rules::set_meetings(&mut db, id, &meetings).await? {
        return Err(ApiError::not_found("section"));
    }
    drop(db);
    catalogue_changed(state).await;
    json(
        StatusCode::OK,
        &Meetings {
            meetings: meetings.iter().map(body_of).collect(),
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletedItem {
    student_id: Uuid,
    course_code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletedBody {
    items: Vec<CompletedItem>,
}

#[derive(Serialize)]
struct Recorded {
    recorded: u64,
}

/// Imports completed courses (student, course code); already recorded
/// ones are kept as they are.
pub async fn import_completed(state: &AppState, req: &Parts, body: Incoming) -> ApiResult {
    authenticate_admin(state, req)?;
    let b: CompletedBody = body::json(req, body, state.settings.http.max_body_bytes).await?;
    if b.items.is_empty() || b.items.len() > MAX_IMPORT {
        return Err(validation(format!(
            "items must hold 1 to {MAX_IMPORT} rows"
        )));
    }
    for item in &b.items {
        crate::domain::check_text("course_code", &item.course_code, 1, 32).map_err(validation)?;
    }
    let rows: Vec<(Uuid, String)> = b
        .items
        .into_iter()
        .map(|i| (i.student_id, i.course_code.trim().to_string()))
        .collect();
    let mut db = state.db.get().await?;
    let recorded = match store::rules::import_completed(&mut db, &rows)
        .await
        .map_err(unknown_reference)?
    {
        Ok(n) => n,
        Err(codes) => {
            return Err(ApiError::unprocessable(
                "unknown_reference",
                format!("no course has the codes {codes:?}"),
            ))
        }
    };
    drop(db);
    let mut students: Vec<Uuid> = rows.iter().map(|(s, _)| *s).collect();
    students.sort_unstable();
    students.dedup();
    in_force(state, &students).await?;
    json(StatusCode::OK, &Recorded { recorded })
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditLimitBody {
    semester_id: Uuid,
    /// None: the semester's default applies again.
    credit_limit: Option<i32>,
}

/// Sets or removes a student's own credit limit for a semester.
pub async fn set_credit_limit(
    state: &AppState,
    req: &Parts,
    body: Incoming,
    id: Uuid,
) -> ApiResult {
    authenticate_admin(state, req)?;
    let b: CreditLimitBody = body::json(req, body, state.settings.http.max_body_bytes).await?;
    check_limit(b.credit_limit)?;
    let db = state.db.get().await?;
    if store::students::standing(&db, id).await?.is_none() {
        return Err(ApiError::StudentNotFound);
    }
    store::rules::set_credit_limit(&db, id, b.semester_id, b.credit_limit)
        .await
        .map_err(unknown_reference)?;
    drop(db);
    in_force(state, &[id]).await?;
    json(StatusCode::OK, &b)
}

#[derive(Serialize)]
struct PermitList {
    items: Vec<store::rules::Permit>,
}

pub async fn permits(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    authenticate_admin(state, req)?;
    let db = state.db.get().await?;
    if store::students::standing(&db, id).await?.is_none() {
        return Err(ApiError::StudentNotFound);
    }
    let items = store::rules::permits(&db, id).await?;
    json(StatusCode::OK, &PermitList { items })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermitBody {
    section_id: Uuid,
    rule: String,
    #[serde(default)]
    note: String,
}

fn check_rule(rule: &str) -> Result<(), ApiError> {
    if !PERMIT_RULES.contains(&rule) {
        return Err(validation(format!(
            "rule must be one of {}",
            PERMIT_RULES.join(", ")
        )));
    }
    Ok(())
}

/// Waives one rule for the student in one section, recorded with who and when.
pub async fn grant_permit(state: &AppState, req: &Parts, body: Incoming, id: Uuid) -> ApiResult {
    let admin = authenticate_admin(state, req)?;
    let b: PermitBody = body::json(req, body, state.settings.http.max_body_bytes).await?;
    check_rule(&b.rule)?;
    crate::domain::check_text("note", &b.note, 0, 500).map_err(validation)?;
    let db = state.db.get().await?;
    if store::students::standing(&db, id).await?.is_none() {
        return Err(ApiError::StudentNotFound);
    }
    let permit =
        store::rules::grant_permit(&db, id, b.section_id, &b.rule, admin.student_id, &b.note)
            .await
            .map_err(unknown_reference)?;
    drop(db);
    in_force(state, &[id]).await?;
    tracing::info!(student = %id, section = %b.section_id, rule = %b.rule, admin = %admin.student_id, "permit granted");
    json(StatusCode::CREATED, &permit)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    section_id: Uuid,
    rule: String,
}

/// Takes a permit back; 404 when there was none.
pub async fn revoke_permit(state: &AppState, req: &Parts, body: Incoming, id: Uuid) -> ApiResult {
    let admin = authenticate_admin(state, req)?;
    let b: RevokeBody = body::json(req, body, state.settings.http.max_body_bytes).await?;
    check_rule(&b.rule)?;
    let db = state.db.get().await?;
    if !store::rules::revoke_permit(&db, id, b.section_id, &b.rule).await? {
        return Err(ApiError::NotFound("no such permit".into()));
    }
    drop(db);
    in_force(state, &[id]).await?;
    tracing::info!(student = %id, section = %b.section_id, rule = %b.rule, admin = %admin.student_id, "permit revoked");
    Ok(super::empty(StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(days: &str, start: &str, end: &str) -> MeetingBody {
        MeetingBody {
            days: days.into(),
            start: start.into(),
            end: end.into(),
        }
    }

    #[test]
    fn meetings_read_as_day_letters_and_clock_times_and_round_trip() {
        let parsed = meeting_of(&m("MWF", "09:00", "09:50")).unwrap();
        assert_eq!(parsed.days, 0b10101);
        assert_eq!((parsed.start_minute, parsed.end_minute), (540, 590));
        assert_eq!(body_of(&parsed), m("MWF", "09:00", "09:50"));
        assert_eq!(
            meeting_of(&m("U", "23:00", "24:00")).unwrap().end_minute,
            1440
        );
        for bad in [
            m("", "09:00", "10:00"),
            m("MM", "09:00", "10:00"),
            m("X", "09:00", "10:00"),
            m("M", "10:00", "09:00"),
            m("M", "10:00", "10:00"),
            m("M", "9:00", "10:00"),
            m("M", "09:60", "10:00"),
            m("M", "24:00", "24:30"),
            m("M", "09:00", "25:00"),
        ] {
            assert!(meeting_of(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn codes_are_short_lowercase_words() {
        assert!(is_code("seniors"));
        assert!(is_code("year_4"));
        assert!(!is_code("Seniors"));
        assert!(!is_code("4th"));
        assert!(!is_code(""));
        assert!(!is_code(&"a".repeat(41)));
    }
}
