//! What a student's tokens vouch for: the copy each server checks is in
//! Redis (`seats::access`), the truth in PostgreSQL (sql/0006_student_access.sql).

/// The version a gone account's record carries: above any real version
/// (they count changes of one account), and exact in Lua's doubles.
pub const GONE_VERSION: i64 = (1 << 53) - 1;

/// A student's own facts the registration rules read (sql/0009): part of
/// their access record, so one version and one copy cover both.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StudentFacts {
    /// (semester, priority group code)
    pub groups: Vec<(uuid::Uuid, String)>,
    /// (semester, the student's own credit limit)
    pub credit_limits: Vec<(uuid::Uuid, i32)>,
    /// (section, rule a permit waives), by section
    pub permits: Vec<(uuid::Uuid, String)>,
    /// Completed course ids.
    pub completed: Vec<uuid::Uuid>,
}

/// One student's access record, as PostgreSQL has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    /// `students.access_version`: grows with every change of the record.
    pub version: i64,
    /// Tokens minted with an older epoch are refused.
    pub epoch: i64,
    /// A hold that blocks registration, if any.
    pub hold: Option<String>,
    /// The account does not exist (deleted, or never did).
    pub gone: bool,
    /// What the registration rules need of the student.
    pub facts: StudentFacts,
    /// Sections PostgreSQL has the student enrolled or waitlisted in: their
    /// schedule in Redis starts from these when Redis has none
    /// (`lua/access_set.lua`).
    pub places: Vec<uuid::Uuid>,
    /// enrollment_status is active. A student who stops being active (or
    /// gets a hold) leaves their waitlists (`lua/access_set.lua`).
    pub may_register: bool,
}

impl AccessRecord {
    /// The record of an account PostgreSQL does not have.
    pub fn gone() -> Self {
        Self {
            version: GONE_VERSION,
            epoch: GONE_VERSION,
            hold: None,
            gone: true,
            facts: StudentFacts::default(),
            places: Vec::new(),
            may_register: false,
        }
    }
}

impl AccessRecord {
    /// Whether a token minted with `epoch` still stands against this record.
    pub fn admits(&self, epoch: i64) -> bool {
        !self.gone && epoch >= self.epoch
    }
}
