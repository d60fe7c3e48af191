//! A private Redis namespace: a key prefix of one test or run whose keys are
//! removed with its guard. A shared Redis otherwise keeps them: section
//! state has no TTL and idempotency records live a day.

use std::{collections::HashMap, time::Duration};

use super::cluster;

/// How long removing the keys may wait on Redis (connecting, each reply):
/// a stopped private redis-server must not stall a test's teardown.
const PATIENCE: Duration = Duration::from_secs(2);

/// Keys asked for per SCAN step, and so removed per UNLINK.
const BATCH: usize = 1000;

/// A namespace on the Redis at `url` (a server, or a cluster by its
/// `redis+cluster://` URL); every `<name>:*` key is removed when this guard
/// is dropped, also when the test panics.
pub struct Namespace {
    pub name: String,
    url: String,
}

impl Namespace {
    /// A fresh namespace, `prefix` and a random suffix.
    pub fn new(prefix: &str, url: &str) -> Self {
        Self::named(format!("{prefix}{}", uuid::Uuid::new_v4().simple()), url)
    }

    /// A guard for a namespace named elsewhere (e.g. by a configuration).
    pub fn named(name: impl Into<String>, url: &str) -> Self {
        Self {
            name: name.into(),
            url: url.to_string(),
        }
    }

    /// Removes every key of the namespace (SCAN MATCH, then UNLINK batch by
    /// batch, so Redis is never blocked long); returns how many. On a
    /// `redis+cluster://` URL, it does so on every primary that a seed
    /// lists, one UNLINK per slot (a cluster refuses one across slots).
    /// Synchronous, so that `Drop` can call it.
    pub fn clear(&self) -> redis::RedisResult<usize> {
        let Some(seeds) = cluster::seeds(&self.url) else {
            return self.clear_on(&self.url, false);
        };
        let mut last = None;
        for seed in &seeds {
            match cluster::primaries(seed) {
                Ok(primaries) => {
                    let mut removed = 0;
                    for primary in primaries {
                        removed += self.clear_on(&primary, true)?;
                    }
                    return Ok(removed);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "a cluster URL without seeds"))
        }))
    }

    /// Removes the namespace's keys from the one server at `url` (in a
    /// cluster, a primary's SCAN sees its own slots only).
    fn clear_on(&self, url: &str, by_slot: bool) -> redis::RedisResult<usize> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_connection_with_timeout(PATIENCE)?;
        conn.set_read_timeout(Some(PATIENCE))?;
        conn.set_write_timeout(Some(PATIENCE))?;
        let pattern = format!("{}:*", self.name);
        let (mut cursor, mut removed) = (0u64, 0);
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH)
                .query(&mut conn)?;
            if by_slot {
                let mut slots: HashMap<u16, Vec<&String>> = HashMap::new();
                for key in &keys {
                    slots.entry(cluster::key_slot(key)).or_default().push(key);
                }
                for keys in slots.values() {
                    redis::cmd("UNLINK").arg(keys).query::<()>(&mut conn)?;
                }
            } else if !keys.is_empty() {
                redis::cmd("UNLINK").arg(&keys).query::<()>(&mut conn)?;
            }
            removed += keys.len();
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = self.clear() {
            eprintln!(
                "could not remove the keys of Redis namespace {}: {e}",
                self.name
            );
        }
    }
}
