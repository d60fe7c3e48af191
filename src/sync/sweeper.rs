//! The outbox sweeper: the safety net under the fast path.
//!
//! Every `sync.sweep_interval_ms` it looks at the oldest outbox entry of every
//! known section; a section whose oldest entry is older than
//! `sync.sweep_min_age_ms` goes back to its shard as a catch-up job (a crash
//! lost the queued copy, the queue was full, or PostgreSQL was away). The
//! first sweep after start-up takes every entry, whatever its age, and so
//! does a sweep of the partitions this instance has just taken a lease on
//! (`lease::Leases::gained`: after a PostgreSQL outage, a takeover or a
//! handover their events waited in the outbox for a writer, and are handed
//! to the shards at once instead of a tick and `sweep_min_age_ms` later).
//! It also publishes the backlog that `/health` and `/metrics` show.
//!
//! Each pass also lets the waitlist offers that are due lapse
//! (`lua/lapse.lua`), in sections nobody touches: a seat is held at most a
//! sweep interval past its deadline (every section script lapses due
//! offers itself on its next call). The seats offers hold are published
//! beside the backlog.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use deadpool_postgres::Pool;
use tokio::sync::watch;
use uuid::Uuid;

use super::{lease::Leases, warmup::Loader, Persistence};
use crate::{
    config::SyncSettings,
    domain::now_ms,
    metrics::{OFFERS_LAPSED, OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE, SEATS_OFFERED, SWEEPER_REQUEUED},
    seats::Redis,
    store::{engine, journal},
};

/// Sections per pipelined round trip.
const CHUNK: usize = 500;
/// Sweeps between two refreshes of the section list from PostgreSQL.
const REFRESH_EVERY: u32 = 10;
/// Sweeps between two prunes of old event fingerprints (`journal::KEEP`).
const PRUNE_EVERY: u32 = 600;

/// What the last sweep saw, for `/health`.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Outbox entries over all sections.
    pub entries: AtomicU64,
    /// Unix ms of the oldest entry; 0 when there is none.
    pub oldest_ms: AtomicI64,
    /// Unix ms of the last completed sweep; 0 before the first.
    pub swept_ms: AtomicI64,
    /// Seats held by waitlist offers over all sections.
    pub seats_offered: AtomicI64,
}

pub struct Sweeper {
    /// Sections this process loaded: the list while PostgreSQL is away.
    pub loader: Arc<Loader>,
    pub db: Pool,
    pub redis: Redis,
    pub persistence: Persistence,
    /// This instance's partition leases: a gained one is swept at once.
    pub leases: Leases,
    pub settings: SyncSettings,
    pub backlog: Arc<Backlog>,
}

