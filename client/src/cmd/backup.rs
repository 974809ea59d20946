//! `kvctl backup`: cluster backups in object storage, and restores into a running cluster.
//!
//! `create` records the start time, asks every member of the cluster config to back itself up into
//! the target, and writes the cluster manifest only when all of them succeeded: a backup without
//! one is incomplete and never restored. `restore` hands each backed-up node's checkpoint to a
//! member of the current cluster (any size), which merges its records and hints into their current
//! replicas. The target's S3 endpoint is `--s3-endpoint` here and each node's `--backup-endpoint`
//! there; credentials come from the `AWS_*` environment on both sides.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use kvapi::{BackupRequest, RestoreRequest};
use kvbackup::manifest::{ClusterManifest, FORMAT, NodeManifest};
use kvbackup::object_store::ObjectStore;
use kvbackup::target::{self, S3Settings};
use kvbackup::transfer;
use kvclient::Client;
use tokio::task::JoinSet;

use crate::{EXIT_REFUSED, EXIT_UNREACHABLE, fail};

/// `kvctl backup` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Back up every member into the target
    ///
    /// Every write acknowledged before the command starts is in the backup once it prints `complete`.
    Create {
        #[command(flatten)]
        target: TargetArgs,
        /// The backup's id (default: the start time, `2026-11-28T203000Z`).
        #[arg(long)]
        id: Option<String>,
        /// Longest time a member may take to upload its checkpoint.
        #[arg(long, default_value = "1h")]
        timeout: humantime::Duration,
    },
    /// List the backups in the target, complete or not
    List {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Delete a backup's objects from the target
    Delete {
        /// The backup.
        id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Merge a complete backup into the cluster at --endpoint
    ///
    /// Each record keeps its full causal history, so restoring twice, or onto live data, loses
    /// nothing and invents nothing. Prints each checkpoint as it is done, then the totals.
    Restore {
        /// The backup.
        id: String,
        #[command(flatten)]
        target: TargetArgs,
        /// Longest time one checkpoint's restore may take.
        #[arg(long, default_value = "1h")]
        timeout: humantime::Duration,
    },
}

/// Where the backups are.
#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    /// `file:///absolute/dir` (a directory every node and kvctl can reach) or `s3://bucket/prefix`.
    #[arg(long, env = "KVCTL_BACKUP_TARGET", value_name = "URL")]
    target: String,
    /// Endpoint of an S3-compatible server (AWS when absent); credentials come from AWS_* variables.
    #[arg(long, env = "KVCTL_S3_ENDPOINT", value_name = "URL")]
    s3_endpoint: Option<String>,
}

impl TargetArgs {
    fn open(&self) -> Result<Arc<dyn ObjectStore>, kvbackup::Error> {
        kvbackup::install_crypto_provider();
        target::open(
            &self.target,
            &S3Settings {
                endpoint: self.s3_endpoint.clone(),
            },
        )
    }
}

