//! Admin read APIs (issue 16, item 2): accounts by page, a section's roster
//! and waitlist as Redis holds them now, dead letters, and the state of
//! persistence (queues, outbox, partition leases).
//!
//! Every list is paged the same way as the catalogue: `limit` (at most
//! `api.max_page_size`) and an opaque `cursor`, `next_cursor` null on the
//! last page.

use hyper::{http::request::Parts, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{auth::authenticate_admin, body, json, ApiError, ApiResult};
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

/// A page size from the query, as the catalogue reads it.
fn limit_of(state: &AppState, limit: Option<i64>) -> Result<i64, ApiError> {
    let api = &state.settings.api;
    let limit = limit.unwrap_or(api.default_page_size);
    if !(1..=api.max_page_size).contains(&limit) {
        return Err(invalid(format!(
            "limit must be between 1 and {}",
            api.max_page_size
        )));
    }
    Ok(limit)
}

fn bad_cursor() -> ApiError {
    invalid("cursor is not one this API answered: pass `next_cursor` back unchanged")
}

/// Query text: trimmed, `None` when empty; no control characters (which
/// PostgreSQL refuses in text) and at most `max` characters.
fn text(name: &str, value: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    let Some(value) = value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    if value.contains(char::is_control) || value.chars().count() > max {
        return Err(invalid(format!(
            "{name} must be at most {max} characters without control characters"
        )));
    }
    Ok(Some(value))
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
    let rows = operations::dead_letters(&db, q.section_id, before, limit).await?;
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
