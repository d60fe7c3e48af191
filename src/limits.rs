//! Abuse controls: token buckets and the failed-login back-off, kept in
//! Redis so every server instance enforces the same numbers.
//!
//! Buckets ([`Bucket`]) are charged by `lua/rate_limit.lua` (GCRA: one key
//! per bucket holding its theoretical arrival time, Redis's clock). A request
//! charges its buckets in one round trip: they live in different hash slots
//! (`{u:<student>}`, `{a:<address>}`), so they are pipelined rather than
//! combined into one script, which keeps the layout Redis Cluster ready.
//! Failed logins are counted per account by `lua/login_guard.lua`.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::Mutex,
    time::{Duration, Instant},
};

use redis::{ErrorKind, RedisResult, Script, ServerErrorKind};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{config::RateLimitSettings, seats::Redis};

/// Which limit refused a request (the label of `rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Student,
    Address,
    Login,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::Student => "student",
            Scope::Address => "address",
            Scope::Login => "login",
        }
    }
}

/// One token bucket to charge: its key and shape.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub scope: Scope,
    key: String,
    interval_us: u64,
    burst: u32,
}

/// What charging a request's buckets decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused by `scope`; the earliest retry is `retry_after` away.
    Limited {
        scope: Scope,
        retry_after: Duration,
    },
}

/// Most buckets remembered as refused at once (see [`Limiter::charge`]).
/// Beyond it refusals are simply asked of Redis again; 10k entries of a
/// key and an instant are well under 1 MiB.
const MAX_REMEMBERED_REFUSALS: usize = 10_000;

/// The limits of one deployment, with their scripts.
pub struct Limiter {
    settings: RateLimitSettings,
    namespace: String,
    rate: Script,
    login: Script,
    /// Buckets Redis refused, until the time it named. A refused bucket
    /// cannot refill earlier (refusals are not charged, and other instances
    /// can only push it later), so answering a flood from here is exact and
    /// costs Redis nothing.
    refused: Mutex<HashMap<String, Instant>>,
}

