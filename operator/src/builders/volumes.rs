//! Growing the pods' volumes. A StatefulSet's claim templates cannot change once it exists, so a
//! larger `storage.size` goes to each PVC instead, and the storage class expands the volume when
//! it allows it. A volume never shrinks (the CRD refuses a smaller size).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::sizing::quantity_bytes;

/// Keeps the claim templates of the StatefulSet that exists in `sts`: they are immutable, and
/// applying a changed one would be refused.
pub fn keep_claim_templates(sts: &mut StatefulSet, existing: Option<&StatefulSet>) {
    if let Some(existing) = existing {
        sts.spec.volume_claim_templates = existing.spec.volume_claim_templates.clone();
    }
}

fn storage(resources: Option<&std::collections::BTreeMap<String, Quantity>>) -> Option<u64> {
    resources
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity_bytes(&q.0))
}

/// The claims that request less than `size`: each gets [`expansion_patch`].
pub fn to_expand<'a>(
    claims: &'a [PersistentVolumeClaim],
    size: &Quantity,
) -> Vec<&'a PersistentVolumeClaim> {
    let Some(want) = quantity_bytes(&size.0) else {
        return Vec::new();
    };
    claims
        .iter()
        .filter(|c| {
            let requested = c
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| storage(r.requests.as_ref()));
            requested.is_some_and(|r| r < want)
        })
        .collect()
}

/// The claims whose volume is still smaller than `size` (expansion requested, not yet done).
pub fn expanding(claims: &[PersistentVolumeClaim], size: &Quantity) -> Vec<String> {
    let Some(want) = quantity_bytes(&size.0) else {
        return Vec::new();
    };
    claims
        .iter()
        .filter(|c| {
            let capacity = c.status.as_ref().and_then(|s| storage(s.capacity.as_ref()));
            capacity.is_some_and(|have| have < want)
        })
        .map(ResourceExt::name_any)
        .collect()
}

/// The merge patch that asks for `size`.
pub fn expansion_patch(size: &Quantity) -> Value {
    json!({"spec": {"resources": {"requests": {"storage": size.0}}}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str, requested: &str, capacity: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"resources": {"requests": {"storage": requested}}},
            "status": capacity.map(|c| json!({"capacity": {"storage": c}})),
        }))
        .unwrap_or_default()
    }

    #[test]
    fn only_smaller_claims_are_expanded_and_only_unfinished_ones_reported() {
        let claims = [
            claim("data-kv-0", "10Gi", Some("10Gi")),
            claim("data-kv-1", "20Gi", Some("10Gi")),
            claim("data-kv-2", "20Gi", Some("20Gi")),
        ];
        let size = Quantity("20Gi".into());
        let names: Vec<String> = to_expand(&claims, &size)
            .iter()
            .map(|c| c.name_any())
            .collect();
        assert_eq!(names, ["data-kv-0"]);
        assert_eq!(expanding(&claims, &size), ["data-kv-0", "data-kv-1"]);
        assert_eq!(
            expansion_patch(&size)["spec"]["resources"]["requests"]["storage"],
            "20Gi"
        );
    }

    #[test]
    fn an_existing_statefulset_keeps_its_claim_templates() {
        let mut built = StatefulSet::default();
        let mut existing = StatefulSet::default();
        existing.spec.volume_claim_templates = Some(vec![claim("data", "10Gi", None)]);
        keep_claim_templates(&mut built, Some(&existing));
        assert_eq!(
            built.spec.volume_claim_templates,
            existing.spec.volume_claim_templates
        );
        let mut fresh = StatefulSet::default();
        fresh.spec.volume_claim_templates = Some(vec![claim("data", "20Gi", None)]);
        let before = fresh.clone();
        keep_claim_templates(&mut fresh, None);
        assert_eq!(fresh, before);
    }
}
