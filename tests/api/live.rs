//! Live updates over Server-Sent Events (issue 16, item 3): a real client
//! reads the streams of a running server, across two instances.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, TestApp};

/// One event as the stream sent it.
#[derive(Debug)]
struct Event {
    event: String,
    id: String,
    data: Value,
}

/// Reads a text/event-stream response the way EventSource does (events
/// end at a blank line; comment lines start with `:`).
struct Stream {
    response: reqwest::Response,
    buffer: String,
    /// Comment lines seen (heartbeats).
    comments: usize,
}

impl Stream {
    async fn open(base: &str, path: &str, token: &str, last_event_id: Option<&str>) -> Self {
        let response = Self::request(base, path, token, last_event_id).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{path}"
        );
        Self {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    async fn request(
        base: &str,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        // Without the test client's whole-request timeout: a stream lasts.
        let mut request = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await.expect("request sent")
    }

    /// The next event within `within`, or None (timeout or end of stream).
    async fn next(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event {
                    event: "message".into(),
                    id: String::new(),
                    data: Value::Null,
                };
                let mut data = None;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.event = v.into();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = v.into();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("data is JSON"));
                    }
                }
                if let Some(data) = data {
                    event.data = data;
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .expect("the stream reads");
            self.buffer
                .push_str(std::str::from_utf8(&chunk?).expect("the stream is UTF-8"));
        }
    }

    /// Reads until `wanted` matches an event, within `within`.
    async fn until(&mut self, within: Duration, wanted: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let event = self.next(left).await?;
            if wanted(&event) {
                return Some(event);
            }
        }
    }
}

