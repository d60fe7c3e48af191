//! The fingerprints of applied events (`applied_events`), written in the
//! same transaction as the events, so that a persistence worker can tell a
//! replay from a different event reusing an applied sequence
//! (sql/0003_applied_events.sql).

use std::collections::HashMap;

use deadpool_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use crate::domain::Event;

/// How long fingerprints are kept. Replays arrive within seconds or minutes
/// (queued copies, sweeper catch-ups, a crash before the outbox
/// acknowledgement); a Redis restart is noticed within seconds.
pub const KEEP: &str = "1 day";

/// Records `events` as applied, inside the transaction that applies them.
pub async fn record<'a>(
    tx: &Transaction<'_>,
    events: impl IntoIterator<Item = &'a Event>,
) -> Result<(), tokio_postgres::Error> {
    let (mut sections, mut seqs, mut prints) = (Vec::new(), Vec::new(), Vec::new());
    for e in events {
        sections.push(e.section);
        seqs.push(e.seq);
        prints.push(e.fingerprint());
    }
    if sections.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "insert into applied_events (section_id, seq, fingerprint) \
             select * from unnest($1::uuid[], $2::bigint[], $3::bigint[]) \
             on conflict (section_id, seq) do nothing",
        )
        .await?;
    tx.execute(&stmt, &[&sections, &seqs, &prints]).await?;
    Ok(())
}

/// The recorded fingerprints of `section` at `seqs` (absent: not recorded,
/// or pruned).
pub async fn fingerprints(
    db: &impl GenericClient,
    section: Uuid,
    seqs: &[i64],
) -> Result<HashMap<i64, i64>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select seq, fingerprint from applied_events \
             where section_id = $1 and seq = any($2)",
        )
        .await?;
    Ok(db
        .query(&stmt, &[&section, &seqs])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Deletes fingerprints older than [`KEEP`]; returns how many.
pub async fn prune(db: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        &format!("delete from applied_events where applied_at < now() - interval '{KEEP}'"),
        &[],
    )
    .await
}
