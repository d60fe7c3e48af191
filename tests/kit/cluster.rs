//! A private Redis Cluster: 3 primaries and 3 replicas, each a redis-server
//! child process on a free loopback port with a folder of its own, for tests
//! and runs that need a cluster to route through, fail over, or reshard.
//! [`Cluster`] kills every node and removes the folders when dropped.
//!
//! Every call is blocking (child processes, `redis-cli`, synchronous
//! connections with timeouts), and every wait is bounded and panics with
//! what it was waiting for. From an async test, call them directly when
//! nothing else of the test must run meanwhile; to keep traffic flowing
//! while the cluster changes (a reshard under load), share the guard in an
//! `Arc` and run the call off the runtime's threads:
//!
//! ```ignore
//! let cluster = Arc::new(Cluster::start());
//! let moving = tokio::task::spawn_blocking({
//!     let cluster = cluster.clone();
//!     move || cluster.move_slots(from, to, 100)
//! });
//! // ... requests through a cluster client ...
//! moving.await.unwrap();
//! ```
//!
//! The URL of a cluster, as `redis.url` takes it, is
//! `redis+cluster://[user:pass@]host:port[,host:port...]`: seed nodes, each
//! reached as `redis://[user:pass@]host:port` ([`seeds`]).

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use super::free_port;

/// The scheme of a cluster URL.
pub const SCHEME: &str = "redis+cluster://";
/// Slots of a Redis Cluster.
pub const SLOTS: u32 = 16384;
/// A node's cluster bus listens on its port plus this.
const BUS_OFFSET: u16 = 10000;
const PRIMARIES: usize = 3;
const NODES: usize = 6;
/// How long a node may take to answer when asked (connect, each reply).
const PATIENCE: Duration = Duration::from_secs(2);
/// How long the cluster may take to come up, or to settle after a change.
const SETTLE: Duration = Duration::from_secs(20);
/// How long one `redis-cli --cluster` command may run.
const TOOL_PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// What a node is, as CLUSTER NODES says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// One line of CLUSTER NODES.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub port: u16,
    pub id: String,
    pub role: Role,
    /// A replica's primary (its id).
    pub primary: Option<String>,
    /// The slots it serves, inclusive ranges in ascending order (slots being
    /// imported or migrated count where they are still served).
    pub slots: Vec<(u16, u16)>,
    /// Flagged `fail` or `fail?`, or its link is down, in the answering
    /// node's view.
    pub failed: bool,
}

