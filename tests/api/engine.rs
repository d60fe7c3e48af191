//! The promises of SPEC §2 under concurrency and failure, checked as
//! invariants against both Redis and PostgreSQL.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{stream, StreamExt};
use registrar::{
    config::Secret,
    sync::reconcile::{reconcile, Difference},
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    helpers::{eventually, spawn_app, spawn_app_with, TestApp},
    kit::{proxy::Proxy, via_port},
};

/// Requests kept in flight by the concurrent tests. Those tests run on a
/// multi-threaded runtime, as the server does in production: on the
/// default one-thread test runtime the 256 client futures, the server and
/// the Redis Cluster client's driver task (through which every call to a
/// cluster passes) all take turns on one thread, and in a debug build a
/// call then waited past `redis.response_timeout_ms` (1 s) in 3 to 6 runs
/// of 6 on the cluster, answering 503 (with a 5 s timeout, or with two
/// threads, 6 of 6 passed).
const IN_FLIGHT: usize = 256;

/// Registers every student in `students` for `section`, `IN_FLIGHT` at a
/// time; returns each student's result object, in completion order.
async fn register_all(app: &TestApp, students: &[Uuid], section: Uuid) -> Vec<(Uuid, Value)> {
    let app_ref = &app;
    stream::iter(students.iter().copied())
        .map(|student| async move {
            let token = app_ref.token_for(student);
            let response = app_ref.register(&token, &[section]).await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
            (student, body["results"][0].clone())
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

fn with_status<'a>(results: &'a [(Uuid, Value)], status: &str) -> Vec<&'a (Uuid, Value)> {
    results
        .iter()
        .filter(|(_, r)| r["status"] == status)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_for_one_section_fills_it_exactly_and_postgres_converges() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(5000, 1, 100, 50).await;
    let section = seeded.report.section_ids[0];
    let students = app.student_ids().await;
    assert_eq!(students.len(), 5000);

    let started = Instant::now();
    let results = register_all(&app, &students, section).await;
    let answered = started.elapsed();
    app.wait_persisted(&[section]).await;
    let caught_up = started.elapsed();

    let enrolled = with_status(&results, "enrolled");
    let waitlisted = with_status(&results, "waitlisted");
    let full: Vec<_> = results
        .iter()
        .filter(|(_, r)| r["reason"] == "full")
        .collect();
    assert_eq!(enrolled.len(), 100);
    assert_eq!(waitlisted.len(), 50);
    assert_eq!(full.len(), 4850);
    let mut by_position: Vec<(i64, Uuid)> = waitlisted
        .iter()
        .map(|(s, r)| (r["waitlist_position"].as_i64().unwrap(), *s))
        .collect();
    by_position.sort();
    assert_eq!(
        by_position.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<_>>(),
        "positions 1..50, each once"
    );
    let (pg_enrolled, pg_waitlist) = app.pg_roster(section).await;
    let acknowledged: BTreeSet<Uuid> = enrolled.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        pg_enrolled, acknowledged,
        "PostgreSQL holds exactly the acknowledged seats"
    );
    assert_eq!(
        pg_waitlist,
        by_position.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        "the waitlist is in arrival order"
    );
    app.assert_converged(section).await;
    let db = app.db.get().await.unwrap();
    let row = db
        .query_one(
            "select last_seq, version from sections where id = $1",
            &[&section],
        )
        .await
        .unwrap();
    let (last_seq, version): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(last_seq, 150, "one event per seat and waitlist place");
    assert!(version > 1, "the section row advanced under its version");
    println!(
        "race: 5000 registrations answered in {:.2}s ({:.0}/s); PostgreSQL caught up {:.2}s after the first request ({:.2}s after the last answer)",
        answered.as_secs_f64(),
        5000.0 / answered.as_secs_f64(),
        caught_up.as_secs_f64(),
        (caught_up - answered).as_secs_f64()
    );
}

