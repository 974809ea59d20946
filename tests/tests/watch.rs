//! Watches against real kvnode processes: a key watcher is woken by a write made through another
//! node, times out with 304, is bounded by `--max-watchers`, and never hangs past its wait when a node
//! dies; the prefix feed resumes from its cursor without missing a change made between two calls, and
//! answers 410 for a cursor it cannot honour.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use kvcluster_tests::kvapi::codes;
use kvcluster_tests::kvapi::watch::FeedResponse;
use kvcluster_tests::{Cluster, KvClient, NodeProcess, Resp, metric_sum, unb64};

/// A read of `key` that waits up to `wait` for a change from `context`.
async fn watch(client: &KvClient, key: &[u8], context: Option<&str>, wait: &str) -> Resp {
    let path = KvClient::kv_path_with_query(key, &format!("?wait={wait}"));
    let headers: Vec<(&str, &str)> = context
        .map(|c| vec![(kvcluster_tests::kvapi::CONTEXT_HEADER, c)])
        .unwrap_or_default();
    client.request("GET", &path, &headers, None).await
}

/// One call of the prefix feed.
async fn feed(client: &KvClient, query: &str) -> Resp {
    client
        .request("GET", &format!("/v1/watch?{query}"), &[], None)
        .await
}

fn feed_answer(resp: &Resp) -> (String, Vec<Vec<u8>>) {
    assert_eq!(resp.status, 200, "{resp}");
    let answer: FeedResponse = serde_json::from_slice(&resp.body).unwrap();
    (
        answer.cursor,
        answer.keys.iter().map(|k| unb64(k)).collect(),
    )
}

/// Follows the feed of `prefix` from `cursor` through `client` until every key of `wanted` was
/// reported (or 10 s pass); returns the keys reported and the last cursor.
async fn follow(
    client: &KvClient,
    prefix: &str,
    mut cursor: String,
    wanted: &[&[u8]],
) -> (Vec<Vec<u8>>, String) {
    let mut reported: Vec<Vec<u8>> = Vec::new();
    let t0 = Instant::now();
    while !wanted.iter().all(|w| reported.iter().any(|r| r == w)) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "feed reported only {reported:?}"
        );
        let resp = feed(client, &format!("prefix={prefix}&cursor={cursor}&wait=2s")).await;
        let (next, keys) = feed_answer(&resp);
        reported.extend(keys);
        cursor = next;
    }
    (reported, cursor)
}

