//! What admins and operators read about the running system: accounts by
//! page, the names behind a roster's ids, dead letters, and who holds which
//! persistence partition.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

/// One account in a list (the whole account: `students::account`).
#[derive(Debug, Serialize)]
pub struct AccountRow {
    pub id: Uuid,
    pub student_number: String,
    pub name: String,
    pub email: String,
    pub enrollment_status: String,
    pub role: String,
    pub holds: Vec<String>,
}

/// Which accounts a list shows.
pub struct AccountFilter<'a> {
    /// A prefix of the student number, or part of the name or email (any
    /// case).
    pub search: Option<&'a str>,
    pub status: Option<&'a str>,
    pub role: Option<&'a str>,
    /// Accounts after this student number (the previous page's last).
    pub after: Option<&'a str>,
    pub limit: i64,
}

/// `text` with LIKE's wildcards taken literally.
fn like_escaped(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Accounts in student-number order, filtered; at most `limit + 1`, so the
/// caller knows whether a next page exists.
pub async fn accounts(
    db: &impl GenericClient,
    filter: &AccountFilter<'_>,
) -> Result<Vec<AccountRow>, tokio_postgres::Error> {
    let search = filter.search.map(like_escaped);
    let prefix = search.as_ref().map(|s| format!("{s}%"));
    let anywhere = search.as_ref().map(|s| format!("%{s}%"));
    let stmt = db
        .prepare_cached(
            "select s.id, s.student_number, s.name, s.email, s.enrollment_status, s.role, \
                    coalesce((select array_agg(h.code order by h.placed_at, h.code) \
                                from student_holds h where h.student_id = s.id), '{}') \
               from students s \
              where ($1::text is null or s.student_number ilike $1 \
                     or s.name ilike $2 or s.email ilike $2) \
                and ($3::text is null or s.enrollment_status = $3) \
                and ($4::text is null or s.role = $4) \
                and ($5::text is null or s.student_number > $5) \
              order by s.student_number \
              limit $6",
        )
        .await?;
    let rows = db
        .query(
            &stmt,
            &[
                &prefix,
                &anywhere,
                &filter.status,
                &filter.role,
                &filter.after,
                &(filter.limit + 1),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AccountRow {
            id: r.get(0),
            student_number: r.get(1),
            name: r.get(2),
            email: r.get(3),
            enrollment_status: r.get(4),
            role: r.get(5),
            holds: r.get(6),
        })
        .collect())
}

/// Student number and name of each of `ids` that has an account.
pub async fn names(
    db: &impl GenericClient,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, (String, String)>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached("select id, student_number, name from students where id = any($1)")
        .await?;
    let rows = db.query(&stmt, &[&ids]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// One dead letter: an event PostgreSQL refused for good.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub section_id: Uuid,
    pub seq: i64,
    pub kind: String,
    pub student_id: Option<Uuid>,
    pub error: String,
    pub sqlstate: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the event was undone in Redis (null: the undo is still owed).
    pub undone_at: Option<DateTime<Utc>>,
    pub undo_result: Option<String>,
    /// When an admin resolved it (null: open).
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<Uuid>,
    /// `retried` or `dismissed`.
    pub resolution: Option<String>,
    /// The dismissal's reason, or what the retry was answered.
    pub resolution_note: Option<String>,
}

const DEAD_LETTER_COLUMNS: &str = "id, section_id, seq, kind, student_id, error, sqlstate, \
     created_at, undone_at, undo_result, resolved_at, resolved_by, resolution, resolution_note";

fn dead_letter_of(r: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        section_id: r.get(1),
        seq: r.get(2),
        kind: r.get(3),
        student_id: r.get(4),
        error: r.get(5),
        sqlstate: r.get(6),
        created_at: r.get(7),
        undone_at: r.get(8),
        undo_result: r.get(9),
        resolved_at: r.get(10),
        resolved_by: r.get(11),
        resolution: r.get(12),
        resolution_note: r.get(13),
    }
}

/// Dead letters newest first, before id `before` (only unresolved ones
/// with `open`); at most `limit + 1`.
pub async fn dead_letters(
    db: &impl GenericClient,
    section: Option<Uuid>,
    open: bool,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(&format!(
            "select {DEAD_LETTER_COLUMNS} from dead_letters \
              where ($1::uuid is null or section_id = $1) \
                and (not $2 or resolved_at is null) \
                and ($3::bigint is null or id < $3) \
              order by id desc limit $4"
        ))
        .await?;
    let rows = db
        .query(&stmt, &[&section, &open, &before, &(limit + 1)])
        .await?;
    Ok(rows.iter().map(dead_letter_of).collect())
}

pub async fn dead_letter(
    db: &impl GenericClient,
    id: i64,
) -> Result<Option<DeadLetter>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            &format!("select {DEAD_LETTER_COLUMNS} from dead_letters where id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(dead_letter_of))
}

/// Marks dead letter `id` resolved by `admin` if nobody has yet; `None`
/// when it was resolved already (or does not exist: the caller tells which).
pub async fn resolve(
    db: &impl GenericClient,
    id: i64,
    admin: Uuid,
    resolution: &str,
    note: Option<&str>,
) -> Result<Option<DeadLetter>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            &format!(
                "update dead_letters \
                    set resolved_at = now(), resolved_by = $2, resolution = $3, resolution_note = $4 \
                  where id = $1 and resolved_at is null \
                  returning {DEAD_LETTER_COLUMNS}"
            ),
            &[&id, &admin, &resolution, &note],
        )
        .await?;
    Ok(row.as_ref().map(dead_letter_of))
}

