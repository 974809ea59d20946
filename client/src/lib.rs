//! Async Rust client for kvcluster.
//!
//! A [`Client`] talks to one kvnode over HTTP/1.1, plain or https (any node of a cluster coordinates or
//! forwards a request, see DESIGN.md section 3), sending a bearer token when given one, using the public routes of section 5 and the wire contract of
//! [`kvapi`]: `GET|PUT|DELETE /v1/kv/{key}`, the `X-Kv-Context` causal-context header, the `r`, `w` and
//! `timeout_ms` query parameters and JSON error bodies.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kvclient::Error> {
//! use kvclient::{Client, ReadOptions, ReadResult, WriteOptions};
//!
//! let client = Client::new("http://127.0.0.1:8080")?;
//! let ctx = client.put(b"user/42", b"alice".to_vec(), None, &WriteOptions::default()).await?;
//! match client.get(b"user/42", &ReadOptions::default()).await? {
//!     ReadResult::Found { context, siblings } => println!("{} sibling(s), context {context}", siblings.len()),
//!     ReadResult::NotFound { .. } => println!("gone"),
//! }
//! client.delete(b"user/42", Some(&ctx), &WriteOptions::default()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! With a token and a private CA: `Client::builder("https://kv-0.example:8080").token("…").ca_cert_pem(pem)
//! .build()?`. Through several nodes, with failover and retries: [`Nodes`]; read-modify-write with
//! the caller's merge of siblings: [`Nodes::update`]. The keys under a prefix: [`Client::list`] and
//! [`Client::list_all`]; many keys in one request: [`Client::batch`].

pub mod backup;
mod connect;
mod failover;
mod list;
mod watch;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use kvapi::{
    ADMIN_BACKUP, ADMIN_CLUSTER, ADMIN_DRAIN, ADMIN_HANDOFF_HOLD, ADMIN_RESTORE, ADMIN_RING,
    ADMIN_STATUS, BackupReport, BackupRequest, CONTEXT_HEADER, ClusterConfig, ErrorBody,
    HandoffHold, KV_PREFIX, MAX_KEY_BYTES, NodeStatus, ReadResponse, RestoreReport, RestoreRequest,
    RingView,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};

pub use connect::ClientBuilder;
pub use failover::{Nodes, RetryPolicy, is_retryable};
pub use list::{BatchOptions, ListOptions};
pub use watch::Changes;

/// Overall deadline of a request made by [`Client::new`] when the request sets no `timeout_ms`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for establishing a TCP connection to the node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time the client waits past a request's `timeout_ms`, so the node's own 504 answer arrives
/// before the client gives up on the connection.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(2);

/// Error code of the synthetic [`ErrorBody`] built when an error answer's body is not the JSON of the
/// contract (a proxy's HTML page, an empty body, ...).
pub const UNEXPECTED_CODE: &str = "unexpected";

/// Longest excerpt of a non-JSON error body kept in a synthetic [`ErrorBody::message`].
const MAX_EXCERPT_CHARS: usize = 512;

/// Bytes left as they are in a key's path segment: the RFC 3986 unreserved set `[A-Za-z0-9-._~]`.
/// Every other byte, `/` included, is percent-encoded.
const KEY_ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Everything that can go wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not a usable `http[s]://host[:port][/path]` URL.
    #[error("bad endpoint {endpoint:?}: {reason}")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
    /// The key cannot be sent: empty, longer than [`MAX_KEY_BYTES`], or exactly `.` or `..` (URL
    /// normalisation would remove such a path segment before it reached the node).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The causal context holds characters that an HTTP header value cannot carry.
    #[error("invalid context: {0}")]
    InvalidContext(String),
    /// The bearer token cannot be used (see [`kvapi::parse_tokens`]); the message never quotes it.
    #[error("bad token: {0}")]
    BadToken(String),
    /// The TLS settings cannot be used: an unreadable or empty CA certificate, no system roots.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The request could not be sent or its answer not received: connection refused, timeout, reset.
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The node answered with an error status; `body` is its JSON error body, or a synthetic one with code
    /// [`UNEXPECTED_CODE`] when the body was not JSON.
    #[error("{status} {}: {}", body.error, body.message)]
    Server {
        /// HTTP status code.
        status: u16,
        /// The decoded error body.
        body: ErrorBody,
    },
    /// A request through [`Nodes`] got no answer within its deadline, over every attempt.
    #[error("no answer within the {deadline:?} deadline after {attempts} attempt(s)")]
    DeadlineExceeded {
        /// The policy's deadline.
        deadline: Duration,
        /// Attempts made.
        attempts: u32,
    },
    /// The node answered with a success status but broke the wire contract (missing context header,
    /// malformed JSON or base64, unexpected status).
    #[error("invalid response from the node: {0}")]
    InvalidResponse(String),
}

