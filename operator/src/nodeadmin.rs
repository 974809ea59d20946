//! Talking to the nodes' admin routes: the one place the operator reaches past the Kubernetes API.
//!
//! [`NodeAdmin`] is a small trait so the reconciler can be tested against fake nodes; [`HttpAdmin`]
//! is the real client (HTTP/1.1 JSON, optional bearer token, short timeouts: an unreachable node
//! must not hold up a reconcile).

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kvapi::{ClusterConfig, ErrorBody, NodeStatus};

/// Why an admin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No answer: connection refused, DNS failure, timeout.
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

/// The admin calls the reconciler makes. `address` is `host:port`; `token` the bearer token.
pub trait NodeAdmin: Send + Sync + 'static {
    /// `GET /admin/v1/status`.
    fn get_status<'a>(
        &'a self,
        address: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<NodeStatus, AdminError>>;

    /// `PUT /admin/v1/cluster`.
    fn put_config<'a>(
        &'a self,
        address: &'a str,
        token: Option<&'a str>,
        config: &'a ClusterConfig,
    ) -> BoxFuture<'a, Result<PutOutcome, AdminError>>;

    /// `POST /admin/v1/drain`.
    fn drain<'a>(
        &'a self,
        address: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), AdminError>>;
}

/// The real admin client.
#[derive(Clone)]
pub struct HttpAdmin {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl HttpAdmin {
    /// A client whose every call (connect, send, read the answer) ends within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { client, timeout }
    }

    async fn call(
        &self,
        method: Method,
        address: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{address}{path}"))
            .header(header::ACCEPT, "application/json");
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| AdminError::Unreachable(format!("bad request for {address}: {e}")))?;
        let answer = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| AdminError::Unreachable(format!("{address}: {e}")))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| AdminError::Unreachable(format!("{address}: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| AdminError::Unreachable(format!("{address}: timed out")))?
    }
}

fn refused(status: StatusCode, body: &[u8]) -> AdminError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => AdminError::Refused {
            status: status.as_u16(),
            code: e.error,
            message: e.message,
        },
        Err(_) => AdminError::Refused {
            status: status.as_u16(),
            code: String::new(),
            message: String::from_utf8_lossy(body).into_owned(),
        },
    }
}

/// Maps the node's answer to a PUT of its config.
pub fn put_outcome(status: StatusCode, body: &[u8]) -> Result<PutOutcome, AdminError> {
    if status.is_success() {
        return serde_json::from_slice(body)
            .map(|c| PutOutcome::Installed(Box::new(c)))
            .map_err(|e| AdminError::BadAnswer(e.to_string()));
    }
    match refused(status, body) {
        AdminError::Refused {
            status: 409, code, ..
        } if code == kvapi::codes::STALE_EPOCH => Ok(PutOutcome::StaleEpoch),
        AdminError::Refused {
            status: 409, code, ..
        } if code == kvapi::codes::TRANSITION_IN_PROGRESS => Ok(PutOutcome::TransitionInProgress),
        other => Err(other),
    }
}

impl NodeAdmin for HttpAdmin {
    fn get_status<'a>(
        &'a self,
        address: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<NodeStatus, AdminError>> {
        Box::pin(async move {
            let (status, body) = self
                .call(Method::GET, address, kvapi::ADMIN_STATUS, token, None)
                .await?;
            if !status.is_success() {
                return Err(refused(status, &body));
            }
            serde_json::from_slice(&body).map_err(|e| AdminError::BadAnswer(e.to_string()))
        })
    }

    fn put_config<'a>(
        &'a self,
        address: &'a str,
        token: Option<&'a str>,
        config: &'a ClusterConfig,
    ) -> BoxFuture<'a, Result<PutOutcome, AdminError>> {
        Box::pin(async move {
            let body =
                serde_json::to_vec(config).map_err(|e| AdminError::BadAnswer(e.to_string()))?;
            let (status, answer) = self
                .call(
                    Method::PUT,
                    address,
                    kvapi::ADMIN_CLUSTER,
                    token,
                    Some(body),
                )
                .await?;
            put_outcome(status, &answer)
        })
    }

    fn drain<'a>(
        &'a self,
        address: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            let (status, body) = self
                .call(Method::POST, address, kvapi::ADMIN_DRAIN, token, None)
                .await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(refused(status, &body))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_of_a_put_are_outcomes_not_errors() {
        let stale = br#"{"error":"stale_epoch","message":"epoch 3 is not newer than 4"}"#;
        assert_eq!(
            put_outcome(StatusCode::CONFLICT, stale),
            Ok(PutOutcome::StaleEpoch)
        );
        let busy = br#"{"error":"transition_in_progress","message":"wait"}"#;
        assert_eq!(
            put_outcome(StatusCode::CONFLICT, busy),
            Ok(PutOutcome::TransitionInProgress)
        );
        let bad = br#"{"error":"bad_config","message":"w > n"}"#;
        assert!(matches!(
            put_outcome(StatusCode::BAD_REQUEST, bad),
            Err(AdminError::Refused { status: 400, code, .. }) if code == "bad_config"
        ));
        assert!(matches!(
            put_outcome(StatusCode::UNAUTHORIZED, b"nope"),
            Err(AdminError::Refused { status: 401, .. })
        ));
    }

    #[tokio::test]
    async fn an_unreachable_node_fails_fast() {
        let admin = HttpAdmin::new(Duration::from_millis(500));
        // Port 9 (discard) on loopback: nothing listens there in the test environment.
        let err = admin.get_status("127.0.0.1:9", None).await;
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
        assert_eq!(admin.get_status(&addr, Some("s3cret")).await?, status);
        assert!(matches!(
            admin.get_status(&addr, None).await,
            Err(AdminError::Refused { status: 401, code, .. }) if code == "unauthorized"
        ));
        server.abort();
        Ok(())
    }
}
