//! The health of the write-ahead log.
//!
//! After one failed sync nothing written since can be trusted to reach the disk, and a retried sync
//! may report success for pages the kernel has already dropped (PostgreSQL's "fsyncgate"). So a
//! failure is final until the process restarts: every write is refused with a clear message and the
//! node reports itself unready, rather than acknowledging writes it may lose.

use std::sync::{Arc, OnceLock};

use crate::error::Error;
use crate::metrics::Metrics;

/// Whether a sync (or a write) of the write-ahead log has failed since the node started.
pub(super) struct WalHealth {
    failure: OnceLock<String>,
    metrics: Arc<Metrics>,
}

impl WalHealth {
    /// A healthy log.
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        WalHealth {
            failure: OnceLock::new(),
            metrics,
        }
    }

    /// True once a sync or write of the log has failed.
    pub(super) fn failed(&self) -> bool {
        self.failure.get().is_some()
    }

    /// `Ok` while the log is healthy; otherwise the error every write gets.
    pub(super) fn check(&self) -> Result<(), Error> {
        match self.failure.get() {
            None => Ok(()),
            Some(cause) => Err(refused(cause)),
        }
    }

    /// Passes on the outcome of a write or sync; an I/O error marks the log failed for good.
    pub(super) fn watch<T>(&self, outcome: Result<T, rocksdb::Error>) -> Result<T, Error> {
        outcome.map_err(|e| {
            if e.kind() != rocksdb::ErrorKind::IOError {
                return Error::Storage(e);
            }
            self.metrics.wal_sync_failures.inc();
            let cause = self.failure.get_or_init(|| e.to_string());
            tracing::error!(error = %e, "write-ahead log failed: refusing writes until restarted");
            refused(cause)
        })
    }
}

fn refused(cause: &str) -> Error {
    Error::Unavailable(format!(
        "writes refused: a sync of the write-ahead log failed ({cause}); restart the node once \
         its disk is healthy"
    ))
}
