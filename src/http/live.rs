//! Live updates over Server-Sent Events (README "Live updates"):
//!
//! - `GET /api/v1/sections/{id}/events`: the section's seats and waitlist
//!   length (`event: seats`), first as they are now, then after every
//!   committed batch of the section. The event id is the section's sequence.
//! - `GET /api/v1/students/{id}/events` (`me` for the caller): the student's
//!   standing in each section they are in (`event: snapshot`, then
//!   `event: standing` for each section whose standing changed: a result,
//!   a waitlist position that moved, a promotion, a revert). The event id is
//!   a digest of the whole standing after the event.
//!
//! Both are state, not logs: a client that reconnects with `Last-Event-ID`
//! gets no snapshot when nothing changed meanwhile and the current state
//! when something did, which is everything it missed. What a stream says
//! is what PostgreSQL holds (`crate::live`); each stream costs a task, a
//! queue of [`crate::live::QUEUE`] nudges and [`CHUNKS`] unsent chunks, at
//! most `live.max_streams` per instance, and ends after
//! `live.max_stream_secs`, at shutdown, or when the client goes away.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Duration,
};

use bytes::Bytes;
use hyper::{header, http::request::Parts, Response, StatusCode};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{
    auth::authenticate,
    students::{ensure_may_read, standings},
    ApiError, ApiResult, Body,
};
use crate::{
    live::{Notice, Refused, SectionNow, SharedRead, Subscription},
    seats::{LiveCounts, Redis, StudentStanding},
    state::AppState,
    store::{self, students},
};

/// Chunks written but not yet taken by the connection; a client that reads
/// slower than its stream changes holds the stream's task here (its nudges
/// then overflow and it resynchronises once the client catches up).
pub const CHUNKS: usize = 16;

/// What `retry:` tells EventSource clients to wait before reconnecting.
const RETRY_MS: u64 = 2000;

fn refused(r: Refused) -> ApiError {
    match r {
        Refused::Disabled => ApiError::Unavailable {
            code: "live_disabled",
            detail: "live updates are switched off on this server (live.enabled)",
            retry_after_secs: 60,
        },
        Refused::Full => ApiError::Unavailable {
            code: "too_many_streams",
            detail: "this server has as many live streams open as it allows; retry shortly",
            retry_after_secs: 5,
        },
        Refused::ShuttingDown => ApiError::Unavailable {
            code: "shutting_down",
            detail: "this server is shutting down; reconnect to another",
            retry_after_secs: 1,
        },
    }
}

fn last_event_id(req: &Parts) -> Option<&str> {
    req.headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// One SSE event: `event`, `id` and one `data` line of JSON.
fn frame(event: &str, id: &str, data: &impl Serialize) -> String {
    let json = serde_json::to_string(data).expect("live views always encode");
    format!("event: {event}\nid: {id}\ndata: {json}\n\n")
}

fn stream_response(chunks: mpsc::Receiver<Bytes>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        // nginx and its kin buffer responses unless told not to.
        .header("x-accel-buffering", "no")
        .body(Body::Stream(chunks))
        .expect("static headers are valid")
}

/// What a stream's task shares: where to write, when to stop.
struct Pipe {
    tx: mpsc::Sender<Bytes>,
    closing: watch::Receiver<bool>,
    ends_at: tokio::time::Instant,
    heartbeat: Duration,
}

impl Pipe {
    fn new(state: &AppState) -> (Self, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(CHUNKS);
        let settings = state.live.settings();
        let pipe = Self {
            tx,
            closing: state.live.closing(),
            ends_at: tokio::time::Instant::now() + Duration::from_secs(settings.max_stream_secs),
            heartbeat: settings.heartbeat_ms.duration(),
        };
        (pipe, rx)
    }

    /// Writes a chunk; false once the stream is over (client gone,
    /// shutdown, or its time is up).
    async fn send(&mut self, text: String) -> bool {
        tokio::select! {
            sent = self.tx.send(Bytes::from(text)) => sent.is_ok(),
            _ = self.closing.wait_for(|c| *c) => false,
            () = tokio::time::sleep_until(self.ends_at) => false,
        }
    }

    /// Waits for the next nudge, writing heartbeats meanwhile; None when the
    /// stream is over.
    async fn next(&mut self, notices: &mut mpsc::Receiver<Notice>) -> Option<Notice> {
        loop {
            tokio::select! {
                notice = notices.recv() => return notice,
                () = tokio::time::sleep(self.heartbeat) => {}
                _ = self.closing.wait_for(|c| *c) => return None,
                () = tokio::time::sleep_until(self.ends_at) => return None,
                () = self.tx.closed() => return None,
            }
            if !self.send(": heartbeat\n\n".to_string()).await {
                return None;
            }
        }
    }
}

/// A section's counts as a stream shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct SeatsView {
    section_id: Uuid,
    /// The section's sequence: every seat change moves it.
    seq: i64,
    total_seats: i64,
    enrolled: i64,
    seats_available: i64,
    waitlist_length: i64,
    /// Seats held for waitlisted students by open offers.
    seats_offered: i64,
}

