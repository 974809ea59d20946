//! A client of several nodes: each request goes to one node and, when that node cannot be reached
//! or answers 503 (no quorum, overloaded, not ready), to the next, within a number of attempts and
//! a deadline; and a read-modify-write helper that resolves siblings with the caller's merge.
//!
//! Retrying a write is safe for what the store guarantees: a retried PUT carries the same context,
//! so if an earlier attempt was applied after all, the two writes become equal siblings, never a
//! lost write; the next [`Nodes::update`] collapses them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::{Client, Error, ReadOptions, ReadResult, WriteOptions};

/// How hard a [`Nodes`] client tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, over the nodes in turn (at least 1).
    pub attempts: u32,
    /// Longest time a request may take, all attempts together.
    pub deadline: Duration,
    /// Pause before the second attempt, doubled before each further one.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            deadline: Duration::from_secs(10),
            backoff: Duration::from_millis(50),
        }
    }
}

/// Whether another node may succeed where this attempt failed: the request never got an answer
/// (connection refused, reset, timed out) or the node answered 503.
pub fn is_retryable(error: &Error) -> bool {
    match error {
        Error::Http(e) => e.is_connect() || e.is_timeout() || e.is_request(),
        Error::Server { status, .. } => *status == 503,
        Error::DeadlineExceeded { .. } => true,
        _ => false,
    }
}

/// A client of a cluster through several of its nodes. Cheap to clone; clones share the pool and
/// the rotation.
#[derive(Debug, Clone)]
pub struct Nodes {
    nodes: Vec<Client>,
    next: std::sync::Arc<AtomicUsize>,
    policy: RetryPolicy,
}

impl Nodes {
    /// A client of `endpoints`, each reached with `client`'s token, TLS trust, deadline and pool
    /// (`client`'s own endpoint is not used unless listed).
    pub fn new(client: &Client, endpoints: &[&str], policy: RetryPolicy) -> Result<Nodes, Error> {
        if endpoints.is_empty() {
            return Err(Error::BadEndpoint {
                endpoint: String::new(),
                reason: "no endpoint given".into(),
            });
        }
        let nodes = endpoints
            .iter()
            .map(|e| client.at(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Nodes {
            nodes,
            next: std::sync::Arc::new(AtomicUsize::new(0)),
            policy: RetryPolicy {
                attempts: policy.attempts.max(1),
                ..policy
            },
        })
    }

    /// Runs `request` against one node after another until it succeeds, fails for good, or the
    /// attempts or the deadline run out; returns the last error then. Requests start at successive
    /// nodes, so load spreads and a dead node costs each request at most one attempt.
    pub(crate) async fn with_failover<T, F, Fut>(&self, mut request: F) -> Result<T, Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let deadline = Instant::now() + self.policy.deadline;
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut pause = self.policy.backoff;
        let mut attempt = 0;
        loop {
            let node = self.nodes[(first + attempt as usize) % self.nodes.len()].clone();
            attempt += 1;
            let outcome = match tokio::time::timeout_at(deadline, request(node)).await {
                Ok(outcome) => outcome,
                Err(_) => return Err(deadline_passed(self.policy.deadline, attempt)),
            };
            match outcome {
                Err(e) if is_retryable(&e) && attempt < self.policy.attempts => {
                    if Instant::now() + pause >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                }
                other => return other,
            }
        }
    }

    /// [`Client::get`] with failover.
    pub async fn get(&self, key: &[u8], opts: &ReadOptions) -> Result<ReadResult, Error> {
        self.with_failover(|c| async move { c.get(key, opts).await })
            .await
    }

    /// [`Client::put`] with failover.
    pub async fn put(
        &self,
        key: &[u8],
        value: impl Into<Bytes>,
        context: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<String, Error> {
        let value = value.into();
        self.with_failover(|c| {
            let value = value.clone();
            async move { c.put(key, value, context, opts).await }
        })
        .await
    }

    /// [`Client::delete`] with failover.
    pub async fn delete(
        &self,
        key: &[u8],
        context: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<(), Error> {
        self.with_failover(|c| async move { c.delete(key, context, opts).await })
            .await
    }

    /// Reads `key`, gives its live values to `merge` (none when the key is absent; several when
    /// writers raced) and writes the result back with the read's context, so it supersedes every
    /// value `merge` saw. Returns the new context. A writer racing this one leaves a sibling for
    /// the next update to merge: nothing is lost either way.
    pub async fn update<F>(
        &self,
        key: &[u8],
        opts: &WriteOptions,
        mut merge: F,
    ) -> Result<String, Error>
    where
        F: FnMut(&[&[u8]]) -> Vec<u8>,
    {
        let read = self.get(key, &ReadOptions::default()).await?;
        let values: Vec<&[u8]> = read.live().map(|s| s.value.as_slice()).collect();
        let merged = merge(&values);
        self.put(key, merged, read.context(), opts).await
    }
}

fn deadline_passed(deadline: Duration, attempts: u32) -> Error {
    Error::DeadlineExceeded { deadline, attempts }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_unanswered_requests_and_503_are_retried() {
        let server = |status| Error::Server {
            status,
            body: kvapi::ErrorBody {
                error: "x".into(),
                message: "m".into(),
                context: None,
                replied: None,
                required: None,
            },
        };
        assert!(is_retryable(&server(503)));
        for status in [400, 401, 403, 404, 409, 413, 500] {
            assert!(!is_retryable(&server(status)), "{status}");
        }
        assert!(!is_retryable(&Error::InvalidKey("k".into())));
    }

    #[tokio::test]
    async fn every_endpoint_down_fails_within_the_attempts() {
        let base = Client::builder("http://127.0.0.1:9").build().unwrap();
        let policy = RetryPolicy {
            attempts: 3,
            deadline: Duration::from_secs(5),
            backoff: Duration::from_millis(10),
        };
        let nodes = Nodes::new(&base, &["127.0.0.1:9", "127.0.0.1:19"], policy).unwrap();
        let t0 = std::time::Instant::now();
        let err = nodes.get(b"k", &ReadOptions::default()).await.unwrap_err();
        assert!(is_retryable(&err), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(Nodes::new(&base, &[], policy).is_err());
    }
}
