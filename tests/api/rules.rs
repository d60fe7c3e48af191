//! The registrar's rules (issue 14, `src/rules.rs`): each rule refuses with
//! its reason, a permit waives it, limits hold under parallel requests of
//! one student, and a claim left by a crash is judged from its section.

use std::{sync::Arc, time::Duration};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, Seeded, TestApp};
use registrar::{
    seats::rules::{Claim, ClaimArgs},
    store::rules::SectionFacts,
};

async fn put(app: &TestApp, path: &str, token: &str, body: &Value) -> reqwest::Response {
    app.http
        .put(app.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

async fn ok_json(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// The one section result of a register answer.
async fn register_one(app: &TestApp, token: &str, section: Uuid) -> Value {
    let body = ok_json(app.register(token, &[section]).await).await;
    body["results"][0].clone()
}

fn reason(result: &Value) -> &str {
    result["reason"]
        .as_str()
        .unwrap_or(result["status"].as_str().unwrap())
}

async fn course_of(app: &TestApp, section: Uuid) -> (Uuid, String) {
    let db = app.db.get().await.unwrap();
    let row = db
        .query_one(
            "select c.id, c.course_code from sections s join courses c on c.id = s.course_id where s.id = $1",
            &[&section],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn set_meetings(app: &TestApp, admin: &str, section: Uuid, meetings: Value) {
    ok_json(
        put(
            app,
            &format!("/api/v1/admin/sections/{section}/meetings"),
            admin,
            &json!({ "meetings": meetings }),
        )
        .await,
    )
    .await;
}

async fn set_semester_rules(app: &TestApp, seeded: &Seeded, rules: Value) -> Value {
    let path = format!(
        "/api/v1/admin/semesters/{}/rules",
        seeded.report.semester_id
    );
    ok_json(put(app, &path, &seeded.admin_token, &rules).await).await
}

/// A section's facts as the claim is given them: 3 credits, no meetings,
/// no requisites.
fn plain_facts(seeded: &Seeded, course: Uuid) -> SectionFacts {
    SectionFacts {
        semester_id: seeded.report.semester_id,
        course_id: course,
        credits: 3,
        repeatable: false,
        meetings: String::new(),
        prerequisites: String::new(),
        corequisites: String::new(),
    }
}

/// The student's schedule in Redis holds exactly `sections`, each as held
/// (enrolled or waitlisted), no claim left over.
async fn assert_schedule(app: &TestApp, student: Uuid, mut sections: Vec<Uuid>) {
    let schedule = app.state.redis.schedule(student).await.unwrap();
    let mut held: Vec<Uuid> = schedule
        .iter()
        .filter(|(_, e)| e.starts_with('h'))
        .map(|(s, _)| *s)
        .collect();
    held.sort();
    sections.sort();
    assert_eq!(held, sections, "held entries; the schedule: {schedule:?}");
    assert_eq!(schedule.len(), held.len(), "no claim left: {schedule:?}");
}

/// A claim's arguments for the seeded semester (no priority groups).
fn claim_args(
    seeded: &Seeded,
    credit_limit: Option<i32>,
    ttl: Duration,
    grace: Duration,
) -> ClaimArgs<'static> {
    ClaimArgs {
        semester: seeded.report.semester_id,
        group_windows: "",
        credit_limit,
        count_waitlisted: true,
        ttl,
        grace,
        verify: true,
    }
}

#[tokio::test]
async fn each_rule_refuses_with_its_reason_and_holds_or_frees_what_it_should() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(3, 6, 5, 2).await;
    let admin = seeded.admin_token.as_str();
    let s = &seeded.report.section_ids;
    let (token, me) = app.student(1).await;

    // Time conflict: s0 and s1 overlap on Monday, s2 meets on other days.
    set_meetings(
        &app,
        admin,
        s[0],
        json!([{"days": "MWF", "start": "09:00", "end": "09:50"}]),
    )
    .await;
    set_meetings(
        &app,
        admin,
        s[1],
        json!([{"days": "M", "start": "09:30", "end": "10:20"}]),
    )
    .await;
    set_meetings(
        &app,
        admin,
        s[2],
        json!([{"days": "TR", "start": "09:00", "end": "10:15"}]),
    )
    .await;
    assert_eq!(register_one(&app, &token, s[0]).await["status"], "enrolled");
    let conflict = register_one(&app, &token, s[1]).await;
    assert_eq!(reason(&conflict), "time_conflict");
    assert_eq!(conflict["conflicting_section_id"], s[0].to_string());

    // Prerequisites: s2's course needs DEMO106 (s5's course) completed.
    let (course2, _) = course_of(&app, s[2]).await;
    let (_, code5) = course_of(&app, s[5]).await;
    let rules = ok_json(
        put(
            &app,
            &format!("/api/v1/admin/courses/{course2}/rules"),
            admin,
            &json!({"prerequisites": [[code5]]}),
        )
        .await,
    )
    .await;
    assert_eq!(rules["prerequisites"], json!([[code5]]));
    let missing = register_one(&app, &token, s[2]).await;
    assert_eq!(reason(&missing), "prerequisite_missing");
    assert_eq!(missing["missing_courses"], json!([code5]));
    let imported = ok_json(
        app.post(
            "/api/v1/admin/completed-courses",
            Some(admin),
            &json!({"items": [{"student_id": me, "course_code": code5}]}),
        )
        .await,
    )
    .await;
    assert_eq!(imported["recorded"], 1);
    assert_eq!(register_one(&app, &token, s[2]).await["status"], "enrolled");

    // Credit limit: 9 credits a semester, 3 per course; 6 held now.
    set_semester_rules(&app, &seeded, json!({"credit_limit": 9})).await;
    assert_eq!(register_one(&app, &token, s[3]).await["status"], "enrolled");
    let over = register_one(&app, &token, s[4]).await;
    assert_eq!(reason(&over), "credit_limit");
    assert_eq!(
        (over["credits_held"].clone(), over["credit_limit"].clone()),
        (json!(9), json!(9))
    );
    // The student's own limit overrides the semester's, at once.
    ok_json(
        put(
            &app,
            &format!("/api/v1/admin/students/{me}/credit-limit"),
            admin,
            &json!({"semester_id": seeded.report.semester_id, "credit_limit": 12}),
        )
        .await,
    )
    .await;
    assert_eq!(register_one(&app, &token, s[4]).await["status"], "enrolled");

    // One section per course: a second section of s0's course.
    let (course0, _) = course_of(&app, s[0]).await;
    let other = ok_json(
        app.post(
            "/api/v1/admin/sections",
            Some(admin),
            &json!({"course_id": course0, "semester_id": seeded.report.semester_id,
                    "section_number": "002", "total_seats": 5}),
        )
        .await,
    )
    .await;
    let other: Uuid = other["id"].as_str().unwrap().parse().unwrap();
    let twice = register_one(&app, &token, other).await;
    assert_eq!(reason(&twice), "already_in_course");
    assert_eq!(twice["conflicting_section_id"], s[0].to_string());
    // Dropping frees the course, the time and the credits.
    assert_eq!(app.drop_from(&token, s[0]).await.status(), StatusCode::OK);
    assert_eq!(
        register_one(&app, &token, other).await["status"],
        "enrolled"
    );
    // A repeatable course takes a second section (within the credits: 12
    // held, so the limit goes up to 15 first).
    let full = register_one(&app, &token, s[0]).await;
    assert_eq!(reason(&full), "already_in_course");
    ok_json(
        put(
            &app,
            &format!("/api/v1/admin/students/{me}/credit-limit"),
            admin,
            &json!({"semester_id": seeded.report.semester_id, "credit_limit": 15}),
        )
        .await,
    )
    .await;
    ok_json(
        put(
            &app,
            &format!("/api/v1/admin/courses/{course0}/rules"),
            admin,
            &json!({"repeatable": true}),
        )
        .await,
    )
    .await;
    assert_eq!(register_one(&app, &token, s[0]).await["status"], "enrolled");

    // Everything the student holds is exactly what the sections say.
    assert_schedule(&app, me, vec![s[0], s[2], s[3], s[4], other]).await;
}

#[tokio::test]
async fn time_tickets_open_per_group_and_permits_waive_a_rule_with_who_and_when() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(3, 3, 5, 2).await;
    let admin = seeded.admin_token.as_str();
    let s = &seeded.report.section_ids;
    let (token, me) = app.student(1).await;
    let (_, other) = app.student(2).await;
    let later = chrono::Utc::now() + chrono::Duration::days(3);
    let rules = set_semester_rules(
        &app,
        &seeded,
        json!({"credit_limit": null, "priority_groups": [
            {"code": "seniors", "opens_at": "2020-01-01T00:00:00Z"},
            {"code": "juniors", "opens_at": later}
        ]}),
    )
    .await;
    assert_eq!(rules["priority_groups"][1]["code"], "juniors");
    let assign = |group: &'static str, students: Vec<Uuid>| {
        let path = format!(
            "/api/v1/admin/semesters/{}/priority-groups/assign",
            seeded.report.semester_id
        );
        let app = &app;
        async move {
            ok_json(
                app.post(
                    &path,
                    Some(admin),
                    &json!({"priority_group": group, "student_ids": students}),
                )
                .await,
            )
            .await
        }
    };
    assert_eq!(assign("juniors", vec![me, other]).await["assigned"], 2);
    let early = register_one(&app, &token, s[0]).await;
    assert_eq!(reason(&early), "not_your_time_yet");
    let opens: chrono::DateTime<chrono::Utc> = early["opens_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(opens.timestamp_millis(), later.timestamp_millis());

    // A permit for this section only, recorded with who and when.
    let permit = app
        .post(
            &format!("/api/v1/admin/students/{me}/permits"),
            Some(admin),
            &json!({"section_id": s[0], "rule": "time_ticket", "note": "orientation leader"}),
        )
        .await;
    assert_eq!(permit.status(), StatusCode::CREATED);
    let permit: Value = permit.json().await.unwrap();
    assert_eq!(permit["rule"], "time_ticket");
    assert!(permit["granted_by"].is_string() && permit["granted_at"].is_string());
    assert_eq!(register_one(&app, &token, s[0]).await["status"], "enrolled");
    assert_eq!(
        reason(&register_one(&app, &token, s[1]).await),
        "not_your_time_yet"
    );
    let listed = ok_json(
        app.get(&format!("/api/v1/admin/students/{me}/permits"), Some(admin))
            .await,
    )
    .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // Moving the student to an open group takes effect on the next request.
    assign("seniors", vec![me]).await;
    assert_eq!(register_one(&app, &token, s[1]).await["status"], "enrolled");

    // Revoked: the other rules are back for the next request.
    let revoke = app
        .post(
            &format!("/api/v1/admin/students/{me}/permits/revoke"),
            Some(admin),
            &json!({"section_id": s[0], "rule": "time_ticket"}),
        )
        .await;
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    let again = app
        .post(
            &format!("/api/v1/admin/students/{me}/permits/revoke"),
            Some(admin),
            &json!({"section_id": s[0], "rule": "time_ticket"}),
        )
        .await;
    assert_problem(again, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn parallel_requests_of_one_student_never_exceed_the_credit_limit() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(4, 8, 10, 5).await;
    set_semester_rules(&app, &seeded, json!({"credit_limit": 6})).await;
    let sections = seeded.report.section_ids.clone();
    for student in 1..=4 {
        let (token, _) = app.student(student).await;
        let barrier = Arc::new(Barrier::new(sections.len()));
        let app = &app;
        let results = futures_util::future::join_all(sections.iter().map(|s| {
            let (barrier, token) = (barrier.clone(), token.clone());
            async move {
                barrier.wait().await;
                register_one(app, &token, *s).await
            }
        }))
        .await;
        let enrolled = results.iter().filter(|r| r["status"] == "enrolled").count();
        let refused: Vec<&str> = results
            .iter()
            .filter(|r| r["status"] != "enrolled")
            .map(reason)
            .collect();
        // 6 credits of 3 each: two sections, never three.
        assert_eq!(enrolled, 2, "student {student}: {results:?}");
        assert!(
            refused.iter().all(|r| *r == "credit_limit"),
            "student {student}: {refused:?}"
        );
    }
    app.wait_persisted(&sections).await;
    for s in &sections {
        app.assert_converged(*s).await;
    }
}

/// A crash between the claim and its settling: the claim counts against
/// the limit until its deadline, then the next request that it would refuse
/// judges it from the section (whose seat script refuses a late claim).
#[tokio::test]
async fn a_claim_left_by_a_crash_is_judged_from_its_section_after_its_deadline() {
    let app = spawn_app_with(|s| {
        s.rules.claim_ttl_ms = 300;
        s.rules.claim_grace_ms = 200;
    })
    .await;
    app.wait_ready().await;
    let seeded = app.seed_sections(2, 4, 10, 5).await;
    set_semester_rules(&app, &seeded, json!({"credit_limit": 6})).await;
    let s = &seeded.report.section_ids;
    let (token, me) = app.student(1).await;
    // Make sure the student's rules copy is in Redis (the first register
    // loads it), then leave two claims behind as a crash would: one whose
    // seat was taken (s0), one that never reached its section (s1).
    assert_eq!(register_one(&app, &token, s[3]).await["status"], "enrolled");
    assert_eq!(app.drop_from(&token, s[3]).await.status(), StatusCode::OK);
    let facts = |course| plain_facts(&seeded, course);
    let (c0, _) = course_of(&app, s[0]).await;
    let (c1, _) = course_of(&app, s[1]).await;
    let (f0, f1) = (facts(c0), facts(c1));
    let args = claim_args(
        &seeded,
        Some(6),
        Duration::from_millis(300),
        Duration::from_millis(200),
    );
    let claim = app
        .state
        .redis
        .claim_rules(me, &args, &[(s[0], &f0), (s[1], &f1)])
        .await
        .unwrap();
    let Claim::Decided {
        deadline,
        results,
        stamp,
    } = claim
    else {
        panic!("expected a decision, got {claim:?}");
    };
    assert_eq!(results, vec![None, None]);
    let seat = app
        .state
        .redis
        .reserve_claimed(
            s[0],
            me,
            registrar::domain::now_ms(),
            Some((deadline, &stamp)),
        )
        .await
        .unwrap();
    assert!(matches!(
        seat.outcome,
        registrar::seats::Reserve::Enrolled { .. }
    ));
    for event in seat.events {
        app.state.persistence.submit(event);
    }

    // Until the deadline the claims count: 6 credits claimed, the limit 6.
    assert_eq!(
        reason(&register_one(&app, &token, s[2]).await),
        "credit_limit"
    );

    // Past the deadline (and the grace) nothing can take s1's seat any more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let late = app
        .state
        .redis
        .reserve_claimed(
            s[1],
            me,
            registrar::domain::now_ms(),
            Some((deadline, &stamp)),
        )
        .await
        .unwrap();
    assert_eq!(late.outcome, registrar::seats::Reserve::ClaimExpired);
    assert!(late.events.is_empty());
    // The next request judges both: s0 is held (the seat was taken), s1 is
    // released, so s2 fits under the limit.
    assert_eq!(register_one(&app, &token, s[2]).await["status"], "enrolled");
    assert_schedule(&app, me, vec![s[0], s[2]]).await;
    assert_eq!(
        reason(&register_one(&app, &token, s[1]).await),
        "credit_limit"
    );
    app.wait_persisted(s).await;
    for section in s {
        app.assert_converged(*section).await;
    }
}

#[tokio::test]
async fn with_the_rules_off_only_seats_windows_and_holds_decide() {
    let app = spawn_app_with(|s| s.rules.enabled = false).await;
    app.wait_ready().await;
    let seeded = app.seed_sections(2, 3, 5, 2).await;
    set_semester_rules(&app, &seeded, json!({"credit_limit": 3})).await;
    let (token, _) = app.student(1).await;
    let body = ok_json(app.register(&token, &seeded.report.section_ids).await).await;
    let statuses: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["enrolled"; 3]);
}

#[tokio::test]
async fn rule_changes_are_validated_and_unknown_references_named() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(1, 2, 5, 2).await;
    let admin = seeded.admin_token.as_str();
    let s = &seeded.report.section_ids;
    let (course, code) = course_of(&app, s[0]).await;
    let cases: Vec<(String, Value, &str)> = vec![
        (
            format!("/api/v1/admin/courses/{course}/rules"),
            json!({"prerequisites": [["NOPE999"]]}),
            "unknown_reference",
        ),
        (
            format!("/api/v1/admin/courses/{course}/rules"),
            json!({"prerequisites": [[code]]}),
            "validation_failed",
        ),
        (
            format!("/api/v1/admin/courses/{course}/rules"),
            json!({"prerequisites": [[]]}),
            "validation_failed",
        ),
        (
            format!("/api/v1/admin/sections/{}/meetings", s[0]),
            json!({"meetings": [{"days": "MX", "start": "09:00", "end": "10:00"}]}),
            "validation_failed",
        ),
        (
            format!(
                "/api/v1/admin/semesters/{}/rules",
                seeded.report.semester_id
            ),
            json!({"credit_limit": 500}),
            "validation_failed",
        ),
        (
            format!(
                "/api/v1/admin/semesters/{}/rules",
                seeded.report.semester_id
            ),
            json!({"priority_groups": [{"code": "A", "opens_at": "2027-01-01T00:00:00Z"}]}),
            "validation_failed",
        ),
    ];
    for (path, body, code) in cases {
        let response = put(&app, &path, admin, &body).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, code).await;
    }
    let unknown_student = app
        .post(
            &format!(
                "/api/v1/admin/semesters/{}/priority-groups/assign",
                seeded.report.semester_id
            ),
            Some(admin),
            &json!({"priority_group": "nobody", "student_ids": [Uuid::new_v4()]}),
        )
        .await;
    assert_problem(
        unknown_student,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_reference",
    )
    .await;
    let missing = put(
        &app,
        &format!("/api/v1/admin/courses/{}/rules", Uuid::new_v4()),
        admin,
        &json!({}),
    )
    .await;
    assert_problem(missing, StatusCode::NOT_FOUND, "not_found").await;
    let (student_token, _) = app.student(1).await;
    let forbidden = put(
        &app,
        &format!("/api/v1/admin/courses/{course}/rules"),
        &student_token,
        &json!({}),
    )
    .await;
    assert_problem(forbidden, StatusCode::FORBIDDEN, "forbidden").await;
}

