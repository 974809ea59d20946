//! The Prometheus Operator's ServiceMonitor for the client Service, as an untyped object: the
//! operator does not depend on that CRD's types, and applies this only when the
//! `monitoring.coreos.com` API group is served.

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

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

/// A ServiceMonitor scraping `/metrics` of every pod behind the client Service.
pub fn build(kvc: &KVCluster) -> DynamicObject {
    let mut selector = selector_labels(kvc);
    selector.insert(SERVICE_ROLE_LABEL.into(), "client".into());
    let mut obj = DynamicObject::new(&kvc.name_any(), &api_resource()).data(json!({
        "spec": {
            "selector": {"matchLabels": selector},
            "endpoints": [{"port": PORT_NAME, "path": kvapi::METRICS, "interval": "30s"}],
        }
    }));
    obj.metadata = owned_meta(kvc, kvc.name_any());
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::kvc;

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
        Ok(())
    }
}
