//! The planner: which of a section's events to write now, decided from what
//! PostgreSQL applied, the queued copies and (when needed) the outbox. Pure,
//! so that the rule "each event exactly once, in sequence order, or read the
//! gap" can be tested without Redis or PostgreSQL; [`super::gather`] does
//! the reading and carries out the decision.
//!
//! Two phases, because reading the outbox costs round trips the common case
//! does not need: [`sort_out`] looks at the queued copies alone and either
//! writes them (they continue `last_seq` without a gap) or asks for the
//! outbox, and [`Pending::with_outbox`] decides once it has been read.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::domain::Event;

/// What to write for one section in one transaction.
#[derive(Debug)]
pub(super) struct Planned {
    pub(super) section: Uuid,
    /// `last_seq` PostgreSQL had when planned: the optimistic check's value.
    pub(super) applied: i64,
    pub(super) events: Vec<Event>,
}

/// A section's queued copies sorted out against what PostgreSQL applied.
#[derive(Debug)]
pub(super) struct Sorted {
    /// Copies at or below `last_seq`: replays, unless Redis reused applied
    /// sequences for new events. Never written; their fingerprints are
    /// compared with the recorded ones ([`contradictions`]).
    pub(super) replays: Vec<Event>,
    pub(super) next: Next,
}

/// What a section needs after [`sort_out`].
#[derive(Debug)]
pub(super) enum Next {
    /// The copies continue `last_seq` without a gap: write them, ascending.
    Write(Vec<Event>),
    /// A catch-up was asked for, or the copies leave a gap: read the outbox
    /// from `last_seq + 1` and decide with it.
    ReadOutbox(Pending),
}

/// A section waiting for its outbox to be read.
#[derive(Debug)]
pub(super) struct Pending {
    applied: i64,
    /// Copies above `applied`, ascending, one per sequence.
    fresh: Vec<Event>,
}

/// Outbox entries of a section from `last_seq + 1` on, ascending, read with
/// a limit.
#[derive(Debug)]
pub(super) struct OutboxRead {
    entries: Vec<Event>,
    /// The limit was reached: later entries may exist, unread.
    full: bool,
}

impl OutboxRead {
    pub(super) fn new(entries: Vec<Event>, limit: usize) -> Self {
        let full = entries.len() == limit;
        Self { entries, full }
    }
}

/// What to do with a section once its outbox has been read.
#[derive(Debug)]
pub(super) struct SectionPlan {
    /// To write now: ascending and contiguous, from `last_seq + 1` unless
    /// the events there are lost ([`Self::lost_before`]).
    pub(super) write: Vec<Event>,
    /// Queued copies that differ from the outbox entry of their sequence.
    /// The copy, which continues PostgreSQL's history, is the one written.
    pub(super) differing: usize,
    /// Copies to keep queued: beyond what the outbox read covered, or past
    /// a gap; they may exist nowhere else.
    pub(super) keep: Vec<Event>,
    /// Read the outbox again next time: it had more than the limit, or
    /// copies were kept.
    pub(super) catch_up: bool,
    /// The sequence `write` starts at when neither the outbox nor the
    /// copies have `last_seq + 1` (Redis lost events PostgreSQL never saw):
    /// what remains is written rather than waiting forever.
    pub(super) lost_before: Option<i64>,
}

/// Splits a section's queued copies into replays and the events above
/// `applied`, and decides whether the outbox must be read.
pub(super) fn sort_out(applied: i64, queued: Vec<Event>, catch_up: bool) -> Sorted {
    let (replays, mut fresh): (Vec<Event>, Vec<Event>) =
        queued.into_iter().partition(|e| e.seq <= applied);
    fresh.sort_by_key(|e| e.seq);
    fresh.dedup_by_key(|e| e.seq);
    let contiguous = fresh
        .iter()
        .enumerate()
        .all(|(i, e)| e.seq == applied + 1 + i as i64);
    let next = if catch_up || !contiguous {
        Next::ReadOutbox(Pending { applied, fresh })
    } else {
        Next::Write(fresh)
    };
    Sorted { replays, next }
}

