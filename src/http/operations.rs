//! Admin read APIs (issue 16, item 2): accounts by page, a section's roster
//! and waitlist as Redis holds them now, dead letters, and the state of
//! persistence (queues, outbox, partition leases).
//!
//! Every list is paged the same way as the catalogue: `limit` (at most
//! `api.max_page_size`) and an opaque `cursor`, `next_cursor` null on the
//! last page.

use hyper::{body::Incoming, http::request::Parts, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    auth::authenticate_admin,
    body,
    catalog::{filter_text as text, page_limit as limit_of},
    json,
    registration::{self, ensure_serving},
    ApiError, ApiResult,
};
use crate::{
    state::AppState,
    store::{
        engine::{self, Snapshots},
        operations::{self, AccountFilter, AccountRow, DeadLetter, Writer},
    },
};

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_query", detail)
}

fn bad_cursor() -> ApiError {
    invalid("cursor is not one this API answered: pass `next_cursor` back unchanged")
}

fn one_of(name: &str, value: Option<String>, allowed: &[&str]) -> Result<Option<String>, ApiError> {
    match value.filter(|v| !v.is_empty()) {
        Some(v) if !allowed.contains(&v.as_str()) => Err(invalid(format!(
            "{name} must be one of {}",
            allowed.join(", ")
        ))),
        v => Ok(v),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StudentsQuery {
    q: Option<String>,
    enrollment_status: Option<String>,
    role: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

/// Keeps the first `limit` of `rows` (fetched as `limit + 1`) and says
/// whether there was more.
fn page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    (rows, more)
}

/// `GET /api/v1/admin/students`: accounts in student-number order; `q`
/// matches a student-number prefix or part of the name or email.
pub async fn students(state: &AppState, req: &Parts) -> ApiResult {
    authenticate_admin(state, req)?;
    let q: StudentsQuery = body::query(req.uri.query())?;
    let limit = limit_of(state, q.limit)?;
    let search = text("q", q.q, 100)?;
    let status = one_of(
        "enrollment_status",
        q.enrollment_status,
        &["active", "inactive", "suspended", "graduated"],
    )?;
    let role = one_of("role", q.role, &["student", "admin"])?;
    let after = text("cursor", q.cursor, 64)?;
    let db = state.db.get().await?;
    let rows = operations::accounts(
        &db,
        &AccountFilter {
            search: search.as_deref(),
            status: status.as_deref(),
            role: role.as_deref(),
            after: after.as_deref(),
            limit,
        },
    )
    .await?;
    let (items, more) = page(rows, limit);
    let next_cursor = more
        .then(|| items.last().map(|a: &AccountRow| a.student_number.clone()))
        .flatten();
    json(StatusCode::OK, &Page { items, next_cursor })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct Member {
    student_id: Uuid,
    /// Null for an id without an account (deleted since).
    student_number: Option<String>,
    name: Option<String>,
    /// 1-based, head first (waitlist only).
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<usize>,
}

#[derive(Serialize)]
struct Members {
    section_id: Uuid,
    /// `redis`: the live state the scripts decide from; `postgres`: Redis
    /// holds no state for the section (not loaded, or unreachable), so this
    /// is the system of record, which may lag by the outbox.
    source: &'static str,
    /// The section's last sequence number at the moment read.
    seq: i64,
    /// Outbox entries not yet in PostgreSQL at that moment (Redis only).
    pending_events: u64,
    /// Everyone on the list, not only this page.
    total: usize,
    items: Vec<Member>,
    next_cursor: Option<String>,
}

enum List {
    Roster,
    Waitlist,
}

/// The section's roster and waitlist with where they came from: Redis
/// (atomically, one script) or, where it has no state, PostgreSQL.
async fn members_of(
    state: &AppState,
    section: Uuid,
) -> Result<(&'static str, i64, u64, Vec<Uuid>, Vec<Uuid>), ApiError> {
    let live = state.redis.inspect(section).await;
    if let Ok(found) = &live {
        if let Some(l) = &found.live {
            let mut enrolled = l.enrolled.clone();
            enrolled.sort_unstable();
            return Ok((
                "redis",
                found.seq,
                found.outbox,
                enrolled,
                l.waitlisted.clone(),
            ));
        }
    }
    let db = state.db.get().await?;
    let mut snapshot = engine::snapshots(&db, Snapshots::Only(&[section]))
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("section"))?;
    if let Err(e) = live {
        // Only the absent state is answered from PostgreSQL silently; an
        // unreachable Redis is the 503 of every live read.
        return Err(e.into());
    }
    snapshot.enrolled.sort_unstable();
    Ok((
        "postgres",
        snapshot.last_seq,
        0,
        snapshot.enrolled,
        snapshot.waitlisted,
    ))
}

async fn members(state: &AppState, req: &Parts, section: Uuid, list: List) -> ApiResult {
    authenticate_admin(state, req)?;
    let q: PageParams = body::query(req.uri.query())?;
    let limit = limit_of(state, q.limit)? as usize;
    let (source, seq, pending_events, enrolled, waitlisted) = members_of(state, section).await?;
    let cursor = q.cursor.filter(|c| !c.is_empty());
    let (chosen, next_cursor): (Vec<(Uuid, Option<usize>)>, Option<String>) = match list {
        // In id order, after the cursor's id.
        List::Roster => {
            let start = match cursor {
                None => 0,
                Some(c) => {
                    let after = Uuid::try_parse(&c).map_err(|_| bad_cursor())?;
                    enrolled.partition_point(|id| *id <= after)
                }
            };
            let chosen: Vec<_> = enrolled
                .iter()
                .skip(start)
                .take(limit)
                .map(|id| (*id, None))
                .collect();
            let next = (start + chosen.len() < enrolled.len())
                .then(|| chosen.last().map(|(id, _)| id.to_string()))
                .flatten();
            (chosen, next)
        }
        // In waitlist order, from the position after the cursor's. The
        // list moves as people leave or are promoted: a later page shows
        // it as it is then.
        List::Waitlist => {
            let start = match cursor {
                None => 0,
                Some(c) => c.parse::<usize>().map_err(|_| bad_cursor())?,
            };
            let chosen: Vec<_> = waitlisted
                .iter()
                .enumerate()
                .skip(start)
                .take(limit)
                .map(|(i, id)| (*id, Some(i + 1)))
                .collect();
            let end = start.saturating_add(chosen.len());
            let next = (end < waitlisted.len()).then(|| end.to_string());
            (chosen, next)
        }
    };
    let ids: Vec<Uuid> = chosen.iter().map(|(id, _)| *id).collect();
    let names = {
        let db = state.db.get().await?;
        operations::names(&db, &ids).await?
    };
    let items = chosen
        .into_iter()
        .map(|(id, position)| {
            let (number, name) = names.get(&id).cloned().unzip();
            Member {
                student_id: id,
                student_number: number,
                name,
                position,
            }
        })
        .collect();
    let total = match list {
        List::Roster => enrolled.len(),
        List::Waitlist => waitlisted.len(),
    };
    json(
        StatusCode::OK,
        &Members {
            section_id: section,
            source,
            seq,
            pending_events,
            total,
            items,
            next_cursor,
        },
    )
}

/// `GET /api/v1/admin/sections/{id}/roster`: the enrolled students.
pub async fn roster(state: &AppState, req: &Parts, section: Uuid) -> ApiResult {
    members(state, req, section, List::Roster).await
}

/// `GET /api/v1/admin/sections/{id}/waitlist`: the waitlist, head first.
pub async fn waitlist(state: &AppState, req: &Parts, section: Uuid) -> ApiResult {
    members(state, req, section, List::Waitlist).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLettersQuery {
    section_id: Option<Uuid>,
    /// Only those no admin has resolved yet.
    open: Option<bool>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET /api/v1/admin/dead-letters`: newest first.
pub async fn dead_letters(state: &AppState, req: &Parts) -> ApiResult {
    authenticate_admin(state, req)?;
    let q: DeadLettersQuery = body::query(req.uri.query())?;
    let limit = limit_of(state, q.limit)?;
    let before = match q.cursor.filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| bad_cursor())?),
    };
    let db = state.db.get().await?;
    let open = q.open.unwrap_or(false);
    let rows = operations::dead_letters(&db, q.section_id, open, before, limit).await?;
    let (items, more) = page(rows, limit);
    let next_cursor = more
        .then(|| items.last().map(|d: &DeadLetter| d.id.to_string()))
        .flatten();
    json(StatusCode::OK, &Page { items, next_cursor })
}

#[derive(Serialize)]
struct PersistenceView {
    /// This instance's shard queues (jobs waiting per shard).
    queues: Vec<usize>,
    /// Outbox entries not yet in PostgreSQL over all sections, and the
    /// oldest one's age, as this instance's sweeper last measured them.
    outbox_backlog: u64,
    outbox_oldest_age_seconds: f64,
    /// `sync.partitions`: the section space's partitions, each written by
    /// the one instance holding its lease.
    partitions: usize,
    /// Every instance taking part, with the partitions it holds now.
    writers: Vec<Writer>,
    /// Partitions no instance holds right now (their events wait in the
    /// outbox until one takes them).
    unheld_partitions: Vec<i32>,
    dead_letters: i64,
    /// Dead letters whose undo in Redis is still owed (recovery does it).
    dead_letters_undo_owed: i64,
}

/// `GET /api/v1/admin/persistence`.
pub async fn persistence(state: &AppState, req: &Parts) -> ApiResult {
    authenticate_admin(state, req)?;
    let namespace = state.redis.namespace();
    let db = state.db.get().await?;
    let writers =
        operations::writers(&db, namespace, crate::sync::lease::namespace_key(namespace)).await?;
    let (dead_letters, dead_letters_undo_owed) = operations::dead_letter_counts(&db).await?;
    let partitions = state.settings.sync.partitions;
    let held: std::collections::HashSet<i32> = writers
        .iter()
        .flat_map(|w| w.partitions.iter().copied())
        .collect();
    let unheld_partitions = (0..partitions as i32)
        .filter(|p| !held.contains(p))
        .collect();
    let oldest = state
        .backlog
        .oldest_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    json(
        StatusCode::OK,
        &PersistenceView {
            queues: state.persistence.depths(),
            outbox_backlog: state
                .backlog
                .entries
                .load(std::sync::atomic::Ordering::Relaxed),
            outbox_oldest_age_seconds: if oldest == 0 {
                0.0
            } else {
                ((crate::domain::now_ms() - oldest).max(0) as f64) / 1000.0
            },
            partitions,
            writers,
            unheld_partitions,
            dead_letters,
            dead_letters_undo_owed,
        },
    )
}

/// A dead letter's id in a path: a positive integer.
pub fn dead_letter_id(segment: &str) -> Result<i64, ApiError> {
    segment
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_id",
                format!("`{segment}` is not a dead letter's id (a positive integer)"),
            )
        })
}

/// Why resolving `id` did nothing: it is resolved already, or there is none.
async fn not_open(db: &impl deadpool_postgres::GenericClient, id: i64) -> ApiError {
    match operations::dead_letter(db, id).await {
        Ok(Some(letter)) => ApiError::Conflict {
            code: "already_resolved",
            detail: format!(
                "dead letter {id} was {} already",
                letter.resolution.as_deref().unwrap_or("resolved")
            ),
        },
        Ok(None) => ApiError::not_found("dead letter"),
        Err(e) => e.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Dismissal {
    reason: String,
}

/// Longest dismissal reason.
const MAX_REASON: usize = 500;

/// `POST /api/v1/admin/dead-letters/{id}/dismiss`: closes it with a reason
/// (the event stays undone; nothing else changes).
pub async fn dismiss(state: &AppState, req: &Parts, body: Incoming, id: i64) -> ApiResult {
    let admin = authenticate_admin(state, req)?;
    let dismissal: Dismissal = body::json(req, body, state.settings.http.max_body_bytes).await?;
    let reason = dismissal.reason.trim();
    if reason.is_empty()
        || reason.chars().count() > MAX_REASON
        || reason.contains(|c: char| c.is_control() && c != '\n')
    {
        return Err(ApiError::unprocessable(
            "validation_failed",
            format!("reason must be 1 to {MAX_REASON} characters, without control characters"),
        ));
    }
    let db = state.db.get().await?;
    match operations::resolve(&db, id, admin.student_id, "dismissed", Some(reason)).await? {
        Some(letter) => {
            tracing::info!(dead_letter = id, admin = %admin.student_id, "dead letter dismissed");
            json(StatusCode::OK, &letter)
        }
        None => Err(not_open(&db, id).await),
    }
}

/// What a retry did, beside the dead letter as it is now.
#[derive(Serialize)]
struct Retried {
    dead_letter: DeadLetter,
    /// `register` (the event took a seat or a waitlist place) or `drop`
    /// (it gave one up).
    action: &'static str,
    /// As `POST /register` or `/register/drop` would answer it;
    /// `not_registered` for a drop of a place the student no longer holds.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waitlist_position: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    promoted_student_id: Option<Uuid>,
}

/// `POST /api/v1/admin/dead-letters/{id}/retry`: does again, now, what the
/// event did for its student (register for the section, or drop it), as
/// the admin acting for them: the student's eligibility and every rule of
/// today apply, and the answer may differ (the seat went to someone else).
/// The dead letter is closed as `retried` with what the retry was answered.
pub async fn retry(state: &AppState, req: &Parts, id: i64) -> ApiResult {
    let admin = authenticate_admin(state, req)?;
    ensure_serving(state)?;
    let db = state.db.get().await?;
    let letter = operations::dead_letter(&db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("dead letter"))?;
    let (action, student) = match (letter.kind.as_str(), letter.student_id) {
        ("enroll" | "waitlist" | "promote", Some(student)) => ("register", student),
        ("drop" | "unwait", Some(student)) => ("drop", student),
        (kind, _) => {
            return Err(ApiError::Conflict {
                code: "not_retryable",
                detail: format!("a `{kind}` event is no student's request to repeat; dismiss it"),
            })
        }
    };
    if letter.undone_at.is_none() {
        return Err(ApiError::Conflict {
            code: "undo_owed",
            detail:
                "its undo in Redis is still owed (recovery does it within a sweep); retry after"
                    .into(),
        });
    }
    // Claimed first, so that two admins retrying at once do it once.
    if operations::resolve(&db, id, admin.student_id, "retried", None)
        .await?
        .is_none()
    {
        return Err(not_open(&db, id).await);
    }
    drop(db);
    let section = letter.section_id;
    let done = match action {
        "register" => registration::decide(state, req, &admin, student, &[section])
            .await
            .map(|mut results| {
                let r = results.remove(0);
                (r.status, r.reason, r.waitlist_position, None)
            }),
        _ => match registration::leave(state, req, &admin, student, section).await {
            Ok(d) => Ok((d.status, None, None, d.promoted_student_id)),
            Err(ApiError::NotFound(_)) => Ok(("not_registered", None, None, None)),
            Err(e) => Err(e),
        },
    };
    let db = state.db.get().await?;
    let (status, reason, waitlist_position, promoted_student_id) = match done {
        Ok(done) => done,
        Err(e) => {
            // Nothing decided (Redis or PostgreSQL away): open again.
            if let Err(reopen) = operations::reopen(&db, id).await {
                tracing::warn!(dead_letter = id, error = %reopen, "a failed retry left its dead letter closed");
            }
            return Err(e);
        }
    };
    let note = reason.unwrap_or(status);
    let dead_letter = match operations::retried(&db, id, note).await {
        Ok(Some(letter)) => letter,
        Ok(None) | Err(_) => {
            tracing::warn!(
                dead_letter = id,
                note,
                "retried, but its outcome is not recorded"
            );
            letter
        }
    };
    tracing::info!(dead_letter = id, admin = %admin.student_id, %student, %section, action, note, "dead letter retried");
    json(
        StatusCode::OK,
        &Retried {
            dead_letter,
            action,
            status,
            reason,
            waitlist_position,
            promoted_student_id,
        },
    )
}

#[derive(Serialize)]
struct SectionReconcile {
    section_id: Uuid,
    /// Redis and PostgreSQL hold the same state (at one consistent point).
    agrees: bool,
    /// They disagree beyond PostgreSQL merely lagging behind the outbox.
    drift: bool,
    differences: Vec<crate::sync::reconcile::Difference>,
}

/// `GET /api/v1/admin/sections/{id}/reconcile`: the section's Redis state
/// compared with PostgreSQL's now (what `registrar reconcile` does for
/// every section; read-only: `registrar reconcile --fix` repairs).
pub async fn reconcile(state: &AppState, req: &Parts, section: Uuid) -> ApiResult {
    authenticate_admin(state, req)?;
    {
        let db = state.db.get().await?;
        if !operations::section_exists(&db, section).await? {
            return Err(ApiError::not_found("section"));
        }
    }
    let reports =
        crate::sync::reconcile::reconcile_sections(&state.db, &state.redis, &[section], false)
            .await
            .map_err(unavailable_or_internal)?;
    let report = reports.into_iter().find(|r| r.section == section);
    json(
        StatusCode::OK,
        &SectionReconcile {
            section_id: section,
            agrees: report.is_none(),
            drift: report.as_ref().is_some_and(|r| r.is_drift()),
            differences: report.map(|r| r.differences).unwrap_or_default(),
        },
    )
}

/// An error of Redis or PostgreSQL as their 503; anything else a 500.
fn unavailable_or_internal(e: anyhow::Error) -> ApiError {
    let e = match e.downcast::<redis::RedisError>() {
        Ok(e) => return e.into(),
        Err(e) => e,
    };
    let e = match e.downcast::<tokio_postgres::Error>() {
        Ok(e) => return e.into(),
        Err(e) => e,
    };
    match e.downcast::<deadpool_postgres::PoolError>() {
        Ok(e) => e.into(),
        Err(e) => ApiError::Internal(e),
    }
}
