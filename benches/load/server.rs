//! The system under test: its own PostgreSQL database and Redis namespace,
//! the release binary as a child process (so its memory is its own), a TCP
//! proxy in front of PostgreSQL (to hold persistence back for the drain
//! measurement), and one in front of Redis for Redis faults; all from the
//! kit (`tests/kit`), which removes the database and the namespace again
//! however the run ends.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use registrar::{
    config::{RedisSettings, Secret, Settings},
    seats::Redis,
    seed, store,
};

use crate::kit::{
    address_of,
    child::{self, ChildServer, Launch},
    database::Database,
    namespace::Namespace,
    proxy::Proxy,
    via_port,
};

/// Where the service's dependencies are.
pub struct Target {
    pub admin_database_url: String,
    pub redis_url: String,
}

impl Target {
    pub fn from_env() -> Self {
        Self {
            admin_database_url: std::env::var("BENCH_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into()),
            redis_url: std::env::var("BENCH_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()),
        }
    }
}

/// The database, the Redis handle and the running server.
pub struct System {
    pub db: Pool,
    pub redis: Redis,
    pub settings: Settings,
    /// The first instance: what single-address parts of the tool talk to.
    pub addr: SocketAddr,
    /// Every instance (`--instances`); clients are spread over them.
    pub addrs: Addrs,
    pub proxy: Proxy,
    /// In front of Redis, when the run injects Redis faults; the tool's own
    /// handle (`redis`) always goes straight to Redis.
    pub redis_proxy: Option<Proxy>,
    // Fields drop in order: the servers are killed before their stores go.
    servers: Vec<ChildServer>,
    /// What starting cost, measured once every instance was ready.
    pub warm: Warm,
    _namespace: Namespace,
    _database: Database,
}

/// The cost of a start: the warm-up (sections loaded into Redis) and what
/// it left in memory.
#[derive(Debug, Clone)]
pub struct Warm {
    /// From spawning the servers to every one answering /ready.
    pub ready_s: f64,
    /// Redis `used_memory` growth over the warm-up (summed over primaries).
    pub redis_bytes: u64,
    /// Server RSS once ready, MiB (all instances).
    pub rss_mib: f64,
    pub sections: usize,
    pub students: usize,
}

/// Redis's `used_memory`, summed over every primary (0 if unreadable).
pub async fn used_memory(redis: &Redis) -> u64 {
    redis
        .info_per_primary("memory")
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// How long the server may take to become ready (warming up a big seed).
const READY_WITHIN: Duration = Duration::from_secs(60);

impl System {
    /// Creates the database, migrates, seeds, and starts the server; its
    /// Redis behind a proxy of its own when `redis_proxy` (for Redis faults),
    /// its rate limits on when `rate_limits` (see [`rate_limit_env`]).
    pub async fn start_with(
        target: &Target,
        seed_options: &seed::SeedOptions,
        shards: usize,
        redis_proxy: bool,
        rate_limits: bool,
        instances: usize,
        rules: bool,
    ) -> anyhow::Result<Self> {
        let database = Database::create(&target.admin_database_url, "regbench").await;
        let namespace = Namespace::new("bench", &target.redis_url);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut settings = Settings::load_from(&dir, "local")?;
        settings.database.url = Secret::new(database.url.clone());
        settings.redis.url = Secret::new(target.redis_url.clone());
        settings.redis.namespace = namespace.name.clone();
        let db = store::pool(&settings.database)?;
        let mut client = db.get().await?;
        store::migrate::run(&mut client).await?;
        drop(client);
        let started = Instant::now();
        let report = seed::seed(&db, seed_options, |_, _| {}).await?;
        if rules {
            seed::seed_realistic_rules(&db, report.semester_id).await?;
        }
        eprintln!(
            "seeded {} students and {} sections in {:.1}s",
            seed_options.students,
            seed_options.courses * seed_options.sections_per_course,
            started.elapsed().as_secs_f64()
        );
        let proxy = Proxy::start(address_of(&target.admin_database_url, 5432).await).await;
        let (redis_proxy, server_redis_url) = if redis_proxy {
            let proxy = Proxy::start(address_of(&target.redis_url, 6379).await).await;
            let url = via_port(&target.redis_url, proxy.port);
            (Some(proxy), url)
        } else {
            (None, target.redis_url.clone())
        };
        // Several instances share the database (through the one proxy, so a
        // fault hits them all), the Redis namespace and the settings.
        let mut servers = Vec::with_capacity(instances.max(1));
        for _ in 0..instances.max(1) {
            let mut launch = Launch::new(
                "local",
                &via_port(&database.url, proxy.port),
                &server_redis_url,
                &namespace.name,
            )
            .env("APP__SYNC__SHARDS", shards.to_string())
            .env("APP__LOG__LEVEL", "warn")
            // Every client of the tool is one loopback address, and --faults
            // keeps up to --max-in-flight connections open: lift the
            // per-address cap (the default allows 1000).
            .env("APP__HTTP__MAX_CONNECTIONS_PER_ADDRESS", "100000")
            .patience(READY_WITHIN);
            for (key, value) in rate_limit_env(rate_limits) {
                launch = launch.env(key, value);
            }
            // BENCH_SERVER_LOG=<dir>: each instance's log, at info, in
            // <dir>/server-<n>.log (to see what the server did in a run).
            if let Some(dir) = std::env::var_os("BENCH_SERVER_LOG") {
                let path = Path::new(&dir).join(format!("server-{}.log", servers.len()));
                launch = launch.env("APP__LOG__LEVEL", "info").log_to(&path);
            }
            servers.push(launch.spawn());
        }
        let redis = Redis::new(&settings.redis)?;
        let redis_before = used_memory(&redis).await;
        let spawned = Instant::now();
        for server in &servers {
            server.wait_ready().await;
        }
        let ready_s = spawned.elapsed().as_secs_f64();
        let warm = Warm {
            ready_s,
            redis_bytes: used_memory(&redis).await.saturating_sub(redis_before),
            rss_mib: servers.iter().map(|s| rss_mib(s.pid())).sum(),
            sections: seed_options.courses * seed_options.sections_per_course,
            students: seed_options.students,
        };
        let addrs: Addrs = servers
            .iter()
            .map(|s| SocketAddr::from(([127, 0, 0, 1], s.port)))
            .collect();
        Ok(Self {
            redis,
            warm,
            db,
            settings,
            addr: addrs[0],
            addrs,
            proxy,
            redis_proxy,
            servers,
            _namespace: namespace,
            _database: database,
        })
    }

    /// The first instance's process id.
    pub fn pid(&self) -> u32 {
        self.servers[0].pid()
    }

    /// Every instance's process id.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(|s| s.pid()).collect()
    }

    /// Resident memory of all instances together, MiB.
    pub fn rss_mib(&self) -> f64 {
        self.servers.iter().map(|s| rss_mib(s.pid())).sum()
    }

    /// Waits until every section's outbox is empty; returns how long it took.
    pub async fn drain(
        &self,
        sections: &[uuid::Uuid],
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            let heads = self.redis.outbox_heads(sections).await?;
            if heads.iter().all(|(_, len)| *len == 0) {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::bail!("persistence did not drain within {limit:?}")
    }

    /// Stops every instance with SIGTERM (their graceful shutdown); the
    /// database and the Redis namespace go with the rest of `self`, after
    /// them (on an error path, after killing them).
    pub async fn stop(self) {
        let mut servers = self.servers;
        servers.retain_mut(|server| server.is_running());
        for server in &servers {
            server.sigterm();
        }
        for server in servers {
            server.wait_exit().await;
        }
        self.db.close();
    }
}

/// The addresses of the instances; connection `i` goes to `addrs[i % n]`.
pub type Addrs = std::sync::Arc<[SocketAddr]>;

/// Resident set size of a process, MiB (0 when unknown).
pub fn rss_mib(pid: u32) -> f64 {
    child::rss_kib(pid).map_or(0.0, |kb| kb as f64 / 1024.0)
}

/// A Redis handle outside the server (for the Redis ceiling).
pub fn redis_handle(url: &str, namespace: &str) -> anyhow::Result<Redis> {
    Redis::new(&RedisSettings {
        url: Secret::new(url),
        namespace: namespace.into(),
        connect_timeout_ms: registrar::config::Millis::new(1000),
        response_timeout_ms: registrar::config::Millis::new(5000),
        wait_replicas: 0,
        wait_timeout_ms: registrar::config::Millis::new(500),
    })
}

/// The server's rate-limit settings. Every client of the tool is one
/// loopback address, so the limits are off unless a scenario measures them
/// (flood), and then the address bucket is lifted: what is measured is the
/// per-student bucket with the production defaults.
fn rate_limit_env(on: bool) -> Vec<(&'static str, &'static str)> {
    if on {
        vec![
            ("APP__RATE_LIMIT__ENABLED", "true"),
            ("APP__RATE_LIMIT__ADDRESS_PER_SECOND", "1000000"),
            ("APP__RATE_LIMIT__ADDRESS_BURST", "1000000"),
        ]
    } else {
        vec![("APP__RATE_LIMIT__ENABLED", "false")]
    }
}
