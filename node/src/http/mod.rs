//! HTTP: the routes of a node and the connection loop that enforces the transport limits.
//!
//! - `kv`: the public key-value routes, which parse and validate requests and call the coordinator;
//! - `list` and `batch`: listing the keys under a prefix, and many keys' operations in one request;
//! - `admin`: health, metrics and the `/admin/v1/` routes;
//! - `peer`: peer RPC, one message in and one answer out, served on the peer port only;
//! - `auth`: the bearer tokens, checked in front of every route.
//!
//! This module holds what they share, and is the one place where [`Error`]s become HTTP statuses.
//! Key-value and peer routes reach data only through the coordinator and the replica; the admin
//! routes read storage for digests and the hint count.

mod admin;
pub mod auth;
mod batch;
mod in_flight;
mod kv;
mod list;
pub mod peer;
mod peer_checks;
mod query;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use kvapi::{CONTEXT_HEADER, ErrorBody, codes};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;

use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::handoff::Handoff;
use crate::handoff::transfer::Transfers;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::rpc;
use crate::tls::ServerTls;
use crate::transport::Peers;

/// A connection's byte stream, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Largest `timeout_ms` a request may ask for.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// Most bytes reserved up front for a body from its `Content-Length`; a larger body grows its buffer
/// as it arrives, so an announcement alone never costs memory.
const PREALLOCATE_BYTES: usize = 1024 * 1024;

/// What the request handlers need: the coordinator and the layers peers talk to, metrics and limits.
pub struct Node {
    /// Runs client requests across replicas.
    pub coordinator: Coordinator,
    /// This node's data, for peers' reads and merges.
    pub replica: Arc<Replica>,
    /// The cluster config and peers' liveness.
    pub membership: Arc<Membership>,
    /// Peer client, to catch up with a peer that announces a newer epoch.
    pub rpc: Arc<dyn Peers>,
    /// Hints held and delivered for other nodes.
    pub handoff: Arc<Handoff>,
    /// Partitions received during membership changes.
    pub transfers: Arc<Transfers>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Largest accepted value, in bytes.
    pub max_value_bytes: usize,
    /// Time to live of a value written without `?ttl=`.
    pub default_ttl: Option<Duration>,
    /// The cap on requests waiting for a change.
    pub watchers: crate::watch::Watchers,
    /// Deadline of a request that names none.
    pub request_timeout: Duration,
    /// Time any request body may take to arrive.
    pub body_read_timeout: Duration,
    /// Largest peer message accepted, in bytes: see [`rpc::max_message_bytes`].
    pub max_peer_message_bytes: usize,
    /// Most requests handled at once, health probes aside.
    pub max_requests_in_flight: usize,
    /// Which bearer token may use which route.
    pub auth: Arc<auth::Authorizer>,
    /// Backups of this node and restores through it.
    pub backups: Arc<crate::backup::Backups>,
    /// False while starting or shutting down: readiness and key routes answer 503.
    pub ready: AtomicBool,
}

/// Transport limits of the connection loop.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Time allowed for a request head to arrive.
    pub header_read_timeout: Duration,
    /// A connection with no read for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// A connection whose client takes no response bytes for this long is closed.
    pub write_timeout: Duration,
    /// Time in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
}

