//! Coordinator: runs a client request across the replicas of its key.
//!
//! Writes are coordinated by a member of the key's preference list: it stamps the new version with its
//! own actor, stores it, sends the resulting state to the other replicas in parallel and answers after W
//! acknowledgements (itself included). A node outside the list forwards the write to a live member.
//! Reads ask every replica in the list (any node can coordinate a read), answer after R replies with the
//! merged state, and send the merged state back to replicas that were missing some of it (read repair).
//! During a membership change a key has two replica sets, the old ring's and the new one's: requests
//! go to both, and each set must reach its quorum on its own.
//! Replication RPCs run as their own tasks, so the replicas past the quorum still get the write after
//! the client has its answer.

pub mod batch;
pub mod list;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::causality::{SiblingSet, VersionVector};
use crate::error::Error;
use crate::handoff::Handoff;
use crate::membership::{Membership, View};
use crate::metrics::{Metrics, Operation};
use crate::replica::{Mutation, Replica};
use crate::ring::partition_of;
use crate::rpc::{RequestBody, ResponseBody, remaining};
use crate::storage::hints::Hint;
use crate::transport::Peers;

/// Time reserved at the end of a deadline to answer 503 with the replies counted, before the
/// request's own 504 fires.
const ANSWER_MARGIN: Duration = Duration::from_millis(50);

/// Runs client requests across replicas.
pub struct Coordinator {
    membership: Arc<Membership>,
    replica: Arc<Replica>,
    rpc: Arc<dyn Peers>,
    handoff: Arc<Handoff>,
    metrics: Arc<Metrics>,
}

/// Acknowledgements counted per replica set: a quorum is met when every set has its own.
struct Tally {
    sets: Vec<Vec<String>>,
    required: Vec<u32>,
    acks: Vec<u32>,
}

impl Tally {
    /// Needs `quorum` acknowledgements from each of `sets` (fewer for a set with fewer members).
    fn new(sets: Vec<Vec<String>>, quorum: u32) -> Self {
        let required = sets.iter().map(|s| quorum.min(s.len() as u32)).collect();
        let acks = vec![0; sets.len()];
        Tally {
            sets,
            required,
            acks,
        }
    }

    /// Counts `replica`'s acknowledgement in every set it belongs to.
    fn ack(&mut self, replica: &str) {
        for (set, acks) in self.sets.iter().zip(&mut self.acks) {
            if set.iter().any(|m| m == replica) {
                *acks += 1;
            }
        }
    }

    fn met(&self) -> bool {
        self.shortfall().is_none()
    }

    /// The error for the first set short of its quorum, if any is.
    fn shortfall(&self) -> Option<Error> {
        self.acks
            .iter()
            .zip(&self.required)
            .find(|(acks, required)| acks < required)
            .map(|(&replied, &required)| Error::QuorumNotReached { replied, required })
    }
}

/// The fallbacks of one write, taken in turn by its replication tasks.
type Fallbacks = Arc<parking_lot::Mutex<std::vec::IntoIter<String>>>;

/// One replica's answer to a read.
type ReadReply = (String, Result<Arc<SiblingSet>, Error>);

impl Coordinator {
    /// A coordinator over the local `replica` and the peers reached through `rpc`.
    pub fn new(
        membership: Arc<Membership>,
        replica: Arc<Replica>,
        rpc: Arc<dyn Peers>,
        handoff: Arc<Handoff>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Coordinator {
            membership,
            replica,
            rpc,
            handoff,
            metrics,
        }
    }

