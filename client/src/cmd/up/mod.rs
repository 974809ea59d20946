//! `kvctl up`: a local cluster of kvnode processes on loopback, in the foreground.
//!
//! Node `i` has id `kv-i`, listens on `127.0.0.1:(PORT+i)` for clients and on
//! `127.0.0.1:(PORT+i+PEER_PORT_OFFSET)` for its peers (1000 above: 9080.. by default), keeps its data in
//! `DIR/kv-i` and its stderr in `DIR/kv-i.log`; every node reads the same `DIR/cluster.json` and
//! `DIR/context.key` (made on the first run). Ctrl-C or SIGTERM stops the nodes (SIGTERM,
//! then SIGKILL after [`STOP_TIMEOUT`]). A node that exits on its own is reported and the others keep
//! serving; Enter restarts the stopped nodes on their data.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use clap::Args;
use kvapi::{ClusterConfig, Member};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::{EXIT_REFUSED, EXIT_UNREACHABLE, refuse, stderr_line};

mod restart;
use restart::{Running, next_request, restart_requests};

/// The stdout line by which a kvnode announces that it serves (followed by its address).
pub(crate) const READY_PREFIX: &str = "kvnode listening on http://";
/// How long one node may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Replication factor of a local cluster of three nodes or more.
const MAX_LOCAL_N: u32 = 3;
/// Partitions of a local cluster (the design's default).
const LOCAL_PARTITIONS: u32 = 256;
/// Tokens per member of a local cluster (the design's default).
const LOCAL_VNODES: u32 = 64;
/// Largest local cluster.
const MAX_NODES: u16 = 64;
/// Lines of a node's log shown when it fails.
const LOG_TAIL_LINES: usize = 20;
/// Name of the config file in the data directory.
const CONFIG_FILE: &str = "cluster.json";
/// Name of the context key file in the data directory, shared by every node (`--context-key-file`).
const CONTEXT_KEY_FILE: &str = "context.key";
/// A local node's peer port is its client port plus this.
pub(crate) const PEER_PORT_OFFSET: u16 = 1000;

/// Arguments of `kvctl up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Number of kvnode processes.
    #[arg(long, env = "KVCTL_UP_NODES", default_value_t = 3, value_name = "COUNT",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_NODES)))]
    pub(crate) nodes: u16,

    /// Directory of the cluster: `cluster.json`, each node's data directory `kv-i` and its log `kv-i.log`.
    #[arg(
        long,
        env = "KVCTL_UP_DATA_DIR",
        default_value = "./kvdata",
        value_name = "DIR"
    )]
    pub(crate) data_dir: PathBuf,

    /// Port of node kv-0; node kv-i listens on 127.0.0.1:(PORT+i), and for its peers on
    /// 127.0.0.1:(PORT+i+1000).
    #[arg(long, env = "KVCTL_UP_PORT", default_value_t = 8080, value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) port: u16,

    /// Cluster name written to a new cluster.json.
    #[arg(
        long,
        env = "KVCTL_UP_CLUSTER",
        default_value = "local",
        value_name = "NAME"
    )]
    pub(crate) cluster: String,

    /// The kvnode binary. Without it: a `kvnode` next to this kvctl executable, else `kvnode` on PATH.
    #[arg(long, env = "KVNODE_BIN", value_name = "PATH")]
    pub(crate) kvnode: Option<PathBuf>,
}

