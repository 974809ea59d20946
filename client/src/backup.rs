//! Cluster backups and restores, driven from outside the cluster: what `kvctl backup create` and
//! `kvctl backup restore` do, and what kvoperator does on a schedule and for `spec.restoreFrom`.
//!
//! [`create`] records the start time, holds hint delivery everywhere, asks every member of the
//! cluster config to back itself up into the target, and writes the cluster manifest only when
//! all of them succeeded: a backup without one is incomplete and never restored. [`restore`] hands
//! each backed-up node's checkpoint to a member of the current cluster (any size), which merges its
//! records and hints into their current replicas. The nodes reach the target with their own
//! settings (`--backup-endpoint`, `AWS_*`); the caller passes the store it opened itself.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kvapi::{BackupReport, BackupRequest, RestoreReport, RestoreRequest};
use kvbackup::manifest::{ClusterManifest, FORMAT, NodeManifest};
use kvbackup::object_store::ObjectStore;
use kvbackup::{target, transfer};
use tokio::task::JoinSet;

use crate::{Client, Error};

/// Why a cluster backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The cluster could not be asked (its config, a member's address).
    #[error(transparent)]
    Node(#[from] Error),
    /// The target refused, or an object is missing or corrupt.
    #[error(transparent)]
    Store(#[from] kvbackup::Error),
    /// Some members or checkpoints failed (each reported to the progress callback); the message
    /// says how many of what.
    #[error("{0}")]
    Members(String),
}

/// Where a cluster backup is to go.
#[derive(Clone)]
pub struct Target {
    /// The URL the nodes open (`file:///dir`, `s3://bucket/prefix`).
    pub url: String,
    /// The same target as the caller opened it: the cluster manifest is written there.
    pub store: Arc<dyn ObjectStore>,
}

/// The id of a backup started at `at` when none is given: `2026-11-28T203000Z`.
pub fn default_id(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace(':', "")
}

/// Backs up every member of the cluster `client` reaches into `target` as backup `id`, giving each
/// member `timeout` to upload; `on_member` hears each member's outcome as it comes, and a member
/// whose hint delivery could not be resumed afterwards (it resumes by itself when the hold ends).
/// Returns the cluster manifest written last.
///
/// Every write acknowledged before this is called is in the backup once it returns `Ok`.
pub async fn create(
    client: &Client,
    target: &Target,
    id: &str,
    timeout: Duration,
    mut on_member: impl FnMut(&str, &Result<BackupReport, Error>),
    mut on_resume_failed: impl FnMut(&str, &Error),
) -> Result<ClusterManifest, BackupError> {
    // The start is recorded before any member is asked: every write acknowledged before it is on W
    // replicas (or on a fallback's hints) before that member's checkpoint.
    let started_at = SystemTime::now();
    target::check_name("backup id", id)?;
    let config = client.cluster().await?;
    let members = config
        .members
        .iter()
        .map(|m| Ok((m.id.clone(), client.at(&m.address)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    // Hold hint delivery everywhere before any checkpoint, so no hint moves from a fallback that
    // has not checkpointed yet to an owner that already has. The hold ends by itself if the caller
    // dies; it is released below either way.
    let hold_millis = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(60_000);
    let failed = match hold_handoff(&members, hold_millis).await {
        Ok(()) => backup_all(&members, &target.url, id, timeout, &mut on_member).await,
        Err((member, e)) => {
            on_member(member.as_str(), &Err(e));
            1
        }
    };
    if let Err((member, e)) = hold_handoff(&members, 0).await {
        on_resume_failed(member.as_str(), &e);
    }
    if failed > 0 {
        return Err(BackupError::Members(format!(
            "{failed} of {} members failed to back up: backup {id} is incomplete (no cluster manifest)",
            config.members.len()
        )));
    }
    let mut nodes = Vec::with_capacity(config.members.len());
    for member in &config.members {
        let path = target::node_manifest(id, &member.id);
        let node: NodeManifest = transfer::get_json(target.store.as_ref(), &path).await?;
        if node.epoch != config.epoch {
            return Err(BackupError::Members(format!(
                "the cluster config changed during the backup ({} checkpointed at epoch {}, the \
                 backup started at {}): backup {id} is incomplete, take another",
                node.node_id, node.epoch, config.epoch
            )));
        }
        nodes.push(node);
    }
    let manifest = ClusterManifest {
        format: FORMAT,
        backup_id: id.to_owned(),
        cluster: config.cluster.clone(),
        started_unix_ms: unix_ms(started_at),
        finished_unix_ms: unix_ms(SystemTime::now()),
        members: config.members.iter().map(|m| m.id.clone()).collect(),
        nodes,
    };
    transfer::put_json(
        target.store.as_ref(),
        &target::cluster_manifest(id),
        &manifest,
    )
    .await?;
    Ok(manifest)
}

/// Holds (or with 0, resumes) hint delivery on every member, trying each even when one fails, and
/// returns the first failure.
async fn hold_handoff(members: &[(String, Client)], millis: u64) -> Result<(), (String, Error)> {
    let mut first = None;
    for (id, node) in members {
        if let Err(e) = node.hold_handoff(millis).await {
            first.get_or_insert((id.clone(), e));
        }
    }
    first.map_or(Ok(()), Err)
}

/// Asks every member to back up, reports each outcome and returns how many failed.
async fn backup_all(
    members: &[(String, Client)],
    url: &str,
    id: &str,
    timeout: Duration,
    on_member: &mut impl FnMut(&str, &Result<BackupReport, Error>),
) -> usize {
    let mut tasks = JoinSet::new();
    for (member, node) in members {
        let request = BackupRequest {
            target: url.to_owned(),
            backup_id: id.to_owned(),
        };
        let (member, node) = (member.clone(), node.clone());
        tasks.spawn(async move { (member, node.backup(&request, timeout).await) });
    }
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        let (member, outcome) =
            joined.unwrap_or_else(|e| ("?".into(), Err(Error::InvalidResponse(e.to_string()))));
        if outcome.is_err() {
            failed += 1;
        }
        on_member(member.as_str(), &outcome);
    }
    failed
}

/// What a whole restore merged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreTotals {
    /// Checkpoints restored.
    pub checkpoints: u64,
    /// Records merged.
    pub records: u64,
    /// Hints merged.
    pub hints: u64,
    /// Replica merges that changed data (0 when restoring again).
    pub changed: u64,
}

/// One checkpoint's restore: `(backed-up node, current member it went through, outcome)`.
pub type CheckpointOutcome<'a> = (&'a str, &'a str, &'a Result<RestoreReport, Error>);

/// Reads the cluster manifest of backup `id`: a missing one is named as such (the backup is absent
/// or incomplete).
pub async fn manifest(store: &dyn ObjectStore, id: &str) -> Result<ClusterManifest, BackupError> {
    target::check_name("backup id", id)?;
    let path = target::cluster_manifest(id);
    transfer::get_json(store, &path).await.map_err(|e| match e {
        kvbackup::Error::Missing(_) => BackupError::Store(kvbackup::Error::Missing(format!(
            "{path} (backup {id} is absent or incomplete)"
        ))),
        other => BackupError::Store(other),
    })
}

/// Merges complete backup `manifest`, in `url`, into the cluster `client` reaches, each member
/// restoring its share of the checkpoints one at a time (`timeout` each); `on_checkpoint` hears
/// each outcome as it comes.
///
/// Each record keeps its full causal history, so restoring twice, or onto live data, loses nothing
/// and invents nothing.
pub async fn restore(
    client: &Client,
    url: &str,
    manifest: &ClusterManifest,
    timeout: Duration,
    mut on_checkpoint: impl FnMut(CheckpointOutcome<'_>),
) -> Result<RestoreTotals, BackupError> {
    let config = client.cluster().await?;
    if config.members.is_empty() {
        return Err(BackupError::Store(kvbackup::Error::BadTarget(
            "the cluster to restore into has no members".into(),
        )));
    }
    // A node runs one backup or restore at a time: each member takes its share in turn.
    let mut shares: Vec<Vec<String>> = vec![Vec::new(); config.members.len()];
    for (i, node) in manifest.nodes.iter().enumerate() {
        shares[i % config.members.len()].push(node.node_id.clone());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for (member, share) in config.members.iter().zip(shares) {
        let node = client.at(&member.address)?;
        let (through, url, id, tx) = (
            member.id.clone(),
            url.to_owned(),
            manifest.backup_id.clone(),
            tx.clone(),
        );
        tasks.spawn(async move {
            for source in share {
                let request = RestoreRequest {
                    target: url.clone(),
                    backup_id: id.clone(),
                    node_id: source.clone(),
                };
                let outcome = node.restore(&request, timeout).await;
                let _ = tx.send((source, through.clone(), outcome));
            }
        });
    }
    drop(tx);
    let (mut totals, mut failed) = (RestoreTotals::default(), 0);
    while let Some((source, through, outcome)) = rx.recv().await {
        match &outcome {
            Ok(r) => {
                totals.checkpoints += 1;
                totals.records += r.records;
                totals.hints += r.hints;
                totals.changed += r.changed;
            }
            Err(_) => failed += 1,
        }
        on_checkpoint((source.as_str(), through.as_str(), &outcome));
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            return Err(BackupError::Members(format!("a restore task failed: {e}")));
        }
    }
    if failed > 0 {
        return Err(BackupError::Members(format!(
            "{failed} of {} checkpoints failed to restore",
            manifest.nodes.len()
        )));
    }
    Ok(totals)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `12.3 MiB`.
pub fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
