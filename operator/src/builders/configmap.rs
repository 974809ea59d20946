//! The ConfigMap holding `cluster.json`, the config a node starts from.
//!
//! It carries the ring the nodes follow (the highest epoch the operator has seen), never the desired
//! one: a node that starts reads it, and the node keeps whichever of the file and its persisted
//! config has the higher epoch. Writing a not-yet-pushed membership here would let a new pod start
//! with a ring nobody else has, skipping the transition.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kvapi::ClusterConfig;

use super::{CLUSTER_JSON, configmap_name, owned_meta};
use crate::crd::KVCluster;

/// The ConfigMap with `config` as `cluster.json`.
pub fn build(kvc: &KVCluster, config: &ClusterConfig) -> Result<ConfigMap, serde_json::Error> {
    let json = serde_json::to_string_pretty(config)?;
    Ok(ConfigMap {
        metadata: owned_meta(kvc, configmap_name(kvc)),
        data: Some(BTreeMap::from([(CLUSTER_JSON.to_string(), json)])),
        ..ConfigMap::default()
    })
}

/// The config stored in a ConfigMap built by [`build`], if it holds a readable one.
pub fn stored_config(cm: &ConfigMap) -> Option<ClusterConfig> {
    let json = cm.data.as_ref()?.get(CLUSTER_JSON)?;
    serde_json::from_str(json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::kvc;
    use kvapi::Member;

    #[test]
    fn holds_the_config_as_cluster_json_and_reads_it_back() -> Result<(), serde_json::Error> {
        let config = ClusterConfig {
            cluster: "ns/kv".into(),
            epoch: 7,
            members: vec![Member {
                id: "kv-0".into(),
                address: "kv-0.kv-headless.ns.svc:8080".into(),
                peer_address: "kv-0.kv-headless.ns.svc:7070".into(),
            }],
            n: 1,
            w: 1,
            r: 1,
            partitions: 256,
            vnodes: 64,
            sloppy_quorum: true,
            transition_from: None,
        };
        let cm = build(&kvc(1, 1, 1, 1), &config)?;
        assert_eq!(cm.metadata.name.as_deref(), Some("kv-config"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("ns"));
        let data = cm.data.clone().unwrap_or_default();
        assert_eq!(data.keys().collect::<Vec<_>>(), vec!["cluster.json"]);
        assert_eq!(stored_config(&cm), Some(config));
        Ok(())
    }

    #[test]
    fn an_unreadable_config_is_none() {
        let cm = ConfigMap {
            data: Some(BTreeMap::from([(
                CLUSTER_JSON.to_string(),
                "{".to_string(),
            )])),
            ..ConfigMap::default()
        };
        assert_eq!(stored_config(&cm), None);
        assert_eq!(stored_config(&ConfigMap::default()), None);
    }
}
