//! Batches (`POST /v1/batch`) against real 3-node clusters (N = 3, W = R = 2): per-item results in
//! order, a forged context refusing its item only, the caps, a node killed during batches with every
//! acknowledged item reading back, per-item TTLs and expired values reading absent, and batch writes
//! in the change feed and waking key watchers as single writes do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kvapi::batch::{BatchItem, BatchOp, BatchResponse, BatchResult};
use kvapi::watch::FeedResponse;
use kvcluster_tests::{Cluster, KvClient, RawConn, Resp, b64, unb64};

fn item(op: BatchOp, key: &str, value: Option<&str>, context: Option<&str>) -> BatchItem {
    BatchItem {
        op,
        key: b64(key.as_bytes()),
        value: value.map(|v| b64(v.as_bytes())),
        context: context.map(str::to_string),
        ttl: None,
    }
}

/// Puts without a context of each `(key, value)`.
fn blind_puts(pairs: impl Iterator<Item = (String, String)>) -> Vec<BatchItem> {
    pairs
        .map(|(key, value)| item(BatchOp::Put, &key, Some(&value), None))
        .collect()
}

async fn post(client: &KvClient, query: &str, body: Vec<u8>) -> Resp {
    client
        .request(
            "POST",
            &format!("/v1/batch{query}"),
            &[("content-type", "application/json")],
            Some(body),
        )
        .await
}

