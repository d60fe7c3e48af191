//! The semester partitions of `registrations` and `waitlist`
//! (sql/0007_partition_by_semester.sql): what detaching a semester needs to
//! know, and the detach itself.
//!
//! A detached partition is moved to the schema [`ARCHIVE_SCHEMA`] under its
//! name (`registrations_<semester id without dashes>`), so
//! `pg_dump --schema=archive` dumps every archived semester and
//! `--table=archive.*_<id>` one of them; the semester's dead letters are
//! moved beside them (`archive.dead_letters_<id>`).

use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// Where detached partitions go.
pub const ARCHIVE_SCHEMA: &str = "archive";

/// The partitioned tables, each with one partition per semester.
pub const PARTITIONED: [&str; 2] = ["registrations", "waitlist"];

/// What decides whether a semester may be detached.
#[derive(Debug, Clone)]
pub struct SemesterStanding {
    pub name: String,
    pub is_active: bool,
    /// Now before `registration_end`: registration is open or yet to open.
    pub window_not_over: bool,
    /// Each section of the semester with its `last_seq`.
    pub sections: Vec<(Uuid, i64)>,
    /// Dead letters of the semester whose undo in Redis is still owed.
    pub owed_undos: i64,
}

pub async fn standing(
    db: &impl GenericClient,
    semester: Uuid,
) -> Result<Option<SemesterStanding>, tokio_postgres::Error> {
    let Some(row) = db
        .query_opt(
            "select name, is_active, now() < registration_end, \
                    (select count(*) from dead_letters d join sections s on s.id = d.section_id \
                      where s.semester_id = $1 and d.undone_at is null) \
               from semesters where id = $1",
            &[&semester],
        )
        .await?
    else {
        return Ok(None);
    };
    let sections = db
        .query(
            "select id, last_seq from sections where semester_id = $1 order by id",
            &[&semester],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(Some(SemesterStanding {
        name: row.get(0),
        is_active: row.get(1),
        window_not_over: row.get(2),
        sections,
        owed_undos: row.get(3),
    }))
}

/// Where one semester partition of `parent` stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partition {
    /// Attached to `parent` under this name.
    Attached(String),
    /// A `DETACH ... CONCURRENTLY` was interrupted after its first
    /// transaction: it must be finalized.
    DetachPending(String),
    /// Already in the archive schema under this name.
    Archived(String),
    /// Neither attached nor archived (dropped after archiving, say).
    Absent(String),
}

pub async fn partition(
    db: &impl GenericClient,
    parent: &str,
    semester: Uuid,
) -> Result<Partition, tokio_postgres::Error> {
    let row = db
        .query_one(
            "select n.name, \
                    (select i.inhdetachpending from pg_inherits i \
                      where i.inhparent = to_regclass('public.' || $1) \
                        and i.inhrelid = to_regclass('public.' || quote_ident(n.name))), \
                    to_regclass($3 || '.' || quote_ident(n.name)) is not null \
               from (select semester_partition_name($1, $2) as name) n",
            &[&parent, &semester, &ARCHIVE_SCHEMA],
        )
        .await?;
    let name: String = row.get(0);
    let pending: Option<bool> = row.get(1);
    let archived: bool = row.get(2);
    Ok(match (pending, archived) {
        (Some(false), _) => Partition::Attached(name),
        (Some(true), _) => Partition::DetachPending(name),
        (None, true) => Partition::Archived(name),
        (None, false) => Partition::Absent(name),
    })
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Detaches the partition `name` of `parent` and moves it to the archive
/// schema. `DETACH PARTITION ... CONCURRENTLY` takes only a SHARE UPDATE
/// EXCLUSIVE lock, so registrations of other semesters go on; it cannot run
/// in a transaction block, so `db` must not be in one, and it waits for
/// every transaction that may still see the partition (the session's
/// statement timeout should allow for that).
pub async fn detach(
    db: &impl GenericClient,
    parent: &str,
    partition: &Partition,
) -> Result<(), tokio_postgres::Error> {
    let (name, how) = match partition {
        Partition::Attached(name) => (name, "concurrently"),
        Partition::DetachPending(name) => (name, "finalize"),
        Partition::Archived(_) | Partition::Absent(_) => return Ok(()),
    };
    db.batch_execute(&format!(
        "alter table public.{} detach partition public.{} {how}",
        ident(parent),
        ident(name)
    ))
    .await?;
    db.batch_execute(&format!(
        "create schema if not exists {schema}; alter table public.{} set schema {schema}",
        ident(name),
        schema = ident(ARCHIVE_SCHEMA)
    ))
    .await
}

/// Moves the semester's dead letters into `archive.dead_letters_<id>`
/// (created if missing) in one transaction; returns how many moved.
pub async fn archive_dead_letters(
    db: &mut deadpool_postgres::Object,
    semester: Uuid,
) -> Result<(String, u64), tokio_postgres::Error> {
    let tx = db.transaction().await?;
    let name: String = tx
        .query_one(
            "select semester_partition_name('dead_letters', $1)",
            &[&semester],
        )
        .await?
        .get(0);
    let table = format!("{}.{}", ident(ARCHIVE_SCHEMA), ident(&name));
    tx.batch_execute(&format!(
        "create schema if not exists {schema}; \
         create table if not exists {table} (like public.dead_letters including all)",
        schema = ident(ARCHIVE_SCHEMA)
    ))
    .await?;
    let moved = tx
        .execute(
            &format!(
                "with moved as (delete from dead_letters d using sections s \
                                 where s.id = d.section_id and s.semester_id = $1 \
                                 returning d.*) \
                 insert into {table} select * from moved"
            ),
            &[&semester],
        )
        .await?;
    tx.commit().await?;
    Ok((format!("{ARCHIVE_SCHEMA}.{name}"), moved))
}
