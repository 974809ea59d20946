//! The I/O of scheduled backups and of `spec.restoreFrom`: the reconciler asks [`reconcile`] what
//! is due ([`crate::backup_schedule`] decides), and a due backup or restore runs as a job in the
//! background, one per cluster at a time, through [`kvclient::backup`] (what `kvctl backup`
//! runs).
//!
//! Jobs write `status.backup` and `status.restore` with merge patches under their own field
//! manager, so the reconciler's status apply never removes them. A backup first records its slot
//! in `status.backup.lastScheduleTime` with the resourceVersion it read the cluster at: of two
//! operators that both decided to run a slot, only one can record it, and a slot recorded is
//! never run again. Jobs stop when this replica stops leading ([`Jobs::abort_all`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use kvbackup::object_store::ObjectStore;
use kvbackup::target::{self, Credentials, S3Settings};
use kvbackup::transfer;
use kvclient::backup::{self, BackupError, mebibytes};
use serde_json::{Value, json};
use tokio::task::AbortHandle;
use tracing::{info, warn};

use crate::backup_schedule::{self as schedule, Listed, Slot};
use crate::crd::{KVCluster, Phase, S3Spec};
use crate::nodeadmin::NodeAccess;
use crate::plan::{Plan, PodView};

/// Field manager of the jobs' status writes.
const FIELD_MANAGER: &str = "kvoperator-backup";
/// Timeout of the small calls a job makes to the nodes (config, holds).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a member may take to upload its checkpoint, or to restore one.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// The jobs running in this replica, one per cluster.
#[derive(Default)]
pub struct Jobs {
    running: Mutex<HashMap<ObjectRef<KVCluster>, AbortHandle>>,
}

impl Jobs {
    fn busy(&self, key: &ObjectRef<KVCluster>) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.get(key).is_some_and(|h| !h.is_finished())
    }

    fn spawn(
        &self,
        key: ObjectRef<KVCluster>,
        job: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let handle = tokio::spawn(job).abort_handle();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|_, h| !h.is_finished());
        running.insert(key, handle);
    }

    /// Stops every job (leadership lost, or shutting down).
    pub fn abort_all(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for (_, handle) in running.drain() {
            handle.abort();
        }
    }
}

/// What a job needs of the reconcile that started it.
#[derive(Clone)]
pub struct JobContext {
    /// The Kubernetes client.
    pub client: Client,
    /// Records the jobs' events.
    pub recorder: Recorder,
}

/// Everything a job needs to reach the cluster and the target.
struct Reach {
    ctx: JobContext,
    kvc: Arc<KVCluster>,
    ns: String,
    node: kvclient::Client,
    key: Option<Credentials>,
}

impl Reach {
    fn store(&self, url: &str, s3: &S3Spec) -> Result<Arc<dyn ObjectStore>, kvbackup::Error> {
        target::open(
            url,
            &S3Settings {
                endpoint: s3.endpoint.clone(),
                region: s3.region.clone(),
                credentials: self.key.clone(),
            },
        )
    }

    fn api(&self) -> Api<KVCluster> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    /// Merges `status` into the cluster's status, only if the cluster is still at
    /// `resource_version` when one is given.
    async fn patch_status(
        &self,
        status: Value,
        resource_version: Option<String>,
    ) -> Result<(), kube::Error> {
        let mut patch = json!({ "status": status });
        if let Some(rv) = resource_version {
            patch["metadata"] = json!({ "resourceVersion": rv });
        }
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        self.api()
            .patch_status(&self.kvc.name_any(), &pp, &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }

    /// Best effort: a lost status write shows as a stale status, never as a second run.
    async fn report(&self, status: Value) {
        if let Err(e) = self.patch_status(status, None).await {
            warn!(name = %self.kvc.name_any(), error = %e, "cannot write the backup status");
        }
    }

    async fn event(&self, reason: &str, note: String, warning: bool) {
        publish(&self.ctx.recorder, &self.kvc, reason, note, warning).await;
    }
}

async fn publish(recorder: &Recorder, kvc: &KVCluster, reason: &str, note: String, warning: bool) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: "Backup".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &kvc.object_ref(&())).await {
        warn!(%reason, error = %e, "could not record event");
    }
}

