//! `registrar semester detach`: an old semester's registrations and waitlist
//! leave the live tables for the archive schema (README, "Semester
//! partitions"; [`crate::store::partitions`]).
//!
//! Refused while anything could still happen to the semester's rows: it is
//! active or its registration window is not over, a dead letter of it still
//! owes its undo, or Redis holds events of one of its sections that
//! PostgreSQL has not applied (its sequence is ahead of `last_seq`). After
//! the detach, the semester's sections are cleared from Redis (state only;
//! sequence and the empty outbox stay), so a later request rebuilds them
//! from what PostgreSQL now holds for them: no rows.

use anyhow::Context;
use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::{
    seats::Redis,
    store::partitions::{self, Partition, SemesterStanding, PARTITIONED},
};

/// What a detach did.
#[derive(Debug)]
pub struct Archived {
    pub semester: String,
    /// The archived tables, schema-qualified.
    pub tables: Vec<String>,
    /// Dead letters moved with them.
    pub dead_letters: u64,
}

/// Why `standing` (with each section's Redis sequence in `redis_seqs`,
/// None where Redis has none) forbids detaching the semester, if it does.
pub fn refusal(standing: &SemesterStanding, redis_seqs: &[Option<i64>]) -> Option<String> {
    if standing.is_active {
        return Some(format!(
            "semester {} is active; deactivate it first (is_active = false)",
            standing.name
        ));
    }
    if standing.window_not_over {
        return Some(format!(
            "the registration window of semester {} is not over",
            standing.name
        ));
    }
    if standing.owed_undos > 0 {
        return Some(format!(
            "{} dead letters of semester {} still owe their undo in Redis; \
             let a running server's sweeper carry them out first",
            standing.owed_undos, standing.name
        ));
    }
    let behind = standing
        .sections
        .iter()
        .zip(redis_seqs)
        .filter(|((_, applied), redis)| redis.is_some_and(|seq| seq > *applied))
        .count();
    if behind > 0 {
        return Some(format!(
            "{behind} sections of semester {} have events PostgreSQL has not applied yet; \
             let the servers drain their outboxes first",
            standing.name
        ));
    }
    None
}

/// Detaches `semester`'s partitions (see the module's documentation).
pub async fn detach_semester(db: &Pool, redis: &Redis, semester: Uuid) -> anyhow::Result<Archived> {
    let mut client = db.get().await.context("failed to connect to PostgreSQL")?;
    // DETACH ... CONCURRENTLY waits for every transaction that may still
    // see the partition; the pool's statement timeout is meant for requests.
    client
        .batch_execute("set statement_timeout = 0")
        .await
        .context("failed to lift the statement timeout for the detach")?;
    let standing = partitions::standing(&client, semester)
        .await
        .context("failed to read the semester")?
        .with_context(|| format!("no semester {semester}"))?;
    let ids: Vec<Uuid> = standing.sections.iter().map(|(id, _)| *id).collect();
    let redis_seqs = redis.seqs(&ids).await.context(
        "failed to read the sections' sequences from Redis (needed to prove nothing is pending)",
    )?;
    if let Some(reason) = refusal(&standing, &redis_seqs) {
        anyhow::bail!("refusing to detach: {reason}");
    }
    let mut tables = Vec::new();
    for parent in PARTITIONED {
        let partition = partitions::partition(&client, parent, semester)
            .await
            .with_context(|| format!("failed to find the {parent} partition"))?;
        partitions::detach(&client, parent, &partition)
            .await
            .with_context(|| format!("failed to detach the {parent} partition"))?;
        match partition {
            Partition::Attached(name)
            | Partition::DetachPending(name)
            | Partition::Archived(name) => {
                tables.push(format!("{}.{name}", partitions::ARCHIVE_SCHEMA))
            }
            Partition::Absent(name) => {
                tracing::warn!(%parent, %name, "no such partition, attached or archived")
            }
        }
    }
    let (dead_letter_table, dead_letters) = partitions::archive_dead_letters(&mut client, semester)
        .await
        .context("failed to archive the semester's dead letters")?;
    tables.push(dead_letter_table);
    for section in &ids {
        redis
            .forget_section(*section)
            .await
            .with_context(|| format!("failed to clear section {section} from Redis"))?;
    }
    Ok(Archived {
        semester: standing.name,
        tables,
        dead_letters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over() -> SemesterStanding {
        SemesterStanding {
            name: "Spring 2020".into(),
            is_active: false,
            window_not_over: false,
            sections: vec![(Uuid::nil(), 7), (Uuid::max(), 0)],
            owed_undos: 0,
        }
    }

    #[test]
    fn a_semester_that_is_over_and_fully_persisted_may_be_detached() {
        assert_eq!(refusal(&over(), &[Some(7), None]), None);
    }

    #[test]
    fn an_active_or_unfinished_semester_is_refused() {
        let active = SemesterStanding {
            is_active: true,
            ..over()
        };
        let open = SemesterStanding {
            window_not_over: true,
            ..over()
        };
        assert!(refusal(&active, &[None, None]).unwrap().contains("active"));
        assert!(refusal(&open, &[None, None]).unwrap().contains("window"));
    }

    #[test]
    fn unapplied_events_or_owed_undos_are_refused() {
        let owing = SemesterStanding {
            owed_undos: 1,
            ..over()
        };
        assert!(refusal(&over(), &[Some(8), None])
            .unwrap()
            .contains("1 sections"));
        assert!(refusal(&owing, &[Some(7), None])
            .unwrap()
            .contains("owe their undo"));
    }
}
