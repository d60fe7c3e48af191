//! The registration rules' rows (sql/0009_registration_rules.sql): what the
//! hot path reads of them, and the admin's writes.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

/// A semester's own rules: its default credit limit, which credits it
/// counts, and its priority groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SemesterRules {
    pub credit_limit: Option<i32>,
    pub credit_counting: CreditCounting,
    pub priority_groups: Vec<PriorityGroup>,
}

/// Which credits a credit limit counts (sql/0012_credit_counting.sql).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditCounting {
    /// Seats and every waitlist place.
    #[default]
    EnrolledAndWaitlisted,
    /// Seats, and places on auto waitlists (a freed seat enrols their head
    /// without asking); not places on offer waitlists, whose seat comes
    /// only through a registration checked against the limit.
    Enrolled,
}

impl CreditCounting {
    pub fn as_str(self) -> &'static str {
        match self {
            CreditCounting::EnrolledAndWaitlisted => "enrolled_and_waitlisted",
            CreditCounting::Enrolled => "enrolled",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "enrolled" {
            CreditCounting::Enrolled
        } else {
            CreditCounting::EnrolledAndWaitlisted
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PriorityGroup {
    pub code: String,
    pub opens_at: DateTime<Utc>,
}

/// What the claim script needs of one section, already in its argument
/// format (lua/claim.lua).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionFacts {
    pub semester_id: Uuid,
    pub course_id: Uuid,
    pub credits: i32,
    pub repeatable: bool,
    /// "days:start:end,..."
    pub meetings: String,
    /// "a,b;c": an AND of ORs of course ids.
    pub prerequisites: String,
    /// "a,b"
    pub corequisites: String,
}

/// The semester's rules, or None when there is no such semester.
pub async fn semester_rules(
    db: &impl GenericClient,
    semester: Uuid,
) -> Result<Option<SemesterRules>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select s.credit_limit, s.credit_counting, \
                    array(select g.code from priority_groups g where g.semester_id = s.id order by g.opens_at, g.code), \
                    array(select g.opens_at from priority_groups g where g.semester_id = s.id order by g.opens_at, g.code) \
               from semesters s where s.id = $1",
        )
        .await?;
    Ok(db.query_opt(&stmt, &[&semester]).await?.map(|row| {
        let codes: Vec<String> = row.get(2);
        let opens: Vec<DateTime<Utc>> = row.get(3);
        SemesterRules {
            credit_limit: row.get(0),
            credit_counting: CreditCounting::parse(row.get(1)),
            priority_groups: codes
                .into_iter()
                .zip(opens)
                .map(|(code, opens_at)| PriorityGroup { code, opens_at })
                .collect(),
        }
    }))
}

/// Every section of a semester with the facts its rules need.
pub async fn semester_facts(
    db: &impl GenericClient,
    semester: Uuid,
) -> Result<Vec<(Uuid, SectionFacts)>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select x.id, x.course_id, c.credits, c.repeatable, \
                coalesce((select string_agg(m.days || ':' || m.start_minute || ':' || m.end_minute, ',' \
                                            order by m.days, m.start_minute) \
                            from section_meetings m where m.section_id = x.id), ''), \
                coalesce((select string_agg(g.alternatives, ';' order by g.alternative_group) \
                            from (select p.alternative_group, \
                                         string_agg(p.required_course_id::text, ',' order by p.required_course_id) as alternatives \
                                    from course_prerequisites p where p.course_id = x.course_id \
                                   group by p.alternative_group) g), ''), \
                coalesce((select string_agg(q.corequisite_course_id::text, ',' order by q.corequisite_course_id) \
                            from course_corequisites q where q.course_id = x.course_id), '') \
               from sections x join courses c on c.id = x.course_id \
              where x.semester_id = $1",
        )
        .await?;
    Ok(db
        .query(&stmt, &[&semester])
        .await?
        .iter()
        .map(|row| {
            (
                row.get(0),
                SectionFacts {
                    semester_id: semester,
                    course_id: row.get(1),
                    credits: row.get(2),
                    repeatable: row.get(3),
                    meetings: row.get(4),
                    prerequisites: row.get(5),
                    corequisites: row.get(6),
                },
            )
        })
        .collect())
}

