//! Dependency faults beyond "Redis unreachable" (faults.rs): PostgreSQL slow,
//! PostgreSQL black-holed under load, Redis restarted from its AOF (killed
//! mid-load, and restored from an AOF older than what PostgreSQL holds), and
//! an event that reuses an applied sequence. Every load here is bounded in
//! count and time; PostgreSQL faults go through the in-test proxy, Redis
//! faults use a private redis-server on a free port.

use std::{
    collections::{BTreeSet, VecDeque},
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use registrar::{config::Secret, seats::Redis};
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    helpers::{admin_database_url, assert_problem, eventually, spawn_app_with, TestApp},
    kit::{
        address_of,
        child::{DataDir, PrivateRedis},
        free_port,
        proxy::Proxy,
        via_port,
    },
};

/// An app whose PostgreSQL is reached through a proxy the test controls.
async fn app_behind_pg_proxy(
    customize: impl FnOnce(&mut registrar::config::Settings),
) -> (TestApp, Proxy) {
    let proxy = Proxy::start(address_of(&admin_database_url(), 5432).await).await;
    let port = proxy.port;
    let app = spawn_app_with(|s| {
        s.database.url = Secret::new(via_port(s.database.url.expose(), port));
        customize(s);
    })
    .await;
    app.wait_ready().await;
    (app, proxy)
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.db
        .get()
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

/// What one acknowledged answer promised.
#[derive(Debug, Clone, Copy)]
struct Promise {
    student: Uuid,
    section: Uuid,
    enrolled: bool,
}

/// Registers `student` in `section`; Some(promise) for an acknowledged
/// enrolment or waitlisting, None for a 503 (the caller may retry);
/// anything else fails the test. A retry may find the student already
/// there: a call cut by the Redis restart is answered 503 although its
/// script may have run (its outcome is unknown to the client, SPEC §8), and
/// the retry's `already_*` answer is then the acknowledgement.
async fn register_once(app: &TestApp, student: Uuid, section: Uuid) -> Option<Promise> {
    let response = app.register(&app.token_for(student), &[section]).await;
    match response.status() {
        StatusCode::OK => {
            let body: Value = response.json().await.unwrap();
            let status = body["results"][0]["status"].as_str().unwrap().to_string();
            match status.as_str() {
                "enrolled" | "waitlisted" | "already_enrolled" | "already_waitlisted" => {
                    Some(Promise {
                        student,
                        section,
                        enrolled: status.ends_with("enrolled"),
                    })
                }
                other => panic!("unexpected registration status {other}: {body}"),
            }
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            assert!(response.headers().contains_key("retry-after"));
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], "redis_unavailable", "{body}");
            None
        }
        other => panic!("unexpected answer {other}"),
    }
}

/// Acknowledged promises PostgreSQL does not keep (the student is neither
/// enrolled nor waitlisted there), and checks that nobody is both.
async fn broken_promises(app: &TestApp, promises: &[Promise], sections: &[Uuid]) -> Vec<Promise> {
    let (mut held, mut seated) = (BTreeSet::new(), BTreeSet::new());
    for section in sections {
        let (enrolled, waiting) = app.pg_roster(*section).await;
        seated.extend(enrolled.iter().map(|s| (*s, *section)));
        let queued: BTreeSet<Uuid> = waiting.iter().copied().collect();
        assert_eq!(queued.len(), waiting.len(), "nobody twice on a waitlist");
        assert!(
            enrolled.is_disjoint(&queued),
            "nobody both enrolled and waitlisted"
        );
        held.extend(enrolled.union(&queued).map(|s| (*s, *section)));
    }
    // A waitlisted student may have been promoted since; an enrolled one
    // must still hold the seat.
    promises
        .iter()
        .filter(|p| {
            let key = (p.student, p.section);
            if p.enrolled {
                !seated.contains(&key)
            } else {
                !held.contains(&key)
            }
        })
        .copied()
        .collect()
}

async fn assert_nothing_undone(app: &TestApp, sections: &[Uuid]) {
    assert_eq!(
        count(app, "select count(*) from dead_letters").await,
        0,
        "nothing dead-lettered"
    );
    let mut conn = app.redis.conn();
    for section in sections {
        let reverted: i64 = redis::cmd("HLEN")
            .arg(app.redis.section_keys(*section).reverted)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(reverted, 0, "no registration was undone");
    }
}

