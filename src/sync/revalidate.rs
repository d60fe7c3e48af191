//! Revalidating Redis after it may have restarted or lost data.
//!
//! The [`RedisWatch`] gate closes on any failure of the shared connection,
//! when Redis's `run_id` changes (checked every [`CHECK_EVERY`]), or when a
//! worker finds an event contradicting PostgreSQL. While it is closed,
//! register, drop and resize answer 503 `redis_unavailable` with
//! Retry-After and `/ready` answers 503. The revalidator then:
//!
//! 1. waits for seat-changing calls that got in before the gate closed;
//! 2. if the server is the one validated last (same `run_id`: a network
//!    blip or a slow reply, its data intact) and no section is suspect,
//!    reopens at once;
//! 3. otherwise drains what the shards hold in memory into PostgreSQL
//!    first: those are acknowledged events continuing PostgreSQL's
//!    sequence, and a restarted Redis may no longer have them;
//! 4. compares every section's Redis `:seq` with PostgreSQL's `last_seq` and
//!    rebuilds those Redis holds behind (or lost while PostgreSQL has events) (`load.lua` mode "behind", decided
//!    inside the script so instances cannot race); sections at or ahead of
//!    PostgreSQL keep their state and their outbox drains as usual;
//! 5. rebuilds sections a worker reported (mode "force", once their outbox
//!    has drained), then reopens.
//!
//! PostgreSQL away during step 3 or 4 keeps the gate closed: whether Redis
//! is behind cannot be known without it. With several instances, step 4 is
//! a barrier: a section behind is rebuilt only by the instance owning its
//! persistence partition (the only one that can hold unwritten events of
//! it, drained in step 3), and every other instance keeps its gate closed
//! until no section is behind any more.
//!
//! On a Redis Cluster "the server" is the set of primaries with their
//! `run_id`s (`seats::link`): a promoted replica or a restarted node
//! changes it and everything above follows; moving slots between live
//! primaries does not.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context};
use deadpool_postgres::Pool;
use tokio::sync::watch;
use uuid::Uuid;

use super::{lease::Leases, Persistence};
use crate::{
    domain::SectionSnapshot,
    metrics::{REDIS_REVALIDATIONS, SECTIONS_LOADED},
    seats::{Load, Rebuild, Redis, RedisWatch},
    store::engine::{self, Snapshots},
};

/// How often the server's `run_id` is compared with the validated one.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Pause between two revalidation attempts (Redis or PostgreSQL away).
const RETRY: Duration = Duration::from_millis(250);
/// Longest wait for calls that entered before the gate closed; they end
/// within the Redis response timeout, and a late one reports an unknown
/// outcome anyway (its permit's generation moved).
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(3);
/// Failed revalidations in a row (every [`RETRY`]) after which the bulk
/// cluster connections, which it reads Redis through, are replaced: 2 s.
const RENEW_AFTER: u32 = 8;
/// One failed revalidation in this many is logged at WARN: every 5 s.
const LOG_EVERY: u32 = 20;
/// Attempts to drain and force-rebuild a reported section per revalidation.
const FORCE_ATTEMPTS: usize = 5;

pub struct Revalidator {
    pub db: Pool,
    pub redis: Redis,
    pub persistence: Persistence,
    /// Only the owner of a section's partition rebuilds it (see
    /// [`Revalidator::rebuild_behind`]).
    pub leases: Leases,
}

/// What one revalidation did.
#[derive(Debug, Default)]
struct Outcome {
    same_server: bool,
    behind: usize,
    forced: usize,
    dropped_entries: i64,
}

