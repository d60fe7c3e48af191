//! What the persistence writers announce on a section's live channel, and
//! how it reads back: the wire format between the writers (`outbox.rs`,
//! after a commit) and every instance's live subscription (`src/live.rs`).
//! Beside the key names: the channel carries the section's hash tag, so on a
//! cluster the PUBLISH goes in the slot of the XDEL it follows.

use uuid::Uuid;

/// The channel a section's committed batches are announced on.
pub fn channel(namespace: &str, section: Uuid) -> String {
    format!("{namespace}:{{s:{section}}}:live")
}

/// The payload of one batch: the section's sequence after it, then the
/// students it changed, space-separated.
pub fn payload(seq: i64, students: impl IntoIterator<Item = Uuid>) -> String {
    let mut text = seq.to_string();
    for student in students {
        text.push(' ');
        text.push_str(&student.to_string());
    }
    text
}

/// What one message on a section's channel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Batch(Announcement),
    /// An instance that does not write the section took events of it: its
    /// writer should read the outbox now rather than at the next sweep.
    Wake(Uuid),
}

/// The payload of a [`Message::Wake`].
pub const WAKE: &str = "wake";

impl Message {
    /// Parses a message of `channel(namespace, _)`; None for anything else.
    pub fn parse(namespace: &str, channel: &str, payload: &str) -> Option<Self> {
        let id = channel
            .strip_prefix(namespace)?
            .strip_prefix(":{s:")?
            .strip_suffix("}:live")?;
        let section = Uuid::try_parse(id).ok()?;
        if payload == WAKE {
            return Some(Message::Wake(section));
        }
        let mut words = payload.split(' ');
        let seq = words.next()?.parse().ok()?;
        let students = words.map(Uuid::try_parse).collect::<Result<_, _>>().ok()?;
        Some(Message::Batch(Announcement {
            section,
            seq,
            students,
        }))
    }
}

/// A committed batch of one section, as a stream hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub section: Uuid,
    /// The section's sequence after the batch.
    pub seq: i64,
    pub students: Vec<Uuid>,
}
