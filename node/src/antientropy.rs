//! Anti-entropy: replicas of a partition compare Merkle summaries and exchange only what differs.
//!
//! A sweep walks every partition this node holds, in order, and for each other owner that is alive
//! compares the two summaries (`storage::scan`): equal roots end the exchange; otherwise the node
//! pulls the peer's records of the differing segments, merges them with the causality rules, and
//! pushes its own records of those segments back. Pages are bounded in bytes, and a pause between
//! partitions bounds the CPU a sweep takes. The same pull serves ownership transfer (`handoff`).
//!
//! Tombstone garbage collection rides on the sweep: the first owner of a partition, after finding
//! every owner's summary equal to its own (so every owner holds the same tombstones), purges the
//! tombstones older than the grace period on every owner, and only those still unchanged. It first
//! asks every member whether it holds a hint for the partition, and postpones the purge while one
//! does: a hint older than the tombstone, delivered after the purge, would bring the value back. A
//! member that cannot answer is passed over, because the hints it holds are dropped unsent once past
//! the hint TTL, which is shorter than the grace (see `docs/security.md`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::causality::SiblingSet;
use crate::error::Error;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::rpc::{RequestBody, ResponseBody};
use crate::supervisor::Stop;
use crate::transport::Peers;

/// Byte budget of one page of records exchanged.
pub const PAGE_BYTES: u64 = 1024 * 1024;
/// Time allowed for one anti-entropy message.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Tombstones purged per partition per sweep, at most.
const PURGE_BATCH: usize = 1000;

/// Settings of anti-entropy.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Pause between sweeps; `None` disables periodic sweeps (transfers still use exchanges).
    pub interval: Option<Duration>,
    /// Pause after each partition of a sweep, bounding its CPU use.
    pub pace: Duration,
    /// Age a tombstone must reach, with every owner holding it, before it is purged.
    pub tombstone_grace: Duration,
}

/// What one exchange with a peer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// The summaries were equal: nothing moved.
    pub equal: bool,
    /// Records received from the peer.
    pub keys_received: u64,
    /// Bytes of records received from the peer.
    pub bytes_received: u64,
    /// Keys that changed here.
    pub changed_here: u64,
}

/// Merkle-tree anti-entropy between the replicas of each partition.
pub struct AntiEntropy {
    membership: Arc<Membership>,
    replica: Arc<Replica>,
    rpc: Arc<dyn Peers>,
    metrics: Arc<Metrics>,
    settings: Settings,
}

impl AntiEntropy {
    /// Anti-entropy over the local `replica` and the peers reached through `rpc`.
    pub fn new(
        membership: Arc<Membership>,
        replica: Arc<Replica>,
        rpc: Arc<dyn Peers>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Arc<Self> {
        Arc::new(AntiEntropy {
            membership,
            replica,
            rpc,
            metrics,
            settings,
        })
    }

    /// Sweeps at the configured interval until shutdown (returns at once when sweeps are disabled).
    pub async fn run(self: Arc<Self>, mut stop: Stop) {
        let Some(interval) = self.settings.interval else {
            return;
        };
        while stop
            .unless_stopped(tokio::time::sleep(interval))
            .await
            .is_some()
        {
            let started = std::time::Instant::now();
            self.sweep().await;
            self.metrics
                .antientropy_last_sweep_duration
                .set(started.elapsed().as_secs_f64());
            self.metrics.antientropy_last_sweep.set(unix_seconds());
        }
    }

    /// Compares every partition this node holds with each of its other owners once.
    pub async fn sweep(&self) {
        let me = self.membership.node_id().to_string();
        let partitions = self.membership.view().config.partitions;
        for p in 0..partitions {
            let partition = p as u16;
            let view = self.membership.view();
            if !view.is_owner(&me, partition) {
                continue;
            }
            let mut all_equal = true;
            for peer in view.owners(partition).iter().filter(|o| **o != me) {
                if !self.membership.is_alive(peer) {
                    all_equal = false;
                    continue;
                }
                match self.exchange(partition, peer, true).await {
                    Ok(outcome) => all_equal &= outcome.equal,
                    Err(e) => {
                        all_equal = false;
                        tracing::debug!(%peer, partition, error = %e, "anti-entropy exchange failed");
                    }
                }
            }
            let first_owner = view.ring.preference_list(partition).next() == Some(me.as_str());
            if all_equal
                && first_owner
                && !view.config.in_transition()
                && let Err(e) = self.purge_tombstones(partition).await
            {
                tracing::debug!(partition, error = %e, "tombstone purge failed");
            }
            tokio::time::sleep(self.settings.pace).await;
        }
    }

    /// Compares `partition` with `peer`; when they differ, pulls the peer's records of the differing
    /// segments and, when `push`, sends ours of those segments back.
    pub async fn exchange(
        &self,
        partition: u16,
        peer: &str,
        push: bool,
    ) -> Result<Exchange, Error> {
        let local = self
            .replica
            .with_storage(move |s| s.summary(partition))
            .await?;
        let remote = match self
            .rpc
            .call(peer, RequestBody::Summary { partition }, EXCHANGE_TIMEOUT)
            .await
        {
            Ok(ResponseBody::Summary(leaves)) => leaves,
            Ok(other) => return Err(self.failed(other.unexpected())),
            Err(e) => return Err(self.failed(e)),
        };
        let differing = local.differing(&remote);
        let mut outcome = Exchange {
            equal: differing.is_empty(),
            ..Exchange::default()
        };
        if outcome.equal {
            self.metrics
                .antientropy_compared
                .with_label_values(&["equal"])
                .inc();
            return Ok(outcome);
        }
        self.metrics
            .antientropy_compared
            .with_label_values(&["differing"])
            .inc();
        let mut after = None;
        loop {
            let body = RequestBody::FetchSegments {
                partition,
                segments: differing.clone(),
                after: after.take(),
                max_bytes: PAGE_BYTES,
            };
            let (records, next) = match self.rpc.call(peer, body, EXCHANGE_TIMEOUT).await? {
                ResponseBody::Records { records, next } => (records, next),
                other => return Err(other.unexpected()),
            };
            outcome.keys_received += records.len() as u64;
            outcome.bytes_received += records.iter().map(|(k, s)| record_bytes(k, s)).sum::<u64>();
            outcome.changed_here += self.replica.merge_many(partition, records).await?;
            match next {
                Some(key) => after = Some(key),
                None => break,
            }
        }
        let mut changed = outcome.changed_here;
        if push {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let segments = differing.clone();
                let cursor = after.take();
                let page = self
                    .replica
                    .with_storage(move |s| {
                        s.scan_segments(
                            partition,
                            &segments,
                            cursor.as_deref(),
                            PAGE_BYTES as usize,
                        )
                    })
                    .await?;
                if !page.records.is_empty() {
                    let body = RequestBody::MergeBatch {
                        partition,
                        records: page.records,
                    };
                    match self.rpc.call(peer, body, EXCHANGE_TIMEOUT).await? {
                        ResponseBody::Changed(n) => changed += n,
                        other => return Err(other.unexpected()),
                    }
                }
                match page.next {
                    Some(key) => after = Some(key),
                    None => break,
                }
            }
        }
        self.metrics.antientropy_keys_repaired.inc_by(changed);
        Ok(outcome)
    }