fn failure(id: Option<&str>, message: &str) -> Value {
    json!({ "lastFailure": {
        "id": id, "time": schedule::to_time(Utc::now()), "message": message,
    }})
}

/// Reports what keeps backups (and, with `restore_too`, the restore) from starting: a refused
/// credentials Secret, a bad schedule. Once per message, in `status.backup.lastFailure` and
/// `status.restore`, with a Warning event.
pub async fn report_blocked(
    ctx: &JobContext,
    kvc: &KVCluster,
    ns: &str,
    message: &str,
    restore_too: bool,
) {
    let status = kvc.status.as_ref();
    let mut patch = json!({});
    if kvc.spec.backup.is_some()
        && status
            .and_then(|s| s.backup.as_ref())
            .and_then(|b| b.last_failure.as_ref())
            .is_none_or(|f| f.message != message)
    {
        patch["backup"] = failure(None, message);
    }
    if let Some(spec) = kvc.spec.restore_from.as_ref().filter(|_| restore_too)
        && status
            .and_then(|s| s.restore.as_ref())
            .is_none_or(|r| r.message != message)
    {
        patch["restore"] = json!({
            "backupId": spec.backup_id, "target": spec.target, "phase": "Failed",
            "message": message,
        });
    }
    if patch.as_object().is_none_or(|o| o.is_empty()) {
        return;
    }
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    if let Err(e) = Api::<KVCluster>::namespaced(ctx.client.clone(), ns)
        .patch_status(
            &kvc.name_any(),
            &pp,
            &Patch::Merge(&json!({ "status": patch })),
        )
        .await
    {
        warn!(error = %e, "cannot write the backup status");
    }
    publish(
        &ctx.recorder,
        kvc,
        "BackupBlocked",
        message.to_owned(),
        true,
    )
    .await;
}

/// Starts the backup or restore that is due, unless a job of this cluster runs; returns how long
/// until the next scheduled slot, for the requeue.
pub async fn reconcile(
    jobs: &Jobs,
    ctx: &JobContext,
    kvc: &KVCluster,
    plan: &Plan,
    pods: &[PodView],
    access: &NodeAccess,
    key: Option<Credentials>,
) -> Option<Duration> {
    let ns = kvc.namespace()?;
    let job_key = ObjectRef::from(kvc);
    if (kvc.spec.backup.is_none() && kvc.spec.restore_from.is_none()) || jobs.busy(&job_key) {
        return None;
    }
    let settled = plan.phase == Phase::Running;
    let address = pods.iter().find(|p| p.status.is_some())?.address.clone();
    let reach = |kvc: &KVCluster| -> Option<Reach> {
        match access.client(&address, CALL_TIMEOUT) {
            Ok(node) => Some(Reach {
                ctx: ctx.clone(),
                kvc: Arc::new(kvc.clone()),
                ns: ns.clone(),
                node,
                key: key.clone(),
            }),
            Err(e) => {
                warn!(error = %e, "cannot make a client of the nodes");
                None
            }
        }
    };
    let now = Utc::now();
    if let Some(spec) = &kvc.spec.restore_from {
        let status = kvc.status.as_ref().and_then(|s| s.restore.as_ref());
        if schedule::restore_due(spec, status, settled, now) {
            let reach = reach(kvc)?;
            jobs.spawn(job_key, run_restore(reach));
            return None;
        }
    }
    let spec = kvc.spec.backup.as_ref()?;
    let cron = match schedule::parse(&spec.schedule) {
        Ok(cron) => cron,
        Err(message) => {
            report_blocked(ctx, kvc, &ns, &message, false).await;
            return None;
        }
    };
    match schedule::due(&cron, since(kvc), now) {
        Ok(Slot::Wait(next)) => (next - now).to_std().ok(),
        Ok(Slot::Due(slot)) if settled => {
            let reach = reach(kvc)?;
            jobs.spawn(job_key, run_backup(reach, slot));
            None
        }
        // Due, but the ring is changing: try again soon.
        Ok(Slot::Due(_)) => None,
        Err(message) => {
            report_blocked(ctx, kvc, &ns, &message, false).await;
            None
        }
    }
}

