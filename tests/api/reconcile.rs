//! `reconcile` against a running server: it compares a section only at a
//! consistent point, so traffic shows as pending and never as drift, and
//! `--fix` repairs real drift without erasing what students were told.

use std::{collections::HashMap, sync::Arc, time::Duration};

use registrar::sync::reconcile::{reconcile, Difference, SectionReport};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::{
    helpers::{redis_url, spawn_app, spawn_app_with, TestApp},
    processes::{seeded, Seeded},
};

/// Register/drop calls per student: enough for many promotions and for
/// reconcile to run many times while the sections move.
const OPS_PER_STUDENT: usize = 150;
/// Pause of each client between two calls.
const PACE: Duration = Duration::from_millis(10);
/// Sections of [`traffic`] that take most of the calls.
const BUSY: usize = 3;
/// Sections of the traffic tests: the busy ones and three quiet ones.
const SECTIONS: usize = 6;
/// Reconcile runs during the traffic at most (it also stops when the
/// traffic does).
const MAX_RUNS: usize = 200;
/// How long the traffic may take at most before the test fails.
const TRAFFIC_LIMIT: Duration = Duration::from_secs(120);

/// Where the service last told a student they stand in a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Enrolled,
    Waitlisted,
    Out,
}

/// Each student, in a task of its own, registers for and drops sections
/// in a fixed pseudo-random order; returns the last answer per (student,
/// section) it touched. The first three sections are busy (never at rest
/// for long); the others see a call now and then, so reconcile finds them
/// at rest and a call sometimes lands between its comparison and its
/// repair.
async fn traffic(
    app: Arc<TestApp>,
    students: Vec<Uuid>,
    sections: Vec<Uuid>,
) -> HashMap<(Uuid, Uuid), Told> {
    let mut clients = JoinSet::new();
    for (i, student) in students.into_iter().enumerate() {
        let app = app.clone();
        let sections = sections.clone();
        clients.spawn(async move {
            let token = app.token_for(student);
            let mut told = HashMap::new();
            for j in 0..OPS_PER_STUDENT {
                let section = if j % 20 == 0 {
                    sections[BUSY + (i + j) % (sections.len() - BUSY)]
                } else {
                    sections[(i * 7 + j * 3) % BUSY]
                };
                let answer = if (i + j) % 3 == 0 {
                    let response = app.drop_from(&token, section).await;
                    match response.status() {
                        StatusCode::NOT_FOUND => Told::Out,
                        StatusCode::OK => {
                            let body: Value = response.json().await.unwrap();
                            match body["status"].as_str() {
                                Some("dropped" | "left_waitlist") => Told::Out,
                                other => panic!("unexpected drop answer {other:?}"),
                            }
                        }
                        other => panic!("unexpected drop status {other}"),
                    }
                } else {
                    let response = app.register(&token, &[section]).await;
                    assert_eq!(response.status(), StatusCode::OK);
                    let body: Value = response.json().await.unwrap();
                    match body["results"][0]["status"].as_str() {
                        Some("enrolled" | "already_enrolled") => Told::Enrolled,
                        Some("waitlisted" | "already_waitlisted") => Told::Waitlisted,
                        Some("rejected") => Told::Out,
                        other => panic!("unexpected register answer {other:?}"),
                    }
                };
                told.insert((student, section), answer);
                // Paced, so the traffic outlasts many reconcile runs.
                tokio::time::sleep(PACE).await;
            }
            told
        });
    }
    let mut told = HashMap::new();
    while let Some(joined) = clients.join_next().await {
        told.extend(joined.unwrap());
    }
    told
}

/// Moves a section's registration end by a millisecond behind the
/// engine's back: real drift, but harmless to the traffic (the window
/// stays open), so --fix has something to repair while sections move.
async fn shift_window(app: &TestApp, section: Uuid) {
    let meta = app.redis.section_keys(section).meta;
    redis::cmd("HINCRBY")
        .arg(&meta)
        .arg("reg_end")
        .arg(1)
        .query_async::<()>(&mut app.redis.conn())
        .await
        .unwrap();
}

/// Asserts what every client was last told holds in PostgreSQL: an
/// acknowledged enrolment is there, a waitlisted student is waitlisted or
/// (promoted since) enrolled, a drop is gone.
async fn assert_answers_kept(app: &TestApp, told: &HashMap<(Uuid, Uuid), Told>) {
    let mut rosters = HashMap::new();
    for (_, section) in told.keys() {
        if !rosters.contains_key(section) {
            rosters.insert(*section, app.pg_roster(*section).await);
        }
    }
    let mut lost = Vec::new();
    for ((student, section), answer) in told {
        let (enrolled, waiting) = &rosters[section];
        let kept = match answer {
            Told::Enrolled => enrolled.contains(student),
            Told::Waitlisted => enrolled.contains(student) || waiting.contains(student),
            Told::Out => !enrolled.contains(student) && !waiting.contains(student),
        };
        if !kept {
            lost.push((*student, *section, *answer));
        }
    }
    assert!(lost.is_empty(), "answers not kept: {lost:?}");
    assert!(
        told.values().any(|t| *t == Told::Enrolled),
        "the traffic enrolled someone"
    );
}

