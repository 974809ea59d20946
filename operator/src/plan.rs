//! The reconciler's decisions, free of I/O: given the spec, the StatefulSet, the pods' readiness and
//! what every node says about its ring, what to do next.
//!
//! The rules, in order:
//! - A ring change in progress (any node reports `transition_from`) is waited for, never raced:
//!   nothing is pushed and no pod is removed, whatever the spec says now.
//! - Pods exist before they join: the StatefulSet grows first, and new members are pushed only when
//!   their pods are ready and answer the admin routes.
//! - Members leave before their pods stop: the config without them is pushed, and the StatefulSet
//!   shrinks only when the ring is settled without them and each leaving node has no hints left.
//! - Membership and N changes are pushed only when every current member answers and agrees on the
//!   epoch; a W/R-only change needs just one reachable node (nodes spread epochs to each other),
//!   so quorums can be lowered while a node is down.
//! - The ConfigMap follows the ring the nodes are on (the highest epoch seen), never the desired one.

use std::collections::BTreeSet;

use kvapi::{ClusterConfig, Member, NodeStatus};

use crate::crd::{Phase, TransitionStatus};

/// Tokens per member on the hash ring, as the design fixes it.
pub const VNODES: u32 = 64;

/// The ring the spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Cluster name in the ClusterConfig.
    pub cluster: String,
    /// The members: pods `0..replicas`, with their addresses.
    pub members: Vec<Member>,
    /// N.
    pub n: u32,
    /// W.
    pub w: u32,
    /// R.
    pub r: u32,
    /// Partitions (used only for the very first config; a running ring keeps its own).
    pub partitions: u32,
}

/// One pod of the StatefulSet as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Pod name, which is the node id.
    pub id: String,
    /// StatefulSet ordinal.
    pub ordinal: u32,
    /// Address of its node.
    pub address: String,
    /// The pod's Ready condition.
    pub ready: bool,
    /// What its node answered on `GET /admin/v1/status`, `None` when it did not.
    pub status: Option<NodeStatus>,
}

/// Everything the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Name of the resource (pods are `<name>-<ordinal>`).
    pub name: String,
    /// The desired ring.
    pub desired: Desired,
    /// `spec.replicas` of the StatefulSet; `None` when it does not exist yet.
    pub statefulset_replicas: Option<u32>,
    /// The pods that exist.
    pub pods: Vec<PodView>,
    /// The config in the ConfigMap, if it exists and is readable.
    pub stored_config: Option<ClusterConfig>,
}

/// What the reconciler should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Replicas to apply to the StatefulSet.
    pub statefulset_replicas: u32,
    /// The config to keep in the ConfigMap.
    pub config_map: ClusterConfig,
    /// A config to push to every reachable node.
    pub push: Option<ClusterConfig>,
    /// Pods whose node should be told to drain (deliver its hints now).
    pub drain: Vec<String>,
    /// Where the cluster stands.
    pub phase: Phase,
    /// Whether the operator is waiting on something that will change soon (requeue quickly).
    pub waiting: bool,
    /// Why, in a sentence for the conditions and logs.
    pub message: String,
    /// What the ring is now.
    pub ring: RingState,
    /// Events to record.
    pub events: Vec<PlannedEvent>,
}

/// An event for the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable note.
    pub note: String,
    /// A warning rather than a normal event.
    pub warning: bool,
}

/// The ring as the nodes report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingState {
    /// The highest-epoch config reported by a node, or else the ConfigMap's.
    pub config: Option<ClusterConfig>,
    /// Whether any node answered.
    pub any_reachable: bool,
    /// Every member of the ring (and of the ring being left) answered.
    pub all_members_reachable: bool,
    /// Every node that answered is on the highest epoch.
    pub agreed: bool,
    /// A membership change is in progress.
    pub in_transition: bool,
    /// Progress of the change in progress.
    pub transition: Option<TransitionStatus>,
    /// Members of the ring that are not ready or did not answer.
    pub unavailable_members: Vec<String>,
}

impl RingState {
    /// No change in progress, every member answering and on the same epoch.
    pub fn settled(&self) -> bool {
        self.config.is_some()
            && self.any_reachable
            && !self.in_transition
            && self.agreed
            && self.all_members_reachable
    }

    /// Epoch of the ring (0 when unknown).
    pub fn epoch(&self) -> u64 {
        self.config.as_ref().map_or(0, |c| c.epoch)
    }
}

/// The StatefulSet ordinal of node `id` of cluster `name`, if it is one of its pods.
pub fn ordinal(name: &str, id: &str) -> Option<u32> {
    id.strip_prefix(name)?.strip_prefix('-')?.parse().ok()
}

