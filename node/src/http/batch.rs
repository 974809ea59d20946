//! `POST /v1/batch[?r=R&w=W&timeout_ms=T]`: many single-key operations in one request, coordinated
//! together (see `coordinator::batch`), one answer per item in order.
//!
//! The body is a JSON [`BatchRequest`] of at most [`MAX_BATCH_ITEMS`] items and
//! [`MAX_BATCH_BODY_BYTES`] bytes; over either cap the whole batch is refused (413 for the bytes, 400
//! for the count). Each item is validated on its own: a bad key, value or context (a forged context
//! included) refuses that item only, with the 400 the single-key route would give, and nothing is
//! written for it; the other items go ahead. `r` applies to every get, `w` to every put and delete.
//! A put's `ttl` is the single-key `?ttl=` (the node's default when absent). A get answers as of
//! this node's clock, as a single-key read does: an expired value reads as deleted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kvapi::batch::{
    BATCH_PARAMS, BatchItem, BatchOp, BatchRequest, BatchResponse, BatchResult,
    MAX_BATCH_BODY_BYTES, MAX_BATCH_ITEMS,
};

use super::{Node, error_parts, error_response, kv, query, read_value};
use crate::causality::{SiblingSet, VersionVector};
use crate::context_token::ContextKeys;
use crate::error::Error;
use crate::replica::{Mutation, now_ms};
use crate::rpc::items::Write;

/// Quorums and deadline of a batch.
#[derive(Debug, Default)]
struct BatchParams {
    r: Option<u32>,
    w: Option<u32>,
    timeout: Option<Duration>,
}

/// An item, validated: a read or a write of its key.
enum Valid {
    Read(Arc<[u8]>),
    Write(Write),
}

/// `POST /v1/batch`.
pub(super) async fn batch(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::POST {
        return error_response(&Error::MethodNotAllowed {
            method: request.method().to_string(),
            allow: "POST",
        });
    }
    match handle(&node, request).await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn handle(node: &Node, request: Request) -> Result<BatchResponse, Error> {
    if !node.ready.load(Ordering::Acquire) {
        return Err(Error::Unavailable("node is not ready".into()));
    }
    let replication = node.membership.view().config.n;
    let params = parse_params(request.uri().query(), replication)?;
    let body = read_value(node, request, MAX_BATCH_BODY_BYTES).await?;
    let batch: BatchRequest = serde_json::from_slice(&body)
        .map_err(|e| Error::BadBody(format!("batch body is not a batch: {e}")))?;
    if batch.items.len() > MAX_BATCH_ITEMS {
        return Err(Error::BadBody(format!(
            "{} items is above the batch limit of {MAX_BATCH_ITEMS}",
            batch.items.len()
        )));
    }
    let timeout = params.timeout.unwrap_or(node.request_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let contexts = node.replica.contexts();
    let valid: Vec<Result<Valid, Error>> = batch
        .items
        .iter()
        .map(|item| validate(item, contexts, node.max_value_bytes, node.default_ttl))
        .collect();
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for (i, item) in valid.iter().enumerate() {
        match item {
            Ok(Valid::Read(key)) => reads.push((i, key.clone())),
            Ok(Valid::Write(write)) => writes.push((i, write.clone())),
            Err(_) => {}
        }
    }
    let read_keys = reads.iter().map(|(_, k)| k.clone()).collect();
    let write_items = writes.iter().map(|(_, w)| w.clone()).collect();
    let work = async {
        tokio::join!(
            node.coordinator.read_many(read_keys, params.r, deadline),
            node.coordinator
                .write_many(write_items, params.w, deadline, false)
        )
    };
    let (read_results, write_results) = tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| Error::DeadlineExceeded(timeout))?;
    let now = now_ms();
    let mut results: Vec<Option<BatchResult>> = valid
        .into_iter()
        .map(|v| v.err().map(|e| failure(&e)))
        .collect();
    for ((i, key), result) in reads.into_iter().zip(read_results) {
        results[i] = Some(match result {
            Ok(set) => read_result(contexts, &key, &set.as_seen_at(now)),
            Err(e) => failure(&e),
        });
    }
    for ((i, write), result) in writes.into_iter().zip(write_results) {
        results[i] = Some(match result {
            Ok(set) => BatchResult {
                status: StatusCode::NO_CONTENT.as_u16(),
                context: Some(contexts.encode(&write.key, set.context())),
                siblings: None,
                error: None,
            },
            Err(e) => failure(&e),
        });
    }
    Ok(BatchResponse {
        results: results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| failure(&Error::Internal("item left unanswered".into()))))
            .collect(),
    })
}

fn parse_params(raw: Option<&str>, replication: u32) -> Result<BatchParams, Error> {
    let mut params = BatchParams::default();
    for (name, value) in query::pairs(raw, &BATCH_PARAMS)? {
        match name {
            "r" => params.r = Some(query::quorum(name, value, replication)?),
            "w" => params.w = Some(query::quorum(name, value, replication)?),
            _ => params.timeout = Some(query::timeout(name, value)?),
        }
    }
    Ok(params)
}

