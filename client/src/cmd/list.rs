//! `kvctl list`: the keys under a prefix, every page in turn.

use std::ffi::OsString;
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use kvclient::{Client, ListOptions};

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

/// Lists every page; keys go to stdout one per line as raw bytes.
pub(crate) async fn run(client: &Client, args: ListArgs) -> ExitCode {
    let opts = ListOptions {
        prefix: args.prefix.map(os_bytes).unwrap_or_default(),
        limit: args.limit,
        values: args.values,
        r: args.r,
        timeout_ms: None,
    };
    let mut written = Ok(());
    let listed = client
        .list_all(&opts, MAX_PAGES, |page| {
            let mut out = Vec::new();
            for listed in page.keys {
                let key = STANDARD.decode(&listed.key).unwrap_or_default();
                let siblings = listed.siblings.unwrap_or_default();
                if !args.values {
                    out.extend_from_slice(&key);
                    out.push(b'\n');
                }
                for sibling in siblings.iter().filter(|s| !s.deleted) {
                    let value = STANDARD.decode(&sibling.value).unwrap_or_default();
                    out.extend_from_slice(&key);
                    out.extend_from_slice(b" = ");
                    out.extend_from_slice(String::from_utf8_lossy(&value).as_bytes());
                    out.push(b'\n');
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
