//! Prometheus metrics: the recorder, the description of every metric, and
//! the names used across the code (one place, so dashboards and code agree).

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "registrar_http_requests_total";
pub const HTTP_DURATION: &str = "registrar_http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "registrar_http_requests_in_flight";
pub const HTTP_CONNECTIONS: &str = "registrar_http_open_connections";
pub const HTTP_CONNECTIONS_REFUSED: &str = "registrar_http_connections_refused_total";
pub const DEPENDENCY_UP: &str = "registrar_dependency_up";
pub const DEPENDENCY_LATENCY: &str = "registrar_dependency_check_duration_seconds";
pub const LOGINS: &str = "registrar_auth_logins_total";
pub const DB_POOL_CONNECTIONS: &str = "registrar_db_pool_connections";
pub const REGISTRATIONS: &str = "registrar_registrations_total";
pub const DROPS: &str = "registrar_drops_total";
pub const SCRIPT_DURATION: &str = "registrar_redis_script_duration_seconds";
pub const QUEUE_DEPTH: &str = "registrar_persistence_queue_depth";
pub const QUEUE_FULL: &str = "registrar_persistence_queue_full_total";
pub const PERSIST_LAG: &str = "registrar_persistence_lag_seconds";
pub const BATCH_SIZE: &str = "registrar_persistence_batch_size";
pub const EVENTS_APPLIED: &str = "registrar_persistence_events_applied_total";
pub const WRITE_RETRIES: &str = "registrar_persistence_write_retries_total";
pub const VERSION_CONFLICTS: &str = "registrar_persistence_version_conflicts_total";
pub const SEQUENCE_CONFLICTS: &str = "registrar_persistence_sequence_conflicts_total";
pub const REDIS_REVALIDATIONS: &str = "registrar_redis_revalidations_total";
pub const COMPENSATIONS: &str = "registrar_compensations_total";
pub const DEAD_LETTERS: &str = "registrar_dead_letters_total";
pub const OUTBOX_BACKLOG: &str = "registrar_outbox_backlog";
pub const SEATS_OFFERED: &str = "registrar_seats_offered";
pub const OFFERS_LAPSED: &str = "registrar_offers_lapsed_total";
pub const OUTBOX_OLDEST_AGE: &str = "registrar_outbox_oldest_age_seconds";
pub const SWEEPER_REQUEUED: &str = "registrar_sweeper_requeued_total";
pub const SECTIONS_LOADED: &str = "registrar_warmup_sections_loaded_total";
pub const RECONCILE_DRIFT: &str = "registrar_reconcile_drift_sections";
pub const IDEMPOTENT_REPLAYS: &str = "registrar_idempotent_replays_total";
pub const RATE_LIMITED: &str = "registrar_rate_limited_total";
pub const RATE_LIMIT_ERRORS: &str = "registrar_rate_limit_errors_total";
pub const LOGIN_LOCKS: &str = "registrar_auth_login_locks_total";
pub const ACCESS_REFRESHES: &str = "registrar_auth_access_refreshes_total";
pub const TOKENS_REVOKED: &str = "registrar_auth_tokens_refused_total";
pub const ACCESS_UNCHECKED: &str = "registrar_auth_access_unchecked_total";
pub const TASK_FAILURES: &str = "registrar_background_task_failures_total";
pub const QUEUE_CLOSED: &str = "registrar_persistence_queue_closed_total";
pub const PARTITIONS_OWNED: &str = "registrar_persistence_partitions_owned";
pub const UNOWNED_SKIPPED: &str = "registrar_persistence_unowned_events_total";
pub const REPLICATION_UNCONFIRMED: &str = "registrar_redis_replication_unconfirmed_total";
pub const DB_POOL_MAX: &str = "registrar_db_pool_max_connections";
pub const DB_POOL_WAITING: &str = "registrar_db_pool_waiting";
pub const BUILD_INFO: &str = "registrar_build_info";
pub const LIVE_STREAMS: &str = "registrar_live_streams";
pub const LIVE_SUBSCRIBED: &str = "registrar_live_subscribed";
pub const LIVE_MESSAGES: &str = "registrar_live_messages_total";
pub const LIVE_RESYNCS: &str = "registrar_live_resyncs_total";

/// Label values known in advance, so their series exist (at zero) from the
/// first scrape: a rate or an alert over a counter that has never moved then
/// reads 0, not "no data". Other values (rejection reasons, routes, status
/// codes) appear when first seen.
pub const REGISTRATION_OUTCOMES: &[&str] = &[
    "enrolled",
    "already_enrolled",
    "waitlisted",
    "already_waitlisted",
    "full",
];
pub const DROP_OUTCOMES: &[&str] = &[
    "dropped",
    "promoted",
    "offered",
    "left_waitlist",
    "not_registered",
];
pub const LOGIN_OUTCOMES: &[&str] = &["success", "invalid", "locked"];
pub const COMPENSATION_RESULTS: &[&str] =
    &["reverted", "already", "nothing_to_undo", "not_undoable"];
pub const REVALIDATION_RESULTS: &[&str] = &["same_server", "rebuilt"];
pub const RATE_LIMIT_SCOPES: &[&str] =
    &["student", "address", "login", "account_address", "account"];
