//! Checking the promises of SPEC §2 against both stores, after the queues
//! drained: what every load run ends with, and what an operator can run.

use std::collections::{BTreeSet, HashMap};

use deadpool_postgres::Pool;
use serde::Serialize;
use uuid::Uuid;

use crate::{seats::Redis, store::audit as store, sync::reconcile};

/// The result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub passed: bool,
    /// What was wrong (empty when it passed).
    pub detail: String,
}

fn finding(check: &'static str, problems: Vec<String>) -> Finding {
    Finding {
        check,
        passed: problems.is_empty(),
        detail: problems.into_iter().take(5).collect::<Vec<_>>().join("; "),
    }
}

/// How long one sweep may take beyond its interval, in the bound on how late
/// an offer may still hold its seat: the sweeper lapses due offers every
/// `sync.sweep_interval_ms` (`sync::sweeper`), and a pass over the sections
/// takes time of its own.
pub const SWEEP_ALLOWANCE_MS: i64 = 1_000;

/// Audits `sections`. `acknowledged` lists, per section, the students the
/// service told "enrolled" (after applying the drops and promotions it
/// acknowledged too); each must be enrolled in PostgreSQL.
/// `sweep_interval_ms` is the running service's (`sync.sweep_interval_ms`):
/// no offer may hold its seat past its deadline by more than that plus
/// [`SWEEP_ALLOWANCE_MS`].
pub async fn audit(
    db: &Pool,
    redis: &Redis,
    sections: &[Uuid],
    acknowledged: &HashMap<Uuid, BTreeSet<Uuid>>,
    sweep_interval_ms: u64,
) -> anyhow::Result<Vec<Finding>> {
    let client = db.get().await?;
    let mut findings = Vec::new();

    let oversold: Vec<String> = store::oversold(&client, sections)
        .await?
        .iter()
        .map(|o| {
            format!(
                "section {}: {} enrolled rows, counter {}, {} seats",
                o.section, o.enrolled_rows, o.enrolled_count, o.total_seats
            )
        })
        .collect();
    let mut redis_oversold = Vec::new();
    let mut idle_seats = Vec::new();
    for (section, counts) in sections.iter().zip(redis.live_counts(sections).await?) {
        if let Some(c) = counts {
            let taken = c.enrolled + c.seats_offered;
            if taken > c.capacity || c.seats_available != c.capacity - taken {
                redis_oversold.push(format!(
                    "section {section} in Redis: {} enrolled + {} held by offers, {} free, \
                     capacity {}",
                    c.enrolled, c.seats_offered, c.seats_available, c.capacity
                ));
            }
            if c.seats_available > 0 && c.waitlist_length > c.seats_offered {
                idle_seats.push(format!(
                    "section {section} in Redis: {} free while {} wait without an offer",
                    c.seats_available,
                    c.waitlist_length - c.seats_offered
                ));
            }
        }
    }
    findings.push(finding("no oversell (PostgreSQL)", oversold));
    findings.push(finding(
        "held + enrolled within capacity (PostgreSQL)",
        store::overheld(&client, sections)
            .await?
            .iter()
            .map(|(section, enrolled, offered, capacity)| {
                format!("section {section}: {enrolled} enrolled + {offered} offered > {capacity}")
            })
            .collect(),
    ));
    findings.push(finding("no oversell (Redis)", redis_oversold));
    findings.push(finding("no free seat while students wait", idle_seats));

    let clock = redis.time_ms().await?;
    let bound = sweep_interval_ms as i64 + SWEEP_ALLOWANCE_MS;
    let mut late = Vec::new();
    let mut stray = Vec::new();
    for section in sections {
        let Some(live) = redis.inspect(*section).await?.live else {
            continue;
        };
        for (student, deadline) in &live.offers {
            if clock > deadline + bound {
                late.push(format!(
                    "section {section}: offer to {student} held {} ms past its deadline",
                    clock - deadline
                ));
            }
            if !live.waitlisted.contains(student) {
                stray.push(format!(
                    "section {section}: offer to {student}, who is not waitlisted"
                ));
            }
        }
    }
    findings.push(finding(
        "no offer held past its deadline + sweep interval",
        late,
    ));
    findings.push(finding("every offer is to a waitlisted student", stray));

    let doubled: Vec<String> = store::enrolled_and_waitlisted(&client, sections)
        .await?
        .iter()
        .map(|(section, student)| format!("student {student} enrolled and waitlisted in {section}"))
        .collect();
    findings.push(finding("no student twice in a section", doubled));

    let gaps: Vec<String> = store::waitlist_gaps(&client, sections)
        .await?
        .iter()
        .map(|g| {
            format!(
                "section {}: {} waiting at positions {}..{}",
                g.section, g.waiting, g.lowest, g.highest
            )
        })
        .collect();
    findings.push(finding("waitlist positions contiguous", gaps));

    let reports = reconcile::reconcile(db, redis, false).await?;
    let wanted: BTreeSet<Uuid> = sections.iter().copied().collect();
    let drift: Vec<String> = reports
        .iter()
        .filter(|r| wanted.contains(&r.section))
        .map(|r| format!("section {}: {:?}", r.section, r.differences))
        .collect();
    findings.push(finding("Redis equals PostgreSQL", drift));

    let mut missing = Vec::new();
    for (section, students) in acknowledged {
        let enrolled: BTreeSet<Uuid> = store::enrolled_students(&client, *section)
            .await?
            .into_iter()
            .collect();
        let lost: Vec<&Uuid> = students.difference(&enrolled).collect();
        if !lost.is_empty() {
            missing.push(format!(
                "section {section}: {} acknowledged enrolments missing, e.g. {}",
                lost.len(),
                lost[0]
            ));
        }
    }
    findings.push(finding("every acknowledged enrolment persisted", missing));
    Ok(findings)
}