impl Pending {
    /// Merges the copies into the outbox read: a copy beyond a full read
    /// waits for the next read, a copy the outbox lacks is the only one
    /// left of an acknowledged event, and a copy differing from the outbox
    /// wins. Writes the run from the first sequence; keeps what lies past
    /// a gap.
    pub(super) fn with_outbox(self, outbox: OutboxRead) -> SectionPlan {
        let Pending { applied, fresh } = self;
        let read_up_to = outbox.entries.last().map(|e| e.seq);
        let mut merged: BTreeMap<i64, Event> =
            outbox.entries.into_iter().map(|e| (e.seq, e)).collect();
        let mut differing = 0;
        let mut keep = Vec::new();
        for e in fresh {
            if outbox.full && read_up_to.is_some_and(|last| e.seq > last) {
                keep.push(e);
                continue;
            }
            match merged.get(&e.seq) {
                Some(o) if o.fingerprint() != e.fingerprint() => {
                    differing += 1;
                    merged.insert(e.seq, e);
                }
                Some(_) => {}
                None => {
                    merged.insert(e.seq, e);
                }
            }
        }
        let mut catch_up = outbox.full || !keep.is_empty();
        let mut write: Vec<Event> = merged.into_values().collect();
        let start = write.first().map_or(applied + 1, |e| e.seq);
        let run = write
            .iter()
            .enumerate()
            .take_while(|(i, e)| e.seq == start + *i as i64)
            .count();
        let rest = write.split_off(run);
        if !rest.is_empty() {
            catch_up = true;
            keep.extend(rest);
        }
        SectionPlan {
            write,
            differing,
            keep,
            catch_up,
            lost_before: (start != applied + 1).then_some(start),
        }
    }
}

/// The sequences to look up the recorded fingerprints of `replays` at:
/// each once, ascending.
pub(super) fn replay_seqs(replays: &[Event]) -> Vec<i64> {
    let mut seqs: Vec<i64> = replays.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs
}

