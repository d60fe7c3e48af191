//! `POST /register` and `POST /register/drop`: the hot path's HTTP side.
//!
//! Decodes and validates the request, authenticates, applies idempotency,
//! calls the registration service ([`crate::registration`]) and encodes its
//! decisions; the service runs the scripts and hands their events to
//! persistence.

use std::collections::HashMap;

use hyper::{body::Incoming, http::request::Parts, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{auth::authenticate, body, idempotency, json, limits::CallerHold, ApiError, ApiResult};
use crate::{
    auth::Principal,
    domain::{now_ms, Role},
    metrics::{DROPS, REGISTRATIONS},
    registration::Registered,
    rules::Refusal,
    seats::{watch::RedisWatch, Drop, Reserve},
    state::{AppState, NotServing},
    store,
};

/// Refuses register, drop and capacity changes until the server may act on
/// Redis's state ([`AppState::registration_gate`], which `/ready` reports):
/// before warm-up a section Redis holds may still be behind PostgreSQL.
/// While Redis is revalidated the answer is the one the seat scripts give
/// then (they refuse too), so clients see one code for it.
pub(super) fn ensure_serving(state: &AppState) -> Result<(), ApiError> {
    match state.registration_gate() {
        Ok(()) => Ok(()),
        Err(NotServing::WarmingUp) => Err(ApiError::Unavailable {
            code: "not_ready",
            detail: "the server is still loading its sections; retry shortly",
            retry_after_secs: 1,
        }),
        Err(NotServing::Revalidating) => Err(RedisWatch::closed_error().into()),
    }
}

/// Whether `student` may register now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Eligibility {
    Eligible,
    /// Not an active student: each section is `ineligible`.
    Inactive,
    /// A registration-blocking hold (its code): each section is `hold`.
    Hold(String),
}

/// Whether `student` may register, for a request of `principal`. A
/// student acts for themselves: their token says whether they are active
/// (a change of status revokes it), and the access check of this request
/// found their holds ([`CallerHold`]). An admin acting for someone else is
/// checked against PostgreSQL, so that nothing is reserved for an account
/// that does not exist (404 `student_not_found`, nothing changed; 503 while
/// PostgreSQL is away). The answers are the ones the student would get
/// acting for themselves.
async fn eligibility(
    state: &AppState,
    req: &Parts,
    principal: &Principal,
    student: Uuid,
) -> Result<Eligibility, ApiError> {
    if student == principal.student_id {
        if let Some(CallerHold(hold)) = req.extensions.get::<CallerHold>() {
            return Ok(Eligibility::Hold(hold.clone()));
        }
        let may = principal.role == Role::Admin || principal.may_register;
        return Ok(if may {
            Eligibility::Eligible
        } else {
            Eligibility::Inactive
        });
    }
    let db = state.db.get().await?;
    match store::students::standing(&db, student).await? {
        None => Err(ApiError::StudentNotFound),
        Some(standing) => Ok(match standing.access.hold {
            Some(hold) => Eligibility::Hold(hold),
            None if !standing.active => Eligibility::Inactive,
            None => Eligibility::Eligible,
        }),
    }
}

/// The student a request acts for: students act for themselves (naming
/// someone else is 403), admins for anyone they name.
fn acting_for(principal: &Principal, named: Option<Uuid>) -> Result<Uuid, ApiError> {
    match (principal.role, named) {
        (_, None) => Ok(principal.student_id),
        (Role::Admin, Some(id)) => Ok(id),
        (Role::Student, Some(id)) if id == principal.student_id => Ok(id),
        (Role::Student, Some(_)) => Err(ApiError::Forbidden),
    }
}

/// The body of `POST /register`. Public so the decoder's property tests and
/// the micro-benchmarks exercise this very type, not a copy of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub section_ids: Vec<Uuid>,
    #[serde(default)]
    pub student_id: Option<Uuid>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The canonical form of a section list for fingerprints: the ids' bytes in
