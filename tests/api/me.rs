//! A student's own view of themselves (issue 16, item 1): login says whose
//! token it is, `GET /api/v1/me` shows the account, its holds and the
//! credits held per semester beside the limit, and `me` stands for the
//! caller in the student's own paths.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, PASSWORD};
use registrar::seed;

#[tokio::test]
async fn login_names_the_student_and_me_shows_their_account_holds_and_credits() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(2, 3, 1, 5).await;
    let s = &seeded.report.section_ids;
    let login = app.login(&seed::student_number(1), PASSWORD).await;
    assert_eq!(login.status(), StatusCode::OK);
    let login: Value = login.json().await.unwrap();
    let token = login["access_token"].as_str().unwrap().to_string();
    let (_, me) = app.student(1).await;
    assert_eq!(login["student_id"], me.to_string());
    assert_eq!(login["role"], "student");
    let (other_token, _) = app.student(2).await;

    // s0 and s1: enrolled (3 credits each); s2: the other student has its
    // one seat, so a waitlist place.
    assert_eq!(
        app.register(&other_token, &[s[2]]).await.status(),
        StatusCode::OK
    );
    let answer: Value = app
        .register(&token, &[s[0], s[1], s[2]])
        .await
        .json()
        .await
        .unwrap();
    let statuses: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["enrolled", "enrolled", "waitlisted"], "{answer}");
    let put = app
        .http
        .put(app.url(&format!("/api/v1/admin/students/{me}/credit-limit")))
        .bearer_auth(&seeded.admin_token)
        .json(&json!({"semester_id": seeded.report.semester_id, "credit_limit": 12}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);

    let view = app.get("/api/v1/me", Some(&token)).await;
    assert_eq!(view.status(), StatusCode::OK);
    let view: Value = view.json().await.unwrap();
    assert_eq!(view["student_id"], me.to_string());
    assert_eq!(view["student_number"], seed::student_number(1));
    assert_eq!(view["enrollment_status"], "active");
    assert_eq!(view["holds"], json!([]));
    assert_eq!(view["may_register"], true);
    assert_eq!(view["live"], true);
    assert_eq!(
        view["credits"],
        json!([{"semester_id": seeded.report.semester_id, "enrolled": 6,
                "waitlisted": 3, "credit_limit": 12,
                "credit_counting": "enrolled_and_waitlisted"}]),
        "{view}"
    );
    assert!(view.get("token_epoch").is_none(), "no internals: {view}");

    // A hold shows, and registration is closed to them.
    let patched = app
        .http
        .patch(app.url(&format!("/api/v1/admin/students/{me}")))
        .bearer_auth(&seeded.admin_token)
        .json(&json!({"holds": ["advising"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let view: Value = app
        .get("/api/v1/me", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["holds"], json!(["advising"]));
    assert_eq!(view["may_register"], false);
    // The hold took them off the waitlist (README "Registration rules").
    assert_eq!(view["credits"][0]["waitlisted"], 0, "{view}");

    // `me` in the student's own paths. Both reads of each pair must see the
    // same persistence state, so let PostgreSQL catch up first: otherwise a
    // write landing between them turns "pending" into "persisted".
    app.wait_persisted(&s[..3]).await;
    for path in ["registrations", "waitlist"] {
        let mine = app
            .get(&format!("/api/v1/students/me/{path}"), Some(&token))
            .await;
        assert_eq!(mine.status(), StatusCode::OK, "{path}");
        let by_id = app
            .get(&format!("/api/v1/students/{me}/{path}"), Some(&token))
            .await;
        let (mine, by_id): (Value, Value) =
            (mine.json().await.unwrap(), by_id.json().await.unwrap());
        assert_eq!(mine, by_id, "{path}");
    }
    let mine: Value = app
        .get("/api/v1/students/me/registrations", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["items"].as_array().unwrap().len(), 2, "{mine}");

    // Without a token: 401, as every student path.
    assert_eq!(
        app.get("/api/v1/me", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/v1/students/me/waitlist", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // An admin's own view works too.
    let admin: Value = app
        .get("/api/v1/me", Some(&seeded.admin_token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(admin["role"], "admin");
    assert_eq!(admin["credits"], json!([]));
}
