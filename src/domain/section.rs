//! A section's state as the system of record holds it: what warm-up,
//! revalidation and reconcile load into (or compare with) Redis.

use uuid::Uuid;

use super::WaitlistPolicy;

/// A section as PostgreSQL holds it, for `load.lua`.
#[derive(Debug, Clone)]
pub struct SectionSnapshot {
    pub section: Uuid,
    pub capacity: i32,
    pub waitlist_limit: i32,
    /// The section's own flag (`sections.is_active`), what an admin sets.
    pub section_active: bool,
    /// Its semester's flag (`semesters.is_active`).
    pub semester_active: bool,
    pub registration_start_ms: i64,
    pub registration_end_ms: i64,
    pub last_seq: i64,
    pub enrolled: Vec<Uuid>,
    /// In position order.
    pub waitlisted: Vec<Uuid>,
    pub waitlist: WaitlistPolicy,
    /// Open offers: waitlisted students holding a seat, with its deadline
    /// (unix ms, Redis's clock).
    pub offers: Vec<(Uuid, i64)>,
}

impl SectionSnapshot {
    /// Whether the section takes registrations: it and its semester are
    /// both active. Redis enforces this combination (meta `active`), and
    /// keeps both flags so a change of one does not forget the other.
    pub fn active(&self) -> bool {
        self.section_active && self.semester_active
    }
}
