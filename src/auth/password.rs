//! Argon2id password hashing, always off the async worker threads and with a
//! bound on how many run at once (each takes ~19 MiB and tens of ms of CPU).

use std::sync::Arc;

use anyhow::Context;
use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use tokio::sync::Semaphore;

/// Hashes a password with Argon2id's default (OWASP-recommended) parameters.
/// Blocking: call it from a blocking thread or a CLI.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("failed to hash a password: {e}"))
}

fn verify_blocking(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Verifies and hashes passwords on the blocking pool, a bounded number at a time.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// Hash checked when the account does not exist, so that an unknown
    /// student number costs as much time as a wrong password (no user
    /// enumeration by timing).
    dummy_hash: Arc<str>,
}

impl Passwords {
    pub fn new(max_concurrent: usize) -> anyhow::Result<Self> {
        Ok(Self {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            dummy_hash: hash_password("dummy password for timing equalisation")?.into(),
        })
    }

    /// True when `password` matches `hash`; with `None` the work is still done.
    pub async fn verify(&self, hash: Option<String>, password: String) -> anyhow::Result<bool> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("password hashing stopped")?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let ok = tokio::task::spawn_blocking(move || verify_blocking(&hash, &password))
            .await
            .context("password verification task failed")?;
        Ok(ok && known)
    }

    /// Hashes on the blocking pool.
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("password hashing stopped")?;
        tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .context("password hashing task failed")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_nothing_else() {
        let p = Passwords::new(2).unwrap();
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(p
            .verify(Some(h.clone()), "correct horse".into())
            .await
            .unwrap());
        assert!(!p.verify(Some(h), "wrong".into()).await.unwrap());
        assert!(!p.verify(None, "correct horse".into()).await.unwrap());
        assert!(!p
            .verify(Some("not a phc string".into()), "x".into())
            .await
            .unwrap());
    }
}
