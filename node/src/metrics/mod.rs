//! Prometheus metrics of the node, all prefixed `kv_` (plus the standard `process_` family), in one
//! registry per process. `docs/monitoring.md` lists every metric with its meaning and labels.
//!
//! Request metrics share one `operation` vocabulary ([`Operation`]). Gauges read from elsewhere
//! (RocksDB properties, the hint ledger, membership) are refreshed when `/metrics` is scraped.

mod engine;
mod labels;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use engine::{ColumnFamilyStats, EngineStats};

/// The client operations, as the `operation` label of every request metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /v1/kv/{key}`.
    Get,
    /// `PUT /v1/kv/{key}`.
    Put,
    /// `DELETE /v1/kv/{key}`.
    Delete,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 3] = [Operation::Get, Operation::Put, Operation::Delete];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Put => "put",
            Operation::Delete => "delete",
        }
    }
}

/// `reason` of `kv_requests_rejected_total`: the bound on requests in flight refused it.
pub const REJECTED_IN_FLIGHT: &str = "in_flight";
/// `reason` of `kv_requests_rejected_total`: its body did not arrive in time.
pub const REJECTED_BODY_TIMEOUT: &str = "body_timeout";

/// The commit the binary was built from, when the build set `KVCLUSTER_GIT_COMMIT`.
const GIT_COMMIT: &str = match option_env!("KVCLUSTER_GIT_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// The node's metrics. Cheap to share behind an `Arc`; every handle is internally atomic.
pub struct Metrics {
    registry: Registry,
    /// Requests by `operation` and HTTP `status`.
    pub requests: IntCounterVec,
    /// Request latency by `operation` and `status`.
    pub request_duration: HistogramVec,
    /// Replica reads served from the object cache.
    pub cache_hits: IntCounter,
    /// Replica reads that had to go to RocksDB.
    pub cache_misses: IntCounter,
    /// Bytes held by the object cache.
    pub cache_size_bytes: IntGauge,
    /// Siblings (live and tombstones) per successful read.
    pub read_siblings: Histogram,
    /// Writes refused because the key reached the sibling cap.
    pub sibling_cap_rejections: IntCounter,
    /// Peer states not merged because the result would pass the sibling or actor cap.
    pub merge_cap_rejections: IntCounter,
    /// Requests that failed to reach their quorum, by `operation`.
    pub quorum_failures: IntCounterVec,
    /// Replicas sent a merged state because a read found them behind.
    pub read_repairs: IntCounter,
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
    pub antientropy_last_sweep_duration: Gauge,
    /// Keys received for partitions this node gains in a membership change.
    pub transfer_keys_received: IntCounter,
    /// Record bytes received for partitions this node gains in a membership change.
    pub transfer_bytes_received: IntCounter,
    /// Partitions this node gains in the membership change in progress.
    pub transfer_partitions_gained: IntGauge,
    /// Of those, the partitions it still has to receive.
    pub transfer_partitions_pending: IntGauge,
    /// Tombstones and expired values purged after every owner held them for the grace period.
    pub tombstones_purged: IntCounter,
    /// Requests waiting for a change (key watches and change feeds).
    pub watchers: IntGauge,
    /// Watch requests refused because `--max-watchers` were waiting.
    pub watchers_refused: IntCounter,
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
    /// Background tasks started again after a panic, by `task` (series exist from start-up).
    pub background_task_restarts: IntCounterVec,
    /// Latency of peer RPCs this node sent, by `peer` and `rpc` (refreshed: departed peers dropped).
    peer_rpc_duration: HistogramVec,
    /// Peer RPCs that got no answer, by `peer`, `rpc` and `error`.
    peer_rpc_errors: IntCounterVec,
    /// Hints held per `target` (refreshed at scrape time).
    hints_pending: IntGaugeVec,
    /// Epoch of the cluster config this node follows (refreshed at scrape time).
    ring_epoch: IntGauge,
    /// RocksDB figures (refreshed at scrape time).
    engine: engine::EngineGauges,
}

/// Registers `metric` (or passes its construction error on).
fn reg<C: Collector + Clone + 'static>(
    registry: &Registry,
    metric: Result<C, prometheus::Error>,
) -> Result<C, prometheus::Error> {
    let metric = metric?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    reg(r, IntCounter::new(name, help))
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    reg(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    reg(r, IntGaugeVec::new(Opts::new(name, help), labels))
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        // Names and label sets are constants: registering them cannot fail unless this code is
        // wrong, which the unit test below catches.
        match Self::build() {
            Ok(m) => m,
            Err(e) => panic!("metric definitions are invalid: {e}"),
        }
    }

    fn build() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let request = &["operation", "status"];
        let latency = prometheus::exponential_buckets(0.0001, 2.0, 18)?;
        let peer_latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let build_info = gauge_vec(
            &r,
            "kv_build_info",
            "Always 1; the labels name the version and commit of this kvnode.",
            &["version", "commit"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), GIT_COMMIT])
            .set(1);
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let metrics = Metrics {
            requests: counter_vec(
                &r,
                "kv_requests_total",
                "Client requests by operation and HTTP status.",
                request,
            )?,
            request_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "kv_request_duration_seconds",
                        "Client request latency by operation and HTTP status.",
                    )
                    .buckets(latency),
                    request,
                ),
            )?,
            cache_hits: counter(
                &r,
                "kv_cache_hits_total",
                "Replica reads served from the object cache.",
            )?,
            cache_misses: counter(
                &r,
                "kv_cache_misses_total",
                "Replica reads not found in the object cache.",
            )?,
            cache_size_bytes: reg(
                &r,
                IntGauge::new("kv_cache_size_bytes", "Bytes held by the object cache."),
            )?,
            read_siblings: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("kv_read_siblings", "Siblings returned per successful read.")
                        .buckets(vec![1.0, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
                ),
            )?,
            sibling_cap_rejections: counter(
                &r,
                "kv_sibling_cap_rejections_total",
                "Writes refused because the key reached the sibling cap.",
            )?,
            merge_cap_rejections: counter(
                &r,
                "kv_merge_cap_rejections_total",
                "Peer states not merged because the result would pass the sibling or actor cap.",
            )?,
            quorum_failures: counter_vec(
                &r,
                "kv_quorum_failures_total",
                "Client requests that did not reach their quorum, by operation.",
                &["operation"],
            )?,
            read_repairs: counter(
                &r,
                "kv_read_repairs_total",
                "Replicas repaired with the merged state after a read.",
            )?,
            hints_stored: counter(
                &r,
                "kv_hints_stored_total",
                "Hints stored here for an unreachable replica.",
            )?,
            hints_delivered: counter(
                &r,
                "kv_hints_delivered_total",
                "Hints delivered to and acknowledged by their target.",
            )?,
            antientropy_compared: counter_vec(
                &r,
                "kv_antientropy_trees_compared_total",
                "Merkle summaries compared with a peer, by outcome.",
                &["outcome"],
            )?,
            antientropy_keys_repaired: counter(
                &r,
                "kv_antientropy_keys_repaired_total",
                "Keys changed on either side by anti-entropy or a transfer.",
            )?,
            antientropy_last_sweep: reg(
                &r,
                Gauge::new(
                    "kv_antientropy_last_sweep_timestamp_seconds",
                    "Unix time at which the last complete anti-entropy sweep ended.",
                ),
            )?,
            antientropy_last_sweep_duration: reg(
                &r,
                Gauge::new(
                    "kv_antientropy_last_sweep_duration_seconds",
                    "Duration of the last complete anti-entropy sweep.",
                ),
            )?,
            transfer_keys_received: counter(
                &r,
                "kv_transfer_keys_received_total",
                "Keys received for partitions gained in a membership change.",
            )?,
            transfer_bytes_received: counter(
                &r,
                "kv_transfer_bytes_received_total",
                "Record bytes received for partitions gained in a membership change.",
            )?,
            transfer_partitions_gained: reg(
                &r,
                IntGauge::new(
                    "kv_transfer_partitions_gained",
                    "Partitions this node gains in the membership change in progress.",
                ),
            )?,
            transfer_partitions_pending: reg(
                &r,
                IntGauge::new(
                    "kv_transfer_partitions_pending",
                    "Partitions still to receive in the membership change in progress.",
                ),
            )?,
            tombstones_purged: counter(
                &r,
                "kv_tombstones_purged_total",
                "Tombstones and expired values purged after every owner held them for the grace period.",
            )?,
            watchers: reg(
                &r,
                IntGauge::new("kv_watchers", "Requests waiting for a change."),
            )?,
            watchers_refused: counter(
                &r,
                "kv_watchers_refused_total",
                "Watch requests refused because --max-watchers were waiting.",
            )?,
            hints_refused: counter_vec(
                &r,
                "kv_hints_refused_total",
                "Hints refused because their target reached a cap, by cap.",
                &["cap"],
            )?,
            hints_expired: counter(
                &r,
                "kv_hints_expired_total",
                "Hints dropped unsent after the hint TTL.",
            )?,
            hints_corrupt: counter(
                &r,
                "kv_hints_corrupt_total",
                "Stored hints that did not decode and were dropped.",
            )?,
            peer_messages_refused: counter_vec(
                &r,
                "kv_peer_messages_refused_total",
                "Peer messages refused by validation, by reason.",
                &["reason"],
            )?,
            requests_rejected: counter_vec(
                &r,
                "kv_requests_rejected_total",
                "Requests refused by a transport limit, by reason.",
                &["reason"],
            )?,
            wal_sync_failures: counter(
                &r,
                "kv_wal_sync_failures_total",
                "Failed syncs of the write-ahead log (the node then refuses writes).",
            )?,
            background_task_restarts: counter_vec(
                &r,
                "kv_background_task_restarts_total",
                "Background tasks started again after a panic, by task.",
                &["task"],
            )?,
            peer_rpc_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "kv_peer_rpc_duration_seconds",
                        "Latency of the RPCs this node sent to a peer, answered or not, by peer and rpc.",
                    )
                    .buckets(peer_latency),
                    &["peer", "rpc"],
                ),
            )?,
            peer_rpc_errors: counter_vec(
                &r,
                "kv_peer_rpc_errors_total",
                "RPCs to a peer that got no answer, by peer, rpc and error.",
                &["peer", "rpc", "error"],
            )?,
            hints_pending: gauge_vec(
                &r,
                "kv_hints_pending",
                "Hints held for another node, not yet delivered, by target.",
                &["target"],
            )?,
            ring_epoch: reg(
                &r,
                IntGauge::new(
                    "kv_ring_epoch",
                    "Epoch of the cluster config this node follows.",
                ),
            )?,
            engine: engine::EngineGauges::register(&r)?,
            registry: r,
        };
        // Every operation's failure series and every refusal reason's series exist from the start,
        // at 0, so a ratio or a panel is never absent.
        for operation in Operation::ALL {
            metrics
                .quorum_failures
                .with_label_values(&[operation.label()]);
        }
        for reason in [REJECTED_IN_FLIGHT, REJECTED_BODY_TIMEOUT] {
            metrics.requests_rejected.with_label_values(&[reason]);
        }
        Ok(metrics)
    }

    /// Records one finished client request.
    pub fn observe_request(&self, operation: Operation, status: u16, seconds: f64) {
        let status = status.to_string();
        let labels = [operation.label(), status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.request_duration
            .with_label_values(&labels)
            .observe(seconds);
    }

    /// Counts a client request that did not reach its quorum.
    pub fn quorum_failed(&self, operation: Operation) {
        self.quorum_failures
            .with_label_values(&[operation.label()])
            .inc();
    }

    /// Records one RPC sent to `peer`: its latency, and the `error` kind when it got no answer.
    pub fn observe_peer_rpc(&self, peer: &str, rpc: &str, seconds: f64, error: Option<&str>) {
        self.peer_rpc_duration
            .with_label_values(&[peer, rpc])
            .observe(seconds);
        if let Some(error) = error {
            self.peer_rpc_errors
                .with_label_values(&[peer, rpc, error])
                .inc();
        }
    }

    /// Refreshes the gauges read from elsewhere, before a scrape: the ring `epoch`, the hint
    /// backlog per target (every one of `peers`, plus any other target with hints), and RocksDB's
    /// figures (kept as they were when `engine` could not be read). Drops the per-peer series of nodes no longer in `peers`, so their number stays
    /// bounded by the membership.
    pub fn refresh(
        &self,
        epoch: u64,
        peers: &[&str],
        hint_backlog: &[(String, u64)],
        engine: Option<&EngineStats>,
    ) {
        self.ring_epoch
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
        let mut targets: Vec<(&str, u64)> = peers.iter().map(|p| (*p, 0)).collect();
        for (target, count) in hint_backlog {
            match targets.iter_mut().find(|(t, _)| t == target) {
                Some(entry) => entry.1 = *count,
                None => targets.push((target, *count)),
            }
        }
        let keep: Vec<&str> = targets.iter().map(|(t, _)| *t).collect();
        labels::retain(&self.hints_pending, "target", &keep);
        for (target, count) in targets {
            self.hints_pending
                .with_label_values(&[target])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        labels::retain(&self.peer_rpc_duration, "peer", peers);
        labels::retain(&self.peer_rpc_errors, "peer", peers);
        if let Some(engine) = engine {
            self.engine.set(engine);
        }
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
mod tests;
