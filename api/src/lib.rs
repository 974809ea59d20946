//! The wire contract of kvcluster, shared by the node, the client and the operator.
//!
//! Types and constants only: no I/O, no async, no storage. Anything a client or a node must agree on
//! (route prefixes, header names, JSON bodies, limits) is defined here once.

use serde::{Deserialize, Serialize};

/// Prefix of the public key-value routes: `GET|PUT|DELETE /v1/kv/{key}` (key percent-encoded).
pub const KV_PREFIX: &str = "/v1/kv/";
/// Liveness route: answers 200 while the process serves HTTP.
pub const HEALTH_LIVE: &str = "/health/live";
/// Readiness route: answers 200 once storage is open and the ring is known.
pub const HEALTH_READY: &str = "/health/ready";
/// Prometheus text-format metrics.
pub const METRICS: &str = "/metrics";

/// Header that carries the opaque causal context on reads and writes.
pub const CONTEXT_HEADER: &str = "x-kv-context";

/// Smallest key, in bytes.
pub const MIN_KEY_BYTES: usize = 1;
/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Default largest value, in bytes (1 MiB); a node setting may change it.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Query parameters a key-value request may carry; any other parameter is refused with 400.
pub const QUERY_PARAMS: [&str; 3] = ["r", "w", "timeout_ms"];

/// JSON body of every error answer: `{"error": code, "message": text}` plus optional details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, such as `bad_key` or `value_too_large`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// The key's current causal context, on a 409 (sibling cap) answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// How many replicas answered, on a 503 (quorum not reached) answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replied: Option<u32>,
    /// How many replicas the quorum needed, on a 503 answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<u32>,
}

/// Error codes used in [`ErrorBody::error`].
pub mod codes {
    /// The key is empty, too long, or not valid percent-encoding.
    pub const BAD_KEY: &str = "bad_key";
    /// A query parameter is unknown or out of range.
    pub const BAD_PARAMETER: &str = "bad_parameter";
    /// The `X-Kv-Context` token is malformed, of an unknown version or for another key.
    pub const BAD_CONTEXT: &str = "bad_context";
    /// The key does not exist or is deleted.
    pub const NOT_FOUND: &str = "not_found";
    /// The route exists but not for this method.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// The key already holds the maximum number of siblings: resolve them first.
    pub const TOO_MANY_SIBLINGS: &str = "too_many_siblings";
    /// The request body exceeds the value size limit.
    pub const VALUE_TOO_LARGE: &str = "value_too_large";
    /// The request body could not be read (client disconnected or sent a broken body).
    pub const BAD_BODY: &str = "bad_body";
    /// Fewer replicas than the quorum answered.
    pub const QUORUM_NOT_REACHED: &str = "quorum_not_reached";
    /// The request deadline passed.
    pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
    /// Stored data could not be decoded.
    pub const CORRUPT_RECORD: &str = "corrupt_record";
    /// The node is not ready or is shutting down.
    pub const UNAVAILABLE: &str = "unavailable";
    /// Anything else that went wrong inside the node.
    pub const INTERNAL: &str = "internal";
}

/// JSON form of a read: the key's causal context and every sibling (live or deleted).
///
/// Served with status 300 when several siblings are live, and whenever the client sends
/// `Accept: application/json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResponse {
    /// Opaque causal context to send back with the next write of this key.
    pub context: String,
    /// The causally concurrent values of the key.
    pub siblings: Vec<SiblingView>,
}

/// One sibling of a key in the JSON read form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingView {
    /// The value, base64 (standard alphabet, padded); empty for a tombstone.
    pub value: String,
    /// True for a tombstone left by a delete.
    pub deleted: bool,
}
