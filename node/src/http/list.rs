//! `GET /v1/kv?prefix=P&limit=L&cursor=C[&values=true][&r=R][&timeout_ms=T]`: one page of the
//! keys under a prefix (see `coordinator::list`).
//!
//! The cursor is opaque to clients: base64url of a version byte, the key the next page starts at,
//! and an HMAC tag over the prefix and that key with the cluster's context key. A cursor is only
//! accepted with the prefix it was issued for; a forged, altered or foreign one is a 400.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use kvapi::MAX_KEY_BYTES;
use kvapi::list::{
    DEFAULT_LIST_LIMIT, LIST_PARAMS, ListPage, ListedKey, MAX_CURSOR_CHARS, MAX_LIST_LIMIT,
};

use super::{Node, error_response, kv, query};
use crate::context_token::ContextKeys;
use crate::coordinator::list::ListQuery;
use crate::error::Error;

/// Format version of cursors.
const CURSOR_VERSION: u8 = 1;
/// Domain separation of the cursor tag from context tokens.
const CURSOR_DOMAIN: &[u8] = b"kvcluster list cursor v1\0";
/// Length of the tag at the end of a cursor.
const TAG_BYTES: usize = 32;

/// A listing request, validated.
#[derive(Debug)]
struct ListParams {
    query: ListQuery,
    timeout: Option<Duration>,
}