impl Limiter {
    pub fn new(settings: &RateLimitSettings, namespace: &str) -> Self {
        Self {
            settings: settings.clone(),
            namespace: namespace.to_string(),
            rate: Script::new(include_str!("../lua/rate_limit.lua")),
            login: Script::new(include_str!("../lua/login_guard.lua")),
            refused: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    /// The bucket of every authenticated request of one student.
    pub fn student(&self, student: Uuid) -> Bucket {
        self.bucket(
            Scope::Student,
            format!("{}:{{u:{student}}}:rate", self.namespace),
            self.settings.student_per_second,
            self.settings.student_burst,
        )
    }

    /// The bucket of every API request from one client address.
    pub fn address(&self, client: &ClientKey) -> Bucket {
        self.bucket(
            Scope::Address,
            format!("{}:{{a:{}}}:rate", self.namespace, client.0),
            self.settings.address_per_second,
            self.settings.address_burst,
        )
    }

    /// The bucket of login attempts from one client address.
    pub fn login_address(&self, client: &ClientKey) -> Bucket {
        self.bucket(
            Scope::Login,
            format!("{}:{{a:{}}}:login", self.namespace, client.0),
            self.settings.login_per_second,
            self.settings.login_burst,
        )
    }

    fn bucket(&self, scope: Scope, key: String, per_second: f64, burst: u32) -> Bucket {
        Bucket {
            scope,
            key,
            // Validated to lie in 1/3600..=1e6 per second, so this is ≥ 1 µs.
            interval_us: (1_000_000.0 / per_second).round().max(1.0) as u64,
            burst,
        }
    }

    /// Charges every bucket once, in one round trip. The first refusing
    /// bucket (in the given order) decides the answer; buckets that allowed
    /// the request stay charged, as the request did reach the service.
    pub async fn charge(&self, redis: &Redis, buckets: &[Bucket]) -> RedisResult<Verdict> {
        if buckets.is_empty() {
            return Ok(Verdict::Allowed);
        }
        if let Some(verdict) = self.remembered_refusal(buckets) {
            return Ok(verdict);
        }
        let mut pipe = redis::pipe();
        for bucket in buckets {
            pipe.invoke_script(
                self.rate
                    .key(&bucket.key)
                    .arg(bucket.interval_us)
                    .arg(bucket.burst),
            );
        }
        let mut conn = redis.conn();
        let replies: Vec<(i64, i64)> = match pipe.query_async(&mut conn).await {
            Ok(replies) => replies,
            // A pipeline does not load scripts by itself (Redis restarted or
            // SCRIPT FLUSH): load once and ask again.
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.rate.prepare_invoke().load_async(&mut conn).await?;
                pipe.query_async(&mut conn).await?
            }
            Err(e) => return Err(e),
        };
        let Some((bucket, (_, wait_ms))) = buckets
            .iter()
            .zip(replies)
            .find(|(_, (allowed, _))| *allowed == 0)
        else {
            return Ok(Verdict::Allowed);
        };
        let retry_after = Duration::from_millis(wait_ms.max(1) as u64);
        self.remember_refusal(&bucket.key, Instant::now() + retry_after);
        Ok(Verdict::Limited {
            scope: bucket.scope,
            retry_after,
        })
    }

    fn remembered_refusal(&self, buckets: &[Bucket]) -> Option<Verdict> {
        let refused = self
            .refused
            .lock()
            .expect("the refusal map is never poisoned");
        if refused.is_empty() {
            return None;
        }
        let now = Instant::now();
        buckets.iter().find_map(|bucket| {
            let until = *refused.get(&bucket.key)?;
            (until > now).then(|| Verdict::Limited {
                scope: bucket.scope,
                retry_after: until - now,
            })
        })
    }

    fn remember_refusal(&self, key: &str, until: Instant) {
        let mut refused = self
            .refused
            .lock()
            .expect("the refusal map is never poisoned");
        if refused.len() >= MAX_REMEMBERED_REFUSALS {
            let now = Instant::now();
            refused.retain(|_, until| *until > now);
            if refused.len() >= MAX_REMEMBERED_REFUSALS {
                return;
            }
        }
        refused.insert(key.to_string(), until);
    }

    /// Before verifying a password: how long the account is still locked, if it is.
    pub async fn login_locked(
        &self,
        redis: &Redis,
        student_number: &str,
    ) -> RedisResult<Option<Duration>> {
        let (go, wait_ms) = self.login_op(redis, student_number, "check").await?;
        Ok((go == 0).then(|| Duration::from_millis(wait_ms.max(1) as u64)))
    }

    /// After a wrong password: counts it; returns the lock it caused, if any.
    pub async fn login_failed(
        &self,
        redis: &Redis,
        student_number: &str,
    ) -> RedisResult<Option<Duration>> {
        let (_, lock_ms) = self.login_op(redis, student_number, "fail").await?;
        Ok((lock_ms > 0).then(|| Duration::from_millis(lock_ms as u64)))
    }

    /// After a right password: forgets earlier failures.
    pub async fn login_succeeded(&self, redis: &Redis, student_number: &str) -> RedisResult<()> {
        self.login_op(redis, student_number, "success").await?;
        Ok(())
    }

    async fn login_op(
        &self,
        redis: &Redis,
        student_number: &str,
        op: &str,
    ) -> RedisResult<(i64, i64)> {
        let s = &self.settings;
        self.login
            .key(account_key(&self.namespace, student_number))
            .arg(op)
            .arg(s.login_free_failures)
            .arg(s.login_backoff_base_ms)
            .arg(s.login_backoff_max_ms)
            .arg(s.login_failure_window_secs.saturating_mul(1000))
            .invoke_async(&mut redis.conn())
            .await
    }
}

/// The key of one account's failed-login record. The student number is
/// hashed: it is caller-chosen text (braces in it would move the hash slot)
/// and unknown numbers must be tracked exactly like known ones.
fn account_key(namespace: &str, student_number: &str) -> String {
    let digest = Sha256::digest(student_number.trim().as_bytes());
    format!(
        "{namespace}:{{l:{}}}:login",
        crate::domain::hex(&digest[..16])
    )
}

/// The client address as a bucket name: IPv4 as is, IPv6 by its /64 prefix
/// (one host or home usually owns a whole /64, so limiting single IPv6
/// addresses would be trivially evaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey(String);

impl ClientKey {
    pub fn new(addr: IpAddr) -> Self {
        let addr = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        };
        Self(addr.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_grouped_by_their_64_bit_prefix() {
        let a = ClientKey::new("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = ClientKey::new("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = ClientKey::new("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            ClientKey::new("::ffff:192.0.2.7".parse().unwrap()),
            ClientKey::new("192.0.2.7".parse().unwrap())
        );
    }

    #[test]
    fn account_keys_hide_the_student_number_and_keep_one_slot() {
        let key = account_key("reg", "S{0000001}");
        assert!(!key.contains("S{0000001}"));
        assert_eq!(key.matches('{').count(), 1);
        assert_eq!(key, account_key("reg", " S{0000001} "));
    }
}
