//! Faults and their seeded schedule: network partitions cut with iptables, `kill -9` and restart,
//! `SIGSTOP` pauses, and ring changes.
//!
//! A [`Schedule`] is a pure function of its seed, the fault kinds and the node count, so a failing
//! run replays with the same faults in the same order (the timing of requests around them still
//! varies from run to run).

use std::collections::BTreeMap;
use std::fmt;
use std::process::Command;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom as _;
use rand::{RngExt as _, SeedableRng as _};

/// A kind of fault a run may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NemesisKind {
    /// Network partitions of every [`PartitionKind`].
    Partition,
    /// `kill -9` a node, restart it after the hold.
    Kill,
    /// `SIGSTOP` a node, `SIGCONT` it after the hold.
    Pause,
    /// Remove the last member from the ring, or add it back.
    RingChange,
}

/// The shape of a network partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PartitionKind {
    /// Two groups of random sizes (1..n-1) and random members.
    RandomHalves,
    /// A random majority and the minority left over (3 | 2 of 5).
    MajorityMinority,
    /// One random node cut from all others.
    Isolated,
    /// Two groups that cannot see each other, and one bridge node that sees both.
    Bridge,
}

/// One fault to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Drop all traffic between the two nodes of each link, both ways.
    Partition {
        /// The shape it was drawn as.
        kind: PartitionKind,
        /// Node pairs that cannot talk.
        cut: Vec<(usize, usize)>,
    },
    /// `kill -9` node `.0`.
    Kill(usize),
    /// `SIGSTOP` node `.0`.
    Pause(usize),
    /// Change the ring's membership.
    RingChange,
}

impl Fault {
    /// The label figures count this fault under.
    pub fn label(&self) -> String {
        match self {
            Fault::Partition { kind, .. } => format!("partition/{kind:?}"),
            Fault::Kill(_) => "kill -9".to_owned(),
            Fault::Pause(_) => "pause".to_owned(),
            Fault::RingChange => "ring change".to_owned(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { kind, cut } => write!(f, "partition {kind:?} cutting {cut:?}"),
            Fault::Kill(i) => write!(f, "kill -9 kv-{i}"),
            Fault::Pause(i) => write!(f, "SIGSTOP kv-{i}"),
            Fault::RingChange => write!(f, "ring change"),
        }
    }
}

/// One step of a schedule: wait, inject, hold, heal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Quiet time before the fault.
    pub wait: Duration,
    /// The fault.
    pub fault: Fault,
    /// How long the fault lasts before it is healed (a ring change is not undone).
    pub hold: Duration,
}

/// The faults of one run, drawn from a seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The seed it was drawn from.
    pub seed: u64,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Schedule {
    /// Draws steps of `kinds` on `nodes` nodes, in turn, until they fill `duration`.
    pub fn generate(seed: u64, kinds: &[NemesisKind], nodes: usize, duration: Duration) -> Self {
        assert!(
            !kinds.is_empty(),
            "a schedule needs at least one fault kind"
        );
        assert!(nodes >= 3, "partitions need at least 3 nodes");
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut steps = Vec::new();
        let mut total = Duration::ZERO;
        let mut partition_kinds = [
            PartitionKind::RandomHalves,
            PartitionKind::MajorityMinority,
            PartitionKind::Isolated,
            PartitionKind::Bridge,
        ]
        .into_iter()
        .cycle();
        while total < duration {
            let kind = kinds[steps.len() % kinds.len()];
            let fault = match kind {
                NemesisKind::Partition => {
                    let kind = partition_kinds.next().expect("cycle");
                    Fault::Partition {
                        kind,
                        cut: draw_partition(&mut rng, kind, nodes),
                    }
                }
                NemesisKind::Kill => Fault::Kill(rng.random_range(0..nodes)),
                NemesisKind::Pause => Fault::Pause(rng.random_range(0..nodes)),
                NemesisKind::RingChange => Fault::RingChange,
            };
            let step = Step {
                wait: Duration::from_millis(rng.random_range(300..1200)),
                fault,
                hold: Duration::from_millis(rng.random_range(1000..3500)),
            };
            total += step.wait + step.hold;
            steps.push(step);
        }
        Self { seed, steps }
    }
}

