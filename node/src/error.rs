//! The node's one error type. Each variant maps to exactly one HTTP status, in `http`.

use crate::causality::CausalityError;
use crate::context_token::ContextError;
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
    /// The write cannot be given a fresh dot within the causality bounds.
    #[error("write refused: {0}")]
    Causality(#[from] CausalityError),
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
    /// The body did not arrive within the body read timeout.
    #[error("request body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// The key's record would exceed the per-record byte cap (siblings times the value limit).
    #[error("record of {bytes} bytes exceeds the per-record cap of {limit} bytes")]
    RecordTooLarge {
        /// Encoded size of the refused record.
        bytes: usize,
        /// The cap in bytes.
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
    /// Fewer replicas than the quorum answered in time.
    #[error("quorum not reached: {replied} of {required} required replicas answered")]
    QuorumNotReached {
        /// Replicas that answered successfully.
        replied: u32,
        /// Replicas the quorum needed.
        required: u32,
    },
    /// A peer could not be reached or did not answer in time.
    #[error("peer unavailable: {0}")]
    PeerUnavailable(String),
    /// An inbound peer message cannot be decoded (unknown version, malformed) or breaks a bound:
    /// the sender's fault, answered 400 `bad_rpc` on the peer port.
    #[error("bad peer message: {0}")]
    BadPeerMessage(String),
    /// An outbound call reached a peer but failed there: it answered an error status, or an answer
    /// this node cannot read or did not expect (a peer on another RPC version during a rolling
    /// upgrade). The replica is unavailable to this request, as if it were down: never a 400 to a
    /// client whose request was valid.
    #[error("peer call failed: {0}")]
    PeerFailed(String),
    /// A request coordinated by a peer failed there; its status and body are passed on unchanged.
    #[error("{}", body.message)]
    Remote {
        /// HTTP status the peer answered.
        status: u16,
        /// The peer's error body.
        body: kvapi::ErrorBody,
    },
    /// A cluster config was refused.
    #[error("bad cluster config: {0}")]
    BadConfig(String),
    /// A cluster config was not newer than the current one.
    #[error("stale config: epoch {offered} is not newer than the current epoch {current}")]
    StaleEpoch {
        /// Epoch offered.
        offered: u64,
        /// Epoch in force.
        current: u64,
    },
    /// A membership change was asked for while another is in progress.
    #[error("membership change in progress: {0}")]
    TransitionInProgress(String),
    /// A peer sent a replica operation for a partition this node does not hold at its epoch: the
    /// sender follows an older config.
    #[error("not an owner: {0}")]
    NotOwner(String),
    /// The route needs a bearer token and the request has none, or one that is not configured.
    #[error("this route needs a valid token: send Authorization: Bearer TOKEN")]
    Unauthorized,
    /// The bearer token is valid but may not do this.
    #[error("this token may not {0}")]
    Forbidden(&'static str),
    /// A token file or token setting is unusable (at start).
    #[error("bad token setting: {0}")]
    BadToken(String),
    /// A backup or restore failed on its object store (a bad target is [`Error::BadConfig`]).
    #[error("backup: {0}")]
    Backup(kvbackup::Error),
    /// Every watcher place of this node (`--max-watchers`) is taken.
    #[error("this node already serves its maximum of {0} watchers; retry later or on another node")]
    TooManyWatchers(usize),
    /// A change-feed cursor is of a restarted node or older than its change log keeps: changes may
    /// be missing, so the caller must list again and start a new feed.
    #[error("cursor too old: {0}; list the prefix again and start a new feed from its cursor")]
    CursorGone(String),
    /// A broken invariant or a failed background task.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// True for errors that say a replica could not be reached or could not answer in time, as
    /// opposed to errors about the request or the data.
    pub fn is_unavailability(&self) -> bool {
        match self {
            Error::PeerUnavailable(_)
            | Error::PeerFailed(_)
            | Error::Unavailable(_)
            | Error::QuorumNotReached { .. }
            | Error::DeadlineExceeded(_) => true,
            Error::Remote { status, .. } => *status == 503 || *status == 504,
            _ => false,
        }
    }
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Self {
        Error::Corrupt(e.to_string())
    }
}

impl From<kvbackup::Error> for Error {
    fn from(e: kvbackup::Error) -> Self {
        match e {
            kvbackup::Error::BadTarget(m) => Error::BadConfig(m),
            other => Error::Backup(other),
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("storage task failed: {e}"))
    }
}
