//! Time to live against real kvnode processes: `?ttl=` is validated, an expired value reads as
//! absent and a write with its context supersedes it, a replica that was down while the key expired
//! (holding nothing but a hint for it) returns without bringing the value back, and the expired
//! record is reclaimed from every replica's storage after the tombstone grace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use kvcluster_tests::kvapi::codes;
use kvcluster_tests::{Cluster, ClusterOptions, NodeProcess, kvctl, metric_sum};

/// Bound on hint delivery, anti-entropy and purge after the replica returns.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

async fn metric_total(cluster: &Cluster, nodes: &[usize], name: &str) -> f64 {
    let mut total = 0.0;
    for &i in nodes {
        total += metric_sum(&cluster.client(i).metrics().await, name, &[]).unwrap_or(0.0);
    }
    total
}

/// Polls `check` every 200 ms until it holds, failing with `what` after [`SETTLE_TIMEOUT`].
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let t0 = Instant::now();
    while !check().await {
        assert!(
            t0.elapsed() < SETTLE_TIMEOUT,
            "{what} within {SETTLE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_ttl_that_is_garbage_or_out_of_range_is_refused() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    for query in [
        "?ttl=soon",
        "?ttl=0s",
        "?ttl=999ms",
        "?ttl=366days",
        "?ttl=",
        "?ttl=1s&ttl=2s",
    ] {
        c.put_with_query(b"k", b"v", query)
            .await
            .assert_error(400, codes::BAD_PARAMETER);
    }
    c.get_with_query(b"k", "?ttl=1s")
        .await
        .assert_error(400, codes::BAD_PARAMETER);
    assert_eq!(
        c.get(b"k").await.status,
        404,
        "a refused write stores nothing"
    );
    assert_eq!(
        c.put_with_query(b"k", b"v", "?ttl=365days").await.status,
        204
    );
    assert_eq!(c.put_with_query(b"k", b"v", "?ttl=none").await.status, 204);

    let refused = kvctl(&node.base_url(), &["put", "k", "v", "--ttl", "soon"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("ttl must be a duration"), "{stderr}");
}

#[tokio::test]
async fn an_expired_value_reads_as_deleted_and_a_write_with_its_context_replaces_it() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    assert_eq!(
        c.put_with_query(b"short", b"brief", "?ttl=1s").await.status,
        204
    );
    c.put_ok(b"forever", b"kept", None).await;
    let written = Instant::now();
    let (value, _) = c.get_one(b"short").await;
    assert_eq!(value, b"brief", "read before expiry");
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(written.elapsed())).await;
    let gone = c.get(b"short").await;
    gone.assert_error(404, codes::NOT_FOUND);
    let context = gone.expect_context();
    assert_eq!(c.get_one(b"forever").await.0, b"kept");
    // The expired version is a tombstone of its dot: a write with its context leaves one sibling.
    c.put_ok(b"short", b"again", Some(&context)).await;
    let again = c.get_json(b"short").await;
    assert_eq!(again.status, 200, "{again}");
    assert_eq!(again.read_response().siblings.len(), 1, "{again}");

    // kvctl put --ttl, read back with kvctl get, then expired.
    let put = kvctl(&node.base_url(), &["put", "cli", "value", "--ttl", "1s"]);
    assert!(put.status.success(), "{put:?}");
    let get = kvctl(&node.base_url(), &["get", "cli"]);
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim_end(),
        "value",
        "{get:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.get(b"cli").await.status, 404);
}

#[tokio::test]
async fn the_default_ttl_applies_unless_a_write_says_none() {
    let node = NodeProcess::start(&["--default-ttl", "1s"]);
    let c = node.client();
    c.put_ok(b"defaulted", b"v", None).await;
    assert_eq!(
        c.put_with_query(b"pinned", b"v", "?ttl=none").await.status,
        204
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.get(b"defaulted").await.status, 404);
    assert_eq!(c.get_one(b"pinned").await.0, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_down_while_a_key_expired_returns_and_the_key_stays_absent() {
    // Hints live 5 s, long enough to outlast the expiry; the grace (8 s) is longer, as the node
    // requires.
    let mut cluster = Cluster::start_with(ClusterOptions::new(3, 3, 2, 2).args([
        "--anti-entropy-interval",
        "500ms",
        "--tombstone-grace",
        "8s",
        "--hint-ttl",
        "5s",
    ]))
    .await;
    let key = b"ephemeral";
    cluster.kill9(2);
    let put = cluster
        .client(0)
        .put_with_query(key, b"short-lived", "?ttl=2s&w=2")
        .await;
    assert_eq!(put.status, 204, "{put}");
    let written = Instant::now();
    let before = cluster.client(1).get_with_query(key, "?r=2").await;
    assert_eq!(before.status, 200, "read before expiry: {before}");
    assert_eq!(before.body, b"short-lived");
    let pending = metric_total(&cluster, &[0, 1], "kv_hints_pending").await;
    assert!(
        pending >= 1.0,
        "a hint holds the write for kv-2, {pending} pending"
    );

    tokio::time::sleep(Duration::from_secs(3).saturating_sub(written.elapsed())).await;
    let expired = cluster.client(0).get_with_query(key, "?r=2").await;
    expired.assert_error(404, codes::NOT_FOUND);

    cluster.restart(2);
    eventually("the hint is delivered to the returned replica", || async {
        metric_total(&cluster, &[0, 1, 2], "kv_hints_pending").await == 0.0
            && metric_total(&cluster, &[0, 1], "kv_hints_delivered_total").await >= 1.0
    })
    .await;
    for i in 0..3 {
        let resp = cluster.client(i).get_with_query(key, "?r=1").await;
        assert_eq!(
            resp.status, 404,
            "kv-{i} brings the expired value back: {resp}"
        );
    }

    // After the grace, the record is purged from every replica: a read finds no state at all (a 404
    // without a context), where the expired version answered with its context.
    eventually("the expired record is purged", || async {
        metric_total(&cluster, &[0, 1, 2], "kv_tombstones_purged_total").await >= 1.0
    })
    .await;
    eventually("every replica dropped the record", || async {
        let resp = cluster.client(0).get_with_query(key, "?r=3").await;
        resp.status == 404 && resp.context().is_none()
    })
    .await;
    cluster.kill9(0);
    cluster.kill9(1);
    let alone = cluster.client(2).get_with_query(key, "?r=1").await;
    assert_eq!(
        alone.status, 404,
        "the returned replica alone resurrects the key: {alone}"
    );
    assert!(
        alone.context().is_none(),
        "kv-2 still stores the record: {alone}"
    );
}
