//! The set workload's history and the properties checked against the healed cluster: no
//! acknowledged write lost, no value never written, nothing superseded back, replicas converged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kvnode::causality::SiblingSet;
use kvnode::http::Node;
use kvnode::replica::Mutation;
use kvnode::ring::partition_of;

use crate::Cluster;

/// Time a client operation may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

/// What the clients did to each key.
#[derive(Default)]
pub struct History {
    /// Values each write attempted, acknowledged or not.
    attempted: BTreeSet<String>,
    /// Per key: values whose write was acknowledged.
    acknowledged: BTreeMap<usize, BTreeSet<String>>,
    /// Per key: values an acknowledged write or delete read first (its context covers them).
    superseded: BTreeMap<usize, BTreeSet<String>>,
    /// Per key: values any attempt read first (an unacknowledged one may still supersede them).
    maybe_superseded: BTreeMap<usize, BTreeSet<String>>,
    notes: Vec<String>,
}

/// The key of index `key`.
pub fn key_name(key: usize) -> Vec<u8> {
    format!("key{key}").into_bytes()
}

/// The live values of `set`, sorted.
pub fn values(set: &SiblingSet) -> BTreeSet<String> {
    set.live()
        .filter_map(|s| s.value.as_deref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

impl History {
    /// Records a problem of the run itself.
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Reads `key` through `node`, then writes `value` (a delete when `None`) with the read's
    /// context; returns a line for the trace.
    pub async fn operate(&mut self, node: &Arc<Node>, key: usize, value: Option<String>) -> String {
        let name: Arc<[u8]> = key_name(key).into();
        let deadline = tokio::time::Instant::now() + OPERATION_TIMEOUT;
        let read = match node.coordinator.read(name.clone(), None, deadline).await {
            Ok(set) => set,
            Err(e) => return format!("read key{key} failed: {e}"),
        };
        let seen = values(&read);
        self.maybe_superseded
            .entry(key)
            .or_default()
            .extend(seen.iter().cloned());
        let mutation = match &value {
            Some(v) => {
                self.attempted.insert(v.clone());
                Mutation::put(v.clone().into_bytes(), None)
            }
            None => Mutation::delete(),
        };
        let deadline = tokio::time::Instant::now() + OPERATION_TIMEOUT;
        let written = node
            .coordinator
            .write(
                name,
                read.context().clone(),
                mutation,
                None,
                deadline,
                false,
            )
            .await;
        let what = value.clone().unwrap_or_else(|| "delete".into());
        match written {
            Ok(_) => {
                if let Some(v) = value {
                    self.acknowledged.entry(key).or_default().insert(v);
                }
                self.superseded
                    .entry(key)
                    .or_default()
                    .extend(seen.iter().cloned());
                format!("key{key} read {seen:?} then {what} ok")
            }
            Err(_) => format!("key{key} read {seen:?} then {what} failed"),
        }
    }
}

/// Every property against the healed cluster, one line per violation.
pub(crate) async fn all(cluster: &Cluster, history: &History) -> Vec<String> {
    let mut violations = history.notes.clone();
    for key in 0..cluster.settings.keys {
        let states = replica_states(cluster, key).await;
        let Some((first, state)) = states.first() else {
            violations.push(format!("key{key}: no replica answered"));
            continue;
        };
        for (other, s) in &states[1..] {
            if s != state {
                violations.push(format!(
                    "key{key}: kv-{first} and kv-{other} differ after the heal: {:?} vs {:?}",
                    values(state),
                    values(s)
                ));
            }
        }
        let live = values(state);
        let empty = BTreeSet::new();
        let superseded = history.superseded.get(&key).unwrap_or(&empty);
        let maybe = history.maybe_superseded.get(&key).unwrap_or(&empty);
        for v in history.acknowledged.get(&key).unwrap_or(&empty) {
            if !live.contains(v) && !maybe.contains(v) {
                violations.push(format!("key{key}: acknowledged {v} lost"));
            }
        }
        for v in &live {
            if !history.attempted.contains(v) {
                violations.push(format!("key{key}: {v} was never written"));
            }
            if superseded.contains(v) {
                violations.push(format!("key{key}: {v} came back after it was superseded"));
            }
        }
    }
    cluster
        .network
        .trace(format!("checked: {} violations", violations.len()));
    violations
}

/// The local state of `key` on each of its owners, by node index.
async fn replica_states(cluster: &Cluster, key: usize) -> Vec<(usize, SiblingSet)> {
    let name = key_name(key);
    let mut states = Vec::new();
    for i in 0..cluster.settings.nodes {
        let Some(node) = cluster.network.node(i) else {
            continue;
        };
        let view = node.membership.view();
        let partition = partition_of(&name, view.config.partitions);
        if !view.is_owner(&crate::member_id(i), partition) {
            continue;
        }
        if let Ok(set) = node.replica.read(partition, name.clone().into()).await {
            states.push((i, SiblingSet::clone(&set)));
        }
    }
    states
}
