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
//! (`registrar_persistence_sequence_conflicts_total`), logged, and the section's Redis
//! state is rebuilt from PostgreSQL ([`crate::seats::RedisWatch`]). The
//! same holds for a queued copy that differs from the outbox entry of its
//! sequence; the queued copy, which continues PostgreSQL's history, wins.
//!
//! This module receives jobs, fills batches and runs the retry loop; the
//! parts it drives are [`plan`] (what to write: a pure decision),
//! [`gather`] (the reads that decision needs, and carrying it out),
//! [`write`](mod@write) (the transaction and the acknowledgement after it),
//! [`dead_letter`] (finding and undoing what can never be written) and
//! [`error`] (how failures are classified).

mod dead_letter;
mod error;
mod gather;
mod plan;
mod write;

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::{backoff, lease::Leases, Job, Recovered};
use crate::{
    config::SyncSettings,
    domain::Event,
    metrics::{UNOWNED_SKIPPED, VERSION_CONFLICTS, WRITE_RETRIES},
    seats::Redis,
};
use error::WriteError;

pub use dead_letter::undo_owed;

/// What a shard shares with this instance's other writers: which sections
/// it may write, and the news that PostgreSQL answers again.
#[derive(Clone)]
pub struct Peers {
    pub leases: Leases,
    pub recovered: Recovered,
}

pub struct Shard {
    id: usize,
    rx: mpsc::Receiver<Job>,
    db: Pool,
    redis: Redis,
    settings: SyncSettings,
    stop: watch::Receiver<bool>,
    /// Which sections this instance writes (`sync::lease`).
    leases: Leases,
    /// Announces PostgreSQL's return, and hears it from the other writers.
    recovered: Recovered,
    back: watch::Receiver<u64>,
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
        peers: Peers,
    ) -> Self {
        Self {
            back: peers.recovered.watch(),
            recovered: peers.recovered,
            id,
            rx,
            db,
            redis,
            settings,
            stop,
            leases: peers.leases,
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
            let jobs = self.gather(first).await;
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
        self.top_up(&mut jobs);
        jobs
    }

    /// Adds what is queued now, up to a full batch.
    fn top_up(&mut self, jobs: &mut Vec<Job>) {
        while jobs.len() < self.settings.batch_size {
            match self.rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
    }

    /// A batch: what is queued, then, while it is not full, what arrives
    /// within `sync.batch_linger_ms` of the first job. A transaction costs
    /// PostgreSQL about as much as dozens of its rows, so at low backlog
    /// waiting a few ms makes rows much cheaper; a flush (someone waits
    /// for the write) or the stop signal ends the wait.
    async fn gather(&mut self, first: Job) -> Vec<Job> {
        let mut jobs = self.fill(first);
        let linger = Duration::from_millis(self.settings.batch_linger_ms);
        if linger.is_zero() {
            return jobs;
        }
        let until = tokio::time::Instant::now() + linger;
        while jobs.len() < self.settings.batch_size
            && !jobs.iter().any(|j| matches!(j, Job::Flush(_)))
        {
            let job = tokio::select! {
                biased;
                _ = self.stop.wait_for(|stop| *stop) => break,
                job = self.rx.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
                () = tokio::time::sleep_until(until) => break,
            };
            jobs.push(job);
            self.top_up(&mut jobs);
        }
        jobs
    }

    /// Writes a batch, retrying until it is done (or the process stops);
    /// then answers the flushes it contained.
    async fn process(&mut self, jobs: Vec<Job>) {
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut queued: BTreeMap<Uuid, (Vec<Event>, bool)> = BTreeMap::new();
        let mut unowned = 0u64;
        let mut others: Vec<Uuid> = Vec::new();
        for job in jobs {
            match job {
                // Another instance writes this section: its events wait in
                // the outbox, where the owner's sweeper finds them (or at
                // once, woken below). Work taken on while owning is finished
                // even if the lease goes meanwhile (the optimistic check
                // keeps that safe).
                Job::Event(e) if !self.leases.owns(e.section) => {
                    unowned += 1;
                    if !others.contains(&e.section) {
                        others.push(e.section);
                    }
                }
                Job::CatchUp(s) if !self.leases.owns(s) => unowned += 1,
                Job::Event(e) => queued.entry(e.section).or_default().0.push(e),
                Job::CatchUp(s) => queued.entry(s).or_default().1 = true,
                Job::Flush(done) => flushes.push(done),
            }
        }
        if unowned > 0 {
            metrics::counter!(UNOWNED_SKIPPED).increment(unowned);
        }
        if !others.is_empty() {
            if let Err(e) = self.redis.wake_writers(&others).await {
                // Harmless: the owner's sweeper finds them.
                tracing::debug!(error = %e, sections = others.len(), "failed to wake the sections' writers");
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
            // Announcements from before this attempt are old news.
            self.back.borrow_and_update();
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
                Ok(()) => {
                    if attempt > 0 {
                        // PostgreSQL is back: the other shards need not
                        // sleep out their backoff.
                        self.recovered.announce();
                    }
                    attempt = 0;
                }
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
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        // Another writer got through: PostgreSQL answers.
                        _ = self.back.changed() => {}
                    }
                }
            }
        }
        true
    }
}
