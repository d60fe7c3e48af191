//! Prometheus metrics: the recorder, the description of every metric, and
//! the names used across the code (one place, so dashboards and code agree).

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "http_requests_in_flight";
pub const HTTP_CONNECTIONS: &str = "http_open_connections";
pub const HTTP_CONNECTIONS_REFUSED: &str = "http_connections_refused_total";
pub const DEPENDENCY_UP: &str = "dependency_up";
pub const DEPENDENCY_LATENCY: &str = "dependency_check_duration_seconds";
pub const LOGINS: &str = "auth_logins_total";
pub const DB_POOL_CONNECTIONS: &str = "db_pool_connections";
pub const REGISTRATIONS: &str = "registrations_total";
pub const DROPS: &str = "drops_total";
pub const SCRIPT_DURATION: &str = "redis_script_duration_seconds";
pub const QUEUE_DEPTH: &str = "persistence_queue_depth";
pub const QUEUE_FULL: &str = "persistence_queue_full_total";
pub const PERSIST_LAG: &str = "persistence_lag_seconds";
pub const BATCH_SIZE: &str = "persistence_batch_size";
pub const EVENTS_APPLIED: &str = "persistence_events_applied_total";
pub const WRITE_RETRIES: &str = "persistence_write_retries_total";
pub const VERSION_CONFLICTS: &str = "persistence_version_conflicts_total";
pub const SEQUENCE_CONFLICTS: &str = "persistence_sequence_conflicts_total";
pub const REDIS_REVALIDATIONS: &str = "redis_revalidations_total";
pub const COMPENSATIONS: &str = "compensations_total";
pub const DEAD_LETTERS: &str = "dead_letters_total";
pub const OUTBOX_BACKLOG: &str = "outbox_backlog";
pub const OUTBOX_OLDEST_AGE: &str = "outbox_oldest_age_seconds";
pub const SWEEPER_REQUEUED: &str = "sweeper_requeued_total";
pub const SECTIONS_LOADED: &str = "warmup_sections_loaded_total";
pub const RECONCILE_DRIFT: &str = "reconcile_drift_sections";
pub const IDEMPOTENT_REPLAYS: &str = "idempotent_replays_total";
pub const RATE_LIMITED: &str = "rate_limited_total";
pub const RATE_LIMIT_ERRORS: &str = "rate_limit_errors_total";
pub const LOGIN_LOCKS: &str = "auth_login_locks_total";
pub const ACCESS_REFRESHES: &str = "auth_access_refreshes_total";
pub const TOKENS_REVOKED: &str = "auth_tokens_refused_total";
pub const ACCESS_UNCHECKED: &str = "auth_access_unchecked_total";
pub const TASK_FAILURES: &str = "background_task_failures_total";
pub const QUEUE_CLOSED: &str = "persistence_queue_closed_total";
pub const PARTITIONS_OWNED: &str = "persistence_partitions_owned";
pub const UNOWNED_SKIPPED: &str = "persistence_unowned_events_total";
pub const REPLICATION_UNCONFIRMED: &str = "redis_replication_unconfirmed_total";

