//! Where blocking work (RocksDB, fsync) runs: tokio's blocking pool, or inline for a simulator
//! whose single thread must see every step in the same order on every run.

use crate::error::Error;

/// How blocking work is run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Offload {
    /// On tokio's blocking pool, so runtime workers never stall (the real node).
    #[default]
    Pool,
    /// On the calling task, deterministic but blocking its thread (the simulator).
    Inline,
}

impl Offload {
    /// Runs `work` as this mode says.
    pub async fn run<T: Send + 'static>(
        self,
        work: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        match self {
            Offload::Pool => tokio::task::spawn_blocking(work).await?,
            Offload::Inline => work(),
        }
    }
}
