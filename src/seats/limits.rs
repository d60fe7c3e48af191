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

use super::{access::Access, keys, Redis};
use crate::config::RateLimitSettings;

/// Which limit refused a request (the label of `registrar_rate_limited_total`).
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

/// A token to check against its student's access record, with the
/// student's bucket to charge in the same call (none for admins, or with
/// the limits off).
#[derive(Debug, Clone)]
pub struct AccessCheck {
    pub student: Uuid,
    /// The epoch the token was minted with.
    pub epoch: i64,
    pub bucket: Option<Bucket>,
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

    /// Charges every bucket once and checks the token in `access` (whose
    /// own bucket, if any, is charged first), in one round trip. The first
    /// refusing bucket (in that order) decides the verdict; buckets that
    /// allowed the request stay charged, as the request did reach the
    /// service. A bucket remembered as refused answers without Redis, and
    /// then the token is not checked (`None`): the request is refused anyway.
    pub async fn charge(
        &self,
        redis: &Redis,
        access: Option<&AccessCheck>,
        buckets: &[Bucket],
    ) -> RedisResult<(Verdict, Option<Access>)> {
        let own = access.and_then(|a| a.bucket.as_ref());
        if access.is_none() && buckets.is_empty() {
            return Ok((Verdict::Allowed, None));
        }
        if let Some(verdict) = self.remembered_refusal(own.into_iter().chain(buckets)) {
            return Ok((verdict, None));
        }
        let scripts = redis.scripts();
        let mut invocations = Vec::with_capacity(buckets.len() + 1);
        if let Some(check) = access {
            let mut call = scripts.access.prepare_invoke();
            call.key(keys::student_access(&self.namespace, check.student))
                .arg(check.epoch);
            if let Some(bucket) = own {
                call.key(&bucket.key)
                    .arg(bucket.interval_us)
                    .arg(bucket.burst);
            }
            invocations.push(call);
        }
        for bucket in buckets {
            let mut call = scripts.rate_limit.prepare_invoke();
            call.key(&bucket.key)
                .arg(bucket.interval_us)
                .arg(bucket.burst);
            invocations.push(call);
        }
        let mut replies = redis
            .pipelined::<redis::Value>(&invocations)
            .await?
            .into_iter();
        let mut refusal = None;
        let mut checked = None;
        if access.is_some() {
            let reply = replies.next().unwrap_or(redis::Value::Nil);
            let (verdict, wait_ms, hold): (i64, i64, String) = redis::from_redis_value(reply)?;
            checked = Some(match verdict {
                -1 => Access::Revoked,
                -2 => Access::Unknown,
                _ => Access::Stands {
                    hold: (!hold.is_empty()).then_some(hold),
                },
            });
            if let (0, Some(bucket)) = (verdict, own) {
                refusal = Some((bucket, wait_ms));
            }
        }
        for (bucket, reply) in buckets.iter().zip(replies) {
            let (allowed, wait_ms): (i64, i64) = redis::from_redis_value(reply)?;
            if allowed == 0 && refusal.is_none() {
                refusal = Some((bucket, wait_ms));
            }
        }
        let Some((bucket, wait_ms)) = refusal else {
            return Ok((Verdict::Allowed, checked));
        };
        let retry_after = Duration::from_millis(wait_ms.max(1) as u64);
        self.remember_refusal(&bucket.key, Instant::now() + retry_after);
        Ok((
            Verdict::Limited {
                scope: bucket.scope,
                retry_after,
            },
            checked,
        ))
    }

    fn remembered_refusal<'b>(
        &self,
        mut buckets: impl Iterator<Item = &'b Bucket>,
    ) -> Option<Verdict> {
        let refused = self
            .refused
            .lock()
            .expect("the refusal map is never poisoned");
        if refused.is_empty() {
            return None;
        }
        let now = Instant::now();
        buckets.find_map(|bucket| {
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

    /// Before verifying a password: counts the attempt, or says how long
    /// this account is closed to this address.
    pub async fn login_begin(
        &self,
        redis: &Redis,
        student_number: &str,
        client: &ClientKey,
    ) -> RedisResult<LoginGate> {
        let s = &self.settings;
        let (go, ms, detail): (i64, i64, i64) = redis
            .scripts()
            .login_guard
            .key(self.login_keys(student_number, client).as_slice())
            .arg("begin")
            .arg(s.login_free_failures)
            .arg(s.login_backoff_base_ms)
            .arg(s.login_backoff_max_ms)
            .arg(s.login_failure_window_secs.saturating_mul(1000))
            .arg(self.account_interval_ms())
            .arg(s.login_account_burst)
            .invoke_async(&mut redis.conn())
            .await?;
        let wait = Duration::from_millis(ms.max(1) as u64);
        Ok(match (go, detail) {
            (0, 2) => LoginGate::AccountClosed(wait),
            (0, _) => LoginGate::PairLocked(wait),
            _ => LoginGate::Go(LoginAttempt {
                started_lock: (ms > 0).then(|| Duration::from_millis(ms as u64)),
                charged_account: detail == 1,
            }),
        })
    }

    /// After a right password: clears this address's attempts, remembers
    /// the address as the account's, and gives back the account bucket's
    /// charge.
    pub async fn login_succeeded(
        &self,
        redis: &Redis,
        student_number: &str,
        client: &ClientKey,
        attempt: LoginAttempt,
    ) -> RedisResult<()> {
        let known_ms = self
            .settings
            .login_known_address_days
            .saturating_mul(86_400_000);
        let _: (i64, i64, i64) = redis
            .scripts()
            .login_guard
            .key(self.login_keys(student_number, client).as_slice())
            .arg("success")
            .arg(u8::from(attempt.charged_account))
            .arg(self.account_interval_ms())
            .arg(known_ms)
            .invoke_async(&mut redis.conn())
            .await?;
        Ok(())
    }

    fn login_keys(&self, student_number: &str, client: &ClientKey) -> [String; 3] {
        let keys = keys::LoginKeys::new(&self.namespace, student_number, &client.0);
        [keys.pair, keys.account, keys.known]
    }

    /// The account bucket's refill interval (validated: 1..=3.6M per hour).
    fn account_interval_ms(&self) -> u64 {
        (3_600_000.0 / self.settings.login_account_per_hour)
            .round()
            .max(1.0) as u64
    }
}

/// What `lua/login_guard.lua` decided before a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginGate {
    /// Verify the password; the attempt is already counted.
    Go(LoginAttempt),
    /// This (account, address) pair is locked for the duration.
    PairLocked(Duration),
    /// The account's attempts across all addresses are spent for the duration.
    AccountClosed(Duration),
}

/// An admitted login attempt, as [`Limiter::login_succeeded`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoginAttempt {
    /// The lock this attempt started (it used the pair's last free attempt).
    pub started_lock: Option<Duration>,
    /// Whether it took from the account's bucket (known addresses do not).
    pub charged_account: bool,
}

