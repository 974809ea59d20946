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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
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
/// The API server's message when [`STORAGE_SIZE_RULE`] fails.
pub const STORAGE_SIZE_MESSAGE: &str = "storage.size must be a positive quantity such as 10Gi";

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

    /// CPU and memory of the kvnode container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Byte budget of each node's object cache, as a Kubernetes quantity (`256Mi`, `1Gi`, `0`).
    #[serde(default = "default_cache_size")]
    #[schemars(regex(pattern = r"^[0-9]{1,12}(Ki|Mi|Gi)?$"))]
    pub cache_size: String,

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

/// The nodes' bearer tokens. Every Secret named here must carry the label
/// `kvcluster.io/operator-access=true`: the operator mounts nothing else into pods.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.metricsNeedToken || has(self.readTokenSecretRef) || has(self.writeTokenSecretRef)",
     "message": "metricsNeedToken needs readTokenSecretRef or writeTokenSecretRef: Prometheus sends one of those tokens"},
]))]
pub struct AuthSpec {
    /// Token(s) of the admin routes (and every other route). The operator reads this Secret and
    /// sends its first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_secret_ref: Option<SecretKeyRef>,
    /// Read-only data tokens: with this or `writeTokenSecretRef`, the data routes need a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_token_secret_ref: Option<SecretKeyRef>,
    /// Read-write data tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_token_secret_ref: Option<SecretKeyRef>,
    /// Whether `/metrics` needs a token too. The ServiceMonitor then sends the first read token
    /// (or write token), so one of them must be set.
    #[serde(default)]
    pub metrics_need_token: bool,
}

/// TLS of the nodes' two ports.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Mutual TLS between nodes on the peer port: each node presents this certificate and trusts
    /// only its `ca.crt`. It must name every pod: `*.<name>-headless.<namespace>.svc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<CertificateSource>,
    /// TLS on the client port (data, admin, metrics). The operator then speaks HTTPS to the nodes
    /// and trusts only its `ca.crt`. It must name every pod as above, and clients' names for the
    /// client Service (`<name>.<namespace>.svc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<CertificateSource>,
}

/// Where a certificate comes from: a Secret you keep, or cert-manager.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.secretName) != has(self.issuerRef)",
     "message": "set exactly one of secretName and issuerRef"},
]))]
pub struct CertificateSource {
    /// A Secret with `tls.crt`, `tls.key` and `ca.crt` (the layout of cert-manager and of
    /// `kubernetes.io/tls` Secrets), labelled `kvcluster.io/operator-access=true`. Rotating it reaches
    /// running nodes without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// Let cert-manager issue it: the operator creates a `Certificate` named
    /// `<name>-peer-tls` or `<name>-client-tls` (its Secret has the same name) from this issuer,
    /// which must put `ca.crt` in the Secret (a CA issuer does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

/// A cert-manager issuer.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The issuer's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (in the cluster's namespace) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    #[schemars(extend("enum" = ["Issuer", "ClusterIssuer"]))]
    pub kind: String,
    /// The issuer's API group.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// The label a Secret named in a KVCluster must carry (value `true`) before the operator reads it or
/// mounts it into pods. Without the opt-in, anyone allowed to create a KVCluster could have any
/// Secret of the namespace mounted into pods of an image of their choosing.
pub const SECRET_OPT_IN_LABEL: &str = "kvcluster.io/operator-access";

fn enabled() -> bool {
    true
}

fn default_partitions() -> u32 {
    DEFAULT_PARTITIONS
}

fn default_cache_size() -> String {
    "256Mi".into()
}

/// A pod's persistent volume.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
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

/// One key of a Secret in the resource's namespace.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".into()
}

/// What the operator last observed of the ring.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KVClusterStatus {
    /// Pods the StatefulSet runs now (more than `spec.replicas` while members leave).
    #[serde(default)]
    pub replicas: u32,
    /// Pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Epoch of the cluster config the nodes follow (0 before any node answered).
    #[serde(default)]
    pub ring_epoch: u64,
    /// Member ids of the ring, in config order.
    #[serde(default)]
    pub members: Vec<String>,
    /// `Strong` when W + R > N, else `Eventual`, for the quorums in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// The membership change in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<TransitionStatus>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One word for where the cluster stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `Available`, `Progressing`, `Degraded` and `RingSettled`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The pods' label selector, for the scale subresource (`kubectl scale`, autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// The guarantee the quorums in force give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Consistency {
    /// W + R > N: every read quorum overlaps every write quorum.
    Strong,
    /// W + R ≤ N: a read may miss the latest acknowledged write.
    Eventual,
}

impl Consistency {
    /// The consistency of quorums `w` and `r` over `n` replicas.
    pub fn of(n: u32, w: u32, r: u32) -> Self {
        if w + r > n {
            Consistency::Strong
        } else {
            Consistency::Eventual
        }
    }
}

/// Where a cluster stands, for `kubectl get kvc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Phase {
    /// The resources exist but no node has answered yet.
    Creating,
    /// The ring matches the spec and is settled.
    Running,
    /// New pods are starting; they join the ring once ready.
    ScalingUp,
    /// Members are leaving the ring; their pods stop once their data has moved.
    ScalingDown,
    /// A membership or N change is being applied by the nodes.
    Transitioning,
    /// New quorums are being pushed to the nodes.
    Reconfiguring,
    /// Ring members are unreachable or not ready; the operator waits before changing anything.
    Degraded,
}

/// A membership change in progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionStatus {
    /// Epoch of the ring being left.
    pub from_epoch: u64,
    /// Epoch of the config that started the change.
    pub to_epoch: u64,
    /// Partitions the nodes still have to receive, summed over nodes.
    pub partitions_pending: u64,
    /// When `partitionsPending` last went down (or the change started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,
    /// No progress for longer than the operator's `--ring-change-stall-after`.
    #[serde(default)]
    pub stalled: bool,
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
        assert_eq!(spec.cache_size, "256Mi");
        assert_eq!(spec.durability, Durability::Periodic);
        assert_eq!(spec.image_pull_policy, None);
        Ok(())
    }
}
