//! Prometheus metrics of the node, all prefixed `kv_`, in one registry per process.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// The node's metrics. Cheap to share behind an `Arc`; every handle is internally atomic.
pub struct Metrics {
    registry: Registry,
    /// Requests by `operation` (get, put, delete, other) and HTTP `status`.
    pub requests: IntCounterVec,
    /// Request latency by `operation` and `status`.
    pub request_duration: HistogramVec,
    /// Object cache hits.
    pub cache_hits: IntCounter,
    /// Object cache misses.
    pub cache_misses: IntCounter,
    /// Bytes held by the object cache.
    pub cache_size_bytes: IntGauge,
    /// Siblings (live and tombstones) per successful read.
    pub read_siblings: Histogram,
    /// Writes refused because the key reached the sibling cap.
    pub sibling_cap_rejections: IntCounter,
    /// Peer states not merged because the result would pass the sibling or actor cap.
    pub merge_cap_rejections: IntCounter,
    /// Requests that failed to reach their quorum, by `operation` (read, write).
    pub quorum_failures: IntCounterVec,
    /// Replicas sent a merged state because a read found them behind.
    pub read_repairs: IntCounter,
    /// RocksDB's estimate of live object data, refreshed at each scrape.
    pub storage_live_data_bytes: IntGauge,
    /// Hints held for other nodes, not yet delivered.
    pub hints_pending: IntGauge,
    /// Hints stored here for another node (sloppy quorum).
    pub hints_stored: IntCounter,
    /// Hints delivered to (and acknowledged by) their target.
    pub hints_delivered: IntCounter,
    /// Merkle summaries compared with a peer's, by `outcome` (equal, differing, failed).
    pub antientropy_compared: IntCounterVec,
    /// Keys whose local or remote state changed through anti-entropy or a transfer.
    pub antientropy_keys_repaired: IntCounter,
    /// Unix time at which the last complete anti-entropy sweep ended.
    pub antientropy_last_sweep: Gauge,
    /// Duration of the last complete anti-entropy sweep.
    pub antientropy_sweep_seconds: Gauge,
    /// Keys received for partitions this node gains in a membership change.
    pub transfer_keys_received: IntCounter,
    /// Record bytes received for partitions this node gains in a membership change.
    pub transfer_bytes_received: IntCounter,
    /// Partitions this node still has to receive in the membership change in progress.
    pub transfer_partitions_pending: IntGauge,
    /// Tombstones purged after every owner held them for the grace period.
    pub tombstones_purged: IntCounter,
    /// Hints refused because their target reached a cap, by `cap` (count, bytes).
    pub hints_refused: IntCounterVec,
    /// Hints dropped unsent after `--hint-ttl`.
    pub hints_expired: IntCounter,
    /// Stored hints that did not decode and were dropped.
    pub hints_corrupt: IntCounter,
    /// Peer messages refused by validation, by `reason`.
    pub peer_messages_refused: IntCounterVec,
    /// Requests refused by a transport limit, by `reason` (in_flight, body_timeout).
    pub requests_rejected: IntCounterVec,
    /// Failed syncs of the write-ahead log; after one the node refuses writes until restarted.
    pub wal_sync_failures: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let labels = &["operation", "status"];
        let requests = IntCounterVec::new(
            Opts::new(
                "kv_requests_total",
                "Client requests by operation and HTTP status.",
            ),
            labels,
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "kv_request_duration_seconds",
                "Client request latency by operation and HTTP status.",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18).unwrap_or_default()),
            labels,
        );
        let read_siblings = Histogram::with_opts(
            HistogramOpts::new("kv_read_siblings", "Siblings returned per successful read.")
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        );
        let metrics = (|| -> Result<Metrics, prometheus::Error> {
            let m = Metrics {
                requests: requests?,
                request_duration: request_duration?,
                cache_hits: IntCounter::new("kv_cache_hits_total", "Object cache hits.")?,
                cache_misses: IntCounter::new("kv_cache_misses_total", "Object cache misses.")?,
                cache_size_bytes: IntGauge::new(
                    "kv_cache_size_bytes",
                    "Bytes held by the object cache.",
                )?,
                read_siblings: read_siblings?,
                sibling_cap_rejections: IntCounter::new(
                    "kv_sibling_cap_rejections_total",
                    "Writes refused because the key reached the sibling cap.",
                )?,
                merge_cap_rejections: IntCounter::new(
                    "kv_merge_cap_rejections_total",
                    "Peer states not merged because the result would pass the sibling or actor cap.",
                )?,
                quorum_failures: IntCounterVec::new(
                    Opts::new(
                        "kv_quorum_failures_total",
                        "Requests that did not reach their quorum, by operation.",
                    ),
                    &["operation"],
                )?,
                read_repairs: IntCounter::new(
                    "kv_read_repairs_total",
                    "Replicas repaired with the merged state after a read.",
                )?,
                storage_live_data_bytes: IntGauge::new(
                    "kv_storage_live_data_bytes",
                    "RocksDB estimate of live object data in bytes.",
                )?,
                hints_pending: IntGauge::new(
                    "kv_hints_pending",
                    "Hints held for other nodes, not yet delivered.",
                )?,
                hints_stored: IntCounter::new(
                    "kv_hints_stored_total",
                    "Hints stored here for an unreachable replica.",
                )?,
                hints_delivered: IntCounter::new(
                    "kv_hints_delivered_total",
                    "Hints delivered to and acknowledged by their target.",
                )?,
                antientropy_compared: IntCounterVec::new(
                    Opts::new(
                        "kv_antientropy_trees_compared_total",
                        "Merkle summaries compared with a peer, by outcome.",
                    ),
                    &["outcome"],
                )?,
                antientropy_keys_repaired: IntCounter::new(
                    "kv_antientropy_keys_repaired_total",
                    "Keys changed on either side by anti-entropy or a transfer.",
                )?,
                antientropy_last_sweep: Gauge::new(
                    "kv_antientropy_last_sweep_timestamp_seconds",
                    "Unix time at which the last complete anti-entropy sweep ended.",
                )?,
                antientropy_sweep_seconds: Gauge::new(
                    "kv_antientropy_sweep_duration_seconds",
                    "Duration of the last complete anti-entropy sweep.",
                )?,
                transfer_keys_received: IntCounter::new(
                    "kv_transfer_keys_received_total",
                    "Keys received for partitions gained in a membership change.",
                )?,
                transfer_bytes_received: IntCounter::new(
                    "kv_transfer_bytes_received_total",
                    "Record bytes received for partitions gained in a membership change.",
                )?,
                transfer_partitions_pending: IntGauge::new(
                    "kv_transfer_partitions_pending",
                    "Partitions still to receive in the membership change in progress.",
                )?,
                tombstones_purged: IntCounter::new(
                    "kv_tombstones_purged_total",
                    "Tombstones purged after every owner held them for the grace period.",
                )?,
                hints_refused: IntCounterVec::new(
                    Opts::new(
                        "kv_hints_refused_total",
                        "Hints refused because their target reached a cap, by cap.",
                    ),
                    &["cap"],
                )?,
                hints_expired: IntCounter::new(
                    "kv_hints_expired_total",
                    "Hints dropped unsent after the hint TTL.",
                )?,
                hints_corrupt: IntCounter::new(
                    "kv_hints_corrupt_total",
                    "Stored hints that did not decode and were dropped.",
                )?,
                peer_messages_refused: IntCounterVec::new(
                    Opts::new(
                        "kv_peer_messages_refused_total",
                        "Peer messages refused by validation, by reason.",
                    ),
                    &["reason"],
                )?,
                requests_rejected: IntCounterVec::new(
                    Opts::new(
                        "kv_requests_rejected_total",
                        "Requests refused by a transport limit, by reason.",
                    ),
                    &["reason"],
                )?,
                wal_sync_failures: IntCounter::new(
                    "kv_wal_sync_failures_total",
                    "Failed syncs of the write-ahead log (the node then refuses writes).",
                )?,
                registry,
            };
            let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
                Box::new(m.requests.clone()),
                Box::new(m.request_duration.clone()),
                Box::new(m.cache_hits.clone()),
                Box::new(m.cache_misses.clone()),
                Box::new(m.cache_size_bytes.clone()),
                Box::new(m.read_siblings.clone()),
                Box::new(m.sibling_cap_rejections.clone()),
                Box::new(m.merge_cap_rejections.clone()),
                Box::new(m.quorum_failures.clone()),
                Box::new(m.read_repairs.clone()),
                Box::new(m.storage_live_data_bytes.clone()),
                Box::new(m.hints_pending.clone()),
                Box::new(m.hints_stored.clone()),
                Box::new(m.hints_delivered.clone()),
                Box::new(m.antientropy_compared.clone()),
                Box::new(m.antientropy_keys_repaired.clone()),
                Box::new(m.antientropy_last_sweep.clone()),
                Box::new(m.antientropy_sweep_seconds.clone()),
                Box::new(m.transfer_keys_received.clone()),
                Box::new(m.transfer_bytes_received.clone()),
                Box::new(m.transfer_partitions_pending.clone()),
                Box::new(m.tombstones_purged.clone()),
                Box::new(m.hints_refused.clone()),
                Box::new(m.hints_expired.clone()),
                Box::new(m.hints_corrupt.clone()),
                Box::new(m.peer_messages_refused.clone()),
                Box::new(m.requests_rejected.clone()),
                Box::new(m.wal_sync_failures.clone()),
            ];
            for collector in collectors {
                m.registry.register(collector)?;
            }
            Ok(m)
        })();
        // Names and label sets above are constants: registering them cannot fail unless this code is
        // wrong, which the unit test below catches.
        match metrics {
            Ok(m) => m,
            Err(e) => panic!("metric definitions are invalid: {e}"),
        }
    }

    /// Records one finished client request.
    pub fn observe_request(&self, operation: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        let labels = [operation, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.request_duration
            .with_label_values(&labels)
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which registration rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_its_name() {
        let metrics = Metrics::new();
        metrics.observe_request("put", 204, 0.001);
        metrics.read_siblings.observe(2.0);
        metrics
            .requests_rejected
            .with_label_values(&["in_flight"])
            .inc();
        let text = metrics.render();
        for name in [
            "kv_requests_total{operation=\"put\",status=\"204\"} 1",
            "kv_request_duration_seconds_bucket",
            "kv_cache_hits_total",
            "kv_cache_misses_total",
            "kv_cache_size_bytes",
            "kv_read_siblings_bucket",
            "kv_sibling_cap_rejections_total",
            "kv_merge_cap_rejections_total",
            "kv_storage_live_data_bytes",
            "kv_read_repairs_total",
            "kv_hints_pending",
            "kv_hints_delivered_total",
            "kv_antientropy_keys_repaired_total",
            "kv_antientropy_last_sweep_timestamp_seconds",
            "kv_transfer_partitions_pending",
            "kv_tombstones_purged_total",
            "kv_hints_expired_total",
            "kv_hints_corrupt_total",
            "kv_requests_rejected_total{reason=\"in_flight\"} 1",
            "kv_wal_sync_failures_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
