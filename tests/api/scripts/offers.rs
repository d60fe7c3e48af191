//! Waitlist offers (`lua/lib/seat.lua`, issue 15 item 4) against a real
//! Redis: a freed seat held for the first in line, accepted by registering,
//! declined by dropping, lapsing at its deadline (Redis's clock) to the
//! next; never free meanwhile.

use std::time::Duration;

use registrar::{
    domain::{EventKind, WaitlistPolicy},
    seats::{Compensate, Drop, LiveCounts, Load, Reserve, Resize, SectionChange},
};
use uuid::Uuid;

use super::{ids, redis, snapshot, Scripts, NOW};

/// A section in offer mode with `capacity` seats, all taken by `enrolled`
/// fresh students, and `waiting` more on its waitlist.
async fn offering(
    capacity: i32,
    ttl_ms: i64,
    enrolled: usize,
    waiting: usize,
) -> (Scripts, Uuid, Vec<Uuid>, Vec<Uuid>) {
    let r = redis();
    let section = Uuid::new_v4();
    let mut snap = snapshot(section, capacity, 10);
    snap.waitlist = WaitlistPolicy {
        offer: true,
        offer_ttl_ms: ttl_ms,
    };
    assert_eq!(r.load(&snap).await.unwrap(), Load::Loaded);
    let seated = ids(enrolled);
    let queue = ids(waiting);
    for s in &seated {
        assert!(matches!(
            r.reserve(section, *s, NOW).await.unwrap().outcome,
            Reserve::Enrolled { .. }
        ));
    }
    for s in &queue {
        assert!(matches!(
            r.reserve(section, *s, NOW).await.unwrap().outcome,
            Reserve::Waitlisted { .. }
        ));
    }
    (r, section, seated, queue)
}

async fn counts(r: &Scripts, section: Uuid) -> LiveCounts {
    r.live_counts(&[section]).await.unwrap()[0].unwrap()
}

/// (free, enrolled, offered, waiting) and the invariant they keep.
async fn seats(r: &Scripts, section: Uuid) -> (i64, i64, i64, i64) {
    let c = counts(r, section).await;
    assert_eq!(
        c.seats_available + c.enrolled + c.seats_offered,
        c.capacity,
        "free + enrolled + offered = capacity"
    );
    (
        c.seats_available,
        c.enrolled,
        c.seats_offered,
        c.waitlist_length,
    )
}

#[tokio::test]
async fn a_freed_seat_is_held_for_the_head_who_accepts_by_registering() {
    let (r, section, seated, queue) = offering(1, 60_000, 1, 2).await;
    let newcomer = Uuid::new_v4();

    let dropped = r.drop_student(section, seated[0], NOW).await.unwrap();
    let Drop::Dropped {
        promoted, offered, ..
    } = dropped.outcome
    else {
        panic!("{:?}", dropped.outcome)
    };
    assert_eq!((promoted, offered), (None, Some(queue[0])));
    let offer = dropped
        .events
        .iter()
        .find(|e| e.kind == EventKind::Offer)
        .expect("an offer event");
    let clock = r.time_ms().await.unwrap();
    let until = offer
        .offer_until_ms
        .expect("the offer carries its deadline");
    assert!(
        (clock..=clock + 60_000).contains(&until),
        "deadline {until} is Redis's clock + ttl (now {clock})"
    );
    assert_eq!(
        seats(&r, section).await,
        (0, 0, 1, 2),
        "the seat is not free"
    );

    // Nobody else can take it: the newcomer waits behind both.
    assert_eq!(
        r.reserve(section, newcomer, NOW).await.unwrap().outcome,
        Reserve::Waitlisted {
            seq: 6,
            position: 3,
            offers: true,
        }
    );
    // The second in line has no offer: still waiting, same place.
    assert_eq!(
        r.reserve(section, queue[1], NOW).await.unwrap().outcome,
        Reserve::AlreadyWaitlisted {
            position: 2,
            offers: true
        }
    );
    let standing = &r.standings(queue[0], &[section]).await.unwrap()[0];
    assert_eq!(
        (standing.waitlist_position, standing.offer_until_ms),
        (Some(1), Some(until))
    );

    // The holder accepts: enrolled on the held seat, no counter moves.
    let accepted = r.reserve(section, queue[0], NOW).await.unwrap();
    assert_eq!(accepted.outcome, Reserve::Enrolled { seq: 7 });
    assert_eq!(
        accepted
            .events
            .iter()
            .map(|e| (e.kind, e.student))
            .collect::<Vec<_>>(),
        vec![(EventKind::Promote, Some(queue[0]))]
    );
    assert_eq!(seats(&r, section).await, (0, 1, 0, 2));
    assert_eq!(
        r.standings(queue[0], &[section]).await.unwrap()[0].offer_until_ms,
        None
    );
}

