//! Orchestrator probes and the Prometheus scrape endpoint.
//!
//! - `/live`: the process answers; no dependency is consulted.
//! - `/ready`: Redis answers and the server is not shutting down; else 503.
//! - `/health`: each component with its status and check latency; `degraded`
//!   (still 200) while PostgreSQL is away, because registration runs on Redis.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use serde::Serialize;

use super::{json, ApiResult};
use crate::{
    metrics::{DB_POOL_CONNECTIONS, DEPENDENCY_LATENCY, DEPENDENCY_UP},
    startup::AppState,
};

pub fn live() -> ApiResult {
    json(StatusCode::OK, &serde_json::json!({ "status": "live" }))
}

#[derive(Serialize)]
struct Check {
    status: &'static str,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Check {
    fn up(&self) -> bool {
        self.status == "up"
    }
}

async fn timed<F, E>(name: &'static str, deadline: Duration, check: F) -> Check
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let outcome = tokio::time::timeout(deadline, check).await;
    let elapsed = started.elapsed();
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} ms", deadline.as_millis())),
    };
    metrics::histogram!(DEPENDENCY_LATENCY, "dependency" => name).record(elapsed.as_secs_f64());
    metrics::gauge!(DEPENDENCY_UP, "dependency" => name).set(if error.is_none() {
        1.0
    } else {
        0.0
    });
    Check {
        status: if error.is_none() { "up" } else { "down" },
        latency_ms: (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        error,
    }
}

async fn check_redis(state: &AppState) -> Check {
    let deadline = Duration::from_millis(state.settings.redis.response_timeout_ms);
    timed("redis", deadline, state.redis.ping()).await
}

async fn check_postgres(state: &AppState) -> Check {
    let deadline = Duration::from_millis(state.settings.database.connect_timeout_ms);
    timed("postgres", deadline, async {
        let db = state.db.get().await.map_err(|e| e.to_string())?;
        db.simple_query("select 1")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    })
    .await
}

pub async fn ready(state: &AppState) -> ApiResult {
    if state.is_shutting_down() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not_ready", "reason": "shutting down" }),
        );
    }
    let redis = check_redis(state).await;
    if redis.up() {
        json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not_ready", "reason": "redis unreachable", "redis": redis }),
        )
    }
}

#[derive(Serialize)]
struct Components {
    redis: Check,
    postgres: Check,
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    shutting_down: bool,
    components: Components,
}

pub async fn health(state: &AppState) -> ApiResult {
    let (redis, postgres) = tokio::join!(check_redis(state), check_postgres(state));
    let (status, code) = match (redis.up(), postgres.up()) {
        (true, true) => ("ok", StatusCode::OK),
        (true, false) => ("degraded", StatusCode::OK),
        (false, _) => ("down", StatusCode::SERVICE_UNAVAILABLE),
    };
    json(
        code,
        &Health {
            status,
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: state.started.elapsed().as_secs(),
            shutting_down: state.is_shutting_down(),
            components: Components { redis, postgres },
        },
    )
}

pub fn metrics(state: &AppState) -> ApiResult {
    let pool = state.db.status();
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "size").set(pool.size as f64);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "available").set(pool.available as f64);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "waiting").set(pool.waiting as f64);
    let text = state.metrics.render();
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(Full::new(Bytes::from(text)))
        .expect("static headers are valid"))
}
