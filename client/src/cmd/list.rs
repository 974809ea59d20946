//! `kvctl list`: the keys under a prefix, every page in turn.

use std::ffi::OsString;
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use kvclient::{Client, ListOptions};
use serde_json::Value;

use crate::output::bytes_object;
use crate::{fail, local_failure, os_bytes, stdout_bytes};

/// Pages read at most: a million keys at the largest limit.
const MAX_PAGES: usize = 1_000_000;

/// Arguments of `kvctl list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only keys that start with these bytes; every key when absent.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<OsString>,

    /// Keys per page (1..=1000); each page is one request.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,

    /// Print each key's live values too, as `KEY = VALUE` lines (lossy UTF-8).
    #[arg(long)]
    values: bool,

    /// Replicas that must answer for each partition (1..=N); the cluster default when absent.
    #[arg(long, env = "KVCTL_R", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    r: Option<u32>,
}

/// Lists every page; keys go to stdout one per line as raw bytes (JSON: `{"key"}` per key, with
/// `"values": [{"value"}]` when --values).
pub(crate) async fn run(client: &Client, args: ListArgs) -> ExitCode {
    let opts = ListOptions {
        prefix: args.prefix.map(os_bytes).unwrap_or_default(),
        limit: args.limit,
        values: args.values,
        r: args.r,
        timeout_ms: None,
    };
    let json = crate::output::json();
    let mut written = Ok(());
    let listed = client
        .list_all(&opts, MAX_PAGES, |page| {
            let mut out = Vec::new();
            for listed in page.keys {
                let key = STANDARD.decode(&listed.key).unwrap_or_default();
                let values: Vec<Vec<u8>> = listed
                    .siblings
                    .unwrap_or_default()
                    .iter()
                    .filter(|s| !s.deleted)
                    .map(|s| STANDARD.decode(&s.value).unwrap_or_default())
                    .collect();
                if json {
                    out.extend_from_slice(
                        key_json(&key, args.values.then_some(&values)).as_bytes(),
                    );
                } else {
                    key_text(&mut out, &key, args.values.then_some(&values));
                }
            }
            if written.is_ok() {
                written = stdout_bytes(&out);
            }
        })
        .await;
    match (listed, written) {
        (Err(e), _) => fail(&e),
        (Ok(()), Err(e)) => local_failure(&e),
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
    }
}

/// One listed key as text: the key as raw bytes, or with `values` one `KEY = VALUE` line per value.
fn key_text(out: &mut Vec<u8>, key: &[u8], values: Option<&Vec<Vec<u8>>>) {
    let Some(values) = values else {
        out.extend_from_slice(key);
        out.push(b'\n');
        return;
    };
    for value in values {
        out.extend_from_slice(key);
        out.extend_from_slice(b" = ");
        out.extend_from_slice(String::from_utf8_lossy(value).as_bytes());
        out.push(b'\n');
    }
}

/// One listed key as a JSON line.
fn key_json(key: &[u8], values: Option<&Vec<Vec<u8>>>) -> String {
    let mut object = bytes_object("key", key);
    if let Some(values) = values {
        let values = values
            .iter()
            .map(|v| Value::Object(bytes_object("value", v)))
            .collect();
        object.insert("values".into(), Value::Array(values));
    }
    format!("{}\n", Value::Object(object))
}
