//! cert-manager `Certificate`s for the ports whose `spec.tls` names an issuer, as untyped objects
//! (the operator does not depend on cert-manager's types). cert-manager writes each into a Secret
//! of the same name, labelled so that the operator may use it, and renews it before it expires;
//! the nodes reload the files when the kubelet refreshes the mount.

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::secret_mounts::{TlsPort, tls_secret_name};
use super::{headless_service_name, owned_meta};
use crate::crd::{KVCluster, SECRET_OPT_IN_LABEL};

/// `cert-manager.io/v1` `Certificate`.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

/// The names the certificate of `port` must hold: every pod under the headless Service (how
/// peers and the operator reach a node), and for the client port the client Service too.
pub fn dns_names(kvc: &KVCluster, port: TlsPort) -> Vec<String> {
    let ns = kvc.namespace().unwrap_or_default();
    let pods = format!("*.{}.{ns}.svc", headless_service_name(kvc));
    let mut names = vec![pods.clone(), format!("{pods}.cluster.local")];
    if port == TlsPort::Client {
        let service = kvc.name_any();
        names.extend([
            service.clone(),
            format!("{service}.{ns}"),
            format!("{service}.{ns}.svc"),
            format!("{service}.{ns}.svc.cluster.local"),
        ]);
    }
    names
}

/// The Certificate of `port`, when its source is an issuer.
pub fn build(kvc: &KVCluster, port: TlsPort) -> Option<DynamicObject> {
    let issuer = port.source(kvc)?.issuer_ref.as_ref()?;
    let name = tls_secret_name(kvc, port)?;
    // Peers present the same certificate as client and as server.
    let usages = match port {
        TlsPort::Peer => json!(["digital signature", "server auth", "client auth"]),
        TlsPort::Client => json!(["digital signature", "server auth"]),
    };
    let mut obj = DynamicObject::new(&name, &api_resource()).data(json!({
        "spec": {
            "secretName": name,
            "secretTemplate": {"labels": {SECRET_OPT_IN_LABEL: "true"}},
            "dnsNames": dns_names(kvc, port),
            "usages": usages,
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
        }
    }));
    obj.metadata = owned_meta(kvc, name);
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::kvc;
    use crate::crd::{CertificateSource, IssuerRef};

    #[test]
    fn an_issuer_gets_a_certificate_naming_every_pod() -> Result<(), serde_json::Error> {
        let mut k = kvc(3, 3, 2, 2);
        assert!(build(&k, TlsPort::Peer).is_none());
        k.spec.tls.peer = Some(CertificateSource {
            secret_name: None,
            issuer_ref: Some(IssuerRef {
                name: "cluster-ca".into(),
                kind: "ClusterIssuer".into(),
                group: "cert-manager.io".into(),
            }),
        });
        k.spec.tls.client = Some(CertificateSource {
            secret_name: Some("mine".into()),
            issuer_ref: None,
        });
        assert!(
            build(&k, TlsPort::Client).is_none(),
            "a Secret of the user's needs no Certificate"
        );
        let cert = serde_json::to_value(build(&k, TlsPort::Peer))?;
        assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
        assert_eq!(cert["metadata"]["name"], "kv-peer-tls");
        assert_eq!(cert["metadata"]["ownerReferences"][0]["kind"], "KVCluster");
        let spec = &cert["spec"];
        assert_eq!(spec["secretName"], "kv-peer-tls");
        assert_eq!(
            spec["secretTemplate"]["labels"]["kvcluster.io/operator-access"],
            "true"
        );
        assert_eq!(spec["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(spec["dnsNames"][0], "*.kv-headless.ns.svc");
        assert!(
            spec["usages"]
                .as_array()
                .is_some_and(|u| u.contains(&json!("client auth")))
        );
        let client = dns_names(&k, TlsPort::Client);
        assert!(client.contains(&"kv.ns.svc".to_string()));
        Ok(())
    }
}
