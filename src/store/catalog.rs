//! Catalog queries: semesters, courses, sections.

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize)]
pub struct Semester {
    pub id: Uuid,
    pub name: String,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub registration_start: DateTime<Utc>,
    pub registration_end: DateTime<Utc>,
    pub is_active: bool,
    /// Active and now within the registration window.
    pub registration_open: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Course {
    pub id: Uuid,
    pub course_code: String,
    pub course_name: String,
    pub description: String,
    pub credits: i32,
    pub department: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub id: Uuid,
    pub course_id: Uuid,
    pub course_code: String,
    pub course_name: String,
    pub credits: i32,
    pub department: String,
    pub semester_id: Uuid,
    pub section_number: String,
    pub instructor: String,
    pub schedule: String,
    pub room: String,
    pub total_seats: i32,
    pub enrolled: i32,
    pub seats_available: i32,
    pub waitlist_limit: i32,
    pub waitlist_length: i32,
    /// Seats held for waitlisted students by open offers (neither free
    /// nor enrolled).
    pub seats_offered: i32,
    /// `auto` (a freed seat enrols the waitlist head) or `offer` (it is
    /// held for them for `offer_ttl_secs`).
    pub waitlist_mode: String,
    pub offer_ttl_secs: i32,
    pub is_active: bool,
    /// Counts come from Redis (live) rather than PostgreSQL (persisted).
    pub live: bool,
}

const SEMESTER_COLUMNS: &str = "id, name, start_date, end_date, registration_start, \
     registration_end, is_active, \
     (is_active and now() >= registration_start and now() < registration_end) as open";

fn semester(row: &Row) -> Semester {
    Semester {
        id: row.get(0),
        name: row.get(1),
        start_date: row.get(2),
        end_date: row.get(3),
        registration_start: row.get(4),
        registration_end: row.get(5),
        is_active: row.get(6),
        registration_open: row.get(7),
    }
}

const SECTION_SELECT: &str = "select s.id, s.course_id, c.course_code, c.course_name, c.credits, \
     s.semester_id, s.section_number, s.instructor, s.schedule, s.room, s.total_seats, \
     s.enrolled_count, s.waitlist_limit, \
     (select count(*) from waitlist w \
      where w.section_id = s.id and w.semester_id = s.semester_id)::integer, s.is_active, \
     c.department, s.waitlist_mode, s.offer_ttl_secs, \
     (select count(*) from waitlist w where w.section_id = s.id \
       and w.semester_id = s.semester_id and w.offer_expires_at is not null)::integer \
     from sections s join courses c on c.id = s.course_id";

fn section(row: &Row) -> Section {
    let total_seats: i32 = row.get(10);
    let enrolled: i32 = row.get(11);
    Section {
        id: row.get(0),
        course_id: row.get(1),
        course_code: row.get(2),
        course_name: row.get(3),
        credits: row.get(4),
        department: row.get(15),
        semester_id: row.get(5),
        section_number: row.get(6),
        instructor: row.get(7),
        schedule: row.get(8),
        room: row.get(9),
        total_seats,
        enrolled,
        seats_available: (total_seats - enrolled - row.get::<_, i32>(18)).max(0),
        waitlist_limit: row.get(12),
        waitlist_length: row.get(13),
        seats_offered: row.get(18),
        waitlist_mode: row.get(16),
        offer_ttl_secs: row.get(17),
        is_active: row.get(14),
        live: false,
    }
}

pub async fn semesters(db: &impl GenericClient) -> Result<Vec<Semester>, tokio_postgres::Error> {
    let sql =
        format!("select {SEMESTER_COLUMNS} from semesters order by registration_start desc, name");
    let stmt = db.prepare_cached(&sql).await?;
    Ok(db.query(&stmt, &[]).await?.iter().map(semester).collect())
}

pub async fn semester_by_id(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<Option<Semester>, tokio_postgres::Error> {
    let sql = format!("select {SEMESTER_COLUMNS} from semesters where id = $1");
    let stmt = db.prepare_cached(&sql).await?;
    Ok(db.query_opt(&stmt, &[&id]).await?.as_ref().map(semester))
}

pub async fn sections_of_semester(
    db: &impl GenericClient,
    semester_id: Uuid,
) -> Result<Vec<Section>, tokio_postgres::Error> {
    let sql = format!(
        "{SECTION_SELECT} where s.semester_id = $1 order by c.course_code, s.section_number"
    );
    let stmt = db.prepare_cached(&sql).await?;
    Ok(db
        .query(&stmt, &[&semester_id])
        .await?
        .iter()
        .map(section)
        .collect())
}

pub async fn section_by_id(
    db: &impl GenericClient,
    id: Uuid,
) -> Result<Option<Section>, tokio_postgres::Error> {
    let sql = format!("{SECTION_SELECT} where s.id = $1");
    let stmt = db.prepare_cached(&sql).await?;
    Ok(db.query_opt(&stmt, &[&id]).await?.as_ref().map(section))
}

/// Filters of `GET /sections/available`.
#[derive(Debug, Clone, Default)]
pub struct AvailableFilter {
    pub semester_id: Option<Uuid>,
    pub course_code: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// Active sections with a free seat, in active semesters whose registration has not ended.
pub async fn available_sections(
    db: &impl GenericClient,
    filter: &AvailableFilter,
) -> Result<Vec<Section>, tokio_postgres::Error> {
    let sql = format!(
        "{SECTION_SELECT} join semesters sem on sem.id = s.semester_id \
         where s.is_active and sem.is_active and now() < sem.registration_end \
           and s.enrolled_count < s.total_seats \
           and ($1::uuid is null or s.semester_id = $1) \
           and ($2::text is null or c.course_code = $2) \
         order by c.course_code, s.section_number, s.id limit $3 offset $4"
    );
    let stmt = db.prepare_cached(&sql).await?;
    let rows = db
        .query(
            &stmt,
            &[
                &filter.semester_id,
                &filter.course_code,
                &filter.limit,
                &filter.offset,
            ],
        )
        .await?;
    Ok(rows.iter().map(section).collect())
}

/// Fields of a new semester.
#[derive(Debug, Clone)]
pub struct NewSemester {
    pub name: String,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub registration_start: DateTime<Utc>,
    pub registration_end: DateTime<Utc>,
    pub is_active: bool,
}

pub async fn insert_semester(
    db: &impl GenericClient,
    s: &NewSemester,
) -> Result<Semester, tokio_postgres::Error> {
    let sql = format!(
        "insert into semesters (id, name, start_date, end_date, registration_start, \
         registration_end, is_active) values ($1, $2, $3, $4, $5, $6, $7) \
         returning {SEMESTER_COLUMNS}"
    );
    let row = db
        .query_one(
            &sql,
            &[
                &Uuid::now_v7(),
                &s.name,
                &s.start_date,
                &s.end_date,
                &s.registration_start,
                &s.registration_end,
                &s.is_active,
            ],
        )
        .await?;
    Ok(semester(&row))
}

/// Fields of a new course.
#[derive(Debug, Clone)]
pub struct NewCourse {
    pub course_code: String,
    pub course_name: String,
    pub description: String,
    pub credits: i32,
    pub department: String,
}

pub async fn insert_course(
    db: &impl GenericClient,
    c: &NewCourse,
) -> Result<Course, tokio_postgres::Error> {
    let id = Uuid::now_v7();
    db.execute(
        "insert into courses (id, course_code, course_name, description, credits, department) \
         values ($1, $2, $3, $4, $5, $6)",
        &[
            &id,
            &c.course_code,
            &c.course_name,
            &c.description,
            &c.credits,
            &c.department,
        ],
    )
    .await?;
    Ok(Course {
        id,
        course_code: c.course_code.clone(),
        course_name: c.course_name.clone(),
        description: c.description.clone(),
        credits: c.credits,
        department: c.department.clone(),
    })
}

/// Fields of a new section.
#[derive(Debug, Clone)]
pub struct NewSection {
    pub course_id: Uuid,
    pub semester_id: Uuid,
    pub section_number: String,
    pub instructor: String,
    pub schedule: String,
    pub room: String,
    pub total_seats: i32,
    pub waitlist_limit: i32,
    pub is_active: bool,
}

pub async fn insert_section(
    db: &impl GenericClient,
    s: &NewSection,
) -> Result<Uuid, tokio_postgres::Error> {
    let id = Uuid::now_v7();
    db.execute(
        "insert into sections (id, course_id, semester_id, section_number, instructor, schedule, \
         room, total_seats, waitlist_limit, is_active) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &id,
            &s.course_id,
            &s.semester_id,
            &s.section_number,
            &s.instructor,
            &s.schedule,
            &s.room,
            &s.total_seats,
            &s.waitlist_limit,
            &s.is_active,
        ],
    )
    .await?;
    Ok(id)
}