impl SeatsView {
    fn new(section_id: Uuid, now: SectionNow) -> Self {
        let LiveCounts {
            capacity,
            seats_available,
            enrolled,
            waitlist_length,
            seats_offered,
        } = now.counts;
        Self {
            section_id,
            seq: now.seq,
            total_seats: capacity,
            enrolled,
            seats_available,
            waitlist_length,
            seats_offered,
        }
    }
}

/// The section's sequence, then its counts: the counts are at least as
/// recent as the sequence that names them.
async fn read_now(redis: &Redis, section: Uuid) -> redis::RedisResult<Option<SectionNow>> {
    let seq = redis.seqs(&[section]).await?.first().copied().flatten();
    let counts = redis
        .live_counts(&[section])
        .await?
        .into_iter()
        .next()
        .flatten();
    Ok(counts.map(|counts| SectionNow {
        seq: seq.unwrap_or(0),
        counts,
    }))
}

pub async fn section(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    authenticate(state, req)?;
    let (mut sub, notices) = state.live.subscribe(None).map_err(refused)?;
    // Watching before the first read: a batch committed in between is
    // heard rather than missed.
    sub.watch_section(id);
    let shared = state.live.shared_read(id);
    let Some(now) = read_now(&state.redis, id).await? else {
        // Redis holds every active section; an inactive one never moves.
        let db = state.read_db.get().await?;
        return match store::catalog::section_by_id(&db, id).await? {
            Some(_) => Err(ApiError::Conflict {
                code: "section_not_live",
                detail: "this section is not open for registration, so it has no live counts"
                    .into(),
            }),
            None => Err(ApiError::not_found("section")),
        };
    };
    let now = SeatsView::new(id, now);
    let (mut pipe, chunks) = Pipe::new(state);
    let mut opening = format!("retry: {RETRY_MS}\n\n");
    if last_event_id(req) != Some(now.seq.to_string().as_str()) {
        opening.push_str(&frame("seats", &now.seq.to_string(), &now));
    }
    let redis = state.redis.clone();
    tokio::spawn(async move {
        if pipe.send(opening).await {
            follow_section(redis, shared, sub, notices, pipe, now).await;
        }
    });
    Ok(stream_response(chunks))
}

