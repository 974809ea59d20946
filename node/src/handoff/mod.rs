//! Handoff: data that must move to another node. Hinted handoff (this file) keeps a write for a
//! replica that could not take it and delivers it when the replica is back; ownership transfer
//! ([`transfer`]) moves partitions to their new owners during a membership change.
//!
//! Sloppy quorum: when a replica does not take a write, the coordinator asks the next healthy node
//! after the preference list (a fallback) to hold the state as a hint, and counts that copy for the
//! replica. With no fallback the coordinator keeps the hint itself, and it does not count: a quorum
//! of W needs W distinct nodes holding the data. Hints live in their own column family
//! (`storage::hints`), survive restarts, and are deleted only after the target (or, when the target
//! no longer owns the partition, the current owners) acknowledged them.
//!
//! Hints are bounded: a holder refuses a hint past its per-target caps (count and bytes), and such a
//! refused hint counts for nobody, so the write reaches its quorum only with other copies. A hint not
//! delivered within its TTL is dropped (anti-entropy repairs what it carried); the TTL is shorter than
//! the tombstone grace, so no hint older than a purgeable tombstone is ever delivered.

pub mod transfer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::Error;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::rpc::{RequestBody, ResponseBody, remaining};
use crate::storage::hints::{HeldHint, Hint, HintCaps, now_micros};
use crate::supervisor::Stop;
use crate::transport::Peers;

/// Pause between delivery rounds when there is nothing to do or targets are unreachable.
const DELIVERY_INTERVAL: Duration = Duration::from_millis(250);
/// Hints sent in one delivery message, at most.
const DELIVERY_BATCH: usize = 256;
/// Bytes of hints sent in one delivery message, about.
const DELIVERY_BATCH_BYTES: usize = crate::rpc::MAX_BATCH_BYTES;
/// Time allowed for one delivery message.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Expired hints dropped per target per round, at most.
const EXPIRY_BATCH: usize = 4096;

/// Bounds on the hints this node holds.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A hint not delivered within this long is dropped.
    pub ttl: Duration,
    /// Per-target caps.
    pub caps: HintCaps,
}

/// Hinted handoff: storing hints for unreachable replicas and delivering them.
pub struct Handoff {
    membership: Arc<Membership>,
    replica: Arc<Replica>,
    rpc: Arc<dyn Peers>,
    metrics: Arc<Metrics>,
    settings: Settings,
    draining: AtomicBool,
    wake: Notify,
    /// Delivery is held until then (a cluster backup); `None` when it runs.
    held_until: Mutex<Option<Instant>>,
    /// Held by a delivery round, so a hold can wait for the round in flight.
    round: tokio::sync::Mutex<()>,
}

