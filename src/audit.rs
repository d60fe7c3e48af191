//! Checking the promises of SPEC §2 against both stores, after the queues
//! drained: what every load run ends with, and what an operator can run.

use std::collections::{BTreeSet, HashMap};

use deadpool_postgres::Pool;
use serde::Serialize;
use uuid::Uuid;

use crate::{seats::Redis, sync::reconcile};

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

/// Audits `sections`. `acknowledged` lists, per section, the students the
/// service told "enrolled" (after applying the drops and promotions it
/// acknowledged too); each must be enrolled in PostgreSQL.
pub async fn audit(
    db: &Pool,
    redis: &Redis,
    sections: &[Uuid],
    acknowledged: &HashMap<Uuid, BTreeSet<Uuid>>,
) -> anyhow::Result<Vec<Finding>> {
    let client = db.get().await?;
    let mut findings = Vec::new();

    let oversold: Vec<String> = client
        .query(
            "select s.id, s.total_seats, s.enrolled_count, \
                    (select count(*) from registrations r \
                      where r.section_id = s.id and r.status = 'enrolled')::integer \
               from sections s where s.id = any($1) \
                and (s.enrolled_count > s.total_seats or s.enrolled_count <> \
                     (select count(*) from registrations r \
                       where r.section_id = s.id and r.status = 'enrolled'))",
            &[&sections],
        )
        .await?
        .iter()
        .map(|r| {
            let (id, seats, count, rows): (Uuid, i32, i32, i32) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            format!("section {id}: {rows} enrolled rows, counter {count}, {seats} seats")
        })
        .collect();
    let mut redis_oversold = Vec::new();
    for (section, counts) in sections.iter().zip(redis.live_counts(sections).await?) {
        if let Some(c) = counts {
            if c.enrolled > c.capacity || c.seats_available != c.capacity - c.enrolled {
                redis_oversold.push(format!(
                    "section {section} in Redis: {} enrolled, {} free, capacity {}",
                    c.enrolled, c.seats_available, c.capacity
                ));
            }
        }
    }
    findings.push(finding("no oversell (PostgreSQL)", oversold));
    findings.push(finding("no oversell (Redis)", redis_oversold));

    let doubled: Vec<String> = client
        .query(
            "select w.section_id, w.student_id from waitlist w join registrations r \
               on r.section_id = w.section_id and r.student_id = w.student_id \
              where r.status = 'enrolled' and w.section_id = any($1)",
            &[&sections],
        )
        .await?
        .iter()
        .map(|r| {
            let (section, student): (Uuid, Uuid) = (r.get(0), r.get(1));
            format!("student {student} enrolled and waitlisted in {section}")
        })
        .collect();
    findings.push(finding("no student twice in a section", doubled));

    let gaps: Vec<String> = client
        .query(
            "select section_id, count(*), min(position), max(position) from waitlist \
              where section_id = any($1) group by section_id \
             having min(position) <> 1 or max(position) <> count(*)",
            &[&sections],
        )
        .await?
        .iter()
        .map(|r| {
            let (section, n, lo, hi): (Uuid, i64, i32, i32) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            format!("section {section}: {n} waiting at positions {lo}..{hi}")
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
        let enrolled: BTreeSet<Uuid> = client
            .query(
                "select student_id from registrations where section_id = $1 and status = 'enrolled'",
                &[section],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
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
