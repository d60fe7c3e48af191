//! Servers run as child processes: the registrar binary itself (for tests
//! that kill or signal it, and for the load tool, whose client must not share
//! the server's memory and cores' accounting), and a private redis-server
//! (for faults that need a Redis of one's own to stop, flush or restart).
//! Each is killed when its handle is dropped, also when a test panics.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use super::free_port;

/// How often a starting server is asked whether it is up.
const POLL: Duration = Duration::from_millis(20);

/// How `registrar serve` is started: the layered configuration of
/// `config/` for an `APP_ENV`, the stores, the port, and any further
/// setting as an `APP__…` environment variable.
pub struct Launch {
    command: Command,
    port: u16,
    patience: Duration,
}

impl Launch {
    /// `registrar serve` with the configuration of `app_env` (`test`,
    /// `local`…), this database, and this Redis and namespace; on a free
    /// port, given 10 s to answer.
    pub fn new(app_env: &str, database_url: &str, redis_url: &str, namespace: &str) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_registrar"));
        command
            .arg("serve")
            .env("APP_ENV", app_env)
            .env(
                "APP_CONFIG_DIR",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
            )
            .env("APP__DATABASE__URL", database_url)
            .env("APP__REDIS__URL", redis_url)
            .env("APP__REDIS__NAMESPACE", namespace)
            .stdout(Stdio::null());
        Self {
            command,
            port: 0,
            patience: Duration::from_secs(10),
        }
    }

    /// Serves on `port` (0: a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// One more setting, e.g. `("APP__HTTP__MAX_CONNECTIONS", "50")`.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Writes the server's log (its stdout) to `path` instead of dropping it.
    pub fn log_to(mut self, path: &Path) -> Self {
        let file = std::fs::File::create(path).expect("the log file can be created");
        self.command.stdout(file);
        self
    }

    /// How long [`ChildServer::wait_live`] and [`ChildServer::wait_ready`]
    /// wait before giving up (a big seed takes longer to warm up).
    pub fn patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// Starts the process; it is not serving yet (see
    /// [`ChildServer::wait_ready`]).
    pub fn spawn(mut self) -> ChildServer {
        let port = if self.port == 0 {
            free_port()
        } else {
            self.port
        };
        let child = self
            .command
            .env("APP__HTTP__PORT", port.to_string())
            .spawn()
            .expect("the registrar binary starts");
        ChildServer {
            child,
            port,
            patience: self.patience,
        }
    }
}

/// The registrar binary serving on `port`; killed on drop.
pub struct ChildServer {
    pub child: Child,
    pub port: u16,
    patience: Duration,
}

impl ChildServer {
    /// The process id (for /proc/<pid>/…).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its resident memory, KiB (see [`rss_kib`]).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Polls `path` until it answers 2xx; panics after the launch's
    /// patience, as a server that never comes up fails whatever started it.
    async fn wait_for(&self, path: &str) {
        let deadline = Instant::now() + self.patience;
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(self.url(path)).await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(POLL).await;
        }
        panic!(
            "the server on port {} never answered {path} within {:?}",
            self.port, self.patience
        );
    }

    pub async fn wait_live(&self) {
        self.wait_for("/live").await;
    }

    pub async fn wait_ready(&self) {
        self.wait_for("/ready").await;
    }

    /// Sends SIGTERM: the graceful shutdown.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill is available");
        assert!(status.success(), "SIGTERM reached the server");
    }

    /// Waits for the process to exit (off the async threads).
    pub async fn wait_exit(mut self) -> ExitStatus {
        tokio::task::spawn_blocking(move || {
            let status = self.child.wait().expect("the child can be waited for");
            (status, self)
        })
        .await
        .expect("waiting for the child did not panic")
        .0
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of a process, KiB (None once it is gone).
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}

/// A private redis-server on a free port, killed on drop.
pub struct PrivateRedis {
    pub child: Child,
    pub port: u16,
}

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A private redis-server without persistence on `port` (e.g. the port
    /// of one just killed: the same server come back, empty).
    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, &["--appendonly", "no"], None)
    }

    /// A private redis-server persisting to an append-only file in `dir`
    /// with `appendfsync` = `fsync` ("always", "everysec" or "no"); started
    /// again with the same port and directory, it reloads that file.
    pub fn start_with_aof(port: u16, dir: &Path, fsync: &str) -> Self {
        Self::spawn(
            port,
            &["--appendonly", "yes", "--appendfsync", fsync],
            Some(dir),
        )
    }

    fn spawn(port: u16, persistence: &[&str], dir: Option<&Path>) -> Self {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(persistence);
        if let Some(dir) = dir {
            command.arg("--dir").arg(dir);
        }
        let child = command
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        Self { child, port }
    }

    /// SIGKILL: no shutdown save, no final fsync; what the AOF holds is what
    /// the fsync policy had written.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Waits until it answers PING.
    pub async fn wait_up(&self) {
        let client = redis::Client::open(self.url()).expect("a valid Redis URL");
        for _ in 0..250 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("private Redis on port {} did not start", self.port);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory for a private server's files, removed on drop.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("regtest-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