/// The links a partition of `kind` cuts among `nodes` nodes.
fn draw_partition(rng: &mut SmallRng, kind: PartitionKind, nodes: usize) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..nodes).collect();
    order.shuffle(rng);
    let (a, b): (Vec<usize>, Vec<usize>) = match kind {
        PartitionKind::RandomHalves => {
            let split = rng.random_range(1..nodes);
            (order[..split].to_vec(), order[split..].to_vec())
        }
        PartitionKind::MajorityMinority => {
            let split = nodes / 2 + 1;
            (order[..split].to_vec(), order[split..].to_vec())
        }
        PartitionKind::Isolated => (order[..1].to_vec(), order[1..].to_vec()),
        PartitionKind::Bridge => {
            // order[0] is the bridge: it keeps its links to both sides.
            let rest = &order[1..];
            let half = rest.len() / 2;
            (rest[..half].to_vec(), rest[half..].to_vec())
        }
    };
    let mut cut = Vec::new();
    for &x in &a {
        for &y in &b {
            cut.push((x.min(y), x.max(y)));
        }
    }
    cut.sort_unstable();
    cut
}

/// The iptables chain holding the cuts, jumped to from `INPUT`; healing flushes only this chain.
const CHAIN: &str = "KVCHAOS";

/// Cuts the links between hosts with iptables rules in the current network namespace: packets
/// between the two addresses of a link are dropped both ways, so neither side can connect or get an
/// answer, while clients on other addresses still reach both.
pub fn cut_links(hosts: &[String], cut: &[(usize, usize)]) {
    if !iptables_ok(&["-L", CHAIN, "-n"]) {
        iptables(&["-N", CHAIN]);
        iptables(&["-I", "INPUT", "-j", CHAIN]);
    }
    for &(x, y) in cut {
        for (from, to) in [(&hosts[x], &hosts[y]), (&hosts[y], &hosts[x])] {
            iptables(&["-A", CHAIN, "-s", from, "-d", to, "-j", "DROP"]);
        }
    }
}

/// Removes every rule [`cut_links`] added.
pub fn heal_links() {
    if iptables_ok(&["-L", CHAIN, "-n"]) {
        iptables(&["-F", CHAIN]);
    }
}

fn iptables_ok(args: &[&str]) -> bool {
    Command::new("iptables")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn iptables(args: &[&str]) {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .expect("run iptables");
    assert!(
        out.status.success(),
        "iptables {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Faults injected so far, by [`Fault::label`].
#[derive(Debug, Default, Clone)]
pub struct FaultCounts(pub BTreeMap<String, u32>);

impl FaultCounts {
    /// Counts one fault.
    pub fn add(&mut self, fault: &Fault) {
        *self.0.entry(fault.label()).or_default() += 1;
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_draws_the_same_schedule() {
        let kinds = [
            NemesisKind::Partition,
            NemesisKind::Kill,
            NemesisKind::Pause,
            NemesisKind::RingChange,
        ];
        let a = Schedule::generate(42, &kinds, 5, Duration::from_secs(30));
        let b = Schedule::generate(42, &kinds, 5, Duration::from_secs(30));
        let c = Schedule::generate(43, &kinds, 5, Duration::from_secs(30));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.steps.len() >= 4, "{a:?}");
    }

    #[test]
    fn partitions_have_their_shape() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..50 {
            // 2 × 3 links for a 2 | 3 split.
            assert_eq!(
                draw_partition(&mut rng, PartitionKind::MajorityMinority, 5).len(),
                6
            );
            // One node loses its 4 links.
            let isolated = draw_partition(&mut rng, PartitionKind::Isolated, 5);
            assert_eq!(isolated.len(), 4);
            // A bridge of 1 between sides of 2 and 2: 4 links cut, the bridge in none of them.
            let bridge = draw_partition(&mut rng, PartitionKind::Bridge, 5);
            assert_eq!(bridge.len(), 4);
            let touched: std::collections::BTreeSet<usize> =
                bridge.iter().flat_map(|&(x, y)| [x, y]).collect();
            assert_eq!(
                touched.len(),
                4,
                "the bridge keeps all its links: {bridge:?}"
            );
            let halves = draw_partition(&mut rng, PartitionKind::RandomHalves, 5);
            assert!([4, 6].contains(&halves.len()), "{halves:?}");
        }
    }
}
