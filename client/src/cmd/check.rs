//! `kvctl check`: writes a fresh key through --endpoint, reads the same value back, deletes it with
//! the write's context and confirms it is gone. `helm test` runs it (the image has no shell).

use std::process::ExitCode;

use clap::Args;
use kvclient::{Client, ReadOptions, ReadResult, WriteOptions};

use crate::{EXIT_UNREACHABLE, fail, stderr_line};

/// Arguments of `kvctl check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Prefix of the key written; a random suffix keeps concurrent checks apart.
    #[arg(long, default_value = "kvctl-check", value_name = "PREFIX")]
    pub(crate) key: String,
}

/// Runs the check; exits 0 when the write, the read, the delete and the final read all did what
/// they should.
pub(crate) async fn run(client: &Client, args: CheckArgs) -> ExitCode {
    let key = format!("{}-{:016x}", args.key, rand::random::<u64>());
    let value = format!(
        "written by kvctl check at {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    let w = WriteOptions::default();
    let context = match client
        .put(key.as_bytes(), value.clone().into_bytes(), None, &w)
        .await
    {
        Ok(context) => context,
        Err(e) => return fail(&e),
    };
    let read = match client.get(key.as_bytes(), &ReadOptions::default()).await {
        Ok(read) => read,
        Err(e) => return fail(&e),
    };
    let values: Vec<&[u8]> = read.live().map(|s| s.value.as_slice()).collect();
    if values != [value.as_bytes()] {
        return mismatch(&format!(
            "wrote {value:?} to {key}, read {:?}",
            values
                .iter()
                .map(|v| String::from_utf8_lossy(v))
                .collect::<Vec<_>>()
        ));
    }
    if let Err(e) = client.delete(key.as_bytes(), Some(&context), &w).await {
        return fail(&e);
    }
    match client.get(key.as_bytes(), &ReadOptions::default()).await {
        Ok(ReadResult::NotFound { .. }) => {}
        Ok(found) => {
            return mismatch(&format!(
                "{key} still holds {} value(s) after its delete",
                found.live().count()
            ));
        }
        Err(e) => return fail(&e),
    }
    if crate::output::json() {
        let report = serde_json::json!({"key": key, "endpoint": client.endpoint(), "ok": true});
        if let Err(e) = crate::output::line(&report) {
            return crate::local_failure(&e);
        }
    } else {
        stderr_line(&format!(
            "put, get and delete of {key} through {}: ok",
            client.endpoint()
        ));
    }
    ExitCode::SUCCESS
}

fn mismatch(message: &str) -> ExitCode {
    crate::error_line(message);
    ExitCode::from(EXIT_UNREACHABLE)
}
