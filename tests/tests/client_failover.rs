//! `kvclient::Nodes` against real nodes: requests fail over from a dead endpoint and a killed node to
//! the others, a node that never answers costs at most the deadline, and `update` resolves siblings
//! with the caller's merge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use kvclient::{Client, Error, Nodes, ReadOptions, ReadResult, RetryPolicy, WriteOptions};
use kvcluster_tests::{Cluster, free_ports};

fn values(read: &ReadResult) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = read.live().map(|s| s.value.clone()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_over_to_live_nodes_within_attempts_and_deadline() {
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    let dead = format!("127.0.0.1:{}", free_ports(1)[0]);
    let urls: Vec<String> = (0..3).map(|i| cluster.node(i).base_url()).collect();
    let mut endpoints = vec![dead.as_str()];
    endpoints.extend(urls.iter().map(String::as_str));
    let base = Client::with_timeout(&urls[0], Duration::from_secs(5)).unwrap();
    let policy = RetryPolicy {
        attempts: 4,
        deadline: Duration::from_secs(10),
        backoff: Duration::from_millis(10),
    };
    let nodes = Nodes::new(&base, &endpoints, policy).unwrap();
    let w = WriteOptions::default();

    // Every fourth request starts at the dead endpoint and moves on.
    for i in 0..40 {
        let key = format!("k{i}");
        nodes
            .put(key.as_bytes(), format!("v{i}").into_bytes(), None, &w)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
    // A node killed under the client: its requests go elsewhere.
    cluster.kill9(0);
    for i in 40..80 {
        let key = format!("k{i}");
        nodes
            .put(key.as_bytes(), format!("v{i}").into_bytes(), None, &w)
            .await
            .unwrap_or_else(|e| panic!("put {key} with kv-0 down: {e}"));
    }
    for i in 0..80 {
        let read = nodes
            .get(format!("k{i}").as_bytes(), &ReadOptions::default())
            .await
            .unwrap();
        assert_eq!(values(&read), [format!("v{i}").into_bytes()], "k{i}");
    }

    // One attempt at a dead endpoint is one failure, at once.
    let single = Nodes::new(
        &base,
        &[dead.as_str()],
        RetryPolicy {
            attempts: 1,
            ..policy
        },
    )
    .unwrap();
    let err = single
        .get(b"k1", &ReadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http(_)), "{err}");

    // A node that accepts connections and never answers costs at most the deadline.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let patient = RetryPolicy {
        attempts: 10,
        deadline: Duration::from_secs(1),
        backoff: Duration::from_millis(10),
    };
    let hung = Nodes::new(&base, &[silent_addr.as_str()], patient).unwrap();
    let t0 = Instant::now();
    let err = hung.get(b"k1", &ReadOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_merges_racing_siblings_into_one_value() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    let urls: Vec<String> = (0..3).map(|i| cluster.node(i).base_url()).collect();
    let endpoints: Vec<&str> = urls.iter().map(String::as_str).collect();
    let base = Client::new(&urls[0]).unwrap();
    let nodes = Nodes::new(&base, &endpoints, RetryPolicy::default()).unwrap();
    let w = WriteOptions::default();
    // Two writers that did not read first: two siblings.
    nodes
        .put(b"cart", b"apple".to_vec(), None, &w)
        .await
        .unwrap();
    nodes
        .put(b"cart", b"pear".to_vec(), None, &w)
        .await
        .unwrap();
    let read = nodes.get(b"cart", &ReadOptions::default()).await.unwrap();
    assert_eq!(values(&read), [b"apple".to_vec(), b"pear".to_vec()]);
    // The merge sees both and writes their union over them.
    let union = |seen: &[&[u8]]| {
        let mut items: Vec<&str> = seen
            .iter()
            .flat_map(|v| std::str::from_utf8(v).unwrap().split(','))
            .collect();
        items.sort_unstable();
        items.dedup();
        items.join(",").into_bytes()
    };
    nodes.update(b"cart", &w, union).await.unwrap();
    let read = nodes.get(b"cart", &ReadOptions::default()).await.unwrap();
    assert_eq!(values(&read), [b"apple,pear".to_vec()]);
    // On an absent key the merge sees nothing.
    nodes
        .update(b"fresh", &w, |seen| {
            assert!(seen.is_empty());
            b"first".to_vec()
        })
        .await
        .unwrap();
    let read = nodes.get(b"fresh", &ReadOptions::default()).await.unwrap();
    assert_eq!(values(&read), [b"first".to_vec()]);
}