async fn drained_and_equal(app: &TestApp, sections: &[Uuid]) -> Vec<SectionReport> {
    app.wait_persisted(sections).await;
    let after = reconcile(&app.db, &app.redis, false).await.unwrap();
    for section in sections {
        app.assert_converged(*section).await;
    }
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_fix_under_traffic_repairs_drift_and_loses_no_acknowledged_answer() {
    let app = Arc::new(spawn_app().await);
    let seeded = app.seed_sections(40, SECTIONS, 8, 8).await;
    let sections = seeded.report.section_ids.clone();
    let clients = tokio::spawn(traffic(
        app.clone(),
        app.student_ids().await,
        sections.clone(),
    ));

    let mut runs = 0;
    let mut repaired = 0;
    while !clients.is_finished() && runs < MAX_RUNS {
        shift_window(&app, sections[runs % sections.len()]).await;
        let reports = reconcile(&app.db, &app.redis, true).await.unwrap();
        repaired += reports.iter().filter(|r| r.repaired).count();
        runs += 1;
    }
    let told = tokio::time::timeout(TRAFFIC_LIMIT, clients)
        .await
        .expect("the traffic ends")
        .unwrap();
    app.wait_persisted(&sections).await;
    let last = reconcile(&app.db, &app.redis, true).await.unwrap();
    repaired += last.iter().filter(|r| r.repaired).count();
    let after = drained_and_equal(&app, &sections).await;

    assert!(
        runs > 1,
        "reconcile ran during the traffic ({runs} runs, {repaired} repairs)"
    );
    assert!(repaired > 0, "the shifted windows were repaired");
    assert!(last.iter().all(|r| r.repaired), "{last:?}");
    assert!(after.is_empty(), "{after:?}");
    assert_answers_kept(&app, &told).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_under_traffic_reports_only_pending_and_nothing_once_drained() {
    // The in-server gauge runs the same comparison every second meanwhile.
    let app = spawn_app_with(|s| s.sync.reconcile_interval_secs = 1).await;
    app.wait_ready().await;
    let app = Arc::new(app);
    let seeded = app.seed_sections(40, SECTIONS, 8, 8).await;
    let sections = seeded.report.section_ids.clone();
    let clients = tokio::spawn(traffic(
        app.clone(),
        app.student_ids().await,
        sections.clone(),
    ));

    let mut runs = 0;
    let mut drift = Vec::new();
    let mut pending = 0;
    while !clients.is_finished() && runs < MAX_RUNS {
        let reports = reconcile(&app.db, &app.redis, false).await.unwrap();
        pending += reports.len();
        drift.extend(reports.into_iter().filter(SectionReport::is_drift));
        runs += 1;
    }
    let told = tokio::time::timeout(TRAFFIC_LIMIT, clients)
        .await
        .expect("the traffic ends")
        .unwrap();
    let after = drained_and_equal(&app, &sections).await;

    assert!(
        runs > 1,
        "reconcile ran during the traffic ({runs} runs, {pending} pending reports)"
    );
    assert!(drift.is_empty(), "drift under traffic: {drift:?}");
    assert!(after.is_empty(), "{after:?}");
    assert_answers_kept(&app, &told).await;
}

#[tokio::test]
async fn reconcile_names_each_hand_made_difference_and_fix_repairs_it() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(6, 6, 5, 5).await;
    let sections = seeded.report.section_ids.clone();
    let students = app.student_ids().await;
    for s in &students {
        app.register(&app.token_for(*s), &sections).await;
    }
    app.wait_persisted(&sections).await;
    let clean = reconcile(&app.db, &app.redis, false).await.unwrap();
    let mut conn = app.redis.conn();
    let keys: Vec<_> = sections
        .iter()
        .map(|s| app.redis.section_keys(*s))
        .collect();
    let seq: i64 = redis::cmd("GET")
        .arg(&keys[5].seq)
        .query_async(&mut conn)
        .await
        .unwrap();
    let window: (i64, i64) = redis::cmd("HMGET")
        .arg(&keys[4].meta)
        .arg("reg_start")
        .arg("reg_end")
        .query_async(&mut conn)
        .await
        .unwrap();
    let hand = [
        redis::cmd("SREM")
            .arg(&keys[0].enrolled)
            .arg(students[0].to_string())
            .clone(),
        redis::cmd("HSET")
            .arg(&keys[1].meta)
            .arg("capacity")
            .arg(50)
            .clone(),
        redis::cmd("HSET")
            .arg(&keys[2].meta)
            .arg("active")
            .arg(0)
            .clone(),
        redis::cmd("HSET")
            .arg(&keys[3].meta)
            .arg("waitlist_limit")
            .arg(0)
            .clone(),
        redis::cmd("HSET")
            .arg(&keys[4].meta)
            .arg("reg_end")
            .arg(window.0)
            .clone(),
        redis::cmd("SET").arg(&keys[5].seq).arg(seq - 2).clone(),
    ];
    for cmd in &hand {
        cmd.query_async::<()>(&mut conn).await.unwrap();
    }

    let found = reconcile(&app.db, &app.redis, false).await.unwrap();
    let fixed = reconcile(&app.db, &app.redis, true).await.unwrap();
    let after = reconcile(&app.db, &app.redis, false).await.unwrap();

    assert!(clean.is_empty(), "{clean:?}");
    let of = |section: Uuid| differences_of(&found, section);
    assert_eq!(found.len(), 6, "{found:?}");
    assert_eq!(
        of(sections[0]),
        vec![Difference::Enrolled {
            only_redis: vec![],
            only_postgres: vec![students[0]],
        }]
    );
    assert_eq!(
        of(sections[1]),
        vec![Difference::Capacity {
            redis: Some(50),
            postgres: 5
        }]
    );
    assert_eq!(
        of(sections[2]),
        vec![Difference::Active {
            redis: Some(false),
            postgres: true
        }]
    );
    assert_eq!(
        of(sections[3]),
        vec![Difference::WaitlistLimit {
            redis: Some(0),
            postgres: 5
        }]
    );
    assert_eq!(
        of(sections[4]),
        vec![Difference::Window {
            redis_start: Some(window.0),
            redis_end: Some(window.0),
            postgres_start: window.0,
            postgres_end: window.1,
        }]
    );
    assert_eq!(
        of(sections[5]),
        vec![Difference::Sequence {
            redis: seq - 2,
            postgres: seq
        }]
    );
    assert_eq!(fixed.len(), 6);
    assert!(fixed.iter().all(|r| r.repaired), "{fixed:?}");
    assert!(after.is_empty(), "{after:?}");
    for section in &sections {
        app.assert_converged(*section).await;
    }
}

#[tokio::test]
async fn a_section_of_an_inactive_semester_stays_closed_after_patch_activates_it() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(1, 1, 5, 5).await;
    let section = seeded.report.section_ids[0];
    let student = app.student_ids().await[0];
    let db = app.db.get().await.unwrap();
    db.execute(
        "update semesters set is_active = false where id = $1",
        &[&seeded.report.semester_id],
    )
    .await
    .unwrap();
    db.execute(
        "update sections set is_active = false where id = $1",
        &[&section],
    )
    .await
    .unwrap();
    let noticed = reconcile(&app.db, &app.redis, true).await.unwrap();

    let patched = app
        .http
        .patch(app.url(&format!("/api/v1/admin/sections/{section}")))
        .bearer_auth(&seeded.admin_token)
        .json(&json!({ "is_active": true }))
        .send()
        .await
        .unwrap();
    let status = patched.status();
    let body: Value = patched.json().await.unwrap();
    let register: Value = app
        .register(&app.token_for(student), &[section])
        .await
        .json()
        .await
        .unwrap();
    app.wait_persisted(&[section]).await;
    let recorded: bool = db
        .query_one("select is_active from sections where id = $1", &[&section])
        .await
        .unwrap()
        .get(0);
    let after = reconcile(&app.db, &app.redis, false).await.unwrap();

    assert_eq!(
        noticed
            .iter()
            .map(|r| (r.section, r.differences.clone(), r.repaired))
            .collect::<Vec<_>>(),
        vec![(
            section,
            vec![Difference::Active {
                redis: Some(true),
                postgres: false
            }],
            true
        )]
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["is_active"], false,
        "the answer shows what is enforced"
    );
    assert_eq!(register["results"][0]["status"], "rejected", "{register}");
    assert_eq!(register["results"][0]["reason"], "inactive", "{register}");
    assert!(recorded, "PostgreSQL records the section's own flag");
    assert!(after.is_empty(), "{after:?}");
}