/// The last slot run, else the cluster's creation.
fn since(kvc: &KVCluster) -> chrono::DateTime<Utc> {
    kvc.status
        .as_ref()
        .and_then(|s| s.backup.as_ref())
        .and_then(|b| b.last_schedule_time.as_ref())
        .or(kvc.metadata.creation_timestamp.as_ref())
        .map_or_else(Utc::now, schedule::from_time)
}

/// Records `slot` as run, unless the cluster as read now shows it (or a later one) run already;
/// a conflicting write means someone else changed the cluster: read it again.
async fn claim(reach: &Reach, slot: chrono::DateTime<Utc>) -> Result<bool, kube::Error> {
    for _ in 0..5 {
        let fresh = reach.api().get(&reach.kvc.name_any()).await?;
        if since(&fresh) >= slot {
            return Ok(false);
        }
        let status = json!({ "backup": { "lastScheduleTime": schedule::to_time(slot) } });
        match reach.patch_status(status, fresh.resource_version()).await {
            Ok(()) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

async fn run_backup(reach: Reach, slot: chrono::DateTime<Utc>) {
    let Some(spec) = reach.kvc.spec.backup.clone() else {
        return;
    };
    let name = reach.kvc.name_any();
    match claim(&reach, slot).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            warn!(%name, error = %e, "cannot record the backup's slot; not backing up");
            return;
        }
    }
    let id = schedule::backup_id(&name, slot);
    let store = match reach.store(&spec.target, &spec.s3) {
        Ok(store) => store,
        Err(e) => return backup_failed(&reach, &id, &e.to_string()).await,
    };
    reach
        .event(
            "BackupStarted",
            format!("backup {id} into {}", spec.target),
            false,
        )
        .await;
    info!(%name, backup = %id, "scheduled backup started");
    let started = Instant::now();
    let mut failures = Vec::new();
    let target = backup::Target {
        url: spec.target.clone(),
        store: store.clone(),
    };
    let node = reach.node.clone();
    let outcome = backup::create(
        &node,
        &target,
        &id,
        TRANSFER_TIMEOUT,
        |member, outcome| {
            if let Err(e) = outcome {
                failures.push(format!("{member}: {e}"));
            }
        },
        |member, e| warn!(%member, error = %e, "cannot resume hint delivery; it resumes by itself"),
    )
    .await;
    let manifest = match outcome {
        Ok(manifest) => manifest,
        Err(e) => {
            failures.insert(0, e.to_string());
            // An incomplete backup is never restored: its objects only cost space.
            if let Err(e) = transfer::delete(store.as_ref(), &id).await {
                warn!(backup = %id, error = %e, "cannot delete the incomplete backup");
            }
            return backup_failed(&reach, &id, &failures.join("; ")).await;
        }
    };
    let seconds = started.elapsed().as_secs();
    reach
        .report(json!({ "backup": { "lastSuccessful": {
            "id": id, "completionTime": schedule::to_time(Utc::now()),
            "bytes": manifest.bytes(), "seconds": seconds,
        }}}))
        .await;
    reach
        .event(
            "BackupSucceeded",
            format!(
                "backup {id} complete: {} members, {} in {seconds} s",
                manifest.members.len(),
                mebibytes(manifest.bytes())
            ),
            false,
        )
        .await;
    if let Err(e) = retain(&reach, store.as_ref(), spec.retention).await {
        backup_failed(&reach, &id, &format!("retention: {e}")).await;
    }
}

async fn backup_failed(reach: &Reach, id: &str, message: &str) {
    warn!(name = %reach.kvc.name_any(), backup = %id, %message, "scheduled backup failed");
    reach
        .report(json!({ "backup": failure(Some(id), message) }))
        .await;
    reach
        .event("BackupFailed", format!("backup {id}: {message}"), true)
        .await;
}

/// Deletes the complete backups beyond the newest `keep`.
async fn retain(reach: &Reach, store: &dyn ObjectStore, keep: u32) -> Result<(), kvbackup::Error> {
    let listed: Vec<Listed> = transfer::list(store)
        .await?
        .into_iter()
        .map(|b| Listed {
            started_unix_ms: b.manifest.map(|m| m.started_unix_ms),
            id: b.id,
        })
        .collect();
    for id in schedule::to_delete(&listed, keep) {
        let objects = transfer::delete(store, &id).await?;
        reach
            .event(
                "BackupDeleted",
                format!("retention ({keep} kept): deleted backup {id}, {objects} objects"),
                false,
            )
            .await;
    }
    Ok(())
}

async fn run_restore(reach: Reach) {
    let Some(spec) = reach.kvc.spec.restore_from.clone() else {
        return;
    };
    let base = json!({ "backupId": spec.backup_id, "target": spec.target });
    let with = |extra: Value| {
        let mut status = base.clone();
        if let (Some(s), Some(e)) = (status.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        json!({ "restore": status })
    };
    reach
        .report(with(json!({
            "phase": "Running", "checkpointsDone": 0, "checkpointsTotal": 0, "records": 0,
            "message": "reading the backup's manifest", "startTime": schedule::to_time(Utc::now()),
            "completionTime": null,
        })))
        .await;
    // Each checkpoint's failure, named: the restore's own error only counts them.
    let mut errors = Vec::new();
    let outcome: Result<backup::RestoreTotals, BackupError> = async {
        let store = reach.store(&spec.target, &spec.s3)?;
        let manifest = backup::manifest(store.as_ref(), &spec.backup_id).await?;
        let total = manifest.nodes.len();
        reach
            .event(
                "RestoreStarted",
                format!(
                    "restoring backup {} ({total} checkpoints, {})",
                    spec.backup_id,
                    mebibytes(manifest.bytes())
                ),
                false,
            )
            .await;
        reach
            .report(with(
                json!({ "checkpointsTotal": total, "message": "merging checkpoints" }),
            ))
            .await;
        // Progress is written as each checkpoint is done, beside the restore itself.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let restoring = backup::restore(
            &reach.node,
            &spec.target,
            &manifest,
            TRANSFER_TIMEOUT,
            move |(source, _, outcome)| {
                let _ = tx.send(
                    outcome
                        .as_ref()
                        .map(|r| r.records)
                        .map_err(|e| format!("{source}'s checkpoint: {e}")),
                );
            },
        );
        let progress = async {
            let (mut done, mut records) = (0u64, 0u64);
            while let Some(outcome) = rx.recv().await {
                match outcome {
                    Ok(n) => {
                        done += 1;
                        records += n;
                        reach
                            .report(with(json!({ "checkpointsDone": done, "records": records })))
                            .await;
                    }
                    Err(e) => errors.push(e),
                }
            }
        };
        let (totals, ()) = tokio::join!(restoring, progress);
        totals
    }
    .await;
    let outcome = outcome.map_err(|e| {
        errors.insert(0, e.to_string());
        errors.join("; ")
    });
    match outcome {
        Ok(totals) => {
            let message = format!(
                "restored backup {}: {} records and {} hints from {} checkpoints",
                spec.backup_id, totals.records, totals.hints, totals.checkpoints
            );
            reach
                .report(with(json!({
                    "phase": "Succeeded", "checkpointsDone": totals.checkpoints,
                    "records": totals.records, "message": message,
                    "completionTime": schedule::to_time(Utc::now()),
                })))
                .await;
            reach.event("RestoreSucceeded", message, false).await;
        }
        Err(e) => {
            let message = format!("restore of backup {} failed: {e}", spec.backup_id);
            warn!(name = %reach.kvc.name_any(), %message);
            reach
                .report(with(json!({ "phase": "Failed", "message": message })))
                .await;
            reach.event("RestoreFailed", message, true).await;
        }
    }
}
