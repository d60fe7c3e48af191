//! Idempotency records (`<ns>:{u:<student>}:idem:<hash of the key>`, in the
//! student's slot): claimed by `lua/idempotency.lua` before a request runs,
//! then either completed with the answer (kept [`KEEP_SECS`]) or released so
//! a retry runs again. The HTTP rules around them (which answers are stored,
//! 409/422) are in `http::idempotency`.

use redis::RedisResult;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{keys, scripts, Redis};
use crate::domain::hex;

/// How long a finished answer is kept (SPEC §7: 24 h).
pub const KEEP_SECS: u64 = 24 * 3600;

/// One student's record for one client key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record(String);

/// What claiming a record found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Claimed: run the request, then complete or release the record.
    New,
    /// The key was used with another request.
    Mismatch,
    /// The first request with this key is still running.
    InFlight,
    /// The stored answer of the first request.
    Done { status: String, body: String },
}

impl Redis {
    /// The record of `student`'s idempotency `key`; the key is hashed, so any
    /// bytes are safe in a key name.
    pub fn idempotency_record(&self, student: Uuid, key: &str) -> Record {
        Record(keys::idempotency(
            self.namespace(),
            student,
            &hex(&Sha256::digest(key.as_bytes())),
        ))
    }

    /// Claims `record` for a request with `fingerprint`; a claim whose
    /// request never finishes (a crash) lapses after `running_ttl_secs`.
    pub async fn claim(
        &self,
        record: &Record,
        fingerprint: &str,
        running_ttl_secs: u64,
    ) -> RedisResult<Claim> {
        let reply: Vec<String> = self
            .scripts()
            .idempotency
            .key(&record.0)
            .arg(fingerprint)
            .arg(running_ttl_secs)
            .invoke_async(&mut self.conn())
            .await?;
        let mut parts = reply.into_iter();
        let claim = match (parts.next().as_deref(), parts.next(), parts.next()) {
            (Some("new"), None, None) => Claim::New,
            (Some("mismatch"), None, None) => Claim::Mismatch,
            (Some("in_flight"), None, None) => Claim::InFlight,
            (Some("done"), Some(status), Some(body)) => Claim::Done { status, body },
            (code, _, _) => return Err(scripts::unexpected("idempotency", &code)),
        };
        Ok(claim)
    }

    /// Stores the answer of the claimed request for [`KEEP_SECS`].
    pub async fn complete(&self, record: &Record, status: u16, body: &[u8]) -> RedisResult<()> {
        redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(&record.0)
            .arg("state")
            .arg("done")
            .arg("status")
            .arg(status)
            .arg("body")
            .arg(body)
            .ignore()
            .cmd("EXPIRE")
            .arg(&record.0)
            .arg(KEEP_SECS)
            .ignore()
            .query_async(&mut self.conn())
            .await
    }

    /// Frees the record, so a retry with the same key runs again.
    pub async fn release(&self, record: &Record) -> RedisResult<()> {
        redis::cmd("DEL")
            .arg(&record.0)
            .query_async(&mut self.conn())
            .await
    }
}