/// The config of a fresh local cluster: `nodes` members `kv-i` on `127.0.0.1:(port+i)` with peer ports
/// [`PEER_PORT_OFFSET`] above, N = min(3, nodes), W = R = a majority of N, epoch 1.
pub(crate) fn local_config(cluster: &str, nodes: u16, port: u16) -> Result<ClusterConfig, String> {
    if nodes == 0 {
        return Err("a cluster needs at least one node".to_owned());
    }
    let offset = u32::from(PEER_PORT_OFFSET);
    let last = u32::from(port) + u32::from(nodes) - 1;
    if port == 0 || last + offset > u32::from(u16::MAX) {
        return Err(format!(
            "ports {port}..={last} and their peer ports {}..={} do not fit: pick a --port between 1 \
             and {}",
            u32::from(port) + offset,
            last + offset,
            u32::from(u16::MAX) + 1 - u32::from(nodes) - offset
        ));
    }
    let members = (0..nodes)
        .map(|i| {
            let client_port = u32::from(port) + u32::from(i);
            Member {
                id: format!("kv-{i}"),
                address: format!("127.0.0.1:{client_port}"),
                peer_address: format!("127.0.0.1:{}", client_port + offset),
            }
        })
        .collect();
    let n = u32::from(nodes).min(MAX_LOCAL_N);
    let quorum = n / 2 + 1;
    let config = ClusterConfig {
        cluster: cluster.to_owned(),
        epoch: 1,
        members,
        n,
        w: quorum,
        r: quorum,
        partitions: LOCAL_PARTITIONS,
        vnodes: LOCAL_VNODES,
        sloppy_quorum: true,
        transition_from: None,
    };
    config.validate()?;
    Ok(config)
}

/// Picks the config to run with: an existing `cluster.json` with the same cluster name and members is kept
/// (a restart keeps its epoch and settings); one that differs is refused.
pub(crate) fn reconcile_config(
    existing: Option<ClusterConfig>,
    wanted: ClusterConfig,
    path: &Path,
) -> Result<ClusterConfig, String> {
    let Some(existing) = existing else {
        return Ok(wanted);
    };
    if existing.cluster == wanted.cluster && existing.members == wanted.members {
        return Ok(existing);
    }
    let describe = |c: &ClusterConfig| {
        let members: Vec<String> = c
            .members
            .iter()
            .map(|m| format!("{}@{}", m.id, m.address))
            .collect();
        format!("cluster {:?} [{}]", c.cluster, members.join(", "))
    };
    Err(format!(
        "{} describes {} (epoch {}), not the requested {}; membership changes belong to `kvctl cluster` \
         (to come): start with the same --nodes/--port/--cluster, or use a fresh --data-dir",
        path.display(),
        describe(&existing),
        existing.epoch,
        describe(&wanted)
    ))
}

