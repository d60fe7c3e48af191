//! What the persistence workers write, and what warm-up and reconcile read.
//!
//! A section's events are applied in sequence order inside one transaction,
//! with one multi-row statement per run of same-kind events, then the
//! section row advances under an optimistic check on `last_seq`.
//!
//! `registrations` and `waitlist` are partitioned by semester
//! (sql/0007_partition_by_semester.sql). [`advance`] returns the section's
//! semester in the round trip it already makes, and every write names it,
//! so each statement touches that semester's partition only.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use crate::domain::{Event, EventKind, SectionSnapshot, WaitlistPolicy};

fn at(event: &Event) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(event.at_ms)
        .single()
        .unwrap_or_else(Utc::now)
}

fn columns(run: &[Event]) -> (Vec<Uuid>, Vec<Uuid>, Vec<DateTime<Utc>>) {
    let ids = run.iter().map(Event::row_id).collect();
    let students = run.iter().filter_map(|e| e.student).collect();
    let times = run.iter().map(at).collect();
    (ids, students, times)
}

/// A section and the semester it belongs to: the partition key of the rows
/// written for it (from [`advance`]).
#[derive(Debug, Clone, Copy)]
pub struct SectionKey {
    pub section: Uuid,
    pub semester: Uuid,
}

/// Applies `events` (one section, ascending, contiguous) inside `tx`.
pub async fn apply(
    tx: &Transaction<'_>,
    key: SectionKey,
    events: &[Event],
) -> Result<(), tokio_postgres::Error> {
    let mut renumber = false;
    for run in events.chunk_by(|a, b| a.kind == b.kind) {
        let (ids, students, times) = columns(run);
        match run[0].kind {
            EventKind::Enroll => insert_enrolled(tx, key, &ids, &students, &times).await?,
            EventKind::Promote => {
                delete_waitlisted(tx, key, &students).await?;
                renumber = true;
                insert_enrolled(tx, key, &ids, &students, &times).await?;
            }
            EventKind::Waitlist => {
                let stmt = tx
                    .prepare_cached(
                        "insert into waitlist \
                                (id, student_id, section_id, semester_id, position, created_at) \
                         select u.id, u.student, $1, $5, (b.base + u.ord)::integer, u.at \
                           from unnest($2::uuid[], $3::uuid[], $4::timestamptz[]) \
                                with ordinality as u(id, student, at, ord), \
                                (select coalesce(max(position), 0) as base from waitlist \
                                  where section_id = $1 and semester_id = $5) b \
                         on conflict (student_id, section_id, semester_id) do nothing",
                    )
                    .await?;
                tx.execute(
                    &stmt,
                    &[&key.section, &ids, &students, &times, &key.semester],
                )
                .await?;
            }
            EventKind::Drop => mark_dropped(tx, key, &students, &times).await?,
            EventKind::Unwait => {
                delete_waitlisted(tx, key, &students).await?;
                renumber = true;
            }
            EventKind::Revert => {
                // The undone event never reached PostgreSQL (its write failed
                // for good); clearing both states keeps a replay harmless.
                delete_waitlisted(tx, key, &students).await?;
                renumber = true;
                mark_dropped(tx, key, &students, &times).await?;
            }
            EventKind::Config => {
                if let Some(config) = run.iter().rev().find_map(|e| e.config) {
                    let mode = config
                        .waitlist
                        .map(|w| if w.offer { "offer" } else { "auto" });
                    let ttl_secs = config
                        .waitlist
                        .map(|w| i32::try_from((w.offer_ttl_ms / 1000).max(1)).unwrap_or(i32::MAX));
                    let stmt = tx
                        .prepare_cached(
                            "update sections set total_seats = $2, waitlist_limit = $3, \
                             is_active = $4, waitlist_mode = coalesce($5, waitlist_mode), \
                             offer_ttl_secs = coalesce($6, offer_ttl_secs), \
                             version = version + 1 where id = $1",
                        )
                        .await?;
                    tx.execute(
                        &stmt,
                        &[
                            &key.section,
                            &config.capacity,
                            &config.waitlist_limit,
                            &config.active,
                            &mode,
                            &ttl_secs,
                        ],
                    )
                    .await?;
                }
            }
            EventKind::Offer => {
                let until: Vec<DateTime<Utc>> = run
                    .iter()
                    .map(|e| {
                        Utc.timestamp_millis_opt(e.offer_until_ms.unwrap_or(e.at_ms))
                            .single()
                            .unwrap_or_else(Utc::now)
                    })
                    .collect();
                let stmt = tx
                    .prepare_cached(
                        "update waitlist w set offer_expires_at = u.until, version = w.version + 1 \
                           from unnest($2::uuid[], $3::timestamptz[]) as u(student, until) \
                          where w.section_id = $1 and w.semester_id = $4 \
                            and w.student_id = u.student",
                    )
                    .await?;
                tx.execute(&stmt, &[&key.section, &students, &until, &key.semester])
                    .await?;
            }
        }
    }
    if renumber {
        let stmt = tx
            .prepare_cached(
                "update waitlist w set position = r.rn::integer, version = w.version + 1 \
                   from (select id, row_number() over (order by position) as rn \
                           from waitlist where section_id = $1 and semester_id = $2) r \
                  where w.semester_id = $2 and w.id = r.id and w.position <> r.rn",
            )
            .await?;
        tx.execute(&stmt, &[&key.section, &key.semester]).await?;
    }
    Ok(())
}

