//! The seam between the node's logic and the network: every peer call goes through [`Peers`].
//!
//! [`crate::rpc::RpcClient`] sends over HTTP/2; a simulator delivers messages in process to
//! [`crate::http::peer::handle`]. What is the same for both (the envelope, liveness, epoch
//! catch-up, pings) lives here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::membership::Membership;
use crate::rpc::{PING_INTERVAL, RequestBody, ResponseBody, RpcRequest, RpcResponse};
use crate::supervisor::Stop;

/// A boxed future, so [`Peers`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Sends messages to the other members.
pub trait Peers: Send + Sync {
    /// Sends `body` to member `peer` and waits at most `timeout` for its answer.
    fn call<'a>(
        &'a self,
        peer: &'a str,
        body: RequestBody,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ResponseBody, Error>>;
}

/// The envelope of `body` from this node at its current epoch.
pub fn envelope(membership: &Membership, body: RequestBody) -> RpcRequest {
    let view = membership.view();
    RpcRequest {
        cluster: view.config.cluster.clone(),
        epoch: view.config.epoch,
        sender: membership.node_id().to_string(),
        body,
    }
}

/// Records the outcome of a call to `peer` sent at epoch `sent_at` and unwraps its answer; an
/// answer from a newer epoch starts a catch-up through `peers`.
pub fn settle(
    peers: &Arc<dyn Peers>,
    membership: &Arc<Membership>,
    peer: &str,
    sent_at: u64,
    outcome: Result<RpcResponse, Error>,
) -> Result<ResponseBody, Error> {
    match outcome {
        Ok(response) => {
            membership.record_success(peer, response.epoch);
            if response.epoch > sent_at {
                catch_up(peers.clone(), membership.clone(), peer);
            }
            Ok(response.body)
        }
        Err(e) => {
            membership.record_failure(peer);
            Err(e)
        }
    }
}

/// Fetches the config of `peer`, which announced a newer epoch, in the background.
pub fn catch_up(peers: Arc<dyn Peers>, membership: Arc<Membership>, peer: &str) {
    let peer = peer.to_string();
    tokio::spawn(async move {
        match peers
            .call(&peer, RequestBody::FetchConfig, Duration::from_secs(2))
            .await
        {
            Ok(ResponseBody::Config(config)) => {
                if let Err(e) = membership.install_on_blocking_pool(config).await {
                    tracing::warn!(%peer, error = %e, "refused the config of a peer");
                }
            }
            Ok(other) => tracing::warn!(%peer, ?other, "unexpected answer to FetchConfig"),
            Err(e) => tracing::debug!(%peer, error = %e, "cannot fetch config"),
        }
    });
}

/// Pings every other member until shutdown, keeping liveness and epochs fresh. A peer whose last
/// exchange failed is pinged again only after its backoff (100 ms doubling to 2 s); it is marked
/// alive sooner when it sends a message itself.
pub async fn ping_peers(peers: Arc<dyn Peers>, membership: Arc<Membership>, mut stop: Stop) {
    let mut ticks = tokio::time::interval(PING_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.unless_stopped(ticks.tick()).await.is_some() {
        let view = membership.view();
        for member in view.all_members() {
            if member.id == membership.node_id() || !membership.may_contact(&member.id) {
                continue;
            }
            let peers = peers.clone();
            let peer = member.id.clone();
            tokio::spawn(async move {
                let _ = peers.call(&peer, RequestBody::Ping, PING_INTERVAL).await;
            });
        }
    }
}
