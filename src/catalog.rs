//! The browse side's short-lived memory: catalog rows from PostgreSQL and
//! live counts from Redis, shared between requests for a moment.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use uuid::Uuid;

use crate::{seats::LiveCounts, store::catalog};

/// Catalog rows read from PostgreSQL, kept for `api.catalog_cache_ms`.
///
/// Names, rooms and capacities change rarely (and admin writes clear the
/// cache); the counts students care about come live from Redis on every
/// request anyway. Without it, browsing dominated PostgreSQL under the peak
/// mix (BENCHMARKS.md). Only rows that exist are kept, and each map is
/// bounded, so unknown ids cannot grow it.
pub struct CatalogCache {
    ttl: Duration,
    pub(crate) semesters: Timed<Arc<Vec<catalog::Section>>>,
    pub(crate) sections: Timed<catalog::Section>,
    /// How long a semester's live counts are shared between requests.
    pub(crate) live_ttl: Duration,
    /// Live counts of a semester's sections, in the order of `semesters`.
    pub(crate) live: Timed<Arc<Vec<Option<LiveCounts>>>>,
}

/// Values by id with the time they were read.
pub(crate) type Timed<T> = Mutex<HashMap<Uuid, (Instant, T)>>;

/// Entries per map before it is emptied (a bound, not an eviction policy:
/// a registrar has a few thousand sections).
const CACHE_ENTRIES: usize = 20_000;

impl CatalogCache {
    pub fn new(ttl: Duration, live_ttl: Duration) -> Self {
        Self {
            ttl,
            semesters: Mutex::default(),
            sections: Mutex::default(),
            live_ttl,
            live: Mutex::default(),
        }
    }

    /// Forgets everything (after an admin change).
    pub fn clear(&self) {
        self.semesters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.sections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub(crate) fn get<T: Clone>(&self, map: &Timed<T>, id: Uuid) -> Option<T> {
        self.get_within(map, id, self.ttl)
    }

    pub(crate) fn get_within<T: Clone>(
        &self,
        map: &Timed<T>,
        id: Uuid,
        ttl: Duration,
    ) -> Option<T> {
        let map = map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&id)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, v)| v.clone())
    }

    pub(crate) fn put<T>(&self, map: &Timed<T>, id: Uuid, value: T) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_ENTRIES {
            map.clear();
        }
        map.insert(id, (Instant::now(), value));
    }
}
