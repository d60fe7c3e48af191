//! The web page (`GET /app`, issue 16 item 4) in a real browser: headless
//! Chromium driven over WebDriver by chromedriver (Debian packages chromium
//! and chromium-driver; `bash scripts/services.sh --with-binaries` installs
//! them). A student logs in, registers, sees the result, and sees a live
//! update caused by someone else (a promotion from the waitlist); an admin
//! sees the operator view. With `SCREENSHOT_DIR` set the test writes the
//! screenshots the README shows (docs/img/).

use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, ADMIN_PASSWORD, PASSWORD};
use registrar::seed;

/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session, both ended on drop.
struct Browser {
    driver: tokio::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: std::path::PathBuf,
}

impl Browser {
    async fn start() -> Self {
        let port = crate::kit::free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian package chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let up = crate::helpers::eventually(Duration::from_secs(20), || async {
            http.get(format!("{base}/status"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        assert!(up, "chromedriver answers");
        let profile = std::env::temp_dir().join(format!("registrar-page-{}", uuid::Uuid::now_v7()));
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--no-first-run",
                             format!("--user-data-dir={}", profile.display())],
                },
            }}}))
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a browser session: {created}"))
            .to_string();
        let browser = Self {
            driver,
            base,
            session,
            http,
            profile,
        };
        browser
            .command(
                reqwest::Method::POST,
                "window/rect",
                json!({"width": 1200, "height": 860}),
            )
            .await;
        browser
    }

    /// Ends the browser session: chromedriver quits the browser.
    async fn close(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let mut request = self.http.request(method.clone(), url);
        if method != reqwest::Method::GET {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "url", json!({ "url": url }))
            .await;
    }

    /// The element `css` selects, if there is one now.
    async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .command(
                reqwest::Method::POST,
                "element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().map(str::to_string)
    }

    async fn text_of(&self, css: &str) -> Option<String> {
        let element = self.find(css).await?;
        let text = self
            .command(
                reqwest::Method::GET,
                &format!("element/{element}/text"),
                Value::Null,
            )
            .await;
        text.as_str().map(str::to_string)
    }

    /// Waits until the text of `css` satisfies `wanted`; returns it.
    async fn wait_text(
        &self,
        css: &str,
        within: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(text) = self.text_of(css).await {
                if wanted(&text) {
                    return Some(text);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await.unwrap_or_else(|| panic!("{css}"));
        self.command(
            reqwest::Method::POST,
            &format!("element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await.unwrap_or_else(|| panic!("{css}"));
        self.command(
            reqwest::Method::POST,
            &format!("element/{element}/click"),
            json!({}),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("SCREENSHOT_DIR") else {
            return;
        };
        let png = self
            .command(reqwest::Method::GET, "screenshot", Value::Null)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a screenshot"))
            .unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }

    async fn log_in(&self, app_url: &str, number: &str, password: &str) {
        self.goto(app_url).await;
        self.type_into("#student-number", number).await;
        self.type_into("#password", password).await;
        self.click("#login").await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killing chromedriver leaves its browser running (re-parented to
        // init): end the browser first. A test that finished closed the
        // session already; after a panic, the browser of this profile
        // (unique to it) is killed, and its helpers exit with it.
        let _ = std::process::Command::new("pkill")
            .arg("-f")
            .arg(format!("user-data-dir={}", self.profile.display()))
            .status();
        let _ = self.driver.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_logs_in_registers_and_sees_a_promotion_arrive_live_in_a_real_browser() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(2, 2, 1, 5).await;
    let (full, open) = (seeded.report.section_ids[0], seeded.report.section_ids[1]);
    // Someone else holds the only seat of the first section.
    let (other, _) = app.student(2).await;
    assert_eq!(app.register(&other, &[full]).await.status(), StatusCode::OK);

    let browser = Browser::start().await;
    browser
        .log_in(&app.url("/app"), &seed::student_number(1), PASSWORD)
        .await;
    let live = browser
        .wait_text("#live-state", Duration::from_secs(20), |t| t == "live")
        .await;
    assert!(live.is_some(), "the page follows the student's stream");
    let row = |section: uuid::Uuid, what: &str| format!("#{what} tr[data-section=\"{section}\"]");
    let seats = browser
        .wait_text(
            &format!("{} td.seats", row(full, "sections")),
            Duration::from_secs(10),
            |t| t == "0 / 1",
        )
        .await;
    assert!(seats.is_some(), "the catalogue shows the taken seat");

    // Register: the answer, then the standing from the live stream.
    browser
        .click(&format!("{} button.register", row(full, "sections")))
        .await;
    let said = browser
        .wait_text("#message", Duration::from_secs(10), |t| {
            t.starts_with("Waitlisted")
        })
        .await;
    assert!(said.is_some(), "the answer is shown");
    let waiting = browser
        .wait_text(
            &format!("{} td.status", row(full, "mine")),
            Duration::from_secs(10),
            |t| t == "waitlisted, position 1",
        )
        .await;
    assert!(waiting.is_some(), "the stream shows the waitlist place");
    browser
        .click(&format!("{} button.register", row(open, "sections")))
        .await;
    let enrolled = browser
        .wait_text(
            &format!("{} td.status", row(open, "mine")),
            Duration::from_secs(10),
            |t| t == "enrolled",
        )
        .await;
    assert!(enrolled.is_some(), "the stream shows the enrolment");

    // The other student drops: the page shows the promotion by itself.
    assert_eq!(app.drop_from(&other, full).await.status(), StatusCode::OK);
    let promoted = browser
        .wait_text(
            &format!("{} td.status", row(full, "mine")),
            Duration::from_secs(10),
            |t| t == "enrolled",
        )
        .await;
    assert!(promoted.is_some(), "the promotion arrives without a reload");
    browser
        .wait_text(
            &format!("{} td.seats", row(full, "sections")),
            Duration::from_secs(10),
            |t| t == "0 / 1",
        )
        .await;
    browser.screenshot("student.png").await;

    // The operator view, for an admin.
    browser.click("#logout").await;
    browser
        .log_in(&app.url("/app"), seed::ADMIN_NUMBER, ADMIN_PASSWORD)
        .await;
    let ops = browser
        .wait_text("#ops-state", Duration::from_secs(20), |t| t == "live")
        .await;
    assert!(ops.is_some(), "the operator view reads the metrics");
    let writers = browser
        .wait_text("#ops-writers tbody", Duration::from_secs(10), |t| {
            !t.is_empty()
        })
        .await;
    assert!(writers.is_some(), "the operator view lists the writers");
    let rate = browser
        .wait_text("#ops-rate", Duration::from_secs(10), |t| t != "–")
        .await;
    assert!(rate.is_some(), "a registration rate after two readings");
    browser.screenshot("operator.png").await;
    browser.close().await;
}

#[tokio::test]
async fn the_page_is_served_with_its_own_policy_and_validators() {
    let app = spawn_app().await;
    let page = app.get("/app", None).await;
    assert_eq!(page.status(), StatusCode::OK);
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"));
    let etag = page.headers()["etag"].clone();
    assert!(page.text().await.unwrap().contains("/app/app.js"));
    for (path, kind) in [
        ("/app/app.js", "text/javascript"),
        ("/app/app.css", "text/css"),
    ] {
        let asset = app.get(path, None).await;
        assert_eq!(asset.status(), StatusCode::OK, "{path}");
        assert!(asset.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
    }
    let again = app
        .http
        .get(app.url("/app"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
}
