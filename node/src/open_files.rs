//! The open-file limit, and the connection cap that must fit under it.
//!
//! Every client connection is a file descriptor, and RocksDB and peer connections need others. At
//! start the node raises its soft `RLIMIT_NOFILE` to the hard limit (as Go programs do) and lowers
//! `--max-connections` to fit below it, so a flood of connections meets the cap and waits in the
//! listen backlog instead of making `accept` fail with `EMFILE`.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but client connections: RocksDB's files, peer connections,
/// the log and the config file.
pub const RESERVED_FILES: u64 = 1024;

/// Raises the soft open-file limit as far as the hard limit allows, and returns the most client
/// connections that fit under it, at most `wanted` (and at least 1).
pub fn fit_connections(wanted: usize) -> usize {
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return wanted;
        }
    };
    let fits = usize::try_from(soft.saturating_sub(RESERVED_FILES))
        .unwrap_or(usize::MAX)
        .max(1);
    if fits < wanted {
        tracing::warn!(
            wanted,
            fits,
            open_file_limit = soft,
            "--max-connections lowered to fit the open-file limit"
        );
    }
    wanted.min(fits)
}
