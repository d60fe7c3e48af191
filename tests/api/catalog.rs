use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use std::time::Duration;

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, TestApp};

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

/// Pages of `limit` from the first cursor to a null one.
async fn all_pages(app: &TestApp, token: &str, first: &str) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut path = first.to_string();
    loop {
        let response = app.get(&path, Some(token)).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let page: Value = response.json().await.unwrap();
        pages.push(page["items"].as_array().unwrap().clone());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("{first}&cursor={cursor}"),
            None => return pages,
        }
        assert!(pages.len() < 100, "paging ends");
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_semesters_sections_come_in_pages_that_cover_every_section_once_in_order() {
    let app = spawn_app().await;
    let seeded = app.seed_sections(1, 7, 10, 0).await;
    let (token, _) = app.student(1).await;
    let id = seeded.report.semester_id;

    let pages = all_pages(
        &app,
        &token,
        &format!("/api/v1/semesters/{id}/sections?limit=3"),
    )
    .await;
    let default: Value = app
        .get(&format!("/api/v1/semesters/{id}/sections"), Some(&token))
        .await
        .json()
        .await
        .unwrap();

    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 1]);
    let paged: Vec<Value> = pages.concat();
    let codes: Vec<&str> = paged
        .iter()
        .map(|s| s["course_code"].as_str().unwrap())
        .collect();
    let mut sorted = codes.clone();
    sorted.sort_unstable();
    assert_eq!(codes, sorted, "ordered by course code");
    let mut all = seeded
        .report
        .section_ids
        .iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>();
    all.sort_unstable();
    let mut seen = ids(&paged);
    seen.sort_unstable();
    assert_eq!(seen, all, "every section exactly once");
    assert_eq!(ids(default["items"].as_array().unwrap()), ids(&paged));
    assert!(
        default["next_cursor"].is_null(),
        "7 sections fit the default page"
    );
    assert_eq!(paged[0]["department"], "Demo");
}

#[tokio::test]
async fn section_pages_filter_by_course_code_department_and_open_seats() {
    // No shared pages: the open filter must see the seat just taken.
    let app = spawn_app_with(|s| s.api.live_counts_cache_ms = 0).await;
    app.wait_ready().await;
    let seeded = app.seed_sections(1, 5, 1, 0).await;
    let (token, _) = app.student(1).await;
    let id = seeded.report.semester_id;
    let client = app.db.get().await.unwrap();
    client
        .execute(
            "update courses set department = 'Physics' \
             where course_code in ('DEMO101', 'DEMO102')",
            &[],
        )
        .await
        .unwrap();
    app.state.catalog_cache.clear();
    let full = seeded.report.section_ids[0];
    let answer: Value = app.register(&token, &[full]).await.json().await.unwrap();
    assert_eq!(answer["results"][0]["status"], "enrolled", "{answer}");
    let base = format!("/api/v1/semesters/{id}/sections?limit=2");

    let by_code = all_pages(&app, &token, &format!("{base}&course_code=demo10")).await;
    let one_code = all_pages(&app, &token, &format!("{base}&course_code=DEMO103")).await;
    let physics = all_pages(&app, &token, &format!("{base}&department=physics")).await;
    let open = all_pages(&app, &token, &format!("{base}&open=true")).await;
    let open_physics = all_pages(
        &app,
        &token,
        &format!("{base}&open=true&department=PHYSICS"),
    )
    .await;

    assert_eq!(by_code.concat().len(), 5);
    let one_code = one_code.concat();
    assert_eq!(one_code.len(), 1);
    assert_eq!(one_code[0]["course_code"], "DEMO103");
    let physics = physics.concat();
    assert_eq!(physics.len(), 2);
    assert!(physics.iter().all(|s| s["department"] == "Physics"));
    let open = ids(&open.concat());
    assert_eq!(open.len(), 4, "the full section is left out");
    assert!(!open.contains(&full.to_string()));
    let open_physics = open_physics.concat();
    assert_eq!(open_physics.len(), 1);
    assert_eq!(open_physics[0]["seats_available"], 1);
    assert_eq!(open_physics[0]["live"], true);
}

#[tokio::test]
async fn a_repeat_page_read_is_a_304_until_a_count_on_it_moves() {
    let app = spawn_app_with(|s| s.api.live_counts_cache_ms = 100).await;
    app.wait_ready().await;
    let seeded = app.seed_sections(1, 3, 10, 0).await;
    let (token, _) = app.student(1).await;
    let path = format!(
        "/api/v1/semesters/{}/sections?limit=2",
        seeded.report.semester_id
    );
    let get_if = |etag: String| {
        let request = app.http.get(app.url(&path)).bearer_auth(&token);
        async move { request.header("if-none-match", etag).send().await.unwrap() }
    };

    let first = app.get(&path, Some(&token)).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["cache-control"], "private, no-cache");
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let first: Value = first.json().await.unwrap();
    let again = get_if(etag.clone()).await;
    let weak = get_if(format!("W/{etag}")).await;
    let other = get_if("\"something-else\"".into()).await;
    let section: Uuid = first["items"][0]["id"].as_str().unwrap().parse().unwrap();
    let answer: Value = app.register(&token, &[section]).await.json().await.unwrap();
    assert_eq!(answer["results"][0]["status"], "enrolled", "{answer}");
    // The shared page lives 100 ms; then the count it shows moves.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let moved = get_if(etag.clone()).await;

    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    assert!(again.bytes().await.unwrap().is_empty());
    assert_eq!(weak.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(moved.status(), StatusCode::OK);
    assert_ne!(moved.headers()["etag"].to_str().unwrap(), etag);
    let moved: Value = moved.json().await.unwrap();
    assert_eq!(moved["items"][0]["enrolled"], 1);
    assert_eq!(moved["items"][0]["seats_available"], 9);
    assert_eq!(first["items"][0]["seats_available"], 10);
}

#[tokio::test]
async fn a_section_page_query_that_is_not_understood_is_a_400() {
    let app = spawn_app().await;
    let seeded = app.seed(1, 10).await;
    let (token, _) = app.student(1).await;
    let base = format!("/api/v1/semesters/{}/sections", seeded.report.semester_id);

    for query in [
        "cursor=zz",
        "cursor=00",
        "limit=0",
        "limit=100000",
        "open=maybe",
        "status=open",
        "course_code=CS%00101",
        &format!("department={}", "x".repeat(101)),
    ] {
        let response = app.get(&format!("{base}?{query}"), Some(&token)).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_query").await;
    }
}