impl Revalidator {
    fn watch(&self) -> &Arc<RedisWatch> {
        self.redis.watch()
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let watch = self.watch().clone();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = watch.wake.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if watch.is_open() {
                match self.redis.run_id().await {
                    Ok(id) => {
                        if !watch.first_seen(&id) && watch.trusted_run_id().is_some_and(|t| t != id)
                        {
                            tracing::warn!(run_id = %id, "Redis is a different server now (restarted?); registration paused until it is revalidated");
                            watch.server_changed();
                        }
                    }
                    // The connection wrapper has closed the gate already.
                    Err(e) => tracing::debug!(error = %e, "Redis check failed"),
                }
                if watch.is_open() {
                    continue;
                }
            }
            let mut failures = 0;
            while !watch.is_open() {
                if *stop.borrow() {
                    return;
                }
                let generation = watch.generation();
                match self.revalidate().await {
                    Ok((run_id, outcome)) => {
                        let label = if outcome.same_server {
                            "same_server"
                        } else {
                            "rebuilt"
                        };
                        if watch.validated(run_id, generation) {
                            metrics::counter!(REDIS_REVALIDATIONS, "result" => label).increment(1);
                            if !outcome.same_server {
                                tracing::warn!(
                                    behind = outcome.behind,
                                    forced = outcome.forced,
                                    dropped_outbox_entries = outcome.dropped_entries,
                                    "Redis revalidated against PostgreSQL; registration resumes"
                                );
                            } else {
                                tracing::info!(
                                    "Redis connection back; same server, registration resumes"
                                );
                            }
                        }
                    }
                    Err(e) => {
                        // Every RETRY while it lasts: the first failure and
                        // then one in LOG_EVERY at WARN, the rest at DEBUG.
                        if failures % LOG_EVERY == 0 {
                            tracing::warn!(error = %format!("{e:#}"), failures, "Redis revalidation failed; registration stays paused, retrying");
                        } else {
                            tracing::debug!(error = %format!("{e:#}"), failures, "Redis revalidation failed; retrying");
                        }
                        failures += 1;
                        if failures % RENEW_AFTER == 0 {
                            match self.redis.renew_bulk() {
                                Ok(true) => tracing::warn!(failures, "revalidation keeps failing; bulk cluster connections replaced with fresh ones"),
                                Ok(false) => {}
                                Err(e) => tracing::warn!(error = %format!("{e:#}"), "bulk cluster connections could not be replaced"),
                            }
                        }
                        tokio::select! {
                            () = tokio::time::sleep(RETRY) => {}
                            _ = stop.wait_for(|s| *s) => return,
                        }
                    }
                }
            }
        }
    }

    async fn revalidate(&self) -> anyhow::Result<(String, Outcome)> {
        let watch = self.watch();
        let waited = tokio::time::Instant::now();
        while watch.in_flight() > 0 && waited.elapsed() < IN_FLIGHT_WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let run_id = self.redis.run_id().await.with_context(|| {
            format!("Redis unreachable at {} (redis.url)", self.redis.address())
        })?;
        // Never seen a server yet (the connection failed before the first
        // check): take this one as found, as at any start; warm-up compares
        // it with PostgreSQL when PostgreSQL answers.
        let same = watch
            .trusted_run_id()
            .is_none_or(|trusted| trusted == run_id);
        let mut outcome = Outcome {
            same_server: same,
            ..Outcome::default()
        };
        if !same {
            self.redis.load_scripts().await.context("loading scripts")?;
            self.drain().await?;
            let (behind, dropped) = self.rebuild_behind().await?;
            outcome.behind = behind;
            outcome.dropped_entries += dropped;
        }
        let suspects = watch.take_suspects();
        if !suspects.is_empty() {
            outcome.same_server = false;
            match self.rebuild_forced(&suspects).await {
                Ok(dropped) => {
                    outcome.forced = suspects.len();
                    outcome.dropped_entries += dropped;
                }
                Err(e) => {
                    watch.return_suspects(&suspects);
                    return Err(e);
                }
            }
        }
        Ok((run_id, outcome))
    }

    async fn snapshots(&self, sections: &[Uuid]) -> anyhow::Result<Vec<SectionSnapshot>> {
        let read = super::bounded(&self.db, async |c| {
            engine::snapshots(&*c, Snapshots::Only(sections)).await
        });
        Ok(read.await?)
    }

    async fn drain(&self) -> anyhow::Result<()> {
        if !self.persistence.flush().await {
            bail!("the persistence shards have stopped");
        }
        Ok(())
    }

    /// Rebuilds every section whose Redis sequence is below PostgreSQL's
    /// (or whose state is gone while PostgreSQL has events of it); returns
    /// (sections rebuilt, outbox entries discarded).
    ///
    /// The barrier across instances: only the instance that owns a
    /// section's partition writes its events, so only it can hold
    /// acknowledged events of that section that PostgreSQL lacks, and it
    /// has just drained them ([`Self::drain`]). So each instance rebuilds
    /// only the behind sections it owns, and fails the revalidation (its
    /// gate stays closed, it compares again shortly) while any other behind
    /// section waits for its owner: nobody rebuilds a section while another
    /// instance still holds unwritten events for it, and nobody serves a
    /// section that is still behind.
    async fn rebuild_behind(&self) -> anyhow::Result<(usize, i64)> {
        let sections = super::bounded(&self.db, async |c| engine::all_last_seqs(&*c).await).await?;
        let ids: Vec<Uuid> = sections.iter().map(|(id, _)| *id).collect();
        let redis_seqs = self.redis.seqs(&ids).await?;
        let (behind, waiting): (Vec<Uuid>, Vec<Uuid>) = sections
            .iter()
            .zip(redis_seqs)
            .filter(|((_, last_seq), seq)| seq.map_or(*last_seq > 0, |s| s < *last_seq))
            .map(|((id, _), _)| *id)
            .partition(|id| self.leases.owns(*id));
        if !waiting.is_empty() {
            // Rebuild what is ours first: an owner waiting on us is not
            // possible (each waits only for sections it does not own).
            let (rebuilt, _) = self.rebuild(&behind).await?;
            bail!(
                "{} section(s) behind PostgreSQL wait for the instance owning their partition \
                 to rebuild them ({rebuilt} of ours rebuilt)",
                waiting.len()
            );
        }
        self.rebuild(&behind).await
    }

    async fn rebuild(&self, behind: &[Uuid]) -> anyhow::Result<(usize, i64)> {
        if behind.is_empty() {
            return Ok((0, 0));
        }
        let snapshots = self.snapshots(behind).await?;
        let (mut rebuilt, mut dropped) = (0, 0);
        for snapshot in &snapshots {
            let (load, discarded) = self.redis.rebuild(snapshot, Rebuild::Behind).await?;
            if load == Load::Loaded {
                rebuilt += 1;
                dropped += discarded;
                tracing::warn!(
                    section = %snapshot.section, last_seq = snapshot.last_seq, discarded,
                    "Redis was behind PostgreSQL; section rebuilt from PostgreSQL"
                );
            }
        }
        metrics::counter!(SECTIONS_LOADED).increment(rebuilt as u64);
        Ok((rebuilt, dropped))
    }

    /// Rebuilds reported sections once their outbox has drained into
    /// PostgreSQL; returns the outbox entries discarded.
    async fn rebuild_forced(&self, sections: &[Uuid]) -> anyhow::Result<i64> {
        let mut pending = sections.to_vec();
        let mut dropped = 0;
        for _ in 0..FORCE_ATTEMPTS {
            for section in &pending {
                self.persistence.catch_up(*section);
            }
            self.drain().await?;
            let snapshots = self.snapshots(&pending).await?;
            let mut left = Vec::new();
            for snapshot in &snapshots {
                match self.redis.rebuild(snapshot, Rebuild::Force).await? {
                    (Load::OutboxPending, _) => left.push(snapshot.section),
                    (_, discarded) => {
                        dropped += discarded;
                        tracing::warn!(
                            section = %snapshot.section, last_seq = snapshot.last_seq, discarded,
                            "section rebuilt from PostgreSQL after a sequence conflict"
                        );
                    }
                }
            }
            pending = left;
            if pending.is_empty() {
                return Ok(dropped);
            }
        }
        bail!(
            "{} section(s) still have events beyond PostgreSQL's last_seq in their outbox",
            pending.len()
        )
    }
}
