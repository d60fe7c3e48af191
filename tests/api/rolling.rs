//! A rolling restart: two instances of the real binary on two ports share
//! one database and one Redis namespace; while clients register and drop
//! through both, instance A gets SIGTERM and is replaced on its port, then
//! B. Clients retry a request whose connection failed on the other
//! instance, with the same idempotency key, as a client behind a load
//! balancer would.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use registrar::domain::Role;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    helpers::{assert_converged, eventually, pg_roster, wait_persisted},
    kit::child::ChildServer,
    processes::seeded,
};

/// Where a student stands by the last answer they got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Nothing,
    Enrolled,
    Waitlisted,
}

/// What the clients saw.
#[derive(Default)]
struct Observed {
    /// Per student, the state their last answered request left them in;
    /// absent if a request of theirs never got an answer.
    last: Mutex<HashMap<Uuid, Held>>,
    unanswered: Mutex<BTreeSet<Uuid>>,
    /// Answers that are neither a business answer nor retryable.
    unexpected: Mutex<Vec<String>>,
    answered: AtomicUsize,
    connection_errors: AtomicUsize,
    in_flight_retries: AtomicUsize,
}

/// Longest a client keeps retrying one request on the instances.
const RETRY_FOR: Duration = Duration::from_secs(20);

/// Sends one change with an idempotency key, round robin over `ports`,
/// retrying connection failures (and "still in flight" answers) on the
/// other instance. Returns the answer's status and body, or None.
async fn send(
    http: &reqwest::Client,
    ports: &[u16],
    start: usize,
    path: &str,
    token: &str,
    body: &Value,
    observed: &Observed,
) -> Option<(u16, Value)> {
    let key = Uuid::new_v4().to_string();
    let deadline = Instant::now() + RETRY_FOR;
    let mut attempt = start;
    while Instant::now() < deadline {
        let port = ports[attempt % ports.len()];
        attempt += 1;
        let sent = http
            .post(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(token)
            .header("idempotency-key", &key)
            .json(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(_) => {
                // Refused (the instance is gone or not up yet) or reset
                // (it closed a kept-alive connection): the other one.
                observed.connection_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        let Ok(value) = response.json::<Value>().await else {
            observed.connection_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if status == 409 && value["code"] == "idempotency_in_flight" {
            // The first attempt is still running on the instance that is
            // draining; its answer is stored once it finishes.
            observed.in_flight_retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if status == 503 && value["code"] == "not_ready" {
            // A replacement still warming up refuses before changing
            // anything (its /ready says 503, so a load balancer would not
            // send it traffic yet): the other one.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        return Some((status, value));
    }
    None
}

#[tokio::test]
async fn a_rolling_restart_of_two_instances_loses_nothing_acknowledged() {
    const SECTIONS: usize = 3;
    const SEATS: i32 = 40;
    const WAITLIST: i32 = 20;
    const WORKERS: usize = 24;
    // Bounds the load by count as well as by the orchestration below.
    const MAX_CHANGES: usize = 20_000;
    let s = seeded(240, SECTIONS, SEATS, WAITLIST).await;
    let a = s.launch().spawn();
    let b = s.launch().spawn();
    a.wait_ready().await;
    b.wait_ready().await;
    let ports = [a.port, b.port];
    let observed = Arc::new(Observed::default());
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Each worker owns its students, so one student's changes never overlap:
    // a student holding nothing registers, one holding a place drops it.
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let students: Vec<(Uuid, Uuid, String)> = s
            .students
            .iter()
            .enumerate()
            .filter(|(i, _)| i % WORKERS == w)
            .map(|(i, id)| {
                (
                    *id,
                    s.sections[i % SECTIONS],
                    s.tokens.mint(*id, Role::Student, true),
                )
            })
            .collect();
        let (http, observed, stop, changes) = (
            http.clone(),
            observed.clone(),
            stop.clone(),
            changes.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut held: HashMap<Uuid, Held> = HashMap::new();
            let mut turn = w;
            'load: loop {
                for (student, section, token) in &students {
                    if stop.load(Ordering::Relaxed)
                        || changes.fetch_add(1, Ordering::Relaxed) >= MAX_CHANGES
                    {
                        break 'load;
                    }
                    if observed.unanswered.lock().unwrap().contains(student) {
                        continue;
                    }
                    let holds = *held.get(student).unwrap_or(&Held::Nothing);
                    let (path, body) = if holds == Held::Nothing {
                        (
                            "/api/v1/register",
                            serde_json::json!({ "section_ids": [section] }),
                        )
                    } else {
                        (
                            "/api/v1/register/drop",
                            serde_json::json!({ "section_id": section }),
                        )
                    };
                    turn += 1;
                    let answer = send(&http, &ports, turn, path, token, &body, &observed).await;
                    let Some((status, value)) = answer else {
                        observed.unanswered.lock().unwrap().insert(*student);
                        observed.last.lock().unwrap().remove(student);
                        continue;
                    };
                    observed.answered.fetch_add(1, Ordering::Relaxed);
                    let now = match (path, status, value["results"][0]["status"].as_str()) {
                        (_, 200, Some("enrolled" | "already_enrolled")) => Held::Enrolled,
                        (_, 200, Some("waitlisted" | "already_waitlisted")) => Held::Waitlisted,
                        (_, 200, Some("rejected")) if value["results"][0]["reason"] == "full" => {
                            Held::Nothing
                        }
                        ("/api/v1/register/drop", 200, None)
                            if matches!(
                                value["status"].as_str(),
                                Some("dropped" | "left_waitlist")
                            ) =>
                        {
                            Held::Nothing
                        }
                        // Dropped already (a promotion does not remove anyone).
                        ("/api/v1/register/drop", 404, _) => Held::Nothing,
                        _ => {
                            observed
                                .unexpected
                                .lock()
                                .unwrap()
                                .push(format!("{path} -> {status} {value}"));
                            continue;
                        }
                    };
                    held.insert(*student, now);
                    observed.last.lock().unwrap().insert(*student, now);
                }
            }
        }));
    }

    // Waits until the clients got `more` answers beyond what they had.
    let progress = |more: usize| {
        let observed = observed.clone();
        async move {
            let target = observed.answered.load(Ordering::Relaxed) + more;
            eventually(Duration::from_secs(20), || async {
                observed.answered.load(Ordering::Relaxed) >= target
            })
            .await
        }
    };
    // SIGTERM, then the exit within the drain deadline (shutdown grace for
    // requests plus the shards' drain, test configuration), code 0.
    let drain_deadline = Duration::from_millis(15_000 + 10_000) + Duration::from_secs(5);
    let replace = |old: ChildServer| {
        let launch = s.launch();
        async move {
            let port = old.port;
            old.sigterm();
            let status = tokio::time::timeout(drain_deadline, old.wait_exit())
                .await
                .expect("a SIGTERMed instance exits within its drain deadline");
            assert_eq!(status.code(), Some(0), "a clean exit after draining");
            // The replacement takes the same port (its listener is closed
            // as soon as shutdown begins).
            let new = launch.port(port).spawn();
            new.wait_ready().await;
            new
        }
    };

    assert!(progress(200).await, "the load runs on both instances");
    let a2 = replace(a).await;
    assert!(progress(200).await, "the load runs on A' and B");
    let b2 = replace(b).await;
    assert!(progress(200).await, "the load runs on A' and B'");
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let unexpected = observed.unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    let unanswered = observed.unanswered.lock().unwrap().clone();
    assert!(
        unanswered.is_empty(),
        "every change got an answer on one instance or the other: {} did not",
        unanswered.len()
    );
    eprintln!(
        "rolling restart: {} answers, {} connection errors retried, {} in-flight retries",
        observed.answered.load(Ordering::Relaxed),
        observed.connection_errors.load(Ordering::Relaxed),
        observed.in_flight_retries.load(Ordering::Relaxed)
    );

    let redis = s.redis();
    wait_persisted(&s.db, &redis, &s.sections).await;
    let last = observed.last.lock().unwrap().clone();
    for (i, section) in s.sections.iter().enumerate() {
        let (enrolled, waiting) = pg_roster(&s.db, *section).await;
        assert!(enrolled.len() <= SEATS as usize, "no oversell in {section}");
        assert!(
            enrolled.is_disjoint(&waiting.iter().copied().collect()),
            "nobody both enrolled and waitlisted"
        );
        for student in s
            .students
            .iter()
            .enumerate()
            .filter(|(j, _)| j % SECTIONS == i)
            .map(|(_, id)| id)
        {
            let in_pg = if enrolled.contains(student) {
                Held::Enrolled
            } else if waiting.contains(student) {
                Held::Waitlisted
            } else {
                Held::Nothing
            };
            let told = *last.get(student).unwrap_or(&Held::Nothing);
            let consistent = match told {
                // Only the student can give up a seat: it must be there.
                Held::Enrolled => in_pg == Held::Enrolled,
                // Promotion is the only way on from the waitlist.
                Held::Waitlisted => in_pg != Held::Nothing,
                // Nothing unacknowledged may appear.
                Held::Nothing => in_pg == Held::Nothing,
            };
            assert!(
                consistent,
                "student {student} in {section}: told {told:?}, PostgreSQL has {in_pg:?}"
            );
        }
        assert_converged(&s.db, &redis, *section).await;
    }
    drop((a2, b2));
}