/// The pools of `registrar_db_pool_*`: the API's and the persistence side's
/// (the catalogue's read pool, `database.read_url`, is the API's unless set).
pub const DB_POOLS: &[&str] = &["api", "persistence", "read"];

/// Events per PostgreSQL transaction, up to `sync.batch_size`'s maximum.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 512.0, 1024.0, 4096.0,
];

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
            // Every histogram gets buckets (a histogram without them is
            // rendered as a summary, which cannot be aggregated).
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)
                })
                .expect("buckets are non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            zero();
            PROCESS.describe();
            metrics::gauge!(
                BUILD_INFO,
                "version" => env!("CARGO_PKG_VERSION"),
                "git_sha" => env!("REGISTRAR_GIT_SHA")
            )
            .set(1.0);
            handle
        })
        .clone()
}

/// The process's own metrics (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, open file descriptors, threads, start
/// time: the Prometheus client conventions), read from /proc at each scrape.
static PROCESS: std::sync::LazyLock<metrics_process::Collector> =
    std::sync::LazyLock::new(metrics_process::Collector::default);

/// Renders the metrics page, with the process metrics read just now.
pub fn render(handle: &PrometheusHandle) -> String {
    PROCESS.collect();
    handle.render()
}

/// Registers every counter at zero (with its known label values).
fn zero() {
    use metrics::counter;
    for &outcome in REGISTRATION_OUTCOMES {
        counter!(REGISTRATIONS, "outcome" => outcome).increment(0);
    }
    for &outcome in DROP_OUTCOMES {
        counter!(DROPS, "outcome" => outcome).increment(0);
    }
    for &outcome in LOGIN_OUTCOMES {
        counter!(LOGINS, "outcome" => outcome).increment(0);
    }
    for &result in COMPENSATION_RESULTS {
        counter!(COMPENSATIONS, "result" => result).increment(0);
    }
    for &result in REVALIDATION_RESULTS {
        counter!(REDIS_REVALIDATIONS, "result" => result).increment(0);
    }
    for &scope in RATE_LIMIT_SCOPES {
        counter!(RATE_LIMITED, "scope" => scope).increment(0);
    }
    for kind in crate::domain::EventKind::ALL {
        counter!(EVENTS_APPLIED, "kind" => kind.as_str()).increment(0);
    }
    for name in [
        HTTP_CONNECTIONS_REFUSED,
        QUEUE_FULL,
        QUEUE_CLOSED,
        WRITE_RETRIES,
        VERSION_CONFLICTS,
        SEQUENCE_CONFLICTS,
        DEAD_LETTERS,
        REPLICATION_UNCONFIRMED,
        SWEEPER_REQUEUED,
        OFFERS_LAPSED,
        SECTIONS_LOADED,
        RATE_LIMIT_ERRORS,
        ACCESS_REFRESHES,
        ACCESS_UNCHECKED,
        TOKENS_REVOKED,
        LOGIN_LOCKS,
        IDEMPOTENT_REPLAYS,
        UNOWNED_SKIPPED,
        LIVE_MESSAGES,
        LIVE_RESYNCS,
    ] {
        counter!(name).increment(0);
    }
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
        LIVE_STREAMS,
        "Server-Sent Event streams open on this instance (section and student streams)."
    );
    describe_gauge!(
        LIVE_SUBSCRIBED,
        "1 while this instance's Redis subscription to the live announcements is up, else 0."
    );
    describe_counter!(
        LIVE_MESSAGES,
        "Announcements of committed batches this instance heard (one per section per batch)."
    );
    describe_counter!(
        LIVE_RESYNCS,
        "Times the live subscription came back after a loss and every stream reread its state."
    );
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
        "Login attempts by outcome (success, invalid: unknown account or wrong password, locked: refused during a back-off)."
    );
    describe_counter!(
        REGISTRATIONS,
        "Per-section registration results by outcome: the answer's status (enrolled, waitlisted, already_enrolled, already_waitlisted) or, when rejected, its reason code (full, hold, credit_limit, ...)."
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
        "Time from a seat change in Redis to its commit in PostgreSQL (seconds)."
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
        "Events undone in Redis after a permanent write failure, by result (reverted, already, nothing_to_undo, not_undoable)."
    );
    describe_counter!(DEAD_LETTERS, "Events written to the dead_letters table.");
    describe_counter!(
        REPLICATION_UNCONFIRMED,
        "Seat changes answered 503 because fewer than redis.wait_replicas replicas confirmed them in time."
    );
    describe_gauge!(
        SEATS_OFFERED,
        "Seats held by waitlist offers (neither free nor enrolled), over all sections, as of the last sweep."
    );
    describe_counter!(
        OFFERS_LAPSED,
        "Waitlist offers the sweeper let lapse at their deadline (sections nobody touched)."
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
        "PostgreSQL connections open in each pool (api, persistence, read) by state (idle, in_use); their sum is the pool's size."
    );
    describe_gauge!(
        DB_POOL_MAX,
        "Most connections each pool (api, persistence, read) may open."
    );
    describe_gauge!(
        DB_POOL_WAITING,
        "Callers waiting for a connection of each pool (api, persistence, read)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; its labels name the running build (version, git_sha)."
    );
}
