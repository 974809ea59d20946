//! Talking to the nodes' admin routes: the one place the operator reaches past the Kubernetes API.
//!
//! [`NodeAdmin`] is a small trait so the reconciler can be tested against fake nodes; [`HttpAdmin`]
//! is the real client: `kvclient` (HTTP/1.1 JSON, https trusting only the cluster's CA when the
//! client port speaks TLS, the admin bearer token), with short timeouts so an unreachable node does
//! not hold up a reconcile.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use kvapi::{ClusterConfig, NodeStatus};

/// Why an admin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No answer: connection refused, DNS failure, timeout, TLS handshake refused.
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// The node answered with an error status.
    #[error("node answered {status}: {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error code of the JSON body (`stale_epoch`, `unauthorized`, ...), if any.
        code: String,
        /// The message of the body.
        message: String,
    },
    /// The answer was not the expected JSON.
    #[error("bad answer from node: {0}")]
    BadAnswer(String),
}

/// What a node did with a pushed config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Installed; the config the node now follows (a transition when members or N changed).
    Installed(Box<ClusterConfig>),
    /// The node already has this epoch or a newer one (it may have it from a peer already).
    StaleEpoch,
    /// The node is still applying a membership change.
    TransitionInProgress,
}

/// How the operator reaches one cluster's nodes: the admin token it sends, and the CA it trusts
/// when their client port speaks TLS (then it speaks https, else plain http).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct NodeAccess {
    /// Bearer token of the admin routes.
    pub token: Option<String>,
    /// PEM of the CA that signs the nodes' client-port certificates.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for NodeAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAccess")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("https", &self.ca_pem.is_some())
            .finish()
    }
}

impl NodeAccess {
    fn scheme(&self) -> &'static str {
        if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// A new client of the node at `address` (`host:port`) with this token and trust, whose calls
    /// end within `timeout` unless they set their own.
    pub fn client(
        &self,
        address: &str,
        timeout: Duration,
    ) -> Result<kvclient::Client, kvclient::Error> {
        let endpoint = format!("{}://{address}", self.scheme());
        let mut builder = kvclient::Client::builder(&endpoint).timeout(timeout);
        if let Some(token) = &self.token {
            builder = builder.token(token);
        }
        if let Some(pem) = &self.ca_pem {
            builder = builder.ca_cert_pem(pem.clone());
        }
        builder.build()
    }
}

/// The admin calls the reconciler makes. `address` is `host:port`.
pub trait NodeAdmin: Send + Sync + 'static {
    /// `GET /admin/v1/status`.
    fn get_status<'a>(
        &'a self,
        address: &'a str,
        access: &'a NodeAccess,
    ) -> BoxFuture<'a, Result<NodeStatus, AdminError>>;

    /// `PUT /admin/v1/cluster`.
    fn put_config<'a>(
        &'a self,
        address: &'a str,
        access: &'a NodeAccess,
        config: &'a ClusterConfig,
    ) -> BoxFuture<'a, Result<PutOutcome, AdminError>>;

    /// `POST /admin/v1/drain`.
    fn drain<'a>(
        &'a self,
        address: &'a str,
        access: &'a NodeAccess,
    ) -> BoxFuture<'a, Result<(), AdminError>>;
}

/// Clients kept for reuse (their connection pools) before the cache is emptied: one per cluster
/// and token, so this only bounds what rotated tokens and deleted clusters leave behind.
const MAX_CACHED_CLIENTS: usize = 256;

/// The real admin client.
pub struct HttpAdmin {
    timeout: Duration,
    clients: Mutex<HashMap<NodeAccess, kvclient::Client>>,
}

impl HttpAdmin {
    /// A client whose every call (connect, TLS, send, read the answer) ends within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// A client of the node at `address` with `access`'s token and trust, sharing the connection
    /// pool of every call made with the same access.
    fn client(&self, address: &str, access: &NodeAccess) -> Result<kvclient::Client, AdminError> {
        let endpoint = format!("{}://{address}", access.scheme());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(access) {
            return client.at(&endpoint).map_err(unreachable);
        }
        let client = access.client(address, self.timeout).map_err(unreachable)?;
        if clients.len() >= MAX_CACHED_CLIENTS {
            clients.clear();
        }
        clients.insert(access.clone(), client.clone());
        Ok(client)
    }
}

/// An error of the client before any answer: the node cannot be reached (or the settings cannot
/// be used, which looks the same to the reconciler: no answer).
fn unreachable(e: kvclient::Error) -> AdminError {
    AdminError::Unreachable(e.to_string())
}