impl Handoff {
    /// Hinted handoff over the local `replica` and the peers reached through `rpc`.
    pub fn new(
        membership: Arc<Membership>,
        replica: Arc<Replica>,
        rpc: Arc<dyn Peers>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Arc<Self> {
        Arc::new(Handoff {
            membership,
            replica,
            rpc,
            metrics,
            settings,
            draining: AtomicBool::new(false),
            wake: Notify::new(),
            held_until: Mutex::new(None),
            round: tokio::sync::Mutex::new(()),
        })
    }

    /// Sends a coordinated write's state to `replica`. When the replica does not take it and
    /// `sloppy` is on, hands it to the next of `fallbacks` that stores it as a hint, or keeps the
    /// hint here when none does. True when a distinct node other than this one now holds the state
    /// for `replica` (the replica itself or a fallback).
    pub async fn replicate(
        &self,
        replica: &str,
        hint: Hint,
        sloppy: bool,
        fallbacks: &Mutex<std::vec::IntoIter<String>>,
        deadline: Instant,
    ) -> bool {
        let body = RequestBody::Merge {
            partition: hint.partition,
            key: hint.key.clone(),
            set: hint.set.clone(),
        };
        match self.rpc.call(replica, body, remaining(deadline)).await {
            Ok(ResponseBody::Merged) => return true,
            Ok(other) => {
                tracing::debug!(%replica, error = %other.unexpected(), "replication refused")
            }
            Err(e) => tracing::debug!(%replica, error = %e, "replication failed"),
        }
        if !sloppy {
            return false;
        }
        loop {
            let Some(fallback) = fallbacks.lock().next() else {
                break;
            };
            let body = RequestBody::StoreHint {
                target: replica.to_string(),
                hint: hint.clone(),
            };
            match self.rpc.call(&fallback, body, remaining(deadline)).await {
                Ok(ResponseBody::Merged) => return true,
                Ok(other) => {
                    tracing::debug!(%fallback, error = %other.unexpected(), "hint refused")
                }
                Err(e) => tracing::debug!(%fallback, error = %e, "hint not stored"),
            }
        }
        if let Err(e) = self.store(replica.to_string(), hint).await {
            tracing::warn!(%replica, error = %e, "cannot keep a hint; anti-entropy will repair");
        }
        false
    }

    /// Stores a hint for `target` here (a peer's `StoreHint`, or our own when no fallback took it),
    /// unless the target's caps are reached.
    pub async fn store(&self, target: String, hint: Hint) -> Result<(), Error> {
        let caps = self.settings.caps;
        self.replica
            .with_storage(move |s| s.store_hint(&target, &hint, caps))
            .await?;
        self.metrics.hints_stored.inc();
        Ok(())
    }

    /// Merges hints a peer delivers to this node.
    pub async fn accept(&self, hints: Vec<Hint>) -> Result<(), Error> {
        let mut by_partition: BTreeMap<u16, Vec<(Vec<u8>, _)>> = BTreeMap::new();
        for hint in hints {
            by_partition
                .entry(hint.partition)
                .or_default()
                .push((hint.key, hint.set));
        }
        for (partition, records) in by_partition {
            self.replica.merge_many(partition, records).await?;
        }
        Ok(())
    }

    /// Starts draining: hints are delivered without waiting out peers' backoff.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether the node is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Holds hint delivery for `duration` (zero: resumes it) and returns once no delivery round is
    /// in flight. A cluster backup holds delivery on every member before any takes its checkpoint,
    /// so no hint moves from a fallback's checkpoint to its owner's unseen; the hold ends by
    /// itself if the backup's driver goes away.
    pub async fn hold_delivery(&self, duration: Duration) {
        *self.held_until.lock() = (!duration.is_zero()).then(|| Instant::now() + duration);
        if duration.is_zero() {
            self.wake.notify_one();
        }
        drop(self.round.lock().await);
    }

    /// When delivery is held, the end of the hold.
    fn held(&self) -> Option<Instant> {
        let mut held = self.held_until.lock();
        if held.is_some_and(|until| until <= Instant::now()) {
            *held = None;
        }
        *held
    }

    /// Delivers hints until shutdown: each round sends every reachable target its oldest hints.
    pub async fn deliver_forever(self: Arc<Self>, mut stop: Stop) {
        while !stop.is_requested() {
            if let Some(until) = self.held() {
                let wait = tokio::time::timeout_at(until, self.wake.notified());
                stop.unless_stopped(wait).await;
                continue;
            }
            let delivered = {
                let _round = self.round.lock().await;
                // A hold that began while this round waited for the lock wins.
                if self.held().is_some() {
                    continue;
                }
                self.deliver_round().await
            };
            if delivered == 0 {
                let wait = tokio::time::timeout(DELIVERY_INTERVAL, self.wake.notified());
                stop.unless_stopped(wait).await;
            }
        }
    }

    /// One round over every target: drops its expired hints, then delivers a batch when the target
    /// can be reached. Returns how many hints were delivered.
    async fn deliver_round(&self) -> u64 {
        let mut delivered = 0;
        for (target, _) in self.replica.storage().hint_backlog() {
            if let Err(e) = self.drop_expired(&target).await {
                tracing::warn!(%target, error = %e, "cannot drop expired hints");
            }
            if !self.draining() && !self.membership.may_contact(&target) {
                continue;
            }
            match self.deliver_batch(&target).await {
                Ok(n) => delivered += n,
                Err(e) => tracing::debug!(%target, error = %e, "hint delivery failed"),
            }
        }
        delivered
    }

    /// Drops `target`'s hints older than the TTL.
    async fn drop_expired(&self, target: &str) -> Result<(), Error> {
        let ttl = u64::try_from(self.settings.ttl.as_micros()).unwrap_or(u64::MAX);
        let stored_before = now_micros().saturating_sub(ttl);
        let owned_target = target.to_string();
        let dropped = self
            .replica
            .with_storage(move |s| s.drop_expired_hints(&owned_target, stored_before, EXPIRY_BATCH))
            .await?;
        if dropped > 0 {
            tracing::info!(%target, dropped, "dropped hints past their TTL; anti-entropy repairs instead");
        }
        Ok(())
    }

    /// Delivers one batch of `target`'s hints; hints of partitions it no longer owns go to their
    /// current owners instead. Deletes exactly the hints that were acknowledged.
    async fn deliver_batch(&self, target: &str) -> Result<u64, Error> {
        let owned_target = target.to_string();
        let batch = self
            .replica
            .with_storage(move |s| s.hints_for(&owned_target, DELIVERY_BATCH, DELIVERY_BATCH_BYTES))
            .await?;
        let view = self.membership.view();
        let (direct, rerouted): (Vec<HeldHint>, Vec<HeldHint>) = batch
            .into_iter()
            .partition(|held| view.is_owner(target, held.hint.partition));
        let mut acknowledged = Vec::new();
        if !direct.is_empty() {
            let hints = direct.iter().map(|held| held.hint.clone()).collect();
            match self
                .rpc
                .call(target, RequestBody::DeliverHints(hints), DELIVERY_TIMEOUT)
                .await?
            {
                ResponseBody::Merged => acknowledged.extend(direct),
                other => return Err(other.unexpected()),
            }
        }
        for held in rerouted {
            if self.reroute(&held.hint).await {
                acknowledged.push(held);
            }
        }
        let count = acknowledged.len() as u64;
        if count > 0 {
            let owned_target = target.to_string();
            self.replica
                .with_storage(move |s| s.delete_hints(&owned_target, &acknowledged))
                .await?;
            self.metrics.hints_delivered.inc_by(count);
        }
        Ok(count)
    }

    /// Sends a hint whose target no longer owns its partition to the partition's current owners;
    /// true once W of them (or all, when fewer) hold it.
    async fn reroute(&self, hint: &Hint) -> bool {
        let view = self.membership.view();
        let owners = view.owners(hint.partition);
        let needed = (view.config.w as usize).min(owners.len());
        let me = self.membership.node_id();
        let mut held = 0;
        for owner in owners {
            let ok = if owner == me {
                self.replica
                    .merge_many(hint.partition, vec![(hint.key.clone(), hint.set.clone())])
                    .await
                    .is_ok()
            } else {
                let body = RequestBody::Merge {
                    partition: hint.partition,
                    key: hint.key.clone(),
                    set: hint.set.clone(),
                };
                matches!(
                    self.rpc.call(&owner, body, DELIVERY_TIMEOUT).await,
                    Ok(ResponseBody::Merged)
                )
            };
            held += usize::from(ok);
        }
        held >= needed.max(1)
    }
}
