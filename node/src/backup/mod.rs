//! Backups of this node to object storage, and restores of any node's backup into the cluster.
//!
//! A backup ([`Backups::take`]) checkpoints the store (records, hints and metadata at one instant),
//! uploads every file of the checkpoint with its SHA-256 under the `--backup-rate` limit, writes the
//! node's manifest last and deletes the checkpoint. A restore ([`restore`]) downloads one node's
//! checkpoint, verifies every file, and merges every record and hint into the key's current
//! replicas with the replicas' own merge, so it can neither lose nor invent a write. One backup or
//! restore runs at a time per node.

mod restore;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kvbackup::manifest::{FORMAT, NodeManifest};
use kvbackup::target::{self, S3Settings};
use kvbackup::transfer::{self, RateLimit};

use crate::error::Error;
use crate::membership::Membership;
use crate::replica::Replica;
use crate::transport::Peers;

/// Where backups go and how fast.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The node's data directory: checkpoints and downloads live under it while they are needed.
    pub data_dir: PathBuf,
    /// S3 endpoint and such.
    pub s3: S3Settings,
    /// Most bytes per second a backup uploads or a restore downloads (0: no limit).
    pub bytes_per_second: u64,
}

/// Backups of this node and restores through it.
pub struct Backups {
    settings: Settings,
    replica: Arc<Replica>,
    membership: Arc<Membership>,
    rpc: Arc<dyn Peers>,
    busy: tokio::sync::Mutex<()>,
}

impl Backups {
    /// Backups of `replica`'s data, restores through `rpc` to the members `membership` names.
    pub fn new(
        settings: Settings,
        replica: Arc<Replica>,
        membership: Arc<Membership>,
        rpc: Arc<dyn Peers>,
    ) -> Self {
        remove_leftovers(&settings.data_dir);
        Backups {
            settings,
            replica,
            membership,
            rpc,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Checkpoints this node's store and uploads it to `request.target` as its part of backup
    /// `request.backup_id`.
    pub async fn take(&self, request: kvapi::BackupRequest) -> Result<kvapi::BackupReport, Error> {
        target::check_name("backup id", &request.backup_id)?;
        let store = target::open(&request.target, &self.settings.s3)?;
        let _busy = self.lock()?;
        let started = Instant::now();
        let node_id = self.membership.node_id().to_string();
        let dir = self.scratch(&format!("backup-{}", request.backup_id))?;
        let view = self.membership.view();
        if view.config.in_transition() {
            // Data is moving between owners: a checkpoint now may miss what is in flight.
            return Err(Error::TransitionInProgress(format!(
                "epoch {} is a membership change in progress; back up once it settles",
                view.config.epoch
            )));
        }
        let checkpoint_unix_ms = unix_ms();
        let checkpoint = dir.clone();
        self.replica
            .with_storage(move |s| s.checkpoint(&checkpoint))
            .await?;
        let uploaded = self
            .upload(store.as_ref(), &dir, &request.backup_id, &node_id)
            .await;
        remove(&dir);
        let files = uploaded?;
        let manifest = NodeManifest {
            format: FORMAT,
            backup_id: request.backup_id.clone(),
            node_id: node_id.clone(),
            incarnation: self.replica.storage().incarnation(),
            epoch: view.config.epoch,
            partitions: view.ring.partitions(),
            checkpoint_unix_ms,
            files,
        };
        let path = target::node_manifest(&request.backup_id, &node_id);
        transfer::put_json(store.as_ref(), &path, &manifest).await?;
        let report = kvapi::BackupReport {
            node_id,
            manifest: path.to_string(),
            files: manifest.files.len() as u64,
            bytes: manifest.bytes(),
            millis: started.elapsed().as_millis() as u64,
        };
        tracing::info!(backup = %request.backup_id, files = report.files, bytes = report.bytes,
            millis = report.millis, "backup uploaded");
        Ok(report)
    }

    /// Merges node `request.node_id`'s checkpoint of backup `request.backup_id` into the cluster.
    pub async fn restore(
        &self,
        request: kvapi::RestoreRequest,
    ) -> Result<kvapi::RestoreReport, Error> {
        target::check_name("backup id", &request.backup_id)?;
        target::check_name("node id", &request.node_id)?;
        let store = target::open(&request.target, &self.settings.s3)?;
        let _busy = self.lock()?;
        let dir = self.scratch(&format!(
            "restore-{}-{}",
            request.backup_id, request.node_id
        ))?;
        let outcome = restore::run(self, store.as_ref(), &request, &dir).await;
        remove(&dir);
        outcome
    }

    /// Uploads every file of checkpoint `dir` and returns their manifest entries.
    async fn upload(
        &self,
        store: &dyn kvbackup::object_store::ObjectStore,
        dir: &Path,
        backup_id: &str,
        node_id: &str,
    ) -> Result<Vec<kvbackup::manifest::FileEntry>, Error> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
            let entry = entry.map_err(|e| io_error(dir, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        let mut limit = RateLimit::new(self.settings.bytes_per_second);
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let to = target::node_file(backup_id, node_id, &name);
            files.push(
                transfer::upload_file(store, &dir.join(&name), &to, &name, &mut limit).await?,
            );
        }
        Ok(files)
    }

    fn lock(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, Error> {
        self.busy.try_lock().map_err(|_| {
            Error::Unavailable("a backup or restore is already running on this node".into())
        })
    }

    /// A fresh, empty path `name` under the data directory (a leftover of a crash is removed).
    fn scratch(&self, name: &str) -> Result<PathBuf, Error> {
        let dir = self.settings.data_dir.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        }
        Ok(dir)
    }
}

/// Removes the checkpoints and downloads a crash left in the data directory.
fn remove_leftovers(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("backup-") || name.starts_with("restore-") {
            remove(&entry.path());
        }
    }
}

fn remove(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a backup's scratch directory");
    }
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Internal(format!("{}: {e}", path.display()))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
