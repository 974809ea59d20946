//! Batches: `POST /v1/batch`, many single-key operations in one request, one answer per item.

use serde::{Deserialize, Serialize};

use crate::{ErrorBody, SiblingView};

/// Route of a batch.
pub const BATCH_PATH: &str = "/v1/batch";
/// Query parameters a batch may carry (applied to every item); any other is refused with 400.
pub const BATCH_PARAMS: [&str; 3] = ["r", "w", "timeout_ms"];
/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Largest batch body, in bytes: base64 makes a value about 4/3 its size, so this admits a batch of
/// values totalling about 12 MiB.
pub const MAX_BATCH_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The body of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The operations, answered in this order.
    pub items: Vec<BatchItem>,
}

/// What a batch item does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchOp {
    /// Read the key, as `GET /v1/kv/{key}`.
    Get,
    /// Write the value, as `PUT /v1/kv/{key}`.
    Put,
    /// Delete the key, as `DELETE /v1/kv/{key}`.
    Delete,
}

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// The operation.
    pub op: BatchOp,
    /// The key, base64 (standard alphabet, padded).
    pub key: String,
    /// The value of a `put`, base64; refused on `get` and `delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The causal context of a `put` or `delete`, as a read gave it; absent for a blind write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The time to live of a `put`, as the `ttl` parameter of `PUT /v1/kv/{key}` takes it (`30s`,
    /// `none`); the node's default when absent; refused on `get` and `delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// The answer to a batch: one result per item, in the items' order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// The results.
    pub results: Vec<BatchResult>,
}

/// The outcome of one item: what the single-key route would have answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    /// The HTTP status the single-key route gives: 200 or 300 for a read, 404 for an absent key,
    /// 204 for a write, 4xx or 5xx for a failure.
    pub status: u16,
    /// The key's causal context: after a write, the new one; on a read, the one to write back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// On a read of a present key: every sibling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub siblings: Option<Vec<SiblingView>>,
    /// On a failure: the error body the single-key route gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}
