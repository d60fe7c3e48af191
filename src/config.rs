//! Settings: every limit and address the service uses, in one place.
//!
//! Layers, later ones winning: `config/default.toml`, `config/<APP_ENV>.toml`,
//! then environment variables `APP__<SECTION>__<KEY>`. The directory is
//! `config/` under the working directory unless `APP_CONFIG_DIR` names another.
//! [`Settings::load`] validates everything, so a bad value stops start-up with
//! one line naming the setting.

use std::{
    fmt,
    num::NonZeroU64,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Smallest accepted HS256 secret: RFC 7518 §3.2 requires a key at least as
/// long as the hash output (256 bits).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub api: ApiSettings,
    pub sync: SyncSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub rate_limit: RateLimitSettings,
    pub rules: RulesSettings,
    pub live: LiveSettings,
    pub log: LogSettings,
}

/// Live updates over Server-Sent Events (`src/live.rs`, README "Live updates").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LiveSettings {
    /// Off: the persistence writers publish nothing and the stream
    /// endpoints answer 503 `live_disabled`.
    pub enabled: bool,
    /// Streams one instance keeps open at once; beyond it 503 with Retry-After.
    pub max_streams: usize,
    /// A comment line this often keeps proxies from closing a quiet stream.
    pub heartbeat_ms: Millis,
    /// How long a stream lives before the server ends it (the client
    /// reconnects with Last-Event-ID): a token that expires meanwhile is
    /// checked again, and streams spread over instances after a scale-out.
    pub max_stream_secs: u64,
}

/// The registration rules (issue 14, SPEC §14; `src/rules.rs`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSettings {
    /// Off: a registration checks the seat, the window and the holds only
    /// (no claim in the student's slot). For measuring what the rules cost.
    pub enabled: bool,
    /// How long a claim may wait for its section's decision; the seat script
    /// refuses it afterwards.
    pub claim_ttl_ms: u64,
    /// After a claim's deadline, how long before a later request judges an
    /// unsettled claim from its section (the two slots' clocks may differ).
    pub claim_grace_ms: u64,
    /// How long a server reuses a semester's catalogue facts (credits,
    /// meetings, requisites, group opening times) before rereading them.
    pub facts_ttl_ms: u64,
    /// Lifetime of a student's rules copy in Redis (reloaded when missing).
    pub copy_ttl_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub host: String,
    /// 0 lets the OS pick a free port (tests).
    pub port: u16,
    /// Largest accepted request body; larger is 413 before any parsing.
    pub max_body_bytes: usize,
    /// Deadline for a client to send its complete request head; it also
    /// runs while a kept-alive connection waits for its next request, so it
    /// is the keep-alive idle timeout as well.
    pub header_read_timeout_ms: u64,
    /// Header lines accepted per request; more is 431.
    pub max_headers: usize,
    /// Longest request target (path and query); longer is 414.
    pub max_uri_bytes: usize,
    /// Concurrently open client connections.
    pub max_connections: usize,
    /// Concurrently open connections from one client address (an IPv6 /64
    /// counts as one); more are refused at once with a 429.
    pub max_connections_per_address: usize,
    /// Deadline for reading the body and producing the answer.
    pub request_timeout_ms: u64,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace_ms: u64,
    /// How long `/health`'s Redis and PostgreSQL checks are reused: a flood
    /// of `/health` costs one check per interval, not one per request.
    pub health_cache_ms: Millis,
    /// Port of the metrics listener (`/metrics`, `/health`, `/live`,
    /// `/ready`); the public port then answers 404 for `/metrics` and
    /// `/health`. Absent: everything on the public port. 0 picks a free port.
    #[serde(default)]
    pub metrics_port: Option<u16>,
    /// Address of the metrics listener.
    pub metrics_host: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Accounts per `POST /admin/students` call (each password is hashed).
    pub max_bulk_students: usize,
    pub default_page_size: i64,
    pub max_page_size: i64,
    /// Sections one `POST /register` may name.
    pub max_sections_per_request: usize,
    /// Lifetime of an idempotency claim whose request never finished.
    pub idempotency_running_ttl_secs: u64,
    /// How long catalog rows (not counts) are reused; 0 disables the cache.
    pub catalog_cache_ms: u64,
    /// How long a semester listing's live counts are shared; 0 = every request reads Redis.
    pub live_counts_cache_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    /// Persistence shards (queue + task each).
    pub shards: usize,
    /// Jobs per shard queue.
    pub queue_capacity: usize,
    /// Events per PostgreSQL transaction.
    pub batch_size: usize,
    /// How long a shard holding less than a full batch waits for more
    /// events before writing; 0 writes what is queued at once.
    pub batch_linger_ms: u64,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub sweep_interval_ms: u64,
    pub sweep_min_age_ms: u64,
    /// Period of the in-server drift check; 0 disables it.
    pub reconcile_interval_secs: u64,
    /// Period of the check that takes students who may not register off
    /// the waitlists PostgreSQL has them on (`access::sweep_ineligible`);
    /// 0 disables it.
    pub ineligible_sweep_ms: u64,
    pub drain_timeout_ms: u64,
    /// Partitions of the section space, each written by one instance at a
    /// time (`sync::lease`). The same on every instance of a deployment.
    pub partitions: usize,
    /// How often an instance refreshes its leases; three missed refreshes
    /// and the others take them over.
    pub lease_interval_ms: u64,
    /// Longest a PostgreSQL round trip of the section loader may take (a
    /// request that needs a section loaded waits for it): past it the
    /// request is answered 503 rather than held until its own deadline.
    pub load_timeout_ms: Millis,
}

