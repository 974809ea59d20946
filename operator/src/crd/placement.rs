//! Where a cluster's pods run (`spec.placement`) and the node settings a platform team tunes
//! (`spec.nodeSettings`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration, TopologySpreadConstraint};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Scheduling of the pods. Left out, pods prefer distinct hosts and spread over zones.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Labels a Kubernetes node must carry to run the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Replaces the default affinity (pods preferably on distinct hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Replace the default spread (pods preferably over zones, at most one apart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the pods: storage usually deserves a high one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
}

/// A duration the node reads (`500ms`, `30s`, `10m`, `1h`).
const DURATION: &str = r"^[0-9]{1,9}(ms|s|m|h)$";

/// The nodes' settings beyond the ring, each the `kvnode` flag of the same name; left out, the
/// node's default (`kvnode --help`, docs/operations.md).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.hintTtl) || !has(self.tombstoneGrace) || duration(self.hintTtl) < duration(self.tombstoneGrace)",
     "message": "hintTtl must be shorter than tombstoneGrace: a hint outliving the grace could bring a purged key back"},
]))]
pub struct NodeSettings {
    /// How long a tombstone is kept once every replica holds it (`--tombstone-grace`, 1h). Keep it
    /// above the longest time a node may be down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub tombstone_grace: Option<String>,
    /// How long an undelivered hint is kept (`--hint-ttl`, half the tombstone grace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub hint_ttl: Option<String>,
    /// Pause between anti-entropy sweeps (`--anti-entropy-interval`, 30s; `0s` turns sweeps off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub anti_entropy_interval: Option<String>,
    /// Pause after each partition of a sweep (`--anti-entropy-pace`, 5ms), bounding its CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub anti_entropy_pace: Option<String>,
    /// Deadline of a client request (`--request-timeout`, 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub request_timeout: Option<String>,
    /// Largest value accepted (`--max-value-bytes`, 1Mi), as a quantity (`512Ki`, `4Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,8}(Ki|Mi)?$"))]
    pub max_value_size: Option<String>,
    /// Requests a node serves at once over both ports (`--max-requests-in-flight`, 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_requests_in_flight: Option<u32>,
    /// Open connections a node accepts (`--max-connections`, 16384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections: Option<u32>,
}

impl NodeSettings {
    /// `(node environment variable, value)` of each setting given.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        let text = [
            ("KVNODE_TOMBSTONE_GRACE", &self.tombstone_grace),
            ("KVNODE_HINT_TTL", &self.hint_ttl),
            ("KVNODE_ANTI_ENTROPY_INTERVAL", &self.anti_entropy_interval),
            ("KVNODE_ANTI_ENTROPY_PACE", &self.anti_entropy_pace),
            ("KVNODE_REQUEST_TIMEOUT", &self.request_timeout),
        ];
        for (var, value) in text {
            if let Some(v) = value {
                vars.push((var, v.clone()));
            }
        }
        if let Some(size) = &self.max_value_size {
            vars.push(("KVNODE_MAX_VALUE_BYTES", node_bytes(size)));
        }
        let numbers = [
            ("KVNODE_MAX_REQUESTS_IN_FLIGHT", self.max_requests_in_flight),
            ("KVNODE_MAX_CONNECTIONS", self.max_connections),
        ];
        for (var, value) in numbers {
            if let Some(v) = value {
                vars.push((var, v.to_string()));
            }
        }
        vars
    }
}

/// A Kubernetes binary quantity in the node's spelling: `Ki`/`Mi`/`Gi` become `KiB`/`MiB`/`GiB`.
pub fn node_bytes(quantity: &str) -> String {
    for (suffix, unit) in [("Ki", "KiB"), ("Mi", "MiB"), ("Gi", "GiB")] {
        if let Some(number) = quantity.strip_suffix(suffix) {
            return format!("{number}{unit}");
        }
    }
    quantity.to_string()
}
