//! The system under test: its own PostgreSQL database and Redis namespace,
//! the release binary as a child process (so its memory is its own), a TCP
//! proxy in front of PostgreSQL (to hold persistence back for the drain
//! measurement), and a sampler of its health and memory.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use deadpool_postgres::Pool;
use registrar::{
    config::{RedisSettings, Secret, Settings},
    seats::Redis,
    seed, store,
};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
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
    pub addr: SocketAddr,
    pub proxy: Proxy,
    /// In front of Redis, when the run injects Redis faults; the tool's own
    /// handle (`redis`) always goes straight to Redis.
    pub redis_proxy: Option<Proxy>,
    child: Child,
    db_name: String,
    admin_url: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn admin(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("PostgreSQL must answer at BENCH_DATABASE_URL")?;
    tokio::spawn(connection);
    Ok(client)
}

fn with_database(url: &str, name: &str, port: Option<u16>) -> String {
    let (auth, rest) = url.split_once('@').expect("URL with user@host");
    let (host, _) = rest.split_once('/').expect("URL with a database");
    let host = match port {
        Some(p) => format!("127.0.0.1:{p}"),
        None => host.to_string(),
    };
    format!("{auth}@{host}/{name}")
}

/// `url` with its host and port replaced by 127.0.0.1:`port` (user, password
/// and database kept).
fn redis_via(url: &str, port: u16) -> anyhow::Result<(String, String)> {
    let (scheme, rest) = url.split_once("://").context("a redis:// URL")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (credentials, host) = match authority.rsplit_once('@') {
        Some((c, h)) => (format!("{c}@"), h),
        None => (String::new(), authority),
    };
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:6379")
    };
    Ok((
        format!("{scheme}://{credentials}127.0.0.1:{port}/{path}"),
        host,
    ))
}

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
    ) -> anyhow::Result<Self> {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let db_name = format!("regbench_{stamp}_{}", uuid::Uuid::new_v4().simple());
        admin(&target.admin_database_url)
            .await?
            .batch_execute(&format!("create database {db_name}"))
            .await?;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut settings = Settings::load_from(&dir, "local")?;
        settings.database.url =
            Secret::new(with_database(&target.admin_database_url, &db_name, None));
        settings.redis.url = Secret::new(target.redis_url.clone());
        settings.redis.namespace = format!("bench{}", uuid::Uuid::new_v4().simple());
        let db = store::pool(&settings.database)?;
        let mut client = db.get().await?;
        store::migrate::run(&mut client).await?;
        drop(client);
        let started = Instant::now();
        seed::seed(&db, seed_options, |_, _| {}).await?;
        eprintln!(
            "seeded {} students and {} sections in {:.1}s",
            seed_options.students,
            seed_options.courses * seed_options.sections_per_course,
            started.elapsed().as_secs_f64()
        );
        let pg_port = tokio_postgres::Config::from_str(&target.admin_database_url)?
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432);
        let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], pg_port))).await?;
        let (redis_proxy, server_redis_url) = if redis_proxy {
            let (_, host) = redis_via(&target.redis_url, 0)?;
            let addr = tokio::net::lookup_host(&host)
                .await?
                .next()
                .context("the Redis host resolves")?;
            let proxy = Proxy::start(addr).await?;
            let (url, _) = redis_via(&target.redis_url, proxy.port)?;
            (Some(proxy), url)
        } else {
            (None, target.redis_url.clone())
        };
        let port = free_port()?;
        let child = Command::new(env!("CARGO_BIN_EXE_registrar"))
            .arg("serve")
            .env("APP_CONFIG_DIR", &dir)
            .env("APP__HTTP__PORT", port.to_string())
            .env(
                "APP__DATABASE__URL",
                with_database(&target.admin_database_url, &db_name, Some(proxy.port)),
            )
            .env("APP__REDIS__URL", &server_redis_url)
            .env("APP__REDIS__NAMESPACE", &settings.redis.namespace)
            .env("APP__SYNC__SHARDS", shards.to_string())
            .env("APP__LOG__LEVEL", "warn")
            .envs(rate_limit_env(rate_limits))
            .stdout(Stdio::null())
            .spawn()
            .context("failed to start the registrar binary")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let system = Self {
            redis: Redis::new(&settings.redis)?,
            db,
            settings,
            addr,
            proxy,
            redis_proxy,
            child,
            db_name,
            admin_url: target.admin_database_url.clone(),
        };
        system.wait_ready().await?;
        Ok(system)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("http://{}/ready", self.addr)).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the server did not become ready")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server, MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.pid())
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

    /// Stops the server and drops the database and the Redis namespace.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = self.child.wait();
            self.child
        })
        .await;
        self.db.close();
        admin(&self.admin_url)
            .await?
            .batch_execute(&format!(
                "drop database if exists {} with (force)",
                self.db_name
            ))
            .await?;
        let mut conn = self.redis.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.redis.namespace()))
            .query_async(&mut conn)
            .await?;
        for chunk in keys.chunks(1000) {
            redis::cmd("DEL")
                .arg(chunk)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(())
    }
}

