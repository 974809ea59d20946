//! `GET /metrics`: the Prometheus text a node serves counts exactly what the test did, names one
//! operation vocabulary, and carries the build, process, RocksDB, per-peer RPC and hint families
//! (`docs/monitoring.md`). The cluster test also runs `promtool check metrics` on a real scrape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvcluster_tests::helm::{cli_tool, metric_names, registered_metrics, unknown_metrics};
use kvcluster_tests::kube::repo_path;
use kvcluster_tests::{Cluster, NodeProcess, metric_sum};

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(text, name, labels).unwrap_or(0.0)
}

/// The values `label` takes in the samples named `name`.
fn label_values(text: &str, name: &str, label: &str) -> BTreeSet<String> {
    let needle = format!("{label}=\"");
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|labels| {
            let start = labels.find(&needle)? + needle.len();
            let len = labels[start..].find('"')?;
            Some(labels[start..start + len].to_string())
        })
        .collect()
}

/// RocksDB figure `name` of the objects column family.
fn objects(text: &str, name: &str) -> f64 {
    metric_sum(text, name, &[("column_family", "objects")])
        .unwrap_or_else(|| panic!("{name}{{column_family=\"objects\"}} missing\n{text}"))
}

#[tokio::test]
async fn metrics_count_requests_and_cache_lookups_exactly() {
    let mut node = NodeProcess::start(&[]);
    let c = node.client();
    let before = c.metrics().await;

    c.put_ok(b"m0", b"value", None).await;
    // Values large enough to grow the memtable past its first arena block.
    for i in 1..7 {
        c.put_ok(format!("m{i}").as_bytes(), &[b'x'; 16 << 10], None)
            .await;
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
    for (operation, status, count) in [
        ("put", "204", 8.0),
        ("get", "200", 5.0),
        ("get", "404", 3.0),
        ("get", "300", 1.0),
        ("delete", "204", 1.0),
    ] {
        let labels = [("operation", operation), ("status", status)];
        assert_eq!(
            delta("kv_requests_total", &labels),
            count,
            "kv_requests_total{{operation=\"{operation}\",status=\"{status}\"}}\n{after}"
        );
        assert_eq!(
            delta("kv_request_duration_seconds_count", &labels),
            count,
            "kv_request_duration_seconds is a histogram with the same labels\n{after}"
        );
    }
    assert!(
        metric_sum(
            &after,
            "kv_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        )
        .is_some(),
        "kv_request_duration_seconds has buckets\n{after}"
    );

    // Each read looks the cache up once; writes, deletes and merges do not count. Writes fill the
    // cache, so the 5 reads of m0 and the read of m2 hit; the first read of an absent key misses and
    // caches its emptiness, so the next two hit.
    let hits = delta("kv_cache_hits_total", &[]);
    let misses = delta("kv_cache_misses_total", &[]);
    assert_eq!(
        (hits, misses),
        (8.0, 1.0),
        "10 reads: 8 hits and 1 miss expected, got {hits} hits and {misses} misses\n{after}"
    );

    // One `operation` vocabulary on every request metric, failures included (at 0 here).
    let vocabulary: BTreeSet<String> = ["delete", "get", "put"].map(String::from).into();
    for name in [
        "kv_requests_total",
        "kv_request_duration_seconds_count",
        "kv_quorum_failures_total",
    ] {
        assert_eq!(
            label_values(&after, name, "operation"),
            vocabulary,
            "operation labels of {name}\n{after}"
        );
    }

    let sibling_reads = delta("kv_read_siblings_count", &[]);
    assert_eq!(
        sibling_reads, 6.0,
        "every successful read is observed in kv_read_siblings\n{after}"
    );
    let sibling_sum = delta("kv_read_siblings_sum", &[]);
    assert_eq!(
        sibling_sum, 7.0,
        "5 reads of one sibling + 1 of two: kv_read_siblings_sum grew by {sibling_sum}\n{after}"
    );
    assert!(
        value(&after, "kv_cache_size_bytes", &[]) > 0.0,
        "the cache holds something after reads\n{after}"
    );

    // Build and process.
    assert_eq!(
        metric_sum(
            &after,
            "kv_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "kv_build_info names the version\n{after}"
    );
    assert_eq!(label_values(&after, "kv_build_info", "commit").len(), 1);
    assert!(
        value(&after, "process_resident_memory_bytes", &[]) > 1e6,
        "{after}"
    );
    assert!(value(&after, "process_open_fds", &[]) > 0.0, "{after}");
    assert!(
        metric_sum(&after, "process_cpu_seconds_total", &[]).is_some(),
        "{after}"
    );

    // RocksDB: the writes sit in the memtable; a restart flushes the recovered log to SST files,
    // and the first read after it goes through RocksDB's block cache.
    assert!(
        objects(&after, "kv_storage_memtable_bytes")
            > objects(&before, "kv_storage_memtable_bytes"),
        "the memtable grows with writes\n{after}"
    );
    for name in [
        "kv_storage_pending_compaction_bytes",
        "kv_storage_writes_delayed",
        "kv_storage_writes_stopped",
    ] {
        assert_eq!(
            metric_sum(&after, name, &[]),
            Some(0.0),
            "{name} of an idle node\n{after}"
        );
    }
    node.restart();
    let c = node.client();
    let restarted = c.metrics().await;
    assert!(
        objects(&restarted, "kv_storage_sst_files_bytes") > 0.0,
        "the recovered writes are in SST files\n{restarted}"
    );
    let (v, _) = c.get_one(b"m0").await;
    assert_eq!(v, b"value");
    let (v, _) = c.get_one(b"m0").await;
    assert_eq!(v, b"value");
    let read = c.metrics().await;
    assert_eq!(
        (
            value(&read, "kv_cache_hits_total", &[]),
            value(&read, "kv_cache_misses_total", &[])
        ),
        (1.0, 1.0),
        "two reads of one key after a restart: one miss, then one hit\n{read}"
    );
    assert!(
        objects(&read, "kv_storage_block_cache_usage_bytes")
            > objects(&restarted, "kv_storage_block_cache_usage_bytes"),
        "the read through RocksDB fills its block cache\n{read}"
    );
    assert!(
        value(&read, "kv_storage_live_data_bytes", &[]) > 0.0,
        "{read}"
    );

    let resp = c.request("GET", "/metrics", &[], None).await;
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "Prometheus text format, got content-type {content_type:?}"
    );
}

/// Polls node `i`'s metrics until `check` holds (up to 10 s) and returns the last scrape.
async fn scrape_until(cluster: &Cluster, i: usize, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = cluster.client(i).metrics().await;
        if check(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_rpcs_and_hints_are_measured_per_peer() {
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    let (kv1, kv2) = (cluster.id(1), cluster.id(2));
    let c0 = cluster.client(0).clone();
    for i in 0..5 {
        c0.put_ok(format!("p{i}").as_bytes(), b"v", None).await;
    }
    // Every write coordinated by kv-0 is sent to both other replicas as a `merge` RPC; pings flow
    // all the time.
    let text = scrape_until(&cluster, 0, |t| {
        [&kv1, &kv2].iter().all(|p| {
            value(
                t,
                "kv_peer_rpc_duration_seconds_count",
                &[("peer", p.as_str()), ("rpc", "merge")],
            ) >= 5.0
        })
    })
    .await;
    for peer in [&kv1, &kv2] {
        let merges = value(
            &text,
            "kv_peer_rpc_duration_seconds_count",
            &[("peer", peer), ("rpc", "merge")],
        );
        assert!(merges >= 5.0, "5 writes: {merges} merges to {peer}\n{text}");
        assert!(
            value(
                &text,
                "kv_peer_rpc_duration_seconds_count",
                &[("peer", peer), ("rpc", "ping")]
            ) > 0.0,
            "pings to {peer}\n{text}"
        );
        assert_eq!(
            metric_sum(&text, "kv_hints_pending", &[("target", peer)]),
            Some(0.0),
            "every peer has a hint backlog series, 0 here\n{text}"
        );
    }
    assert_eq!(
        label_values(&text, "kv_peer_rpc_duration_seconds_count", "peer"),
        [kv1.clone(), kv2.clone()].into(),
        "one series set per peer, none for the node itself\n{text}"
    );
    assert_eq!(
        value(&text, "kv_ring_epoch", &[]),
        cluster.config().epoch as f64
    );

    // kv-2 down: kv-0 keeps a hint per write for it (every node is an owner, so there is no
    // fallback), and its RPCs to kv-2 fail.
    cluster.kill9(2);
    for i in 0..5 {
        c0.put_ok(format!("q{i}").as_bytes(), b"v", None).await;
    }
    let text = scrape_until(&cluster, 0, |t| {
        value(t, "kv_hints_pending", &[("target", &kv2)]) >= 5.0
    })
    .await;
    assert_eq!(
        value(&text, "kv_hints_pending", &[("target", &kv2)]),
        5.0,
        "5 writes while kv-2 is down\n{text}"
    );
    assert_eq!(
        value(&text, "kv_hints_pending", &[("target", &kv1)]),
        0.0,
        "{text}"
    );
    assert!(
        value(&text, "kv_peer_rpc_errors_total", &[("peer", &kv2)]) > 0.0,
        "RPCs to a killed peer fail\n{text}"
    );

    promtool_check_metrics(&text);
}

/// `promtool check metrics` (Prometheus' linter of the exposition format and naming) on `text`.
fn promtool_check_metrics(text: &str) {
    let Some(promtool) = cli_tool(
        "metrics::promtool_check_metrics",
        "PROMTOOL",
        "promtool",
        "apt-get install prometheus (scripts/install-deps.sh does)",
    ) else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}\n{text}"
    );
}

#[test]
fn docs_monitoring_lists_exactly_the_registered_metrics() {
    let docs = std::fs::read_to_string(repo_path("docs/monitoring.md")).unwrap();
    // The source scan also finds literals of unit tests (`"kv_ring_epoch 7"`): keep their names,
    // and a histogram's series only under the histogram's name.
    let registered = registered_metrics();
    let names: BTreeSet<String> = registered.iter().flat_map(|l| metric_names(l)).collect();
    let names: BTreeSet<&String> = names
        .iter()
        .filter(|name| {
            !["_bucket", "_count", "_sum"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| names.contains(base))
            })
        })
        .collect();
    assert!(
        names.contains(&"kv_peer_rpc_errors_total".to_string())
            && names.contains(&"kvoperator_cluster_phase".to_string()),
        "the source scan found {names:?}"
    );
    let undocumented: Vec<&&String> = names
        .iter()
        .filter(|name| !docs.contains(&format!("`{name}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/monitoring.md does not list {undocumented:?}"
    );
    // `kv_` and `kvoperator_` alone are the prefixes.
    let mut unknown = unknown_metrics(&docs, &registered);
    unknown.retain(|name| !name.ends_with('_'));
    assert!(
        unknown.is_empty(),
        "docs/monitoring.md names metrics no code registers: {unknown:?} (of {:?})",
        metric_names(&docs)
    );
}
