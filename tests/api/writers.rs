//! Several writers: two server instances on one database and namespace,
//! each persisting what it holds, with PostgreSQL cut under one of them at
//! a time; and the undo of a write that failed for good, made at most once
//! and only after its dead letter is recorded.

use std::collections::BTreeSet;

use registrar::{
    domain::Role,
    metrics::{COMPENSATIONS, PARTITIONS_OWNED},
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    helpers::{admin_database_url, eventually, pg_roster, redis_roster, spawn_app, wait_persisted},
    kit::{address_of, child::ChildServer, proxy::Proxy, via_port},
    processes::seeded,
};

/// The sum of every sample of the counter `name` (Prometheus text).
fn counter_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter(|line| {
            let rest = &line[name.len()..];
            rest.starts_with('{') || rest.starts_with(' ')
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Every compensation `server` ran, whatever its result.
async fn compensations(server: &ChildServer) -> f64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .expect("metrics answered")
        .text()
        .await
        .expect("metrics text");
    counter_total(&text, COMPENSATIONS)
}

async fn post(http: &reqwest::Client, url: String, token: String, body: Value) -> Value {
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON answer");
    assert_eq!(status, 200, "{body}");
    body
}

/// The undo result recorded on `section`'s dead letter at seq 1 (None
/// while its undo is still owed).
async fn undo_record(db: &deadpool_postgres::Object, section: Uuid) -> Option<String> {
    db.query_one(
        "select undo_result from dead_letters where section_id = $1 and seq = 1",
        &[&section],
    )
    .await
    .expect("the dead letter is there")
    .get(0)
}

#[tokio::test]
async fn a_dead_letter_whose_undo_was_interrupted_is_undone_once_by_recovery() {
    // Arrange: a persisted enrolment, then the state a crash between a dead
    // letter's commit and its undo leaves behind: the record, owing its undo.
    let app = spawn_app().await;
    let seeded = app.seed_sections(2, 1, 5, 5).await;
    let section = seeded.report.section_ids[0];
    let (token, student) = app.student(1).await;
    let answer: Value = app.register(&token, &[section]).await.json().await.unwrap();
    assert_eq!(answer["results"][0]["status"], "enrolled");
    app.wait_persisted(&[section]).await;
    let db = app.db.get().await.unwrap();
    db.execute(
        "insert into dead_letters (section_id, seq, kind, student_id, error, sqlstate) \
         values ($1, 1, 'enroll', $2, 'simulated: write failed for good', '23503')",
        &[&section, &student],
    )
    .await
    .unwrap();

    // Act: the sweeper finds the owed undo.
    let undone = eventually(std::time::Duration::from_secs(20), || async {
        undo_record(&db, section).await.is_some()
    })
    .await;

    // Assert: undone in Redis, the revert persisted, the record says so.
    assert!(undone, "the owed undo was carried out");
    app.wait_persisted(&[section]).await;
    assert!(!app.redis_roster(section).await.0.contains(&student));
    assert!(!app.pg_roster(section).await.0.contains(&student));
    assert_eq!(undo_record(&db, section).await.as_deref(), Some("reverted"));

    // Act again: the student enrols anew; the same record owing its undo a
    // second time (as if the mark had been lost) must not touch them.
    let again: Value = app.register(&token, &[section]).await.json().await.unwrap();
    assert_eq!(again["results"][0]["status"], "enrolled");
    app.wait_persisted(&[section]).await;
    db.execute(
        "update dead_letters set undone_at = null, undo_result = null \
          where section_id = $1 and seq = 1",
        &[&section],
    )
    .await
    .unwrap();
    let marked = eventually(std::time::Duration::from_secs(20), || async {
        undo_record(&db, section).await.is_some()
    })
    .await;
    assert!(marked);
    app.wait_persisted(&[section]).await;
    assert!(app.redis_roster(section).await.0.contains(&student));
    assert!(app.pg_roster(section).await.0.contains(&student));
    app.assert_converged(section).await;
}

/// The V1 sequence of the several-writers review: stale queued copies on
/// two instances, each released after the other moved the section on.
#[tokio::test]
async fn stale_queues_on_two_instances_never_undo_a_valid_enrolment() {
    // Arrange: one section of 2 seats; instances B and C, each reaching
    // PostgreSQL through a proxy of its own.
    let s = seeded(3, 1, 2, 5).await;
    let section = s.sections[0];
    let [z, x, y] = [s.students[0], s.students[1], s.students[2]];
    let target = address_of(&admin_database_url(), 5432).await;
    let (proxy_b, proxy_c) = (Proxy::start(target).await, Proxy::start(target).await);
    let b = s
        .launch()
        .env(
            "APP__DATABASE__URL",
            via_port(&s.database.url, proxy_b.port),
        )
        .spawn();
    let c = s
        .launch()
        .env(
            "APP__DATABASE__URL",
            via_port(&s.database.url, proxy_c.port),
        )
        .spawn();
    b.wait_ready().await;
    c.wait_ready().await;
    let http = reqwest::Client::new();
    let token = |student| s.tokens.mint(student, Role::Student, true);
    let redis = s.redis();
    let register = |server: &ChildServer, student| {
        post(
            &http,
            server.url("/api/v1/register"),
            token(student),
            json!({ "section_ids": [section] }),
        )
    };
    let drop = |server: &ChildServer, student| {
        post(
            &http,
            server.url("/api/v1/register/drop"),
            token(student),
            json!({ "section_id": section }),
        )
    };
    let last_seq = || async {
        s.db.get()
            .await
            .unwrap()
            .query_one("select last_seq from sections where id = $1", &[&section])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };

    // Act: Z enrols via B (persisted).
    assert_eq!(register(&b, z).await["results"][0]["status"], "enrolled");
    wait_persisted(&s.db, &redis, &[section]).await;
    // B loses PostgreSQL; X enrols via B (seq 2, held by B).
    proxy_b.cut();
    assert_eq!(register(&b, x).await["results"][0]["status"], "enrolled");
    // Via C, X drops and Y enrols; C persists up to seq 4.
    assert_eq!(drop(&c, x).await["status"], "dropped");
    assert_eq!(register(&c, y).await["results"][0]["status"], "enrolled");
    assert!(
        eventually(std::time::Duration::from_secs(30), || async {
            last_seq().await == 4
        })
        .await,
        "C persisted the section up to seq 4"
    );
    // C loses PostgreSQL; Y drops and X enrols again (seq 5, 6, held by C).
    proxy_c.cut();
    assert_eq!(drop(&c, y).await["status"], "dropped");
    assert_eq!(register(&c, x).await["results"][0]["status"], "enrolled");
    // B comes back first, with its stale copy of seq 2: it must find the
    // section moved on (a conflict), not undo anything; it then persists
    // what the outbox holds (seq 5 and 6, C's events).
    proxy_b.restore();
    let b_acted = eventually(std::time::Duration::from_secs(30), || async {
        last_seq().await == 6 || compensations(&b).await > 0.0
    })
    .await;
    assert!(b_acted, "B retried its write");
    // Then C, with its copies of seq 5 and 6, already persisted by B.
    proxy_c.restore();
    wait_persisted(&s.db, &redis, &[section]).await;

    // Assert: Z and X enrolled on both sides, nothing undone anywhere.
    let expected: BTreeSet<Uuid> = [z, x].into_iter().collect();
    assert_eq!(pg_roster(&s.db, section).await.0, expected);
    assert_eq!(redis_roster(&redis, section).await.0, expected);
    for server in [&b, &c] {
        assert_eq!(compensations(server).await, 0.0, "nothing undone");
    }
    let dead: i64 =
        s.db.get()
            .await
            .unwrap()
            .query_one("select count(*) from dead_letters", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(dead, 0, "no dead letter");
}

/// The value of the gauge `name` on `server` (0 when absent).
async fn gauge(server: &ChildServer, name: &str) -> f64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .expect("metrics answered")
        .text()
        .await
        .expect("metrics text");
    counter_total(&text, name)
}

#[tokio::test]
async fn instances_share_the_partitions_and_take_over_those_of_one_that_stops_or_dies() {
    // Arrange: two instances on one database and namespace.
    let s = seeded(40, 8, 50, 0).await;
    let a = s.launch().spawn();
    let b = s.launch().spawn();
    a.wait_ready().await;
    b.wait_ready().await;
    let all = 16.0; // config/default.toml: sync.partitions
    let shared = eventually(std::time::Duration::from_secs(20), || async {
        let (pa, pb) = (
            gauge(&a, PARTITIONS_OWNED).await,
            gauge(&b, PARTITIONS_OWNED).await,
        );
        pa + pb == all && pa > 0.0 && pb > 0.0
    })
    .await;
    assert!(shared, "both instances hold leases, together all of them");
    let http = reqwest::Client::new();
    let redis = s.redis();
    let register_all = |server: &ChildServer, students: &[Uuid]| {
        let url = server.url("/api/v1/register");
        let (http, tokens) = (
            http.clone(),
            students
                .iter()
                .map(|st| s.tokens.mint(*st, Role::Student, true))
                .collect::<Vec<_>>(),
        );
        let sections = s.sections.clone();
        async move {
            for token in tokens {
                let answer = post(
                    &http,
                    url.clone(),
                    token,
                    json!({ "section_ids": sections }),
                )
                .await;
                for result in answer["results"].as_array().expect("results") {
                    assert_eq!(result["status"], "enrolled", "{answer}");
                }
            }
        }
    };

    // Act 1: registrations through A only, in every section: those of
    // B's partitions are written by B (from the outbox).
    register_all(&a, &s.students[..10]).await;
    wait_persisted(&s.db, &redis, &s.sections).await;

    // Act 2: B dies (SIGKILL); A takes every partition over.
    let killed = std::time::Instant::now();
    drop(b);
    let took_over = eventually(std::time::Duration::from_secs(30), || async {
        gauge(&a, PARTITIONS_OWNED).await == all
    })
    .await;
    let takeover = killed.elapsed();
    assert!(took_over, "A holds every lease after B died");
    println!("takeover after SIGKILL: {takeover:?}");
    register_all(&a, &s.students[10..20]).await;
    wait_persisted(&s.db, &redis, &s.sections).await;

    // Act 3: C joins, the partitions are shared again; C stops gracefully
    // and hands its partitions back.
    let c = s.launch().spawn();
    c.wait_ready().await;
    let reshared = eventually(std::time::Duration::from_secs(20), || async {
        gauge(&c, PARTITIONS_OWNED).await > 0.0 && gauge(&a, PARTITIONS_OWNED).await < all
    })
    .await;
    assert!(reshared, "a newcomer gets a share");
    register_all(&c, &s.students[20..30]).await;
    let stopped = std::time::Instant::now();
    c.sigterm();
    assert!(c.wait_exit().await.success());
    let handed_back = eventually(std::time::Duration::from_secs(30), || async {
        gauge(&a, PARTITIONS_OWNED).await == all
    })
    .await;
    println!("takeover after SIGTERM: {:?}", stopped.elapsed());
    assert!(handed_back, "A holds every lease after C stopped");
    register_all(&a, &s.students[30..]).await;
    wait_persisted(&s.db, &redis, &s.sections).await;

    // Assert: every acknowledged enrolment is in PostgreSQL, nothing undone.
    for section in &s.sections {
        let expected: BTreeSet<Uuid> = s.students.iter().copied().collect();
        assert_eq!(pg_roster(&s.db, *section).await.0, expected);
        assert_eq!(redis_roster(&redis, *section).await.0, expected);
    }
    assert_eq!(compensations(&a).await, 0.0);
}

/// What a client last learned of its place in a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Enrolled,
    Waitlisted,
    Out,
}

