//! kvoperator: reconciles `KVCluster` resources into running kvcluster rings.
//!
//! Work in progress (the operator issue): for now only the resource's shape, so the Kubernetes
//! dependencies are built with the rest of the workspace.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The desired state of a kvcluster ring.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(group = "kvcluster.io", version = "v1alpha1", kind = "KVCluster", namespaced)]
#[kube(shortname = "kvc")]
#[serde(rename_all = "camelCase")]
pub struct KVClusterSpec {
    /// Number of kvnode pods.
    pub replicas: u32,
}
