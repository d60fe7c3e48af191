//! Rights revocable at once (SPEC §15). A token says who its holder is at
//! login; what it still vouches for is the account's access record: its
//! token epoch (moved on by a change of role, status or password, or an
//! explicit revocation), its holds, and whether it exists at all. PostgreSQL
//! has the truth (sql/0006_student_access.sql); every request checks a copy
//! in the student's Redis slot, in the round trip that charges the
//! student's rate limit ([`crate::seats::limits::Limiter::charge`]).
//!
//! The copy is kept current three ways:
//! - whoever changes an account through the API stores the new record
//!   before answering, so the very next request sees it;
//! - every change in PostgreSQL, the API's or anyone's with psql, is
//!   announced by NOTIFY and each server stores it ([`listen`]); after a
//!   lost listening connection the accounts changed meanwhile are reread;
//! - every server copies all accounts' records when it starts, and after
//!   a lost listening connection rereads the accounts changed meanwhile;
//!   a request that finds no copy (Redis lost it) reads PostgreSQL
//!   ([`load`]). New accounts are announced too, so a student's first
//!   request finds their copy and registration needs no PostgreSQL.

use std::{sync::Arc, time::Duration};

use uuid::Uuid;

use crate::{domain::AccessRecord, metrics::ACCESS_REFRESHES, state::AppState, store};

/// The NOTIFY channel of sql/0006_student_access.sql (payload: student id).
const CHANNEL: &str = "student_access";

/// Pause before listening again after the connection failed.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

/// How far back the rereading after a reconnection reaches before the
/// moment the connection was lost (clock skew between us and PostgreSQL).
const CATCH_UP_MARGIN: chrono::Duration = chrono::Duration::seconds(5);

/// PostgreSQL could not be asked for an access record.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
}

/// Accounts read and stored per batch (one query, one pipelined round trip).
const BATCH: usize = 1000;

/// How long the copy of a gone account lives: as long as one of its
/// tokens could, after which nobody can present one.
pub fn gone_ttl(state: &AppState) -> Duration {
    Duration::from_secs(state.settings.auth.token_ttl_secs)
}

/// Reads `student`'s record from PostgreSQL and stores it in Redis (unless
/// Redis has a newer one). The record is returned even when Redis could not
/// be written: the caller's decision still rests on the truth.
pub async fn load(state: &AppState, student: Uuid) -> Result<AccessRecord, LoadError> {
    let db = state.db.get().await?;
    let record = store::students::access(&db, student).await?;
    drop(db);
    if let Err(e) = store(state, student, &record).await {
        tracing::warn!(error = %e, %student, "access record could not be stored in Redis");
    }
    Ok(record)
}

/// Stores a record just read from PostgreSQL (at login, after a change).
pub async fn store(
    state: &AppState,
    student: Uuid,
    record: &AccessRecord,
) -> redis::RedisResult<()> {
    store_all(state, &[(student, record.clone())]).await
}

/// Stores records (starting the schedules of students who have none) and
/// takes students who just lost the right to register off their waitlists.
async fn store_all(state: &AppState, records: &[(Uuid, AccessRecord)]) -> redis::RedisResult<()> {
    let schedules = state.registrar.schedule_entries(records).await;
    let stored = state
        .redis
        .access_set(records, schedules.as_deref(), gone_ttl(state))
        .await?;
    withdraw(state, &stored.lost_eligibility).await;
    Ok(())
}

/// Takes students who just lost the right to register off their waitlists
/// (`Registrar::withdraw_waitlists`). A failure is logged and not retried:
/// the hold still refuses every new registration, but the places kept
/// could be promoted (README "Registration rules").
async fn withdraw(state: &AppState, students: &[Uuid]) {
    for student in students {
        if let Err(e) = state
            .registrar
            .withdraw_waitlists(*student, crate::domain::now_ms())
            .await
        {
            tracing::warn!(error = %e, %student, "could not take an ineligible student off their waitlists");
        }
    }
}

/// Students one ineligibility check handles at most (the rest wait a period).
const INELIGIBLE_BATCH: i64 = 1000;

/// The net under the immediate withdrawal ([`withdraw`]): every
/// `sync.ineligible_sweep_ms`, students PostgreSQL has on a waitlist
/// although they may not register leave their waitlists. It catches what
/// the immediate path misses: a server that stopped between storing the
/// record and withdrawing, a withdrawal that failed, and a registration
/// that passed its access check just before the hold and took its waitlist
/// place just after the withdrawal. Runs on every server (the withdrawal
/// is idempotent) under the supervisor, until `stop`.
pub async fn sweep_ineligible(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = state.settings.sync.ineligible_sweep_ms;
    if every == 0 {
        let _ = stop.wait_for(|s| *s).await;
        return;
    }
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(every));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !state.is_warmed_up() {
            continue;
        }
        let found = async {
            let db = state.db.get().await?;
            anyhow::Ok(store::students::waitlisted_ineligible(&db, INELIGIBLE_BATCH).await?)
        };
        match tokio::time::timeout(crate::sync::DB_DEADLINE, found).await {
            Ok(Ok(students)) => withdraw(&state, &students).await,
            Ok(Err(e)) => {
                tracing::debug!(error = %format!("{e:#}"), "ineligible students not checked")
            }
            Err(_) => tracing::debug!("ineligible students not checked: PostgreSQL did not answer"),
        }
    }
}

