//! Append-only SQL migrations from `sql/`, embedded in the binary.
//!
//! Each file is applied once, in its own transaction, and recorded in
//! `schema_migrations` with its SHA-256. A recorded migration whose file has
//! changed since is refused rather than silently skipped. An advisory lock
//! makes concurrent starts of several instances safe.

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// One migration file.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every file of `sql/`, in order. A test checks that none is missing.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_catalog.sql",
        sql: include_str!("../../sql/0001_catalog.sql"),
    },
    Migration {
        version: 2,
        name: "0002_engine.sql",
        sql: include_str!("../../sql/0002_engine.sql"),
    },
    Migration {
        version: 3,
        name: "0003_applied_events.sql",
        sql: include_str!("../../sql/0003_applied_events.sql"),
    },
    Migration {
        version: 4,
        name: "0004_dead_letter_undo.sql",
        sql: include_str!("../../sql/0004_dead_letter_undo.sql"),
    },
    Migration {
        version: 5,
        name: "0005_persistence_leases.sql",
        sql: include_str!("../../sql/0005_persistence_leases.sql"),
    },
    Migration {
        version: 6,
        name: "0006_student_access.sql",
        sql: include_str!("../../sql/0006_student_access.sql"),
    },
    Migration {
        version: 7,
        name: "0007_partition_by_semester.sql",
        sql: include_str!("../../sql/0007_partition_by_semester.sql"),
    },
    Migration {
        version: 8,
        name: "0008_sections_fillfactor.sql",
        sql: include_str!("../../sql/0008_sections_fillfactor.sql"),
    },
    Migration {
        version: 9,
        name: "0009_registration_rules.sql",
        sql: include_str!("../../sql/0009_registration_rules.sql"),
    },
    Migration {
        version: 10,
        name: "0010_dead_letter_resolution.sql",
        sql: include_str!("../../sql/0010_dead_letter_resolution.sql"),
    },
    Migration {
        version: 11,
        name: "0011_waitlist_offers.sql",
        sql: include_str!("../../sql/0011_waitlist_offers.sql"),
    },
    Migration {
        version: 12,
        name: "0012_credit_counting.sql",
        sql: include_str!("../../sql/0012_credit_counting.sql"),
    },
];

/// Arbitrary key of the advisory lock held while migrating ("regmigr" in ASCII).
const LOCK_KEY: i64 = 0x0072_6567_6d69_6772;

fn checksum(sql: &str) -> String {
    crate::domain::hex(&Sha256::digest(sql.as_bytes()))
}

/// Applies what is missing; returns the names applied (empty when up to date).
pub async fn run(client: &mut Client) -> anyhow::Result<Vec<&'static str>> {
    run_through(client, i32::MAX).await
}

/// Applies what is missing up to and including migration `last`: a database
/// at an older version, for the tests of a migration that converts data.
pub async fn run_through(client: &mut Client, last: i32) -> anyhow::Result<Vec<&'static str>> {
    client
        .execute("select pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .context("failed to take the migration lock")?;
    let result = apply_pending(client, last).await;
    client
        .execute("select pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await
        .context("failed to release the migration lock")?;
    result
}

async fn apply_pending(client: &mut Client, last: i32) -> anyhow::Result<Vec<&'static str>> {
    client
        .batch_execute(
            "create table if not exists schema_migrations (
                 version    integer primary key,
                 name       text not null,
                 checksum   text not null,
                 applied_at timestamptz not null default now()
             )",
        )
        .await
        .context("failed to create schema_migrations")?;
    let applied = client
        .query("select version, checksum from schema_migrations", &[])
        .await
        .context("failed to read schema_migrations")?;
    let mut done = Vec::new();
    for migration in MIGRATIONS.iter().take_while(|m| m.version <= last) {
        let sum = checksum(migration.sql);
        if let Some(row) = applied
            .iter()
            .find(|r| r.get::<_, i32>(0) == migration.version)
        {
            if row.get::<_, String>(1) != sum {
                bail!(
                    "migration {} was changed after it was applied; migrations are append-only",
                    migration.name
                );
            }
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(migration.sql)
            .await
            .with_context(|| format!("failed to apply migration {}", migration.name))?;
        tx.execute(
            "insert into schema_migrations (version, name, checksum) values ($1, $2, $3)",
            &[&migration.version, &migration.name, &sum],
        )
        .await?;
        tx.commit()
            .await
            .with_context(|| format!("failed to commit migration {}", migration.name))?;
        done.push(migration.name);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sql_file_is_listed_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{} is out of sequence", m.name);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }
}
