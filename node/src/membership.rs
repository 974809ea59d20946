//! Membership: the cluster configuration this node follows, its ring, and the liveness of peers.
//!
//! The [`ClusterConfig`] with the highest epoch wins. The node persists the config it follows in its data
//! directory, so a restart resumes at the same epoch, and replaces it only with a valid config of the same
//! cluster and partition count and a higher epoch. Liveness is learnt from RPC outcomes (success marks a
//! peer alive, a failure dead) and backs off reconnection attempts to dead peers. No I/O beyond the
//! config file happens here: `rpc` reports outcomes, `coordinator` asks questions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kvapi::{ClusterConfig, Member, PeerStatus, PriorRing};
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::error::Error;
use crate::offload::Offload;
use crate::ring::{DEFAULT_VNODES, Ring};

/// File in the data directory holding the config the node follows.
pub const CONFIG_FILE: &str = "cluster.json";

/// Most a config's epoch may jump past the epoch in force, whether offered by a peer or an operator.
/// Every change moves the epoch by one (a membership change by two), so a real cluster never comes
/// near it, while a buggy or hostile peer announcing `u64::MAX` is refused instead of freezing
/// membership. A node that missed more changes than this restarts with the current config file.
pub const MAX_EPOCH_JUMP: u64 = 1000;

/// Whether `epoch` is within [`MAX_EPOCH_JUMP`] of `current`.
pub fn epoch_within_reach(current: u64, epoch: u64) -> bool {
    epoch <= current.saturating_add(MAX_EPOCH_JUMP)
}

/// First retry delay after a failed exchange with a peer; doubles per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between attempts to reach a dead peer.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A config together with the ring it defines (and, during a transition, the ring being left).
#[derive(Debug)]
pub struct View {
    /// The config.
    pub config: ClusterConfig,
    /// Its ring.
    pub ring: Ring,
    /// The ring being left, while `config.transition_from` is set.
    pub prior: Option<Ring>,
}

impl View {
    /// The view of `config`: its ring, and the ring being left while in transition.
    pub fn new(config: ClusterConfig) -> Self {
        let ring = ring_of(&config.members, &config, config.n);
        let prior = config
            .transition_from
            .as_ref()
            .map(|p| ring_of(&p.members, &config, p.n));
        View {
            config,
            ring,
            prior,
        }
    }

    /// The peer address of member `id` (of the current ring or the one being left).
    pub fn peer_address(&self, id: &str) -> Option<&str> {
        self.config.any_member(id).map(|m| m.peer_address.as_str())
    }

    /// The replica sets of `partition` that must each reach their quorum: the preference list, and
    /// during a transition also the old ring's preference list.
    pub fn replica_sets(&self, partition: u16) -> Vec<Vec<String>> {
        let mut sets = vec![
            self.ring
                .preference_list(partition)
                .map(String::from)
                .collect::<Vec<_>>(),
        ];
        if let Some(prior) = &self.prior {
            sets.push(prior.preference_list(partition).map(String::from).collect());
        }
        sets
    }

    /// Every member holding `partition`: the union of [`View::replica_sets`], new owners first.
    pub fn owners(&self, partition: u16) -> Vec<String> {
        let mut owners: Vec<String> = Vec::new();
        for member in self.replica_sets(partition).into_iter().flatten() {
            if !owners.contains(&member) {
                owners.push(member);
            }
        }
        owners
    }

    /// Whether `member` holds `partition` in either ring.
    pub fn is_owner(&self, member: &str, partition: u16) -> bool {
        self.ring.owns(member, partition)
            || self
                .prior
                .as_ref()
                .is_some_and(|p| p.owns(member, partition))
    }

    /// Every member of the current ring and of the one being left.
    pub fn all_members(&self) -> Vec<&Member> {
        let mut all: Vec<&Member> = self.config.members.iter().collect();
        if let Some(prior) = &self.config.transition_from {
            for m in &prior.members {
                if self.config.member(&m.id).is_none() {
                    all.push(m);
                }
            }
        }
        all
    }
}

fn ring_of(members: &[Member], config: &ClusterConfig, n: u32) -> Ring {
    let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    Ring::new(&ids, config.partitions, config.vnodes, n)
}