/// Calls the feed until an answer has no keys; returns the cursor then.
async fn drain(client: &KvClient, prefix: &str, mut cursor: String) -> String {
    for _ in 0..20 {
        let resp = feed(
            client,
            &format!("prefix={prefix}&cursor={cursor}&wait=200ms"),
        )
        .await;
        let (next, keys) = feed_answer(&resp);
        cursor = next;
        if keys.is_empty() {
            return cursor;
        }
    }
    panic!("the feed kept reporting changes nobody made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_through_another_node_wakes_a_key_watcher_within_a_short_bound() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    let context = cluster.client(0).put_ok(b"watched", b"v1", None).await;
    let watcher = cluster.client(1).clone();
    let ctx = context.clone();
    let waiting = tokio::spawn(async move {
        let resp = watch(&watcher, b"watched", Some(&ctx), "20s").await;
        (resp, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the watcher answered before any change"
    );
    cluster
        .client(2)
        .put_ok(b"watched", b"v2", Some(&context))
        .await;
    let written = Instant::now();
    let (resp, answered) = waiting.await.unwrap();
    assert_eq!(resp.status, 200, "{resp}");
    assert_eq!(resp.body, b"v2");
    let latency = answered.saturating_duration_since(written);
    assert!(
        latency < Duration::from_millis(500),
        "woken {latency:?} after the write"
    );
    assert_ne!(
        resp.expect_context(),
        context,
        "the answer carries the new context"
    );
}

#[tokio::test]
async fn a_watch_with_nothing_new_answers_304_at_its_timeout() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    let context = c.put_ok(b"still", b"v", None).await;
    let t0 = Instant::now();
    let resp = watch(&c, b"still", Some(&context), "1s").await;
    assert_eq!(resp.status, 304, "{resp}");
    assert!(resp.body.is_empty());
    assert_eq!(resp.expect_context(), context);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Without a context any state is new: the read answers at once.
    let t0 = Instant::now();
    let resp = watch(&c, b"still", None, "10s").await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"v"[..]));
    assert!(t0.elapsed() < Duration::from_secs(1));
    // A key that expires while watched: its expiry is a change of what a read shows.
    let context = c
        .put_with_query(b"brief", b"v", "?ttl=1s")
        .await
        .expect_context();
    let resp = watch(&c, b"brief", Some(&context), "10s").await;
    resp.assert_error(404, codes::NOT_FOUND);
    // Bad waits are refused.
    for wait in ["0s", "61s", "soon"] {
        watch(&c, b"still", None, wait)
            .await
            .assert_error(400, codes::BAD_PARAMETER);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_watcher_cap_refuses_watchers_past_it_with_429() {
    let node = NodeProcess::start(&["--max-watchers", "2"]);
    let c = node.client();
    let context = c.put_ok(b"k", b"v", None).await;
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let c = c.clone();
        let ctx = context.clone();
        waiting.push(tokio::spawn(async move {
            watch(&c, b"k", Some(&ctx), "3s").await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = watch(&c, b"k", Some(&context), "3s").await;
    refused.assert_error(429, codes::TOO_MANY_WATCHERS);
    let cursor = feed_answer(&feed(&c, "prefix=").await).0;
    feed(&c, &format!("prefix=&cursor={cursor}&wait=1s"))
        .await
        .assert_error(429, codes::TOO_MANY_WATCHERS);
    let refusals = metric_sum(&c.metrics().await, "kv_watchers_refused_total", &[]);
    assert_eq!(refusals, Some(2.0));
    assert_eq!(
        metric_sum(&c.metrics().await, "kv_watchers", &[]),
        Some(2.0)
    );
    // Plain reads are not watchers: they still work.
    assert_eq!(c.get(b"k").await.status, 200);
    for w in waiting {
        assert_eq!(w.await.unwrap().status, 304);
    }
    assert_eq!(watch(&c, b"k", Some(&context), "1ms").await.status, 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_prefix_feed_resumes_after_a_disconnect_without_missing_a_change() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    let reader = cluster.client(0).clone();
    let (cursor, keys) = feed_answer(&feed(&reader, "prefix=app%2F").await);
    assert!(keys.is_empty(), "a new feed starts at the present");

    // Changes made while no feed call is open, through other nodes.
    cluster.client(1).put_ok(b"app/1", b"x", None).await;
    cluster.client(2).put_ok(b"app/2", b"x", None).await;
    cluster.client(2).put_ok(b"other/1", b"x", None).await;
    let (reported, cursor) = follow(&reader, "app%2F", cursor, &[b"app/1", b"app/2"]).await;
    assert!(
        reported.iter().all(|k| k.starts_with(b"app/")),
        "{reported:?}"
    );
    // Other replicas report the same changes again (at least once per replica): drain them.
    let cursor = drain(&reader, "app%2F", cursor).await;

    // A long-poll cut off by the client (a disconnect), then a change, then the same cursor again.
    let short = KvClient::with_timeout(reader.base(), Duration::from_millis(300));
    let cut = short
        .try_request(
            "GET",
            &format!("/v1/watch?prefix=app%2F&cursor={cursor}&wait=20s"),
            &[],
            None,
        )
        .await;
    assert!(cut.is_err(), "the client gave up on the long-poll");
    cluster.client(1).put_ok(b"app/3", b"x", None).await;
    let t0 = Instant::now();
    let (reported, _) = follow(&reader, "app%2F", cursor, &[b"app/3"]).await;
    assert!(reported.contains(&b"app/3".to_vec()));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());

    // A cursor the nodes cannot honour (another log: as after a restart) is refused, not misread.
    let forged = feed_answer(&feed(&cluster.client(1).clone(), "prefix=").await).0;
    let mut cluster = cluster;
    cluster.restart(1);
    let gone = feed(&reader, &format!("prefix=&cursor={forged}&wait=1s")).await;
    gone.assert_error(410, codes::CURSOR_GONE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_kill_does_not_hang_a_watcher_past_its_wait() {
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    let context = cluster.client(0).put_ok(b"k", b"v", None).await;
    // A watcher reading at R = 3 loses a replica mid-wait: it still answers by its deadline.
    let watcher = cluster.client(0).clone();
    let ctx = context.clone();
    let t0 = Instant::now();
    let waiting = tokio::spawn(async move {
        let path = KvClient::kv_path_with_query(b"k", "?wait=2s&r=3&timeout_ms=1000");
        watcher
            .request(
                "GET",
                &path,
                &[(kvcluster_tests::kvapi::CONTEXT_HEADER, ctx.as_str())],
                None,
            )
            .await
    });
    // And one on the node that dies: its connection ends at once.
    let doomed = cluster.client(2).clone();
    let ctx = context.clone();
    let on_victim = tokio::spawn(async move {
        let path = KvClient::kv_path_with_query(b"k", "?wait=20s");
        doomed
            .try_request(
                "GET",
                &path,
                &[(kvcluster_tests::kvapi::CONTEXT_HEADER, ctx.as_str())],
                None,
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill9(2);
    let killed_at = Instant::now();
    assert!(
        on_victim.await.unwrap().is_err(),
        "the killed node answered"
    );
    assert!(killed_at.elapsed() < Duration::from_secs(2));
    let resp = waiting.await.unwrap();
    let took = t0.elapsed();
    assert!(
        resp.status == 304 || resp.status == 503,
        "unexpected answer {resp}"
    );
    assert!(
        took < Duration::from_secs(5),
        "answered after {took:?}, past wait + timeout"
    );
    // The feed with a dead member still answers within its wait.
    let reader = cluster.client(0).clone();
    let cursor = feed_answer(&feed(&reader, "prefix=").await).0;
    let t0 = Instant::now();
    let resp = feed(&reader, &format!("prefix=&cursor={cursor}&wait=1s")).await;
    assert_eq!(resp.status, 200, "{resp}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}