async fn batch(client: &KvClient, items: &[BatchItem]) -> Vec<BatchResult> {
    let body = serde_json::json!({ "items": items });
    let resp = post(client, "", serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(resp.status, 200, "{resp}");
    let answer: BatchResponse = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(answer.results.len(), items.len());
    answer.results
}

fn values(result: &BatchResult) -> Vec<Vec<u8>> {
    result
        .siblings
        .iter()
        .flatten()
        .filter(|s| !s.deleted)
        .map(|s| unb64(&s.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_items_get_one_result_each_and_a_forged_context_refuses_only_its_item() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    let puts = blind_puts((0..50).map(|i| (format!("b/{i}"), format!("v{i}"))));
    let results = batch(cluster.client(0), &puts).await;
    assert!(
        results
            .iter()
            .all(|r| r.status == 204 && r.context.is_some()),
        "{results:?}"
    );
    let context_of_1 = results[1].context.clone().unwrap();
    // Each put is a real single-key write: readable from every node.
    assert_eq!(cluster.client(2).get_one(b"b/7").await.0, b"v7");
    let mixed = vec![
        item(BatchOp::Get, "b/0", None, None),
        item(BatchOp::Get, "absent", None, None),
        item(BatchOp::Put, "b/1", Some("v1'"), Some(&context_of_1)),
        item(
            BatchOp::Delete,
            "b/2",
            None,
            Some(results[2].context.as_deref().unwrap()),
        ),
        item(
            BatchOp::Put,
            "b/3",
            Some("forged"),
            Some("AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ),
        // A genuine context of another key is refused too.
        item(BatchOp::Put, "b/4", Some("foreign"), Some(&context_of_1)),
        item(BatchOp::Put, "fresh", Some("new"), None),
    ];
    let results = batch(cluster.client(1), &mixed).await;
    assert_eq!(results[0].status, 200);
    assert_eq!(values(&results[0]), vec![b"v0".to_vec()]);
    assert!(results[0].context.is_some());
    assert_eq!(results[1].status, 404, "{:?}", results[1]);
    assert_eq!(results[2].status, 204);
    assert_eq!(results[3].status, 204);
    for refused in &results[4..6] {
        assert_eq!(refused.status, 400, "{refused:?}");
        assert_eq!(refused.error.as_ref().unwrap().error, "bad_context");
    }
    assert_eq!(results[6].status, 204);
    // Nothing was written for the refused items; the others took effect.
    let client = cluster.client(2);
    assert_eq!(client.get_one(b"b/1").await.0, b"v1'");
    assert_eq!(client.get(b"b/2").await.status, 404);
    assert_eq!(client.get_one(b"b/3").await.0, b"v3");
    assert_eq!(client.get_one(b"b/4").await.0, b"v4");
    assert_eq!(client.get_one(b"fresh").await.0, b"new");
    // A read in a batch gives a context a later batch write accepts: the write resolves.
    let read = batch(client, &[item(BatchOp::Get, "b/5", None, None)]).await;
    let resolved = batch(
        client,
        &[item(
            BatchOp::Put,
            "b/5",
            Some("w"),
            read[0].context.as_deref(),
        )],
    )
    .await;
    assert_eq!(resolved[0].status, 204);
    assert_eq!(
        client.get_json(b"b/5").await.live_values(),
        vec![b"w".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_over_the_caps_or_malformed_are_refused_whole() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    let client = cluster.client(0);
    let too_many: Vec<BatchItem> = (0..1001)
        .map(|i| item(BatchOp::Get, &format!("k{i}"), None, None))
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "items": too_many })).unwrap();
    post(client, "", body).await.assert_error(400, "bad_body");
    let at_cap: Vec<BatchItem> = too_many[..1000].to_vec();
    assert_eq!(batch(client, &at_cap).await.len(), 1000);
    // A body over 16 MiB is refused from its Content-Length, before the node reads it.
    let mut conn = RawConn::connect(cluster.node(0).addr()).await;
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        16 * 1024 * 1024 + 1
    );
    conn.send(head.as_bytes()).await.unwrap();
    let resp = conn.read_response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(resp.error_body().error, "value_too_large");
    for bad in [
        &b"not json"[..],
        b"{}",
        b"{\"items\": [{\"op\": \"scan\", \"key\": \"aw==\"}]}",
        b"{\"items\": [], \"extra\": 1}",
    ] {
        post(client, "", bad.to_vec())
            .await
            .assert_error(400, "bad_body");
    }
    for query in ["?w=4", "?r=0", "?prefix=a", "?timeout_ms=0"] {
        post(client, query, b"{\"items\": []}".to_vec())
            .await
            .assert_error(400, "bad_parameter");
    }
    let resp = client.request("GET", "/v1/batch", &[], None).await;
    assert_eq!(resp.status, 405, "{resp}");
    // Bad items are answered one by one.
    let results = batch(
        client,
        &[
            BatchItem {
                key: "***".into(),
                ..item(BatchOp::Get, "k", None, None)
            },
            item(BatchOp::Put, "k", None, None),
            item(BatchOp::Get, "k", Some("v"), None),
        ],
    )
    .await;
    assert_eq!(
        results.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![400, 400, 400]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_during_batches_leaves_w2_acknowledging_and_every_acknowledged_item_reads_back()
 {
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    let clients: Vec<KvClient> = (0..2).map(|i| cluster.client(i).clone()).collect();
    let writer = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        // Bounded: 30 batches of 100.
        for round in 0..30 {
            let items =
                blind_puts((0..100).map(|i| (format!("kill/{round}/{i}"), format!("{round}.{i}"))));
            let client = &clients[round % 2];
            let body = serde_json::to_vec(&serde_json::json!({ "items": items })).unwrap();
            let resp = post(client, "?w=2&timeout_ms=5000", body).await;
            assert_eq!(resp.status, 200, "{resp}");
            let answer: BatchResponse = serde_json::from_slice(&resp.body).unwrap();
            for (i, result) in answer.results.iter().enumerate() {
                if result.status == 204 {
                    acknowledged.push((format!("kill/{round}/{i}"), format!("{round}.{i}")));
                }
            }
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill9(2);
    let acknowledged = writer.await.unwrap();
    // Two of three replicas are up: every item of every batch is acknowledged.
    assert_eq!(
        acknowledged.len(),
        3000,
        "items acknowledged with one node of three down"
    );
    let mut wrong = Vec::new();
    for chunk in acknowledged.chunks(500) {
        let reads: Vec<BatchItem> = chunk
            .iter()
            .map(|(k, _)| item(BatchOp::Get, k, None, None))
            .collect();
        let results = batch(cluster.client(1), &reads).await;
        for ((key, value), result) in chunk.iter().zip(&results) {
            if values(result) != vec![value.clone().into_bytes()] {
                wrong.push(format!("{key}: {result:?}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} acknowledged items read back wrong, such as {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    // Single-key reads agree with the batch reads.
    let (key, value) = &acknowledged[2999];
    assert_eq!(
        cluster.client(0).get_one(key.as_bytes()).await.0,
        value.as_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_item_takes_a_ttl_and_its_expired_value_reads_absent_in_a_batch() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    let with_ttl = |key: &str, ttl: &str| BatchItem {
        ttl: Some(ttl.into()),
        ..item(BatchOp::Put, key, Some("v"), None)
    };
    let results = batch(
        cluster.client(0),
        &[
            with_ttl("e/short", "1s"),
            with_ttl("e/never", "none"),
            item(BatchOp::Put, "e/plain", Some("v"), None),
            with_ttl("e/zero", "0s"),
            BatchItem {
                ttl: Some("1s".into()),
                ..item(BatchOp::Delete, "e/plain", None, None)
            },
        ],
    )
    .await;
    let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![204, 204, 204, 400, 400], "{results:?}");
    for refused in &results[3..] {
        assert_eq!(refused.error.as_ref().unwrap().error, "bad_parameter");
    }
    let gets = [
        item(BatchOp::Get, "e/short", None, None),
        item(BatchOp::Get, "e/never", None, None),
        item(BatchOp::Get, "e/plain", None, None),
    ];
    let before = batch(cluster.client(1), &gets).await;
    assert_eq!(values(&before[0]), vec![b"v".to_vec()], "{before:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = batch(cluster.client(2), &gets).await;
    assert_eq!(after[0].status, 404, "{:?}", after[0]);
    assert!(
        after[0].context.is_some(),
        "an expired key keeps its context"
    );
    assert_eq!((after[1].status, after[2].status), (200, 200), "{after:?}");
    assert_eq!(cluster.client(0).get(b"e/short").await.status, 404);
    // A write with the expired key's context supersedes it, as a single PUT does.
    let rewrite = batch(
        cluster.client(0),
        &[item(
            BatchOp::Put,
            "e/short",
            Some("w"),
            after[0].context.as_deref(),
        )],
    )
    .await;
    assert_eq!(rewrite[0].status, 204);
    assert_eq!(
        cluster.client(1).get_json(b"e/short").await.live_values(),
        vec![b"w".to_vec()]
    );
}

/// The keys the feed of `prefix` on `client` reports from `cursor`, until an answer is empty after
/// every key of `wanted` was seen (bounded: 60 calls).
async fn feed_until(
    client: &KvClient,
    prefix: &str,
    mut cursor: String,
    wanted: &[&str],
) -> BTreeSet<Vec<u8>> {
    let mut reported = BTreeSet::new();
    for _ in 0..60 {
        let resp = client
            .request(
                "GET",
                &format!("/v1/watch?prefix={prefix}&cursor={cursor}&wait=300ms"),
                &[],
                None,
            )
            .await;
        assert_eq!(resp.status, 200, "{resp}");
        let answer: FeedResponse = serde_json::from_slice(&resp.body).unwrap();
        let seen_all = wanted.iter().all(|w| reported.contains(w.as_bytes()));
        if answer.keys.is_empty() && seen_all {
            return reported;
        }
        reported.extend(answer.keys.iter().map(|k| unb64(k)));
        cursor = answer.cursor;
    }
    panic!("the feed did not report {wanted:?}: {reported:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_writes_reach_the_change_feed_and_wake_key_watchers_on_other_replicas() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    let reader = cluster.client(1).clone();
    let resp = reader
        .request("GET", "/v1/watch?prefix=f%2F", &[], None)
        .await;
    let cursor = serde_json::from_slice::<FeedResponse>(&resp.body)
        .unwrap()
        .cursor;
    let context = cluster.client(0).put_ok(b"f/watched", b"v1", None).await;
    // A watcher on node 1 of a key whose batch write node 0 coordinates: only node 1's own change
    // log, fed by its merge of the batch's replication, wakes it this soon (else its 1 s re-read).
    let watcher = reader.clone();
    let path = KvClient::kv_path_with_query(b"f/watched", "?wait=20s");
    let waiting = tokio::spawn(async move {
        let headers = [(kvapi::CONTEXT_HEADER, context.as_str())];
        let resp = watcher.request("GET", &path, &headers, None).await;
        (resp, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the watcher answered before any change"
    );
    let results = batch(
        cluster.client(0),
        &[
            item(BatchOp::Put, "f/watched", Some("v2"), None),
            item(BatchOp::Delete, "f/deleted", None, None),
            item(BatchOp::Get, "f/read", None, None),
        ],
    )
    .await;
    let written = Instant::now();
    assert!(results[..2].iter().all(|r| r.status == 204), "{results:?}");
    let (resp, answered) = waiting.await.unwrap();
    assert_eq!(resp.status, 300, "two blind writes are siblings: {resp}");
    let latency = answered.saturating_duration_since(written);
    assert!(
        latency < Duration::from_millis(500),
        "woken {latency:?} after the batch"
    );
    let reported = feed_until(&reader, "f%2F", cursor, &["f/watched", "f/deleted"]).await;
    assert!(
        !reported.contains(b"f/read".as_slice()),
        "a read is no change: {reported:?}"
    );
}
