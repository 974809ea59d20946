//! `kvctl get`, `put` and `delete`: one key, as text or as JSON (see [`crate::output`]).

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::io::Read as _;
use std::process::ExitCode;

use clap::Args;
use kvclient::{Client, ReadOptions, ReadResult, WriteOptions};
use serde_json::Value;

use crate::output::{self, bytes_object};
use crate::{EXIT_NOT_FOUND, fail, local_failure, os_bytes, refuse, stderr_line, stdout_bytes};

/// Arguments of `kvctl get`.
#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// The key.
    #[arg(value_name = "KEY")]
    key: OsString,

    /// Read quorum for this request: how many replicas must answer (1..=N); the cluster default when absent.
    #[arg(long, env = "KVCTL_R", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    r: Option<u32>,

    /// Deadline of this request in milliseconds; the node default when absent.
    #[arg(long, env = "KVCTL_TIMEOUT_MS", value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
}

/// Arguments of `kvctl put`.
#[derive(Debug, Args)]
pub(crate) struct PutArgs {
    /// The key.
    #[arg(value_name = "KEY")]
    key: OsString,

    /// The value; `-` reads it from stdin.
    #[arg(value_name = "VALUE")]
    value: OsString,

    #[command(flatten)]
    write: WriteArgs,

    /// Time to live of the value (1s..=365days, such as 30s or 2h): from then on it reads as deleted.
    /// `none` for no expiry; the node's --default-ttl when absent.
    #[arg(long, value_name = "DURATION", value_parser = kvapi::ttl::parse)]
    ttl: Option<kvapi::ttl::Expiry>,
}

/// What `kvctl put` and `kvctl delete` share: the context written back, W and the deadline.
#[derive(Debug, Args)]
pub(crate) struct WriteArgs {
    /// Causal context from an earlier get or put of this key: the write or delete supersedes the
    /// values it has seen. Without it, it is concurrent with every stored value (they become siblings).
    #[arg(long, env = "KVCTL_CONTEXT", value_name = "TOKEN")]
    context: Option<String>,

    /// Write quorum for this request: how many replicas must acknowledge (1..=N); the cluster default when
    /// absent.
    #[arg(long, env = "KVCTL_W", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    w: Option<u32>,

    /// Deadline of this request in milliseconds; the node default when absent.
    #[arg(long, env = "KVCTL_TIMEOUT_MS", value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
}

/// Arguments of `kvctl delete`.
#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// The key.
    #[arg(value_name = "KEY")]
    key: OsString,

    #[command(flatten)]
    write: WriteArgs,
}

/// Runs `kvctl get`: text prints one value raw on stdout (its context on stderr), siblings as
/// `sibling N:` lines; JSON prints the object of
/// [`output::read`].
pub(crate) async fn get(client: &Client, args: GetArgs) -> ExitCode {
    let opts = ReadOptions {
        r: args.r,
        timeout_ms: args.timeout_ms,
    };
    let key = os_bytes(args.key);
    let read = match client.get(&key, &opts).await {
        Ok(read) => read,
        Err(e) => return fail(&e),
    };
    let live: Vec<&[u8]> = read.live().map(|s| s.value.as_slice()).collect();
    let found = matches!(read, ReadResult::Found { .. }) && !live.is_empty();
    let printed = if output::json() {
        output::line(&output::read(&key, &read))
    } else {
        print_read(&read, &live)
    };
    match printed {
        Err(e) => local_failure(&e),
        Ok(()) if found => ExitCode::SUCCESS,
        Ok(()) => ExitCode::from(EXIT_NOT_FOUND),
    }
}

/// A read as text: see [`get`].
fn print_read(read: &ReadResult, live: &[&[u8]]) -> std::io::Result<()> {
    match (read, live) {
        (ReadResult::Found { context, .. }, [value]) => {
            // On a terminal the value ends its line, so the prompt (or the context on stderr) does
            // not run into it; piped, the bytes are exactly the value.
            let newline = std::io::stdout().is_terminal() && !value.ends_with(b"\n");
            stdout_bytes(value)?;
            if newline {
                stdout_bytes(b"\n")?;
            }
            stderr_line(&format!("context: {context}"));
            Ok(())
        }
        (ReadResult::Found { context, .. }, values) if !values.is_empty() => {
            let mut text = String::new();
            for (i, value) in values.iter().enumerate() {
                text.push_str(&format!(
                    "sibling {}: {}\n",
                    i + 1,
                    String::from_utf8_lossy(value)
                ));
            }
            text.push_str(&format!("context: {context}\n"));
            stdout_bytes(text.as_bytes())
        }
        // Absent, or (should the node ever answer so) found with tombstones only.
        _ => {
            stderr_line("not found");
            if let Some(context) = read.context() {
                stderr_line(&format!("context: {context}"));
            }
            Ok(())
        }
    }
}

/// Runs `kvctl put`: prints the key's new context (JSON: `{"key", "context"}`).
pub(crate) async fn put(client: &Client, args: PutArgs) -> ExitCode {
    let value = if args.value == "-" {
        let mut buffer = Vec::new();
        if let Err(e) = std::io::stdin().lock().read_to_end(&mut buffer) {
            return refuse(&format!("reading the value from stdin: {e}"));
        }
        buffer
    } else {
        os_bytes(args.value)
    };
    let opts = WriteOptions {
        w: args.write.w,
        timeout_ms: args.write.timeout_ms,
        ttl: args.ttl,
    };
    let key = os_bytes(args.key);
    let context = match client
        .put(&key, value, args.write.context.as_deref(), &opts)
        .await
    {
        Ok(context) => context,
        Err(e) => return fail(&e),
    };
    let printed = if output::json() {
        let mut object = bytes_object("key", &key);
        object.insert("context".into(), Value::from(context));
        output::line(&Value::Object(object))
    } else {
        stdout_bytes(format!("{context}\n").as_bytes())
    };
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => local_failure(&e),
    }
}

/// Runs `kvctl delete`: prints nothing (JSON: `{"key", "deleted": true}`).
pub(crate) async fn delete(client: &Client, args: DeleteArgs) -> ExitCode {
    let opts = WriteOptions {
        w: args.write.w,
        timeout_ms: args.write.timeout_ms,
        ..WriteOptions::default()
    };
    let key = os_bytes(args.key);
    if let Err(e) = client
        .delete(&key, args.write.context.as_deref(), &opts)
        .await
    {
        return fail(&e);
    }
    if !output::json() {
        return ExitCode::SUCCESS;
    }
    let mut object = bytes_object("key", &key);
    object.insert("deleted".into(), Value::from(true));
    match output::line(&Value::Object(object)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => local_failure(&e),
    }
}
