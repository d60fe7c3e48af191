//! Partition leases: one persistence writer per section across instances.
//!
//! The section space is cut into `sync.partitions` partitions (a section's
//! is [`Leases::partition_of`]). An instance writes a section's events only
//! while it holds that partition's lease: a PostgreSQL session advisory
//! lock, `pg_try_advisory_lock(<namespace key>, <partition>)`, held by the
//! [`LeaseKeeper`]'s own connection (`store::lease_pool`). Events of
//! sections it does not own stay in their outbox; the owner's sweeper finds
//! them (`sync.sweep_min_age_ms`).
//!
//! Every `sync.lease_interval_ms` the keeper refreshes its instance's row
//! (`persistence_instances`), counts the live instances, and moves towards
//! its fair share, ⌈partitions / live⌉: it gives up leases beyond it
//! (newcomers take them on their next round) and takes free ones up to it.
//! Ownership moves
//! - when an instance stops: it gives every lease up after its shards have
//!   drained, and forgets its row; the others take them on their next round;
//! - when an instance dies: its session ends with it (the kernel closes the
//!   socket; short TCP keepalives end a session whose client vanished), and
//!   after three missed refreshes its row is stale: the others end its
//!   session if it lingers (`pg_terminate_backend`) and share its leases.
//!   Takeover takes at most about 4 × `lease_interval_ms`, then the
//!   sweeper's delay.
//!
//! The leases are the rule; the optimistic check on `sections.last_seq`,
//! made before any row of a batch is written (`shard::write`), stays the
//! safety net: a writer that lost its lease mid-batch (its session ended
//! under it) finds the section moved on, a conflict, and replans — it never
//! writes over the new owner and never undoes anything. When the keeper
//! cannot be sure it still holds its locks (its session failed) it stops
//! writing every partition at once, and starts over on a new session.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context;
use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::Recovered;
use crate::{metrics::PARTITIONS_OWNED, store::leases};

/// Refreshes an instance may miss before the others take its leases.
const MISSED_REFRESHES: u32 = 3;

/// Which partitions this instance writes; cheap to clone and to ask.
#[derive(Clone)]
pub struct Leases {
    owned: Arc<[AtomicBool]>,
    /// Partitions taken since the sweeper last asked ([`Leases::take_gained`]).
    gained: Arc<[AtomicBool]>,
    /// Rung when a round took partitions, so the sweeper hands their
    /// waiting events to the shards at once instead of at its next tick.
    woken: Arc<Notify>,
}

impl Leases {
    pub fn new(partitions: usize) -> Self {
        let flags = || -> Arc<[AtomicBool]> {
            (0..partitions.max(1))
                .map(|_| AtomicBool::new(false))
                .collect()
        };
        Self {
            owned: flags(),
            gained: flags(),
            woken: Arc::new(Notify::new()),
        }
    }

    pub fn partitions(&self) -> usize {
        self.owned.len()
    }

    /// The partition of `section`: stable, and the same on every instance.
    pub fn partition_of(&self, section: Uuid) -> usize {
        (section.as_u128() % self.owned.len() as u128) as usize
    }

    /// Whether this instance may write `section`'s events now.
    pub fn owns(&self, section: Uuid) -> bool {
        self.owned[self.partition_of(section)].load(Ordering::Acquire)
    }

    /// How many partitions this instance holds.
    pub fn owned(&self) -> usize {
        self.owned
            .iter()
            .filter(|p| p.load(Ordering::Acquire))
            .count()
    }

    fn held(&self, partition: usize) -> bool {
        self.owned[partition].load(Ordering::Acquire)
    }

    fn set(&self, partition: usize, owned: bool) {
        self.owned[partition].store(owned, Ordering::Release);
        metrics::gauge!(PARTITIONS_OWNED).set(self.owned() as f64);
    }

    /// Starts writing a partition just locked, and marks it gained.
    fn take(&self, partition: usize) {
        self.set(partition, true);
        self.gained[partition].store(true, Ordering::Release);
    }

    /// Waits until a lease round has taken partitions (returns at once if
    /// one did since the last wait).
    pub async fn gained(&self) {
        self.woken.notified().await;
    }

