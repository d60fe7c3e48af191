//! Waitlist offers through the API (issue 15, item 4): an admin puts a
//! section in offer mode; a freed seat is held for the first in line, shown
//! to them with its deadline and never to anyone as free; they accept by
//! registering, decline by dropping, or let it lapse (the sweeper passes it
//! on with nobody calling); PostgreSQL keeps the offers, so a rebuilt
//! state holds them too, and the audit of SPEC §2 stays clean.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, spawn_app, spawn_app_with, TestApp};

async fn set_offer_mode(app: &TestApp, admin: &str, section: Uuid, ttl_secs: i32) -> Value {
    let response = app
        .patch_section(
            admin,
            section,
            &json!({ "waitlist_mode": "offer", "offer_ttl_secs": ttl_secs }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn status_of(response: reqwest::Response) -> (String, Value) {
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    (
        body["results"][0]["status"].as_str().unwrap().to_string(),
        body,
    )
}

/// The caller's waitlist entry for `section`, if any.
async fn entry(app: &TestApp, token: &str, section: Uuid) -> Option<Value> {
    let response = app.get("/api/v1/students/me/waitlist", Some(token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["section_id"] == section.to_string())
        .cloned()
}

/// Open offers in PostgreSQL: student → deadline (unix ms).
async fn pg_offers(app: &TestApp, section: Uuid) -> HashMap<Uuid, i64> {
    let db = app.db.get().await.unwrap();
    db.query(
        "select student_id, offer_expires_at from waitlist \
          where section_id = $1 and offer_expires_at is not null",
        &[&section],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let at: chrono::DateTime<chrono::Utc> = r.get(1);
        (r.get(0), at.timestamp_millis())
    })
    .collect()
}

#[tokio::test]
async fn a_freed_seat_is_held_for_the_head_shown_with_its_deadline_and_accepted_by_registering() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(4, 1, 1, 5).await;
    let section = seeded.report.section_ids[0];
    let body = set_offer_mode(&app, &seeded.admin_token, section, 3600).await;
    assert_eq!(
        (&body["waitlist_mode"], &body["offer_ttl_secs"]),
        (&json!("offer"), &json!(3600))
    );
    // The catalogue shows the persisted settings (with live counts).
    app.wait_persisted(&[section]).await;
    let students = app.student_ids().await;
    let tokens: Vec<String> = students.iter().map(|s| app.token_for(*s)).collect();
    assert_eq!(
        status_of(app.register(&tokens[0], &[section]).await)
            .await
            .0,
        "enrolled"
    );
    for t in &tokens[1..3] {
        assert_eq!(
            status_of(app.register(t, &[section]).await).await.0,
            "waitlisted"
        );
    }

    let dropped = app.drop_from(&tokens[0], section).await;
    assert_eq!(dropped.status(), StatusCode::OK);
    let before = chrono::Utc::now().timestamp_millis();

    // The first in line sees the offer and its deadline; the second none.
    let offered = entry(&app, &tokens[1], section)
        .await
        .expect("still waitlisted");
    let deadline = chrono::DateTime::parse_from_rfc3339(
        offered["offer_expires_at"].as_str().expect("a deadline"),
    )
    .unwrap()
    .timestamp_millis();
    assert!(
        (deadline - before - 3_600_000).abs() < 60_000,
        "deadline {deadline} is about an hour from {before}"
    );
    assert_eq!(offered["position"], 1);
    assert!(entry(&app, &tokens[2], section).await.unwrap()["offer_expires_at"].is_null());

    // Nobody sees the seat as free, and a newcomer waits behind both.
    let shown: Value = app
        .get(&format!("/api/v1/sections/{section}"), Some(&tokens[3]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            &shown["seats_available"],
            &shown["seats_offered"],
            &shown["waitlist_mode"]
        ),
        (&json!(0), &json!(1), &json!("offer")),
        "{shown}"
    );
    let (status, body) = status_of(app.register(&tokens[3], &[section]).await).await;
    assert_eq!(status, "waitlisted");
    assert_eq!(body["results"][0]["waitlist_position"], 3, "{body}");

    // The holder accepts by registering again.
    assert_eq!(
        status_of(app.register(&tokens[1], &[section]).await)
            .await
            .0,
        "enrolled"
    );
    app.wait_persisted(&[section]).await;
    let (enrolled, queue) = app.pg_roster(section).await;
    assert_eq!(enrolled, BTreeSet::from([students[1]]));
    assert_eq!(queue, vec![students[2], students[3]]);
    assert!(pg_offers(&app, section).await.is_empty());
    app.assert_converged(section).await;
}

#[tokio::test]
async fn a_declined_offer_passes_on_and_offers_survive_a_rebuild_from_postgresql() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(4, 1, 1, 5).await;
    let section = seeded.report.section_ids[0];
    set_offer_mode(&app, &seeded.admin_token, section, 3600).await;
    let students = app.student_ids().await;
    let tokens: Vec<String> = students.iter().map(|s| app.token_for(*s)).collect();
    for t in &tokens {
        app.register(t, &[section]).await;
    }
    app.drop_from(&tokens[0], section).await;

    // Declining is leaving the waitlist: the next in line holds the seat.
    let declined = app.drop_from(&tokens[1], section).await;
    assert_eq!(declined.status(), StatusCode::OK);
    let body: Value = declined.json().await.unwrap();
    assert_eq!(body["status"], "left_waitlist");
    assert!(entry(&app, &tokens[1], section).await.is_none());
    assert!(entry(&app, &tokens[2], section).await.unwrap()["offer_expires_at"].is_string());

    app.wait_persisted(&[section]).await;
    let persisted = pg_offers(&app, section).await;
    assert_eq!(
        persisted.keys().copied().collect::<Vec<_>>(),
        vec![students[2]]
    );
    app.assert_converged(section).await;

    // Redis loses the section; the rebuilt state holds the same offer.
    app.redis.forget_section(section).await.unwrap();
    app.state.registrar.ensure_loaded(&[section]).await.unwrap();
    let live = app.redis.inspect(section).await.unwrap().live.unwrap();
    assert_eq!(live.offers, vec![(students[2], persisted[&students[2]])]);
    assert_eq!(
        live.seats,
        Some(0),
        "the held seat is not free after the rebuild"
    );
    assert_eq!(
        status_of(app.register(&tokens[2], &[section]).await)
            .await
            .0,
        "enrolled",
        "the restored offer is accepted"
    );
    app.wait_persisted(&[section]).await;
    app.assert_converged(section).await;
}

#[tokio::test]
async fn an_offer_nobody_answers_lapses_to_the_next_by_the_sweeper_and_the_audit_is_clean() {
    let sweep_ms = 200;
    let app = spawn_app_with(|s| s.sync.sweep_interval_ms = sweep_ms).await;
    let seeded = app.seed_sections(4, 1, 1, 5).await;
    let section = seeded.report.section_ids[0];
    set_offer_mode(&app, &seeded.admin_token, section, 1).await;
    let students = app.student_ids().await;
    let tokens: Vec<String> = students.iter().map(|s| app.token_for(*s)).collect();
    for t in &tokens[..3] {
        app.register(t, &[section]).await;
    }
    app.drop_from(&tokens[0], section).await;

    // Nobody calls the section: the sweeper lets the offer lapse (a second
    // after it was made, within a sweep) and offers the seat to the next.
    let lapsed = eventually(Duration::from_secs(10), || async {
        entry(&app, &tokens[1], section).await.is_none()
            && entry(&app, &tokens[2], section)
                .await
                .is_some_and(|e| e["offer_expires_at"].is_string())
    })
    .await;
    assert!(lapsed, "the lapsed offer passed to the next in line");
    // /health shows the seat the offer holds (as of the last sweep).
    let shown = eventually(Duration::from_secs(5), || async {
        let health: Value = app.get("/health", None).await.json().await.unwrap();
        health["held"]["seats_offered"] == 1
    })
    .await;
    assert!(shown, "/health shows the held seat");

    // The audit of SPEC §2, with the offers' invariants, holds at every
    // point: here with an offer open.
    app.wait_persisted(&[section]).await;
    let findings = registrar::audit::audit(
        &app.db,
        &app.redis,
        &[section],
        &HashMap::from([(section, BTreeSet::new())]),
        sweep_ms,
    )
    .await
    .unwrap();
    for f in &findings {
        assert!(f.passed, "{}: {}", f.check, f.detail);
    }
    for check in [
        "held + enrolled within capacity (PostgreSQL)",
        "no offer held past its deadline + sweep interval",
        "every offer is to a waitlisted student",
        "no free seat while students wait",
    ] {
        assert!(findings.iter().any(|f| f.check == check), "{check} ran");
    }

    // The last one lets it lapse too: nobody waits, the seat is free.
    let freed = eventually(Duration::from_secs(10), || async {
        app.redis.live_counts(&[section]).await.unwrap()[0]
            .is_some_and(|c| c.seats_available == 1 && c.waitlist_length == 0)
    })
    .await;
    assert!(freed, "the seat is free once nobody waits");
    app.wait_persisted(&[section]).await;
    assert!(pg_offers(&app, section).await.is_empty());
    app.assert_converged(section).await;
}
