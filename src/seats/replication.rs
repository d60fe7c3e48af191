//! `redis.wait_replicas`: a seat change answered only once N replicas of
//! its primary hold it.
//!
//! Redis replicates asynchronously, so a primary that dies can take its
//! last acknowledged writes with it. With `wait_replicas = N` each
//! seat-changing script is sent in one pipeline with `WAIT N timeout`: both
//! go to the same node over the same connection, so the WAIT covers the
//! script's write (a WAIT sent elsewhere would count nothing and confirm
//! at once). WAIT blocks its connection until the replicas answer, so these
//! pipelines do not share the multiplexed hot-path connection: each takes
//! a connection of a small pool for itself, and a slow replica holds up
//! only the change waiting for it.
//!
//! Fewer confirmations than N within the bound is an error (503
//! `replication_unconfirmed`); the change itself stands and its event is
//! persisted from the outbox like any other. A primary without its
//! replicas would then make every student wait the whole bound, so after
//! an unconfirmed change the same section refuses seat changes at once
//! (without running its script) for [`SETTLE`], then tries again.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};
use uuid::Uuid;

use super::link::Link;
use crate::{config::RedisSettings, metrics::REPLICATION_UNCONFIRMED as UNCONFIRMED_TOTAL};

/// The message of every error this module returns.
pub const REPLICATION_UNCONFIRMED: &str = "replication not confirmed";

/// Connections for script + WAIT pipelines (each is exclusive while its
/// WAIT runs).
const POOL_SIZE: u32 = 32;

/// How long a section refuses seat changes after one went unconfirmed.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Makes the pool's connections: links of the configured kind, which
/// reconnect by themselves.
struct LinkManager(RedisSettings);

impl bb8::ManageConnection for LinkManager {
    type Connection = Link;
    type Error = RedisError;

    async fn connect(&self) -> Result<Link, RedisError> {
        Link::open_another(&self.0).map_err(|e| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "redis.url",
                format!("{e:#}"),
            ))
        })
    }

    async fn is_valid(&self, _: &mut Link) -> Result<(), RedisError> {
        Ok(())
    }

    fn has_broken(&self, _: &mut Link) -> bool {
        false
    }
}

pub struct Replication {
    replicas: u32,
    timeout: Duration,
    pool: Option<bb8::Pool<LinkManager>>,
    /// Sections whose last change went unconfirmed, and when.
    unconfirmed: Mutex<HashMap<Uuid, Instant>>,
}

impl Replication {
    pub fn new(settings: &RedisSettings) -> Self {
        let pool = (settings.wait_replicas > 0).then(|| {
            bb8::Pool::builder()
                .max_size(POOL_SIZE)
                .min_idle(Some(0))
                .connection_timeout(settings.response_timeout_ms.duration())
                .build_unchecked(LinkManager(settings.clone()))
        });
        Self {
            replicas: settings.wait_replicas,
            timeout: settings.wait_timeout_ms.duration(),
            pool,
            unconfirmed: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_on(&self) -> bool {
        self.pool.is_some()
    }

    fn error(detail: String) -> RedisError {
        RedisError::from((
            ErrorKind::Server(ServerErrorKind::TryAgain),
            REPLICATION_UNCONFIRMED,
            detail,
        ))
    }

    /// Runs `invocation` (a script of `section`) followed by WAIT on one
    /// connection of the pool; the script's reply once the replicas
    /// confirmed it.
    pub async fn run(
        &self,
        section: Uuid,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> RedisResult<Vec<Value>> {
        let pool = self
            .pool
            .as_ref()
            .expect("only called with redis.wait_replicas > 0");
        if let Some(at) = self.lock().get(&section) {
            if at.elapsed() < SETTLE {
                metrics::counter!(UNCONFIRMED_TOTAL).increment(1);
                return Err(Self::error(format!(
                    "a change of this section was not confirmed {:?} ago; waiting for its replicas",
                    at.elapsed()
                )));
            }
        }
        let mut conn = pool.get().await.map_err(|e| match e {
            bb8::RunError::User(e) => e,
            bb8::RunError::TimedOut => RedisError::from((
                ErrorKind::Io,
                "timed out waiting for a replicated-write connection",
            )),
        })?;
        let mut pipe = redis::pipe();
        pipe.invoke_script(invocation)
            .cmd("WAIT")
            .arg(self.replicas)
            .arg(self.timeout.as_millis() as u64);
        let reply: RedisResult<(Vec<Value>, u32)> = match pipe.query_async(&mut *conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                invocation.load_async(&mut *conn).await?;
                pipe.query_async(&mut *conn).await
            }
            other => other,
        };
        let (raw, confirmed) = reply?;
        if confirmed < self.replicas {
            self.lock().insert(section, Instant::now());
            metrics::counter!(UNCONFIRMED_TOTAL).increment(1);
            return Err(Self::error(format!(
                "{confirmed} of {} replica(s) confirmed within {:?}",
                self.replicas, self.timeout
            )));
        }
        self.lock().remove(&section);
        Ok(raw)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Instant>> {
        self.unconfirmed.lock().unwrap_or_else(|e| e.into_inner())
    }
}
