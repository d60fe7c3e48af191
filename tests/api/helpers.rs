//! `spawn_app()`: the real application on 127.0.0.1:0 with its own
//! PostgreSQL database and Redis namespace, plus one method per endpoint.

use std::{collections::BTreeSet, net::SocketAddr, path::Path, sync::Once, time::Duration};

use deadpool_postgres::Pool;
use registrar::{
    auth::Tokens,
    config::{Secret, Settings},
    domain::Role,
    seats::Redis,
    seed::{self, SeedOptions, SeedReport},
    startup::Application,
    store,
};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::kit::{database::Database, namespace::Namespace};

/// Password of every seeded test student.
pub const PASSWORD: &str = "test-password-1";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
/// Test databases are `regtest_<unix seconds>_<random>` (see `kit::database`).
const DATABASE_PREFIX: &str = "regtest";
/// Test Redis namespaces are this and a random suffix; after a run, no key
/// starting with it is left.
pub const NAMESPACE_PREFIX: &str = "t";

pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // TEST_LOG=1 logs at DEBUG; TEST_LOG=warn (or any filter) at that level.
        if let Some(level) = std::env::var_os("TEST_LOG") {
            let level = level.to_string_lossy();
            let settings = registrar::config::LogSettings {
                format: registrar::config::LogFormat::Pretty,
                level: if level == "1" {
                    "debug".into()
                } else {
                    level.into_owned()
                },
                requests: true,
                otlp_endpoint: String::new(),
            };
            registrar::telemetry::init(
                &settings,
                std::io::stdout,
                std::io::IsTerminal::is_terminal(&std::io::stdout()),
            )
            .expect("logging without export always starts");
        }
    });
}

/// Creates an empty database for one test, dropped with the guard.
pub async fn create_database() -> Database {
    Database::create(&admin_database_url(), DATABASE_PREFIX).await
}

/// Settings for a test: the repository's config with `APP_ENV=test`.
pub fn test_settings(database_url: &str) -> Settings {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut settings = Settings::load_from(&dir, "test").expect("test configuration is valid");
    settings.http.port = 0;
    settings.database.url = Secret::new(database_url);
    settings.redis.url = Secret::new(redis_url());
    settings.redis.namespace = format!("{NAMESPACE_PREFIX}{}", Uuid::new_v4().simple());
    settings
}