/// `GET /v1/kv`: a listing; other methods are the key routes' to answer (400, no key).
pub(super) async fn list(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return kv::kv(State(node), request).await;
    }
    match handle(&node, request.uri().query()).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn handle(node: &Node, raw_query: Option<&str>) -> Result<ListPage, Error> {
    if !node.ready.load(Ordering::Acquire) {
        return Err(Error::Unavailable("node is not ready".into()));
    }
    let replication = node.membership.view().config.n;
    let params = parse(raw_query, replication, node.replica.contexts())?;
    let timeout = params.timeout.unwrap_or(node.request_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let prefix = params.query.prefix.clone();
    let values = params.query.values;
    let page = tokio::time::timeout_at(deadline, node.coordinator.list(params.query, deadline))
        .await
        .map_err(|_| Error::DeadlineExceeded(timeout))??;
    let contexts = node.replica.contexts();
    let keys = page
        .keys
        .into_iter()
        .map(|(key, set)| {
            let (context, siblings) = if values {
                let read = kv::read_response(&set, contexts.encode(&key, set.context()));
                (Some(read.context), Some(read.siblings))
            } else {
                (None, None)
            };
            ListedKey {
                key: STANDARD.encode(&key),
                context,
                siblings,
            }
        })
        .collect();
    Ok(ListPage {
        keys,
        cursor: page
            .next
            .map(|start| encode_cursor(contexts, &prefix, &start)),
    })
}

fn parse(raw: Option<&str>, replication: u32, contexts: &ContextKeys) -> Result<ListParams, Error> {
    let mut prefix = Vec::new();
    let mut cursor = None;
    let mut params = ListParams {
        query: ListQuery {
            prefix: Vec::new(),
            start: Vec::new(),
            limit: DEFAULT_LIST_LIMIT,
            values: false,
            r: None,
        },
        timeout: None,
    };
    for (name, value) in query::pairs(raw, &LIST_PARAMS)? {
        match name {
            "prefix" => prefix = query::bytes(name, value)?,
            "cursor" => cursor = Some(value),
            "limit" => {
                params.query.limit = query::number(name, value, 1, MAX_LIST_LIMIT as u64)? as usize
            }
            "values" => params.query.values = query::boolean(name, value)?,
            "r" => params.query.r = Some(query::quorum(name, value, replication)?),
            _ => params.timeout = Some(query::timeout(name, value)?),
        }
    }
    if prefix.len() > MAX_KEY_BYTES {
        return Err(Error::BadParameter(format!(
            "prefix must be at most {MAX_KEY_BYTES} bytes, got {}",
            prefix.len()
        )));
    }
    params.query.start = match cursor {
        Some(token) => decode_cursor(contexts, &prefix, token)?,
        None => prefix.clone(),
    };
    params.query.prefix = prefix;
    Ok(params)
}

fn cursor_input(prefix: &[u8], signed: &[u8]) -> Vec<u8> {
    let mut input = (prefix.len() as u32).to_be_bytes().to_vec();
    input.extend_from_slice(prefix);
    input.extend_from_slice(signed);
    input
}

/// The cursor of the page that starts at `start` under `prefix`.
fn encode_cursor(contexts: &ContextKeys, prefix: &[u8], start: &[u8]) -> String {
    let mut bytes = vec![CURSOR_VERSION];
    bytes.extend_from_slice(start);
    let tag = contexts.tag(CURSOR_DOMAIN, &cursor_input(prefix, &bytes));
    bytes.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The start key of a cursor issued for `prefix`, refusing anything else with 400.
fn decode_cursor(contexts: &ContextKeys, prefix: &[u8], token: &str) -> Result<Vec<u8>, Error> {
    let bad = |why: &str| Error::BadParameter(format!("cursor refused: {why}"));
    if token.len() > MAX_CURSOR_CHARS {
        return Err(bad(&format!("longer than {MAX_CURSOR_CHARS} characters")));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad("not base64url"))?;
    let split = bytes
        .len()
        .checked_sub(TAG_BYTES)
        .filter(|&at| at >= 1)
        .ok_or_else(|| bad("too short"))?;
    let (signed, tag) = bytes.split_at(split);
    if signed[0] != CURSOR_VERSION {
        return Err(bad(&format!("unknown version {}", signed[0])));
    }
    if !contexts.verify(CURSOR_DOMAIN, &cursor_input(prefix, signed), tag) {
        return Err(bad(
            "not issued by this cluster for this prefix, or altered",
        ));
    }
    let start = signed[1..].to_vec();
    if start.len() > MAX_KEY_BYTES || !start.starts_with(prefix) {
        return Err(bad("its key is outside the prefix"));
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::context_token::KeySource;

    fn keys(secret: u8) -> ContextKeys {
        ContextKeys::new(&[&[secret; 32]], KeySource::Local).unwrap()
    }

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let contexts = keys(1);
        let cursor = encode_cursor(&contexts, b"p/", b"p/x\xff");
        assert_eq!(
            decode_cursor(&contexts, b"p/", &cursor).unwrap(),
            b"p/x\xff"
        );
        // Another prefix, another cluster, a flipped byte, garbage, a huge token: all refused.
        assert!(decode_cursor(&contexts, b"q/", &cursor).is_err());
        assert!(decode_cursor(&keys(2), b"p/", &cursor).is_err());
        let mut raw = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        raw[2] ^= 1;
        assert!(decode_cursor(&contexts, b"p/", &URL_SAFE_NO_PAD.encode(raw)).is_err());
        for garbage in ["", "!!", "AAAA", &"A".repeat(MAX_CURSOR_CHARS + 1)] {
            assert!(matches!(
                decode_cursor(&contexts, b"p/", garbage),
                Err(Error::BadParameter(_))
            ));
        }
    }

    #[test]
    fn parameters_are_validated() {
        let contexts = keys(1);
        let ok = |q: &str| parse(Some(q), 3, &contexts);
        let params = ok("prefix=a%2F&limit=5&values=true&r=2&timeout_ms=100").unwrap();
        assert_eq!(params.query.prefix, b"a/");
        assert_eq!(params.query.start, b"a/");
        assert_eq!(
            (params.query.limit, params.query.values, params.query.r),
            (5, true, Some(2))
        );
        let long = format!("prefix={}", "k".repeat(MAX_KEY_BYTES + 1));
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "r=4",
            "values=1",
            "w=2",
            "prefix=%zz",
            &long,
        ] {
            assert!(
                matches!(ok(bad), Err(Error::BadParameter(_))),
                "{bad} accepted"
            );
        }
    }
}
