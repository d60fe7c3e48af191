//! The kit's private Redis Cluster (`kit::cluster`) against real
//! redis-server processes: it comes up whole, fails over, reshards keeping
//! keys readable, a namespace on it is cleared on every primary, and it
//! leaves nothing behind.

use std::{
    collections::{BTreeSet, HashMap},
    net::TcpListener,
    sync::Arc,
    time::{Duration, Instant},
};

use redis::{cluster::ClusterClient, cluster_async::ClusterConnection};

use crate::kit::{
    cluster::{self, Cluster, Role},
    namespace::Namespace,
};

/// With a node timeout of 1000 ms a killed primary's replica took over in
/// 2.0-3.0 s here over 30 runs (failure detection, then the replica's election delay of
/// 0.5-1 s); this leaves room for a loaded machine.
const PROMOTION_BOUND: Duration = Duration::from_secs(8);

async fn client(cluster: &Cluster) -> ClusterConnection {
    ClusterClient::builder(cluster.seed_urls())
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .build()
        .expect("a cluster client")
        .get_async_connection()
        .await
        .expect("the cluster client connects")
}

async fn set(conn: &mut ClusterConnection, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async::<()>(conn)
        .await
        .unwrap_or_else(|e| panic!("SET {key}: {e}"));
}

async fn get(conn: &mut ClusterConnection, key: &str) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET").arg(key).query_async(conn).await
}

/// GET on one node, without following redirections: what that node holds.
fn get_on(port: u16, key: &str) -> redis::RedisResult<Option<String>> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    redis::cmd("GET").arg(key).query(&mut conn)
}

fn query_on<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> T {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("a URL");
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("the node answers");
    cmd.query(&mut conn).expect("the node answers the command")
}

#[test]
fn cluster_urls_name_every_seed_and_slots_are_computed_as_redis_does() {
    assert_eq!(
        cluster::seeds("redis+cluster://u:p@10.0.0.1:7000,redis-2:6379"),
        Some(vec![
            "redis://u:p@10.0.0.1:7000".to_string(),
            "redis://u:p@redis-2:6379".to_string()
        ])
    );
    assert_eq!(
        cluster::seeds("redis+cluster://127.0.0.1:7000"),
        Some(vec!["redis://127.0.0.1:7000".to_string()])
    );
    assert_eq!(cluster::seeds("redis://127.0.0.1:6379/0"), None);
    assert_eq!(cluster::seeds("redis+cluster://"), None);
    // The examples of the Redis Cluster specification.
    // CRC16 of "123456789" is 0x31C3 (12739), below 16384.
    assert_eq!(cluster::key_slot("123456789"), 0x31C3);
    assert_eq!(
        cluster::key_slot("{user1000}.following"),
        cluster::key_slot("user1000")
    );
    assert_eq!(
        cluster::key_slot("foo{{bar}}zap"),
        cluster::key_slot("{bar")
    );
}

#[tokio::test]
async fn a_cluster_starts_with_three_primaries_and_three_replicas_covering_every_slot() {
    let cluster = Cluster::start();
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 6, "{nodes:?}");
    let primaries: Vec<_> = nodes.iter().filter(|n| n.role == Role::Primary).collect();
    let replicas: Vec<_> = nodes.iter().filter(|n| n.role == Role::Replica).collect();
    assert_eq!((primaries.len(), replicas.len()), (3, 3), "{nodes:?}");
    assert!(nodes.iter().all(|n| !n.failed), "{nodes:?}");

    // Every slot is served by exactly one primary.
    let mut served = vec![0u8; 16384];
    for p in &primaries {
        for &(a, b) in &p.slots {
            for slot in a..=b {
                served[usize::from(slot)] += 1;
            }
        }
    }
    assert!(served.iter().all(|&n| n == 1), "every slot once");
    // Each primary has one replica of its own.
    let followed: BTreeSet<_> = replicas.iter().filter_map(|r| r.primary.clone()).collect();
    let ids: BTreeSet<_> = primaries.iter().map(|p| p.id.clone()).collect();
    assert_eq!(followed, ids);

    let ports: BTreeSet<u16> = primaries.iter().map(|p| p.port).collect();
    let url = cluster.url();
    let seeds: BTreeSet<u16> = url
        .strip_prefix("redis+cluster://")
        .expect("the agreed scheme")
        .split(',')
        .map(|s| s.strip_prefix("127.0.0.1:").unwrap().parse().unwrap())
        .collect();
    assert_eq!(seeds, ports, "{url}");

    // The key slot as Redis computes it, and the primary that holds a key.
    let any = *ports.first().unwrap();
    let tricky = [
        "foo{}{bar}",
        "foo{{bar}}zap",
        "{}",
        "a{b",
        "t1:{sec:42}:seats",
    ];
    for key in tricky {
        let slot: u16 = query_on(any, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key));
        assert_eq!(cluster::key_slot(key), slot, "{key}");
    }
    let mut conn = client(&cluster).await;
    for i in 0..20 {
        let key = format!("start:{i}");
        let slot: u16 = query_on(any, redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key));
        assert_eq!(cluster::key_slot(&key), slot, "{key}");
        set(&mut conn, &key, "here").await;
        let port = cluster.primary_for_key(&key);
        assert_eq!(
            get_on(port, &key).unwrap().as_deref(),
            Some("here"),
            "{key} on {port}"
        );
    }
}

