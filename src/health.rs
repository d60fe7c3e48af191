//! Dependency checks: a Redis PING and a PostgreSQL round trip, timed and
//! recorded, and the short cache that lets a flood of `/health` requests
//! share one check per interval (`http.health_cache_ms`).
//!
//! Kept apart from `http::probes` (which only encodes the answers) because
//! the cache lives in [`crate::state::AppState`], which knows no HTTP.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use serde::Serialize;

use crate::{
    metrics::{DEPENDENCY_LATENCY, DEPENDENCY_UP},
    seats::Redis,
    store,
};

/// The outcome of one dependency's check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub status: &'static str,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Check {
    pub fn up(&self) -> bool {
        self.status == "up"
    }
}

/// Runs `check` within `deadline`, records its latency and outcome in the
/// dependency metrics, and reports it.
async fn timed<F, E>(name: &'static str, deadline: Duration, check: F) -> Check
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let outcome = tokio::time::timeout(deadline, check).await;
    let elapsed = started.elapsed();
    let error = match outcome {
        Ok(Ok(())) => None,
        // With its causes: "db error" alone does not say what is wrong.
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some(format!("no answer within {} ms", deadline.as_millis())),
    };
    metrics::histogram!(DEPENDENCY_LATENCY, "dependency" => name).record(elapsed.as_secs_f64());
    metrics::gauge!(DEPENDENCY_UP, "dependency" => name).set(if error.is_none() {
        1.0
    } else {
        0.0
    });
    Check {
        status: if error.is_none() { "up" } else { "down" },
        latency_ms: (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        error,
    }
}

/// A Redis PING within `deadline` (`/ready` asks this one directly: it is a
/// single round trip on the multiplexed connection, no pool checkout).
pub async fn redis(redis: &Redis, deadline: Duration) -> Check {
    timed("redis", deadline, redis.ping()).await
}

/// A PostgreSQL round trip on the API's pool within `deadline`.
pub async fn postgres(db: &Pool, deadline: Duration) -> Check {
    timed("postgres", deadline, store::ping(db)).await
}

/// Both dependencies' checks, as `/health` reports them.
#[derive(Debug, Clone, Serialize)]
pub struct Components {
    pub redis: Check,
    pub postgres: Check,
}

/// The dependency checks `/health` reports, shared for
/// `http.health_cache_ms` (see [`SingleFlight`]): however many `/health`
/// requests come in, PostgreSQL and Redis see at most one check per
/// interval.
pub struct DependencyChecks {
    cache: SingleFlight<Components>,
    /// Deadlines of the two checks (`redis.response_timeout_ms`,
    /// `database.connect_timeout_ms`).
    redis_deadline: Duration,
    postgres_deadline: Duration,
}

impl DependencyChecks {
    pub fn new(ttl: Duration, redis_deadline: Duration, postgres_deadline: Duration) -> Self {
        Self {
            cache: SingleFlight::new(ttl),
            redis_deadline,
            postgres_deadline,
        }
    }

    /// The components' state, checked now unless a check finished less than
    /// the interval ago (or is running: then its result).
    pub async fn components(&self, db: &Pool, redis: &Redis) -> Arc<Components> {
        self.cache
            .get(async {
                let (redis, postgres) = tokio::join!(
                    self::redis(redis, self.redis_deadline),
                    self::postgres(db, self.postgres_deadline)
                );
                Components { redis, postgres }
            })
            .await
    }

    /// How many checks have run (each one Redis PING and one PostgreSQL
    /// round trip): what shows that a flood shared them.
    pub fn runs(&self) -> u64 {
        self.cache.runs.load(Ordering::Relaxed)
    }
}

/// A value recomputed at most once per `ttl`, by one caller at a time.
///
/// The lock is held while the value is computed, so callers arriving
/// meanwhile wait for that result instead of computing their own; the
/// result is then reused until `ttl` after it was ready. A caller dropped
/// mid-computation (its client left) releases the lock, and the next one
/// computes.
struct SingleFlight<T> {
    ttl: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Arc<T>)>>,
    /// Computations started so far.
    runs: AtomicU64,
}

impl<T> SingleFlight<T> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            last: tokio::sync::Mutex::new(None),
            runs: AtomicU64::new(0),
        }
    }

    /// The value computed less than `ttl` ago, else `compute`'s.
    async fn get(&self, compute: impl Future<Output = T>) -> Arc<T> {
        let mut last = self.last.lock().await;
        if let Some((at, value)) = &*last {
            if at.elapsed() < self.ttl {
                return value.clone();
            }
        }
        self.runs.fetch_add(1, Ordering::Relaxed);
        let fresh = Arc::new(compute.await);
        *last = Some((Instant::now(), fresh.clone()));
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_computation_and_reuse_it_within_the_interval() {
        let cache = SingleFlight::new(Duration::from_secs(60));
        let computed = AtomicU64::new(0);
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            computed.fetch_add(1, Ordering::Relaxed)
        };

        let values = futures_util::future::join_all((0..50).map(|_| cache.get(slow()))).await;
        let again = cache.get(slow()).await;

        assert_eq!(computed.load(Ordering::Relaxed), 1);
        assert!(values.iter().all(|v| **v == 0));
        assert_eq!(*again, 0);
        assert_eq!(cache.runs.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_value_older_than_the_interval_is_computed_again() {
        let cache = SingleFlight::new(Duration::from_millis(20));
        assert_eq!(*cache.get(async { 1 }).await, 1);
        assert_eq!(*cache.get(async { 2 }).await, 1, "within the interval");

        tokio::time::sleep(Duration::from_millis(30)).await;

        assert_eq!(*cache.get(async { 3 }).await, 3);
        assert_eq!(cache.runs.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_caller_dropped_while_computing_lets_the_next_one_compute() {
        let cache = SingleFlight::new(Duration::from_secs(60));
        let abandoned = tokio::time::timeout(
            Duration::from_millis(10),
            cache.get(std::future::pending::<u32>()),
        )
        .await;
        assert!(abandoned.is_err());

        assert_eq!(*cache.get(async { 7 }).await, 7);
    }
}
