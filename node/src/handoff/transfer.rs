//! Ownership transfer: during a membership change, every node pulls the partitions it gains from
//! their old owners, and the ring settles once every gained partition is complete everywhere.
//!
//! A gained partition is pulled with the anti-entropy exchange (`antientropy`) in pull-only mode: the
//! first old owner sends everything (the new owner's summary is empty), later ones only what the
//! first lacked, so the data moved stays close to one copy of each moved partition. The partition is
//! complete when every old owner was synchronised, or, with some of them down, at least
//! `old N - W + 1` of them: any write acknowledged by W old owners is on one of those. Pulls start
//! only once every reachable member has left the old ring's epoch, so no coordinator still writes
//! to the old owners alone after the pull began. Progress is persisted per partition, so a restarted
//! node resumes where it stopped. The first member of the new ring (by id) completes the change: once
//! every member reports its transfers done, it installs the next epoch without `transition_from`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kvapi::{ClusterConfig, PartitionTransfer, TransferStatus};
use parking_lot::Mutex;

use crate::antientropy::AntiEntropy;
use crate::error::Error;
use crate::membership::{Membership, View};
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::rpc::{RequestBody, ResponseBody};
use crate::supervisor::Stop;
use crate::transport::Peers;

/// Pause between transfer steps.
const STEP_INTERVAL: Duration = Duration::from_millis(300);
/// Time allowed for a progress question.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Progress of one gained partition.
#[derive(Debug, Clone)]
struct PartitionProgress {
    sources: Vec<String>,
    synced: Vec<String>,
    done: bool,
}

/// This node's part of one membership change.
#[derive(Debug, Clone)]
struct Plan {
    from_epoch: u64,
    partitions: BTreeMap<u16, PartitionProgress>,
    keys_received: u64,
    bytes_received: u64,
}

impl Plan {
    fn done(&self) -> bool {
        self.partitions.values().all(|p| p.done)
    }
}

/// Moves gained partitions to this node during membership changes.
pub struct Transfers {
    membership: Arc<Membership>,
    replica: Arc<Replica>,
    rpc: Arc<dyn Peers>,
    antientropy: Arc<AntiEntropy>,
    metrics: Arc<Metrics>,
    plan: Mutex<Option<Plan>>,
    /// Epoch of the settled config whose unowned partitions were last dropped.
    cleaned: Mutex<Option<u64>>,
}