/// Finds the kvnode binary: the explicit path (flag or `KVNODE_BIN`), else `kvnode` next to this
/// executable, else `kvnode` on `PATH`.
fn find_kvnode(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(format!(
                "the kvnode binary {} (--kvnode or KVNODE_BIN) does not exist",
                path.display()
            ))
        };
    }
    let name = format!("kvnode{}", std::env::consts::EXE_SUFFIX);
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
    {
        let candidate = dir.join(&name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(&name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err("no kvnode binary: pass --kvnode PATH, set KVNODE_BIN, put kvnode next to kvctl or on PATH \
         (`cargo build -p kvnode` builds it into target/debug)"
        .to_owned())
}

/// True for a regular file that may be executed.
fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// Reads `cluster.json` if it exists.
fn read_config(path: &Path) -> Result<Option<ClusterConfig>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is not a cluster config: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Writes `cluster.json` through a temporary file and a rename.
fn write_config(path: &Path, config: &ClusterConfig) -> Result<(), String> {
    let mut text = serde_json::to_string_pretty(config)
        .map_err(|e| format!("encoding the cluster config: {e}"))?;
    text.push('\n');
    let temp = path.with_extension("json.tmp");
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Creates the cluster's context key file (64 random hex characters, readable by the owner only)
/// unless it exists: a key kept across runs keeps the contexts clients hold valid.
fn ensure_context_key(path: &Path) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    let key: [u8; 32] = rand::random();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut file| writeln!(file, "{hex}"))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The last `lines` lines of a log file (at most its last 64 KiB), or a note saying why there are none.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let read = || -> std::io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match read() {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            if tail.is_empty() {
                "(the log is empty)".to_owned()
            } else {
                tail.join("\n")
            }
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// One node of the local cluster.
#[derive(Debug, Clone)]
struct NodeInfo {
    /// Node id, `kv-i`.
    id: String,
    /// `127.0.0.1:PORT`.
    address: String,
    /// `127.0.0.1:PORT+1000`.
    peer_address: String,
    /// `DIR/kv-i.log`.
    log: PathBuf,
}

/// How a node's supervising task ended.
#[derive(Debug)]
struct NodeExit {
    /// Index of the node.
    index: usize,
    /// Its exit status, or why waiting for it failed.
    status: std::io::Result<ExitStatus>,
    /// True when kvctl asked it to stop; false when it exited on its own.
    requested: bool,
    /// True when it needed SIGKILL.
    killed: bool,
}

/// Supervises one node: forwards its stdout to its log (signalling `ready` on the ready line), and on a
/// stop request sends SIGTERM, waits up to [`STOP_TIMEOUT`] and then kills it.
async fn supervise(
    index: usize,
    mut child: Child,
    log: PathBuf,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<String>,
) -> NodeExit {
    let mut ready = Some(ready);
    let mut lines = child.stdout.take().map(|out| BufReader::new(out).lines());
    let mut log = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .await
        .ok();
    loop {
        tokio::select! {
            status = child.wait() => {
                return NodeExit { index, status, requested: false, killed: false };
            }
            _ = stop.changed() => break,
            line = next_line(&mut lines) => {
                match line {
                    Some(line) => {
                        if let Some(address) = line.strip_prefix(READY_PREFIX)
                            && let Some(ready) = ready.take()
                        {
                            let _ = ready.send(address.trim().to_owned());
                        }
                        if let Some(log) = log.as_mut() {
                            let _ = log.write_all(format!("{line}\n").as_bytes()).await;
                        }
                    }
                    None => lines = None,
                }
            }
        }
    }
    terminate(&mut child);
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    loop {
        tokio::select! {
            status = child.wait() => {
                return NodeExit { index, status, requested: true, killed: false };
            }
            _ = tokio::time::sleep_until(deadline) => break,
            line = next_line(&mut lines) => {
                match (line, log.as_mut()) {
                    (Some(line), Some(log)) => {
                        let _ = log.write_all(format!("{line}\n").as_bytes()).await;
                    }
                    (Some(_), None) => {}
                    (None, _) => lines = None,
                }
            }
        }
    }
    let _ = child.start_kill();
    let status = child.wait().await;
    NodeExit {
        index,
        status,
        requested: true,
        killed: true,
    }
}

/// The next stdout line of a node; pending forever once stdout is closed (or was never there).
async fn next_line(
    lines: &mut Option<tokio::io::Lines<BufReader<tokio::process::ChildStdout>>>,
) -> Option<String> {
    match lines {
        Some(lines) => lines.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// Asks a running child to stop: SIGTERM on Unix, a kill elsewhere.
fn terminate(child: &mut Child) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = child.start_kill();
    }
}

/// The stop requests kvctl honours: Ctrl-C (SIGINT) and, on Unix, SIGTERM. Installed before the nodes
/// start, so a signal during startup is not lost.
struct StopSignals {
    /// SIGINT.
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    /// SIGTERM.
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers.
    fn install() -> std::io::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(StopSignals {})
        }
    }

    /// Waits for the next stop request; returns its name.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "interrupt",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "interrupt"
        }
    }
}

/// Describes an exit status: `exit code 1`, `signal 9`, ...
fn describe_status(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => {
            if let Some(code) = status.code() {
                return format!("exit code {code}");
            }
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                if let Some(signal) = status.signal() {
                    return format!("killed by signal {signal}");
                }
            }
            status.to_string()
        }
        Err(e) => format!("unknown status ({e})"),
    }
}