#[derive(Debug, Default)]
struct Liveness {
    last_success: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
    epoch: u64,
}

/// The node's view of the cluster.
pub struct Membership {
    node_id: String,
    config_path: PathBuf,
    view: RwLock<Arc<View>>,
    liveness: Mutex<HashMap<String, Liveness>>,
    /// Serialises installs: each writes the same temporary file before renaming it.
    installing: Mutex<()>,
    /// Called with the partitions this node starts to hold, before a config giving them is in force.
    on_gain: OnceLock<GainHook>,
    /// Where installs run their blocking work.
    offload: Offload,
}

/// What [`Membership::on_gain`] calls: drop any stale local copy of the partitions gained.
pub type GainHook = Box<dyn Fn(&[u16]) -> Result<(), Error> + Send + Sync>;

impl Membership {
    /// Loads the config to follow: the persisted one or the one in `config_file`, whichever has the
    /// higher epoch; without either, a one-member cluster of this node, `me` (N = W = R = 1).
    pub fn load(
        me: Member,
        data_dir: &Path,
        config_file: Option<&Path>,
        partitions: u32,
    ) -> Result<Self, Error> {
        let config_path = data_dir.join(CONFIG_FILE);
        let persisted = read_config(&config_path)?;
        let given = config_file.map(read_config).transpose()?.flatten();
        let config = match (persisted, given) {
            (Some(p), Some(g)) if g.epoch > p.epoch => {
                check_compatible(&p, &g)?;
                g
            }
            (Some(p), Some(g)) => {
                if g.epoch == p.epoch && g != p {
                    // An edited file at the same epoch would otherwise be ignored without a word.
                    tracing::warn!(
                        epoch = p.epoch,
                        "the cluster config file differs from the config this node persisted at the \
                         same epoch: following the persisted one; give the file a higher epoch to \
                         change the cluster"
                    );
                }
                p
            }
            (Some(p), None) => p,
            (None, Some(g)) => g,
            (None, None) => ClusterConfig {
                cluster: "local".into(),
                epoch: 0,
                members: vec![me.clone()],
                n: 1,
                w: 1,
                r: 1,
                partitions,
                vnodes: DEFAULT_VNODES,
                sloppy_quorum: true,
                transition_from: None,
            },
        };
        config.validate().map_err(Error::BadConfig)?;
        if config.partitions != partitions {
            return Err(Error::BadConfig(format!(
                "the cluster has {} partitions but --partitions is {partitions}",
                config.partitions
            )));
        }
        write_config(&config_path, &config)?;
        Ok(Membership {
            node_id: me.id,
            config_path,
            view: RwLock::new(Arc::new(View::new(config))),
            liveness: Mutex::new(HashMap::new()),
            installing: Mutex::new(()),
            on_gain: OnceLock::new(),
            offload: Offload::Pool,
        })
    }

