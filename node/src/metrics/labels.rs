//! Keeps the label values of a metric vector within a known set (the members), so series of
//! departed peers do not accumulate.

use std::collections::HashMap;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};

/// Removes every series of `vec` whose `label` is not one of `keep`.
pub(super) fn retain<T: MetricVecBuilder>(vec: &MetricVec<T>, label: &str, keep: &[&str]) {
    let mut doomed: Vec<HashMap<String, String>> = Vec::new();
    for family in vec.collect() {
        for metric in family.get_metric() {
            let pairs = metric.get_label();
            if pairs
                .iter()
                .any(|p| p.name() == label && !keep.contains(&p.value()))
            {
                doomed.push(
                    pairs
                        .iter()
                        .map(|p| (p.name().to_string(), p.value().to_string()))
                        .collect(),
                );
            }
        }
    }
    for labels in doomed {
        let labels: HashMap<&str, &str> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // The series was just listed; a concurrent refresh may have removed it first.
        let _ = vec.remove(&labels);
    }
}
