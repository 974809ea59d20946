//! Batches: many keys' reads and writes coordinated together, with one peer message per replica
//! node instead of one per key, and each key keeping the guarantees of its single-key request.
//!
//! Reads ask every owner of every key, one `ReadMany` per node, and answer each key once R of its
//! replicas (per replica set) answered, merged; replicas that lacked part of the merged state are
//! repaired in the background, one `MergeMany` per node. Writes to keys this node holds are stamped
//! here, then sent to the other owners in one `MergeMany` per node; a key a node did not take goes
//! the single-key way (`Handoff::replicate`: retried, then hinted to a fallback). Writes to keys this
//! node does not hold go to one live owner per group in a `CoordinateMany`, which coordinates them
//! there; a group whose owner cannot be reached falls back to the single-key forwarding of each key.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ANSWER_MARGIN, Coordinator, Tally};
use crate::causality::SiblingSet;
use crate::error::Error;
use crate::membership::View;
use crate::metrics::Operation;
use crate::ring::partition_of;
use crate::rpc::items::{Outcome, Write};
use crate::rpc::{RequestBody, ResponseBody, remaining};
use crate::storage::hints::Hint;

/// The result of one key of a batch.
pub type ItemResult = Result<Arc<SiblingSet>, Error>;

/// One node's outcomes for the items it was sent, in order.
type NodeOutcomes = (String, Vec<usize>, Result<Vec<Outcome>, Error>);

