//! The registration service: what a register, drop or capacity change does,
//! step by step, independent of HTTP.
//!
//! For each section: run its Lua script (`seats`), load the section from
//! PostgreSQL first if Redis lacks it (`sync::warmup::Loader`) and run the
//! script again, then hand the events the script appended to the
//! persistence shards (`sync::Persistence`, a non-blocking `try_send`). The
//! events come from the script's own reply, so what the shards write is
//! exactly what the outbox holds.

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
    /// `sections`, in request order. The scripts of all sections run at once
    /// (they pipeline on the shared connection); sections Redis lacks are
    /// loaded and tried once more; unknown ones stay `NotLoaded`.
    pub async fn register(
        &self,
        student: Uuid,
        sections: &[Uuid],
        now_ms: i64,
    ) -> Result<Vec<Reserve>, RegistrationError> {
        let mut outcomes: Vec<Scripted<Reserve>> = join_all(
            sections
                .iter()
                .map(|s| self.redis.reserve(*s, student, now_ms)),
        )
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
        let missing: Vec<Uuid> = sections
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.outcome == Reserve::NotLoaded)
            .map(|(s, _)| *s)
            .collect();
        if !missing.is_empty() {
            let known = self.ensure_loaded(&missing).await?;
            for (section, outcome) in sections.iter().zip(outcomes.iter_mut()) {
                if outcome.outcome == Reserve::NotLoaded && known.contains(section) {
                    *outcome = self.redis.reserve(*section, student, now_ms).await?;
                }
            }
        }
        let touched: Vec<Uuid> = sections
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| !o.events.is_empty())
            .map(|(s, _)| *s)
            .collect();
        let outcomes = outcomes
            .into_iter()
            .map(|scripted| self.persist(scripted))
            .collect();
        if let Err(e) = self.redis.remember_sections(student, &touched).await {
            // Only the student's listing index; the registration itself stands.
            tracing::warn!(error = %e, %student, "failed to index the student's sections");
        }
        Ok(outcomes)
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
