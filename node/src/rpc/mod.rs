//! Peer RPC: the messages nodes exchange and the client that sends them.
//!
//! Messages travel as `POST /internal/v1/rpc` to a member's peer port (its `peer_address`) over
//! HTTP/2 (one multiplexed connection per peer; prior knowledge in plain text, ALPN `h2` with mutual
//! TLS when the node has peer TLS files, see `tls`), encoded as one format-version byte followed by postcard. A node refuses a version it does
//! not know with a clear error rather than guessing. Every request carries the sender's cluster and epoch
//! and every response the receiver's epoch, so a node that missed a config change learns of it from the
//! next exchange and fetches the config from whoever has it. The inbound side lives in `http`.

use std::time::Duration;

use kvapi::{ClusterConfig, ErrorBody};
use serde::{Deserialize, Serialize};

use crate::causality::{SiblingSet, VersionVector};
use crate::error::Error;
use crate::storage::hints::Hint;

mod client;
pub mod items;

pub use client::{RpcClient, STALL_TIMEOUT};

/// Route of peer RPC.
pub const RPC_PATH: &str = "/internal/v1/rpc";
/// Current message format version.
pub const RPC_VERSION: u8 = 2;
/// Most record bytes (keys included) one batch message carries before its last record: a
/// `FetchSegments` answer (a peer's budget is honoured up to this), a `MergeBatch` page or a
/// `DeliverHints` batch. The last record may overrun it.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Room for a message's envelope: cluster name, sender, epoch, framing and postcard lengths.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// Largest peer message (request or answer), in bytes, when one record may take
/// `max_record_bytes` encoded: a full batch, plus its last record and that record's key, plus the
/// envelope. Every other message (one record, one value, a summary) is smaller.
pub fn max_message_bytes(max_record_bytes: usize) -> usize {
    MAX_BATCH_BYTES
        .saturating_add(max_record_bytes)
        .saturating_add(kvapi::MAX_KEY_BYTES)
        .saturating_add(ENVELOPE_BYTES)
}
/// Interval of liveness pings (which also carry epochs).
pub const PING_INTERVAL: Duration = Duration::from_millis(500);

/// A message from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RpcRequest {
    /// Sender's cluster name.
    pub cluster: String,
    /// Sender's config epoch.
    pub epoch: u64,
    /// Sender's node id.
    pub sender: String,
    /// What is asked.
    pub body: RequestBody,
}

