//! Outbox events: what the scripts append to a section's stream, and what
//! the persistence workers apply to PostgreSQL in sequence order. Both
//! sides share these values; how they are encoded in Redis lives in
//! `seats`, how they are written in PostgreSQL in `store`.

use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A seat taken by a newcomer.
    Enroll,
    /// A waitlist place taken.
    Waitlist,
    /// A seat given up (may be followed by a Promote).
    Drop,
    /// A waitlist place given up.
    Unwait,
    /// The waitlist head took a freed seat.
    Promote,
    /// An earlier event undone after its write failed for good.
    Revert,
    /// Capacity, waitlist limit, active flag or waitlist policy changed.
    Config,
    /// A freed seat held for a waitlisted student until a deadline
    /// ([`Event::offer_until_ms`]); they stay waitlisted until they accept
    /// (a Promote) or decline or let it lapse (an Unwait).
    Offer,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Enroll,
        EventKind::Waitlist,
        EventKind::Drop,
        EventKind::Unwait,
        EventKind::Promote,
        EventKind::Revert,
        EventKind::Config,
        EventKind::Offer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Enroll => "enroll",
            EventKind::Waitlist => "waitlist",
            EventKind::Drop => "drop",
            EventKind::Unwait => "unwait",
            EventKind::Promote => "promote",
            EventKind::Revert => "revert",
            EventKind::Config => "config",
            EventKind::Offer => "offer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "enroll" => EventKind::Enroll,
            "waitlist" => EventKind::Waitlist,
            "drop" => EventKind::Drop,
            "unwait" => EventKind::Unwait,
            "promote" => EventKind::Promote,
            "revert" => EventKind::Revert,
            "config" => EventKind::Config,
            "offer" => EventKind::Offer,
            _ => return None,
        })
    }
}

/// New section settings carried by a Config event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionConfig {
    pub capacity: i32,
    pub waitlist_limit: i32,
    pub active: bool,
    /// None in events written before sections had a waitlist policy.
    pub waitlist: Option<WaitlistPolicy>,
}

/// What a section does with a freed seat while students wait
/// (`lua/lib/seat.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitlistPolicy {
    /// true: hold it for the first in line for `offer_ttl_ms`; false
    /// (auto): enrol the first in line at once.
    pub offer: bool,
    pub offer_ttl_ms: i64,
}

/// One event of one section. Its identity is (section, seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub section: Uuid,
    pub seq: i64,
    pub kind: EventKind,
    /// Absent only for Config events.
    pub student: Option<Uuid>,
    /// When the script ran (unix ms).
    pub at_ms: i64,
    pub config: Option<SectionConfig>,
    /// An Offer's deadline (unix ms, Redis's clock).
    pub offer_until_ms: Option<i64>,
}

impl Event {
    /// A stable row id for what this event writes, so that a replay inserts nothing new.
    pub fn row_id(&self) -> Uuid {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(self.section.as_bytes());
        hasher.update(self.seq.to_be_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    /// A digest of what the event says (kind, student, time, settings),
    /// recorded with it in PostgreSQL: the same (section, seq) with another
    /// fingerprint is a different event reusing an applied sequence.
    pub fn fingerprint(&self) -> i64 {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(self.kind.as_str().as_bytes());
        hasher.update(self.student.map_or([0u8; 16], |s| *s.as_bytes()));
        hasher.update(self.at_ms.to_be_bytes());
        if let Some(c) = self.config {
            hasher.update(c.capacity.to_be_bytes());
            hasher.update(c.waitlist_limit.to_be_bytes());
            hasher.update([u8::from(c.active)]);
            if let Some(w) = c.waitlist {
                hasher.update([u8::from(w.offer)]);
                hasher.update(w.offer_ttl_ms.to_be_bytes());
            }
        }
        if let Some(until) = self.offer_until_ms {
            hasher.update(until.to_be_bytes());
        }
        let digest = hasher.finalize();
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_are_stable_per_section_and_sequence() {
        let e = |section, seq| Event {
            section,
            seq,
            kind: EventKind::Enroll,
            student: None,
            at_ms: 0,
            config: None,
            offer_until_ms: None,
        };
        let s = Uuid::new_v4();
        assert_eq!(e(s, 1).row_id(), e(s, 1).row_id());
        assert_ne!(e(s, 1).row_id(), e(s, 2).row_id());
        assert_ne!(e(s, 1).row_id(), e(Uuid::new_v4(), 1).row_id());
    }

    #[test]
    fn fingerprints_tell_different_events_at_one_sequence_apart() {
        let student = Uuid::new_v4();
        let e = |kind, at_ms| Event {
            section: Uuid::nil(),
            seq: 3,
            kind,
            student: Some(student),
            at_ms,
            config: None,
            offer_until_ms: None,
        };
        assert_eq!(
            e(EventKind::Enroll, 1).fingerprint(),
            e(EventKind::Enroll, 1).fingerprint()
        );
        assert_ne!(
            e(EventKind::Enroll, 1).fingerprint(),
            e(EventKind::Waitlist, 1).fingerprint()
        );
        assert_ne!(
            e(EventKind::Enroll, 1).fingerprint(),
            e(EventKind::Enroll, 2).fingerprint()
        );
    }
}