/// Rereads `students` from PostgreSQL and stores their records.
pub async fn refresh(state: &AppState, students: &[Uuid]) -> anyhow::Result<()> {
    let db = state.db.get().await?;
    let records = store::students::access_many(&db, students).await?;
    drop(db);
    store_all(state, &records).await?;
    metrics::counter!(ACCESS_REFRESHES).increment(records.len() as u64);
    Ok(())
}

/// Stores every account's record: at start, so a copy is in Redis before
/// each student's first request, and whatever was missed while no server
/// listened is corrected.
async fn copy_all(state: &AppState) -> anyhow::Result<usize> {
    let mut after = Uuid::nil();
    let mut copied = 0;
    loop {
        let db = state.db.get().await?;
        let page = store::students::access_page(&db, after, BATCH as i64).await?;
        drop(db);
        let Some((last, _)) = page.last() else {
            return Ok(copied);
        };
        after = *last;
        store_all(state, &page).await?;
        copied += page.len();
    }
}

/// Keeps every account's copy current with PostgreSQL's announcements,
/// until the process stops. Runs under the supervisor.
pub async fn listen(state: Arc<AppState>) {
    // What this connection must catch up on before trusting the stream:
    // everything at first, then whatever changed since the last one ended.
    let mut owed = CatchUp::Everything;
    loop {
        let mut listener = match store::notify::listen(&state.settings.database, CHANNEL).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for account changes; retrying");
                tokio::time::sleep(RELISTEN_AFTER).await;
                continue;
            }
        };
        // Listening first, then catching up: a change in between is both
        // read here and announced, never neither.
        owed = match catch_up(&state, owed).await {
            Ok(()) => {
                state.access_copy_done();
                CatchUp::Nothing
            }
            Err((owed, e)) => {
                tracing::warn!(error = %format!("{e:#}"), "accounts could not be copied to Redis; retrying");
                tokio::time::sleep(RELISTEN_AFTER).await;
                owed
            }
        };
        if !matches!(owed, CatchUp::Nothing) {
            continue;
        }
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(payload) = listener.payloads.recv().await {
            batch.clear();
            batch.push(payload);
            while batch.len() < BATCH {
                match listener.payloads.try_recv() {
                    Ok(payload) => batch.push(payload),
                    Err(_) => break,
                }
            }
            let students: Vec<Uuid> = batch
                .iter()
                .filter_map(|payload| {
                    let parsed = payload.parse().ok();
                    if parsed.is_none() {
                        tracing::warn!(%payload, "unexpected payload on {CHANNEL}");
                    }
                    parsed
                })
                .collect();
            if let Err(e) = refresh(&state, &students).await {
                // Redis or PostgreSQL is away: reread these after listening
                // again (the connection is dropped to get there).
                tracing::warn!(error = %e, accounts = students.len(), "changed accounts could not be reread");
                break;
            }
        }
        owed = CatchUp::Since(chrono::Utc::now());
        tracing::warn!("listening for account changes stopped; listening again");
        tokio::time::sleep(RELISTEN_AFTER).await;
    }
}

/// What a new listening connection must reread first.
#[derive(Debug, Clone, Copy)]
enum CatchUp {
    Nothing,
    Everything,
    /// Accounts changed since this moment.
    Since(chrono::DateTime<chrono::Utc>),
}

async fn catch_up(state: &AppState, owed: CatchUp) -> Result<(), (CatchUp, anyhow::Error)> {
    match owed {
        CatchUp::Nothing => Ok(()),
        CatchUp::Everything => {
            let copied = copy_all(state).await.map_err(|e| (owed, e))?;
            tracing::info!(accounts = copied, "access records copied to Redis");
            Ok(())
        }
        CatchUp::Since(since) => {
            let changed = async {
                let db = state.db.get().await?;
                let changed = store::students::changed_since(&db, since - CATCH_UP_MARGIN).await?;
                drop(db);
                for chunk in changed.chunks(BATCH) {
                    refresh(state, chunk).await?;
                }
                anyhow::Ok(changed.len())
            };
            let changed = changed.await.map_err(|e| (owed, e))?;
            tracing::info!(
                accounts = changed,
                "accounts changed while not listening reread"
            );
            Ok(())
        }
    }
}
