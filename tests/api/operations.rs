//! Admin read APIs (issue 16, item 2): accounts by page and search, a
//! section's roster and waitlist as they are now, dead letters, and the
//! persistence state.

use std::{collections::BTreeSet, time::Duration};

use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};
use registrar::seed;

async fn get_ok(app: &TestApp, path: &str, token: &str) -> Value {
    let answer = app.get(path, Some(token)).await;
    assert_eq!(answer.status(), StatusCode::OK, "{path}");
    answer.json().await.unwrap()
}

/// Follows `next_cursor` from `first` to the last page; the items of all.
async fn all_pages(app: &TestApp, first: &str, token: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = first.to_string();
    for _ in 0..100 {
        let page = get_ok(app, &path, token).await;
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            None => return items,
            Some(cursor) => {
                let separator = if first.contains('?') { '&' } else { '?' };
                path = format!("{first}{separator}cursor={cursor}");
            }
        }
    }
    panic!("more than 100 pages from {first}");
}

#[tokio::test]
async fn accounts_are_listed_in_pages_searched_and_filtered() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(5, 1, 5, 0).await;
    let admin = &seeded.admin_token;

    let paged = all_pages(&app, "/api/v1/admin/students?limit=2", admin).await;
    let numbers: Vec<&str> = paged
        .iter()
        .map(|a| a["student_number"].as_str().unwrap())
        .collect();
    let mut expected: Vec<String> = (1..=5).map(seed::student_number).collect();
    expected.push(seed::ADMIN_NUMBER.into());
    expected.sort();
    assert_eq!(
        numbers, expected,
        "every account once, in order, over pages of 2"
    );
    assert!(paged
        .iter()
        .all(|a| a["holds"].is_array() && a["id"].is_string()));

    let by_number = get_ok(&app, "/api/v1/admin/students?q=s000000", admin).await;
    assert_eq!(
        by_number["items"].as_array().unwrap().len(),
        5,
        "{by_number}"
    );
    let by_name = get_ok(&app, "/api/v1/admin/students?q=student%203", admin).await;
    let found: Vec<&str> = by_name["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["Demo Student 3"]);
    // A LIKE wildcard is taken literally.
    let literal = get_ok(&app, "/api/v1/admin/students?q=%25", admin).await;
    assert_eq!(literal["items"], Value::Array(vec![]), "{literal}");

    let (_, third) = app.student(3).await;
    let patch = app
        .http
        .patch(app.url(&format!("/api/v1/admin/students/{third}")))
        .bearer_auth(admin)
        .json(&serde_json::json!({"enrollment_status": "suspended"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::OK);
    let suspended = get_ok(
        &app,
        "/api/v1/admin/students?enrollment_status=suspended",
        admin,
    )
    .await;
    let ids: Vec<&str> = suspended["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [third.to_string()]);
    let admins = get_ok(&app, "/api/v1/admin/students?role=admin", admin).await;
    assert_eq!(admins["items"][0]["student_number"], seed::ADMIN_NUMBER);
    assert_eq!(admins["items"].as_array().unwrap().len(), 1);

    for bad in [
        "limit=0",
        "limit=100000",
        "role=owner",
        "q=%00",
        "nonsense=1",
    ] {
        let answer = app
            .get(&format!("/api/v1/admin/students?{bad}"), Some(admin))
            .await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let (student, _) = app.student(1).await;
    let refused = app.get("/api/v1/admin/students", Some(&student)).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_sections_roster_and_waitlist_are_live_and_paged() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(5, 1, 2, 3).await;
    let admin = &seeded.admin_token;
    let section = seeded.report.section_ids[0];
    let mut students = Vec::new();
    for i in 1..=5 {
        let (token, id) = app.student(i).await;
        assert_eq!(
            app.register(&token, &[section]).await.status(),
            StatusCode::OK
        );
        students.push((token, id));
    }
    let roster_path = format!("/api/v1/admin/sections/{section}/roster");
    let waitlist_path = format!("/api/v1/admin/sections/{section}/waitlist");

    let roster = get_ok(&app, &roster_path, admin).await;
    assert_eq!(roster["source"], "redis");
    assert_eq!(roster["total"], 2);
    let enrolled: BTreeSet<String> = roster["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["student_id"].as_str().unwrap().to_string())
        .collect();
    let first_two: BTreeSet<String> = students[..2].iter().map(|(_, id)| id.to_string()).collect();
    assert_eq!(enrolled, first_two);
    assert_eq!(
        roster["items"][0]["name"]
            .as_str()
            .map(|n| n.starts_with("Demo Student")),
        Some(true)
    );
    assert!(roster["seq"].as_i64().unwrap() >= 5, "{roster}");

    let waitlist = all_pages(&app, &format!("{waitlist_path}?limit=2"), admin).await;
    let order: Vec<(String, i64)> = waitlist
        .iter()
        .map(|m| {
            (
                m["student_id"].as_str().unwrap().to_string(),
                m["position"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = students[2..]
        .iter()
        .zip(1..)
        .map(|((_, id), p)| (id.to_string(), p))
        .collect();
    assert_eq!(order, expected, "head first, over pages of 2");
    let paged_roster = all_pages(&app, &format!("{roster_path}?limit=1"), admin).await;
    assert_eq!(paged_roster.len(), 2);

    // A drop promotes the head: both lists show it at once.
    assert_eq!(
        app.drop_from(&students[0].0, section).await.status(),
        StatusCode::OK
    );
    let roster = get_ok(&app, &roster_path, admin).await;
    let enrolled: BTreeSet<&str> = roster["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["student_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        enrolled,
        BTreeSet::from([
            students[1].1.to_string().as_str(),
            students[2].1.to_string().as_str()
        ])
    );
    let waitlist = get_ok(&app, &waitlist_path, admin).await;
    assert_eq!(waitlist["total"], 2);
    assert_eq!(
        waitlist["items"][0]["student_id"],
        students[3].1.to_string()
    );
    assert_eq!(waitlist["items"][0]["position"], 1);

    let unknown = app
        .get(
            &format!("/api/v1/admin/sections/{}/roster", Uuid::now_v7()),
            Some(admin),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let bad = app
        .get(&format!("{waitlist_path}?cursor=x"), Some(admin))
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let refused = app.get(&roster_path, Some(&students[1].0)).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn dead_letters_are_listed_newest_first_and_persistence_names_every_lease() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(1, 2, 1, 0).await;
    let admin = &seeded.admin_token;
    let [a, b] = seeded.report.section_ids[..] else {
        panic!("two sections")
    };
    let empty = get_ok(&app, "/api/v1/admin/dead-letters", admin).await;
    assert_eq!(empty["items"], Value::Array(vec![]));
    assert_eq!(empty["next_cursor"], Value::Null);

    // Three records as the shards write them (tests/api/writers.rs makes
    // real ones; here only the reading is under test).
    let db = app.db.get().await.unwrap();
    // All three undone already: one owing its undo would be undone by the
    // sweeper's recovery meanwhile.
    for (section, seq, undone) in [(a, 1_i64, true), (b, 1, true), (a, 2, true)] {
        db.execute(
            "insert into dead_letters (section_id, seq, kind, student_id, error, sqlstate, undone_at, undo_result) \
             values ($1, $2, 'enroll', null, 'insert or update violates foreign key', '23503', \
                     case when $3 then now() end, case when $3 then 'reverted' end)",
            &[&section, &seq, &undone],
        )
        .await
        .unwrap();
    }
    let all = all_pages(&app, "/api/v1/admin/dead-letters?limit=2", admin).await;
    let seen: Vec<(String, i64)> = all
        .iter()
        .map(|d| {
            (
                d["section_id"].as_str().unwrap().to_string(),
                d["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [(a.to_string(), 2), (b.to_string(), 1), (a.to_string(), 1)],
        "newest first"
    );
    assert!(all[1]["undone_at"].is_string(), "{all:?}");
    assert_eq!(all[0]["undo_result"], "reverted");
    let only_b = get_ok(
        &app,
        &format!("/api/v1/admin/dead-letters?section_id={b}"),
        admin,
    )
    .await;
    assert_eq!(only_b["items"].as_array().unwrap().len(), 1);

    // One instance: once its leases are taken it holds every partition.
    let partitions = app.state.settings.sync.partitions;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let state = loop {
        let state = get_ok(&app, "/api/v1/admin/persistence", admin).await;
        if state["unheld_partitions"] == Value::Array(vec![]) {
            break state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leases never all taken: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state["partitions"], partitions);
    let writers = state["writers"].as_array().unwrap();
    assert_eq!(writers.len(), 1, "{state}");
    assert_eq!(
        writers[0]["partitions"].as_array().unwrap().len(),
        partitions
    );
    assert_eq!(state["dead_letters"], 3);
    assert_eq!(state["dead_letters_undo_owed"], 0);
    assert_eq!(
        state["queues"].as_array().unwrap().len(),
        app.state.settings.sync.shards
    );
}

/// A dead letter as the shards write one, already undone in Redis.
async fn dead_letter(
    app: &TestApp,
    section: Uuid,
    seq: i64,
    kind: &str,
    student: Option<Uuid>,
) -> i64 {
    app.db
        .get()
        .await
        .unwrap()
        .query_one(
            "insert into dead_letters (section_id, seq, kind, student_id, error, sqlstate, undone_at, undo_result) \
             values ($1, $2, $3, $4, 'a check failed', '23514', now(), 'reverted') returning id",
            &[&section, &seq, &kind, &student],
        )
        .await
        .unwrap()
        .get(0)
}

/// `POST /admin/dead-letters/{id}/retry` with `token`.
async fn retry(app: &TestApp, id: i64, token: &str) -> reqwest::Response {
    app.post(
        &format!("/api/v1/admin/dead-letters/{id}/retry"),
        Some(token),
        &Value::Null,
    )
    .await
}

#[tokio::test]
async fn a_dead_letter_is_retried_once_as_the_student_would_be_answered_today_or_dismissed() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(2, 2, 1, 0).await;
    let admin = &seeded.admin_token;
    let [a, b] = seeded.report.section_ids[..] else {
        panic!("two sections")
    };
    let (token1, first) = app.student(1).await;
    let (_, second) = app.student(2).await;

    // An enrolment that failed for good: retried, it enrols now.
    let enrol = dead_letter(&app, a, 1, "enroll", Some(first)).await;
    let retried = retry(&app, enrol, admin).await;
    assert_eq!(retried.status(), StatusCode::OK);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["action"], "register");
    assert_eq!(retried["status"], "enrolled", "{retried}");
    assert_eq!(retried["dead_letter"]["resolution"], "retried");
    assert_eq!(retried["dead_letter"]["resolution_note"], "enrolled");
    let me: Value = get_ok(&app, "/api/v1/students/me/registrations", &token1).await;
    assert_eq!(me["items"][0]["section_id"], a.to_string(), "{me}");
    // Once only.
    let again = retry(&app, enrol, admin).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["code"], "already_resolved");

    // Today's answer can differ: the one seat of `a` is taken now.
    let late = dead_letter(&app, a, 2, "enroll", Some(second)).await;
    let answer: Value = retry(&app, late, admin).await.json().await.unwrap();
    assert_eq!(answer["status"], "rejected", "{answer}");
    assert_eq!(answer["reason"], "full");
    assert_eq!(answer["dead_letter"]["resolution_note"], "full");

    // A drop that failed: retried, the student leaves.
    let drop = dead_letter(&app, a, 3, "drop", Some(first)).await;
    let answer: Value = retry(&app, drop, admin).await.json().await.unwrap();
    assert_eq!(
        (answer["action"].as_str(), answer["status"].as_str()),
        (Some("drop"), Some("dropped")),
        "{answer}"
    );

    // A capacity change is nobody's request: only dismissed.
    let config = dead_letter(&app, b, 1, "config", None).await;
    let refused = retry(&app, config, admin).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["code"], "not_retryable");
    let empty = app
        .post(
            &format!("/api/v1/admin/dead-letters/{config}/dismiss"),
            Some(admin),
            &serde_json::json!({"reason": "  "}),
        )
        .await;
    assert_eq!(empty.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let dismissed = app
        .post(
            &format!("/api/v1/admin/dead-letters/{config}/dismiss"),
            Some(admin),
            &serde_json::json!({"reason": "capacity was set again by hand"}),
        )
        .await;
    assert_eq!(dismissed.status(), StatusCode::OK);
    let dismissed: Value = dismissed.json().await.unwrap();
    assert_eq!(dismissed["resolution"], "dismissed");
    assert_eq!(
        dismissed["resolution_note"],
        "capacity was set again by hand"
    );
    assert!(dismissed["resolved_by"].is_string() && dismissed["resolved_at"].is_string());

    // Open ones only: everything above is resolved.
    let open = get_ok(&app, "/api/v1/admin/dead-letters?open=true", admin).await;
    assert_eq!(open["items"], Value::Array(vec![]), "{open}");
    let all = get_ok(&app, "/api/v1/admin/dead-letters", admin).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 4);

    for (path, status) in [
        (
            "/api/v1/admin/dead-letters/0/retry",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/admin/dead-letters/x/retry",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/admin/dead-letters/999999/retry",
            StatusCode::NOT_FOUND,
        ),
    ] {
        assert_eq!(
            app.post(path, Some(admin), &Value::Null).await.status(),
            status,
            "{path}"
        );
    }
    let student = retry(&app, late, &token1).await;
    assert_eq!(student.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_sections_reconcile_status_names_each_difference() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(1, 2, 3, 0).await;
    let admin = &seeded.admin_token;
    let [a, b] = seeded.report.section_ids[..] else {
        panic!("two sections")
    };
    let (token, _) = app.student(1).await;
    assert_eq!(app.register(&token, &[a]).await.status(), StatusCode::OK);
    app.wait_persisted(&[a]).await;

    let agrees = get_ok(
        &app,
        &format!("/api/v1/admin/sections/{a}/reconcile"),
        admin,
    )
    .await;
    assert_eq!(agrees["agrees"], true, "{agrees}");
    assert_eq!(agrees["drift"], false);
    assert_eq!(agrees["differences"], Value::Array(vec![]));

    // Capacity moved behind the engine's back, in Redis only.
    let meta = app.redis.section_keys(b).meta;
    redis::cmd("HINCRBY")
        .arg(&meta)
        .arg("capacity")
        .arg(5)
        .query_async::<()>(&mut app.redis.conn())
        .await
        .unwrap();
    let drifted = get_ok(
        &app,
        &format!("/api/v1/admin/sections/{b}/reconcile"),
        admin,
    )
    .await;
    assert_eq!(drifted["agrees"], false, "{drifted}");
    assert_eq!(drifted["drift"], true);
    let kinds: Vec<&str> = drifted["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"capacity"), "{drifted}");
    // The other section is not disturbed by it, and nothing was repaired.
    let a_again = get_ok(
        &app,
        &format!("/api/v1/admin/sections/{a}/reconcile"),
        admin,
    )
    .await;
    assert_eq!(a_again["agrees"], true);
    let still = get_ok(
        &app,
        &format!("/api/v1/admin/sections/{b}/reconcile"),
        admin,
    )
    .await;
    assert_eq!(still["drift"], true);

    let unknown = app
        .get(
            &format!("/api/v1/admin/sections/{}/reconcile", Uuid::now_v7()),
            Some(admin),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}
