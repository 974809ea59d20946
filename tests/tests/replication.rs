//! Multi-node replication: several real `kvnode` processes sharing one cluster config (N = 3, W = R = 2
//! unless a test says otherwise), driven over HTTP through different nodes, with nodes killed, stopped
//! and restarted on the same address and data directory.
//!
//! Every timing these tests measure is printed with `eprintln!` (see it with `--nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kvcluster_tests::kvapi::{ClusterConfig, codes};
use kvcluster_tests::{Cluster, ClusterOptions, KvClient, Resp, metric_sum};

/// The node's default request deadline: a quorum failure must be answered well within it.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// Key `i` of a test: printable but with a slash, a space and a non-ASCII byte, so the percent-encoding
/// survives coordination and forwarding.
fn key(test: &str, i: usize) -> Vec<u8> {
    let mut k = format!("{test}/key {i}:").into_bytes();
    k.push(0xE9);
    k
}

/// Value `i` of a test: distinct per key, with binary bytes and a length that varies.
fn value(test: &str, i: usize) -> Vec<u8> {
    let mut v = format!("{test}-value-{i}-").into_bytes();
    v.extend((0..(i % 97)).map(|j| ((i * 31 + j * 7) % 256) as u8));
    v
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(text, name, labels).unwrap_or(0.0)
}

/// Asserts a 200 answer carrying exactly `expected`.
fn assert_value(resp: &Resp, expected: &[u8], what: &str) {
    assert_eq!(
        resp.status, 200,
        "{what}: expected 200 with the value, got {resp}"
    );
    assert!(
        resp.body == expected,
        "{what}: expected value {:?}, got {:?}",
        String::from_utf8_lossy(expected),
        String::from_utf8_lossy(&resp.body)
    );
}

/// Asserts a 503 `quorum_not_reached` answer with the given counts.
fn assert_quorum_failure(resp: &Resp, replied: u32, required: u32, what: &str) {
    let body = resp.assert_error(503, codes::QUORUM_NOT_REACHED);
    assert_eq!(
        (body.replied, body.required),
        (Some(replied), Some(required)),
        "{what}: expected replied={replied} required={required}, got {resp}"
    );
}

/// `p`-th percentile (0..=100) of sorted durations.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) * p) / 100]
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let total: Duration = samples.iter().sum();
    eprintln!(
        "{name}: {} requests, total {total:?}, p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        percentile(&samples, 50),
        percentile(&samples, 99),
        samples.last().copied().unwrap_or_default()
    );
}

#[tokio::test]
async fn writes_through_one_node_read_back_through_every_other() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    const KEYS: usize = 300;
    let t = Instant::now();
    for i in 0..KEYS {
        let resp = cluster
            .client(0)
            .put(&key("fanout", i), &value("fanout", i), None)
            .await;
        assert_eq!(resp.status, 204, "PUT key {i} through kv-0: {resp}");
    }
    eprintln!("{KEYS} PUTs through kv-0: {:?}", t.elapsed());
    for reader in [1, 2] {
        let t = Instant::now();
        for i in 0..KEYS {
            let resp = cluster.client(reader).get(&key("fanout", i)).await;
            assert_value(
                &resp,
                &value("fanout", i),
                &format!("GET key {i} through kv-{reader} after PUT through kv-0"),
            );
        }
        eprintln!("{KEYS} GETs through kv-{reader}: {:?}", t.elapsed());
    }
}

