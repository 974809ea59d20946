//! The PodDisruptionBudget, derived from N, W and R.
//!
//! Pods are spread over the ring, so any k pods taken down together may hold k replicas of one same
//! partition. That partition keeps a write quorum only while N − k ≥ W and a read quorum only while
//! N − k ≥ R: voluntary disruptions are safe for k ≤ N − max(W, R) = min(N − W, N − R). When that is
//! 0 (W = N or R = N) the budget is `maxUnavailable: 0`, which blocks every voluntary eviction: a
//! `kubectl drain` of a node hosting a pod waits until the quorums are lowered or the pod is
//! moved by hand. That is the honest answer: any eviction would make some keys unwritable or
//! unreadable.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{owned_meta, selector_labels};
use crate::crd::KVCluster;

/// How many pods may be down at once while every partition keeps both quorums.
pub fn max_unavailable(n: u32, w: u32, r: u32) -> u32 {
    n.saturating_sub(w.max(r))
}

/// The budget for the resource's pods, from its spec's N, W and R.
pub fn build(kvc: &KVCluster) -> PodDisruptionBudget {
    let s = &kvc.spec;
    let k = max_unavailable(s.replication_factor, s.write_quorum, s.read_quorum);
    PodDisruptionBudget {
        metadata: owned_meta(kvc, kvc.name_any()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(i32::try_from(k).unwrap_or(0))),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(kvc)),
                ..LabelSelector::default()
            }),
            // Pods that are not ready already count as unavailable; evicting them cannot make
            // a quorum worse, and lets a drain move a crash-looping pod.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::kvc;

    #[test]
    fn budget_keeps_both_quorums_for_every_partition() {
        // (n, w, r) → pods that may be down together
        let table = [
            ((3, 2, 2), 1),
            ((3, 1, 1), 2),
            ((3, 3, 1), 0),
            ((3, 1, 3), 0),
            ((5, 3, 3), 2),
            ((5, 2, 4), 1),
            ((1, 1, 1), 0),
        ];
        for ((n, w, r), want) in table {
            assert_eq!(max_unavailable(n, w, r), want, "n={n} w={w} r={r}");
        }
    }

    #[test]
    fn pdb_selects_the_pods_and_sets_max_unavailable() {
        let pdb = build(&kvc(5, 3, 2, 2));
        assert_eq!(pdb.metadata.name.as_deref(), Some("kv"));
        let spec = pdb.spec.unwrap_or_default();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        let labels = spec
            .selector
            .and_then(|s| s.match_labels)
            .unwrap_or_default();
        assert_eq!(labels, selector_labels(&kvc(5, 3, 2, 2)));
    }

    #[test]
    fn w_equal_to_n_blocks_voluntary_evictions() {
        let pdb = build(&kvc(3, 3, 3, 1));
        assert_eq!(
            pdb.spec.and_then(|s| s.max_unavailable),
            Some(IntOrString::Int(0))
        );
    }
}
