//! Values that are valid by construction: parsing happens once, at the edge.

mod access;
mod event;
mod section;

use std::fmt;

pub use access::{AccessRecord, StudentFacts, GONE_VERSION};
pub use event::{Event, EventKind, SectionConfig, WaitlistPolicy};
pub use section::SectionSnapshot;

use serde::{Deserialize, Serialize};

/// What a caller may do. Students act on themselves; admins on anyone and on the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Student,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "student" => Some(Role::Student),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A student's standing; only `active` students may register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnrollmentStatus {
    Active,
    Inactive,
    Suspended,
    Graduated,
}

impl EnrollmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentStatus::Active => "active",
            EnrollmentStatus::Inactive => "inactive",
            EnrollmentStatus::Suspended => "suspended",
            EnrollmentStatus::Graduated => "graduated",
        }
    }
}

/// Wall-clock time in unix milliseconds: the clock every script, event and
/// lag figure uses.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A unix-ms instant as RFC 3339 in UTC with milliseconds, as the API
/// writes times (e.g. an offer's deadline).
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Lower-case hex of `bytes` (digests in keys, fingerprints, checksums),
/// without an allocation per byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Checks a free-text field: trimmed length within bounds, no control characters.
pub fn check_text(field: &'static str, value: &str, min: usize, max: usize) -> Result<(), String> {
    let len = value.trim().chars().count();
    if len < min || len > max {
        return Err(format!("{field} must be {min} to {max} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_checks_bound_length_and_refuse_control_characters() {
        assert!(check_text("name", "Ada", 1, 10).is_ok());
        assert!(check_text("name", "   ", 1, 10).is_err());
        assert!(check_text("name", "abcdefghijk", 1, 10).is_err());
        assert!(check_text("name", "a\u{0}b", 1, 10).is_err());
    }

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in [Role::Student, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
