//! Every Kubernetes permission the operator needs, in one place. `crdgen` renders it as
//! `operator/rbac.yaml` (a ClusterRole); the Helm chart copies its rules.
//!
//! Least privilege: no wildcards, no `delete` (owner references let the garbage collector remove
//! owned objects), no `pods/exec`, read-only pods, and on Secrets only `create`, for the context key
//! Secret of a new cluster (which the operator never reads back). Reading a Secret (those named in
//! `spec.auth` and `spec.tls`) is a second role, [`secret_reader_role`], bound per namespace.
//! `create` accompanies `patch` where server-side apply may create the object.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::ObjectMeta;

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// The rules, each with why it is needed.
pub fn rules() -> Vec<PolicyRule> {
    vec![
        // Watch the resource, write its status.
        rule("kvcluster.io", &["kvclusters"], &["get", "list", "watch"]),
        rule(
            "kvcluster.io",
            &["kvclusters/status"],
            &["get", "patch", "update"],
        ),
        // Owned objects: watched (Controller::owns) and server-side applied.
        rule(
            "apps",
            &["statefulsets"],
            &["get", "list", "watch", "create", "patch"],
        ),
        rule(
            "",
            &["services", "configmaps"],
            &["get", "list", "watch", "create", "patch"],
        ),
        rule(
            "policy",
            &["poddisruptionbudgets"],
            &["get", "list", "watch", "create", "patch"],
        ),
        // The NetworkPolicy of each cluster (applied, not watched).
        rule(
            "networking.k8s.io",
            &["networkpolicies"],
            &["get", "create", "patch"],
        ),
        // Growing volumes: the claims of a cluster whose storage.size grew.
        rule("", &["persistentvolumeclaims"], &["list", "patch"]),
        // Pod readiness decides when new members join.
        rule("", &["pods"], &["get", "list"]),
        // The context key Secret of a new cluster: created once, never read back.
        rule("", &["secrets"], &["create"]),
        // Events for ring changes (create, and patch for repeated ones).
        rule("events.k8s.io", &["events"], &["create", "patch"]),
        // Leader election (the chart may narrow this to a Role in the operator's namespace).
        rule(
            "coordination.k8s.io",
            &["leases"],
            &["get", "create", "update"],
        ),
        // cert-manager Certificates of clusters whose spec.tls names an issuer.
        rule(
            "cert-manager.io",
            &["certificates"],
            &["get", "create", "patch"],
        ),
        // ServiceMonitors, when the Prometheus Operator's CRD is installed.
        rule(
            "monitoring.coreos.com",
            &["servicemonitors"],
            &["get", "create", "patch"],
        ),
    ]
}

/// The ClusterRole `kvoperator-secret-reader`: `get` on Secrets, granted per namespace by a
/// RoleBinding (never a ClusterRoleBinding), only where a cluster names Secrets in `spec.auth` or
/// `spec.tls`. The operator then reads Secrets of those namespaces only, and of those uses only the
/// ones labelled [`crate::crd::SECRET_OPT_IN_LABEL`].
pub fn secret_reader_role() -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some("kvoperator-secret-reader".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![rule("", &["secrets"], &["get"])]),
        ..ClusterRole::default()
    }
}

/// The ClusterRole `kvoperator`.
pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some("kvoperator".into()),
            ..ObjectMeta::default()
        },
        rules: Some(rules()),
        ..ClusterRole::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_wildcards_no_exec_no_delete_and_secrets_read_only() {
        for r in rules() {
            let groups = r.api_groups.clone().unwrap_or_default();
            let resources = r.resources.clone().unwrap_or_default();
            assert!(!groups.iter().any(|g| g.contains('*')), "{r:?}");
            assert!(
                !resources
                    .iter()
                    .any(|x| x.contains('*') || x == "pods/exec"),
                "{r:?}"
            );
            assert!(
                !r.verbs
                    .iter()
                    .any(|v| v == "*" || v == "delete" || v == "deletecollection"),
                "{r:?}"
            );
            if resources.iter().any(|x| x == "secrets") {
                assert_eq!(r.verbs, ["create"], "no Secret is read cluster-wide: {r:?}");
            }
            if resources.iter().any(|x| x == "pods") {
                assert!(r.verbs.iter().all(|v| v == "get" || v == "list"));
            }
        }
    }

    #[test]
    fn the_secret_reader_only_gets_secrets() {
        let rules = secret_reader_role().rules.unwrap_or_default();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].resources, Some(vec!["secrets".to_string()]));
        assert_eq!(rules[0].verbs, ["get"]);
    }
}
