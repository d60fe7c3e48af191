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

use redis::RedisResult;
use uuid::Uuid;

use super::{keys, Redis};
use crate::config::RateLimitSettings;

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

/// The limits of one deployment (their scripts are in [`super::Scripts`]).
pub struct Limiter {
    settings: RateLimitSettings,
    /// Prefix of the bucket keys (the instance's Redis namespace).
    namespace: String,
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
            keys::student_rate(&self.namespace, student),
            self.settings.student_per_second,
            self.settings.student_burst,
        )
    }

    /// The bucket of every API request from one client address.
    pub fn address(&self, client: &ClientKey) -> Bucket {
        self.bucket(
            Scope::Address,
            keys::address_rate(&self.namespace, &client.0),
            self.settings.address_per_second,
            self.settings.address_burst,
        )
    }

    /// The bucket of login attempts from one client address.
    pub fn login_address(&self, client: &ClientKey) -> Bucket {
        self.bucket(
            Scope::Login,
            keys::address_login(&self.namespace, &client.0),
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
        let scripts = redis.scripts();
        let invocations: Vec<_> = buckets
            .iter()
            .map(|bucket| {
                let mut call = scripts.rate_limit.prepare_invoke();
                call.key(&bucket.key)
                    .arg(bucket.interval_us)
                    .arg(bucket.burst);
                call
            })
            .collect();
        let replies: Vec<(i64, i64)> = redis.pipelined(&invocations).await?;
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
        redis
            .scripts()
            .login_guard
            .key(keys::login_account(&self.namespace, student_number))
            .arg(op)
            .arg(s.login_free_failures)
            .arg(s.login_backoff_base_ms)
            .arg(s.login_backoff_max_ms)
            .arg(s.login_failure_window_secs.saturating_mul(1000))
            .invoke_async(&mut redis.conn())
            .await
    }
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
}