/// A request that died between its claim and its seat leaves a claim that
/// is not yet past its deadline: the student's retry does not wait for the
/// deadline, it judges the claim (fencing it in its section) and goes on;
/// the dead request's seat call, should it still arrive, is refused.
#[tokio::test]
async fn a_retry_after_a_crash_judges_the_dead_claim_at_once() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(2, 2, 10, 5).await;
    let s = &seeded.report.section_ids;
    let (token, me) = app.student(1).await;
    // The first registration starts the student's schedule.
    assert_eq!(register_one(&app, &token, s[0]).await["status"], "enrolled");
    let (course, _) = course_of(&app, s[1]).await;
    let facts = plain_facts(&seeded, course);
    let args = claim_args(
        &seeded,
        None,
        Duration::from_secs(60),
        Duration::from_secs(5),
    );
    let Claim::Decided {
        deadline, stamp, ..
    } = app
        .state
        .redis
        .claim_rules(me, &args, &[(s[1], &facts)])
        .await
        .unwrap()
    else {
        panic!("expected a decision");
    };

    let started = std::time::Instant::now();
    let retry = register_one(&app, &token, s[1]).await;
    assert_eq!(retry["status"], "enrolled", "{retry}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the retry waited for the deadline"
    );
    let schedule = app.state.redis.schedule(me).await.unwrap();
    assert_eq!(schedule.len(), 2);
    assert!(
        schedule.iter().all(|(_, e)| e.starts_with('h')),
        "{schedule:?}"
    );
    // Even with the seat free again, the dead request's seat call cannot
    // take it: its claim was fenced.
    assert_eq!(app.drop_from(&token, s[1]).await.status(), StatusCode::OK);
    let late = app
        .state
        .redis
        .reserve_claimed(
            s[1],
            me,
            registrar::domain::now_ms(),
            Some((deadline, &stamp)),
        )
        .await
        .unwrap();
    assert_eq!(late.outcome, registrar::seats::Reserve::ClaimExpired);
    assert!(late.events.is_empty());
    app.wait_persisted(s).await;
    for section in s {
        app.assert_converged(*section).await;
    }
}

