//! The browse side's short-lived memory: catalog rows from PostgreSQL and
//! live counts from Redis, shared between requests for a moment, and the
//! semester index that pages `GET /semesters/{id}/sections`.

use std::{
    collections::HashMap,
    io::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::header::HeaderValue;
use serde::Serialize;
use uuid::Uuid;

use crate::{domain::hex, seats::LiveCounts, store::catalog};

/// Catalog rows read from PostgreSQL, kept for `api.catalog_cache_ms`.
///
/// Names, rooms and capacities change rarely (and admin writes clear the
/// cache); the counts students care about come live from Redis on every
/// request anyway. Without it, browsing dominated PostgreSQL under the peak
/// mix (BENCHMARKS.md). Only rows that exist are kept, and each map is
/// bounded, so unknown ids cannot grow it.
pub struct CatalogCache {
    ttl: Duration,
    pub(crate) semesters: Timed<Arc<SemesterIndex>>,
    pub(crate) sections: Timed<catalog::Section>,
    /// How long an answered page of a semester's sections (live counts
    /// included) is shared between requests.
    pub(crate) live_ttl: Duration,
    /// Encoded pages by semester and query, for `live_ttl`.
    pub(crate) pages: Mutex<Pages>,
    /// One reader of a semester's rows at a time: when the cache expires
    /// under a browsing storm, one request reads PostgreSQL and the others
    /// wait for its result instead of each reading 20,000 rows.
    pub(crate) refresh: tokio::sync::Mutex<()>,
}

/// Values by id with the time they were read.
pub(crate) type Timed<T> = Mutex<HashMap<Uuid, (Instant, T)>>;

/// Entries per map before it is emptied (a bound, not an eviction policy:
/// a registrar has a few thousand sections).
const CACHE_ENTRIES: usize = 20_000;

/// Pages kept at once before the map is emptied: a semester of 20,000
/// sections has 200 pages of 100 per filter combination.
const PAGE_ENTRIES: usize = 4_096;

/// Bytes of pages kept at once before the map is emptied. Any cursor a
/// client makes up is a valid start, so the number of distinct pages is
/// the client's choice; what they may cost in memory is not.
const PAGE_BYTES: usize = 64 << 20;

/// The shared pages and what their bodies weigh together.
#[derive(Default)]
pub(crate) struct Pages {
    map: HashMap<PageKey, (Instant, Page)>,
    bytes: usize,
}

impl CatalogCache {
    pub fn new(ttl: Duration, live_ttl: Duration) -> Self {
        Self {
            ttl,
            semesters: Mutex::default(),
            sections: Mutex::default(),
            live_ttl,
            pages: Mutex::default(),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// Forgets everything (after an admin change).
    pub fn clear(&self) {
        lock(&self.semesters).clear();
        lock(&self.sections).clear();
        lock(&self.pages).clear();
    }

    pub(crate) fn get<T: Clone>(&self, map: &Timed<T>, id: Uuid) -> Option<T> {
        let map = lock(map);
        map.get(&id)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub(crate) fn put<T>(&self, map: &Timed<T>, id: Uuid, value: T) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = lock(map);
        if map.len() >= CACHE_ENTRIES {
            map.clear();
        }
        map.insert(id, (Instant::now(), value));
    }

    pub(crate) fn page(&self, key: &PageKey) -> Option<Page> {
        lock(&self.pages)
            .map
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.live_ttl)
            .map(|(_, page)| page.clone())
    }

    pub(crate) fn put_page(&self, key: PageKey, page: Page) {
        if self.live_ttl.is_zero() || self.ttl.is_zero() {
            return;
        }
        let mut pages = lock(&self.pages);
        let size = page.body.len();
        if pages.map.len() >= PAGE_ENTRIES || pages.bytes + size > PAGE_BYTES {
            pages.clear();
        }
        pages.bytes += size;
        if let Some((_, old)) = pages.map.insert(key, (Instant::now(), page)) {
            pages.bytes -= old.body.len();
        }
    }
}

impl Pages {
    fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What identifies one answered page: the semester and the normalised query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub semester: Uuid,
    pub query: PageQuery,
}

/// An encoded page and its validator.
#[derive(Debug, Clone)]
pub struct Page {
    pub body: Bytes,
    pub etag: HeaderValue,
}

impl Page {
    /// The validator is derived from the bytes: it moves exactly when a
    /// count, a row or the next cursor of the page does.
    pub fn new(body: Vec<u8>) -> Self {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&body);
        let etag = HeaderValue::from_str(&format!("\"{}\"", hex(&digest[..16])))
            .expect("a quoted hex string is a valid header value");
        Self {
            body: Bytes::from(body),
            etag,
        }
    }
}

/// A page request after validation. Filters are kept case-folded so that
/// `cs` and `CS` share one cached page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PageQuery {
    pub limit: usize,
    /// Rows after this key (the last row of the previous page).
    pub after: Option<SortKey>,
    /// Course codes starting with this, upper-cased.
    pub course_code: Option<String>,
    /// This department, lower-cased.
    pub department: Option<String>,
    /// Only sections with a free seat (live counts).
    pub open: bool,
}

