//! `kvctl watch`: follows one key (`kvctl watch KEY`) or every key under a prefix
//! (`kvctl watch --prefix P`), printing one line per change until --count changes or Ctrl-C.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kvclient::{Client, Error, ReadOptions, ReadResult};
use serde_json::Value;

use crate::output::bytes_object;
use crate::{EXIT_REFUSED, fail, local_failure, os_bytes, stdout_bytes};

/// Arguments of `kvctl watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The key to follow; omit it with --prefix.
    #[arg(
        value_name = "KEY",
        required_unless_present = "prefix",
        conflicts_with = "prefix"
    )]
    key: Option<OsString>,

    /// Follow every key under this prefix (the change feed) instead of one key; `""` is every key.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<OsString>,

    /// Context of the state already seen: the first change reported is the first one after it
    /// (without it, the key's current state is reported first).
    #[arg(long, value_name = "TOKEN")]
    context: Option<String>,

    /// How long each long-poll waits before asking again (at most 60s).
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    wait: humantime::Duration,

    /// Stop after this many changes (default: follow until interrupted).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// Follows the key or the prefix; each change is one stdout line: for a key `VALUE` (lossy UTF-8),
/// `siblings: N` or `deleted`, for a prefix the changed key (JSON: see [`key_change`], and
/// `{"key"}` per changed key of a prefix).
pub(crate) async fn run(client: &Client, args: WatchArgs) -> ExitCode {
    let wait = *args.wait;
    if wait.is_zero() || wait > kvapi::watch::MAX_WAIT {
        return crate::refuse("--wait must be between 1ms and 60s");
    }
    let count = args.count.unwrap_or(u64::MAX);
    match (args.prefix, args.key) {
        (Some(prefix), _) => follow_prefix(client, &os_bytes(prefix), wait, count).await,
        (None, Some(key)) => follow_key(client, &os_bytes(key), args.context, wait, count).await,
        (None, None) => ExitCode::from(EXIT_REFUSED),
    }
}

async fn follow_key(
    client: &Client,
    key: &[u8],
    mut context: Option<String>,
    wait: Duration,
    count: u64,
) -> ExitCode {
    let mut seen = 0;
    while seen < count {
        let read = match client
            .watch(key, context.as_deref(), wait, &ReadOptions::default())
            .await
        {
            Ok(Some(read)) => read,
            Ok(None) => continue,
            Err(e) => return fail(&e),
        };
        if let Err(e) = stdout_bytes(key_change(key, &read).as_bytes()) {
            return local_failure(&e);
        }
        context = read.context().map(str::to_owned);
        seen += 1;
    }
    ExitCode::SUCCESS
}

async fn follow_prefix(client: &Client, prefix: &[u8], wait: Duration, count: u64) -> ExitCode {
    let mut cursor = match client.changes(prefix, None, wait).await {
        Ok(start) => start.cursor,
        Err(e) => return fail(&e),
    };
    let mut seen = 0;
    while seen < count {
        match client.changes(prefix, Some(&cursor), wait).await {
            Ok(changes) => {
                for key in changes.keys.iter().take((count - seen) as usize) {
                    let line = if crate::output::json() {
                        format!("{}\n", Value::Object(bytes_object("key", key)))
                    } else {
                        format!("{}\n", String::from_utf8_lossy(key))
                    };
                    if let Err(e) = stdout_bytes(line.as_bytes()) {
                        return local_failure(&e);
                    }
                    seen += 1;
                }
                cursor = changes.cursor;
            }
            Err(Error::Server { status: 410, body }) => {
                crate::error_line(&format!(
                    "{}: changes may have been missed; list the prefix again",
                    body.message
                ));
                return ExitCode::from(1);
            }
            Err(e) => return fail(&e),
        }
    }
    ExitCode::SUCCESS
}

/// The line printed for a new state of a watched key: as text its value, `deleted` or
/// `siblings: N`; as JSON the object of [`crate::output::read`].
fn key_change(key: &[u8], read: &ReadResult) -> String {
    let live: Vec<&[u8]> = read.live().map(|s| s.value.as_slice()).collect();
    if crate::output::json() {
        return format!("{}\n", crate::output::read(key, read));
    }
    match (read, live.as_slice()) {
        (ReadResult::Found { .. }, [value]) => format!("{}\n", String::from_utf8_lossy(value)),
        (_, []) => "deleted\n".to_string(),
        (_, values) => format!("siblings: {}\n", values.len()),
    }
}
