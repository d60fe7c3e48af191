//! The statements of partition leases (sql/0005_persistence_leases.sql):
//! session advisory locks, one per partition, and the instances' rows.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// Ends an earlier lease session of `instance` that is still there (it
/// failed on the instance's side only, and would go on holding its locks).
pub async fn end_previous_session(
    db: &impl GenericClient,
    namespace: &str,
    instance: Uuid,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "select pg_terminate_backend(a.pid) \
           from persistence_instances i join pg_stat_activity a on a.pid = i.backend_pid \
          where i.namespace = $1 and i.instance = $2 and a.pid <> pg_backend_pid()",
        &[&namespace, &instance],
    )
    .await?;
    Ok(())
}

/// Records that `instance` is alive, on the session whose backend pid is
/// returned (the one holding its locks).
pub async fn heartbeat(
    db: &impl GenericClient,
    namespace: &str,
    instance: Uuid,
) -> Result<i32, tokio_postgres::Error> {
    let row = db
        .query_one(
            "insert into persistence_instances (namespace, instance, backend_pid, seen_at) \
             values ($1, $2, pg_backend_pid(), now()) \
             on conflict (namespace, instance) do update \
                set backend_pid = excluded.backend_pid, seen_at = excluded.seen_at \
             returning backend_pid",
            &[&namespace, &instance],
        )
        .await?;
    Ok(row.get(0))
}

/// Instances of `namespace` seen within `fresh_ms`.
pub async fn live_instances(
    db: &impl GenericClient,
    namespace: &str,
    fresh_ms: i64,
) -> Result<i64, tokio_postgres::Error> {
    let row = db
        .query_one(
            "select count(*) from persistence_instances \
              where namespace = $1 and seen_at > now() - make_interval(secs => $2::bigint / 1000.0)",
            &[&namespace, &fresh_ms],
        )
        .await?;
    Ok(row.get(0))
}

/// Rows of instances of `namespace` not seen within `fresh_ms`, other than
/// `me`: (instance, backend pid of its lease session).
pub async fn stale_instances(
    db: &impl GenericClient,
    namespace: &str,
    me: Uuid,
    fresh_ms: i64,
) -> Result<Vec<(Uuid, i32)>, tokio_postgres::Error> {
    let rows = db
        .query(
            "select instance, backend_pid from persistence_instances \
              where namespace = $1 and instance <> $2 \
                and seen_at <= now() - make_interval(secs => $3::bigint / 1000.0)",
            &[&namespace, &me, &fresh_ms],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Ends the session `pid` if it is still there (its locks go with it), and
/// forgets `instance`'s row.
pub async fn evict(
    db: &impl GenericClient,
    namespace: &str,
    instance: Uuid,
    pid: i32,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity \
          where pid = $1 and pid <> pg_backend_pid()",
        &[&pid],
    )
    .await?;
    db.execute(
        "delete from persistence_instances where namespace = $1 and instance = $2",
        &[&namespace, &instance],
    )
    .await?;
    Ok(())
}

/// Takes partition `partition`'s lock if no other session holds it.
pub async fn try_lock(
    db: &impl GenericClient,
    key: i32,
    partition: i32,
) -> Result<bool, tokio_postgres::Error> {
    let row = db
        .query_one("select pg_try_advisory_lock($1, $2)", &[&key, &partition])
        .await?;
    Ok(row.get(0))
}

/// Gives partition `partition`'s lock up.
pub async fn unlock(
    db: &impl GenericClient,
    key: i32,
    partition: i32,
) -> Result<(), tokio_postgres::Error> {
    db.execute("select pg_advisory_unlock($1, $2)", &[&key, &partition])
        .await?;
    Ok(())
}

/// Forgets `instance`'s row (it stops taking part).
pub async fn leave(
    db: &impl GenericClient,
    namespace: &str,
    instance: Uuid,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "delete from persistence_instances where namespace = $1 and instance = $2",
        &[&namespace, &instance],
    )
    .await?;
    Ok(())
}

/// Gives up every advisory lock of this session.
pub async fn unlock_all(db: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    db.execute("select pg_advisory_unlock_all()", &[]).await?;
    Ok(())
}
