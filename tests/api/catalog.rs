use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn semesters_are_listed_and_readable_one_by_one() {
    let app = spawn_app().await;
    let seeded = app.seed(1, 10).await;
    let (token, _) = app.student(1).await;
    let id = seeded.report.semester_id;

    let list: Value = app
        .get("/api/v1/semesters", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let one = app
        .get(&format!("/api/v1/semesters/{id}"), Some(&token))
        .await;
    let unknown = app
        .get(
            &format!("/api/v1/semesters/{}", Uuid::new_v4()),
            Some(&token),
        )
        .await;

    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], id.to_string());
    assert_eq!(one.status(), StatusCode::OK);
    let one: Value = one.json().await.unwrap();
    assert_eq!(one["registration_open"], true);
    assert_problem(unknown, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn a_semesters_sections_show_seats_available_and_waitlist_length() {
    let app = spawn_app().await;
    let seeded = app.seed(1, 25).await;
    let (token, _) = app.student(1).await;
    let id = seeded.report.semester_id;

    let response = app
        .get(&format!("/api/v1/semesters/{id}/sections"), Some(&token))
        .await;
    let unknown = app
        .get(
            &format!("/api/v1/semesters/{}/sections", Uuid::new_v4()),
            Some(&token),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), seeded.report.section_ids.len());
    for section in items {
        assert_eq!(section["total_seats"], 25);
        assert_eq!(section["seats_available"], 25);
        assert_eq!(section["waitlist_length"], 0);
        assert!(section["course_code"].as_str().unwrap().starts_with("DEMO"));
    }
    assert_problem(unknown, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn one_section_is_readable_and_an_unknown_one_is_404() {
    let app = spawn_app().await;
    let seeded = app.seed(1, 10).await;
    let (token, _) = app.student(1).await;
    let id = seeded.report.section_ids[0];

    let one = app
        .get(&format!("/api/v1/sections/{id}"), Some(&token))
        .await;
    let unknown = app
        .get(
            &format!("/api/v1/sections/{}", Uuid::new_v4()),
            Some(&token),
        )
        .await;

    assert_eq!(one.status(), StatusCode::OK);
    let one: Value = one.json().await.unwrap();
    assert_eq!(one["id"], id.to_string());
    assert_eq!(one["seats_available"], 10);
    assert_problem(unknown, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn available_sections_filter_by_semester_and_course_and_hide_full_ones() {
    let app = spawn_app().await;
    let seeded = app.seed(2, 1).await;
    let (token, _) = app.student(1).await;
    let full = seeded.report.section_ids[0];
    app.register(&token, &[full]).await;
    app.wait_persisted(&[full]).await;
    let semester = seeded.report.semester_id;

    let all: Value = app
        .get("/api/v1/sections/available", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let by_semester: Value = app
        .get(
            &format!("/api/v1/sections/available?semester_id={semester}"),
            Some(&token),
        )
        .await
        .json()
        .await
        .unwrap();
    let other_semester: Value = app
        .get(
            &format!("/api/v1/sections/available?semester_id={}", Uuid::new_v4()),
            Some(&token),
        )
        .await
        .json()
        .await
        .unwrap();
    let by_course: Value = app
        .get(
            "/api/v1/sections/available?course_code=DEMO102",
            Some(&token),
        )
        .await
        .json()
        .await
        .unwrap();
    let paged: Value = app
        .get("/api/v1/sections/available?limit=1&offset=1", Some(&token))
        .await
        .json()
        .await
        .unwrap();

    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&all).len(), seeded.report.section_ids.len() - 1);
    assert!(
        !ids(&all).contains(&full.to_string()),
        "a full section is not available"
    );
    assert_eq!(ids(&by_semester), ids(&all));
    assert!(ids(&other_semester).is_empty());
    assert_eq!(ids(&by_course).len(), 1);
    assert!(by_course["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["course_code"] == "DEMO102"));
    assert_eq!(ids(&paged), vec![ids(&all)[1].clone()]);
}

#[tokio::test]
async fn available_sections_reject_bad_filters() {
    let app = spawn_app().await;
    app.seed(1, 10).await;
    let (token, _) = app.student(1).await;

    let bad_uuid = app
        .get("/api/v1/sections/available?semester_id=nope", Some(&token))
        .await;
    let unknown = app
        .get("/api/v1/sections/available?status=open", Some(&token))
        .await;
    let bad_limit = app
        .get("/api/v1/sections/available?limit=100000", Some(&token))
        .await;

    assert_problem(bad_uuid, StatusCode::BAD_REQUEST, "invalid_query").await;
    assert_problem(unknown, StatusCode::BAD_REQUEST, "invalid_query").await;
    assert_problem(bad_limit, StatusCode::BAD_REQUEST, "invalid_query").await;
}