#[tokio::test]
async fn one_node_down_still_serves_quorum_two() {
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    cluster.kill9(1);
    const KEYS: usize = 50;
    let live = [0, 2];
    let t = Instant::now();
    let mut first = None;
    for i in 0..KEYS {
        let via = live[i % 2];
        let t_req = Instant::now();
        let resp = cluster
            .client(via)
            .put_with_query(&key("onedown", i), &value("onedown", i), "?w=2")
            .await;
        first.get_or_insert(t_req.elapsed());
        assert_eq!(
            resp.status, 204,
            "PUT ?w=2 of key {i} through kv-{via} with kv-1 killed: {resp}"
        );
    }
    eprintln!(
        "{KEYS} PUTs ?w=2 with kv-1 down: {:?} (first one right after kill -9: {:?})",
        t.elapsed(),
        first.unwrap_or_default()
    );
    let t = Instant::now();
    for i in 0..KEYS {
        // Read through the other live node than the one that coordinated the write.
        let via = live[(i + 1) % 2];
        let resp = cluster
            .client(via)
            .get_with_query(&key("onedown", i), "?r=2")
            .await;
        assert_value(
            &resp,
            &value("onedown", i),
            &format!("GET ?r=2 of key {i} through kv-{via} with kv-1 killed"),
        );
    }
    eprintln!("{KEYS} GETs ?r=2 with kv-1 down: {:?}", t.elapsed());
    // The cluster defaults (W = R = 2) behave the same.
    for via in live {
        let k = format!("onedown-default-{via}");
        let resp = cluster.client(via).put(k.as_bytes(), b"dflt", None).await;
        assert_eq!(
            resp.status, 204,
            "PUT (default W=2) through kv-{via}: {resp}"
        );
        let other = if via == 0 { 2 } else { 0 };
        let resp = cluster.client(other).get(k.as_bytes()).await;
        assert_value(
            &resp,
            b"dflt",
            &format!("GET (default R=2) through kv-{other}"),
        );
    }
}

#[tokio::test]
async fn two_nodes_down_answers_503_with_counts_quickly() {
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    let c0 = cluster.client(0).clone();
    c0.put_ok(b"existing", b"before the failures", None).await;
    let before = c0.metrics().await;

    // One node down: W=3 / R=3 cannot be met, and the answer says so.
    cluster.kill9(2);
    let t = Instant::now();
    let resp = c0.put_with_query(b"needs-three", b"v", "?w=3").await;
    let took = t.elapsed();
    eprintln!("PUT ?w=3 with kv-2 down: HTTP {} in {took:?}", resp.status);
    assert_quorum_failure(&resp, 2, 3, "PUT ?w=3 through kv-0 with kv-2 killed");
    assert!(took < DEFAULT_DEADLINE, "PUT ?w=3 took {took:?}");

    let t = Instant::now();
    let resp = c0.get_with_query(b"existing", "?r=3").await;
    let took = t.elapsed();
    eprintln!("GET ?r=3 with kv-2 down: HTTP {} in {took:?}", resp.status);
    assert_quorum_failure(&resp, 2, 3, "GET ?r=3 through kv-0 with kv-2 killed");
    assert!(took < DEFAULT_DEADLINE, "GET ?r=3 took {took:?}");

    // Two nodes down: the default quorum of 2 cannot be met either.
    cluster.kill9(1);
    let t = Instant::now();
    let resp = c0.put(b"needs-two", b"v", None).await;
    let took = t.elapsed();
    eprintln!(
        "PUT (W=2) with kv-1 and kv-2 down: HTTP {} in {took:?}",
        resp.status
    );
    assert_quorum_failure(&resp, 1, 2, "PUT through kv-0 with kv-1 and kv-2 killed");
    assert!(
        took < DEFAULT_DEADLINE,
        "PUT with two nodes down took {took:?}"
    );

    let t = Instant::now();
    let resp = c0.get(b"existing").await;
    let took = t.elapsed();
    eprintln!(
        "GET (R=2) with kv-1 and kv-2 down: HTTP {} in {took:?}",
        resp.status
    );
    assert_quorum_failure(&resp, 1, 2, "GET through kv-0 with kv-1 and kv-2 killed");
    assert!(
        took < DEFAULT_DEADLINE,
        "GET with two nodes down took {took:?}"
    );

    // Explicit ?w=2 / ?r=2 give the same answer.
    let resp = c0.put_with_query(b"needs-two", b"v", "?w=2").await;
    assert_quorum_failure(&resp, 1, 2, "PUT ?w=2 with two nodes down");
    let resp = c0.get_with_query(b"existing", "?r=2").await;
    assert_quorum_failure(&resp, 1, 2, "GET ?r=2 with two nodes down");

    // W=1 / R=1 are still served by the one node left.
    let resp = c0.put_with_query(b"needs-one", b"solo", "?w=1").await;
    assert_eq!(resp.status, 204, "PUT ?w=1 with two nodes down: {resp}");
    let resp = c0.get_with_query(b"existing", "?r=1").await;
    assert_value(
        &resp,
        b"before the failures",
        "GET ?r=1 with two nodes down",
    );

    let after = c0.metrics().await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    // The quorum failures and the requests share one `operation` vocabulary, so a failure ratio per
    // operation is one division.
    for op in ["put", "get"] {
        assert_eq!(
            delta("kv_quorum_failures_total", &[("operation", op)]),
            3.0,
            "kv_quorum_failures_total{{operation=\"{op}\"}} on kv-0 must count the 3 failed {op}s\n{after}"
        );
        assert_eq!(
            delta("kv_requests_total", &[("operation", op), ("status", "503")]),
            3.0,
            "kv_requests_total{{operation=\"{op}\",status=\"503\"}} counts the same 3 requests\n{after}"
        );
    }
}