/// The operations a peer can ask for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RequestBody {
    /// Liveness check; the answer carries the receiver's epoch.
    Ping,
    /// Send me your cluster config.
    FetchConfig,
    /// Send me your state of `key`.
    Read {
        /// Partition of the key.
        partition: u16,
        /// The key.
        key: Vec<u8>,
    },
    /// Merge this state of `key` into yours (replication and read repair).
    Merge {
        /// Partition of the key.
        partition: u16,
        /// The key.
        key: Vec<u8>,
        /// The sender's full state of the key.
        set: SiblingSet,
    },
    /// Coordinate this client write: you are in the key's preference list, I am not.
    Coordinate {
        /// The key.
        key: Vec<u8>,
        /// The client's causal context.
        context: VersionVector,
        /// The value, `None` for a delete.
        value: Option<Vec<u8>>,
        /// Requested write quorum, if not the cluster default.
        w: Option<u32>,
        /// Time left of the client's deadline, in milliseconds.
        timeout_ms: u64,
        /// The value expires this long after the write (the coordinator fixes when).
        ttl_ms: Option<u64>,
    },
    /// Hold this state of `key` for `target`, which could not take it (sloppy quorum).
    StoreHint {
        /// The replica the state is meant for.
        target: String,
        /// The state.
        hint: Hint,
    },
    /// Merge these hints meant for you (hinted handoff).
    DeliverHints(Vec<Hint>),
    /// Send me your Merkle summary of `partition` (anti-entropy, transfers).
    Summary {
        /// The partition.
        partition: u16,
    },
    /// Send me your records of these segments of `partition`, after key `after`, up to about
    /// `max_bytes`.
    FetchSegments {
        /// The partition.
        partition: u16,
        /// Segments wanted.
        segments: Vec<u16>,
        /// Resume after this key.
        after: Option<Vec<u8>>,
        /// Byte budget of the answer.
        max_bytes: u64,
    },
    /// Merge these states of keys of `partition` (anti-entropy push).
    MergeBatch {
        /// The partition.
        partition: u16,
        /// `(key, state)` pairs.
        records: Vec<(Vec<u8>, SiblingSet)>,
    },
    /// Delete these keys of `partition` if their state is still exactly tombstones with this
    /// context: every owner holds them and the grace period has passed.
    PurgeTombstones {
        /// The partition.
        partition: u16,
        /// `(key, context)` pairs.
        keys: Vec<(Vec<u8>, VersionVector)>,
    },
    /// Tell me whether you have received every partition you gain in the change to your epoch.
    TransferProgress,
    /// Tell me how many hints you hold for keys of `partition`, whatever their target (asked
    /// before purging the partition's tombstones).
    HintsPending {
        /// The partition.
        partition: u16,
    },
    /// Send me the keys under `prefix` your change log holds after `after` (your head when
    /// `None`), at most `limit`, waiting up to `wait_ms` for the first (the change feed).
    Changes {
        /// Key prefix.
        prefix: Vec<u8>,
        /// Position to resume after.
        after: Option<crate::watch::Position>,
        /// Longest wait for a change, in milliseconds.
        wait_ms: u64,
        /// Most keys in the answer.
        limit: u32,
    },
    /// Send me your smallest records of these partitions under `prefix`, from key `start` on, at
    /// most `limit` of them and about `max_bytes` (a listing; see `storage::listing`).
    List {
        /// The partitions, each at most once.
        partitions: Vec<u16>,
        /// Only keys with this prefix.
        prefix: Vec<u8>,
        /// Only keys at or after this one.
        start: Vec<u8>,
        /// Most records.
        limit: u32,
        /// Byte budget of the answer.
        max_bytes: u64,
        /// Whether to send values (else every value is emptied).
        values: bool,
    },
    /// Send me your states of these keys (a batch's reads): one outcome per key, in order.
    ReadMany(Vec<(u16, Vec<u8>)>),
    /// Merge these states (a batch's replication): one outcome per record, in order.
    MergeMany(Vec<Hint>),
    /// Coordinate these client writes, as many `Coordinate`s (a batch's writes to keys you hold and
    /// I do not): one outcome per write, in order.
    CoordinateMany {
        /// The writes.
        writes: Vec<items::Write>,
        /// Requested write quorum, if not the cluster default.
        w: Option<u32>,
        /// Time left of the client's deadline, in milliseconds.
        timeout_ms: u64,
    },
}

impl RequestBody {
    /// The `rpc` label of the peer RPC metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestBody::Ping => "ping",
            RequestBody::FetchConfig => "fetch_config",
            RequestBody::Read { .. } => "read",
            RequestBody::Merge { .. } => "merge",
            RequestBody::Coordinate { .. } => "coordinate",
            RequestBody::StoreHint { .. } => "store_hint",
            RequestBody::DeliverHints(_) => "deliver_hints",
            RequestBody::Summary { .. } => "summary",
            RequestBody::FetchSegments { .. } => "fetch_segments",
            RequestBody::MergeBatch { .. } => "merge_batch",
            RequestBody::PurgeTombstones { .. } => "purge_tombstones",
            RequestBody::TransferProgress => "transfer_progress",
            RequestBody::HintsPending { .. } => "hints_pending",
            RequestBody::Changes { .. } => "changes",
            RequestBody::List { .. } => "list",
            RequestBody::ReadMany(_) => "read_many",
            RequestBody::MergeMany(_) => "merge_many",
            RequestBody::CoordinateMany { .. } => "coordinate_many",
        }
    }
}

/// The answer to an [`RpcRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RpcResponse {
    /// Receiver's config epoch.
    pub epoch: u64,
    /// The result.
    pub body: ResponseBody,
}

