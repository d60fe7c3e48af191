//! Servers run as child processes: a private Redis, and the registrar binary
//! itself for tests that kill or signal it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use registrar::{auth::Tokens, seed, store};
use uuid::Uuid;

use crate::helpers::{
    create_database, free_port, redis_url, student_ids, test_settings, TestDatabase,
};

/// A private redis-server on a free port, killed on drop.
pub struct PrivateRedis {
    pub child: Child,
    pub port: u16,
}

/// A directory for a private server's files, removed on drop.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("regtest-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A private redis-server persisting to an append-only file in `dir`
    /// with `appendfsync` = `fsync` ("always", "everysec" or "no"); started
    /// again with the same port and directory, it reloads that file.
    pub fn start_with_aof(port: u16, dir: &Path, fsync: &str) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", fsync])
            .arg("--dir")
            .arg(dir)
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

    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Waits until it answers PING.
    pub async fn wait_up(&self) {
        let client = redis::Client::open(self.url()).unwrap();
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
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("private Redis on port {} did not start", self.port);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registrar binary serving on a free port; killed on drop.
pub struct ChildServer {
    pub child: Child,
    pub port: u16,
}

impl ChildServer {
    /// Starts `registrar serve` with the test configuration and these
    /// database URL, Redis URL and namespace.
    pub fn start(database_url: &str, redis: Option<&str>, namespace: &str) -> Self {
        Self::start_with_env(database_url, redis, namespace, 0, &[])
    }

    /// [`ChildServer::start`] on `port` (0: a free one) with extra
    /// environment, e.g. `("APP__HTTP__MAX_CONNECTIONS", "50")`.
    pub fn start_with_env(
        database_url: &str,
        redis: Option<&str>,
        namespace: &str,
        port: u16,
        env: &[(&str, &str)],
    ) -> Self {
        let port = if port == 0 { free_port() } else { port };
        let child = Command::new(env!("CARGO_BIN_EXE_registrar"))
            .arg("serve")
            .env("APP_ENV", "test")
            .env(
                "APP_CONFIG_DIR",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
            )
            .env("APP__HTTP__PORT", port.to_string())
            .env("APP__DATABASE__URL", database_url)
            .env(
                "APP__REDIS__URL",
                redis.map_or_else(redis_url, str::to_string),
            )
            .env("APP__REDIS__NAMESPACE", namespace)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("the registrar binary starts");
        Self { child, port }
    }

    /// The process id (for /proc/<pid>/status).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has not exited.
    pub fn child_is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    async fn wait_for(&self, path: &str) {
        for _ in 0..500 {
            if let Ok(r) = reqwest::get(self.url(path)).await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the server on port {} never answered {path}", self.port);
    }

    pub async fn wait_live(&self) {
        self.wait_for("/live").await;
    }

    pub async fn wait_ready(&self) {
        self.wait_for("/ready").await;
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill is available");
        assert!(status.success());
    }

    /// Waits for the process to exit (off the async threads).
    pub async fn wait_exit(mut self) -> ExitStatus {
        tokio::task::spawn_blocking(move || {
            let status = self.child.wait().expect("the child can be waited for");
            (status, self)
        })
        .await
        .unwrap()
        .0
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A migrated, seeded database for child servers.
pub struct Seeded {
    pub database: TestDatabase,
    pub namespace: String,
    pub db: deadpool_postgres::Pool,
    pub tokens: Tokens,
    pub sections: Vec<Uuid>,
    pub students: Vec<Uuid>,
}

pub async fn seeded(students: usize, sections: usize, seats: i32, waitlist: i32) -> Seeded {
    let database = create_database().await;
    let settings = test_settings(&database.url);
    let db = store::pool(&settings.database).unwrap();
    store::migrate::run(&mut db.get().await.unwrap())
        .await
        .unwrap();
    let report = seed::seed(
        &db,
        &seed::SeedOptions {
            students,
            courses: sections,
            sections_per_course: 1,
            seats,
            waitlist,
            password: "unused-password".into(),
            admin_password: "unused-password".into(),
        },
        |_, _| {},
    )
    .await
    .unwrap();
    Seeded {
        students: student_ids(&db).await,
        namespace: settings.redis.namespace.clone(),
        tokens: Tokens::new(
            settings.auth.jwt_secret.expose().as_bytes(),
            Duration::from_secs(3600),
        ),
        database,
        db,
        sections: report.section_ids,
    }
}