/// `registrar reconcile` with `args`, on this database and namespace:
/// its exit code and its stdout lines.
async fn reconcile_command(seeded: &Seeded, args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_registrar"));
    command
        .arg("reconcile")
        .args(args)
        .env("APP_ENV", "test")
        .env(
            "APP_CONFIG_DIR",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .env("APP__DATABASE__URL", &seeded.database.url)
        .env("APP__REDIS__URL", redis_url())
        .env("APP__REDIS__NAMESPACE", &seeded.namespace.name);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the registrar binary runs");
    let lines = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (output.status.code(), lines)
}

#[tokio::test]
async fn the_reconcile_command_exits_1_on_drift_and_0_once_fix_repaired_it() {
    // No server has run: Redis holds no state for any section.
    let seeded = seeded(2, 2, 5, 5).await;

    let (found, found_lines) = reconcile_command(&seeded, &[]).await;
    let (fixed, fixed_lines) = reconcile_command(&seeded, &["--fix"]).await;
    let (after, after_lines) = reconcile_command(&seeded, &[]).await;

    assert_eq!(found, Some(1), "{found_lines:?}");
    assert_eq!(found_lines.len(), 2, "{found_lines:?}");
    for line in &found_lines {
        let report: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            report["differences"],
            json!([{ "kind": "missing_in_redis" }])
        );
        assert_eq!(report["repaired"], false);
    }
    assert_eq!(fixed, Some(0), "{fixed_lines:?}");
    assert!(
        fixed_lines
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).unwrap()["repaired"] == true),
        "{fixed_lines:?}"
    );
    assert_eq!((after, after_lines), (Some(0), vec![]));
    let redis = seeded.redis();
    for section in &seeded.sections {
        assert!(redis.is_loaded(*section).await.unwrap());
    }
}

