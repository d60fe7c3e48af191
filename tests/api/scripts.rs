//! Each Lua script on its own against a real Redis: every return code,
//! including absent keys. Each test has its own namespace.

use registrar::{
    config::{RedisSettings, Secret},
    domain::{Event, EventKind, SectionSnapshot, WaitlistPolicy},
    seats::{
        Compensate, Drop, LiveState, Load, Rebuild, Redis, Reserve, Resize, SectionChange,
        SectionState,
    },
};
use uuid::Uuid;

use crate::{
    helpers::{redis_url, NAMESPACE_PREFIX},
    kit::namespace::Namespace,
};

/// The `now` the tests pass (the events' `at`): any instant will do, since
/// `reserve.lua` judges the window by Redis's clock, not by this.
mod offers;

const NOW: i64 = 1_800_000_000_000;
/// An hour in ms: windows are set this far around the real clock.
const HOUR_MS: i64 = 3_600_000;

/// A window of `[start, end)` ms relative to the real clock (Redis's TIME).
fn window_from_now(start: i64, end: i64) -> (i64, i64) {
    let now = registrar::domain::now_ms();
    (now + start, now + end)
}

/// A Redis handle on a namespace of its own, whose keys go with it.
struct Scripts {
    redis: Redis,
    _namespace: Namespace,
}

impl std::ops::Deref for Scripts {
    type Target = Redis;

    fn deref(&self) -> &Redis {
        &self.redis
    }
}

fn redis() -> Scripts {
    let namespace = Namespace::new(NAMESPACE_PREFIX, &redis_url());
    Scripts {
        redis: Redis::new(&RedisSettings {
            url: Secret::new(redis_url()),
            namespace: namespace.name.clone(),
            connect_timeout_ms: registrar::config::Millis::new(1000),
            response_timeout_ms: registrar::config::Millis::new(1000),
            wait_replicas: 0,
            wait_timeout_ms: registrar::config::Millis::new(500),
        })
        .unwrap(),
        _namespace: namespace,
    }
}

fn snapshot(section: Uuid, capacity: i32, waitlist_limit: i32) -> SectionSnapshot {
    let (registration_start_ms, registration_end_ms) = window_from_now(-HOUR_MS, HOUR_MS);
    SectionSnapshot {
        section,
        capacity,
        waitlist_limit,
        section_active: true,
        semester_active: true,
        registration_start_ms,
        registration_end_ms,
        last_seq: 0,
        enrolled: Vec::new(),
        waitlisted: Vec::new(),
        waitlist: WaitlistPolicy {
            offer: false,
            offer_ttl_ms: 86_400_000,
        },
        offers: Vec::new(),
    }
}

/// A change of capacity, waitlist limit or active flag (the waitlist
/// policy kept).
fn change(
    capacity: Option<i32>,
    waitlist_limit: Option<i32>,
    active: Option<bool>,
) -> SectionChange {
    SectionChange {
        capacity,
        waitlist_limit,
        active,
        ..SectionChange::default()
    }
}

async fn loaded(capacity: i32, waitlist_limit: i32) -> (Scripts, Uuid) {
    let r = redis();
    let section = Uuid::new_v4();
    assert_eq!(
        r.load(&snapshot(section, capacity, waitlist_limit))
            .await
            .unwrap(),
        Load::Loaded
    );
    (r, section)
}

fn ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::new_v4()).collect()
}

