//! HTTP: the public key-value routes, health and metrics, and the connection loop that enforces the
//! transport limits.
//!
//! This module parses and validates requests, calls down into the replica, and turns results and
//! [`Error`]s into responses: the one place where errors become HTTP statuses. It never touches
//! storage directly.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use kvapi::{CONTEXT_HEADER, ErrorBody, ReadResponse, SiblingView, codes};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

use crate::antientropy::PAGE_BYTES;
use crate::causality::{SiblingSet, VersionVector, decode_context, encode_context};
use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::handoff::Handoff;
use crate::handoff::transfer::Transfers;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::rpc::{self, RequestBody, ResponseBody, RpcClient, RpcRequest, RpcResponse};

/// Largest `timeout_ms` a request may ask for.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// What the request handlers need: the coordinator and the layers peers talk to, metrics and limits.
pub struct Node {
    /// Runs client requests across replicas.
    pub coordinator: Coordinator,
    /// This node's data, for peers' reads and merges.
    pub replica: Arc<Replica>,
    /// The cluster config and peers' liveness.
    pub membership: Arc<Membership>,
    /// Peer client, to catch up with a peer that announces a newer epoch.
    pub rpc: Arc<RpcClient>,
    /// Hints held and delivered for other nodes.
    pub handoff: Arc<Handoff>,
    /// Partitions received during membership changes.
    pub transfers: Arc<Transfers>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Largest accepted value, in bytes.
    pub max_value_bytes: usize,
    /// Deadline of a request that names none.
    pub request_timeout: Duration,
    /// Bearer token required on admin routes, when set.
    pub admin_token: Option<String>,
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
    /// Time in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
}

/// The router of every HTTP route of the node.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/kv", any(kv))
        .route("/v1/kv/", any(kv))
        .route("/v1/kv/{*key}", any(kv))
        .route(kvapi::HEALTH_LIVE, any(live))
        .route(kvapi::HEALTH_READY, any(ready))
        .route(kvapi::METRICS, any(metrics))
        .route(kvapi::ADMIN_CLUSTER, any(admin_cluster))
        .route(kvapi::ADMIN_RING, any(admin_ring))
        .route(kvapi::ADMIN_STATUS, any(admin_status))
        .route(kvapi::ADMIN_DIGESTS, any(admin_digests))
        .route(kvapi::ADMIN_DRAIN, any(admin_drain))
        .route(rpc::RPC_PATH, any(peer_rpc))
        .fallback(no_route)
        .with_state(node)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// within the grace period.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
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
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
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
        let io = TokioIo::new(Box::pin(stream));
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(io, service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
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

/// The three key-value operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Get,
    Put,
    Delete,
}

impl Operation {
    fn label(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Put => "put",
            Operation::Delete => "delete",
        }
    }
}

/// Query parameters of a key-value request, validated.
#[derive(Debug, Default, PartialEq, Eq)]
struct KvParams {
    quorum: Option<u32>,
    timeout: Option<Duration>,
}

