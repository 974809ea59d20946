//! Restoring one node's checkpoint: download and verify it, then merge every record and hint into
//! the key's current replicas, page by page.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kvbackup::manifest::NodeManifest;
use kvbackup::object_store::ObjectStore;
use kvbackup::target;
use kvbackup::transfer::{self, RateLimit};

use super::{Backups, io_error};
use crate::causality::SiblingSet;
use crate::error::Error;
use crate::ring::partition_of;
use crate::rpc::{RequestBody, ResponseBody};
use crate::storage::snapshot::{Snapshot, Source};

/// Encoded bytes of states read and sent at a time.
const PAGE_BYTES: usize = 1024 * 1024;
/// Time one replica gets to merge one batch.
const MERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Downloads the checkpoint into `dir`, verifies it and merges it into the cluster.
pub(super) async fn run(
    backups: &Backups,
    store: &dyn ObjectStore,
    request: &kvapi::RestoreRequest,
    dir: &Path,
) -> Result<kvapi::RestoreReport, Error> {
    let started = Instant::now();
    let manifest: NodeManifest = transfer::get_json(
        store,
        &target::node_manifest(&request.backup_id, &request.node_id),
    )
    .await?;
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let mut limit = RateLimit::new(backups.settings.bytes_per_second);
    for file in &manifest.files {
        target::check_name("checkpoint file", &file.name)?;
        let from = target::node_file(&request.backup_id, &request.node_id, &file.name);
        transfer::download_verified(store, &from, file, &dir.join(&file.name), &mut limit).await?;
    }
    let snapshot = {
        let dir = dir.to_path_buf();
        Arc::new(tokio::task::spawn_blocking(move || Snapshot::open(&dir)).await??)
    };
    let mut report = kvapi::RestoreReport {
        node_id: request.node_id.clone(),
        records: 0,
        hints: 0,
        changed: 0,
        bytes: manifest.bytes(),
        millis: 0,
    };
    for source in [Source::Records, Source::Hints] {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = {
                let snapshot = snapshot.clone();
                tokio::task::spawn_blocking(move || {
                    snapshot.page(source, after.as_deref(), PAGE_BYTES)
                })
                .await??
            };
            let count = page.states.len() as u64;
            report.changed += merge_into_replicas(backups, page.states).await?;
            match source {
                Source::Records => report.records += count,
                Source::Hints => report.hints += count,
            }
            tracing::info!(backup = %request.backup_id, node = %request.node_id,
                records = report.records, hints = report.hints, "restore progress");
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Merges `states` into every current owner of their keys (this node directly, others with the
/// replicas' batch merge) and returns how many merges changed a replica. Every owner must take
/// every batch: a restore that skipped a replica would leave the data with fewer copies.
async fn merge_into_replicas(
    backups: &Backups,
    states: Vec<(Vec<u8>, SiblingSet)>,
) -> Result<u64, Error> {
    let view = backups.membership.view();
    let mut by_partition: BTreeMap<u16, Vec<(Vec<u8>, SiblingSet)>> = BTreeMap::new();
    for (key, set) in states {
        by_partition
            .entry(partition_of(&key, view.ring.partitions()))
            .or_default()
            .push((key, set));
    }
    let me = backups.membership.node_id();
    let mut merges = Vec::new();
    for (partition, records) in by_partition {
        for owner in view.owners(partition) {
            let records = records.clone();
            merges.push(async move {
                if owner == me {
                    return backups.replica.merge_many(partition, records).await;
                }
                let body = RequestBody::MergeBatch { partition, records };
                match backups.rpc.call(&owner, body, MERGE_TIMEOUT).await {
                    Ok(ResponseBody::Changed(n)) => Ok(n),
                    Ok(other) => Err(other.unexpected()),
                    Err(e) => Err(Error::Unavailable(format!(
                        "replica {owner} did not take restored records of partition {partition}: {e}"
                    ))),
                }
            });
        }
    }
    let mut changed = 0;
    for outcome in join_all(merges).await {
        changed += outcome?;
    }
    Ok(changed)
}
