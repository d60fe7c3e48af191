//! Whether the Redis the hot path talks to can be trusted right now.
//!
//! Redis restarted from an AOF or snapshot older than what PostgreSQL holds
//! comes back with sections whose sequence is behind PostgreSQL's
//! `last_seq`. A reservation on such a state takes a sequence PostgreSQL has
//! already applied, and the workers would skip it as a replay: an
//! acknowledged registration silently lost. So every sign that the server
//! behind the shared connection may have changed (a connection error on it,
//! a new `run_id`) closes the gate: seat-changing scripts answer
//! [`Revalidating`](RedisWatch::closed_error) (503 with Retry-After) until
//! the revalidator (`sync::revalidate`) has compared Redis with PostgreSQL
//! and rebuilt what is behind, then reopens it.
//!
//! A seat-changing call holds a [`Permit`] for its duration. The revalidator
//! waits for permits taken before the gate closed, and a call whose
//! connection changed under it (the generation moved) reports an error
//! instead of its outcome: its effect is unknown to the client (like any
//! 503) rather than acknowledged on a state that may be rebuilt away.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
};

use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct RedisWatch {
    open: AtomicBool,
    /// Bumped on every sign of a (possible) reconnection.
    generation: AtomicU64,
    in_flight: AtomicUsize,
    /// `run_id` of the server whose data was last validated.
    trusted: Mutex<Option<String>>,
    /// Sections a worker found contradicting PostgreSQL: rebuild them.
    suspect_sections: Mutex<BTreeSet<Uuid>>,
    /// Wakes the revalidator.
    pub(crate) wake: Notify,
}

/// Held by a seat-changing call; see the module documentation.
pub struct Permit<'a> {
    watch: &'a RedisWatch,
    generation: u64,
}

impl Permit<'_> {
    /// True when nothing suggested a reconnection since the permit was taken.
    pub fn still_valid(&self) -> bool {
        self.watch.generation.load(Ordering::SeqCst) == self.generation
            && self.watch.open.load(Ordering::SeqCst)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.watch.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RedisWatch {
    /// Open: until a first check says otherwise, Redis is taken as found (a
    /// start-up with PostgreSQL away cannot compare, and must still serve).
    pub fn new() -> Self {
        Self {
            open: AtomicBool::new(true),
            ..Self::default()
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// A permit for one seat-changing call, or None while the gate is closed.
    pub fn enter(&self) -> Option<Permit<'_>> {
        // Count first, then look: the revalidator closes, then waits for the
        // count to reach zero, so it never misses a call that got in.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let permit = Permit {
            watch: self,
            generation: self.generation.load(Ordering::SeqCst),
        };
        self.open.load(Ordering::SeqCst).then_some(permit)
    }

    /// Calls holding a permit right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Closes the gate because the connection failed (Redis may have
    /// restarted) and wakes the revalidator.
    pub fn connection_failed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.open.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                "Redis connection failed; registration paused until Redis is revalidated"
            );
        }
        self.wake.notify_one();
    }

    /// Closes the gate so that `section` is rebuilt from PostgreSQL.
    pub fn rebuild_section(&self, section: Uuid) {
        let mut suspects = self
            .suspect_sections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        suspects.insert(section);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.open.store(false, Ordering::SeqCst);
        drop(suspects);
        self.wake.notify_one();
    }

    /// Sections waiting for a forced rebuild (taken: the caller rebuilds them).
    pub(crate) fn take_suspects(&self) -> Vec<Uuid> {
        let mut set = self
            .suspect_sections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *set).into_iter().collect()
    }

    /// Puts sections back for the next attempt (their rebuild did not finish).
    pub(crate) fn return_suspects(&self, sections: &[Uuid]) {
        self.suspect_sections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(sections);
    }

    #[cfg(test)]
    fn has_suspects(&self) -> bool {
        !self
            .suspect_sections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    pub fn trusted_run_id(&self) -> Option<String> {
        self.trusted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes the gate because Redis is not the server validated last.
    pub(crate) fn server_changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.open.store(false, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The current generation: a revalidation that started at it may open
    /// the gate only if it has not moved since.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Records `run_id` as validated and opens the gate, unless something
    /// happened since `generation` (another connection failure, a section
    /// reported for rebuild): then the gate stays closed and the caller
    /// goes round again. True when opened.
    pub(crate) fn validated(&self, run_id: String, generation: u64) -> bool {
        // Under the suspects' lock: `rebuild_section` cannot slip in between
        // the check and the opening.
        let suspects = self
            .suspect_sections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *self.trusted.lock().unwrap_or_else(|e| e.into_inner()) = Some(run_id);
        if !suspects.is_empty() || self.generation.load(Ordering::SeqCst) != generation {
            self.wake.notify_one();
            return false;
        }
        self.open.store(true, Ordering::SeqCst);
        true
    }

    /// Takes `run_id` as the trusted server if none was recorded yet.
    pub(crate) fn first_seen(&self, run_id: &str) -> bool {
        let mut trusted = self.trusted.lock().unwrap_or_else(|e| e.into_inner());
        if trusted.is_none() {
            *trusted = Some(run_id.to_string());
            return true;
        }
        false
    }

    /// The error a seat-changing call returns while the gate is closed.
    pub fn closed_error() -> redis::RedisError {
        redis::RedisError::from((
            redis::ErrorKind::Io,
            "Redis is being revalidated after a connection loss",
        ))
    }

    /// The error a call returns when the connection changed while it ran.
    pub fn changed_error() -> redis::RedisError {
        redis::RedisError::from((
            redis::ErrorKind::Io,
            "the Redis connection changed during the call; outcome unknown",
        ))
    }
}

/// Errors that say the connection (not a command) failed.
pub fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_unrecoverable_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_failure_closes_the_gate_and_invalidates_running_calls() {
        let watch = RedisWatch::new();
        let permit = watch.enter().expect("open at start");
        assert!(permit.still_valid());
        watch.connection_failed();
        assert!(!permit.still_valid(), "a call that spanned the failure");
        assert!(watch.enter().is_none(), "closed until revalidated");
        drop(permit);
        assert_eq!(watch.in_flight(), 0, "refused calls do not stay counted");
        let generation = watch.generation();
        assert!(watch.validated("abc".into(), generation));
        assert!(watch.enter().is_some());
        assert_eq!(watch.trusted_run_id().as_deref(), Some("abc"));
    }

    #[test]
    fn suspect_sections_are_taken_once_and_can_be_returned() {
        let watch = RedisWatch::new();
        let s = Uuid::new_v4();
        watch.rebuild_section(s);
        assert!(!watch.is_open());
        assert_eq!(watch.take_suspects(), vec![s]);
        assert!(!watch.has_suspects());
        watch.return_suspects(&[s]);
        assert!(watch.has_suspects());
        let generation = watch.generation();
        assert!(
            !watch.validated("abc".into(), generation),
            "stays closed while a section waits for its rebuild"
        );
        watch.take_suspects();
        watch.connection_failed();
        assert!(
            !watch.validated("abc".into(), generation),
            "a failure during the revalidation sends it round again"
        );
        assert!(watch.validated("abc".into(), watch.generation()));
    }
}
