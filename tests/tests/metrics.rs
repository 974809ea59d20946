//! `GET /metrics`: the Prometheus text a node serves counts what the test did.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvcluster_tests::{NodeProcess, metric_sum};

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(text, name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_requests_and_cache_hits() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    let before = c.metrics().await;

    for i in 0..7 {
        c.put_ok(format!("m{i}").as_bytes(), b"value", None).await;
    }
    for _ in 0..5 {
        let (v, _) = c.get_one(b"m0").await;
        assert_eq!(v, b"value");
    }
    for _ in 0..3 {
        assert_eq!(c.get(b"absent").await.status, 404);
    }
    assert_eq!(c.delete(b"m1", None).await.status, 204);
    // A read with siblings, for the siblings-per-read histogram.
    c.put_ok(b"m2", b"other", None).await;
    assert_eq!(c.get(b"m2").await.status, 300);

    let after = c.metrics().await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };

    let puts = delta(
        "kv_requests_total",
        &[("operation", "put"), ("status", "204")],
    );
    assert_eq!(
        puts, 8.0,
        "8 PUTs answered 204; kv_requests_total{{operation=\"put\",status=\"204\"}} grew by {puts}\n{after}"
    );
    let gets_200 = delta(
        "kv_requests_total",
        &[("operation", "get"), ("status", "200")],
    );
    assert_eq!(gets_200, 5.0, "{after}");
    let gets_404 = delta(
        "kv_requests_total",
        &[("operation", "get"), ("status", "404")],
    );
    assert_eq!(gets_404, 3.0, "{after}");
    let deletes = delta(
        "kv_requests_total",
        &[("operation", "delete"), ("status", "204")],
    );
    assert_eq!(deletes, 1.0, "{after}");

    let put_latencies = delta(
        "kv_request_duration_seconds_count",
        &[("operation", "put"), ("status", "204")],
    );
    assert_eq!(
        put_latencies, 8.0,
        "kv_request_duration_seconds is a histogram with the same labels\n{after}"
    );
    assert!(
        metric_sum(
            &after,
            "kv_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        )
        .is_some(),
        "kv_request_duration_seconds has buckets\n{after}"
    );

    let hits = delta("kv_cache_hits_total", &[]);
    assert!(
        hits >= 4.0,
        "5 GETs of one unchanged key must hit the cache at least 4 times; hits grew by {hits}\n{after}"
    );
    for name in [
        "kv_cache_misses_total",
        "kv_cache_size_bytes",
        "kv_storage_live_data_bytes",
        "kv_sibling_cap_rejections_total",
        "kv_read_siblings_count",
    ] {
        assert!(
            metric_sum(&after, name, &[]).is_some(),
            "metric {name} is missing\n{after}"
        );
    }
    assert!(
        value(&after, "kv_cache_size_bytes", &[]) > 0.0,
        "the cache holds something after reads\n{after}"
    );
    let sibling_reads = delta("kv_read_siblings_count", &[]);
    assert!(
        sibling_reads >= 6.0,
        "every successful read is observed in kv_read_siblings; grew by {sibling_reads}\n{after}"
    );
    let sibling_sum = delta("kv_read_siblings_sum", &[]);
    assert!(
        sibling_sum >= 7.0,
        "5 reads of one sibling + 1 of two: kv_read_siblings_sum grew by {sibling_sum}\n{after}"
    );

    let resp = c.request("GET", "/metrics", &[], None).await;
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "Prometheus text format, got content-type {content_type:?}"
    );
}
