//! Crashes and lost caches: the real binary killed with SIGKILL, and Redis
//! emptied under a running server.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use futures_util::{stream, StreamExt};
use registrar::domain::Role;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    helpers::{assert_converged, pg_roster, wait_persisted},
    kit::child::PrivateRedis,
    processes::seeded,
};

/// Each student and the status answered, None when the request died.
type Answers = Vec<(Uuid, Option<String>)>;

async fn register(
    http: &reqwest::Client,
    server_url: &str,
    token: &str,
    section: Uuid,
) -> Result<Value, reqwest::Error> {
    let response = http
        .post(format!("{server_url}/api/v1/register"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "section_ids": [section] }))
        .send()
        .await?
        .error_for_status()?;
    let body: Value = response.json().await?;
    Ok(body["results"][0].clone())
}

#[tokio::test]
async fn a_sigkill_while_acknowledging_loses_no_acknowledged_registration() {
    let s = seeded(400, 1, 150, 0).await;
    let section = s.sections[0];
    let server = s.launch().spawn();
    server.wait_ready().await;
    let base = server.url("");
    let http = reqwest::Client::new();
    let enrolled_answers = Arc::new(AtomicUsize::new(0));
    let answers: Arc<Mutex<Answers>> = Arc::default();
    let server = Arc::new(Mutex::new(Some(server)));

    stream::iter(s.students.clone())
        .map(|student| {
            let (http, base, token) = (
                http.clone(),
                base.clone(),
                s.tokens.mint(student, Role::Student, true),
            );
            let (enrolled_answers, answers, server) =
                (enrolled_answers.clone(), answers.clone(), server.clone());
            async move {
                let status = register(&http, &base, &token, section)
                    .await
                    .ok()
                    .map(|r| r["status"].as_str().unwrap_or("").to_string());
                if status.as_deref() == Some("enrolled")
                    && enrolled_answers.fetch_add(1, Ordering::SeqCst) + 1 == 60
                {
                    // Kill mid-stream: other requests are in flight right now.
                    if let Some(mut child) = server.lock().unwrap().take() {
                        child.child.kill().unwrap();
                        let _ = child.child.wait();
                    }
                }
                answers.lock().unwrap().push((student, status));
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let answers = answers.lock().unwrap().clone();
    let acknowledged: BTreeSet<Uuid> = answers
        .iter()
        .filter(|(_, st)| st.as_deref() == Some("enrolled"))
        .map(|(s, _)| *s)
        .collect();
    let unanswered: Vec<Uuid> = answers
        .iter()
        .filter(|(_, st)| st.is_none())
        .map(|(s, _)| *s)
        .collect();
    assert!(acknowledged.len() >= 60);
    assert!(!unanswered.is_empty(), "the kill interrupted requests");

    let restarted = s.launch().spawn();
    restarted.wait_ready().await;
    // Clients whose request died retry; the answer tells them the truth.
    let mut learned = BTreeSet::new();
    for student in &unanswered {
        let token = s.tokens.mint(*student, Role::Student, true);
        let result = register(&http, &restarted.url(""), &token, section)
            .await
            .unwrap();
        match result["status"].as_str().unwrap() {
            "enrolled" | "already_enrolled" => {
                learned.insert(*student);
            }
            "rejected" => assert_eq!(result["reason"], "full"),
            other => panic!("unexpected {other}"),
        }
    }
    let redis = s.redis();
    wait_persisted(&s.db, &redis, &[section]).await;

    let (enrolled, _) = pg_roster(&s.db, section).await;
    assert!(
        acknowledged.is_subset(&enrolled),
        "every acknowledged seat is in PostgreSQL"
    );
    let expected: BTreeSet<Uuid> = acknowledged.union(&learned).copied().collect();
    assert_eq!(enrolled, expected, "nothing unacknowledged is enrolled");
    assert!(enrolled.len() <= 150, "no oversell");
    assert_converged(&s.db, &redis, section).await;
}

#[tokio::test]
async fn redis_emptied_under_a_running_server_is_rebuilt_from_postgres_on_restart() {
    let private = PrivateRedis::start();
    private.wait_up().await;
    let s = seeded(60, 2, 20, 10).await;
    let server = s.launch_on(&private.url()).spawn();
    server.wait_ready().await;
    let http = reqwest::Client::new();
    for (i, student) in s.students.iter().enumerate() {
        let token = s.tokens.mint(*student, Role::Student, true);
        register(&http, &server.url(""), &token, s.sections[i % 2])
            .await
            .unwrap();
    }
    let redis = s.redis_on(&private.url());
    wait_persisted(&s.db, &redis, &s.sections).await;
    let before: Vec<_> = {
        let mut v = Vec::new();
        for section in &s.sections {
            v.push(pg_roster(&s.db, *section).await);
        }
        v
    };

    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut redis.conn())
        .await
        .unwrap();
    server.sigterm();
    assert!(server.wait_exit().await.success());
    let restarted = s.launch_on(&private.url()).spawn();
    restarted.wait_ready().await;

    for (section, pg) in s.sections.iter().zip(before) {
        assert_eq!(crate::helpers::redis_roster(&redis, *section).await, pg);
        assert_converged(&s.db, &redis, *section).await;
    }
}

#[tokio::test]
async fn sigterm_under_load_exits_zero_and_every_answered_registration_lands() {
    let s = seeded(600, 2, 200, 50).await;
    let server = s.launch().spawn();
    server.wait_ready().await;
    let base = server.url("");
    let http = reqwest::Client::new();
    let answered = Arc::new(AtomicUsize::new(0));
    let answers: Arc<Mutex<Answers>> = Arc::default();
    let server = Arc::new(Mutex::new(Some(server)));
    let exit: Arc<Mutex<Option<std::thread::JoinHandle<std::process::ExitStatus>>>> =
        Arc::default();

    stream::iter(s.students.clone().into_iter().enumerate())
        .map(|(i, student)| {
            let section = s.sections[i % 2];
            let (http, base, token) = (
                http.clone(),
                base.clone(),
                s.tokens.mint(student, Role::Student, true),
            );
            let (answered, answers, server, exit) = (
                answered.clone(),
                answers.clone(),
                server.clone(),
                exit.clone(),
            );
            async move {
                let status = register(&http, &base, &token, section)
                    .await
                    .ok()
                    .map(|r| r["status"].as_str().unwrap_or("").to_string());
                if status.is_some() && answered.fetch_add(1, Ordering::SeqCst) + 1 == 150 {
                    // SIGTERM with ~200 requests in flight.
                    if let Some(mut child) = server.lock().unwrap().take() {
                        child.sigterm();
                        *exit.lock().unwrap() =
                            Some(std::thread::spawn(move || child.child.wait().unwrap()));
                    }
                }
                answers.lock().unwrap().push((student, status));
            }
        })
        .buffer_unordered(200)
        .collect::<Vec<()>>()
        .await;
    let handle = exit.lock().unwrap().take().expect("the signal was sent");
    let status = tokio::task::spawn_blocking(move || handle.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "a clean exit within the drain deadline"
    );

    // A restart finishes whatever the drain left in the outbox.
    let restarted = s.launch().spawn();
    restarted.wait_ready().await;
    let redis = s.redis();
    wait_persisted(&s.db, &redis, &s.sections).await;
    let answers = answers.lock().unwrap().clone();
    let section_of: std::collections::HashMap<Uuid, Uuid> = s
        .students
        .iter()
        .enumerate()
        .map(|(i, student)| (*student, s.sections[i % 2]))
        .collect();
    for section in &s.sections {
        let (enrolled, waiting) = pg_roster(&s.db, *section).await;
        let answered_as = |wanted: &str| -> BTreeSet<Uuid> {
            answers
                .iter()
                .filter(|(student, st)| {
                    st.as_deref() == Some(wanted) && section_of[student] == *section
                })
                .map(|(student, _)| *student)
                .collect()
        };
        assert!(
            answered_as("enrolled").is_subset(&enrolled),
            "every answered enrolment persisted"
        );
        assert!(
            answered_as("waitlisted")
                .iter()
                .all(|q| waiting.contains(q) || enrolled.contains(q)),
            "every answered waitlist place persisted (or was promoted)"
        );
        assert_converged(&s.db, &redis, *section).await;
    }
}
