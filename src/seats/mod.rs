//! The Redis side: the hot path's source of truth for seats, rosters and
//! waitlists. One shared multiplexed connection serves every request; it
//! pipelines commands from all tasks over one socket and reconnects by itself.

use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisSettings;

/// Handle to Redis for the whole process; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    /// Prefix of every key this instance touches (`<ns>:{s:<id>}:...`).
    namespace: String,
}

impl Redis {
    /// Prepares the connection without waiting for Redis: the server starts
    /// (and reports not ready) while Redis is down, and connects when it returns.
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.url.expose()).context("redis.url is invalid")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
            .set_response_timeout(Some(Duration::from_millis(settings.response_timeout_ms)))
            // Fail a command fast while Redis is away instead of queueing it
            // behind reconnection attempts; the manager keeps reconnecting.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .context("failed to set up the Redis connection")?;
        Ok(Self {
            conn,
            namespace: settings.namespace.clone(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A clone of the shared connection for issuing commands.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Round trip to Redis.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }
}
