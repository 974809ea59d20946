//! Membership changes under load against real kvnode processes: a cluster grows from 3 to 5 nodes
//! and shrinks back to 3 while writers keep writing; every acknowledged write reads back afterwards,
//! the data moved stays within 1.3 x the ideal, and the removed nodes are stopped only after the
//! ring settled without them and they hold no hints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvcluster_tests::load::{LoadLimits, WriteLoad};
use kvcluster_tests::{Cluster, KvClient, metric_sum};

/// Keys written before the first change, so there is data to move.
const PRELOAD: usize = 3_000;
/// The background load: 4 writers, each at most 20,000 writes 5 ms apart, for at most 300 s.
const LOAD: LoadLimits = LoadLimits {
    writers: 4,
    max_writes_per_writer: 20_000,
    pause: Duration::from_millis(5),
    limit: Duration::from_secs(300),
};
/// Longest time one membership change may take to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);

async fn transfer_keys(cluster: &Cluster, nodes: &[usize]) -> f64 {
    let mut total = 0.0;
    for &i in nodes {
        let text = cluster.client(i).metrics().await;
        total += metric_sum(&text, "kv_transfer_keys_received_total", &[]).unwrap_or(0.0);
    }
    total
}

/// Watches `client`'s transfer gauges until `stop` is set, and returns the most partitions it
/// reported gaining.
fn watch_partitions_gained(
    client: KvClient,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut most: f64 = 0.0;
        while !stop.load(Ordering::Acquire) {
            let text = client.metrics().await;
            let gained = metric_sum(&text, "kv_transfer_partitions_gained", &[]).unwrap_or(0.0);
            most = most.max(gained);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        most
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn growing_to_five_and_back_to_three_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    let stable: Vec<KvClient> = (0..3).map(|i| cluster.client(i).clone()).collect();
    let load = WriteLoad::start(&stable, PRELOAD, LOAD).await;

    // Grow: start two nodes, then offer a config naming them.
    let a = cluster.add_node().await;
    let b = cluster.add_node().await;
    let mut grow = cluster.client(0).admin_cluster().await;
    grow.epoch += 1;
    grow.members.push(cluster.member(a));
    grow.members.push(cluster.member(b));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watch = watch_partitions_gained(cluster.client(a).clone(), stop_watch.clone());
    let resp = cluster.write_config(0, &grow).await;
    assert_eq!(resp.status, 200, "{resp}");
    let t0 = Instant::now();
    let keys_at_grow = load.acknowledged();
    let grown = cluster
        .wait_settled(&[0, 1, 2, a, b], grow.epoch + 1, SETTLE_TIMEOUT)
        .await
        .expect("the ring did not settle after growing to 5");
    stop_watch.store(true, Ordering::Release);
    let most_gained = watch.await.unwrap();
    assert!(
        most_gained > 0.0,
        "a joining node reports the partitions it gains while the change runs"
    );
    // The node notices the settled ring at its next transfer step.
    let zero = |text: &str, gauge: &str| metric_sum(text, gauge, &[]) == Some(0.0);
    let t = Instant::now();
    loop {
        let text = cluster.client(a).metrics().await;
        if zero(&text, "kv_transfer_partitions_gained")
            && zero(&text, "kv_transfer_partitions_pending")
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the transfer gauges stay set once the ring settled\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(grown.members.len(), 5);
    let moved_grow = transfer_keys(&cluster, &[0, 1, 2, a, b]).await;
    eprintln!(
        "3 -> 5 settled at epoch {} in {:?}; {moved_grow} keys received",
        grown.epoch,
        t0.elapsed()
    );

    let received_before_shrink = transfer_keys(&cluster, &[0, 1, 2]).await;

    // Shrink: offer a config without the two new nodes.
    let mut shrink = grown.clone();
    shrink.epoch += 1;
    shrink.members.truncate(3);
    let resp = cluster.write_config(0, &shrink).await;
    assert_eq!(resp.status, 200, "{resp}");
    let t1 = Instant::now();
    let keys_at_shrink = load.acknowledged();
    let shrunk = cluster
        .wait_settled(&[0, 1, 2], shrink.epoch + 1, SETTLE_TIMEOUT)
        .await
        .expect("the ring did not settle after shrinking to 3");
    let moved_shrink = transfer_keys(&cluster, &[0, 1, 2]).await - received_before_shrink;
    eprintln!(
        "5 -> 3 settled at epoch {} in {:?}",
        shrunk.epoch,
        t1.elapsed()
    );
    // The removed nodes know they left, and hand off their hints before they are stopped.
    for i in [a, b] {
        cluster
            .wait_status(i, SETTLE_TIMEOUT, |s| {
                !s.member && !s.config.in_transition()
            })
            .await
            .unwrap_or_else(|| panic!("kv-{i} never learnt it left the ring"));
        let resp = cluster
            .client(i)
            .request("POST", kvapi::ADMIN_DRAIN, &[], None)
            .await;
        assert_eq!(resp.status, 202, "{resp}");
        cluster
            .wait_status(i, SETTLE_TIMEOUT, |s| s.hints_pending == 0 && s.draining)
            .await
            .unwrap_or_else(|| panic!("kv-{i} kept hints"));
    }
    cluster.stop(a);
    cluster.stop(b);

    let (acked, failed) = load.finish().await;
    eprintln!("load: {} writes acknowledged, {failed} not", acked.len());

    // Every acknowledged write reads back (R = 2 through each remaining node in turn).
    let mut lost = Vec::new();
    for (n, (key, value)) in acked.iter().enumerate() {
        let resp = cluster.client(n % 3).get_json(key).await;
        let found = (resp.status == 200 || resp.status == 300)
            && resp.live_values().iter().any(|v| v == value);
        if !found {
            lost.push(String::from_utf8_lossy(key).into_owned());
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, such as {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );

    // N = 3 on three nodes: each node alone must now hold every acknowledged write. Checked node by
    // node with the other two killed, so `r=1` can only be answered from that node's own storage.
    for holder in 0..3 {
        for other in 0..3 {
            if other != holder && cluster.node_mut(other).is_running() {
                cluster.kill9(other);
            }
        }
        if !cluster.node_mut(holder).is_running() {
            cluster.restart(holder);
        }
        let mut missing = 0;
        for (key, value) in &acked {
            let resp = cluster
                .client(holder)
                .get_json_with_query(key, "?r=1")
                .await;
            if !resp.live_values().iter().any(|v| v == value) {
                missing += 1;
            }
        }
        assert_eq!(
            missing, 0,
            "kv-{holder} alone lacks {missing} acknowledged writes"
        );
    }

    // Ideal movement with N = 3: growing 3 -> 5, each new node takes 3/5 of the keys; shrinking
    // 5 -> 3, the three remaining nodes must end with every key, of which they held 3 x 3/5.
    let ideal_grow = 2.0 * 0.6 * keys_at_grow as f64;
    let ideal_shrink = (3.0 - 1.8) * keys_at_shrink as f64;
    eprintln!(
        "data moved: grow {moved_grow} keys (ideal {ideal_grow:.0}, ratio {:.2}), \
         shrink {moved_shrink} keys (ideal {ideal_shrink:.0}, ratio {:.2})",
        moved_grow / ideal_grow,
        moved_shrink / ideal_shrink
    );
    assert!(
        moved_grow <= 1.3 * ideal_grow,
        "growing moved {moved_grow} keys, more than 1.3 x the ideal {ideal_grow:.0}"
    );
    assert!(
        moved_shrink <= 1.3 * ideal_shrink,
        "shrinking moved {moved_shrink} keys, more than 1.3 x the ideal {ideal_shrink:.0}"
    );
}
