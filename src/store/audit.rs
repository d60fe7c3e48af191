//! The system of record's side of the promise audit (`crate::audit`): rows
//! that break a promise of SPEC §2, each query returning what it found.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// A section whose enrolled rows, counter and seats disagree.
pub struct OversoldSection {
    pub section: Uuid,
    pub total_seats: i32,
    pub enrolled_count: i32,
    pub enrolled_rows: i32,
}

/// Sections of `sections` with more enrolled than seats, or a counter that
/// differs from their enrolled rows.
pub async fn oversold(
    db: &impl GenericClient,
    sections: &[Uuid],
) -> Result<Vec<OversoldSection>, tokio_postgres::Error> {
    let rows = db
        .query(
            "select s.id, s.total_seats, s.enrolled_count, \
                    (select count(*) from registrations r \
                      where r.section_id = s.id and r.status = 'enrolled')::integer \
               from sections s where s.id = any($1) \
                and (s.enrolled_count > s.total_seats or s.enrolled_count <> \
                     (select count(*) from registrations r \
                       where r.section_id = s.id and r.status = 'enrolled'))",
            &[&sections],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| OversoldSection {
            section: r.get(0),
            total_seats: r.get(1),
            enrolled_count: r.get(2),
            enrolled_rows: r.get(3),
        })
        .collect())
}

/// Sections whose enrolled rows and open offers (waitlist rows with an
/// `offer_expires_at`) together exceed the capacity:
/// (section, enrolled, offered, capacity).
pub async fn overheld(
    db: &impl GenericClient,
    sections: &[Uuid],
) -> Result<Vec<(Uuid, i64, i64, i32)>, tokio_postgres::Error> {
    let rows = db
        .query(
            "select s.id, e.n, o.n, s.total_seats from sections s, \
                    lateral (select count(*) as n from registrations r \
                              where r.section_id = s.id and r.semester_id = s.semester_id \
                                and r.status = 'enrolled') e, \
                    lateral (select count(*) as n from waitlist w \
                              where w.section_id = s.id and w.semester_id = s.semester_id \
                                and w.offer_expires_at is not null) o \
              where s.id = any($1) and e.n + o.n > s.total_seats",
            &[&sections],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// (section, student) pairs both enrolled and waitlisted.
pub async fn enrolled_and_waitlisted(
    db: &impl GenericClient,
    sections: &[Uuid],
) -> Result<Vec<(Uuid, Uuid)>, tokio_postgres::Error> {
    let rows = db
        .query(
            "select w.section_id, w.student_id from waitlist w join registrations r \
               on r.section_id = w.section_id and r.semester_id = w.semester_id \
              and r.student_id = w.student_id \
              where r.status = 'enrolled' and w.section_id = any($1)",
            &[&sections],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A section whose waitlist positions are not 1..N.
pub struct WaitlistGap {
    pub section: Uuid,
    pub waiting: i64,
    pub lowest: i32,
    pub highest: i32,
}

/// Sections of `sections` whose waitlist positions are not contiguous from 1.
pub async fn waitlist_gaps(
    db: &impl GenericClient,
    sections: &[Uuid],
) -> Result<Vec<WaitlistGap>, tokio_postgres::Error> {
    let rows = db
        .query(
            "select section_id, count(*), min(position), max(position) from waitlist \
              where section_id = any($1) group by section_id \
             having min(position) <> 1 or max(position) <> count(*)",
            &[&sections],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| WaitlistGap {
            section: r.get(0),
            waiting: r.get(1),
            lowest: r.get(2),
            highest: r.get(3),
        })
        .collect())
}

/// The students enrolled in `section`.
pub async fn enrolled_students(
    db: &impl GenericClient,
    section: Uuid,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = db
        .query(
            "select student_id from registrations where section_id = $1 and status = 'enrolled'",
            &[&section],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
