//! What the operator reports in a KVCluster's `status`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BackupStatus, RestoreStatus};

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
    /// The volumes, while `spec.storage.size` grows past what they hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<VolumeStatus>,
    /// Scheduled backups (written by the backup jobs, under their own field manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
    /// The restore of `spec.restoreFrom` (written by the restore job, under its own field manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreStatus>,
}

/// Volumes growing to `spec.storage.size`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// The size asked for.
    pub size: String,
    /// PVCs whose volume is still smaller: expansion asked for and not finished, or refused.
    #[serde(default)]
    pub expanding: Vec<String>,
    /// PVCs whose expansion the API server refused, with why (usually: their storage class does not
    /// allow volume expansion).
    #[serde(default)]
    pub refused: Vec<String>,
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