impl Sweeper {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut interval =
            tokio::time::interval(Duration::from_millis(self.settings.sweep_interval_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sections: Vec<Uuid> = Vec::new();
        let mut sweeps = 0u32;
        let mut first = true;
        let reconcile_every = Duration::from_secs(self.settings.reconcile_interval_secs);
        let mut reconciled = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = self.leases.gained() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if sections.is_empty() || sweeps % REFRESH_EVERY == 0 {
                match self.known_sections().await {
                    Ok(found) => sections = found,
                    Err(e) => {
                        tracing::debug!(error = %e, "sweeper could not refresh sections; using the last list")
                    }
                }
            }
            let mut listed: HashSet<Uuid> = sections.iter().copied().collect();
            for section in self.loader.known() {
                if listed.insert(section) {
                    sections.push(section);
                }
            }
            if sweeps % PRUNE_EVERY == PRUNE_EVERY - 1 {
                self.prune().await;
            }
            sweeps = sweeps.wrapping_add(1);
            let min_age = if first {
                0
            } else {
                self.settings.sweep_min_age_ms as i64
            };
            let gained = self.leases.take_gained();
            match self.sweep(&sections, min_age, &gained).await {
                Ok(()) => first = false,
                Err(e) => tracing::warn!(error = %e, "outbox sweep failed"),
            }
            self.undo_owed().await;
            if !reconcile_every.is_zero() && reconciled.elapsed() >= reconcile_every {
                reconciled = tokio::time::Instant::now();
                let check = tokio::time::timeout(
                    super::DB_DEADLINE,
                    super::reconcile::reconcile(&self.db, &self.redis, false),
                );
                match check
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
                {
                    Ok(reports) => {
                        let drifted = reports.iter().filter(|r| r.is_drift()).count();
                        if drifted > 0 {
                            tracing::warn!(
                                drifted,
                                "Redis and PostgreSQL disagree; see `registrar reconcile`"
                            );
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "drift check skipped"),
                }
            }
        }
    }

    /// Carries out the undos that dead letters still owe (their process
    /// died, or Redis failed, between the record's commit and the undo).
    async fn undo_owed(&self) {
        let owing =
            super::bounded(&self.db, async |c| engine::sections_owing_undos(&*c).await).await;
        let sections = match owing {
            Ok(sections) if sections.is_empty() => return,
            Ok(sections) => sections,
            Err(e) => {
                tracing::debug!(error = %e, "owed undos not checked");
                return;
            }
        };
        if let Err(e) = super::shard::undo_owed(&self.db, &self.redis, &sections).await {
            tracing::warn!(error = %e, "owed undos not carried out yet; retrying next sweep");
        }
    }

    /// Lets `section`'s due offers lapse; their events go to the section's
    /// shard like a registration's. The deadline is Redis's clock, so one
    /// judged due here by this instance's clock may not be yet: the script
    /// decides, and nothing changes.
    async fn lapse(&self, section: Uuid) {
        match self.redis.lapse_offers(section, now_ms()).await {
            Ok(Some(scripted)) => {
                let lapsed = scripted
                    .events
                    .iter()
                    .filter(|e| e.kind == crate::domain::EventKind::Unwait)
                    .count();
                metrics::counter!(OFFERS_LAPSED).increment(lapsed as u64);
                for event in scripted.events {
                    self.persistence.submit(event);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, %section, "due offers not lapsed; next sweep"),
        }
    }

    async fn prune(&self) {
        match super::bounded(&self.db, async |c| journal::prune(&*c).await).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "old event fingerprints pruned"),
            Err(e) => tracing::debug!(error = %e, "fingerprint prune skipped"),
        }
    }

    async fn known_sections(&self) -> anyhow::Result<Vec<Uuid>> {
        // Bounded: a connection stuck in a partition must not stop the sweeps
        // (the backlog in /health would freeze).
        Ok(super::bounded(&self.db, async |c| engine::section_ids(&*c).await).await?)
    }

    /// One pass over `sections`; re-enqueues those with entries older than
    /// `min_age_ms`, and those of a partition marked in `gained` whatever
    /// their entries' age.
    pub async fn sweep(
        &self,
        sections: &[Uuid],
        min_age_ms: i64,
        gained: &[bool],
    ) -> anyhow::Result<()> {
        let now = now_ms();
        let mut entries = 0u64;
        let mut oldest: Option<i64> = None;
        let mut offered = 0i64;
        for chunk in sections.chunks(CHUNK) {
            for (section, (held, due)) in chunk.iter().zip(self.redis.offer_heads(chunk).await?) {
                offered += held;
                if due.is_some_and(|due| due <= now) {
                    self.lapse(*section).await;
                }
            }
            let heads = self.redis.outbox_heads(chunk).await?;
            for (section, (head, len)) in chunk.iter().zip(heads) {
                entries += len;
                let Some((_, at)) = head else { continue };
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
                let fresh = gained
                    .get(self.leases.partition_of(*section))
                    .copied()
                    .unwrap_or(false);
                if (fresh || now - at >= min_age_ms) && self.persistence.catch_up(*section) {
                    metrics::counter!(SWEEPER_REQUEUED).increment(1);
                }
            }
        }
        self.backlog.entries.store(entries, Ordering::Relaxed);
        self.backlog
            .oldest_ms
            .store(oldest.unwrap_or(0), Ordering::Relaxed);
        self.backlog.swept_ms.store(now, Ordering::Relaxed);
        self.backlog.seats_offered.store(offered, Ordering::Relaxed);
        metrics::gauge!(SEATS_OFFERED).set(offered as f64);
        metrics::gauge!(OUTBOX_BACKLOG).set(entries as f64);
        metrics::gauge!(OUTBOX_OLDEST_AGE)
            .set(oldest.map_or(0.0, |o| (now - o).max(0) as f64 / 1000.0));
        self.persistence.depths();
        Ok(())
    }
}