impl NodeInfo {
    pub fn slot_count(&self) -> u32 {
        self.slots
            .iter()
            .map(|&(a, b)| u32::from(b) - u32::from(a) + 1)
            .sum()
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// A node process of the guard, and what it was started with.
struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// What a primary killed by [`Cluster::kill_primary`] held, for
/// [`Cluster::wait_promoted`].
struct Killed {
    id: String,
    slots: Vec<(u16, u16)>,
    replicas: Vec<String>,
}

/// A private Redis Cluster of 3 primaries and 3 replicas; every node is
/// killed and every folder removed when this guard is dropped.
pub struct Cluster {
    dir: PathBuf,
    node_timeout_ms: u64,
    nodes: Mutex<Vec<Node>>,
    killed: Mutex<HashMap<u16, Killed>>,
}

impl Cluster {
    /// A cluster whose nodes count a peer as failed after 1 s of silence:
    /// a killed primary's replica takes over within a few seconds.
    pub fn start() -> Self {
        Self::start_with(1000)
    }

    /// A cluster with this `cluster-node-timeout`. Returns once every node
    /// reports `cluster_state:ok`, all agree on a slot map covering the
    /// 16384 slots, and each replica is linked to its primary.
    pub fn start_with(node_timeout_ms: u64) -> Self {
        let dir =
            std::env::temp_dir().join(format!("regtest-cluster-{}", uuid::Uuid::new_v4().simple()));
        let ports = free_node_ports(NODES);
        let nodes = ports
            .iter()
            .map(|&port| {
                let dir = dir.join(port.to_string());
                std::fs::create_dir_all(&dir).expect("a temporary directory for a cluster node");
                Node {
                    port,
                    dir,
                    child: None,
                }
            })
            .collect();
        let cluster = Self {
            dir,
            node_timeout_ms,
            nodes: Mutex::new(nodes),
            killed: Mutex::default(),
        };
        for &port in &ports {
            cluster.spawn(port);
        }
        for &port in &ports {
            wait_for(&format!("node {port} to answer PING"), SETTLE, || {
                query::<String>(port, &redis::cmd("PING"))
            });
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        cluster.run_tool(create, "create");
        wait_for("the new cluster to settle", SETTLE, || {
            let views = cluster.settled()?;
            let nodes = &views[0].1;
            let primaries = nodes.iter().filter(|n| n.role == Role::Primary).count();
            if primaries != PRIMARIES || nodes.len() != NODES {
                return Err(format!("{primaries} primaries among {} nodes", nodes.len()));
            }
            for n in nodes.iter().filter(|n| n.role == Role::Replica) {
                let link = query::<String>(n.port, redis::cmd("INFO").arg("replication"))?;
                if !link.lines().any(|l| l.trim() == "master_link_status:up") {
                    return Err(format!("replica {} is not linked to its primary", n.port));
                }
            }
            Ok(())
        });
        cluster
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`: the live primaries
    /// as seeds.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes()
            .iter()
            .filter(|n| n.role == Role::Primary && !n.failed)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("{SCHEME}{}", seeds.join(","))
    }

    /// `redis://127.0.0.1:P` of every live primary, for a cluster client.
    pub fn seed_urls(&self) -> Vec<String> {
        seeds(&self.url()).expect("a cluster URL")
    }

    /// Every node as a live node sees it now (CLUSTER NODES), by port.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut last = String::from("no node is running");
        for port in self.live_ports() {
            match cluster_nodes(port) {
                Ok(nodes) => return nodes,
                Err(e) => last = e,
            }
        }
        panic!("no node of the cluster answers CLUSTER NODES: {last}");
    }

    /// The ports of the node processes that run.
    pub fn live_ports(&self) -> Vec<u16> {
        lock(&self.nodes)
            .iter_mut()
            .filter_map(|n| {
                let child = n.child.as_mut()?;
                matches!(child.try_wait(), Ok(None)).then_some(n.port)
            })
            .collect()
    }

    /// The process id of each running node, by port.
    pub fn pids(&self) -> Vec<(u16, u32)> {
        lock(&self.nodes)
            .iter()
            .filter_map(|n| Some((n.port, n.child.as_ref()?.id())))
            .collect()
    }

    /// The folder under which each node has its own.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The port of the primary that serves `key`'s slot now.
    pub fn primary_for_key(&self, key: &str) -> u16 {
        let slot = key_slot(key);
        self.nodes()
            .into_iter()
            .find(|n| n.role == Role::Primary && !n.failed && n.serves(slot))
            .unwrap_or_else(|| panic!("no live primary serves slot {slot} (key {key:?})"))
            .port
    }

    /// SIGKILLs the primary on `port` (no shutdown, no handover); see
    /// [`Cluster::wait_promoted`].
    pub fn kill_primary(&self, port: u16) {
        let nodes = self.nodes();
        let victim = nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of the cluster is on port {port}"));
        assert_eq!(victim.role, Role::Primary, "node {port} is not a primary");
        let replicas = nodes
            .iter()
            .filter(|n| n.primary.as_deref() == Some(&victim.id))
            .map(|n| n.id.clone())
            .collect();
        lock(&self.killed).insert(
            port,
            Killed {
                id: victim.id.clone(),
                slots: victim.slots.clone(),
                replicas,
            },
        );
        let mut nodes = lock(&self.nodes);
        let node = nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("every node listed has a process");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until a replica of the primary killed on `old_port` is a
    /// primary serving all of its slots and every live node reports
    /// `cluster_state:ok` with the same slot map; returns its port. Panics
    /// after `within`.
    pub fn wait_promoted(&self, old_port: u16, within: Duration) -> u16 {
        let killed = lock(&self.killed);
        let old = killed
            .get(&old_port)
            .unwrap_or_else(|| panic!("no primary on port {old_port} was killed"));
        wait_for(
            &format!("a replica of the primary on port {old_port} to take over"),
            within,
            || {
                let views = self.settled()?;
                let heir = views[0]
                    .1
                    .iter()
                    .find(|n| n.role == Role::Primary && old.replicas.contains(&n.id))
                    .ok_or("no replica of it is a primary yet")?;
                if heir.slots != old.slots {
                    return Err(format!(
                        "its replica {} serves {:?}, it served {:?}",
                        heir.port, heir.slots, old.slots
                    ));
                }
                if heir.id == old.id {
                    return Err("the old primary is still listed as serving".into());
                }
                Ok(heir.port)
            },
        )
    }

    /// Starts the node on `port` again (killed before) from its folder: its
    /// nodes.conf makes it rejoin, as a replica when its slots were taken
    /// over. Returns once the cluster has settled, every live node agrees on
    /// its role, and (a replica) it is linked to its primary.
    pub fn restart_node(&self, port: u16) {
        {
            let mut nodes = lock(&self.nodes);
            let node = nodes
                .iter_mut()
                .find(|n| n.port == port)
                .unwrap_or_else(|| panic!("no node of the cluster is on port {port}"));
            if let Some(child) = node.child.as_mut() {
                assert!(
                    !matches!(child.try_wait(), Ok(None)),
                    "node {port} is running"
                );
            }
            node.child = None;
        }
        free_or_wait(port);
        self.spawn(port);
        lock(&self.killed).remove(&port);
        wait_for(&format!("node {port} to rejoin"), SETTLE, || {
            let views = self.settled()?;
            let mut seen = None;
            for (viewer, nodes) in &views {
                let me = nodes
                    .iter()
                    .find(|n| n.port == port)
                    .ok_or(format!("node {viewer} does not list {port}"))?;
                if me.failed {
                    return Err(format!("node {viewer} still sees {port} as failed"));
                }
                if me.role == Role::Primary && me.slots.is_empty() {
                    return Err(format!(
                        "node {viewer} sees {port} as a primary of no slots"
                    ));
                }
                let role = (me.role, me.primary.clone());
                match &seen {
                    Some(other) if *other != role => {
                        return Err(format!("nodes disagree on the role of {port}"))
                    }
                    _ => seen = Some(role),
                }
            }
            if let Some((Role::Replica, _)) = seen {
                let link = query::<String>(port, redis::cmd("INFO").arg("replication"))?;
                if !link.lines().any(|l| l.trim() == "master_link_status:up") {
                    return Err(format!("{port} is not linked to its primary yet"));
                }
            }
            Ok(())
        });
    }

    /// Moves `count` slots (and their keys) from the primary on `from` to
    /// the primary on `to` with `redis-cli --cluster reshard`; returns once
    /// the cluster has settled with `from` serving `count` fewer slots.
    pub fn move_slots(&self, from: u16, to: u16, count: u32) {
        let nodes = self.nodes();
        let primary = |port: u16| {
            nodes
                .iter()
                .find(|n| n.port == port && n.role == Role::Primary)
                .unwrap_or_else(|| panic!("node {port} is not a primary of the cluster"))
                .clone()
        };
        let (source, target) = (primary(from), primary(to));
        assert!(
            count <= source.slot_count(),
            "node {from} serves {} slots, fewer than {count}",
            source.slot_count()
        );
        let mut reshard = Command::new("redis-cli");
        reshard
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &source.id, "--cluster-to", &target.id])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"]);
        self.run_tool(reshard, "reshard");
        wait_for(
            &format!("{count} slots to move from {from} to {to}"),
            SETTLE,
            || {
                let views = self.settled()?;
                let now = |id: &str| {
                    views[0]
                        .1
                        .iter()
                        .find(|n| n.id == id)
                        .map_or(0, NodeInfo::slot_count)
                };
                let (left, got) = (now(&source.id), now(&target.id));
                if left + count != source.slot_count() || got != target.slot_count() + count {
                    return Err(format!(
                        "{from} serves {left} slots (was {}), {to} {got} (was {})",
                        source.slot_count(),
                        target.slot_count()
                    ));
                }
                Ok(())
            },
        );
    }

    /// Each live node's view, once they all report `cluster_state:ok` and
    /// agree on which primary serves which slots, all 16384 served.
    fn settled(&self) -> Result<Vec<(u16, Vec<NodeInfo>)>, String> {
        let mut views = Vec::new();
        for port in self.live_ports() {
            let info = query::<String>(port, redis::cmd("CLUSTER").arg("INFO"))?;
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return Err(format!("node {port}: cluster_state is not ok"));
            }
            views.push((port, cluster_nodes(port)?));
        }
        let map = |nodes: &[NodeInfo]| -> BTreeMap<String, Vec<(u16, u16)>> {
            nodes
                .iter()
                .filter(|n| n.role == Role::Primary && !n.slots.is_empty())
                .map(|n| (n.id.clone(), n.slots.clone()))
                .collect()
        };
        let (first, nodes) = views.first().ok_or("no node is running")?;
        let reference = map(nodes);
        let served: u32 = nodes
            .iter()
            .filter(|n| n.role == Role::Primary)
            .map(NodeInfo::slot_count)
            .sum();
        if served != SLOTS {
            return Err(format!(
                "node {first} sees {served} of {SLOTS} slots served"
            ));
        }
        for (port, nodes) in &views[1..] {
            if map(nodes) != reference {
                return Err(format!("nodes {first} and {port} see other slot maps"));
            }
        }
        Ok(views)
    }

    /// Starts the redis-server of `port` from its folder.
    fn spawn(&self, port: u16) {
        let mut nodes = lock(&self.nodes);
        let node = nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of the cluster");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&node.dir)
            .arg("--logfile")
            .arg(node.dir.join("redis.log"))
            .args(["--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &self.node_timeout_ms.to_string()])
            // A replica always stands for election, however long it was
            // cut off from its primary.
            .args(["--cluster-replica-validity-factor", "0"])
            // The topology stays as created: no replica wanders to another
            // primary.
            .args(["--cluster-allow-replica-migration", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        node.child = Some(child);
    }

    /// Runs a `redis-cli --cluster` command to its end (bounded), its output
    /// in `<dir>/<name>.log`; panics with that output when it fails.
    fn run_tool(&self, mut command: Command, name: &str) {
        let log = self.dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("a log file for redis-cli");
        let err = out.try_clone().expect("a log file for redis-cli");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("redis-cli is installed (with redis-server)");
        let deadline = Instant::now() + TOOL_PATIENCE;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        if !status.is_some_and(|s| s.success()) {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "redis-cli --cluster {name} failed ({}):\n{output}",
                status.map_or(format!("still running after {TOOL_PATIENCE:?}"), |s| s
                    .to_string())
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in lock(&self.nodes).iter_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                if let Err(e) = child.wait() {
                    eprintln!("could not reap the cluster node on port {}: {e}", node.port);
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!(
                "could not remove the cluster's folder {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// The seeds of a `redis+cluster://[user:pass@]host:port[,host:port...]`
/// URL, each as `redis://[user:pass@]host:port`; None for another URL.
pub fn seeds(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix(SCHEME)?;
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    let (credentials, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{credentials}{h}"))
        .collect();
    (!seeds.is_empty()).then_some(seeds)
}

/// The slot of a key: CRC16 (XMODEM) of the key, or of its hash tag (the
/// first non-empty `{...}`), mod 16384.
pub fn key_slot(key: &str) -> u16 {
    let key = key.as_bytes();
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let tag = &key[open + 1..];
            let close = tag.iter().position(|&b| b == b'}')?;
            (close > 0).then_some(&tag[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS as u16
}

/// Parses CLUSTER NODES: one [`NodeInfo`] per line, by port.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeInfo> {
    let mut nodes: Vec<NodeInfo> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split([',', '@']).next()?;
            let port = address.rsplit_once(':')?.1.parse().ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let role = if flags.contains(&"master") {
                Role::Primary
            } else {
                Role::Replica
            };
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeInfo {
                port,
                id: fields[0].to_string(),
                role,
                primary: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
                failed: flags.iter().any(|f| f.starts_with("fail")) || fields[7] != "connected",
            })
        })
        .collect();
    nodes.sort_by_key(|n| n.port);
    nodes
}

/// The `redis://[user:pass@]host:port` of every primary not flagged
/// failed, as the node at `seed` (a `redis://` URL) lists them, with the
/// seed's credentials.
pub fn primaries(seed: &str) -> redis::RedisResult<Vec<String>> {
    let client = redis::Client::open(seed)?;
    let mut conn = client.get_connection_with_timeout(PATIENCE)?;
    conn.set_read_timeout(Some(PATIENCE))?;
    conn.set_write_timeout(Some(PATIENCE))?;
    let text: String = redis::cmd("CLUSTER").arg("NODES").query(&mut conn)?;
    let rest = seed.split_once("://").map_or(seed, |(_, rest)| rest);
    let credentials = rest.rfind('@').map_or("", |at| &rest[..=at]);
    let seed_host = rest[credentials.len()..]
        .rsplit_once(':')
        .map_or("127.0.0.1", |(host, _)| host);
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                return None;
            }
            let address = fields[1].split([',', '@']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            // A node that knows no address of its own (a lone node)
            // lists itself as ":port".
            let host = if host.is_empty() { seed_host } else { host };
            Some(format!("redis://{credentials}{host}:{port}"))
        })
        .collect())
}

fn cluster_nodes(port: u16) -> Result<Vec<NodeInfo>, String> {
    let text = query::<String>(port, redis::cmd("CLUSTER").arg("NODES"))?;
    Ok(parse_cluster_nodes(&text))
}

/// One command to the node on `port`, bounded by [`PATIENCE`].
fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Result<T, String> {
    let ask = || -> redis::RedisResult<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut conn = client.get_connection_with_timeout(PATIENCE)?;
        conn.set_read_timeout(Some(PATIENCE))?;
        conn.set_write_timeout(Some(PATIENCE))?;
        cmd.query(&mut conn)
    };
    ask().map_err(|e| format!("node {port}: {e}"))
}

/// Polls `check` until it succeeds; panics with its last complaint after
/// `within`.
fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(e) if Instant::now() >= deadline => {
                panic!("waited {within:?} for {what}; last: {e}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// `count` distinct free loopback ports whose bus ports (+10000) are free
/// too, the bus ports distinct from every chosen port.
fn free_node_ports(count: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    for _ in 0..1000 {
        if ports.len() == count {
            return ports;
        }
        let port = free_port();
        let Some(bus) = port.checked_add(BUS_OFFSET) else {
            continue;
        };
        let clash = ports
            .iter()
            .any(|&p| p == port || p == bus || p + BUS_OFFSET == port);
        if !clash && TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            ports.push(port);
        }
    }
    panic!("could not find {count} free ports with free bus ports (+{BUS_OFFSET})");
}

/// Waits (bounded) until `port` and its bus port can be bound again: a node
/// just killed may leave them in use for a moment.
fn free_or_wait(port: u16) {
    wait_for(&format!("port {port} to be free"), SETTLE, || {
        TcpListener::bind(("127.0.0.1", port))
            .and_then(|_| TcpListener::bind(("127.0.0.1", port + BUS_OFFSET)))
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
