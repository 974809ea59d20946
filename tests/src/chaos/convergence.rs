//! Convergence: every replica of every partition holds identical data, judged by the Merkle roots
//! that `GET /admin/v1/digests` reports.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::KvClient;

/// Polls the digests of `members` until, for every partition of the ring, all its replicas report
/// the same root, and the members hold at least `min_records` records in all (so digests that
/// report nothing cannot pass); returns how long that took, or what still differs after `timeout`.
pub async fn wait_converged(
    nodes: &[KvClient],
    members: &[usize],
    min_records: u64,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let differing = differing_partitions(nodes, members, min_records).await;
        if differing.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "{} partitions still differ after {timeout:?}; first: {}",
                differing.len(),
                differing[..differing.len().min(5)].join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The partitions whose replicas disagree (or that a member could not report) right now.
async fn differing_partitions(
    nodes: &[KvClient],
    members: &[usize],
    min_records: u64,
) -> Vec<String> {
    let Some(ring) = nodes[members[0]].try_admin_ring().await else {
        return vec![format!("kv-{} did not answer its ring", members[0])];
    };
    let mut roots: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
    let mut records = 0;
    for &m in members {
        let Some(digests) = nodes[m].try_admin_digests().await else {
            return vec![format!("kv-{m} did not answer its digests")];
        };
        records += digests.partitions.iter().map(|d| d.keys).sum::<u64>();
        let by_partition = digests
            .partitions
            .into_iter()
            .map(|d| (d.partition, d.root))
            .collect();
        roots.insert(digests.node_id, by_partition);
    }
    let mut differing = Vec::new();
    if records < min_records {
        differing.push(format!(
            "the members report {records} records, fewer than the {min_records} written"
        ));
    }
    for partition in &ring.partitions {
        let held: Vec<Option<&String>> = partition
            .replicas
            .iter()
            .map(|id| roots.get(id).and_then(|r| r.get(&partition.partition)))
            .collect();
        if held.windows(2).any(|pair| pair[0] != pair[1]) {
            differing.push(format!(
                "partition {} on {:?}: roots {held:?}",
                partition.partition, partition.replicas
            ));
        }
    }
    differing
}
