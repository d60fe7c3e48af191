//! Ordinary traffic on one instance — registrations, waitlists, drops with
//! promotion, capacity changes and an undone registration (its student
//! deleted before it was written) — must never look
//! like lost Redis data to the persistence side: no sequence conflict, no
//! section rebuilt. A conflict here would mean the events the shards write
//! differ from those the scripts appended.
//!
//! The server runs as a child process so that its metrics are its own (the
//! in-process apps of this test binary share one metrics recorder).

use futures_util::{stream, StreamExt};
use registrar::{
    domain::Role,
    metrics::{COMPENSATIONS, EVENTS_APPLIED, REDIS_REVALIDATIONS, SEQUENCE_CONFLICTS},
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    helpers::{assert_converged, wait_persisted},
    processes::seeded,
};

/// The sum of every sample of `name` whose labels contain `labels`
/// (Prometheus text; absent means 0).
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let matches = series == name
                || (series.starts_with(name)
                    && series[name.len()..].starts_with('{')
                    && series.contains(labels));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[tokio::test]
async fn ordinary_traffic_causes_no_sequence_conflict_and_no_rebuild() {
    // Arrange: 3 sections of 4 seats and 6 waitlist places, 40 students and
    // a spare one for the undone registration.
    let s = seeded(41, 3, 4, 6).await;
    let (crowd, spare) = (&s.students[..40], s.students[40]);
    let server = s.launch().spawn();
    server.wait_ready().await;
    let http = reqwest::Client::new();
    let admin = s.tokens.mint(s.admin, Role::Admin, true);
    let post = |path: &'static str, token: String, body: Value| {
        let (http, url) = (http.clone(), server.url(path));
        async move {
            let response = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("request sent");
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    // Act 1: everyone registers for every section at once: enrolments,
    // waitlist places and refusals.
    let tokens: Vec<(Uuid, String)> = crowd
        .iter()
        .map(|id| (*id, s.tokens.mint(*id, Role::Student, true)))
        .collect();
    let answers: Vec<(Uuid, u16, Value)> = stream::iter(tokens)
        .map(|(student, token)| {
            let call = post(
                "/api/v1/register",
                token,
                json!({ "section_ids": s.sections }),
            );
            async move {
                let (status, body) = call.await;
                (student, status.as_u16(), body)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(answers.iter().all(|(_, status, _)| *status == 200));
    let enrolled_in_first: Vec<Uuid> = answers
        .iter()
        .filter(|(_, _, body)| body["results"][0]["status"] == "enrolled")
        .map(|(student, _, _)| *student)
        .collect();
    assert!(!enrolled_in_first.is_empty());

    // Act 2: drops that promote the waitlist head, concurrently with a
    // capacity change of the same section (new seats go to the waitlist).
    let drops = stream::iter(enrolled_in_first.iter().take(2).copied())
        .map(|student| {
            let token = s.tokens.mint(student, Role::Student, true);
            post(
                "/api/v1/register/drop",
                token,
                json!({ "section_id": s.sections[0] }),
            )
        })
        .buffer_unordered(2)
        .collect::<Vec<_>>();
    let resize = async {
        let response = http
            .patch(server.url(&format!("/api/v1/admin/sections/{}", s.sections[1])))
            .bearer_auth(&admin)
            .json(&json!({ "total_seats": 6, "waitlist_limit": 8 }))
            .send()
            .await
            .expect("request sent");
        response.status().as_u16()
    };
    let (drops, resized) = tokio::join!(drops, resize);
    for (status, body) in &drops {
        assert_eq!(status.as_u16(), 200, "{body}");
        assert!(body["promoted_student_id"].is_string(), "{body}");
    }
    assert_eq!(resized, 200);

    // Act 3: an admin registration for the spare student while a
    // transaction is deleting that student (a waitlist place: the first
    // section's waitlist has room after the promotions). The admin's check
    // still sees the student; the shard's write waits on the deletion and
    // then fails for good (foreign key), so it is undone (compensate.lua).
    let mut db = s.db.get().await.unwrap();
    let deletion = db.transaction().await.unwrap();
    deletion
        .execute("delete from students where id = $1", &[&spare])
        .await
        .unwrap();
    let (status, body) = post(
        "/api/v1/register",
        admin.clone(),
        json!({ "student_id": spare, "section_ids": [s.sections[0]] }),
    )
    .await;
    deletion.commit().await.unwrap();
    drop(db);
    assert_eq!(status.as_u16(), 200, "{body}");
    assert_eq!(body["results"][0]["status"], "waitlisted", "{body}");
    let redis = s.redis();
    wait_persisted(&s.db, &redis, &s.sections).await;

    // Assert: the undo happened, and nothing looked like a conflict.
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(&text, EVENTS_APPLIED, "kind=\"promote\"") >= 2.0,
        "drops and the resize promoted waitlisted students"
    );
    assert!(metric(&text, EVENTS_APPLIED, "kind=\"config\"") >= 1.0);
    assert!(
        metric(&text, COMPENSATIONS, "result=\"reverted\"") >= 1.0,
        "the deleted student's waitlist place was undone"
    );
    assert_eq!(
        metric(&text, SEQUENCE_CONFLICTS, ""),
        0.0,
        "ordinary traffic caused sequence conflicts"
    );
    assert_eq!(
        metric(&text, REDIS_REVALIDATIONS, "result=\"rebuilt\""),
        0.0,
        "ordinary traffic caused a section rebuild"
    );
    for section in &s.sections {
        assert_converged(&s.db, &redis, *section).await;
    }
}
