//! The Prometheus Operator's ServiceMonitor for the client Service, as an untyped object: the
//! operator does not depend on that CRD's types, and applies this only when the
//! `monitoring.coreos.com` API group is served.

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::secret_mounts::{TLS_CA, TlsPort, tls_secret_name};
use super::{PORT_NAME, SERVICE_ROLE_LABEL, owned_meta, selector_labels};
use crate::crd::KVCluster;

/// The ServiceMonitor API group.
pub const GROUP: &str = "monitoring.coreos.com";

/// `monitoring.coreos.com/v1` `ServiceMonitor`.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// A ServiceMonitor scraping `/metrics` of every pod behind the client Service: over https trusting
/// the client certificate's CA when the client port speaks TLS, with a data token when `/metrics`
/// needs one.
pub fn build(kvc: &KVCluster) -> DynamicObject {
    let mut selector = selector_labels(kvc);
    selector.insert(SERVICE_ROLE_LABEL.into(), "client".into());
    let monitoring = &kvc.spec.monitoring;
    let mut endpoint =
        json!({"port": PORT_NAME, "path": kvapi::METRICS, "interval": monitoring.interval});
    if let Some(secret) = tls_secret_name(kvc, TlsPort::Client) {
        endpoint["scheme"] = json!("https");
        endpoint["tlsConfig"] = json!({
            "ca": {"secret": {"name": secret, "key": TLS_CA}},
            // Targets are scraped by pod IP; the certificate names the client Service.
            "serverName": format!("{}.{}.svc", kvc.name_any(), kvc.namespace().unwrap_or_default()),
        });
    }
    let auth = &kvc.spec.auth;
    let token = auth
        .read_token_secret_ref
        .as_ref()
        .or(auth.write_token_secret_ref.as_ref());
    if let (true, Some(token)) = (auth.metrics_need_token, token) {
        endpoint["authorization"] = json!({
            "type": "Bearer",
            "credentials": {"name": token.name, "key": token.key},
        });
    }
    let mut obj = DynamicObject::new(&kvc.name_any(), &api_resource()).data(json!({
        "spec": {
            "selector": {"matchLabels": selector},
            "endpoints": [endpoint],
        }
    }));
    obj.metadata = owned_meta(kvc, kvc.name_any());
    // The user's labels first: the operator's own labels win a clash.
    let labels = obj.metadata.labels.get_or_insert_default();
    for (key, value) in &monitoring.labels {
        labels.entry(key.clone()).or_insert_with(|| value.clone());
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::kvc;
    use crate::crd::{CertificateSource, SecretKeyRef};

    #[test]
    fn scrapes_metrics_of_the_client_service() -> Result<(), serde_json::Error> {
        let sm = serde_json::to_value(build(&kvc(3, 3, 2, 2)))?;
        assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(sm["kind"], "ServiceMonitor");
        assert_eq!(sm["metadata"]["name"], "kv");
        assert_eq!(sm["metadata"]["namespace"], "ns");
        assert_eq!(sm["metadata"]["ownerReferences"][0]["kind"], "KVCluster");
        let labels = &sm["spec"]["selector"]["matchLabels"];
        assert_eq!(labels["kvcluster.io/service"], "client");
        assert_eq!(labels["app.kubernetes.io/instance"], "kv");
        assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
        assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
        assert_eq!(sm["spec"]["endpoints"][0].get("scheme"), None);
        assert_eq!(sm["spec"]["endpoints"][0]["interval"], "30s");
        Ok(())
    }

    #[test]
    fn labels_and_interval_come_from_the_spec() -> Result<(), serde_json::Error> {
        let mut k = kvc(3, 3, 2, 2);
        k.spec.monitoring.labels = [
            ("release".to_string(), "kube-prometheus-stack".to_string()),
            (
                "app.kubernetes.io/instance".to_string(),
                "hijack".to_string(),
            ),
        ]
        .into();
        k.spec.monitoring.interval = "15s".into();
        let sm = serde_json::to_value(build(&k))?;
        assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
        assert_eq!(
            sm["metadata"]["labels"]["app.kubernetes.io/instance"], "kv",
            "the operator's labels win"
        );
        assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
        Ok(())
    }

    #[test]
    fn scrapes_over_https_with_a_read_token_when_asked() -> Result<(), serde_json::Error> {
        let mut k = kvc(3, 3, 2, 2);
        k.spec.tls.client = Some(CertificateSource {
            secret_name: Some("client-certs".into()),
            issuer_ref: None,
        });
        k.spec.auth.read_token_secret_ref = Some(SecretKeyRef {
            name: "readers".into(),
            key: "token".into(),
        });
        let sm = serde_json::to_value(build(&k))?;
        let endpoint = &sm["spec"]["endpoints"][0];
        assert_eq!(endpoint["scheme"], "https");
        assert_eq!(
            endpoint["tlsConfig"]["ca"]["secret"]["name"],
            "client-certs"
        );
        assert_eq!(endpoint["tlsConfig"]["serverName"], "kv.ns.svc");
        assert_eq!(
            endpoint.get("authorization"),
            None,
            "/metrics stays open unless asked"
        );
        k.spec.auth.metrics_need_token = true;
        let sm = serde_json::to_value(build(&k))?;
        let auth = &sm["spec"]["endpoints"][0]["authorization"];
        assert_eq!(auth["credentials"]["name"], "readers");
        Ok(())
    }
}