/// The semester of each of these sections that exists.
pub async fn semesters_of(
    db: &impl GenericClient,
    sections: &[Uuid],
) -> Result<Vec<(Uuid, Uuid)>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached("select id, semester_id from sections where id = any($1)")
        .await?;
    Ok(db
        .query(&stmt, &[&sections])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The sections where PostgreSQL has the student enrolled or waitlisted.
pub async fn places(
    db: &impl GenericClient,
    student: Uuid,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select section_id from registrations where student_id = $1 and status = 'enrolled' \
             union select section_id from waitlist where student_id = $1",
        )
        .await?;
    Ok(db
        .query(&stmt, &[&student])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Course codes by id, for naming what is missing.
pub async fn course_codes(
    db: &impl GenericClient,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, String>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached("select id, course_code from courses where id = any($1)")
        .await?;
    Ok(db
        .query(&stmt, &[&ids])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Replaces a semester's credit limit and priority groups. Students of a
/// group that goes away leave it (their assignment is deleted with it).
/// None when there is no such semester.
pub async fn set_semester_rules(
    db: &mut deadpool_postgres::Client,
    semester: Uuid,
    rules: &SemesterRules,
) -> Result<Option<SemesterRules>, tokio_postgres::Error> {
    let tx = db.transaction().await?;
    let found = tx
        .execute(
            "update semesters set credit_limit = $2, credit_counting = $3 where id = $1",
            &[
                &semester,
                &rules.credit_limit,
                &rules.credit_counting.as_str(),
            ],
        )
        .await?;
    if found == 0 {
        return Ok(None);
    }
    let codes: Vec<&str> = rules
        .priority_groups
        .iter()
        .map(|g| g.code.as_str())
        .collect();
    let opens: Vec<DateTime<Utc>> = rules.priority_groups.iter().map(|g| g.opens_at).collect();
    tx.execute(
        "delete from priority_groups where semester_id = $1 and code <> all($2)",
        &[&semester, &codes],
    )
    .await?;
    tx.execute(
        "insert into priority_groups (semester_id, code, opens_at) \
         select $1, code, opens_at from unnest($2::text[], $3::timestamptz[]) as g(code, opens_at) \
         on conflict (semester_id, code) do update set opens_at = excluded.opens_at",
        &[&semester, &codes, &opens],
    )
    .await?;
    let after = semester_rules(&tx, semester).await?;
    tx.commit().await?;
    Ok(after)
}

/// Puts `students` in the semester's group `code` (None: in no group).
/// Returns how many students were assigned; unknown students are an error
/// (a foreign key violation), an unknown group too.
pub async fn assign_group(
    db: &mut deadpool_postgres::Client,
    semester: Uuid,
    code: Option<&str>,
    students: &[Uuid],
) -> Result<u64, tokio_postgres::Error> {
    let tx = db.transaction().await?;
    let n = match code {
        None => {
            tx.execute(
                "delete from student_priority where semester_id = $1 and student_id = any($2)",
                &[&semester, &students],
            )
            .await?
        }
        Some(code) => {
            tx.execute(
                "insert into student_priority (student_id, semester_id, code) \
                 select unnest($2::uuid[]), $1, $3 \
                 on conflict (student_id, semester_id) do update set code = excluded.code",
                &[&semester, &students, &code],
            )
            .await?
        }
    };
    tx.commit().await?;
    Ok(n)
}

/// A course's requisites and whether it repeats, as course codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CourseRules {
    pub prerequisites: Vec<Vec<String>>,
    pub corequisites: Vec<String>,
    pub repeatable: bool,
}

/// The course's rules, or None when there is no such course.
pub async fn course_rules(
    db: &impl GenericClient,
    course: Uuid,
) -> Result<Option<CourseRules>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select c.repeatable, \
                array(select p.alternative_group from course_prerequisites p join courses r on r.id = p.required_course_id \
                       where p.course_id = c.id order by p.alternative_group, r.course_code), \
                array(select r.course_code from course_prerequisites p join courses r on r.id = p.required_course_id \
                       where p.course_id = c.id order by p.alternative_group, r.course_code), \
                array(select r.course_code from course_corequisites q join courses r on r.id = q.corequisite_course_id \
                       where q.course_id = c.id order by r.course_code) \
               from courses c where c.id = $1",
        )
        .await?;
    Ok(db.query_opt(&stmt, &[&course]).await?.map(|row| {
        let groups: Vec<i32> = row.get(1);
        let codes: Vec<String> = row.get(2);
        let mut prerequisites: Vec<Vec<String>> = Vec::new();
        let mut last = None;
        for (group, code) in groups.into_iter().zip(codes) {
            if last != Some(group) {
                prerequisites.push(Vec::new());
                last = Some(group);
            }
            if let Some(alternatives) = prerequisites.last_mut() {
                alternatives.push(code);
            }
        }
        CourseRules {
            repeatable: row.get(0),
            prerequisites,
            corequisites: row.get(3),
        }
    }))
}

/// Why a course's rules could not be set.
#[derive(Debug, thiserror::Error)]
pub enum CourseRulesError {
    #[error("no such course")]
    NoCourse,
    #[error("unknown course codes: {0:?}")]
    UnknownCodes(Vec<String>),
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}

/// Replaces a course's requisites and its repeatable flag.
pub async fn set_course_rules(
    db: &mut deadpool_postgres::Client,
    course: Uuid,
    rules: &CourseRules,
) -> Result<CourseRules, CourseRulesError> {
    let tx = db.transaction().await?;
    let found = tx
        .execute(
            "update courses set repeatable = $2 where id = $1",
            &[&course, &rules.repeatable],
        )
        .await?;
    if found == 0 {
        return Err(CourseRulesError::NoCourse);
    }
    let mut named: Vec<&str> = rules
        .prerequisites
        .iter()
        .flatten()
        .chain(&rules.corequisites)
        .map(String::as_str)
        .collect();
    named.sort_unstable();
    named.dedup();
    let ids: HashMap<String, Uuid> = tx
        .query(
            "select course_code, id from courses where course_code = any($1)",
            &[&named],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let unknown: Vec<String> = named
        .iter()
        .filter(|c| !ids.contains_key(**c))
        .map(|c| c.to_string())
        .collect();
    if !unknown.is_empty() {
        return Err(CourseRulesError::UnknownCodes(unknown));
    }
    tx.execute(
        "delete from course_prerequisites where course_id = $1",
        &[&course],
    )
    .await?;
    tx.execute(
        "delete from course_corequisites where course_id = $1",
        &[&course],
    )
    .await?;
    let (mut groups, mut required) = (Vec::new(), Vec::new());
    for (g, alternatives) in rules.prerequisites.iter().enumerate() {
        for code in alternatives {
            groups.push(g as i32);
            required.push(ids[code]);
        }
    }
    tx.execute(
        "insert into course_prerequisites (course_id, alternative_group, required_course_id) \
         select $1, g, r from unnest($2::int[], $3::uuid[]) as t(g, r) on conflict do nothing",
        &[&course, &groups, &required],
    )
    .await?;
    let coreqs: Vec<Uuid> = rules.corequisites.iter().map(|c| ids[c]).collect();
    tx.execute(
        "insert into course_corequisites (course_id, corequisite_course_id) \
         select $1, unnest($2::uuid[]) on conflict do nothing",
        &[&course, &coreqs],
    )
    .await?;
    let after = course_rules(&tx, course)
        .await?
        .ok_or(CourseRulesError::NoCourse)?;
    tx.commit().await?;
    Ok(after)
}

/// One meeting of a section: days a bit set (bit 0 Monday), minutes from
/// midnight, end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meeting {
    pub days: i16,
    pub start_minute: i16,
    pub end_minute: i16,
}

/// Replaces a section's meetings; false when there is no such section.
pub async fn set_meetings(
    db: &mut deadpool_postgres::Client,
    section: Uuid,
    meetings: &[Meeting],
) -> Result<bool, tokio_postgres::Error> {
    let tx = db.transaction().await?;
    let exists = tx
        .query_opt(
            "select 1 from sections where id = $1 for update",
            &[&section],
        )
        .await?
        .is_some();
    if !exists {
        return Ok(false);
    }
    tx.execute(
        "delete from section_meetings where section_id = $1",
        &[&section],
    )
    .await?;
    let days: Vec<i16> = meetings.iter().map(|m| m.days).collect();
    let starts: Vec<i16> = meetings.iter().map(|m| m.start_minute).collect();
    let ends: Vec<i16> = meetings.iter().map(|m| m.end_minute).collect();
    tx.execute(
        "insert into section_meetings (section_id, days, start_minute, end_minute) \
         select $1, d, s, e from unnest($2::smallint[], $3::smallint[], $4::smallint[]) as m(d, s, e)",
        &[&section, &days, &starts, &ends],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A section's meetings.
pub async fn meetings(
    db: &impl GenericClient,
    section: Uuid,
) -> Result<Vec<Meeting>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "select days, start_minute, end_minute from section_meetings \
              where section_id = $1 order by days, start_minute",
        )
        .await?;
    Ok(db
        .query(&stmt, &[&section])
        .await?
        .iter()
        .map(|r| Meeting {
            days: r.get(0),
            start_minute: r.get(1),
            end_minute: r.get(2),
        })
        .collect())
}

/// Records completed courses (student id, course code); returns the
/// students whose records changed. Unknown course codes are returned
/// instead, with nothing written.
pub async fn import_completed(
    db: &mut deadpool_postgres::Client,
    rows: &[(Uuid, String)],
) -> Result<Result<u64, Vec<String>>, tokio_postgres::Error> {
    let tx = db.transaction().await?;
    let mut codes: Vec<&str> = rows.iter().map(|(_, c)| c.as_str()).collect();
    codes.sort_unstable();
    codes.dedup();
    let ids: HashMap<String, Uuid> = tx
        .query(
            "select course_code, id from courses where course_code = any($1)",
            &[&codes],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let unknown: Vec<String> = codes
        .iter()
        .filter(|c| !ids.contains_key(**c))
        .map(|c| c.to_string())
        .collect();
    if !unknown.is_empty() {
        return Ok(Err(unknown));
    }
    let students: Vec<Uuid> = rows.iter().map(|(s, _)| *s).collect();
    let courses: Vec<Uuid> = rows.iter().map(|(_, c)| ids[c]).collect();
    let n = tx
        .execute(
            "insert into completed_courses (student_id, course_id) \
             select s, c from unnest($1::uuid[], $2::uuid[]) as t(s, c) on conflict do nothing",
            &[&students, &courses],
        )
        .await?;
    tx.commit().await?;
    Ok(Ok(n))
}

/// Sets (Some) or removes (None) a student's own credit limit for a
/// semester. An unknown student or semester is a foreign key violation.
pub async fn set_credit_limit(
    db: &impl GenericClient,
    student: Uuid,
    semester: Uuid,
    limit: Option<i32>,
) -> Result<(), tokio_postgres::Error> {
    match limit {
        Some(limit) => {
            db.execute(
                "insert into student_credit_limits (student_id, semester_id, credit_limit) \
                 values ($1, $2, $3) \
                 on conflict (student_id, semester_id) do update set credit_limit = excluded.credit_limit",
                &[&student, &semester, &limit],
            )
            .await?
        }
        None => {
            db.execute(
                "delete from student_credit_limits where student_id = $1 and semester_id = $2",
                &[&student, &semester],
            )
            .await?
        }
    };
    Ok(())
}

/// A permit: one rule waived for one student in one section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Permit {
    pub section_id: Uuid,
    pub rule: String,
    pub granted_by: Option<Uuid>,
    pub granted_at: DateTime<Utc>,
    pub note: String,
}

/// Grants a permit (again: the grantor and time are renewed).
pub async fn grant_permit(
    db: &impl GenericClient,
    student: Uuid,
    section: Uuid,
    rule: &str,
    granted_by: Uuid,
    note: &str,
) -> Result<Permit, tokio_postgres::Error> {
    let row = db
        .query_one(
            "insert into registration_permits (student_id, section_id, rule, granted_by, note) \
             values ($1, $2, $3, $4, $5) \
             on conflict (student_id, section_id, rule) do update \
               set granted_by = excluded.granted_by, granted_at = now(), note = excluded.note \
             returning section_id, rule, granted_by, granted_at, note",
            &[&student, &section, &rule, &granted_by, &note],
        )
        .await?;
    Ok(permit_of(&row))
}

/// Revokes a permit; false when there was none.
pub async fn revoke_permit(
    db: &impl GenericClient,
    student: Uuid,
    section: Uuid,
    rule: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(db
        .execute(
            "delete from registration_permits where student_id = $1 and section_id = $2 and rule = $3",
            &[&student, &section, &rule],
        )
        .await?
        > 0)
}

/// A student's permits.
pub async fn permits(
    db: &impl GenericClient,
    student: Uuid,
) -> Result<Vec<Permit>, tokio_postgres::Error> {
    Ok(db
        .query(
            "select section_id, rule, granted_by, granted_at, note from registration_permits \
              where student_id = $1 order by granted_at, section_id, rule",
            &[&student],
        )
        .await?
        .iter()
        .map(permit_of)
        .collect())
}

fn permit_of(row: &tokio_postgres::Row) -> Permit {
    Permit {
        section_id: row.get(0),
        rule: row.get(1),
        granted_by: row.get(2),
        granted_at: row.get(3),
        note: row.get(4),
    }
}
