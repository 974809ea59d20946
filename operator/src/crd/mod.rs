//! The `KVCluster` resource (`kvcluster.io/v1alpha1`): its spec, its status, and the schema rules
//! that make the API server refuse a bad spec before the operator ever sees it.
//!
//! Every number has bounds, and the rules between fields (W ≤ N, R ≤ N, N ≤ replicas, partitions
//! immutable) are CEL `x-kubernetes-validations`, so `kubectl apply` fails with a message instead of
//! the operator reporting a broken resource later. This module must not do I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most pods a cluster may have. The ring has no hard limit; this keeps a typo from asking for
/// thousands of pods.
pub const MAX_REPLICAS: u32 = 256;
/// Largest replication factor (N) accepted.
pub const MAX_REPLICATION_FACTOR: u32 = 15;
/// Partition count when the spec leaves it out (the node's default too).
pub const DEFAULT_PARTITIONS: u32 = 256;
/// CEL rule of `spec.storage.size`: a Kubernetes quantity above zero (`isQuantity` and
/// `quantity` are the API server's quantity library, Kubernetes 1.29 and later).
pub const STORAGE_SIZE_RULE: &str =
    "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))";
/// CEL transition rule of `spec.storage`: the size never goes down (a PVC cannot shrink).
pub const STORAGE_GROWTH_RULE: &str = "!isQuantity(string(self.size)) || !isQuantity(string(oldSelf.size)) || quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) >= 0";
/// The API server's message when [`STORAGE_SIZE_RULE`] fails.
pub const STORAGE_SIZE_MESSAGE: &str = "storage.size must be a positive quantity such as 10Gi";

mod backup;
mod placement;
mod security;
mod status;

pub use backup::*;
pub use placement::*;
pub use security::*;
pub use status::*;

/// The desired state of a kvcluster ring.
// The printer columns repeat `type_ = ...` on purpose; clippy reads them as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "kvcluster.io",
    version = "v1alpha1",
    kind = "KVCluster",
    plural = "kvclusters",
    shortname = "kvc",
    namespaced,
    status = "KVClusterStatus",
    doc = "A kvcluster ring: a StatefulSet of kvnode pods that kvoperator keeps in one consistent-hashing ring, \
           with N replicas per key and W/R quorums; membership and quorum changes move data without losing \
           acknowledged writes.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "N", type_ = "integer", json_path = ".spec.replicationFactor"),
    printcolumn(name = "W", type_ = "integer", json_path = ".spec.writeQuorum"),
    printcolumn(name = "R", type_ = "integer", json_path = ".spec.readQuorum"),
    printcolumn(
        name = "Consistency",
        type_ = "string",
        json_path = ".status.consistency"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.replicationFactor <= self.replicas",
     "message": "replicationFactor (N) must not exceed replicas"},
    {"rule": "self.writeQuorum <= self.replicationFactor",
     "message": "writeQuorum (W) must not exceed replicationFactor (N)"},
    {"rule": "self.readQuorum <= self.replicationFactor",
     "message": "readQuorum (R) must not exceed replicationFactor (N)"},
    {"rule": SHARED_S3_RULE, "message": SHARED_S3_MESSAGE},
]))]
pub struct KVClusterSpec {
    /// Number of kvnode pods (ring members).
    #[schemars(range(min = 1, max = 256))]
    pub replicas: u32,

    /// Replicas per key (N); at most `replicas`.
    #[schemars(range(min = 1, max = 15))]
    pub replication_factor: u32,

    /// Default write quorum (W), 1..=N. W + R > N gives strong consistency.
    #[schemars(range(min = 1, max = 15))]
    pub write_quorum: u32,

    /// Default read quorum (R), 1..=N.
    #[schemars(range(min = 1, max = 15))]
    pub read_quorum: u32,

