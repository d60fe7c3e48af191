//! A student's own registrations and waitlist entries, live from Redis with
//! the persistence state of each (pending, persisted, reverted with reason).
//! Another student's resources answer 404, exactly like an unknown student:
//! nothing leaks.

use std::collections::HashMap;

use hyper::{http::request::Parts, StatusCode};
use serde::Serialize;
use uuid::Uuid;

use super::{auth::authenticate, json, ApiError, ApiResult};
use crate::{
    seats::StudentStanding,
    state::AppState,
    store::students::{self, SectionLabel},
};

/// The student a `/students/{id}/...` path names: `me` is the caller.
pub fn student_of(state: &AppState, req: &Parts, segment: &str) -> Result<Uuid, ApiError> {
    if segment == "me" {
        return Ok(authenticate(state, req)?.student_id);
    }
    super::path_id(segment)
}

#[derive(Serialize)]
struct List<T> {
    items: Vec<T>,
    /// False when Redis was unreachable and only persisted data is shown.
    live: bool,
}

pub(super) fn ensure_may_read(
    state: &AppState,
    req: &Parts,
    student_id: Uuid,
) -> Result<(), ApiError> {
    let principal = authenticate(state, req)?;
    if principal.may_act_for(student_id) {
        Ok(())
    } else {
        Err(ApiError::not_found("student"))
    }
}

#[derive(Serialize)]
struct RegistrationView {
    section_id: Uuid,
    course_code: String,
    course_name: String,
    section_number: String,
    /// enrolled | dropped | reverted
    status: &'static str,
    /// pending (not yet in PostgreSQL) | persisted | reverted
    persistence: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize)]
struct WaitlistView {
    section_id: Uuid,
    course_code: String,
    section_number: String,
    /// Live position, 1-based.
    position: i64,
    persistence: &'static str,
    /// Set while a seat is held for the student (the section's waitlist
    /// mode is `offer`): register for the section before it to accept,
    /// drop it to decline; afterwards the offer lapses and passes on.
    #[serde(skip_serializing_if = "Option::is_none")]
    offer_expires_at: Option<String>,
}

/// `GET /api/v1/me`: the caller's own account, their holds and, per
/// semester they hold places in, their enrolled and waitlisted credits
/// beside their credit limit (live from Redis when it answers, else as
/// persisted: `live` says which).
#[derive(Serialize)]
struct Me {
    student_id: Uuid,
    student_number: String,
    name: String,
    email: String,
    enrollment_status: String,
    role: String,
    holds: Vec<String>,
    /// Active and without a hold: registration is open to them (within
    /// their priority group's time).
    may_register: bool,
    credits: Vec<SemesterCredits>,
    live: bool,
}

#[derive(Serialize)]
struct SemesterCredits {
    semester_id: Uuid,
    enrolled: i64,
    waitlisted: i64,
    /// Their own limit, else the semester's; null for none.
    credit_limit: Option<i32>,
    /// What the limit counts: `enrolled_and_waitlisted`, or `enrolled`
    /// (places on waitlists that offer freed seats do not count until the
    /// offer is accepted; places on other waitlists do).
    credit_counting: String,
}

pub async fn me(state: &AppState, req: &Parts) -> ApiResult {
    let id = authenticate(state, req)?.student_id;
    let db = state.read_db.get().await?;
    let account = students::account(&db, id)
        .await?
        .ok_or(ApiError::StudentNotFound)?;
    let registered = students::registrations(&db, id).await?;
    let waiting = students::waitlist(&db, id).await?;
    let persisted = registered
        .iter()
        .map(|r| r.section_id)
        .chain(waiting.iter().map(|w| w.section_id));
    let (sections, live) = standings(state, id, persisted).await;
    // Per section: enrolled (true) or waitlisted (false), if either.
    let places: Vec<(Uuid, bool)> = match &live {
        Some(live) => sections
            .iter()
            .zip(live)
            .filter_map(|(s, st)| {
                st.enrolled
                    .then_some((*s, true))
                    .or(st.waitlist_position.map(|_| (*s, false)))
            })
            .collect(),
        None => registered
            .iter()
            .filter(|r| r.status == "enrolled")
            .map(|r| (r.section_id, true))
            .chain(waiting.iter().map(|w| (w.section_id, false)))
            .collect(),
    };
    let ids: Vec<Uuid> = places.iter().map(|(s, _)| *s).collect();
    let credits = students::section_credits(&db, &ids).await?;
    let mut by_semester: std::collections::BTreeMap<Uuid, (i64, i64)> = Default::default();
    for (section, semester, credits) in credits {
        let enrolled = places.iter().any(|(s, e)| *s == section && *e);
        let totals = by_semester.entry(semester).or_default();
        if enrolled {
            totals.0 += i64::from(credits);
        } else {
            totals.1 += i64::from(credits);
        }
    }
    let semesters: Vec<Uuid> = by_semester.keys().copied().collect();
    let limits: HashMap<Uuid, (Option<i32>, String)> = students::credit_limits(&db, id, &semesters)
        .await?
        .into_iter()
        .collect();
    let may_register = account.enrollment_status == "active" && account.holds.is_empty();
    json(
        StatusCode::OK,
        &Me {
            student_id: account.id,
            student_number: account.student_number,
            name: account.name,
            email: account.email,
            enrollment_status: account.enrollment_status,
            role: account.role,
            holds: account.holds,
            may_register,
            credits: by_semester
                .into_iter()
                .map(|(semester_id, (enrolled, waitlisted))| SemesterCredits {
                    semester_id,
                    enrolled,
                    waitlisted,
                    credit_limit: limits.get(&semester_id).and_then(|l| l.0),
                    credit_counting: limits
                        .get(&semester_id)
                        .map_or_else(|| "enrolled_and_waitlisted".into(), |l| l.1.clone()),
                })
                .collect(),
            live: live.is_some(),
        },
    )
}