/// A duration in milliseconds that cannot be zero: a zero connect or
/// response timeout would fail every call, and a zero statement timeout
/// would switch PostgreSQL's timeout off. A configured 0 is refused when
/// the settings load; in code, [`Millis::new`] refuses it at compile time
/// in a constant and panics otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Millis(NonZeroU64);

impl Millis {
    pub const fn new(ms: u64) -> Self {
        match NonZeroU64::new(ms) {
            Some(ms) => Self(ms),
            None => panic!("a timeout of 0 ms"),
        }
    }

    pub const fn get(self) -> u64 {
        self.0.get()
    }

    pub const fn duration(self) -> Duration {
        Duration::from_millis(self.0.get())
    }
}

impl TryFrom<u64> for Millis {
    type Error = &'static str;

    fn try_from(ms: u64) -> Result<Self, Self::Error> {
        NonZeroU64::new(ms)
            .map(Self)
            .ok_or("must be greater than zero")
    }
}

impl From<Millis> for u64 {
    fn from(ms: Millis) -> Self {
        ms.get()
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub pool_size: usize,
    /// Connections of the persistence side (shards, sweeper, loader).
    pub persistence_pool_size: usize,
    pub connect_timeout_ms: Millis,
    /// Zero would mean "no timeout" to PostgreSQL: refused by the type.
    pub statement_timeout_ms: Millis,
    pub migrate_on_start: bool,
    /// A read replica for the catalog and the student views (absent: they
    /// read the primary). Everything that writes or must see the latest
    /// commit (register, drop, persistence, leases, access checks, admin)
    /// always uses `url`; a replica's lag only delays what those reads show.
    #[serde(default)]
    pub read_url: Option<Secret>,
}

/// Where `redis.url` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    /// Seed nodes, each as a `redis://` URL.
    Cluster(Vec<String>),
}

