//! Rights revocable at once (issue 11, finding F4): a change of an account
//! by an admin, or by anyone in PostgreSQL, holds from the very next
//! request made with a token issued before it, on every server.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    assert_problem, eventually, spawn_app, spawn_app_with, TestApp, ADMIN_PASSWORD, PASSWORD,
};

async fn ready_app() -> TestApp {
    let app = spawn_app().await;
    app.wait_ready().await;
    app
}

async fn patch_student(app: &TestApp, admin: &str, student: Uuid, body: Value) -> Response {
    app.http
        .patch(app.url(&format!("/api/v1/admin/students/{student}")))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn delete_student(app: &TestApp, admin: &str, student: Uuid) -> Response {
    app.http
        .delete(app.url(&format!("/api/v1/admin/students/{student}")))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
}

async fn revoke_tokens(app: &TestApp, admin: &str, student: Uuid) -> Response {
    app.http
        .post(app.url(&format!("/api/v1/admin/students/{student}/revoke-tokens")))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
}

async fn revoked(response: Response) {
    assert_problem(response, StatusCode::UNAUTHORIZED, "token_revoked").await;
}

/// The one result of a one-section register answer.
async fn result_of(response: Response) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["results"][0].clone()
}

async fn my_registrations(app: &TestApp, token: &str, student: Uuid) -> Response {
    app.get(
        &format!("/api/v1/students/{student}/registrations"),
        Some(token),
    )
    .await
}

#[tokio::test]
async fn a_suspended_student_is_refused_on_the_next_request_and_a_new_login_cannot_register() {
    let app = ready_app().await;
    let seeded = app.seed_sections(2, 2, 5, 0).await;
    let [first, second] = [seeded.report.section_ids[0], seeded.report.section_ids[1]];
    let (token, student) = app.student(1).await;
    let enrolled = result_of(app.register(&token, &[first]).await).await;
    assert_eq!(enrolled["status"], "enrolled");

    let changed = patch_student(
        &app,
        &seeded.admin_token,
        student,
        json!({ "enrollment_status": "suspended" }),
    )
    .await;
    assert_eq!(changed.status(), StatusCode::OK);
    let account: Value = changed.json().await.unwrap();
    assert_eq!(account["enrollment_status"], "suspended");
    assert_eq!(account["token_epoch"], 1, "the change moved the epoch on");

    revoked(app.register(&token, &[second]).await).await;
    revoked(my_registrations(&app, &token, student).await).await;
    let (enrolled, waiting) = app.redis_roster(second).await;
    assert!(
        !enrolled.contains(&student) && waiting.is_empty(),
        "the refused request reserved nothing"
    );

    // Logging in again works (a suspended student may read), but the new
    // token cannot register.
    let fresh = app
        .login_ok(&registrar::seed::student_number(1), PASSWORD)
        .await;
    let refused = result_of(app.register(&fresh, &[second]).await).await;
    assert_eq!(refused["reason"], "ineligible");
    assert_eq!(
        my_registrations(&app, &fresh, student).await.status(),
        StatusCode::OK
    );
    // Another student is untouched.
    let (other, _) = app.student(2).await;
    assert_eq!(
        result_of(app.register(&other, &[second]).await).await["status"],
        "enrolled"
    );
}

