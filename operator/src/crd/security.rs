//! The security parts of a KVCluster's spec: bearer tokens (`spec.auth`) and TLS (`spec.tls`),
//! both from Secrets that carry the operator's opt-in label.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The nodes' bearer tokens. Every Secret named here must carry the label
/// `kvcluster.io/operator-access=true`: the operator mounts nothing else into pods.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.metricsNeedToken || has(self.readTokenSecretRef) || has(self.writeTokenSecretRef)",
     "message": "metricsNeedToken needs readTokenSecretRef or writeTokenSecretRef: Prometheus sends one of those tokens"},
]))]
pub struct AuthSpec {
    /// Token(s) of the admin routes (and every other route). The operator reads this Secret and
    /// sends its first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_secret_ref: Option<SecretKeyRef>,
    /// Read-only data tokens: with this or `writeTokenSecretRef`, the data routes need a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_token_secret_ref: Option<SecretKeyRef>,
    /// Read-write data tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_token_secret_ref: Option<SecretKeyRef>,
    /// Whether `/metrics` needs a token too. The ServiceMonitor then sends the first read token
    /// (or write token), so one of them must be set.
    #[serde(default)]
    pub metrics_need_token: bool,
}

/// TLS of the nodes' two ports.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Mutual TLS between nodes on the peer port: each node presents this certificate and trusts
    /// only its `ca.crt`. It must name every pod: `*.<name>-headless.<namespace>.svc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<CertificateSource>,
    /// TLS on the client port (data, admin, metrics). The operator then speaks HTTPS to the nodes
    /// and trusts only its `ca.crt`. It must name every pod as above, and clients' names for the
    /// client Service (`<name>.<namespace>.svc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<CertificateSource>,
}

/// Where a certificate comes from: a Secret you keep, or cert-manager.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.secretName) != has(self.issuerRef)",
     "message": "set exactly one of secretName and issuerRef"},
]))]
pub struct CertificateSource {
    /// A Secret with `tls.crt`, `tls.key` and `ca.crt` (the layout of cert-manager and of
    /// `kubernetes.io/tls` Secrets), labelled `kvcluster.io/operator-access=true`. Rotating it reaches
    /// running nodes without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// Let cert-manager issue it: the operator creates a `Certificate` named
    /// `<name>-peer-tls` or `<name>-client-tls` (its Secret has the same name) from this issuer,
    /// which must put `ca.crt` in the Secret (a CA issuer does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

/// A cert-manager issuer.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The issuer's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (in the cluster's namespace) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    #[schemars(extend("enum" = ["Issuer", "ClusterIssuer"]))]
    pub kind: String,
    /// The issuer's API group.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// The label a Secret named in a KVCluster must carry (value `true`) before the operator reads it or
/// mounts it into pods. Without the opt-in, anyone allowed to create a KVCluster could have any
/// Secret of the namespace mounted into pods of an image of their choosing.
pub const SECRET_OPT_IN_LABEL: &str = "kvcluster.io/operator-access";

/// One key of a Secret in the resource's namespace.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".into()
}
