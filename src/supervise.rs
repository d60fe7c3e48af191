//! Supervision of the background tasks the service cannot run without
//! (persistence shards, sweeper, revalidator, metrics upkeep).
//!
//! Each runs as its own tokio task under a watcher. If one ends while the
//! process is not stopping (it panicked, or returned when it should run
//! for ever), the watcher logs it, counts it
//! (`registrar_background_task_failures_total{task}`), marks the process failed —
//! `/ready` answers 503 from then on — and wakes [`Supervisor::failure`],
//! which `startup` races against the shutdown signal: the process then
//! shuts down gracefully and exits non-zero, so its orchestrator starts a
//! fresh one. Nothing is lost meanwhile: every event is in its section's
//! outbox, and the next process (or another instance) drains it.
//!
//! Stopping rather than restarting in place: a restarted shard would need
//! its queue rewired under the request path, and a task that panicked once
//! on some state may panic again on the same state; a clean process start
//! re-reads everything from Redis and PostgreSQL.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use tokio::{sync::Notify, task::JoinHandle};

use crate::metrics::TASK_FAILURES;

/// Watches background tasks; cheap to clone.
#[derive(Clone, Default)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Set when shutdown begins: tasks ending from then on end normally.
    stopping: AtomicBool,
    /// The first task that ended unexpectedly.
    failed: Mutex<Option<String>>,
    /// Wakes [`Supervisor::failure`].
    wake: Notify,
}

/// Aborts the supervised task when its watcher is aborted or dropped, so
/// that aborting the handle [`Supervisor::spawn`] returned stops the task.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` in the background under supervision. The returned handle
    /// completes when the task does; aborting it aborts the task.
    pub fn spawn<F>(&self, name: impl Into<String>, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        let name = name.into();
        // The series exists from the start, at zero.
        metrics::counter!(TASK_FAILURES, "task" => name.clone()).increment(0);
        tokio::spawn(async move {
            let mut task = AbortOnDrop(tokio::spawn(task));
            let outcome = (&mut task.0).await;
            if this.is_stopping() {
                return;
            }
            match outcome {
                Err(e) if e.is_panic() => {
                    tracing::error!(task = %name, error = %e, "background task panicked; stopping the process");
                }
                Err(e) => {
                    tracing::error!(task = %name, error = %e, "background task was cancelled; stopping the process");
                }
                Ok(()) => {
                    tracing::error!(task = %name, "background task ended unexpectedly; stopping the process");
                }
            }
            metrics::counter!(TASK_FAILURES, "task" => name.clone()).increment(1);
            this.fail(name);
        })
    }

    /// Shutdown has begun: tasks that end now are not failures.
    pub fn stopping(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    fn fail(&self, name: String) {
        let mut failed = self.inner.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.get_or_insert(name);
        drop(failed);
        self.inner.wake.notify_waiters();
        self.inner.wake.notify_one();
    }

    /// The first task that ended unexpectedly, if any.
    pub fn failed(&self) -> Option<String> {
        self.inner
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves with the name of the first task that ends unexpectedly.
    pub async fn failure(&self) -> String {
        loop {
            let woken = self.inner.wake.notified();
            if let Some(name) = self.failed() {
                return name;
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_reported_as_failed() {
        let supervisor = Supervisor::new();
        supervisor.spawn("doomed", async { panic!("boom") });
        let name = tokio::time::timeout(Duration::from_secs(5), supervisor.failure())
            .await
            .expect("the failure is reported");
        assert_eq!(name, "doomed");
        assert_eq!(supervisor.failed().as_deref(), Some("doomed"));
    }

    #[tokio::test]
    async fn a_task_that_returns_while_running_is_a_failure_but_not_while_stopping() {
        let supervisor = Supervisor::new();
        supervisor.spawn("early", async {}).await.unwrap();
        assert_eq!(supervisor.failed().as_deref(), Some("early"));

        let calm = Supervisor::new();
        calm.stopping();
        calm.spawn("drained", async {}).await.unwrap();
        assert_eq!(calm.failed(), None);
    }

    #[tokio::test]
    async fn aborting_the_handle_stops_the_task() {
        let supervisor = Supervisor::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = supervisor.spawn("forever", async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        supervisor.stopping();
        handle.abort();
        // The task's sender is dropped when the task is: the receiver ends.
        assert!(tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the task was stopped")
            .is_err());
    }
}
