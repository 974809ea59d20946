//! The two Services: a headless one that gives every pod a stable DNS name (the member addresses),
//! and a client one that balances over ready pods.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    NODE_PORT, PEER_PORT, PEER_PORT_NAME, PORT_NAME, SERVICE_ROLE_LABEL, headless_service_name,
    owned_meta,
};
use crate::crd::KVCluster;

fn port() -> ServicePort {
    named_port(PORT_NAME, NODE_PORT)
}

fn named_port(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(number),
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The headless Service named by the StatefulSet's `serviceName`, with the client and the peer port
/// (peers reach each other by the pods' DNS names under it). It publishes not-ready pods too:
/// a starting node must reach its peers (and they it) before it can report ready, and the
/// operator must reach a new pod's admin routes before it joins the ring.
pub fn headless(kvc: &KVCluster) -> Service {
    let mut metadata = owned_meta(kvc, headless_service_name(kvc));
    metadata
        .labels
        .get_or_insert_default()
        .insert(SERVICE_ROLE_LABEL.into(), "peers".into());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(super::selector_labels(kvc)),
            ports: Some(vec![port(), named_port(PEER_PORT_NAME, PEER_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The client Service, named after the resource: clients reach any ready node, which coordinates
/// or forwards the request.
pub fn client(kvc: &KVCluster) -> Service {
    let mut metadata = owned_meta(kvc, kvc.name_any());
    metadata
        .labels
        .get_or_insert_default()
        .insert(SERVICE_ROLE_LABEL.into(), "client".into());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(super::selector_labels(kvc)),
            ports: Some(vec![port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::kvc;

    #[test]
    fn headless_service_publishes_not_ready_pods() {
        let svc = headless(&kvc(3, 3, 2, 2));
        assert_eq!(svc.metadata.name.as_deref(), Some("kv-headless"));
        let spec = svc.spec.unwrap_or_default();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let selector = spec.selector.unwrap_or_default();
        assert_eq!(
            selector
                .get("app.kubernetes.io/instance")
                .map(String::as_str),
            Some("kv")
        );
        assert_eq!(
            selector.get("app.kubernetes.io/name").map(String::as_str),
            Some("kvnode")
        );
        let ports: Vec<(Option<String>, i32)> = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name, p.port))
            .collect();
        assert_eq!(
            ports,
            [(Some("http".into()), 8080), (Some("peer".into()), 7070)]
        );
    }

    #[test]
    fn client_service_balances_over_ready_pods_only() {
        let svc = client(&kvc(3, 3, 2, 2));
        assert_eq!(svc.metadata.name.as_deref(), Some("kv"));
        let labels = svc.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get(SERVICE_ROLE_LABEL).map(String::as_str),
            Some("client")
        );
        let spec = svc.spec.unwrap_or_default();
        assert_eq!(spec.cluster_ip, None);
        assert_eq!(spec.publish_not_ready_addresses, None);
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let ports = spec.ports.unwrap_or_default();
        assert_eq!(
            ports.len(),
            1,
            "peers are not reachable through the client Service"
        );
        assert_eq!(ports[0].port, 8080);
    }
}
