//! How the process reaches Redis: one server, or a Redis Cluster.
//!
//! `redis.url` names either a single server (`redis://host:port/db`) or a
//! cluster by one or more seed nodes
//! (`redis+cluster://[user:pass@]host:port[,host:port...]`). The rest of
//! the engine is the same on both: every script's keys share one hash tag
//! (see [`super::keys`]), so on a cluster each call goes to the primary of
//! its slot. redis-rs's cluster client follows MOVED and ASK, refreshes its
//! slot map after a failover, and sends `SCRIPT LOAD` to every primary when
//! a script is missing (NOSCRIPT after a failover or on a new node).
//!
//! What differs is the few places that talk to many sections or students
//! at once: a cluster refuses a pipeline whose commands span slots, so
//! [`Link::per_slot`] sends one pipeline per slot, all at once, where one
//! server takes one pipeline for everything; and "the server" whose
//! identity the revalidator watches is the set of primaries
//! ([`Link::identity`]).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use bb8_redis::RedisConnectionManager;
use futures_util::future::try_join_all;
use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::{
        MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
    },
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};

use crate::config::{RedisSettings, RedisTarget as Target};

/// Slots asked at once by a fan-out ([`Link::each_pipeline`]): enough to
/// keep every primary busy, few enough that each request waits only for
/// its own answer (a few thousand at once queue inside the cluster client
/// past the response timeout on a loaded machine).
pub const FAN_OUT: usize = 64;

/// Connections for bulk work on one server; few, because bulk work is rare
/// and sequential.
const BULK_POOL_SIZE: u32 = 4;

/// One shared, multiplexed connection: to the server, or to every node of
/// the cluster. Cheap to clone; reconnects by itself.
#[derive(Clone)]
pub enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Bulk connections: a small pool on one server (a large reply must not
/// sit in front of students' requests on the shared socket); on a cluster a
/// connection set of its own, separate from the hot path's.
#[derive(Clone)]
pub enum BulkPool {
    Single(bb8::Pool<RedisConnectionManager>),
    Cluster(Arc<Renewable>),
}

/// A cluster connection that can be replaced by a fresh one. After a
/// primary died, redis-rs's client can keep its slot map pointing at the
/// dead node (it is told MOVED to it by nodes that have not yet heard of
/// the failover, and refreshes only on errors): every request of those
/// slots then times out while the cluster itself has recovered. A new
/// client asks the seeds afresh.
pub struct Renewable {
    seeds: Vec<String>,
    settings: RedisSettings,
    conn: std::sync::RwLock<ClusterConnection>,
}

impl Renewable {
    fn new(seeds: Vec<String>, settings: &RedisSettings) -> anyhow::Result<Self> {
        let conn = cluster_connection(&seeds, settings)?;
        Ok(Self {
            seeds,
            settings: settings.clone(),
            conn: std::sync::RwLock::new(conn),
        })
    }

    pub fn current(&self) -> ClusterConnection {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn renew(&self) -> anyhow::Result<()> {
        let fresh = cluster_connection(&self.seeds, &self.settings)?;
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// One bulk connection, as [`BulkPool::get`] hands it out.
pub enum Bulk<'a> {
    Pooled(bb8::PooledConnection<'a, RedisConnectionManager>),
    Cluster(ClusterConnection),
}

impl Link {
    /// The hot path's link and the bulk pool, both lazy: the server starts
    /// (and reports not ready) while Redis is down, and connects when it
    /// returns.
    pub fn open(settings: &RedisSettings) -> anyhow::Result<(Self, BulkPool)> {
        match Target::parse(settings.url.expose())? {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str()).context("redis.url is invalid")?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout_ms.duration()))
                    .set_response_timeout(Some(settings.response_timeout_ms.duration()))
                    // Fail a command fast while Redis is away instead of
                    // queueing it behind reconnection attempts; the manager
                    // keeps reconnecting.
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let conn = ConnectionManager::new_lazy_with_config(client, config)
                    .context("failed to set up the Redis connection")?;
                let manager =
                    RedisConnectionManager::new(url.as_str()).context("redis.url is invalid")?;
                let bulk = bb8::Pool::builder()
                    .max_size(BULK_POOL_SIZE)
                    .connection_timeout(settings.connect_timeout_ms.duration())
                    .build_unchecked(manager);
                Ok((Self::Single(conn), BulkPool::Single(bulk)))
            }
            Target::Cluster(seeds) => {
                let conn = cluster_connection(&seeds, settings)?;
                let bulk = Renewable::new(seeds, settings)?;
                Ok((Self::Cluster(conn), BulkPool::Cluster(Arc::new(bulk))))
            }
        }
    }

    /// A second link of the same kind and target, with its own sockets.
    pub fn open_another(settings: &RedisSettings) -> anyhow::Result<Self> {
        Ok(Self::open(settings)?.0)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Every command of `groups` in one pipeline (one server).
    pub async fn one_pipeline(
        conn: &mut impl ConnectionLike,
        groups: &[Pipeline],
    ) -> RedisResult<Vec<Value>> {
        let mut all = redis::pipe();
        for group in groups {
            for cmd in group.cmd_iter() {
                all.add_command(cmd.clone());
            }
        }
        if all.is_empty() {
            return Ok(Vec::new());
        }
        all.query_async(conn).await
    }

    /// One pipeline per group (each group's commands in one slot), [`FAN_OUT`]
    /// at a time, replies in order: a cluster refuses a pipeline
    /// spanning slots, and redis-rs sends each to its slot's primary over
    /// that node's shared socket.
    pub async fn each_pipeline(
        conn: &mut (impl ConnectionLike + Clone + Send),
        groups: &[Pipeline],
    ) -> RedisResult<Vec<Value>> {
        let groups: Vec<&Pipeline> = groups.iter().filter(|g| !g.is_empty()).collect();
        let mut replies = Vec::with_capacity(groups.len());
        for wave in groups.chunks(FAN_OUT) {
            let answers = try_join_all(wave.iter().map(|group| {
                let mut conn = conn.clone();
                async move { group.query_async::<Vec<Value>>(&mut conn).await }
            }))
            .await?;
            replies.extend(answers.into_iter().flatten());
        }
        Ok(replies)
    }

    /// What identifies the data behind this link: the `run_id` of the
    /// server, or on a cluster every primary's node id and `run_id` with the
    /// slots it serves. It changes when a server restarts (possibly empty or
    /// from an older file) and when a replica is promoted (it may lack the
    /// old primary's last writes); moving slots between live primaries
    /// (resharding) carries the keys along and leaves it unchanged.
    pub async fn identity(&mut self) -> RedisResult<String> {
        match self {
            Self::Single(conn) => {
                let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
                run_id(&info)
            }
            Self::Cluster(conn) => cluster_identity(conn).await,
        }
    }
}

/// `INFO <section>` of the server, or of every primary of a cluster.
pub async fn info_per_primary(link: &mut Link, section: &str) -> RedisResult<Vec<String>> {
    let mut cmd = redis::cmd("INFO");
    cmd.arg(section);
    match link {
        Link::Single(conn) => Ok(vec![cmd.query_async(conn).await?]),
        Link::Cluster(conn) => {
            let reply = conn
                .route_command(
                    cmd,
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                )
                .await?;
            match reply {
                Value::Map(pairs) => pairs
                    .into_iter()
                    .map(|(_, v)| Ok(redis::from_redis_value(v)?))
                    .collect(),
                other => Ok(vec![redis::from_redis_value(other)?]),
            }
        }
    }
}

fn run_id(info: &str) -> RedisResult<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_string())
        .ok_or_else(|| RedisError::from((ErrorKind::Parse, "INFO server without run_id")))
}

