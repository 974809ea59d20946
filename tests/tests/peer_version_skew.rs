//! A rolling upgrade half done: one member speaks a newer peer RPC version and answers every message
//! of this version with 400 `bad_rpc`, as a real node does for a version it cannot read. To a client
//! whose request was valid that replica is unavailable: its PUT and GET answer 503, never 400.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use kvcluster_tests::Cluster;
use kvcluster_tests::kvapi::{ErrorBody, codes};
use kvnode::ring::partition_of;
use tokio::net::TcpListener;

const PARTITIONS: u32 = 256;

/// Serves `listener` as a member on a newer RPC version would: every message is refused with 400
/// `bad_rpc`. Counts the messages it refused.
async fn serve_newer_version(listener: TcpListener, refused: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let refused = refused.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request| {
                refused.fetch_add(1, Ordering::Relaxed);
                let body = ErrorBody {
                    error: codes::BAD_RPC.to_string(),
                    message: "unsupported message version 1; this node speaks version 2".into(),
                    context: None,
                    replied: None,
                    required: None,
                };
                let response = hyper::Response::builder()
                    .status(400)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
                    .unwrap();
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_on_a_newer_rpc_version_makes_a_valid_request_unavailable_not_bad() {
    // N = 1: each key has one owner, and a request entering elsewhere is coordinated by it.
    let mut cluster = Cluster::start(3, 1, 1, 1).await;
    let ring = cluster.client(0).admin_ring().await;
    let upgraded = cluster.id(2);
    let key = (0u32..)
        .map(|i| format!("skew-{i}").into_bytes())
        .find(|k| {
            let partition = partition_of(k, PARTITIONS) as usize;
            ring.partitions[partition].replicas == [upgraded.clone()]
        })
        .unwrap();

    // kv-2 restarts "on the newer version": its peer port now refuses this version's messages.
    let peer_addr = cluster.node(2).peer_addr();
    cluster.stop(2);
    let listener = TcpListener::bind(peer_addr).await.unwrap();
    let refused = Arc::new(AtomicU64::new(0));
    let server = tokio::spawn(serve_newer_version(listener, refused.clone()));

    let client = cluster.client(0);
    let put = client.put(&key, b"value", None).await;
    let body = put.assert_error(503, codes::UNAVAILABLE);
    assert!(
        body.message.contains("version 2"),
        "the 503 says why: {}",
        body.message
    );
    // A read counts the replica as missing from its quorum.
    let get = client.get(&key).await;
    get.assert_error(503, codes::QUORUM_NOT_REACHED);
    assert!(
        refused.load(Ordering::Relaxed) >= 2,
        "both requests reached the upgraded member"
    );
    server.abort();
}
