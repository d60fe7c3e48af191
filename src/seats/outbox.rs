//! A section's outbox (`<ns>:{s:<id>}:outbox`, a stream with one entry
//! `<seq>-0` per event): reading it in sequence order, acknowledging what
//! PostgreSQL holds, and decoding events, whether they come from a stream
//! entry or from a script's reply (`lua/lib/emit.lua` returns each event
//! as the entry it appended, so one decoder serves both).

use std::collections::HashMap;

use redis::{streams::StreamRangeReply, RedisResult, Value};
use uuid::Uuid;

use super::Redis;
use crate::domain::{Event, EventKind, SectionConfig, WaitlistPolicy};

/// Persisted events of one section to remove from its outbox, and the
/// students they concern (for the live announcement).
pub struct Ack {
    pub section: Uuid,
    pub seqs: Vec<i64>,
    pub students: Vec<Uuid>,
}

/// A reply value as text (bulk or simple string, or an integer's digits).
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Builds an event from its sequence and a field lookup (the stream entry's
/// fields: kind, student, at; capacity/waitlist_limit/active and, since
/// offers, wl_mode/offer_ttl for config; until for offer).
fn decode(section: Uuid, seq: i64, field: impl Fn(&str) -> Option<String>) -> Option<Event> {
    let kind = EventKind::parse(&field("kind")?)?;
    let student = field("student").and_then(|s| Uuid::try_parse(&s).ok());
    let at_ms = field("at")?.parse().ok()?;
    let config = if kind == EventKind::Config {
        Some(SectionConfig {
            capacity: field("capacity")?.parse().ok()?,
            waitlist_limit: field("waitlist_limit")?.parse().ok()?,
            active: field("active")? == "1",
            waitlist: match (field("wl_mode"), field("offer_ttl")) {
                (Some(mode), Some(ttl)) => Some(WaitlistPolicy {
                    offer: mode == "offer",
                    offer_ttl_ms: ttl.parse().ok()?,
                }),
                _ => None,
            },
        })
    } else {
        None
    };
    if kind != EventKind::Config && student.is_none() {
        return None;
    }
    let offer_until_ms = if kind == EventKind::Offer {
        Some(field("until")?.parse().ok()?)
    } else {
        None
    };
    Some(Event {
        section,
        seq,
        kind,
        student,
        at_ms,
        config,
        offer_until_ms,
    })
}

/// Parses one stream entry (`"<seq>-0"` and its field/value pairs).
pub fn from_entry(section: Uuid, id: &str, fields: &HashMap<String, Value>) -> Option<Event> {
    let seq = id.split('-').next()?.parse().ok()?;
    decode(section, seq, |name| text(fields.get(name)?))
}

/// Parses the events a script returned: an array of
/// `{seq, kind, student, at, field, value, ...}` (see `lua/lib/emit.lua`).
/// None if any of them is malformed: the caller treats the whole reply as
/// a contract violation.
pub fn from_reply(section: Uuid, reply: &Value) -> Option<Vec<Event>> {
    let Value::Array(events) = reply else {
        return None;
    };
    events
        .iter()
        .map(|event| {
            let Value::Array(parts) = event else {
                return None;
            };
            let seq = text(parts.first()?)?.parse().ok()?;
            let mut fields: HashMap<String, String> = HashMap::with_capacity(3);
            fields.insert("kind".into(), text(parts.get(1)?)?);
            fields.insert("student".into(), text(parts.get(2)?)?);
            fields.insert("at".into(), text(parts.get(3)?)?);
            for pair in parts[4..].chunks(2) {
                if let [name, value] = pair {
                    fields.insert(text(name)?, text(value)?);
                }
            }
            decode(section, seq, |name| fields.get(name).cloned())
        })
        .collect()
}

impl Redis {
    /// Up to `count` outbox events of `section` from sequence `from` on, in order.
    pub async fn outbox_from(
        &self,
        section: Uuid,
        from: i64,
        count: usize,
    ) -> RedisResult<Vec<Event>> {
        self.outbox_range(section, format!("{from}-0"), "+".into(), count)
            .await
    }

    /// Up to `count` outbox events of `section` at or below sequence `until`
    /// (normally none: entries already in PostgreSQL whose removal was lost).
    pub async fn outbox_until(
        &self,
        section: Uuid,
        until: i64,
        count: usize,
    ) -> RedisResult<Vec<Event>> {
        self.outbox_range(section, "-".into(), format!("{until}-0"), count)
            .await
    }

    /// XRANGE of a section's outbox, decoded; an unreadable entry is logged
    /// and skipped.
    async fn outbox_range(
        &self,
        section: Uuid,
        start: String,
        end: String,
        count: usize,
    ) -> RedisResult<Vec<Event>> {
        let keys = self.section_keys(section);
        let mut conn = self.conn();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&keys.outbox)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(reply
            .ids
            .iter()
            .filter_map(|entry| {
                let event = from_entry(section, &entry.id, &entry.map);
                if event.is_none() {
                    tracing::error!(%section, id = %entry.id, "unreadable outbox entry skipped");
                }
                event
            })
            .collect())
    }

    /// Removes persisted events from a section's outbox.
    pub async fn ack(&self, section: Uuid, seqs: &[i64]) -> RedisResult<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let keys = self.section_keys(section);
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(&keys.outbox);
        for seq in seqs {
            cmd.arg(format!("{seq}-0"));
        }
        let mut conn = self.conn();
        cmd.query_async::<()>(&mut conn).await
    }

    /// [`Self::ack`] for many sections in one round trip (one per slot on a
    /// cluster): a batch spread over hundreds of sections would otherwise
    /// wait on one XDEL after another. When announcing (`live.enabled`),
    /// each section's XDEL is followed by the PUBLISH of the batch to its
    /// live channel ([`super::announce`]), in the same pipeline and slot.
    pub async fn ack_all(&self, acks: &[Ack]) -> RedisResult<()> {
        let groups: Vec<redis::Pipeline> = acks
            .iter()
            .filter(|ack| !ack.seqs.is_empty())
            .map(|ack| {
                let mut pipe = redis::pipe();
                let xdel = pipe
                    .cmd("XDEL")
                    .arg(self.section_keys(ack.section).outbox)
                    .ignore();
                for seq in &ack.seqs {
                    xdel.arg(format!("{seq}-0"));
                }
                if self.announce {
                    let last = ack.seqs.iter().max().copied().unwrap_or_default();
                    pipe.cmd("PUBLISH")
                        .arg(super::announce::channel(&self.namespace, ack.section))
                        .arg(super::announce::payload(last, ack.students.iter().copied()))
                        .ignore();
                }
                pipe
            })
            .collect();
        if groups.is_empty() {
            return Ok(());
        }
        self.per_slot(false, groups).await.map(drop)
    }

    /// Tells the instances that write `sections` that events of theirs wait
    /// in the outboxes (a wake, [`super::announce`]). Nothing when not announcing:
    /// the owners' sweepers find them then.
    pub async fn wake_writers(&self, sections: &[Uuid]) -> RedisResult<()> {
        if !self.announce || sections.is_empty() {
            return Ok(());
        }
        let groups = sections
            .iter()
            .map(|section| {
                let mut pipe = redis::pipe();
                pipe.cmd("PUBLISH")
                    .arg(super::announce::channel(&self.namespace, *section))
                    .arg(super::announce::WAKE)
                    .ignore();
                pipe
            })
            .collect();
        self.per_slot(false, groups).await.map(drop)
    }

    /// Removes outbox entries up to and including sequence `applied` (already
    /// in PostgreSQL; their acknowledgement was lost, e.g. to a crash
    /// between commit and XDEL).
    pub async fn trim_applied(&self, section: Uuid, applied: i64) -> RedisResult<()> {
        let keys = self.section_keys(section);
        let mut conn = self.conn();
        redis::cmd("XTRIM")
            .arg(&keys.outbox)
            .arg("MINID")
            .arg(format!("{}-0", applied + 1))
            .query_async(&mut conn)
            .await
    }

    /// For each section: the oldest outbox entry's (seq, time in unix ms) and
    /// the outbox length. One pipelined round trip on a bulk connection (one per slot at
    /// once on a cluster).
    pub async fn outbox_heads(
        &self,
        sections: &[Uuid],
    ) -> RedisResult<Vec<(Option<(i64, i64)>, u64)>> {
        let groups = sections
            .iter()
            .map(|section| {
                let keys = self.section_keys(*section);
                let mut pipe = redis::pipe();
                pipe.cmd("XRANGE")
                    .arg(&keys.outbox)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1);
                pipe.cmd("XLEN").arg(&keys.outbox);
                pipe
            })
            .collect();
        let replies = self.per_slot(true, groups).await?;
        let mut out = Vec::with_capacity(sections.len());
        for (i, pair) in replies.chunks(2).enumerate() {
            let head: StreamRangeReply = redis::from_redis_value(pair[0].clone())?;
            let len: u64 = redis::from_redis_value(pair[1].clone())?;
            let first = head
                .ids
                .first()
                .and_then(|e| from_entry(sections[i], &e.id, &e.map))
                .map(|e| (e.seq, e.at_ms));
            out.push((first, len));
        }
        Ok(out)
    }

    /// For each section: the seats its waitlist offers hold, and a lower
    /// bound of their earliest deadline (meta `offer_due`, Redis's clock;
    /// `lua/lib/seat.lua`). One pipelined round trip, like
    /// [`Redis::outbox_heads`].
    pub async fn offer_heads(&self, sections: &[Uuid]) -> RedisResult<Vec<(i64, Option<i64>)>> {
        let groups = sections
            .iter()
            .map(|section| {
                let keys = self.section_keys(*section);
                let mut pipe = redis::pipe();
                pipe.cmd("HLEN").arg(&keys.offers);
                pipe.cmd("HGET").arg(&keys.meta).arg("offer_due");
                pipe
            })
            .collect();
        let replies = self.per_slot(true, groups).await?;
        replies
            .chunks(2)
            .map(|pair| {
                Ok((
                    redis::from_redis_value(pair[0].clone())?,
                    redis::from_redis_value(pair[1].clone())?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn stream_entries_parse_into_events() {
        let section = Uuid::new_v4();
        let student = Uuid::new_v4();
        let e = from_entry(
            section,
            "7-0",
            &fields(&[
                ("kind", "enroll"),
                ("student", &student.to_string()),
                ("at", "1700"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (e.seq, e.kind, e.student, e.at_ms),
            (7, EventKind::Enroll, Some(student), 1700)
        );
        let c = from_entry(
            section,
            "8-0",
            &fields(&[
                ("kind", "config"),
                ("student", ""),
                ("at", "1"),
                ("capacity", "30"),
                ("waitlist_limit", "5"),
                ("active", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.config,
            Some(SectionConfig {
                capacity: 30,
                waitlist_limit: 5,
                active: true,
                waitlist: None,
            })
        );
        let o = from_entry(
            section,
            "9-0",
            &fields(&[
                ("kind", "offer"),
                ("student", &student.to_string()),
                ("at", "2"),
                ("until", "86402"),
            ]),
        )
        .unwrap();
        assert_eq!((o.kind, o.offer_until_ms), (EventKind::Offer, Some(86402)));
        let offer_without_deadline = fields(&[
            ("kind", "offer"),
            ("student", &student.to_string()),
            ("at", "2"),
        ]);
        assert!(from_entry(section, "9-0", &offer_without_deadline).is_none());
        assert!(from_entry(section, "9-0", &fields(&[("kind", "bogus"), ("at", "1")])).is_none());
        assert!(from_entry(section, "9-0", &fields(&[("kind", "drop"), ("at", "1")])).is_none());
    }

    #[test]
    fn script_replies_decode_like_the_entries_they_appended() {
        let section = Uuid::new_v4();
        let student = Uuid::new_v4();
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(4),
                bulk("drop"),
                bulk(&student.to_string()),
                bulk("1700"),
            ]),
            Value::Array(vec![
                Value::Int(5),
                bulk("config"),
                bulk(""),
                Value::Int(1701),
                bulk("capacity"),
                bulk("30"),
                bulk("waitlist_limit"),
                bulk("5"),
                bulk("active"),
                bulk("0"),
                bulk("wl_mode"),
                bulk("offer"),
                bulk("offer_ttl"),
                Value::Int(60000),
            ]),
        ]);
        let events = from_reply(section, &reply).unwrap();
        assert_eq!(
            (events[0].seq, events[0].kind, events[0].student),
            (4, EventKind::Drop, Some(student))
        );
        assert_eq!((events[1].seq, events[1].at_ms), (5, 1701));
        assert_eq!(
            events[1].config,
            Some(SectionConfig {
                capacity: 30,
                waitlist_limit: 5,
                active: false,
                waitlist: Some(WaitlistPolicy {
                    offer: true,
                    offer_ttl_ms: 60000
                }),
            })
        );
        let broken = Value::Array(vec![Value::Array(vec![Value::Int(1), bulk("enroll")])]);
        assert!(from_reply(section, &broken).is_none());
        assert_eq!(from_reply(section, &Value::Array(vec![])), Some(vec![]));
    }
}