/// Follows one section: each batch is read once per instance, by whichever
/// of the section's streams gets to the shared read first.
async fn follow_section(
    redis: Redis,
    shared: SharedRead,
    sub: Subscription,
    mut notices: mpsc::Receiver<Notice>,
    mut pipe: Pipe,
    mut shown: SeatsView,
) {
    while let Some(first) = pipe.next(&mut notices).await {
        // Nudges that queued meanwhile are answered by the same read.
        let mut forced = sub.take_lagged();
        let mut wanted = 0;
        let mut notice = Some(first);
        while let Some(n) = notice {
            match n {
                Notice::Changed(a) => wanted = wanted.max(a.seq),
                Notice::Resync => forced = true,
            }
            notice = notices.try_recv().ok();
        }
        let now = {
            let mut last = shared.lock().await;
            match *last {
                Some(now) if !forced && now.seq >= wanted => now,
                _ => match read_now(&redis, shown.section_id).await {
                    Ok(Some(now)) => {
                        *last = Some(now);
                        now
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "live: cannot read a section's counts; the next change retries");
                        continue;
                    }
                },
            }
        };
        let now = SeatsView::new(shown.section_id, now);
        // A read older than the one shown (the streams share reads) is skipped.
        if now.seq >= shown.seq && now != shown {
            if !pipe.send(frame("seats", &now.seq.to_string(), &now)).await {
                return;
            }
            shown = now;
        }
    }
}

/// A student's standing in one section, as their stream shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct StandingView {
    section_id: Uuid,
    /// enrolled | offered (waitlisted, a seat held for them until
    /// `offer_expires_at`: register to accept, drop to decline) |
    /// waitlisted | reverted (undone after its write failed for good;
    /// `reason` says why) | none (dropped, left the waitlist, or never in it)
    status: &'static str,
    /// 1-based live waitlist position, when waitlisted or offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// RFC 3339, when offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    offer_expires_at: Option<String>,
}

impl StandingView {
    fn new(section_id: Uuid, standing: &StudentStanding) -> Self {
        let (status, position, reason) = match standing {
            StudentStanding { enrolled: true, .. } => ("enrolled", None, None),
            StudentStanding {
                waitlist_position: Some(p),
                offer_until_ms: Some(_),
                ..
            } => ("offered", Some(*p), None),
            StudentStanding {
                waitlist_position: Some(p),
                ..
            } => ("waitlisted", Some(*p), None),
            StudentStanding {
                reverted_reason: Some(r),
                ..
            } => ("reverted", None, Some(r.clone())),
            _ => ("none", None, None),
        };
        Self {
            section_id,
            status,
            position,
            reason,
            offer_expires_at: standing
                .offer_until_ms
                .filter(|_| status == "offered")
                .map(crate::domain::rfc3339_ms),
        }
    }
}

#[derive(Serialize)]
struct Snapshot<'a> {
    items: Vec<&'a StandingView>,
}

/// The id of a student stream's state: a digest of every section's standing.
fn digest(shown: &BTreeMap<Uuid, StandingView>) -> String {
    let mut hash = Sha256::new();
    for view in shown.values() {
        hash.update(view.section_id.as_bytes());
        hash.update(view.status.as_bytes());
        hash.update(view.position.unwrap_or(0).to_le_bytes());
        hash.update(view.reason.as_deref().unwrap_or("").as_bytes());
        hash.update([0]);
        hash.update(view.offer_expires_at.as_deref().unwrap_or("").as_bytes());
        hash.update([0]);
    }
    let mut id = String::with_capacity(16);
    for byte in &hash.finalize()[..8] {
        let _ = write!(id, "{byte:02x}");
    }
    id
}

async fn read_standings(
    redis: &Redis,
    student: Uuid,
    sections: &[Uuid],
) -> redis::RedisResult<Vec<StandingView>> {
    let standings = redis.standings(student, sections).await?;
    Ok(sections
        .iter()
        .zip(&standings)
        .map(|(s, st)| StandingView::new(*s, st))
        .collect())
}