/// What a reconcile round found for `section` (nothing: no report).
fn differences_of(found: &[SectionReport], section: Uuid) -> Vec<Difference> {
    found
        .iter()
        .find(|r| r.section == section)
        .map(|r| r.differences.clone())
        .unwrap_or_default()
}

/// Waitlist offers are compared too (issue 15, item 8): an offer whose
/// deadline Redis no longer agrees on, and a waitlist mode changed by hand,
/// are named, and `--fix` puts PostgreSQL's back.
#[tokio::test]
async fn reconcile_compares_offers_and_the_waitlist_mode() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(3, 2, 1, 5).await;
    let sections = seeded.report.section_ids.clone();
    for section in &sections {
        let answer = app
            .patch_section(
                &seeded.admin_token,
                *section,
                &json!({ "waitlist_mode": "offer", "offer_ttl_secs": 3600 }),
            )
            .await;
        assert_eq!(answer.status(), StatusCode::OK);
    }
    let students = app.student_ids().await;
    for s in &students[..2] {
        app.register(&app.token_for(*s), &sections).await;
    }
    // The seat of each section is offered to the second student.
    app.drop_from(&app.token_for(students[0]), sections[0])
        .await;
    app.drop_from(&app.token_for(students[0]), sections[1])
        .await;
    app.wait_persisted(&sections).await;
    let clean = reconcile(&app.db, &app.redis, false).await.unwrap();
    let offer = app
        .redis
        .inspect(sections[0])
        .await
        .unwrap()
        .live
        .unwrap()
        .offers;
    assert_eq!(offer.len(), 1, "{offer:?}");
    let (holder, deadline) = offer[0];

    let mut conn = app.redis.conn();
    let keys: Vec<_> = sections
        .iter()
        .map(|s| app.redis.section_keys(*s))
        .collect();
    redis::cmd("HSET")
        .arg(&keys[0].offers)
        .arg(holder.to_string())
        .arg(deadline + 60_000)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    redis::cmd("HSET")
        .arg(&keys[1].meta)
        .arg("wl_mode")
        .arg("auto")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    let found = reconcile(&app.db, &app.redis, false).await.unwrap();
    let fixed = reconcile(&app.db, &app.redis, true).await.unwrap();
    let after = reconcile(&app.db, &app.redis, false).await.unwrap();

    assert!(clean.is_empty(), "{clean:?}");
    let of = |section: Uuid| differences_of(&found, section);
    assert_eq!(
        of(sections[0]),
        vec![Difference::Offers {
            only_redis: vec![(holder, deadline + 60_000)],
            only_postgres: vec![(holder, deadline)],
        }]
    );
    assert_eq!(
        of(sections[1]),
        vec![Difference::WaitlistPolicy {
            redis_offer: Some(false),
            redis_ttl_ms: Some(3_600_000),
            postgres_offer: true,
            postgres_ttl_ms: 3_600_000,
        }]
    );
    assert!(fixed.iter().all(|r| r.repaired), "{fixed:?}");
    assert!(after.is_empty(), "{after:?}");
    let restored = app.redis.inspect(sections[0]).await.unwrap().live.unwrap();
    assert_eq!(restored.offers, vec![(holder, deadline)]);
}
