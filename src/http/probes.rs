//! Orchestrator probes and the Prometheus scrape endpoint.
//!
//! - `/live`: the process answers; no dependency is consulted.
//! - `/ready`: Redis answers, warm-up is done, Redis is trusted
//!   ([`AppState::registration_gate`], which register, drop and capacity
//!   changes obey too) and the server is not shutting down; else 503.
//! - `/health`: each component with its status and check latency; `degraded`
//!   (still 200) while PostgreSQL is away, because registration runs on Redis.
//!   The component checks are shared for `http.health_cache_ms`
//!   ([`crate::health::DependencyChecks`]).

use std::sync::atomic::Ordering;

use hyper::{header, Response, StatusCode};
use serde::Serialize;

use super::{json, ApiResult};
use crate::{
    health::{self, Components},
    metrics::{DB_POOL_CONNECTIONS, DB_POOL_MAX, DB_POOL_WAITING},
    state::{AppState, NotServing},
};

pub fn live() -> ApiResult {
    json(StatusCode::OK, &serde_json::json!({ "status": "live" }))
}

pub async fn ready(state: &AppState) -> ApiResult {
    if state.is_shutting_down() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not_ready", "reason": "shutting down" }),
        );
    }
    if let Some(task) = state.supervisor.failed() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not_ready", "reason": format!("background task {task} stopped") }),
        );
    }
    if let Err(why) = state.registration_gate() {
        let reason = match why {
            NotServing::WarmingUp => "warming up",
            // Redis may have restarted: no reservation runs until it has
            // been checked against PostgreSQL (src/sync/revalidate.rs).
            NotServing::Revalidating => "revalidating redis",
        };
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not_ready", "reason": reason }),
        );
    }
    let redis = health::redis(
        &state.redis,
        state.settings.redis.response_timeout_ms.duration(),
    )
    .await;
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
struct Queues {
    /// Jobs waiting per persistence shard.
    depths: Vec<usize>,
    total: usize,
}

#[derive(Serialize)]
struct Outbox {
    /// Events in Redis not yet in PostgreSQL (as of the last sweep).
    backlog: u64,
    /// Age of the oldest of them: how far PostgreSQL lags behind.
    oldest_age_seconds: f64,
    /// Seconds since the sweeper last looked (null before its first sweep).
    last_sweep_seconds_ago: Option<f64>,
}

#[derive(Serialize)]
struct Held {
    /// Seats held for waitlisted students by open offers (as of the last
    /// sweep): neither free nor enrolled until accepted, declined or lapsed.
    seats_offered: i64,
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    shutting_down: bool,
    warmed_up: bool,
    components: &'a Components,
    queues: Queues,
    outbox: Outbox,
    held: Held,
}

pub async fn health(state: &AppState) -> ApiResult {
    // Shared for http.health_cache_ms: a flood costs no query each. The
    // queue and outbox figures below are in memory, read fresh every time.
    let components = state
        .dependency_checks
        .components(&state.db, &state.redis)
        .await;
    let (status, code) = match (components.redis.up(), components.postgres.up()) {
        (true, true) => ("ok", StatusCode::OK),
        (true, false) => ("degraded", StatusCode::OK),
        (false, _) => ("down", StatusCode::SERVICE_UNAVAILABLE),
    };
    let depths = state.persistence.depths();
    let now = chrono::Utc::now().timestamp_millis();
    let oldest = state.backlog.oldest_ms.load(Ordering::Relaxed);
    let swept = state.backlog.swept_ms.load(Ordering::Relaxed);
    let seconds_since = |ms: i64| (now - ms).max(0) as f64 / 1000.0;
    json(
        code,
        &Health {
            status,
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: state.started.elapsed().as_secs(),
            shutting_down: state.is_shutting_down(),
            warmed_up: state.is_warmed_up(),
            components: &components,
            queues: Queues {
                total: depths.iter().sum(),
                depths,
            },
            outbox: Outbox {
                backlog: state.backlog.entries.load(Ordering::Relaxed),
                oldest_age_seconds: if oldest == 0 {
                    0.0
                } else {
                    seconds_since(oldest)
                },
                last_sweep_seconds_ago: (swept != 0).then(|| seconds_since(swept)),
            },
            held: Held {
                seats_offered: state.backlog.seats_offered.load(Ordering::Relaxed),
            },
        },
    )
}

pub async fn metrics(state: &AppState) -> ApiResult {
    // registrar_dependency_up and its latency are those of the shared
    // /health checks (one per http.health_cache_ms however many callers):
    // fresh at every scrape even where nothing else asks /health.
    state
        .dependency_checks
        .components(&state.db, &state.redis)
        .await;
    let mut pools = vec![("api", &state.db), ("persistence", &state.sync_db)];
    if state.settings.database.read_url.is_some() {
        pools.push(("read", &state.read_db));
    }
    for (name, pool) in pools {
        let status = pool.status();
        let idle = status.available;
        metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => name, "state" => "idle").set(idle as f64);
        metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => name, "state" => "in_use")
            .set(status.size.saturating_sub(idle) as f64);
        metrics::gauge!(DB_POOL_MAX, "pool" => name).set(status.max_size as f64);
        metrics::gauge!(DB_POOL_WAITING, "pool" => name).set(status.waiting as f64);
    }
    let text = crate::metrics::render(&state.metrics);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(super::Body::from(text))
        .expect("static headers are valid"))
}
