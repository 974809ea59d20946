//! The sending side of peer RPC: pooled HTTP/2 connections to each peer, liveness and epochs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kvapi::ErrorBody;

use super::{
    PING_INTERVAL, RPC_PATH, RequestBody, ResponseBody, RpcRequest, RpcResponse, decode, encode,
};
use crate::error::Error;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::tls::{PeerTls, Reloading};
use crate::transport::{self, BoxFuture, Peers};

/// Sends RPCs to peers over pooled HTTP/2 connections, tracking their liveness and epochs.
///
/// Each peer address has a connection pool of its own. A call that times out after waiting at
/// least [`STALL_TIMEOUT`], with no answer on that pool since it started, discards the pool: over a
/// connection whose packets were dropped (a network partition, a paused peer) every later request
/// would wait for TCP's retransmission backoff long after the network healed, while a new
/// connection works at once. A call given less time says nothing about the connection.
pub struct RpcClient {
    connector: HttpConnector,
    max_message_bytes: usize,
    /// Peer TLS, or `None` for plain HTTP/2 (then `plain` types the connector).
    tls: Option<Arc<Reloading<PeerTls>>>,
    plain: Arc<rustls::ClientConfig>,
    pools: Mutex<HashMap<String, PeerPool>>,
    generation: AtomicU64,
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
    /// This client, for the catch-ups its answers start.
    me: Weak<RpcClient>,
}

/// The shortest timeout after which a call with no answer condemns its connection pool.
pub const STALL_TIMEOUT: Duration = PING_INTERVAL;

/// The client of one peer pool.
type PoolClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The connection pool of one peer address.
#[derive(Clone)]
struct PeerPool {
    /// Tells this pool from one made after it was discarded.
    generation: u64,
    /// The TLS files' generation its connections present (see [`Reloading::generation`]).
    tls_generation: u64,
    client: PoolClient,
    /// When a call on this pool last got an answer.
    last_answer: Arc<Mutex<Option<Instant>>>,
}

impl RpcClient {
    /// A client for the peers of `membership`, connecting from `source` when given, that refuses
    /// answers larger than `max_message_bytes`, with mutual TLS when `tls` is given, recording each
    /// call's latency and failure in `metrics`.
    pub fn new(
        membership: Arc<Membership>,
        metrics: Arc<Metrics>,
        source: Option<IpAddr>,
        max_message_bytes: usize,
        tls: Option<Arc<Reloading<PeerTls>>>,
    ) -> Result<Arc<Self>, Error> {
        let mut connector = HttpConnector::new();
        connector.set_local_address(source);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        // The TLS layer sees `https` URIs only.
        connector.enforce_http(false);
        let plain = crate::tls::plain_peer_client()?;
        Ok(Arc::new_cyclic(|me| RpcClient {
            connector,
            max_message_bytes,
            tls,
            plain,
            pools: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            membership,
            metrics,
            me: me.clone(),
        }))
    }

    /// The URI scheme of peer calls.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The pool of `address`, created on first use and again after the TLS files changed, so new
    /// connections present the new certificate (calls in flight finish on the old pool).
    fn pool(&self, address: &str) -> PeerPool {
        let (tls_generation, tls_config) = match &self.tls {
            Some(tls) => (tls.generation(), tls.current().client.clone()),
            None => (0, self.plain.clone()),
        };
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.get(address)
            && pool.tls_generation == tls_generation
        {
            return pool.clone();
        }
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(rustls::ClientConfig::clone(&tls_config))
            .https_or_http()
            .enable_http2()
            .wrap_connector(self.connector.clone());
        let pool = PeerPool {
            generation: self.generation.fetch_add(1, Ordering::Relaxed),
            tls_generation,
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .http2_keep_alive_interval(Some(Duration::from_secs(5)))
                .http2_keep_alive_timeout(Duration::from_secs(5))
                .build(connector),
            last_answer: Arc::new(Mutex::new(None)),
        };
        pools.insert(address.to_string(), pool.clone());
        pool
    }

    /// After a call on `pool` that started at `started` timed out after `timeout`: drops the pool
    /// if it looks stalled (see [`RpcClient`]) and is still the current one for `address`.
    fn discard_if_stalled(
        &self,
        address: &str,
        pool: &PeerPool,
        started: Instant,
        timeout: Duration,
    ) {
        let answered_since = pool
            .last_answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at >= started);
        if timeout < STALL_TIMEOUT || answered_since {
            return;
        }
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if pools
            .get(address)
            .is_some_and(|current| current.generation == pool.generation)
        {
            pools.remove(address);
        }
    }

    /// Sends `request` to `peer` at `address` and waits at most `timeout` for the answer. Requests
    /// always try: a peer that is down refuses the connection at once (or the connect timeout of
    /// 500 ms bounds the attempt), and skipping a peer that has just come back would fail quorums
    /// it could meet.
    async fn exchange(
        &self,
        peer: &str,
        address: String,
        request: RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, Error> {
        let rpc = request.body.kind();
        let pool = self.pool(&address);
        let started = Instant::now();
        let uri = format!("{}://{address}{RPC_PATH}", self.scheme());
        let outcome = tokio::time::timeout(timeout, self.send(&pool.client, &uri, &request)).await;
        let error = match &outcome {
            Ok(Ok(_)) => None,
            Ok(Err(Error::PeerUnavailable(_))) => Some("connection"),
            Ok(Err(_)) => Some("protocol"),
            Err(_) => Some("timeout"),
        };
        self.metrics
            .observe_peer_rpc(peer, rpc, started.elapsed().as_secs_f64(), error);
        match outcome {
            Ok(Ok(response)) => {
                *pool.last_answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                Ok(response)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                self.discard_if_stalled(&address, &pool, started, timeout);
                Err(Error::PeerUnavailable(format!(
                    "{peer} timed out after {timeout:?}"
                )))
            }
        }
    }

    async fn send(
        &self,
        pool: &PoolClient,
        uri: &str,
        request: &RpcRequest,
    ) -> Result<RpcResponse, Error> {
        let http_request = hyper::Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(Bytes::from(encode(request))))
            .map_err(|e| Error::PeerFailed(format!("cannot build request: {e}")))?;
        let response = pool
            .request(http_request)
            .await
            .map_err(|e| Error::PeerUnavailable(format!("{uri}: {}", with_causes(&e))))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), self.max_message_bytes)
            .collect()
            .await
            .map_err(|e| Error::PeerUnavailable(format!("{uri}: {e}")))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(Error::PeerFailed(format!(
                "{uri} answered {status}: {message}"
            )));
        }
        // An answer this node cannot read is the peer's failure, not the client's request's.
        decode(&bytes).map_err(|e| Error::PeerFailed(format!("{uri}: {e}")))
    }
}

impl Peers for RpcClient {
    fn call<'a>(
        &'a self,
        peer: &'a str,
        body: RequestBody,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ResponseBody, Error>> {
        Box::pin(async move {
            let address = self
                .membership
                .view()
                .peer_address(peer)
                .ok_or_else(|| Error::PeerFailed(format!("{peer} is not a member")))?
                .to_string();
            let request = transport::envelope(&self.membership, body);
            let sent_at = request.epoch;
            let outcome = self.exchange(peer, address, request, timeout).await;
            let me: Arc<dyn Peers> = self.me.upgrade().ok_or_else(|| {
                Error::Unavailable("the peer client is shutting down".to_string())
            })?;
            transport::settle(&me, &self.membership, peer, sent_at, outcome)
        })
    }
}

/// `error` with its chain of causes, which say why a connection failed (such as a TLS alert).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}
