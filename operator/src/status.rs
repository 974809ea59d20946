//! The resource's status, computed from what was observed and planned: counts, the ring, and the
//! four conditions every kvcluster reports the same way; and the Warning events a change of status
//! calls for.
//!
//! A condition keeps its `lastTransitionTime` while its status does not change, so watchers see
//! when a state began, not when it was last written. A ring change keeps the time its pending
//! partitions last went down, so a change that stands still is reported stalled.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::builders::pdb::max_unavailable;
use crate::crd::{Consistency, KVClusterStatus, Phase, TransitionStatus, VolumeStatus};
use crate::plan::{Plan, PlannedEvent};

/// `Available`: every partition keeps its read and write quorums.
pub const AVAILABLE: &str = "Available";
/// `Progressing`: the operator is moving the cluster towards the spec.
pub const PROGRESSING: &str = "Progressing";
/// `Degraded`: members are not ready or not answering.
pub const DEGRADED: &str = "Degraded";
/// `RingSettled`: no ring change in progress, and every member on one epoch.
pub const RING_SETTLED: &str = "RingSettled";

/// Inputs of the status besides the plan.
#[derive(Debug, Clone)]
pub struct Counts {
    /// `spec.replicas` of the StatefulSet as applied.
    pub replicas: u32,
    /// Pods with a true Ready condition.
    pub ready_replicas: u32,
    /// The resource's `metadata.generation`.
    pub generation: Option<i64>,
    /// The spec's N, W and R, for the consistency before any node answered.
    pub spec_nwr: (u32, u32, u32),
    /// The pods' label selector, for the scale subresource.
    pub selector: String,
    /// The volumes' growth, when `storage.size` grew.
    pub volumes: Option<VolumeStatus>,
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

/// `current` with its progress clock carried over from `previous`: the clock restarts when the
/// change is new or its pending partitions went down, and the change is stalled once the clock is
/// older than `stall_after`.
fn track_progress(
    current: Option<&TransitionStatus>,
    previous: Option<&TransitionStatus>,
    now: Timestamp,
    stall_after: Duration,
) -> Option<TransitionStatus> {
    let mut t = current?.clone();
    let since = previous
        .filter(|p| {
            p.from_epoch == t.from_epoch
                && p.to_epoch == t.to_epoch
                && p.partitions_pending <= t.partitions_pending
        })
        .and_then(|p| p.last_progress_time.clone())
        .unwrap_or(Time(now));
    let still = now.duration_since(since.0).unsigned_abs();
    t.stalled = still >= stall_after;
    t.last_progress_time = Some(since);
    Some(t)
}

/// Warning events for what turned bad between `previous` and `new`: the cluster became Degraded,
/// or its ring change stalled. Each fires once, when the state begins.
pub fn warning_events(
    previous: Option<&KVClusterStatus>,
    new: &KVClusterStatus,
) -> Vec<PlannedEvent> {
    let degraded = |s: &KVClusterStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == DEGRADED && c.status == "True")
            .map(|c| c.message.clone())
    };
    let mut events = Vec::new();
    if let Some(message) = degraded(new)
        && previous.and_then(degraded).is_none()
    {
        events.push(PlannedEvent {
            reason: "Degraded".into(),
            note: message,
            warning: true,
        });
    }
    let was_stalled = previous
        .and_then(|p| p.transition.as_ref())
        .is_some_and(|t| t.stalled);
    if let Some(t) = new.transition.as_ref().filter(|t| t.stalled)
        && !was_stalled
    {
        let since = t
            .last_progress_time
            .as_ref()
            .map_or_else(String::new, |time| format!(" since {}", time.0));
        events.push(PlannedEvent {
            reason: "RingChangeStalled".into(),
            note: format!(
                "ring change from epoch {} to {}: {} partition(s) still pending, no progress{since}",
                t.from_epoch, t.to_epoch, t.partitions_pending
            ),
            warning: true,
        });
    }
    let refused = |s: &KVClusterStatus| s.volumes.as_ref().is_some_and(|v| !v.refused.is_empty());
    if let Some(v) = new.volumes.as_ref().filter(|_| refused(new))
        && !previous.is_some_and(refused)
    {
        events.push(PlannedEvent {
            reason: "VolumeExpansionRefused".into(),
            note: format!("cannot grow to {}: {}", v.size, v.refused.join("; ")),
            warning: true,
        });
    }
    events
}