impl RedisTarget {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("redis+cluster://") else {
            return Ok(Self::Single(url.to_string()));
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        let seeds: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{auth}{h}"))
            .collect();
        if seeds.is_empty() {
            anyhow::bail!("a redis+cluster:// URL names no seed node");
        }
        if hosts.contains('/') {
            anyhow::bail!(
                "a redis+cluster:// URL has no database number (a cluster has only db 0)"
            );
        }
        Ok(Self::Cluster(seeds))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: Secret,
    /// Prefix of every key; tests use a fresh one each.
    pub namespace: String,
    pub connect_timeout_ms: Millis,
    pub response_timeout_ms: Millis,
    /// Replicas that must hold a seat change before it is answered (WAIT);
    /// 0 answers at once (a failed primary may lose its last writes).
    pub wait_replicas: u32,
    /// Longest WAIT; fewer confirmations by then answer 503.
    pub wait_timeout_ms: Millis,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub jwt_secret: Secret,
    pub token_ttl_secs: u64,
    /// Password verifications running at once (each is CPU and memory heavy).
    pub max_concurrent_hashes: usize,
}

/// Token buckets kept in Redis (so every instance shares them) and the
/// failed-login back-off. Rates are requests per second; a burst is how many
/// may come at once after a quiet period.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Every authenticated API request of one student (admins are exempt).
    pub student_per_second: f64,
    pub student_burst: u32,
    /// Every API request from one client address (an IPv6 /64 counts as one).
    pub address_per_second: f64,
    pub address_burst: u32,
    /// Login attempts from one client address, on top of the address bucket.
    pub login_per_second: f64,
    pub login_burst: u32,
    /// Login attempts of one account from one address before a lock: the
    /// attempt that uses the last one starts it (`lua/login_guard.lua`).
    pub login_free_failures: u32,
    /// First lock; each further attempt doubles it, up to the maximum.
    pub login_backoff_base_ms: u64,
    pub login_backoff_max_ms: u64,
    /// A pair's attempts are forgotten after this long without another one.
    pub login_failure_window_secs: u64,
    /// Login attempts of one account across all addresses (known addresses
    /// exempt): a bucket refilled at this many per hour...
    pub login_account_per_hour: f64,
    /// ...holding at most this many.
    pub login_account_burst: u32,
    /// How long an address stays "known" to an account after a login from it.
    pub login_known_address_days: u64,
    /// Header carrying the client address when behind a trusted reverse
    /// proxy (its last entry is used); empty = the TCP peer address.
    pub client_ip_header: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
    /// One INFO line per request (method, route template, status, latency,
    /// request id, student, trace id); off: DEBUG.
    pub requests: bool,
    /// OTLP/HTTP endpoint the request spans are exported to as traces
    /// (e.g. `http://127.0.0.1:4318/v1/traces`); empty: no export.
    pub otlp_endpoint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A string that never appears in logs or `Debug` output (URLs with
/// passwords, signing keys).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Secret {
    /// What may be shown of the secret (`registrar config print`): a URL
    /// with its password masked (the rest says where it points), anything
    /// else not at all.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return "[redacted]".into();
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        match authority
            .rsplit_once('@')
            .and_then(|(userinfo, hosts)| Some((userinfo.split_once(':')?.0, hosts)))
        {
            Some((user, hosts)) => format!("{scheme}://{user}:[redacted]@{hosts}{path}"),
            None => self.0.clone(),
        }
    }
}

/// Serialized redacted: only `registrar config print` serializes settings.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// A configuration problem, always naming the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Source(#[from] config::ConfigError),
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

/// Environments in which the repository's own development key is accepted.
const DEVELOPMENT_ENVS: [&str; 2] = ["local", "test"];

/// Signing keys shipped in this repository (config/default.toml); public,
/// so refused outside [`DEVELOPMENT_ENVS`]. A unit test keeps the list in
/// step with the file.
const SHIPPED_JWT_SECRETS: &[&str] = &["change-me-local-development-secret-0123456789"];

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

/// The defaults (`config/default.toml`), compiled in: the binary runs from
/// any directory, with or without a `config/` beside it.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// The environments this repository has settings for.
pub const KNOWN_ENVS: [&str; 3] = ["local", "test", "production"];

/// Where the settings come from: the directory (`APP_CONFIG_DIR`, default
/// `config`) and the environment (`APP_ENV`, default `local`).
pub fn environment() -> (PathBuf, String) {
    let dir = std::env::var_os("APP_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config"));
    let env = std::env::var("APP_ENV").unwrap_or_else(|_| "local".into());
    (dir, env)
}