#[tokio::test]
async fn acknowledged_write_is_read_by_the_next_quorum_read_elsewhere() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    const ITERATIONS: usize = 1000;
    let clients: Vec<KvClient> = (0..3).map(|i| cluster.client(i).clone()).collect();
    let mut put_times = Vec::with_capacity(ITERATIONS);
    let mut get_times = Vec::with_capacity(ITERATIONS);
    let t = Instant::now();
    for i in 0..ITERATIONS {
        let (writer, reader) = (i % 3, (i + 1) % 3);
        let k = key("ryw", i);
        let v = value("ryw", i);
        let t_put = Instant::now();
        let resp = clients[writer].put_with_query(&k, &v, "?w=2").await;
        put_times.push(t_put.elapsed());
        assert_eq!(
            resp.status, 204,
            "iteration {i}: PUT ?w=2 through kv-{writer}: {resp}"
        );
        let t_get = Instant::now();
        let resp = clients[reader].get_with_query(&k, "?r=2").await;
        get_times.push(t_get.elapsed());
        assert_value(
            &resp,
            &v,
            &format!(
                "iteration {i}: GET ?r=2 through kv-{reader} right after the acknowledged PUT ?w=2 through kv-{writer}"
            ),
        );
    }
    eprintln!("{ITERATIONS} PUT+GET pairs: {:?}", t.elapsed());
    summary("PUT ?w=2", put_times);
    summary("GET ?r=2", get_times);
}

#[tokio::test]
async fn a_node_down_during_a_config_change_learns_it_on_return() {
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    cluster.stop(2);

    let mut next = cluster.config_at(2);
    next.w = 3;
    let resp = cluster.write_config(0, &next).await;
    assert_eq!(resp.status, 200, "PUT epoch 2 (w=3) to kv-0: {resp}");
    let installed: ClusterConfig = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("PUT epoch 2 must answer the installed config ({e}): {resp}"));
    assert_eq!(installed, next, "the installed config is the one sent");
    assert_eq!(
        cluster.client(0).admin_cluster().await,
        next,
        "kv-0 GET after PUT"
    );

    let (seen, took) = cluster
        .wait_epoch(1, 2, Duration::from_secs(3))
        .await
        .unwrap_or_else(|| panic!("kv-1 did not show epoch 2 within 3 s of the PUT to kv-0"));
    eprintln!("kv-1 learnt epoch 2 {took:?} after the PUT to kv-0");
    assert_eq!(seen, next, "kv-1 follows exactly the new config");

    cluster.restart(2);
    let Some((seen, took)) = cluster.wait_epoch(2, 2, Duration::from_secs(5)).await else {
        let shown = cluster.client(2).try_admin_cluster().await;
        panic!(
            "kv-2, stopped during the change and restarted, did not show epoch 2 within 5 s of its listening \
             line; GET {} answers {shown:?}",
            kvcluster_tests::kvapi::ADMIN_CLUSTER
        );
    };
    eprintln!("restarted kv-2 learnt epoch 2 {took:?} after printing its listening line");
    assert_eq!(seen, next, "kv-2 follows exactly the new config");

    // The same epoch again is stale, on the node that took it and on the one that learnt it.
    for via in [0, 2] {
        let resp = cluster.write_config(via, &next).await;
        resp.assert_error(409, codes::STALE_EPOCH);
    }
    let resp = cluster.write_config(0, &cluster.config_at(1)).await;
    resp.assert_error(409, codes::STALE_EPOCH);

    // Invalid configs are refused whatever their epoch.
    let mut bad = cluster.config_at(3);
    bad.w = 4;
    cluster
        .write_config(0, &bad)
        .await
        .assert_error(400, codes::BAD_CONFIG);
    let mut bad = cluster.config_at(3);
    bad.partitions = 512;
    cluster
        .write_config(0, &bad)
        .await
        .assert_error(400, codes::BAD_CONFIG);
    let mut bad = cluster.config_at(3);
    bad.cluster = "another".to_owned();
    cluster
        .write_config(0, &bad)
        .await
        .assert_error(400, codes::BAD_CONFIG);
    for i in 0..3 {
        assert_eq!(
            cluster.client(i).admin_cluster().await,
            next,
            "kv-{i} still follows epoch 2 after the refused configs"
        );
    }

    // The new default W = 3 is in force: with a node down a default write is refused.
    cluster.kill9(2);
    let resp = cluster.client(1).put(b"after-change", b"v", None).await;
    assert_quorum_failure(&resp, 2, 3, "PUT (default W=3 at epoch 2) with kv-2 down");
}

