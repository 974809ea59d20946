//! The node's one error type. Each variant maps to exactly one HTTP status, in `http`.

use crate::causality::ContextError;
use crate::storage::codec::CodecError;

/// Everything that can go wrong while serving a request or running the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key is empty, too long or badly percent-encoded.
    #[error("bad key: {0}")]
    BadKey(String),
    /// A query parameter is unknown, malformed or out of range.
    #[error("bad parameter: {0}")]
    BadParameter(String),
    /// The causal context token was refused.
    #[error("bad context: {0}")]
    BadContext(#[from] ContextError),
    /// No such route.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The key is absent or deleted.
    #[error("key not found")]
    KeyNotFound,
    /// The route exists, the method does not.
    #[error("method {method} not allowed; allowed: {allow}")]
    MethodNotAllowed {
        /// The refused method.
        method: String,
        /// Value of the `Allow` header.
        allow: &'static str,
    },
    /// The write would exceed the sibling cap; `context` resolves the current siblings.
    #[error(
        "key already has {siblings} siblings (cap {cap}); write back with the current context to resolve them"
    )]
    TooManySiblings {
        /// Siblings currently stored.
        siblings: usize,
        /// The configured cap.
        cap: usize,
        /// Context token of the current state.
        context: String,
    },
    /// The body is larger than the value limit.
    #[error("value exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read.
    #[error("request body could not be read: {0}")]
    BadBody(String),
    /// The request deadline passed before the operation finished; a write may still have happened.
    #[error("deadline of {0:?} exceeded; a write may or may not have been applied")]
    DeadlineExceeded(std::time::Duration),
    /// A stored record or metadata does not decode.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// RocksDB failed.
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    /// The node cannot serve right now (starting or stopping).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A broken invariant or a failed background task.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Self {
        Error::Corrupt(e.to_string())
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("storage task failed: {e}"))
    }
}
