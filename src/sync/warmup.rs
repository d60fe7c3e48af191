//! Building sections' Redis state from PostgreSQL where it is absent, and
//! at start-up also where Redis is behind PostgreSQL (restarted from an
//! older AOF while this process was down). `load.lua` decides inside the
//! script, so instances cannot race.

use std::time::Duration;

use anyhow::anyhow;
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::{bounded, bounded_by, DbError};
use crate::{
    domain::SectionSnapshot,
    metrics::SECTIONS_LOADED,
    seats::{Load, Rebuild, Redis},
    store::engine::{self, Snapshots},
};

/// What a warm-up did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Warmed {
    pub loaded: usize,
    pub present: usize,
    /// Sections found but not loadable (meta gone, outbox not empty).
    pub blocked: usize,
}

async fn load(
    redis: &Redis,
    snapshots: &[SectionSnapshot],
    mode: Rebuild,
) -> anyhow::Result<Warmed> {
    let mut warmed = Warmed::default();
    for snapshot in snapshots {
        match redis.rebuild(snapshot, mode).await?.0 {
            Load::Loaded => warmed.loaded += 1,
            Load::AlreadyPresent => warmed.present += 1,
            Load::OutboxPending => {
                warmed.blocked += 1;
                tracing::error!(
                    section = %snapshot.section,
                    "section state missing while its outbox holds events; run `registrar reconcile`"
                );
            }
        }
    }
    metrics::counter!(SECTIONS_LOADED).increment(warmed.loaded as u64);
    Ok(warmed)
}

/// Loads sections on demand for the request path, one load at a time: when
/// hundreds of requests find the same section missing at once, one reads
/// PostgreSQL and the others find it loaded when their turn comes.
pub struct Loader {
    db: Pool,
    redis: Redis,
    /// Bound of a request-path read (`sync.load_timeout_ms`): a request
    /// waits on it, so it must give up well before the request's deadline.
    deadline: Duration,
    gate: tokio::sync::Mutex<()>,
    /// Every section this process loaded or found loaded: the sweeper's list
    /// while PostgreSQL cannot be asked for one.
    known: std::sync::Mutex<std::collections::HashSet<Uuid>>,
}

impl Loader {
    pub fn new(db: Pool, redis: Redis, deadline: Duration) -> Self {
        Self {
            db,
            redis,
            deadline,
            gate: tokio::sync::Mutex::new(()),
            known: Default::default(),
        }
    }

    fn remember(&self, sections: impl IntoIterator<Item = Uuid>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.extend(sections);
    }

    /// Sections this process knows of.
    pub fn known(&self) -> Vec<Uuid> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.iter().copied().collect()
    }

    /// Loads every section of an active semester that Redis lacks or holds
    /// behind PostgreSQL.
    /// A background task, so its read has the background tasks' bound
    /// ([`super::DB_DEADLINE`]), not a request's.
    pub async fn warm_up(&self) -> anyhow::Result<Warmed> {
        let snapshots = bounded(&self.db, async |c| {
            engine::snapshots(&*c, Snapshots::ActiveSemesters).await
        })
        .await?;
        let warmed = load(&self.redis, &snapshots, Rebuild::Behind).await?;
        self.remember(snapshots.iter().map(|s| s.section));
        Ok(warmed)
    }

    /// Makes sure each of `sections` is in Redis; returns those that exist.
    /// The PostgreSQL read is bounded by `sync.load_timeout_ms`; waiting for
    /// an earlier load's turn is not, since that load is bounded itself.
    pub async fn ensure(&self, sections: &[Uuid]) -> anyhow::Result<Vec<Uuid>> {
        let _turn = self.gate.lock().await;
        let loaded = self.redis.are_loaded(sections).await?;
        let (mut present, mut missing) = (Vec::new(), Vec::new());
        for (section, loaded) in sections.iter().zip(loaded) {
            if loaded {
                present.push(*section);
            } else {
                missing.push(*section);
            }
        }
        if !missing.is_empty() {
            present.extend(self.load_missing(&missing).await?);
        }
        self.remember(present.iter().copied());
        Ok(present)
    }

    /// Loads the given sections if Redis lacks them; returns the ids
    /// PostgreSQL knows.
    async fn load_missing(&self, sections: &[Uuid]) -> anyhow::Result<Vec<Uuid>> {
        let snapshots = bounded_by(&self.db, self.deadline, async |c| {
            engine::snapshots(&*c, Snapshots::Only(sections)).await
        })
        .await
        .map_err(|e| match e {
            DbError::Late => anyhow!(
                "PostgreSQL did not answer the section loader within {} ms; connection dropped",
                self.deadline.as_millis()
            ),
            other => anyhow!(other),
        })?;
        load(&self.redis, &snapshots, Rebuild::Absent).await?;
        Ok(snapshots.iter().map(|s| s.section).collect())
    }
}