#[tokio::test]
async fn a_killed_primary_is_replaced_by_its_replica_which_keeps_its_keys() {
    let cluster = Cluster::start();
    let key = "failover:{a}";
    let old = cluster.primary_for_key(key);
    // Written on the primary, and acknowledged by its replica (WAIT counts
    // the replicas that have this connection's writes) before it dies.
    let acked: i64 = redis::pipe()
        .cmd("SET")
        .arg(key)
        .arg("kept")
        .ignore()
        .cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query::<(i64,)>(
            &mut redis::Client::open(format!("redis://127.0.0.1:{old}"))
                .unwrap()
                .get_connection_with_timeout(Duration::from_secs(2))
                .unwrap(),
        )
        .unwrap()
        .0;
    assert_eq!(acked, 1, "the replica has the write");
    let before = cluster.nodes();
    let old_id = before.iter().find(|n| n.port == old).unwrap().id.clone();
    let replica = before
        .iter()
        .find(|n| n.primary.as_deref() == Some(&old_id))
        .expect("the primary has a replica")
        .port;

    cluster.kill_primary(old);
    let killed = Instant::now();
    let heir = cluster.wait_promoted(old, PROMOTION_BOUND);
    let took = killed.elapsed();
    eprintln!("replica {heir} took over from the killed primary {old} in {took:?}");
    assert_eq!(heir, replica);
    assert_eq!(cluster.primary_for_key(key), heir);
    assert!(
        !cluster.url().contains(&format!(":{old}")),
        "{}",
        cluster.url()
    );

    let mut fresh = client(&cluster).await;
    assert_eq!(get(&mut fresh, key).await.unwrap().as_deref(), Some("kept"));
    assert_eq!(get_on(heir, key).unwrap().as_deref(), Some("kept"));

    // The killed node comes back as the replica of the one that took over.
    cluster.restart_node(old);
    let back = cluster.nodes();
    let old_node = back.iter().find(|n| n.port == old).unwrap();
    let heir_id = back.iter().find(|n| n.port == heir).unwrap().id.clone();
    assert_eq!(old_node.role, Role::Replica, "{back:?}");
    assert_eq!(old_node.primary.as_deref(), Some(heir_id.as_str()));
    assert!(old_node.slots.is_empty());
}