/// Reads the ring from the nodes' answers and the ConfigMap.
pub fn ring_state(obs: &Observed) -> RingState {
    let statuses: Vec<&NodeStatus> = obs.pods.iter().filter_map(|p| p.status.as_ref()).collect();
    let from_nodes = statuses
        .iter()
        .map(|s| &s.config)
        .filter(|c| c.cluster == obs.desired.cluster)
        .max_by_key(|c| c.epoch);
    let config = match (from_nodes, &obs.stored_config) {
        (Some(n), Some(s)) if s.epoch > n.epoch => Some(s.clone()),
        (Some(n), _) => Some(n.clone()),
        (None, s) => s.clone(),
    };
    let epoch = config.as_ref().map_or(0, |c| c.epoch);
    let agreed = statuses.iter().all(|s| s.config.epoch == epoch);
    let in_transition = config.as_ref().is_some_and(ClusterConfig::in_transition)
        || statuses.iter().any(|s| s.config.in_transition());
    let mut member_ids: BTreeSet<&str> = BTreeSet::new();
    if let Some(c) = &config {
        member_ids.extend(c.members.iter().map(|m| m.id.as_str()));
        if let Some(prior) = &c.transition_from {
            member_ids.extend(prior.members.iter().map(|m| m.id.as_str()));
        }
    }
    let answering: BTreeSet<&str> = obs
        .pods
        .iter()
        .filter(|p| p.status.is_some())
        .map(|p| p.id.as_str())
        .collect();
    let ready: BTreeSet<&str> = obs
        .pods
        .iter()
        .filter(|p| p.ready && p.status.is_some())
        .map(|p| p.id.as_str())
        .collect();
    let unavailable_members = config
        .iter()
        .flat_map(|c| c.members.iter())
        .filter(|m| !ready.contains(m.id.as_str()))
        .map(|m| m.id.clone())
        .collect();
    // The change in progress: the ring's own, or in its tail (some nodes already on the settled
    // next epoch, which has no `transition_from`) the newest one a node still runs.
    let changing = config.as_ref().filter(|c| c.in_transition()).or_else(|| {
        statuses
            .iter()
            .map(|s| &s.config)
            .filter(|c| c.cluster == obs.desired.cluster && c.in_transition())
            .max_by_key(|c| c.epoch)
    });
    let transition = changing.and_then(|c| {
        c.transition_from.as_ref().map(|prior| TransitionStatus {
            from_epoch: prior.epoch,
            to_epoch: c.epoch,
            partitions_pending: statuses
                .iter()
                .filter_map(|s| s.transfer.as_ref())
                .map(|t| u64::from(t.partitions_total.saturating_sub(t.partitions_done)))
                .sum(),
            ..TransitionStatus::default()
        })
    });
    RingState {
        any_reachable: !statuses.is_empty(),
        all_members_reachable: member_ids.iter().all(|id| answering.contains(id)),
        agreed,
        in_transition,
        transition,
        unavailable_members,
        config,
    }
}

/// The first config of a new cluster: every desired member, epoch 1.
pub fn initial_config(desired: &Desired) -> ClusterConfig {
    ClusterConfig {
        cluster: desired.cluster.clone(),
        epoch: 1,
        members: desired.members.clone(),
        n: desired.n,
        w: desired.w,
        r: desired.r,
        partitions: desired.partitions,
        vnodes: VNODES,
        sloppy_quorum: true,
        transition_from: None,
    }
}

/// `ring` changed to the desired members, N, W and R, one epoch up. Partitions, vnodes and the
/// quorum mode stay the ring's own.
fn next_config(
    ring: &ClusterConfig,
    members: Vec<Member>,
    n: u32,
    w: u32,
    r: u32,
) -> ClusterConfig {
    ClusterConfig {
        epoch: ring.epoch + 1,
        members,
        n,
        w,
        r,
        transition_from: None,
        ..ring.clone()
    }
}