pub struct TestApp {
    /// The running application's shared state.
    pub state: std::sync::Arc<registrar::state::AppState>,
    /// The app's Redis, for inspecting what it holds.
    pub redis: Redis,
    pub addr: SocketAddr,
    pub base: String,
    /// The metrics listener's address, when `http.metrics_port` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub http: reqwest::Client,
    pub settings: Settings,
    pub db: Pool,
    /// Dropped (with the database) after the server and the pool are gone.
    database: Option<Database>,
    /// Its keys removed after the server is gone (a field, so dropped after
    /// `drop` has stopped the server; also when the test panics).
    _namespace: Namespace,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The application with its own database and namespace, ready (warmed up).
pub async fn spawn_app() -> TestApp {
    let app = spawn_app_with(|_| {}).await;
    app.wait_ready().await;
    app
}

/// Starts the application after `customize` has adjusted its settings.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    init_logging();
    let database = create_database().await;
    let url = database.url.clone();
    let mut settings = test_settings(&url);
    customize(&mut settings);
    let Started {
        state,
        addr,
        metrics_addr,
        shutdown,
        server,
    } = start(&settings).await;
    TestApp {
        state,
        redis: Redis::new(&settings.redis).unwrap(),
        addr,
        base: format!("http://{addr}"),
        metrics_addr,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            // The server closes a kept-alive connection idle for
            // http.header_read_timeout_ms (1 s in config/test.toml); a client
            // that reused one at that moment would see its request reset
            // (a paced test did, 1 run in 3). Give idle connections up first.
            .pool_idle_timeout(settings.http.header_read_timeout() / 2)
            .build()
            .unwrap(),
        db: store::pool(&test_settings(&url).database).unwrap(),
        _namespace: Namespace::named(
            settings.redis.namespace.clone(),
            settings.redis.url.expose(),
        ),
        settings,
        database: Some(database),
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

/// What a started application hands its `TestApp`.
struct Started {
    state: std::sync::Arc<registrar::state::AppState>,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// Triggers its graceful shutdown.
    shutdown: oneshot::Sender<()>,
    /// The task serving it.
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Builds the application from `settings` and serves it until the returned
/// sender fires (or is dropped).
async fn start(settings: &Settings) -> Started {
    let app = Application::build(settings.clone())
        .await
        .expect("the application builds");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let state = app.state();
    let (shutdown, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    Started {
        state,
        addr,
        metrics_addr,
        shutdown,
        server,
    }
}

impl TestApp {
    /// Stops it the way SIGTERM does and waits until it has stopped.
    pub async fn stop(mut self) {
        self.halt().await;
    }

    async fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the server task did not panic")
                .expect("the server stopped cleanly");
        }
    }

    /// Restarts the application as a process restart does: stops it the way
    /// SIGTERM does (stop accepting, let the shards drain for at most
    /// `sync.drain_timeout_ms`, leave the rest in the outbox, close the
    /// pools), then starts a new one on the same database and Redis
    /// namespace. The new one listens on a new port and is not yet ready:
    /// call `wait_ready` (or wait for `/live` while PostgreSQL is away).
    pub async fn restart(&mut self) {
        self.halt().await;
        let started = start(&self.settings).await;
        self.state = started.state;
        self.addr = started.addr;
        self.base = format!("http://{}", started.addr);
        self.metrics_addr = started.metrics_addr;
        self.shutdown = Some(started.shutdown);
        self.server = Some(started.server);
    }
}

/// A second instance of a [`TestApp`]'s application: the same settings,
/// database and Redis namespace, its own port (several writers).
pub struct Sibling {
    pub base: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts a sibling instance; it is not yet ready (see [`Sibling::wait_ready`]).
    pub async fn sibling(&self) -> Sibling {
        let started = start(&self.settings).await;
        Sibling {
            base: format!("http://{}", started.addr),
            shutdown: Some(started.shutdown),
            server: Some(started.server),
        }
    }
}

impl Sibling {
    pub async fn wait_ready(&self) {
        let url = format!("{}/ready", self.base);
        let ready = eventually(Duration::from_secs(15), || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        assert!(ready, "the sibling instance became ready");
    }

    /// Stops it the way SIGTERM does (its leases are handed over after its
    /// shards drained).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the sibling's task did not panic")
                .expect("the sibling stopped cleanly");
        }
    }
}

impl Drop for Sibling {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.db.close();
        drop(self.database.take());
    }
}

/// A seeded catalog: one open semester, sections, students `S0000001..`, an admin.
pub struct Seeded {
    pub report: SeedReport,
    pub admin_token: String,
}