async fn kv(State(node): State<Arc<Node>>, request: Request) -> Response {
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
        operation.label(),
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
    let deadline = tokio::time::Instant::now() + timeout;
    let work = async {
        match operation {
            Operation::Get => {
                let wants_json = accepts_json(request.headers());
                get(node, key, params.quorum, deadline, wants_json).await
            }
            Operation::Put => {
                let context = parse_context(&key, request.headers())?;
                let value = read_value(request, node.max_value_bytes).await?;
                write(node, key, context, Some(value), params.quorum, deadline).await
            }
            Operation::Delete => {
                let context = parse_context(&key, request.headers())?;
                write(node, key, context, None, params.quorum, deadline).await
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
    let set = node.coordinator.read(key.clone(), r, deadline).await?;
    let context = encode_context(&key, set.context());
    if set.live().next().is_none() {
        // Absent, or only tombstones: the context of a deleted key still matters to a writer.
        let mut response = error_response(&Error::KeyNotFound);
        if !set.is_empty() {
            insert_context(response.headers_mut(), &context);
        }
        return Ok(response);
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
            Ok(response)
        }
        (siblings, _) => {
            let status = if siblings.len() == 1 {
                StatusCode::OK
            } else {
                StatusCode::MULTIPLE_CHOICES
            };
            let mut response =
                (status, axum::Json(read_response(&set, context.clone()))).into_response();
            insert_context(response.headers_mut(), &context);
            Ok(response)
        }
    }
}

async fn write(
    node: &Node,
    key: Arc<[u8]>,
    context: VersionVector,
    value: Option<Vec<u8>>,
    w: Option<u32>,
    deadline: tokio::time::Instant,
) -> Result<Response, Error> {
    let set = node
        .coordinator
        .write(key.clone(), context, value, w, deadline, false)
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    insert_context(response.headers_mut(), &encode_context(&key, set.context()));
    Ok(response)
}

fn read_response(set: &SiblingSet, context: String) -> ReadResponse {
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
    let bytes = encoded.as_bytes();
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'%') {
        let valid = bytes
            .get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if !valid {
            return Err(Error::BadKey(format!("invalid percent-escape at byte {i}")));
        }
    }
    let key: Vec<u8> = percent_encoding::percent_decode(bytes).collect();
    if key.len() < kvapi::MIN_KEY_BYTES || key.len() > kvapi::MAX_KEY_BYTES {
        return Err(Error::BadKey(format!(
            "key must be {}..={} bytes, got {}",
            kvapi::MIN_KEY_BYTES,
            kvapi::MAX_KEY_BYTES,
            key.len()
        )));
    }
    Ok(key)
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
            ("r" | "w", _) => {
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

fn parse_context(key: &[u8], headers: &HeaderMap) -> Result<VersionVector, Error> {
    match headers.get(CONTEXT_HEADER) {
        None => Ok(VersionVector::default()),
        Some(value) => {
            let token = value
                .to_str()
                .map_err(|_| Error::BadContext(crate::causality::ContextError::Malformed))?;
            Ok(decode_context(key, token)?)
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

/// Reads the body, refusing it as soon as it is known to exceed `limit`: up front from
/// `Content-Length`, or while streaming otherwise. Never buffers more than `limit` bytes.
async fn read_value(request: Request, limit: usize) -> Result<Vec<u8>, Error> {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit as u64) {
        return Err(Error::ValueTooLarge { limit });
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Error::ValueTooLarge { limit })
        }
        Err(e) => Err(Error::BadBody(e.to_string())),
    }
}

async fn live(request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return method_not_allowed(request.method());
    }
    (StatusCode::OK, "live\n").into_response()
}

async fn ready(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return method_not_allowed(request.method());
    }
    if node.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        error_response(&Error::Unavailable("node is not ready".into()))
    }
}

async fn metrics(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return method_not_allowed(request.method());
    }
    match node.replica.live_data_bytes() {
        Ok(bytes) => node
            .metrics
            .storage_live_data_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX)),
        Err(e) => tracing::warn!(error = %e, "cannot read the live data size"),
    }
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        node.metrics.render(),
    )
        .into_response()
}

/// `GET` reads the cluster config; `PUT` installs a newer one (409 when not newer).
async fn admin_cluster(State(node): State<Arc<Node>>, request: Request) -> Response {
    let outcome = async {
        authorize(&node, request.headers())?;
        match *request.method() {
            Method::GET => Ok(axum::Json(node.membership.view().config.clone()).into_response()),
            Method::PUT => {
                let bytes = read_value(request, 1024 * 1024).await?;
                let config: kvapi::ClusterConfig = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::BadConfig(format!("not a cluster config: {e}")))?;
                let offered = config.epoch;
                if node.membership.propose(config)? {
                    Ok(axum::Json(node.membership.view().config.clone()).into_response())
                } else {
                    Err(Error::StaleEpoch {
                        offered,
                        current: node.membership.view().config.epoch,
                    })
                }
            }
            ref other => Err(Error::MethodNotAllowed {
                method: other.to_string(),
                allow: "GET, PUT",
            }),
        }
    };
    outcome.await.unwrap_or_else(|e| error_response(&e))
}

/// `GET`: partition → preference list under the current config.
async fn admin_ring(State(node): State<Arc<Node>>, request: Request) -> Response {
    if let Err(e) = authorize(&node, request.headers()) {
        return error_response(&e);
    }
    if request.method() != Method::GET {
        return method_not_allowed(request.method());
    }
    let view = node.membership.view();
    let partitions = (0..view.ring.partitions())
        .map(|p| kvapi::PartitionView {
            partition: p,
            replicas: view
                .ring
                .preference_list(p as u16)
                .map(String::from)
                .collect(),
        })
        .collect();
    axum::Json(kvapi::RingView {
        epoch: view.config.epoch,
        partitions,
    })
    .into_response()
}