fn ids(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| m.id.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn describe_change(from: &ClusterConfig, to: &ClusterConfig) -> String {
    let mut parts = Vec::new();
    if from.members != to.members {
        parts.push(format!(
            "members [{}] → [{}]",
            ids(&from.members),
            ids(&to.members)
        ));
    }
    for (what, a, b) in [
        ("N", from.n, to.n),
        ("W", from.w, to.w),
        ("R", from.r, to.r),
    ] {
        if a != b {
            parts.push(format!("{what} {a} → {b}"));
        }
    }
    format!("epoch {} → {}: {}", from.epoch, to.epoch, parts.join(", "))
}

/// The smallest StatefulSet that keeps a pod for every member of `config` and of the ring it is
/// leaving.
fn pods_needed(name: &str, config: &ClusterConfig) -> u32 {
    let prior = config.transition_from.iter().flat_map(|p| p.members.iter());
    config
        .members
        .iter()
        .chain(prior)
        .filter_map(|m| ordinal(name, &m.id))
        .map(|o| o + 1)
        .max()
        .unwrap_or(0)
}

/// Decides the next step.
pub fn plan(obs: &Observed) -> Plan {
    let ring = ring_state(obs);
    let desired = &obs.desired;
    let spec_replicas = u32::try_from(desired.members.len()).unwrap_or(u32::MAX);
    let current = obs.statefulset_replicas.unwrap_or(0);

    let Some(config) = ring.config.clone() else {
        // A new cluster: every desired pod starts with the same first config, so nothing needs
        // pushing. (A cluster whose ConfigMap was lost and whose nodes are all down gets it too;
        // nodes keep their persisted, higher epoch.)
        let initial = initial_config(desired);
        return Plan {
            statefulset_replicas: current.max(spec_replicas),
            config_map: initial,
            push: None,
            drain: Vec::new(),
            phase: Phase::Creating,
            waiting: true,
            message: "creating the cluster".into(),
            events: vec![PlannedEvent {
                reason: "Created".into(),
                note: format!(
                    "first ring at epoch 1: members [{}], N={} W={} R={}",
                    ids(&desired.members),
                    desired.n,
                    desired.w,
                    desired.r
                ),
                warning: false,
            }],
            ring,
        };
    };

    let keep = pods_needed(&obs.name, &config);
    let mut plan = Plan {
        statefulset_replicas: current.max(keep),
        config_map: config.clone(),
        push: None,
        drain: Vec::new(),
        phase: Phase::Running,
        waiting: true,
        message: String::new(),
        events: Vec::new(),
        ring: ring.clone(),
    };

    if !ring.any_reachable {
        plan.statefulset_replicas = plan.statefulset_replicas.max(spec_replicas);
        if obs.pods.iter().any(|p| p.ready) || config.epoch > 1 {
            plan.phase = Phase::Degraded;
            plan.message = "no node answers its admin routes".into();
        } else {
            plan.phase = Phase::Creating;
            plan.message = "waiting for the first nodes to start".into();
        }
        return plan;
    }

    if ring.in_transition {
        plan.phase = Phase::Transitioning;
        plan.message = match &ring.transition {
            Some(t) => format!(
                "ring change from epoch {} to {} in progress, {} partitions to move",
                t.from_epoch, t.to_epoch, t.partitions_pending
            ),
            None => "ring change in progress".into(),
        };
        return plan;
    }

    let members_match = config.members == desired.members;
    let n_match = config.n == desired.n;
    let wr_match = config.w == desired.w && config.r == desired.r;

    if !members_match {
        // Every desired pod must exist, and no member's pod may go.
        let needed = keep.max(spec_replicas);
        plan.statefulset_replicas = current.max(needed);
        let in_ring: BTreeSet<&str> = config.members.iter().map(|m| m.id.as_str()).collect();
        let joining: Vec<&Member> = desired
            .members
            .iter()
            .filter(|m| !in_ring.contains(m.id.as_str()))
            .collect();
        let not_ready: Vec<&str> = joining
            .iter()
            .filter(|m| {
                !obs.pods
                    .iter()
                    .any(|p| p.id == m.id && p.ready && p.status.is_some())
            })
            .map(|m| m.id.as_str())
            .collect();
        if !not_ready.is_empty() {
            plan.phase = Phase::ScalingUp;
            plan.message = format!("waiting for new pods to be ready: {}", not_ready.join(", "));
            if n_match && !wr_match && ring.agreed {
                // Quorums need not wait for the new pods.
                let next = next_config(
                    &config,
                    config.members.clone(),
                    config.n,
                    desired.w,
                    desired.r,
                );
                plan.events.push(PlannedEvent {
                    reason: "QuorumsChanged".into(),
                    note: describe_change(&config, &next),
                    warning: false,
                });
                plan.push = Some(next);
            }
            return plan;
        }
        if !ring.settled() {
            plan.phase = Phase::Degraded;
            plan.message = format!(
                "waiting for every member to answer on one epoch before changing the ring (unavailable: {})",
                ring.unavailable_members.join(", ")
            );
            return plan;
        }
        let next = next_config(
            &config,
            desired.members.clone(),
            desired.n,
            desired.w,
            desired.r,
        );
        plan.phase = if joining.is_empty() {
            Phase::ScalingDown
        } else {
            Phase::ScalingUp
        };
        plan.message = format!("pushing {}", describe_change(&config, &next));
        plan.events.push(PlannedEvent {
            reason: "RingChangeStarted".into(),
            note: describe_change(&config, &next),
            warning: false,
        });
        plan.push = Some(next);
        return plan;
    }

    if !n_match || !wr_match {
        // Same members: N is a transition (needs every member), W/R a plain epoch bump.
        if !n_match && !ring.settled() {
            plan.phase = Phase::Degraded;
            plan.message = format!(
                "waiting for every member to answer on one epoch before changing N (unavailable: {})",
                ring.unavailable_members.join(", ")
            );
            return plan;
        }
        let next = next_config(
            &config,
            config.members.clone(),
            desired.n,
            desired.w,
            desired.r,
        );
        plan.phase = Phase::Reconfiguring;
        plan.message = format!("pushing {}", describe_change(&config, &next));
        plan.events.push(PlannedEvent {
            reason: if n_match {
                "QuorumsChanged".into()
            } else {
                "RingChangeStarted".into()
            },
            note: describe_change(&config, &next),
            warning: false,
        });
        plan.push = Some(next);
        return plan;
    }

    // The ring is what the spec asks for. Pods beyond it have left: stop them once settled
    // without them and without hints left to deliver.
    let leaving: Vec<&PodView> = obs
        .pods
        .iter()
        .filter(|p| p.ordinal >= spec_replicas && p.ordinal < current)
        .collect();
    let missing_leavers = (spec_replicas..current)
        .filter(|o| !obs.pods.iter().any(|p| p.ordinal == *o))
        .count();
    if current > spec_replicas {
        let mut blocked = Vec::new();
        for pod in &leaving {
            match &pod.status {
                Some(s) if s.config.epoch == config.epoch && !s.member && s.hints_pending == 0 => {}
                Some(s) => {
                    if !s.draining {
                        plan.drain.push(pod.id.clone());
                    }
                    blocked.push(format!("{} ({} hints)", pod.id, s.hints_pending));
                }
                None => blocked.push(format!("{} (not answering)", pod.id)),
            }
        }
        if blocked.is_empty() && ring.settled() {
            plan.statefulset_replicas = spec_replicas.max(keep);
            plan.phase = Phase::ScalingDown;
            plan.message = format!("stopping pods that left the ring: {}", {
                let ids: Vec<&str> = leaving.iter().map(|p| p.id.as_str()).collect();
                ids.join(", ")
            });
            plan.events.push(PlannedEvent {
                reason: "MembersStopped".into(),
                note: format!(
                    "ring settled at epoch {} without {} pod(s); StatefulSet {} → {}",
                    config.epoch,
                    leaving.len() + missing_leavers,
                    current,
                    plan.statefulset_replicas
                ),
                warning: false,
            });
        } else {
            plan.phase = Phase::ScalingDown;
            plan.message = if blocked.is_empty() {
                "waiting for every member to answer before stopping pods".into()
            } else {
                format!(
                    "waiting for leaving nodes to hand off: {}",
                    blocked.join(", ")
                )
            };
        }
        return plan;
    }

    plan.statefulset_replicas = current.max(spec_replicas).max(keep);
    if plan.statefulset_replicas > current {
        plan.phase = Phase::ScalingUp;
        plan.message = "recreating missing pods".into();
        return plan;
    }
    plan.waiting = false;
    if ring.unavailable_members.is_empty() && ring.agreed {
        plan.phase = Phase::Running;
        plan.message = format!("ring settled at epoch {}", config.epoch);
    } else {
        plan.phase = Phase::Degraded;
        plan.waiting = true;
        plan.message = format!(
            "members not ready or not answering: {}",
            ring.unavailable_members.join(", ")
        );
    }
    plan
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kvapi::{PriorRing, TransferStatus};

    pub(crate) fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            address: format!("{id}.kv-headless.ns.svc:8080"),
            peer_address: format!("{id}.kv-headless.ns.svc:7070"),
        }
    }

    pub(crate) fn config(epoch: u64, ids: &[&str], n: u32, w: u32, r: u32) -> ClusterConfig {
        ClusterConfig {
            cluster: "ns/kv".into(),
            epoch,
            members: ids.iter().map(|i| member(i)).collect(),
            n,
            w,
            r,
            partitions: 256,
            vnodes: VNODES,
            sloppy_quorum: true,
            transition_from: None,
        }
    }

    pub(crate) fn node_status(id: &str, epoch: u64, ids: &[&str]) -> NodeStatus {
        status_with(
            id,
            config(
                epoch,
                ids,
                3.min(ids.len() as u32),
                2.min(ids.len() as u32),
                2.min(ids.len() as u32),
            ),
        )
    }

    pub(crate) fn status_with(id: &str, config: ClusterConfig) -> NodeStatus {
        NodeStatus {
            node_id: id.into(),
            member: config.member(id).is_some(),
            config,
            peers: Vec::new(),
            hints_pending: 0,
            draining: false,
            transfer: None,
        }
    }

    fn desired(replicas: u32, n: u32, w: u32, r: u32) -> Desired {
        Desired {
            cluster: "ns/kv".into(),
            members: (0..replicas).map(|i| member(&format!("kv-{i}"))).collect(),
            n,
            w,
            r,
            partitions: 256,
        }
    }

    fn pod(i: u32, ready: bool, status: Option<NodeStatus>) -> PodView {
        PodView {
            id: format!("kv-{i}"),
            ordinal: i,
            address: format!("kv-{i}.kv-headless.ns.svc:8080"),
            ready,
            status,
        }
    }

    /// `count` ready pods all on `cfg`.
    fn pods_on(count: u32, cfg: &ClusterConfig) -> Vec<PodView> {
        (0..count)
            .map(|i| pod(i, true, Some(status_with(&format!("kv-{i}"), cfg.clone()))))
            .collect()
    }

    fn observed(
        d: Desired,
        sts: Option<u32>,
        pods: Vec<PodView>,
        stored: Option<ClusterConfig>,
    ) -> Observed {
        Observed {
            name: "kv".into(),
            desired: d,
            statefulset_replicas: sts,
            pods,
            stored_config: stored,
        }
    }

    #[test]
    fn ordinals_are_parsed_from_pod_names_of_this_cluster_only() {
        assert_eq!(ordinal("kv", "kv-3"), Some(3));
        assert_eq!(ordinal("kv", "kv-a"), None);
        assert_eq!(ordinal("kv", "kvx-3"), None);
        assert_eq!(ordinal("kv-a", "kv-a-12"), Some(12));
    }

    #[test]
    fn first_reconcile_creates_every_pod_with_the_first_config() {
        let p = plan(&observed(desired(3, 3, 2, 2), None, vec![], None));
        assert_eq!(p.statefulset_replicas, 3);
        assert_eq!(p.config_map, config(1, &["kv-0", "kv-1", "kv-2"], 3, 2, 2));
        assert_eq!(p.push, None);
        assert_eq!(p.phase, Phase::Creating);
        assert!(p.waiting);
        assert_eq!(p.events[0].reason, "Created");
    }

    #[test]
    fn starting_cluster_waits_for_nodes_without_pushing() {
        let stored = config(1, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let pods = vec![pod(0, false, None), pod(1, false, None)];
        let p = plan(&observed(
            desired(3, 3, 2, 2),
            Some(3),
            pods,
            Some(stored.clone()),
        ));
        assert_eq!(p.phase, Phase::Creating);
        assert_eq!(p.statefulset_replicas, 3);
        assert_eq!(p.config_map, stored);
        assert_eq!(p.push, None);
    }

    #[test]
    fn settled_ring_matching_the_spec_is_running_and_idle() {
        let cfg = config(4, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let p = plan(&observed(
            desired(3, 3, 2, 2),
            Some(3),
            pods_on(3, &cfg),
            Some(config(1, &["kv-0", "kv-1", "kv-2"], 3, 2, 2)),
        ));
        assert_eq!(p.phase, Phase::Running);
        assert!(!p.waiting);
        assert_eq!(p.push, None);
        assert!(p.drain.is_empty());
        assert_eq!(p.statefulset_replicas, 3);
        // the ConfigMap follows the ring the nodes are on
        assert_eq!(p.config_map, cfg);
        assert!(p.ring.settled());
        assert!(p.events.is_empty());
    }

    #[test]
    fn scale_up_grows_the_statefulset_before_touching_the_ring() {
        let cfg = config(2, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let p = plan(&observed(
            desired(5, 3, 2, 2),
            Some(3),
            pods_on(3, &cfg),
            None,
        ));
        assert_eq!(p.statefulset_replicas, 5);
        assert_eq!(p.push, None);
        assert_eq!(p.phase, Phase::ScalingUp);
        assert!(p.waiting);
    }

    #[test]
    fn scale_up_waits_until_new_pods_are_ready_and_answer() {
        let cfg = config(2, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let mut pods = pods_on(3, &cfg);
        pods.push(pod(3, true, Some(status_with("kv-3", cfg.clone()))));
        pods.push(pod(4, false, Some(status_with("kv-4", cfg.clone())))); // answering, not ready
        let p = plan(&observed(desired(5, 3, 2, 2), Some(5), pods.clone(), None));
        assert_eq!(p.push, None);
        assert!(p.message.contains("kv-4"), "{}", p.message);

        pods[4].ready = true;
        pods[3].status = None; // ready by the kubelet, but the operator cannot reach it
        let p = plan(&observed(desired(5, 3, 2, 2), Some(5), pods, None));
        assert_eq!(p.push, None);
        assert!(p.message.contains("kv-3"), "{}", p.message);
    }

    #[test]
    fn scale_up_pushes_new_members_one_epoch_above_the_highest_seen() {
        let cfg = config(2, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let pods = pods_on(5, &cfg);
        // the ConfigMap is behind; a higher epoch on the nodes wins
        let p = plan(&observed(
            desired(5, 3, 2, 2),
            Some(5),
            pods,
            Some(config(1, &["kv-0", "kv-1", "kv-2"], 3, 2, 2)),
        ));
        let want = config(3, &["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"], 3, 2, 2);
        assert_eq!(p.push, Some(want));
        assert_eq!(p.statefulset_replicas, 5);
        assert_eq!(
            p.config_map, cfg,
            "the ConfigMap keeps the ring the nodes are on"
        );
        assert_eq!(p.phase, Phase::ScalingUp);
        assert_eq!(p.events[0].reason, "RingChangeStarted");
        assert!(
            p.events[0]
                .note
                .contains("[kv-0,kv-1,kv-2] → [kv-0,kv-1,kv-2,kv-3,kv-4]")
        );
    }

    fn transitioning(epoch: u64, from_ids: &[&str], to_ids: &[&str]) -> ClusterConfig {
        let mut c = config(epoch, to_ids, 3, 2, 2);
        c.transition_from = Some(PriorRing {
            epoch: epoch - 1,
            members: from_ids.iter().map(|i| member(i)).collect(),
            n: 3,
        });
        c
    }

    #[test]
    fn a_transition_in_progress_is_waited_for_whatever_the_spec_says() {
        let t = transitioning(
            3,
            &["kv-0", "kv-1", "kv-2"],
            &["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"],
        );
        let mut pods = pods_on(5, &t);
        if let Some(s) = pods[3].status.as_mut() {
            s.transfer = Some(TransferStatus {
                from_epoch: 2,
                to_epoch: 3,
                partitions_total: 40,
                partitions_done: 30,
                keys_received: 0,
                bytes_received: 0,
                pending: vec![],
            });
        }
        // the user already asked for 3 replicas again and W=1: nothing may race the change
        let p = plan(&observed(desired(3, 3, 1, 2), Some(5), pods, None));
        assert_eq!(p.push, None);
        assert_eq!(p.statefulset_replicas, 5);
        assert_eq!(p.phase, Phase::Transitioning);
        assert_eq!(
            p.ring.transition,
            Some(TransitionStatus {
                from_epoch: 2,
                to_epoch: 3,
                partitions_pending: 10,
                ..Default::default()
            })
        );
        assert!(p.waiting);
    }

    #[test]
    fn one_node_still_in_transition_blocks_changes() {
        let settled = config(4, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let mut pods = pods_on(3, &settled);
        pods[2].status = Some(status_with(
            "kv-2",
            transitioning(3, &["kv-0", "kv-1"], &["kv-0", "kv-1", "kv-2"]),
        ));
        let p = plan(&observed(desired(3, 3, 1, 1), Some(3), pods, None));
        assert_eq!(p.push, None);
        assert_eq!(p.phase, Phase::Transitioning);
        // the tail of the change is still reported as the change (the status keeps it, so its
        // completion gets an event)
        assert_eq!(
            p.ring.transition,
            Some(TransitionStatus {
                from_epoch: 2,
                to_epoch: 3,
                partitions_pending: 0,
                ..Default::default()
            })
        );
        assert!(p.message.contains("from epoch 2 to 3"), "{}", p.message);
    }

    #[test]
    fn scale_down_pushes_the_smaller_ring_and_keeps_the_pods() {
        let cfg = config(5, &["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"], 3, 2, 2);
        let p = plan(&observed(
            desired(3, 3, 2, 2),
            Some(5),
            pods_on(5, &cfg),
            None,
        ));
        assert_eq!(p.push, Some(config(6, &["kv-0", "kv-1", "kv-2"], 3, 2, 2)));
        assert_eq!(
            p.statefulset_replicas, 5,
            "leaving pods stay until the ring settles"
        );
        assert_eq!(p.phase, Phase::ScalingDown);
    }

    #[test]
    fn scale_down_waits_for_transfer_before_removing_pods() {
        let t = transitioning(
            6,
            &["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"],
            &["kv-0", "kv-1", "kv-2"],
        );
        let p = plan(&observed(
            desired(3, 3, 2, 2),
            Some(5),
            pods_on(5, &t),
            None,
        ));
        assert_eq!(p.statefulset_replicas, 5);
        assert_eq!(p.push, None);
        assert_eq!(p.phase, Phase::Transitioning);
    }

    #[test]
    fn leaving_nodes_with_hints_are_drained_and_kept() {
        let cfg = config(7, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let mut pods = pods_on(5, &cfg);
        if let Some(s) = pods[3].status.as_mut() {
            s.hints_pending = 12;
        }
        if let Some(s) = pods[4].status.as_mut() {
            s.hints_pending = 3;
            s.draining = true;
        }
        let p = plan(&observed(desired(3, 3, 2, 2), Some(5), pods, None));
        assert_eq!(p.statefulset_replicas, 5);
        assert_eq!(
            p.drain,
            vec!["kv-3".to_string()],
            "kv-4 is draining already"
        );
        assert_eq!(p.push, None);
        assert_eq!(p.phase, Phase::ScalingDown);
        assert!(p.message.contains("kv-3 (12 hints)"), "{}", p.message);
    }

    #[test]
    fn a_leaving_node_that_does_not_answer_keeps_its_pod() {
        let cfg = config(7, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let mut pods = pods_on(5, &cfg);
        pods[4].status = None;
        let p = plan(&observed(desired(3, 3, 2, 2), Some(5), pods, None));
        assert_eq!(p.statefulset_replicas, 5);
    }

    #[test]
    fn a_leaving_node_on_an_older_epoch_keeps_its_pod() {
        let cfg = config(7, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let mut pods = pods_on(5, &cfg);
        pods[3].status = Some(status_with(
            "kv-3",
            config(5, &["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"], 3, 2, 2),
        ));
        let p = plan(&observed(desired(3, 3, 2, 2), Some(5), pods, None));
        assert_eq!(p.statefulset_replicas, 5);
        assert_eq!(p.push, None);
    }

    #[test]
    fn settled_ring_without_them_and_no_hints_stops_leaving_pods() {
        let cfg = config(7, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let p = plan(&observed(
            desired(3, 3, 2, 2),
            Some(5),
            pods_on(5, &cfg),
            None,
        ));
        assert_eq!(p.statefulset_replicas, 3);
        assert_eq!(p.push, None);
        assert!(p.drain.is_empty());
        assert_eq!(p.phase, Phase::ScalingDown);
        assert_eq!(p.events[0].reason, "MembersStopped");
    }

    #[test]
    fn quorum_change_is_pushed_with_the_same_members() {
        let cfg = config(4, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let p = plan(&observed(
            desired(3, 3, 1, 3),
            Some(3),
            pods_on(3, &cfg),
            None,
        ));
        assert_eq!(p.push, Some(config(5, &["kv-0", "kv-1", "kv-2"], 3, 1, 3)));
        assert_eq!(p.statefulset_replicas, 3);
        assert_eq!(p.phase, Phase::Reconfiguring);
        assert_eq!(p.events[0].reason, "QuorumsChanged");
    }

    #[test]
    fn quorum_change_needs_only_one_answering_node() {
        let cfg = config(4, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let mut pods = pods_on(3, &cfg);
        pods[1].status = None;
        pods[1].ready = false;
        let p = plan(&observed(desired(3, 3, 1, 1), Some(3), pods, None));
        assert_eq!(p.push, Some(config(5, &["kv-0", "kv-1", "kv-2"], 3, 1, 1)));
    }

    #[test]
    fn n_change_waits_for_every_member() {
        let cfg = config(4, &["kv-0", "kv-1", "kv-2", "kv-3"], 3, 2, 2);
        let mut pods = pods_on(4, &cfg);
        pods[1].status = None;
        let p = plan(&observed(desired(4, 4, 2, 2), Some(4), pods.clone(), None));
        assert_eq!(p.push, None);
        assert_eq!(p.phase, Phase::Degraded);

        pods[1].status = Some(status_with("kv-1", cfg.clone()));
        let p = plan(&observed(desired(4, 4, 2, 2), Some(4), pods, None));
        assert_eq!(
            p.push,
            Some(config(5, &["kv-0", "kv-1", "kv-2", "kv-3"], 4, 2, 2))
        );
        assert_eq!(p.events[0].reason, "RingChangeStarted");
    }

    #[test]
    fn membership_change_waits_for_every_member_to_answer() {
        let cfg = config(4, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let mut pods = pods_on(5, &cfg);
        pods[0].status = None;
        let p = plan(&observed(desired(5, 3, 2, 2), Some(5), pods, None));
        assert_eq!(p.push, None);
        assert_eq!(p.phase, Phase::Degraded);
        assert!(p.message.contains("kv-0"), "{}", p.message);
    }

    #[test]
    fn nodes_disagreeing_on_the_epoch_block_membership_changes() {
        let cfg = config(4, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let mut pods = pods_on(5, &cfg);
        pods[2].status = Some(status_with(
            "kv-2",
            config(3, &["kv-0", "kv-1", "kv-2"], 3, 2, 2),
        ));
        let p = plan(&observed(desired(5, 3, 2, 2), Some(5), pods, None));
        assert_eq!(p.push, None);
    }

    #[test]
    fn quorums_are_pushed_while_new_pods_start() {
        let cfg = config(4, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let p = plan(&observed(
            desired(5, 3, 3, 1),
            Some(3),
            pods_on(3, &cfg),
            None,
        ));
        assert_eq!(p.statefulset_replicas, 5);
        assert_eq!(p.push, Some(config(5, &["kv-0", "kv-1", "kv-2"], 3, 3, 1)));
        // but not an N the current ring cannot hold
        let p = plan(&observed(
            desired(5, 5, 3, 3),
            Some(3),
            pods_on(3, &cfg),
            None,
        ));
        assert_eq!(p.push, None);
    }

    #[test]
    fn scale_up_with_n_change_pushes_both_at_once() {
        let cfg = config(4, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let p = plan(&observed(
            desired(5, 5, 3, 3),
            Some(5),
            pods_on(5, &cfg),
            None,
        ));
        assert_eq!(
            p.push,
            Some(config(
                5,
                &["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"],
                5,
                3,
                3
            ))
        );
    }

    #[test]
    fn scaling_back_up_before_leaving_pods_stop_reuses_them() {
        // ring settled at 3 members, pods 3 and 4 not stopped yet, spec back to 5
        let cfg = config(7, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let p = plan(&observed(
            desired(5, 3, 2, 2),
            Some(5),
            pods_on(5, &cfg),
            None,
        ));
        assert_eq!(p.statefulset_replicas, 5);
        assert_eq!(
            p.push,
            Some(config(
                8,
                &["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"],
                3,
                2,
                2
            ))
        );
    }

    #[test]
    fn the_statefulset_never_shrinks_below_a_ring_member() {
        // someone scaled the StatefulSet down by hand: grow it back to hold every member
        let cfg = config(4, &["kv-0", "kv-1", "kv-2", "kv-3"], 3, 2, 2);
        let p = plan(&observed(
            desired(4, 3, 2, 2),
            Some(2),
            pods_on(2, &cfg),
            None,
        ));
        assert_eq!(p.statefulset_replicas, 4);
        assert_eq!(p.push, None);
    }

    #[test]
    fn a_member_not_ready_is_degraded_but_nothing_is_pushed() {
        let cfg = config(4, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let mut pods = pods_on(3, &cfg);
        pods[1].ready = false;
        let p = plan(&observed(desired(3, 3, 2, 2), Some(3), pods, None));
        assert_eq!(p.phase, Phase::Degraded);
        assert_eq!(p.push, None);
        assert_eq!(p.ring.unavailable_members, vec!["kv-1".to_string()]);
    }

    #[test]
    fn nodes_of_another_cluster_are_ignored() {
        let mut foreign = config(9, &["kv-0"], 1, 1, 1);
        foreign.cluster = "other/kv".into();
        let mine = config(2, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let mut pods = pods_on(3, &mine);
        pods[0].status = Some(status_with("kv-0", foreign));
        let ring = ring_state(&observed(desired(3, 3, 2, 2), Some(3), pods, None));
        assert_eq!(ring.epoch(), 2);
    }

    #[test]
    fn no_answer_after_the_cluster_ran_is_degraded() {
        let stored = config(5, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
        let pods = (0..3).map(|i| pod(i, false, None)).collect();
        let p = plan(&observed(desired(3, 3, 2, 2), Some(3), pods, Some(stored)));
        assert_eq!(p.phase, Phase::Degraded);
        assert_eq!(p.push, None);
        assert_eq!(p.statefulset_replicas, 3);
    }
}