#[tokio::test]
async fn read_repair_fixes_a_replica_that_missed_a_write() {
    // Strict quorum and no anti-entropy: only read repair may bring kv-2 up to date, so the count of
    // repairs is exact (hints delivered on kv-2's return would otherwise fix some keys first).
    let mut cluster = Cluster::start_with(
        ClusterOptions::new(3, 3, 2, 2)
            .strict()
            .args(["--anti-entropy-interval", "0s"]),
    )
    .await;
    const KEYS: usize = 20;
    cluster.stop(2);
    for i in 0..KEYS {
        let resp = cluster
            .client(0)
            .put_with_query(&key("repair", i), &value("repair", i), "?w=2")
            .await;
        assert_eq!(
            resp.status, 204,
            "PUT ?w=2 of key {i} through kv-0 with kv-2 stopped: {resp}"
        );
    }
    cluster.restart(2);
    let took = cluster
        .wait_peer_alive(0, 2, true, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("kv-0 did not see the restarted kv-2 alive within 5 s"));
    eprintln!("kv-0 saw the restarted kv-2 alive after {took:?}");

    let before = cluster.client(0).metrics().await;
    let t = Instant::now();
    for i in 0..KEYS {
        let resp = cluster
            .client(0)
            .get_with_query(&key("repair", i), "?r=3")
            .await;
        assert_value(
            &resp,
            &value("repair", i),
            &format!("GET ?r=3 of key {i} through kv-0 after kv-2 returned"),
        );
    }
    eprintln!("{KEYS} GETs ?r=3 through kv-0: {:?}", t.elapsed());

    // Read repair runs in the background: give it up to 3 s to count the repairs.
    let t = Instant::now();
    let deadline = t + Duration::from_secs(3);
    let repairs = loop {
        let after = cluster.client(0).metrics().await;
        let repairs = metric(&after, "kv_read_repairs_total", &[])
            - metric(&before, "kv_read_repairs_total", &[]);
        if repairs >= KEYS as f64 || Instant::now() >= deadline {
            break repairs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "kv_read_repairs_total on kv-0 rose by {repairs} within {:?}",
        t.elapsed()
    );
    assert!(
        repairs >= KEYS as f64,
        "kv_read_repairs_total on kv-0 must rise by at least {KEYS} (one per key kv-2 missed), rose by {repairs}"
    );
    // Let repair RPCs counted just now land before the other replicas go away.
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.kill9(0);
    cluster.kill9(1);
    for i in 0..KEYS {
        let resp = cluster
            .client(2)
            .get_with_query(&key("repair", i), "?r=1")
            .await;
        assert_value(
            &resp,
            &value("repair", i),
            &format!(
                "GET ?r=1 of key {i} through kv-2 alone (it missed the write; read repair must have fixed it)"
            ),
        );
    }
}

#[tokio::test]
async fn ring_and_status_admin_views() {
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    let ids: BTreeSet<String> = (0..3).map(|i| cluster.id(i)).collect();

    let ring = cluster.client(0).admin_ring().await;
    assert_eq!(ring.epoch, 1, "ring epoch");
    assert_eq!(ring.partitions.len(), 256, "partition count");
    for (i, p) in ring.partitions.iter().enumerate() {
        assert_eq!(p.partition as usize, i, "partitions in order");
        assert_eq!(p.replicas.len(), 3, "partition {i} has N=3 replicas: {p:?}");
        let distinct: BTreeSet<&String> = p.replicas.iter().collect();
        assert_eq!(
            distinct.len(),
            3,
            "partition {i} replicas are distinct: {p:?}"
        );
        assert!(
            p.replicas.iter().all(|r| ids.contains(r)),
            "partition {i} replicas are members: {p:?}"
        );
    }
    for i in 1..3 {
        assert_eq!(
            cluster.client(i).admin_ring().await,
            ring,
            "kv-{i} computes the same ring as kv-0"
        );
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        let status = cluster.client(i).admin_status().await;
        assert_eq!(status.node_id, cluster.id(i), "{status:?}");
        assert!(status.member, "kv-{i} is a member: {status:?}");
        assert_eq!(&status.config, cluster.config(), "kv-{i} config");
        let mut peers: Vec<_> = status.peers.clone();
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        let expected: Vec<(String, String)> = (0..3)
            .filter(|j| *j != i)
            .map(|j| (cluster.id(j), cluster.config().members[j].address.clone()))
            .collect();
        let got: Vec<(String, String)> = peers
            .iter()
            .map(|p| (p.id.clone(), p.address.clone()))
            .collect();
        assert_eq!(
            got, expected,
            "kv-{i} lists the two other members as peers: {status:?}"
        );
        for p in &peers {
            assert!(
                p.alive,
                "kv-{i} sees {} alive after a second: {status:?}",
                p.id
            );
            assert!(
                p.last_seen_ms_ago.is_some_and(|ms| ms < 2000),
                "kv-{i} saw {} within the last 2 s (pings every 500 ms): {status:?}",
                p.id
            );
        }
    }

    // A killed peer is reported dead soon after.
    cluster.kill9(2);
    let took = cluster
        .wait_peer_alive(0, 2, false, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("kv-0 still reports the killed kv-2 alive after 5 s"));
    eprintln!("kv-0 reported the killed kv-2 dead after {took:?}");
}

#[tokio::test]
async fn writes_through_a_non_replica_are_forwarded() {
    // Four members, N = 3: kv-3 is outside the preference list of about a quarter of the partitions.
    let cluster = Cluster::start(4, 3, 2, 2).await;
    let ring = cluster.client(3).admin_ring().await;
    let outside: BTreeSet<u32> = ring
        .partitions
        .iter()
        .filter(|p| !p.replicas.iter().any(|r| r == "kv-3"))
        .map(|p| p.partition)
        .collect();
    assert!(
        !outside.is_empty(),
        "with 4 members and N=3 some partition must not have kv-3 as a replica"
    );
    let keys: Vec<usize> = (0..10_000)
        .filter(|i| {
            outside.contains(&u32::from(kvnode::ring::partition_of(
                &key("forward", *i),
                256,
            )))
        })
        .take(30)
        .collect();
    assert_eq!(
        keys.len(),
        30,
        "30 keys whose partitions kv-3 does not hold"
    );
    let t = Instant::now();
    for &i in &keys {
        let resp = cluster
            .client(3)
            .put(&key("forward", i), &value("forward", i), None)
            .await;
        assert_eq!(
            resp.status, 204,
            "PUT of key {i} through non-replica kv-3: {resp}"
        );
    }
    eprintln!("30 forwarded PUTs through kv-3: {:?}", t.elapsed());
    for reader in 0..4 {
        for &i in &keys {
            let resp = cluster.client(reader).get(&key("forward", i)).await;
            assert_value(
                &resp,
                &value("forward", i),
                &format!("GET of key {i} through kv-{reader} after a PUT through non-replica kv-3"),
            );
        }
    }
}