#[tokio::test]
async fn a_demoted_admin_loses_admin_rights_on_the_next_request() {
    let app = ready_app().await;
    let seeded = app.seed_sections(1, 1, 5, 0).await;
    let created = app
        .post(
            "/api/v1/admin/students",
            Some(&seeded.admin_token),
            &json!([{
                "student_number": "A0000002", "name": "Second Admin",
                "email": "second-admin@example.edu", "password": ADMIN_PASSWORD,
                "role": "admin"
            }]),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let second_admin: Uuid = created["students"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let token = app.login_ok("A0000002", ADMIN_PASSWORD).await;
    let semester = json!({
        "name": "Revocation term", "start_date": "2031-01-10", "end_date": "2031-05-10",
        "registration_start": "2030-12-01T00:00:00Z", "registration_end": "2031-01-20T00:00:00Z"
    });
    let allowed = app
        .post("/api/v1/admin/semesters", Some(&token), &semester)
        .await;
    assert_eq!(allowed.status(), StatusCode::CREATED);

    let demoted = patch_student(
        &app,
        &seeded.admin_token,
        second_admin,
        json!({ "role": "student" }),
    )
    .await;
    assert_eq!(demoted.status(), StatusCode::OK);
    let again = json!({
        "name": "Revocation term 2", "start_date": "2031-01-10", "end_date": "2031-05-10",
        "registration_start": "2030-12-01T00:00:00Z", "registration_end": "2031-01-20T00:00:00Z"
    });
    revoked(
        app.post("/api/v1/admin/semesters", Some(&token), &again)
            .await,
    )
    .await;
    let as_student = app.login_ok("A0000002", ADMIN_PASSWORD).await;
    assert_problem(
        app.post("/api/v1/admin/semesters", Some(&as_student), &again)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn a_deleted_account_is_refused_whether_deleted_through_the_api_or_in_postgresql() {
    let app = ready_app().await;
    let seeded = app.seed_sections(3, 1, 5, 0).await;
    let section = seeded.report.section_ids[0];
    let (by_api, by_api_id) = app.student(1).await;
    let (by_psql, by_psql_id) = app.student(2).await;
    let (holder, holder_id) = app.student(3).await;
    assert_eq!(
        result_of(app.register(&holder, &[section]).await).await["status"],
        "enrolled"
    );

    let deleted = delete_student(&app, &seeded.admin_token, by_api_id).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    revoked(app.register(&by_api, &[section]).await).await;
    assert_problem(
        delete_student(&app, &seeded.admin_token, by_api_id).await,
        StatusCode::NOT_FOUND,
        "student_not_found",
    )
    .await;
    // A student with registrations keeps their history.
    assert_problem(
        delete_student(&app, &seeded.admin_token, holder_id).await,
        StatusCode::CONFLICT,
        "has_records",
    )
    .await;

    // Deleted behind the service's back: PostgreSQL announces it.
    app.db
        .get()
        .await
        .unwrap()
        .execute("delete from students where id = $1", &[&by_psql_id])
        .await
        .unwrap();
    let refused = eventually(Duration::from_secs(5), || async {
        my_registrations(&app, &by_psql, by_psql_id).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(
        refused,
        "the token of an account deleted in PostgreSQL is refused"
    );
    revoked(app.register(&by_psql, &[section]).await).await;
    let (enrolled, _) = app.redis_roster(section).await;
    assert_eq!(enrolled.len(), 1, "only the holder has a seat");

    // A token of an account that never existed is refused too.
    let unknown = app.token_for(Uuid::new_v4());
    revoked(app.register(&unknown, &[section]).await).await;
}

#[tokio::test]
async fn an_account_whose_answered_enrolment_is_not_yet_in_postgresql_cannot_be_deleted() {
    // The shards hold each batch open for 5 s: the enrolment is answered
    // and in Redis, not yet in PostgreSQL, when the admin tries to delete.
    let app = spawn_app_with(|s| s.sync.batch_linger_ms = 5_000).await;
    app.wait_ready().await;
    let seeded = app.seed_sections(1, 1, 5, 0).await;
    let section = seeded.report.section_ids[0];
    let (token, student) = app.student(1).await;
    assert_eq!(
        result_of(app.register(&token, &[section]).await).await["status"],
        "enrolled"
    );
    let persisted = || async {
        app.db
            .get()
            .await
            .unwrap()
            .query_one(
                "select count(*) from registrations where student_id = $1",
                &[&student],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(persisted().await, 0, "the enrolment is still pending");
    assert_problem(
        delete_student(&app, &seeded.admin_token, student).await,
        StatusCode::CONFLICT,
        "has_records",
    )
    .await;
    // The account stands and the enrolment lands.
    assert!(
        eventually(Duration::from_secs(15), || async { persisted().await == 1 }).await,
        "the answered enrolment reaches PostgreSQL"
    );
    assert_eq!(
        result_of(app.register(&token, &[section]).await).await["status"],
        "already_enrolled"
    );
}

#[tokio::test]
async fn revoking_refuses_every_earlier_token_of_the_account_only() {
    let app = ready_app().await;
    let seeded = app.seed_sections(2, 1, 5, 0).await;
    let number = registrar::seed::student_number(1);
    let (first, student) = app.student(1).await;
    let second = app.login_ok(&number, PASSWORD).await;
    let (other, other_id) = app.student(2).await;

    let revoke = revoke_tokens(&app, &seeded.admin_token, student).await;
    assert_eq!(revoke.status(), StatusCode::OK);
    for token in [&first, &second] {
        revoked(my_registrations(&app, token, student).await).await;
    }
    assert_eq!(
        my_registrations(&app, &other, other_id).await.status(),
        StatusCode::OK
    );
    let fresh = app.login_ok(&number, PASSWORD).await;
    assert_eq!(
        my_registrations(&app, &fresh, student).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_hold_blocks_registration_from_the_next_request_without_logging_the_student_out() {
    let app = ready_app().await;
    let seeded = app.seed_sections(1, 2, 5, 0).await;
    let [first, second] = [seeded.report.section_ids[0], seeded.report.section_ids[1]];
    let (token, student) = app.student(1).await;
    assert_eq!(
        result_of(app.register(&token, &[first]).await).await["status"],
        "enrolled"
    );

    let placed = patch_student(
        &app,
        &seeded.admin_token,
        student,
        json!({ "holds": ["financial"] }),
    )
    .await;
    assert_eq!(placed.status(), StatusCode::OK);
    let account: Value = placed.json().await.unwrap();
    assert_eq!(account["holds"], json!(["financial"]));
    assert_eq!(account["token_epoch"], 0, "a hold logs nobody out");

    let refused = result_of(app.register(&token, &[second]).await).await;
    assert_eq!(refused["status"], "rejected");
    assert_eq!(refused["reason"], "hold");
    assert_eq!(refused["hold"], "financial");
    let (enrolled, _) = app.redis_roster(second).await;
    assert!(
        !enrolled.contains(&student),
        "nothing reserved under a hold"
    );
    // Leaving is still allowed.
    assert_eq!(app.drop_from(&token, first).await.status(), StatusCode::OK);
    // An admin acting for the student meets the same hold.
    let for_them = app
        .post(
            "/api/v1/register",
            Some(&seeded.admin_token),
            &json!({ "section_ids": [second], "student_id": student }),
        )
        .await;
    assert_eq!(result_of(for_them).await["reason"], "hold");

    let lifted = patch_student(&app, &seeded.admin_token, student, json!({ "holds": [] })).await;
    assert_eq!(lifted.status(), StatusCode::OK);
    assert_eq!(
        result_of(app.register(&token, &[second]).await).await["status"],
        "enrolled"
    );
    let shown = app
        .get(
            &format!("/api/v1/admin/students/{student}"),
            Some(&seeded.admin_token),
        )
        .await;
    let shown: Value = shown.json().await.unwrap();
    assert_eq!(shown["holds"], json!([]));
}

#[tokio::test]
async fn a_change_made_in_postgresql_or_through_another_server_holds_everywhere() {
    let app = ready_app().await;
    let seeded = app.seed_sections(2, 1, 5, 0).await;
    let sibling = app.sibling().await;
    sibling.wait_ready().await;
    let (token, student) = app.student(1).await;
    let (other, other_id) = app.student(2).await;
    let on_sibling = |token: String, id: Uuid| {
        let url = format!("{}/api/v1/students/{id}/registrations", sibling.base);
        let http = app.http.clone();
        async move { http.get(url).bearer_auth(token).send().await.unwrap() }
    };
    assert_eq!(
        on_sibling(token.clone(), student).await.status(),
        StatusCode::OK
    );

    // Through this server: the sibling refuses on the very next request.
    let changed = patch_student(
        &app,
        &seeded.admin_token,
        student,
        json!({ "enrollment_status": "graduated" }),
    )
    .await;
    assert_eq!(changed.status(), StatusCode::OK);
    revoked(on_sibling(token.clone(), student).await).await;

    // In PostgreSQL, behind both servers' backs.
    app.db
        .get()
        .await
        .unwrap()
        .execute(
            "update students set enrollment_status = 'suspended' where id = $1",
            &[&other_id],
        )
        .await
        .unwrap();
    let refused = eventually(Duration::from_secs(5), || async {
        on_sibling(other.clone(), other_id).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "a status changed in PostgreSQL revokes the token");
    revoked(my_registrations(&app, &other, other_id).await).await;
    sibling.stop().await;
}

#[tokio::test]
async fn without_its_redis_copy_an_account_is_checked_against_postgresql() {
    let app = ready_app().await;
    let seeded = app.seed_sections(1, 1, 5, 0).await;
    let (token, student) = app.student(1).await;
    let changed = patch_student(
        &app,
        &seeded.admin_token,
        student,
        json!({ "enrollment_status": "inactive" }),
    )
    .await;
    assert_eq!(changed.status(), StatusCode::OK);
    // Redis loses the copy (as in a restart without persistence).
    let key = registrar::seats::keys::student_access(app.redis.namespace(), student);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut app.redis.conn())
        .await
        .unwrap();
    revoked(my_registrations(&app, &token, student).await).await;
    let restored = app.redis.has_access_copies(&[student]).await.unwrap();
    assert_eq!(restored, vec![true], "the copy is stored again");
}

#[tokio::test]
async fn an_admin_cannot_demote_revoke_or_delete_themselves_and_a_revoked_token_still_reads_the_openapi_document(
) {
    let app = ready_app().await;
    let seeded = app.seed_sections(1, 1, 5, 0).await;
    let db = app.db.get().await.unwrap();
    let (admin, _) = registrar::store::students::id_by_number(&db, registrar::seed::ADMIN_NUMBER)
        .await
        .unwrap()
        .expect("the seeded admin exists");
    drop(db);
    assert_problem(
        patch_student(
            &app,
            &seeded.admin_token,
            admin,
            json!({ "role": "student" }),
        )
        .await,
        StatusCode::CONFLICT,
        "own_account",
    )
    .await;
    assert_problem(
        delete_student(&app, &seeded.admin_token, admin).await,
        StatusCode::CONFLICT,
        "own_account",
    )
    .await;
    let own_revoke = revoke_tokens(&app, &seeded.admin_token, admin).await;
    assert_problem(own_revoke, StatusCode::CONFLICT, "own_account").await;
    // Holds on oneself are allowed (and change nothing of the token).
    let holds = patch_student(
        &app,
        &seeded.admin_token,
        admin,
        json!({ "holds": ["advising"] }),
    )
    .await;
    assert_eq!(holds.status(), StatusCode::OK);

    // A revoked token does not spoil a route that needs none.
    let (token, student) = app.student(1).await;
    let revoke = revoke_tokens(&app, &seeded.admin_token, student).await;
    assert_eq!(revoke.status(), StatusCode::OK);
    assert_eq!(
        app.get("/api/v1/openapi.json", Some(&token)).await.status(),
        StatusCode::OK
    );
    revoked(my_registrations(&app, &token, student).await).await;
}

#[tokio::test]
async fn an_account_deleted_while_the_server_could_not_listen_is_refused_once_it_listens_again() {
    let proxy = crate::kit::proxy::Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let port = proxy.port;
    let app = crate::helpers::spawn_app_with(|s| {
        s.database.url =
            registrar::config::Secret::new(crate::kit::via_port(s.database.url.expose(), port));
        s.database.connect_timeout_ms = registrar::config::Millis::new(500);
    })
    .await;
    app.wait_ready().await;
    app.seed_sections(1, 1, 5, 0).await;
    let student = app.student_ids().await[0];
    let token = app.token_for(student);
    assert_eq!(
        my_registrations(&app, &token, student).await.status(),
        StatusCode::OK
    );

    // The server's connections to PostgreSQL (its listener's among them)
    // are cut while the account is deleted: no announcement reaches it.
    proxy.cut();
    app.db
        .get()
        .await
        .unwrap()
        .execute("delete from students where id = $1", &[&student])
        .await
        .unwrap();
    proxy.restore();
    let refused = eventually(Duration::from_secs(10), || async {
        my_registrations(&app, &token, student).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(
        refused,
        "the listener's catch-up finds the deletion (deleted_students)"
    );
}
