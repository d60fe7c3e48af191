//! Comparing Redis with PostgreSQL, section by section, at a consistent point.
//!
//! Under traffic the two sides are never equal at one instant: Redis is
//! ahead by the events still in the outbox. So a section is compared only
//! where both describe the same point of its history (SPEC §13):
//!
//! 1. PostgreSQL's snapshot is read in one repeatable-read transaction: its
//!    rows are the result of the events up to its `last_seq`, P.
//! 2. Then Redis's state of the section is read in one atomic step
//!    (`inspect.lua`), with its sequence S and outbox length.
//! 3. Only if S = P and the outbox is empty are they compared. Events reach
//!    PostgreSQL only after Redis issued them, so S never falls below a P
//!    read before it: S > P or a waiting outbox means the section is moving
//!    (it is re-read, a bounded number of times, then reported `Pending`,
//!    which is not drift). S < P is real drift: Redis lost events that
//!    PostgreSQL has.
//!
//! Repair trusts PostgreSQL, the system of record, and is decided inside
//! Redis: `load.lua` in mode `exact` rebuilds only while S is still P and
//! the outbox still empty, so a registration acknowledged between the
//! comparison and the repair is never erased, and the sequence stays P
//! (never below what was acknowledged). A Redis behind PostgreSQL is
//! rebuilt in mode `behind`, which only raises its sequence.

use std::{collections::BTreeSet, time::Duration};

use deadpool_postgres::Pool;
use serde::Serialize;
use tokio_postgres::IsolationLevel;
use uuid::Uuid;

use crate::{
    domain::SectionSnapshot,
    metrics::RECONCILE_DRIFT,
    seats::{LiveState, Load, Rebuild, Redis, SectionState},
    store::engine::{self, Snapshots},
};

/// Reads of a moving section before it is reported pending: enough for a
/// section between two bursts to be caught at rest, few enough for the
/// in-server gauge to finish well within its deadline.
const ROUNDS: usize = 5;
/// Pause between two rounds: about what the shards need to apply and
/// acknowledge a batch.
const PAUSE: Duration = Duration::from_millis(50);

