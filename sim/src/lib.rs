//! kvsim: a whole kvcluster in one process, driven by one seed.
//!
//! Every node is a real `kvnode` (storage on RocksDB, membership, coordinator, hand-off,
//! anti-entropy) built by [`kvnode::assemble`] with a [`network::SimPeers`] transport and inline
//! blocking work, on one current-thread tokio runtime whose clock is paused: simulated time jumps
//! to the next timer, so minutes of cluster life take milliseconds. A seed fixes the workload, the
//! fault schedule and every network choice; [`simulate`] returns the event trace and whatever the
//! [`check`] found wrong.

pub mod check;
pub mod network;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kvnode::config::NodeConfig;
use kvnode::error::Error;
use kvnode::offload::Offload;
use kvnode::transport::Peers;
use kvnode::{Assembled, Wiring};
use rand::RngExt;

use crate::check::History;
use crate::network::{Network, SimPeers};

/// The shape of one simulation.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Nodes in the cluster (all replicas when `n` equals it).
    pub nodes: usize,
    /// Replicas per key, write and read quorums.
    pub n: u32,
    /// Write quorum.
    pub w: u32,
    /// Read quorum.
    pub r: u32,
    /// Keys the workload writes.
    pub keys: usize,
    /// Client operations (a read, then a write or delete with its context).
    pub operations: usize,
    /// Simulated time between two fault-schedule events.
    pub fault_every: Duration,
    /// Simulated time given to hand-off and anti-entropy after the heal.
    pub settle: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            nodes: 3,
            n: 3,
            w: 2,
            r: 2,
            keys: 4,
            operations: 60,
            fault_every: Duration::from_millis(400),
            settle: Duration::from_secs(20),
        }
    }
}

/// What one seed did: its trace and the checkers' complaints (empty when correct).
#[derive(Debug)]
pub struct Outcome {
    /// Every network choice, fault and client operation, stamped with simulated milliseconds.
    pub trace: Vec<String>,
    /// Broken properties, one line each.
    pub violations: Vec<String>,
}

/// The member id of node `index`.
pub fn member_id(index: usize) -> String {
    format!("kv-{index}")
}

/// The index of member `id`.
pub fn index_of(id: &str) -> Option<usize> {
    id.strip_prefix("kv-")?.parse().ok()
}

/// Runs the simulation of `seed` on a fresh paused runtime in the calling thread.
pub fn simulate(seed: u64, settings: &Settings) -> Result<Outcome, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| Error::Internal(format!("cannot build the runtime: {e}")))?;
    let dir = scratch_dir()?;
    runtime.block_on(Cluster::run(seed, settings.clone(), dir.path()))
}

/// Scratch space for the nodes' data: tmpfs when there is one (no disk syncs).
fn scratch_dir() -> Result<tempfile::TempDir, Error> {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("kvsim-").to_owned();
    if shm.is_dir()
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return Ok(dir);
    }
    builder
        .tempdir()
        .map_err(|e| Error::Internal(format!("no scratch dir: {e}")))
}

/// The nodes of one simulation and what they need to restart.
struct Cluster {
    settings: Settings,
    network: Arc<Network>,
    configs: Vec<NodeConfig>,
    running: Vec<Option<Assembled>>,
}

impl Cluster {
    async fn run(seed: u64, settings: Settings, dir: &Path) -> Result<Outcome, Error> {
        let network = Network::new(seed, settings.nodes);
        let configs = node_configs(&settings, dir)?;
        let mut cluster = Cluster {
            running: (0..settings.nodes).map(|_| None).collect(),
            settings,
            network,
            configs,
        };
        for i in 0..cluster.settings.nodes {
            cluster.start(i).await?;
        }
        let history = cluster.workload_under_faults().await;
        cluster.heal().await?;
        tokio::time::sleep(cluster.settings.settle).await;
        let violations = check::all(&cluster, &history).await;
        for i in 0..cluster.settings.nodes {
            cluster.crash(i).await;
        }
        Ok(Outcome {
            trace: cluster.network.take_trace(),
            violations,
        })
    }