/// Runs `kvctl up`.
pub(crate) async fn run(args: UpArgs) -> ExitCode {
    let wanted = match local_config(&args.cluster, args.nodes, args.port) {
        Ok(config) => config,
        Err(e) => return refuse(&e),
    };
    let binary = match find_kvnode(args.kvnode.as_deref()) {
        Ok(binary) => binary,
        Err(e) => return refuse(&e),
    };
    if let Err(e) = std::fs::create_dir_all(&args.data_dir) {
        return refuse(&format!("creating {}: {e}", args.data_dir.display()));
    }
    let config_path = args.data_dir.join(CONFIG_FILE);
    let config = match read_config(&config_path)
        .and_then(|existing| reconcile_config(existing, wanted, &config_path))
    {
        Ok(config) => config,
        Err(e) => return refuse(&e),
    };
    if let Err(e) = write_config(&config_path, &config) {
        return refuse(&e);
    }
    if let Err(e) = ensure_context_key(&args.data_dir.join(CONTEXT_KEY_FILE)) {
        return refuse(&e);
    }
    let mut signals = match StopSignals::install() {
        Ok(signals) => signals,
        Err(e) => return refuse(&format!("cannot install signal handlers: {e}")),
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut nodes = Vec::new();
    let mut readiness = Vec::new();
    for (index, member) in config.members.iter().enumerate() {
        let node = NodeInfo {
            id: member.id.clone(),
            address: member.address.clone(),
            peer_address: member.peer_address.clone(),
            log: args.data_dir.join(format!("{}.log", member.id)),
        };
        let child = match spawn_node(&binary, &node, &args.data_dir, &config_path) {
            Ok(child) => child,
            Err(e) => {
                crate::error_line(&e);
                let _ = stop_tx.send(true);
                stop_all(&mut tasks, &nodes, false).await;
                return ExitCode::from(EXIT_REFUSED);
            }
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        tasks.spawn(supervise(
            index,
            child,
            node.log.clone(),
            stop_rx.clone(),
            ready_tx,
        ));
        nodes.push(node);
        readiness.push(ready_rx);
    }

    // Every node started at once: each gets READY_TIMEOUT from now to announce itself.
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    for (node, ready) in nodes.iter().zip(readiness) {
        let failure = tokio::select! {
            biased;
            signal = signals.recv() => {
                stderr_line(&format!("{signal}: stopping the nodes"));
                let _ = stop_tx.send(true);
                stop_all(&mut tasks, &nodes, false).await;
                return ExitCode::SUCCESS;
            }
            outcome = tokio::time::timeout_at(deadline, ready) => match outcome {
                Ok(Ok(_)) => None,
                Ok(Err(_)) => Some(format!("{} exited before it was ready", node.id)),
                Err(_) => Some(format!(
                    "{} did not print its ready line within {}s",
                    node.id,
                    READY_TIMEOUT.as_secs()
                )),
            },
        };
        if let Some(failure) = failure {
            crate::error_line(&format!("{failure}; last lines of {}:", node.log.display()));
            stderr_line(&log_tail(&node.log, LOG_TAIL_LINES));
            let _ = stop_tx.send(true);
            stop_all(&mut tasks, &nodes, false).await;
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    }

    // A closed stdout is no reason to stop the cluster.
    let _ = print_banner(&config, &nodes, &args.data_dir);

    let mut cluster = Running {
        binary,
        data_dir: args.data_dir,
        config_path,
        nodes,
        tasks,
        stop_rx,
        down: BTreeSet::new(),
    };
    // Enter restarts the nodes that stopped; without a usable stdin there is no such request.
    let mut requests = Some(restart_requests());
    loop {
        tokio::select! {
            biased;
            signal = signals.recv() => {
                stderr_line(&format!("{signal}: stopping the nodes"));
                let _ = stop_tx.send(true);
                stop_all(&mut cluster.tasks, &cluster.nodes, true).await;
                return ExitCode::SUCCESS;
            }
            Some(joined) = cluster.tasks.join_next() => {
                let Ok(exit) = joined else {
                    crate::error_line("a node supervisor failed; stopping the other nodes");
                    let _ = stop_tx.send(true);
                    stop_all(&mut cluster.tasks, &cluster.nodes, true).await;
                    return ExitCode::from(EXIT_UNREACHABLE);
                };
                cluster.report_exit(&exit);
                if cluster.down.len() == cluster.nodes.len() {
                    crate::error_line("every node has stopped");
                    return ExitCode::from(EXIT_UNREACHABLE);
                }
                stderr_line(&format!(
                    "the other nodes keep serving; press Enter to restart {}, Ctrl-C to stop the cluster",
                    cluster.down_ids()
                ));
            }
            line = next_request(&mut requests) => {
                if line.is_none() {
                    requests = None;
                } else if let Some(signal) = cluster.restart_down(&mut signals).await {
                    stderr_line(&format!("{signal}: stopping the nodes"));
                    let _ = stop_tx.send(true);
                    stop_all(&mut cluster.tasks, &cluster.nodes, true).await;
                    return ExitCode::SUCCESS;
                }
            }
        }
    }
}

/// Announces the running cluster: its settings and every node's endpoint (one JSON object with
/// --output json).
fn print_banner(
    config: &ClusterConfig,
    nodes: &[NodeInfo],
    data_dir: &Path,
) -> std::io::Result<()> {
    if crate::output::json() {
        let nodes: Vec<_> = nodes
            .iter()
            .map(|n| serde_json::json!({"id": n.id, "endpoint": format!("http://{}", n.address)}))
            .collect();
        return crate::output::line(&serde_json::json!({
            "cluster": config.cluster,
            "epoch": config.epoch,
            "n": config.n,
            "w": config.w,
            "r": config.r,
            "data_dir": data_dir,
            "nodes": nodes,
        }));
    }
    let mut banner = format!(
        "cluster {:?}: {} node(s), epoch {}, N={} W={} R={}, data in {}\n",
        config.cluster,
        nodes.len(),
        config.epoch,
        config.n,
        config.w,
        config.r,
        data_dir.display()
    );
    for node in nodes {
        banner.push_str(&format!("{} http://{}\n", node.id, node.address));
    }
    banner.push_str(&format!(
        "try: kvctl --endpoint http://{} put k v\nCtrl-C stops the cluster.\n",
        nodes
            .first()
            .map_or("127.0.0.1:8080", |n| n.address.as_str())
    ));
    crate::stdout_bytes(banner.as_bytes())
}

/// Starts one node: `kvnode --node-id ID --listen ADDR --peer-listen PEER_ADDR --data-dir DIR/ID
/// --cluster-config DIR/cluster.json --context-key-file DIR/context.key`,
/// stdout piped (for the ready line), stderr appended to the node's log, in its own process group so a
/// terminal's Ctrl-C reaches kvctl only and kvctl stops the nodes in order.
fn spawn_node(
    binary: &Path,
    node: &NodeInfo,
    data_dir: &Path,
    config_path: &Path,
) -> Result<Child, String> {
    let node_dir = data_dir.join(&node.id);
    std::fs::create_dir_all(&node_dir)
        .map_err(|e| format!("creating {}: {e}", node_dir.display()))?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .map_err(|e| format!("opening {}: {e}", node.log.display()))?;
    let _ = writeln!(
        log,
        "--- kvctl up: starting {} on {} at {}",
        node.id,
        node.address,
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
    let mut command = Command::new(binary);
    command
        .arg("--node-id")
        .arg(&node.id)
        .arg("--listen")
        .arg(&node.address)
        .arg("--peer-listen")
        .arg(&node.peer_address)
        .arg("--data-dir")
        .arg(&node_dir)
        .arg("--cluster-config")
        .arg(config_path)
        .arg("--context-key-file")
        .arg(data_dir.join(CONTEXT_KEY_FILE))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    command
        .spawn()
        .map_err(|e| format!("starting {} for {}: {e}", binary.display(), node.id))
}

/// Waits for every supervising task (the stop request is already sent; each is bounded by
/// [`STOP_TIMEOUT`]) and reports how each node ended when `report` is set.
async fn stop_all(tasks: &mut JoinSet<NodeExit>, nodes: &[NodeInfo], report: bool) {
    while let Some(joined) = tasks.join_next().await {
        let Ok(exit) = joined else { continue };
        let Some(node) = nodes.get(exit.index) else {
            continue;
        };
        if exit.killed {
            stderr_line(&format!(
                "{} did not stop within {}s: killed",
                node.id,
                STOP_TIMEOUT.as_secs()
            ));
        } else if report && exit.requested {
            stderr_line(&format!(
                "{} stopped ({})",
                node.id,
                describe_status(&exit.status)
            ));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn local_configs_use_majority_quorums() {
        for (nodes, n, quorum) in [(1, 1, 1), (2, 2, 2), (3, 3, 2), (5, 3, 2)] {
            let config = local_config("local", nodes, 8080).unwrap();
            assert_eq!(
                (config.n, config.w, config.r),
                (n, quorum, quorum),
                "{nodes} nodes"
            );
            assert_eq!(config.members.len(), usize::from(nodes));
            assert_eq!(config.epoch, 1);
            assert_eq!((config.partitions, config.vnodes), (256, 64));
            config.validate().unwrap();
        }
        let config = local_config("local", 3, 18080).unwrap();
        let members: Vec<(&str, &str)> = config
            .members
            .iter()
            .map(|m| (m.id.as_str(), m.address.as_str()))
            .collect();
        assert_eq!(
            members,
            [
                ("kv-0", "127.0.0.1:18080"),
                ("kv-1", "127.0.0.1:18081"),
                ("kv-2", "127.0.0.1:18082")
            ]
        );
    }

    #[test]
    fn local_config_json_is_the_wire_format() {
        let config = local_config("demo", 1, 9000).unwrap();
        let json: serde_json::Value = serde_json::to_value(&config).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "cluster": "demo", "epoch": 1,
                "members": [{"id": "kv-0", "address": "127.0.0.1:9000",
                             "peer_address": "127.0.0.1:10000"}],
                "n": 1, "w": 1, "r": 1, "partitions": 256, "vnodes": 64,
                "sloppy_quorum": true
            })
        );
    }

    #[test]
    fn local_configs_refuse_bad_ports_and_names() {
        assert!(local_config("local", 3, 64534).is_err());
        assert!(local_config("local", 2, 64534).is_ok());
        assert!(local_config("local", 0, 8080).is_err());
        assert!(local_config("", 3, 8080).is_err());
    }

    #[test]
    fn existing_configs_are_kept_or_refused() {
        let path = Path::new("/x/cluster.json");
        let wanted = local_config("local", 3, 8080).unwrap();
        assert_eq!(
            reconcile_config(None, wanted.clone(), path).unwrap(),
            wanted
        );
        let mut later = wanted.clone();
        later.epoch = 7;
        later.w = 3;
        assert_eq!(
            reconcile_config(Some(later.clone()), wanted.clone(), path).unwrap(),
            later
        );
        let other = local_config("local", 5, 8080).unwrap();
        let error = reconcile_config(Some(other), wanted.clone(), path).unwrap_err();
        assert!(error.contains("fresh --data-dir"), "{error}");
        let renamed = local_config("prod", 3, 8080).unwrap();
        assert!(reconcile_config(Some(renamed), wanted, path).is_err());
    }

    #[test]
    fn config_files_round_trip_and_logs_have_tails() {
        let dir = std::env::temp_dir().join(format!("kvctl-up-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CONFIG_FILE);
        assert_eq!(read_config(&path).unwrap(), None);
        let config = local_config("local", 2, 8080).unwrap();
        write_config(&path, &config).unwrap();
        assert_eq!(read_config(&path).unwrap(), Some(config));
        std::fs::write(&path, "{").unwrap();
        assert!(read_config(&path).is_err());

        let log = dir.join("kv-0.log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log, 3);
        assert_eq!(tail, "line 28\nline 29\nline 30");
        assert!(log_tail(&dir.join("missing.log"), 3).starts_with("(cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn explicit_kvnode_paths_must_exist() {
        let error = find_kvnode(Some(Path::new("/nonexistent/kvnode"))).unwrap_err();
        assert!(error.contains("does not exist"), "{error}");
    }
}