/// What an operator should know about where the settings come from, before
/// anything runs: an `APP_ENV` with no settings of its own (a typo, most
/// likely), a missing `APP_CONFIG_DIR`.
pub fn notes(dir: &Path, env: &str) -> Vec<String> {
    let mut notes = Vec::new();
    let own = dir.join(format!("{env}.toml"));
    if !KNOWN_ENVS.contains(&env) && !own.exists() {
        notes.push(format!(
            "APP_ENV={env} is not one of {} and {} does not exist: only the built-in defaults and APP__ variables apply",
            KNOWN_ENVS.join(", "),
            own.display()
        ));
    }
    if std::env::var_os("APP_CONFIG_DIR").is_some() && !dir.is_dir() {
        notes.push(format!(
            "APP_CONFIG_DIR={} is not a directory: only the built-in defaults and APP__ variables apply",
            dir.display()
        ));
    }
    notes
}

impl Settings {
    /// Reads the layered configuration for `APP_ENV` (default `local`) and validates it.
    pub fn load() -> Result<Self, ConfigError> {
        let (dir, env) = environment();
        Self::load_from(&dir, &env)
    }

    /// Reads the built-in defaults, then `dir/default.toml` and
    /// `dir/<env>.toml` where they exist, then the `APP__` variables, and
    /// validates.
    pub fn load_from(dir: &Path, env: &str) -> Result<Self, ConfigError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from(dir.join("default.toml")).required(false))
            .add_source(config::File::from(dir.join(format!("{env}.toml"))).required(false))
            .add_source(
                config::Environment::with_prefix("APP")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        settings.validate_for(env)?;
        Ok(settings)
    }

    /// Checks what depends on where the service runs: outside `local` and
    /// `test`, a signing key shipped in this repository (public, so anyone
    /// could forge an admin token with it) is refused.
    pub fn validate_for(&self, env: &str) -> Result<(), ConfigError> {
        if !DEVELOPMENT_ENVS.contains(&env)
            && SHIPPED_JWT_SECRETS.contains(&self.auth.jwt_secret.expose())
        {
            return Err(invalid(
                "auth.jwt_secret",
                format!(
                    "is the development key shipped in the repository; APP_ENV={env} needs its own \
                     (set APP__AUTH__JWT_SECRET, e.g. to `openssl rand -hex 32`)"
                ),
            ));
        }
        Ok(())
    }

    /// Checks what the types alone cannot: secret length, URL syntax, non-zero limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let secret_len = self.auth.jwt_secret.expose().len();
        if secret_len < MIN_JWT_SECRET_BYTES {
            return Err(invalid(
                "auth.jwt_secret",
                format!("must be at least {MIN_JWT_SECRET_BYTES} bytes, got {secret_len}"),
            ));
        }
        tokio_postgres::Config::from_str(self.database.url.expose())
            .map_err(|e| invalid("database.url", format!("not a PostgreSQL URL: {e}")))?;
        match RedisTarget::parse(self.redis.url.expose())
            .map_err(|e| invalid("redis.url", format!("{e:#}")))?
        {
            RedisTarget::Single(url) => {
                redis::Client::open(url.as_str())
                    .map_err(|e| invalid("redis.url", format!("not a Redis URL: {e}")))?;
            }
            RedisTarget::Cluster(seeds) => {
                for seed in seeds {
                    redis::Client::open(seed.as_str()).map_err(|e| {
                        invalid("redis.url", format!("not a Redis Cluster URL: {e}"))
                    })?;
                }
            }
        }

        if self.redis.namespace.is_empty()
            || !self
                .redis
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                "redis.namespace",
                "must be non-empty ASCII letters, digits, '_' or '-'",
            ));
        }
        if self.api.default_page_size > self.api.max_page_size {
            return Err(invalid(
                "api.default_page_size",
                "must not exceed api.max_page_size",
            ));
        }
        let positive: [(&'static str, u64); 23] = [
            (
                "api.max_sections_per_request",
                self.api.max_sections_per_request as u64,
            ),
            (
                "api.idempotency_running_ttl_secs",
                self.api.idempotency_running_ttl_secs,
            ),
            ("sync.shards", self.sync.shards as u64),
            ("sync.queue_capacity", self.sync.queue_capacity as u64),
            ("sync.batch_size", self.sync.batch_size as u64),
            ("sync.retry_base_ms", self.sync.retry_base_ms),
            ("sync.sweep_interval_ms", self.sync.sweep_interval_ms),
            ("sync.partitions", self.sync.partitions as u64),
            ("sync.lease_interval_ms", self.sync.lease_interval_ms),
            ("api.max_bulk_students", self.api.max_bulk_students as u64),
            (
                "api.default_page_size",
                self.api.default_page_size.max(0) as u64,
            ),
            ("http.max_body_bytes", self.http.max_body_bytes as u64),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("http.max_headers", self.http.max_headers as u64),
            ("http.max_uri_bytes", self.http.max_uri_bytes as u64),
            ("http.max_connections", self.http.max_connections as u64),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
            ("database.pool_size", self.database.pool_size as u64),
            (
                "database.persistence_pool_size",
                self.database.persistence_pool_size as u64,
            ),
            ("auth.token_ttl_secs", self.auth.token_ttl_secs),
            (
                "auth.max_concurrent_hashes",
                self.auth.max_concurrent_hashes as u64,
            ),
            ("live.max_streams", self.live.max_streams as u64),
            ("live.max_stream_secs", self.live.max_stream_secs),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(name, "must be greater than zero"));
        }
        if self
            .http
            .metrics_port
            .is_some_and(|p| p != 0 && p == self.http.port)
        {
            return Err(invalid("http.metrics_port", "must differ from http.port"));
        }
        self.rate_limit.validate()?;
        for (name, value) in [
            ("rules.claim_ttl_ms", self.rules.claim_ttl_ms),
            ("rules.facts_ttl_ms", self.rules.facts_ttl_ms),
            ("rules.copy_ttl_ms", self.rules.copy_ttl_ms),
        ] {
            if value == 0 {
                return Err(invalid(name, "must be at least 1"));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        Ok(())
    }
}

