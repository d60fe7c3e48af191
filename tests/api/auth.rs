use std::time::Duration;

use registrar::{
    auth::{Claims, Tokens},
    domain::Role,
};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_problem, spawn_app, PASSWORD};

#[tokio::test]
async fn login_with_the_right_password_returns_a_bearer_token_that_works() {
    let app = spawn_app().await;
    app.seed(2, 10).await;

    let response = app.login("S0000001", PASSWORD).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "no cache keeps a token"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], app.settings.auth.token_ttl_secs);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        app.get("/api/v1/semesters", Some(token)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn login_with_a_wrong_password_or_unknown_number_is_401_and_says_the_same() {
    let app = spawn_app().await;
    app.seed(1, 10).await;

    let wrong = app.login("S0000001", "not-the-password").await;
    let unknown = app.login("S9999999", PASSWORD).await;

    let wrong = assert_problem(wrong, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let unknown = assert_problem(unknown, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert_eq!(wrong["detail"], unknown["detail"], "no account enumeration");
}

#[tokio::test]
async fn api_routes_without_a_token_are_401() {
    let app = spawn_app().await;

    let response = app.get("/api/v1/semesters", None).await;

    assert!(response.headers().contains_key("www-authenticate"));
    assert_problem(response, StatusCode::UNAUTHORIZED, "missing_token").await;
}

#[tokio::test]
async fn an_expired_token_is_401_token_expired() {
    let app = spawn_app().await;
    let seeded = app.seed(1, 10).await;
    let tokens = Tokens::new(
        app.settings.auth.jwt_secret.expose().as_bytes(),
        Duration::from_secs(60),
    );
    let now = chrono::Utc::now().timestamp();
    let expired = tokens.mint_claims(&Claims {
        sub: seeded.report.semester_id,
        role: Role::Admin,
        act: true,
        ep: 0,
        iat: now - 3600,
        nbf: None,
        exp: now - 10,
    });

    let response = app.get("/api/v1/semesters", Some(&expired)).await;

    assert_problem(response, StatusCode::UNAUTHORIZED, "token_expired").await;
}

#[tokio::test]
async fn a_tampered_token_is_401_invalid_token() {
    let app = spawn_app().await;
    app.seed(1, 10).await;
    let token = app.login_ok("S0000001", PASSWORD).await;
    // Swap the payload for one claiming the admin role, keeping the signature.
    let parts: Vec<&str> = token.split('.').collect();
    let forged_payload = {
        let other = Tokens::new(
            b"some-other-secret-some-other-secret",
            Duration::from_secs(60),
        );
        let forged = other.mint(uuid::Uuid::new_v4(), Role::Admin, true);
        forged.split('.').nth(1).unwrap().to_string()
    };
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);

    let response = app.get("/api/v1/semesters", Some(&tampered)).await;
    let garbage = app.get("/api/v1/semesters", Some("garbage")).await;

    assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_problem(garbage, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_401() {
    let app = spawn_app().await;
    let other = Tokens::new(
        b"another-secret-of-thirty-two-bytes!",
        Duration::from_secs(60),
    );
    let token = other.mint(uuid::Uuid::new_v4(), Role::Admin, true);

    let response = app.get("/api/v1/semesters", Some(&token)).await;

    assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn a_student_cannot_read_another_students_data_but_can_read_their_own() {
    let app = spawn_app().await;
    let seeded = app.seed(2, 10).await;
    let (alice, alice_id) = app.student(1).await;
    let (_, bob_id) = app.student(2).await;

    let own = app
        .get(
            &format!("/api/v1/students/{alice_id}/registrations"),
            Some(&alice),
        )
        .await;
    let others = app
        .get(
            &format!("/api/v1/students/{bob_id}/registrations"),
            Some(&alice),
        )
        .await;
    let others_waitlist = app
        .get(&format!("/api/v1/students/{bob_id}/waitlist"), Some(&alice))
        .await;
    let as_admin = app
        .get(
            &format!("/api/v1/students/{bob_id}/registrations"),
            Some(&seeded.admin_token),
        )
        .await;

    assert_eq!(own.status(), StatusCode::OK);
    let own: Value = own.json().await.unwrap();
    assert!(own["items"].is_array());
    assert_problem(others, StatusCode::NOT_FOUND, "not_found").await;
    assert_problem(others_waitlist, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(as_admin.status(), StatusCode::OK);
}