    /// Starts node `i` from its data directory; a crashed incarnation may hold the RocksDB lock
    /// until its last in-flight task ends, so an open is retried for a simulated minute.
    async fn start(&mut self, i: usize) -> Result<(), Error> {
        let mut last = None;
        for _ in 0..600 {
            let network = self.network.clone();
            let wiring = Wiring {
                member: member(i),
                peers: Box::new(move |membership, _, _| {
                    let peers: Arc<dyn Peers> = SimPeers::new(i, network, membership);
                    Ok(peers)
                }),
                offload: Offload::Inline,
            };
            match kvnode::assemble(&self.configs[i], wiring) {
                Ok(assembled) => {
                    self.network.set_node(i, Some(assembled.node.clone()));
                    self.running[i] = Some(assembled);
                    self.network.trace(format!("start kv-{i}"));
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| Error::Internal("no start attempt".into())))
    }

    /// Stops node `i` at once: its background tasks end, messages to and from it are refused,
    /// and what it held only in memory is gone.
    async fn crash(&mut self, i: usize) {
        self.network.set_node(i, None);
        if let Some(assembled) = self.running[i].take() {
            assembled.background.shutdown(Duration::ZERO).await;
            self.network.trace(format!("crash kv-{i}"));
        }
    }

    fn up(&self) -> Vec<usize> {
        (0..self.settings.nodes)
            .filter(|&i| self.running[i].is_some())
            .collect()
    }

    /// The client operations, with a fault event between every few.
    async fn workload_under_faults(&mut self) -> History {
        let mut history = History::default();
        let mut next_fault = tokio::time::Instant::now() + self.settings.fault_every;
        for op in 0..self.settings.operations {
            if tokio::time::Instant::now() >= next_fault {
                if let Err(e) = self.fault().await {
                    history.note(format!("fault failed: {e}"));
                }
                next_fault = tokio::time::Instant::now() + self.settings.fault_every;
            }
            let up = self.up();
            let (coordinator, key, delete) = self.network.with_rng(|rng| {
                (
                    up[rng.random_range(0..up.len())],
                    rng.random_range(0..self.settings.keys),
                    rng.random_bool(0.2),
                )
            });
            if let Some(node) = self.network.node(coordinator) {
                let value = (!delete).then(|| format!("v{op}"));
                let line = history.operate(&node, key, value).await;
                self.network
                    .trace(format!("op {op} at kv-{coordinator}: {line}"));
            }
            let pause = self.network.with_rng(|rng| rng.random_range(1..100));
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        history
    }

    /// One fault event drawn from the RNG: a cut link, a heal, a crash, a restart or new loss rates.
    async fn fault(&mut self) -> Result<(), Error> {
        let nodes = self.settings.nodes;
        let (kind, a, b, rate) = self.network.with_rng(|rng| {
            (
                rng.random_range(0..5u8),
                rng.random_range(0..nodes),
                rng.random_range(0..nodes),
                rng.random_range(0.0..0.3),
            )
        });
        let down = nodes - self.up().len();
        match kind {
            0 if a != b => {
                self.network.set_faults(|f| {
                    f.cut.insert((a.min(b), a.max(b)));
                });
                self.network.trace(format!("cut kv-{a} kv-{b}"));
            }
            1 => {
                self.network.set_faults(|f| f.cut.clear());
                self.network.trace("heal links".into());
            }
            2 if down == 0 => self.crash(a).await,
            3 => {
                if let Some(i) = (0..nodes).find(|&i| self.running[i].is_none()) {
                    self.start(i).await?;
                }
            }
            _ => {
                self.network.set_faults(|f| {
                    f.drop = rate / 2.0;
                    f.duplicate = rate / 3.0;
                    f.max_delay_ms = 1 + (rate * 200.0) as u64;
                });
                self.network.trace(format!("loss {:.3}", rate / 2.0));
            }
        }
        Ok(())
    }

    /// Ends every fault: links whole and lossless, every node up.
    async fn heal(&mut self) -> Result<(), Error> {
        self.network.set_faults(|f| {
            *f = network::Faults {
                max_delay_ms: 5,
                ..network::Faults::default()
            }
        });
        for i in 0..self.settings.nodes {
            if self.running[i].is_none() {
                self.start(i).await?;
            }
        }
        self.network.trace("healed".into());
        Ok(())
    }
}

fn member(i: usize) -> kvapi::Member {
    kvapi::Member {
        id: member_id(i),
        address: format!("127.0.0.1:{}", 20_000 + i),
        peer_address: format!("127.0.0.1:{}", 21_000 + i),
    }
}

/// The flags of every node: one cluster config and context key, small memory, fast anti-entropy.
fn node_configs(settings: &Settings, dir: &Path) -> Result<Vec<NodeConfig>, Error> {
    let io = |e: std::io::Error| Error::Internal(format!("scratch file: {e}"));
    let config = kvapi::ClusterConfig {
        cluster: "sim".into(),
        epoch: 1,
        members: (0..settings.nodes).map(member).collect(),
        n: settings.n,
        w: settings.w,
        r: settings.r,
        partitions: 16,
        vnodes: 8,
        sloppy_quorum: true,
        transition_from: None,
    };
    let cluster = dir.join("cluster.json");
    let json = serde_json::to_vec(&config).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(&cluster, json).map_err(io)?;
    let key = dir.join("context.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).map_err(io)?;
    (0..settings.nodes)
        .map(|i| {
            let data = dir.join(member_id(i));
            let args: Vec<std::ffi::OsString> = [
                "kvnode".into(),
                format!("--node-id={}", member_id(i)),
                format!("--data-dir={}", data.display()),
                format!("--cluster-config={}", cluster.display()),
                format!("--context-key-file={}", key.display()),
                "--partitions=16".into(),
                "--cache-size=1MiB".into(),
                "--rocksdb-memory=8MiB".into(),
                "--anti-entropy-interval=5s".into(),
                "--anti-entropy-pace=1ms".into(),
            ]
            .into_iter()
            .map(Into::into)
            .collect();
            NodeConfig::from_args(args).map_err(|e| Error::BadConfig(e.to_string()))
        })
        .collect()
}