impl RateLimitSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let rates = [
            ("rate_limit.student_per_second", self.student_per_second),
            ("rate_limit.address_per_second", self.address_per_second),
            ("rate_limit.login_per_second", self.login_per_second),
        ];
        for (name, rate) in rates {
            // Below one per hour the bucket's refill interval stops being a
            // sensible number of microseconds; above a million it rounds to zero.
            if !(rate.is_finite() && (1.0 / 3600.0..=1_000_000.0).contains(&rate)) {
                return Err(invalid(name, "must be between 1/3600 and 1000000"));
            }
        }
        let counts = [
            ("rate_limit.student_burst", self.student_burst as u64),
            ("rate_limit.address_burst", self.address_burst as u64),
            ("rate_limit.login_burst", self.login_burst as u64),
            (
                "rate_limit.login_free_failures",
                self.login_free_failures as u64,
            ),
            (
                "rate_limit.login_backoff_base_ms",
                self.login_backoff_base_ms,
            ),
            (
                "rate_limit.login_failure_window_secs",
                self.login_failure_window_secs,
            ),
            (
                "rate_limit.login_account_burst",
                self.login_account_burst as u64,
            ),
            (
                "rate_limit.login_known_address_days",
                self.login_known_address_days,
            ),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(name, "must be greater than zero"));
        }
        let per_hour = self.login_account_per_hour;
        if !(per_hour.is_finite() && (1.0..=3_600_000.0).contains(&per_hour)) {
            return Err(invalid(
                "rate_limit.login_account_per_hour",
                "must be between 1 and 3600000",
            ));
        }
        if self.login_backoff_max_ms < self.login_backoff_base_ms {
            return Err(invalid(
                "rate_limit.login_backoff_max_ms",
                "must not be below rate_limit.login_backoff_base_ms",
            ));
        }
        if !self.client_ip_header.is_empty()
            && hyper::header::HeaderName::from_bytes(self.client_ip_header.as_bytes()).is_err()
        {
            return Err(invalid(
                "rate_limit.client_ip_header",
                "must be a valid header name or empty",
            ));
        }
        Ok(())
    }
}