/// A waitlisted student who may no longer register (a hold placed by an
/// admin or by psql) leaves the waitlist, so no promotion gives them a seat;
/// the next in line gets it. Their enrolments stay.
#[tokio::test]
async fn a_student_who_becomes_ineligible_leaves_the_waitlist_and_is_never_promoted() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(5, 2, 1, 5).await;
    let admin = seeded.admin_token.as_str();
    let (full, other) = (seeded.report.section_ids[0], seeded.report.section_ids[1]);
    let (t1, _) = app.student(1).await;
    let (t2, s2) = app.student(2).await;
    let (t3, s3) = app.student(3).await;
    assert_eq!(register_one(&app, &t1, full).await["status"], "enrolled");
    assert_eq!(register_one(&app, &t2, other).await["status"], "enrolled");
    assert_eq!(register_one(&app, &t2, full).await["waitlist_position"], 1);
    assert_eq!(register_one(&app, &t3, full).await["waitlist_position"], 2);

    let patched = app
        .http
        .patch(app.url(&format!("/api/v1/admin/students/{s2}")))
        .bearer_auth(admin)
        .json(&json!({"holds": ["financial"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let standing = app.state.redis.standings(s2, &[full, other]).await.unwrap();
    assert_eq!(standing[0].waitlist_position, None, "left the waitlist");
    assert!(standing[1].enrolled, "the enrolment stays");
    assert_eq!(
        app.state.redis.standings(s3, &[full]).await.unwrap()[0].waitlist_position,
        Some(1)
    );

    // The seat goes to the next eligible student.
    let dropped: Value = ok_json(app.drop_from(&t1, full).await).await;
    assert_eq!(dropped["promoted_student_id"], s3.to_string());

    // A hold placed with psql has the same effect once the servers hear of it.
    let (t4, s4) = app.student(4).await;
    assert_eq!(register_one(&app, &t4, other).await["waitlist_position"], 1);
    let db = app.db.get().await.unwrap();
    db.execute(
        "insert into student_holds (student_id, code) values ($1, 'advising')",
        &[&s4],
    )
    .await
    .unwrap();
    let left = crate::helpers::eventually(Duration::from_secs(10), || async {
        app.state.redis.standings(s4, &[other]).await.unwrap()[0]
            .waitlist_position
            .is_none()
    })
    .await;
    assert!(
        left,
        "a hold placed with psql took the student off the waitlist"
    );

    // So does a status other than active.
    let (t5, s5) = app.student(5).await;
    assert_eq!(register_one(&app, &t5, other).await["waitlist_position"], 1);
    let patched = app
        .http
        .patch(app.url(&format!("/api/v1/admin/students/{s5}")))
        .bearer_auth(admin)
        .json(&json!({"enrollment_status": "suspended"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    assert_eq!(
        app.state.redis.standings(s5, &[other]).await.unwrap()[0].waitlist_position,
        None,
        "a suspended student left the waitlist"
    );
    app.wait_persisted(&[full, other]).await;
    app.assert_converged(full).await;
    app.assert_converged(other).await;
}

/// Two instances, one student, parallel requests split between them: the
/// claims meet in the student's slot, so the credit limit holds across
/// instances as within one; and a rule change made through one instance
/// is in force on the other at once for the student's own facts.
#[tokio::test]
async fn the_credit_limit_holds_across_two_instances() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(3, 8, 10, 5).await;
    set_semester_rules(&app, &seeded, json!({"credit_limit": 9})).await;
    let second = app.sibling().await;
    second.wait_ready().await;
    let sections = seeded.report.section_ids.clone();
    let http = reqwest::Client::new();
    for student in 1..=3 {
        let (token, me) = app.student(student).await;
        let barrier = Arc::new(Barrier::new(sections.len()));
        let results = futures_util::future::join_all(sections.iter().enumerate().map(|(i, s)| {
            let (barrier, token, http) = (barrier.clone(), token.clone(), http.clone());
            let base = if i % 2 == 0 {
                app.base.clone()
            } else {
                second.base.clone()
            };
            async move {
                barrier.wait().await;
                let response = http
                    .post(format!("{base}/api/v1/register"))
                    .bearer_auth(&token)
                    .json(&json!({ "section_ids": [s] }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                let body: Value = response.json().await.unwrap();
                body["results"][0].clone()
            }
        }))
        .await;
        let enrolled = results.iter().filter(|r| r["status"] == "enrolled").count();
        assert_eq!(enrolled, 3, "student {student}: {results:?}");
        assert!(
            results
                .iter()
                .filter(|r| r["status"] != "enrolled")
                .all(|r| r["reason"] == "credit_limit"),
            "student {student}: {results:?}"
        );
        if student == 1 {
            // Raised through the first instance, in force on the second.
            ok_json(
                put(
                    &app,
                    &format!("/api/v1/admin/students/{me}/credit-limit"),
                    &seeded.admin_token,
                    &json!({"semester_id": seeded.report.semester_id, "credit_limit": 12}),
                )
                .await,
            )
            .await;
            let spare = results
                .iter()
                .find(|r| r["status"] != "enrolled")
                .and_then(|r| r["section_id"].as_str())
                .unwrap()
                .to_string();
            let response = http
                .post(format!("{}/api/v1/register", second.base))
                .bearer_auth(&token)
                .json(&json!({ "section_ids": [spare] }))
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["results"][0]["status"], "enrolled", "{body}");
        }
    }
    app.wait_persisted(&sections).await;
    for s in &sections {
        app.assert_converged(*s).await;
    }
    second.stop().await;
}

/// A corequisite is met by a section the student holds, not by a claim
/// whose request died before its seat: that claim is judged (and released)
/// before the registration resting on it is decided.
#[tokio::test]
async fn a_claim_left_by_a_crash_does_not_meet_a_corequisite() {
    let app = spawn_app_with(|s| {
        s.rules.claim_ttl_ms = 300;
        s.rules.claim_grace_ms = 100;
    })
    .await;
    app.wait_ready().await;
    let seeded = app.seed_sections(2, 2, 10, 5).await;
    let s = &seeded.report.section_ids;
    let (token, me) = app.student(1).await;
    let (course0, _) = course_of(&app, s[0]).await;
    let (_, code1) = course_of(&app, s[1]).await;
    ok_json(
        put(
            &app,
            &format!("/api/v1/admin/courses/{course0}/rules"),
            &seeded.admin_token,
            &json!({"corequisites": [code1]}),
        )
        .await,
    )
    .await;
    // The request for the corequisite's section dies after its claim.
    let decided = app
        .state
        .registrar
        .register_and_crash(me, &[s[1]], registrar::domain::now_ms(), 0)
        .await
        .unwrap();
    assert!(decided.is_empty());
    let schedule = app.state.redis.schedule(me).await.unwrap();
    assert_eq!(schedule.len(), 1, "the dead claim is there: {schedule:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let refused = register_one(&app, &token, s[0]).await;
    assert_eq!(reason(&refused), "prerequisite_missing", "{refused}");
    assert_eq!(refused["missing_courses"], json!([code1]));
    assert!(
        app.state.redis.schedule(me).await.unwrap().is_empty(),
        "the dead claim was judged and released"
    );
    // Held for real, the corequisite counts.
    assert_eq!(register_one(&app, &token, s[1]).await["status"], "enrolled");
    assert_eq!(register_one(&app, &token, s[0]).await["status"], "enrolled");
}

/// A request that waits for another one's claim gives up its own claims
/// each round; a section it holds already (claimed again) stays held, so
/// what it holds keeps counting (here: one section per course).
#[tokio::test]
async fn waiting_for_a_busy_section_keeps_what_the_student_holds() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(2, 2, 10, 5).await;
    let s = &seeded.report.section_ids;
    let (token, me) = app.student(1).await;
    let (course0, _) = course_of(&app, s[0]).await;
    let other = ok_json(
        app.post(
            "/api/v1/admin/sections",
            Some(&seeded.admin_token),
            &json!({"course_id": course0, "semester_id": seeded.report.semester_id,
                    "section_number": "002", "total_seats": 5}),
        )
        .await,
    )
    .await;
    let other: Uuid = other["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(register_one(&app, &token, s[0]).await["status"], "enrolled");
    // A request for s1 dies after its claim; the retry also names s0
    // (held) and another section of s0's course. While it waits for s1's
    // claim, s0 must keep counting.
    app.state
        .registrar
        .register_and_crash(me, &[s[1]], registrar::domain::now_ms(), 0)
        .await
        .unwrap();
    let all = ok_json(app.register(&token, &[other, s[1], s[0]]).await).await;
    assert_eq!(reason(&all["results"][0]), "already_in_course", "{all}");
    assert_eq!(all["results"][1]["status"], "enrolled", "{all}");
    assert_eq!(all["results"][2]["status"], "already_enrolled", "{all}");
    assert_schedule(&app, me, vec![s[0], s[1]]).await;
    let twice = register_one(&app, &token, other).await;
    assert_eq!(reason(&twice), "already_in_course", "{twice}");
}

/// Should the immediate withdrawal miss a student who became ineligible
/// (here their new record reaches Redis before any server hears of the
/// change, as after a crash between storing it and withdrawing), the check
/// of PostgreSQL's waitlists takes them off within
/// `sync.ineligible_sweep_ms`, and the seat goes to the next in line.
#[tokio::test]
async fn an_ineligible_student_the_immediate_withdrawal_missed_leaves_the_waitlist_soon() {
    let app = spawn_app_with(|s| s.sync.ineligible_sweep_ms = 200).await;
    app.wait_ready().await;
    let seeded = app.seed_sections(3, 1, 1, 5).await;
    let section = seeded.report.section_ids[0];
    let (t1, _) = app.student(1).await;
    let (t2, s2) = app.student(2).await;
    let (t3, s3) = app.student(3).await;
    assert_eq!(register_one(&app, &t1, section).await["status"], "enrolled");
    assert_eq!(
        register_one(&app, &t2, section).await["waitlist_position"],
        1
    );
    assert_eq!(
        register_one(&app, &t3, section).await["waitlist_position"],
        2
    );
    app.wait_persisted(&[section]).await;

    let mut db = app.db.get().await.unwrap();
    let tx = db.transaction().await.unwrap();
    tx.execute(
        "insert into student_holds (student_id, code) values ($1, 'financial')",
        &[&s2],
    )
    .await
    .unwrap();
    let record = registrar::store::students::access(&tx, s2).await.unwrap();
    assert_eq!(record.hold.as_deref(), Some("financial"));
    let stored = app
        .state
        .redis
        .access_set(&[(s2, record)], None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(stored.lost_eligibility, vec![s2], "and nobody acts on it");
    tx.commit().await.unwrap();

    let left = crate::helpers::eventually(Duration::from_secs(10), || async {
        app.state.redis.standings(s2, &[section]).await.unwrap()[0]
            .waitlist_position
            .is_none()
    })
    .await;
    assert!(left, "the check took the student off the waitlist");
    let dropped: Value = ok_json(app.drop_from(&t1, section).await).await;
    assert_eq!(dropped["promoted_student_id"], s3.to_string());
    app.wait_persisted(&[section]).await;
    app.assert_converged(section).await;
}

/// Registrations made while the rules were off count once they are on
/// again: the rules-off path drops the student's schedule, and the first
/// claim afterwards rebuilds it from the sections.
#[tokio::test]
async fn what_a_student_took_with_the_rules_off_counts_when_they_are_on_again() {
    let mut app = spawn_app().await;
    let seeded = app.seed_sections(2, 4, 10, 5).await;
    set_semester_rules(&app, &seeded, json!({"credit_limit": 6})).await;
    let s = seeded.report.section_ids.clone();
    let (token, me) = app.student(1).await;
    // Rules on: the student's schedule starts with s0 (3 credits).
    assert_eq!(register_one(&app, &token, s[0]).await["status"], "enrolled");
    assert_eq!(app.state.redis.schedule(me).await.unwrap().len(), 1);

    // Rules off: s1 and s2 as well, 9 credits in all.
    app.settings.rules.enabled = false;
    app.restart().await;
    app.wait_ready().await;
    assert_eq!(register_one(&app, &token, s[1]).await["status"], "enrolled");
    assert_eq!(register_one(&app, &token, s[2]).await["status"], "enrolled");

    // Rules on again: what the student holds is over the limit already.
    app.settings.rules.enabled = true;
    app.restart().await;
    app.wait_ready().await;
    let over = register_one(&app, &token, s[3]).await;
    assert_eq!(reason(&over), "credit_limit", "{over}");
    assert_eq!(over["credits_held"], 9, "{over}");
    assert_schedule(&app, me, s[..3].to_vec()).await;
}

/// A student's schedule is started from PostgreSQL's places only when they
/// are the whole truth: a section in the student's index that the places
/// lack (taken with the rules off and not yet persisted) leaves the start
/// to the first claim, which rebuilds from both.
#[tokio::test]
async fn a_schedule_is_not_started_from_places_that_miss_a_section_of_the_index() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(1, 2, 10, 5).await;
    let s = &seeded.report.section_ids;
    let me = app.student_ids().await[0];
    let db = app.db.get().await.unwrap();
    let mut record = registrar::store::students::access(&db, me).await.unwrap();
    assert!(record.places.is_empty());
    app.state.redis.remember_unruled(me, &[s[1]]).await.unwrap();
    record.version += 1;
    app.state
        .redis
        .access_set(&[(me, record.clone())], Some(&[vec![]]), Duration::ZERO)
        .await
        .unwrap();
    let (course, _) = course_of(&app, s[0]).await;
    let facts = plain_facts(&seeded, course);
    let args = claim_args(
        &seeded,
        None,
        Duration::from_secs(10),
        Duration::from_secs(5),
    );
    let claim = app
        .state
        .redis
        .claim_rules(me, &args, &[(s[0], &facts)])
        .await
        .unwrap();
    assert_eq!(claim, Claim::NoSchedule, "nothing was started");

    // Without the stray section, the same record starts the schedule (here
    // empty: field sc), and the claim goes ahead.
    let index = registrar::seats::keys::student_sections(app.redis.namespace(), me);
    let _: () = redis::cmd("DEL")
        .arg(&index)
        .query_async(&mut app.redis.conn())
        .await
        .unwrap();
    record.version += 1;
    app.state
        .redis
        .access_set(&[(me, record)], Some(&[vec![]]), Duration::ZERO)
        .await
        .unwrap();
    let claim = app
        .state
        .redis
        .claim_rules(me, &args, &[(s[0], &facts)])
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Decided { .. }), "{claim:?}");
}

/// A semester that counts enrolled credits only (issue 14, item 4): a place
/// on an offer waitlist does not count, so the student may fill their
/// limit elsewhere; accepting the offer is a registration, checked against
/// the limit, also when it races another registration of the student.
#[tokio::test]
async fn counting_enrolled_credits_only_leaves_offer_waitlists_out_until_accepted() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(2, 4, 1, 5).await;
    let rules = set_semester_rules(
        &app,
        &seeded,
        json!({"credit_limit": 6, "credit_counting": "enrolled"}),
    )
    .await;
    assert_eq!(rules["credit_counting"], "enrolled");
    let s = seeded.report.section_ids.clone();
    let offered = app
        .patch_section(
            &seeded.admin_token,
            s[0],
            &json!({ "waitlist_mode": "offer" }),
        )
        .await;
    assert_eq!(offered.status(), StatusCode::OK);
    let (me, me_id) = app.student(1).await;
    let (other, _) = app.student(2).await;

    assert_eq!(register_one(&app, &other, s[0]).await["status"], "enrolled");
    assert_eq!(register_one(&app, &me, s[0]).await["status"], "waitlisted");
    // Redis loses the student's schedule: rebuilt from the sections, it
    // knows the place is on an offer waitlist, so it still does not count.
    app.wait_persisted(&s).await;
    let _: () = redis::cmd("DEL")
        .arg(registrar::seats::keys::student_schedule(
            app.redis.namespace(),
            me_id,
        ))
        .query_async(&mut app.redis.conn())
        .await
        .unwrap();
    // 3 + 3 enrolled: the waitlist place (3 more) does not count.
    assert_eq!(register_one(&app, &me, s[1]).await["status"], "enrolled");
    assert_eq!(register_one(&app, &me, s[2]).await["status"], "enrolled");
    let schedule = app.redis.schedule(me_id).await.unwrap();
    let state = |section: Uuid| {
        schedule
            .iter()
            .find(|(x, _)| *x == section)
            .map(|(_, e)| e.chars().next().unwrap())
    };
    assert_eq!(
        [state(s[0]), state(s[1]), state(s[2])],
        [Some('w'), Some('h'), Some('h')],
        "{schedule:?}"
    );

    // The seat is offered; accepting it would make 9 credits.
    ok_json(app.drop_from(&other, s[0]).await).await;
    let over = register_one(&app, &me, s[0]).await;
    assert_eq!(reason(&over), "credit_limit", "{over}");
    let waitlist = ok_json(app.get("/api/v1/students/me/waitlist", Some(&me)).await).await;
    assert!(
        waitlist["items"][0]["offer_expires_at"].is_string(),
        "refused, the student keeps the place and the offer: {waitlist}"
    );

    // With room for one more course, the accept and another registration
    // race: exactly one of them gets it.
    ok_json(app.drop_from(&me, s[2]).await).await;
    let barrier = Arc::new(Barrier::new(2));
    let results = futures_util::future::join_all([s[0], s[3]].map(|section| {
        let (barrier, me, app) = (barrier.clone(), me.clone(), &app);
        async move {
            barrier.wait().await;
            register_one(app, &me, section).await
        }
    }))
    .await;
    let enrolled = results.iter().filter(|r| r["status"] == "enrolled").count();
    assert_eq!(enrolled, 1, "{results:?}");
    assert!(
        results.iter().any(|r| reason(r) == "credit_limit"),
        "{results:?}"
    );
    app.wait_persisted(&s).await;
    for section in &s {
        app.assert_converged(*section).await;
    }
}

/// A student whose record said "no places" when it was copied starts their
/// schedule with their first claim; from then on a lost schedule is
/// rebuilt from their places, never started empty (which would forget
/// them and let the limit be overshot).
#[tokio::test]
async fn a_schedule_lost_after_the_first_claim_is_rebuilt_not_started_empty() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(1, 3, 5, 0).await;
    set_semester_rules(&app, &seeded, json!({"credit_limit": 6})).await;
    let s = seeded.report.section_ids.clone();
    let (me, me_id) = app.student(1).await;
    for section in &s[..2] {
        assert_eq!(
            register_one(&app, &me, *section).await["status"],
            "enrolled"
        );
    }
    app.wait_persisted(&s).await;
    let _: () = redis::cmd("DEL")
        .arg(registrar::seats::keys::student_schedule(
            app.redis.namespace(),
            me_id,
        ))
        .query_async(&mut app.redis.conn())
        .await
        .unwrap();

    let over = register_one(&app, &me, s[2]).await;
    assert_eq!(reason(&over), "credit_limit", "{over}");
    let mut rebuilt: Vec<Uuid> = app
        .redis
        .schedule(me_id)
        .await
        .unwrap()
        .into_iter()
        .map(|(section, _)| section)
        .collect();
    rebuilt.sort();
    let mut held = s[..2].to_vec();
    held.sort();
    assert_eq!(rebuilt, held);
}
