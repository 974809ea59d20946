//! `kvctl cluster`: membership changes and their progress, outside Kubernetes.
//!
//! `add` and `remove` offer the node at `--endpoint` a config one epoch higher with the member added
//! or removed; the nodes turn it into a transition, move the data, and settle the ring themselves.
//! The command then waits (unless `--no-wait`) until every member reports the settled config; after
//! a removal it also drains the removed node and waits until it holds no hints, and only then says
//! that the node may be stopped.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kvapi::{ClusterConfig, Member, NodeStatus};
use kvclient::{Client, Error};
use serde_json::{Value, json};

use crate::fail;

/// Pause between polls while waiting.
const POLL: Duration = Duration::from_millis(500);
/// How often a waiting `add` or `remove` says where the change stands (on stderr).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// `kvctl cluster` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Every member's view: epoch, transition progress and hints held
    Status,
    /// Add a member and wait for the ring to settle
    ///
    /// Start the new node first (without --cluster-config, or with the cluster's current file): it
    /// learns the config from its peers.
    Add {
        /// The new member's id.
        id: String,
        /// The new member's client `host:port` (its --listen, as clients and kvctl reach it).
        address: String,
        /// The new member's peer `host:port` (its --peer-listen), reachable from the other members.
        peer_address: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove a member, wait for its data to move, and drain it
    Remove {
        /// The member's id.
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change N, W, R or the quorum mode
    ///
    /// W and R apply at once; a new N moves data like a membership change.
    Set {
        /// Replicas per key.
        #[arg(long)]
        n: Option<u32>,
        /// Default write quorum.
        #[arg(long)]
        w: Option<u32>,
        /// Default read quorum.
        #[arg(long)]
        r: Option<u32>,
        /// Sloppy quorum (hinted handoff to fallback nodes) on or off.
        #[arg(long)]
        sloppy_quorum: Option<bool>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// How `add`, `remove` and `set` wait for the change to complete.
#[derive(Debug, Args)]
pub(crate) struct WaitArgs {
    /// Return once the change is accepted instead of waiting for the ring to settle.
    #[arg(long)]
    no_wait: bool,
    /// Longest wait for the ring to settle.
    #[arg(long, default_value = "10m")]
    timeout: humantime::Duration,
}

/// Runs `kvctl cluster ...`.
pub(crate) async fn run(client: &Client, command: ClusterCommand) -> ExitCode {
    let outcome = match command {
        ClusterCommand::Status => status(client).await,
        ClusterCommand::Add {
            id,
            address,
            peer_address,
            wait,
        } => {
            change(client, &wait, None, |c| {
                if c.member(&id).is_some() {
                    return Err(format!("{id} is already a member"));
                }
                c.members.push(Member {
                    id: id.clone(),
                    address: address.clone(),
                    peer_address: peer_address.clone(),
                });
                Ok(())
            })
            .await
        }
        ClusterCommand::Remove { id, wait } => {
            change(client, &wait, Some(&id), |c| {
                let before = c.members.len();
                c.members.retain(|m| m.id != id);
                if c.members.len() == before {
                    return Err(format!("{id} is not a member"));
                }
                Ok(())
            })
            .await
        }
        ClusterCommand::Set {
            n,
            w,
            r,
            sloppy_quorum,
            wait,
        } => {
            change(client, &wait, None, |c| {
                c.n = n.unwrap_or(c.n);
                c.w = w.unwrap_or(c.w);
                c.r = r.unwrap_or(c.r);
                c.sloppy_quorum = sloppy_quorum.unwrap_or(c.sloppy_quorum);
                Ok(())
            })
            .await
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Client(e)) => fail(&e),
        Err(Failure::Refused(message)) => crate::refuse(&message),
    }
}

enum Failure {
    Client(Error),
    Refused(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Client(e)
    }
}

/// Applies `edit` to the current config, offers it with the next epoch, and waits as asked.
async fn change(
    client: &Client,
    wait: &WaitArgs,
    removed: Option<&str>,
    edit: impl FnOnce(&mut ClusterConfig) -> Result<(), String>,
) -> Result<(), Failure> {
    let mut config = client.cluster().await?;
    if config.in_transition() {
        return Err(Failure::Refused(format!(
            "a membership change is in progress at epoch {}; wait for it (kvctl cluster status)",
            config.epoch
        )));
    }
    let removed_address = removed.and_then(|id| config.member(id).map(|m| m.address.clone()));
    edit(&mut config).map_err(Failure::Refused)?;
    config.epoch += 1;
    config.validate().map_err(Failure::Refused)?;
    let installed = client.put_cluster(&config).await?;
    let moving = installed.in_transition();
    step(
        &format!(
            "epoch {} accepted{}",
            installed.epoch,
            if moving { ": data is moving" } else { "" }
        ),
        json!({"step": "accepted", "epoch": installed.epoch, "moving": moving}),
    );
    if wait.no_wait {
        return Ok(());
    }
    let deadline = Instant::now() + *wait.timeout;
    let settled = wait_settled(client, installed.epoch, deadline).await?;
    step(
        &format!("ring settled at epoch {}", settled.epoch),
        json!({"step": "settled", "epoch": settled.epoch}),
    );
    if let (Some(id), Some(address)) = (removed, removed_address) {
        let leaving = client.at(&address)?;
        leaving.drain().await?;
        loop {
            let status = leaving.status().await?;
            if status.hints_pending == 0 && !status.member {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Failure::Refused(format!(
                    "{id} still holds {} hints; it must not be stopped yet",
                    status.hints_pending
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        step(
            &format!("{id} holds nothing the cluster needs: it may be stopped"),
            json!({"step": "drained", "member": id}),
        );
    }
    Ok(())
}

/// Reports one step of a change on stdout (see [`crate::output::emit`]).
fn step(text: &str, object: Value) {
    // A closed stdout does not stop a change that is already under way.
    let _ = crate::output::emit(text, object);
}

/// Waits until every member reports one config at or past `epoch` with no transition.
async fn wait_settled(
    client: &Client,
    epoch: u64,
    deadline: Instant,
) -> Result<ClusterConfig, Failure> {
    let started = Instant::now();
    let mut last_report = started;
    loop {
        if let Ok(statuses) = member_statuses(client).await {
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                crate::stderr_line(&progress_line(&statuses, started.elapsed()));
            }
            let configs: Vec<&ClusterConfig> = statuses
                .iter()
                .filter_map(|(_, s)| s.as_ref().ok())
                .map(|s| &s.config)
                .collect();
            let all_answered = configs.len() == statuses.len();
            if let Some(first) = configs.first() {
                let settled = all_answered
                    && first.epoch >= epoch
                    && !first.in_transition()
                    && configs.iter().all(|c| c == first);
                if settled {
                    return Ok((*first).clone());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Failure::Refused(
                "the ring did not settle in time; see kvctl cluster status".into(),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One line on a change in progress: partitions moved so far over every member, and who does not
/// answer or is not on the new epoch yet.
fn progress_line(statuses: &[(Member, Result<NodeStatus, Error>)], elapsed: Duration) -> String {
    let (mut done, mut total) = (0u64, 0u64);
    let mut waiting = Vec::new();
    for (member, status) in statuses {
        match status {
            Ok(s) => {
                if let Some(t) = &s.transfer {
                    done += u64::from(t.partitions_done);
                    total += u64::from(t.partitions_total);
                }
                if s.config.in_transition() {
                    waiting.push(format!("{} (epoch {}, moving)", member.id, s.config.epoch));
                }
            }
            Err(_) => waiting.push(format!("{} (not answering)", member.id)),
        }
    }
    let moved = if total > 0 {
        format!("{done}/{total} partitions received")
    } else {
        "no partition transfer reported".to_owned()
    };
    let waiting = if waiting.is_empty() {
        "waiting for every member to report the settled ring".to_owned()
    } else {
        format!("waiting for {}", waiting.join(", "))
    };
    format!("after {}s: {moved}; {waiting}", elapsed.as_secs())
}

/// The status of every member of the endpoint's config (and of the ring being left), in order.
async fn member_statuses(
    client: &Client,
) -> Result<Vec<(Member, Result<NodeStatus, Error>)>, Error> {
    let config = client.cluster().await?;
    let mut members = config.members.clone();
    if let Some(prior) = &config.transition_from {
        for m in &prior.members {
            if config.member(&m.id).is_none() {
                members.push(m.clone());
            }
        }
    }
    let mut out = Vec::new();
    for member in members {
        let status = match client.at(&member.address) {
            Ok(c) => c.status().await,
            Err(e) => Err(e),
        };
        out.push((member, status));
    }
    Ok(out)
}

/// Prints every member's view: a table, or one JSON line per member.
async fn status(client: &Client) -> Result<(), Failure> {
    let statuses = member_statuses(client).await?;
    let json = crate::output::json();
    let mut out = String::new();
    if !json {
        out.push_str(&format!(
            "{:<12} {:<22} {:>6} {:<11} {:>9} {:>8}\n",
            "MEMBER", "ADDRESS", "EPOCH", "RING", "RECEIVING", "HINTS"
        ));
    }
    for (member, status) in statuses {
        out.push_str(&member_line(&member, status, json));
        out.push('\n');
    }
    crate::stdout_bytes(out.as_bytes())
        .map_err(|e| Failure::Refused(format!("writing to stdout: {e}")))
}

/// One member's line of `cluster status`, as a table row or a JSON object.
fn member_line(member: &Member, status: Result<NodeStatus, Error>, json: bool) -> String {
    let s = match status {
        Ok(s) => s,
        Err(e) if json => {
            return json!({"member": member.id, "address": member.address, "error": e.to_string()})
                .to_string();
        }
        Err(e) => return format!("{:<12} {:<22} unreachable: {e}", member.id, member.address),
    };
    let ring = if s.config.in_transition() {
        "transition"
    } else if s.member {
        "settled"
    } else {
        "left"
    };
    if json {
        let receiving = s.transfer.as_ref().map(|t| {
            json!({"partitions_done": t.partitions_done, "partitions_total": t.partitions_total})
        });
        return json!({
            "member": member.id,
            "address": member.address,
            "epoch": s.config.epoch,
            "ring": ring,
            "receiving": receiving,
            "hints": s.hints_pending,
        })
        .to_string();
    }
    let receiving = s.transfer.as_ref().map_or("-".to_string(), |t| {
        format!("{}/{}", t.partitions_done, t.partitions_total)
    });
    format!(
        "{:<12} {:<22} {:>6} {:<11} {:>9} {:>8}",
        member.id, member.address, s.config.epoch, ring, receiving, s.hints_pending
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn progress_sums_transfers_and_names_who_is_waited_for() {
        let config = crate::cmd::up::local_config("c", 3, 18080).unwrap();
        let member = |i: usize| config.members[i].clone();
        let mut moving = config.clone();
        moving.transition_from = Some(kvapi::PriorRing {
            epoch: 1,
            members: config.members.clone(),
            n: config.n,
        });
        let status = |i: usize, done: u32, total: u32| NodeStatus {
            node_id: config.members[i].id.clone(),
            member: true,
            config: moving.clone(),
            peers: Vec::new(),
            hints_pending: 0,
            draining: false,
            transfer: Some(kvapi::TransferStatus {
                from_epoch: 1,
                to_epoch: 2,
                partitions_total: total,
                partitions_done: done,
                keys_received: 0,
                bytes_received: 0,
                pending: Vec::new(),
            }),
        };
        let statuses = vec![
            (member(0), Ok(status(0, 10, 40))),
            (member(1), Ok(status(1, 5, 20))),
            (member(2), Err(Error::InvalidKey("unreachable".into()))),
        ];
        let line = progress_line(&statuses, Duration::from_secs(12));
        assert!(
            line.starts_with("after 12s: 15/60 partitions received"),
            "{line}"
        );
        assert!(line.contains("kv-0 (epoch 1, moving)"), "{line}");
        assert!(line.contains("kv-2 (not answering)"), "{line}");
    }
}
