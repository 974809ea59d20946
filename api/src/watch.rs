//! Waiting for changes: the `wait` parameter of a key read and the prefix change feed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Route of the prefix change feed: `GET /v1/watch?prefix=P&cursor=C&wait=W&limit=L`.
pub const WATCH: &str = "/v1/watch";
/// Longest `wait` a request may ask for (the node's idle timeout must stay above it).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most keys one feed answer carries (`limit`), and its default.
pub const MAX_FEED_KEYS: usize = 10_000;
/// Keys one feed answer carries when the request names no `limit`.
pub const DEFAULT_FEED_KEYS: usize = 1_000;

/// One answer of the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedResponse {
    /// Where the next call resumes: send it back as `cursor`.
    pub cursor: String,
    /// Keys under the prefix that changed since the cursor sent (base64, standard alphabet,
    /// padded), each once per answer. Read them to see their new state; a key may be reported again
    /// in a later answer (once per replica that applied the change).
    pub keys: Vec<String>,
}
