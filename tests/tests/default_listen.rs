//! `kvnode --data-dir DIR` and nothing else serves on 127.0.0.1:8080 as a one-member cluster.
//! The only test that may use port 8080.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use kvcluster_tests::NodeBuilder;

#[tokio::test]
async fn data_dir_alone_serves_on_127_0_0_1_8080() {
    let mut node = NodeBuilder::new().without_listen().start();
    assert_eq!(node.addr(), SocketAddr::from(([127, 0, 0, 1], 8080)));
    let c = node.client();
    c.put_ok(b"hello", b"world", None).await;
    let (v, _) = c.get_one(b"hello").await;
    assert_eq!(v, b"world");
    let ready = c.request("GET", "/health/ready", &[], None).await;
    assert_eq!(ready.status, 200, "{ready}");
    let status = node.stop();
    assert!(status.success(), "{status}");
}
