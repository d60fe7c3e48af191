//! The authorization matrix: every route called with every kind of bad
//! credential; each cell answers as SPEC §8 says and changes nothing.

use std::time::Duration;

use registrar::{
    auth::{Claims, Tokens},
    domain::Role,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};

/// Unpadded base64url, enough to forge a token by hand.
fn b64(input: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The bad credentials every protected route must refuse with 401.
fn bad_tokens(app: &TestApp, admin: Uuid) -> Vec<(&'static str, Option<String>)> {
    let now = chrono::Utc::now().timestamp();
    let ours = Tokens::new(
        app.settings.auth.jwt_secret.expose().as_bytes(),
        Duration::from_secs(60),
    );
    let expired = ours.mint_claims(&Claims {
        sub: admin,
        role: Role::Admin,
        act: true,
        ep: 0,
        iat: now - 120,
        nbf: None,
        exp: now - 60,
    });
    let other_key = Tokens::new(
        b"an-entirely-different-signing-key!!",
        Duration::from_secs(60),
    )
    .mint(admin, Role::Admin, true);
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(format!(
            r#"{{"sub":"{admin}","role":"admin","iat":{now},"exp":{}}}"#,
            now + 600
        )
        .as_bytes())
    );
    vec![
        ("no token", None),
        ("expired", Some(expired)),
        ("another key", Some(other_key)),
        ("alg none", Some(alg_none)),
        ("garbage", Some("not-a-jwt".into())),
    ]
}

struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
}

fn call(method: Method, path: String, body: Option<Value>) -> Call {
    Call { method, path, body }
}

async fn send(app: &TestApp, c: &Call, token: Option<&str>) -> StatusCode {
    let mut request = app.http.request(c.method.clone(), app.url(&c.path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = &c.body {
        request = request.json(body);
    }
    request.send().await.unwrap().status()
}

/// Row counts and the section's Redis sequence: what "nothing changed" means.
async fn fingerprint(app: &TestApp, section: Uuid) -> Vec<i64> {
    let db = app.db.get().await.unwrap();
    let mut counts = Vec::new();
    for table in [
        "students",
        "semesters",
        "courses",
        "sections",
        "registrations",
        "waitlist",
    ] {
        counts.push(
            db.query_one(&format!("select count(*) from {table}"), &[])
                .await
                .unwrap()
                .get(0),
        );
    }
    let seq: Option<i64> = redis::cmd("GET")
        .arg(app.redis.section_keys(section).seq)
        .query_async(&mut app.redis.conn())
        .await
        .unwrap();
    counts.push(seq.unwrap_or(0));
    counts
}

#[tokio::test]
async fn every_route_refuses_every_bad_credential_and_changes_nothing() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(2, 1, 5, 5).await;
    let section = seeded.report.section_ids[0];
    let semester = seeded.report.semester_id;
    let students = app.student_ids().await;
    let (me, other) = (students[0], students[1]);
    let admin: Uuid = app
        .db
        .get()
        .await
        .unwrap()
        .query_one(
            "select id from students where student_number = 'admin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The other student holds a seat, so their resources are not empty.
    app.register(&app.token_for(other), &[section]).await;
    app.wait_persisted(&[section]).await;

    let student_routes = vec![
        call(Method::GET, "/api/v1/semesters".into(), None),
        call(Method::GET, format!("/api/v1/semesters/{semester}"), None),
        call(
            Method::GET,
            format!("/api/v1/semesters/{semester}/sections"),
            None,
        ),
        call(Method::GET, "/api/v1/sections/available".into(), None),
        call(Method::GET, format!("/api/v1/sections/{section}"), None),
        call(
            Method::GET,
            format!("/api/v1/students/{me}/registrations"),
            None,
        ),
        call(Method::GET, format!("/api/v1/students/{me}/waitlist"), None),
        call(
            Method::POST,
            "/api/v1/register".into(),
            Some(json!({ "section_ids": [section] })),
        ),
        call(
            Method::POST,
            "/api/v1/register/drop".into(),
            Some(json!({ "section_id": section })),
        ),
    ];
    let admin_routes = vec![
        call(
            Method::POST,
            "/api/v1/admin/semesters".into(),
            Some(
                json!({"name": "X", "start_date": "2027-01-01", "end_date": "2027-02-01",
                        "registration_start": "2026-01-01T00:00:00Z", "registration_end": "2026-12-31T00:00:00Z"}),
            ),
        ),
        call(
            Method::POST,
            "/api/v1/admin/courses".into(),
            Some(json!({"course_code": "Z1", "course_name": "Z", "credits": 1})),
        ),
        call(
            Method::POST,
            "/api/v1/admin/sections".into(),
            Some(
                json!({"course_id": Uuid::new_v4(), "semester_id": semester, "section_number": "9", "total_seats": 1}),
            ),
        ),
        call(
            Method::PATCH,
            format!("/api/v1/admin/sections/{section}"),
            Some(json!({ "total_seats": 50 })),
        ),
        call(
            Method::POST,
            "/api/v1/admin/students".into(),
            Some(
                json!([{"student_number": "Q1", "name": "Q", "email": "q@uni.example", "password": "password-q"}]),
            ),
        ),
    ];
    let before = fingerprint(&app, section).await;
    let mut failures = Vec::new();

    for (label, token) in bad_tokens(&app, admin) {
        for c in student_routes.iter().chain(&admin_routes) {
            let status = send(&app, c, token.as_deref()).await;
            if status != StatusCode::UNAUTHORIZED {
                failures.push(format!("{label}: {} {} → {status}", c.method, c.path));
            }
        }
    }
    let student = app.token_for(me);
    for c in &admin_routes {
        let status = send(&app, c, Some(&student)).await;
        if status != StatusCode::FORBIDDEN {
            failures.push(format!("student token: {} {} → {status}", c.method, c.path));
        }
    }
    let others = [
        (
            call(
                Method::GET,
                format!("/api/v1/students/{other}/registrations"),
                None,
            ),
            StatusCode::NOT_FOUND,
        ),
        (
            call(
                Method::GET,
                format!("/api/v1/students/{other}/waitlist"),
                None,
            ),
            StatusCode::NOT_FOUND,
        ),
        (
            call(
                Method::POST,
                "/api/v1/register".into(),
                Some(json!({ "section_ids": [section], "student_id": other })),
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            call(
                Method::POST,
                "/api/v1/register/drop".into(),
                Some(json!({ "section_id": section, "student_id": other })),
            ),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (c, expected) in &others {
        let status = send(&app, c, Some(&student)).await;
        if status != *expected {
            failures.push(format!(
                "another student's resource: {} {} → {status}, expected {expected}",
                c.method, c.path
            ));
        }
    }
    let smuggled = [
        json!({ "section_ids": [section], "status": "enrolled" }),
        json!({ "section_ids": [section], "version": 7 }),
        json!({ "section_ids": [section], "capacity": 999 }),
    ];
    for body in smuggled {
        let status = send(
            &app,
            &call(Method::POST, "/api/v1/register".into(), Some(body.clone())),
            Some(&student),
        )
        .await;
        if status != StatusCode::BAD_REQUEST {
            failures.push(format!("unknown field {body} → {status}"));
        }
    }
    let patch_unknown = call(
        Method::PATCH,
        format!("/api/v1/admin/sections/{section}"),
        Some(json!({ "enrolled": 0 })),
    );
    let status = send(&app, &patch_unknown, Some(&seeded.admin_token)).await;
    if status != StatusCode::BAD_REQUEST {
        failures.push(format!("admin PATCH with an unknown field → {status}"));
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(fingerprint(&app, section).await, before, "nothing changed");
}
