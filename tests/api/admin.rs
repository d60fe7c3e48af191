use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_problem, spawn_app};

fn semester_body(name: &str) -> Value {
    json!({
        "name": name,
        "start_date": "2027-01-10",
        "end_date": "2027-05-20",
        "registration_start": "2026-11-01T00:00:00Z",
        "registration_end": "2027-01-09T00:00:00Z"
    })
}

#[tokio::test]
async fn an_admin_builds_a_catalog_without_sql() {
    let app = spawn_app().await;
    let seeded = app.seed(0, 10).await;
    let admin = Some(seeded.admin_token.as_str());

    let semester = app
        .post(
            "/api/v1/admin/semesters",
            admin,
            &semester_body("Spring 2027"),
        )
        .await;
    assert_eq!(semester.status(), StatusCode::CREATED);
    let semester: Value = semester.json().await.unwrap();
    let sections_path = format!(
        "/api/v1/semesters/{}/sections",
        semester["id"].as_str().unwrap()
    );
    // Read once so the catalog cache holds the empty list.
    let before: Value = app.get(&sections_path, admin).await.json().await.unwrap();
    assert_eq!(before["items"], json!([]));
    let course = app
        .post(
            "/api/v1/admin/courses",
            admin,
            &json!({"course_code": "CS101", "course_name": "Intro to CS", "credits": 4}),
        )
        .await;
    assert_eq!(course.status(), StatusCode::CREATED);
    let course: Value = course.json().await.unwrap();
    let section = app
        .post(
            "/api/v1/admin/sections",
            admin,
            &json!({
                "course_id": course["id"], "semester_id": semester["id"],
                "section_number": "001", "total_seats": 40, "waitlist_limit": 10
            }),
        )
        .await;
    assert_eq!(section.status(), StatusCode::CREATED);
    let section: Value = section.json().await.unwrap();

    let listed: Value = app.get(&sections_path, admin).await.json().await.unwrap();
    assert_eq!(listed["items"][0]["id"], section["id"]);
    assert_eq!(listed["items"][0]["course_code"], "CS101");
    assert_eq!(listed["items"][0]["seats_available"], 40);
}

#[tokio::test]
async fn bulk_student_creation_creates_accounts_that_can_log_in() {
    let app = spawn_app().await;
    let seeded = app.seed(0, 10).await;
    let students = json!([
        {"student_number": "N001", "name": "Ada", "email": "ada@uni.example", "password": "password-ada"},
        {"student_number": "N002", "name": "Bo", "email": "bo@uni.example", "password": "password-bo!"}
    ]);

    let response = app
        .post(
            "/api/v1/admin/students",
            Some(&seeded.admin_token),
            &students,
        )
        .await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["created"], 2);
    app.login_ok("N001", "password-ada").await;
    app.login_ok("N002", "password-bo!").await;
}