impl Error {
    /// The HTTP status of a [`Error::Server`] answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Server { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The machine-readable code (see [`kvapi::codes`]) of a [`Error::Server`] answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { body, .. } => Some(&body.error),
            _ => None,
        }
    }
}

/// Per-request options of a read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Read quorum for this request (`?r=`), within 1..=N; the cluster default when `None`.
    pub r: Option<u32>,
    /// Deadline of this request in milliseconds (`?timeout_ms=`); the node default when `None`.
    pub timeout_ms: Option<u64>,
}

impl ReadOptions {
    /// The query string (with its leading `?`, or empty) for these options.
    fn query(&self) -> String {
        query_string(&[
            ("r", self.r.map(u64::from)),
            ("timeout_ms", self.timeout_ms),
        ])
    }
}

/// Per-request options of a write or a delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Write quorum for this request (`?w=`), within 1..=N; the cluster default when `None`.
    pub w: Option<u32>,
    /// Deadline of this request in milliseconds (`?timeout_ms=`); the node default when `None`.
    pub timeout_ms: Option<u64>,
    /// Time to live of a put's value (`?ttl=`, within [`kvapi::ttl::MIN_TTL`]..=
    /// [`kvapi::ttl::MAX_TTL`], or never); the node's default when `None`. A delete with one is
    /// refused (400).
    pub ttl: Option<kvapi::ttl::Expiry>,
}

impl WriteOptions {
    /// The query string (with its leading `?`, or empty) for these options.
    fn query(&self) -> String {
        let mut query = query_string(&[
            ("w", self.w.map(u64::from)),
            ("timeout_ms", self.timeout_ms),
        ]);
        if let Some(ttl) = self.ttl {
            query.push(if query.is_empty() { '?' } else { '&' });
            query.push_str(&format!("ttl={ttl}"));
        }
        query
    }
}

/// One of the causally concurrent values of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    /// The value bytes; empty for a tombstone.
    pub value: Vec<u8>,
    /// True for a tombstone left by a delete.
    pub deleted: bool,
}

/// The outcome of [`Client::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    /// The key is absent or deleted (404).
    NotFound {
        /// The causal context of a deleted key, to send with a later write; `None` when the key never
        /// existed.
        context: Option<String>,
    },
    /// The key holds one or more siblings (200, or 300 when several are live).
    Found {
        /// Opaque causal context to send back with the next write of this key.
        context: String,
        /// Every sibling the node returned, tombstones included (see [`ReadResult::live`]).
        siblings: Vec<Sibling>,
    },
}

impl ReadResult {
    /// The causal context, when the node returned one.
    pub fn context(&self) -> Option<&str> {
        match self {
            ReadResult::NotFound { context } => context.as_deref(),
            ReadResult::Found { context, .. } => Some(context),
        }
    }

    /// The live (not deleted) siblings, in the order the node returned them.
    pub fn live(&self) -> impl Iterator<Item = &Sibling> {
        let siblings: &[Sibling] = match self {
            ReadResult::NotFound { .. } => &[],
            ReadResult::Found { siblings, .. } => siblings,
        };
        siblings.iter().filter(|s| !s.deleted)
    }
}

/// An async client bound to one node endpoint.
///
/// Cheap to clone: clones share one connection pool. Its `Debug` form never shows the token.
#[derive(Debug, Clone)]
pub struct Client {
    /// Pooled HTTP client, with the token (if any) as a default header and the TLS trust.
    http: reqwest::Client,
    /// Normalised endpoint without a trailing slash, such as `http://127.0.0.1:8080`.
    base: String,
    /// Overall deadline of a request that sets no `timeout_ms`.
    timeout: Duration,
}

impl Client {
    /// A client for the node at `endpoint` (`http://host:port` or `https://host:port`, optionally with a
    /// path prefix; a bare `host:port` means `http://host:port`), with the [`DEFAULT_TIMEOUT`], no token
    /// and, for https, the system's roots.
    pub fn new(endpoint: &str) -> Result<Client, Error> {
        Client::builder(endpoint).build()
    }

