//! Listing (`GET /v1/kv?prefix=…`) against real 3-node clusters (N = 3): every key under a prefix
//! exactly once in byte order across pages, deleted keys absent, a node down tolerated at R = 2 and
//! a clear 503 when too few replicas answer, a node killed between pages costing no key, every
//! acknowledged write listed, expired values not listed, and bad cursors and limits refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvapi::list::ListPage;
use kvcluster_tests::{Cluster, KvClient, Resp, encode_key, unb64};

/// Keys written under the listed prefix.
const KEYS: usize = 300;

async fn list_once(client: &KvClient, query: &str) -> Resp {
    client
        .request("GET", &format!("/v1/kv?{query}"), &[], None)
        .await
}

/// Follows cursors from the first page to the last, returning the keys and the number of pages.
async fn list_all(client: &KvClient, prefix: &[u8], extra: &str) -> (Vec<Vec<u8>>, usize) {
    list_all_with(client, prefix, extra, |_| {}).await
}

/// [`list_all`], calling `before` with each page's number before asking for it.
async fn list_all_with(
    client: &KvClient,
    prefix: &[u8],
    extra: &str,
    mut before: impl FnMut(usize),
) -> (Vec<Vec<u8>>, usize) {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    for page_number in 1..=10_000 {
        before(page_number);
        let mut query = format!("prefix={}{extra}", encode_key(prefix));
        if let Some(c) = &cursor {
            query.push_str(&format!("&cursor={c}"));
        }
        let resp = list_once(client, &query).await;
        assert_eq!(resp.status, 200, "page {page_number}: {resp}");
        let page: ListPage = serde_json::from_slice(&resp.body).unwrap();
        keys.extend(page.keys.iter().map(|k| unb64(&k.key)));
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return (keys, page_number),
        }
    }
    panic!("listing did not end within 10,000 pages");
}