impl TestApp {
    /// Waits until `/ready` answers 200 (scripts loaded, warm-up done).
    pub async fn wait_ready(&self) {
        let ready = eventually(Duration::from_secs(15), || async {
            self.get("/ready", None).await.status() == StatusCode::OK
        })
        .await;
        assert!(ready, "the application did not become ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `path` on the metrics listener (the app must have one).
    pub fn metrics_url(&self, path: &str) -> String {
        let addr = self
            .metrics_addr
            .expect("the app has a metrics listener (http.metrics_port)");
        format!("http://{addr}{path}")
    }

    /// Seeds `students` students and 2 courses × 2 sections of `seats` seats.
    pub async fn seed(&self, students: usize, seats: i32) -> Seeded {
        self.seed_sections(students, 4, seats, 5).await
    }

    /// Seeds `students` students and `sections` sections (one course each)
    /// of `seats` seats and `waitlist` waitlist places.
    pub async fn seed_sections(
        &self,
        students: usize,
        sections: usize,
        seats: i32,
        waitlist: i32,
    ) -> Seeded {
        let report = seed::seed(
            &self.db,
            &SeedOptions {
                students,
                courses: sections,
                sections_per_course: 1,
                seats,
                waitlist,
                password: PASSWORD.into(),
                admin_password: ADMIN_PASSWORD.into(),
            },
            |_, _| {},
        )
        .await
        .expect("seeding works");
        // As the admin API does for a new section: ready in Redis at once.
        self.state
            .registrar
            .ensure_loaded(&report.section_ids)
            .await
            .expect("seeded sections load into Redis");
        wait_access_copied(&self.db, &self.state.redis).await;
        let admin_token = self.login_ok(seed::ADMIN_NUMBER, ADMIN_PASSWORD).await;
        Seeded {
            report,
            admin_token,
        }
    }

    pub async fn login(&self, student_number: &str, password: &str) -> Response {
        self.http
            .post(self.url("/api/v1/auth/login"))
            .json(&serde_json::json!({ "student_number": student_number, "password": password }))
            .send()
            .await
            .expect("request sent")
    }

    /// Logs in and returns the access token.
    pub async fn login_ok(&self, student_number: &str, password: &str) -> String {
        let response = self.login(student_number, password).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "login of {student_number}"
        );
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }

    /// A token for the `i`-th seeded student, and that student's id.
    pub async fn student(&self, i: usize) -> (String, Uuid) {
        let number = seed::student_number(i);
        let token = self.login_ok(&number, PASSWORD).await;
        let db = self.db.get().await.unwrap();
        let (id, _) = store::students::id_by_number(&db, &number)
            .await
            .unwrap()
            .expect("seeded student exists");
        (token, id)
    }

    /// Ids of the seeded students, in student-number order.
    pub async fn student_ids(&self) -> Vec<Uuid> {
        student_ids(&self.db).await
    }

    /// A valid student token without the cost of a login.
    pub fn token_for(&self, student: Uuid) -> String {
        Tokens::new(
            self.settings.auth.jwt_secret.expose().as_bytes(),
            Duration::from_secs(3600),
        )
        .mint(student, Role::Student, true)
    }

    pub async fn register(&self, token: &str, sections: &[Uuid]) -> Response {
        self.post(
            "/api/v1/register",
            Some(token),
            &serde_json::json!({ "section_ids": sections }),
        )
        .await
    }

    pub async fn drop_from(&self, token: &str, section: Uuid) -> Response {
        self.post(
            "/api/v1/register/drop",
            Some(token),
            &serde_json::json!({ "section_id": section }),
        )
        .await
    }

    /// `PATCH /api/v1/admin/sections/{section}` with `body`, as `token`.
    pub async fn patch_section(&self, token: &str, section: Uuid, body: &Value) -> Response {
        self.http
            .patch(self.url(&format!("/api/v1/admin/sections/{section}")))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn wait_persisted(&self, sections: &[Uuid]) {
        wait_persisted(&self.db, &self.redis, sections).await
    }

    pub async fn pg_roster(&self, section: Uuid) -> (BTreeSet<Uuid>, Vec<Uuid>) {
        pg_roster(&self.db, section).await
    }

    pub async fn redis_roster(&self, section: Uuid) -> (BTreeSet<Uuid>, Vec<Uuid>) {
        redis_roster(&self.redis, section).await
    }

    pub async fn assert_converged(&self, section: Uuid) {
        assert_converged(&self.db, &self.redis, section).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    /// POST with a raw body and content type.
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &'static str,
    ) -> Response {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }
}

/// Asserts a problem+json answer with `status` and `code`; returns the body.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

/// Polls `check` every 20 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until PostgreSQL has applied every event Redis issued for these
/// sections and their outboxes are empty.
pub async fn wait_persisted(db: &Pool, redis: &Redis, sections: &[Uuid]) {
    let done = eventually(Duration::from_secs(60), || async {
        let db = db.get().await.unwrap();
        let mut conn = redis.conn();
        for section in sections {
            let keys = redis.section_keys(*section);
            let (seq, pending): (Option<i64>, i64) = redis::pipe()
                .get(&keys.seq)
                .xlen(&keys.outbox)
                .query_async(&mut conn)
                .await
                .unwrap();
            let applied: i64 = db
                .query_one("select last_seq from sections where id = $1", &[section])
                .await
                .unwrap()
                .get(0);
            if seq.unwrap_or(0) != applied || pending != 0 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(done, "PostgreSQL did not catch up with Redis");
}

/// PostgreSQL's roster of a section: enrolled ids, and waitlisted ids by position.
pub async fn pg_roster(db: &Pool, section: Uuid) -> (BTreeSet<Uuid>, Vec<Uuid>) {
    let db = db.get().await.unwrap();
    let enrolled = db
        .query(
            "select student_id from registrations where section_id = $1 and status = 'enrolled'",
            &[&section],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let rows = db
        .query(
            "select student_id, position from waitlist where section_id = $1 order by position",
            &[&section],
        )
        .await
        .unwrap();
    let positions: Vec<i32> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(
        positions,
        (1..=rows.len() as i32).collect::<Vec<_>>(),
        "waitlist positions are contiguous from 1"
    );
    (enrolled, rows.iter().map(|r| r.get(0)).collect())
}

/// Redis's roster of a section, in the same shape.
pub async fn redis_roster(redis: &Redis, section: Uuid) -> (BTreeSet<Uuid>, Vec<Uuid>) {
    let (enrolled, waiting) = redis.roster(section).await.unwrap();
    (enrolled.into_iter().collect(), waiting)
}

/// Asserts Redis and PostgreSQL agree on a section and neither oversells.
pub async fn assert_converged(db: &Pool, redis: &Redis, section: Uuid) {
    let pg = pg_roster(db, section).await;
    let live = redis_roster(redis, section).await;
    assert_eq!(pg.0, live.0, "enrolled sets differ");
    assert_eq!(pg.1, live.1, "waitlists differ");
    let db = db.get().await.unwrap();
    let row = db
        .query_one(
            "select total_seats, enrolled_count, \
                    (select count(*) from waitlist w where w.section_id = s.id \
                        and w.offer_expires_at is not null)::integer \
               from sections s where id = $1",
            &[&section],
        )
        .await
        .unwrap();
    let (total, count, offered): (i32, i32, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        count as usize,
        pg.0.len(),
        "enrolled_count matches the rows"
    );
    assert!(count + offered <= total, "no oversell");
    let counts = redis.live_counts(&[section]).await.unwrap()[0].unwrap();
    assert_eq!(counts.capacity, i64::from(total));
    assert_eq!(
        counts.seats_offered,
        i64::from(offered),
        "offers hold seats"
    );
    assert_eq!(counts.seats_available, i64::from(total - count - offered));
}

/// Waits until Redis holds the access record of every account of `db`:
/// the server copies new accounts as PostgreSQL announces them
/// (src/access.rs), so a student's first request (here usually with a
/// token minted without logging in) finds theirs and needs no PostgreSQL.
pub async fn wait_access_copied(db: &Pool, redis: &Redis) {
    let rows = db
        .get()
        .await
        .unwrap()
        .query("select id from students", &[])
        .await
        .unwrap();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let copied = eventually(Duration::from_secs(20), || async {
        redis
            .has_access_copies(&ids)
            .await
            .is_ok_and(|present| present.iter().all(|p| *p))
    })
    .await;
    assert!(copied, "every account's access record reaches Redis");
}

/// Ids of the students (not the admin) of a database, in student-number order.
pub async fn student_ids(db: &Pool) -> Vec<Uuid> {
    db.get()
        .await
        .unwrap()
        .query(
            "select id from students where role = 'student' order by student_number",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
