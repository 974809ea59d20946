//! The NetworkPolicy that says who may reach a cluster's pods.
//!
//! - The peer port only from the cluster's own pods: nothing else on the pod network can send a peer
//!   message, even before mutual TLS refuses it.
//! - The client port (data, admin and `/metrics`) from the peers named in `spec.networkPolicy.clientFrom`
//!   (anyone when the list is empty), plus the operator's pods (it drives the admin routes) and, when
//!   `spec.networkPolicy.metricsNamespace` is set, that namespace's Prometheus.
//!
//! A policy selects only this cluster's pods and leaves egress alone.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{NODE_PORT, PEER_PORT, owned_meta, selector_labels};
use crate::crd::KVCluster;

/// Label of the operator's pods (the chart sets it), let through to the client port.
pub const OPERATOR_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "kvoperator");

fn port(number: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(number))),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }
}

fn pods_of(kvc: &KVCluster) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(kvc)),
        ..LabelSelector::default()
    }
}

fn labelled(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([(key.to_string(), value.to_string())].into()),
        ..LabelSelector::default()
    }
}

/// Who may reach the client port: `None` means anyone.
fn client_sources(kvc: &KVCluster) -> Option<Vec<NetworkPolicyPeer>> {
    let spec = &kvc.spec.network_policy;
    if spec.client_from.is_empty() {
        return None;
    }
    let mut from = spec.client_from.clone();
    from.push(NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(labelled(OPERATOR_POD_LABEL.0, OPERATOR_POD_LABEL.1)),
        ..NetworkPolicyPeer::default()
    });
    if let Some(ns) = &spec.metrics_namespace {
        from.push(NetworkPolicyPeer {
            namespace_selector: Some(labelled("kubernetes.io/metadata.name", ns)),
            ..NetworkPolicyPeer::default()
        });
    }
    Some(from)
}

/// The policy of the resource's pods.
pub fn build(kvc: &KVCluster) -> NetworkPolicy {
    NetworkPolicy {
        metadata: owned_meta(kvc, kvc.name_any()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods_of(kvc)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(vec![port(PEER_PORT)]),
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(pods_of(kvc)),
                        ..NetworkPolicyPeer::default()
                    }]),
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![port(NODE_PORT)]),
                    from: client_sources(kvc),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::kvc;

    fn rules(policy: &NetworkPolicy) -> Vec<NetworkPolicyIngressRule> {
        policy
            .spec
            .clone()
            .unwrap_or_default()
            .ingress
            .unwrap_or_default()
    }

    #[test]
    fn the_peer_port_is_open_to_the_cluster_s_own_pods_only() {
        let resource = kvc(3, 3, 2, 2);
        let policy = build(&resource);
        let spec = policy.spec.clone().unwrap_or_default();
        assert_eq!(spec.pod_selector, Some(pods_of(&resource)));
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let peer = &rules(&policy)[0];
        assert_eq!(peer.ports, Some(vec![port(PEER_PORT)]));
        let from = peer.from.clone().unwrap_or_default();
        assert_eq!(from.len(), 1);
        assert_eq!(from[0].pod_selector, Some(pods_of(&resource)));
        assert_eq!(from[0].namespace_selector, None, "same namespace only");
        assert!(policy.metadata.owner_references.is_some());
    }

    #[test]
    fn the_client_port_is_open_to_all_unless_sources_are_named() {
        let mut resource = kvc(3, 3, 2, 2);
        assert_eq!(rules(&build(&resource))[1].from, None);
        resource.spec.network_policy.client_from = vec![NetworkPolicyPeer {
            pod_selector: Some(labelled("role", "app")),
            ..NetworkPolicyPeer::default()
        }];
        resource.spec.network_policy.metrics_namespace = Some("monitoring".into());
        let client = &rules(&build(&resource))[1];
        assert_eq!(client.ports, Some(vec![port(NODE_PORT)]));
        let from = client.from.clone().unwrap_or_default();
        assert_eq!(from.len(), 3, "{from:?}");
        assert_eq!(from[0].pod_selector, Some(labelled("role", "app")));
        assert_eq!(
            from[1].pod_selector,
            Some(labelled("app.kubernetes.io/name", "kvoperator")),
            "the operator keeps its access to the admin routes"
        );
        assert_eq!(
            from[2].namespace_selector,
            Some(labelled("kubernetes.io/metadata.name", "monitoring"))
        );
    }
}