    /// Reads `key` from its replicas and returns the merged state once `r` (or the cluster's R) have
    /// answered in every replica set; fails with `QuorumNotReached` when they cannot before
    /// `deadline`. During a transition both the old and the new preference list must reach R.
    pub async fn read(
        &self,
        key: Arc<[u8]>,
        r: Option<u32>,
        deadline: Instant,
    ) -> Result<Arc<SiblingSet>, Error> {
        let (view, partition) = self.placement(&key);
        let owners = view.owners(partition);
        let mut tally = Tally::new(view.replica_sets(partition), r.unwrap_or(view.config.r));
        let (tx, mut rx) = mpsc::channel::<ReadReply>(owners.len().max(1));
        for replica in &owners {
            let tx = tx.clone();
            let replica = replica.clone();
            let local = self.replica.clone();
            let rpc = self.rpc.clone();
            let key = key.clone();
            let me = self.membership.node_id().to_string();
            tokio::spawn(async move {
                let result = if replica == me {
                    local.read(partition, key).await
                } else {
                    let body = RequestBody::Read {
                        partition,
                        key: key.to_vec(),
                    };
                    match rpc.call(&replica, body, remaining(deadline)).await {
                        Ok(ResponseBody::State(set)) => Ok(Arc::new(set)),
                        Ok(other) => Err(other.unexpected()),
                        Err(e) => Err(e),
                    }
                };
                let _ = tx.send((replica, result)).await;
            });
        }
        drop(tx);
        let mut replies: Vec<(String, Arc<SiblingSet>)> = Vec::new();
        // A replica that answered with an error about its data (a corrupt record, a storage failure)
        // explains a missed quorum better than a count does.
        let mut data_error = None;
        let mut answered = 0;
        let cutoff = deadline.checked_sub(ANSWER_MARGIN).unwrap_or(deadline);
        while !tally.met() && answered < owners.len() {
            match tokio::time::timeout_at(cutoff, rx.recv()).await {
                Ok(Some((replica, Ok(set)))) => {
                    answered += 1;
                    tally.ack(&replica);
                    replies.push((replica, set));
                }
                Ok(Some((replica, Err(e)))) => {
                    answered += 1;
                    tracing::debug!(%replica, error = %e, "replica read failed");
                    if !e.is_unavailability() && data_error.is_none() {
                        data_error = Some(e);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(missed) = tally.shortfall() {
            self.metrics.quorum_failed(Operation::Get);
            return Err(data_error.unwrap_or(missed));
        }
        let mut merged = SiblingSet::default();
        for (_, set) in &replies {
            merged.merge(set);
        }
        let merged = Arc::new(merged);
        self.repair_in_background(view, partition, key, merged.clone(), replies, rx);
        Ok(merged)
    }

    /// Writes `value` (`None` deletes) with the client's `context`, and returns the key's new state
    /// once `w` (or the cluster's W) replicas of every replica set hold it. An unreachable replica is
    /// replaced by a fallback node holding a hint for it (sloppy quorum) unless the cluster is set to
    /// strict quorum. A write that a peer `forwarded` here is never forwarded again, so two nodes
    /// with different configs cannot bounce it between them.
    pub async fn write(
        &self,
        key: Arc<[u8]>,
        context: VersionVector,
        mutation: Mutation,
        w: Option<u32>,
        deadline: Instant,
        forwarded: bool,
    ) -> Result<Arc<SiblingSet>, Error> {
        let (view, partition) = self.placement(&key);
        let owners = view.owners(partition);
        let me = self.membership.node_id();
        if !owners.iter().any(|r| r == me) {
            if forwarded {
                return Err(Error::Unavailable(format!(
                    "{me} is not a replica of this key at epoch {}",
                    view.config.epoch
                )));
            }
            return self
                .forward_write(&owners, key, context, mutation, w, deadline)
                .await;
        }
        let mut tally = Tally::new(view.replica_sets(partition), w.unwrap_or(view.config.w));
        let operation = match mutation.value {
            Some(_) => Operation::Put,
            None => Operation::Delete,
        };
        let state = self
            .replica
            .write(partition, key.clone(), context, mutation)
            .await?;
        tally.ack(me);
        let fallbacks = self.fallbacks(&view, partition, &owners);
        let (tx, mut rx) = mpsc::channel::<(String, bool)>(owners.len());
        for replica in owners.iter().filter(|r| *r != me) {
            let tx = tx.clone();
            let replica = replica.clone();
            let handoff = self.handoff.clone();
            let fallbacks = fallbacks.clone();
            let sloppy = view.config.sloppy_quorum;
            let hint = Hint {
                partition,
                key: key.to_vec(),
                set: SiblingSet::clone(&state),
            };
            tokio::spawn(async move {
                let stored = handoff
                    .replicate(&replica, hint, sloppy, &fallbacks, deadline)
                    .await;
                let _ = tx.send((replica, stored)).await;
            });
        }
        drop(tx);
        let cutoff = deadline.checked_sub(ANSWER_MARGIN).unwrap_or(deadline);
        while !tally.met() {
            match tokio::time::timeout_at(cutoff, rx.recv()).await {
                Ok(Some((replica, true))) => tally.ack(&replica),
                Ok(Some((_, false))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(missed) = tally.shortfall() {
            self.metrics.quorum_failed(operation);
            return Err(missed);
        }
        Ok(state)
    }

    /// Where replicas of `partition` that do not take a write send it instead, shared by the write's
    /// replication tasks: live fallbacks first, in ring order; none under strict quorum.
    fn fallbacks(&self, view: &View, partition: u16, owners: &[String]) -> Fallbacks {
        let fallbacks: Vec<String> = if view.config.sloppy_quorum {
            let mut f: Vec<String> = view
                .ring
                .fallbacks(partition)
                .filter(|m| !owners.iter().any(|o| o == m))
                .map(String::from)
                .collect();
            f.sort_by_key(|m| !self.membership.is_alive(m));
            f
        } else {
            Vec::new()
        };
        Arc::new(parking_lot::Mutex::new(fallbacks.into_iter()))
    }

    /// The current view and the key's partition under it.
    fn placement(&self, key: &[u8]) -> (Arc<View>, u16) {
        let view = self.membership.view();
        let partition = partition_of(key, view.config.partitions);
        (view, partition)
    }

    /// Sends a write to the first reachable member of the key's preference list.
    async fn forward_write(
        &self,
        replicas: &[String],
        key: Arc<[u8]>,
        context: VersionVector,
        mutation: Mutation,
        w: Option<u32>,
        deadline: Instant,
    ) -> Result<Arc<SiblingSet>, Error> {
        let mut last_error = Error::QuorumNotReached {
            replied: 0,
            required: w.unwrap_or(1),
        };
        let mut candidates: Vec<&String> = replicas.iter().collect();
        // Live members first, in preference order.
        candidates.sort_by_key(|r| !self.membership.is_alive(r));
        for replica in candidates {
            let body = RequestBody::Coordinate {
                key: key.to_vec(),
                context: context.clone(),
                value: mutation.value.clone(),
                w,
                timeout_ms: remaining(deadline).as_millis() as u64,
                ttl_ms: mutation.ttl.map(|ttl| ttl.as_millis() as u64),
            };
            match self.rpc.call(replica, body, remaining(deadline)).await {
                Ok(ResponseBody::State(set)) => return Ok(Arc::new(set)),
                Ok(ResponseBody::Failed { status, error }) => {
                    return Err(Error::Remote {
                        status,
                        body: error,
                    });
                }
                Ok(other) => last_error = other.unexpected(),
                // Unreachable coordinators are skipped; the write never reached them.
                Err(e @ (Error::PeerUnavailable(_) | Error::PeerFailed(_))) => last_error = e,
                Err(e) => return Err(e),
            }
        }
        Err(last_error)
    }

    /// After a read answered, collects the replies still in flight and sends the merged state to every
    /// replica whose state lacked part of it.
    fn repair_in_background(
        &self,
        view: Arc<View>,
        partition: u16,
        key: Arc<[u8]>,
        merged: Arc<SiblingSet>,
        mut replies: Vec<(String, Arc<SiblingSet>)>,
        mut pending: mpsc::Receiver<ReadReply>,
    ) {
        let local = self.replica.clone();
        let rpc = self.rpc.clone();
        let metrics = self.metrics.clone();
        let me = self.membership.node_id().to_string();
        tokio::spawn(async move {
            while let Some((replica, result)) = pending.recv().await {
                if let Ok(set) = result {
                    replies.push((replica, set));
                }
            }
            for (replica, set) in replies {
                if *set == *merged {
                    continue;
                }
                metrics.read_repairs.inc();
                let outcome = if replica == me {
                    local
                        .merge(partition, key.clone(), SiblingSet::clone(&merged))
                        .await
                        .map(|_| ())
                } else {
                    let body = RequestBody::Merge {
                        partition,
                        key: key.to_vec(),
                        set: SiblingSet::clone(&merged),
                    };
                    rpc.call(&replica, body, Duration::from_secs(2))
                        .await
                        .map(|_| ())
                };
                if let Err(e) = outcome {
                    tracing::debug!(%replica, error = %e, epoch = view.config.epoch, "read repair failed");
                }
            }
        });
    }
}
