//! Backups in object storage, shared by kvnode (which uploads its checkpoints and restores them) and
//! kvctl (which writes the cluster manifest, lists and deletes backups).
//!
//! - [`target`]: a target URL (`file:///dir`, `s3://bucket/prefix`) opened as an object store, and
//!   where each object of a backup lives in it;
//! - [`manifest`]: what a node's and a cluster's manifests say;
//! - [`transfer`]: uploads and downloads of files with a SHA-256 each, under a byte-rate limit.

pub use object_store;

pub mod manifest;
pub mod target;
pub mod transfer;

/// What can go wrong with a backup's objects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target URL or its settings are not usable.
    #[error("bad backup target: {0}")]
    BadTarget(String),
    /// An object the backup needs is not in the target.
    #[error("object {0} is missing from the backup target")]
    Missing(String),
    /// An object's bytes do not match its manifest.
    #[error("object {object} is corrupt: {detail}")]
    Corrupt {
        /// The object's path in the target.
        object: String,
        /// What does not match.
        detail: String,
    },
    /// The object store refused or failed an operation.
    #[error("object store: {0}")]
    Store(String),
    /// A local file could not be read or written.
    #[error("{0}")]
    Io(String),
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => Error::Missing(path),
            other => Error::Store(other.to_string()),
        }
    }
}

/// Makes ring rustls' process-wide crypto provider (reqwest is built without one), once; harmless
/// when a provider is already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