#[tokio::test]
async fn every_script_reports_an_absent_section_without_writing() {
    let r = redis();
    let section = Uuid::new_v4();
    let student = Uuid::new_v4();

    assert_eq!(
        r.reserve(section, student, NOW).await.unwrap().outcome,
        Reserve::NotLoaded
    );
    assert_eq!(
        r.drop_student(section, student, NOW).await.unwrap().outcome,
        Drop::NotLoaded
    );
    assert_eq!(
        r.resize(section, change(Some(5), None, None), NOW)
            .await
            .unwrap()
            .outcome,
        Resize::NotLoaded
    );
    assert!(!r.is_loaded(section).await.unwrap());
    assert!(r.outbox_from(section, 1, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn load_builds_state_only_when_absent() {
    let r = redis();
    let section = Uuid::new_v4();
    let enrolled = ids(2);
    let waiting = ids(3);
    let mut snap = snapshot(section, 5, 10);
    snap.enrolled = enrolled.clone();
    snap.waitlisted = waiting.clone();
    snap.last_seq = 7;

    assert_eq!(r.load(&snap).await.unwrap(), Load::Loaded);
    let mut other = snapshot(section, 99, 99);
    other.enrolled = ids(1);
    assert_eq!(r.load(&other).await.unwrap(), Load::AlreadyPresent);

    let (roster, queue) = r.roster(section).await.unwrap();
    assert_eq!(roster.len(), 2);
    assert!(enrolled.iter().all(|e| roster.contains(e)));
    assert_eq!(
        queue, waiting,
        "waitlist order is PostgreSQL's position order"
    );
    let counts = r.live_counts(&[section]).await.unwrap()[0].unwrap();
    assert_eq!(
        (
            counts.capacity,
            counts.seats_available,
            counts.waitlist_length
        ),
        (5, 3, 3)
    );
    // A newcomer queues behind the loaded waitlist, and the sequence goes on from 7.
    let late = Uuid::new_v4();
    let mut full = snapshot(Uuid::new_v4(), 0, 10);
    full.waitlisted = waiting.clone();
    full.last_seq = 7;
    r.load(&full).await.unwrap();
    assert_eq!(
        r.reserve(full.section, late, NOW).await.unwrap().outcome,
        Reserve::Waitlisted {
            seq: 8,
            position: 4,
            offers: false,
        }
    );
}

#[tokio::test]
async fn load_refuses_a_section_whose_outbox_still_holds_events() {
    let (r, section) = loaded(1, 0).await;
    r.reserve(section, Uuid::new_v4(), NOW).await.unwrap();
    r.forget_section(section).await.unwrap();

    assert_eq!(
        r.load(&snapshot(section, 1, 0)).await.unwrap(),
        Load::OutboxPending
    );
}

#[tokio::test]
async fn reserve_enrolls_then_waitlists_then_refuses_full() {
    let (r, section) = loaded(1, 1).await;
    let [a, b, c] = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];

    assert_eq!(
        r.reserve(section, a, NOW).await.unwrap().outcome,
        Reserve::Enrolled { seq: 1 }
    );
    assert_eq!(
        r.reserve(section, b, NOW).await.unwrap().outcome,
        Reserve::Waitlisted {
            seq: 2,
            position: 1,
            offers: false,
        }
    );
    assert_eq!(
        r.reserve(section, c, NOW).await.unwrap().outcome,
        Reserve::Full
    );
    assert_eq!(
        r.reserve(section, a, NOW).await.unwrap().outcome,
        Reserve::AlreadyEnrolled
    );
    assert_eq!(
        r.reserve(section, b, NOW).await.unwrap().outcome,
        Reserve::AlreadyWaitlisted {
            position: 1,
            offers: false
        }
    );

    let events = r.outbox_from(section, 1, 10).await.unwrap();
    let kinds: Vec<(i64, EventKind, Option<Uuid>)> =
        events.iter().map(|e| (e.seq, e.kind, e.student)).collect();
    assert_eq!(
        kinds,
        vec![
            (1, EventKind::Enroll, Some(a)),
            (2, EventKind::Waitlist, Some(b))
        ],
        "refusals write nothing"
    );
}

#[tokio::test]
async fn reserve_refuses_inactive_sections_and_closed_windows() {
    let r = redis();
    let inactive = Uuid::new_v4();
    let mut snap = snapshot(inactive, 5, 5);
    snap.section_active = false;
    r.load(&snap).await.unwrap();
    let (r2, open) = loaded(5, 5).await;

    assert_eq!(
        r.reserve(inactive, Uuid::new_v4(), NOW)
            .await
            .unwrap()
            .outcome,
        Reserve::Inactive
    );
    let not_yet = window_section(&r2, window_from_now(HOUR_MS, 2 * HOUR_MS)).await;
    assert_eq!(
        r2.reserve(not_yet, Uuid::new_v4(), NOW)
            .await
            .unwrap()
            .outcome,
        Reserve::WindowClosed
    );
    let over = window_section(&r2, window_from_now(-2 * HOUR_MS, -HOUR_MS)).await;
    assert_eq!(
        r2.reserve(over, Uuid::new_v4(), NOW).await.unwrap().outcome,
        Reserve::WindowClosed
    );
    for section in [not_yet, over] {
        assert!(r2.outbox_from(section, 1, 10).await.unwrap().is_empty());
    }
    assert!(matches!(
        r2.reserve(open, Uuid::new_v4(), NOW).await.unwrap().outcome,
        Reserve::Enrolled { .. }
    ));
}

/// Loads a section whose registration window is `window` (unix ms).
async fn window_section(r: &Redis, (start, end): (i64, i64)) -> Uuid {
    let section = Uuid::new_v4();
    let mut snap = snapshot(section, 5, 5);
    (snap.registration_start_ms, snap.registration_end_ms) = (start, end);
    assert_eq!(r.load(&snap).await.unwrap(), Load::Loaded);
    section
}

#[tokio::test]
async fn the_window_is_judged_by_redis_clock_not_the_callers() {
    let (r, open) = loaded(5, 5).await;
    let (start, end) = window_from_now(-HOUR_MS, HOUR_MS);

    let early = r.reserve(open, Uuid::new_v4(), start - HOUR_MS).await;
    let late = r.reserve(open, Uuid::new_v4(), end + HOUR_MS).await;

    assert!(matches!(early.unwrap().outcome, Reserve::Enrolled { .. }));
    assert!(matches!(late.unwrap().outcome, Reserve::Enrolled { .. }));
}

#[tokio::test]
async fn drop_frees_the_seat_or_hands_it_to_the_waitlist_head() {
    let (r, section) = loaded(1, 5).await;
    let [a, b, c, stranger] = [
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    ];
    r.reserve(section, a, NOW).await.unwrap();
    r.reserve(section, b, NOW).await.unwrap();
    r.reserve(section, c, NOW).await.unwrap();

    assert_eq!(
        r.drop_student(section, stranger, NOW)
            .await
            .unwrap()
            .outcome,
        Drop::NotRegistered
    );
    assert_eq!(
        r.drop_student(section, a, NOW).await.unwrap().outcome,
        Drop::Dropped {
            seq: 4,
            promoted: Some(b),
            offered: None,
        }
    );
    assert_eq!(
        r.drop_student(section, c, NOW).await.unwrap().outcome,
        Drop::LeftWaitlist {
            seq: 6,
            offered: None
        }
    );
    assert_eq!(
        r.drop_student(section, b, NOW).await.unwrap().outcome,
        Drop::Dropped {
            seq: 7,
            promoted: None,
            offered: None,
        }
    );

    let counts = r.live_counts(&[section]).await.unwrap()[0].unwrap();
    assert_eq!(
        (
            counts.enrolled,
            counts.seats_available,
            counts.waitlist_length
        ),
        (0, 1, 0)
    );
    let kinds: Vec<EventKind> = r
        .outbox_from(section, 4, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Drop,
            EventKind::Promote,
            EventKind::Unwait,
            EventKind::Drop
        ]
    );
}

fn event(section: Uuid, seq: i64, kind: EventKind, student: Uuid) -> Event {
    Event {
        section,
        seq,
        kind,
        student: Some(student),
        at_ms: NOW,
        config: None,
        offer_until_ms: None,
    }
}

#[tokio::test]
async fn compensate_undoes_an_enrolment_once_and_promotes_the_head() {
    let (r, section) = loaded(1, 5).await;
    let [a, b] = [Uuid::new_v4(), Uuid::new_v4()];
    r.reserve(section, a, NOW).await.unwrap();
    r.reserve(section, b, NOW).await.unwrap();
    let failed = event(section, 1, EventKind::Enroll, a);

    let first = r.compensate(&failed, "gone", NOW).await.unwrap().outcome;
    let second = r.compensate(&failed, "gone", NOW).await.unwrap().outcome;

    assert_eq!(
        first,
        Compensate::Reverted {
            seq: 3,
            promoted: Some(b),
        }
    );
    assert_eq!(second, Compensate::Already);
    let (roster, queue) = r.roster(section).await.unwrap();
    assert_eq!((roster, queue), (vec![b], vec![]));
    let standing = r.standings(a, &[section]).await.unwrap().remove(0);
    assert_eq!(standing.reverted_reason.as_deref(), Some("gone"));
}

#[tokio::test]
async fn compensate_undoes_only_the_incarnation_the_failed_event_created() {
    let (r, section) = loaded(2, 5).await;
    let [a, b] = [Uuid::new_v4(), Uuid::new_v4()];
    let first_seat = r.reserve(section, a, NOW).await.unwrap().events[0].seq;
    r.drop_student(section, a, NOW).await.unwrap();
    r.reserve(section, a, NOW).await.unwrap();
    r.reserve(section, b, NOW).await.unwrap();

    let stale = r
        .compensate(&event(section, first_seat, EventKind::Enroll, a), "x", NOW)
        .await
        .unwrap()
        .outcome;

    assert_eq!(stale, Compensate::NothingToUndo);
    let (roster, _) = r.roster(section).await.unwrap();
    assert!(roster.contains(&a), "the later enrolment stands");
    let standing = r.standings(a, &[section]).await.unwrap().remove(0);
    assert_eq!(standing.reverted_reason, None);
}

#[tokio::test]
async fn compensate_returns_the_seat_when_nobody_waits_and_handles_every_other_case() {
    let (r, section) = loaded(2, 5).await;
    let [a, b, c] = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    r.reserve(section, a, NOW).await.unwrap();
    r.reserve(section, b, NOW).await.unwrap();
    r.drop_student(section, b, NOW).await.unwrap();

    let seat_back = r
        .compensate(&event(section, 1, EventKind::Enroll, a), "x", NOW)
        .await
        .unwrap()
        .outcome;
    let gone_already = r
        .compensate(&event(section, 2, EventKind::Enroll, b), "x", NOW)
        .await
        .unwrap()
        .outcome;
    let a_drop = r
        .compensate(&event(section, 3, EventKind::Drop, b), "x", NOW)
        .await
        .unwrap()
        .outcome;
    r.reserve(section, c, NOW).await.unwrap();
    r.resize(section, change(Some(1), None, None), NOW)
        .await
        .unwrap();
    let d = Uuid::new_v4();
    let d_seq = r.reserve(section, d, NOW).await.unwrap().events[0].seq;
    let waitlisted = r.standings(d, &[section]).await.unwrap().remove(0);
    assert_eq!(waitlisted.waitlist_position, Some(1));
    let undo_wait = r
        .compensate(&event(section, d_seq, EventKind::Waitlist, d), "x", NOW)
        .await
        .unwrap()
        .outcome;

    assert!(matches!(
        seat_back,
        Compensate::Reverted { promoted: None, .. }
    ));
    assert_eq!(gone_already, Compensate::NothingToUndo);
    assert_eq!(a_drop, Compensate::NotUndoable);
    assert!(matches!(
        undo_wait,
        Compensate::Reverted { promoted: None, .. }
    ));
    let counts = r.live_counts(&[section]).await.unwrap()[0].unwrap();
    assert_eq!(
        (
            counts.enrolled,
            counts.seats_available,
            counts.waitlist_length
        ),
        (1, 0, 0)
    );
}

#[tokio::test]
async fn resize_promotes_the_waitlist_head_first_and_refuses_going_below_the_roster() {
    let (r, section) = loaded(1, 5).await;
    let students = ids(4);
    for s in &students {
        r.reserve(section, *s, NOW).await.unwrap();
    }

    let below = r
        .resize(section, change(Some(0), None, None), NOW)
        .await
        .unwrap()
        .outcome;
    let raised = r
        .resize(section, change(Some(3), None, None), NOW)
        .await
        .unwrap()
        .outcome;
    let limit_only = r
        .resize(section, change(None, Some(0), Some(false)), NOW)
        .await
        .unwrap()
        .outcome;

    assert_eq!(below, Resize::BelowEnrolled { enrolled: 1 });
    assert_eq!(
        raised,
        Resize::Resized {
            seq: 5,
            promoted: vec![students[1], students[2]],
            offered: vec![],
        }
    );
    assert_eq!(
        limit_only,
        Resize::Resized {
            seq: 8,
            promoted: vec![],
            offered: vec![],
        }
    );
    let counts = r.live_counts(&[section]).await.unwrap()[0].unwrap();
    assert_eq!(
        (
            counts.capacity,
            counts.enrolled,
            counts.seats_available,
            counts.waitlist_length
        ),
        (3, 3, 0, 1)
    );
    assert_eq!(
        r.reserve(section, Uuid::new_v4(), NOW)
            .await
            .unwrap()
            .outcome,
        Reserve::Inactive
    );
    let config = r.outbox_from(section, 8, 1).await.unwrap().remove(0);
    assert_eq!(config.kind, EventKind::Config);
    let cfg = config.config.unwrap();
    assert_eq!(
        (cfg.capacity, cfg.waitlist_limit, cfg.active),
        (3, 0, false)
    );
}

#[tokio::test]
async fn inspect_reads_the_sequence_the_outbox_and_every_field_in_one_step() {
    let r = redis();
    let section = Uuid::new_v4();
    let absent = r.inspect(section).await.unwrap();
    let mut snap = snapshot(section, 2, 4);
    snap.last_seq = 7;
    snap.enrolled = ids(1);
    snap.waitlisted = ids(2);
    r.load(&snap).await.unwrap();
    let late = Uuid::new_v4();
    r.reserve(section, late, NOW).await.unwrap();

    let present = r.inspect(section).await.unwrap();
    redis::cmd("HDEL")
        .arg(r.section_keys(section).meta)
        .arg("capacity")
        .query_async::<()>(&mut r.conn())
        .await
        .unwrap();
    let damaged = r.inspect(section).await.unwrap();

    assert_eq!(
        absent,
        SectionState {
            seq: 0,
            outbox: 0,
            live: None
        }
    );
    let mut roster = snap.enrolled.clone();
    roster.push(late);
    roster.sort();
    let mut live = present.live.clone().unwrap();
    live.enrolled.sort();
    assert_eq!((present.seq, present.outbox), (8, 1));
    assert_eq!(
        live,
        LiveState {
            capacity: Some(2),
            waitlist_limit: Some(4),
            active: Some(true),
            registration_start_ms: Some(snap.registration_start_ms),
            registration_end_ms: Some(snap.registration_end_ms),
            seats: Some(0),
            enrolled: roster,
            waitlisted: snap.waitlisted.clone(),
            offer_mode: Some(false),
            offer_ttl_ms: Some(86_400_000),
            offers: vec![],
        }
    );
    assert_eq!(
        damaged.live.unwrap().capacity,
        None,
        "a deleted field is not guessed"
    );
}

#[tokio::test]
async fn load_exact_replaces_only_at_the_compared_sequence_with_an_empty_outbox() {
    let (r, section) = loaded(5, 5).await;
    let student = Uuid::new_v4();
    r.reserve(section, student, NOW).await.unwrap();
    let mut at_one = snapshot(section, 9, 9);
    at_one.last_seq = 1;
    let mut at_zero = snapshot(section, 9, 9);
    at_zero.last_seq = 0;

    let while_waiting = r.rebuild(&at_one, Rebuild::Exact).await.unwrap();
    r.ack(section, &[1]).await.unwrap();
    let moved_on = r.rebuild(&at_zero, Rebuild::Exact).await.unwrap();
    let unchanged_so_far = r.inspect(section).await.unwrap();
    let at_the_point = r.rebuild(&at_one, Rebuild::Exact).await.unwrap();
    let rebuilt = r.inspect(section).await.unwrap();

    assert_eq!(while_waiting, (Load::OutboxPending, 0), "an event waits");
    assert_eq!(moved_on, (Load::OutboxPending, 0), "Redis is past 0");
    assert_eq!(unchanged_so_far.live.unwrap().enrolled, vec![student]);
    assert_eq!(at_the_point, (Load::Loaded, 0));
    assert_eq!(rebuilt.seq, 1, "the sequence stays where it was");
    let live = rebuilt.live.unwrap();
    assert_eq!((live.capacity, live.enrolled), (Some(9), vec![]));
}

#[tokio::test]
async fn load_exact_builds_a_missing_state_unless_redis_is_past_the_snapshot() {
    let (r, section) = loaded(5, 5).await;
    r.reserve(section, Uuid::new_v4(), NOW).await.unwrap();
    r.ack(section, &[1]).await.unwrap();
    r.forget_section(section).await.unwrap();
    let mut stale = snapshot(section, 5, 5);
    stale.last_seq = 0;
    let mut current = snapshot(section, 5, 5);
    current.last_seq = 1;

    let from_stale = r.rebuild(&stale, Rebuild::Exact).await.unwrap();
    let from_current = r.rebuild(&current, Rebuild::Exact).await.unwrap();

    assert_eq!(from_stale, (Load::OutboxPending, 0));
    assert_eq!(from_current, (Load::Loaded, 0));
    assert_eq!(r.inspect(section).await.unwrap().seq, 1);
}

#[tokio::test]
async fn a_section_activated_in_an_inactive_semester_stays_closed_but_keeps_its_flag() {
    let r = redis();
    let section = Uuid::new_v4();
    let mut snap = snapshot(section, 5, 5);
    snap.section_active = false;
    snap.semester_active = false;
    r.load(&snap).await.unwrap();

    let activated = r
        .resize(section, change(None, None, Some(true)), NOW)
        .await
        .unwrap();
    let refused = r
        .reserve(section, Uuid::new_v4(), NOW)
        .await
        .unwrap()
        .outcome;
    let resized = r
        .resize(section, change(Some(6), None, None), NOW)
        .await
        .unwrap();
    let enforced = r.enforced_settings(section).await.unwrap();

    let own = |events: &[Event]| events[0].config.unwrap().active;
    assert!(
        own(&activated.events),
        "PostgreSQL records the section's flag"
    );
    assert_eq!(refused, Reserve::Inactive);
    assert!(
        own(&resized.events),
        "a capacity change keeps the section's flag"
    );
    assert_eq!(
        (enforced.waitlist_limit, enforced.active),
        (Some(5), Some(false))
    );
}

#[tokio::test]
async fn resize_of_a_state_loaded_before_the_flags_were_kept_apart_keeps_its_meaning() {
    let (r, section) = loaded(5, 5).await;
    redis::cmd("HDEL")
        .arg(r.section_keys(section).meta)
        .arg("section_active")
        .arg("semester_active")
        .query_async::<()>(&mut r.conn())
        .await
        .unwrap();

    let resized = r
        .resize(section, change(Some(6), None, None), NOW)
        .await
        .unwrap();
    let enrolled = r
        .reserve(section, Uuid::new_v4(), NOW)
        .await
        .unwrap()
        .outcome;

    assert!(
        resized.events[0].config.unwrap().active,
        "its `active` stands for the section's flag"
    );
    assert_eq!(enrolled, Reserve::Enrolled { seq: 2 }, "still open");
}