#[tokio::test]
async fn declining_passes_the_offer_to_the_next_in_line() {
    let (r, section, seated, queue) = offering(1, 60_000, 1, 3).await;
    r.drop_student(section, seated[0], NOW).await.unwrap();

    let declined = r.drop_student(section, queue[0], NOW).await.unwrap();
    assert_eq!(
        declined.outcome,
        Drop::LeftWaitlist {
            seq: 7,
            offered: Some(queue[1])
        }
    );
    assert_eq!(seats(&r, section).await, (0, 0, 1, 2));

    // An ineligible student taken off the waitlist declines likewise.
    let withdrawn = r.leave_waitlist(section, queue[1], NOW).await.unwrap();
    assert_eq!(
        withdrawn.outcome,
        Drop::LeftWaitlist {
            seq: 9,
            offered: Some(queue[2])
        }
    );
    // The last one declines: nobody waits, the seat is free again.
    let last = r.drop_student(section, queue[2], NOW).await.unwrap();
    assert_eq!(
        last.outcome,
        Drop::LeftWaitlist {
            seq: 11,
            offered: None
        }
    );
    assert_eq!(seats(&r, section).await, (1, 0, 0, 0));
}

#[tokio::test]
async fn a_lapsed_offer_passes_on_at_the_next_call_of_the_section() {
    let (r, section, seated, queue) = offering(1, 200, 1, 2).await;
    r.drop_student(section, seated[0], NOW).await.unwrap();
    // Past the deadline by Redis's clock (it was set at the drop).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Any call of the section lapses what is due before deciding: the
    // lapsed student is no longer waitlisted, and queue[1] holds the seat.
    let late = r.reserve(section, queue[0], NOW).await.unwrap();
    let kinds: Vec<_> = late.events.iter().map(|e| (e.kind, e.student)).collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Unwait, Some(queue[0])),
            (EventKind::Offer, Some(queue[1])),
            (EventKind::Waitlist, Some(queue[0])),
        ],
        "lapse, offer to the next, then the request itself"
    );
    assert_eq!(
        late.outcome,
        Reserve::Waitlisted {
            seq: late.events[2].seq,
            position: 2,
            offers: true,
        }
    );
    assert_eq!(seats(&r, section).await, (0, 0, 1, 2));
}

#[tokio::test]
async fn the_sweepers_script_lapses_every_due_offer_of_an_untouched_section() {
    let (r, section, _, queue) = offering(1, 200, 1, 4).await;
    // Two seats more, offered in one step with one deadline.
    let raised = r
        .resize(
            section,
            SectionChange {
                capacity: Some(3),
                ..SectionChange::default()
            },
            NOW,
        )
        .await
        .unwrap()
        .outcome;
    assert!(matches!(&raised, Resize::Resized { offered, .. } if offered == &queue[..2]));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let swept = r.lapse_offers(section, NOW).await.unwrap().expect("loaded");
    let of = |kind| -> Vec<Uuid> {
        swept
            .events
            .iter()
            .filter(|e| e.kind == kind)
            .filter_map(|e| e.student)
            .collect()
    };
    let mut lapsed = of(EventKind::Unwait);
    lapsed.sort();
    let mut first = queue[..2].to_vec();
    first.sort();
    assert_eq!(lapsed, first);
    assert_eq!(of(EventKind::Offer), queue[2..].to_vec(), "in line order");
    assert_eq!(seats(&r, section).await, (0, 1, 2, 2));
    // Nothing due now: the script changes nothing.
    let again = r.lapse_offers(section, NOW).await.unwrap().unwrap();
    assert!(again.events.is_empty());
    assert_eq!(r.lapse_offers(Uuid::new_v4(), NOW).await.unwrap(), None);
}

#[tokio::test]
async fn resize_counts_held_seats_offers_new_ones_and_returns_to_auto_only_with_nobody_waiting() {
    let (r, section, seated, queue) = offering(2, 60_000, 2, 4).await;
    r.drop_student(section, seated[0], NOW).await.unwrap();
    assert_eq!(seats(&r, section).await, (0, 1, 1, 4));

    let below = r
        .resize(
            section,
            SectionChange {
                capacity: Some(1),
                ..SectionChange::default()
            },
            NOW,
        )
        .await
        .unwrap()
        .outcome;
    assert_eq!(
        below,
        Resize::BelowEnrolled { enrolled: 2 },
        "a held seat counts"
    );

    let raised = r
        .resize(
            section,
            SectionChange {
                capacity: Some(4),
                ..SectionChange::default()
            },
            NOW,
        )
        .await
        .unwrap();
    let Resize::Resized {
        promoted, offered, ..
    } = raised.outcome.clone()
    else {
        panic!("{:?}", raised.outcome)
    };
    assert_eq!((promoted, offered), (vec![], vec![queue[1], queue[2]]));
    assert_eq!(seats(&r, section).await, (0, 1, 3, 4));

    let auto = SectionChange {
        offer_mode: Some(false),
        ..SectionChange::default()
    };
    assert_eq!(
        r.resize(section, auto, NOW).await.unwrap().outcome,
        Resize::WaitlistNotEmpty { waiting: 4 },
        "their places were taken on the promise of an offer"
    );
    for s in &queue {
        r.drop_student(section, *s, NOW).await.unwrap();
    }
    assert_eq!(seats(&r, section).await, (3, 1, 0, 0));
    let switched = r.resize(section, auto, NOW).await.unwrap();
    let config = switched
        .events
        .iter()
        .find(|e| e.kind == EventKind::Config)
        .and_then(|e| e.config)
        .unwrap();
    assert_eq!(
        config.waitlist,
        Some(WaitlistPolicy {
            offer: false,
            offer_ttl_ms: 60_000
        })
    );
    let (late, waiting) = (ids(3), ids(1));
    for s in late.iter().chain(&waiting) {
        r.reserve(section, *s, NOW).await.unwrap();
    }
    assert!(
        matches!(
            r.drop_student(section, seated[1], NOW).await.unwrap().outcome,
            Drop::Dropped { promoted: Some(p), offered: None, .. } if p == waiting[0]
        ),
        "auto again: the head is enrolled at once"
    );
}

