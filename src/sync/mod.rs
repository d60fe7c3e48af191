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

pub mod reconcile;
pub mod shard;
pub mod sweeper;
pub mod warmup;

use std::{sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use uuid::Uuid;

use crate::{
    config::SyncSettings,
    metrics::{QUEUE_DEPTH, QUEUE_FULL},
    seats::{Event, Redis},
};

/// Work for a shard.
#[derive(Debug, Clone)]
pub enum Job {
    /// A fresh event, straight from the script that produced it.
    Event(Event),
    /// Read this section's outbox from where PostgreSQL stands.
    CatchUp(Uuid),
}

impl Job {
    fn section(&self) -> Uuid {
        match self {
            Job::Event(e) => e.section,
            Job::CatchUp(s) => *s,
        }
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
            );
            handles.push(tokio::spawn(shard.run()));
        }
        (
            Self {
                senders: senders.into(),
                capacity: settings.queue_capacity,
            },
            Workers { handles },
        )
    }

    fn send(&self, job: Job) -> bool {
        let shard = shard_of(job.section(), self.senders.len());
        match self.senders[shard].try_send(job) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(QUEUE_FULL).increment(1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Hands an event to its shard without waiting. Never fails the caller:
    /// if the queue is full the sweeper finds the event in the outbox.
    pub fn submit(&self, event: Event) {
        self.send(Job::Event(event));
    }

    /// Asks the section's shard to read its outbox; false if the queue is full.
    pub fn catch_up(&self, section: Uuid) -> bool {
        self.send(Job::CatchUp(section))
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
    fn backoff_grows_but_never_exceeds_the_cap() {
        let settings = SyncSettings {
            shards: 1,
            queue_capacity: 1,
            batch_size: 1,
            retry_base_ms: 10,
            retry_max_ms: 100,
            sweep_interval_ms: 1,
            sweep_min_age_ms: 1,
            reconcile_interval_secs: 0,
            drain_timeout_ms: 1,
        };
        for attempt in 0..40 {
            assert!(backoff(&settings, attempt) <= Duration::from_millis(100));
        }
        assert!(backoff(&settings, 0) <= Duration::from_millis(10));
    }
}