    /// This membership with its installs run as `offload` says.
    pub fn with_offload(mut self, offload: Offload) -> Self {
        self.offload = offload;
        self
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The current config and ring.
    pub fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    /// Replaces the config with `next` when it is valid, of the same cluster and partition count, and
    /// newer, but not more than [`MAX_EPOCH_JUMP`] newer (a node at epoch 0, never configured, takes
    /// any epoch). Returns `Ok(false)` (and changes nothing) when `next` is not newer.
    pub fn install(&self, next: ClusterConfig) -> Result<bool, Error> {
        next.validate().map_err(Error::BadConfig)?;
        let _installing = self.installing.lock();
        let current = self.view();
        if next.epoch <= current.config.epoch {
            return Ok(false);
        }
        if current.config.epoch > 0 && !epoch_within_reach(current.config.epoch, next.epoch) {
            return Err(Error::BadConfig(format!(
                "epoch {} jumps more than {MAX_EPOCH_JUMP} past the current epoch {}; \
                 offer the next epoch instead",
                next.epoch, current.config.epoch
            )));
        }
        check_compatible(&current.config, &next)?;
        let next_view = View::new(next.clone());
        if let Some(hook) = self.on_gain.get() {
            // Data of a partition this node did not hold is stale (it refused writes for it): drop
            // it before the node accepts writes for the partition again.
            let gained: Vec<u16> = (0..next_view.ring.partitions())
                .map(|p| p as u16)
                .filter(|&p| {
                    next_view.is_owner(&self.node_id, p) && !current.is_owner(&self.node_id, p)
                })
                .collect();
            if !gained.is_empty() {
                hook(&gained)?;
            }
        }
        // Persist before switching, so the node never acts on a config it would forget on restart.
        write_config(&self.config_path, &next)?;
        let mut view = self.view.write();
        tracing::info!(
            epoch = next.epoch,
            members = next.members.len(),
            "installed cluster config"
        );
        *view = Arc::new(next_view);
        Ok(true)
    }

    /// [`Membership::install`] on the blocking pool, for async callers: an install holds the
    /// install lock across the gain hook (a RocksDB range delete of stale partitions) and an fsync
    /// of the config file, which on a runtime worker would stall every task queued behind it.
    pub async fn install_on_blocking_pool(
        self: &Arc<Self>,
        next: ClusterConfig,
    ) -> Result<bool, Error> {
        let this = self.clone();
        this.offload.run(move || this.install(next)).await
    }

    /// [`Membership::propose`] on the blocking pool, for the same reason as
    /// [`Membership::install_on_blocking_pool`].
    pub async fn propose_on_blocking_pool(
        self: &Arc<Self>,
        next: ClusterConfig,
    ) -> Result<bool, Error> {
        let this = self.clone();
        this.offload.run(move || this.propose(next)).await
    }

    /// Sets the hook called with the partitions an install makes this node hold (once).
    pub fn on_gain(&self, hook: GainHook) {
        let _ = self.on_gain.set(hook);
    }

    /// Runs `work` while no config can be installed, if the config in force is still at `epoch`.
    pub fn at_epoch<T>(&self, epoch: u64, work: impl FnOnce() -> T) -> Option<T> {
        let _installing = self.installing.lock();
        (self.view().config.epoch == epoch).then(work)
    }

    /// Accepts a config offered by an operator (the admin route), turning a change of members or N
    /// into a transition from the current ring. W, R and the sloppy-quorum switch may change at any
    /// time; a membership change while another is in progress is refused.
    pub fn propose(&self, mut next: ClusterConfig) -> Result<bool, Error> {
        let current = self.view();
        let current = &current.config;
        let reshaped = ring_changes(current, &next);
        if current.in_transition() {
            let target_changed = next.transition_from.is_none()
                && (next.n != current.n || !same_members(&next.members, &current.members));
            if target_changed {
                return Err(Error::TransitionInProgress(format!(
                    "the change to epoch {} is still moving data; retry when it completes",
                    current.epoch
                )));
            }
            next.transition_from = current.transition_from.clone();
        } else if reshaped && current.epoch > 0 && next.transition_from.is_none() {
            next.transition_from = Some(PriorRing {
                epoch: current.epoch,
                members: current.members.clone(),
                n: current.n,
            });
        }
        self.install(next)
    }

    /// Records a successful exchange with `peer`, which answered at `epoch`. An epoch beyond
    /// [`MAX_EPOCH_JUMP`] past ours is not believed: it would tell transfers that the peer left an
    /// epoch it never left.
    pub fn record_success(&self, peer: &str, epoch: u64) {
        let believable = epoch_within_reach(self.view().config.epoch, epoch);
        let mut liveness = self.liveness.lock();
        let entry = liveness.entry(peer.to_string()).or_default();
        entry.last_success = Some(Instant::now());
        entry.failures = 0;
        entry.retry_at = None;
        if believable {
            entry.epoch = entry.epoch.max(epoch);
        }
    }

    /// The highest epoch `peer` has announced (0 when never heard from).
    pub fn peer_epoch(&self, peer: &str) -> u64 {
        if peer == self.node_id {
            return self.view().config.epoch;
        }
        self.liveness.lock().get(peer).map_or(0, |l| l.epoch)
    }

    /// Records a failed exchange with `peer`, backing off further attempts exponentially.
    pub fn record_failure(&self, peer: &str) {
        let mut liveness = self.liveness.lock();
        let entry = liveness.entry(peer.to_string()).or_default();
        entry.failures = entry.failures.saturating_add(1);
        let backoff = MIN_BACKOFF
            .saturating_mul(1 << entry.failures.min(8).saturating_sub(1))
            .min(MAX_BACKOFF);
        entry.retry_at = Some(Instant::now() + backoff);
    }

    /// False while `peer` is in its backoff window after failures: the pinger waits it out rather
    /// than reconnect on every tick.
    pub fn may_contact(&self, peer: &str) -> bool {
        self.liveness
            .lock()
            .get(peer)
            .and_then(|l| l.retry_at)
            .is_none_or(|at| Instant::now() >= at)
    }

    /// Whether the last exchange with `peer` succeeded (peers never contacted count as alive).
    pub fn is_alive(&self, peer: &str) -> bool {
        peer == self.node_id
            || self
                .liveness
                .lock()
                .get(peer)
                .is_none_or(|l| l.failures == 0)
    }

    /// Liveness of every other member of the current config (and of the ring being left).
    pub fn peer_statuses(&self) -> Vec<PeerStatus> {
        let view = self.view();
        let liveness = self.liveness.lock();
        view.all_members()
            .into_iter()
            .filter(|m| m.id != self.node_id)
            .map(|m| {
                let l = liveness.get(&m.id);
                PeerStatus {
                    id: m.id.clone(),
                    address: m.address.clone(),
                    alive: l.is_none_or(|l| l.failures == 0),
                    last_seen_ms_ago: l
                        .and_then(|l| l.last_success)
                        .map(|t| t.elapsed().as_millis() as u64),
                }
            })
            .collect()
    }
}

/// Whether `next` places partitions differently from `current` (other members or another N).
fn ring_changes(current: &ClusterConfig, next: &ClusterConfig) -> bool {
    current.n != next.n || !same_members(&current.members, &next.members)
}

fn same_members(a: &[Member], b: &[Member]) -> bool {
    fn ids(members: &[Member]) -> Vec<&str> {
        let mut ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }
    ids(a) == ids(b)
}

fn check_compatible(current: &ClusterConfig, next: &ClusterConfig) -> Result<(), Error> {
    // A lone node that was never configured (epoch 0) may join any cluster.
    if current.epoch > 0 && next.cluster != current.cluster {
        return Err(Error::BadConfig(format!(
            "config is for cluster {:?}, this node belongs to {:?}",
            next.cluster, current.cluster
        )));
    }
    if current.epoch > 0 && next.vnodes != current.vnodes {
        return Err(Error::BadConfig(format!(
            "vnodes are fixed at {} for the cluster's life, got {}",
            current.vnodes, next.vnodes
        )));
    }
    if next.partitions != current.partitions {
        return Err(Error::BadConfig(format!(
            "partitions are fixed at {} for the cluster's life, got {}",
            current.partitions, next.partitions
        )));
    }
    Ok(())
}

fn read_config(path: &Path) -> Result<Option<ClusterConfig>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::BadConfig(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::BadConfig(format!("{}: {e}", path.display()))),
    }
}