fn standing_in(snapshot: &Value, section: Uuid) -> &Value {
    snapshot["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["section_id"] == section.to_string())
        .unwrap_or_else(|| panic!("{section} in {snapshot}"))
}

async fn quick_heartbeats() -> TestApp {
    let app = spawn_app_with(|s| {
        s.live.heartbeat_ms = registrar::config::Millis::new(200);
        s.live.max_streams = 3;
    })
    .await;
    app.wait_ready().await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waitlisted_students_stream_on_another_instance_sees_the_position_move_within_a_second_of_the_drop(
) {
    let app = spawn_app().await;
    let seeded = app.seed_sections(3, 1, 1, 5).await;
    let section = seeded.report.section_ids[0];
    let sibling = app.sibling().await;
    sibling.wait_ready().await;
    // The instances share the sections' writing; while a partition changes
    // hands its events wait for the new writer's sweep (seconds: see
    // docs/faults.md), so the drop comes once the two hold their halves.
    let settled = crate::helpers::eventually(Duration::from_secs(15), || async {
        let view: Value = app
            .get("/api/v1/admin/persistence", Some(&seeded.admin_token))
            .await
            .json()
            .await
            .unwrap();
        let writers = view["writers"].as_array().unwrap();
        writers.len() == 2
            && writers
                .iter()
                .all(|w| !w["partitions"].as_array().unwrap().is_empty())
            && view["unheld_partitions"] == serde_json::json!([])
    })
    .await;
    assert!(settled, "the two instances share the partitions");
    let mut students = Vec::new();
    for i in 1..=3 {
        students.push(app.student(i).await);
    }
    for (token, _) in &students {
        assert_eq!(
            app.register(token, &[section]).await.status(),
            StatusCode::OK
        );
    }
    app.wait_persisted(&[section]).await;

    // The third student waits second; their stream is on the other instance.
    let (third, _) = &students[2];
    let mut stream = Stream::open(&sibling.base, "/api/v1/students/me/events", third, None).await;
    let snapshot = stream
        .next(Duration::from_secs(5))
        .await
        .expect("a snapshot");
    assert_eq!(snapshot.event, "snapshot");
    let mine = standing_in(&snapshot.data, section);
    assert_eq!(mine["status"], "waitlisted", "{}", snapshot.data);
    assert_eq!(mine["position"], 2, "{}", snapshot.data);
    // The second student's own stream, on the first instance.
    let (second, _) = &students[1];
    let mut promoted = Stream::open(&app.base, "/api/v1/students/me/events", second, None).await;
    promoted
        .next(Duration::from_secs(5))
        .await
        .expect("a snapshot");

    let (first, _) = &students[0];
    let dropped_at = Instant::now();
    assert_eq!(app.drop_from(first, section).await.status(), StatusCode::OK);
    let moved = stream
        .until(Duration::from_secs(1), |e| e.event == "standing")
        .await;
    let elapsed = dropped_at.elapsed();
    let moved = moved.unwrap_or_else(|| panic!("no position change within 1 s of the drop"));
    assert_eq!(moved.data["section_id"], section.to_string());
    assert_eq!(moved.data["status"], "waitlisted", "{:?}", moved);
    assert_eq!(moved.data["position"], 1, "{:?}", moved);
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    let enrolled = promoted
        .until(Duration::from_secs(1), |e| e.event == "standing")
        .await
        .expect("the promoted student hears of it");
    assert_eq!(enrolled.data["status"], "enrolled", "{:?}", enrolled);

    // What the stream said is what the API says.
    let view: Value = app
        .get("/api/v1/students/me/waitlist", Some(third))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["items"][0]["position"], 1, "{view}");
    sibling.stop().await;
}

#[tokio::test]
async fn a_sections_stream_follows_its_seats_and_resumes_from_the_last_event_id() {
    let app = quick_heartbeats().await;
    let seeded = app.seed_sections(3, 1, 2, 5).await;
    let section = seeded.report.section_ids[0];
    let path = format!("/api/v1/sections/{section}/events");
    let (one, _) = app.student(1).await;
    let (two, _) = app.student(2).await;
    let (three, _) = app.student(3).await;

    let mut stream = Stream::open(&app.base, &path, &one, None).await;
    let first = stream
        .next(Duration::from_secs(5))
        .await
        .expect("the seats now");
    assert_eq!(first.event, "seats");
    assert_eq!(first.data["seats_available"], 2, "{}", first.data);
    assert_eq!(first.data["waitlist_length"], 0);
    assert_eq!(first.id, first.data["seq"].to_string());

    assert_eq!(
        app.register(&one, &[section]).await.status(),
        StatusCode::OK
    );
    let taken = stream
        .until(Duration::from_secs(5), |e| e.event == "seats")
        .await
        .expect("the seat taken");
    assert_eq!(taken.data["seats_available"], 1, "{}", taken.data);
    assert_eq!(taken.data["enrolled"], 1);
    drop(stream);

    // Back with the last id and nothing changed: no snapshot, heartbeats.
    let mut resumed = Stream::open(&app.base, &path, &one, Some(&taken.id)).await;
    assert!(resumed.next(Duration::from_millis(700)).await.is_none());
    assert!(resumed.comments >= 1, "heartbeats while quiet");
    assert_eq!(
        app.register(&two, &[section]).await.status(),
        StatusCode::OK
    );
    let next = resumed
        .until(Duration::from_secs(5), |e| e.event == "seats")
        .await
        .expect("the next change");
    assert_eq!(next.data["seats_available"], 0, "{}", next.data);
    drop(resumed);

    // Back with an older id: the state now, at once.
    let mut behind = Stream::open(&app.base, &path, &one, Some(&taken.id)).await;
    let now = behind
        .next(Duration::from_secs(2))
        .await
        .expect("the state now");
    assert_eq!(now.data["seats_available"], 0, "{}", now.data);
    assert_eq!(now.id, next.id);

    // The student stream resumes the same way.
    let me = "/api/v1/students/me/events";
    let mut mine = Stream::open(&app.base, me, &three, None).await;
    let snapshot = mine.next(Duration::from_secs(5)).await.expect("a snapshot");
    assert_eq!(snapshot.data["items"], serde_json::json!([]));
    drop(mine);
    let mut back = Stream::open(&app.base, me, &three, Some(&snapshot.id)).await;
    assert!(back.next(Duration::from_millis(500)).await.is_none());
    drop(back);
    assert_eq!(
        app.register(&three, &[section]).await.status(),
        StatusCode::OK
    );
    app.wait_persisted(&[section]).await;
    let mut changed = Stream::open(&app.base, me, &three, Some(&snapshot.id)).await;
    let snapshot = changed
        .next(Duration::from_secs(2))
        .await
        .expect("the new state");
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(standing_in(&snapshot.data, section)["position"], 1);
}

#[tokio::test]
async fn streams_are_capped_private_and_end_when_the_server_shuts_down() {
    let app = quick_heartbeats().await;
    let seeded = app.seed_sections(2, 1, 2, 5).await;
    let section = seeded.report.section_ids[0];
    let path = format!("/api/v1/sections/{section}/events");
    let (one, one_id) = app.student(1).await;
    let (two, _) = app.student(2).await;

    // Someone else's stream is not found, as their other resources are.
    let other = Stream::request(
        &app.base,
        &format!("/api/v1/students/{one_id}/events"),
        &two,
        None,
    )
    .await;
    assert_problem(other, StatusCode::NOT_FOUND, "not_found").await;
    let anonymous = reqwest::get(app.url(&path)).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let unknown = Stream::request(
        &app.base,
        &format!("/api/v1/sections/{}/events", Uuid::new_v4()),
        &one,
        None,
    )
    .await;
    assert_problem(unknown, StatusCode::NOT_FOUND, "not_found").await;

    // live.max_streams = 3.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Stream::open(&app.base, &path, &one, None).await);
    }
    // A batch is read once per instance for all of a section's streams
    // (the shared read): each of them still shows it.
    for stream in &mut open {
        let first = stream
            .next(Duration::from_secs(5))
            .await
            .expect("the seats now");
        assert_eq!(first.data["seats_available"], 2, "{}", first.data);
    }
    assert_eq!(
        app.register(&one, &[section]).await.status(),
        StatusCode::OK
    );
    for stream in &mut open {
        let taken = stream
            .until(Duration::from_secs(5), |e| e.event == "seats")
            .await
            .expect("every stream of the section hears of it");
        assert_eq!(taken.data["seats_available"], 1, "{}", taken.data);
    }
    let refused = Stream::request(&app.base, &path, &two, None).await;
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE, "too_many_streams").await;
    // (The gauge registrar_live_streams is the process's, shared by every
    // test app here: the hub's own count is this server's.)
    assert_eq!(app.state.live.open_streams(), 3);
    // A client that goes away frees its place.
    drop(open.pop());
    let freed = crate::helpers::eventually(Duration::from_secs(5), || async {
        Stream::request(&app.base, &path, &two, None).await.status() == StatusCode::OK
    })
    .await;
    assert!(freed, "a closed stream's place is given to the next");

    // Shutdown ends the streams instead of waiting out the grace for them.
    let mut last = open.pop().unwrap();
    let stopping = Instant::now();
    app.stop().await;
    assert!(last.next(Duration::from_secs(5)).await.is_none());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn with_live_updates_off_the_streams_say_so() {
    let app = spawn_app_with(|s| s.live.enabled = false).await;
    app.wait_ready().await;
    let seeded = app.seed_sections(1, 1, 2, 5).await;
    let section = seeded.report.section_ids[0];
    let (one, _) = app.student(1).await;
    let response = Stream::request(
        &app.base,
        &format!("/api/v1/sections/{section}/events"),
        &one,
        None,
    )
    .await;
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "live_disabled").await;
}

