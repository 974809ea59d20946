//! The resource's status, computed from what was observed and planned: counts, the ring, and the
//! four conditions every kvcluster reports the same way.
//!
//! A condition keeps its `lastTransitionTime` while its status does not change, so watchers see
//! when a state began, not when it was last written.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::builders::pdb::max_unavailable;
use crate::crd::{Consistency, KVClusterStatus, Phase};
use crate::plan::Plan;

/// `Available`: every partition keeps its read and write quorums.
pub const AVAILABLE: &str = "Available";
/// `Progressing`: the operator is moving the cluster towards the spec.
pub const PROGRESSING: &str = "Progressing";
/// `Degraded`: members are not ready or not answering.
pub const DEGRADED: &str = "Degraded";
/// `RingSettled`: no ring change in progress, and every member on one epoch.
pub const RING_SETTLED: &str = "RingSettled";

/// Inputs of the status besides the plan.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// `spec.replicas` of the StatefulSet as applied.
    pub replicas: u32,
    /// Pods with a true Ready condition.
    pub ready_replicas: u32,
    /// The resource's `metadata.generation`.
    pub generation: Option<i64>,
    /// The spec's N, W and R, for the consistency before any node answered.
    pub spec_nwr: (u32, u32, u32),
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The status for `plan`, keeping transition times from `previous`.
pub fn build(
    plan: &Plan,
    counts: Counts,
    previous: Option<&KVClusterStatus>,
    now: Timestamp,
) -> KVClusterStatus {
    let prev = previous.map_or(&[][..], |s| s.conditions.as_slice());
    let ring = &plan.ring;
    let node_config = ring.config.as_ref().filter(|_| ring.any_reachable);
    let (n, w, r) = node_config.map_or(counts.spec_nwr, |c| (c.n, c.w, c.r));
    let g = counts.generation;

    let down = u32::try_from(ring.unavailable_members.len()).unwrap_or(u32::MAX);
    let tolerated = max_unavailable(n, w, r);
    let available = if !ring.any_reachable {
        condition(
            AVAILABLE,
            false,
            "NoNodeAnswers",
            "no node answers yet".into(),
            g,
            prev,
            now,
        )
    } else if down <= tolerated {
        let msg = format!("{down} member(s) unavailable, quorums survive {tolerated}");
        condition(AVAILABLE, true, "QuorumsAvailable", msg, g, prev, now)
    } else {
        let msg = format!(
            "{down} member(s) unavailable ({}), some partitions may lack W={w} or R={r} of N={n}",
            ring.unavailable_members.join(", ")
        );
        condition(AVAILABLE, false, "QuorumsAtRisk", msg, g, prev, now)
    };

    let progressing_phase = matches!(
        plan.phase,
        Phase::Creating
            | Phase::ScalingUp
            | Phase::ScalingDown
            | Phase::Transitioning
            | Phase::Reconfiguring
    );
    let progressing = if progressing_phase {
        condition(
            PROGRESSING,
            true,
            &format!("{:?}", plan.phase),
            plan.message.clone(),
            g,
            prev,
            now,
        )
    } else {
        condition(
            PROGRESSING,
            false,
            "UpToDate",
            plan.message.clone(),
            g,
            prev,
            now,
        )
    };

    let degraded = if plan.phase == Phase::Degraded || (ring.any_reachable && down > 0) {
        let msg = if ring.unavailable_members.is_empty() {
            plan.message.clone()
        } else {
            format!(
                "not ready or not answering: {}",
                ring.unavailable_members.join(", ")
            )
        };
        condition(DEGRADED, true, "MembersUnavailable", msg, g, prev, now)
    } else {
        condition(
            DEGRADED,
            false,
            "AllMembersReady",
            "every member is ready".into(),
            g,
            prev,
            now,
        )
    };

    let settled = if ring.settled() {
        let msg = format!("every member on epoch {}", ring.epoch());
        condition(RING_SETTLED, true, "Settled", msg, g, prev, now)
    } else if ring.in_transition {
        condition(
            RING_SETTLED,
            false,
            "Transitioning",
            plan.message.clone(),
            g,
            prev,
            now,
        )
    } else {
        let msg = "not every member answers on one epoch".to_string();
        condition(RING_SETTLED, false, "Unconfirmed", msg, g, prev, now)
    };

    KVClusterStatus {
        replicas: counts.replicas,
        ready_replicas: counts.ready_replicas,
        ring_epoch: node_config.map_or(0, |c| c.epoch),
        members: node_config
            .map(|c| c.members.iter().map(|m| m.id.clone()).collect())
            .unwrap_or_default(),
        consistency: Some(Consistency::of(n, w, r)),
        transition: ring.transition.clone(),
        observed_generation: g,
        phase: Some(plan.phase),
        conditions: vec![available, progressing, degraded, settled],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RingState;
    use crate::plan::tests::config;

    fn plan_with(ring: RingState, phase: Phase) -> Plan {
        Plan {
            statefulset_replicas: 3,
            config_map: config(1, &["kv-0"], 1, 1, 1),
            push: None,
            drain: vec![],
            phase,
            waiting: false,
            message: "m".into(),
            ring,
            events: vec![],
        }
    }

    fn ring(unavailable: &[&str], in_transition: bool) -> RingState {
        RingState {
            config: Some(config(4, &["kv-0", "kv-1", "kv-2"], 3, 2, 2)),
            any_reachable: true,
            all_members_reachable: unavailable.is_empty(),
            agreed: true,
            in_transition,
            transition: None,
            unavailable_members: unavailable.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn counts() -> Counts {
        Counts {
            replicas: 3,
            ready_replicas: 3,
            generation: Some(2),
            spec_nwr: (3, 1, 1),
        }
    }

    fn get<'a>(s: &'a KVClusterStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or(&s.conditions[0])
    }

    #[test]
    fn running_cluster_reports_settled_available_and_quorums_in_force() {
        let s = build(
            &plan_with(ring(&[], false), Phase::Running),
            counts(),
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(s.ring_epoch, 4);
        assert_eq!(s.members, vec!["kv-0", "kv-1", "kv-2"]);
        assert_eq!(
            s.consistency,
            Some(Consistency::Strong),
            "N=3 W=2 R=2 from the nodes, not the spec"
        );
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.phase, Some(Phase::Running));
        assert_eq!(get(&s, AVAILABLE).status, "True");
        assert_eq!(get(&s, PROGRESSING).status, "False");
        assert_eq!(get(&s, DEGRADED).status, "False");
        assert_eq!(get(&s, RING_SETTLED).status, "True");
        assert_eq!(s.conditions.len(), 4);
    }

    #[test]
    fn losing_more_members_than_the_quorums_tolerate_is_unavailable() {
        // N=3, W=2: one member may be down
        let s = build(
            &plan_with(ring(&["kv-1"], false), Phase::Degraded),
            counts(),
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(get(&s, AVAILABLE).status, "True");
        assert_eq!(get(&s, DEGRADED).status, "True");
        assert_eq!(get(&s, RING_SETTLED).status, "False");
        let s = build(
            &plan_with(ring(&["kv-1", "kv-2"], false), Phase::Degraded),
            counts(),
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(get(&s, AVAILABLE).status, "False");
        assert_eq!(get(&s, AVAILABLE).reason, "QuorumsAtRisk");
    }

    #[test]
    fn transitions_are_progressing_and_not_settled() {
        let s = build(
            &plan_with(ring(&[], true), Phase::Transitioning),
            counts(),
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(get(&s, PROGRESSING).status, "True");
        assert_eq!(get(&s, PROGRESSING).reason, "Transitioning");
        assert_eq!(get(&s, RING_SETTLED).reason, "Transitioning");
    }

    #[test]
    fn transition_time_changes_only_with_the_status() -> Result<(), Box<dyn std::error::Error>> {
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = Timestamp::from_second(1000)?;
        let first = build(
            &plan_with(ring(&[], false), Phase::Running),
            counts(),
            None,
            t0,
        );
        let same = build(
            &plan_with(ring(&[], false), Phase::Running),
            counts(),
            Some(&first),
            t1,
        );
        assert_eq!(get(&same, AVAILABLE).last_transition_time, Time(t0));
        let changed = build(
            &plan_with(ring(&[], true), Phase::Transitioning),
            counts(),
            Some(&first),
            t1,
        );
        assert_eq!(get(&changed, PROGRESSING).last_transition_time, Time(t1));
        assert_eq!(get(&changed, AVAILABLE).last_transition_time, Time(t0));
        Ok(())
    }

    #[test]
    fn before_any_node_answers_the_spec_gives_the_consistency() {
        let mut r = ring(&[], false);
        r.any_reachable = false;
        let s = build(
            &plan_with(r, Phase::Creating),
            Counts {
                spec_nwr: (3, 1, 1),
                ..counts()
            },
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(s.consistency, Some(Consistency::Eventual));
        assert_eq!(s.ring_epoch, 0);
        assert_eq!(get(&s, AVAILABLE).reason, "NoNodeAnswers");
        assert_eq!(get(&s, DEGRADED).status, "False");
    }
}
