//! The Redis side: the hot path's source of truth for seats, rosters and
//! waitlists, and each section's outbox of events for PostgreSQL.
//!
//! Two kinds of connection, chosen by measurement (SPEC §12):
//! - one shared multiplexed connection ([`ConnectionManager`]) for the hot
//!   path: it pipelines commands of all tasks over one socket and reconnects
//!   by itself;
//! - a small bb8 pool for bulk work (warm-up loads, outbox scans), so a large
//!   reply or argument list never sits in front of a student's request on
//!   the shared socket.

pub mod access;
pub mod idempotency;
pub mod keys;
pub mod limits;
pub mod outbox;
pub mod scripts;
pub mod watch;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use bb8_redis::RedisConnectionManager;
use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    Cmd, Pipeline, RedisFuture, RedisResult, Value,
};
use uuid::Uuid;

pub use scripts::{
    is_contract_violation, Compensate, Drop, LiveState, Load, Rebuild, Reserve, Resize, Scripted,
    Scripts, SectionState,
};
pub use watch::RedisWatch;

use crate::config::RedisSettings;

/// Connections for bulk work; few, because bulk work is rare and sequential.
const BULK_POOL_SIZE: u32 = 4;

/// Handle to Redis for the whole process; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    bulk: bb8::Pool<RedisConnectionManager>,
    /// Prefix of every key this instance touches (`<ns>:{s:<id>}:...`).
    namespace: Arc<str>,
    scripts: Arc<Scripts>,
    watch: Arc<RedisWatch>,
}

/// The shared connection as handed out by [`Redis::conn`]: every failure of
/// the connection itself is reported to the [`RedisWatch`] before the
/// caller sees it. The manager reconnects after such a failure, possibly to
/// a restarted server, so this is where a restart first shows, whichever
/// caller (a probe, the rate limiter, a script) happens to notice it.
#[derive(Clone)]
pub struct Conn {
    inner: ConnectionManager,
    watch: Arc<RedisWatch>,
}

impl Conn {
    fn observe<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if watch::is_connection_error(e) {
                self.watch.connection_failed();
            }
        }
        result
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner.req_packed_command(cmd).await;
            self.observe(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.observe(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// A section's live numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveCounts {
    pub capacity: i64,
    pub seats_available: i64,
    pub enrolled: i64,
    pub waitlist_length: i64,
}

/// Where a student stands in one section, according to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudentStanding {
    pub enrolled: bool,
    /// 1-based live position.
    pub waitlist_position: Option<i64>,
    /// Why an earlier registration was undone, if it was.
    pub reverted_reason: Option<String>,
}

