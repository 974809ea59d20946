//! The set workload: clients add unique elements to a few keys by read, merge siblings, write back
//! with the read's context; and the final read of every set once faults are healed.
//!
//! A set is stored as its elements in decimal, comma-separated. Element `e` of client `c` is
//! `c * 1_000_000 + e`, unique across the run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};

use super::checker::{Outcome, SetOp};
use crate::{KvClient, Resp};

/// Query of the workload's requests: the node gives up after 2 s, well inside the client timeout.
const QUERY: &str = "?timeout_ms=2000";

/// How many clients, on how many keys, for how long at most.
#[derive(Debug, Clone)]
pub struct SetLoad {
    /// Concurrent clients.
    pub clients: usize,
    /// Keys the sets live at (`set-0`, `set-1`, …).
    pub keys: usize,
    /// Operations each client attempts at most.
    pub max_ops_per_client: usize,
    /// Seed of the clients' choices of key and node.
    pub seed: u64,
}

/// The name of set `i`.
pub fn set_key(i: usize) -> String {
    format!("set-{i}")
}

/// Encodes a set as the workload stores it.
pub fn encode_set(set: &BTreeSet<u64>) -> Vec<u8> {
    let parts: Vec<String> = set.iter().map(u64::to_string).collect();
    parts.join(",").into_bytes()
}

/// Decodes a stored set; panics on bytes no client wrote, which means corruption.
pub fn decode_set(bytes: &[u8]) -> BTreeSet<u64> {
    if bytes.is_empty() {
        return BTreeSet::new();
    }
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.split(',').map(|e| e.parse().ok()).collect())
        .unwrap_or_else(|| panic!("a stored set is not a workload value: {bytes:?}"))
}

/// The union of the live siblings of a `GET` answer (200, or 300 with siblings) or the empty set
/// (404); `None` for any other answer.
fn union_of(resp: &Resp) -> Option<BTreeSet<u64>> {
    match resp.status {
        200 | 300 => Some(
            resp.live_values()
                .iter()
                .flat_map(|v| decode_set(v))
                .collect(),
        ),
        404 => Some(BTreeSet::new()),
        _ => None,
    }
}

/// The set workload running in the background until [`RunningLoad::finish`].
pub struct RunningLoad {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<SetOp>>>,
}

impl RunningLoad {
    /// Starts `load.clients` clients. Each picks a key and a node among `targets` for each
    /// operation, and stops after its `max_ops_per_client`, at `deadline`, or at
    /// [`RunningLoad::finish`].
    pub fn start(
        load: &SetLoad,
        nodes: Vec<KvClient>,
        targets: Vec<usize>,
        deadline: Instant,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let tasks = (0..load.clients)
            .map(|c| {
                let nodes = nodes.clone();
                let targets = targets.clone();
                let stop = stop.clone();
                let mut rng = SmallRng::seed_from_u64(load.seed ^ ((c as u64 + 1) << 32));
                let (keys, max_ops) = (load.keys, load.max_ops_per_client);
                tokio::spawn(async move {
                    let mut history = Vec::new();
                    for n in 0..max_ops {
                        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            break;
                        }
                        let node = targets[rng.random_range(0..targets.len())];
                        let key = set_key(rng.random_range(0..keys));
                        let element = c as u64 * 1_000_000 + n as u64;
                        let outcome = add_element(&nodes[node], &key, element).await;
                        if outcome == Outcome::Failed {
                            // The node is down or cut off: do not spin on it.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        history.push(SetOp {
                            key,
                            element,
                            outcome,
                            at: start.elapsed(),
                        });
                    }
                    history
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the clients and returns every operation they recorded.
    pub async fn finish(self) -> Vec<SetOp> {
        self.stop.store(true, Ordering::Relaxed);
        let mut history = Vec::new();
        for task in self.tasks {
            history.extend(task.await.expect("a workload client panicked"));
        }
        history
    }
}

/// `GET` of `key` with `query`, asking for every sibling as JSON.
async fn read_set(node: &KvClient, key: &str, query: &str) -> reqwest::Result<Resp> {
    let path = format!("{}{query}", KvClient::kv_path(key.as_bytes()));
    node.try_request("GET", &path, &[("accept", "application/json")], None)
        .await
}

/// Read `key`, merge its siblings, add `element`, write back with the read's context.
async fn add_element(node: &KvClient, key: &str, element: u64) -> Outcome {
    let Ok(read) = read_set(node, key, QUERY).await else {
        return Outcome::Failed;
    };
    let Some(mut set) = union_of(&read) else {
        return Outcome::Failed;
    };
    set.insert(element);
    let context = read.context();
    let path = format!("{}{QUERY}", KvClient::kv_path(key.as_bytes()));
    let headers: Vec<(&str, &str)> = context
        .as_deref()
        .map(|c| (kvapi::CONTEXT_HEADER, c))
        .into_iter()
        .collect();
    match node
        .try_request("PUT", &path, &headers, Some(encode_set(&set)))
        .await
    {
        Ok(resp) if resp.status == 204 => Outcome::Acknowledged,
        _ => Outcome::Indeterminate,
    }
}

/// Reads every set through every node of `members` at `r` = `n` (all replicas) and returns their
/// union per key, with a description of each disagreement between nodes (empty once converged).
/// Each read is retried for up to 20 s before the run fails.
pub async fn read_final_sets(
    nodes: &[KvClient],
    members: &[usize],
    keys: usize,
    n: u32,
) -> (BTreeMap<String, BTreeSet<u64>>, Vec<String>) {
    let query = format!("?r={n}");
    let mut finals = BTreeMap::new();
    let mut disagreements = Vec::new();
    for k in 0..keys {
        let key = set_key(k);
        let mut seen: Vec<(usize, BTreeSet<u64>)> = Vec::new();
        for &m in members {
            let deadline = Instant::now() + Duration::from_secs(20);
            let set = loop {
                let resp = read_set(&nodes[m], &key, &query).await;
                if let Some(set) = resp.as_ref().ok().and_then(union_of) {
                    break set;
                }
                assert!(
                    Instant::now() < deadline,
                    "the final read of {key} through kv-{m} at r={n} kept failing for 20 s: {resp:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            seen.push((m, set));
        }
        let union: BTreeSet<u64> = seen.iter().flat_map(|(_, s)| s.iter().copied()).collect();
        for (m, set) in &seen {
            if *set != union {
                disagreements.push(format!(
                    "{key} through kv-{m} lacks {} of {} elements",
                    union.len() - set.len(),
                    union.len()
                ));
            }
        }
        finals.insert(key, union);
    }
    (finals, disagreements)
}

/// Acknowledged writes in each second of the run, as `|12 40 0 3|`: how available the store was
/// while faults came and went.
pub fn acks_per_second(history: &[SetOp]) -> String {
    let mut seconds: Vec<u32> = Vec::new();
    for op in history
        .iter()
        .filter(|op| op.outcome == Outcome::Acknowledged)
    {
        let s = op.at.as_secs() as usize;
        if seconds.len() <= s {
            seconds.resize(s + 1, 0);
        }
        seconds[s] += 1;
    }
    let shown: Vec<String> = seconds.iter().map(u32::to_string).collect();
    format!("|{}|", shown.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_round_trip() {
        for set in [
            BTreeSet::new(),
            BTreeSet::from([7]),
            BTreeSet::from([1, 2_000_003]),
        ] {
            assert_eq!(decode_set(&encode_set(&set)), set);
        }
    }
}