/// Waitlist offers (issue 15, item 4) on the live streams: the student a
/// seat is held for hears `offered` with its deadline, and the section's
/// stream counts the held seat apart from the free ones.
#[tokio::test]
async fn the_streams_show_an_offer_with_its_deadline_and_the_held_seat() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(2, 1, 1, 5).await;
    let section = seeded.report.section_ids[0];
    let mode = app
        .patch_section(
            &seeded.admin_token,
            section,
            &serde_json::json!({ "waitlist_mode": "offer", "offer_ttl_secs": 3600 }),
        )
        .await;
    assert_eq!(mode.status(), StatusCode::OK);
    let (first, _) = app.student(1).await;
    let (second, _) = app.student(2).await;
    for token in [&first, &second] {
        assert_eq!(
            app.register(token, &[section]).await.status(),
            StatusCode::OK
        );
    }
    app.wait_persisted(&[section]).await;
    let mut mine = Stream::open(&app.base, "/api/v1/students/me/events", &second, None).await;
    let snapshot = mine.next(Duration::from_secs(5)).await.expect("a snapshot");
    assert_eq!(standing_in(&snapshot.data, section)["status"], "waitlisted");
    let path = format!("/api/v1/sections/{section}/events");
    let mut seats = Stream::open(&app.base, &path, &second, None).await;
    seats
        .next(Duration::from_secs(5))
        .await
        .expect("the counts now");

    assert_eq!(
        app.drop_from(&first, section).await.status(),
        StatusCode::OK
    );
    let offered = mine
        .until(Duration::from_secs(5), |e| e.event == "standing")
        .await
        .expect("the student hears of the offer");
    assert_eq!(offered.data["status"], "offered", "{:?}", offered);
    assert_eq!(offered.data["position"], 1, "{:?}", offered);
    let deadline = chrono::DateTime::parse_from_rfc3339(
        offered.data["offer_expires_at"]
            .as_str()
            .expect("a deadline"),
    )
    .unwrap();
    let left = deadline.signed_duration_since(chrono::Utc::now());
    assert!(
        (3500..=3600).contains(&left.num_seconds()),
        "an hour to answer: {left}"
    );
    let held = seats
        .until(Duration::from_secs(5), |e| e.data["seats_offered"] == 1)
        .await
        .expect("the section's stream counts the held seat");
    assert_eq!(held.data["seats_available"], 0, "{:?}", held);
    assert_eq!(held.data["enrolled"], 0, "{:?}", held);

    // Accepting: enrolled, and the held seat is an enrolled one.
    assert_eq!(
        app.register(&second, &[section]).await.status(),
        StatusCode::OK
    );
    let accepted = mine
        .until(Duration::from_secs(5), |e| e.event == "standing")
        .await
        .expect("the student hears of the enrolment");
    assert_eq!(accepted.data["status"], "enrolled", "{:?}", accepted);
    assert!(accepted.data.get("offer_expires_at").is_none());
}
