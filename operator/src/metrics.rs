//! The operator's Prometheus metrics (prefix `kvoperator_`), on their own registry.
//!
//! Per-cluster series are labelled `kvcluster_namespace` and `kvcluster_name` (not `namespace`,
//! which Prometheus sets to the operator's own namespace). Those of a deleted KVCluster are dropped
//! at the next scrape, once the controller's store no longer holds it (see [`Metrics::follow`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::crd::{KVCluster, KVClusterStatus};
use crate::status::RING_SETTLED;

/// The labels naming a KVCluster.
const CLUSTER: [&str; 2] = ["kvcluster_namespace", "kvcluster_name"];

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `kvoperator_reconciles_total`: reconciles started.
    pub reconciles: IntCounter,
    /// `kvoperator_reconcile_errors_total{kvcluster_namespace,kvcluster_name,error}`: reconciles
    /// that failed, by cluster and kind of error.
    pub errors: IntCounterVec,
    /// `kvoperator_reconcile_duration_seconds`: how long reconciles take.
    pub duration: Histogram,
    /// `kvoperator_config_pushes_total`: cluster configs pushed to nodes.
    pub pushes: IntCounter,
    phase: IntGaugeVec,
    members: IntGaugeVec,
    members_ready: IntGaugeVec,
    ring_epoch: IntGaugeVec,
    ring_change_age: GaugeVec,
    clusters: Arc<Mutex<Clusters>>,
}

/// What the per-cluster gauges were last set from.
#[derive(Default)]
struct Clusters {
    /// By (namespace, name): the phase label in use and when the ring change in progress began.
    seen: HashMap<(String, String), (String, Option<Timestamp>)>,
    /// The controller's view of the KVClusters that exist.
    store: Option<Store<KVCluster>>,
}