/// Writes atomically: a temporary file, fsync, rename, fsync of the directory, so a crash or a
/// power cut leaves the old or the new config (without the last fsync, the rename itself may be
/// lost while the node already acts on the new config).
fn write_config(path: &Path, config: &ClusterConfig) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Internal(format!("writing {}: {e}", path.display()));
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let temporary = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(config).map_err(|e| Error::Internal(e.to_string()))?;
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&temporary).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&temporary, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn config(epoch: u64, members: usize) -> ClusterConfig {
        ClusterConfig {
            cluster: "test".into(),
            epoch,
            members: (0..members)
                .map(|i| member(&format!("kv-{i}"), 9000 + i))
                .collect(),
            n: 3.min(members as u32),
            w: 1,
            r: 1,
            partitions: 256,
            vnodes: 64,
            sloppy_quorum: true,
            transition_from: None,
        }
    }

    fn member(id: &str, port: usize) -> Member {
        Member {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            peer_address: format!("127.0.0.1:{}", port + 1000),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_install_with_a_slow_range_delete_leaves_the_runtime_serving() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("given.json");
        std::fs::write(&file, serde_json::to_vec(&config(3, 5)).unwrap()).unwrap();
        let m = Arc::new(
            Membership::load(member("kv-0", 1), &dir.path().join("d"), Some(&file), 256).unwrap(),
        );
        // Going from 5 members to 3 at N = 3 makes kv-0 gain partitions: the hook (a range delete
        // in the node) runs under the install lock.
        m.on_gain(Box::new(|_| {
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        }));
        let ticks = Arc::new(AtomicU32::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        assert!(m.install_on_blocking_pool(config(4, 3)).await.unwrap());
        ticker.abort();
        let ticks = ticks.load(Ordering::Relaxed);
        assert!(
            ticks >= 10,
            "the one runtime thread ran other tasks meanwhile: {ticks} ticks"
        );
    }

    #[test]
    fn without_config_a_node_is_a_one_member_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let m = Membership::load(member("kv-0", 1), dir.path(), None, 256).unwrap();
        let view = m.view();
        assert_eq!(view.config.members.len(), 1);
        assert_eq!((view.config.n, view.config.w, view.config.r), (1, 1, 1));
        assert!(view.ring.preference_list(0).eq(["kv-0"]));
    }

    #[test]
    fn only_newer_configs_of_the_same_cluster_are_installed_and_they_persist() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("given.json");
        std::fs::write(&file, serde_json::to_vec(&config(3, 3)).unwrap()).unwrap();
        let m =
            Membership::load(member("kv-0", 1), &dir.path().join("d"), Some(&file), 256).unwrap();
        assert!(!m.install(config(3, 4)).unwrap(), "equal epoch refused");
        assert!(!m.install(config(2, 4)).unwrap(), "lower epoch refused");
        let mut other = config(9, 3);
        other.cluster = "other".into();
        assert!(matches!(m.install(other), Err(Error::BadConfig(_))));
        let mut repartitioned = config(9, 3);
        repartitioned.partitions = 512;
        assert!(matches!(m.install(repartitioned), Err(Error::BadConfig(_))));
        assert!(m.install(config(4, 5)).unwrap());
        drop(m);
        // Restarting with the older file keeps the newer persisted config.
        let m =
            Membership::load(member("kv-0", 1), &dir.path().join("d"), Some(&file), 256).unwrap();
        assert_eq!(m.view().config.epoch, 4);
        assert_eq!(m.view().config.members.len(), 5);
    }

    #[test]
    fn epochs_may_not_jump_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("given.json");
        std::fs::write(&file, serde_json::to_vec(&config(3, 3)).unwrap()).unwrap();
        let m =
            Membership::load(member("kv-0", 1), &dir.path().join("d"), Some(&file), 256).unwrap();
        let refused = m.install(config(3 + MAX_EPOCH_JUMP + 1, 3)).unwrap_err();
        assert!(matches!(refused, Error::BadConfig(_)), "{refused}");
        assert!(m.install(config(u64::MAX, 3)).is_err());
        assert_eq!(m.view().config.epoch, 3);
        assert!(m.install(config(3 + MAX_EPOCH_JUMP, 3)).unwrap());
        m.record_success("kv-1", u64::MAX);
        assert_eq!(
            m.peer_epoch("kv-1"),
            0,
            "an unbelievable epoch is not recorded"
        );
        // A node that was never configured joins a cluster at whatever epoch it is.
        let fresh = Membership::load(member("kv-0", 1), &dir.path().join("e"), None, 256).unwrap();
        assert!(fresh.install(config(1_000_000, 3)).unwrap());
    }

    #[test]
    fn failures_back_off_and_success_resets() {
        let dir = tempfile::tempdir().unwrap();
        let m = Membership::load(member("kv-0", 1), dir.path(), None, 256).unwrap();
        assert!(m.may_contact("kv-1") && m.is_alive("kv-1"));
        m.record_failure("kv-1");
        assert!(!m.may_contact("kv-1"));
        assert!(!m.is_alive("kv-1"));
        m.record_success("kv-1", 3);
        assert_eq!(m.peer_epoch("kv-1"), 3);
        assert!(m.may_contact("kv-1") && m.is_alive("kv-1"));
    }
}