async fn insert_enrolled(
    tx: &Transaction<'_>,
    key: SectionKey,
    ids: &[Uuid],
    students: &[Uuid],
    times: &[DateTime<Utc>],
) -> Result<(), tokio_postgres::Error> {
    let sections = vec![key.section; ids.len()];
    let semesters = vec![key.semester; ids.len()];
    insert_enrolled_rows(tx, ids, students, &sections, &semesters, times).await
}

/// Inserts enrolled rows (or re-enrols dropped ones), each naming its
/// section and semester.
async fn insert_enrolled_rows(
    tx: &Transaction<'_>,
    ids: &[Uuid],
    students: &[Uuid],
    sections: &[Uuid],
    semesters: &[Uuid],
    times: &[DateTime<Utc>],
) -> Result<(), tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(
            "insert into registrations \
                    (id, student_id, section_id, semester_id, status, registration_date) \
             select u.id, u.student, u.section, u.semester, 'enrolled', u.at \
               from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::timestamptz[]) \
                    as u(id, student, section, semester, at) \
             on conflict (student_id, section_id, semester_id) do update \
                set status = 'enrolled', dropped_date = null, \
                    registration_date = excluded.registration_date, \
                    version = registrations.version + 1 \
              where registrations.status = 'dropped'",
        )
        .await?;
    tx.execute(&stmt, &[&ids, &students, &sections, &semesters, &times])
        .await?;
    Ok(())
}

async fn delete_waitlisted(
    tx: &Transaction<'_>,
    key: SectionKey,
    students: &[Uuid],
) -> Result<(), tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(
            "delete from waitlist \
              where section_id = $1 and semester_id = $3 and student_id = any($2)",
        )
        .await?;
    tx.execute(&stmt, &[&key.section, &students, &key.semester])
        .await?;
    Ok(())
}

async fn mark_dropped(
    tx: &Transaction<'_>,
    key: SectionKey,
    students: &[Uuid],
    times: &[DateTime<Utc>],
) -> Result<(), tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(
            "update registrations r set status = 'dropped', dropped_date = u.at, \
                    version = r.version + 1 \
               from unnest($2::uuid[], $3::timestamptz[]) as u(student, at) \
              where r.section_id = $1 and r.semester_id = $4 \
                and r.student_id = u.student and r.status = 'enrolled'",
        )
        .await?;
    tx.execute(&stmt, &[&key.section, &students, &times, &key.semester])
        .await?;
    Ok(())
}

/// Moves a section's `last_seq` from `from` to `to` and returns the
/// section with its semester (the partition its rows go to); None when
/// another writer moved it first (the optimistic check found no row).
pub async fn advance(
    tx: &Transaction<'_>,
    section: Uuid,
    from: i64,
    to: i64,
) -> Result<Option<SectionKey>, tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(
            "update sections set last_seq = $3, version = version + 1 \
              where id = $1 and last_seq = $2 returning semester_id",
        )
        .await?;
    Ok(tx
        .query_opt(&stmt, &[&section, &from, &to])
        .await?
        .map(|row| SectionKey {
            section,
            semester: row.get(0),
        }))
}

