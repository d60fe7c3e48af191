//! What every request handler shares: settings, pools, the Redis handle and
//! the services built on them. Built once by [`crate::startup`]; it knows
//! nothing of HTTP, so the HTTP side depends on it and not the other way.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::{
    auth::{Passwords, Tokens},
    catalog::CatalogCache,
    config::Settings,
    health::DependencyChecks,
    registration::Registrar,
    seats::{limits::Limiter, Redis},
    supervise::Supervisor,
    sync::{sweeper::Backlog, Persistence},
};

/// Why register, drop and capacity changes are not served yet: the two
/// conditions of `/ready` that concern Redis's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotServing {
    /// The scripts are not loaded or the warm-up has not finished: a section
    /// Redis holds may still be behind PostgreSQL.
    WarmingUp,
    /// Redis may have restarted and is being checked against PostgreSQL.
    Revalidating,
}

/// Shared by every request handler.
pub struct AppState {
    pub settings: Settings,
    /// The API's PostgreSQL pool, on the primary: everything that writes
    /// or must see the latest commit.
    pub db: Pool,
    /// Catalog and student-view reads: the replica at `database.read_url`,
    /// or the same pool as `db` when none is configured.
    pub read_db: Pool,
    /// The persistence side's pool (shards, sweeper, loader, revalidator).
    pub sync_db: Pool,
    pub redis: Redis,
    pub tokens: Tokens,
    pub passwords: Passwords,
    pub metrics: PrometheusHandle,
    pub persistence: Persistence,
    pub backlog: Arc<Backlog>,
    /// Catalog rows kept briefly for the browse endpoints.
    pub catalog_cache: CatalogCache,
    /// Register, drop and capacity changes: seats → loader → persistence.
    pub registrar: Registrar,
    /// Rate limits and the failed-login back-off.
    pub limiter: Limiter,
    /// `/health`'s Redis and PostgreSQL checks, shared for a moment.
    pub dependency_checks: DependencyChecks,
    /// Live updates: this instance's subscription and its open streams.
    pub live: Arc<crate::live::Hub>,
    /// Watches the background tasks; `/ready` fails once one has died.
    pub supervisor: Supervisor,
    pub started: Instant,
    /// Set when shutdown begins: `/ready` answers 503 from then on.
    pub(crate) shutting_down: AtomicBool,
    /// Set once the scripts are loaded and warm-up finished: `/ready` needs it.
    pub(crate) warmed_up: AtomicBool,
    /// Set once every account's access record has been copied to Redis
    /// ([`crate::access::listen`]); warm-up waits for it.
    pub(crate) access_copied: AtomicBool,
}

impl AppState {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.live.close();
    }

    pub fn is_access_copied(&self) -> bool {
        self.access_copied.load(Ordering::Acquire)
    }

    pub(crate) fn access_copy_done(&self) {
        self.access_copied.store(true, Ordering::Release);
    }

    pub fn is_warmed_up(&self) -> bool {
        self.warmed_up.load(Ordering::Relaxed)
    }

    /// The one definition of "Redis's state may be acted on": warm-up done
    /// and Redis trusted. `/ready` reports it; register, drop and capacity
    /// changes refuse until it holds.
    pub fn registration_gate(&self) -> Result<(), NotServing> {
        if !self.is_warmed_up() {
            Err(NotServing::WarmingUp)
        } else if !self.redis.watch().is_open() {
            Err(NotServing::Revalidating)
        } else {
            Ok(())
        }
    }

    pub(crate) fn warm_up_done(&self) {
        self.warmed_up.store(true, Ordering::Relaxed);
    }
}
