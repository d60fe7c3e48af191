//! Dependency faults: answers stay prompt and honest while a dependency is
//! away, and the service recovers by itself when it returns.

use std::time::{Duration, Instant};

use registrar::config::Secret;
use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    helpers::{eventually, spawn_app_with},
    kit::child::PrivateRedis,
};

#[tokio::test]
async fn with_redis_down_register_answers_503_promptly_and_recovers_when_it_returns() {
    let mut redis = PrivateRedis::start();
    redis.wait_up().await;
    let port = redis.port;
    let app =
        spawn_app_with(|s| s.redis.url = Secret::new(format!("redis://127.0.0.1:{port}/0"))).await;
    app.wait_ready().await;
    let seeded = app.seed_sections(2, 1, 5, 0).await;
    let section = seeded.report.section_ids[0];
    let students = app.student_ids().await;

    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    let started = Instant::now();
    let down = app.register(&app.token_for(students[0]), &[section]).await;
    let took = started.elapsed();
    let retry_after = down.headers().get("retry-after").cloned();
    let body: Value = down.json().await.unwrap();

    assert_eq!(body["status"], 503, "{body}");
    assert_eq!(body["code"], "redis_unavailable");
    assert!(retry_after.is_some(), "503 carries Retry-After");
    assert!(
        took < Duration::from_secs(5),
        "answered within the Redis timeouts, not hanging ({took:?})"
    );

    let _back = PrivateRedis::start_on(port);
    // Redis restarted empty: the section is reloaded from PostgreSQL on demand.
    let recovered = eventually(Duration::from_secs(15), || async {
        let response = app.register(&app.token_for(students[1]), &[section]).await;
        if response.status() != StatusCode::OK {
            return false;
        }
        let body: Value = response.json().await.unwrap();
        body["results"][0]["status"] == "enrolled"
    })
    .await;
    assert!(recovered, "registration works again without a restart");
    app.wait_persisted(&[section]).await;
    app.assert_converged(section).await;
}