/// The status for `plan`, keeping transition times from `previous`.
pub fn build(
    plan: &Plan,
    counts: Counts,
    previous: Option<&KVClusterStatus>,
    now: Timestamp,
    stall_after: Duration,
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
        transition: track_progress(
            ring.transition.as_ref(),
            previous.and_then(|p| p.transition.as_ref()),
            now,
            stall_after,
        ),
        observed_generation: g,
        phase: Some(plan.phase),
        conditions: vec![available, progressing, degraded, settled],
        selector: Some(counts.selector),
        volumes: counts.volumes,
        // Written by the backup jobs under their own field manager: left out of this apply.
        backup: None,
        restore: None,
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

    const STALL: Duration = Duration::from_secs(600);

    fn counts() -> Counts {
        Counts {
            replicas: 3,
            ready_replicas: 3,
            generation: Some(2),
            spec_nwr: (3, 1, 1),
            selector: "app=kvnode".into(),
            volumes: None,
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
            STALL,
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
            STALL,
        );
        assert_eq!(get(&s, AVAILABLE).status, "True");
        assert_eq!(get(&s, DEGRADED).status, "True");
        assert_eq!(get(&s, RING_SETTLED).status, "False");
        let s = build(
            &plan_with(ring(&["kv-1", "kv-2"], false), Phase::Degraded),
            counts(),
            None,
            Timestamp::UNIX_EPOCH,
            STALL,
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
            STALL,
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
            STALL,
        );
        let same = build(
            &plan_with(ring(&[], false), Phase::Running),
            counts(),
            Some(&first),
            t1,
            STALL,
        );
        assert_eq!(get(&same, AVAILABLE).last_transition_time, Time(t0));
        let changed = build(
            &plan_with(ring(&[], true), Phase::Transitioning),
            counts(),
            Some(&first),
            t1,
            STALL,
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
            STALL,
        );
        assert_eq!(s.consistency, Some(Consistency::Eventual));
        assert_eq!(s.ring_epoch, 0);
        assert_eq!(get(&s, AVAILABLE).reason, "NoNodeAnswers");
        assert_eq!(get(&s, DEGRADED).status, "False");
    }

    fn transitioning(pending: u64) -> Plan {
        let mut r = ring(&[], true);
        r.transition = Some(TransitionStatus {
            from_epoch: 4,
            to_epoch: 5,
            partitions_pending: pending,
            ..TransitionStatus::default()
        });
        plan_with(r, Phase::Transitioning)
    }

    #[test]
    fn a_ring_change_without_progress_stalls_once_and_progress_restarts_the_clock()
    -> Result<(), Box<dyn std::error::Error>> {
        let at = |s: i64| Timestamp::from_second(s);
        let first = build(&transitioning(40), counts(), None, at(0)?, STALL);
        let t = first.transition.clone().ok_or("no transition")?;
        assert_eq!(t.last_progress_time, Some(Time(at(0)?)));
        assert!(!t.stalled);
        assert!(warning_events(None, &first).is_empty());
        // 30 pending at 300 s: progress, the clock restarts.
        let moved = build(&transitioning(30), counts(), Some(&first), at(300)?, STALL);
        let t = moved.transition.clone().ok_or("no transition")?;
        assert_eq!(t.last_progress_time, Some(Time(at(300)?)));
        // Still 30 at 899 s: not yet stalled; at 900 s it is, and says so once.
        let waiting = build(&transitioning(30), counts(), Some(&moved), at(899)?, STALL);
        assert!(!waiting.transition.as_ref().is_some_and(|t| t.stalled));
        let stalled = build(
            &transitioning(30),
            counts(),
            Some(&waiting),
            at(900)?,
            STALL,
        );
        assert!(stalled.transition.as_ref().is_some_and(|t| t.stalled));
        let events = warning_events(Some(&waiting), &stalled);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].reason, "RingChangeStalled");
        assert!(events[0].warning);
        assert!(
            events[0].note.contains("30 partition(s) still pending"),
            "{}",
            events[0].note
        );
        let later = build(
            &transitioning(30),
            counts(),
            Some(&stalled),
            at(960)?,
            STALL,
        );
        assert!(
            warning_events(Some(&stalled), &later).is_empty(),
            "one event per stall"
        );
        Ok(())
    }

    #[test]
    fn turning_degraded_is_a_warning_event_once() {
        let healthy = build(
            &plan_with(ring(&[], false), Phase::Running),
            counts(),
            None,
            Timestamp::UNIX_EPOCH,
            STALL,
        );
        let degraded = build(
            &plan_with(ring(&["kv-2"], false), Phase::Degraded),
            counts(),
            Some(&healthy),
            Timestamp::UNIX_EPOCH,
            STALL,
        );
        let events = warning_events(Some(&healthy), &degraded);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].reason, "Degraded");
        assert!(events[0].warning);
        assert!(events[0].note.contains("kv-2"), "{}", events[0].note);
        assert!(warning_events(Some(&degraded), &degraded).is_empty());

        let mut refused = degraded.clone();
        refused.volumes = Some(VolumeStatus {
            size: "20Gi".into(),
            expanding: vec!["data-kv-1".into()],
            refused: vec!["data-kv-1: storageclass does not allow expansion".into()],
        });
        let events = warning_events(Some(&degraded), &refused);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].reason, "VolumeExpansionRefused");
        assert!(events[0].note.contains("data-kv-1"));
        assert!(warning_events(Some(&refused), &refused).is_empty());
        assert_eq!(degraded.selector.as_deref(), Some("app=kvnode"));
    }
}
