//! Prometheus metrics: the recorder, the description of every metric, and
//! the names used across the code (one place, so dashboards and code agree).

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "http_requests_in_flight";
pub const HTTP_CONNECTIONS: &str = "http_open_connections";
pub const DEPENDENCY_UP: &str = "dependency_up";
pub const DEPENDENCY_LATENCY: &str = "dependency_check_duration_seconds";
pub const LOGINS: &str = "auth_logins_total";
pub const DB_POOL_CONNECTIONS: &str = "db_pool_connections";

/// Latency buckets from 100 µs to 10 s: the hot path answers in well under a
/// millisecond, the slow tail (timeouts) is seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle; later calls
/// (several apps in one test binary) share it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("latency buckets are non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status code."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time from request head received to response produced, by route, method and status."
    );
    describe_gauge!(HTTP_IN_FLIGHT, "HTTP requests being handled right now.");
    describe_gauge!(HTTP_CONNECTIONS, "Client connections open right now.");
    describe_gauge!(
        DEPENDENCY_UP,
        "1 when the last check of the dependency (redis, postgres) succeeded, else 0."
    );
    describe_histogram!(
        DEPENDENCY_LATENCY,
        Unit::Seconds,
        "Round-trip time of the readiness/health check of each dependency."
    );
    describe_counter!(
        LOGINS,
        "Login attempts by outcome (success, invalid, error)."
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "PostgreSQL pool connections by state (size, available, waiting)."
    );
}