#[tokio::test]
async fn duplicates_are_409_and_unknown_references_422_with_nothing_written() {
    let app = spawn_app().await;
    let seeded = app.seed(0, 10).await;
    let admin = Some(seeded.admin_token.as_str());
    let dup_students = json!([
        {"student_number": "N001", "name": "Ada", "email": "ada@uni.example", "password": "password-ada"},
        {"student_number": "N001", "name": "Ada 2", "email": "ada2@uni.example", "password": "password-ada"}
    ]);

    let duplicate_semester = app
        .post(
            "/api/v1/admin/semesters",
            admin,
            &semester_body("Demo Semester"),
        )
        .await;
    let duplicate_students = app
        .post("/api/v1/admin/students", admin, &dup_students)
        .await;
    let unknown_course = app
        .post(
            "/api/v1/admin/sections",
            admin,
            &json!({
                "course_id": Uuid::new_v4(), "semester_id": seeded.report.semester_id,
                "section_number": "009", "total_seats": 5
            }),
        )
        .await;

    assert_problem(duplicate_semester, StatusCode::CONFLICT, "already_exists").await;
    assert_problem(duplicate_students, StatusCode::CONFLICT, "already_exists").await;
    assert_problem(
        unknown_course,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_reference",
    )
    .await;
    let db = app.db.get().await.unwrap();
    let n001: i64 = db
        .query_one(
            "select count(*) from students where student_number = 'N001'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n001, 0, "a failed bulk insert writes nothing");
}

#[tokio::test]
async fn invalid_values_are_422_before_any_write() {
    let app = spawn_app().await;
    let seeded = app.seed(0, 10).await;
    let admin = Some(seeded.admin_token.as_str());
    let mut backwards = semester_body("Backwards");
    backwards["registration_end"] = json!("2026-01-01T00:00:00Z");

    let bad_window = app.post("/api/v1/admin/semesters", admin, &backwards).await;
    let bad_credits = app
        .post(
            "/api/v1/admin/courses",
            admin,
            &json!({"course_code": "X1", "course_name": "X", "credits": 99}),
        )
        .await;
    let short_password = app
        .post(
            "/api/v1/admin/students",
            admin,
            &json!([{"student_number": "N9", "name": "N", "email": "n@uni.example", "password": "short"}]),
        )
        .await;
    let empty_list = app.post("/api/v1/admin/students", admin, &json!([])).await;

    assert_problem(
        bad_window,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_problem(
        bad_credits,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_problem(
        short_password,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_problem(
        empty_list,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn students_get_403_on_admin_routes_and_nothing_changes() {
    let app = spawn_app().await;
    app.seed(1, 10).await;
    let (student, _) = app.student(1).await;

    let response = app
        .post(
            "/api/v1/admin/semesters",
            Some(&student),
            &semester_body("Sneaky"),
        )
        .await;
    let anonymous = app
        .post("/api/v1/admin/semesters", None, &semester_body("Sneaky"))
        .await;

    assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    assert_problem(anonymous, StatusCode::UNAUTHORIZED, "missing_token").await;
    let db = app.db.get().await.unwrap();
    let count: i64 = db
        .query_one("select count(*) from semesters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "only the seeded semester exists");
}

#[tokio::test]
async fn an_admin_acting_for_a_student_who_does_not_exist_gets_404_and_changes_nothing() {
    let app = spawn_app().await;
    let seeded = app.seed(1, 5).await;
    let section = seeded.report.section_ids[0];
    let phantom = Uuid::new_v4();
    let admin = Some(seeded.admin_token.as_str());

    let register = app
        .post(
            "/api/v1/register",
            admin,
            &json!({ "student_id": phantom, "section_ids": [section] }),
        )
        .await;
    let drop = app
        .post(
            "/api/v1/register/drop",
            admin,
            &json!({ "student_id": phantom, "section_id": section }),
        )
        .await;

    assert_problem(register, StatusCode::NOT_FOUND, "student_not_found").await;
    assert_problem(drop, StatusCode::NOT_FOUND, "student_not_found").await;
    let (enrolled, waiting) = app.redis_roster(section).await;
    assert!(
        enrolled.is_empty() && waiting.is_empty(),
        "nothing reserved"
    );
    assert!(app
        .redis
        .outbox_from(section, 1, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn an_admin_registering_an_inactive_student_gets_ineligible_and_changes_nothing() {
    let app = spawn_app().await;
    let seeded = app.seed(1, 5).await;
    let section = seeded.report.section_ids[0];
    let student = app.student_ids().await[0];
    app.db
        .get()
        .await
        .unwrap()
        .execute(
            "update students set enrollment_status = 'suspended' where id = $1",
            &[&student],
        )
        .await
        .unwrap();

    let response = app
        .post(
            "/api/v1/register",
            Some(&seeded.admin_token),
            &json!({ "student_id": student, "section_ids": [section] }),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["results"][0],
        json!({ "section_id": section, "status": "rejected", "reason": "ineligible" })
    );
    let (enrolled, waiting) = app.redis_roster(section).await;
    assert!(
        enrolled.is_empty() && waiting.is_empty(),
        "nothing reserved"
    );
}