#[tokio::test]
async fn moved_slots_keep_their_keys_readable_through_a_cluster_client() {
    let cluster = Arc::new(Cluster::start());
    let nodes = cluster.nodes();
    let mut primaries = nodes.iter().filter(|n| n.role == Role::Primary);
    let (from, to) = (
        primaries.next().unwrap().clone(),
        primaries.next().unwrap().clone(),
    );

    // One key in every slot of `from`, so that whichever slots move carry
    // keys.
    let mut keys: HashMap<u16, String> = HashMap::new();
    let mut i = 0u64;
    while keys.len() < from.slot_count() as usize {
        let key = format!("mv:{i}");
        let slot = cluster::key_slot(&key);
        if from.serves(slot) {
            keys.entry(slot).or_insert(key);
        }
        i += 1;
    }
    let mut conn = client(&cluster).await;
    for key in keys.values() {
        set(&mut conn, key, key).await;
    }

    // Reads go on, through the same client, while the slots move.
    let moving = tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || cluster.move_slots(from.port, to.port, 100)
    });
    let (mut reads, mut wrong) = (0, Vec::new());
    while !moving.is_finished() {
        for key in keys.values().take(500) {
            match get(&mut conn, key).await {
                Ok(Some(v)) if &v == key => reads += 1,
                other => wrong.push(format!("{key}: {other:?}")),
            }
        }
    }
    moving.await.expect("move_slots did not panic");
    assert!(wrong.is_empty(), "reads during the move: {wrong:?}");
    assert!(reads > 0);

    let after = cluster.nodes();
    let slots_of = |id: &str| after.iter().find(|n| n.id == id).unwrap().slot_count();
    assert_eq!(slots_of(&from.id), from.slot_count() - 100);
    assert_eq!(slots_of(&to.id), to.slot_count() + 100);
    let target = after.iter().find(|n| n.id == to.id).unwrap();
    let moved: Vec<&String> = keys
        .iter()
        .filter(|(slot, _)| target.serves(**slot))
        .map(|(_, key)| key)
        .collect();
    assert_eq!(moved.len(), 100, "one key per moved slot");
    for key in &moved {
        // The key itself is on its new primary...
        assert_eq!(get_on(to.port, key).unwrap().as_deref(), Some(key.as_str()));
        assert_eq!(cluster.primary_for_key(key), to.port);
    }
    // ...and every key reads through the client, moved or not.
    for key in keys.values() {
        assert_eq!(
            get(&mut conn, key).await.unwrap().as_deref(),
            Some(key.as_str())
        );
    }
}

#[tokio::test]
async fn clearing_a_namespace_on_a_cluster_removes_its_keys_on_every_primary() {
    let cluster = Cluster::start();
    let namespace = Namespace::new("t", &cluster.url());
    let mut conn = client(&cluster).await;
    let mut holders = BTreeSet::new();
    for i in 0..300 {
        // Keys of one hash tag share a slot: a multi-key UNLINK there is
        // accepted, across slots refused.
        let key = if i % 2 == 0 {
            format!("{}:{i}", namespace.name)
        } else {
            format!("{}:{{tag{}}}:{i}", namespace.name, i % 7)
        };
        set(&mut conn, &key, "x").await;
        holders.insert(cluster.primary_for_key(&key));
    }
    set(&mut conn, "other:key", "stays").await;
    assert_eq!(
        holders.len(),
        3,
        "the namespace's keys are on every primary"
    );

    assert_eq!(namespace.clear().expect("the cluster is cleared"), 300);
    let primaries: Vec<u16> = cluster
        .nodes()
        .iter()
        .filter(|n| n.role == Role::Primary)
        .map(|n| n.port)
        .collect();
    let total: i64 = primaries
        .iter()
        .map(|&p| query_on::<i64>(p, &redis::cmd("DBSIZE")))
        .sum();
    assert_eq!(total, 1, "only the key outside the namespace is left");
    assert_eq!(
        get(&mut conn, "other:key").await.unwrap().as_deref(),
        Some("stays")
    );
    assert_eq!(namespace.clear().expect("clearing again"), 0);
}

#[test]
fn dropping_the_cluster_leaves_no_process_and_frees_its_ports() {
    let cluster = Cluster::start();
    let pids = cluster.pids();
    let dir = cluster.dir().to_path_buf();
    assert_eq!(pids.len(), 6);
    assert!(dir.is_dir());
    for &(port, pid) in &pids {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "node {port} runs"
        );
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_err(),
            "{port} is taken"
        );
    }
    drop(cluster);
    for &(port, pid) in &pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "node {port} (pid {pid}) is gone"
        );
        TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{port} is free: {e}"));
        TcpListener::bind(("127.0.0.1", port + 10000))
            .unwrap_or_else(|e| panic!("bus port {} is free: {e}", port + 10000));
    }
    assert!(!dir.exists(), "{} is removed", dir.display());
}
