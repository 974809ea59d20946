//! Every Kubernetes object the operator owns, built as a pure function of the resource (and, where
//! the object carries ring state, of the config the nodes follow).
//!
//! Nothing here talks to the API server: the reconciler applies what these functions return with
//! server-side apply, and the unit tests read the objects field by field.

pub mod backup_env;
pub mod certificate;
pub mod configmap;
pub mod networkpolicy;
pub mod pdb;
pub mod secret;
pub mod secret_mounts;
pub mod service;
pub mod servicemonitor;
pub mod sizing;
pub mod statefulset;
pub mod volumes;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::crd::KVCluster;

/// The node's client HTTP port (key-value, admin, health and metrics routes).
pub const NODE_PORT: u16 = 8080;
/// Name of the node's client port in the pod and the Services.
pub const PORT_NAME: &str = "http";
/// The node's peer port (peer RPC only), published by the headless Service alone.
pub const PEER_PORT: u16 = 7070;
/// Name of the node's peer port in the pod and the headless Service.
pub const PEER_PORT_NAME: &str = "peer";
/// Key of the cluster config in the ConfigMap, and its file name in the pod.
pub const CLUSTER_JSON: &str = "cluster.json";
/// Where the ConfigMap is mounted in the pod.
pub const CONFIG_DIR: &str = "/etc/kvcluster";
/// Where the context key Secret is mounted in the pod.
pub const CONTEXT_KEY_DIR: &str = "/etc/kvcluster-context";
/// Where the data volume is mounted in the pod.
pub const DATA_DIR: &str = "/data";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "kvoperator";
/// Label that tells the client Service from the headless one (the ServiceMonitor selects on it).
pub const SERVICE_ROLE_LABEL: &str = "kvcluster.io/service";

/// Labels every owned object carries.
pub fn labels(kvc: &KVCluster) -> BTreeMap<String, String> {
    let mut labels = selector_labels(kvc);
    labels.insert("app.kubernetes.io/managed-by".into(), "kvoperator".into());
    labels.insert("app.kubernetes.io/component".into(), "storage".into());
    labels
}

/// The labels that select this cluster's pods; never change them, a StatefulSet selector is
/// immutable.
pub fn selector_labels(kvc: &KVCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "kvnode".to_string()),
        ("app.kubernetes.io/instance".to_string(), kvc.name_any()),
    ])
}

/// The pods' label selector as a query string.
pub fn selector_string(kvc: &KVCluster) -> String {
    selector_labels(kvc)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of an owned object: its name, the resource's namespace, labels, and a controller
/// owner reference so deleting the resource deletes the object.
pub fn owned_meta(kvc: &KVCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: kvc.namespace(),
        labels: Some(labels(kvc)),
        owner_references: kvc.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Name of the headless Service that gives each pod its DNS name.
pub fn headless_service_name(kvc: &KVCluster) -> String {
    format!("{}-headless", kvc.name_any())
}

/// Name of the ConfigMap holding `cluster.json`.
pub fn configmap_name(kvc: &KVCluster) -> String {
    format!("{}-config", kvc.name_any())
}

/// The StatefulSet's pod of ordinal `i`.
pub fn pod_name(kvc: &KVCluster, i: u32) -> String {
    format!("{}-{i}", kvc.name_any())
}

/// The cluster name in the ClusterConfig: `<namespace>/<name>`, unique in the Kubernetes cluster,
/// so nodes of two resources never accept each other as peers.
pub fn cluster_name(kvc: &KVCluster) -> String {
    format!("{}/{}", kvc.namespace().unwrap_or_default(), kvc.name_any())
}

#[cfg(test)]
pub(crate) mod fixtures {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    use crate::crd::{Durability, KVCluster, KVClusterSpec, StorageSpec};

    /// A resource as the API server would return it: namespaced, with a uid and a generation.
    pub fn kvc(replicas: u32, n: u32, w: u32, r: u32) -> KVCluster {
        KVCluster {
            metadata: ObjectMeta {
                name: Some("kv".into()),
                namespace: Some("ns".into()),
                uid: Some("uid-1".into()),
                generation: Some(1),
                ..ObjectMeta::default()
            },
            spec: KVClusterSpec {
                replicas,
                replication_factor: n,
                write_quorum: w,
                read_quorum: r,
                partitions: 256,
                image: "kvnode:test".into(),
                image_pull_policy: None,
                storage: StorageSpec {
                    size: Quantity("1Gi".into()),
                    storage_class_name: None,
                },
                resources: None,
                cache_size: Some("64Mi".into()),
                placement: Default::default(),
                node_settings: Default::default(),
                durability: Durability::Periodic,
                auth: Default::default(),
                tls: Default::default(),
                network_policy: Default::default(),
                monitoring: Default::default(),
                backup: None,
                restore_from: None,
            },
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::kvc;
    use super::*;

    #[test]
    fn owned_objects_point_at_the_resource_as_controller() {
        let meta = owned_meta(&kvc(3, 3, 2, 2), "x".into());
        let owners = meta.owner_references.unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "KVCluster");
        assert_eq!(owners[0].api_version, "kvcluster.io/v1alpha1");
        assert_eq!(owners[0].uid, "uid-1");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn names_follow_the_resource() {
        let k = kvc(3, 3, 2, 2);
        assert_eq!(headless_service_name(&k), "kv-headless");
        assert_eq!(configmap_name(&k), "kv-config");
        assert_eq!(pod_name(&k, 4), "kv-4");
        assert_eq!(cluster_name(&k), "ns/kv");
        assert_eq!(
            selector_string(&k),
            "app.kubernetes.io/instance=kv,app.kubernetes.io/name=kvnode"
        );
    }
}
