//! The reliability harness: five nodes on their own loopback hosts (127.0.0.11 … 127.0.0.15) in a
//! network namespace of their own, a set workload that records every acknowledged write, a seeded
//! schedule of faults, and the checks after healing: nothing acknowledged lost, replicas converged.
//!
//! - [`netns`] runs a test in a fresh network namespace.
//! - [`nemesis`] draws and injects faults: iptables partitions, `kill -9`, `SIGSTOP`, ring changes.
//! - [`workload`] is the set workload and the final read; [`checker`] judges its history.
//! - [`convergence`] waits until every partition's replicas report the same Merkle root.
//!
//! [`run`] ties them together for one run and prints its figures. `docs/reliability.md` explains
//! the runs and how to replay one from its seed.

pub mod checker;
pub mod convergence;
pub mod nemesis;
pub mod netns;
pub mod workload;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use kvapi::ClusterConfig;

use self::checker::{SetOp, SetReport, check_sets};
use self::nemesis::{Fault, FaultCounts, NemesisKind, Schedule};
use self::workload::{RunningLoad, SetLoad, read_final_sets};
use crate::{Cluster, ClusterOptions, KvClient};

/// Nodes of a chaos cluster.
pub const NODES: usize = 5;

/// The host of node 0; node `i` is on `FIRST_HOST + i`.
pub const FIRST_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// Client request timeout: above the node's 2 s deadline, so a paused node times out here.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(4);

/// How long replicas may take to converge after the faults are healed.
pub const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long each chaos run injects faults: `KVCHAOS_FAULTS_SECONDS`, 20 s by default (the CI
/// share; `scripts/chaos.sh` runs longer ones).
pub fn faults_for() -> Duration {
    let seconds = std::env::var("KVCHAOS_FAULTS_SECONDS").map_or(20, |s| {
        s.parse()
            .unwrap_or_else(|e| panic!("KVCHAOS_FAULTS_SECONDS={s:?} is not a number: {e}"))
    });
    Duration::from_secs(seconds)
}

/// The seed of this run: `KVCHAOS_SEED` when set, else random. Printed with the replay command.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("KVCHAOS_SEED")
        .ok()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|e| panic!("KVCHAOS_SEED={s:?} is not a u64: {e}"))
        })
        .unwrap_or_else(rand::random);
    eprintln!(
        "{test}: seed {seed}; replay with \
         KVCHAOS_SEED={seed} cargo test --workspace --all-targets -- --exact {test}"
    );
    seed
}

/// One chaos run: which faults, for how long, on which quorums, under how much load.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The test's name, for the figures and the replay line.
    pub test: &'static str,
    /// Fault kinds, injected in turn.
    pub kinds: Vec<NemesisKind>,
    /// How long the schedule of faults lasts.
    pub faults_for: Duration,
    /// Replication and quorums.
    pub n: u32,
    /// Write quorum.
    pub w: u32,
    /// Read quorum.
    pub r: u32,
    /// Clients, keys and bounds of the set workload.
    pub load: SetLoad,
}

impl RunSpec {
    /// A run of `kinds` for `faults_for` with N=3, W=2, R=2 and 4 clients on 5 keys.
    pub fn new(test: &'static str, kinds: &[NemesisKind], faults_for: Duration) -> Self {
        Self {
            test,
            kinds: kinds.to_vec(),
            faults_for,
            n: 3,
            w: 2,
            r: 2,
            load: SetLoad {
                clients: 4,
                keys: 5,
                // Far above what a client manages (under 50 a second here), so the deadline, not
                // the count, ends the load: it must run through the last fault.
                max_ops_per_client: (faults_for.as_secs() as usize + 60) * 200,
                seed: 0,
            },
        }
    }
}

/// What one run recorded and measured.
#[derive(Debug)]
pub struct RunResult {
    /// Every operation of the workload.
    pub history: Vec<SetOp>,
    /// The final set of each key.
    pub finals: std::collections::BTreeMap<String, std::collections::BTreeSet<u64>>,
    /// The checker's verdict.
    pub report: SetReport,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
    /// Time from heal to identical replicas, or why they did not converge.
    pub converged: Result<Duration, String>,
    /// Nodes whose final read (at r=N) differed from another's. Each such read merges every
    /// replica, so this only catches a node that cannot read them all; the digests in `converged`
    /// are what catch replicas that differ.
    pub disagreements: Vec<String>,
    /// How long before the heal the last write was acknowledged (`None`: no write was): shows the
    /// load was still running when the faults ended.
    pub last_ack_before_heal: Option<Duration>,
}

