//! The open-file limit, and the connection cap that must fit under it.
//!
//! Every client connection is a file descriptor, and RocksDB and peer connections need others. At
//! start the node raises its soft `RLIMIT_NOFILE` to the hard limit (as Go programs do) and lowers
//! `--max-connections` to fit below it, so a flood of connections meets the cap and waits in the
//! listen backlog instead of making `accept` fail with `EMFILE`.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but client connections (RocksDB's files, peer connections, the
/// log and the config file): this many, or half the limit when the limit is below twice this.
pub const RESERVED_FILES: u64 = 1024;

/// Client connections that fit under an open-file limit of `limit`: all but the reserve, which is
/// [`RESERVED_FILES`] or, under a small limit (a container runtime's default 1024), half of it.
fn connections_under(limit: u64) -> usize {
    let reserve = RESERVED_FILES.min(limit / 2);
    usize::try_from(limit.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(1)
}

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
    let fits = connections_under(soft);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_limit_still_leaves_half_for_connections() {
        assert_eq!(
            connections_under(1024),
            512,
            "runc's and Docker's default limit"
        );
        assert_eq!(connections_under(4096), 3072);
        assert_eq!(connections_under(1_048_576), 1_047_552);
        assert_eq!(connections_under(1), 1);
    }
}