/// request order (order matters: results come back in it).
fn canonical_ids(sections: &[Uuid]) -> Vec<u8> {
    sections.iter().flat_map(|s| *s.as_bytes()).collect()
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct SectionResult {
    pub section_id: Uuid,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waitlist_position: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// With reason `hold`: which hold (its code) blocks the registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// With the registrar's rules: what the refusal rests on.
    #[serde(flatten)]
    pub rule: RuleDetail,
}

/// The particulars of a rule's refusal (`crate::rules::Refusal`).
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleDetail {
    /// `not_your_time_yet`: when the student's registration opens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `prerequisite_missing`: the course codes, one of which is needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_courses: Option<Vec<String>>,
    /// `already_in_course`, `time_conflict`: the section in the way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflicting_section_id: Option<Uuid>,
    /// `credit_limit`: credits held this semester (enrolled, waitlisted and
    /// being registered) and the student's limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits_held: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_limit: Option<i64>,
}

#[derive(Serialize)]
struct RegisterResponse {
    results: Vec<SectionResult>,
}

fn result_of(section: Uuid, outcome: Reserve) -> SectionResult {
    let (status, position, reason) = match outcome {
        Reserve::Enrolled { .. } => ("enrolled", None, None),
        Reserve::Waitlisted { position, .. } => ("waitlisted", Some(position), None),
        Reserve::AlreadyEnrolled => ("already_enrolled", None, None),
        Reserve::AlreadyWaitlisted { position, .. } => ("already_waitlisted", Some(position), None),
        Reserve::Full => ("rejected", None, Some("full")),
        Reserve::WindowClosed => ("rejected", None, Some("window_closed")),
        // The claim lapsed before the seat was decided: nothing changed.
        Reserve::ClaimExpired => ("rejected", None, Some("unavailable")),
        Reserve::Inactive => ("rejected", None, Some("inactive")),
        Reserve::NotLoaded => ("rejected", None, Some("not_found")),
    };
    SectionResult {
        section_id: section,
        status,
        waitlist_position: position,
        reason,
        hold: None,
        rule: RuleDetail::default(),
    }
}

/// The answer for a section a rule refused; course ids are named by their
/// codes (`codes`, read for the refusals that name courses).
fn refused(section: Uuid, refusal: &Refusal, codes: &HashMap<Uuid, String>) -> SectionResult {
    let mut rule = RuleDetail::default();
    match refusal {
        Refusal::NotYourTimeYet { opens_at_ms } => {
            rule.opens_at = chrono::DateTime::from_timestamp_millis(*opens_at_ms);
        }
        Refusal::PrerequisiteMissing { courses } => {
            rule.missing_courses = Some(
                courses
                    .iter()
                    .map(|c| codes.get(c).cloned().unwrap_or_else(|| c.to_string()))
                    .collect(),
            );
        }
        Refusal::AlreadyInCourse { section } | Refusal::TimeConflict { section } => {
            rule.conflicting_section_id = Some(*section);
        }
        Refusal::CreditLimit { held, limit } => {
            rule.credits_held = Some(*held);
            rule.credit_limit = Some(*limit);
        }
        Refusal::Busy { .. } => {}
    }
    SectionResult {
        section_id: section,
        status: "rejected",
        waitlist_position: None,
        reason: Some(refusal.reason()),
        hold: None,
        rule,
    }
}

/// Course codes of the courses refusals name; ids stay ids if PostgreSQL
/// cannot be asked (the decision stands either way).
async fn course_codes(state: &AppState, outcomes: &[Registered]) -> HashMap<Uuid, String> {
    let ids: Vec<Uuid> = outcomes
        .iter()
        .filter_map(|o| match o {
            Registered::Refused(Refusal::PrerequisiteMissing { courses }) => Some(courses),
            _ => None,
        })
        .flatten()
        .copied()
        .collect();
    if ids.is_empty() {
        return HashMap::new();
    }
    let read = async {
        let db = state.read_db.get().await?;
        anyhow::Ok(store::rules::course_codes(&db, &ids).await?)
    };
    read.await.unwrap_or_else(|e| {
        tracing::warn!(error = %format!("{e:#}"), "course codes unreadable; answering with ids");
        HashMap::new()
    })
}

fn outcome_label(r: &SectionResult) -> &'static str {
    match (r.status, r.reason) {
        ("rejected", Some(reason)) => reason,
        (status, _) => status,
    }
}