/// The routers of the client port (key-value, health, metrics and admin routes) and of the peer port
/// (peer RPC only, a 404 on the client port), under one bound on requests in flight for the node.
pub fn routers(node: Arc<Node>) -> (Router, Router) {
    let bound = in_flight::InFlight::new(node.max_requests_in_flight, node.metrics.clone());
    let client = Router::new()
        .route(kvapi::list::LIST_PATH, any(list::list))
        .route(kvapi::KV_PREFIX, any(kv::kv))
        .route(kvapi::batch::BATCH_PATH, any(batch::batch))
        .route("/v1/kv/{*key}", any(kv::kv))
        .route(kvapi::watch::WATCH, any(watch::feed))
        .route(kvapi::HEALTH_LIVE, any(admin::live))
        .route(kvapi::HEALTH_READY, any(admin::ready))
        .route(kvapi::METRICS, any(admin::metrics))
        .route(kvapi::ADMIN_CLUSTER, any(admin::admin_cluster))
        .route(kvapi::ADMIN_RING, any(admin::admin_ring))
        .route(kvapi::ADMIN_STATUS, any(admin::admin_status))
        .route(kvapi::ADMIN_DIGESTS, any(admin::admin_digests))
        .route(kvapi::ADMIN_DRAIN, any(admin::admin_drain))
        .route(kvapi::ADMIN_BACKUP, any(admin::admin_backup))
        .route(kvapi::ADMIN_RESTORE, any(admin::admin_restore))
        .route(kvapi::ADMIN_HANDOFF_HOLD, any(admin::admin_handoff_hold))
        .fallback(no_route)
        // The outermost layer runs first: the in-flight bound also holds back unauthenticated floods.
        .layer(from_fn_with_state(node.auth.clone(), auth::require))
        .layer(from_fn_with_state(
            bound.clone(),
            in_flight::bound_in_flight,
        ))
        .with_state(node.clone());
    // Peers are authenticated by mutual TLS, not by tokens.
    let peer = Router::new()
        .route(rpc::RPC_PATH, any(peer::peer_rpc))
        .fallback(no_route)
        .layer(from_fn_with_state(bound, in_flight::bound_in_flight))
        .with_state(node);
    (client, peer)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// within the grace period. With `tls`, each connection first completes a TLS handshake, which must
/// finish within the header-read timeout: a client that connects and sends nothing gives its
/// connection slot back then.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // Take a connection slot before accepting, so excess clients wait in the kernel's backlog
        // instead of costing memory here.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Usually EMFILE: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(stream);
        stream.set_read_timeout(Some(limits.idle_timeout));
        stream.set_write_timeout(Some(limits.write_timeout));
        let stream = Box::pin(stream);
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls
            .as_ref()
            .map(|config| (TlsAcceptor::from(config()), limits.header_read_timeout));
        tokio::spawn(async move {
            let io: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some((acceptor, deadline)) => {
                    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => Box::new(stream),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(?deadline, "TLS handshake not done in time");
                            return;
                        }
                    }
                }
            };
            let connection = builder.serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?limits.shutdown_grace, "connections still open after the shutdown grace period");
    }
}

/// Reads the body within the node's body read timeout, refusing it as soon as it is known to exceed
/// `limit`: up front from `Content-Length`, or while streaming otherwise. Frames are appended to one
/// buffer as they come, so the body is held once and never copied whole.
async fn read_value(node: &Node, request: Request, limit: usize) -> Result<Vec<u8>, Error> {
    let timeout = node.body_read_timeout;
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit as u64) {
        return Err(Error::ValueTooLarge { limit });
    }
    let capacity = announced
        .map_or(0, |len| len as usize)
        .min(PREALLOCATE_BYTES);
    let read = async move {
        let mut body = request.into_body();
        let mut value = Vec::with_capacity(capacity);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::BadBody(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if value.len() + data.len() > limit {
                    return Err(Error::ValueTooLarge { limit });
                }
                value.extend_from_slice(&data);
            }
        }
        Ok(value)
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        node.metrics
            .requests_rejected
            .with_label_values(&[crate::metrics::REJECTED_BODY_TIMEOUT])
            .inc();
        Error::BodyTimeout(timeout)
    })?
}

async fn no_route(request: Request) -> Response {
    error_response(&Error::NoRoute(request.uri().path().to_string()))
}

fn method_not_allowed(method: &Method) -> Response {
    error_response(&Error::MethodNotAllowed {
        method: method.to_string(),
        allow: "GET, HEAD",
    })
}

/// The one mapping from [`Error`] to an HTTP status and JSON body.
fn insert_context(headers: &mut HeaderMap, context: &str) {
    // Tokens are base64url, always a valid header value.
    if let Ok(value) = HeaderValue::from_str(context) {
        headers.insert(CONTEXT_HEADER, value);
    }
}