#[tokio::test]
async fn with_postgres_slow_register_and_drop_do_not_wait_for_it() {
    // Each chunk either way waits this long, so any PostgreSQL round trip
    // takes at least twice as long.
    const DELAY: Duration = Duration::from_millis(300);
    let (app, proxy) = app_behind_pg_proxy(|s| {
        // Connections made through the slowed link need several round trips.
        s.database.connect_timeout_ms = registrar::config::Millis::new(15_000);
    })
    .await;
    let seeded = app.seed_sections(40, 2, 15, 30).await;
    let sections = seeded.report.section_ids.clone();
    let students = app.student_ids().await;

    proxy.slow(DELAY);
    // The control: a view that reads PostgreSQL now waits for the delay.
    let started = Instant::now();
    let view = app
        .get(
            &format!("/api/v1/students/{}/registrations", students[0]),
            Some(&app.token_for(students[0])),
        )
        .await;
    let control = started.elapsed();
    assert_eq!(view.status(), StatusCode::OK);
    assert!(
        control >= DELAY,
        "the proxy slows PostgreSQL down ({control:?})"
    );

    // Registrations and drops, eight at a time, while it stays slow.
    let promises = Arc::new(Mutex::new(Vec::new()));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let queue = Arc::new(Mutex::new(students.clone()));
    let workers = (0..8).map(|_| {
        let (app, promises, slowest, queue) =
            (&app, promises.clone(), slowest.clone(), queue.clone());
        let sections = sections.clone();
        async move {
            loop {
                let Some(student) = queue.lock().unwrap().pop() else {
                    return;
                };
                for section in &sections {
                    let started = Instant::now();
                    let promise = register_once(app, student, *section).await;
                    let took = started.elapsed();
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                    drop(s);
                    promises
                        .lock()
                        .unwrap()
                        .push(promise.expect("Redis is up: no 503"));
                }
            }
        }
    });
    join_all(workers).await;
    // Every tenth student drops their first section.
    let mut dropped = BTreeSet::new();
    for student in students.iter().step_by(10) {
        let started = Instant::now();
        let response = app.drop_from(&app.token_for(*student), sections[0]).await;
        let took = started.elapsed();
        assert_eq!(response.status(), StatusCode::OK);
        let mut s = slowest.lock().unwrap();
        *s = (*s).max(took);
        dropped.insert(*student);
    }
    let slowest = *slowest.lock().unwrap();
    println!(
        "postgres slowed by {DELAY:?} per chunk: a PostgreSQL-backed view took {control:?}; slowest of {} register/drop answers {slowest:?}",
        promises.lock().unwrap().len() + dropped.len()
    );
    assert!(
        slowest < DELAY,
        "register and drop answer without a PostgreSQL round trip (slowest {slowest:?}, one injected delay {DELAY:?})"
    );

    proxy.restore();
    app.wait_persisted(&sections).await;
    for section in &sections {
        app.assert_converged(*section).await;
    }
    let kept: Vec<Promise> = promises
        .lock()
        .unwrap()
        .iter()
        .filter(|p| !(p.section == sections[0] && dropped.contains(&p.student)))
        .copied()
        .collect();
    let broken = broken_promises(&app, &kept, &sections).await;
    assert!(broken.is_empty(), "acknowledged but missing: {broken:?}");
    assert_nothing_undone(&app, &sections).await;
}