async fn write_keys(client: &KvClient, prefix: &str, count: usize) -> BTreeSet<Vec<u8>> {
    let mut keys = BTreeSet::new();
    for i in 0..count {
        let key = format!("{prefix}{i:04}").into_bytes();
        client.put_ok(&key, format!("v{i}").as_bytes(), None).await;
        keys.insert(key);
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_under_a_prefix_are_listed_once_in_byte_order_and_deleted_keys_are_not() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    let mut expected = write_keys(cluster.client(0), "p/", KEYS).await;
    write_keys(cluster.client(1), "q/", 20).await;
    // Bytes past ASCII sort after it.
    let high = b"p/\xff\x00".to_vec();
    cluster.client(2).put_ok(&high, b"x", None).await;
    expected.insert(high);
    for i in [3, 150, 299] {
        let key = format!("p/{i:04}").into_bytes();
        let (_, context) = cluster.client(0).get_one(&key).await;
        let resp = cluster.client(1).delete(&key, Some(&context)).await;
        assert_eq!(resp.status, 204, "{resp}");
        expected.remove(&key);
    }
    let expected: Vec<Vec<u8>> = expected.into_iter().collect();
    for (via, extra) in [
        (0, "&limit=7"),
        (1, "&limit=1000"),
        (2, "&limit=64&values=true"),
    ] {
        let (keys, pages) = list_all(cluster.client(via), b"p/", extra).await;
        assert_eq!(keys, expected, "listing via node {via} with {extra}");
        if extra == "&limit=7" {
            assert!(pages >= expected.len() / 7, "{pages} pages of 7");
        }
    }
    // With values, each key carries its value and a context that a write accepts.
    let resp = list_once(cluster.client(0), "prefix=p%2F0004&values=true").await;
    let page: ListPage = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(page.keys.len(), 1, "{resp}");
    let listed = &page.keys[0];
    let siblings = listed.siblings.as_ref().unwrap();
    assert_eq!(unb64(&siblings[0].value), b"v4");
    let resp = cluster
        .client(2)
        .put(b"p/0004", b"v4'", listed.context.as_deref())
        .await;
    assert_eq!(resp.status, 204, "{resp}");
    assert_eq!(cluster.client(1).get_one(b"p/0004").await.0, b"v4'");
    // A key-value route still needs a key.
    let resp = cluster
        .client(0)
        .request("PUT", "/v1/kv", &[], Some(b"x".to_vec()))
        .await;
    resp.assert_error(400, "bad_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_survives_one_node_down_at_r2_and_answers_503_when_too_few_replicas_answer() {
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    let expected: Vec<Vec<u8>> = write_keys(cluster.client(0), "k/", 120)
        .await
        .into_iter()
        .collect();
    cluster.kill9(2);
    let (keys, _) = list_all(cluster.client(0), b"k/", "&limit=50").await;
    assert_eq!(keys, expected, "listing with one node of three down");
    let resp = list_once(cluster.client(1), "prefix=k%2F&r=3&timeout_ms=2000").await;
    let error = resp.assert_error(503, "quorum_not_reached");
    assert_eq!(
        (error.replied, error.required),
        (Some(2), Some(3)),
        "{resp}"
    );
    cluster.kill9(1);
    let started = Instant::now();
    let resp = list_once(cluster.client(0), "prefix=k%2F&timeout_ms=2000").await;
    resp.assert_error(503, "quorum_not_reached");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 took {:?}",
        started.elapsed()
    );
    // R = 1 lists what the one node left holds: it is a replica of every key.
    let (keys, _) = list_all(cluster.client(0), b"k/", "&r=1").await;
    assert_eq!(keys, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_write_acknowledged_before_the_listing_began_is_listed() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    let clients: Vec<KvClient> = (0..3).map(|i| cluster.client(i).clone()).collect();
    let acknowledged = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    // Bounded: 4 writers, at most 150 keys each, at most 30 s.
    for w in 0..4 {
        let client = clients[w % 3].clone();
        let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            let started = Instant::now();
            for i in 0..150 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(30) {
                    break;
                }
                let key = format!("load/{w}/{i:04}").into_bytes();
                if client.put(&key, b"x", None).await.status == 204 {
                    acknowledged.lock().unwrap().push(key);
                }
            }
        }));
    }
    // Listings under the load: each holds every key acknowledged before it began, once.
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before: Vec<Vec<u8>> = acknowledged.lock().unwrap().clone();
        let (keys, _) = list_all(&clients[round % 3], b"load/", "&limit=40").await;
        let listed: BTreeSet<Vec<u8>> = keys.iter().cloned().collect();
        assert_eq!(listed.len(), keys.len(), "a key listed twice");
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys out of order");
        let missing: Vec<_> = before.iter().filter(|k| !listed.contains(*k)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} of {} acknowledged keys not listed",
            missing.len(),
            before.len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let all: BTreeSet<Vec<u8>> = acknowledged.lock().unwrap().iter().cloned().collect();
    assert!(all.len() > 100, "only {} writes acknowledged", all.len());
    let (keys, _) = list_all(&clients[1], b"load/", "").await;
    assert_eq!(keys.into_iter().collect::<BTreeSet<_>>(), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_cursors_and_bad_limits_are_refused_with_400() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    write_keys(cluster.client(0), "c/", 10).await;
    let resp = list_once(cluster.client(0), "prefix=c%2F&limit=3").await;
    let page: ListPage = serde_json::from_slice(&resp.body).unwrap();
    let cursor = page.cursor.expect("a cursor after 3 of 10 keys");
    // The genuine cursor works on every node.
    let resp = list_once(
        cluster.client(2),
        &format!("prefix=c%2F&limit=3&cursor={cursor}"),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp}");
    let mut flipped = cursor.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let long = "A".repeat(5000);
    let other_prefix = format!("prefix=d%2F&cursor={cursor}");
    let cases = [
        format!("prefix=c%2F&cursor={flipped}"),
        "prefix=c%2F&cursor=garbage".to_string(),
        "prefix=c%2F&cursor=".to_string(),
        format!("prefix=c%2F&cursor={long}"),
        other_prefix,
        "limit=0".to_string(),
        "limit=1001".to_string(),
        "limit=-1".to_string(),
        "limit=ten".to_string(),
        "values=yes".to_string(),
        "r=4".to_string(),
        "w=2".to_string(),
        format!("prefix={}", "k".repeat(1025)),
    ];
    for query in &cases {
        let resp = list_once(cluster.client(1), query).await;
        resp.assert_error(400, "bad_parameter");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_in_the_middle_of_a_listing_costs_no_key() {
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    let expected: Vec<Vec<u8>> = write_keys(cluster.client(1), "m/", 150)
        .await
        .into_iter()
        .collect();
    let client = cluster.client(0).clone();
    // 150 keys at 20 a page: the kill comes with the third of about eight pages.
    let (keys, _) = list_all_with(&client, b"m/", "&limit=20&timeout_ms=5000", |page| {
        if page == 3 {
            cluster.kill9(2);
        }
    })
    .await;
    assert_eq!(keys, expected, "keys listed across a node kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_value_is_not_listed() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    let client = cluster.client(0);
    for i in 0..5 {
        let key = format!("t/{i}");
        let resp = client
            .put_with_query(key.as_bytes(), b"short", "?ttl=1s")
            .await;
        assert_eq!(resp.status, 204, "{resp}");
    }
    client.put_ok(b"t/kept", b"long", None).await;
    let (keys, _) = list_all(cluster.client(1), b"t/", "").await;
    assert_eq!(keys.len(), 6, "before the expiry every key is listed");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for extra in ["", "&values=true"] {
        let (keys, _) = list_all(cluster.client(2), b"t/", extra).await;
        assert_eq!(keys, vec![b"t/kept".to_vec()], "after the expiry, {extra}");
    }
}