/// Runs `spec` on a fresh cluster (inside the caller's network namespace) and prints its figures.
pub async fn run(spec: RunSpec) -> RunResult {
    let seed = seed(spec.test);
    let schedule = Schedule::generate(seed, &spec.kinds, NODES, spec.faults_for);
    let mut cluster = Cluster::start_with(
        ClusterOptions::new(NODES, spec.n, spec.w, spec.r)
            .on_hosts(FIRST_HOST)
            .args([
                "--anti-entropy-interval",
                "1s",
                "--anti-entropy-pace",
                "1ms",
            ]),
    )
    .await;
    let hosts = cluster.hosts();
    let nodes: Vec<KvClient> = (0..NODES)
        .map(|i| KvClient::with_timeout(cluster.client(i).base(), CLIENT_TIMEOUT))
        .collect();
    // The node that ring changes add and remove is never a client's coordinator: clients only
    // talk to members.
    let ring_node = NODES - 1;
    let ring_member = cluster.member(ring_node);
    let coordinators: Vec<usize> = if spec.kinds.contains(&NemesisKind::RingChange) {
        (0..ring_node).collect()
    } else {
        (0..NODES).collect()
    };
    let load = SetLoad {
        seed,
        ..spec.load.clone()
    };
    let t0 = Instant::now();
    let running = RunningLoad::start(
        &load,
        nodes.clone(),
        coordinators.clone(),
        t0 + spec.faults_for + Duration::from_secs(60),
    );

    let mut faults = FaultCounts::default();
    for step in &schedule.steps {
        tokio::time::sleep(step.wait).await;
        let at = t0.elapsed();
        match &step.fault {
            Fault::Partition { cut, .. } => nemesis::cut_links(&hosts, cut),
            Fault::Kill(i) => tokio::task::block_in_place(|| cluster.kill9(*i)),
            Fault::Pause(i) => cluster.pause(*i),
            Fault::RingChange => {
                if !change_ring(&nodes, &coordinators, &ring_member).await {
                    eprintln!(
                        "[{at:>8.1?}] ring change skipped: the last one is still in progress"
                    );
                    tokio::time::sleep(step.hold).await;
                    continue;
                }
            }
        }
        faults.add(&step.fault);
        eprintln!("[{at:>8.1?}] {} for {:?}", step.fault, step.hold);
        tokio::time::sleep(step.hold).await;
        match &step.fault {
            Fault::Partition { .. } => nemesis::heal_links(),
            Fault::Kill(i) => tokio::task::block_in_place(|| cluster.restart(*i)),
            Fault::Pause(i) => cluster.resume(*i),
            Fault::RingChange => {}
        }
    }
    nemesis::heal_links();
    let healed = Instant::now();
    eprintln!("[{:>8.1?}] healed; stopping the clients", t0.elapsed());
    let history = running.finish().await;
    let faults_ended = healed.duration_since(t0);
    let last_ack_before_heal = history
        .iter()
        .filter(|op| op.outcome == checker::Outcome::Acknowledged && op.at <= faults_ended)
        .map(|op| faults_ended - op.at)
        .min();

    // The members are whatever the settled ring says: a ring change whose answer was lost may
    // still have happened.
    let (members, converged) = match settle(&cluster, &coordinators).await {
        Ok(members) => {
            // Every workload key is on N replicas at least.
            let min_records = (load.keys * spec.n as usize) as u64;
            let converged =
                convergence::wait_converged(&nodes, &members, min_records, CONVERGENCE_TIMEOUT)
                    .await;
            (members, converged)
        }
        Err(e) => (coordinators.clone(), Err(e)),
    };
    let (finals, disagreements) = read_final_sets(&nodes, &members, load.keys, spec.n).await;
    let report = check_sets(&history, &finals);
    eprintln!(
        "== {} (seed {seed}): {NODES} nodes N={} W={} R={}, {:.1?} of faults\n   \
         faults injected: {faults}\n   {report}\n   \
         acknowledged writes per second: {}\n   \
         replicas converged: {}\n   final reads that disagreed: {}",
        spec.test,
        spec.n,
        spec.w,
        spec.r,
        faults_ended,
        workload::acks_per_second(&history),
        match &converged {
            Ok(took) => format!("{took:.1?} after the clients stopped"),
            Err(e) => format!("NO: {e}"),
        },
        disagreements.len(),
    );
    RunResult {
        history,
        finals,
        report,
        faults,
        converged,
        disagreements,
        last_ack_before_heal,
    }
}

/// Removes `ring_member` from the ring, or adds it back, through the first coordinator that
/// answers; false when a change is still in progress (or no coordinator answered).
async fn change_ring(
    nodes: &[KvClient],
    coordinators: &[usize],
    ring_member: &kvapi::Member,
) -> bool {
    for &via in coordinators {
        let Some(current) = nodes[via].try_admin_cluster().await else {
            continue;
        };
        if current.transition_from.is_some() {
            return false;
        }
        let mut next: ClusterConfig = current.clone();
        next.epoch += 1;
        next.transition_from = None;
        if next.members.iter().any(|m| m.id == ring_member.id) {
            next.members.retain(|m| m.id != ring_member.id);
        } else {
            next.members.push(ring_member.clone());
        }
        let Ok(resp) = nodes[via].try_put_admin_cluster(&next).await else {
            continue;
        };
        if resp.status == 200 || resp.status == 204 {
            return true;
        }
        eprintln!("ring change through kv-{via} refused: {resp}");
        return false;
    }
    false
}

/// Waits until the `coordinators` (members throughout) report the same settled config, then until
/// every member of it does; returns the members' node indexes.
async fn settle(cluster: &Cluster, coordinators: &[usize]) -> Result<Vec<usize>, String> {
    let settled = cluster
        .wait_settled(coordinators, 1, CONVERGENCE_TIMEOUT)
        .await
        .ok_or_else(|| format!("the ring did not settle within {CONVERGENCE_TIMEOUT:?}"))?;
    let members: Vec<usize> = settled
        .members
        .iter()
        .map(|m| {
            m.id.strip_prefix("kv-")
                .and_then(|i| i.parse().ok())
                .ok_or_else(|| format!("member id {:?} is not kv-N", m.id))
        })
        .collect::<Result<_, _>>()?;
    cluster
        .wait_settled(&members, settled.epoch, CONVERGENCE_TIMEOUT)
        .await
        .ok_or_else(|| {
            format!(
                "the members {members:?} did not all settle at epoch {} within {CONVERGENCE_TIMEOUT:?}",
                settled.epoch
            )
        })?;
    Ok(members)
}
