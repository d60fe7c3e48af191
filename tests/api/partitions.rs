//! Registrations and waitlist partitioned by semester
//! (sql/0007_partition_by_semester.sql), `registrar semester detach`, and
//! `database.read_url`.

use std::collections::BTreeSet;

use registrar::{
    store::{self, migrate},
    sync::archive,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::helpers::{create_database, spawn_app, spawn_app_with, test_settings, TestApp};

/// Every row of the partitioned tables as text, to compare before and after.
async fn rows(db: &impl GenericClient) -> (BTreeSet<String>, BTreeSet<String>) {
    let registrations = db
        .query(
            "select concat_ws('|', id, student_id, section_id, status, registration_date, \
                    dropped_date, version, created_at, updated_at) from registrations",
            &[],
        )
        .await
        .unwrap();
    let waitlist = db
        .query(
            "select concat_ws('|', id, student_id, section_id, position, version, created_at, \
                    updated_at) from waitlist",
            &[],
        )
        .await
        .unwrap();
    (
        registrations.iter().map(|r| r.get(0)).collect(),
        waitlist.iter().map(|r| r.get(0)).collect(),
    )
}

/// The partitions of `parent`, by name.
async fn partitions_of(db: &impl GenericClient, parent: &str) -> BTreeSet<String> {
    db.query(
        "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid \
          where i.inhparent = to_regclass($1)",
        &[&parent],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn partition_name(parent: &str, semester: Uuid) -> String {
    format!("{parent}_{}", semester.simple())
}

#[tokio::test]
async fn the_migration_converts_a_0006_database_in_place_keeping_every_row() {
    // Arrange: a database at 0006 with two semesters' worth of rows.
    let database = create_database().await;
    let pool = store::pool(&test_settings(&database.url).database).unwrap();
    let mut client = pool.get().await.unwrap();
    migrate::run_through(&mut client, 6).await.unwrap();
    client
        .batch_execute(
            "insert into students (id, student_number, name, email, password_hash) \
             select gen_random_uuid(), 'S' || i, 'n' || i, i || '@uni.example', 'x' \
               from generate_series(1, 12) i;
             insert into semesters (id, name, start_date, end_date, registration_start, registration_end) \
             values (gen_random_uuid(), 'Old', '2020-01-10', '2020-05-20', '2019-11-01', '2020-01-09'), \
                    (gen_random_uuid(), 'New', '2027-01-10', '2027-05-20', now(), now() + interval '1 day');
             insert into courses (id, course_code, course_name, credits) values (gen_random_uuid(), 'CS1', 'c', 3);
             insert into sections (id, course_id, semester_id, section_number, total_seats, waitlist_limit) \
             select gen_random_uuid(), c.id, s.id, '001', 6, 6 from courses c, semesters s;
             insert into registrations (id, student_id, section_id, status, dropped_date) \
             select gen_random_uuid(), st.id, se.id, case when st.n <= 5 then 'enrolled' else 'dropped' end, \
                    case when st.n <= 5 then null else now() end \
               from (select id, row_number() over (order by length(student_number), student_number) n from students) st, sections se \
              where st.n <= 7;
             insert into waitlist (id, student_id, section_id, position) \
             select gen_random_uuid(), st.id, se.id, st.n - 7 \
               from (select id, row_number() over (order by length(student_number), student_number) n from students) st, sections se \
              where st.n between 8 and 10;",
        )
        .await
        .unwrap();
    let before = rows(&**client).await;
    let counts_before: Vec<(Uuid, i32)> = client
        .query("select id, enrolled_count from sections order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    // Act
    let applied = migrate::run(&mut client).await.unwrap();

    // Assert: the same rows, each in its semester's partition, counts kept.
    // Every migration after 0006, 0007 (the partitioning) first.
    let after_0006: Vec<&str> = migrate::MIGRATIONS
        .iter()
        .filter(|m| m.version > 6)
        .map(|m| m.name)
        .collect();
    assert_eq!(applied, after_0006);
    assert_eq!(after_0006[0], "0007_partition_by_semester.sql");
    let after = rows(&**client).await;
    assert_eq!(before.0.len(), 14);
    assert_eq!(before.1.len(), 6);
    assert_eq!(after, before, "every row survives the conversion unchanged");
    let misplaced: i64 = client
        .query_one(
            "select (select count(*) from registrations r join sections s on s.id = r.section_id \
                      where r.semester_id <> s.semester_id \
                         or r.tableoid::regclass::text <> semester_partition_name('registrations', s.semester_id)) \
                  + (select count(*) from waitlist w join sections s on s.id = w.section_id \
                      where w.semester_id <> s.semester_id \
                         or w.tableoid::regclass::text <> semester_partition_name('waitlist', s.semester_id))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        misplaced, 0,
        "every row is in its section's semester's partition"
    );
    let counts_after: Vec<(Uuid, i32)> = client
        .query("select id, enrolled_count from sections order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        counts_after, counts_before,
        "the copy was not counted again"
    );
    assert!(counts_after.iter().all(|(_, n)| *n == 5));
    let semesters: Vec<Uuid> = client
        .query("select id from semesters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for parent in ["registrations", "waitlist"] {
        let expected: BTreeSet<String> = semesters
            .iter()
            .map(|s| partition_name(parent, *s))
            .collect();
        assert_eq!(partitions_of(&**client, parent).await, expected);
    }

    // The triggers and constraints still do their work on the new tables.
    let section: Uuid = counts_after[0].0;
    let enroll_sixth =
        "insert into registrations (id, student_id, section_id, semester_id, status) \
         select gen_random_uuid(), st.id, s.id, s.semester_id, 'enrolled' \
           from sections s, students st where s.id = $1 and st.student_number = $2";
    client
        .execute(enroll_sixth, &[&section, &"S11"])
        .await
        .expect("the sixth seat is free");
    let oversold = client
        .execute(enroll_sixth, &[&section, &"S12"])
        .await
        .expect_err("a seventh enrolment exceeds capacity");
    assert_eq!(
        oversold.as_db_error().unwrap().constraint(),
        Some("sections_no_oversell")
    );
    let duplicate = client
        .execute(enroll_sixth, &[&section, &"S11"])
        .await
        .expect_err("a student is once in a section");
    // Reported under the partition's index (its name is PostgreSQL's choice).
    assert_eq!(
        duplicate.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    let other_semester = client
        .execute(
            "insert into registrations (id, student_id, section_id, semester_id, status) \
             select gen_random_uuid(), st.id, s.id, o.id, 'enrolled' \
               from sections s, students st, semesters o \
              where s.id = $1 and st.student_number = 'S12' and o.id <> s.semester_id",
            &[&section],
        )
        .await
        .expect_err("a row cannot claim another semester than its section's");
    assert_eq!(
        other_semester.as_db_error().unwrap().constraint(),
        Some("registrations_section_fkey")
    );
    let enrolled: i32 = client
        .query_one(
            "select enrolled_count from sections where id = $1",
            &[&section],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(enrolled, 6);
}

#[tokio::test]
async fn a_semester_created_through_the_admin_api_gets_its_partitions_and_takes_registrations() {
    let app = spawn_app().await;
    let seeded = app.seed(1, 10).await;
    let admin = Some(seeded.admin_token.as_str());

    let semester: Value = app
        .post(
            "/api/v1/admin/semesters",
            admin,
            &json!({
                "name": "Partitioned term",
                "start_date": "2030-01-10", "end_date": "2030-05-20",
                "registration_start": "2020-01-01T00:00:00Z",
                "registration_end": "2099-01-01T00:00:00Z"
            }),
        )
        .await
        .json()
        .await
        .unwrap();
    let semester_id: Uuid = semester["id"].as_str().unwrap().parse().unwrap();
    let course: Value = app
        .post(
            "/api/v1/admin/courses",
            admin,
            &json!({"course_code": "PART1", "course_name": "Partitions", "credits": 3}),
        )
        .await
        .json()
        .await
        .unwrap();
    let section: Value = app
        .post(
            "/api/v1/admin/sections",
            admin,
            &json!({
                "course_id": course["id"], "semester_id": semester["id"],
                "section_number": "001", "total_seats": 5
            }),
        )
        .await
        .json()
        .await
        .unwrap();
    let section: Uuid = section["id"].as_str().unwrap().parse().unwrap();
    let (token, _) = app.student(1).await;

    let answer: Value = app.register(&token, &[section]).await.json().await.unwrap();
    app.wait_persisted(&[section]).await;

    let db = app.db.get().await.unwrap();
    for parent in ["registrations", "waitlist"] {
        assert!(
            partitions_of(&**db, parent)
                .await
                .contains(&partition_name(parent, semester_id)),
            "{parent} has a partition for the new semester"
        );
    }
    assert_eq!(answer["results"][0]["status"], "enrolled");
    let partition: String = db
        .query_one(
            "select tableoid::regclass::text from registrations where section_id = $1",
            &[&section],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(partition, partition_name("registrations", semester_id));
    app.assert_converged(section).await;
}

/// An old semester (window over, inactive) with one section of `rows`
/// enrolled students, written directly as a past term's data would be.
async fn past_semester(app: &TestApp, students: &[Uuid]) -> (Uuid, Uuid) {
    let db = app.db.get().await.unwrap();
    let semester = Uuid::new_v4();
    let section = Uuid::new_v4();
    db.execute(
        "insert into semesters (id, name, start_date, end_date, registration_start, \
                                registration_end, is_active) \
         values ($1, 'Spring 2020', '2020-01-10', '2020-05-20', '2019-11-01', '2020-01-09', false)",
        &[&semester],
    )
    .await
    .unwrap();
    db.execute(
        "insert into sections (id, course_id, semester_id, section_number, total_seats) \
         select $1, id, $2, '900', 10 from courses limit 1",
        &[&section, &semester],
    )
    .await
    .unwrap();
    db.execute(
        "insert into registrations (id, student_id, section_id, semester_id, status) \
         select gen_random_uuid(), s, $1, $2, 'enrolled' from unnest($3::uuid[]) s",
        &[&section, &semester, &students],
    )
    .await
    .unwrap();
    (semester, section)
}

#[tokio::test]
async fn detaching_an_old_semester_archives_its_rows_and_the_others_still_register() {
    // Arrange: the seeded semester is open; an old one holds three enrolments.
    let app = spawn_app().await;
    let seeded = app.seed(4, 10).await;
    let open_semester = seeded.report.semester_id;
    let open_section = seeded.report.section_ids[0];
    let students = app.student_ids().await;
    let (old, old_section) = past_semester(&app, &students[..3]).await;
    let db = app.db.get().await.unwrap();
    db.execute(
        "insert into dead_letters (section_id, seq, kind, student_id, error, sqlstate, undone_at, undo_result) \
         values ($1, 1, 'enroll', $2, 'simulated', '23503', now(), 'reverted')",
        &[&old_section, &students[3]],
    )
    .await
    .unwrap();
    let admin_pool = store::pool(&app.settings.database).unwrap();

    // Act and assert: the open semester is refused, the old one detached.
    let refused = archive::detach_semester(&admin_pool, &app.redis, open_semester)
        .await
        .expect_err("an active, open semester stays");
    assert!(refused.to_string().contains("active"), "{refused:#}");
    let archived = archive::detach_semester(&admin_pool, &app.redis, old)
        .await
        .expect("an old semester detaches");
    let again = archive::detach_semester(&admin_pool, &app.redis, old)
        .await
        .expect("detaching again is harmless");

    let hex = old.simple();
    assert_eq!(
        archived.tables,
        vec![
            format!("archive.registrations_{hex}"),
            format!("archive.waitlist_{hex}"),
            format!("archive.dead_letters_{hex}"),
        ]
    );
    assert_eq!(again.tables, archived.tables);
    assert_eq!(archived.dead_letters, 1);
    assert!(!partitions_of(&**db, "registrations")
        .await
        .contains(&partition_name("registrations", old)));
    let count = |sql: String| {
        let db = &db;
        async move { db.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count(format!("select count(*) from archive.registrations_{hex}")).await,
        3
    );
    assert_eq!(
        count(format!("select count(*) from archive.dead_letters_{hex}")).await,
        1
    );
    assert_eq!(
        count(format!(
            "select count(*) from registrations where section_id = '{old_section}'"
        ))
        .await,
        0
    );
    assert_eq!(count("select count(*) from dead_letters".into()).await, 0);

    // The remaining semester still registers, drops and converges.
    let (token, _) = app.student(1).await;
    let answer: Value = app
        .register(&token, &[open_section])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["results"][0]["status"], "enrolled");
    assert_eq!(
        app.drop_from(&token, open_section).await.status(),
        StatusCode::OK
    );
    let (other, _) = app.student(2).await;
    app.register(&other, &[open_section]).await;
    app.wait_persisted(&[open_section]).await;
    app.assert_converged(open_section).await;
}

#[tokio::test]
async fn a_semester_with_events_postgres_has_not_applied_is_not_detached() {
    let app = spawn_app().await;
    app.seed(2, 10).await;
    let students = app.student_ids().await;
    let (old, old_section) = past_semester(&app, &students[..1]).await;
    let admin_pool = store::pool(&app.settings.database).unwrap();
    // Redis numbered an event PostgreSQL has not applied (last_seq is 0).
    let seq_key = app.redis.section_keys(old_section).seq;
    let mut conn = app.redis.conn();
    let _: () = redis::cmd("SET")
        .arg(&seq_key)
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();

    let refused = archive::detach_semester(&admin_pool, &app.redis, old)
        .await
        .expect_err("an event is pending");

    assert!(refused.to_string().contains("not applied"), "{refused:#}");
    let db = app.db.get().await.unwrap();
    assert!(partitions_of(&**db, "registrations")
        .await
        .contains(&partition_name("registrations", old)));
}

#[tokio::test]
async fn catalog_reads_come_from_the_read_url_while_registration_uses_the_primary() {
    // Arrange: a "replica" that is another database holding a copy of the
    // primary's catalog, told apart by its course names.
    let replica = create_database().await;
    let replica_pool = store::pool(&test_settings(&replica.url).database).unwrap();
    migrate::run(&mut replica_pool.get().await.unwrap())
        .await
        .unwrap();
    let replica_url = replica.url.clone();
    let app =
        spawn_app_with(|s| s.database.read_url = Some(registrar::config::Secret::new(replica_url)))
            .await;
    app.wait_ready().await;
    let seeded = app.seed(1, 10).await;
    let section = seeded.report.section_ids[0];
    let primary = app.db.get().await.unwrap();
    let copy = replica_pool.get().await.unwrap();
    let semester = primary
        .query_one(
            "select id, name, start_date, end_date, registration_start, registration_end \
               from semesters where id = $1",
            &[&seeded.report.semester_id],
        )
        .await
        .unwrap();
    copy.execute(
        "insert into semesters (id, name, start_date, end_date, registration_start, registration_end) \
         values ($1, $2, $3, $4, $5, $6)",
        &[
            &semester.get::<_, Uuid>(0),
            &semester.get::<_, String>(1),
            &semester.get::<_, chrono::NaiveDate>(2),
            &semester.get::<_, chrono::NaiveDate>(3),
            &semester.get::<_, chrono::DateTime<chrono::Utc>>(4),
            &semester.get::<_, chrono::DateTime<chrono::Utc>>(5),
        ],
    )
    .await
    .unwrap();
    for row in primary
        .query(
            "select c.id, c.course_code, s.id, s.section_number, s.total_seats \
               from sections s join courses c on c.id = s.course_id where s.semester_id = $1",
            &[&seeded.report.semester_id],
        )
        .await
        .unwrap()
    {
        copy.execute(
            "insert into courses (id, course_code, course_name, credits) \
             values ($1, $2, 'From the replica', 3) on conflict do nothing",
            &[&row.get::<_, Uuid>(0), &row.get::<_, String>(1)],
        )
        .await
        .unwrap();
        copy.execute(
            "insert into sections (id, course_id, semester_id, section_number, total_seats) \
             values ($1, $2, $3, $4, $5)",
            &[
                &row.get::<_, Uuid>(2),
                &row.get::<_, Uuid>(0),
                &seeded.report.semester_id,
                &row.get::<_, String>(3),
                &row.get::<_, i32>(4),
            ],
        )
        .await
        .unwrap();
    }
    let (token, student) = app.student(1).await;

    // Act
    let listed: Value = app
        .get(
            &format!("/api/v1/semesters/{}/sections", seeded.report.semester_id),
            Some(&token),
        )
        .await
        .json()
        .await
        .unwrap();
    let one: Value = app
        .get(&format!("/api/v1/sections/{section}"), Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let answer: Value = app.register(&token, &[section]).await.json().await.unwrap();
    app.wait_persisted(&[section]).await;

    // Assert: reads from the replica, the registration on the primary only.
    assert_eq!(listed["items"][0]["course_name"], "From the replica");
    assert_eq!(one["course_name"], "From the replica");
    assert_eq!(answer["results"][0]["status"], "enrolled");
    let (enrolled, _) = app.pg_roster(section).await;
    assert!(enrolled.contains(&student));
    let on_replica: i64 = copy
        .query_one("select count(*) from registrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_replica, 0);
    drop(copy);
    replica_pool.close();
}