/// Records what a claimed retry was answered.
pub async fn retried(
    db: &impl GenericClient,
    id: i64,
    note: &str,
) -> Result<Option<DeadLetter>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            &format!(
                "update dead_letters set resolution_note = $2 \
                  where id = $1 and resolution = 'retried' returning {DEAD_LETTER_COLUMNS}"
            ),
            &[&id, &note],
        )
        .await?;
    Ok(row.as_ref().map(dead_letter_of))
}

/// Opens a claimed retry again (it could not be carried out: try later).
pub async fn reopen(db: &impl GenericClient, id: i64) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "update dead_letters set resolved_at = null, resolved_by = null, resolution = null, \
                resolution_note = null where id = $1 and resolution = 'retried'",
        &[&id],
    )
    .await?;
    Ok(())
}

/// How many dead letters there are, and how many still owe their undo.
pub async fn dead_letter_counts(
    db: &impl GenericClient,
) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = db
        .query_one(
            "select count(*), count(*) filter (where undone_at is null) from dead_letters",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// An instance taking part in persistence, and the partitions it holds.
#[derive(Debug, Serialize)]
pub struct Writer {
    pub instance: Uuid,
    pub seen_at: DateTime<Utc>,
    pub seconds_since_seen: f64,
    /// Partitions whose lease (advisory lock) its session holds now.
    pub partitions: Vec<i32>,
}

/// The instances of `namespace` with the partitions each holds (the
/// advisory locks `(key, partition)` granted to their lease sessions).
pub async fn writers(
    db: &impl GenericClient,
    namespace: &str,
    key: i32,
) -> Result<Vec<Writer>, tokio_postgres::Error> {
    // A two-key advisory lock shows as classid = key, objid = partition,
    // objsubid = 2 (PostgreSQL's pg_locks documentation); the oids are
    // unsigned, the keys signed.
    let rows = db
        .query(
            "select i.instance, i.seen_at, \
                    extract(epoch from now() - i.seen_at)::float8, \
                    coalesce(array_agg(l.objid::bigint::int4 order by l.objid) \
                               filter (where l.objid is not null), '{}') \
               from persistence_instances i \
               left join pg_locks l \
                 on l.pid = i.backend_pid and l.locktype = 'advisory' and l.granted \
                and l.objsubid = 2 and l.classid::bigint = ($2::int4::bigint & 4294967295) \
              where i.namespace = $1 \
              group by i.instance, i.seen_at \
              order by i.instance",
            &[&namespace, &key],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Writer {
            instance: r.get(0),
            seen_at: r.get(1),
            seconds_since_seen: r.get(2),
            partitions: r.get(3),
        })
        .collect())
}

/// Whether section `id` exists.
pub async fn section_exists(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    Ok(db
        .query_opt("select 1 from sections where id = $1", &[&id])
        .await?
        .is_some())
}