async fn admin_digests(State(node): State<Arc<Node>>, request: Request) -> Response {
    if let Err(e) = authorize(&node, request.headers()) {
        return error_response(&e);
    }
    if request.method() != Method::GET {
        return method_not_allowed(request.method());
    }
    let view = node.membership.view();
    let replica = node.replica.clone();
    let partitions = view.ring.partitions() as u16;
    let scanned = tokio::task::spawn_blocking(move || {
        let mut digests = Vec::new();
        for p in 0..partitions {
            let summary = replica.storage().summary(p)?;
            if summary.keys > 0 {
                digests.push(kvapi::PartitionDigest {
                    partition: p.into(),
                    root: format!("{:016x}", summary.root),
                    keys: summary.keys,
                });
            }
        }
        Ok::<_, Error>(digests)
    })
    .await;
    match scanned.map_err(Error::from).and_then(|digests| digests) {
        Ok(partitions) => axum::Json(kvapi::PartitionDigests {
            node_id: node.membership.node_id().to_string(),
            epoch: view.config.epoch,
            partitions,
        })
        .into_response(),
        Err(e) => error_response(&e),
    }
}

/// This node's view of the cluster, its hints and its transfers.
fn node_status(node: &Node) -> kvapi::NodeStatus {
    let view = node.membership.view();
    let node_id = node.membership.node_id().to_string();
    kvapi::NodeStatus {
        member: view.config.member(&node_id).is_some(),
        node_id,
        config: view.config.clone(),
        peers: node.membership.peer_statuses(),
        hints_pending: node.replica.storage().hints_pending(),
        draining: node.handoff.draining(),
        transfer: node.transfers.status(),
    }
}

/// `GET`: this node's view of the cluster.
async fn admin_status(State(node): State<Arc<Node>>, request: Request) -> Response {
    if let Err(e) = authorize(&node, request.headers()) {
        return error_response(&e);
    }
    if request.method() != Method::GET {
        return method_not_allowed(request.method());
    }
    axum::Json(node_status(&node)).into_response()
}

/// `POST`: start handing off everything this node holds (hints at once); answers 202 with the
/// status, in which `draining` and `hints_pending` show the progress.
async fn admin_drain(State(node): State<Arc<Node>>, request: Request) -> Response {
    if let Err(e) = authorize(&node, request.headers()) {
        return error_response(&e);
    }
    if request.method() != Method::POST {
        return error_response(&Error::MethodNotAllowed {
            method: request.method().to_string(),
            allow: "POST",
        });
    }
    node.handoff.drain();
    (StatusCode::ACCEPTED, axum::Json(node_status(&node))).into_response()
}

fn authorize(node: &Node, headers: &HeaderMap) -> Result<(), Error> {
    let Some(token) = &node.admin_token else {
        return Ok(());
    };
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if offered == Some(token.as_str()) {
        Ok(())
    } else {
        Err(Error::Unauthorized)
    }
}