/// How many of `replays` differ from the fingerprint PostgreSQL recorded for
/// their sequence (`recorded`: seq → fingerprint): different events reusing
/// applied sequences. Unrecorded ones (pruned, or applied before the journal
/// existed) cannot be checked and count as replays.
pub(super) fn contradictions(replays: &[Event], recorded: &HashMap<i64, i64>) -> usize {
    replays
        .iter()
        .filter(|e| recorded.get(&e.seq).is_some_and(|f| *f != e.fingerprint()))
        .count()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};

    use proptest::{
        collection::vec, prop_assert, prop_assert_eq, proptest, strategy::Strategy,
        test_runner::Config,
    };

    use super::*;
    use crate::domain::EventKind;

    /// The true event at `seq` of the test section.
    fn event(seq: i64) -> Event {
        Event {
            section: Uuid::nil(),
            seq,
            kind: EventKind::Enroll,
            student: Some(Uuid::from_u128(seq as u128)),
            at_ms: 1_000 + seq,
            config: None,
            offer_until_ms: None,
        }
    }

    /// A different event reusing `seq` (another student).
    fn other(seq: i64) -> Event {
        Event {
            student: Some(Uuid::from_u128(1_000_000 + seq as u128)),
            ..event(seq)
        }
    }

    fn events(seqs: impl IntoIterator<Item = i64>) -> Vec<Event> {
        seqs.into_iter().map(event).collect()
    }

    fn seqs(events: &[Event]) -> Vec<i64> {
        events.iter().map(|e| e.seq).collect()
    }

    fn written(sorted: Sorted) -> Vec<i64> {
        match sorted.next {
            Next::Write(events) => seqs(&events),
            Next::ReadOutbox(p) => panic!("asked for the outbox: {p:?}"),
        }
    }

    fn pending(sorted: Sorted) -> Pending {
        match sorted.next {
            Next::ReadOutbox(p) => p,
            Next::Write(events) => panic!("wrote {:?} without the outbox", seqs(&events)),
        }
    }

    fn outbox(seqs: impl IntoIterator<Item = i64>, limit: usize) -> OutboxRead {
        OutboxRead::new(events(seqs), limit)
    }

    #[test]
    fn contiguous_queued_copies_are_written_without_reading_the_outbox() {
        let sorted = sort_out(4, events([6, 5, 7]), false);
        assert!(sorted.replays.is_empty());
        assert_eq!(written(sorted), vec![5, 6, 7]);
    }

    #[test]
    fn a_gap_asks_for_the_outbox_and_the_outbox_fills_it() {
        let p = pending(sort_out(4, events([5, 7]), false));
        let plan = p.with_outbox(outbox(5..=8, 10));
        assert_eq!(seqs(&plan.write), vec![5, 6, 7, 8]);
        assert!(plan.keep.is_empty());
        assert!(!plan.catch_up);
        assert_eq!(plan.differing, 0);
        assert_eq!(plan.lost_before, None);
    }

    #[test]
    fn a_copy_that_does_not_start_at_the_next_sequence_asks_for_the_outbox() {
        pending(sort_out(4, events([6, 7]), false));
    }

    #[test]
    fn a_catch_up_reads_the_outbox_even_when_the_copies_are_contiguous() {
        let p = pending(sort_out(0, events([1]), true));
        let plan = p.with_outbox(outbox(1..=2, 10));
        assert_eq!(seqs(&plan.write), vec![1, 2]);
        assert!(!plan.catch_up);
    }

    #[test]
    fn duplicate_copies_are_written_once() {
        assert_eq!(
            written(sort_out(0, events([1, 2, 2, 1, 3, 3]), false)),
            vec![1, 2, 3]
        );
        let p = pending(sort_out(0, events([3, 1, 3]), false));
        let plan = p.with_outbox(outbox(1..=3, 10));
        assert_eq!(seqs(&plan.write), vec![1, 2, 3]);
    }

    #[test]
    fn replays_at_or_below_applied_are_checked_not_written() {
        let sorted = sort_out(5, events([3, 6, 5, 3]), false);
        assert_eq!(seqs(&sorted.replays), vec![3, 5, 3]);
        assert_eq!(written(sorted), vec![6]);

        let only_replays = sort_out(5, events([1, 2]), false);
        assert_eq!(seqs(&only_replays.replays), vec![1, 2]);
        assert!(written(only_replays).is_empty());
    }

    #[test]
    fn only_replays_with_another_recorded_fingerprint_are_contradictions() {
        let replays = vec![event(3), other(4), other(5), event(3)];
        assert_eq!(replay_seqs(&replays), vec![3, 4, 5]);
        // 5 is unrecorded (pruned): it cannot be checked.
        let recorded = HashMap::from([(3, event(3).fingerprint()), (4, event(4).fingerprint())]);
        assert_eq!(contradictions(&replays, &recorded), 1);
        assert_eq!(contradictions(&[], &recorded), 0);
    }

    #[test]
    fn a_queued_copy_missing_from_the_outbox_is_written() {
        // Redis lost 6 from the outbox; the copy is the only one left.
        let p = pending(sort_out(4, events([6]), true));
        let plan = p.with_outbox(outbox([5, 7], 10));
        assert_eq!(seqs(&plan.write), vec![5, 6, 7]);
        assert!(plan.keep.is_empty());
        assert_eq!(plan.lost_before, None);
    }

    #[test]
    fn a_queued_copy_past_a_gap_is_kept_and_the_gap_read_again() {
        let p = pending(sort_out(4, events([9]), false));
        let plan = p.with_outbox(outbox([5, 6], 10));
        assert_eq!(seqs(&plan.write), vec![5, 6]);
        assert_eq!(seqs(&plan.keep), vec![9]);
        assert!(plan.catch_up);
    }

    #[test]
    fn a_differing_copy_wins_and_is_counted() {
        let p = pending(sort_out(0, vec![other(2), event(3)], true));
        let plan = p.with_outbox(outbox(1..=3, 10));
        assert_eq!(plan.write, vec![event(1), other(2), event(3)]);
        assert_eq!(plan.differing, 1);
    }

    #[test]
    fn a_full_outbox_read_keeps_later_copies_queued() {
        let p = pending(sort_out(0, vec![other(2), event(3), event(5)], false));
        let plan = p.with_outbox(outbox(1..=2, 2));
        assert_eq!(plan.write, vec![event(1), other(2)]);
        assert_eq!(plan.differing, 1);
        assert_eq!(seqs(&plan.keep), vec![3, 5]);
        assert!(plan.catch_up);
    }

    #[test]
    fn a_full_outbox_read_asks_for_the_rest_even_without_copies() {
        let p = pending(sort_out(0, Vec::new(), true));
        let plan = p.with_outbox(outbox(1..=3, 3));
        assert_eq!(seqs(&plan.write), vec![1, 2, 3]);
        assert!(plan.keep.is_empty());
        assert!(plan.catch_up);
    }

    #[test]
    fn an_empty_outbox_and_no_copies_end_the_catch_up() {
        let p = pending(sort_out(7, events([7]), true));
        let plan = p.with_outbox(outbox([], 10));
        assert!(plan.write.is_empty());
        assert!(plan.keep.is_empty());
        assert!(!plan.catch_up);
        assert_eq!(plan.lost_before, None);
    }

    #[test]
    fn events_lost_everywhere_are_reported_and_what_remains_is_written() {
        let p = pending(sort_out(4, Vec::new(), true));
        let plan = p.with_outbox(outbox([7, 8], 10));
        assert_eq!(seqs(&plan.write), vec![7, 8]);
        assert_eq!(plan.lost_before, Some(7));
    }

    /// One round of the shard for the test section: the planner fed with
    /// the queued copies and, when it asks, the outbox as the section's
    /// true history minus `lost`, read from `applied + 1` with `limit`.
    fn round(
        history: &[Event],
        lost: &BTreeSet<i64>,
        applied: i64,
        limit: usize,
        queued: Vec<Event>,
        catch_up: bool,
    ) -> (Vec<Event>, SectionPlan) {
        let Sorted { replays, next } = sort_out(applied, queued, catch_up);
        let plan = match next {
            Next::Write(write) => SectionPlan {
                write,
                differing: 0,
                keep: Vec::new(),
                catch_up: false,
                lost_before: None,
            },
            Next::ReadOutbox(pending) => {
                let entries = history
                    .iter()
                    .filter(|e| e.seq > applied && !lost.contains(&e.seq))
                    .take(limit)
                    .cloned()
                    .collect();
                pending.with_outbox(OutboxRead::new(entries, limit))
            }
        };
        (replays, plan)
    }

    /// What befalls the write of a round.
    #[derive(Debug, Clone)]
    enum Mishap {
        /// A transient failure: the retry loop queues the events again.
        Fails,
        /// Another instance commits this many events first: the optimistic
        /// check fails, the events are queued again with a catch-up.
        Overtaken(i64),
    }

    /// The jobs arriving before a round (copies, a catch-up asked for) and
    /// what befalls that round's write.
    type Arrival = (Vec<i64>, bool, Option<Mishap>);
    type Scenario = (i64, i64, usize, BTreeSet<i64>, Vec<Arrival>);

    /// A section's history of `n` events, the sequence PostgreSQL starts
    /// at, the outbox read limit, the events Redis lost from the outbox
    /// (their copies are queued from the start), and the arrivals: copies
    /// are replays, duplicates, in any order.
    fn scenario() -> impl Strategy<Value = Scenario> {
        let mishap = proptest::prop_oneof![
            proptest::strategy::Just(Mishap::Fails),
            (1i64..=5).prop_map(Mishap::Overtaken),
        ];
        (1i64..=30).prop_flat_map(move |n| {
            let arrival = (
                vec(1..=n, 0..8),
                proptest::bool::weighted(0.2),
                proptest::option::weighted(0.15, mishap.clone()),
            );
            (
                proptest::strategy::Just(n),
                0..=n,
                1usize..=6,
                proptest::collection::btree_set(1..=n, 0..4),
                vec(arrival, 0..12),
            )
        })
    }

    proptest! {
        #![proptest_config(Config::with_cases(2000))]

        /// Whatever the interleaving of queued copies, catch-ups, outbox
        /// reads in windows, replays, gaps, failed writes and another
        /// instance's commits, each event above the start is written
        /// exactly once, in sequence order, and the planner ends (asks for
        /// the gap instead of skipping it, never loops).
        #[test]
        fn each_event_is_written_once_in_sequence_order(
            (n, start, limit, lost, arrivals) in scenario()
        ) {
            let history = events(1..=n);
            let lost: BTreeSet<i64> = lost.into_iter().filter(|s| *s > start).collect();
            let mut jobs: VecDeque<(Vec<Event>, bool, Option<Mishap>)> = arrivals
                .into_iter()
                .map(|(copies, catch_up, mishap)| (events(copies), catch_up, mishap))
                .collect();
            // Only the queued copies are left of the events Redis lost.
            jobs.push_front((events(lost.iter().copied()), false, None));
            // The sweeper finds what nobody asked for.
            jobs.push_back((Vec::new(), true, None));
            let mut rounds_left = jobs.len() + history.len() + 1;
            let (mut applied, mut queued, mut catch_up) = (start, Vec::new(), false);
            let mut all_written = Vec::new();
            loop {
                let mishap = match jobs.pop_front() {
                    Some((copies, asked, mishap)) => {
                        queued.extend(copies);
                        catch_up |= asked;
                        mishap
                    }
                    None if queued.is_empty() && !catch_up => break,
                    None => None,
                };
                if queued.is_empty() && !catch_up {
                    continue;
                }
                prop_assert!(rounds_left > 0, "the planner does not come to an end");
                rounds_left -= 1;
                let (replays, plan) = round(
                    &history,
                    &lost,
                    applied,
                    limit,
                    std::mem::take(&mut queued),
                    std::mem::take(&mut catch_up),
                );
                prop_assert!(replays.iter().all(|e| e.seq <= applied));
                prop_assert_eq!(plan.differing, 0);
                prop_assert_eq!(plan.lost_before, None);
                let SectionPlan { write, keep, catch_up: again, .. } = plan;
                queued = keep;
                catch_up = again;
                for (i, e) in write.iter().enumerate() {
                    // Contiguous from what PostgreSQL has, and the true event.
                    prop_assert_eq!(e, &history[applied as usize + i]);
                }
                match mishap {
                    None => {
                        applied += write.len() as i64;
                        all_written.extend(seqs(&write));
                    }
                    Some(Mishap::Fails) => queued.extend(write),
                    Some(Mishap::Overtaken(_)) if write.is_empty() => {}
                    Some(Mishap::Overtaken(k)) => {
                        let k = k.min(n - applied);
                        all_written.extend((applied + 1)..=(applied + k));
                        applied += k;
                        queued.extend(write);
                        catch_up = true;
                    }
                }
            }
            prop_assert_eq!(all_written, ((start + 1)..=n).collect::<Vec<i64>>());
        }
    }
}
