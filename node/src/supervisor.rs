//! The node's background tasks (peer pings, hint delivery, anti-entropy, transfers, file reloads,
//! WAL syncs), each run under a supervisor so that none stops silently.
//!
//! - A task that panics is logged, counted in `kv_background_task_restarts_total{task}` and started
//!   again after a backoff (doubling up to [`MAX_BACKOFF`]). A task that returns has ended on purpose
//!   (anti-entropy switched off, a failed WAL sync that already made storage refuse writes) and is
//!   not restarted.
//! - Shutdown asks every task to stop at its next round boundary ([`Stop`]) and waits for them within
//!   a bound; a task still busy then is aborted. Nothing here may lose data when aborted: every task
//!   works by idempotent merges that a restart redoes.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// Longest wait before a panicked task is started again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A task's view of shutdown: it checks or awaits this between rounds and returns once asked.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves once shutdown has begun.
    pub async fn requested(&mut self) {
        // A dropped sender means the supervisor is gone: that is a stop too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// True once shutdown has begun.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Runs `work` unless shutdown begins first; `None` when it did. Shutdown is polled first, not
    /// in tokio's random order, so a simulated run replays exactly.
    pub async fn unless_stopped<F: Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            () = self.requested() => None,
            output = work => Some(output),
        }
    }
}

/// Starts, restarts and stops the background tasks.
pub struct Supervisor {
    metrics: Arc<Metrics>,
    first_backoff: Duration,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Supervisor {
    /// A supervisor whose restarts wait `first_backoff`, doubling, before starting a task again.
    pub fn new(metrics: Arc<Metrics>, first_backoff: Duration) -> Self {
        Self {
            metrics,
            first_backoff,
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// Runs the task `name`, made by `start` again after every panic, until it returns or shutdown.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, start: F)
    where
        F: Fn(Stop) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let restarts = self
            .metrics
            .background_task_restarts
            .with_label_values(&[name]);
        let mut stop = Stop(self.stop.subscribe());
        let mut backoff = self.first_backoff;
        let handle = tokio::spawn(async move {
            loop {
                let Err(panic) = AssertUnwindSafe(start(stop.clone())).catch_unwind().await else {
                    tracing::debug!(task = name, "background task ended");
                    return;
                };
                restarts.inc();
                tracing::error!(
                    task = name,
                    panic = panic_message(panic.as_ref()),
                    restart_in = ?backoff,
                    "background task panicked; restarting it"
                );
                if stop
                    .unless_stopped(tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
        self.tasks.push((name, handle));
    }

    /// [`Supervisor::spawn`] for a task that is a method of a shared `owner`, such as
    /// `Handoff::deliver_forever`.
    pub fn spawn_method<T, Fut>(
        &mut self,
        name: &'static str,
        owner: Arc<T>,
        run: fn(Arc<T>, Stop) -> Fut,
    ) where
        T: Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, move |stop| run(owner.clone(), stop));
    }

    /// Asks every task to stop and waits at most `grace` for all of them; aborts those still running.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for (name, mut handle) in self.tasks {
            if tokio::time::timeout_at(deadline, &mut handle)
                .await
                .is_err()
            {
                tracing::warn!(
                    task = name,
                    ?grace,
                    "background task did not stop in time; aborted"
                );
                handle.abort();
            }
        }
    }
}

/// The text of a panic payload, when it has one.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn supervisor() -> (Supervisor, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        (
            Supervisor::new(metrics.clone(), Duration::from_millis(10)),
            metrics,
        )
    }

    #[tokio::test]
    async fn a_task_that_panics_is_counted_and_runs_again() {
        let (mut supervisor, metrics) = supervisor();
        let starts = Arc::new(AtomicU32::new(0));
        let rounds = Arc::new(AtomicU32::new(0));
        supervisor.spawn("flaky", {
            let (starts, rounds) = (starts.clone(), rounds.clone());
            move |mut stop| {
                let first = starts.fetch_add(1, Ordering::SeqCst) == 0;
                let rounds = rounds.clone();
                async move {
                    assert!(!first, "the first run dies");
                    while stop
                        .unless_stopped(tokio::time::sleep(Duration::from_millis(5)))
                        .await
                        .is_some()
                    {
                        rounds.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while rounds.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            rounds.load(Ordering::SeqCst) >= 3,
            "the restarted task runs"
        );
        assert_eq!(
            metrics
                .background_task_restarts
                .with_label_values(&["flaky"])
                .get(),
            1
        );
        supervisor.shutdown(Duration::from_secs(1)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn shutdown_waits_for_a_round_and_aborts_a_task_that_ignores_it() {
        let (mut supervisor, _) = supervisor();
        let finished_round = Arc::new(AtomicU32::new(0));
        supervisor.spawn("polite", {
            let finished_round = finished_round.clone();
            move |mut stop| {
                let finished_round = finished_round.clone();
                async move {
                    stop.requested().await;
                    // The round in flight when shutdown began still completes.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    finished_round.store(1, Ordering::SeqCst);
                }
            }
        });
        supervisor.spawn("deaf", |_stop| std::future::pending::<()>());
        let started = std::time::Instant::now();
        supervisor.shutdown(Duration::from_millis(300)).await;
        let took = started.elapsed();
        assert_eq!(finished_round.load(Ordering::SeqCst), 1, "drained");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "bounded by the grace: {took:?}"
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_is_not_restarted() {
        let (mut supervisor, metrics) = supervisor();
        let starts = Arc::new(AtomicU32::new(0));
        supervisor.spawn("once", {
            let starts = starts.clone();
            move |_stop| {
                starts.fetch_add(1, Ordering::SeqCst);
                async {}
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        supervisor.shutdown(Duration::from_secs(1)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert_eq!(
            metrics
                .background_task_restarts
                .with_label_values(&["once"])
                .get(),
            0
        );
    }
}
