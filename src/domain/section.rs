//! A section's state as the system of record holds it: what warm-up,
//! revalidation and reconcile load into (or compare with) Redis.

use uuid::Uuid;

/// A section as PostgreSQL holds it, for `load.lua`.
#[derive(Debug, Clone)]
pub struct SectionSnapshot {
    pub section: Uuid,
    pub capacity: i32,
    pub waitlist_limit: i32,
    pub active: bool,
    pub registration_start_ms: i64,
    pub registration_end_ms: i64,
    pub last_seq: i64,
    pub enrolled: Vec<Uuid>,
    /// In position order.
    pub waitlisted: Vec<Uuid>,
}
