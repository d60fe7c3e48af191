//! A private PostgreSQL database: created empty next to the one an admin URL
//! names, dropped with its guard, so a test or a load run never sees another
//! one's rows and leaves none behind.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Databases of the kit are named `<prefix>_<unix seconds>_<random>`; ones
/// older than this are left-overs of killed runs and are dropped.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// A database of one test or run, dropped (connections and all) when this
/// guard is.
pub struct Database {
    pub name: String,
    /// Its URL: the admin URL with this database as its path.
    pub url: String,
    admin_url: String,
}

impl Database {
    /// Creates an empty database named after `prefix` (letters and digits,
    /// no `_`) beside the one `admin_url` names, after dropping the
    /// `prefix` databases older than an hour. Panics when PostgreSQL does
    /// not let it: nothing can run without its database.
    pub async fn create(admin_url: &str, prefix: &str) -> Self {
        let client = admin(admin_url)
            .await
            .expect("PostgreSQL must answer at the admin URL (TEST_/BENCH_DATABASE_URL)");
        drop_stale(&client, prefix).await;
        let name = format!("{prefix}_{}_{}", now_secs(), uuid::Uuid::new_v4().simple());
        client
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("the admin URL's user may create databases");
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Self {
            url: format!("{base}/{name}"),
            name,
            admin_url: admin_url.to_string(),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // From a thread of its own: `Drop` is synchronous and may run on an
        // async runtime's thread, where another runtime cannot block.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(async {
                    admin(&admin_url)
                        .await?
                        .batch_execute(&format!("drop database if exists {name} with (force)"))
                        .await
                })
                .map_err(|e| e.to_string())
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop database {}: {e}", self.name);
        }
    }
}

async fn admin(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Drops the `prefix` databases created more than [`STALE_AFTER`] ago.
async fn drop_stale(client: &tokio_postgres::Client, prefix: &str) {
    let rows = client
        .query(
            "select datname from pg_database where datname like $1",
            &[&format!("{prefix}\\_%")],
        )
        .await
        .unwrap_or_default();
    let cutoff = now_secs().saturating_sub(STALE_AFTER.as_secs());
    for row in rows {
        let name: String = row.get(0);
        let created = name
            .split('_')
            .nth(1)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if created < cutoff {
            let _ = client
                .batch_execute(&format!("drop database if exists {name} with (force)"))
                .await;
        }
    }
}
