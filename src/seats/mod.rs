//! The Redis side: the hot path's source of truth for seats, rosters and
//! waitlists, and each section's outbox of events for PostgreSQL.
//!
//! Two kinds of connection, chosen by measurement (SPEC §12):
//! - one shared multiplexed connection ([`link::Link`]) for the hot path: it
//!   pipelines commands of all tasks over one socket (per node on a Redis
//!   Cluster) and reconnects by itself;
//! - bulk connections (a small bb8 pool on one server) for warm-up loads and
//!   outbox scans, so a large reply or argument list never sits in front of
//!   a student's request on the shared socket.
//!
//! One server or a Redis Cluster, see [`link`]: the engine is the same.

pub mod access;
pub mod announce;
pub mod idempotency;
pub mod keys;
pub mod limits;
pub mod link;
pub mod outbox;
pub mod replication;
pub mod rules;
pub mod scripts;
pub mod watch;

use std::sync::Arc;

use redis::{aio::ConnectionLike, Cmd, Pipeline, RedisFuture, RedisResult, Value};
use uuid::Uuid;

use link::{Bulk, BulkPool, Link};

pub use scripts::{
    is_contract_violation, Compensate, Drop, LiveState, Load, Rebuild, Reserve, Resize, Scripted,
    Scripts, SectionChange, SectionState,
};
pub use watch::RedisWatch;

use crate::config::RedisSettings;

/// Handle to Redis for the whole process; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    conn: Link,
    bulk: BulkPool,
    /// `redis.wait_replicas` (see [`replication`]).
    replication: Arc<replication::Replication>,
    /// Prefix of every key this instance touches (`<ns>:{s:<id>}:...`).
    namespace: Arc<str>,
    /// `redis.url`, redacted.
    address: Arc<str>,
    scripts: Arc<Scripts>,
    watch: Arc<RedisWatch>,
    /// Whether acknowledging a committed batch also announces it
    /// (`live.enabled`, see [`announce`]).
    announce: bool,
}

/// The shared connection as handed out by [`Redis::conn`]: every failure of
/// the connection itself is reported to the [`RedisWatch`] before the
/// caller sees it. The manager reconnects after such a failure, possibly to
/// a restarted server, so this is where a restart first shows, whichever
/// caller (a probe, the rate limiter, a script) happens to notice it.
#[derive(Clone)]
pub struct Conn {
    inner: Link,
    watch: Arc<RedisWatch>,
}

impl Conn {
    pub fn is_cluster(&self) -> bool {
        self.inner.is_cluster()
    }

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

pub use replication::REPLICATION_UNCONFIRMED;

/// The settings a section's scripts enforce, as Redis holds them (None
/// where a field is missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnforcedSettings {
    pub waitlist_limit: Option<i32>,
    /// The section's flag and its semester's together.
    pub active: Option<bool>,
    pub offer_mode: Option<bool>,
    pub offer_ttl_ms: Option<i64>,
}

/// A section's live numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveCounts {
    pub capacity: i64,
    pub seats_available: i64,
    pub enrolled: i64,
    pub waitlist_length: i64,
    /// Seats held by waitlist offers: neither free nor enrolled
    /// (`lua/lib/seat.lua`).
    pub seats_offered: i64,
}

/// Where a student stands in one section, according to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudentStanding {
    pub enrolled: bool,
    /// 1-based live position.
    pub waitlist_position: Option<i64>,
    /// Why an earlier registration was undone, if it was.
    pub reverted_reason: Option<String>,
    /// While waitlisted: the deadline of the seat held for them by an
    /// offer (unix ms, Redis's clock), if one is.
    pub offer_until_ms: Option<i64>,
}