pub async fn student(state: &AppState, req: &Parts, id: Uuid) -> ApiResult {
    ensure_may_read(state, req, id)?;
    let (mut sub, notices) = state.live.subscribe(Some(id)).map_err(refused)?;
    let db = state.read_db.get().await?;
    if students::account(&db, id).await?.is_none() {
        return Err(ApiError::not_found("student"));
    }
    let mut persisted: Vec<Uuid> = students::registrations(&db, id)
        .await?
        .into_iter()
        .map(|r| r.section_id)
        .collect();
    persisted.extend(
        students::waitlist(&db, id)
            .await?
            .into_iter()
            .map(|w| w.section_id),
    );
    drop(db);
    let (sections, _) = standings(state, id, persisted.into_iter()).await;
    // Watch first, read after: nothing committed in between goes unheard.
    for section in &sections {
        sub.watch_section(*section);
    }
    let views = read_standings(&state.redis, id, &sections).await?;
    let shown: BTreeMap<Uuid, StandingView> =
        views.into_iter().map(|v| (v.section_id, v)).collect();
    let version = digest(&shown);
    let (mut pipe, chunks) = Pipe::new(state);
    let mut opening = format!("retry: {RETRY_MS}\n\n");
    if last_event_id(req) != Some(version.as_str()) {
        let snapshot = Snapshot {
            items: shown.values().collect(),
        };
        opening.push_str(&frame("snapshot", &version, &snapshot));
    }
    let redis = state.redis.clone();
    tokio::spawn(async move {
        if pipe.send(opening).await {
            follow_student(redis, id, sub, notices, pipe, shown).await;
        }
    });
    Ok(stream_response(chunks))
}

async fn follow_student(
    redis: Redis,
    student: Uuid,
    mut sub: Subscription,
    mut notices: mpsc::Receiver<Notice>,
    mut pipe: Pipe,
    mut shown: BTreeMap<Uuid, StandingView>,
) {
    let mut dirty: BTreeSet<Uuid> = BTreeSet::new();
    while let Some(first) = pipe.next(&mut notices).await {
        let mut everything = sub.take_lagged();
        let mut notice = Some(first);
        while let Some(n) = notice {
            match n {
                Notice::Resync => everything = true,
                Notice::Changed(a) => {
                    // A batch naming the student in a section not yet
                    // watched: a registration made elsewhere (another tab,
                    // an admin).
                    sub.watch_section(a.section);
                    dirty.insert(a.section);
                }
            }
            notice = notices.try_recv().ok();
        }
        if everything {
            dirty.extend(shown.keys().copied());
        }
        let sections: Vec<Uuid> = dirty.iter().copied().collect();
        let views = match read_standings(&redis, student, &sections).await {
            Ok(views) => views,
            Err(e) => {
                // Kept dirty: the next nudge or heartbeat-free wait retries.
                tracing::debug!(error = %e, "live: cannot read a student's standing");
                continue;
            }
        };
        dirty.clear();
        for view in views {
            if shown.get(&view.section_id) == Some(&view) {
                continue;
            }
            shown.insert(view.section_id, view.clone());
            let id = digest(&shown);
            if !pipe.send(frame("standing", &id, &view)).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_one_event_with_one_data_line() {
        let text = frame("seats", "7", &serde_json::json!({"a": "x\ny"}));
        assert_eq!(text, "event: seats\nid: 7\ndata: {\"a\":\"x\\ny\"}\n\n");
    }

    #[test]
    fn the_digest_moves_with_any_standing_and_only_then() {
        let section = Uuid::new_v4();
        let view = |status, position| StandingView {
            section_id: section,
            status,
            position,
            reason: None,
            offer_expires_at: None,
        };
        let at = |v: StandingView| BTreeMap::from([(section, v)]);
        let waiting = digest(&at(view("waitlisted", Some(2))));
        assert_eq!(waiting, digest(&at(view("waitlisted", Some(2)))));
        assert_ne!(waiting, digest(&at(view("waitlisted", Some(1)))));
        assert_ne!(waiting, digest(&at(view("enrolled", None))));
        let offered = StandingView {
            offer_expires_at: Some(crate::domain::rfc3339_ms(86_400_000)),
            ..view("offered", Some(2))
        };
        assert_ne!(waiting, digest(&at(offered)));
        assert_eq!(waiting.len(), 16);
    }
}