pub async fn register(state: &AppState, req: &Parts, body: Incoming) -> ApiResult {
    let principal = authenticate(state, req)?;
    ensure_serving(state)?;
    let request: RegisterRequest =
        body::json(req, body, state.settings.http.max_body_bytes).await?;
    let student = acting_for(&principal, request.student_id)?;
    let max = state.settings.api.max_sections_per_request;
    if request.section_ids.is_empty() || request.section_ids.len() > max {
        return Err(ApiError::unprocessable(
            "validation_failed",
            format!("section_ids must name 1 to {max} sections"),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(request.section_ids.len());
    if !request.section_ids.iter().all(|s| seen.insert(*s)) {
        return Err(ApiError::unprocessable(
            "validation_failed",
            "section_ids must not repeat",
        ));
    }
    let key = idempotency::key_of(req, request.idempotency_key)?;
    let sections = request.section_ids;
    let fingerprint = idempotency::fingerprint(&[
        b"POST /api/v1/register",
        student.as_bytes(),
        &canonical_ids(&sections),
    ]);
    idempotency::run(state, student, key, fingerprint, async {
        let results = decide(state, req, &principal, student, &sections).await?;
        json(StatusCode::OK, &RegisterResponse { results })
    })
    .await
}

/// What registering `student` in `sections` comes to, for `principal` (the
/// student, or an admin acting for them): the student's eligibility and
/// every rule apply. `POST /register` answers it; the dead-letter retry
/// (`http::operations`) records it.
pub(super) async fn decide(
    state: &AppState,
    req: &Parts,
    principal: &Principal,
    student: Uuid,
    sections: &[Uuid],
) -> Result<Vec<SectionResult>, ApiError> {
    let refused = |reason, hold: Option<&String>| {
        sections
            .iter()
            .map(|s| SectionResult {
                section_id: *s,
                status: "rejected",
                waitlist_position: None,
                reason: Some(reason),
                hold: hold.cloned(),
                rule: RuleDetail::default(),
            })
            .collect()
    };
    let results = match eligibility(state, req, principal, student).await? {
        Eligibility::Eligible => reserve_all(state, student, sections).await?,
        Eligibility::Inactive => refused("ineligible", None),
        Eligibility::Hold(hold) => refused("hold", Some(&hold)),
    };
    for r in &results {
        metrics::counter!(REGISTRATIONS, "outcome" => outcome_label(r)).increment(1);
    }
    Ok(results)
}

/// Reserves every section through the registration service and encodes
/// each decision.
async fn reserve_all(
    state: &AppState,
    student: Uuid,
    sections: &[Uuid],
) -> Result<Vec<SectionResult>, ApiError> {
    let outcomes = state
        .registrar
        .register(student, sections, now_ms())
        .await?;
    let codes = course_codes(state, &outcomes).await;
    Ok(sections
        .iter()
        .zip(outcomes)
        .map(|(s, o)| match o {
            Registered::Refused(refusal) => refused(*s, &refusal, &codes),
            Registered::Decided(outcome) => result_of(*s, outcome),
            Registered::Unknown => result_of(*s, Reserve::NotLoaded),
            Registered::Undecided => SectionResult {
                section_id: *s,
                status: "rejected",
                waitlist_position: None,
                reason: Some("unavailable"),
                hold: None,
                rule: RuleDetail::default(),
            },
        })
        .collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DropRequest {
    section_id: Uuid,
    #[serde(default)]
    student_id: Option<Uuid>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Serialize)]
pub(super) struct DropResponse {
    pub(super) status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) promoted_student_id: Option<Uuid>,
}

pub async fn drop(state: &AppState, req: &Parts, body: Incoming) -> ApiResult {
    let principal = authenticate(state, req)?;
    ensure_serving(state)?;
    let request: DropRequest = body::json(req, body, state.settings.http.max_body_bytes).await?;
    let student = acting_for(&principal, request.student_id)?;
    let key = idempotency::key_of(req, request.idempotency_key)?;
    let section = request.section_id;
    let fingerprint = idempotency::fingerprint(&[
        b"POST /api/v1/register/drop",
        student.as_bytes(),
        section.as_bytes(),
    ]);
    idempotency::run(state, student, key, fingerprint, async {
        let response = leave(state, req, &principal, student, section).await?;
        json(StatusCode::OK, &response)
    })
    .await
}

/// What dropping `student` from `section` comes to, for `principal` (the
/// student, or an admin acting for them). Not registered there is 404.
pub(super) async fn leave(
    state: &AppState,
    req: &Parts,
    principal: &Principal,
    student: Uuid,
    section: Uuid,
) -> Result<DropResponse, ApiError> {
    // Only existence matters: an inactive student, or one with a hold,
    // may still leave.
    eligibility(state, req, principal, student).await?;
    let outcome = state.registrar.drop(section, student, now_ms()).await?;
    Ok(match outcome {
        None => return Err(ApiError::not_found("section")),
        Some(Drop::NotLoaded | Drop::NotRegistered) => {
            metrics::counter!(DROPS, "outcome" => "not_registered").increment(1);
            return Err(ApiError::NotFound(
                "the student is neither enrolled nor waitlisted in this section".into(),
            ));
        }
        Some(Drop::Dropped {
            promoted, offered, ..
        }) => {
            let label = match (promoted, offered) {
                (Some(_), _) => "promoted",
                (None, Some(_)) => "offered",
                (None, None) => "dropped",
            };
            metrics::counter!(DROPS, "outcome" => label).increment(1);
            DropResponse {
                status: "dropped",
                promoted_student_id: promoted,
            }
        }
        Some(Drop::LeftWaitlist { .. }) => {
            metrics::counter!(DROPS, "outcome" => "left_waitlist").increment(1);
            DropResponse {
                status: "left_waitlist",
                promoted_student_id: None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role) -> Principal {
        Principal {
            student_id: Uuid::from_u128(1),
            role,
            may_register: true,
            epoch: 0,
        }
    }

    #[test]
    fn students_act_for_themselves_and_admins_for_anyone() {
        let other = Uuid::from_u128(2);
        let me = principal(Role::Student);
        assert_eq!(acting_for(&me, None).unwrap(), me.student_id);
        assert_eq!(acting_for(&me, Some(me.student_id)).unwrap(), me.student_id);
        assert_eq!(
            acting_for(&me, Some(other)).unwrap_err().code(),
            "forbidden"
        );
        assert_eq!(
            acting_for(&principal(Role::Admin), Some(other)).unwrap(),
            other
        );
    }

    #[test]
    fn every_reserve_outcome_maps_to_a_documented_status() {
        let s = Uuid::nil();
        assert_eq!(
            result_of(s, Reserve::Enrolled { seq: 1 }).status,
            "enrolled"
        );
        let w = result_of(
            s,
            Reserve::Waitlisted {
                seq: 2,
                position: 3,
                offers: false,
            },
        );
        assert_eq!((w.status, w.waitlist_position), ("waitlisted", Some(3)));
        assert_eq!(result_of(s, Reserve::Full).reason, Some("full"));
        assert_eq!(
            result_of(s, Reserve::WindowClosed).reason,
            Some("window_closed")
        );
        assert_eq!(result_of(s, Reserve::Inactive).reason, Some("inactive"));
        assert_eq!(result_of(s, Reserve::NotLoaded).reason, Some("not_found"));
        assert_eq!(
            result_of(s, Reserve::AlreadyEnrolled).status,
            "already_enrolled"
        );
    }
}
