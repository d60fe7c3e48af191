//! After a permanent failure: finding the events that can never be written,
//! recording them in `dead_letters`, then undoing them in Redis.
//!
//! Each event is tried alone, in a transaction that first advances (and so
//! locks) its section row from the sequence this shard planned from: if
//! another writer got there first, that is a conflict to replan, never a
//! reason to undo. Only a failure against the current, locked row is
//! permanent. Its dead letter is committed in that same transaction, which
//! also moves `last_seq` past the event; the undo in Redis follows
//! (`compensate.lua`, at most once per sequence, and only the incarnation
//! the event created) and is then marked done on the record. A crash
//! between the commit and the undo leaves the record owing its undo, which
//! [`undo_owed`] carries out later: never an undo without a record, never
//! two.

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::{
    error::{reason_for, WriteError},
    plan::Planned,
    Shard,
};
use crate::{
    domain::{now_ms, Event},
    metrics::{COMPENSATIONS, DEAD_LETTERS},
    seats::{Compensate, Redis},
    store::{engine, journal},
    sync::bounded,
};

/// What trying one event alone came to.
enum Alone {
    Written,
    /// Recorded as a dead letter; its undo is owed.
    DeadLettered {
        error: String,
        sqlstate: Option<String>,
    },
}

impl Shard {
    /// After a permanent failure: write event by event, dead-lettering the culprits.
    pub(super) async fn isolate(&mut self, plans: Vec<Planned>) -> Result<(), WriteError> {
        for plan in plans {
            let mut applied = plan.applied;
            for event in plan.events {
                match self.alone(&event, applied).await {
                    Ok(Alone::Written) => {
                        let single = [Planned {
                            section: plan.section,
                            applied,
                            events: vec![event.clone()],
                        }];
                        self.committed(&single).await;
                    }
                    Ok(Alone::DeadLettered { error, sqlstate }) => {
                        tracing::error!(
                            section = %event.section, seq = event.seq, kind = event.kind.as_str(),
                            student = ?event.student, %error, ?sqlstate,
                            "event cannot be persisted; recorded as a dead letter, undoing it"
                        );
                        metrics::counter!(DEAD_LETTERS).increment(1);
                        self.applied.insert(event.section, event.seq);
                        if let Err(e) = self.redis.ack(event.section, &[event.seq]).await {
                            tracing::warn!(section = %event.section, error = %e, "failed to acknowledge a dead-lettered entry");
                        }
                        undo(&self.db, &self.redis, &event, sqlstate.as_deref()).await?;
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

    /// Writes `event` alone on top of `applied`, or records it as a dead
    /// letter if it fails for good against the current section row.
    async fn alone(&self, event: &Event, applied: i64) -> Result<Alone, WriteError> {
        Ok(bounded(&self.db, async |c| {
            let mut tx = c.transaction().await?;
            let Some(key) = engine::advance(&tx, event.section, applied, event.seq).await? else {
                return Err(WriteError::Conflict(event.section));
            };
            let attempt = tx.savepoint("event").await?;
            let failure = match engine::apply(&attempt, key, std::slice::from_ref(event)).await {
                Ok(()) => {
                    attempt.commit().await?;
                    None
                }
                Err(e) => match WriteError::from(e) {
                    WriteError::Permanent { message, sqlstate } => {
                        attempt.rollback().await?;
                        Some((message, sqlstate))
                    }
                    other => return Err(other),
                },
            };
            if let Some((message, sqlstate)) = &failure {
                engine::insert_dead_letter(&tx, event, message, sqlstate.as_deref()).await?;
            }
            journal::record(&tx, [event]).await?;
            tx.commit().await?;
            Ok(match failure {
                None => Alone::Written,
                Some((error, sqlstate)) => Alone::DeadLettered { error, sqlstate },
            })
        })
        .await?)
    }
}

/// Undoes a recorded dead letter in Redis (at most once: `compensate.lua`
/// remembers the sequence) and marks the record done.
async fn undo(
    db: &Pool,
    redis: &Redis,
    event: &Event,
    sqlstate: Option<&str>,
) -> Result<(), WriteError> {
    let outcome = redis
        .compensate(event, reason_for(sqlstate), now_ms())
        .await?
        .outcome;
    let label = match outcome {
        Compensate::Already => "already",
        Compensate::NothingToUndo => "nothing_to_undo",
        Compensate::NotUndoable => "not_undoable",
        Compensate::Reverted { .. } => "reverted",
    };
    metrics::counter!(COMPENSATIONS, "result" => label).increment(1);
    bounded(db, async |c| {
        engine::mark_undone(&*c, event.section, event.seq, label).await
    })
    .await?;
    Ok(())
}

/// Carries out the undos that dead letters of `sections` still owe (a crash
/// or a Redis failure came between a dead letter's commit and its undo).
/// Returns how many were carried out.
pub async fn undo_owed(db: &Pool, redis: &Redis, sections: &[Uuid]) -> anyhow::Result<usize> {
    let mut done = 0;
    for section in sections {
        let owed = bounded(db, async |c| engine::owed_undos(&*c, *section).await).await?;
        for record in owed {
            tracing::warn!(
                section = %section, seq = record.event.seq, error = %record.error,
                "carrying out the undo a dead letter still owes"
            );
            undo(db, redis, &record.event, record.sqlstate.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!("undo of {section} seq {}: {e}", record.event.seq))?;
            done += 1;
        }
    }
    Ok(done)
}