/// Maps a failed call: the node's error answer, a broken answer, or no answer.
fn admin_error(e: kvclient::Error) -> AdminError {
    match e {
        kvclient::Error::Server { status, body } => AdminError::Refused {
            status,
            code: body.error,
            message: body.message,
        },
        kvclient::Error::InvalidResponse(m) => AdminError::BadAnswer(m),
        other => unreachable(other),
    }
}

/// Maps the outcome of a PUT of a config: the two conflicts the reconciler expects are outcomes.
pub fn put_outcome(
    answer: Result<ClusterConfig, kvclient::Error>,
) -> Result<PutOutcome, AdminError> {
    match answer.map_err(admin_error) {
        Ok(config) => Ok(PutOutcome::Installed(Box::new(config))),
        Err(AdminError::Refused {
            status: 409, code, ..
        }) if code == kvapi::codes::STALE_EPOCH => Ok(PutOutcome::StaleEpoch),
        Err(AdminError::Refused {
            status: 409, code, ..
        }) if code == kvapi::codes::TRANSITION_IN_PROGRESS => Ok(PutOutcome::TransitionInProgress),
        Err(other) => Err(other),
    }
}

impl NodeAdmin for HttpAdmin {
    fn get_status<'a>(
        &'a self,
        address: &'a str,
        access: &'a NodeAccess,
    ) -> BoxFuture<'a, Result<NodeStatus, AdminError>> {
        Box::pin(async move {
            let client = self.client(address, access)?;
            client.status().await.map_err(admin_error)
        })
    }

    fn put_config<'a>(
        &'a self,
        address: &'a str,
        access: &'a NodeAccess,
        config: &'a ClusterConfig,
    ) -> BoxFuture<'a, Result<PutOutcome, AdminError>> {
        Box::pin(async move {
            let client = self.client(address, access)?;
            put_outcome(client.put_cluster(config).await)
        })
    }

    fn drain<'a>(
        &'a self,
        address: &'a str,
        access: &'a NodeAccess,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            let client = self.client(address, access)?;
            client.drain().await.map(|_| ()).map_err(admin_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn refusal(status: u16, code: &str) -> kvclient::Error {
        kvclient::Error::Server {
            status,
            body: kvapi::ErrorBody {
                error: code.into(),
                message: "m".into(),
                context: None,
                replied: None,
                required: None,
            },
        }
    }

    #[test]
    fn conflicts_of_a_put_are_outcomes_not_errors() {
        assert_eq!(
            put_outcome(Err(refusal(409, "stale_epoch"))),
            Ok(PutOutcome::StaleEpoch)
        );
        assert_eq!(
            put_outcome(Err(refusal(409, "transition_in_progress"))),
            Ok(PutOutcome::TransitionInProgress)
        );
        assert!(matches!(
            put_outcome(Err(refusal(400, "bad_config"))),
            Err(AdminError::Refused { status: 400, code, .. }) if code == "bad_config"
        ));
        assert!(matches!(
            put_outcome(Err(refusal(401, "unauthorized"))),
            Err(AdminError::Refused { status: 401, .. })
        ));
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let access = NodeAccess {
            token: Some("s3cret".into()),
            ca_pem: None,
        };
        assert!(!format!("{access:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn an_unreachable_node_fails_fast() {
        let admin = HttpAdmin::new(Duration::from_millis(500));
        // Port 9 (discard) on loopback: nothing listens there in the test environment.
        let err = admin
            .get_status("127.0.0.1:9", &NodeAccess::default())
            .await;
        assert!(matches!(err, Err(AdminError::Unreachable(_))), "{err:?}");
    }

    #[tokio::test]
    async fn status_and_token_go_over_http() -> Result<(), Box<dyn std::error::Error>> {
        use axum::{Router, http::HeaderMap, routing::get};
        let status = crate::plan::tests::node_status("kv-0", 1, &["kv-0"]);
        let json = serde_json::to_string(&status)?;
        let app = Router::new().route(
            kvapi::ADMIN_STATUS,
            get(move |headers: HeaderMap| {
                let json = json.clone();
                async move {
                    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                        Some("Bearer s3cret") => (StatusCode::OK, json),
                        _ => (
                            StatusCode::UNAUTHORIZED,
                            r#"{"error":"unauthorized","message":"token"}"#.to_string(),
                        ),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let admin = HttpAdmin::new(Duration::from_secs(2));
        let with_token = NodeAccess {
            token: Some("s3cret".into()),
            ca_pem: None,
        };
        assert_eq!(admin.get_status(&addr, &with_token).await?, status);
        assert!(matches!(
            admin.get_status(&addr, &NodeAccess::default()).await,
            Err(AdminError::Refused { status: 401, code, .. }) if code == "unauthorized"
        ));
        server.abort();
        Ok(())
    }
}