/// Latency buckets from 100 µs to 10 s: the hot path answers in well under a
/// millisecond, the slow tail (timeouts) is seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often recorded histogram samples are folded into their buckets.
/// Without it the samples pile up until the next scrape: a soak benchmark
/// with nobody scraping grew ~1.2 MB/s at 65k requests/s (BENCHMARKS.md).
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds pending histogram samples periodically, whether or not anyone
/// scrapes `/metrics`. Runs until the process ends.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

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
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "Connections refused at accept because their client address (an IPv6 /64 counts as one) already held http.max_connections_per_address."
    );
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
    describe_counter!(
        REGISTRATIONS,
        "Per-section registration results by outcome (enrolled, waitlisted, already_*, rejected_*)."
    );
    describe_counter!(
        DROPS,
        "Drop requests by outcome (dropped, promoted, left_waitlist, not_registered)."
    );
    describe_histogram!(
        SCRIPT_DURATION,
        Unit::Seconds,
        "Round trip of each Lua script call (EVALSHA), by script."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Jobs waiting in each persistence shard's queue, by shard."
    );
    describe_counter!(
        QUEUE_FULL,
        "Jobs not queued because the shard was full; the sweeper picks them up from the outbox."
    );
    describe_histogram!(
        PERSIST_LAG,
        Unit::Seconds,
        "Time from a seat change in Redis to its commit in PostgreSQL."
    );
    describe_histogram!(BATCH_SIZE, "Events written per PostgreSQL transaction.");
    describe_counter!(
        EVENTS_APPLIED,
        "Outbox events applied to PostgreSQL, by kind."
    );
    describe_counter!(
        WRITE_RETRIES,
        "PostgreSQL batch writes retried after a transient failure (outage, timeout, serialization)."
    );
    describe_counter!(
        VERSION_CONFLICTS,
        "Optimistic checks on a section row that found another writer first."
    );
    describe_counter!(
        SEQUENCE_CONFLICTS,
        "Events whose sequence PostgreSQL already applied to a different event (Redis lost data); each rebuilds its section from PostgreSQL."
    );
    describe_counter!(
        REDIS_REVALIDATIONS,
        "Times registration paused to check Redis against PostgreSQL after a possible restart, by result (same_server, rebuilt)."
    );
    describe_counter!(
        COMPENSATIONS,
        "Events undone in Redis after a permanent write failure, by result."
    );
    describe_counter!(DEAD_LETTERS, "Events written to the dead_letters table.");
    describe_counter!(
        REPLICATION_UNCONFIRMED,
        "Seat changes answered 503 because fewer than redis.wait_replicas replicas confirmed them in time."
    );
    describe_gauge!(
        OUTBOX_BACKLOG,
        "Outbox entries not yet persisted, over all sections."
    );
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest outbox entry not yet persisted."
    );
    describe_counter!(
        SWEEPER_REQUEUED,
        "Sections the sweeper handed back to the workers."
    );
    describe_counter!(
        SECTIONS_LOADED,
        "Sections whose Redis state was built from PostgreSQL."
    );
    describe_gauge!(
        RECONCILE_DRIFT,
        "Sections whose Redis and PostgreSQL state differed at the last reconcile."
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests answered 429, by the limit that refused them (student, address, login, account_address: one account from one address, account: one account from all addresses)."
    );
    describe_counter!(
        RATE_LIMIT_ERRORS,
        "Rate-limit checks that could not reach Redis; the request was let through."
    );
    describe_counter!(
        ACCESS_REFRESHES,
        "Access records reread from PostgreSQL after it announced an account change."
    );
    describe_counter!(
        ACCESS_UNCHECKED,
        "Tokens accepted on their signature alone: no copy of the account in Redis and PostgreSQL unreachable."
    );
    describe_counter!(
        TOKENS_REVOKED,
        "Requests refused because their token's account changed or is gone since login."
    );
    describe_counter!(
        LOGIN_LOCKS,
        "Login attempts that locked their account for their address for a back-off period."
    );
    describe_counter!(
        IDEMPOTENT_REPLAYS,
        "Requests answered from a stored idempotent response."
    );
    describe_counter!(
        TASK_FAILURES,
        "Background tasks (shards, sweeper, revalidator, upkeep) that panicked or ended unexpectedly; the process then stops."
    );
    describe_counter!(
        QUEUE_CLOSED,
        "Events whose shard queue was closed (the shard had stopped); they wait in the outbox."
    );
    describe_gauge!(
        PARTITIONS_OWNED,
        "Persistence partitions whose lease this instance holds (it writes their sections)."
    );
    describe_counter!(
        UNOWNED_SKIPPED,
        "Queued events of sections another instance owns, left in their outbox for the owner."
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "PostgreSQL pool connections by pool (api, persistence) and state (size, available, waiting)."
    );
}