/// The client address as a bucket name: IPv4 as is, IPv6 by its /64 prefix
/// (one host or home usually owns a whole /64, so limiting single IPv6
/// addresses would be trivially evaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey(String);

impl ClientKey {
    pub fn new(addr: IpAddr) -> Self {
        Self(address_group(addr).to_string())
    }
}

/// The client an address belongs to: an IPv6 address by its /64 prefix, an
/// IPv4-mapped one as its IPv4 address. Buckets and the per-address
/// connection cap both count clients this way.
pub fn address_group(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{cmp::Reverse, collections::BinaryHeap};

    /// `lua/login_guard.lua`'s policy replayed on a virtual clock: an
    /// attacker guessing one account's password from `addresses` addresses,
    /// each trying again the moment it is allowed (refused attempts cost
    /// nothing and count nothing). Returns the attempts evaluated in each of
    /// the first `hours` hours. The integration tests in tests/api/limits.rs
    /// check the script against the same rules on Redis's clock.
    fn guesses_per_hour(s: &RateLimitSettings, addresses: usize, hours: u64) -> Vec<u64> {
        const HOUR: u64 = 3_600_000;
        let interval = (3_600_000.0 / s.login_account_per_hour).round() as u64;
        let burst = u64::from(s.login_account_burst);
        let free = u64::from(s.login_free_failures);
        let mut per_hour = vec![0; hours as usize];
        // Per address: attempts made and the end of its lock.
        let mut fails = vec![0u64; addresses];
        let mut locked_until = vec![0u64; addresses];
        let mut account_tat = 0u64;
        let mut next: BinaryHeap<Reverse<(u64, usize)>> =
            (0..addresses).map(|a| Reverse((0, a))).collect();
        while let Some(Reverse((now, a))) = next.pop() {
            if now >= hours * HOUR {
                break;
            }
            if locked_until[a] > now {
                next.push(Reverse((locked_until[a], a)));
                continue;
            }
            let new_tat = account_tat.max(now) + interval;
            let allowed_at = new_tat.saturating_sub(interval * burst);
            if allowed_at > now {
                next.push(Reverse((allowed_at, a)));
                continue;
            }
            account_tat = new_tat;
            per_hour[(now / HOUR) as usize] += 1;
            fails[a] += 1;
            if fails[a] >= free {
                let doublings = (fails[a] - free).min(40) as u32;
                let lock = s
                    .login_backoff_base_ms
                    .saturating_mul(1 << doublings)
                    .min(s.login_backoff_max_ms);
                locked_until[a] = now + lock;
            }
            next.push(Reverse((now, a)));
        }
        per_hour
    }

    /// The figures README.md's security section gives, for the shipped
    /// settings: `cargo test --lib guesses_per_hour -- --nocapture` prints them.
    #[test]
    fn guesses_per_hour_against_one_account_with_the_shipped_settings() {
        let config = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config"));
        let settings = crate::config::Settings::load_from(config, "local")
            .expect("config/default.toml loads")
            .rate_limit;
        let mut table = Vec::new();
        for addresses in [1, 10, 1000] {
            let hours = guesses_per_hour(&settings, addresses, 24);
            println!(
                "{addresses:>5} addresses: {:>4} guesses in the first hour, {:>3} in the 24th, {:>5} in 24 h",
                hours[0],
                hours[23],
                hours.iter().sum::<u64>()
            );
            table.push((hours[0], hours[23], hours.iter().sum::<u64>()));
        }
        // One address: the pair's doubling locks (4 an hour once at 15 min).
        // From ten addresses on, the account bucket binds: its 100, then 20
        // an hour, however many addresses take part.
        assert_eq!(
            table,
            vec![(17, 4, 109), (119, 20, 579), (119, 20, 579)],
            "README.md's security section quotes these figures"
        );
    }

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
