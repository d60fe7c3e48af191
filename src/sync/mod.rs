//! Getting what Redis decided into PostgreSQL, in order, exactly once.
//!
//! - [`Persistence`]: the handle the request path uses: `submit` is a
//!   non-blocking `try_send` to the section's shard. A full queue loses
//!   nothing: the event is already in the section's outbox.
//! - [`shard`]: one task per shard drains its bounded queue in batches and
//!   writes them in one transaction, in sequence order per section.
//! - [`sweeper`]: re-enqueues sections whose outbox has old entries (a crash,
//!   a full queue, a PostgreSQL outage) and reports the backlog.
//! - [`warmup`]: builds a section's Redis state from PostgreSQL when absent.
//! - [`revalidate`]: after Redis may have restarted, pauses registration,
//!   drains the shards, and rebuilds sections Redis holds behind PostgreSQL.
//! - [`archive`]: `registrar semester detach`, an old semester's partitions
//!   out of the live tables once nothing of it is pending.
//!
//! The statements they run live in [`crate::store`] ([`crate::store::engine`],
//! and [`crate::store::journal`]: fingerprints of applied events, to tell
//! replays from different events reusing an applied sequence).

pub mod archive;
pub mod lease;
pub mod reconcile;
pub mod revalidate;
pub mod shard;
pub mod sweeper;
pub mod warmup;

use std::{sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use uuid::Uuid;

use crate::{
    config::SyncSettings,
    domain::Event,
    metrics::{QUEUE_CLOSED, QUEUE_DEPTH, QUEUE_FULL},
    seats::Redis,
    supervise::Supervisor,
};

/// Work for a shard.
#[derive(Debug)]
pub enum Job {
    /// A fresh event, straight from the script that produced it.
    Event(Event),
    /// Read this section's outbox from where PostgreSQL stands.
    CatchUp(Uuid),
    /// Answer once everything queued before this job is in PostgreSQL.
    Flush(oneshot::Sender<()>),
}

/// "PostgreSQL answers again": announced by the first writer that succeeds
/// after failures (a shard's transaction, a lease round), so the shards
/// asleep in their retry backoff (up to `sync.retry_max_ms`) try again at
/// once. Without it a backlog built during an outage drained at the pace
/// of the sleepiest shard: 10,000 events took 0.7–1.4 s instead of 0.25 s
/// (BENCHMARKS.md, "drain"). Cheap to clone.
#[derive(Clone)]
pub struct Recovered(Arc<watch::Sender<u64>>);

impl Recovered {
    pub fn new() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }

    /// Wakes every writer waiting in [`Recovered::watch`]'s receivers.
    pub fn announce(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver whose `changed()` fires at the next announcement.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

impl Default for Recovered {
    fn default() -> Self {
        Self::new()
    }
}

/// The request path's handle on the shards; cheap to clone.
#[derive(Clone)]
pub struct Persistence {
    senders: Arc<[mpsc::Sender<Job>]>,
    capacity: usize,
}

/// The running shard tasks.
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
}

/// The shard a section belongs to: stable, so its events apply in order.
pub fn shard_of(section: Uuid, shards: usize) -> usize {
    (section.as_u128() % shards as u128) as usize
}

impl Persistence {
    /// Starts `settings.shards` shard tasks; they stop when `stop` turns true,
    /// after draining what is queued.
    pub fn start(
        settings: &SyncSettings,
        db: Pool,
        redis: Redis,
        stop: watch::Receiver<bool>,
        supervisor: &Supervisor,
        leases: &lease::Leases,
        recovered: &Recovered,
    ) -> (Self, Workers) {
        let mut senders = Vec::with_capacity(settings.shards);
        let mut handles = Vec::with_capacity(settings.shards);
        for id in 0..settings.shards {
            let (tx, rx) = mpsc::channel(settings.queue_capacity);
            senders.push(tx);
            let shard = shard::Shard::new(
                id,
                rx,
                db.clone(),
                redis.clone(),
                settings.clone(),
                stop.clone(),
                shard::Peers {
                    leases: leases.clone(),
                    recovered: recovered.clone(),
                },
            );
            handles.push(supervisor.spawn(format!("shard-{id}"), shard.run()));
        }
        (
            Self {
                senders: senders.into(),
                capacity: settings.queue_capacity,
            },
            Workers { handles },
        )
    }

    fn send(&self, section: Uuid, job: Job) -> bool {
        let shard = shard_of(section, self.senders.len());
        match self.senders[shard].try_send(job) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(QUEUE_FULL).increment(1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The shard has stopped: during shutdown, expected (the
                // event waits in the outbox for the next start); otherwise
                // the supervisor is stopping the process already.
                metrics::counter!(QUEUE_CLOSED).increment(1);
                tracing::warn!(shard, %section, "persistence queue closed; the event waits in the outbox");
                false
            }
        }
    }

    /// Hands an event to its shard without waiting. Never fails the caller:
    /// if the queue is full the sweeper finds the event in the outbox.
    pub fn submit(&self, event: Event) {
        self.send(event.section, Job::Event(event));
    }

    /// Asks the section's shard to read its outbox; false if the queue is full.
    pub fn catch_up(&self, section: Uuid) -> bool {
        self.send(section, Job::CatchUp(section))
    }

    /// Waits until every shard has written what it held when called (the
    /// in-memory copies are the only ones left of events a restarted Redis
    /// lost). Waits for queue space rather than failing; false if a shard
    /// has stopped. While PostgreSQL is away this waits for it.
    pub async fn flush(&self) -> bool {
        let mut answers = Vec::with_capacity(self.senders.len());
        for sender in self.senders.iter() {
            let (tx, rx) = oneshot::channel();
            if sender.send(Job::Flush(tx)).await.is_err() {
                return false;
            }
            answers.push(rx);
        }
        let mut all = true;
        for answer in answers {
            all &= answer.await.is_ok();
        }
        all
    }

    /// Jobs waiting in each shard's queue (also published as a gauge).
    pub fn depths(&self) -> Vec<usize> {
        self.senders
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let depth = self.capacity - s.capacity();
                metrics::gauge!(QUEUE_DEPTH, "shard" => i.to_string()).set(depth as f64);
                depth
            })
            .collect()
    }
}