/// Sections to look at: those PostgreSQL has for the student plus those the
/// student registered in through Redis; and Redis's standing in each.
pub(super) async fn standings(
    state: &AppState,
    student: Uuid,
    persisted: impl Iterator<Item = Uuid>,
) -> (Vec<Uuid>, Option<Vec<StudentStanding>>) {
    let mut sections: Vec<Uuid> = persisted.collect();
    let live = async {
        let remembered = state.redis.remembered_sections(student).await?;
        for s in remembered {
            if !sections.contains(&s) {
                sections.push(s);
            }
        }
        state.redis.standings(student, &sections).await
    }
    .await;
    match live {
        Ok(standings) => (sections, Some(standings)),
        Err(e) => {
            tracing::debug!(error = %e, "Redis unavailable; showing persisted registrations");
            (sections, None)
        }
    }
}

pub async fn registrations(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    ensure_may_read(state, req, id)?;
    let db = state.read_db.get().await?;
    let persisted = students::registrations(&db, id).await?;
    let by_section: HashMap<Uuid, &students::Registration> =
        persisted.iter().map(|r| (r.section_id, r)).collect();
    let (sections, live) = standings(state, id, persisted.iter().map(|r| r.section_id)).await;
    let labels = students::section_labels(&db, &sections).await?;
    let mut items = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let pg = by_section.get(section).map(|r| r.status.as_str());
        let (status, persistence, reason) = match live.as_ref().map(|l| &l[i]) {
            Some(st) if st.enrolled => (
                "enrolled",
                if pg == Some("enrolled") {
                    "persisted"
                } else {
                    "pending"
                },
                None,
            ),
            Some(st) if st.waitlist_position.is_some() => continue,
            Some(StudentStanding {
                reverted_reason: Some(reason),
                ..
            }) if pg != Some("enrolled") => ("reverted", "reverted", Some(reason.clone())),
            Some(_) if pg == Some("enrolled") => ("dropped", "pending", None),
            _ => match pg {
                Some("enrolled") => ("enrolled", "persisted", None),
                Some(_) => ("dropped", "persisted", None),
                None => continue,
            },
        };
        let Some(label) = labels.get(section) else {
            continue;
        };
        items.push(RegistrationView {
            section_id: *section,
            course_code: label.course_code.clone(),
            course_name: label.course_name.clone(),
            section_number: label.section_number.clone(),
            status,
            persistence,
            reason,
        });
    }
    json(
        StatusCode::OK,
        &List {
            items,
            live: live.is_some(),
        },
    )
}

pub async fn waitlist(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    ensure_may_read(state, req, id)?;
    let db = state.read_db.get().await?;
    let persisted = students::waitlist(&db, id).await?;
    let positions: HashMap<Uuid, i32> = persisted
        .iter()
        .map(|w| (w.section_id, w.position))
        .collect();
    let persisted_offers: HashMap<Uuid, i64> = persisted
        .iter()
        .filter_map(|w| Some((w.section_id, w.offer_expires_at?.timestamp_millis())))
        .collect();
    let (sections, live) = standings(state, id, persisted.iter().map(|w| w.section_id)).await;
    let labels = students::section_labels(&db, &sections).await?;
    let mut items = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let (position, persistence, offer) = match live.as_ref().map(|l| &l[i]) {
            Some(st) => match st.waitlist_position {
                Some(p) => (
                    p,
                    if positions.contains_key(section) {
                        "persisted"
                    } else {
                        "pending"
                    },
                    st.offer_until_ms,
                ),
                None => continue,
            },
            None => match positions.get(section) {
                Some(p) => (
                    i64::from(*p),
                    "persisted",
                    persisted_offers.get(section).copied(),
                ),
                None => continue,
            },
        };
        let Some(SectionLabel {
            course_code,
            section_number,
            ..
        }) = labels.get(section)
        else {
            continue;
        };
        items.push(WaitlistView {
            section_id: *section,
            course_code: course_code.clone(),
            section_number: section_number.clone(),
            position,
            persistence,
            offer_expires_at: offer.map(crate::domain::rfc3339_ms),
        });
    }
    json(
        StatusCode::OK,
        &List {
            items,
            live: live.is_some(),
        },
    )
}
