//! The I/O around the planner: reads what [`super::plan`] decides on
//! (`last_seq`, the outbox, recorded fingerprints) and carries out its
//! decision (trims applied outbox entries, reports contradictions, keeps
//! what it leaves for later queued). The decision itself is pure.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{
    error::WriteError,
    plan::{self, Next, OutboxRead, Planned, Sorted},
    Shard,
};
use crate::{
    domain::Event,
    metrics::SEQUENCE_CONFLICTS,
    store::{engine, journal},
    sync::bounded,
};

impl Shard {
    /// Counts the events of `candidates` (at or below what PostgreSQL
    /// applied) whose recorded fingerprint differs: different events reusing
    /// applied sequences. Unrecorded ones (pruned, or applied before the
    /// journal existed) cannot be checked and count as replays.
    async fn contradicted(&self, section: Uuid, candidates: &[Event]) -> Result<usize, WriteError> {
        if candidates.is_empty() {
            return Ok(0);
        }
        let seqs = plan::replay_seqs(candidates);
        let recorded = bounded(&self.db, async |c| {
            journal::fingerprints(&*c, section, &seqs).await
        })
        .await?;
        Ok(plan::contradictions(candidates, &recorded))
    }

    /// Reports events that contradict what PostgreSQL (or this shard's
    /// queue) holds for their sequence and has the section rebuilt.
    fn conflicts(&self, section: Uuid, count: usize, what: &str) {
        if count == 0 {
            return;
        }
        metrics::counter!(SEQUENCE_CONFLICTS).increment(count as u64);
        tracing::error!(
            shard = self.id, %section, count, what,
            "events reuse sequences of other events (Redis lost data?); rebuilding the section from PostgreSQL"
        );
        self.redis.watch().rebuild_section(section);
    }

    /// Known `last_seq` of each section, reading the unknown ones from PostgreSQL.
    async fn applied_seqs(&mut self, sections: &[Uuid]) -> Result<(), WriteError> {
        let unknown: Vec<Uuid> = sections
            .iter()
            .filter(|s| !self.applied.contains_key(s))
            .copied()
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let found = bounded(&self.db, async |c| engine::last_seqs(&*c, &unknown).await).await?;
        for section in unknown {
            match found.get(&section) {
                Some(seq) => {
                    self.applied.insert(section, *seq);
                }
                None => tracing::error!(%section, "events for a section PostgreSQL does not have"),
            }
        }
        Ok(())
    }

    /// Plans each queued section; sections fully planned leave `queued`,
    /// those with more to read stay there as catch-ups, with the copies the
    /// planner kept.
    pub(super) async fn plan(
        &mut self,
        queued: &mut BTreeMap<Uuid, (Vec<Event>, bool)>,
    ) -> Result<Vec<Planned>, WriteError> {
        let sections: Vec<Uuid> = queued.keys().copied().collect();
        self.applied_seqs(&sections).await?;
        let mut plans = Vec::with_capacity(sections.len());
        let limit = self.settings.batch_size;
        for section in sections {
            let Some(&applied) = self.applied.get(&section) else {
                queued.remove(&section);
                continue;
            };
            let (events, catch_up) = queued.remove(&section).unwrap_or_default();
            let Sorted { mut replays, next } = plan::sort_out(applied, events, catch_up);
            if matches!(next, Next::ReadOutbox(_)) {
                // Entries PostgreSQL already has but nobody acknowledged
                // (a crash between commit and XDEL) would otherwise stay
                // forever; check they are what PostgreSQL applied, then trim.
                replays.extend(self.redis.outbox_until(section, applied, limit).await?);
            }
            let contradicted = self.contradicted(section, &replays).await?;
            self.conflicts(section, contradicted, "at or below last_seq");
            let events = match next {
                Next::Write(events) => events,
                Next::ReadOutbox(pending) => {
                    self.redis.trim_applied(section, applied).await?;
                    let outbox = self.redis.outbox_from(section, applied + 1, limit).await?;
                    let decided = pending.with_outbox(OutboxRead::new(outbox, limit));
                    self.conflicts(
                        section,
                        decided.differing,
                        "queued copy differs from the outbox",
                    );
                    if let Some(found) = decided.lost_before {
                        tracing::error!(
                            %section, expected = applied + 1, found,
                            "outbox lacks events PostgreSQL never saw (Redis lost data?); continuing from what remains"
                        );
                    }
                    if !decided.keep.is_empty() {
                        queued.entry(section).or_default().0.extend(decided.keep);
                    }
                    if decided.catch_up {
                        queued.entry(section).or_default().1 = true;
                    }
                    decided.write
                }
            };
            if !events.is_empty() {
                plans.push(Planned {
                    section,
                    applied,
                    events,
                });
            }
        }
        Ok(plans)
    }
}
