//! Backups of a KVCluster: `spec.backup` (a schedule with retention) and `spec.restoreFrom` (a
//! backup merged into the cluster once its ring first settles), and what the operator reports of
//! both in `status.backup` and `status.restore`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// CEL rule of a target URL: what kvbackup opens.
pub const TARGET_RULE: &str =
    "self.startsWith('file:///') || self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')";
/// The API server's message when [`TARGET_RULE`] fails.
pub const TARGET_MESSAGE: &str = "target must be s3://bucket[/prefix] or file:///absolute/dir";
/// CEL rule of the spec: the nodes have one set of S3 settings, so a backup schedule and a
/// restore share them.
// Field by field: CEL has no `==` between two object types of the schema.
pub const SHARED_S3_RULE: &str = "!has(self.backup) || !has(self.restoreFrom) || \
    ((has(self.backup.s3.endpoint) ? self.backup.s3.endpoint : '') == (has(self.restoreFrom.s3.endpoint) ? self.restoreFrom.s3.endpoint : '') \
    && (has(self.backup.s3.region) ? self.backup.s3.region : '') == (has(self.restoreFrom.s3.region) ? self.restoreFrom.s3.region : '') \
    && (has(self.backup.s3.credentialsSecret) ? self.backup.s3.credentialsSecret : '') == (has(self.restoreFrom.s3.credentialsSecret) ? self.restoreFrom.s3.credentialsSecret : ''))";
/// The API server's message when [`SHARED_S3_RULE`] fails.
pub const SHARED_S3_MESSAGE: &str = "backup.s3 and restoreFrom.s3 must be the same: every node has one S3 endpoint, region and credentials";
/// Key of the access key id in the credentials Secret (also the nodes' variable).
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// Key of the secret access key in the credentials Secret (also the nodes' variable).
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";

/// Scheduled backups of the whole cluster into object storage.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When to back up, in UTC: a cron pattern of 5 fields (`0 3 * * *`: every day at 03:00) or 6
    /// with seconds first. A slot missed while the operator was down runs once when it is back.
    #[schemars(regex(pattern = r"^\S+(\s+\S+){4,5}$"), length(max = 128))]
    pub schedule: String,
    /// Where: `s3://bucket/prefix` or `file:///dir` (a directory every node and the operator
    /// share).
    #[schemars(length(min = 8, max = 1024), extend("x-kubernetes-validations" = [
        {"rule": TARGET_RULE, "message": TARGET_MESSAGE}
    ]))]
    pub target: String,
    /// How an `s3://` target is reached.
    #[serde(default)]
    pub s3: S3Spec,
    /// Complete backups kept in the target; the operator deletes older ones (of any origin) after
    /// each scheduled backup that succeeds.
    #[serde(default = "default_retention")]
    #[schemars(range(min = 1, max = 1000))]
    pub retention: u32,
    /// Most bytes per second each node uploads (or downloads, restoring), such as `64Mi`: the
    /// node's `--backup-rate`. Left out: the node's default, which keeps the p99 of client
    /// requests within 2x of its unloaded value (docs/benchmarks.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,9}(Ki|Mi|Gi)?$"))]
    pub rate: Option<String>,
}

fn default_retention() -> u32 {
    7
}

/// A backup the cluster is filled from, once, when its ring first settles.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// Where the backup is, as in `spec.backup.target`.
    #[schemars(length(min = 8, max = 1024), extend("x-kubernetes-validations" = [
        {"rule": TARGET_RULE, "message": TARGET_MESSAGE}
    ]))]
    pub target: String,
    /// The backup's id (`kvctl backup list`, or another cluster's `status.backup`).
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub backup_id: String,
    /// How an `s3://` target is reached.
    #[serde(default)]
    pub s3: S3Spec,
}

/// How the nodes and the operator reach an S3-compatible target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Endpoint of an S3-compatible server (`http://minio.storage:9000`); AWS when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]{1,1000}$"))]
    pub endpoint: Option<String>,
    /// The bucket's region (`us-east-1` when left out and not in the environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9-]{1,64}$"))]
    pub region: Option<String>,
    /// A Secret with the keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, labelled
    /// `kvcluster.io/operator-access=true`: the nodes get exactly those two as environment
    /// variables, and the operator reads them to write manifests and delete old backups. Left
    /// out: the ambient credentials of the pods (and of the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
}

/// What the operator last did on `spec.backup`'s schedule.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The schedule's slot the last backup started for (recorded before it starts, so a slot runs
    /// at most once, whatever restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The last backup that completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful: Option<BackupRecord>,
    /// The last failure: of a backup, of retention, or what keeps backups from starting (a
    /// refused Secret, a bad schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<BackupFailure>,
}

/// A complete backup.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// Its id in the target.
    pub id: String,
    /// When its cluster manifest was written.
    pub completion_time: Time,
    /// Bytes of all its checkpoints.
    pub bytes: u64,
    /// Seconds it took.
    pub seconds: u64,
}

/// A failure, with what it concerned.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupFailure {
    /// The backup, when one had started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When.
    pub time: Time,
    /// What went wrong.
    pub message: String,
}

/// Where `spec.restoreFrom` stands.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// The backup restored.
    pub backup_id: String,
    /// Its target.
    pub target: String,
    /// `Running`, `Succeeded` (never run again for this backup and target) or `Failed`.
    pub phase: RestorePhase,
    /// Checkpoints merged so far, of `checkpointsTotal`.
    #[serde(default)]
    pub checkpoints_done: u64,
    /// Checkpoints in the backup (0 before its manifest was read).
    #[serde(default)]
    pub checkpoints_total: u64,
    /// Records merged so far.
    #[serde(default)]
    pub records: u64,
    /// What happened last (the error, when `Failed`).
    #[serde(default)]
    pub message: String,
    /// When the restore (last) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// The phases of a restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum RestorePhase {
    /// Checkpoints are being merged.
    Running,
    /// Every checkpoint was merged.
    Succeeded,
    /// It stopped: the message says why. The operator tries again after a while.
    Failed,
}