/// Results of the operations in [`RequestBody`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ResponseBody {
    /// Answer to `Ping`.
    Pong,
    /// Answer to `FetchConfig`.
    Config(#[serde(with = "as_json")] ClusterConfig),
    /// Answer to `Read` and `Coordinate`: the key's state.
    State(SiblingSet),
    /// Answer to `Merge`, `StoreHint` and `DeliverHints`: merged (or stored) and persisted.
    Merged,
    /// Answer to `MergeBatch` and `PurgeTombstones`: how many keys changed.
    Changed(u64),
    /// Answer to `Summary`: one hash per segment.
    Summary(Vec<u64>),
    /// Answer to `FetchSegments`: records in key order, and where to resume if there are more.
    Records {
        /// `(key, state)` pairs.
        records: Vec<(Vec<u8>, SiblingSet)>,
        /// Key to resume after, when the byte budget stopped the scan.
        next: Option<Vec<u8>>,
    },
    /// Answer to `TransferProgress`.
    Progress {
        /// The epoch the answer is about.
        epoch: u64,
        /// Whether every gained partition is complete (true when there is nothing to gain).
        done: bool,
    },
    /// The operation failed as a client request would: the HTTP status and error body to pass on.
    Failed {
        /// HTTP status of the failure.
        status: u16,
        /// Its JSON error body.
        #[serde(with = "as_json")]
        error: ErrorBody,
    },
    /// Answer to `HintsPending`: how many hints the receiver holds for the partition. (New variants
    /// go last: postcard numbers variants by position.)
    HintsPending(u64),
    /// Answer to `Changes`: the changed keys and the position after them.
    Changes {
        /// Keys that changed, in log order (repeats possible).
        keys: Vec<Vec<u8>>,
        /// Position after the last key returned.
        position: crate::watch::Position,
    },
    /// Answer to `List`: records in key order, complete below `end` (or outright when `None`).
    Listed {
        /// `(key, state)` pairs.
        records: Vec<(Vec<u8>, SiblingSet)>,
        /// The first key not known to be complete, if any.
        end: Option<Vec<u8>>,
    },
    /// Answer to `ReadMany`, `MergeMany` and `CoordinateMany`: one outcome per item, in order.
    Outcomes(Vec<items::Outcome>),
}

/// Carries a type of the public JSON contract (`kvapi`) inside a postcard message as its JSON text:
/// those types skip absent optional fields, which a format without field names cannot decode.
pub(crate) mod as_json {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, out: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(value).map_err(S::Error::custom)?;
        out.serialize_str(&text)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        input: D,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(input)?;
        serde_json::from_str(&text).map_err(D::Error::custom)
    }
}

impl ResponseBody {
    /// The error for an answer the caller did not expect: a `Failed` answer passes its status and
    /// body on, any other is a protocol error.
    pub fn unexpected(&self) -> Error {
        match self {
            ResponseBody::Failed { status, error } => Error::Remote {
                status: *status,
                body: error.clone(),
            },
            other => Error::PeerFailed(format!("unexpected answer {other:?}")),
        }
    }
}

/// Time left until `deadline`.
pub fn remaining(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}

/// Encodes a message: version byte, then postcard.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = vec![RPC_VERSION];
    // Serialising these plain types into a Vec cannot fail.
    out.extend(postcard::to_allocvec(message).unwrap_or_default());
    out
}

/// Decodes a message, refusing unknown versions and malformed or trailing bytes.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Error> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| Error::BadPeerMessage("empty message".into()))?;
    if version != RPC_VERSION {
        return Err(Error::BadPeerMessage(format!(
            "unsupported message version {version}; this node speaks version {RPC_VERSION}"
        )));
    }
    let (message, rest) = postcard::take_from_bytes(body)
        .map_err(|e| Error::BadPeerMessage(format!("malformed message: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::BadPeerMessage(format!(
            "{} trailing bytes after message",
            rest.len()
        )));
    }
    Ok(message)
}

#[cfg(test)]
mod tests;