/// Rows are ordered by course code, section number and id, compared
/// bytewise (not by PostgreSQL's collation), so a cursor finds its place by
/// binary search and pages never overlap or skip a row that stays.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SortKey {
    pub course_code: String,
    pub section_number: String,
    pub id: Uuid,
}

/// Separates the key's fields in a cursor: no course code or section
/// number holds a control character (admin input refuses them).
const CURSOR_SEPARATOR: char = '\u{1f}';

/// The longest cursor accepted: far above any real key, far below the
/// URI limit, so a cursor cannot make a cached page key large.
pub const MAX_CURSOR_LEN: usize = 1024;

impl SortKey {
    fn of(section: &catalog::Section) -> Self {
        Self {
            course_code: section.course_code.clone(),
            section_number: section.section_number.clone(),
            id: section.id,
        }
    }

    /// The opaque cursor clients pass back: the key, hex-encoded.
    pub fn cursor(&self) -> String {
        hex(format!(
            "{}{CURSOR_SEPARATOR}{}{CURSOR_SEPARATOR}{}",
            self.course_code, self.section_number, self.id
        )
        .as_bytes())
    }

    /// Reads a cursor back; `None` when it is not one this server made.
    pub fn from_cursor(cursor: &str) -> Option<Self> {
        if cursor.len() > MAX_CURSOR_LEN || cursor.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..cursor.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(cursor.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.split(CURSOR_SEPARATOR);
        let (code, number, id) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            course_code: code.to_string(),
            section_number: number.to_string(),
            id: Uuid::try_parse(id).ok()?,
        })
    }
}

/// A semester's sections as the browse side serves them: sorted by
/// [`SortKey`], each row's unchanging part already encoded so that a page
/// costs a copy per row plus its live counts.
pub struct SemesterIndex {
    rows: Vec<IndexedSection>,
}

pub struct IndexedSection {
    key: SortKey,
    /// The row with PostgreSQL's persisted counts, shown when Redis is away.
    pub section: catalog::Section,
    /// `{"id":…,"is_active":…` : every field but the counts, and no `}`.
    prefix: Box<[u8]>,
    course_code_upper: String,
    department_lower: String,
}

/// The fields of a row that do not move with registrations, in the order
/// they are written (the counts follow).
#[derive(Serialize)]
struct StaticFields<'a> {
    id: Uuid,
    course_id: Uuid,
    course_code: &'a str,
    course_name: &'a str,
    credits: i32,
    department: &'a str,
    semester_id: Uuid,
    section_number: &'a str,
    instructor: &'a str,
    schedule: &'a str,
    room: &'a str,
    waitlist_limit: i32,
    waitlist_mode: &'a str,
    offer_ttl_secs: i32,
    is_active: bool,
}