#[tokio::test]
async fn load_restores_offers_as_held_seats_and_inspect_reports_them() {
    let r = redis();
    let section = Uuid::new_v4();
    let waiting = ids(3);
    let mut snap = snapshot(section, 3, 10);
    snap.enrolled = ids(1);
    snap.waitlisted = waiting.clone();
    snap.waitlist = WaitlistPolicy {
        offer: true,
        offer_ttl_ms: 5_000,
    };
    let far = r.time_ms().await.unwrap() + 3_600_000;
    snap.offers = vec![(waiting[0], far), (waiting[1], far)];
    assert_eq!(r.load(&snap).await.unwrap(), Load::Loaded);
    assert_eq!(seats(&r, section).await, (0, 1, 2, 3));

    let live = r.inspect(section).await.unwrap().live.unwrap();
    let mut offers = live.offers.clone();
    offers.sort();
    let mut expected = snap.offers.clone();
    expected.sort();
    assert_eq!(offers, expected);
    assert_eq!(
        (live.offer_mode, live.offer_ttl_ms),
        (Some(true), Some(5_000))
    );
    assert_eq!(
        r.reserve(section, waiting[1], NOW).await.unwrap().outcome,
        Reserve::Enrolled { seq: 1 },
        "a restored offer can be accepted"
    );
}

#[tokio::test]
async fn an_undone_acceptance_passes_the_seat_on_as_an_offer() {
    let (r, section, seated, queue) = offering(1, 60_000, 1, 2).await;
    r.drop_student(section, seated[0], NOW).await.unwrap();
    let accepted = r.reserve(section, queue[0], NOW).await.unwrap();
    let promote = accepted.events[0].clone();
    assert_eq!(promote.kind, EventKind::Promote);

    let undone = r.compensate(&promote, "write failed", NOW).await.unwrap();
    assert!(matches!(
        undone.outcome,
        Compensate::Reverted { promoted: None, .. }
    ));
    assert_eq!(
        undone
            .events
            .iter()
            .map(|e| (e.kind, e.student))
            .collect::<Vec<_>>(),
        vec![
            (EventKind::Revert, Some(queue[0])),
            (EventKind::Offer, Some(queue[1]))
        ]
    );
    assert_eq!(seats(&r, section).await, (0, 0, 1, 1));
}

#[tokio::test]
async fn an_offer_outlives_the_window_but_not_an_inactive_section() {
    let r = redis();
    let section = Uuid::new_v4();
    let waiting = ids(3);
    let mut snap = snapshot(section, 2, 10);
    // The window closed an hour ago; two offers were open then.
    snap.registration_start_ms = NOW - 2 * super::HOUR_MS;
    snap.registration_end_ms = r.time_ms().await.unwrap() - super::HOUR_MS;
    snap.waitlisted = waiting.clone();
    snap.waitlist = WaitlistPolicy {
        offer: true,
        offer_ttl_ms: 60_000,
    };
    let far = r.time_ms().await.unwrap() + 3_600_000;
    snap.offers = vec![(waiting[0], far), (waiting[1], far)];
    assert_eq!(r.load(&snap).await.unwrap(), Load::Loaded);

    assert!(matches!(
        r.reserve(section, waiting[0], NOW).await.unwrap().outcome,
        Reserve::Enrolled { .. }
    ));
    assert_eq!(
        r.reserve(section, Uuid::new_v4(), NOW)
            .await
            .unwrap()
            .outcome,
        Reserve::WindowClosed,
        "no one else registers"
    );

    r.resize(
        section,
        SectionChange {
            active: Some(false),
            ..SectionChange::default()
        },
        NOW,
    )
    .await
    .unwrap();
    assert_eq!(
        r.reserve(section, waiting[1], NOW).await.unwrap().outcome,
        Reserve::AlreadyWaitlisted {
            position: 1,
            offers: true
        },
        "inactive: the holder keeps the place and the offer"
    );
    assert_eq!(seats(&r, section).await, (0, 1, 1, 2));
}
