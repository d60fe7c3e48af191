use std::time::Duration;

use futures_util::future::join_all;
use registrar::config::{Millis, Secret};
use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    helpers::{assert_problem, eventually, spawn_app, spawn_app_with},
    kit::{child::PrivateRedis, free_port, proxy::Proxy, via_port},
};

#[tokio::test]
async fn live_ready_and_health_answer_when_everything_is_up() {
    let app = spawn_app().await;

    let live = app.get("/live", None).await;
    let ready = app.get("/ready", None).await;
    let health = app.get("/health", None).await;

    assert_eq!(live.status(), StatusCode::OK);
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(health.status(), StatusCode::OK);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["components"]["redis"]["status"], "up");
    assert_eq!(health["components"]["postgres"]["status"], "up");
    assert!(health["components"]["redis"]["latency_ms"].is_number());
    assert!(health["components"]["postgres"]["latency_ms"].is_number());
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_descriptions_and_request_counts() {
    let app = spawn_app().await;
    app.get("/live", None).await;

    let response = app.get("/metrics", None).await;

    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("# HELP registrar_http_requests_total"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE registrar_http_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains(r#"registrar_http_requests_total{route="/live",method="GET",status="200"}"#),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket{"),
        "{text}"
    );
}

#[tokio::test]
async fn ready_turns_503_when_redis_becomes_unreachable_and_recovers_when_it_returns() {
    let mut redis = PrivateRedis::start();
    let port = redis.port;
    let app =
        spawn_app_with(|s| s.redis.url = Secret::new(format!("redis://127.0.0.1:{port}/0"))).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.get("/ready", None).await.status() == StatusCode::OK
        })
        .await,
        "ready while the private Redis runs"
    );

    redis.child.kill().unwrap();
    redis.child.wait().unwrap();

    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health = app.get("/health", None).await;
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["components"]["redis"]["status"], "down");
    assert_eq!(app.get("/live", None).await.status(), StatusCode::OK);

    let _restarted = PrivateRedis::start_on(port);
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.get("/ready", None).await.status() == StatusCode::OK
        })
        .await,
        "ready again after Redis returned"
    );
}

#[tokio::test]
async fn ready_is_503_when_redis_was_never_reachable() {
    let port = free_port();
    let app =
        spawn_app_with(|s| s.redis.url = Secret::new(format!("redis://127.0.0.1:{port}/0"))).await;

    let ready = app.get("/ready", None).await;

    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
}

#[tokio::test]
async fn health_is_degraded_but_ready_while_postgres_is_unreachable() {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let port = proxy.port;
    let app = spawn_app_with(|s| {
        s.database.url = Secret::new(via_port(s.database.url.expose(), port));
        s.database.connect_timeout_ms = registrar::config::Millis::new(500);
    })
    .await;
    app.wait_ready().await;

    proxy.cut();
    let health = app.get("/health", None).await;
    let ready = app.get("/ready", None).await;

    assert_eq!(health.status(), StatusCode::OK);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["components"]["postgres"]["status"], "down");
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_flood_of_health_requests_shares_one_dependency_check() {
    // An interval far longer than the test: every request below falls in it.
    let app = spawn_app_with(|s| s.http.health_cache_ms = Millis::new(600_000)).await;
    app.wait_ready().await;
    let before = app.state.dependency_checks.runs();

    let answers = join_all((0..100).map(|_| app.get("/health", None))).await;

    for answer in answers {
        assert_eq!(answer.status(), StatusCode::OK);
        let health: Value = answer.json().await.unwrap();
        assert_eq!(health["components"]["postgres"]["status"], "up");
    }
    assert_eq!(
        app.state.dependency_checks.runs() - before,
        1,
        "100 concurrent /health requests ran one PostgreSQL and Redis check"
    );
}

#[tokio::test]
async fn health_reports_a_dependency_failure_once_its_cached_check_expires() {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let port = proxy.port;
    let app = spawn_app_with(|s| {
        s.database.url = Secret::new(via_port(s.database.url.expose(), port));
        s.database.connect_timeout_ms = Millis::new(500);
        s.http.health_cache_ms = Millis::new(5_000);
    })
    .await;
    app.wait_ready().await;
    let first: Value = app.get("/health", None).await.json().await.unwrap();
    assert_eq!(first["components"]["postgres"]["status"], "up");

    proxy.cut();
    let cached: Value = app.get("/health", None).await.json().await.unwrap();
    let checks_while_cached = app.state.dependency_checks.runs();

    assert_eq!(
        cached["components"]["postgres"]["status"], "up",
        "the check of a moment ago is reused"
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            let h: Value = app.get("/health", None).await.json().await.unwrap();
            h["components"]["postgres"]["status"] == "down"
        })
        .await,
        "a fresh check after the interval sees PostgreSQL away"
    );
    assert!(app.state.dependency_checks.runs() > checks_while_cached);
}

#[tokio::test]
async fn with_a_metrics_port_metrics_and_health_are_served_there_and_not_on_the_public_port() {
    let app = spawn_app_with(|s| s.http.metrics_port = Some(0)).await;
    app.wait_ready().await;
    let metrics_addr = app.metrics_addr.expect("a metrics listener");
    assert_ne!(metrics_addr.port(), app.addr.port());
    assert!(
        metrics_addr.ip().is_loopback(),
        "http.metrics_host's default"
    );

    let metrics = app
        .http
        .get(app.metrics_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("# HELP registrar_http_requests_total"));
    let health = app
        .http
        .get(app.metrics_url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["components"]["postgres"]["status"], "up");
    for path in ["/live", "/ready"] {
        let on_metrics = app.http.get(app.metrics_url(path)).send().await.unwrap();
        assert_eq!(
            on_metrics.status(),
            StatusCode::OK,
            "{path} on the metrics port"
        );
        assert_eq!(
            app.get(path, None).await.status(),
            StatusCode::OK,
            "{path} on the public port"
        );
    }

    for path in ["/metrics", "/health"] {
        assert_problem(
            app.get(path, None).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        let head = app.http.head(app.url(path)).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::NOT_FOUND, "HEAD {path}");
        let post = app.http.post(app.url(path)).send().await.unwrap();
        assert_eq!(
            post.status(),
            StatusCode::NOT_FOUND,
            "POST {path}: no route, not 405"
        );
    }
    // The API is not reachable through the metrics listener either.
    let api = app
        .http
        .get(app.metrics_url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_problem(api, StatusCode::NOT_FOUND, "not_found").await;
}
