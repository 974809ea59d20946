//! `--watchers K` (kvcluster): K long-polls of the prefix change feed (`GET /v1/watch?prefix=bench-`)
//! alongside the load, each resuming from its last cursor, counting the changed keys reported.
//!
//! The delay from a write's acknowledgement to its change arriving is not reported: the feed carries
//! keys only (no write identity), reports a key once per replica that applied it, and can report it
//! before the coordinator acknowledged the write, so no honest per-write delay follows from it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kvclient::Error;
use serde::Serialize;
use tokio::time::Instant;

use super::Shared;
use super::stats::error_kind;
use super::target::Backend;

/// The prefix every bench key has.
const PREFIX: &[u8] = b"bench-";
/// Longest wait of one feed call.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Pause after a failed call, so a failing node is not polled in a tight loop.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What the watchers saw during the measured phase.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct WatchReport {
    /// Concurrent watchers.
    pub(super) watchers: u32,
    /// Feed calls answered.
    pub(super) calls: u64,
    /// Changed keys reported, over all watchers (a key counts once per answer that names it).
    pub(super) changes: u64,
    /// Changed keys reported per second of measured time.
    pub(super) changes_per_sec: f64,
    /// Failed feed calls by kind (`410 cursor_gone` restarts the feed at the present).
    pub(super) errors: BTreeMap<String, u64>,
}

impl WatchReport {
    /// Adds another watcher's counts.
    pub(super) fn merge(&mut self, other: &WatchReport) {
        self.calls += other.calls;
        self.changes += other.changes;
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
    }
}

/// One watcher: follows the feed through the endpoint `index` picks until the end of the run.
pub(super) async fn watcher(shared: Arc<Shared>, index: usize) -> WatchReport {
    let mut report = WatchReport::default();
    let Backend::Kvcluster(clients) = &shared.backend else {
        return report;
    };
    let client = &clients[index % clients.len()];
    let mut cursor: Option<String> = None;
    loop {
        let now = Instant::now();
        if now >= shared.end {
            break;
        }
        let wait = shared.end.saturating_duration_since(now).min(MAX_WAIT);
        let outcome = client.changes(PREFIX, cursor.as_deref(), wait).await;
        let measuring = Instant::now() >= shared.measure_start;
        match outcome {
            Ok(changes) => {
                if measuring && cursor.is_some() {
                    report.calls += 1;
                    report.changes += changes.keys.len() as u64;
                }
                cursor = Some(changes.cursor);
            }
            Err(e) => {
                if measuring {
                    *report.errors.entry(error_kind(&e)).or_default() += 1;
                }
                if matches!(&e, Error::Server { status: 410, .. }) {
                    // A cursor the cluster no longer follows: start again at the present.
                    cursor = None;
                } else {
                    // Keep the cursor: the next call resumes where this one would have.
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
    report
}