#[tokio::test]
async fn with_postgres_black_holed_for_30s_under_load_registration_continues_and_all_lands() {
    const OUTAGE: Duration = Duration::from_secs(30);
    const STUDENTS: usize = 160;
    let (app, proxy) = app_behind_pg_proxy(|s| {
        s.sync.retry_max_ms = 500;
    })
    .await;
    let seeded = app.seed_sections(STUDENTS, 4, 25, 20).await;
    let sections = seeded.report.section_ids.clone();
    let students = app.student_ids().await;

    // Connections open but silent: connects and queries hang, not fail.
    proxy.blackhole();
    let started = Instant::now();
    let promises = Arc::new(Mutex::new(Vec::new()));
    let dropped = Arc::new(Mutex::new(BTreeSet::new()));
    // Eight workers, each taking a student every ~1.5 s: the load spans the outage.
    let queue = Arc::new(Mutex::new(
        students
            .iter()
            .copied()
            .enumerate()
            .collect::<VecDeque<_>>(),
    ));
    let pace = OUTAGE.mul_f64(8.0 / STUDENTS as f64);
    let workers = (0..8).map(|_| {
        let (app, promises, dropped, queue) =
            (&app, promises.clone(), dropped.clone(), queue.clone());
        let sections = sections.clone();
        async move {
            loop {
                let Some((i, student)) = queue.lock().unwrap().pop_front() else {
                    return;
                };
                let section = sections[i % sections.len()];
                let promise = register_once(app, student, section)
                    .await
                    .expect("registration answers 2xx while PostgreSQL is away");
                if i % 5 == 0 {
                    let response = app.drop_from(&app.token_for(student), section).await;
                    assert_eq!(response.status(), StatusCode::OK, "drop works too");
                    dropped.lock().unwrap().insert(student);
                } else {
                    promises.lock().unwrap().push(promise);
                }
                tokio::time::sleep(pace).await;
            }
        }
    });
    let health_during = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let health: Value = app.get("/health", None).await.json().await.unwrap();
        health
    };
    let (_, health) = tokio::join!(join_all(workers), health_during);
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["components"]["postgres"]["status"], "down");
    let loaded_for = started.elapsed();
    if let Some(rest) = OUTAGE.checked_sub(loaded_for) {
        tokio::time::sleep(rest).await;
    }
    let backlog = {
        let h: Value = app.get("/health", None).await.json().await.unwrap();
        h["outbox"]["backlog"].as_u64().unwrap_or(0)
    };

    proxy.restore();
    let restored = Instant::now();
    app.wait_persisted(&sections).await;
    let drained_in = restored.elapsed();
    println!(
        "postgres black-holed {:?} under load: {} acknowledged, backlog {backlog} at restore, drained in {drained_in:?}",
        started.elapsed() - drained_in,
        promises.lock().unwrap().len() + dropped.lock().unwrap().len()
    );
    for section in &sections {
        app.assert_converged(*section).await;
    }
    let promises = promises.lock().unwrap().clone();
    let broken = broken_promises(&app, &promises, &sections).await;
    assert!(broken.is_empty(), "acknowledged but missing: {broken:?}");
    let dropped = dropped.lock().unwrap().clone();
    for section in &sections {
        let (enrolled, waiting) = app.pg_roster(*section).await;
        assert!(
            dropped
                .iter()
                .all(|d| !enrolled.contains(d) && !waiting.contains(d)),
            "drops landed"
        );
    }
    assert_nothing_undone(&app, &sections).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let h: Value = app.get("/health", None).await.json().await.unwrap();
            h["status"] == "ok"
        })
        .await,
        "/health is ok again"
    );
}

/// Copies a directory's content (`cp -a`).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(from.join("."))
        .arg(to)
        .status()
        .expect("cp is available");
    assert!(status.success());
}

/// Lets the test's own Redis handle (used to inspect) find the restarted
/// server: its first command after a restart fails, as any client's does.
async fn reconnect_inspector(app: &TestApp) {
    let back = eventually(Duration::from_secs(10), || async {
        app.redis.ping().await.is_ok()
    })
    .await;
    assert!(back, "the restarted Redis answers");
}

/// An app on a private Redis persisting with `fsync`, and that Redis.
async fn app_on_private_redis(dir: &Path, fsync: &str) -> (TestApp, PrivateRedis) {
    let port = free_port();
    let redis = PrivateRedis::start_with_aof(port, dir, fsync);
    redis.wait_up().await;
    let app = spawn_app_with(|s| {
        s.redis.url = Secret::new(format!("redis://127.0.0.1:{port}/0"));
        s.sync.retry_max_ms = 200;
    })
    .await;
    app.wait_ready().await;
    (app, redis)
}

