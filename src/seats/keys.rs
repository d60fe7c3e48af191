//! Redis key naming. Every key of one section shares the hash tag
//! `{s:<id>}`, so each script touches one slot (Redis Cluster ready);
//! student-scoped keys use `{u:<id>}`.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::hex;

/// The keys of one section, in the order the scripts take them.
pub struct SectionKeys {
    pub meta: String,
    pub seats: String,
    pub enrolled: String,
    pub waitlist: String,
    pub seq: String,
    pub outbox: String,
    pub reverted: String,
    pub undone: String,
    /// Enrolled student → sequence of the event that gave them their seat.
    pub since: String,
    /// Student → highest claim stamp judged (`lua/judge.lua`).
    pub fence: String,
    /// Waitlisted student → deadline of the seat held for them
    /// (`lua/lib/seat.lua`).
    pub offers: String,
}

impl SectionKeys {
    pub fn new(namespace: &str, section: Uuid) -> Self {
        let tag = format!("{namespace}:{{s:{section}}}");
        Self {
            meta: format!("{tag}:meta"),
            seats: format!("{tag}:seats"),
            enrolled: format!("{tag}:enrolled"),
            waitlist: format!("{tag}:waitlist"),
            seq: format!("{tag}:seq"),
            outbox: format!("{tag}:outbox"),
            reverted: format!("{tag}:reverted"),
            undone: format!("{tag}:undone"),
            since: format!("{tag}:since"),
            fence: format!("{tag}:fence"),
            offers: format!("{tag}:offers"),
        }
    }

    /// The six keys every section script starts with.
    pub fn core(&self) -> [&str; 6] {
        [
            &self.meta,
            &self.seats,
            &self.enrolled,
            &self.waitlist,
            &self.seq,
            &self.outbox,
        ]
    }
}

/// Sections a student has touched through this service (for their views).
pub fn student_sections(namespace: &str, student: Uuid) -> String {
    format!("{namespace}:{{u:{student}}}:sections")
}

/// One idempotency record of a student; the client's key is hashed so any
/// bytes are safe in a key name.
pub fn idempotency(namespace: &str, student: Uuid, key_hash: &str) -> String {
    format!("{namespace}:{{u:{student}}}:idem:{key_hash}")
}

/// A student's rate-limit bucket (every authenticated request).
pub fn student_rate(namespace: &str, student: Uuid) -> String {
    format!("{namespace}:{{u:{student}}}:rate")
}

/// What a student's tokens vouch for now (`lua/access.lua`).
pub fn student_access(namespace: &str, student: Uuid) -> String {
    format!("{namespace}:{{u:{student}}}:access")
}

/// The courses a student has completed (ids), beside their access record.
pub fn student_completed(namespace: &str, student: Uuid) -> String {
    format!("{namespace}:{{u:{student}}}:done")
}

/// What a student holds and has claimed, per section (`lua/claim.lua`).
pub fn student_schedule(namespace: &str, student: Uuid) -> String {
    format!("{namespace}:{{u:{student}}}:sched")
}

/// A client address's rate-limit bucket (every API request from it).
pub fn address_rate(namespace: &str, address: &str) -> String {
    format!("{namespace}:{{a:{address}}}:rate")
}

/// A client address's login bucket.
pub fn address_login(namespace: &str, address: &str) -> String {
    format!("{namespace}:{{a:{address}}}:login")
}

/// The keys of one account's login throttling (`lua/login_guard.lua`), seen
/// from one client address. The student number is hashed: it is
/// caller-chosen text (braces in it would move the hash slot) and unknown
/// numbers must be tracked exactly like known ones. All three share the
/// account's slot.
pub struct LoginKeys {
    /// Attempts and lock of this (account, address) pair.
    pub pair: String,
    /// The account's bucket across all addresses.
    pub account: String,
    /// Set while this address is one the account logged in from.
    pub known: String,
}

impl LoginKeys {
    pub fn new(namespace: &str, student_number: &str, address: &str) -> Self {
        let digest = Sha256::digest(student_number.trim().as_bytes());
        let tag = format!("{namespace}:{{l:{}}}", hex(&digest[..16]));
        Self {
            pair: format!("{tag}:login:{address}"),
            account: format!("{tag}:login"),
            known: format!("{tag}:known:{address}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_of_a_section_share_one_hash_tag() {
        let id = Uuid::nil();
        let keys = SectionKeys::new("ns", id);
        let tag = format!("{{s:{id}}}");
        let all = [
            keys.core().as_slice(),
            &[
                keys.reverted.as_str(),
                keys.undone.as_str(),
                keys.since.as_str(),
                keys.fence.as_str(),
                keys.offers.as_str(),
            ],
        ]
        .concat();
        for key in all {
            assert!(key.starts_with("ns:"), "{key}");
            assert_eq!(key.matches(&tag).count(), 1, "{key}");
        }
        assert!(student_sections("ns", id).contains(&format!("{{u:{id}}}")));
    }

    #[test]
    fn account_keys_hide_the_student_number_and_keep_one_slot() {
        let keys = LoginKeys::new("reg", "S{0000001}", "192.0.2.7");
        let tag = keys.account.clone();
        for key in [&keys.pair, &keys.account, &keys.known] {
            assert!(!key.contains("S{0000001}"), "{key}");
            assert_eq!(key.matches('{').count(), 1, "{key}");
            assert!(key.starts_with(&tag[..tag.find('}').unwrap() + 1]), "{key}");
        }
        assert_eq!(
            keys.pair,
            LoginKeys::new("reg", " S{0000001} ", "192.0.2.7").pair
        );
        assert_ne!(
            keys.pair,
            LoginKeys::new("reg", "S{0000001}", "192.0.2.8").pair
        );
    }
}
