//! The public key-value routes: `GET`, `PUT` and `DELETE /v1/kv/{key}`.
//!
//! A read is answered as of this node's clock: a value whose expiry has come reads as a tombstone of
//! its dot (404 with the context when nothing else is live), so a writer can still supersede it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kvapi::{CONTEXT_HEADER, ReadResponse, SiblingView};

use super::{MAX_TIMEOUT_MS, Node, error_response, insert_context, read_value};
use crate::causality::{SiblingSet, VersionVector};
use crate::context_token::{ContextError, ContextKeys};
use crate::error::Error;
use crate::metrics::Operation;
use crate::replica::{Mutation, now_ms};

/// Query parameters of a key-value request, validated.
#[derive(Debug, Default, PartialEq, Eq)]
struct KvParams {
    quorum: Option<u32>,
    timeout: Option<Duration>,
    /// `?ttl=`; the node's default when absent.
    ttl: Option<kvapi::ttl::Expiry>,
    /// `?wait=`: answer once the key changes from the request's context, within this long.
    wait: Option<Duration>,
}

pub(super) async fn kv(State(node): State<Arc<Node>>, request: Request) -> Response {
    let operation = match *request.method() {
        Method::GET => Operation::Get,
        Method::PUT => Operation::Put,
        Method::DELETE => Operation::Delete,
        ref other => {
            return error_response(&Error::MethodNotAllowed {
                method: other.to_string(),
                allow: "GET, PUT, DELETE",
            });
        }
    };
    let started = Instant::now();
    let response = match handle_kv(&node, operation, request).await {
        Ok(response) => response,
        Err(e) => error_response(&e),
    };
    node.metrics.observe_request(
        operation,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn handle_kv(node: &Node, operation: Operation, request: Request) -> Result<Response, Error> {
    if !node.ready.load(Ordering::Acquire) {
        return Err(Error::Unavailable("node is not ready".into()));
    }
    let key: Arc<[u8]> = parse_key(request.uri().path())?.into();
    let replication = node.membership.view().config.n;
    let params = parse_params(request.uri().query(), operation, replication)?;
    let timeout = params.timeout.unwrap_or(node.request_timeout);
    // A watch waits, then reads once more within the request's own deadline.
    let deadline = tokio::time::Instant::now() + timeout + params.wait.unwrap_or_default();
    let work = async {
        match operation {
            Operation::Get => {
                let wants_json = accepts_json(request.headers());
                match params.wait {
                    Some(wait) => {
                        let seen = parse_context(node.replica.contexts(), &key, request.headers())?;
                        let watch = super::watch::KeyWatch {
                            key,
                            seen,
                            r: params.quorum,
                            wait,
                            read_timeout: timeout,
                        };
                        super::watch::watch_key(node, watch, wants_json).await
                    }
                    None => get(node, key, params.quorum, deadline, wants_json).await,
                }
            }
            Operation::Put => {
                let context = parse_context(node.replica.contexts(), &key, request.headers())?;
                let value = read_value(node, request, node.max_value_bytes).await?;
                let ttl = params.ttl.map_or(node.default_ttl, |e| e.duration());
                let mutation = Mutation::put(value, ttl);
                write(node, key, context, mutation, params.quorum, deadline).await
            }
            Operation::Delete => {
                let context = parse_context(node.replica.contexts(), &key, request.headers())?;
                write(
                    node,
                    key,
                    context,
                    Mutation::delete(),
                    params.quorum,
                    deadline,
                )
                .await
            }
        }
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| Error::DeadlineExceeded(timeout))?
}

async fn get(
    node: &Node,
    key: Arc<[u8]>,
    r: Option<u32>,
    deadline: tokio::time::Instant,
    wants_json: bool,
) -> Result<Response, Error> {
    let set = node
        .coordinator
        .read(key.clone(), r, deadline)
        .await?
        .as_seen_at(now_ms());
    Ok(read_answer(node, &key, &set, wants_json))
}

/// The answer to a read that found `set` (already as seen at the read's time).
pub(super) fn read_answer(node: &Node, key: &[u8], set: &SiblingSet, wants_json: bool) -> Response {
    let context = node.replica.contexts().encode(key, set.context());
    if set.live().next().is_none() {
        // Absent, or only tombstones: the context of a deleted key still matters to a writer.
        let mut response = error_response(&Error::KeyNotFound);
        if !set.is_empty() {
            insert_context(response.headers_mut(), &context);
        }
        return response;
    }
    node.metrics
        .read_siblings
        .observe(set.siblings().len() as f64);
    match (set.siblings(), wants_json) {
        ([only], false) => {
            let value = only.value.clone().unwrap_or_default();
            let mut response = (StatusCode::OK, value).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            insert_context(response.headers_mut(), &context);
            response
        }
        (siblings, _) => {
            let status = if siblings.len() == 1 {
                StatusCode::OK
            } else {
                StatusCode::MULTIPLE_CHOICES
            };
            let mut response =
                (status, axum::Json(read_response(set, context.clone()))).into_response();
            insert_context(response.headers_mut(), &context);
            response
        }
    }
}

async fn write(
    node: &Node,
    key: Arc<[u8]>,
    context: VersionVector,
    mutation: Mutation,
    w: Option<u32>,
    deadline: tokio::time::Instant,
) -> Result<Response, Error> {
    let set = node
        .coordinator
        .write(key.clone(), context, mutation, w, deadline, false)
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    let context = node.replica.contexts().encode(&key, set.context());
    insert_context(response.headers_mut(), &context);
    Ok(response)
}

pub(super) fn read_response(set: &SiblingSet, context: String) -> ReadResponse {
    let engine = base64::engine::general_purpose::STANDARD;
    ReadResponse {
        context,
        siblings: set
            .siblings()
            .iter()
            .map(|s| SiblingView {
                value: s
                    .value
                    .as_ref()
                    .map(|v| engine.encode(v))
                    .unwrap_or_default(),
                deleted: s.is_tombstone(),
            })
            .collect(),
    }
}

/// Decodes the key from the raw path `/v1/kv/{percent-encoded key}`.
fn parse_key(path: &str) -> Result<Vec<u8>, Error> {
    let encoded = path.strip_prefix(kvapi::KV_PREFIX).unwrap_or_default();
    if let Some(i) = super::query::bad_escape(encoded) {
        return Err(Error::BadKey(format!("invalid percent-escape at byte {i}")));
    }
    let key: Vec<u8> = percent_encoding::percent_decode(encoded.as_bytes()).collect();
    key_bounds(&key)?;
    Ok(key)
}

/// Refuses a key outside [`kvapi::MIN_KEY_BYTES`]`..=`[`kvapi::MAX_KEY_BYTES`] bytes.
pub(super) fn key_bounds(key: &[u8]) -> Result<(), Error> {
    if key.len() < kvapi::MIN_KEY_BYTES || key.len() > kvapi::MAX_KEY_BYTES {
        return Err(Error::BadKey(format!(
            "key must be {}..={} bytes, got {}",
            kvapi::MIN_KEY_BYTES,
            kvapi::MAX_KEY_BYTES,
            key.len()
        )));
    }
    Ok(())
}

/// Validates the query string: only known parameters, each at most once, in range.
fn parse_params(
    query: Option<&str>,
    operation: Operation,
    replication: u32,
) -> Result<KvParams, Error> {
    let mut params = KvParams::default();
    let mut seen = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if seen.contains(&name) {
            return Err(Error::BadParameter(format!("{name} given twice")));
        }
        seen.push(name);
        match (name, operation) {
            ("r", Operation::Get) | ("w", Operation::Put | Operation::Delete) => {
                let n: u32 = value.parse().map_err(|_| {
                    Error::BadParameter(format!("{name} must be an integer, got {value:?}"))
                })?;
                if n == 0 || n > replication {
                    return Err(Error::BadParameter(format!(
                        "{name} must be between 1 and N={replication}, got {n}"
                    )));
                }
                params.quorum = Some(n);
            }
            ("timeout_ms", _) => {
                let ms: u64 = value.parse().map_err(|_| {
                    Error::BadParameter(format!("timeout_ms must be an integer, got {value:?}"))
                })?;
                if ms == 0 || ms > MAX_TIMEOUT_MS {
                    return Err(Error::BadParameter(format!(
                        "timeout_ms must be between 1 and {MAX_TIMEOUT_MS}, got {ms}"
                    )));
                }
                params.timeout = Some(Duration::from_millis(ms));
            }
            ("ttl", Operation::Put) => {
                params.ttl = Some(kvapi::ttl::parse(value).map_err(Error::BadParameter)?);
            }
            ("wait", Operation::Get) => params.wait = Some(super::watch::parse_wait(value)?),
            ("r" | "w" | "ttl" | "wait", _) => {
                return Err(Error::BadParameter(format!(
                    "{name} does not apply to {}",
                    operation.label()
                )));
            }
            _ => {
                return Err(Error::BadParameter(format!(
                    "unknown parameter {name:?}; known: {}",
                    kvapi::QUERY_PARAMS.join(", ")
                )));
            }
        }
    }
    Ok(params)
}

/// The client's causal context: none (a blind write), or a token this cluster issued for `key`.
fn parse_context(
    contexts: &ContextKeys,
    key: &[u8],
    headers: &HeaderMap,
) -> Result<VersionVector, Error> {
    match headers.get(CONTEXT_HEADER) {
        None => Ok(VersionVector::default()),
        Some(value) => {
            let token = value
                .to_str()
                .map_err(|_| Error::BadContext(ContextError::Malformed))?;
            Ok(contexts.decode(key, token)?)
        }
    }
}

fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_are_percent_decoded_bytes_within_limits() {
        assert_eq!(parse_key("/v1/kv/abc").unwrap(), b"abc");
        assert_eq!(parse_key("/v1/kv/a%2Fb%00%FF").unwrap(), b"a/b\x00\xff");
        assert!(matches!(parse_key("/v1/kv/"), Err(Error::BadKey(_))));
        assert!(matches!(parse_key("/v1/kv"), Err(Error::BadKey(_))));
        assert!(matches!(parse_key("/v1/kv/%zz"), Err(Error::BadKey(_))));
        assert!(matches!(parse_key("/v1/kv/ab%4"), Err(Error::BadKey(_))));
        let max = format!("/v1/kv/{}", "k".repeat(1024));
        assert_eq!(parse_key(&max).unwrap().len(), 1024);
        let over = format!("/v1/kv/{}", "%41".repeat(1025));
        assert!(matches!(parse_key(&over), Err(Error::BadKey(_))));
    }

    #[test]
    fn query_parameters_are_validated_per_operation() {
        use Operation::*;
        let ok = |q, op| parse_params(Some(q), op, 3);
        assert_eq!(ok("r=2", Get).unwrap().quorum, Some(2));
        assert_eq!(
            ok("w=3&timeout_ms=250", Put).unwrap(),
            KvParams {
                quorum: Some(3),
                timeout: Some(Duration::from_millis(250)),
                ttl: None,
                wait: None,
            }
        );
        assert_eq!(
            ok("wait=30s", Get).unwrap().wait,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            ok("ttl=30s", Put).unwrap().ttl,
            Some(kvapi::ttl::Expiry::After(Duration::from_secs(30)))
        );
        assert_eq!(
            ok("ttl=none", Put).unwrap().ttl,
            Some(kvapi::ttl::Expiry::Never)
        );
        assert_eq!(parse_params(None, Delete, 3).unwrap(), KvParams::default());
        for (q, op) in [
            ("r=4", Get),
            ("r=0", Get),
            ("r=x", Get),
            ("w=1", Get),
            ("r=1", Put),
            ("timeout_ms=0", Get),
            ("timeout_ms=60001", Put),
            ("colour=red", Get),
            ("r=1&r=1", Get),
            ("ttl=30s", Get),
            ("ttl=30s", Delete),
            ("ttl=0s", Put),
            ("ttl=soon", Put),
            ("ttl=400days", Put),
            ("wait=30s", Put),
            ("wait=61s", Get),
            ("wait=0s", Get),
            ("wait=x", Get),
        ] {
            assert!(
                matches!(ok(q, op), Err(Error::BadParameter(_))),
                "{q} accepted for {op:?}"
            );
        }
    }
}
