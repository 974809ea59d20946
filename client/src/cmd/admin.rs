//! `kvctl ring` and `kvctl status`: the admin views of one node.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;
use kvapi::{ADMIN_RING, ADMIN_STATUS, NodeStatus, RingView};
use kvclient::Client;

use crate::{fail, local_failure, stdout_bytes};

/// Arguments of `kvctl ring`.
#[derive(Debug, Args)]
pub(crate) struct RingArgs {
    /// Print the node's JSON answer as it came instead of the table (what --output json does).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `kvctl status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print the node's JSON answer as it came instead of the summary (what --output json does).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Runs `kvctl ring`.
pub(crate) async fn ring(client: &Client, args: RingArgs) -> ExitCode {
    let text = if args.json || crate::output::json() {
        match client.admin_get(ADMIN_RING).await {
            Ok(body) => with_newline(&body),
            Err(e) => return fail(&e),
        }
    } else {
        match client.ring().await {
            Ok(ring) => format_ring(&ring).into_bytes(),
            Err(e) => return fail(&e),
        }
    };
    match stdout_bytes(&text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => local_failure(&e),
    }
}

/// Runs `kvctl status`.
pub(crate) async fn status(client: &Client, args: StatusArgs) -> ExitCode {
    let text = if args.json || crate::output::json() {
        match client.admin_get(ADMIN_STATUS).await {
            Ok(body) => with_newline(&body),
            Err(e) => return fail(&e),
        }
    } else {
        match client.status().await {
            Ok(status) => format_status(&status).into_bytes(),
            Err(e) => return fail(&e),
        }
    };
    match stdout_bytes(&text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => local_failure(&e),
    }
}

/// The body, ending with a newline.
fn with_newline(body: &[u8]) -> Vec<u8> {
    let mut text = body.to_vec();
    if !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    text
}

/// The ring as a table (`partition  replicas`), then one line per member: the partitions it holds as a
/// replica and as the first of the preference list, and its share of the replica slots against the fair
/// share (every member holding the same number).
pub(crate) fn format_ring(ring: &RingView) -> String {
    let mut out = format!("epoch {}\n", ring.epoch);
    out.push_str(&format!("{:>9}  replicas\n", "partition"));
    // member -> (partitions held as a replica, partitions held first)
    let mut held: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut slots = 0usize;
    for partition in &ring.partitions {
        out.push_str(&format!(
            "{:>9}  {}\n",
            partition.partition,
            partition.replicas.join(",")
        ));
        for (rank, member) in partition.replicas.iter().enumerate() {
            let entry = held.entry(member.as_str()).or_default();
            entry.0 += 1;
            if rank == 0 {
                entry.1 += 1;
            }
            slots += 1;
        }
    }
    let partitions = ring.partitions.len();
    out.push_str(&format!(
        "\n{partitions} partitions, {slots} replica slots, {} members\n",
        held.len()
    ));
    if held.is_empty() {
        return out;
    }
    let fair = 100.0 / held.len() as f64;
    let width = held.keys().map(|m| m.len()).max().unwrap_or(6).max(6);
    out.push_str(&format!(
        "{:<width$}  {:>8}  {:>7}  {:>7}  {:>6}  {:>5}\n",
        "member", "replicas", "primary", "share", "fair", "ratio"
    ));
    for (member, (replicas, primary)) in &held {
        let share = 100.0 * *replicas as f64 / slots as f64;
        out.push_str(&format!(
            "{member:<width$}  {replicas:>8}  {primary:>7}  {share:>6.1}%  {fair:>5.1}%  {:>5.2}\n",
            share / fair
        ));
    }
    out
}

/// The node's view: id, membership, epoch, N/W/R, members, and each peer's liveness.
pub(crate) fn format_status(status: &NodeStatus) -> String {
    let config = &status.config;
    let mut out = format!(
        "node {}{}\ncluster {:?}, epoch {}, N={} W={} R={}, {} partitions, {} vnodes per member\n",
        status.node_id,
        if status.member {
            ""
        } else {
            " (not a member of its config)"
        },
        config.cluster,
        config.epoch,
        config.n,
        config.w,
        config.r,
        config.partitions,
        config.vnodes
    );
    out.push_str(&format!("members ({}):\n", config.members.len()));
    for member in &config.members {
        let liveness = if member.id == status.node_id {
            "self".to_owned()
        } else {
            match status.peers.iter().find(|p| p.id == member.id) {
                Some(peer) => peer_liveness(peer),
                None => "unknown".to_owned(),
            }
        };
        out.push_str(&format!(
            "  {:<12} {:<22} {liveness}\n",
            member.id, member.address
        ));
    }
    let strangers: Vec<_> = status
        .peers
        .iter()
        .filter(|p| config.member(&p.id).is_none())
        .collect();
    if !strangers.is_empty() {
        out.push_str("other peers:\n");
        for peer in strangers {
            out.push_str(&format!(
                "  {:<12} {:<22} {}\n",
                peer.id,
                peer.address,
                peer_liveness(peer)
            ));
        }
    }
    out
}

/// `alive (seen 12 ms ago)`, `down (seen 3021 ms ago)`, `down (never seen)`.
fn peer_liveness(peer: &kvapi::PeerStatus) -> String {
    let state = if peer.alive { "alive" } else { "down" };
    match peer.last_seen_ms_ago {
        Some(ms) => format!("{state} (seen {ms} ms ago)"),
        None => format!("{state} (never seen)"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use kvapi::{ClusterConfig, Member, PartitionView, PeerStatus};

    #[test]
    fn ring_tables_count_replicas_and_shares() {
        let ring = RingView {
            epoch: 3,
            partitions: vec![
                PartitionView {
                    partition: 0,
                    replicas: vec!["kv-0".into(), "kv-1".into()],
                },
                PartitionView {
                    partition: 1,
                    replicas: vec!["kv-1".into(), "kv-2".into()],
                },
                PartitionView {
                    partition: 2,
                    replicas: vec!["kv-1".into(), "kv-0".into()],
                },
            ],
        };
        let text = format_ring(&ring);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "epoch 3");
        assert_eq!(lines[1], "partition  replicas");
        assert_eq!(lines[2], "        0  kv-0,kv-1");
        assert_eq!(lines[4], "        2  kv-1,kv-0");
        assert!(text.contains("3 partitions, 6 replica slots, 3 members"));
        assert!(
            text.contains("kv-1           3        2    50.0%   33.3%   1.50"),
            "{text}"
        );
        assert!(text.contains("kv-2           1        0    16.7%   33.3%   0.50"));
    }

    #[test]
    fn status_lists_members_and_liveness() {
        let status = NodeStatus {
            node_id: "kv-0".into(),
            member: true,
            config: ClusterConfig {
                cluster: "local".into(),
                epoch: 2,
                members: (0..3)
                    .map(|i| Member {
                        id: format!("kv-{i}"),
                        address: format!("127.0.0.1:{}", 8080 + i),
                        peer_address: format!("127.0.0.1:{}", 9080 + i),
                    })
                    .collect(),
                n: 3,
                w: 2,
                r: 2,
                partitions: 256,
                vnodes: 64,
                sloppy_quorum: true,
                transition_from: None,
            },
            peers: vec![
                PeerStatus {
                    id: "kv-1".into(),
                    address: "127.0.0.1:8081".into(),
                    alive: true,
                    last_seen_ms_ago: Some(12),
                },
                PeerStatus {
                    id: "kv-2".into(),
                    address: "127.0.0.1:8082".into(),
                    alive: false,
                    last_seen_ms_ago: None,
                },
            ],
            hints_pending: 0,
            draining: false,
            transfer: None,
        };
        let text = format_status(&status);
        assert!(text.starts_with("node kv-0\ncluster \"local\", epoch 2, N=3 W=2 R=2"));
        assert!(text.contains("kv-0         127.0.0.1:8080         self\n"));
        assert!(text.contains("kv-1         127.0.0.1:8081         alive (seen 12 ms ago)\n"));
        assert!(text.contains("kv-2         127.0.0.1:8082         down (never seen)\n"));
        assert!(!text.contains("other peers"));
    }
}