impl Workers {
    /// Waits for the shards to drain, at most `deadline`; true if they all did.
    pub async fn join(self, deadline: Duration) -> bool {
        let mut all = futures_join(self.handles);
        tokio::select! {
            () = &mut all => true,
            () = tokio::time::sleep(deadline) => false,
        }
    }
}

/// Awaits every handle (a shard that panicked is logged, not propagated).
fn futures_join(
    handles: Vec<JoinHandle<()>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        for handle in handles {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "a persistence shard ended abnormally");
            }
        }
    })
}

/// Longest a round trip of the background tasks (shards, sweeper,
/// revalidator) to PostgreSQL may take before its connection is given up.
/// The server's statement timeout cannot help when the server never sees
/// the query (a partition: the connection hangs silently); a batch commits
/// in milliseconds and each statement is bounded server-side by
/// `database.statement_timeout_ms`, so this only cuts connections that
/// stopped answering.
pub(crate) const DB_DEADLINE: Duration = Duration::from_secs(10);

/// Why a round trip of [`bounded`] did not come back with an answer.
#[derive(Debug)]
pub(crate) enum DbError<E> {
    /// The pool gave no connection (PostgreSQL down, or every connection busy).
    Unreachable(deadpool_postgres::PoolError),
    /// No answer within [`DB_DEADLINE`]; the connection was closed.
    Late,
    /// The call failed: PostgreSQL's error, or the caller's own (a lost
    /// optimistic check).
    Failed(E),
}

impl<E: std::fmt::Display> std::fmt::Display for DbError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Unreachable(e) => write!(f, "PostgreSQL unreachable: {e}"),
            DbError::Late => write!(
                f,
                "PostgreSQL did not answer within {} s; connection dropped",
                DB_DEADLINE.as_secs()
            ),
            DbError::Failed(e) => e.fmt(f),
        }
    }
}

/// Transparent: the message already shows the inner error, so its causes
/// follow directly (an `{:#}` chain does not repeat it).
impl<E: std::error::Error + 'static> std::error::Error for DbError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Unreachable(e) => e.source(),
            DbError::Late => None,
            DbError::Failed(e) => e.source(),
        }
    }
}

/// Runs `query` on a connection from `pool` within [`DB_DEADLINE`]: the
/// one place the background tasks' round trips to PostgreSQL are bounded.
/// A connection that did not answer in time is taken out of the pool and
/// closed rather than handed, still stuck, to the next user.
pub(crate) async fn bounded<T, E>(
    pool: &Pool,
    query: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, E>,
) -> Result<T, DbError<E>> {
    bounded_by(pool, DB_DEADLINE, query).await
}

/// [`bounded`] with the caller's own deadline, for round trips a request
/// waits on (the section loader), which must give up well before the
/// request's deadline. [`DbError::Late`]'s message names [`DB_DEADLINE`],
/// so such a caller says its own deadline when it reports one.
pub(crate) async fn bounded_by<T, E>(
    pool: &Pool,
    deadline: Duration,
    query: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, E>,
) -> Result<T, DbError<E>> {
    let mut client = pool.get().await.map_err(DbError::Unreachable)?;
    match tokio::time::timeout(deadline, query(&mut client)).await {
        Ok(result) => result.map_err(DbError::Failed),
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(DbError::Late)
        }
    }
}

/// Exponential backoff with full jitter: a random wait in [0, min(max, base·2^attempt)].
pub fn backoff(settings: &SyncSettings, attempt: u32) -> Duration {
    let cap = settings
        .retry_base_ms
        .saturating_mul(1u64 << attempt.min(20))
        .min(settings.retry_max_ms.max(settings.retry_base_ms));
    Duration::from_millis(fastrand::u64(0..=cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_always_maps_to_the_same_shard_in_range() {
        for _ in 0..100 {
            let s = Uuid::new_v4();
            let shard = shard_of(s, 4);
            assert!(shard < 4);
            assert_eq!(shard, shard_of(s, 4));
        }
    }

    #[test]
    fn a_failed_call_reads_as_its_own_error_once() {
        let io = std::io::Error::other("relation \"sections\" does not exist");
        let e = anyhow::Error::from(DbError::Failed(io));
        assert_eq!(format!("{e:#}"), "relation \"sections\" does not exist");
        let late = anyhow::Error::from(DbError::<std::io::Error>::Late);
        assert!(format!("{late:#}").contains("did not answer within 10 s"));
    }

    #[test]
    fn backoff_grows_but_never_exceeds_the_cap() {
        let settings = SyncSettings {
            shards: 1,
            queue_capacity: 1,
            batch_size: 1,
            batch_linger_ms: 0,
            retry_base_ms: 10,
            retry_max_ms: 100,
            sweep_interval_ms: 1,
            sweep_min_age_ms: 1,
            reconcile_interval_secs: 0,
            ineligible_sweep_ms: 0,
            drain_timeout_ms: 1,
            partitions: 1,
            lease_interval_ms: 1,
            load_timeout_ms: crate::config::Millis::new(1),
        };
        for attempt in 0..40 {
            assert!(backoff(&settings, attempt) <= Duration::from_millis(100));
        }
        assert!(backoff(&settings, 0) <= Duration::from_millis(10));
    }
}