/// Registers every student once (section chosen by index), retrying 503s
/// for up to `within`; returns the acknowledged promises.
async fn register_all(
    app: &TestApp,
    students: &[Uuid],
    sections: &[Uuid],
    within: Duration,
    on_progress: impl Fn(usize) + Sync,
) -> Vec<Promise> {
    let deadline = Instant::now() + within;
    let queue = Mutex::new(
        students
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, sections[i % sections.len()]))
            .collect::<VecDeque<_>>(),
    );
    let promises = Mutex::new(Vec::new());
    let workers = (0..8).map(|_| async {
        loop {
            let next = queue.lock().unwrap().pop_front();
            let Some((student, section)) = next else {
                return;
            };
            assert!(
                Instant::now() < deadline,
                "registrations still refused after {within:?}"
            );
            match register_once(app, student, section).await {
                Some(promise) => {
                    let done = {
                        let mut p = promises.lock().unwrap();
                        p.push(promise);
                        p.len()
                    };
                    on_progress(done);
                }
                None => {
                    queue.lock().unwrap().push_back((student, section));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    join_all(workers).await;
    promises.into_inner().unwrap()
}

#[tokio::test]
async fn redis_restored_from_an_aof_older_than_postgres_is_rebuilt_before_registering_again() {
    let dir = DataDir::new();
    let (app, mut redis) = app_on_private_redis(&dir.0, "always").await;
    let seeded = app.seed_sections(60, 2, 20, 20).await;
    let sections = seeded.report.section_ids.clone();
    let students = app.student_ids().await;
    let within = Duration::from_secs(30);

    let mut promises = register_all(&app, &students[..20], &sections, within, |_| {}).await;
    app.wait_persisted(&sections).await;
    // The AOF as it is now: what a restore from backup, or a crash that lost
    // the file's unsynced tail, brings back.
    let old = DataDir::new();
    copy_dir(&dir.0, &old.0);
    promises.extend(register_all(&app, &students[20..40], &sections, within, |_| {}).await);
    app.wait_persisted(&sections).await;

    redis.kill();
    std::fs::remove_dir_all(&dir.0).unwrap();
    copy_dir(&old.0, &dir.0);
    let port = redis.port;
    let _restarted = PrivateRedis::start_with_aof(port, &dir.0, "always");
    _restarted.wait_up().await;
    // Redis now holds the sections behind PostgreSQL (20 of 40 registrations).
    promises.extend(register_all(&app, &students[40..], &sections, within, |_| {}).await);

    app.wait_ready().await;
    reconnect_inspector(&app).await;
    app.wait_persisted(&sections).await;
    for section in &sections {
        app.assert_converged(*section).await;
    }
    let broken = broken_promises(&app, &promises, &sections).await;
    println!(
        "redis restored from an AOF 20 registrations behind postgres: {} acknowledged, {} lost",
        promises.len(),
        broken.len()
    );
    assert!(
        broken.is_empty(),
        "{} acknowledged registrations lost: {broken:?}",
        broken.len()
    );
    assert_eq!(promises.len(), 60, "every student got an answer");
    assert_nothing_undone(&app, &sections).await;
}

/// Kills Redis (SIGKILL) in the middle of a registration storm and starts it
/// again from its AOF; returns (acknowledged, acknowledged but lost).
async fn redis_killed_mid_load(fsync: &str) -> (usize, usize) {
    const STUDENTS: usize = 240;
    let dir = DataDir::new();
    let (app, redis) = app_on_private_redis(&dir.0, fsync).await;
    let seeded = app.seed_sections(STUDENTS, 4, 40, 30).await;
    let sections = seeded.report.section_ids.clone();
    let students = app.student_ids().await;

    let redis = Mutex::new(Some(redis));
    let restarted = Mutex::new(None);
    let promises = register_all(
        &app,
        &students,
        &sections,
        Duration::from_secs(45),
        |done| {
            if done == STUDENTS / 3 {
                if let Some(mut killed) = redis.lock().unwrap().take() {
                    killed.kill();
                    *restarted.lock().unwrap() =
                        Some(PrivateRedis::start_with_aof(killed.port, &dir.0, fsync));
                }
            }
        },
    )
    .await;
    assert!(
        restarted.lock().unwrap().is_some(),
        "Redis was killed mid-load"
    );

    app.wait_ready().await;
    reconnect_inspector(&app).await;
    app.wait_persisted(&sections).await;
    for section in &sections {
        app.assert_converged(*section).await;
    }
    let broken = broken_promises(&app, &promises, &sections).await;
    let redis_view = redis_holds(&app.redis, &promises).await;
    assert_eq!(
        redis_view,
        promises.len() - broken.len(),
        "Redis and PostgreSQL keep the same promises"
    );
    assert_nothing_undone(&app, &sections).await;
    println!(
        "redis SIGKILLed mid-load, appendfsync {fsync}: {} acknowledged, {} lost",
        promises.len(),
        broken.len()
    );
    (promises.len(), broken.len())
}

/// How many promises Redis keeps (the student is enrolled or waitlisted).
async fn redis_holds(redis: &Redis, promises: &[Promise]) -> usize {
    let mut kept = 0;
    for p in promises {
        let standing = redis.standings(p.student, &[p.section]).await.unwrap();
        if standing[0].enrolled || standing[0].waitlist_position.is_some() {
            kept += 1;
        }
    }
    kept
}

#[tokio::test]
async fn redis_killed_mid_load_with_appendfsync_always_loses_no_acknowledged_registration() {
    let (acknowledged, lost) = redis_killed_mid_load("always").await;
    assert!(acknowledged > 0);
    assert_eq!(lost, 0, "appendfsync always: nothing acknowledged is lost");
}

#[tokio::test]
async fn redis_killed_mid_load_with_appendfsync_everysec_keeps_the_promises_of_section_2() {
    // A SIGKILL leaves the AOF's written tail in the page cache, so even
    // everysec normally loses nothing here; the figure is printed for
    // docs/faults.md, the invariants are asserted inside.
    let (acknowledged, _lost) = redis_killed_mid_load("everysec").await;
    assert!(acknowledged > 0);
}

#[tokio::test]
async fn an_event_reusing_an_applied_sequence_is_counted_and_its_section_rebuilt() {
    let app = spawn_app_with(|_| {}).await;
    app.wait_ready().await;
    let seeded = app.seed_sections(3, 1, 5, 5).await;
    let section = seeded.report.section_ids[0];
    let students = app.student_ids().await;
    for s in &students[..2] {
        register_once(&app, *s, section).await.expect("registered");
    }
    app.wait_persisted(&[section]).await;

    // What a Redis that lost data looks like: a state PostgreSQL never had
    // (a ghost enrolled) and an outbox entry numbered 2, which PostgreSQL
    // applied to another event.
    let keys = app.redis.section_keys(section);
    let ghost = students[2];
    let mut conn = app.redis.conn();
    redis::pipe()
        .cmd("SADD")
        .arg(&keys.enrolled)
        .arg(ghost.to_string())
        .cmd("DECR")
        .arg(&keys.seats)
        .cmd("DEL")
        .arg(&keys.outbox)
        .cmd("XADD")
        .arg(&keys.outbox)
        .arg("2-0")
        .arg(&[
            ("kind", "enroll"),
            ("student", &ghost.to_string()),
            ("at", "1"),
        ])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(app.state.persistence.catch_up(section));

    let rebuilt = eventually(Duration::from_secs(15), || async {
        let (redis_enrolled, _) = app.redis_roster(section).await;
        !redis_enrolled.contains(&ghost) && app.get("/ready", None).await.status() == StatusCode::OK
    })
    .await;
    assert!(rebuilt, "the section was rebuilt from PostgreSQL");
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("registrar_persistence_sequence_conflicts_total")
                && !l.ends_with(" 0")
        ),
        "the conflict is counted"
    );
    app.wait_persisted(&[section]).await;
    app.assert_converged(section).await;
    let (enrolled, _) = app.pg_roster(section).await;
    assert_eq!(enrolled, students[..2].iter().copied().collect());
}

#[tokio::test]
async fn postgres_connections_reset_mid_stream_lose_nothing() {
    let (app, proxy) = app_behind_pg_proxy(|s| {
        s.sync.retry_max_ms = 200;
    })
    .await;
    let seeded = app.seed_sections(60, 2, 20, 20).await;
    let sections = seeded.report.section_ids.clone();
    let students = app.student_ids().await;

    let mut promises = Vec::new();
    for chunk in students.chunks(20) {
        promises
            .extend(register_all(&app, chunk, &sections, Duration::from_secs(10), |_| {}).await);
        // Every pooled connection, the shards' included, dies with a RST.
        proxy.reset();
    }

    app.wait_persisted(&sections).await;
    for section in &sections {
        app.assert_converged(*section).await;
    }
    let broken = broken_promises(&app, &promises, &sections).await;
    assert!(broken.is_empty(), "acknowledged but missing: {broken:?}");
    assert_nothing_undone(&app, &sections).await;
}

/// Removes every key of `section` from Redis, as an eviction or a lost
/// Redis would: its next request must load it from PostgreSQL.
async fn forget_section(app: &TestApp, section: Uuid) {
    let k = app.redis.section_keys(section);
    let mut conn = app.redis.conn();
    redis::cmd("DEL")
        .arg(&[
            &k.meta,
            &k.seats,
            &k.enrolled,
            &k.waitlist,
            &k.seq,
            &k.outbox,
            &k.reverted,
            &k.undone,
        ])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn until_warm_up_is_done_register_drop_and_resize_answer_503_and_change_nothing() {
    let (mut app, proxy) = app_behind_pg_proxy(|_| {}).await;
    let seeded = app.seed_sections(1, 1, 5, 5).await;
    let section = seeded.report.section_ids[0];
    let token = app.token_for(app.student_ids().await[0]);
    // A start with PostgreSQL away: warm-up cannot finish.
    proxy.cut();
    app.restart().await;

    let register = app.register(&token, &[section]).await;
    let drop = app.drop_from(&token, section).await;
    let resize = app
        .http
        .patch(app.url(&format!("/api/v1/admin/sections/{section}")))
        .bearer_auth(&seeded.admin_token)
        .json(&serde_json::json!({ "total_seats": 9 }))
        .send()
        .await
        .unwrap();

    assert_eq!(
        app.get("/ready", None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    for refused in [register, drop, resize] {
        assert!(refused.headers().contains_key("retry-after"));
        assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE, "not_ready").await;
    }
    let (enrolled, waiting) = app.redis_roster(section).await;
    assert!(
        enrolled.is_empty() && waiting.is_empty(),
        "nothing reserved"
    );
    assert_eq!(
        app.redis.live_counts(&[section]).await.unwrap()[0]
            .unwrap()
            .capacity,
        5
    );

    proxy.restore();
    app.wait_ready().await;
    let after = app.register(&token, &[section]).await;
    assert_eq!(after.status(), StatusCode::OK);
    let body: Value = after.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], "enrolled", "{body}");
}

#[tokio::test]
async fn a_register_naming_a_section_that_cannot_be_loaded_changes_none_of_its_sections() {
    let (app, proxy) = app_behind_pg_proxy(|_| {}).await;
    let seeded = app.seed_sections(1, 2, 5, 5).await;
    let (loaded, unloaded) = (seeded.report.section_ids[0], seeded.report.section_ids[1]);
    let token = app.token_for(app.student_ids().await[0]);
    forget_section(&app, unloaded).await;
    proxy.cut();

    let during = app.register(&token, &[loaded, unloaded]).await;

    assert_problem(
        during,
        StatusCode::SERVICE_UNAVAILABLE,
        "section_unavailable",
    )
    .await;
    let (enrolled, waiting) = app.redis_roster(loaded).await;
    assert!(
        enrolled.is_empty() && waiting.is_empty(),
        "not in the loaded section"
    );
    assert!(app
        .redis
        .outbox_from(loaded, 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(
        !app.redis.is_loaded(unloaded).await.unwrap(),
        "nor in the other"
    );

    proxy.restore();
    let after = app.register(&token, &[loaded, unloaded]).await;
    assert_eq!(after.status(), StatusCode::OK);
    let body: Value = after.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], "enrolled", "{body}");
    assert_eq!(body["results"][1]["status"], "enrolled", "{body}");
}

#[tokio::test]
async fn with_postgres_black_holed_a_register_needing_a_load_answers_503_within_the_loader_deadline(
) {
    let (app, proxy) = app_behind_pg_proxy(|s| {
        s.sync.load_timeout_ms = registrar::config::Millis::new(500);
        s.database.connect_timeout_ms = registrar::config::Millis::new(1000);
    })
    .await;
    let seeded = app.seed_sections(1, 1, 5, 5).await;
    let section = seeded.report.section_ids[0];
    let token = app.token_for(app.student_ids().await[0]);
    forget_section(&app, section).await;
    // Connections open but silent: the loader's read would hang.
    proxy.blackhole();

    let started = Instant::now();
    let during = app.register(&token, &[section]).await;
    let took = started.elapsed();

    assert_problem(
        during,
        StatusCode::SERVICE_UNAVAILABLE,
        "section_unavailable",
    )
    .await;
    let request_deadline = app.settings.http.request_timeout();
    assert!(
        took < request_deadline / 2,
        "answered after {took:?}, not at the request deadline ({request_deadline:?})"
    );
    proxy.restore();
    let after = app.register(&token, &[section]).await;
    assert_eq!(after.status(), StatusCode::OK);
    let body: Value = after.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], "enrolled", "{body}");
}

#[tokio::test]
async fn an_admin_registration_for_a_student_while_postgres_is_away_is_503_and_changes_nothing() {
    let (app, proxy) = app_behind_pg_proxy(|_| {}).await;
    let seeded = app.seed_sections(1, 1, 5, 5).await;
    let section = seeded.report.section_ids[0];
    let student = app.student_ids().await[0];
    proxy.cut();

    let response = app
        .post(
            "/api/v1/register",
            Some(&seeded.admin_token),
            &serde_json::json!({ "student_id": student, "section_ids": [section] }),
        )
        .await;

    assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;
    let (enrolled, waiting) = app.redis_roster(section).await;
    assert!(
        enrolled.is_empty() && waiting.is_empty(),
        "nothing reserved"
    );
}