#[tokio::test]
async fn a_two_instance_storm_with_postgres_cuts_undoes_nothing_and_keeps_every_answer() {
    // Arrange: 4 small sections, two instances each behind a PostgreSQL
    // proxy of its own, 24 students acting one request at a time each.
    let s = seeded(24, 4, 3, 3).await;
    let target = address_of(&admin_database_url(), 5432).await;
    let proxies = [Proxy::start(target).await, Proxy::start(target).await];
    let servers: Vec<ChildServer> = proxies
        .iter()
        .map(|p| {
            s.launch()
                .env("APP__DATABASE__URL", via_port(&s.database.url, p.port))
                .spawn()
        })
        .collect();
    for server in &servers {
        server.wait_ready().await;
    }
    let urls: Vec<String> = servers.iter().map(|s| s.url("")).collect();
    let admin = s.tokens.mint(s.admin, Role::Admin, true);
    let http = reqwest::Client::new();
    const OPS_PER_STUDENT: usize = 30;

    // Act: every student registers and drops at random through either
    // instance; an admin resizes; PostgreSQL is cut under one instance or
    // the other every 150 ms, and restored.
    let stop_cuts = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cutter = {
        let stop = stop_cuts.clone();
        let proxies = &proxies;
        async move {
            let mut rng = fastrand::Rng::with_seed(7);
            for _ in 0..400 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                for (i, proxy) in proxies.iter().enumerate() {
                    if rng.u8(0..3) == 0 && i == rng.usize(0..2) {
                        proxy.cut();
                    } else {
                        proxy.restore();
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            }
            for proxy in proxies {
                proxy.restore();
            }
        }
    };
    let clients =
        futures_util::future::join_all(s.students.iter().enumerate().map(|(n, student)| {
            let (http, urls, sections) = (http.clone(), urls.clone(), s.sections.clone());
            let token = s.tokens.mint(*student, Role::Student, true);
            async move {
                let mut rng = fastrand::Rng::with_seed(n as u64);
                let mut told = std::collections::BTreeMap::new();
                for _ in 0..OPS_PER_STUDENT {
                    let section = sections[rng.usize(0..sections.len())];
                    let base = &urls[rng.usize(0..urls.len())];
                    let register = rng.bool();
                    let (path, body) = if register {
                        ("/api/v1/register", json!({ "section_ids": [section] }))
                    } else {
                        ("/api/v1/register/drop", json!({ "section_id": section }))
                    };
                    let Ok(response) = http
                        .post(format!("{base}{path}"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await
                    else {
                        told.remove(&section);
                        continue;
                    };
                    let status = response.status().as_u16();
                    let answer: Value = response.json().await.unwrap_or(Value::Null);
                    let outcome = match (status, register) {
                        (200, true) => match answer["results"][0]["status"].as_str() {
                            Some("enrolled" | "already_enrolled") => Some(Told::Enrolled),
                            Some("waitlisted" | "already_waitlisted") => Some(Told::Waitlisted),
                            Some("rejected") => Some(Told::Out),
                            other => panic!("unexpected register answer {other:?}: {answer}"),
                        },
                        (200 | 404, false) => Some(Told::Out),
                        // Unknown outcome (e.g. 503): no expectation until
                        // the student's next definite answer.
                        _ => None,
                    };
                    match outcome {
                        Some(t) => told.insert(section, t),
                        None => told.remove(&section),
                    };
                }
                (*student, told)
            }
        }));
    let resizer = async {
        let mut rng = fastrand::Rng::with_seed(99);
        for _ in 0..20 {
            let section = s.sections[rng.usize(0..s.sections.len())];
            let base = &urls[rng.usize(0..urls.len())];
            let _ = http
                .patch(format!("{base}/api/v1/admin/sections/{section}"))
                .bearer_auth(&admin)
                .json(&json!({ "total_seats": rng.i32(3..6) }))
                .send()
                .await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let (answers, (), ()) = tokio::join!(
        async {
            let answers = clients.await;
            stop_cuts.store(true, std::sync::atomic::Ordering::Relaxed);
            answers
        },
        cutter,
        resizer
    );
    let redis = s.redis();
    wait_persisted(&s.db, &redis, &s.sections).await;

    // Assert: PostgreSQL holds what each client was last told; Redis equals
    // PostgreSQL; nothing was undone on either instance.
    for section in &s.sections {
        let (enrolled, waiting) = pg_roster(&s.db, *section).await;
        assert_eq!(
            redis_roster(&redis, *section).await,
            (enrolled.clone(), waiting.clone())
        );
        for (student, told) in &answers {
            let Some(told) = told.get(section) else {
                continue;
            };
            let enrolled_now = enrolled.contains(student);
            let waiting_now = waiting.contains(student);
            match told {
                Told::Enrolled => assert!(enrolled_now, "{student} was told enrolled in {section}"),
                // A waitlisted student may have been promoted since.
                Told::Waitlisted => assert!(
                    enrolled_now || waiting_now,
                    "{student} was told waitlisted in {section}"
                ),
                Told::Out => assert!(
                    !enrolled_now && !waiting_now,
                    "{student} was told out of {section}"
                ),
            }
        }
    }
    for server in &servers {
        assert_eq!(compensations(server).await, 0.0, "nothing undone");
    }
}
