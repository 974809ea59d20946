//! How big a node's pod is and what it may spend: the container's resources (Guaranteed QoS by
//! default) and the node's memory budgets derived from its memory limit.
//!
//! A node's memory is its object cache, RocksDB (block cache and memtables under one bound) and
//! everything else: request buffers, connections, the allocator. The operator gives each of the
//! first two a quarter of the limit and leaves half for the rest; an explicit `cacheSize` replaces
//! the object cache's quarter.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::crd::{KVCluster, node_bytes};

/// CPU of a pod when the spec names no resources.
pub const DEFAULT_CPU: &str = "1";
/// Memory of a pod when the spec names no resources.
pub const DEFAULT_MEMORY: &str = "1Gi";

/// The container's resources: the spec's, or [`DEFAULT_CPU`] and [`DEFAULT_MEMORY`] as both
/// requests and limits, which makes the pods Guaranteed (the last evicted under node pressure).
pub fn resources(kvc: &KVCluster) -> ResourceRequirements {
    if let Some(r) = &kvc.spec.resources {
        return r.clone();
    }
    let both = BTreeMap::from([
        ("cpu".to_string(), Quantity(DEFAULT_CPU.into())),
        ("memory".to_string(), Quantity(DEFAULT_MEMORY.into())),
    ]);
    ResourceRequirements {
        limits: Some(both.clone()),
        requests: Some(both),
        ..ResourceRequirements::default()
    }
}

/// Bytes of a Kubernetes quantity (`512Mi`, `1G`, `1.5Gi`, `1073741824`), `None` when it cannot
/// be read (milli-units, exponents).
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    const SUFFIXES: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let quantity = quantity.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| quantity.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((quantity, 1.0));
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let value = number.parse::<f64>().ok()? * scale;
    // A quantity above 2^64 bytes is not a memory limit anyone has.
    (0.0..1.8e19).contains(&value).then_some(value as u64)
}

/// The memory limit the node's budgets come from: the limit, else the request.
fn memory_limit(kvc: &KVCluster) -> Option<u64> {
    let r = resources(kvc);
    let of = |m: &Option<BTreeMap<String, Quantity>>| {
        m.as_ref()
            .and_then(|m| m.get("memory"))
            .and_then(|q| quantity_bytes(&q.0))
    };
    of(&r.limits).or_else(|| of(&r.requests))
}

/// `(KVNODE_CACHE_SIZE, KVNODE_ROCKSDB_MEMORY)` values: the spec's cache size or a quarter of the
/// memory limit, and a quarter of the limit for RocksDB; `None` leaves the node's default.
pub fn memory_budget(kvc: &KVCluster) -> (Option<String>, Option<String>) {
    let quarter = memory_limit(kvc).map(|bytes| format!("{}KiB", bytes / 4 / 1024));
    let cache = kvc
        .spec
        .cache_size
        .as_deref()
        .map(node_bytes)
        .or_else(|| quarter.clone());
    (cache, quarter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::kvc;

    #[test]
    fn quantities_are_read_as_kubernetes_writes_them() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("512Mi"), Some(512 << 20));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("2G"), Some(2_000_000_000));
        assert_eq!(quantity_bytes("1048576"), Some(1 << 20));
        for unreadable in ["", "Gi", "100m", "1e9", "-1Gi", "lots"] {
            assert_eq!(quantity_bytes(unreadable), None, "{unreadable}");
        }
    }

    #[test]
    fn without_resources_pods_are_guaranteed_and_budgets_fit_the_limit() {
        let mut k = kvc(3, 3, 2, 2);
        k.spec.resources = None;
        k.spec.cache_size = None;
        let r = resources(&k);
        assert_eq!(
            r.requests, r.limits,
            "requests equal limits: Guaranteed QoS"
        );
        assert_eq!(
            r.limits
                .as_ref()
                .and_then(|l| l.get("memory"))
                .map(|q| q.0.as_str()),
            Some("1Gi")
        );
        assert_eq!(
            memory_budget(&k),
            (Some("262144KiB".into()), Some("262144KiB".into()))
        );
        k.spec.cache_size = Some("64Mi".into());
        assert_eq!(memory_budget(&k).0.as_deref(), Some("64MiB"));
    }

    #[test]
    fn a_memory_request_without_a_limit_still_sizes_the_budgets() {
        let mut k = kvc(3, 3, 2, 2);
        k.spec.cache_size = None;
        k.spec.resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("memory".into(), Quantity("4Gi".into()))])),
            ..ResourceRequirements::default()
        });
        assert_eq!(memory_budget(&k).1.as_deref(), Some("1048576KiB"));
        k.spec.resources = Some(ResourceRequirements::default());
        assert_eq!(
            memory_budget(&k),
            (None, None),
            "no memory named: the node's defaults"
        );
    }
}
