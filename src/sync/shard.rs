//! One persistence shard: a bounded queue and the task that drains it.
//!
//! For each batch the shard plans, per section, the events that come right
//! after what PostgreSQL has (`sections.last_seq`): the queued copies when
//! they are contiguous, otherwise the section's outbox read from Redis. It
//! writes every section of the batch in one transaction and advances each
//! section row under an optimistic check, then removes the events from the
//! outbox.
//!
//! Failures: transient ones (connection, timeout, serialization, a version
//! conflict) retry the same batch with backoff, in order, and never undo
//! anything. A permanent one (a row that cannot exist) makes the shard retry
//! event by event to find the culprit, which is undone once in Redis
//! (`compensate.lua`), written to `dead_letters`, and skipped.
//!
//! Replays and contradictions: an event at or below `last_seq` is normally a
//! replay (a queued copy of what a catch-up already wrote, an entry whose
//! acknowledgement was lost) and is skipped. But Redis restarted from an
//! older AOF numbers new events with sequences PostgreSQL already applied;
//! skipping those would lose them silently. So such an event is compared
//! with the fingerprint PostgreSQL recorded for that sequence
//! ([`crate::store::journal`]); a different one is counted
//! (`persistence_sequence_conflicts_total`), logged, and the section's Redis
//! state is rebuilt from PostgreSQL ([`crate::seats::RedisWatch`]). The
//! same holds for a queued copy that differs from the outbox entry of its
//! sequence; the queued copy, which continues PostgreSQL's history, wins.

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::{backoff, bounded, DbError, Job};
use crate::{
    config::SyncSettings,
    domain::now_ms,
    metrics::{
        BATCH_SIZE, COMPENSATIONS, DEAD_LETTERS, EVENTS_APPLIED, PERSIST_LAG, SEQUENCE_CONFLICTS,
        VERSION_CONFLICTS, WRITE_RETRIES,
    },
    seats::{Compensate, Event, Redis},
    store::{engine, journal},
};

/// Why a write did not commit.
#[derive(Debug)]
enum WriteError {
    /// Worth retrying as is: the database or Redis is away or busy.
    Transient(String),
    /// Another writer advanced this section first: reread and replan.
    Conflict(Uuid),
    /// This data cannot be written, ever.
    Permanent {
        message: String,
        sqlstate: Option<String>,
    },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Transient(e) => write!(f, "transient failure: {e}"),
            WriteError::Conflict(section) => {
                write!(f, "section {section} was advanced by another writer")
            }
            WriteError::Permanent { message, sqlstate } => {
                write!(
                    f,
                    "permanent failure ({}): {message}",
                    sqlstate.as_deref().unwrap_or("-")
                )
            }
        }
    }
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(state) if is_permanent(state) => WriteError::Permanent {
                message: e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string()),
                sqlstate: Some(state.code().to_string()),
            },
            _ => WriteError::Transient(format!("{e:#}")),
        }
    }
}

/// No connection, or no answer in time, is worth retrying; an error
/// PostgreSQL answered with is classified as such.
impl<E: Into<WriteError> + std::fmt::Display> From<DbError<E>> for WriteError {
    fn from(e: DbError<E>) -> Self {
        match e {
            DbError::Failed(e) => e.into(),
            unanswered => WriteError::Transient(unanswered.to_string()),
        }
    }
}

impl From<redis::RedisError> for WriteError {
    fn from(e: redis::RedisError) -> Self {
        WriteError::Transient(format!("redis: {e}"))
    }
}

/// Integrity violations (23xxx) and data exceptions (22xxx) will fail
/// again however often they are retried; everything else may pass later.
fn is_permanent(state: &SqlState) -> bool {
    let code = state.code();
    code.starts_with("23") || code.starts_with("22")
}

/// What a student sees as the reason an acknowledged registration was undone.
fn reason_for(sqlstate: Option<&str>) -> &'static str {
    match sqlstate {
        Some("23503") => "the student or section record no longer exists",
        Some("23514") => "the section has no room in the system of record",
        Some("23505") => "it conflicts with an existing registration",
        _ => "it could not be saved",
    }
}

/// What to write for one section in one transaction.
#[derive(Debug)]
struct Planned {
    section: Uuid,
    /// `last_seq` PostgreSQL had when planned: the optimistic check's value.
    applied: i64,
    events: Vec<Event>,
}

pub struct Shard {
    id: usize,
    rx: mpsc::Receiver<Job>,
    db: Pool,
    redis: Redis,
    settings: SyncSettings,
    stop: watch::Receiver<bool>,
    /// Last sequence known applied per section; dropped on a conflict.
    applied: HashMap<Uuid, i64>,
}