impl Redis {
    /// Prepares the connections without waiting for Redis: the server starts
    /// (and reports not ready) while Redis is down, and connects when it returns.
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        let (conn, bulk) = Link::open(settings)?;
        Ok(Self {
            conn,
            bulk,
            replication: Arc::new(replication::Replication::new(settings)),
            namespace: settings.namespace.as_str().into(),
            address: settings.url.redacted().into(),
            scripts: Arc::new(Scripts::new()),
            watch: Arc::new(RedisWatch::new()),
            announce: false,
        })
    }

    /// Whether [`Self::ack_all`] announces each batch to the live streams.
    pub fn announcing(mut self, on: bool) -> Self {
        self.announce = on;
        self
    }

    /// True on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `redis.url` with any password redacted: for messages naming the
    /// server that did not answer.
    pub fn address(&self) -> &str {
        &self.address
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

    pub(crate) fn replication(&self) -> &replication::Replication {
        &self.replication
    }

    /// Runs `groups` (each one section's or student's commands, so one
    /// slot) and returns every reply in order: one pipeline on one server,
    /// one per slot at once on a cluster. `bulk` picks the bulk connections
    /// over the shared one.
    pub(crate) async fn per_slot(
        &self,
        bulk: bool,
        groups: Vec<Pipeline>,
    ) -> RedisResult<Vec<Value>> {
        let cluster = match (bulk, &self.bulk, &self.conn) {
            (true, BulkPool::Cluster(c), _) => c.current(),
            (false, _, Link::Cluster(c)) => c.clone(),
            (true, BulkPool::Single(_), _) => {
                let mut conn = self.bulk().await?;
                return Link::one_pipeline(&mut conn, &groups).await;
            }
            (false, _, Link::Single(_)) => {
                return Link::one_pipeline(&mut self.conn(), &groups).await;
            }
        };
        let mut conn = Conn {
            inner: Link::Cluster(cluster),
            watch: self.watch.clone(),
        };
        Link::each_pipeline(&mut conn, &groups).await
    }

    /// Whether this Redis may be trusted right now (see [`watch`]).
    pub fn watch(&self) -> &Arc<RedisWatch> {
        &self.watch
    }

    /// The `run_id` of the server behind the shared connection: it changes
    /// when Redis restarts (or another server takes its place).
    ///
    /// On a cluster, the identity of every primary ([`Link::identity`]).
    pub async fn run_id(&self) -> RedisResult<String> {
        let mut conn = self.conn();
        let identity = conn.inner.identity().await;
        conn.observe(identity)
    }

    /// `INFO <section>` of the server, or of every primary of a cluster
    /// (benchmarks sum Redis's own accounting over them).
    pub async fn info_per_primary(&self, section: &str) -> RedisResult<Vec<String>> {
        let mut conn = self.conn();
        let info = link::info_per_primary(&mut conn.inner, section).await;
        conn.observe(info)
    }

    /// Each section's `:seq` (None where it has none).
    pub async fn seqs(&self, sections: &[Uuid]) -> RedisResult<Vec<Option<i64>>> {
        let mut out = Vec::with_capacity(sections.len());
        for chunk in sections.chunks(500) {
            let groups = chunk
                .iter()
                .map(|section| {
                    let mut pipe = redis::pipe();
                    pipe.cmd("GET").arg(self.section_keys(*section).seq);
                    pipe
                })
                .collect();
            for reply in self.per_slot(true, groups).await? {
                out.push(redis::from_redis_value(reply)?);
            }
        }
        Ok(out)
    }

    /// Replaces the bulk connections with fresh ones on a cluster (after
    /// they kept failing: `seats::link::Renewable`); true if it did.
    pub fn renew_bulk(&self) -> anyhow::Result<bool> {
        self.bulk.renew()
    }

    /// A connection for bulk work.
    pub async fn bulk(&self) -> RedisResult<Bulk<'_>> {
        self.bulk.get().await
    }

    /// Round trip to Redis.
    ///
    /// On a cluster: every primary serving slots (the data), not every node
    /// the client ever knew (a dead replica is not an outage).
    pub async fn ping(&self) -> RedisResult<()> {
        let mut conn = self.conn();
        let pinged = link::ping_primaries(&mut conn.inner).await;
        conn.observe(pinged)
    }

    /// Live numbers of each section (None where Redis has no state for it).
    pub async fn live_counts(&self, sections: &[Uuid]) -> RedisResult<Vec<Option<LiveCounts>>> {
        if sections.is_empty() {
            return Ok(Vec::new());
        }
        let groups = sections
            .iter()
            .map(|section| {
                let keys = self.section_keys(*section);
                let mut pipe = redis::pipe();
                pipe.cmd("HGET").arg(&keys.meta).arg("capacity");
                pipe.cmd("GET").arg(&keys.seats);
                pipe.cmd("SCARD").arg(&keys.enrolled);
                pipe.cmd("ZCARD").arg(&keys.waitlist);
                pipe.cmd("HLEN").arg(&keys.offers);
                pipe
            })
            .collect();
        let flat = self.per_slot(false, groups).await?;
        flat.chunks(5)
            .map(|c| {
                let capacity: Option<i64> = redis::from_redis_value(c[0].clone())?;
                let seats: Option<i64> = redis::from_redis_value(c[1].clone())?;
                Ok(capacity.map(|capacity| LiveCounts {
                    capacity,
                    seats_available: seats.unwrap_or(0),
                    enrolled: redis::from_redis_value(c[2].clone()).unwrap_or(0),
                    waitlist_length: redis::from_redis_value(c[3].clone()).unwrap_or(0),
                    seats_offered: redis::from_redis_value(c[4].clone()).unwrap_or(0),
                }))
            })
            .collect()
    }

    /// With the registrar's rules off, a registration or a drop changes
    /// what the student holds without their schedule (`lua/claim.lua`)
    /// hearing of it. This remembers `sections` (if any) in the student's
    /// index and drops the schedule, and the access record's `sc` (which
    /// would start an empty one), in one round trip in the student's slot:
    /// with the rules on again, the first claim rebuilds the schedule from
    /// the sections, so nothing held in between escapes a limit.
    pub async fn remember_unruled(&self, student: Uuid, sections: &[Uuid]) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        if !sections.is_empty() {
            pipe.cmd("SADD")
                .arg(keys::student_sections(self.namespace(), student))
                .arg(sections.iter().map(Uuid::to_string).collect::<Vec<_>>())
                .ignore();
        }
        pipe.cmd("DEL")
            .arg(keys::student_schedule(self.namespace(), student))
            .ignore();
        pipe.cmd("HDEL")
            .arg(keys::student_access(self.namespace(), student))
            .arg("sc")
            .ignore();
        let mut conn = self.conn();
        pipe.query_async::<()>(&mut conn).await
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
        let groups = sections
            .iter()
            .map(|section| {
                let keys = self.section_keys(*section);
                let mut pipe = redis::pipe();
                pipe.cmd("SISMEMBER").arg(&keys.enrolled).arg(&id);
                pipe.cmd("ZRANK").arg(&keys.waitlist).arg(&id);
                pipe.cmd("HGET").arg(&keys.reverted).arg(&id);
                pipe.cmd("HGET").arg(&keys.offers).arg(&id);
                pipe
            })
            .collect();
        let flat = self.per_slot(false, groups).await?;
        flat.chunks(4)
            .map(|c| {
                let enrolled: bool = redis::from_redis_value(c[0].clone())?;
                let rank: Option<i64> = redis::from_redis_value(c[1].clone())?;
                let reason: Option<String> = redis::from_redis_value(c[2].clone())?;
                let offer: Option<i64> = redis::from_redis_value(c[3].clone())?;
                Ok(StudentStanding {
                    enrolled,
                    waitlist_position: rank.map(|r| r + 1),
                    reverted_reason: reason,
                    offer_until_ms: offer.filter(|_| rank.is_some()),
                })
            })
            .collect()
    }

    /// Whether each section offers its freed seats (meta `wl_mode` offer),
    /// in one round trip per slot; false where Redis has no state.
    pub async fn offer_modes(&self, sections: &[Uuid]) -> RedisResult<Vec<bool>> {
        if sections.is_empty() {
            return Ok(Vec::new());
        }
        let groups = sections
            .iter()
            .map(|section| {
                let mut pipe = redis::pipe();
                pipe.cmd("HGET")
                    .arg(self.section_keys(*section).meta)
                    .arg("wl_mode");
                pipe
            })
            .collect();
        self.per_slot(false, groups)
            .await?
            .into_iter()
            .map(|v| {
                let mode: Option<String> = redis::from_redis_value(v)?;
                Ok(mode.as_deref() == Some("offer"))
            })
            .collect()
    }

    /// Redis's clock (unix ms): the one offers' deadlines and the
    /// registration window are judged by.
    pub async fn time_ms(&self) -> RedisResult<i64> {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut self.conn()).await?;
        Ok(secs * 1000 + micros / 1000)
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
        self.exist(sections.iter().map(|s| self.section_keys(*s).meta))
            .await
    }

    /// Whether each key exists, each key in its own slot.
    pub(crate) async fn exist(&self, keys: impl Iterator<Item = String>) -> RedisResult<Vec<bool>> {
        let groups = keys
            .map(|key| {
                let mut pipe = redis::pipe();
                pipe.exists(key);
                pipe
            })
            .collect();
        self.per_slot(false, groups)
            .await?
            .into_iter()
            .map(|v| Ok(redis::from_redis_value(v)?))
            .collect()
    }

    /// The waitlist limit, active flag and waitlist policy `section`'s scripts enforce now
    /// (None where Redis has none).
    pub async fn enforced_settings(&self, section: Uuid) -> RedisResult<EnforcedSettings> {
        let (limit, active, mode, ttl): (Option<i32>, Option<String>, Option<String>, Option<i64>) =
            redis::cmd("HMGET")
                .arg(self.section_keys(section).meta)
                .arg("waitlist_limit")
                .arg("active")
                .arg("wl_mode")
                .arg("offer_ttl")
                .query_async(&mut self.conn())
                .await?;
        Ok(EnforcedSettings {
            waitlist_limit: limit,
            active: active.map(|a| a == "1"),
            offer_mode: mode.map(|m| m == "offer"),
            offer_ttl_ms: ttl,
        })
    }

    /// Deletes a section's state except its outbox and sequence: what a
    /// semester's detach leaves of it (`sync::archive`), and what a partial
    /// loss leaves (tests use it to set that scene).
    pub async fn forget_section(&self, section: Uuid) -> RedisResult<()> {
        let keys = self.section_keys(section);
        let mut conn = self.conn();
        redis::cmd("DEL")
            .arg(&keys.meta)
            .arg(&keys.seats)
            .arg(&keys.enrolled)
            .arg(&keys.waitlist)
            .arg(&keys.since)
            .arg(&keys.offers)
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
            .query_async(&mut conn)
            .await?;
        let parse = |v: Vec<String>| v.iter().filter_map(|s| Uuid::try_parse(s).ok()).collect();
        Ok((parse(enrolled), parse(waiting)))
    }
}