impl Transfers {
    /// Transfers over the local `replica`, pulling with `antientropy`.
    pub fn new(
        membership: Arc<Membership>,
        replica: Arc<Replica>,
        rpc: Arc<dyn Peers>,
        antientropy: Arc<AntiEntropy>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Transfers {
            membership,
            replica,
            rpc,
            antientropy,
            metrics,
            plan: Mutex::new(None),
            cleaned: Mutex::new(None),
        })
    }

    /// Follows membership changes until shutdown.
    pub async fn run(self: Arc<Self>, mut stop: Stop) {
        loop {
            if let Err(e) = self.step().await {
                tracing::debug!(error = %e, "transfer step failed");
            }
            if stop
                .unless_stopped(tokio::time::sleep(STEP_INTERVAL))
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// Whether this node has every partition it gains in the change in force at `epoch` (true when
    /// no change is in progress).
    pub fn progress(&self) -> (u64, bool) {
        let view = self.membership.view();
        let done = match &view.config.transition_from {
            None => true,
            Some(prior) => self
                .plan
                .lock()
                .as_ref()
                .is_some_and(|p| p.from_epoch == prior.epoch && p.done()),
        };
        (view.config.epoch, done)
    }

    /// This node's transfer progress for `GET /admin/v1/status`.
    pub fn status(&self) -> Option<TransferStatus> {
        let view = self.membership.view();
        view.config.transition_from.as_ref()?;
        let plan = self.plan.lock().clone()?;
        Some(TransferStatus {
            from_epoch: plan.from_epoch,
            to_epoch: view.config.epoch,
            partitions_total: plan.partitions.len() as u32,
            partitions_done: plan.partitions.values().filter(|p| p.done).count() as u32,
            keys_received: plan.keys_received,
            bytes_received: plan.bytes_received,
            pending: plan
                .partitions
                .iter()
                .filter(|(_, p)| !p.done)
                .map(|(&partition, p)| PartitionTransfer {
                    partition: u32::from(partition),
                    sources: p.sources.clone(),
                    synced: p.synced.clone(),
                })
                .collect(),
        })
    }

    async fn step(&self) -> Result<(), Error> {
        let view = self.membership.view();
        let Some(prior) = view.config.transition_from.clone() else {
            let finished = self.plan.lock().take();
            if let Some(finished) = finished {
                self.forget(&finished).await?;
            }
            self.metrics.transfer_partitions_gained.set(0);
            self.metrics.transfer_partitions_pending.set(0);
            return self.drop_unowned(&view).await;
        };
        let current = self.plan.lock().clone();
        let mut plan = match current {
            Some(plan) if plan.from_epoch == prior.epoch => plan,
            _ => self.make_plan(&view, prior.epoch).await?,
        };
        if self.everyone_left_epoch(&view, prior.epoch) {
            let quorum = (prior.n.saturating_sub(view.config.w) + 1).max(1) as usize;
            let pending: Vec<u16> = plan
                .partitions
                .iter()
                .filter(|(_, p)| !p.done)
                .map(|(&p, _)| p)
                .collect();
            for partition in pending {
                self.publish(&plan);
                self.pull(&mut plan, partition, quorum).await?;
                *self.plan.lock() = Some(plan.clone());
            }
        }
        self.publish(&plan);
        let done = plan.done();
        *self.plan.lock() = Some(plan);
        let finisher = view.config.members.iter().map(|m| &m.id).min();
        if done && finisher.map(String::as_str) == Some(self.membership.node_id()) {
            self.complete(&view).await?;
        }
        Ok(())
    }

    /// Publishes the progress of `plan` as metrics.
    fn publish(&self, plan: &Plan) {
        let pending = plan.partitions.values().filter(|p| !p.done).count();
        self.metrics
            .transfer_partitions_gained
            .set(plan.partitions.len() as i64);
        self.metrics.transfer_partitions_pending.set(pending as i64);
    }

    /// The partitions this node gains from the ring of `from_epoch`, with persisted progress.
    async fn make_plan(&self, view: &View, from_epoch: u64) -> Result<Plan, Error> {
        let me = self.membership.node_id().to_string();
        let mut partitions = BTreeMap::new();
        if let Some(prior) = &view.prior {
            for p in 0..view.ring.partitions() {
                let partition = p as u16;
                if view.ring.owns(&me, partition) && !prior.owns(&me, partition) {
                    let sources = prior.preference_list(partition).map(String::from).collect();
                    partitions.insert(
                        partition,
                        PartitionProgress {
                            sources,
                            synced: Vec::new(),
                            done: false,
                        },
                    );
                }
            }
        }
        let keys: Vec<(u16, String)> = partitions
            .keys()
            .map(|&p| (p, progress_key(from_epoch, p)))
            .collect();
        let saved = self
            .replica
            .with_storage(move |s| {
                keys.into_iter()
                    .map(|(p, key)| Ok((p, s.meta(&key)?)))
                    .collect::<Result<Vec<_>, Error>>()
            })
            .await?;
        for (partition, bytes) in saved {
            if let (Some(bytes), Some(progress)) = (bytes, partitions.get_mut(&partition)) {
                let saved: (Vec<String>, bool) = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Corrupt(format!("transfer progress: {e}")))?;
                (progress.synced, progress.done) = saved;
            }
        }
        tracing::info!(
            from_epoch,
            to_epoch = view.config.epoch,
            partitions = partitions.len(),
            "membership change: partitions to receive"
        );
        Ok(Plan {
            from_epoch,
            partitions,
            keys_received: 0,
            bytes_received: 0,
        })
    }

    /// True once every reachable member announced an epoch past `from_epoch`.
    fn everyone_left_epoch(&self, view: &View, from_epoch: u64) -> bool {
        view.all_members().into_iter().all(|m| {
            !self.membership.is_alive(&m.id) || self.membership.peer_epoch(&m.id) > from_epoch
        })
    }

    /// Synchronises `partition` with the old owners not yet synchronised.
    async fn pull(&self, plan: &mut Plan, partition: u16, quorum: usize) -> Result<(), Error> {
        let Some(progress) = plan.partitions.get(&partition).cloned() else {
            return Ok(());
        };
        let mut progress = progress;
        for source in &progress.sources.clone() {
            if progress.synced.contains(source) || !self.membership.is_alive(source) {
                continue;
            }
            match self.antientropy.exchange(partition, source, false).await {
                Ok(outcome) => {
                    progress.synced.push(source.clone());
                    plan.keys_received += outcome.keys_received;
                    plan.bytes_received += outcome.bytes_received;
                    self.metrics
                        .transfer_keys_received
                        .inc_by(outcome.keys_received);
                    self.metrics
                        .transfer_bytes_received
                        .inc_by(outcome.bytes_received);
                }
                Err(e) => tracing::debug!(%source, partition, error = %e, "transfer pull failed"),
            }
        }
        let unsynced_down = progress
            .sources
            .iter()
            .filter(|s| !progress.synced.contains(s))
            .all(|s| !self.membership.is_alive(s));
        progress.done = progress.synced.len() >= progress.sources.len()
            || (progress.synced.len() >= quorum.min(progress.sources.len()) && unsynced_down);
        let key = progress_key(plan.from_epoch, partition);
        let saved = serde_json::to_vec(&(&progress.synced, progress.done))
            .map_err(|e| Error::Internal(e.to_string()))?;
        self.replica
            .with_storage(move |s| s.set_meta(&key, Some(&saved)))
            .await?;
        plan.partitions.insert(partition, progress);
        Ok(())
    }

    /// Installs the settled config once every member of the new ring reports its transfers done.
    async fn complete(&self, view: &View) -> Result<(), Error> {
        let epoch = view.config.epoch;
        for member in &view.config.members {
            if member.id == self.membership.node_id() {
                continue;
            }
            match self
                .rpc
                .call(&member.id, RequestBody::TransferProgress, PROGRESS_TIMEOUT)
                .await?
            {
                ResponseBody::Progress { epoch: e, done } if e == epoch && done => {}
                ResponseBody::Progress { .. } => return Ok(()),
                other => return Err(other.unexpected()),
            }
        }
        let next = epoch.checked_add(1).ok_or_else(|| {
            Error::BadConfig(format!(
                "epoch {epoch} is the last one: the ring cannot settle"
            ))
        })?;
        let settled = ClusterConfig {
            epoch: next,
            transition_from: None,
            ..view.config.clone()
        };
        if self.membership.install(settled)? {
            tracing::info!(epoch = next, "membership change complete: ring settled");
        }
        Ok(())
    }

    /// Once a ring is settled, deletes the data of partitions this node no longer holds: their new
    /// owners have it, and a stale copy kept here could bring back deleted keys if the partition
    /// came back to this node after its tombstones were purged.
    async fn drop_unowned(&self, view: &View) -> Result<(), Error> {
        if *self.cleaned.lock() == Some(view.config.epoch) {
            return Ok(());
        }
        let me = self.membership.node_id().to_string();
        let unowned: Vec<u16> = (0..view.ring.partitions())
            .map(|p| p as u16)
            .filter(|&p| !view.ring.owns(&me, p))
            .collect();
        let membership = self.membership.clone();
        let epoch = view.config.epoch;
        // Under the install lock, so no config giving one of these partitions back slips in.
        let dropped = self
            .replica
            .with_storage(move |s| {
                membership
                    .at_epoch(epoch, || {
                        let mut dropped = 0;
                        for &p in &unowned {
                            if s.holds_partition(p)? {
                                s.drop_partition(p)?;
                                dropped += 1;
                            }
                        }
                        Ok::<_, Error>(dropped)
                    })
                    .transpose()
            })
            .await?;
        let Some(dropped) = dropped else {
            return Ok(());
        };
        if dropped > 0 {
            tracing::info!(
                epoch = view.config.epoch,
                partitions = dropped,
                "dropped the data of partitions no longer held here"
            );
        }
        *self.cleaned.lock() = Some(view.config.epoch);
        Ok(())
    }

    /// Deletes the persisted progress of a finished change.
    async fn forget(&self, plan: &Plan) -> Result<(), Error> {
        let keys: Vec<String> = plan
            .partitions
            .keys()
            .map(|&p| progress_key(plan.from_epoch, p))
            .collect();
        self.replica
            .with_storage(move |s| keys.iter().try_for_each(|k| s.set_meta(k, None)))
            .await
    }
}

fn progress_key(from_epoch: u64, partition: u16) -> String {
    format!("transfer/{from_epoch}/{partition}")
}
