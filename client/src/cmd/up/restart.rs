//! Keeping a local cluster up: a node that exits on its own is reported, and the stopped nodes
//! start again on their data when a line is typed on stdin.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::{
    LOG_TAIL_LINES, NodeExit, NodeInfo, READY_TIMEOUT, StopSignals, describe_status, log_tail,
    spawn_node, supervise,
};
use crate::stderr_line;

/// A local cluster once every node announced itself: what it takes to restart one.
pub(super) struct Running {
    pub(super) binary: PathBuf,
    pub(super) data_dir: PathBuf,
    pub(super) config_path: PathBuf,
    pub(super) nodes: Vec<NodeInfo>,
    pub(super) tasks: JoinSet<NodeExit>,
    pub(super) stop_rx: watch::Receiver<bool>,
    /// Indexes of the nodes that exited on their own and were not restarted yet.
    pub(super) down: BTreeSet<usize>,
}

impl Running {
    /// Reports a node that exited on its own, with the end of its log.
    pub(super) fn report_exit(&mut self, exit: &NodeExit) {
        let Some(node) = self.nodes.get(exit.index) else {
            return;
        };
        stderr_line(&format!(
            "{} exited on its own ({}); last lines of {}:",
            node.id,
            describe_status(&exit.status),
            node.log.display()
        ));
        stderr_line(&log_tail(&node.log, LOG_TAIL_LINES));
        self.down.insert(exit.index);
    }

    pub(super) fn down_ids(&self) -> String {
        let ids: Vec<&str> = self
            .down
            .iter()
            .filter_map(|i| self.nodes.get(*i))
            .map(|n| n.id.as_str())
            .collect();
        ids.join(", ")
    }

    /// Starts every stopped node again on its own data and waits for each to announce itself.
    /// Returns the stop signal when one arrives meanwhile.
    pub(super) async fn restart_down(&mut self, signals: &mut StopSignals) -> Option<&'static str> {
        if self.down.is_empty() {
            stderr_line("every node is running");
            return None;
        }
        for index in std::mem::take(&mut self.down) {
            let node = &self.nodes[index];
            let child = match spawn_node(&self.binary, node, &self.data_dir, &self.config_path) {
                Ok(child) => child,
                Err(e) => {
                    crate::error_line(&e);
                    self.down.insert(index);
                    continue;
                }
            };
            let (ready_tx, ready_rx) = oneshot::channel();
            self.tasks.spawn(supervise(
                index,
                child,
                node.log.clone(),
                self.stop_rx.clone(),
                ready_tx,
            ));
            tokio::select! {
                biased;
                signal = signals.recv() => return Some(signal),
                outcome = tokio::time::timeout(READY_TIMEOUT, ready_rx) => match outcome {
                    Ok(Ok(_)) => stderr_line(&format!("{} restarted on http://{}", node.id, node.address)),
                    Ok(Err(_)) => stderr_line(&format!(
                        "{} exited again before it was ready; see {}", node.id, node.log.display()
                    )),
                    Err(_) => stderr_line(&format!(
                        "{} did not print its ready line within {}s; see {}",
                        node.id, READY_TIMEOUT.as_secs(), node.log.display()
                    )),
                },
            }
        }
        None
    }
}

/// Lines typed on stdin, read by a thread of their own: a read blocked on a terminal cannot be
/// cancelled, and tokio's stdin would make the runtime wait for it at exit; a detached thread does
/// not keep the process alive.
pub(super) fn restart_requests() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() || tx.send(()).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line typed on stdin; `None` once stdin is closed or unreadable.
pub(super) async fn next_request(requests: &mut Option<mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match requests {
        Some(lines) => lines.recv().await,
        None => std::future::pending().await,
    }
}