impl Coordinator {
    /// Reads `keys`, each as [`Coordinator::read`] would, with one message per replica node.
    pub async fn read_many(
        &self,
        keys: Vec<Arc<[u8]>>,
        r: Option<u32>,
        deadline: Instant,
    ) -> Vec<ItemResult> {
        let view = self.membership.view();
        let quorum = r.unwrap_or(view.config.r);
        let partitions: Vec<u16> = keys
            .iter()
            .map(|k| partition_of(k, view.config.partitions))
            .collect();
        let mut tallies: Vec<Tally> = Vec::with_capacity(keys.len());
        let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, &p) in partitions.iter().enumerate() {
            tallies.push(Tally::new(view.replica_sets(p), quorum));
            for owner in view.owners(p) {
                by_node.entry(owner).or_default().push(i);
            }
        }
        let nodes = by_node.len();
        let (tx, mut rx) = mpsc::channel::<NodeOutcomes>(nodes.max(1));
        for (node, items) in by_node {
            let body: Vec<(u16, Vec<u8>)> = items
                .iter()
                .map(|&i| (partitions[i], keys[i].to_vec()))
                .collect();
            let this = self.handle();
            let tx = tx.clone();
            tokio::spawn(async move {
                let outcomes = this.read_on(&node, body, deadline).await;
                let _ = tx.send((node, items, outcomes)).await;
            });
        }
        drop(tx);
        let mut replies: Vec<Vec<(String, SiblingSet)>> = vec![Vec::new(); keys.len()];
        let mut errors: Vec<Option<Error>> = (0..keys.len()).map(|_| None).collect();
        let mut answered = 0;
        let cutoff = deadline.checked_sub(ANSWER_MARGIN).unwrap_or(deadline);
        while !tallies.iter().all(Tally::met) && answered < nodes {
            let Ok(Some((node, items, outcomes))) =
                tokio::time::timeout_at(cutoff, rx.recv()).await
            else {
                break;
            };
            answered += 1;
            let mut outcomes = outcomes.map(Vec::into_iter);
            for i in items {
                let outcome = match &mut outcomes {
                    Ok(each) => each.next().map(Outcome::into_result),
                    Err(_) => None,
                };
                match outcome {
                    Some(Ok(Outcome::State(set))) => {
                        tallies[i].ack(&node);
                        replies[i].push((node.clone(), set));
                    }
                    Some(Err(e)) if !e.is_unavailability() => {
                        errors[i] = errors[i].take().or(Some(e))
                    }
                    _ => {}
                }
            }
        }
        let mut repairs: BTreeMap<String, Vec<Hint>> = BTreeMap::new();
        let results = (0..keys.len())
            .map(|i| {
                if let Some(missed) = tallies[i].shortfall() {
                    self.metrics.quorum_failed(Operation::Get);
                    return Err(errors[i].take().unwrap_or(missed));
                }
                let mut merged = SiblingSet::default();
                for (_, set) in &replies[i] {
                    merged.merge(set);
                }
                for (node, set) in replies[i].drain(..) {
                    if set != merged {
                        self.metrics.read_repairs.inc();
                        repairs.entry(node).or_default().push(Hint {
                            partition: partitions[i],
                            key: keys[i].to_vec(),
                            set: merged.clone(),
                        });
                    }
                }
                Ok(Arc::new(merged))
            })
            .collect();
        for (node, hints) in repairs {
            let this = self.handle();
            tokio::spawn(async move {
                let repair_deadline = Instant::now() + std::time::Duration::from_secs(2);
                if let Err(e) = this.merge_on(&node, hints, repair_deadline).await {
                    tracing::debug!(%node, error = %e, "batch read repair failed");
                }
            });
        }
        results
    }

    /// Writes `writes`, each as [`Coordinator::write`] would, with one message per replica node.
    pub async fn write_many(
        &self,
        writes: Vec<Write>,
        w: Option<u32>,
        deadline: Instant,
        forwarded: bool,
    ) -> Vec<ItemResult> {
        let view = self.membership.view();
        let me = self.membership.node_id().to_string();
        let mut results: Vec<Option<ItemResult>> = (0..writes.len()).map(|_| None).collect();
        let mut local = Vec::new();
        let mut remote: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, write) in writes.iter().enumerate() {
            let mut owners = view.owners(partition_of(&write.key, view.config.partitions));
            if owners.contains(&me) {
                local.push(i);
            } else if forwarded {
                results[i] = Some(Err(Error::Unavailable(format!(
                    "{me} is not a replica of this key at epoch {}",
                    view.config.epoch
                ))));
            } else {
                owners.sort_by_key(|o| !self.membership.is_alive(o));
                if let Some(owner) = owners.into_iter().next() {
                    remote.entry(owner).or_default().push(i);
                }
            }
        }
        let forwards = remote.into_iter().map(|(owner, items)| {
            let group: Vec<Write> = items.iter().map(|&i| writes[i].clone()).collect();
            async move {
                (
                    items.clone(),
                    self.forward_many(&owner, group, w, deadline).await,
                )
            }
        });
        let local_writes: Vec<Write> = local.iter().map(|&i| writes[i].clone()).collect();
        let (forwarded_results, local_results) = tokio::join!(
            join_all(forwards),
            self.coordinate_many(&view, local_writes, w, deadline)
        );
        for (items, outcomes) in forwarded_results {
            for (i, result) in items.into_iter().zip(outcomes) {
                results[i] = Some(result);
            }
        }
        for (i, result) in local.into_iter().zip(local_results) {
            results[i] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("batch item left unanswered".into()))))
            .collect()
    }

    /// Coordinates writes to keys this node holds: stamped here, replicated in one message per node.
    async fn coordinate_many(
        &self,
        view: &Arc<View>,
        writes: Vec<Write>,
        w: Option<u32>,
        deadline: Instant,
    ) -> Vec<ItemResult> {
        let me = self.membership.node_id().to_string();
        let quorum = w.unwrap_or(view.config.w);
        let partitions: Vec<u16> = writes
            .iter()
            .map(|wr| partition_of(&wr.key, view.config.partitions))
            .collect();
        let keys: Vec<Vec<u8>> = writes.iter().map(|wr| wr.key.clone()).collect();
        let operations: Vec<Operation> = writes
            .iter()
            .map(|wr| match wr.value {
                Some(_) => Operation::Put,
                None => Operation::Delete,
            })
            .collect();
        let stamped = join_all(writes.into_iter().zip(&partitions).map(|(wr, &p)| {
            let mutation = wr.mutation();
            self.replica.write(p, wr.key.into(), wr.context, mutation)
        }))
        .await;
        let mut tallies: Vec<Option<Tally>> = Vec::with_capacity(stamped.len());
        let mut by_node: BTreeMap<String, Vec<(usize, Hint)>> = BTreeMap::new();
        let mut fallbacks = Vec::with_capacity(stamped.len());
        for (i, state) in stamped.iter().enumerate() {
            let p = partitions[i];
            let owners = view.owners(p);
            fallbacks.push(self.fallbacks(view, p, &owners));
            let Ok(state) = state else {
                tallies.push(None);
                continue;
            };
            let mut tally = Tally::new(view.replica_sets(p), quorum);
            tally.ack(&me);
            tallies.push(Some(tally));
            for owner in owners.into_iter().filter(|o| *o != me) {
                by_node.entry(owner).or_default().push((
                    i,
                    Hint {
                        partition: p,
                        key: keys[i].clone(),
                        set: SiblingSet::clone(state),
                    },
                ));
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, usize, bool)>();
        let sloppy = view.config.sloppy_quorum;
        for (node, items) in by_node {
            let this = self.handle();
            let tx = tx.clone();
            let fallbacks: Vec<_> = items.iter().map(|(i, _)| fallbacks[*i].clone()).collect();
            tokio::spawn(async move {
                let hints: Vec<Hint> = items.iter().map(|(_, h)| h.clone()).collect();
                let outcomes = this.merge_on(&node, hints, deadline).await;
                let mut outcomes = outcomes.ok().map(Vec::into_iter);
                let mut retries = Vec::new();
                for ((i, hint), fallbacks) in items.into_iter().zip(fallbacks) {
                    match outcomes.as_mut().and_then(Iterator::next) {
                        Some(Outcome::Merged) => {
                            let _ = tx.send((node.clone(), i, true));
                        }
                        _ => retries.push((i, hint, fallbacks)),
                    }
                }
                // What the node did not take goes the single-key way: retried, then hinted.
                join_all(retries.into_iter().map(|(i, hint, fallbacks)| {
                    let (this, tx, node) = (this.clone(), tx.clone(), node.clone());
                    async move {
                        let stored = this
                            .handoff
                            .replicate(&node, hint, sloppy, &fallbacks, deadline)
                            .await;
                        let _ = tx.send((node, i, stored));
                    }
                }))
                .await;
            });
        }
        drop(tx);
        let cutoff = deadline.checked_sub(ANSWER_MARGIN).unwrap_or(deadline);
        while !tallies.iter().flatten().all(Tally::met) {
            match tokio::time::timeout_at(cutoff, rx.recv()).await {
                Ok(Some((node, i, true))) => {
                    if let Some(Some(tally)) = tallies.get_mut(i) {
                        tally.ack(&node);
                    }
                }
                Ok(Some((_, _, false))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        stamped
            .into_iter()
            .zip(tallies)
            .zip(operations)
            .map(|((state, tally), operation)| {
                let state = state?;
                match tally.and_then(|t| t.shortfall()) {
                    Some(missed) => {
                        self.metrics.quorum_failed(operation);
                        Err(missed)
                    }
                    None => Ok(state),
                }
            })
            .collect()
    }

    /// Sends writes to `owner` to coordinate; if it cannot be reached, forwards each the
    /// single-key way (which tries the key's other owners).
    async fn forward_many(
        &self,
        owner: &str,
        writes: Vec<Write>,
        w: Option<u32>,
        deadline: Instant,
    ) -> Vec<ItemResult> {
        let body = RequestBody::CoordinateMany {
            writes: writes.clone(),
            w,
            timeout_ms: remaining(deadline).as_millis() as u64,
        };
        match self.rpc.call(owner, body, remaining(deadline)).await {
            Ok(ResponseBody::Outcomes(outcomes)) if outcomes.len() == writes.len() => outcomes
                .into_iter()
                .map(|o| match o.into_result()? {
                    Outcome::State(set) => Ok(Arc::new(set)),
                    other => Err(Error::PeerFailed(format!("unexpected outcome {other:?}"))),
                })
                .collect(),
            Ok(ResponseBody::Failed { status, error }) => writes
                .iter()
                .map(|_| {
                    Err(Error::Remote {
                        status,
                        body: error.clone(),
                    })
                })
                .collect(),
            _ => {
                let view = self.membership.view();
                join_all(writes.into_iter().map(|wr| {
                    let owners = view.owners(partition_of(&wr.key, view.config.partitions));
                    async move {
                        let mutation = wr.mutation();
                        self.forward_write(
                            &owners,
                            wr.key.into(),
                            wr.context,
                            mutation,
                            w,
                            deadline,
                        )
                        .await
                    }
                }))
                .await
            }
        }
    }
}

impl Coordinator {
    /// A coordinator over the same layers, for a task that outlives the borrow of `self`.
    fn handle(&self) -> Arc<Coordinator> {
        Arc::new(Coordinator::new(
            self.membership.clone(),
            self.replica.clone(),
            self.rpc.clone(),
            self.handoff.clone(),
            self.metrics.clone(),
        ))
    }

    /// `node`'s states of these keys: read here, or asked for in one `ReadMany`.
    async fn read_on(
        &self,
        node: &str,
        keys: Vec<(u16, Vec<u8>)>,
        deadline: Instant,
    ) -> Result<Vec<Outcome>, Error> {
        if node == self.membership.node_id() {
            return Ok(self.read_local(keys).await);
        }
        let expected = keys.len();
        self.outcomes_of(node, RequestBody::ReadMany(keys), expected, deadline)
            .await
    }

    /// Has `node` merge these states: here, or in one `MergeMany`.
    async fn merge_on(
        &self,
        node: &str,
        hints: Vec<Hint>,
        deadline: Instant,
    ) -> Result<Vec<Outcome>, Error> {
        if node == self.membership.node_id() {
            return Ok(self.merge_local(hints).await);
        }
        let expected = hints.len();
        self.outcomes_of(node, RequestBody::MergeMany(hints), expected, deadline)
            .await
    }

    /// Sends a batched message of `expected` items to `node`: its outcomes, one per item.
    async fn outcomes_of(
        &self,
        node: &str,
        body: RequestBody,
        expected: usize,
        deadline: Instant,
    ) -> Result<Vec<Outcome>, Error> {
        match self.rpc.call(node, body, remaining(deadline)).await? {
            ResponseBody::Outcomes(outcomes) if outcomes.len() == expected => Ok(outcomes),
            other => Err(other.unexpected()),
        }
    }

    /// This node's states of these keys (a peer's `ReadMany`).
    pub async fn read_local(&self, keys: Vec<(u16, Vec<u8>)>) -> Vec<Outcome> {
        join_all(keys.into_iter().map(|(p, key)| async move {
            Outcome::of(
                self.replica
                    .read(p, key.into())
                    .await
                    .map(|set| Outcome::State(SiblingSet::clone(&set))),
            )
        }))
        .await
    }

    /// Merges these states here (a peer's `MergeMany`), refusing a key of a partition this node
    /// does not hold at its epoch, as a single `Merge` is refused.
    pub async fn merge_local(&self, hints: Vec<Hint>) -> Vec<Outcome> {
        let view = self.membership.view();
        let me = self.membership.node_id();
        let epoch = view.config.epoch;
        join_all(hints.into_iter().map(|hint| {
            let owner = view.is_owner(me, hint.partition);
            async move {
                if !owner {
                    return Outcome::of(Err(Error::NotOwner(format!(
                        "{me} does not hold partition {} at epoch {}",
                        hint.partition, epoch
                    ))));
                }
                Outcome::of(
                    self.replica
                        .merge(hint.partition, hint.key.into(), hint.set)
                        .await
                        .map(|_| Outcome::Merged),
                )
            }
        }))
        .await
    }
}