/// Checks one item as the single-key route checks its request.
fn validate(
    item: &BatchItem,
    contexts: &ContextKeys,
    max_value_bytes: usize,
    default_ttl: Option<Duration>,
) -> Result<Valid, Error> {
    let key = STANDARD
        .decode(&item.key)
        .map_err(|_| Error::BadKey("key is not base64".into()))?;
    kv::key_bounds(&key)?;
    let context = match &item.context {
        None => VersionVector::default(),
        Some(token) => contexts.decode(&key, token)?,
    };
    if item.ttl.is_some() && item.op != BatchOp::Put {
        return Err(Error::BadParameter("ttl applies to a put only".into()));
    }
    match (item.op, &item.value) {
        (BatchOp::Get, None) if item.context.is_none() => Ok(Valid::Read(key.into())),
        (BatchOp::Get, _) => Err(Error::BadBody("a get takes no value and no context".into())),
        (BatchOp::Delete, None) => Ok(Valid::Write(Write::new(key, context, Mutation::delete()))),
        (BatchOp::Delete, Some(_)) => Err(Error::BadBody("a delete takes no value".into())),
        (BatchOp::Put, None) => Err(Error::BadBody("a put needs a value".into())),
        (BatchOp::Put, Some(value)) => {
            let value = STANDARD
                .decode(value)
                .map_err(|_| Error::BadBody("value is not base64".into()))?;
            if value.len() > max_value_bytes {
                return Err(Error::ValueTooLarge {
                    limit: max_value_bytes,
                });
            }
            let ttl = match &item.ttl {
                Some(text) => kvapi::ttl::parse(text)
                    .map_err(Error::BadParameter)?
                    .duration(),
                None => default_ttl,
            };
            Ok(Valid::Write(Write::new(
                key,
                context,
                Mutation::put(value, ttl),
            )))
        }
    }
}

/// A read's result, as `GET /v1/kv/{key}` with `Accept: application/json` answers.
fn read_result(contexts: &ContextKeys, key: &[u8], set: &SiblingSet) -> BatchResult {
    let context = (!set.is_empty()).then(|| contexts.encode(key, set.context()));
    let live = set.live().count();
    if live == 0 {
        return BatchResult {
            status: StatusCode::NOT_FOUND.as_u16(),
            context,
            siblings: None,
            error: None,
        };
    }
    let read = kv::read_response(set, context.unwrap_or_default());
    BatchResult {
        status: if set.siblings().len() == 1 { 200 } else { 300 },
        context: Some(read.context),
        siblings: Some(read.siblings),
        error: None,
    }
}

fn failure(error: &Error) -> BatchResult {
    let (status, body) = error_parts(error);
    BatchResult {
        status: status.as_u16(),
        context: body.context.clone(),
        siblings: None,
        error: Some(body),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::context_token::KeySource;

    #[test]
    fn items_are_validated_one_by_one() {
        let contexts = ContextKeys::new(&[&[1; 32]], KeySource::Local).unwrap();
        let item = |op, key: &[u8], value: Option<&[u8]>, context: Option<String>| BatchItem {
            op,
            key: STANDARD.encode(key),
            value: value.map(|v| STANDARD.encode(v)),
            context,
            ttl: None,
        };
        let ttl = |op, text: &str| BatchItem {
            ttl: Some(text.into()),
            ..item(op, b"k", (op == BatchOp::Put).then_some(b"v"), None)
        };
        let default = Some(Duration::from_secs(60));
        let check = |i: &BatchItem| validate(i, &contexts, 4, default);
        let ttl_of = |i: &BatchItem| match check(i) {
            Ok(Valid::Write(write)) => write.mutation().ttl,
            _ => panic!("{i:?} refused"),
        };
        assert_eq!(ttl_of(&item(BatchOp::Put, b"k", Some(b"v"), None)), default);
        assert_eq!(
            ttl_of(&ttl(BatchOp::Put, "30s")),
            Some(Duration::from_secs(30))
        );
        assert_eq!(ttl_of(&ttl(BatchOp::Put, "none")), None);
        assert!(matches!(
            check(&item(BatchOp::Get, b"k", None, None)),
            Ok(Valid::Read(_))
        ));
        assert!(matches!(
            check(&item(BatchOp::Put, b"k", Some(b"v"), None)),
            Ok(Valid::Write(_))
        ));
        let genuine = contexts.encode(b"k", &VersionVector::default());
        assert!(check(&item(BatchOp::Delete, b"k", None, Some(genuine.clone()))).is_ok());
        let refused = [
            item(BatchOp::Delete, b"other", None, Some(genuine)),
            item(BatchOp::Put, b"k", Some(b"v"), Some("forged".into())),
            item(BatchOp::Put, b"k", Some(b"12345"), None),
            item(BatchOp::Put, b"k", None, None),
            item(BatchOp::Get, b"k", Some(b"v"), None),
            item(BatchOp::Delete, b"k", Some(b"v"), None),
            item(BatchOp::Get, b"", None, None),
            ttl(BatchOp::Put, "0s"),
            ttl(BatchOp::Put, "soon"),
            ttl(BatchOp::Get, "30s"),
            ttl(BatchOp::Delete, "30s"),
            BatchItem {
                key: "%%%".into(),
                ..item(BatchOp::Get, b"k", None, None)
            },
        ];
        for bad in &refused {
            assert!(check(bad).is_err(), "{bad:?} accepted");
        }
    }
}
