//! The PostgreSQL side: connection pool, migrations and queries.
//! PostgreSQL is the system of record; the hot path never waits on it.

pub mod audit;
pub mod catalog;
pub mod engine;
pub mod journal;
pub mod leases;
pub mod migrate;
pub mod notify;
pub mod operations;
pub mod partitions;
pub mod rules;
pub mod students;

use std::str::FromStr;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::DatabaseSettings;

/// One round trip on a pooled connection of `db` (the health check, which
/// reports the error as it is).
/// A round trip that also checks the schema is this binary's: a database
/// without it (or behind it) answers, but nothing would work, so it counts
/// as down, with the fix in the error.
pub async fn ping(db: &Pool) -> anyhow::Result<()> {
    let client = db.get().await?;
    let latest = migrate::MIGRATIONS.last().map_or(0, |m| m.version);
    let applied: Option<i32> = match client
        .query_one("select max(version) from schema_migrations", &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            anyhow::bail!("the database has no schema: run `registrar migrate`")
        }
        Err(e) => return Err(e.into()),
    };
    let applied = applied.unwrap_or(0);
    if applied < latest {
        anyhow::bail!("the schema is at migration {applied} of {latest}: run `registrar migrate`");
    }
    Ok(())
}

/// Builds the pool the API's reads and writes use (`database.pool_size`).
/// Connections are made lazily, so this succeeds while PostgreSQL is down;
/// each connection gets the configured statement timeout.
pub fn pool(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    build_pool(settings, settings.pool_size, "registrar")
}

/// Builds the pool of the catalog and view reads: on the replica at
/// `database.read_url` (its own `database.pool_size` connections), or the
/// API's `primary` pool itself when none is configured.
pub fn read_pool(settings: &DatabaseSettings, primary: &Pool) -> anyhow::Result<Pool> {
    match &settings.read_url {
        Some(url) => build_pool_at(
            (url.expose(), "database.read_url"),
            settings,
            settings.pool_size,
            "registrar-read",
            |_| "",
        ),
        None => Ok(primary.clone()),
    }
}

/// Builds the pool of the persistence shards, the sweeper, the section
/// loader and the revalidator (`database.persistence_pool_size`). Kept apart
/// from the API's pool: under a browsing storm (or while PostgreSQL is slow)
/// the API's waiters fill their pool's queue, and writes queued behind them
/// timed out too, so persistence stopped while reads were being refused.
pub fn persistence_pool(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    build_pool(
        settings,
        settings.persistence_pool_size,
        "registrar-persistence",
    )
}

/// Builds the one-connection pool of the partition leases
/// (`sync::lease`): its session holds the advisory locks, so it is never
/// shared. TCP keepalives on both ends are short, so that a session whose
/// client vanished (its locks with it) is ended by PostgreSQL within
/// seconds rather than the system default of hours.
pub fn lease_pool(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    build_pool_with(settings, 1, "registrar-lease", |pg| {
        pg.keepalives_idle(std::time::Duration::from_secs(5));
        "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
    })
}

fn build_pool(
    settings: &DatabaseSettings,
    size: usize,
    application_name: &str,
) -> anyhow::Result<Pool> {
    build_pool_with(settings, size, application_name, |_| "")
}

fn build_pool_with(
    settings: &DatabaseSettings,
    size: usize,
    application_name: &str,
    tune: impl FnOnce(&mut tokio_postgres::Config) -> &'static str,
) -> anyhow::Result<Pool> {
    build_pool_at(
        (settings.url.expose(), "database.url"),
        settings,
        size,
        application_name,
        tune,
    )
}

/// `url` is the URL and the name of the setting it comes from.
fn build_pool_at(
    (url, setting): (&str, &str),
    settings: &DatabaseSettings,
    size: usize,
    application_name: &str,
    tune: impl FnOnce(&mut tokio_postgres::Config) -> &'static str,
) -> anyhow::Result<Pool> {
    let mut pg = tokio_postgres::Config::from_str(url)
        .with_context(|| format!("{setting} is not a PostgreSQL URL"))?;
    let connect_timeout = settings.connect_timeout_ms.duration();
    pg.connect_timeout(connect_timeout);
    let extra = tune(&mut pg);
    pg.options(format!(
        "-c statement_timeout={} {extra}",
        settings.statement_timeout_ms
    ));
    pg.application_name(application_name);
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(connect_timeout))
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(connect_timeout))
        .build()
        .context("failed to build the PostgreSQL pool")
}

/// Creates the database named in `url` when it does not exist yet, by
/// connecting to the server's `postgres` database. Lets a newcomer's first
/// `migrate` work on a bare server.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let config = tokio_postgres::Config::from_str(url).context("database.url is invalid")?;
    let name = config
        .get_dbname()
        .context("database.url names no database")?
        .to_string();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(NoTls)
        .await
        .context("failed to connect to PostgreSQL")?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("select 1 from pg_database where datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        client
            .batch_execute(&format!("create database {quoted}"))
            .await
            .with_context(|| format!("failed to create database {name}"))?;
        tracing::info!(database = %name, "database created");
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// Classifies a database error the way the HTTP layer needs it.
pub fn unique_violation(err: &tokio_postgres::Error) -> Option<&str> {
    let db = err.as_db_error()?;
    (db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
        .then(|| db.constraint().unwrap_or(""))
}

/// An error with its causes, `: `-separated (a pool's "db error" then says
/// which: `database "x" does not exist`, `password authentication failed`).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// The constraint named by a foreign-key violation, if that is what `err` is.
pub fn foreign_key_violation(err: &tokio_postgres::Error) -> Option<&str> {
    let db = err.as_db_error()?;
    (db.code() == &tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
        .then(|| db.constraint().unwrap_or(""))
}

/// The constraint named by a check violation, if that is what `err` is.
pub fn check_violation(err: &tokio_postgres::Error) -> Option<&str> {
    let db = err.as_db_error()?;
    (db.code() == &tokio_postgres::error::SqlState::CHECK_VIOLATION)
        .then(|| db.constraint().unwrap_or(""))
}
