//! Abuse controls: per-student and per-address token buckets in Redis
//! (shared by instances), the login bucket and the failed-login back-off.
//! Every refusal is 429 problem+json with Retry-After and changes nothing.

use std::time::Duration;

use registrar::{config::Settings, startup::Application};
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::helpers::{assert_problem, spawn_app_with, TestApp, PASSWORD};

/// Limits small enough to reach in a test, and slow to refill, so a bucket
/// does not refill between two requests of a test on a busy machine.
fn small_limits(s: &mut Settings) {
    let r = &mut s.rate_limit;
    r.enabled = true;
    r.student_per_second = 0.1;
    r.student_burst = 3;
    r.address_per_second = 1000.0;
    r.address_burst = 1000;
    r.login_per_second = 1000.0;
    r.login_burst = 1000;
    // The tests wait out Retry-After on a kept-alive connection; the test
    // configuration's 1 s header timeout would close it mid-wait.
    s.http.header_read_timeout_ms = 10_000;
}

fn retry_after(response: &Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .expect("a 429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds")
}

async fn limited(response: Response, code: &str) -> u64 {
    let wait = retry_after(&response);
    assert!(wait >= 1, "Retry-After is at least one second");
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS, code).await;
    wait
}

async fn ready_app(customize: impl FnOnce(&mut Settings)) -> TestApp {
    let app = spawn_app_with(customize).await;
    app.wait_ready().await;
    app
}

#[tokio::test]
async fn one_student_over_the_limit_gets_429_and_changes_nothing_while_others_go_on() {
    let app = ready_app(small_limits).await;
    let seeded = app.seed_sections(2, 2, 5, 0).await;
    let [first, second] = [seeded.report.section_ids[0], seeded.report.section_ids[1]];
    let students = app.student_ids().await;
    let (flooder, other) = (app.token_for(students[0]), app.token_for(students[1]));

    for _ in 0..3 {
        assert_eq!(
            app.get("/api/v1/semesters", Some(&flooder)).await.status(),
            StatusCode::OK
        );
    }
    let refused = app.register(&flooder, &[first]).await;
    let wait = limited(refused, "rate_limited").await;
    assert!(
        wait <= 10,
        "one request refills in 10 s at 0.1/s, so the wait is at most that ({wait} s)"
    );
    let (enrolled, waiting) = app.redis_roster(first).await;
    assert!(
        !enrolled.contains(&students[0]) && waiting.is_empty(),
        "a refused registration reserved nothing"
    );

    let answered = app.register(&other, &[second]).await;
    assert_eq!(
        answered.status(),
        StatusCode::OK,
        "another student is not limited"
    );
    let body: Value = answered.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], "enrolled");
    // The recorder is shared by every test in this process: count, not equality.
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"registrar_rate_limited_total{scope="student"} "#))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        counted.is_some_and(|n| n >= 1.0),
        "the refusal is counted by scope: {counted:?}"
    );
}

#[tokio::test]
async fn a_refused_request_may_be_retried_after_retry_after() {
    let app = ready_app(|s| {
        small_limits(s);
        // One request per second: Retry-After is one second.
        s.rate_limit.student_per_second = 1.0;
        s.rate_limit.student_burst = 1;
    })
    .await;
    app.seed_sections(1, 1, 5, 0).await;
    let token = app.token_for(app.student_ids().await[0]);

    assert_eq!(
        app.get("/api/v1/semesters", Some(&token)).await.status(),
        StatusCode::OK
    );
    // Refused requests are not charged, so hammering does not push the
    // next allowed time further out.
    let mut wait = 0;
    for _ in 0..5 {
        let response = app.get("/api/v1/semesters", Some(&token)).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            wait = limited(response, "rate_limited").await;
        }
    }
    assert_eq!(wait, 1, "the bucket refills one request per second");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(
        app.get("/api/v1/semesters", Some(&token)).await.status(),
        StatusCode::OK,
        "waiting Retry-After is enough"
    );
}