    /// Purges the expired tombstones of `partition` on its other owners, then here.
    async fn purge_tombstones(&self, partition: u16) -> Result<(), Error> {
        let grace_ms = self.settings.tombstone_grace.as_millis() as u64;
        let cutoff = (unix_seconds() * 1000.0) as u64;
        let cutoff = cutoff.saturating_sub(grace_ms);
        let expired = self
            .replica
            .with_storage(move |s| s.expired_tombstones(partition, cutoff, PURGE_BATCH))
            .await?;
        if expired.is_empty() {
            return Ok(());
        }
        if self.hints_pending_anywhere(partition).await {
            tracing::debug!(
                partition,
                "tombstone purge postponed: a hint for the partition is pending"
            );
            return Ok(());
        }
        let me = self.membership.node_id().to_string();
        let view = self.membership.view();
        for peer in view.ring.preference_list(partition).filter(|o| *o != me) {
            let body = RequestBody::PurgeTombstones {
                partition,
                keys: expired.clone(),
            };
            match self.rpc.call(peer, body, EXCHANGE_TIMEOUT).await? {
                ResponseBody::Changed(_) => {}
                other => return Err(other.unexpected()),
            }
        }
        let purged = self.replica.purge_tombstones(partition, expired).await?;
        self.metrics.tombstones_purged.inc_by(purged);
        Ok(())
    }

    /// Whether this node or any other member that answers holds a hint for `partition`. An answer
    /// other than a count (a refusal, an older node) counts as pending.
    async fn hints_pending_anywhere(&self, partition: u16) -> bool {
        if self.replica.storage().hints_pending_in(partition) > 0 {
            return true;
        }
        let view = self.membership.view();
        let me = self.membership.node_id();
        for member in view.all_members().into_iter().filter(|m| m.id != me) {
            let body = RequestBody::HintsPending { partition };
            match self.rpc.call(&member.id, body, EXCHANGE_TIMEOUT).await {
                Ok(ResponseBody::HintsPending(0)) => {}
                Ok(ResponseBody::HintsPending(_)) => return true,
                Ok(other) => {
                    tracing::debug!(peer = %member.id, error = %other.unexpected(), "no hint count");
                    return true;
                }
                Err(e) => {
                    tracing::debug!(peer = %member.id, error = %e, "hint count not asked: unreachable")
                }
            }
        }
        false
    }

    fn failed(&self, e: Error) -> Error {
        self.metrics
            .antientropy_compared
            .with_label_values(&["failed"])
            .inc();
        e
    }
}

/// Bytes of a record as moved: its key and its values.
fn record_bytes(key: &[u8], set: &SiblingSet) -> u64 {
    let values: usize = set
        .siblings()
        .iter()
        .map(|s| s.value.as_ref().map_or(0, Vec::len))
        .sum();
    (key.len() + values) as u64
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