fn gauges(r: &Registry, name: &str, help: &str, extra: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let labels: Vec<&str> = CLUSTER.iter().chain(extra).copied().collect();
    let gauge = IntGaugeVec::new(Opts::new(name, help), &labels)?;
    r.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

impl Metrics {
    /// Fresh metrics on a new registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounter::new("kvoperator_reconciles_total", "Reconciles started.")?;
        let errors = IntCounterVec::new(
            Opts::new(
                "kvoperator_reconcile_errors_total",
                "Reconciles that failed, by KVCluster and kind of error.",
            ),
            &[CLUSTER[0], CLUSTER[1], "error"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "kvoperator_reconcile_duration_seconds",
                "Duration of reconciles.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let pushes = IntCounter::new(
            "kvoperator_config_pushes_total",
            "Cluster configs pushed to nodes.",
        )?;
        let ring_change_age = GaugeVec::new(
            Opts::new(
                "kvoperator_cluster_ring_change_age_seconds",
                "Seconds since the KVCluster's ring change in progress began (0 when settled).",
            ),
            &CLUSTER,
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(ring_change_age.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            phase: gauges(
                &registry,
                "kvoperator_cluster_phase",
                "1 for the KVCluster's current status.phase (the phase label).",
                &["phase"],
            )?,
            members: gauges(
                &registry,
                "kvoperator_cluster_members",
                "Members of the KVCluster's ring.",
                &[],
            )?,
            members_ready: gauges(
                &registry,
                "kvoperator_cluster_members_ready",
                "Members of the KVCluster's ring that are ready and answer.",
                &[],
            )?,
            ring_epoch: gauges(
                &registry,
                "kvoperator_cluster_ring_epoch",
                "Epoch of the cluster config the KVCluster's nodes follow.",
                &[],
            )?,
            registry,
            reconciles,
            errors,
            duration,
            pushes,
            ring_change_age,
            clusters: Arc::default(),
        })
    }

    /// Records one finished reconcile of `kvc`.
    pub fn observe(&self, kvc: &KVCluster, took: Duration, error: Option<&crate::Error>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(e) = error {
            let ns = kvc.namespace().unwrap_or_default();
            self.errors
                .with_label_values(&[ns.as_str(), &kvc.name_any(), e.metric_label()])
                .inc();
        }
    }

    /// Publishes the status just written for cluster `ns`/`name`, of whose ring members
    /// `unavailable` are not ready or not answering.
    pub fn observe_status(
        &self,
        ns: &str,
        name: &str,
        status: &KVClusterStatus,
        unavailable: usize,
    ) {
        let cluster = [ns, name];
        let phase = status.phase.map(|p| format!("{p:?}")).unwrap_or_default();
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ns.to_string(), name.to_string());
        if let Some((old, _)) = clusters.seen.get(&key)
            && *old != phase
        {
            let _ = self.phase.remove_label_values(&[ns, name, old]);
        }
        self.phase.with_label_values(&[ns, name, &phase]).set(1);
        let members = status.members.len();
        let int = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.members.with_label_values(&cluster).set(int(members));
        self.members_ready
            .with_label_values(&cluster)
            .set(int(members.saturating_sub(unavailable)));
        self.ring_epoch
            .with_label_values(&cluster)
            .set(i64::try_from(status.ring_epoch).unwrap_or(i64::MAX));
        // RingSettled turned False when the change began, and keeps that time while it lasts.
        let started = status.transition.as_ref().and_then(|_| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == RING_SETTLED && c.status == "False")
                .map(|c| c.last_transition_time.0)
        });
        clusters.seen.insert(key, (phase, started));
    }

    /// Drops the series of KVClusters that `store` (the controller's) no longer holds.
    pub fn follow(&self, store: Store<KVCluster>) {
        self.clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .store = Some(store);
    }

    /// Refreshes the ring change ages and drops deleted clusters' series.
    fn refresh(&self, now: Timestamp) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let Clusters { seen, store } = &mut *clusters;
        seen.retain(|(ns, name), (phase, started)| {
            let cluster = [ns.as_str(), name.as_str()];
            if store
                .as_ref()
                .is_some_and(|s| s.get(&ObjectRef::new(name).within(ns)).is_none())
            {
                let _ = self.phase.remove_label_values(&[ns, name, phase]);
                for gauge in [&self.members, &self.members_ready, &self.ring_epoch] {
                    let _ = gauge.remove_label_values(&cluster);
                }
                let _ = self.ring_change_age.remove_label_values(&cluster);
                return false;
            }
            let age = started.map_or(0.0, |t| now.duration_since(t).as_secs_f64().max(0.0));
            self.ring_change_age.with_label_values(&cluster).set(age);
            true
        });
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        self.refresh(Timestamp::now());
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    use super::*;

    type Result = std::result::Result<(), Box<dyn std::error::Error>>;

    fn kvc(ns: &str, name: &str) -> std::result::Result<KVCluster, serde_json::Error> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kvcluster.io/v1alpha1", "kind": "KVCluster",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 3, "replicationFactor": 3, "writeQuorum": 2, "readQuorum": 2,
                     "image": "kvnode:dev", "storage": {"size": "1Gi"}}
        }))
    }

    /// A status as the controller writes it (from JSON, so fields added later keep their defaults).
    fn status(
        phase: &str,
        transition: bool,
        since: Timestamp,
    ) -> std::result::Result<KVClusterStatus, serde_json::Error> {
        let settled = if transition { "False" } else { "True" };
        let mut status = serde_json::json!({
            "ringEpoch": 4, "members": ["a", "b", "c"], "phase": phase,
            "conditions": [{"type": RING_SETTLED, "status": settled, "reason": "r", "message": "",
                            "lastTransitionTime": since.to_string()}]
        });
        if transition {
            status["transition"] =
                serde_json::json!({"fromEpoch": 3, "toEpoch": 4, "partitionsPending": 9});
        }
        serde_json::from_value(status)
    }

    #[test]
    fn renders_the_documented_names() -> Result {
        let m = Metrics::new()?;
        let c = kvc("ns", "c1")?;
        m.observe(&c, Duration::from_millis(20), None);
        m.observe(
            &c,
            Duration::from_millis(20),
            Some(&crate::Error::MissingField("uid")),
        );
        let text = m.render();
        assert!(text.contains("kvoperator_reconciles_total 2"), "{text}");
        assert!(
            text.contains(
                r#"kvoperator_reconcile_errors_total{error="missing_field",kvcluster_name="c1",kvcluster_namespace="ns"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("kvoperator_reconcile_duration_seconds_count 2"),
            "{text}"
        );
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        Ok(())
    }

    #[test]
    fn cluster_gauges_follow_the_status_and_go_with_the_cluster() -> Result {
        let m = Metrics::new()?;
        let labels = r#"kvcluster_name="c1",kvcluster_namespace="ns""#;
        let ten_minutes_ago = Timestamp::now() - Duration::from_secs(600);
        m.observe_status(
            "ns",
            "c1",
            &status("Transitioning", true, ten_minutes_ago)?,
            1,
        );
        let text = m.render();
        for line in [
            format!(r#"kvoperator_cluster_phase{{{labels},phase="Transitioning"}} 1"#),
            format!("kvoperator_cluster_members{{{labels}}} 3"),
            format!("kvoperator_cluster_members_ready{{{labels}}} 2"),
            format!("kvoperator_cluster_ring_epoch{{{labels}}} 4"),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        let age = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "kvoperator_cluster_ring_change_age_seconds{{{labels}}} "
                ))
            })
            .ok_or("no ring change age")?
            .parse::<f64>()?;
        assert!((600.0..700.0).contains(&age), "age {age}");

        m.observe_status("ns", "c1", &status("Running", false, Timestamp::now())?, 0);
        let text = m.render();
        assert!(
            !text.contains("Transitioning"),
            "the old phase stays:\n{text}"
        );
        assert!(
            text.contains(&format!(
                "kvoperator_cluster_ring_change_age_seconds{{{labels}}} 0"
            )),
            "{text}"
        );

        let mut writer = Writer::<KVCluster>::default();
        m.follow(writer.as_reader());
        writer.apply_watcher_event(&Event::Apply(kvc("ns", "c1")?));
        assert!(m.render().contains("kvoperator_cluster_phase{"));
        writer.apply_watcher_event(&Event::Delete(kvc("ns", "c1")?));
        let text = m.render();
        assert!(
            !text.contains("c1"),
            "a deleted cluster's series stay:\n{text}"
        );
        Ok(())
    }
}