impl Shard {
    pub fn new(
        id: usize,
        rx: mpsc::Receiver<Job>,
        db: Pool,
        redis: Redis,
        settings: SyncSettings,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            id,
            rx,
            db,
            redis,
            settings,
            stop,
            applied: HashMap::new(),
        }
    }

    pub async fn run(mut self) {
        loop {
            let first = tokio::select! {
                biased;
                job = self.rx.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
                _ = self.stop.wait_for(|stop| *stop) => break,
            };
            let jobs = self.fill(first);
            self.process(jobs).await;
        }
        // Drain what is already queued; new work stays in the outbox.
        self.rx.close();
        while let Ok(first) = self.rx.try_recv() {
            let jobs = self.fill(first);
            self.process(jobs).await;
        }
        tracing::debug!(shard = self.id, "shard drained");
    }

    fn fill(&mut self, first: Job) -> Vec<Job> {
        let mut jobs = vec![first];
        while jobs.len() < self.settings.batch_size {
            match self.rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        jobs
    }

    /// Writes a batch, retrying until it is done (or the process stops);
    /// then answers the flushes it contained.
    async fn process(&mut self, jobs: Vec<Job>) {
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut queued: BTreeMap<Uuid, (Vec<Event>, bool)> = BTreeMap::new();
        for job in jobs {
            match job {
                Job::Event(e) => queued.entry(e.section).or_default().0.push(e),
                Job::CatchUp(s) => queued.entry(s).or_default().1 = true,
                Job::Flush(done) => flushes.push(done),
            }
        }
        if self.write_all(queued).await {
            for done in flushes {
                let _ = done.send(());
            }
        }
    }

    /// The retry loop of [`Self::process`]; false if it gave up (stopping).
    async fn write_all(&mut self, mut queued: BTreeMap<Uuid, (Vec<Event>, bool)>) -> bool {
        let mut attempt = 0u32;
        while !queued.is_empty() {
            // A failed plan leaves `queued` half taken apart; the copy keeps
            // queued events that may exist nowhere else (Redis lost them).
            let backup = queued.clone();
            let result = match self.plan(&mut queued).await {
                Ok(plans) => match self.write(&plans).await {
                    Ok(()) => {
                        self.committed(&plans).await;
                        Ok(())
                    }
                    Err(WriteError::Permanent { .. }) => {
                        let sections: Vec<Uuid> = plans.iter().map(|p| p.section).collect();
                        let isolated = self.isolate(plans).await;
                        // Undos append events: read them (and anything left) from the outbox.
                        for section in sections {
                            queued.entry(section).or_default().1 = true;
                        }
                        isolated
                    }
                    Err(e) => {
                        // Keep the work: the next attempt plans it again.
                        for plan in plans {
                            queued
                                .entry(plan.section)
                                .or_default()
                                .0
                                .extend(plan.events);
                        }
                        Err(e)
                    }
                },
                Err(e) => {
                    queued = backup;
                    Err(e)
                }
            };
            match result {
                Ok(()) => attempt = 0,
                Err(WriteError::Conflict(section)) => {
                    metrics::counter!(VERSION_CONFLICTS).increment(1);
                    self.applied.remove(&section);
                    // Replan that section from the outbox.
                    queued.entry(section).or_default().1 = true;
                }
                Err(e) => {
                    metrics::counter!(WRITE_RETRIES).increment(1);
                    let wait = backoff(&self.settings, attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(shard = self.id, error = %e, retry_in_ms = wait.as_millis() as u64, "persistence write failed; retrying");
                    if *self.stop.borrow() && attempt > 3 {
                        tracing::warn!(shard = self.id, "stopping with work left in the outbox");
                        return false;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        true
    }

    /// Counts the events of `candidates` (at or below what PostgreSQL
    /// applied) whose recorded fingerprint differs: different events reusing
    /// applied sequences. Unrecorded ones (pruned, or applied before the
    /// journal existed) cannot be checked and count as replays.
    async fn contradicted(&self, section: Uuid, candidates: &[Event]) -> Result<usize, WriteError> {
        if candidates.is_empty() {
            return Ok(0);
        }
        let mut seqs: Vec<i64> = candidates.iter().map(|e| e.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let recorded = bounded(&self.db, async |c| {
            journal::fingerprints(&*c, section, &seqs).await
        })
        .await?;
        Ok(candidates
            .iter()
            .filter(|e| recorded.get(&e.seq).is_some_and(|f| *f != e.fingerprint()))
            .count())
    }

    /// Reports events that contradict what PostgreSQL (or this shard's
    /// queue) holds for their sequence and has the section rebuilt.
    fn conflicts(&self, section: Uuid, count: usize, what: &str) {
        if count == 0 {
            return;
        }
        metrics::counter!(SEQUENCE_CONFLICTS).increment(count as u64);
        tracing::error!(
            shard = self.id, %section, count, what,
            "events reuse sequences of other events (Redis lost data?); rebuilding the section from PostgreSQL"
        );
        self.redis.watch().rebuild_section(section);
    }

    /// Known `last_seq` of each section, reading the unknown ones from PostgreSQL.
    async fn applied_seqs(&mut self, sections: &[Uuid]) -> Result<(), WriteError> {
        let unknown: Vec<Uuid> = sections
            .iter()
            .filter(|s| !self.applied.contains_key(s))
            .copied()
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let found = bounded(&self.db, async |c| engine::last_seqs(&*c, &unknown).await).await?;
        for section in unknown {
            match found.get(&section) {
                Some(seq) => {
                    self.applied.insert(section, *seq);
                }
                None => tracing::error!(%section, "events for a section PostgreSQL does not have"),
            }
        }
        Ok(())
    }

    /// Decides what to write for each queued section; sections fully planned
    /// leave `queued`, those with more to read stay there as catch-ups.
    async fn plan(
        &mut self,
        queued: &mut BTreeMap<Uuid, (Vec<Event>, bool)>,
    ) -> Result<Vec<Planned>, WriteError> {
        let sections: Vec<Uuid> = queued.keys().copied().collect();
        self.applied_seqs(&sections).await?;
        let mut plans = Vec::with_capacity(sections.len());
        let limit = self.settings.batch_size;
        for section in sections {
            let Some(&applied) = self.applied.get(&section) else {
                queued.remove(&section);
                continue;
            };
            let (mut events, catch_up) = queued.remove(&section).unwrap_or_default();
            let (mut replays, fresh): (Vec<Event>, Vec<Event>) =
                events.into_iter().partition(|e| e.seq <= applied);
            events = fresh;
            events.sort_by_key(|e| e.seq);
            events.dedup_by_key(|e| e.seq);
            let contiguous = events
                .iter()
                .enumerate()
                .all(|(i, e)| e.seq == applied + 1 + i as i64);
            let mut more = false;
            if catch_up || !contiguous {
                // Entries PostgreSQL already has but nobody acknowledged
                // (a crash between commit and XDEL) would otherwise stay
                // forever; check they are what PostgreSQL applied, then trim.
                replays.extend(self.redis.outbox_until(section, applied, limit).await?);
                let contradicted = self.contradicted(section, &replays).await?;
                self.conflicts(section, contradicted, "at or below last_seq");
                self.redis.trim_applied(section, applied).await?;
                let outbox = self.redis.outbox_from(section, applied + 1, limit).await?;
                let outbox_full = outbox.len() == limit;
                let read_up_to = outbox.last().map(|e| e.seq);
                let mut merged: BTreeMap<i64, Event> =
                    outbox.into_iter().map(|e| (e.seq, e)).collect();
                let mut differing = 0;
                let mut beyond = Vec::new();
                for e in events {
                    if outbox_full && read_up_to.is_some_and(|last| e.seq > last) {
                        // Not read from the outbox yet: compare next time.
                        beyond.push(e);
                        continue;
                    }
                    match merged.get(&e.seq) {
                        Some(o) if o.fingerprint() != e.fingerprint() => {
                            differing += 1;
                            // The queued copy continues PostgreSQL's history.
                            merged.insert(e.seq, e);
                        }
                        Some(_) => {}
                        // The outbox lost it (Redis restarted): the queued
                        // copy is the only one left of an acknowledged event.
                        None => {
                            merged.insert(e.seq, e);
                        }
                    }
                }
                self.conflicts(section, differing, "queued copy differs from the outbox");
                events = merged.into_values().collect();
                more = outbox_full || !beyond.is_empty();
                if !beyond.is_empty() {
                    queued.entry(section).or_default().0.extend(beyond);
                }
                if let Some(first) = events.first() {
                    if first.seq != applied + 1 {
                        tracing::error!(
                            %section, expected = applied + 1, found = first.seq,
                            "outbox lacks events PostgreSQL never saw (Redis lost data?); continuing from what remains"
                        );
                    }
                }
                let start = events.first().map_or(applied + 1, |e| e.seq);
                let run = events
                    .iter()
                    .enumerate()
                    .take_while(|(i, e)| e.seq == start + *i as i64)
                    .count();
                let rest = events.split_off(run);
                if !rest.is_empty() {
                    // Keep what lies past a gap: it may exist nowhere else.
                    more = true;
                    queued.entry(section).or_default().0.extend(rest);
                }
            } else if !replays.is_empty() {
                let contradicted = self.contradicted(section, &replays).await?;
                self.conflicts(section, contradicted, "at or below last_seq");
            }
            if more {
                queued.entry(section).or_default().1 = true;
            }
            if !events.is_empty() {
                plans.push(Planned {
                    section,
                    applied,
                    events,
                });
            }
        }
        Ok(plans)
    }

    /// One transaction for all plans, given up after [`super::DB_DEADLINE`] (a
    /// commit whose answer was lost is found applied on the retry: the
    /// optimistic check fails, the events are replays).
    async fn write(&self, plans: &[Planned]) -> Result<(), WriteError> {
        if plans.is_empty() {
            return Ok(());
        }
        Ok(bounded(&self.db, async |c| Self::write_with(c, plans).await).await?)
    }

    async fn write_with(
        client: &mut deadpool_postgres::Object,
        plans: &[Planned],
    ) -> Result<(), WriteError> {
        let tx = client.transaction().await?;
        for plan in plans {
            engine::apply(&tx, plan.section, &plan.events).await?;
            let last = plan.events.last().map_or(plan.applied, |e| e.seq);
            if !engine::advance(&tx, plan.section, plan.applied, last).await? {
                return Err(WriteError::Conflict(plan.section));
            }
        }
        journal::record(&tx, plans.iter().flat_map(|p| &p.events)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// After a commit: remember, acknowledge, measure.
    async fn committed(&mut self, plans: &[Planned]) {
        let now = now_ms();
        let mut total = 0;
        for plan in plans {
            let Some(last) = plan.events.last() else {
                continue;
            };
            self.applied.insert(plan.section, last.seq);
            total += plan.events.len();
            for e in &plan.events {
                metrics::counter!(EVENTS_APPLIED, "kind" => e.kind.as_str()).increment(1);
                metrics::histogram!(PERSIST_LAG).record((now - e.at_ms).max(0) as f64 / 1000.0);
            }
            let seqs: Vec<i64> = plan.events.iter().map(|e| e.seq).collect();
            if let Err(e) = self.redis.ack(plan.section, &seqs).await {
                // Harmless: the entries are skipped (seq ≤ last_seq) and acknowledged next time.
                tracing::warn!(section = %plan.section, error = %e, "failed to acknowledge outbox entries");
            }
        }
        if total > 0 {
            metrics::histogram!(BATCH_SIZE).record(total as f64);
        }
    }

    /// After a permanent failure: write event by event, dead-lettering the culprits.
    async fn isolate(&mut self, plans: Vec<Planned>) -> Result<(), WriteError> {
        for plan in plans {
            let mut applied = plan.applied;
            for event in plan.events {
                let single = [Planned {
                    section: plan.section,
                    applied,
                    events: vec![event.clone()],
                }];
                match self.write(&single).await {
                    Ok(()) => self.committed(&single).await,
                    Err(WriteError::Permanent { message, sqlstate }) => {
                        self.dead_letter(&event, applied, &message, sqlstate.as_deref())
                            .await?;
                    }
                    Err(e) => {
                        self.applied.insert(plan.section, applied);
                        return Err(e);
                    }
                }
                applied = event.seq;
            }
        }
        Ok(())
    }

    /// Undoes `event` in Redis (once), records it, and moves past it.
    async fn dead_letter(
        &mut self,
        event: &Event,
        applied: i64,
        error: &str,
        sqlstate: Option<&str>,
    ) -> Result<(), WriteError> {
        let reason = reason_for(sqlstate);
        tracing::error!(
            section = %event.section, seq = event.seq, kind = event.kind.as_str(),
            student = ?event.student, %error, ?sqlstate, "event cannot be persisted; undoing it"
        );
        // Redis first: a crash after this retries it, and the script's
        // at-most-once guard makes the retry a no-op.
        let outcome = self.redis.compensate(event, reason, now_ms()).await?;
        let label = match outcome {
            Compensate::Already => "already",
            Compensate::NothingToUndo => "nothing_to_undo",
            Compensate::NotUndoable => "not_undoable",
            Compensate::Reverted { .. } => "reverted",
        };
        metrics::counter!(COMPENSATIONS, "result" => label).increment(1);
        bounded(&self.db, async |c| {
            let tx = c.transaction().await?;
            engine::insert_dead_letter(&tx, event, error, sqlstate).await?;
            if !engine::advance(&tx, event.section, applied, event.seq).await? {
                return Err(WriteError::Conflict(event.section));
            }
            journal::record(&tx, [event]).await?;
            tx.commit().await?;
            Ok(())
        })
        .await?;
        metrics::counter!(DEAD_LETTERS).increment(1);
        self.applied.insert(event.section, event.seq);
        if let Err(e) = self.redis.ack(event.section, &[event.seq]).await {
            tracing::warn!(section = %event.section, error = %e, "failed to acknowledge a dead-lettered entry");
        }
        Ok(())
    }
}
