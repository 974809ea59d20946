//! High availability against real kvnode processes: a node that was down gets every write back from
//! hints alone and from anti-entropy alone, a wiped node is rebuilt by anti-entropy, and a delete made
//! while a replica was down stays deleted after that replica returns past the tombstone grace period.
//!
//! "Its RocksDB holds the keys" is checked from outside: once the other replicas are killed, the
//! node answers every key with `r=1` from its own storage alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvcluster_tests::{Cluster, ClusterOptions, KvClient, metric_sum};

/// Keys written while a node is down, as the issue asks.
const KEYS: usize = 10_000;
/// Concurrent writers.
const WRITERS: usize = 32;
/// Bound on the time a returning node may take to get every key back.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes `count` keys `{prefix}{i}` = `v{i}` through the given clients (round-robin), `WRITERS`
/// at a time; every write must be acknowledged.
async fn write_keys(clients: &[KvClient], prefix: &str, count: usize) -> Vec<Vec<u8>> {
    let keys: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..count)
            .map(|i| format!("{prefix}{i}").into_bytes())
            .collect(),
    );
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let keys = keys.clone();
        let clients = clients.to_vec();
        tasks.push(tokio::spawn(async move {
            for i in (w..keys.len()).step_by(WRITERS) {
                let client = &clients[i % clients.len()];
                let value = format!("v{i}");
                let resp = client.put(&keys[i], value.as_bytes(), None).await;
                assert_eq!(resp.status, 204, "write {i} not acknowledged: {resp}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    Arc::try_unwrap(keys).unwrap_or_else(|k| (*k).clone())
}

/// Asserts that `client`'s node alone (`r=1`, other replicas dead) answers every key with `v{i}`.
async fn assert_holds_all(client: &KvClient, keys: &[Vec<u8>]) {
    let mut missing = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let resp = client.get_with_query(key, "?r=1").await;
        if resp.status != 200 || resp.body != format!("v{i}").as_bytes() {
            missing.push(format!("{}: {resp}", String::from_utf8_lossy(key)));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} keys missing, such as {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(3)]
    );
}

/// Sum of `name` over the given nodes' metrics.
async fn metric_total(cluster: &Cluster, nodes: &[usize], name: &str) -> f64 {
    let mut total = 0.0;
    for &i in nodes {
        total += metric_sum(&cluster.client(i).metrics().await, name, &[]).unwrap_or(0.0);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hints_alone_bring_back_every_write_a_down_node_missed() {
    let mut cluster = Cluster::start_with(
        ClusterOptions::new(3, 3, 2, 2).args(["--anti-entropy-interval", "0s"]),
    )
    .await;
    cluster.kill9(2);
    let clients = [cluster.client(0).clone(), cluster.client(1).clone()];
    let keys = write_keys(&clients, "hint-", KEYS).await;
    // Three nodes and N = 3: no fallback exists, so the coordinators keep the hints themselves.
    // Hints are stored by the replication tasks, which may finish just after the client's answer.
    let t_hints = Instant::now();
    let mut held = metric_total(&cluster, &[0, 1], "kv_hints_pending").await;
    while (held as usize) < KEYS && t_hints.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        held = metric_total(&cluster, &[0, 1], "kv_hints_pending").await;
    }
    assert_eq!(held as usize, KEYS, "one hint per write for the dead node");

    cluster.restart(2);
    let t0 = Instant::now();
    for i in [0, 1] {
        cluster
            .wait_status(i, CATCH_UP_TIMEOUT, |s| s.hints_pending == 0)
            .await
            .unwrap_or_else(|| panic!("kv-{i} still holds hints after {CATCH_UP_TIMEOUT:?}"));
    }
    let delivered = metric_total(&cluster, &[0, 1], "kv_hints_delivered_total").await;
    eprintln!(
        "{KEYS} hints delivered in {:?} ({delivered} counted)",
        t0.elapsed()
    );
    assert_eq!(delivered as usize, KEYS);
    let repaired = metric_total(&cluster, &[0, 1, 2], "kv_antientropy_keys_repaired_total").await;
    assert_eq!(repaired, 0.0, "anti-entropy is off in this test");
    cluster.kill9(0);
    cluster.kill9(1);
    assert_holds_all(cluster.client(2), &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anti_entropy_alone_brings_back_every_write_a_down_node_missed() {
    let mut cluster = Cluster::start_with(
        ClusterOptions::new(3, 3, 2, 2)
            .strict()
            .args(["--anti-entropy-interval", "1s"]),
    )
    .await;
    cluster.kill9(2);
    let clients = [cluster.client(0).clone(), cluster.client(1).clone()];
    let keys = write_keys(&clients, "ae-", KEYS).await;
    let held = metric_total(&cluster, &[0, 1], "kv_hints_pending").await;
    assert_eq!(held, 0.0, "strict quorum keeps no hints");

    cluster.restart(2);
    let t0 = Instant::now();
    // Every key is missing on kv-2 and changes there exactly once.
    loop {
        let repaired =
            metric_total(&cluster, &[0, 1, 2], "kv_antientropy_keys_repaired_total").await;
        if repaired as usize >= KEYS {
            break;
        }
        assert!(
            t0.elapsed() < CATCH_UP_TIMEOUT,
            "only {repaired} keys repaired after {CATCH_UP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{KEYS} keys restored by anti-entropy in {:?}", t0.elapsed());
    cluster.kill9(0);
    cluster.kill9(1);
    assert_holds_all(cluster.client(2), &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anti_entropy_rebuilds_a_wiped_node() {
    let mut cluster = Cluster::start_with(
        ClusterOptions::new(3, 3, 2, 2).args(["--anti-entropy-interval", "1s"]),
    )
    .await;
    let clients = [cluster.client(0).clone(), cluster.client(1).clone()];
    let keys = write_keys(&clients, "wipe-", 3_000).await;
    cluster.wipe(1);
    let t0 = Instant::now();
    loop {
        let repaired =
            metric_total(&cluster, &[0, 1, 2], "kv_antientropy_keys_repaired_total").await;
        if repaired as usize >= keys.len() {
            break;
        }
        assert!(
            t0.elapsed() < CATCH_UP_TIMEOUT,
            "only {repaired} keys repaired after {CATCH_UP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "wiped node rebuilt ({} keys) in {:?}",
        keys.len(),
        t0.elapsed()
    );
    cluster.kill9(0);
    cluster.kill9(2);
    assert_holds_all(cluster.client(1), &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_made_while_a_replica_was_down_stays_deleted() {
    let mut cluster = Cluster::start_with(ClusterOptions::new(3, 3, 2, 2).strict().args([
        "--anti-entropy-interval",
        "500ms",
        "--tombstone-grace",
        "1s",
    ]))
    .await;
    let key = b"doomed";
    cluster.client(0).put_ok(key, b"old value", None).await;
    // Every replica holds the value before kv-2 goes down.
    assert_eq!(
        cluster.client(0).get_with_query(key, "?r=3").await.status,
        200
    );
    cluster.kill9(2);
    let (_, context) = cluster.client(0).get_one(key).await;
    let resp = cluster.client(0).delete(key, Some(&context)).await;
    assert_eq!(resp.status, 204, "{resp}");

    // Well past the grace period, with sweeps running: kv-2 has not seen the tombstone, so nobody
    // may purge it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let purged = metric_total(&cluster, &[0, 1], "kv_tombstones_purged_total").await;
    assert_eq!(
        purged, 0.0,
        "a tombstone was purged while a replica lacked it"
    );

    cluster.restart(2);
    // Anti-entropy gives kv-2 the tombstone, then the first owner purges it everywhere.
    let t0 = Instant::now();
    loop {
        let purged = metric_total(&cluster, &[0, 1, 2], "kv_tombstones_purged_total").await;
        if purged >= 1.0 {
            break;
        }
        assert!(
            t0.elapsed() < CATCH_UP_TIMEOUT,
            "the tombstone was never purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give the purge time to reach every owner, then check no replica resurrects the value.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        let resp = cluster.client(i).get_with_query(key, "?r=3").await;
        assert_eq!(resp.status, 404, "kv-{i} sees the deleted key: {resp}");
    }
    cluster.kill9(0);
    cluster.kill9(1);
    let resp = cluster.client(2).get_with_query(key, "?r=1").await;
    assert_eq!(
        resp.status, 404,
        "the revived replica resurrected the key: {resp}"
    );
}
