//! `kvctl backup`: cluster backups in object storage, and restores into a running cluster.
//!
//! `create` and `restore` are [`kvclient::backup`]'s (kvoperator runs the same on a schedule):
//! a backup is complete only once its cluster manifest is written, and a restore merges every
//! checkpoint into the current cluster, of any size. The target's S3 endpoint is `--s3-endpoint` here and each node's `--backup-endpoint`
//! there; credentials come from the `AWS_*` environment on both sides.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use kvbackup::object_store::ObjectStore;
use kvbackup::target::{self, S3Settings};
use kvbackup::transfer;
use kvclient::Client;
use kvclient::backup::{self, BackupError, mebibytes};

use serde_json::{Value, json};

use crate::{EXIT_UNREACHABLE, fail};

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
                ..S3Settings::default()
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
        Err(BackupError::Node(e)) => fail(&e),
        Err(BackupError::Store(e)) => crate::refuse(&e.to_string()),
        Err(BackupError::Members(what)) => {
            crate::error_line(&format!("{what}; see above"));
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

async fn create(
    client: &Client,
    args: &TargetArgs,
    id: Option<String>,
    timeout: std::time::Duration,
) -> Result<(), BackupError> {
    let started = Instant::now();
    let id = id.unwrap_or_else(|| backup::default_id(SystemTime::now()));
    target::check_name("backup id", &id)?;
    let target = backup::Target {
        url: args.target.clone(),
        store: args.open()?,
    };
    progress(&format!("backup {id}: every member of the cluster config"));
    let outcome = backup::create(
        client,
        &target,
        &id,
        timeout,
        |member, outcome| match outcome {
            Ok(report) => say(
                &format!(
                    "  {member}: {} files, {} in {:.1} s",
                    report.files,
                    mebibytes(report.bytes),
                    report.millis as f64 / 1000.0
                ),
                json!({"member": member, "files": report.files, "bytes": report.bytes,
                    "millis": report.millis}),
            ),
            Err(e) => failed(
                &format!("  {member}: failed: {e}"),
                json!({"member": member, "error": e.to_string()}),
            ),
        },
        |member, e| {
            eprintln!(
                "  warning: cannot resume hint delivery on {member} ({e}); it resumes by itself"
            );
        },
    )
    .await;
    if let Err(BackupError::Members(_)) = &outcome {
        eprintln!("remove the incomplete backup with `kvctl backup delete {id}`");
    }
    let manifest = outcome?;
    let seconds = started.elapsed().as_secs_f64();
    say(
        &format!(
            "backup {id} complete: {} members of {}, {} in {seconds:.1} s",
            manifest.members.len(),
            manifest.cluster,
            mebibytes(manifest.bytes()),
        ),
        json!({"backup": id, "complete": true, "members": manifest.members.len(),
            "cluster": manifest.cluster, "bytes": manifest.bytes(), "seconds": seconds}),
    );
    Ok(())
}

async fn list(args: &TargetArgs) -> Result<(), BackupError> {
    let store = args.open()?;
    for backup in transfer::list(store.as_ref()).await? {
        match backup.manifest {
            Some(m) => {
                let started = humantime::format_rfc3339_seconds(
                    UNIX_EPOCH + std::time::Duration::from_millis(m.started_unix_ms),
                );
                say(
                    &format!(
                        "{:<24} complete    {:>2} members  {:>10}  started {started}",
                        backup.id,
                        m.members.len(),
                        mebibytes(m.bytes()),
                    ),
                    json!({"id": backup.id, "complete": true, "members": m.members.len(),
                        "bytes": m.bytes(), "started": started.to_string()}),
                );
            }
            None => say(
                &format!("{:<24} incomplete", backup.id),
                json!({"id": backup.id, "complete": false}),
            ),
        }
    }
    Ok(())
}

async fn delete(args: &TargetArgs, id: &str) -> Result<(), BackupError> {
    target::check_name("backup id", id)?;
    let store = args.open()?;
    let objects = transfer::delete(store.as_ref(), id).await?;
    say(
        &format!("deleted backup {id}: {objects} objects"),
        json!({"deleted": id, "objects": objects}),
    );
    Ok(())
}

async fn restore(
    client: &Client,
    args: &TargetArgs,
    id: &str,
    timeout: std::time::Duration,
) -> Result<(), BackupError> {
    let started = Instant::now();
    let store = args.open()?;
    let manifest = backup::manifest(store.as_ref(), id).await?;
    progress(&format!(
        "restoring backup {id} ({} checkpoints, {})",
        manifest.nodes.len(),
        mebibytes(manifest.bytes()),
    ));
    let totals = backup::restore(
        client,
        &args.target,
        &manifest,
        timeout,
        |(source, through, outcome)| match outcome {
            Ok(r) => say(
                &format!(
                    "  {source}'s checkpoint through {through}: {} records, {} hints, {} replica merges changed data, {} in {:.1} s",
                    r.records,
                    r.hints,
                    r.changed,
                    mebibytes(r.bytes),
                    r.millis as f64 / 1000.0
                ),
                json!({"source": source, "through": through, "records": r.records, "hints": r.hints,
                    "changed": r.changed, "bytes": r.bytes, "millis": r.millis}),
            ),
            Err(e) => failed(
                &format!("  {source}'s checkpoint through {through}: failed: {e}"),
                json!({"source": source, "through": through, "error": e.to_string()}),
            ),
        },
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    say(
        &format!(
            "restored backup {id}: {} records and {} hints merged, {} replica merges changed data, in {seconds:.1} s",
            totals.records, totals.hints, totals.changed,
        ),
        json!({"restored": id, "records": totals.records, "hints": totals.hints,
            "changed": totals.changed, "seconds": seconds}),
    );
    Ok(())
}

/// One result line (see [`crate::output::emit`]); a closed stdout does not stop a backup under way.
fn say(text: &str, object: Value) {
    let _ = crate::output::emit(text, object);
}

/// A heading line for people: on stdout as text, left out of JSON output.
fn progress(text: &str) {
    if !crate::output::json() {
        say(text, Value::Null);
    }
}

/// One member's failure: on stderr as text, or as a JSON result line (the command then fails).
fn failed(text: &str, object: Value) {
    if crate::output::json() {
        let _ = crate::output::line(&object);
    } else {
        crate::stderr_line(text);
    }
}
