//! After a permanent failure: finding the events that can never be written,
//! undoing them in Redis and recording them in `dead_letters`.

use super::{
    error::{reason_for, WriteError},
    plan::Planned,
    Shard,
};
use crate::{
    domain::{now_ms, Event},
    metrics::{COMPENSATIONS, DEAD_LETTERS},
    seats::Compensate,
    store::{engine, journal},
    sync::bounded,
};

impl Shard {
    /// After a permanent failure: write event by event, dead-lettering the culprits.
    pub(super) async fn isolate(&mut self, plans: Vec<Planned>) -> Result<(), WriteError> {
        for plan in plans {
            let mut applied = plan.applied;
            for event in plan.events {
                let single = [Planned {
                    section: plan.section,
                    applied,
                    events: vec![event.clone()],
                }];
                match self.write(&single).await {
                    Ok(()) => self.committed(&single).await,
                    Err(WriteError::Permanent { message, sqlstate }) => {
                        self.dead_letter(&event, applied, &message, sqlstate.as_deref())
                            .await?;
                    }
                    Err(e) => {
                        self.applied.insert(plan.section, applied);
                        return Err(e);
                    }
                }
                applied = event.seq;
            }
        }
        Ok(())
    }

    /// Undoes `event` in Redis (once), records it, and moves past it.
    async fn dead_letter(
        &mut self,
        event: &Event,
        applied: i64,
        error: &str,
        sqlstate: Option<&str>,
    ) -> Result<(), WriteError> {
        let reason = reason_for(sqlstate);
        tracing::error!(
            section = %event.section, seq = event.seq, kind = event.kind.as_str(),
            student = ?event.student, %error, ?sqlstate, "event cannot be persisted; undoing it"
        );
        // Redis first: a crash after this retries it, and the script's
        // at-most-once guard makes the retry a no-op.
        let outcome = self
            .redis
            .compensate(event, reason, now_ms())
            .await?
            .outcome;
        let label = match outcome {
            Compensate::Already => "already",
            Compensate::NothingToUndo => "nothing_to_undo",
            Compensate::NotUndoable => "not_undoable",
            Compensate::Reverted { .. } => "reverted",
        };
        metrics::counter!(COMPENSATIONS, "result" => label).increment(1);
        bounded(&self.db, async |c| {
            let tx = c.transaction().await?;
            engine::insert_dead_letter(&tx, event, error, sqlstate).await?;
            if !engine::advance(&tx, event.section, applied, event.seq).await? {
                return Err(WriteError::Conflict(event.section));
            }
            journal::record(&tx, [event]).await?;
            tx.commit().await?;
            Ok(())
        })
        .await?;
        metrics::counter!(DEAD_LETTERS).increment(1);
        self.applied.insert(event.section, event.seq);
        if let Err(e) = self.redis.ack(event.section, &[event.seq]).await {
            tracing::warn!(section = %event.section, error = %e, "failed to acknowledge a dead-lettered entry");
        }
        Ok(())
    }
}