/// Resident set size of a process, MiB (0 when unknown).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What a [`Proxy`] does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards bytes as they come.
    Up,
    /// Open connections are cut; new ones are accepted and closed at once
    /// (what a crashed or restarting server looks like to a client).
    Cut,
    /// Connections stay open but no byte gets through, in either direction,
    /// until the mode changes; then the held bytes flow, in order (a network
    /// partition that heals: TCP would have kept retransmitting them).
    Blackhole,
    /// Every chunk is delivered this much later than it arrived (a delay
    /// line: throughput is kept, latency is added).
    Slow(Duration),
}

/// A TCP proxy in front of a dependency (PostgreSQL, Redis) that can cut,
/// black-hole or slow its connections.
pub struct Proxy {
    pub port: u16,
    mode: tokio::sync::watch::Sender<Mode>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

/// Bytes read per chunk by the proxy.
const PROXY_CHUNK: usize = 16 * 1024;

impl Proxy {
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, _) = tokio::sync::watch::channel(Mode::Up);
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (accept_mode, accept_connections) = (mode.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *accept_mode.borrow() == Mode::Cut {
                    drop(inbound);
                    continue;
                }
                let mode = accept_mode.subscribe();
                let handle = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = inbound.set_nodelay(true);
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        // Either direction ending (EOF or error) ends the
                        // connection, like a closed socket would.
                        tokio::select! {
                            () = pump(in_read, out_write, mode.clone()) => {}
                            () = pump(out_read, in_write, mode) => {}
                        }
                    }
                });
                let mut open = accept_connections.lock().unwrap();
                open.retain(|h| !h.is_finished());
                open.push(handle);
            }
        });
        Ok(Self {
            port,
            mode,
            connections,
            accept,
        })
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        if mode == Mode::Cut {
            for handle in self.connections.lock().unwrap().drain(..) {
                handle.abort();
            }
        }
    }

    /// Cuts every connection and refuses new ones: persistence stalls.
    pub fn cut(&self) {
        self.set(Mode::Cut);
    }

    pub fn restore(&self) {
        self.set(Mode::Up);
    }
}

/// One direction of a proxied connection: a reader stamping each chunk with
/// its arrival time, and a writer that delivers it once the mode allows
/// (held while black-holed, delayed while slow).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: tokio::sync::watch::Receiver<Mode>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        loop {
            let mut chunk = vec![0u8; PROXY_CHUNK];
            match from.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.send((Instant::now(), chunk)).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((arrived, chunk)) = rx.recv().await {
            loop {
                let current = *mode.borrow_and_update();
                match current {
                    Mode::Up | Mode::Cut => break,
                    Mode::Slow(delay) => {
                        // A mode change while waiting re-evaluates the chunk.
                        tokio::select! {
                            () = tokio::time::sleep_until((arrived + delay).into()) => break,
                            changed = mode.changed() => if changed.is_err() { return },
                        }
                    }
                    Mode::Blackhole => {
                        if mode.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(read, write);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for handle in self.connections.lock().unwrap().drain(..) {
            handle.abort();
        }
    }
}

/// A Redis handle outside the server (for the Redis ceiling).
pub fn redis_handle(url: &str, namespace: &str) -> anyhow::Result<Redis> {
    Redis::new(&RedisSettings {
        url: Secret::new(url),
        namespace: namespace.into(),
        connect_timeout_ms: 1000,
        response_timeout_ms: 5000,
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
