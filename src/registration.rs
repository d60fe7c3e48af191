//! The registration service: what a register, drop or capacity change does,
//! step by step, independent of HTTP.
//!
//! For each section: load it from PostgreSQL first if Redis lacks it
//! (`sync::warmup::Loader`), run its Lua script (`seats`), then hand the
//! events the script appended to the persistence shards
//! (`sync::Persistence`, a non-blocking `try_send`). The events come from
//! the script's own reply, so what the shards write is exactly what the
//! outbox holds.
//!
//! A request naming several sections never answers an error after one of
//! them changed: every load happens before the first script runs (a failed
//! load changes nothing), and a section that cannot be decided once others
//! have changed gets its own result ([`Registered::Undecided`]).

use std::sync::Arc;

use futures_util::future::join_all;
use uuid::Uuid;

use crate::{
    seats::{Drop, Redis, Reserve, Resize, Scripted},
    sync::{warmup::Loader, Persistence},
};

/// Why a registration step could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// A section Redis lacks could not be loaded from PostgreSQL (or Redis
    /// refused the load): retry shortly.
    #[error("section could not be loaded: {0:#}")]
    SectionUnavailable(anyhow::Error),
    /// Redis failed (an outage, or a reply that breaks the scripts' contract).
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// One section's part of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// The section's script decided (never [`Reserve::NotLoaded`]).
    Decided(Reserve),
    /// Neither Redis nor PostgreSQL knows the section.
    Unknown,
    /// Not decided, and nothing changed for this section as far as this
    /// request knows: its state was gone from Redis when its script ran
    /// (dropped between the load and the script), or Redis failed on it
    /// while another section of the request changed. A retry decides it.
    Undecided,
}

/// Orchestrates seats → loader → persistence; cheap to share.
pub struct Registrar {
    redis: Redis,
    loader: Arc<Loader>,
    persistence: Persistence,
}

impl Registrar {
    pub fn new(redis: Redis, loader: Arc<Loader>, persistence: Persistence) -> Self {
        Self {
            redis,
            loader,
            persistence,
        }
    }

    /// Reserves a seat (or a waitlist place) for `student` in each of
    /// `sections`, in request order. With several sections, those Redis
    /// lacks are loaded first (an error then, with nothing changed); then
    /// the scripts of all sections run at once (they pipeline on the shared
    /// connection).
    pub async fn register(
        &self,
        student: Uuid,
        sections: &[Uuid],
        now_ms: i64,
    ) -> Result<Vec<Registered>, RegistrationError> {
        if let [section] = sections {
            return Ok(vec![self.register_one(student, *section, now_ms).await?]);
        }
        let loaded = self.redis.are_loaded(sections).await?;
        let missing: Vec<Uuid> = sections
            .iter()
            .zip(&loaded)
            .filter(|(_, loaded)| !**loaded)
            .map(|(s, _)| *s)
            .collect();
        let known = if missing.is_empty() {
            Vec::new()
        } else {
            self.ensure_loaded(&missing).await?
        };
        let unknown = |s: &Uuid| missing.contains(s) && !known.contains(s);
        let attempts = join_all(sections.iter().map(|s| async move {
            if unknown(s) {
                return Ok(None);
            }
            self.redis.reserve(*s, student, now_ms).await.map(Some)
        }))
        .await;
        let changed = attempts
            .iter()
            .any(|a| matches!(a, Ok(Some(scripted)) if !scripted.events.is_empty()));
        let mut outcomes = Vec::with_capacity(sections.len());
        let mut touched = Vec::new();
        for (section, attempt) in sections.iter().zip(attempts) {
            outcomes.push(match attempt {
                Ok(None) => Registered::Unknown,
                Ok(Some(scripted)) if scripted.outcome == Reserve::NotLoaded => {
                    Registered::Undecided
                }
                Ok(Some(scripted)) => {
                    if !scripted.events.is_empty() {
                        touched.push(*section);
                    }
                    Registered::Decided(self.persist(scripted))
                }
                // Nothing of the request changed yet: the error is the answer.
                Err(e) if !changed => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, %section, "section undecided after others changed");
                    Registered::Undecided
                }
            });
        }
        self.index(student, &touched).await;
        Ok(outcomes)
    }

    /// Remembers the sections `student` now holds a place in, for their
    /// views. Only an index: a failure leaves the registration standing.
    async fn index(&self, student: Uuid, sections: &[Uuid]) {
        if let Err(e) = self.redis.remember_sections(student, sections).await {
            tracing::warn!(error = %e, %student, "failed to index the student's sections");
        }
    }

    /// One section, the common case: no other section can have changed, so
    /// the script runs first and a missing section is loaded only when it
    /// says so (no extra round trip on the hot path).
    async fn register_one(
        &self,
        student: Uuid,
        section: Uuid,
        now_ms: i64,
    ) -> Result<Registered, RegistrationError> {
        let mut scripted = self.redis.reserve(section, student, now_ms).await?;
        if scripted.outcome == Reserve::NotLoaded {
            if self.ensure_loaded(&[section]).await?.is_empty() {
                return Ok(Registered::Unknown);
            }
            scripted = self.redis.reserve(section, student, now_ms).await?;
            if scripted.outcome == Reserve::NotLoaded {
                return Ok(Registered::Undecided);
            }
        }
        if !scripted.events.is_empty() {
            self.index(student, &[section]).await;
        }
        Ok(Registered::Decided(self.persist(scripted)))
    }

    /// Takes `student` off `section`'s roster or waitlist (the waitlist head
    /// takes a freed seat in the same step). None when the section does not
    /// exist.
    pub async fn drop(
        &self,
        section: Uuid,
        student: Uuid,
        now_ms: i64,
    ) -> Result<Option<Drop>, RegistrationError> {
        let mut outcome = self.redis.drop_student(section, student, now_ms).await?;
        if outcome.outcome == Drop::NotLoaded {
            if self.ensure_loaded(&[section]).await?.is_empty() {
                return Ok(None);
            }
            outcome = self.redis.drop_student(section, student, now_ms).await?;
        }
        Ok(Some(self.persist(outcome)))
    }

    /// Changes a section's capacity, waitlist limit or active flag
    /// (`resize.lua`: new seats go to the waitlist head first). The caller
    /// has made sure the section is loaded.
    pub async fn resize(
        &self,
        section: Uuid,
        capacity: Option<i32>,
        waitlist_limit: Option<i32>,
        active: Option<bool>,
        now_ms: i64,
    ) -> Result<Resize, RegistrationError> {
        let scripted = self
            .redis
            .resize(section, capacity, waitlist_limit, active, now_ms)
            .await?;
        Ok(self.persist(scripted))
    }

    /// Loads the sections Redis lacks from PostgreSQL; returns those that
    /// exist.
    pub async fn ensure_loaded(&self, sections: &[Uuid]) -> Result<Vec<Uuid>, RegistrationError> {
        self.loader
            .ensure(sections)
            .await
            .map_err(RegistrationError::SectionUnavailable)
    }

    /// Hands a script's events to their shard and returns its decision.
    fn persist<T>(&self, scripted: Scripted<T>) -> T {
        for event in scripted.events {
            self.persistence.submit(event);
        }
        scripted.outcome
    }
}