#[tokio::test]
async fn fifty_identical_registrations_without_a_key_take_one_seat() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(1, 1, 10, 5).await;
    let section = seeded.report.section_ids[0];
    let student = app.student_ids().await[0];
    let token = Arc::new(app.token_for(student));

    let statuses: Vec<String> = stream::iter(0..50)
        .map(|_| {
            let token = token.clone();
            let app = &app;
            async move {
                let body: Value = app.register(&token, &[section]).await.json().await.unwrap();
                body["results"][0]["status"].as_str().unwrap().to_string()
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    app.wait_persisted(&[section]).await;

    assert_eq!(statuses.iter().filter(|s| *s == "enrolled").count(), 1);
    assert_eq!(
        statuses.iter().filter(|s| *s == "already_enrolled").count(),
        49
    );
    app.assert_converged(section).await;
    let db = app.db.get().await.unwrap();
    let last_seq: i64 = db
        .query_one("select last_seq from sections where id = $1", &[&section])
        .await
        .unwrap()
        .get(0);
    assert_eq!(last_seq, 1, "one event persisted");
}

#[tokio::test]
async fn fifty_identical_registrations_with_one_key_run_once_and_replay() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(1, 1, 10, 5).await;
    let section = seeded.report.section_ids[0];
    let student = app.student_ids().await[0];
    let token = app.token_for(student);

    let answers: Vec<(StatusCode, bool, String)> = stream::iter(0..50)
        .map(|_| {
            let (token, app) = (&token, &app);
            async move {
                let response = app
                    .http
                    .post(app.url("/api/v1/register"))
                    .bearer_auth(token)
                    .header("idempotency-key", "key-1")
                    .json(&json!({ "section_ids": [section] }))
                    .send()
                    .await
                    .unwrap();
                let replayed = response.headers().contains_key("idempotent-replayed");
                (response.status(), replayed, response.text().await.unwrap())
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let again = app
        .http
        .post(app.url("/api/v1/register"))
        .bearer_auth(&token)
        .header("idempotency-key", "key-1")
        .json(&json!({ "section_ids": [section] }))
        .send()
        .await
        .unwrap();
    let other_body = app
        .http
        .post(app.url("/api/v1/register"))
        .bearer_auth(&token)
        .header("idempotency-key", "key-1")
        .json(&json!({ "section_ids": [Uuid::new_v4()] }))
        .send()
        .await
        .unwrap();
    app.wait_persisted(&[section]).await;

    let fresh: Vec<_> = answers
        .iter()
        .filter(|(s, r, _)| *s == StatusCode::OK && !r)
        .collect();
    let replays: Vec<_> = answers
        .iter()
        .filter(|(s, r, _)| *s == StatusCode::OK && *r)
        .collect();
    let in_flight = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CONFLICT)
        .count();
    assert_eq!(fresh.len(), 1, "the request ran once");
    assert_eq!(
        fresh.len() + replays.len() + in_flight,
        50,
        "only 200 or 409: {answers:?}"
    );
    assert!(fresh[0].2.contains("\"enrolled\""));
    assert!(
        replays.iter().all(|(_, _, body)| *body == fresh[0].2),
        "replays repeat the answer"
    );
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), fresh[0].2);
    assert_eq!(other_body.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.assert_converged(section).await;
    assert_eq!(app.pg_roster(section).await.0.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_drops_promote_the_waitlist_head_and_newcomers_never_jump_it() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(700, 1, 100, 100).await;
    let section = seeded.report.section_ids[0];
    let students = app.student_ids().await;
    let (holders, rest) = students.split_at(100);
    let (waiting, newcomers) = rest.split_at(100);
    for s in holders.iter().chain(waiting) {
        app.register(&app.token_for(*s), &[section]).await;
    }
    let original_queue = app.redis_roster(section).await.1;
    assert_eq!(original_queue, waiting.to_vec());

    enum Outcome {
        Dropped(Option<Uuid>),
        Registered(Uuid, Value),
    }
    let work: Vec<(Uuid, bool)> = holders
        .iter()
        .map(|s| (*s, true))
        .chain(newcomers.iter().map(|s| (*s, false)))
        .collect();
    let app_ref = &app;
    let outcomes: Vec<Outcome> = stream::iter(work)
        .map(|(student, drop)| async move {
            let token = app_ref.token_for(student);
            if drop {
                let body: Value = app_ref
                    .drop_from(&token, section)
                    .await
                    .json()
                    .await
                    .unwrap();
                assert_eq!(body["status"], "dropped");
                Outcome::Dropped(
                    body["promoted_student_id"]
                        .as_str()
                        .map(|s| s.parse().unwrap()),
                )
            } else {
                let body: Value = app_ref
                    .register(&token, &[section])
                    .await
                    .json()
                    .await
                    .unwrap();
                Outcome::Registered(student, body["results"][0].clone())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    app.wait_persisted(&[section]).await;

    let promoted: BTreeSet<Uuid> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Dropped(p) => Some(p.expect("every drop had someone waiting")),
            _ => None,
        })
        .collect();
    assert_eq!(
        promoted,
        waiting.iter().copied().collect(),
        "the first 100 in line got the seats"
    );
    for o in &outcomes {
        if let Outcome::Registered(student, result) = o {
            assert_ne!(
                result["status"], "enrolled",
                "newcomer {student} jumped the waitlist"
            );
        }
    }
    let (enrolled, queue) = app.pg_roster(section).await;
    assert_eq!(enrolled, promoted);
    assert!(queue.iter().all(|s| newcomers.contains(s)));
    app.assert_converged(section).await;
}

#[tokio::test]
async fn raising_capacity_gives_the_new_seats_to_the_waitlist_head() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(5, 1, 2, 5).await;
    let section = seeded.report.section_ids[0];
    let students = app.student_ids().await;
    for s in &students {
        app.register(&app.token_for(*s), &[section]).await;
    }

    let response = app
        .http
        .patch(app.url(&format!("/api/v1/admin/sections/{section}")))
        .bearer_auth(&seeded.admin_token)
        .json(&json!({ "total_seats": 4 }))
        .send()
        .await
        .unwrap();
    let below = app
        .http
        .patch(app.url(&format!("/api/v1/admin/sections/{section}")))
        .bearer_auth(&seeded.admin_token)
        .json(&json!({ "total_seats": 1 }))
        .send()
        .await
        .unwrap();
    app.wait_persisted(&[section]).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["total_seats"], 4);
    assert_eq!(
        body["promoted_student_ids"],
        json!([students[2].to_string(), students[3].to_string()])
    );
    assert_eq!(below.status(), StatusCode::CONFLICT);
    let (enrolled, queue) = app.pg_roster(section).await;
    assert_eq!(enrolled, students[..4].iter().copied().collect());
    assert_eq!(queue, vec![students[4]]);
    app.assert_converged(section).await;
}

/// An app whose PostgreSQL is reached through a proxy the test can cut.
async fn app_behind_proxy() -> (TestApp, Proxy) {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let port = proxy.port;
    let app = spawn_app_with(|s| {
        s.database.url = Secret::new(via_port(s.database.url.expose(), port));
        s.database.connect_timeout_ms = registrar::config::Millis::new(500);
        s.sync.retry_max_ms = 200;
    })
    .await;
    app.wait_ready().await;
    (app, proxy)
}

#[tokio::test]
async fn a_permanent_write_failure_is_undone_once_and_the_seat_goes_to_the_waitlist_head() {
    let (app, proxy) = app_behind_proxy().await;
    let seeded = app.seed_sections(2, 1, 1, 5).await;
    let section = seeded.report.section_ids[0];
    let students = app.student_ids().await;
    let (ghost, next) = (students[0], students[1]);
    let ghost_token = app.token_for(ghost);

    // Hold persistence back so both decisions are made before the failure.
    proxy.cut();
    let first: Value = app
        .register(&ghost_token, &[section])
        .await
        .json()
        .await
        .unwrap();
    let second: Value = app
        .register(&app.token_for(next), &[section])
        .await
        .json()
        .await
        .unwrap();
    // The account goes after its seat was granted and before it is written
    // (a token of a deleted account is refused: tests/api/revocation.rs).
    app.db
        .get()
        .await
        .unwrap()
        .execute("delete from students where id = $1", &[&ghost])
        .await
        .unwrap();
    proxy.restore();
    app.wait_persisted(&[section]).await;

    assert_eq!(first["results"][0]["status"], "enrolled");
    assert_eq!(second["results"][0]["status"], "waitlisted");
    let (enrolled, queue) = app.pg_roster(section).await;
    assert_eq!(
        enrolled,
        BTreeSet::from([next]),
        "the seat went to the waitlist head"
    );
    assert!(queue.is_empty());
    app.assert_converged(section).await;
    let db = app.db.get().await.unwrap();
    let dead: Vec<(i64, String, Option<String>)> = db
        .query(
            "select seq, kind, sqlstate from dead_letters where section_id = $1",
            &[&section],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        dead,
        vec![(1, "enroll".to_string(), Some("23503".to_string()))]
    );
    let view: Value = app
        .get(
            &format!("/api/v1/students/{ghost}/registrations"),
            Some(&seeded.admin_token),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["items"][0]["status"], "reverted", "{view}");
    assert_eq!(view["items"][0]["persistence"], "reverted");
    assert!(view["items"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("no longer exists"));
    let reverts = app.redis.outbox_from(section, 1, 100).await.unwrap().len();
    assert_eq!(
        reverts, 0,
        "every event, the revert included, was persisted and acknowledged"
    );
    let undone: i64 = redis::cmd("SCARD")
        .arg(app.redis.section_keys(section).undone)
        .query_async(&mut app.redis.conn())
        .await
        .unwrap();
    assert_eq!(undone, 1, "undone exactly once");
}

#[tokio::test]
async fn a_permanent_write_failure_with_nobody_waiting_gives_the_seat_back() {
    let (app, proxy) = app_behind_proxy().await;
    let seeded = app.seed_sections(1, 1, 3, 0).await;
    let section = seeded.report.section_ids[0];
    let ghost = app.student_ids().await[0];
    let token = app.token_for(ghost);

    // Granted while persistence is held back; the account goes before the
    // seat is written, so the write fails for good.
    proxy.cut();
    let granted: Value = app.register(&token, &[section]).await.json().await.unwrap();
    assert_eq!(granted["results"][0]["status"], "enrolled");
    app.db
        .get()
        .await
        .unwrap()
        .execute("delete from students where id = $1", &[&ghost])
        .await
        .unwrap();
    proxy.restore();
    app.wait_persisted(&[section]).await;

    let counts = app.redis.live_counts(&[section]).await.unwrap()[0].unwrap();
    assert_eq!((counts.enrolled, counts.seats_available), (0, 3));
    app.assert_converged(section).await;
}

#[tokio::test]
async fn registrations_continue_while_postgres_is_away_and_all_land_when_it_returns() {
    let (app, proxy) = app_behind_proxy().await;
    let seeded = app.seed_sections(60, 2, 40, 10).await;
    let sections = seeded.report.section_ids.clone();
    let students = app.student_ids().await;

    proxy.cut();
    let mut acknowledged = Vec::new();
    for (i, s) in students.iter().enumerate() {
        let response = app.register(&app.token_for(*s), &[sections[i % 2]]).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "registration works without PostgreSQL"
        );
        let body: Value = response.json().await.unwrap();
        acknowledged.push((
            *s,
            sections[i % 2],
            body["results"][0]["status"].as_str().unwrap().to_string(),
        ));
    }
    let health: Value = app.get("/health", None).await.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    assert!(
        eventually(Duration::from_secs(5), || async {
            let h: Value = app.get("/health", None).await.json().await.unwrap();
            h["outbox"]["backlog"].as_u64().unwrap_or(0) > 0
        })
        .await,
        "the backlog shows in /health"
    );
    proxy.restore();
    app.wait_persisted(&sections).await;

    for section in &sections {
        app.assert_converged(*section).await;
        let (enrolled, queue) = app.pg_roster(*section).await;
        for (student, s, status) in &acknowledged {
            if s == section {
                match status.as_str() {
                    "enrolled" => assert!(enrolled.contains(student)),
                    "waitlisted" => assert!(queue.contains(student)),
                    other => panic!("unexpected {other}"),
                }
            }
        }
    }
    let db = app.db.get().await.unwrap();
    let dead: i64 = db
        .query_one("select count(*) from dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "a transient outage undoes nothing");
}

#[tokio::test]
async fn reconcile_reports_drift_and_fix_rebuilds_redis_from_postgres() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(3, 2, 5, 5).await;
    let section = seeded.report.section_ids[0];
    let students = app.student_ids().await;
    for s in &students {
        app.register(&app.token_for(*s), &[section]).await;
    }
    app.wait_persisted(&[section]).await;
    let clean = reconcile(&app.db, &app.redis, false).await.unwrap();
    // Corrupt Redis behind the engine's back.
    let keys = app.redis.section_keys(section);
    redis::cmd("SREM")
        .arg(&keys.enrolled)
        .arg(students[0].to_string())
        .query_async::<()>(&mut app.redis.conn())
        .await
        .unwrap();

    let found = reconcile(&app.db, &app.redis, false).await.unwrap();
    let fixed = reconcile(&app.db, &app.redis, true).await.unwrap();
    let after = reconcile(&app.db, &app.redis, false).await.unwrap();

    assert!(clean.is_empty(), "{clean:?}");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].section, section);
    assert!(found[0].differences.contains(&Difference::Enrolled {
        only_redis: vec![],
        only_postgres: vec![students[0]],
    }));
    assert!(fixed[0].repaired);
    assert!(after.is_empty(), "{after:?}");
    app.assert_converged(section).await;
}

