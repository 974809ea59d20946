//! A `kvoperator` process for the tests against a real API server: started with a kubeconfig and
//! flags, its log kept, stopped (SIGTERM, then SIGKILL) when dropped.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::kube::{file_tail, terminate};

/// The `kvoperator` binary next to `kvnode` (`KVOPERATOR_BIN` when set).
pub fn kvoperator_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KVOPERATOR_BIN") {
        return PathBuf::from(bin);
    }
    let bin = crate::kvnode_bin().with_file_name("kvoperator");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build --workspace --all-targets` first",
        bin.display()
    );
    bin
}

/// The prefix of the operator's log line that names its metrics address.
const OPERATOR_LISTEN_MARK: &str = "serving /metrics and /health";

/// A running `kvoperator` process; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct OperatorProcess {
    child: Option<Child>,
    log_path: PathBuf,
    identity: String,
}

impl std::fmt::Debug for OperatorProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorProcess")
            .field("identity", &self.identity)
            .field("log", &self.log_path)
            .finish_non_exhaustive()
    }
}

impl OperatorProcess {
    /// Starts `kvoperator` with `KUBECONFIG=kubeconfig`, `--identity identity` and `args`; logs go
    /// to `log_path`. Waits (bounded) until it logged that it serves its metrics.
    pub fn start(kubeconfig: &Path, identity: &str, args: &[&str], log_path: &Path) -> Self {
        let log = File::create(log_path).expect("create operator log");
        let mut cmd = Command::new(kvoperator_bin());
        cmd.args(["--identity", identity, "--log-format", "text"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("KVOPERATOR_TEST_LOG")
                    .unwrap_or_else(|_| "info,kvoperator=debug".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone().expect("clone log"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KVOPERATOR_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd.spawn().expect("spawn kvoperator");
        // tracing writes to stdout: copy it to the log file and watch for the listen line.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut log = log;
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if line.contains(OPERATOR_LISTEN_MARK)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let mut op = Self {
            child: Some(child),
            log_path: log_path.to_path_buf(),
            identity: identity.to_string(),
        };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let status = op.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "kvoperator did not log `{OPERATOR_LISTEN_MARK}` within 30 s (exit: {status:?})\n\
                 --- operator log ---\n{}",
                op.log_tail(40)
            );
        }
        op
    }

    /// The identity it holds the Lease under.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path, lines)
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The `host:port` it serves `/metrics` on, from the `address=` of its listen line.
    pub fn metrics_address(&self) -> String {
        self.log()
            .lines()
            .filter(|line| line.contains(OPERATOR_LISTEN_MARK))
            .find_map(|line| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
            })
            .map(String::from)
            .unwrap_or_else(|| panic!("no address= on the `{OPERATOR_LISTEN_MARK}` log line"))
    }

    /// SIGTERM and wait (bounded).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- kvoperator log tail ({}) ---\n{}\n--- end of kvoperator log ---",
                self.log_path.display(),
                self.log_tail(60)
            );
        }
        self.stop();
    }
}