    /// Partitions of the key space: a power of two, fixed when the cluster is created.
    #[serde(default = "default_partitions")]
    #[schemars(extend(
        "enum" = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536],
        "x-kubernetes-validations" = [
            {"rule": "self == oldSelf", "message": "partitions is immutable"}
        ]
    ))]
    pub partitions: u32,

    /// The kvnode container image.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// When the kubelet pulls the image (Kubernetes' default when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Each pod's persistent volume.
    pub storage: StorageSpec,

    /// CPU and memory of the kvnode container. Left out: 1 CPU and 1Gi, requests equal to limits
    /// (Guaranteed QoS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Byte budget of each node's object cache, as a Kubernetes quantity (`256Mi`, `1Gi`, `0`).
    /// Left out: a quarter of the memory limit (RocksDB gets another quarter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,12}(Ki|Mi|Gi)?$"))]
    pub cache_size: Option<String>,

    /// Where the pods run: node selector, tolerations, affinity, spread, priority.
    #[serde(default)]
    pub placement: PlacementSpec,

    /// The nodes' tunable settings (tombstone grace, anti-entropy pace, limits).
    #[serde(default)]
    pub node_settings: NodeSettings,

    /// When writes reach the disk: `periodic` (WAL synced every 100 ms) or `fsync` (every write).
    #[serde(default)]
    pub durability: Durability,

    /// Bearer tokens of the nodes' routes, from Secrets; without them every route is open to
    /// whoever reaches the port.
    #[serde(default)]
    pub auth: AuthSpec,

    /// TLS of the nodes' ports, from Secrets or cert-manager; without it they speak plain HTTP.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Who may reach the pods, enforced by a NetworkPolicy the operator owns.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,

    /// How Prometheus finds the nodes: the ServiceMonitor the operator applies when the Prometheus
    /// Operator's CRD is installed.
    #[serde(default)]
    pub monitoring: MonitoringSpec,

    /// Scheduled backups into object storage, with retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// A backup to fill the cluster from, once, when its ring first settles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<RestoreSpec>,
}

/// The cluster's ServiceMonitor.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Whether to apply a ServiceMonitor (when the operator applies them at all; turning it off later
    /// leaves the last one in place: delete it by hand).
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Extra labels of the ServiceMonitor, so that a Prometheus selecting on them finds it: a default
    /// kube-prometheus-stack selects `release: <its release name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How often Prometheus scrapes each node, such as `30s` or `1m`.
    #[serde(default = "default_scrape_interval")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,4}(s|m)$"))]
    pub interval: String,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        MonitoringSpec {
            enabled: true,
            labels: BTreeMap::new(),
            interval: default_scrape_interval(),
        }
    }
}

fn default_scrape_interval() -> String {
    "30s".into()
}

/// The NetworkPolicy of a cluster: the peer port is always limited to the cluster's own pods.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Whether the operator applies the NetworkPolicy (turning it off later leaves the last one in
    /// place: delete it by hand).
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Who may reach the client port (data, admin, metrics); anyone when empty. The operator's own
    /// pods are always let through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_from: Vec<NetworkPolicyPeer>,
    /// Namespace whose pods (Prometheus) may scrape `/metrics` when `clientFrom` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub metrics_namespace: Option<String>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec {
            enabled: true,
            client_from: Vec::new(),
            metrics_namespace: None,
        }
    }
}

fn enabled() -> bool {
    true
}

fn default_partitions() -> u32 {
    DEFAULT_PARTITIONS
}

/// A pod's persistent volume.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": STORAGE_GROWTH_RULE, "message": "storage.size cannot shrink: a volume only grows"},
]))]
pub struct StorageSpec {
    /// Size of each pod's volume, such as `10Gi`.
    // A Quantity's schema is only `x-kubernetes-int-or-string`: without the CEL rule the API
    // server takes `ten gigs` or `-1Gi`, and the StatefulSet built from it is refused at every
    // reconcile instead.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": STORAGE_SIZE_RULE, "message": STORAGE_SIZE_MESSAGE}
    ]))]
    pub size: Quantity,
    /// Storage class of the volumes; the cluster's default class when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// `periodic` or `fsync`, as the node's `--durability`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Sync the write-ahead log periodically: a process crash loses nothing.
    #[default]
    Periodic,
    /// Sync every write before acknowledging it.
    Fsync,
}

impl Durability {
    /// The node's flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Periodic => "periodic",
            Durability::Fsync => "fsync",
        }
    }
}

/// The container image pull policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the node lacks the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl ImagePullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_is_strong_only_when_quorums_overlap() {
        assert_eq!(Consistency::of(3, 2, 2), Consistency::Strong);
        assert_eq!(Consistency::of(3, 1, 3), Consistency::Strong);
        assert_eq!(Consistency::of(3, 1, 2), Consistency::Eventual);
        assert_eq!(Consistency::of(1, 1, 1), Consistency::Strong);
    }

    #[test]
    fn spec_defaults_fill_optional_fields() -> Result<(), serde_json::Error> {
        let spec: KVClusterSpec = serde_json::from_value(serde_json::json!({
            "replicas": 3, "replicationFactor": 3, "writeQuorum": 2, "readQuorum": 2,
            "image": "kvnode:dev", "storage": {"size": "1Gi"}
        }))?;
        assert_eq!(spec.partitions, 256);
        assert_eq!(spec.cache_size, None);
        assert_eq!(spec.placement, PlacementSpec::default());
        assert_eq!(spec.durability, Durability::Periodic);
        assert_eq!(spec.image_pull_policy, None);
        Ok(())
    }
}