impl Redis {
    /// Prepares the connections without waiting for Redis: the server starts
    /// (and reports not ready) while Redis is down, and connects when it returns.
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.url.expose()).context("redis.url is invalid")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout_ms.duration()))
            .set_response_timeout(Some(settings.response_timeout_ms.duration()))
            // Fail a command fast while Redis is away instead of queueing it
            // behind reconnection attempts; the manager keeps reconnecting.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .context("failed to set up the Redis connection")?;
        let manager =
            RedisConnectionManager::new(settings.url.expose()).context("redis.url is invalid")?;
        let bulk = bb8::Pool::builder()
            .max_size(BULK_POOL_SIZE)
            .connection_timeout(settings.connect_timeout_ms.duration())
            .build_unchecked(manager);
        Ok(Self {
            conn,
            bulk,
            namespace: settings.namespace.as_str().into(),
            scripts: Arc::new(Scripts::new()),
            watch: Arc::new(RedisWatch::new()),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn section_keys(&self, section: Uuid) -> keys::SectionKeys {
        keys::SectionKeys::new(self.namespace(), section)
    }

    pub fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// A clone of the shared connection for issuing commands.
    pub fn conn(&self) -> Conn {
        Conn {
            inner: self.conn.clone(),
            watch: self.watch.clone(),
        }
    }

    /// Whether this Redis may be trusted right now (see [`watch`]).
    pub fn watch(&self) -> &Arc<RedisWatch> {
        &self.watch
    }

    /// The `run_id` of the server behind the shared connection: it changes
    /// when Redis restarts (or another server takes its place).
    pub async fn run_id(&self) -> RedisResult<String> {
        let mut conn = self.conn();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_string())
            .ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Parse, "INFO server without run_id"))
            })
    }

    /// Each section's `:seq` (None where it has none).
    pub async fn seqs(&self, sections: &[Uuid]) -> RedisResult<Vec<Option<i64>>> {
        let mut out = Vec::with_capacity(sections.len());
        for chunk in sections.chunks(500) {
            let mut pipe = redis::pipe();
            for section in chunk {
                pipe.cmd("GET").arg(self.section_keys(*section).seq);
            }
            let mut conn = self.bulk().await?;
            let replies: Vec<Option<i64>> = pipe.query_async(&mut *conn).await?;
            out.extend(replies);
        }
        Ok(out)
    }

    /// A pooled connection for bulk work.
    pub async fn bulk(&self) -> RedisResult<bb8::PooledConnection<'_, RedisConnectionManager>> {
        self.bulk.get().await.map_err(|e| match e {
            bb8::RunError::User(e) => e,
            bb8::RunError::TimedOut => redis::RedisError::from((
                redis::ErrorKind::Io,
                "timed out waiting for a bulk Redis connection",
            )),
        })
    }

    /// Round trip to Redis.
    pub async fn ping(&self) -> RedisResult<()> {
        let mut conn = self.conn();
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }

    /// Live numbers of each section (None where Redis has no state for it).
    pub async fn live_counts(&self, sections: &[Uuid]) -> RedisResult<Vec<Option<LiveCounts>>> {
        if sections.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for section in sections {
            let keys = self.section_keys(*section);
            pipe.cmd("HGET").arg(&keys.meta).arg("capacity");
            pipe.cmd("GET").arg(&keys.seats);
            pipe.cmd("SCARD").arg(&keys.enrolled);
            pipe.cmd("ZCARD").arg(&keys.waitlist);
        }
        let mut conn = self.conn();
        let replies: Vec<(Option<i64>, Option<i64>, i64, i64)> = {
            let flat: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
            flat.chunks(4)
                .map(|c| {
                    Ok((
                        redis::from_redis_value(c[0].clone())?,
                        redis::from_redis_value(c[1].clone())?,
                        redis::from_redis_value(c[2].clone())?,
                        redis::from_redis_value(c[3].clone())?,
                    ))
                })
                .collect::<RedisResult<_>>()?
        };
        Ok(replies
            .into_iter()
            .map(|(capacity, seats, enrolled, waitlist_length)| {
                capacity.map(|capacity| LiveCounts {
                    capacity,
                    seats_available: seats.unwrap_or(0),
                    enrolled,
                    waitlist_length,
                })
            })
            .collect())
    }

    /// Remembers that `student` registered in `sections` (for their views).
    pub async fn remember_sections(&self, student: Uuid, sections: &[Uuid]) -> RedisResult<()> {
        if sections.is_empty() {
            return Ok(());
        }
        let key = keys::student_sections(self.namespace(), student);
        let mut cmd = redis::cmd("SADD");
        cmd.arg(key);
        for s in sections {
            cmd.arg(s.to_string());
        }
        let mut conn = self.conn();
        cmd.query_async::<()>(&mut conn).await
    }

    /// Sections `student` registered in through this service.
    pub async fn remembered_sections(&self, student: Uuid) -> RedisResult<Vec<Uuid>> {
        let mut conn = self.conn();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::student_sections(self.namespace(), student))
            .query_async(&mut conn)
            .await?;
        Ok(ids.iter().filter_map(|s| Uuid::try_parse(s).ok()).collect())
    }

    /// Where `student` stands in each of `sections`.
    pub async fn standings(
        &self,
        student: Uuid,
        sections: &[Uuid],
    ) -> RedisResult<Vec<StudentStanding>> {
        if sections.is_empty() {
            return Ok(Vec::new());
        }
        let id = student.to_string();
        let mut pipe = redis::pipe();
        for section in sections {
            let keys = self.section_keys(*section);
            pipe.cmd("SISMEMBER").arg(&keys.enrolled).arg(&id);
            pipe.cmd("ZRANK").arg(&keys.waitlist).arg(&id);
            pipe.cmd("HGET").arg(&keys.reverted).arg(&id);
        }
        let mut conn = self.conn();
        let flat: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        flat.chunks(3)
            .map(|c| {
                let enrolled: bool = redis::from_redis_value(c[0].clone())?;
                let rank: Option<i64> = redis::from_redis_value(c[1].clone())?;
                let reason: Option<String> = redis::from_redis_value(c[2].clone())?;
                Ok(StudentStanding {
                    enrolled,
                    waitlist_position: rank.map(|r| r + 1),
                    reverted_reason: reason,
                })
            })
            .collect()
    }

    /// Whether Redis holds state for `section`.
    pub async fn is_loaded(&self, section: Uuid) -> RedisResult<bool> {
        let mut conn = self.conn();
        redis::cmd("EXISTS")
            .arg(self.section_keys(section).meta)
            .query_async(&mut conn)
            .await
    }

    /// Whether Redis holds state for each of `sections`, in one round trip.
    pub async fn are_loaded(&self, sections: &[Uuid]) -> RedisResult<Vec<bool>> {
        let mut pipe = redis::pipe();
        for section in sections {
            pipe.cmd("EXISTS").arg(self.section_keys(*section).meta);
        }
        let mut conn = self.conn();
        pipe.query_async(&mut conn).await
    }

    /// The waitlist limit and active flag `section`'s scripts enforce now
    /// (None where Redis has none).
    pub async fn enforced_settings(
        &self,
        section: Uuid,
    ) -> RedisResult<(Option<i32>, Option<bool>)> {
        let (limit, active): (Option<i32>, Option<String>) = redis::cmd("HMGET")
            .arg(self.section_keys(section).meta)
            .arg("waitlist_limit")
            .arg("active")
            .query_async(&mut self.conn())
            .await?;
        Ok((limit, active.map(|a| a == "1")))
    }

    /// Deletes a section's state except its outbox and sequence: what a
    /// partial loss leaves (tests use it to set that scene).
    pub async fn forget_section(&self, section: Uuid) -> RedisResult<()> {
        let keys = self.section_keys(section);
        let mut conn = self.conn();
        redis::cmd("DEL")
            .arg(&keys.meta)
            .arg(&keys.seats)
            .arg(&keys.enrolled)
            .arg(&keys.waitlist)
            .arg(&keys.since)
            .query_async(&mut conn)
            .await
    }

    /// Members of a section's roster and waitlist (waitlist in order).
    pub async fn roster(&self, section: Uuid) -> RedisResult<(Vec<Uuid>, Vec<Uuid>)> {
        let keys = self.section_keys(section);
        let mut conn = self.bulk().await?;
        let (enrolled, waiting): (Vec<String>, Vec<String>) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(&keys.enrolled)
            .cmd("ZRANGE")
            .arg(&keys.waitlist)
            .arg(0)
            .arg(-1)
            .query_async(&mut *conn)
            .await?;
        let parse = |v: Vec<String>| v.iter().filter_map(|s| Uuid::try_parse(s).ok()).collect();
        Ok((parse(enrolled), parse(waiting)))
    }
}