/// Runs `kvctl backup ...`.
pub(crate) async fn run(client: &Client, command: BackupCommand) -> ExitCode {
    let outcome = match command {
        BackupCommand::Create {
            target,
            id,
            timeout,
        } => create(client, &target, id, *timeout).await,
        BackupCommand::List { target } => list(&target).await,
        BackupCommand::Delete { id, target } => delete(&target, &id).await,
        BackupCommand::Restore {
            id,
            target,
            timeout,
        } => restore(client, &target, &id, *timeout).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Node(e)) => fail(&e),
        Err(Failure::Store(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_REFUSED)
        }
        Err(Failure::Members(what)) => {
            eprintln!("error: {what}; see above");
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

/// Why a backup command failed.
enum Failure {
    Node(kvclient::Error),
    Store(kvbackup::Error),
    /// Some members failed, as printed; the message says how many of what.
    Members(String),
}

impl From<kvclient::Error> for Failure {
    fn from(e: kvclient::Error) -> Self {
        Failure::Node(e)
    }
}

impl From<kvbackup::Error> for Failure {
    fn from(e: kvbackup::Error) -> Self {
        Failure::Store(e)
    }
}

async fn create(
    client: &Client,
    args: &TargetArgs,
    id: Option<String>,
    timeout: std::time::Duration,
) -> Result<(), Failure> {
    // The start is recorded before any member is asked: every write acknowledged before it is on W
    // replicas (or on a fallback's hints) before that member's checkpoint.
    let started_at = SystemTime::now();
    let started = Instant::now();
    let id = id.unwrap_or_else(|| {
        humantime::format_rfc3339_seconds(started_at)
            .to_string()
            .replace(':', "")
    });
    target::check_name("backup id", &id)?;
    let store = args.open()?;
    let config = client.cluster().await?;
    println!(
        "backup {id}: {} members of {} at epoch {}",
        config.members.len(),
        config.cluster,
        config.epoch
    );
    let members = config
        .members
        .iter()
        .map(|m| Ok((m.id.clone(), client.at(&m.address)?)))
        .collect::<Result<Vec<_>, kvclient::Error>>()?;
    // Hold hint delivery everywhere before any checkpoint, so no hint moves from a fallback that
    // has not checkpointed yet to an owner that already has. The hold ends by itself if kvctl
    // dies; it is released below either way.
    let hold_millis = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(60_000);
    let held = hold_handoff(&members, hold_millis).await;
    let failed = match held {
        Ok(()) => backup_all(&members, &args.target, &id, timeout).await,
        Err(e) => {
            eprintln!("  cannot hold hint delivery: {e}");
            1
        }
    };
    if let Err(e) = hold_handoff(&members, 0).await {
        eprintln!(
            "  warning: cannot resume hint delivery on every member ({e}); it resumes by itself"
        );
    }
    if failed > 0 {
        eprintln!(
            "backup {id} is incomplete (no cluster manifest); remove it with `kvctl backup delete {id}`"
        );
        return Err(Failure::Members(format!(
            "{failed} of {} members failed to back up",
            config.members.len()
        )));
    }
    let mut nodes = Vec::with_capacity(config.members.len());
    for member in &config.members {
        let path = target::node_manifest(&id, &member.id);
        let node: NodeManifest = transfer::get_json(store.as_ref(), &path).await?;
        if node.epoch != config.epoch {
            return Err(Failure::Members(format!(
                "the cluster config changed during the backup ({} checkpointed at epoch {}, the \
                 backup started at {}): backup {id} is incomplete, take another",
                node.node_id, node.epoch, config.epoch
            )));
        }
        nodes.push(node);
    }
    let manifest = ClusterManifest {
        format: FORMAT,
        backup_id: id.clone(),
        cluster: config.cluster.clone(),
        started_unix_ms: unix_ms(started_at),
        finished_unix_ms: unix_ms(SystemTime::now()),
        members: config.members.iter().map(|m| m.id.clone()).collect(),
        nodes,
    };
    transfer::put_json(store.as_ref(), &target::cluster_manifest(&id), &manifest).await?;
    println!(
        "backup {id} complete: {} in {:.1} s",
        bytesize(manifest.bytes()),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Holds (or with 0, resumes) hint delivery on every member, trying each even when one fails, and
/// returns the first failure.
async fn hold_handoff(members: &[(String, Client)], millis: u64) -> Result<(), String> {
    let mut first = None;
    for (id, node) in members {
        if let Err(e) = node.hold_handoff(millis).await {
            first.get_or_insert(format!("{id}: {e}"));
        }
    }
    first.map_or(Ok(()), Err)
}

/// Asks every member to back up, prints each outcome and returns how many failed.
async fn backup_all(
    members: &[(String, Client)],
    target: &str,
    id: &str,
    timeout: std::time::Duration,
) -> usize {
    let mut tasks = JoinSet::new();
    for (member, node) in members {
        let request = BackupRequest {
            target: target.to_owned(),
            backup_id: id.to_owned(),
        };
        let (member, node) = (member.clone(), node.clone());
        tasks.spawn(async move { (member, node.backup(&request, timeout).await) });
    }
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((member, Ok(report))) => println!(
                "  {member}: {} files, {} in {:.1} s",
                report.files,
                bytesize(report.bytes),
                report.millis as f64 / 1000.0
            ),
            Ok((member, Err(e))) => {
                eprintln!("  {member}: failed: {e}");
                failed += 1;
            }
            Err(e) => {
                eprintln!("  a backup task failed: {e}");
                failed += 1;
            }
        }
    }
    failed
}

async fn list(args: &TargetArgs) -> Result<(), Failure> {
    let store = args.open()?;
    for backup in transfer::list(store.as_ref()).await? {
        match backup.manifest {
            Some(m) => println!(
                "{:<24} complete    {:>2} members  {:>10}  started {}",
                backup.id,
                m.members.len(),
                bytesize(m.bytes()),
                humantime::format_rfc3339_seconds(
                    UNIX_EPOCH + std::time::Duration::from_millis(m.started_unix_ms)
                )
            ),
            None => println!("{:<24} incomplete", backup.id),
        }
    }
    Ok(())
}

async fn delete(args: &TargetArgs, id: &str) -> Result<(), Failure> {
    target::check_name("backup id", id)?;
    let store = args.open()?;
    let objects = transfer::delete(store.as_ref(), id).await?;
    println!("deleted backup {id}: {objects} objects");
    Ok(())
}

async fn restore(
    client: &Client,
    args: &TargetArgs,
    id: &str,
    timeout: std::time::Duration,
) -> Result<(), Failure> {
    target::check_name("backup id", id)?;
    let started = Instant::now();
    let store = args.open()?;
    let manifest: ClusterManifest =
        transfer::get_json(store.as_ref(), &target::cluster_manifest(id))
            .await
            .map_err(|e| match e {
                kvbackup::Error::Missing(_) => kvbackup::Error::Missing(format!(
                    "{} (backup {id} is absent or incomplete)",
                    target::cluster_manifest(id)
                )),
                other => other,
            })?;
    let config = client.cluster().await?;
    if config.members.is_empty() {
        return Err(Failure::Store(kvbackup::Error::BadTarget(
            "the cluster at --endpoint has no members".into(),
        )));
    }
    println!(
        "restoring backup {id} ({} checkpoints, {}) into {} ({} members)",
        manifest.nodes.len(),
        bytesize(manifest.bytes()),
        config.cluster,
        config.members.len()
    );
    // Each current member restores its share of the checkpoints, one at a time (a node runs one
    // backup or restore at a time).
    let mut shares: Vec<Vec<String>> = vec![Vec::new(); config.members.len()];
    for (i, node) in manifest.nodes.iter().enumerate() {
        shares[i % config.members.len()].push(node.node_id.clone());
    }
    let mut tasks = JoinSet::new();
    for (member, share) in config.members.iter().zip(shares) {
        let node = client.at(&member.address)?;
        let (through, target, id) = (member.id.clone(), args.target.clone(), id.to_string());
        tasks.spawn(async move {
            let mut reports = Vec::new();
            for source in share {
                let request = RestoreRequest {
                    target: target.clone(),
                    backup_id: id.clone(),
                    node_id: source.clone(),
                };
                let outcome = node.restore(&request, timeout).await;
                match &outcome {
                    Ok(r) => println!(
                        "  {source}'s checkpoint through {through}: {} records, {} hints, {} replica merges changed data, {} in {:.1} s",
                        r.records,
                        r.hints,
                        r.changed,
                        bytesize(r.bytes),
                        r.millis as f64 / 1000.0
                    ),
                    Err(e) => eprintln!("  {source}'s checkpoint through {through}: failed: {e}"),
                }
                reports.push(outcome);
            }
            reports
        });
    }
    let (mut records, mut hints, mut changed, mut failed) = (0, 0, 0, 0);
    while let Some(joined) = tasks.join_next().await {
        let outcomes = joined.unwrap_or_else(|e| {
            eprintln!("  a restore task failed: {e}");
            vec![Err(kvclient::Error::InvalidResponse(e.to_string()))]
        });
        for outcome in outcomes {
            match outcome {
                Ok(r) => {
                    records += r.records;
                    hints += r.hints;
                    changed += r.changed;
                }
                Err(_) => failed += 1,
            }
        }
    }
    if failed > 0 {
        return Err(Failure::Members(format!(
            "{failed} of {} checkpoints failed to restore",
            manifest.nodes.len()
        )));
    }
    println!(
        "restored backup {id}: {records} records and {hints} hints merged, {changed} replica merges changed data, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn bytesize(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
