//! Writing plans in one transaction, and what follows a commit.

use super::{error::WriteError, plan::Planned, Shard};
use crate::{
    domain::now_ms,
    metrics::{BATCH_SIZE, EVENTS_APPLIED, PERSIST_LAG},
    store::{engine, journal},
    sync::bounded,
};

impl Shard {
    /// One transaction for all plans, given up after
    /// [`crate::sync::DB_DEADLINE`] (a commit whose answer was lost is found
    /// applied on the retry: the optimistic check fails, the events are
    /// replays).
    pub(super) async fn write(&self, plans: &[Planned]) -> Result<(), WriteError> {
        if plans.is_empty() {
            return Ok(());
        }
        Ok(bounded(&self.db, async |c| Self::write_with(c, plans).await).await?)
    }

    async fn write_with(
        client: &mut deadpool_postgres::Object,
        plans: &[Planned],
    ) -> Result<(), WriteError> {
        let tx = client.transaction().await?;
        // Every section is advanced (and its row locked) before any row of
        // the batch is written: a writer whose idea of last_seq is stale
        // finds out here, as a conflict, before applying old events to newer
        // rows (where a constraint could fail and look permanent).
        // The same statement returns the section's semester, the partition
        // key of the rows written next.
        // One statement for every section, and one for the enrolments of
        // all sections that have nothing else: a batch spread over many
        // sections costs a few round trips, not two per section.
        let moves: Vec<(uuid::Uuid, i64, i64)> = plans
            .iter()
            .map(|p| {
                let last = p.events.last().map_or(p.applied, |e| e.seq);
                (p.section, p.applied, last)
            })
            .collect();
        let keys = engine::advance_all(&tx, &moves)
            .await?
            .map_err(WriteError::Conflict)?;
        let (enrolments, others): (Vec<_>, Vec<_>) = plans
            .iter()
            .zip(keys)
            .map(|(plan, key)| (key, plan.events.as_slice()))
            .partition(|(_, events)| engine::only_enrolments(events));
        engine::apply_enrolments(&tx, &enrolments).await?;
        for (key, events) in others {
            engine::apply(&tx, key, events).await?;
        }
        journal::record(&tx, plans.iter().flat_map(|p| &p.events)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// After a commit: remember, acknowledge, measure.
    pub(super) async fn committed(&mut self, plans: &[Planned]) {
        let now = now_ms();
        let mut total = 0;
        let mut acks = Vec::with_capacity(plans.len());
        for plan in plans {
            let Some(last) = plan.events.last() else {
                continue;
            };
            self.applied.insert(plan.section, last.seq);
            total += plan.events.len();
            for e in &plan.events {
                metrics::counter!(EVENTS_APPLIED, "kind" => e.kind.as_str()).increment(1);
                metrics::histogram!(PERSIST_LAG).record((now - e.at_ms).max(0) as f64 / 1000.0);
            }
            let mut students: Vec<uuid::Uuid> =
                plan.events.iter().filter_map(|e| e.student).collect();
            students.sort_unstable();
            students.dedup();
            acks.push(crate::seats::outbox::Ack {
                section: plan.section,
                seqs: plan.events.iter().map(|e| e.seq).collect(),
                students,
            });
        }
        if let Err(e) = self.redis.ack_all(&acks).await {
            // Harmless: the entries are skipped (seq ≤ last_seq) and acknowledged next time.
            tracing::warn!(shard = self.id, sections = acks.len(), error = %e, "failed to acknowledge outbox entries");
        }
        if total > 0 {
            metrics::histogram!(BATCH_SIZE).record(total as f64);
        }
    }
}
