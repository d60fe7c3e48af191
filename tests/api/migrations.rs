use registrar::store::{self, migrate};

use crate::helpers::{create_database, test_settings};

#[tokio::test]
async fn migrations_apply_on_an_empty_database_and_a_second_run_is_a_no_op() {
    let database = create_database().await;
    let url = database.url.clone();
    let pool = store::pool(&test_settings(&url).database).unwrap();
    let mut client = pool.get().await.unwrap();

    let first = migrate::run(&mut client).await.expect("first run applies");
    let second = migrate::run(&mut client)
        .await
        .expect("second run succeeds");

    assert_eq!(first.len(), migrate::MIGRATIONS.len());
    assert!(second.is_empty(), "second run applied {second:?}");
    let tables: Vec<String> = client
        .query(
            "select table_name::text from information_schema.tables \
             where table_schema = 'public' order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in [
        "courses",
        "registrations",
        "schema_migrations",
        "sections",
        "semesters",
        "students",
        "waitlist",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "missing table {table}: {tables:?}"
        );
    }
    drop(client);
    pool.close();
}

#[tokio::test]
async fn concurrent_migration_runs_apply_each_migration_once() {
    let database = create_database().await;
    let url = database.url.clone();
    let pool = store::pool(&test_settings(&url).database).unwrap();
    let mut a = pool.get().await.unwrap();
    let mut b = pool.get().await.unwrap();

    let (ra, rb) = tokio::join!(migrate::run(&mut a), migrate::run(&mut b));

    let applied = ra.unwrap().len() + rb.unwrap().len();
    assert_eq!(applied, migrate::MIGRATIONS.len());
}

#[tokio::test]
async fn the_database_refuses_more_enrolments_than_seats() {
    let app = crate::helpers::spawn_app().await;
    let seeded = app.seed(3, 1).await;
    let section = seeded.report.section_ids[0];
    let (_, first) = app.student(1).await;
    let (_, second) = app.student(2).await;
    let db = app.db.get().await.unwrap();
    let insert = "insert into registrations (id, student_id, section_id, semester_id, status) \
                  select gen_random_uuid(), $1, id, semester_id, 'enrolled' \
                    from sections where id = $2";

    db.execute(insert, &[&first, &section])
        .await
        .expect("the one seat is free");
    let err = db
        .execute(insert, &[&second, &section])
        .await
        .expect_err("a second enrolment exceeds capacity");
    let lowered = db
        .execute(
            "update sections set total_seats = 0 where id = $1",
            &[&section],
        )
        .await
        .expect_err("capacity cannot drop below the enrolled count");

    assert_eq!(
        err.as_db_error().unwrap().constraint(),
        Some("sections_no_oversell")
    );
    assert_eq!(
        lowered.as_db_error().unwrap().constraint(),
        Some("sections_no_oversell")
    );
}

/// A database without this binary's schema answers, but nothing would work:
/// the PostgreSQL check (what `/health` reports) says so and names the fix,
/// until `registrar migrate` has run.
#[tokio::test]
async fn a_database_behind_the_binary_counts_as_down_with_the_fix_named() {
    let database = create_database().await;
    let pool = store::pool(&test_settings(&database.url).database).unwrap();
    let deadline = std::time::Duration::from_secs(5);

    let empty = registrar::health::postgres(&pool, deadline).await;
    assert!(!empty.up());
    let said = empty.error.unwrap_or_default();
    assert!(
        said.contains("no schema") && said.contains("registrar migrate"),
        "{said}"
    );

    let mut client = pool.get().await.unwrap();
    let last = migrate::MIGRATIONS.last().unwrap().version;
    migrate::run_through(&mut client, last - 1).await.unwrap();
    let behind = registrar::health::postgres(&pool, deadline).await;
    let said = behind.error.unwrap_or_default();
    assert!(
        said.contains(&format!("at migration {} of {last}", last - 1))
            && said.contains("registrar migrate"),
        "{said}"
    );

    migrate::run(&mut client).await.unwrap();
    assert!(registrar::health::postgres(&pool, deadline).await.up());
    drop(client);
    pool.close();
}
