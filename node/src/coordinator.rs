//! Coordinator: runs a client request across the replicas of its key.
//!
//! Writes are coordinated by a member of the key's preference list: it stamps the new version with its
//! own actor, stores it, sends the resulting state to the other replicas in parallel and answers after W
//! acknowledgements (itself included). A node outside the list forwards the write to a live member.
//! Reads ask every replica in the list (any node can coordinate a read), answer after R replies with the
//! merged state, and send the merged state back to replicas that were missing some of it (read repair).
//! Replication RPCs run as their own tasks, so the replicas past the quorum still get the write after
//! the client has its answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::causality::{SiblingSet, VersionVector};
use crate::error::Error;
use crate::membership::{Membership, View};
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::ring::partition_of;
use crate::rpc::{RequestBody, ResponseBody, RpcClient};

/// Time reserved at the end of a deadline to answer 503 with the replies counted, before the
/// request's own 504 fires.
const ANSWER_MARGIN: Duration = Duration::from_millis(50);

/// Runs client requests across replicas.
pub struct Coordinator {
    membership: Arc<Membership>,
    replica: Arc<Replica>,
    rpc: Arc<RpcClient>,
    metrics: Arc<Metrics>,
}

/// One replica's answer to a read.
type ReadReply = (String, Result<Arc<SiblingSet>, Error>);

impl Coordinator {
    /// A coordinator over the local `replica` and the peers reached through `rpc`.
    pub fn new(
        membership: Arc<Membership>,
        replica: Arc<Replica>,
        rpc: Arc<RpcClient>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Coordinator {
            membership,
            replica,
            rpc,
            metrics,
        }
    }

    /// Reads `key` from its replicas and returns the merged state once `r` (or the cluster's R) have
    /// answered; fails with `QuorumNotReached` when they cannot before `deadline`.
    pub async fn read(
        &self,
        key: Arc<[u8]>,
        r: Option<u32>,
        deadline: Instant,
    ) -> Result<Arc<SiblingSet>, Error> {
        let (view, partition, replicas) = self.placement(&key);
        let required = r.unwrap_or(view.config.r).min(replicas.len() as u32);
        let (tx, mut rx) = mpsc::channel::<ReadReply>(replicas.len().max(1));
        for replica in &replicas {
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
                        Ok(other) => Err(unexpected(&other)),
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
        while (replies.len() as u32) < required && answered < replicas.len() {
            match tokio::time::timeout_at(cutoff, rx.recv()).await {
                Ok(Some((replica, Ok(set)))) => {
                    answered += 1;
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
        if (replies.len() as u32) < required {
            self.metrics
                .quorum_failures
                .with_label_values(&["read"])
                .inc();
            return Err(data_error.unwrap_or(Error::QuorumNotReached {
                replied: replies.len() as u32,
                required,
            }));
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
    /// once `w` (or the cluster's W) replicas hold it. A write that a peer `forwarded` here is never
    /// forwarded again, so two nodes with different configs cannot bounce it between them.
    pub async fn write(
        &self,
        key: Arc<[u8]>,
        context: VersionVector,
        value: Option<Vec<u8>>,
        w: Option<u32>,
        deadline: Instant,
        forwarded: bool,
    ) -> Result<Arc<SiblingSet>, Error> {
        let (view, partition, replicas) = self.placement(&key);
        let me = self.membership.node_id();
        if !replicas.iter().any(|r| r == me) {
            if forwarded {
                return Err(Error::Unavailable(format!(
                    "{me} is not a replica of this key at epoch {}",
                    view.config.epoch
                )));
            }
            return self
                .forward_write(&replicas, key, context, value, w, deadline)
                .await;
        }
        let required = w.unwrap_or(view.config.w).min(replicas.len() as u32);
        let state = self
            .replica
            .write(partition, key.clone(), context, value)
            .await?;
        let (tx, mut rx) = mpsc::channel::<Result<(), Error>>(replicas.len());
        for replica in replicas.iter().filter(|r| *r != me) {
            let tx = tx.clone();
            let replica = replica.clone();
            let rpc = self.rpc.clone();
            let body = RequestBody::Merge {
                partition,
                key: key.to_vec(),
                set: SiblingSet::clone(&state),
            };
            tokio::spawn(async move {
                let result = match rpc.call(&replica, body, remaining(deadline)).await {
                    Ok(ResponseBody::Merged) => Ok(()),
                    Ok(other) => Err(unexpected(&other)),
                    Err(e) => Err(e),
                };
                if let Err(e) = &result {
                    tracing::debug!(%replica, error = %e, "replication failed");
                }
                let _ = tx.send(result).await;
            });
        }
        drop(tx);
        let mut acks = 1;
        let cutoff = deadline.checked_sub(ANSWER_MARGIN).unwrap_or(deadline);
        while acks < required {
            match tokio::time::timeout_at(cutoff, rx.recv()).await {
                Ok(Some(Ok(()))) => acks += 1,
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if acks < required {
            self.metrics
                .quorum_failures
                .with_label_values(&["write"])
                .inc();
            return Err(Error::QuorumNotReached {
                replied: acks,
                required,
            });
        }
        Ok(state)
    }

    /// The current view, the key's partition and its preference list under that view.
    fn placement(&self, key: &[u8]) -> (Arc<View>, u16, Vec<String>) {
        let view = self.membership.view();
        let partition = partition_of(key, view.config.partitions);
        let replicas = view
            .ring
            .preference_list(partition)
            .map(String::from)
            .collect();
        (view, partition, replicas)
    }

    /// Sends a write to the first reachable member of the key's preference list.
    async fn forward_write(
        &self,
        replicas: &[String],
        key: Arc<[u8]>,
        context: VersionVector,
        value: Option<Vec<u8>>,
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
                value: value.clone(),
                w,
                timeout_ms: remaining(deadline).as_millis() as u64,
            };
            match self.rpc.call(replica, body, remaining(deadline)).await {
                Ok(ResponseBody::State(set)) => return Ok(Arc::new(set)),
                Ok(ResponseBody::Failed { status, error }) => {
                    return Err(Error::Remote {
                        status,
                        body: error,
                    });
                }
                Ok(other) => last_error = unexpected(&other),
                // Unreachable coordinators are skipped; the write never reached them.
                Err(e @ (Error::PeerUnavailable(_) | Error::Rpc(_))) => last_error = e,
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

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn unexpected(body: &ResponseBody) -> Error {
    match body {
        ResponseBody::Failed { status, error } => Error::Remote {
            status: *status,
            body: error.clone(),
        },
        other => Error::Rpc(format!("unexpected answer {other:?}")),
    }
}