/// `POST /internal/v1/rpc`: one peer message in, one answer out.
async fn peer_rpc(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::POST {
        return error_response(&Error::MethodNotAllowed {
            method: request.method().to_string(),
            allow: "POST",
        });
    }
    let outcome = async {
        let bytes = read_value(request, rpc::MAX_RPC_BYTES).await?;
        let message: RpcRequest = rpc::decode(&bytes)?;
        let view = node.membership.view();
        if view.config.epoch > 0 && message.cluster != view.config.cluster {
            return Err(Error::BadConfig(format!(
                "message from cluster {:?}, this node belongs to {:?}",
                message.cluster, view.config.cluster
            )));
        }
        if view.config.any_member(&message.sender).is_some() {
            // A message from a peer proves it is up: end its backoff now rather than at the next ping.
            node.membership
                .record_success(&message.sender, message.epoch);
        }
        if message.epoch > view.config.epoch {
            node.rpc.catch_up(&message.sender);
        }
        let body = answer_peer(&node, message.body).await;
        Ok(rpc::encode(&RpcResponse {
            epoch: node.membership.view().config.epoch,
            body,
        }))
    };
    match outcome.await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn answer_peer(node: &Node, body: RequestBody) -> ResponseBody {
    let result = match body {
        RequestBody::Ping => Ok(ResponseBody::Pong),
        RequestBody::FetchConfig => Ok(ResponseBody::Config(node.membership.view().config.clone())),
        RequestBody::Read { partition, key } => node
            .replica
            .read(partition, key.into())
            .await
            .map(|set| ResponseBody::State(SiblingSet::clone(&set))),
        RequestBody::Merge {
            partition,
            key,
            set,
        } => match check_owner(node, partition) {
            Ok(()) => node
                .replica
                .merge(partition, key.into(), set)
                .await
                .map(|_| ResponseBody::Merged),
            Err(e) => Err(e),
        },
        RequestBody::MergeBatch { partition, records } => match check_owner(node, partition) {
            Ok(()) => node
                .replica
                .merge_many(partition, records)
                .await
                .map(ResponseBody::Changed),
            Err(e) => Err(e),
        },
        RequestBody::StoreHint { target, hint } => node
            .handoff
            .store(target, hint)
            .await
            .map(|()| ResponseBody::Merged),
        RequestBody::DeliverHints(hints) => node
            .handoff
            .accept(hints)
            .await
            .map(|()| ResponseBody::Merged),
        RequestBody::Summary { partition } => node
            .replica
            .with_storage(move |s| s.summary(partition))
            .await
            .map(|summary| ResponseBody::Summary(summary.leaves)),
        RequestBody::FetchSegments {
            partition,
            segments,
            after,
            max_bytes,
        } => {
            // A peer's budget is honoured up to a few pages, so no answer grows without bound.
            let budget = max_bytes.min(4 * PAGE_BYTES) as usize;
            node.replica
                .with_storage(move |s| {
                    s.scan_segments(partition, &segments, after.as_deref(), budget)
                })
                .await
                .map(|page| ResponseBody::Records {
                    records: page.records,
                    next: page.next,
                })
        }
        RequestBody::PurgeTombstones { partition, keys } => node
            .replica
            .purge_tombstones(partition, keys)
            .await
            .map(ResponseBody::Changed),
        RequestBody::TransferProgress => {
            let (epoch, done) = node.transfers.progress();
            Ok(ResponseBody::Progress { epoch, done })
        }
        RequestBody::Coordinate {
            key,
            context,
            value,
            w,
            timeout_ms,
        } => {
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(timeout_ms.min(MAX_TIMEOUT_MS));
            node.coordinator
                .write(key.into(), context, value, w, deadline, true)
                .await
                .map(|set| ResponseBody::State(SiblingSet::clone(&set)))
        }
    };
    result.unwrap_or_else(|e| {
        let (status, error) = error_parts(&e);
        ResponseBody::Failed {
            status: status.as_u16(),
            error,
        }
    })
}

/// Refuses replica writes for a partition this node does not hold at its epoch: the sender follows
/// an older config, and the answer's epoch makes it catch up.
fn check_owner(node: &Node, partition: u16) -> Result<(), Error> {
    let view = node.membership.view();
    if view.is_owner(node.membership.node_id(), partition) {
        Ok(())
    } else {
        Err(Error::NotOwner(format!(
            "{} does not hold partition {partition} at epoch {}",
            node.membership.node_id(),
            view.config.epoch
        )))
    }
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

fn insert_context(headers: &mut HeaderMap, context: &str) {
    // Tokens are base64url, always a valid header value.
    if let Ok(value) = HeaderValue::from_str(context) {
        headers.insert(CONTEXT_HEADER, value);
    }
}

/// The one mapping from [`Error`] to an HTTP status and JSON body.
fn error_parts(error: &Error) -> (StatusCode, ErrorBody) {
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
        Error::Rpc(_) => (StatusCode::BAD_REQUEST, codes::BAD_RPC),
        Error::Unauthorized => (StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED),
        Error::NoRoute(_) | Error::KeyNotFound => (StatusCode::NOT_FOUND, codes::NOT_FOUND),
        Error::MethodNotAllowed { .. } => {
            (StatusCode::METHOD_NOT_ALLOWED, codes::METHOD_NOT_ALLOWED)
        }
        Error::TooManySiblings { .. } => (StatusCode::CONFLICT, codes::TOO_MANY_SIBLINGS),
        Error::StaleEpoch { .. } | Error::NotOwner(_) => (StatusCode::CONFLICT, codes::STALE_EPOCH),
        Error::TransitionInProgress(_) => (StatusCode::CONFLICT, codes::TRANSITION_IN_PROGRESS),
        Error::ValueTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, codes::VALUE_TOO_LARGE),
        Error::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, codes::DEADLINE_EXCEEDED),
        Error::QuorumNotReached { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, codes::QUORUM_NOT_REACHED)
        }
        Error::Unavailable(_) | Error::PeerUnavailable(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE)
        }
        Error::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, codes::CORRUPT_RECORD),
        Error::Storage(_) | Error::Internal(_) | Error::Remote { .. } => {
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
    if let Error::ValueTooLarge { .. } = error {
        // The rest of the body was never read: the connection cannot carry another request, and
        // saying so keeps clients from reusing it.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
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
            }
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
        ] {
            assert!(
                matches!(ok(q, op), Err(Error::BadParameter(_))),
                "{q} accepted for {op:?}"
            );
        }
    }
}