    /// The partitions taken since the last call, each reported once: their
    /// sections' events may be waiting in the outbox (written while nobody
    /// held the lease: an outage, a takeover, a handover).
    pub fn take_gained(&self) -> Vec<bool> {
        self.gained
            .iter()
            .map(|g| g.swap(false, Ordering::AcqRel))
            .collect()
    }

    /// Stops writing every partition (the locks may be gone).
    fn forget_all(&self) {
        for p in self.owned.iter() {
            p.store(false, Ordering::Release);
        }
        metrics::gauge!(PARTITIONS_OWNED).set(0.0);
    }
}

/// The advisory-lock key of a namespace: instances of one deployment share
/// it; other namespaces on the same database (tests) never collide with it.
pub fn namespace_key(namespace: &str) -> i32 {
    let digest = Sha256::digest(namespace.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Holds this instance's leases on a connection of its own.
pub struct LeaseKeeper {
    /// One connection (`store::lease_pool`): its session holds the locks.
    pool: Pool,
    leases: Leases,
    namespace: String,
    key: i32,
    /// This process, in `persistence_instances`.
    instance: Uuid,
    interval: Duration,
    /// The session holding the locks; None until connected, and after a
    /// failure (a new session starts from no lease).
    session: Option<deadpool_postgres::Object>,
    /// PostgreSQL's return: announced when a round succeeds after a failed
    /// one, and heard from the shards to start over without waiting a tick.
    recovered: Recovered,
}

impl LeaseKeeper {
    pub fn new(
        pool: Pool,
        leases: Leases,
        namespace: &str,
        interval: Duration,
        recovered: Recovered,
    ) -> Self {
        Self {
            recovered,
            pool,
            leases,
            namespace: namespace.to_string(),
            key: namespace_key(namespace),
            instance: Uuid::now_v7(),
            interval,
            session: None,
        }
    }

    /// Longest a round may take before its session is given up.
    fn deadline(&self) -> Duration {
        self.interval * MISSED_REFRESHES
    }

    /// Keeps the leases until `stop` turns true, then gives them all up.
    /// Start it after the shards and stop it after they have drained: the
    /// leases are what lets them write.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut back = self.recovered.watch();
        let mut failed = false;
        loop {
            let lost = self.session.is_none();
            tokio::select! {
                _ = tick.tick() => {}
                // A shard got through to PostgreSQL: take the leases back now.
                _ = back.changed(), if lost => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let round = tokio::time::timeout(self.deadline(), self.round()).await;
            let failure = match round {
                Ok(Ok(())) => {
                    if std::mem::take(&mut failed) {
                        self.recovered.announce();
                        back.borrow_and_update();
                    }
                    continue;
                }
                Ok(Err(e)) => e,
                Err(_) => anyhow::anyhow!("no answer within {} ms", self.deadline().as_millis()),
            };
            if self.leases.owned() > 0 {
                tracing::warn!(error = %format!("{failure:#}"), "lease session failed; not writing any partition until leases are held again");
            } else {
                tracing::debug!(error = %format!("{failure:#}"), "lease round failed");
            }
            failed = true;
            self.leases.forget_all();
            if let Some(session) = self.session.take() {
                drop(deadpool_postgres::Object::take(session));
            }
        }
        self.leave().await;
    }

    /// One refresh: heartbeat, share out, give up or take leases.
    async fn round(&mut self) -> anyhow::Result<()> {
        if self.session.is_none() {
            let session = self
                .pool
                .get()
                .await
                .context("no lease connection to PostgreSQL")?;
            // A previous session of this instance may linger (it failed on
            // our side only) and hold our old locks: end it.
            leases::end_previous_session(&session, &self.namespace, self.instance).await?;
            self.session = Some(session);
        }
        let Some(session) = self.session.as_ref() else {
            return Ok(());
        };
        let db = session;
        leases::heartbeat(db, &self.namespace, self.instance).await?;
        let fresh_ms = self.deadline().as_millis() as i64;
        for (instance, pid) in
            leases::stale_instances(db, &self.namespace, self.instance, fresh_ms).await?
        {
            tracing::warn!(%instance, pid, "an instance stopped refreshing its leases; taking them over");
            leases::evict(db, &self.namespace, instance, pid).await?;
        }
        let live = leases::live_instances(db, &self.namespace, fresh_ms)
            .await?
            .max(1) as usize;
        let partitions = self.leases.partitions();
        let share = partitions.div_ceil(live);
        let mut held = self.leases.owned();
        // Start from a place of this instance's own, so that instances
        // reach for different partitions first.
        let start = (self.instance.as_u128() % partitions as u128) as usize;
        let order: Vec<usize> = (0..partitions).map(|i| (start + i) % partitions).collect();
        for &p in order.iter().rev() {
            if held <= share {
                break;
            }
            if self.leases.held(p) {
                // Stop writing first, then let go.
                self.leases.set(p, false);
                leases::unlock(db, self.key, p as i32).await?;
                held -= 1;
                tracing::info!(partition = p, live, "lease handed over to a newcomer");
            }
        }
        let mut taken = 0;
        for &p in &order {
            if held >= share {
                break;
            }
            if !self.leases.held(p) && leases::try_lock(db, self.key, p as i32).await? {
                self.leases.take(p);
                held += 1;
                taken += 1;
            }
        }
        if taken > 0 {
            tracing::debug!(taken, held, "partition leases taken");
            self.leases.woken.notify_one();
        }
        Ok(())
    }

    /// Gives every lease up and forgets this instance (shutdown).
    async fn leave(&mut self) {
        self.leases.forget_all();
        let Some(session) = self.session.take() else {
            return;
        };
        let left = tokio::time::timeout(self.deadline(), async {
            leases::leave(&session, &self.namespace, self.instance).await?;
            leases::unlock_all(&session).await
        })
        .await;
        match left {
            Ok(Ok(())) => tracing::info!("persistence leases given up"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "leases not given up cleanly; they end with the session")
            }
            Err(_) => tracing::warn!("leases not given up in time; they end with the session"),
        }
        // Closing the session releases whatever it still held.
        drop(deadpool_postgres::Object::take(session));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_has_one_partition_everywhere() {
        let leases = Leases::new(16);
        let other = Leases::new(16);
        for _ in 0..100 {
            let s = Uuid::new_v4();
            assert!(leases.partition_of(s) < 16);
            assert_eq!(leases.partition_of(s), other.partition_of(s));
        }
    }

    #[test]
    fn only_held_partitions_are_written_and_a_failure_forgets_them_all() {
        let leases = Leases::new(4);
        let s = Uuid::from_u128(6);
        assert!(!leases.owns(s), "nothing is owned before a lease is taken");
        leases.set(leases.partition_of(s), true);
        assert!(leases.owns(s));
        assert!(!leases.owns(Uuid::from_u128(7)));
        assert_eq!(leases.owned(), 1);
        leases.forget_all();
        assert!(!leases.owns(s));
    }

    #[test]
    fn a_partition_taken_is_reported_gained_once() {
        let leases = Leases::new(4);
        assert_eq!(leases.take_gained(), vec![false; 4]);
        leases.take(2);
        assert!(leases.held(2));
        assert_eq!(leases.take_gained(), vec![false, false, true, false]);
        assert_eq!(leases.take_gained(), vec![false; 4], "reported once");
        leases.forget_all();
        leases.take(2);
        assert_eq!(
            leases.take_gained(),
            vec![false, false, true, false],
            "taken again after a loss: gained again"
        );
    }

    #[tokio::test]
    async fn a_round_that_took_partitions_wakes_the_sweeper_even_if_it_was_not_waiting() {
        let leases = Leases::new(2);
        leases.woken.notify_one();
        tokio::time::timeout(Duration::from_secs(5), leases.gained())
            .await
            .expect("the wake-up is kept until someone waits");
    }

    #[tokio::test]
    async fn an_announced_return_wakes_every_waiting_writer() {
        let recovered = Recovered::new();
        let mut a = recovered.watch();
        let mut b = recovered.watch();
        a.borrow_and_update();
        b.borrow_and_update();
        assert!(!a.has_changed().unwrap());
        recovered.announce();
        for rx in [&mut a, &mut b] {
            tokio::time::timeout(Duration::from_secs(5), rx.changed())
                .await
                .expect("woken")
                .expect("the sender lives");
        }
    }

    #[test]
    fn namespaces_have_different_lock_keys() {
        assert_eq!(namespace_key("reg"), namespace_key("reg"));
        assert_ne!(namespace_key("reg"), namespace_key("t1234"));
    }
}