    /// Like [`Client::new`] with another overall deadline for requests that set no `timeout_ms`.
    pub fn with_timeout(endpoint: &str, timeout: Duration) -> Result<Client, Error> {
        Client::builder(endpoint).timeout(timeout).build()
    }

    /// A builder for a client of `endpoint` with a token or a CA to trust.
    pub fn builder(endpoint: &str) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }

    /// A client of another node with this one's token, TLS trust, deadline and connection pool. A
    /// bare `host:port` (as in a cluster config's member list) gets this client's scheme.
    pub fn at(&self, endpoint: &str) -> Result<Client, Error> {
        let endpoint = endpoint.trim();
        let base = if endpoint.contains("://") {
            normalise_endpoint(endpoint)?
        } else {
            let scheme = self.base.split("://").next().unwrap_or("http");
            normalise_endpoint(&format!("{scheme}://{endpoint}"))?
        };
        Ok(Client {
            http: self.http.clone(),
            base,
            timeout: self.timeout,
        })
    }

    /// The normalised endpoint, without a trailing slash.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// Reads `key`: every sibling and the causal context, or [`ReadResult::NotFound`] (with the context
    /// of a deleted key).
    pub async fn get(&self, key: &[u8], opts: &ReadOptions) -> Result<ReadResult, Error> {
        let url = key_url(&self.base, key, &opts.query())?;
        let response = self
            .http
            .get(url)
            .header(ACCEPT, "application/json")
            .timeout(self.request_timeout(opts.timeout_ms))
            .send()
            .await?;
        let status = response.status();
        let header_context = context_header(response.headers())?;
        let json = is_json(response.headers());
        let body = response.bytes().await?;
        match status {
            StatusCode::OK | StatusCode::MULTIPLE_CHOICES => {
                parse_found(status, json, header_context, &body)
            }
            StatusCode::NOT_FOUND => parse_not_found(header_context, &body),
            other => Err(server_error(other, &body)),
        }
    }

    /// Writes `value` under `key`, superseding the siblings `context` has seen (a write without context
    /// is concurrent with everything stored). Returns the new causal context.
    pub async fn put(
        &self,
        key: &[u8],
        value: impl Into<Bytes>,
        context: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<String, Error> {
        let url = key_url(&self.base, key, &opts.query())?;
        let mut request = self
            .http
            .put(url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .timeout(self.request_timeout(opts.timeout_ms))
            .body(value.into());
        if let Some(context) = context {
            request = request.header(CONTEXT_HEADER, context_value(context)?);
        }
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            context_header(response.headers())?.ok_or_else(|| {
                Error::InvalidResponse(format!(
                    "{status} answer to a write has no {CONTEXT_HEADER} header"
                ))
            })
        } else {
            let body = response.bytes().await?;
            Err(server_error(status, &body))
        }
    }

    /// Deletes `key` (writes a tombstone superseding the siblings `context` has seen).
    pub async fn delete(
        &self,
        key: &[u8],
        context: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<(), Error> {
        let url = key_url(&self.base, key, &opts.query())?;
        let mut request = self
            .http
            .delete(url)
            .timeout(self.request_timeout(opts.timeout_ms));
        if let Some(context) = context {
            request = request.header(CONTEXT_HEADER, context_value(context)?);
        }
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let body = response.bytes().await?;
            Err(server_error(status, &body))
        }
    }

    /// `GET /admin/v1/ring`: the node's partition map (partition → preference list).
    pub async fn ring(&self) -> Result<RingView, Error> {
        let body = self.admin_get(ADMIN_RING).await?;
        parse_admin_json(ADMIN_RING, &body)
    }

    /// `GET /admin/v1/status`: the node's view of the cluster (config, peers' liveness).
    pub async fn status(&self) -> Result<NodeStatus, Error> {
        let body = self.admin_get(ADMIN_STATUS).await?;
        parse_admin_json(ADMIN_STATUS, &body)
    }

    /// `GET /admin/v1/cluster`: the cluster config the node follows.
    pub async fn cluster(&self) -> Result<ClusterConfig, Error> {
        let body = self.admin_get(ADMIN_CLUSTER).await?;
        parse_admin_json(ADMIN_CLUSTER, &body)
    }

    /// `PUT /admin/v1/cluster`: offers a config with a higher epoch; returns the config installed
    /// (a change of members or N comes back as a transition, with `transition_from` set).
    pub async fn put_cluster(&self, config: &ClusterConfig) -> Result<ClusterConfig, Error> {
        let body = serde_json::to_vec(config)
            .map_err(|e| Error::InvalidResponse(format!("cannot encode the config: {e}")))?;
        let body = self
            .admin(reqwest::Method::PUT, ADMIN_CLUSTER, Some(body))
            .await?;
        parse_admin_json(ADMIN_CLUSTER, &body)
    }

    /// `POST /admin/v1/drain`: makes the node hand off its hints at once; returns its status.
    pub async fn drain(&self) -> Result<NodeStatus, Error> {
        let body = self.admin(reqwest::Method::POST, ADMIN_DRAIN, None).await?;
        parse_admin_json(ADMIN_DRAIN, &body)
    }

    /// `POST /admin/v1/handoff/hold`: holds the node's hint delivery for `millis` (0 resumes it);
    /// returns once no delivery is in flight.
    pub async fn hold_handoff(&self, millis: u64) -> Result<HandoffHold, Error> {
        self.post_json(ADMIN_HANDOFF_HOLD, &HandoffHold { millis }, self.timeout)
            .await
    }

    /// `POST /admin/v1/backup`: makes the node checkpoint and upload its data; waits up to
    /// `timeout` for the upload to finish.
    pub async fn backup(
        &self,
        request: &BackupRequest,
        timeout: Duration,
    ) -> Result<BackupReport, Error> {
        self.post_json(ADMIN_BACKUP, request, timeout).await
    }

    /// `POST /admin/v1/restore`: makes the node merge one node's checkpoint of a backup into the
    /// cluster; waits up to `timeout`.
    pub async fn restore(
        &self,
        request: &RestoreRequest,
        timeout: Duration,
    ) -> Result<RestoreReport, Error> {
        self.post_json(ADMIN_RESTORE, request, timeout).await
    }

    /// `GET` of an admin route (such as [`kvapi::ADMIN_RING`]): the raw body of a success answer.
    pub async fn admin_get(&self, route: &str) -> Result<Bytes, Error> {
        self.admin(reqwest::Method::GET, route, None).await
    }

    /// A `POST` of JSON to an admin route, with its own deadline, and its decoded JSON answer.
    async fn post_json<T: serde::Serialize, U: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<U, Error> {
        let body = serde_json::to_vec(body)
            .map_err(|e| Error::InvalidResponse(format!("cannot encode the request: {e}")))?;
        let answer = self
            .admin_with_timeout(reqwest::Method::POST, route, Some(body), timeout)
            .await?;
        parse_admin_json(route, &answer)
    }

    /// One admin request; the raw body of a success answer.
    async fn admin(
        &self,
        method: reqwest::Method,
        route: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, Error> {
        self.admin_with_timeout(method, route, body, self.timeout)
            .await
    }

    /// One admin request that may take up to `timeout`.
    async fn admin_with_timeout(
        &self,
        method: reqwest::Method,
        route: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, Error> {
        let url = Url::parse(&format!("{}{route}", self.base)).map_err(|e| Error::BadEndpoint {
            endpoint: self.base.clone(),
            reason: e.to_string(),
        })?;
        let mut request = self
            .http
            .request(method, url)
            .timeout(timeout)
            .header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(server_error(status, &body))
        }
    }

    /// The client-side deadline of one request: the node's deadline plus a grace period when the request
    /// sets one, the client's overall timeout otherwise.
    fn request_timeout(&self, timeout_ms: Option<u64>) -> Duration {
        match timeout_ms {
            Some(ms) => Duration::from_millis(ms).saturating_add(DEADLINE_GRACE),
            None => self.timeout,
        }
    }
}

/// Percent-encodes a key for the `/v1/kv/{key}` path: every byte outside `[A-Za-z0-9-._~]` becomes `%XX`
/// (upper-case hex), `/` included.
pub fn encode_key(key: &[u8]) -> String {
    percent_encode(key, KEY_ENCODE_SET).to_string()
}

/// Builds `?name=value&...` from the parameters that are set, or an empty string when none is.
fn query_string(params: &[(&str, Option<u64>)]) -> String {
    let mut query = String::new();
    for (name, value) in params {
        if let Some(value) = value {
            query.push(if query.is_empty() { '?' } else { '&' });
            query.push_str(name);
            query.push('=');
            query.push_str(&value.to_string());
        }
    }
    query
}

/// Validates and normalises an endpoint into `scheme://host[:port][/path]` without a trailing slash
/// (a bare `host:port` gets `http://`).
pub fn normalise_endpoint(endpoint: &str) -> Result<String, Error> {
    let bad = |reason: &str| Error::BadEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = endpoint.trim();
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(bad(&format!(
                "unsupported scheme {other:?}, expected http or https"
            )));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the endpoint are not supported"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("an endpoint takes no query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The URL of `key` under the normalised endpoint `base`, with `query` (`?...` or empty) appended.
fn key_url(base: &str, key: &[u8], query: &str) -> Result<Url, Error> {
    if key.is_empty() {
        return Err(Error::InvalidKey("the key is empty".to_owned()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidKey(format!(
            "the key is {} bytes, at most {MAX_KEY_BYTES} are allowed",
            key.len()
        )));
    }
    if key == b"." || key == b".." {
        return Err(Error::InvalidKey(
            "the keys `.` and `..` cannot be addressed: URL normalisation removes them from the path".to_owned(),
        ));
    }
    let encoded = encode_key(key);
    let url = Url::parse(&format!("{base}{KV_PREFIX}{encoded}{query}")).map_err(|e| {
        Error::BadEndpoint {
            endpoint: base.to_owned(),
            reason: e.to_string(),
        }
    })?;
    // Defensive: the URL parser must not have rewritten the key segment.
    if !url.path().ends_with(&format!("{KV_PREFIX}{encoded}")) {
        return Err(Error::InvalidKey(format!(
            "the URL path {:?} does not carry the key",
            url.path()
        )));
    }
    Ok(url)
}

/// The `X-Kv-Context` header of an answer, if any.
fn context_header(headers: &HeaderMap) -> Result<Option<String>, Error> {
    headers
        .get(CONTEXT_HEADER)
        .map(|value| {
            value.to_str().map(str::to_owned).map_err(|_| {
                Error::InvalidResponse(format!("the {CONTEXT_HEADER} header is not visible ASCII"))
            })
        })
        .transpose()
}

/// A context as a header value.
fn context_value(context: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(context).map_err(|_| {
        Error::InvalidContext(
            "a context must be printable ASCII on one line, as returned by the node".to_owned(),
        )
    })
}

/// True when the answer's `Content-Type` is `application/json` (parameters ignored).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Decodes a 200 or 300 read answer: the JSON [`ReadResponse`] form, or (a 200 that is not JSON) the raw
/// single-value form with its context in the header.
fn parse_found(
    status: StatusCode,
    json: bool,
    header_context: Option<String>,
    body: &[u8],
) -> Result<ReadResult, Error> {
    if !json && status == StatusCode::OK {
        let context = header_context.ok_or_else(|| {
            Error::InvalidResponse(format!(
                "200 answer to a read has no {CONTEXT_HEADER} header"
            ))
        })?;
        return Ok(ReadResult::Found {
            context,
            siblings: vec![Sibling {
                value: body.to_vec(),
                deleted: false,
            }],
        });
    }
    let response: ReadResponse = serde_json::from_slice(body).map_err(|e| {
        Error::InvalidResponse(format!(
            "{status} read answer is not a JSON read response: {e}"
        ))
    })?;
    let siblings = response
        .siblings
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let value = BASE64.decode(s.value.as_bytes()).map_err(|e| {
                Error::InvalidResponse(format!(
                    "sibling {} is not padded standard base64: {e}",
                    i + 1
                ))
            })?;
            Ok(Sibling {
                value,
                deleted: s.deleted,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(ReadResult::Found {
        context: response.context,
        siblings,
    })
}

/// Decodes a 404 read answer: a missing or deleted key, unless the body names another error (such as a
/// 404 from something that is not a kvnode).
fn parse_not_found(header_context: Option<String>, body: &[u8]) -> Result<ReadResult, Error> {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) if error.error == kvapi::codes::NOT_FOUND => Ok(ReadResult::NotFound {
            context: header_context.or(error.context),
        }),
        Ok(error) => Err(Error::Server {
            status: StatusCode::NOT_FOUND.as_u16(),
            body: error,
        }),
        Err(_) if header_context.is_some() || body.iter().all(u8::is_ascii_whitespace) => {
            Ok(ReadResult::NotFound {
                context: header_context,
            })
        }
        Err(_) => Err(server_error(StatusCode::NOT_FOUND, body)),
    }
}

/// Decodes the JSON body of a successful admin answer.
fn parse_admin_json<T: serde::de::DeserializeOwned>(route: &str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body)
        .map_err(|e| Error::InvalidResponse(format!("the answer to {route} is not valid: {e}")))
}

/// The [`Error::Server`] for an error answer.
fn server_error(status: StatusCode, body: &[u8]) -> Error {
    Error::Server {
        status: status.as_u16(),
        body: parse_error_body(status, body),
    }
}

/// Decodes a JSON [`ErrorBody`], or builds a synthetic one with code [`UNEXPECTED_CODE`] whose message is
/// an excerpt of the body (or the status's reason phrase when the body is empty).
fn parse_error_body(status: StatusCode, body: &[u8]) -> ErrorBody {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return parsed;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no error body")
            .to_owned()
    } else if text.chars().count() > MAX_EXCERPT_CHARS {
        let excerpt: String = text.chars().take(MAX_EXCERPT_CHARS).collect();
        format!("{excerpt}…")
    } else {
        text.to_owned()
    };
    ErrorBody {
        error: UNEXPECTED_CODE.to_owned(),
        message,
        context: None,
        replied: None,
        required: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const BASE: &str = "http://127.0.0.1:8080";

    #[test]
    fn encode_key_escapes_everything_outside_unreserved() {
        assert_eq!(encode_key(b"\x00"), "%00");
        assert_eq!(encode_key(b"a/b"), "a%2Fb");
        assert_eq!(encode_key(b"a b"), "a%20b");
        assert_eq!(encode_key(b"\xff\xfe"), "%FF%FE");
        assert_eq!(encode_key(b"%"), "%25");
        assert_eq!(encode_key(b"?#&=+"), "%3F%23%26%3D%2B");
        assert_eq!(encode_key("é".as_bytes()), "%C3%A9");
        let unreserved = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
        assert_eq!(encode_key(unreserved).as_bytes(), unreserved);
    }

    #[test]
    fn encode_key_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let encoded = encode_key(&all);
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(&encoded).collect();
        assert_eq!(decoded, all);
        for byte in 0..=255u8 {
            let e = encode_key(&[byte]);
            let unreserved = byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
            assert_eq!(
                e.len(),
                if unreserved { 1 } else { 3 },
                "byte {byte:#04x} encoded as {e}"
            );
        }
    }

    #[test]
    fn key_url_keeps_the_encoded_key_intact() {
        let url = key_url(BASE, b"a/b c\x00\xff", "").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/v1/kv/a%2Fb%20c%00%FF");
        let url = key_url(BASE, b"../x", "?r=2").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/v1/kv/..%2Fx?r=2");
        let url = key_url("http://h:1/prefix", b"...", "").unwrap();
        assert_eq!(url.path(), "/prefix/v1/kv/...");
    }

    #[test]
    fn key_url_refuses_unaddressable_keys() {
        // Why `.` and `..` are refused: the URL parser removes dot segments, even percent-encoded ones.
        for path in ["/v1/kv/.", "/v1/kv/%2e", "/v1/kv/%2E"] {
            let url = Url::parse(&format!("{BASE}{path}")).unwrap();
            assert_eq!(url.path(), "/v1/kv/", "{path}");
        }
        assert_eq!(
            Url::parse(&format!("{BASE}/v1/kv/%2e%2E")).unwrap().path(),
            "/v1/"
        );
        for key in [&b""[..], b".", b".."] {
            assert!(
                matches!(key_url(BASE, key, ""), Err(Error::InvalidKey(_))),
                "{key:?}"
            );
        }
        assert!(key_url(BASE, &[b'k'; MAX_KEY_BYTES], "").is_ok());
        assert!(matches!(
            key_url(BASE, &[b'k'; MAX_KEY_BYTES + 1], ""),
            Err(Error::InvalidKey(_))
        ));
    }

    #[test]
    fn query_strings() {
        assert_eq!(ReadOptions::default().query(), "");
        assert_eq!(
            ReadOptions {
                r: Some(2),
                timeout_ms: None
            }
            .query(),
            "?r=2"
        );
        assert_eq!(
            ReadOptions {
                r: None,
                timeout_ms: Some(150)
            }
            .query(),
            "?timeout_ms=150"
        );
        assert_eq!(
            ReadOptions {
                r: Some(1),
                timeout_ms: Some(5000)
            }
            .query(),
            "?r=1&timeout_ms=5000"
        );
        assert_eq!(WriteOptions::default().query(), "");
        assert_eq!(
            WriteOptions {
                w: Some(3),
                ..WriteOptions::default()
            }
            .query(),
            "?w=3"
        );
        assert_eq!(
            WriteOptions {
                ttl: Some(kvapi::ttl::Expiry::After(Duration::from_secs(30))),
                ..WriteOptions::default()
            }
            .query(),
            "?ttl=30000ms"
        );
        assert_eq!(
            WriteOptions {
                w: Some(3),
                timeout_ms: Some(u64::MAX),
                ttl: Some(kvapi::ttl::Expiry::After(Duration::from_millis(1500))),
            }
            .query(),
            format!("?w=3&timeout_ms={}&ttl=1500ms", u64::MAX)
        );
        let url = key_url(
            BASE,
            b"k",
            &WriteOptions {
                w: Some(2),
                timeout_ms: Some(10),
                ttl: Some(kvapi::ttl::Expiry::Never),
            }
            .query(),
        )
        .unwrap();
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            [
                ("w".to_owned(), "2".to_owned()),
                ("timeout_ms".to_owned(), "10".to_owned()),
                ("ttl".to_owned(), "none".to_owned())
            ]
        );
        for (name, _) in &pairs {
            assert!(kvapi::QUERY_PARAMS.contains(&name.as_str()));
        }
        assert!(kvapi::QUERY_PARAMS.contains(&"r"));
    }

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(
            normalise_endpoint("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalise_endpoint("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalise_endpoint(" localhost:9000 ").unwrap(),
            "http://localhost:9000"
        );
        assert_eq!(
            normalise_endpoint("http://kv.example/base/").unwrap(),
            "http://kv.example/base"
        );
        assert_eq!(
            normalise_endpoint("http://[::1]:8080").unwrap(),
            "http://[::1]:8080"
        );
        assert_eq!(
            normalise_endpoint("https://kv.example:8443/").unwrap(),
            "https://kv.example:8443"
        );
        for bad in [
            "",
            "ftp://h",
            "http://",
            "http://h:1/?x=1",
            "http://u:p@h:1",
            "http://h:99999",
        ] {
            assert!(
                matches!(normalise_endpoint(bad), Err(Error::BadEndpoint { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn error_bodies_are_parsed() {
        let body = br#"{"error":"too_many_siblings","message":"64 siblings: resolve them first","context":"abc"}"#;
        let error = server_error(StatusCode::CONFLICT, body);
        assert_eq!(
            error.to_string(),
            "409 too_many_siblings: 64 siblings: resolve them first"
        );
        assert_eq!(error.status(), Some(409));
        assert_eq!(error.code(), Some(kvapi::codes::TOO_MANY_SIBLINGS));
        let Error::Server { body, .. } = error else {
            panic!("not a server error")
        };
        assert_eq!(body.context.as_deref(), Some("abc"));

        let body = br#"{"error":"quorum_not_reached","message":"1 of 2","replied":1,"required":2}"#;
        let parsed = parse_error_body(StatusCode::SERVICE_UNAVAILABLE, body);
        assert_eq!((parsed.replied, parsed.required), (Some(1), Some(2)));
    }

    #[test]
    fn non_json_error_bodies_become_unexpected() {
        let parsed = parse_error_body(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>\n");
        assert_eq!(parsed.error, UNEXPECTED_CODE);
        assert_eq!(parsed.message, "<html>bad gateway</html>");
        let parsed = parse_error_body(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(
            (parsed.error.as_str(), parsed.message.as_str()),
            (UNEXPECTED_CODE, "Bad Gateway")
        );
        let parsed = parse_error_body(StatusCode::BAD_REQUEST, br#"{"error":"bad_key"}"#);
        assert_eq!(parsed.error, UNEXPECTED_CODE);
        let long = vec![b'x'; 10_000];
        let parsed = parse_error_body(StatusCode::INTERNAL_SERVER_ERROR, &long);
        assert_eq!(parsed.message.chars().count(), MAX_EXCERPT_CHARS + 1);
        let parsed = parse_error_body(StatusCode::INTERNAL_SERVER_ERROR, b"\xff oops");
        assert_eq!(parsed.message, "\u{fffd} oops");
    }

    #[test]
    fn read_answers_are_decoded() {
        let body = br#"{"context":"ctx1","siblings":[{"value":"AP8=","deleted":false},{"value":"","deleted":true},{"value":"aGk=","deleted":false}]}"#;
        let read = parse_found(StatusCode::MULTIPLE_CHOICES, true, None, body).unwrap();
        assert_eq!(read.context(), Some("ctx1"));
        let live: Vec<&[u8]> = read.live().map(|s| s.value.as_slice()).collect();
        assert_eq!(live, [&b"\x00\xff"[..], b"hi"]);
        let ReadResult::Found { siblings, .. } = &read else {
            panic!("not found")
        };
        assert_eq!(siblings.len(), 3);

        let raw = parse_found(StatusCode::OK, false, Some("c".to_owned()), b"raw").unwrap();
        assert_eq!(
            raw,
            ReadResult::Found {
                context: "c".to_owned(),
                siblings: vec![Sibling {
                    value: b"raw".to_vec(),
                    deleted: false
                }]
            }
        );
        assert!(matches!(
            parse_found(StatusCode::OK, false, None, b"raw"),
            Err(Error::InvalidResponse(_))
        ));
        let bad64 = br#"{"context":"c","siblings":[{"value":"!!","deleted":false}]}"#;
        assert!(matches!(
            parse_found(StatusCode::OK, true, None, bad64),
            Err(Error::InvalidResponse(_))
        ));
    }

    #[test]
    fn not_found_answers_are_decoded() {
        let body = br#"{"error":"not_found","message":"no such key"}"#;
        assert_eq!(
            parse_not_found(Some("t".to_owned()), body).unwrap(),
            ReadResult::NotFound {
                context: Some("t".to_owned())
            }
        );
        assert_eq!(
            parse_not_found(None, body).unwrap(),
            ReadResult::NotFound { context: None }
        );
        assert_eq!(
            parse_not_found(None, b"").unwrap(),
            ReadResult::NotFound { context: None }
        );
        let other = br#"{"error":"bad_key","message":"?"}"#;
        assert!(matches!(
            parse_not_found(None, other),
            Err(Error::Server { status: 404, .. })
        ));
        assert!(matches!(
            parse_not_found(None, b"<html>404</html>"),
            Err(Error::Server { status: 404, .. })
        ));
    }

    #[test]
    fn contexts_must_be_header_safe() {
        assert!(context_value("AAEC-_x").is_ok());
        assert!(matches!(
            context_value("a\nb"),
            Err(Error::InvalidContext(_))
        ));
    }

    #[test]
    fn admin_answers_are_decoded() {
        let body = br#"{"epoch":2,"partitions":[{"partition":0,"replicas":["kv-0","kv-1"]}]}"#;
        let ring: RingView = parse_admin_json(ADMIN_RING, body).unwrap();
        assert_eq!(ring.epoch, 2);
        assert_eq!(ring.partitions[0].replicas, ["kv-0", "kv-1"]);
        assert!(matches!(
            parse_admin_json::<NodeStatus>(ADMIN_STATUS, b"{}"),
            Err(Error::InvalidResponse(_))
        ));
    }

    #[test]
    fn client_construction() {
        let client = Client::new("127.0.0.1:8080/").unwrap();
        assert_eq!(client.endpoint(), "http://127.0.0.1:8080");
        assert_eq!(client.request_timeout(None), DEFAULT_TIMEOUT);
        assert_eq!(
            client.request_timeout(Some(100)),
            Duration::from_millis(100) + DEADLINE_GRACE
        );
        assert!(client.request_timeout(Some(u64::MAX)) >= Duration::from_millis(u64::MAX));
        assert!(matches!(
            Client::new("ftp://x"),
            Err(Error::BadEndpoint { .. })
        ));
    }

    #[test]
    fn other_nodes_are_reached_with_the_same_scheme() {
        let client = Client::new("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            client.at("10.0.0.2:8080").unwrap().endpoint(),
            "http://10.0.0.2:8080"
        );
        assert_eq!(
            client.at("https://10.0.0.2:8443").unwrap().endpoint(),
            "https://10.0.0.2:8443"
        );
    }
}
