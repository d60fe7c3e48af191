//! Planning a batch: per section, the events that come right after what
//! PostgreSQL applied, from the queued copies or the section's outbox.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{error::WriteError, Shard};
use crate::{
    metrics::SEQUENCE_CONFLICTS,
    seats::Event,
    store::{engine, journal},
    sync::bounded,
};

/// What to write for one section in one transaction.
#[derive(Debug)]
pub(super) struct Planned {
    pub(super) section: Uuid,
    /// `last_seq` PostgreSQL had when planned: the optimistic check's value.
    pub(super) applied: i64,
    pub(super) events: Vec<Event>,
}

impl Shard {
    /// Counts the events of `candidates` (at or below what PostgreSQL
    /// applied) whose recorded fingerprint differs: different events reusing
    /// applied sequences. Unrecorded ones (pruned, or applied before the
    /// journal existed) cannot be checked and count as replays.
    async fn contradicted(&self, section: Uuid, candidates: &[Event]) -> Result<usize, WriteError> {
        if candidates.is_empty() {
            return Ok(0);
        }
        let mut seqs: Vec<i64> = candidates.iter().map(|e| e.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let recorded = bounded(&self.db, async |c| {
            journal::fingerprints(&*c, section, &seqs).await
        })
        .await?;
        Ok(candidates
            .iter()
            .filter(|e| recorded.get(&e.seq).is_some_and(|f| *f != e.fingerprint()))
            .count())
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

    /// Decides what to write for each queued section; sections fully planned
    /// leave `queued`, those with more to read stay there as catch-ups.
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
            let (mut events, catch_up) = queued.remove(&section).unwrap_or_default();
            let (mut replays, fresh): (Vec<Event>, Vec<Event>) =
                events.into_iter().partition(|e| e.seq <= applied);
            events = fresh;
            events.sort_by_key(|e| e.seq);
            events.dedup_by_key(|e| e.seq);
            let contiguous = events
                .iter()
                .enumerate()
                .all(|(i, e)| e.seq == applied + 1 + i as i64);
            let mut more = false;
            if catch_up || !contiguous {
                // Entries PostgreSQL already has but nobody acknowledged
                // (a crash between commit and XDEL) would otherwise stay
                // forever; check they are what PostgreSQL applied, then trim.
                replays.extend(self.redis.outbox_until(section, applied, limit).await?);
                let contradicted = self.contradicted(section, &replays).await?;
                self.conflicts(section, contradicted, "at or below last_seq");
                self.redis.trim_applied(section, applied).await?;
                let outbox = self.redis.outbox_from(section, applied + 1, limit).await?;
                let outbox_full = outbox.len() == limit;
                let read_up_to = outbox.last().map(|e| e.seq);
                let mut merged: BTreeMap<i64, Event> =
                    outbox.into_iter().map(|e| (e.seq, e)).collect();
                let mut differing = 0;
                let mut beyond = Vec::new();
                for e in events {
                    if outbox_full && read_up_to.is_some_and(|last| e.seq > last) {
                        // Not read from the outbox yet: compare next time.
                        beyond.push(e);
                        continue;
                    }
                    match merged.get(&e.seq) {
                        Some(o) if o.fingerprint() != e.fingerprint() => {
                            differing += 1;
                            // The queued copy continues PostgreSQL's history.
                            merged.insert(e.seq, e);
                        }
                        Some(_) => {}
                        // The outbox lost it (Redis restarted): the queued
                        // copy is the only one left of an acknowledged event.
                        None => {
                            merged.insert(e.seq, e);
                        }
                    }
                }
                self.conflicts(section, differing, "queued copy differs from the outbox");
                events = merged.into_values().collect();
                more = outbox_full || !beyond.is_empty();
                if !beyond.is_empty() {
                    queued.entry(section).or_default().0.extend(beyond);
                }
                if let Some(first) = events.first() {
                    if first.seq != applied + 1 {
                        tracing::error!(
                            %section, expected = applied + 1, found = first.seq,
                            "outbox lacks events PostgreSQL never saw (Redis lost data?); continuing from what remains"
                        );
                    }
                }
                let start = events.first().map_or(applied + 1, |e| e.seq);
                let run = events
                    .iter()
                    .enumerate()
                    .take_while(|(i, e)| e.seq == start + *i as i64)
                    .count();
                let rest = events.split_off(run);
                if !rest.is_empty() {
                    // Keep what lies past a gap: it may exist nowhere else.
                    more = true;
                    queued.entry(section).or_default().0.extend(rest);
                }
            } else if !replays.is_empty() {
                let contradicted = self.contradicted(section, &replays).await?;
                self.conflicts(section, contradicted, "at or below last_seq");
            }
            if more {
                queued.entry(section).or_default().1 = true;
            }
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