/// How one section differs. Each variant carries both sides' values; a
/// Redis field deleted by hand shows as `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// Redis has no state for the section.
    MissingInRedis,
    /// The section never stood still while it was read: events wait in the
    /// outbox or Redis is ahead. PostgreSQL is behind, not wrong.
    Pending {
        events: u64,
        redis_seq: i64,
        postgres_seq: i64,
    },
    /// Redis's sequence is below PostgreSQL's: it lost events PostgreSQL has.
    Sequence {
        redis: i64,
        postgres: i64,
    },
    /// The flag reserve.lua enforces (section and semester both active).
    Active {
        redis: Option<bool>,
        postgres: bool,
    },
    /// The registration window (unix ms).
    Window {
        redis_start: Option<i64>,
        redis_end: Option<i64>,
        postgres_start: i64,
        postgres_end: i64,
    },
    Capacity {
        redis: Option<i64>,
        postgres: i64,
    },
    WaitlistLimit {
        redis: Option<i64>,
        postgres: i64,
    },
    /// The free-seat counter against capacity minus the roster.
    FreeSeats {
        redis: Option<i64>,
        postgres: i64,
    },
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
    /// The waitlist mode (offer or auto) or the offers' lifetime (ms).
    WaitlistPolicy {
        redis_offer: Option<bool>,
        redis_ttl_ms: Option<i64>,
        postgres_offer: bool,
        postgres_ttl_ms: i64,
    },
    /// Open offers (student, deadline ms) only one side has, or with
    /// another deadline.
    Offers {
        only_redis: Vec<(Uuid, i64)>,
        only_postgres: Vec<(Uuid, i64)>,
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

/// What one comparison found.
enum Verdict {
    /// Not at a consistent point; nothing was compared.
    Moving(Difference),
    /// Compared at a consistent point; a repair would use this mode.
    Compared(Vec<Difference>, Rebuild),
}

fn judge(snapshot: &SectionSnapshot, state: &SectionState) -> Verdict {
    let applied = snapshot.last_seq;
    if state.outbox > 0 || state.seq > applied {
        return Verdict::Moving(Difference::Pending {
            events: state.outbox,
            redis_seq: state.seq,
            postgres_seq: applied,
        });
    }
    if state.seq < applied {
        let mut differences = vec![Difference::Sequence {
            redis: state.seq,
            postgres: applied,
        }];
        if state.live.is_none() {
            differences.push(Difference::MissingInRedis);
        }
        return Verdict::Compared(differences, Rebuild::Behind);
    }
    let differences = match &state.live {
        None => vec![Difference::MissingInRedis],
        Some(live) => compare(snapshot, live),
    };
    Verdict::Compared(differences, Rebuild::Exact)
}

/// Every field the section scripts read, both sides at the same sequence.
fn compare(snapshot: &SectionSnapshot, live: &LiveState) -> Vec<Difference> {
    let mut differences = Vec::new();
    if live.active != Some(snapshot.active()) {
        differences.push(Difference::Active {
            redis: live.active,
            postgres: snapshot.active(),
        });
    }
    if live.registration_start_ms != Some(snapshot.registration_start_ms)
        || live.registration_end_ms != Some(snapshot.registration_end_ms)
    {
        differences.push(Difference::Window {
            redis_start: live.registration_start_ms,
            redis_end: live.registration_end_ms,
            postgres_start: snapshot.registration_start_ms,
            postgres_end: snapshot.registration_end_ms,
        });
    }
    let capacity = i64::from(snapshot.capacity);
    if live.capacity != Some(capacity) {
        differences.push(Difference::Capacity {
            redis: live.capacity,
            postgres: capacity,
        });
    }
    let limit = i64::from(snapshot.waitlist_limit);
    if live.waitlist_limit != Some(limit) {
        differences.push(Difference::WaitlistLimit {
            redis: live.waitlist_limit,
            postgres: limit,
        });
    }
    // As load.lua sets it: offers hold their seats.
    let free = (capacity - snapshot.enrolled.len() as i64 - snapshot.offers.len() as i64).max(0);
    if live.seats != Some(free) {
        differences.push(Difference::FreeSeats {
            redis: live.seats,
            postgres: free,
        });
    }
    let redis_set: BTreeSet<Uuid> = live.enrolled.iter().copied().collect();
    let pg_set: BTreeSet<Uuid> = snapshot.enrolled.iter().copied().collect();
    if redis_set != pg_set {
        differences.push(Difference::Enrolled {
            only_redis: redis_set.difference(&pg_set).copied().collect(),
            only_postgres: pg_set.difference(&redis_set).copied().collect(),
        });
    }
    if live.waitlisted != snapshot.waitlisted {
        differences.push(Difference::Waitlist {
            redis: live.waitlisted.clone(),
            postgres: snapshot.waitlisted.clone(),
        });
    }
    // A state loaded before waitlist modes existed has none: auto, and the
    // default lifetime (lua/lib/seat.lua).
    if live.offer_mode.unwrap_or(false) != snapshot.waitlist.offer
        || live.offer_ttl_ms.unwrap_or(86_400_000) != snapshot.waitlist.offer_ttl_ms
    {
        differences.push(Difference::WaitlistPolicy {
            redis_offer: live.offer_mode,
            redis_ttl_ms: live.offer_ttl_ms,
            postgres_offer: snapshot.waitlist.offer,
            postgres_ttl_ms: snapshot.waitlist.offer_ttl_ms,
        });
    }
    let redis_offers: BTreeSet<(Uuid, i64)> = live.offers.iter().copied().collect();
    let pg_offers: BTreeSet<(Uuid, i64)> = snapshot.offers.iter().copied().collect();
    if redis_offers != pg_offers {
        differences.push(Difference::Offers {
            only_redis: redis_offers.difference(&pg_offers).copied().collect(),
            only_postgres: pg_offers.difference(&redis_offers).copied().collect(),
        });
    }
    differences
}

/// What became of one section in one round.
enum Outcome {
    /// Equal at a consistent point.
    Agree,
    /// Final: compared, and repaired when asked and possible.
    Report(SectionReport),
    /// Read again next round: it moved before it could be compared (or,
    /// with `found` not empty, between the comparison and the repair).
    Again {
        pending: Difference,
        found: Vec<Difference>,
    },
}

async fn check(redis: &Redis, snapshot: &SectionSnapshot, fix: bool) -> anyhow::Result<Outcome> {
    let state = redis.inspect(snapshot.section).await?;
    let (differences, mode) = match judge(snapshot, &state) {
        Verdict::Moving(pending) => {
            return Ok(Outcome::Again {
                pending,
                found: Vec::new(),
            })
        }
        Verdict::Compared(differences, _) if differences.is_empty() => return Ok(Outcome::Agree),
        Verdict::Compared(differences, mode) => (differences, mode),
    };
    let repaired = fix && redis.rebuild(snapshot, mode).await?.0 == Load::Loaded;
    if fix && !repaired {
        // The script found the section no longer at the compared point.
        return Ok(Outcome::Again {
            pending: Difference::Pending {
                events: state.outbox,
                redis_seq: state.seq,
                postgres_seq: snapshot.last_seq,
            },
            found: differences,
        });
    }
    Ok(Outcome::Report(SectionReport {
        section: snapshot.section,
        differences,
        repaired,
    }))
}

/// PostgreSQL's side: one repeatable-read transaction, so every snapshot's
/// rosters are exactly the result of the events up to its `last_seq`.
async fn snapshots(db: &Pool, which: Snapshots<'_>) -> anyhow::Result<Vec<SectionSnapshot>> {
    let mut client = db.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let snapshots = engine::snapshots(&tx, which).await?;
    tx.commit().await?;
    Ok(snapshots)
}

/// Compares every section at a consistent point; with `fix`, rebuilds the
/// drifted (and missing) sections' Redis state from PostgreSQL, each only
/// if it is still at the point compared. Sets the drift gauge. Sections
/// that agree are left out of the answer.
pub async fn reconcile(db: &Pool, redis: &Redis, fix: bool) -> anyhow::Result<Vec<SectionReport>> {
    let reports = compare_sections(db, redis, Snapshots::All, fix).await?;
    let drift = reports
        .iter()
        .filter(|r| r.is_drift() && !r.repaired)
        .count();
    metrics::gauge!(RECONCILE_DRIFT).set(drift as f64);
    Ok(reports)
}

/// [`reconcile`] for `sections` only (an admin asking about one section);
/// the drift gauge stays the whole check's.
pub async fn reconcile_sections(
    db: &Pool,
    redis: &Redis,
    sections: &[Uuid],
    fix: bool,
) -> anyhow::Result<Vec<SectionReport>> {
    compare_sections(db, redis, Snapshots::Only(sections), fix).await
}

async fn compare_sections(
    db: &Pool,
    redis: &Redis,
    which: Snapshots<'_>,
    fix: bool,
) -> anyhow::Result<Vec<SectionReport>> {
    let mut reports = Vec::new();
    let mut round = snapshots(db, which).await?;
    for attempt in 1..=ROUNDS {
        let mut moving = Vec::new();
        for snapshot in &round {
            match check(redis, snapshot, fix).await? {
                Outcome::Agree => {}
                Outcome::Report(report) => reports.push(report),
                Outcome::Again { pending, found } => {
                    moving.push((snapshot.section, pending, found))
                }
            }
        }
        if moving.is_empty() {
            break;
        }
        if attempt == ROUNDS {
            reports.extend(moving.into_iter().map(|(section, pending, found)| {
                let mut differences = vec![pending];
                differences.extend(found);
                SectionReport {
                    section,
                    differences,
                    repaired: false,
                }
            }));
            break;
        }
        tokio::time::sleep(PAUSE).await;
        let ids: Vec<Uuid> = moving.iter().map(|(section, ..)| *section).collect();
        round = snapshots(db, Snapshots::Only(&ids)).await?;
    }
    Ok(reports)
}
