//! What the clients measure: latency histograms and error counts per kind of operation.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use kvclient::Error;
use tokio::time::Instant;

use super::target::Got;

/// Highest latency a histogram tracks, in microseconds (larger values are clamped to it).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// The outcome statistics of one kind of operation.
#[derive(Debug, Clone)]
pub(super) struct OpStats {
    /// Latencies of successful operations, in microseconds.
    pub(super) latency: Histogram<u64>,
    /// Failed operations by kind.
    pub(super) errors: BTreeMap<String, u64>,
}

impl OpStats {
    /// Empty statistics.
    pub(super) fn new() -> Result<OpStats, String> {
        Ok(OpStats {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .map_err(|e| format!("cannot create a histogram: {e}"))?,
            errors: BTreeMap::new(),
        })
    }

    /// Adds another client's statistics.
    pub(super) fn merge(&mut self, other: &OpStats) {
        // Same bounds on both sides: addition cannot fail.
        let _ = self.latency.add(&other.latency);
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
    }

    /// Records one successful operation.
    pub(super) fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(micros.max(1));
    }

    /// Records one failed operation.
    pub(super) fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }
}

/// What one client (or all of them, merged) measured.
#[derive(Debug, Clone)]
pub(super) struct LoadStats {
    /// Reads.
    pub(super) read: OpStats,
    /// Writes.
    pub(super) write: OpStats,
    /// Successful reads of an absent or deleted key.
    pub(super) not_found: u64,
    /// Most live siblings one read returned.
    pub(super) max_siblings: u64,
    /// Reads that returned more than one live sibling.
    pub(super) multi_sibling_reads: u64,
    /// When the last measured operation completed.
    pub(super) last_done: Option<Instant>,
}

impl LoadStats {
    /// Empty statistics.
    pub(super) fn new() -> Result<LoadStats, String> {
        Ok(LoadStats {
            read: OpStats::new()?,
            write: OpStats::new()?,
            not_found: 0,
            max_siblings: 0,
            multi_sibling_reads: 0,
            last_done: None,
        })
    }

    /// Counts what a successful read found.
    pub(super) fn saw(&mut self, got: Got) {
        match got {
            Got::Found { live } => {
                self.max_siblings = self.max_siblings.max(live);
                if live > 1 {
                    self.multi_sibling_reads += 1;
                }
            }
            Got::Missing => self.not_found += 1,
        }
    }

    /// Adds another client's statistics.
    pub(super) fn merge(&mut self, other: &LoadStats) {
        self.read.merge(&other.read);
        self.write.merge(&other.write);
        self.not_found += other.not_found;
        self.max_siblings = self.max_siblings.max(other.max_siblings);
        self.multi_sibling_reads += other.multi_sibling_reads;
        self.last_done = self.last_done.max(other.last_done);
    }
}

/// The error kind an operation is counted under: `STATUS CODE` for an error answer, `timeout`, `connect`
/// or `transport` for a request that got no answer, `invalid response` for a broken one.
pub(crate) fn error_kind(error: &Error) -> String {
    match error {
        Error::Server { status, body } => format!("{status} {}", body.error),
        Error::Http(e) if e.is_timeout() => "timeout".to_owned(),
        Error::DeadlineExceeded { .. } => "timeout".to_owned(),
        Error::Http(e) if e.is_connect() => "connect".to_owned(),
        Error::Http(_) => "transport".to_owned(),
        Error::InvalidResponse(_) => "invalid response".to_owned(),
        Error::BadEndpoint { .. }
        | Error::InvalidKey(_)
        | Error::InvalidContext(_)
        | Error::BadToken(_)
        | Error::Tls(_) => "client".to_owned(),
    }
}