fn cluster_connection(
    seeds: &[String],
    settings: &RedisSettings,
) -> anyhow::Result<ClusterConnection> {
    let client = ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(settings.connect_timeout_ms.duration())
        .response_timeout(settings.response_timeout_ms.duration())
        // A request is retried (MOVED, ASK, TRYAGAIN, a node away while the
        // slot map refreshes) a few times, never beyond the response
        // timeout in all: a student waits at most that long, as on one
        // server.
        .retries(4)
        .min_retry_wait(20)
        .max_retry_wait(250)
        .overall_response_timeout(Some(settings.response_timeout_ms.duration()))
        .build()
        .context("redis.url is not a valid cluster")?;
    let config = ClusterConfig::new()
        .set_connection_timeout(settings.connect_timeout_ms.duration())
        .set_response_timeout(settings.response_timeout_ms.duration());
    Ok(client.get_pending_async_connection_with_config(config))
}

/// One line of CLUSTER NODES: id, address, flags, slots.
#[derive(Debug, PartialEq, Eq)]
pub struct NodeLine {
    pub id: String,
    /// `host:port` (the bus port and hostname stripped).
    pub address: String,
    pub primary: bool,
    pub failed: bool,
    /// Slot ranges as printed (`0-5460`, `[93->-id]` migration marks dropped).
    pub slots: Vec<String>,
}

