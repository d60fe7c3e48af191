//! Comparing Redis with PostgreSQL, section by section.
//!
//! After the queues drain, both must hold the same rosters, waitlist order
//! and capacity (SPEC §2, convergence). A section whose outbox still holds
//! events is `pending`, not drift: PostgreSQL is behind, not different.
//! Repair trusts PostgreSQL, the system of record: the section's Redis
//! state is rebuilt from it, which is only done when its outbox is empty.

use std::collections::BTreeSet;

use deadpool_postgres::Pool;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    domain::SectionSnapshot,
    metrics::RECONCILE_DRIFT,
    seats::{Load, Redis},
    store::engine::{self, Snapshots},
};

/// How one section differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// Redis has no state for the section.
    MissingInRedis,
    /// Events wait in the outbox: PostgreSQL is behind, not wrong.
    Pending { events: u64 },
    /// Enrolled students only one side has.
    Enrolled {
        only_redis: Vec<Uuid>,
        only_postgres: Vec<Uuid>,
    },
    /// Same waitlisted students or not, the order differs.
    Waitlist {
        redis: Vec<Uuid>,
        postgres: Vec<Uuid>,
    },
    /// Capacity or free seats disagree.
    Seats {
        redis_capacity: i64,
        postgres_capacity: i64,
        redis_free: i64,
        postgres_free: i64,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct SectionReport {
    pub section: Uuid,
    pub differences: Vec<Difference>,
    /// The section's Redis state was rebuilt from PostgreSQL.
    pub repaired: bool,
}

impl SectionReport {
    /// A real disagreement (not merely a section still draining).
    pub fn is_drift(&self) -> bool {
        self.differences
            .iter()
            .any(|d| !matches!(d, Difference::Pending { .. }))
    }
}

async fn compare(redis: &Redis, snapshot: &SectionSnapshot) -> anyhow::Result<Vec<Difference>> {
    let section = snapshot.section;
    let (heads, counts) = (
        redis.outbox_heads(&[section]).await?,
        redis.live_counts(&[section]).await?,
    );
    let pending = heads.first().map_or(0, |(_, len)| *len);
    let mut differences = Vec::new();
    if pending > 0 {
        differences.push(Difference::Pending { events: pending });
    }
    let Some(live) = counts.first().copied().flatten() else {
        differences.push(Difference::MissingInRedis);
        return Ok(differences);
    };
    if pending > 0 {
        return Ok(differences);
    }
    let (enrolled, waiting) = redis.roster(section).await?;
    let redis_set: BTreeSet<Uuid> = enrolled.into_iter().collect();
    let pg_set: BTreeSet<Uuid> = snapshot.enrolled.iter().copied().collect();
    if redis_set != pg_set {
        differences.push(Difference::Enrolled {
            only_redis: redis_set.difference(&pg_set).copied().collect(),
            only_postgres: pg_set.difference(&redis_set).copied().collect(),
        });
    }
    if waiting != snapshot.waitlisted {
        differences.push(Difference::Waitlist {
            redis: waiting,
            postgres: snapshot.waitlisted.clone(),
        });
    }
    let pg_free = i64::from(snapshot.capacity) - snapshot.enrolled.len() as i64;
    if live.capacity != i64::from(snapshot.capacity) || live.seats_available != pg_free {
        differences.push(Difference::Seats {
            redis_capacity: live.capacity,
            postgres_capacity: i64::from(snapshot.capacity),
            redis_free: live.seats_available,
            postgres_free: pg_free,
        });
    }
    Ok(differences)
}

/// Compares every section; with `fix`, rebuilds drifted (and missing)
/// sections' Redis state from PostgreSQL. Sets the drift gauge.
pub async fn reconcile(db: &Pool, redis: &Redis, fix: bool) -> anyhow::Result<Vec<SectionReport>> {
    let client = db.get().await?;
    let snapshots = engine::snapshots(&client, Snapshots::All).await?;
    drop(client);
    let mut reports = Vec::new();
    for snapshot in &snapshots {
        let differences = compare(redis, snapshot).await?;
        if differences.is_empty() {
            continue;
        }
        let mut report = SectionReport {
            section: snapshot.section,
            differences,
            repaired: false,
        };
        let drained = !report
            .differences
            .iter()
            .any(|d| matches!(d, Difference::Pending { .. }));
        if fix && report.is_drift() && drained {
            redis.forget_section(snapshot.section).await?;
            report.repaired = redis.load(snapshot).await? == Load::Loaded;
        }
        reports.push(report);
    }
    let drift = reports
        .iter()
        .filter(|r| r.is_drift() && !r.repaired)
        .count();
    metrics::gauge!(RECONCILE_DRIFT).set(drift as f64);
    Ok(reports)
}