/// An error's HTTP status and JSON body (also what a peer's `Failed` answer carries).
pub fn error_parts(error: &Error) -> (StatusCode, ErrorBody) {
    if let Error::Remote { status, body } = error {
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
        return (status, body.clone());
    }
    let (status, code) = match error {
        Error::BadKey(_) => (StatusCode::BAD_REQUEST, codes::BAD_KEY),
        Error::BadParameter(_) => (StatusCode::BAD_REQUEST, codes::BAD_PARAMETER),
        Error::BadContext(_) => (StatusCode::BAD_REQUEST, codes::BAD_CONTEXT),
        Error::BadBody(_) => (StatusCode::BAD_REQUEST, codes::BAD_BODY),
        Error::BadConfig(_) => (StatusCode::BAD_REQUEST, codes::BAD_CONFIG),
        Error::BadPeerMessage(_) => (StatusCode::BAD_REQUEST, codes::BAD_RPC),
        Error::Unauthorized => (StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED),
        Error::Forbidden(_) => (StatusCode::FORBIDDEN, codes::FORBIDDEN),
        Error::NoRoute(_) | Error::KeyNotFound => (StatusCode::NOT_FOUND, codes::NOT_FOUND),
        Error::MethodNotAllowed { .. } => {
            (StatusCode::METHOD_NOT_ALLOWED, codes::METHOD_NOT_ALLOWED)
        }
        Error::TooManySiblings { .. } => (StatusCode::CONFLICT, codes::TOO_MANY_SIBLINGS),
        Error::Causality(_) => (StatusCode::CONFLICT, codes::CAUSAL_LIMIT),
        Error::StaleEpoch { .. } | Error::NotOwner(_) => (StatusCode::CONFLICT, codes::STALE_EPOCH),
        Error::TransitionInProgress(_) => (StatusCode::CONFLICT, codes::TRANSITION_IN_PROGRESS),
        Error::ValueTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, codes::VALUE_TOO_LARGE),
        Error::RecordTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, codes::RECORD_TOO_LARGE),
        Error::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, codes::BODY_TIMEOUT),
        Error::TooManyWatchers(_) => (StatusCode::TOO_MANY_REQUESTS, codes::TOO_MANY_WATCHERS),
        Error::CursorGone(_) => (StatusCode::GONE, codes::CURSOR_GONE),
        Error::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, codes::DEADLINE_EXCEEDED),
        Error::QuorumNotReached { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, codes::QUORUM_NOT_REACHED)
        }
        Error::Unavailable(_) | Error::PeerUnavailable(_) | Error::PeerFailed(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE)
        }
        Error::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, codes::CORRUPT_RECORD),
        Error::Backup(_) => (StatusCode::BAD_GATEWAY, codes::BACKUP_FAILED),
        Error::Storage(_) | Error::Internal(_) | Error::BadToken(_) | Error::Remote { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL)
        }
    };
    let (replied, required) = match error {
        Error::QuorumNotReached { replied, required } => (Some(*replied), Some(*required)),
        _ => (None, None),
    };
    let body = ErrorBody {
        error: code.to_string(),
        message: error.to_string(),
        context: match error {
            Error::TooManySiblings { context, .. } => Some(context.clone()),
            _ => None,
        },
        replied,
        required,
    };
    (status, body)
}

/// An error as a response: [`error_parts`] plus the headers some errors carry.
fn error_response(error: &Error) -> Response {
    let (status, body) = error_parts(error);
    if status.is_server_error() {
        tracing::warn!(%error, "request failed");
    }
    let context = body.context.clone();
    let mut response = (status, axum::Json(body)).into_response();
    if let Error::MethodNotAllowed { allow, .. } = error {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(context) = context {
        insert_context(response.headers_mut(), &context);
    }
    if let Error::ValueTooLarge { .. } | Error::BodyTimeout(_) = error {
        // The rest of the body was never read: the connection cannot carry another request, and
        // saying so keeps clients from reusing it.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