/// [`advance`] for every section of a batch in one statement: each moves
/// from its `from` to its `to` under the same optimistic check, its row
/// locked in id order first. Returns the keys in the order of `moves`, or
/// the first section whose check failed (another writer moved it).
pub async fn advance_all(
    tx: &Transaction<'_>,
    moves: &[(Uuid, i64, i64)],
) -> Result<Result<Vec<SectionKey>, Uuid>, tokio_postgres::Error> {
    let ids: Vec<Uuid> = moves.iter().map(|m| m.0).collect();
    let from: Vec<i64> = moves.iter().map(|m| m.1).collect();
    let to: Vec<i64> = moves.iter().map(|m| m.2).collect();
    let stmt = tx
        .prepare_cached(
            "with locked as materialized \
                  (select id from sections where id = any($1) order by id for update) \
             update sections s set last_seq = u.to_seq, version = s.version + 1 \
               from unnest($1::uuid[], $2::bigint[], $3::bigint[]) as u(id, from_seq, to_seq), \
                    locked l \
              where l.id = u.id and s.id = u.id and s.last_seq = u.from_seq \
             returning s.id, s.semester_id",
        )
        .await?;
    let semesters: HashMap<Uuid, Uuid> = tx
        .query(&stmt, &[&ids, &from, &to])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(ids
        .iter()
        .map(|section| {
            semesters.get(section).map(|semester| SectionKey {
                section: *section,
                semester: *semester,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            *ids.iter()
                .find(|s| !semesters.contains_key(s))
                .expect("a key is missing")
        }))
}

/// Whether [`apply_enrolments`] can write these events: enrolments only.
pub fn only_enrolments(events: &[Event]) -> bool {
    events.iter().all(|e| e.kind == EventKind::Enroll)
}

/// Applies many sections' events that are all enrolments (see
/// [`only_enrolments`]) in one statement, as [`apply`] would one by one: a
/// batch spread over many sections costs one round trip, not one each.
pub async fn apply_enrolments(
    tx: &Transaction<'_>,
    sections: &[(SectionKey, &[Event])],
) -> Result<(), tokio_postgres::Error> {
    let rows = sections.iter().map(|(_, e)| e.len()).sum();
    let (mut ids, mut students, mut keys, mut semesters, mut times) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
    );
    for (key, events) in sections {
        for event in *events {
            let Some(student) = event.student else {
                continue;
            };
            ids.push(event.row_id());
            students.push(student);
            keys.push(key.section);
            semesters.push(key.semester);
            times.push(at(event));
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    insert_enrolled_rows(tx, &ids, &students, &keys, &semesters, &times).await
}

/// The last applied sequence of each section (absent: no such section).
pub async fn last_seqs(
    db: &impl GenericClient,
    sections: &[Uuid],
) -> Result<HashMap<Uuid, i64>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached("select id, last_seq from sections where id = any($1)")
        .await?;
    Ok(db
        .query(&stmt, &[&sections])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Every section's id: the sections the sweeper watches.
pub async fn section_ids(db: &impl GenericClient) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    Ok(db
        .query("select id from sections", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Every section with its last applied sequence, to find the sections a
/// restarted Redis holds behind PostgreSQL.
pub async fn all_last_seqs(
    db: &impl GenericClient,
) -> Result<Vec<(Uuid, i64)>, tokio_postgres::Error> {
    Ok(db
        .query("select id, last_seq from sections", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Records an event whose write failed for good.
/// A dead letter whose undo in Redis is still owed (see
/// sql/0004_dead_letter_undo.sql).
pub struct OwedUndo {
    pub event: Event,
    pub error: String,
    pub sqlstate: Option<String>,
}

/// Dead letters of `section` whose undo has not happened yet, in order.
pub async fn owed_undos(
    db: &impl GenericClient,
    section: Uuid,
) -> Result<Vec<OwedUndo>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select seq, kind, student_id, error, sqlstate,                     (extract(epoch from created_at) * 1000)::bigint                from dead_letters where section_id = $1 and undone_at is null order by seq",
        )
        .await?;
    Ok(db
        .query(&stmt, &[&section])
        .await?
        .iter()
        .filter_map(|r| {
            let kind: String = r.get(1);
            Some(OwedUndo {
                event: Event {
                    section,
                    seq: r.get(0),
                    kind: EventKind::parse(&kind)?,
                    student: r.get(2),
                    at_ms: r.get(5),
                    config: None,
                    offer_until_ms: None,
                },
                error: r.get(3),
                sqlstate: r.get(4),
            })
        })
        .collect())
}

/// Sections with a dead letter whose undo is still owed.
pub async fn sections_owing_undos(
    db: &impl GenericClient,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached("select distinct section_id from dead_letters where undone_at is null")
        .await?;
    Ok(db
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Records that the dead letter at (section, seq) has been undone in Redis.
pub async fn mark_undone(
    db: &impl GenericClient,
    section: Uuid,
    seq: i64,
    result: &str,
) -> Result<(), tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "update dead_letters set undone_at = now(), undo_result = $3 \
              where section_id = $1 and seq = $2 and undone_at is null",
        )
        .await?;
    db.execute(&stmt, &[&section, &seq, &result]).await?;
    Ok(())
}

pub async fn insert_dead_letter(
    tx: &Transaction<'_>,
    event: &Event,
    error: &str,
    sqlstate: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "insert into dead_letters (section_id, seq, kind, student_id, error, sqlstate) \
         values ($1, $2, $3, $4, $5, $6) on conflict (section_id, seq) do nothing",
        &[
            &event.section,
            &event.seq,
            &event.kind.as_str(),
            &event.student,
            &error,
            &sqlstate,
        ],
    )
    .await?;
    Ok(())
}

/// Which sections to snapshot.
pub enum Snapshots<'a> {
    /// Every section of an active semester (start-up warm-up).
    ActiveSemesters,
    /// These sections, whatever their state.
    Only(&'a [Uuid]),
    /// Every section.
    All,
}

/// Sections with their rosters, as `load.lua` wants them.
pub async fn snapshots(
    db: &impl GenericClient,
    which: Snapshots<'_>,
) -> Result<Vec<SectionSnapshot>, tokio_postgres::Error> {
    let base = "select s.id, s.total_seats, s.waitlist_limit, s.is_active, sem.is_active, \
                sem.registration_start, sem.registration_end, s.last_seq, \
                s.waitlist_mode, s.offer_ttl_secs \
                from sections s join semesters sem on sem.id = s.semester_id";
    let rows = match which {
        Snapshots::ActiveSemesters => {
            db.query(&format!("{base} where sem.is_active"), &[])
                .await?
        }
        Snapshots::All => db.query(base, &[]).await?,
        Snapshots::Only(ids) => {
            db.query(&format!("{base} where s.id = any($1)"), &[&ids])
                .await?
        }
    };
    let mut snapshots: Vec<SectionSnapshot> = rows
        .iter()
        .map(|r| {
            let start: DateTime<Utc> = r.get(5);
            let end: DateTime<Utc> = r.get(6);
            SectionSnapshot {
                section: r.get(0),
                capacity: r.get(1),
                waitlist_limit: r.get(2),
                section_active: r.get(3),
                semester_active: r.get(4),
                registration_start_ms: start.timestamp_millis(),
                registration_end_ms: end.timestamp_millis(),
                last_seq: r.get(7),
                enrolled: Vec::new(),
                waitlisted: Vec::new(),
                waitlist: WaitlistPolicy {
                    offer: r.get::<_, &str>(8) == "offer",
                    offer_ttl_ms: i64::from(r.get::<_, i32>(9)) * 1000,
                },
                offers: Vec::new(),
            }
        })
        .collect();
    let ids: Vec<Uuid> = snapshots.iter().map(|s| s.section).collect();
    let index: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for row in db
        .query(
            "select section_id, student_id from registrations \
             where status = 'enrolled' and section_id = any($1)",
            &[&ids],
        )
        .await?
    {
        let section: Uuid = row.get(0);
        snapshots[index[&section]].enrolled.push(row.get(1));
    }
    for row in db
        .query(
            "select section_id, student_id, offer_expires_at from waitlist \
             where section_id = any($1) order by section_id, position",
            &[&ids],
        )
        .await?
    {
        let section: Uuid = row.get(0);
        let snapshot = &mut snapshots[index[&section]];
        snapshot.waitlisted.push(row.get(1));
        if let Some(until) = row.get::<_, Option<DateTime<Utc>>>(2) {
            snapshot.offers.push((row.get(1), until.timestamp_millis()));
        }
    }
    Ok(snapshots)
}