#[tokio::test]
async fn the_address_bucket_limits_requests_with_and_without_tokens_per_client() {
    let app = ready_app(|s| {
        small_limits(s);
        s.rate_limit.address_per_second = 0.1;
        s.rate_limit.address_burst = 2;
        s.rate_limit.client_ip_header = "x-forwarded-for".into();
    })
    .await;
    app.seed_sections(1, 1, 5, 0).await;
    let get = |client: &'static str, token: Option<String>| {
        let mut request = app
            .http
            .get(app.url("/api/v1/semesters"))
            // The proxy appends the client it saw: the last entry counts,
            // whatever the client wrote in front of it.
            .header("x-forwarded-for", format!("203.0.113.99, {client}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap() }
    };

    assert_eq!(
        get("198.51.100.1", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let token = app.token_for(app.student_ids().await[0]);
    assert_eq!(
        get("198.51.100.1", Some(token.clone())).await.status(),
        StatusCode::OK
    );
    limited(
        get("198.51.100.1", Some(token.clone())).await,
        "rate_limited",
    )
    .await;
    limited(get("198.51.100.1", None).await, "rate_limited").await;
    assert_eq!(
        get("198.51.100.2", Some(token)).await.status(),
        StatusCode::OK,
        "another client address has its own bucket"
    );
    // Probes are never limited: orchestrators must always get an answer.
    for _ in 0..5 {
        assert_eq!(app.get("/live", None).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn the_buckets_live_in_redis_so_two_instances_share_them() {
    let first = ready_app(small_limits).await;
    first.seed_sections(1, 1, 5, 0).await;
    // A second instance on the same database and Redis namespace.
    let second = Application::build(first.settings.clone()).await.unwrap();
    let second_addr = second.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(second.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let token = first.token_for(first.student_ids().await[0]);
    let via = |base: String| {
        let request = first
            .http
            .get(format!("{base}/api/v1/semesters"))
            .bearer_auth(&token);
        async move { request.send().await.unwrap() }
    };
    let second_base = format!("http://{second_addr}");

    assert_eq!(via(first.base.clone()).await.status(), StatusCode::OK);
    assert_eq!(via(second_base.clone()).await.status(), StatusCode::OK);
    assert_eq!(via(first.base.clone()).await.status(), StatusCode::OK);
    limited(via(second_base).await, "rate_limited").await;
    limited(via(first.base.clone()).await, "rate_limited").await;

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn logins_from_one_address_have_their_own_stricter_bucket() {
    let app = ready_app(|s| {
        small_limits(s);
        s.rate_limit.login_per_second = 0.1;
        s.rate_limit.login_burst = 3;
    })
    .await;
    // Seeding logs the admin in: the first of the three logins allowed.
    app.seed_sections(3, 1, 5, 0).await;
    let number = registrar::seed::student_number;

    assert_eq!(
        app.login(&number(1), PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login(&number(2), PASSWORD).await.status(),
        StatusCode::OK
    );
    limited(app.login(&number(3), PASSWORD).await, "rate_limited").await;
    // The other routes of the same address are not affected.
    let token = app.token_for(app.student_ids().await[0]);
    assert_eq!(
        app.get("/api/v1/semesters", Some(&token)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn login_attempts_lock_the_account_for_the_address_with_growing_waits_and_a_success_clears_them(
) {
    let app = ready_app(|s| {
        small_limits(s);
        s.rate_limit.login_free_failures = 2;
        s.rate_limit.login_backoff_base_ms = 1000;
        s.rate_limit.login_backoff_max_ms = 60_000;
    })
    .await;
    app.seed_sections(2, 1, 5, 0).await;
    let number = registrar::seed::student_number(1);

    for _ in 0..2 {
        assert_problem(
            app.login(&number, "wrong password").await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
    }
    // The second attempt used the last free one and locked the account for
    // this address for one second: even the right password is not checked.
    let wait = limited(app.login(&number, PASSWORD).await, "login_backoff").await;
    assert_eq!(wait, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_problem(
        app.login(&number, "wrong password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let wait = limited(app.login(&number, "wrong password").await, "login_backoff").await;
    assert_eq!(wait, 2, "the next lock is twice as long");
    // Other accounts are untouched.
    assert_eq!(
        app.login(&registrar::seed::student_number(2), PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );

    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(app.login(&number, PASSWORD).await.status(), StatusCode::OK);
    // The success cleared the count: the first attempt is free again.
    assert_problem(
        app.login(&number, "wrong password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_eq!(app.login(&number, PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_accounts_are_locked_exactly_like_known_ones() {
    let app = ready_app(|s| {
        small_limits(s);
        s.rate_limit.login_free_failures = 2;
        s.rate_limit.login_backoff_base_ms = 30_000;
    })
    .await;
    app.seed_sections(1, 1, 5, 0).await;
    let known = registrar::seed::student_number(1);
    let unknown = "S9999999";

    let mut answers = Vec::new();
    for number in [known.as_str(), unknown] {
        let mut statuses = Vec::new();
        for _ in 0..2 {
            statuses.push(app.login(number, "wrong password").await.status());
        }
        let third = app.login(number, "wrong password").await;
        statuses.push(third.status());
        let wait = limited(third, "login_backoff").await;
        assert!(
            (25..=30).contains(&wait),
            "locked for the base lock ({wait} s)"
        );
        answers.push(statuses);
    }
    assert_eq!(
        answers[0], answers[1],
        "the answers do not tell a known account from an unknown one"
    );
}

/// A login from `client`, as the trusted proxy reports it.
async fn login_from(app: &TestApp, client: &str, number: &str, password: &str) -> Response {
    app.http
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", client)
        .json(&serde_json::json!({ "student_number": number, "password": password }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn parallel_guesses_released_at_once_get_only_the_free_attempts_evaluated() {
    const FREE: u32 = 5;
    const GUESSES: usize = 20;
    let app = ready_app(|s| {
        small_limits(s);
        s.rate_limit.login_free_failures = FREE;
        s.rate_limit.login_backoff_base_ms = 60_000;
        // Enough hashing slots that no guess waits for another to finish.
        s.auth.max_concurrent_hashes = GUESSES;
    })
    .await;
    app.seed_sections(1, 1, 5, 0).await;
    let number = registrar::seed::student_number(1);
    // One connection per guess, opened before the barrier, so all of them
    // reach the server within the same moment.
    let clients: Vec<reqwest::Client> = (0..GUESSES).map(|_| reqwest::Client::new()).collect();
    for client in &clients {
        let live = client.get(app.url("/live")).send().await.unwrap();
        assert_eq!(live.status(), StatusCode::OK);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(GUESSES));
    let guesses = clients.into_iter().enumerate().map(|(i, client)| {
        let barrier = barrier.clone();
        let url = app.url("/api/v1/auth/login");
        let body =
            serde_json::json!({ "student_number": number, "password": format!("guess {i}") });
        tokio::spawn(async move {
            barrier.wait().await;
            client.post(url).json(&body).send().await.unwrap().status()
        })
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(guesses)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let evaluated = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        (evaluated, refused),
        (FREE as usize, GUESSES - FREE as usize),
        "only the free attempts had their password checked: {statuses:?}"
    );
    // The lock the fifth one started holds for the right password too.
    limited(app.login(&number, PASSWORD).await, "login_backoff").await;
}

#[tokio::test]
async fn an_attacker_cannot_lock_the_owner_out_and_many_addresses_meet_the_account_ceiling() {
    let app = ready_app(|s| {
        small_limits(s);
        s.rate_limit.client_ip_header = "x-forwarded-for".into();
        s.rate_limit.login_free_failures = 2;
        s.rate_limit.login_backoff_base_ms = 60_000;
        s.rate_limit.login_account_burst = 6;
        s.rate_limit.login_account_per_hour = 1.0;
    })
    .await;
    app.seed_sections(2, 1, 5, 0).await;
    let number = registrar::seed::student_number(1);
    let (owner, attacker) = ("198.51.100.10", "203.0.113.1");

    // The owner has logged in from their address before.
    let first = login_from(&app, owner, &number, PASSWORD).await;
    assert_eq!(first.status(), StatusCode::OK);
    for _ in 0..2 {
        assert_problem(
            login_from(&app, attacker, &number, "guess").await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
    }
    limited(
        login_from(&app, attacker, &number, PASSWORD).await,
        "login_backoff",
    )
    .await;
    // The lock is the attacker's address's only.
    let owner_login = login_from(&app, owner, &number, PASSWORD).await;
    assert_eq!(owner_login.status(), StatusCode::OK);

    // More addresses: the account's ceiling (6 attempts; the owner's
    // successes from a known address took none) closes the account to
    // every address it has not been used from.
    for i in 2..=5 {
        let answer = login_from(&app, &format!("203.0.113.{i}"), &number, "guess").await;
        assert_problem(answer, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    let closed = login_from(&app, "203.0.113.6", &number, PASSWORD).await;
    let wait = limited(closed, "login_backoff").await;
    assert!(wait > 60, "one attempt an hour refills ({wait} s)");
    // ...but not to the owner's known address.
    let owner_login = login_from(&app, owner, &number, PASSWORD).await;
    assert_eq!(owner_login.status(), StatusCode::OK);
    // Another account is untouched.
    let other = login_from(
        &app,
        "203.0.113.7",
        &registrar::seed::student_number(2),
        PASSWORD,
    )
    .await;
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test]
async fn with_redis_away_the_limits_let_requests_through_instead_of_failing_them() {
    let mut redis = crate::kit::child::PrivateRedis::start();
    redis.wait_up().await;
    let port = redis.port;
    let app = ready_app(|s| {
        small_limits(s);
        s.redis.url = registrar::config::Secret::new(format!("redis://127.0.0.1:{port}/0"));
    })
    .await;
    app.seed_sections(1, 1, 5, 0).await;
    let token = app.token_for(app.student_ids().await[0]);

    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    // More requests than the student's burst: with the buckets out of
    // reach, the catalog (PostgreSQL only) keeps answering.
    for _ in 0..5 {
        assert_eq!(
            app.get("/api/v1/semesters", Some(&token)).await.status(),
            StatusCode::OK
        );
    }
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("registrar_rate_limit_errors_total ") && !l.ends_with(" 0")),
        "the unchecked requests are counted"
    );
}
