//! Listing: `GET /v1/kv?prefix=P&limit=L&cursor=C[&values=true]`, the keys under a prefix in byte
//! order, a page at a time.

use serde::{Deserialize, Serialize};

use crate::SiblingView;

/// Route of a listing (the key-value prefix without a key).
pub const LIST_PATH: &str = "/v1/kv";
/// Query parameters a listing may carry; any other parameter is refused with 400.
pub const LIST_PARAMS: [&str; 6] = ["prefix", "limit", "cursor", "values", "r", "timeout_ms"];
/// Keys in a page when the request names no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Largest `limit` accepted.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Bytes of keys and values a page carries before its last key (the last key may overrun it).
pub const MAX_LIST_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Longest cursor accepted, in characters: a cursor holds one key, a version byte and a tag.
pub const MAX_CURSOR_CHARS: usize = 2 * 1024;

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    /// The live keys of the page, in byte order.
    pub keys: Vec<ListedKey>,
    /// Where the next page starts; absent on the last page. A page may hold fewer than `limit`
    /// keys (even none) and still name a cursor: stop only when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One listed key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedKey {
    /// The key, base64 (standard alphabet, padded).
    pub key: String,
    /// With `values=true`: the key's causal context, as a read gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// With `values=true`: every sibling, as a JSON read gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub siblings: Option<Vec<SiblingView>>,
}