impl HttpSettings {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seed_nodes() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379/0").unwrap(),
            RedisTarget::Single("redis://127.0.0.1:6379/0".into())
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/").unwrap(),
            RedisTarget::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ])
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://u:p@h1:1,h2:2").unwrap(),
            RedisTarget::Cluster(vec!["redis://u:p@h1:1".into(), "redis://u:p@h2:2".into()])
        );
        assert!(RedisTarget::parse("redis+cluster://").is_err());
        assert!(RedisTarget::parse("redis+cluster://h:1/3").is_err());
    }

    /// A fresh directory holding `files` (name, content).
    fn tempdir_with(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("registrar-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
        dir
    }

    fn valid() -> Settings {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        Settings::load_from(&dir, "local").expect("default configuration is valid")
    }

    #[test]
    fn default_configuration_is_valid() {
        valid();
    }

    #[test]
    fn a_short_jwt_secret_is_rejected_naming_the_setting() {
        let mut s = valid();
        s.auth.jwt_secret = Secret::new("short");
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("auth.jwt_secret"), "{err}");
    }

    #[test]
    fn an_unparsable_database_url_is_rejected_naming_the_setting() {
        let mut s = valid();
        s.database.url = Secret::new("postgres://user@host:notaport/db");
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("database.url"), "{err}");
    }

    #[test]
    fn a_zero_limit_is_rejected_naming_the_setting() {
        let mut s = valid();
        s.http.max_connections = 0;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("http.max_connections"), "{err}");
    }

    #[test]
    fn a_metrics_port_equal_to_the_public_port_is_rejected_naming_the_setting() {
        let mut s = valid();
        s.http.metrics_port = Some(s.http.port);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("http.metrics_port"), "{err}");
        s.http.port = 0;
        s.http.metrics_port = Some(0);
        s.validate().expect("two free ports are two ports");
    }

    #[test]
    fn production_serves_metrics_and_health_on_a_loopback_port_of_their_own() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let read = |name: &str| std::fs::read_to_string(shipped.join(name)).unwrap();
        let default = read("default.toml").replace(
            SHIPPED_JWT_SECRETS[0],
            "a-deployment-key-of-its-own-0123456789-abcdef",
        );
        let dir = tempdir_with(&[
            ("default.toml", &default),
            ("production.toml", &read("production.toml")),
        ]);
        let loaded = Settings::load_from(&dir, "production");
        std::fs::remove_dir_all(&dir).unwrap();
        let http = loaded.expect("the production configuration is valid").http;
        assert!(http.metrics_port.is_some_and(|p| p != 0 && p != http.port));
        assert_eq!(http.metrics_host, "127.0.0.1");
        assert_eq!(valid().http.metrics_port, None, "local keeps one port");
    }

    #[test]
    fn the_built_in_defaults_suffice_without_a_config_directory() {
        let nowhere = std::env::temp_dir().join(format!("registrar-none-{}", uuid::Uuid::new_v4()));
        let loaded = Settings::load_from(&nowhere, "local").expect("the defaults alone are valid");
        assert_eq!(loaded.http.port, valid().http.port);
        assert_eq!(loaded.database.url.expose(), valid().database.url.expose());
    }

    #[test]
    fn an_app_env_without_settings_of_its_own_is_pointed_out() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for env in KNOWN_ENVS {
            assert!(notes(&dir, env).is_empty(), "{env}");
        }
        let said = notes(&dir, "prod");
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("APP_ENV=prod") && said[0].contains("prod.toml"),
            "{said:?}"
        );
    }

    #[test]
    fn secrets_show_where_they_point_and_nothing_else() {
        let shown = |v: &str| Secret::new(v).redacted();
        assert_eq!(
            shown("postgres://app:s3cret@db:5432/registrar"),
            "postgres://app:[redacted]@db:5432/registrar"
        );
        assert_eq!(
            shown("redis://:pw@cache:6379/0"),
            "redis://:[redacted]@cache:6379/0"
        );
        assert_eq!(
            shown("postgres://postgres@127.0.0.1/registrar"),
            "postgres://postgres@127.0.0.1/registrar",
            "no password, nothing to hide"
        );
        assert_eq!(
            shown("redis+cluster://a:7000,b:7001"),
            "redis+cluster://a:7000,b:7001"
        );
        assert_eq!(shown("0123456789abcdef0123456789abcdef"), "[redacted]");
    }

    #[test]
    fn printed_settings_read_back_and_carry_no_secret() {
        let mut s = valid();
        s.database.url = Secret::new("postgres://app:db-password-1@db/registrar");
        s.auth.jwt_secret = Secret::new("signing-key-that-must-not-show-0123456789");
        let printed = toml::to_string(&s).unwrap();
        assert!(!printed.contains("db-password-1"), "{printed}");
        assert!(!printed.contains("signing-key-that"), "{printed}");
        assert!(
            printed.contains("postgres://app:[redacted]@db/registrar"),
            "{printed}"
        );
        // The same settings, read back (secrets aside).
        let dir = tempdir_with(&[("default.toml", &printed)]);
        let back = config::Config::builder()
            .add_source(config::File::from(dir.join("default.toml")))
            .build()
            .unwrap()
            .try_deserialize::<Settings>();
        std::fs::remove_dir_all(&dir).unwrap();
        let back = back.expect("the printed settings are settings");
        assert_eq!(back.sync.ineligible_sweep_ms, s.sync.ineligible_sweep_ms);
        assert_eq!(back.http.request_timeout_ms, s.http.request_timeout_ms);
    }

    #[test]
    fn the_shipped_signing_key_is_refused_outside_local_and_test() {
        let s = valid();
        for env in ["local", "test"] {
            assert!(s.validate_for(env).is_ok(), "{env}");
        }
        let err = s.validate_for("production").unwrap_err().to_string();
        assert!(err.contains("auth.jwt_secret"), "{err}");
        let mut own = valid();
        own.auth.jwt_secret = Secret::new("a-deployment-key-of-its-own-0123456789-abcdef");
        assert!(own.validate_for("production").is_ok());
    }

    #[test]
    fn every_signing_key_in_the_shipped_configuration_is_known_as_shipped() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let files = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file());
        for path in files {
            let text = std::fs::read_to_string(path).unwrap();
            for line in text
                .lines()
                .filter(|l| l.trim_start().starts_with("jwt_secret"))
            {
                let value = line.split('"').nth(1).expect("a quoted key");
                assert!(SHIPPED_JWT_SECRETS.contains(&value), "{line}");
            }
        }
        let compose = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"),
        )
        .unwrap();
        assert!(
            compose.contains("${JWT_SECRET:?"),
            "docker-compose.yml requires JWT_SECRET, with no fallback"
        );
    }

    #[test]
    fn a_zero_timeout_is_refused_when_the_settings_load() {
        let dir = tempdir_with(&[(
            "default.toml",
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml"),
            )
            .unwrap()
            .replace("statement_timeout_ms = 5000", "statement_timeout_ms = 0"),
        )]);
        let err = Settings::load_from(&dir, "local").unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("statement_timeout_ms"), "{err}");
        assert!(err.contains("greater than zero"), "{err}");
        assert_eq!(Millis::try_from(0), Err("must be greater than zero"));
        assert_eq!(Millis::try_from(7).map(Millis::get), Ok(7));
    }

    #[test]
    fn a_rate_limit_without_a_rate_is_rejected_naming_the_setting() {
        let mut s = valid();
        s.rate_limit.enabled = true;
        s.rate_limit.student_per_second = 0.0;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("rate_limit.student_per_second"), "{err}");
        s.rate_limit.enabled = false;
        s.validate()
            .expect("rates are not checked while limits are off");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let s = valid();
        let printed = format!("{s:?}");
        assert!(!printed.contains(s.auth.jwt_secret.expose()));
        assert!(printed.contains("[redacted]"));
    }
}