#[tokio::test]
async fn an_event_committed_but_never_acknowledged_leaves_the_outbox() {
    let (app, proxy) = app_behind_proxy().await;
    let seeded = app.seed_sections(1, 1, 5, 0).await;
    let section = seeded.report.section_ids[0];
    let student = app.student_ids().await[0];

    // The engine cannot write; the test plays the commit that happened just
    // before a crash, so PostgreSQL has the event and the outbox still does too.
    proxy.cut();
    app.register(&app.token_for(student), &[section]).await;
    let db = app.db.get().await.unwrap();
    db.execute(
        "insert into registrations (id, student_id, section_id, semester_id, status) \
         select gen_random_uuid(), $1, id, semester_id, 'enrolled' from sections where id = $2",
        &[&student, &section],
    )
    .await
    .unwrap();
    db.execute(
        "update sections set last_seq = 1 where id = $1",
        &[&section],
    )
    .await
    .unwrap();
    proxy.restore();

    app.wait_persisted(&[section]).await;
    app.assert_converged(section).await;
}

/// The shards write a batch over many sections in a few statements: every
/// section advanced in one (a stale one fails it whole), the enrolments of
/// every enrolment-only section in one insert, each section's count moving
/// by its own rows.
#[tokio::test]
async fn a_batch_over_several_sections_advances_all_or_none_and_counts_each() {
    use registrar::{
        domain::{now_ms, Event, EventKind},
        store::engine,
    };
    let app = spawn_app().await;
    let seeded = app.seed_sections(4, 3, 10, 0).await;
    let sections = seeded.report.section_ids.clone();
    let students = app.student_ids().await;
    let event = |section, seq, student| Event {
        section,
        seq,
        kind: EventKind::Enroll,
        student: Some(student),
        at_ms: now_ms(),
        config: None,
        offer_until_ms: None,
    };
    let mut client = app.db.get().await.unwrap();

    // Act: a batch in which the second section is stale (said at 5, at 0).
    let tx = client.transaction().await.unwrap();
    let stale = engine::advance_all(
        &tx,
        &[
            (sections[0], 0, 1),
            (sections[1], 5, 6),
            (sections[2], 0, 1),
        ],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    // Then a good batch over the first and the third.
    let tx = client.transaction().await.unwrap();
    let keys = engine::advance_all(&tx, &[(sections[0], 0, 2), (sections[2], 0, 1)])
        .await
        .unwrap()
        .expect("both at their expected last_seq");
    let first = [
        event(sections[0], 1, students[0]),
        event(sections[0], 2, students[1]),
    ];
    let third = [event(sections[2], 1, students[0])];
    engine::apply_enrolments(&tx, &[(keys[0], &first[..]), (keys[1], &third[..])])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Assert
    assert_eq!(stale.unwrap_err(), sections[1]);
    assert!(engine::only_enrolments(&first));
    assert_eq!(
        keys.iter().map(|k| k.section).collect::<Vec<_>>(),
        [sections[0], sections[2]]
    );
    assert!(keys.iter().all(|k| k.semester == seeded.report.semester_id));
    let rows = client
        .query(
            "select s.id, s.last_seq, s.enrolled_count, \
                    array(select r.student_id from registrations r \
                           where r.section_id = s.id and r.status = 'enrolled' \
                           order by r.student_id) \
               from sections s where s.id = any($1)",
            &[&sections],
        )
        .await
        .unwrap();
    let state = |section: Uuid| {
        let row = rows
            .iter()
            .find(|r| r.get::<_, Uuid>(0) == section)
            .unwrap();
        (
            row.get::<_, i64>(1),
            row.get::<_, i32>(2),
            row.get::<_, Vec<Uuid>>(3),
        )
    };
    let mut two = vec![students[0], students[1]];
    two.sort();
    assert_eq!(state(sections[0]), (2, 2, two));
    assert_eq!(
        state(sections[1]),
        (0, 0, vec![]),
        "the failed batch left no trace"
    );
    assert_eq!(state(sections[2]), (1, 1, vec![students[0]]));
}