pub fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let id = parts.next()?.to_string();
            let address = parts.next()?;
            let address = address.split(['@', ',']).next()?.to_string();
            let flags = parts.next()?;
            // `fail` only: the cluster agreed the node is down. `fail?`
            // (PFAIL) is one node's suspicion after a late pong, common on a
            // loaded machine; the node keeps serving its slots, and a node
            // that is really down fails the INFO the identity sends it.
            let failed = flags.split(',').any(|f| f == "fail");
            let primary = flags.split(',').any(|f| f == "master");
            // master id, ping-sent, pong-recv, config-epoch, link-state
            let mut rest = parts.skip(5);
            let slots = rest
                .by_ref()
                .filter(|s| !s.starts_with('['))
                .map(str::to_string)
                .collect();
            Some(NodeLine {
                id,
                address,
                primary,
                failed,
                slots,
            })
        })
        .collect()
}

async fn cluster_identity(conn: &mut ClusterConnection) -> RedisResult<String> {
    let nodes: String = redis::from_redis_value(
        conn.route_command(
            redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?,
    )?;
    let primaries: Vec<NodeLine> = parse_nodes(&nodes)
        .into_iter()
        .filter(|n| n.primary && !n.slots.is_empty())
        .collect();
    if primaries.iter().any(|n| n.failed) {
        return Err(RedisError::from((
            ErrorKind::Server(ServerErrorKind::ClusterDown),
            "a primary of the cluster is failing",
        )));
    }
    let mut parts = Vec::with_capacity(primaries.len());
    for node in primaries {
        let (host, port) = node
            .address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| RedisError::from((ErrorKind::Parse, "CLUSTER NODES address")))?;
        let info: String = redis::from_redis_value(
            conn.route_command(
                redis::cmd("INFO").arg("server").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
            )
            .await?,
        )?;
        parts.push(format!("{}={}", node.id, run_id(&info)?));
    }
    parts.sort();
    Ok(parts.join(","))
}

/// Sends `cmd` to the server, or to every primary of the cluster (each must
/// succeed).
async fn on_every_primary(link: &mut Link, cmd: Cmd) -> RedisResult<()> {
    match link {
        Link::Single(conn) => cmd.query_async::<()>(conn).await,
        Link::Cluster(conn) => conn
            .route_command(
                cmd,
                RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                )),
            )
            .await
            .map(|_| ()),
    }
}

/// PING the server, or every primary of the cluster.
pub async fn ping_primaries(link: &mut Link) -> RedisResult<()> {
    on_every_primary(link, redis::cmd("PING")).await
}

/// Loads a script on every primary (one server: on it).
pub async fn load_everywhere(link: &mut Link, source: &str) -> RedisResult<()> {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(source);
    on_every_primary(link, cmd).await
}

/// `ConnectionLike` for an enum whose every variant holds a connection:
/// each call goes to the variant's own.
macro_rules! delegate_connection {
    ($ty:ty, $($variant:ident),+) => {
        impl ConnectionLike for $ty {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self {
                    $(Self::$variant(c) => c.req_packed_command(cmd),)+
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                match self {
                    $(Self::$variant(c) => c.req_packed_commands(pipeline, offset, count),)+
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    $(Self::$variant(c) => c.get_db(),)+
                }
            }
        }
    };
}

delegate_connection!(Link, Single, Cluster);
delegate_connection!(Bulk<'_>, Pooled, Cluster);

impl BulkPool {
    pub async fn get(&self) -> RedisResult<Bulk<'_>> {
        match self {
            Self::Single(pool) => pool.get().await.map(Bulk::Pooled).map_err(|e| match e {
                bb8::RunError::User(e) => e,
                bb8::RunError::TimedOut => RedisError::from((
                    ErrorKind::Io,
                    "timed out waiting for a bulk Redis connection",
                )),
            }),
            Self::Cluster(conn) => Ok(Bulk::Cluster(conn.current())),
        }
    }

    /// On a cluster, replaces the bulk connection with a fresh one (see
    /// [`Renewable`]); true if it did.
    pub fn renew(&self) -> anyhow::Result<bool> {
        match self {
            Self::Single(_) => Ok(false),
            Self::Cluster(conn) => conn.renew().map(|()| true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_read_with_their_slots() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host-4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922 [10923->-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 master,fail - 1426238316232 1426238315000 5 connected
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail? - 1426238316232 1426238315000 3 connected 10923-16383
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 5);
        assert!(
            nodes[4].primary && !nodes[4].failed,
            "a suspicion (fail?) is not a failure"
        );
        assert!(!nodes[0].primary);
        assert_eq!(nodes[0].address, "127.0.0.1:30004");
        assert_eq!(nodes[1].slots, vec!["5461-10922".to_string()]);
        assert!(nodes[2].primary && !nodes[2].failed);
        assert!(nodes[3].primary && nodes[3].failed && nodes[3].slots.is_empty());
    }
}
