//! kvoperator: reconciles `KVCluster` resources into running kvcluster rings.
//!
//! - [`crd`]: the resource, its schema and validation rules.
//! - [`builders`]: every owned Kubernetes object as a pure function of the resource.
//! - [`plan`]: the reconciler's decisions as a pure function of what it observed.
//! - [`controller`]: the I/O around them: read the cluster and the nodes, apply, push, report.
//! - [`nodeadmin`], [`addressing`], [`secrets`]: how the operator reaches the nodes.
//! - [`leader`], [`metrics`], [`rbac`]: running it as a (replicated) Deployment.
//! - [`backup_schedule`], [`backup_jobs`]: scheduled backups with retention, and `restoreFrom`.

pub mod addressing;
pub mod backup_jobs;
pub mod backup_schedule;
pub mod builders;
pub mod controller;
pub mod crd;
pub mod generate;
pub mod leader;
pub mod metrics;
pub mod nodeadmin;
pub mod plan;
pub mod rbac;
pub mod secrets;
pub mod status;

/// Everything that can fail in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A value could not be encoded or decoded as JSON.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The resource lacks something the API server always sets (namespace, uid).
    #[error("resource is missing {0}")]
    MissingField(&'static str),
    /// A Secret the resource names is missing, lacks the opt-in label, or lacks a key.
    #[error("secret: {0}")]
    Secret(String),
    /// The address override file could not be read.
    #[error("address override file: {0}")]
    AddressOverride(String),
    /// A config push was refused by every node it reached.
    #[error("config push refused: {0}")]
    Push(String),
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Json(_) => "json",
            Error::MissingField(_) => "missing_field",
            Error::Secret(_) => "secret",
            Error::AddressOverride(_) => "address_override",
            Error::Push(_) => "push",
        }
    }
}