impl SemesterIndex {
    pub fn new(sections: Vec<catalog::Section>) -> Self {
        let mut rows: Vec<IndexedSection> = sections
            .into_iter()
            .map(|section| {
                let mut prefix = serde_json::to_vec(&StaticFields {
                    id: section.id,
                    course_id: section.course_id,
                    course_code: &section.course_code,
                    course_name: &section.course_name,
                    credits: section.credits,
                    department: &section.department,
                    semester_id: section.semester_id,
                    section_number: &section.section_number,
                    instructor: &section.instructor,
                    schedule: &section.schedule,
                    room: &section.room,
                    waitlist_limit: section.waitlist_limit,
                    waitlist_mode: &section.waitlist_mode,
                    offer_ttl_secs: section.offer_ttl_secs,
                    is_active: section.is_active,
                })
                .expect("plain fields encode");
                prefix.pop(); // the closing brace; the counts follow
                IndexedSection {
                    key: SortKey::of(&section),
                    course_code_upper: section.course_code.to_uppercase(),
                    department_lower: section.department.to_lowercase(),
                    prefix: prefix.into_boxed_slice(),
                    section,
                }
            })
            .collect();
        rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Self { rows }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Where a page starts: the first row after the cursor's key (the key's
    /// row may be gone since; the order still places the next one).
    pub fn start(&self, after: Option<&SortKey>) -> usize {
        after.map_or(0, |after| self.rows.partition_point(|r| &r.key <= after))
    }

    /// Rows from `from` on that pass the query's filters other than `open`
    /// (which needs live counts), with their positions.
    pub fn matching<'a>(
        &'a self,
        from: usize,
        query: &'a PageQuery,
    ) -> impl Iterator<Item = (usize, &'a IndexedSection)> + 'a {
        self.rows
            .iter()
            .enumerate()
            .skip(from)
            .filter(move |(_, row)| {
                query
                    .course_code
                    .as_deref()
                    .is_none_or(|prefix| row.course_code_upper.starts_with(prefix))
                    && query
                        .department
                        .as_deref()
                        .is_none_or(|d| row.department_lower == d)
            })
    }

    pub fn row(&self, at: usize) -> &IndexedSection {
        &self.rows[at]
    }
}

impl IndexedSection {
    pub fn key(&self) -> &SortKey {
        &self.key
    }
}

/// Free seats a row shows: live when Redis answered, persisted otherwise.
pub fn seats_available(row: &IndexedSection, live: Option<&LiveCounts>) -> i64 {
    live.map_or(i64::from(row.section.seats_available), |l| {
        l.seats_available
    })
}

/// Encodes `{"items":[…],"next_cursor":…}` from prepared rows and their
/// counts, in the field set of `Section` in docs/openapi.json.
pub fn encode_page(
    rows: &[(&IndexedSection, Option<LiveCounts>)],
    next: Option<&SortKey>,
) -> Vec<u8> {
    let per_row = rows.first().map_or(0, |(r, _)| r.prefix.len() + 112);
    let mut out = Vec::with_capacity(32 + rows.len() * per_row);
    out.extend_from_slice(b"{\"items\":[");
    for (i, (row, live)) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&row.prefix);
        let s = &row.section;
        let (total, enrolled, available, waitlist, offered, is_live) = match live {
            Some(l) => (
                l.capacity,
                l.enrolled,
                l.seats_available,
                l.waitlist_length,
                l.seats_offered,
                true,
            ),
            None => (
                i64::from(s.total_seats),
                i64::from(s.enrolled),
                i64::from(s.seats_available),
                i64::from(s.waitlist_length),
                i64::from(s.seats_offered),
                false,
            ),
        };
        write!(
            out,
            ",\"total_seats\":{total},\"enrolled\":{enrolled},\"seats_available\":{},\
             \"waitlist_length\":{waitlist},\"seats_offered\":{offered},\"live\":{is_live}}}",
            available.max(0)
        )
        .expect("writing to a Vec cannot fail");
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    match next {
        Some(key) => write!(out, "\"{}\"", key.cursor()).expect("writing to a Vec cannot fail"),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(code: &str, number: &str, department: &str) -> catalog::Section {
        catalog::Section {
            id: Uuid::now_v7(),
            course_id: Uuid::now_v7(),
            course_code: code.into(),
            course_name: format!("Course \"{code}\""),
            credits: 3,
            department: department.into(),
            semester_id: Uuid::nil(),
            section_number: number.into(),
            instructor: "Ada".into(),
            schedule: "MWF 09:00-09:50".into(),
            room: "R1".into(),
            total_seats: 30,
            enrolled: 10,
            seats_available: 20,
            waitlist_limit: 5,
            waitlist_length: 0,
            seats_offered: 0,
            waitlist_mode: "auto".into(),
            offer_ttl_secs: 86400,
            is_active: true,
            live: false,
        }
    }

    #[test]
    fn shared_pages_are_bounded_in_bytes_and_replacing_one_does_not_count_twice() {
        let cache = CatalogCache::new(Duration::from_secs(60), Duration::from_secs(60));
        let key = |i: usize| PageKey {
            semester: Uuid::nil(),
            query: PageQuery {
                limit: i,
                ..PageQuery::default()
            },
        };
        let page = || Page::new(vec![b' '; 1 << 20]);
        for _ in 0..3 {
            cache.put_page(key(0), page());
        }
        assert_eq!(lock(&cache.pages).bytes, 1 << 20);
        for i in 1..=PAGE_BYTES >> 20 {
            cache.put_page(key(i), page());
        }
        let pages = lock(&cache.pages);
        assert!(pages.bytes <= PAGE_BYTES, "{} bytes kept", pages.bytes);
        assert_eq!(pages.bytes, pages.map.len() << 20);
        assert!(
            pages.map.contains_key(&key(PAGE_BYTES >> 20)),
            "the newest stays"
        );
    }

    #[test]
    fn a_cursor_reads_back_to_its_key_and_foreign_cursors_do_not() {
        let key = SortKey {
            course_code: "CS101".into(),
            section_number: "002".into(),
            id: Uuid::now_v7(),
        };
        assert_eq!(SortKey::from_cursor(&key.cursor()), Some(key));
        for bad in ["", "zz", "abc", &hex(b"CS101\x1f002"), &"ab".repeat(600)] {
            assert_eq!(SortKey::from_cursor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pages_follow_the_bytewise_order_and_a_vanished_cursor_row_still_places_the_next() {
        let index = SemesterIndex::new(vec![
            section("MA201", "001", "Maths"),
            section("CS101", "002", "Computing"),
            section("CS101", "001", "Computing"),
            section("cs050", "001", "Computing"),
        ]);
        let codes: Vec<_> = (0..index.len())
            .map(|i| {
                let k = index.row(i).key();
                format!("{} {}", k.course_code, k.section_number)
            })
            .collect();
        assert_eq!(codes, ["CS101 001", "CS101 002", "MA201 001", "cs050 001"]);
        let gone = SortKey {
            course_code: "CS101".into(),
            section_number: "0015".into(),
            id: Uuid::nil(),
        };
        assert_eq!(index.start(Some(&gone)), 1);
        assert_eq!(index.start(Some(index.row(3).key())), 4);
        assert_eq!(index.start(None), 0);
    }

    #[test]
    fn filters_match_a_course_code_prefix_and_a_department_case_insensitively() {
        let index = SemesterIndex::new(vec![
            section("CS101", "001", "Computing"),
            section("cs050", "001", "Computing"),
            section("MA201", "001", "Maths"),
        ]);
        let query = PageQuery {
            course_code: Some("CS".into()),
            ..PageQuery::default()
        };
        assert_eq!(index.matching(0, &query).count(), 2);
        let query = PageQuery {
            department: Some("maths".into()),
            ..PageQuery::default()
        };
        let found: Vec<_> = index.matching(0, &query).map(|(i, _)| i).collect();
        assert_eq!(found, [1]);
        assert_eq!(index.matching(2, &PageQuery::default()).count(), 1);
    }

    #[test]
    fn an_encoded_page_is_json_with_every_field_of_a_section() {
        let index = SemesterIndex::new(vec![
            section("CS101", "001", "Computing"),
            section("CS102", "001", "Computing"),
        ]);
        let live = LiveCounts {
            capacity: 30,
            seats_available: 0,
            enrolled: 29,
            waitlist_length: 2,
            seats_offered: 1,
        };
        let rows = [(index.row(0), Some(live)), (index.row(1), None)];
        let body = encode_page(&rows, Some(index.row(1).key()));
        let page: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        let expected = serde_json::to_value(&index.row(1).section).unwrap();
        assert_eq!(items[1], expected, "the persisted row, field for field");
        assert_eq!(items[0]["course_name"], "Course \"CS101\"");
        assert_eq!(items[0]["seats_available"], 0);
        assert_eq!(items[0]["waitlist_length"], 2);
        assert_eq!(items[0]["seats_offered"], 1);
        assert_eq!(items[0]["live"], true);
        assert_eq!(
            SortKey::from_cursor(page["next_cursor"].as_str().unwrap()).as_ref(),
            Some(index.row(1).key())
        );
        let last = encode_page(&rows[..1], None);
        let last: serde_json::Value = serde_json::from_slice(&last).unwrap();
        assert!(last["next_cursor"].is_null());
    }
}
