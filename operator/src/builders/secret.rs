//! The Secret holding the cluster's context key, which every node uses to authenticate the causal
//! context tokens it issues and accepts (`kvnode --context-key-file`).
//!
//! The key is random and must never change under running nodes (clients hold tokens made with it), so
//! the reconciler only ever *creates* this Secret and leaves an existing one alone: the operator needs
//! `create` on Secrets for it, never `get` (it never reads the key back; the kubelet mounts it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::owned_meta;
use crate::crd::KVCluster;

/// Key of the context key in the Secret, and its file name in the pod.
pub const CONTEXT_KEY: &str = "context.key";

/// Name of the context key Secret.
pub fn context_key_name(kvc: &KVCluster) -> String {
    format!("{}-context-key", kvc.name_any())
}

/// A new context key Secret with 32 fresh random bytes, as 64 hex characters.
pub fn context_key(kvc: &KVCluster) -> Secret {
    let key: [u8; 32] = rand::random();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    Secret {
        metadata: owned_meta(kvc, context_key_name(kvc)),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(CONTEXT_KEY.to_string(), hex)])),
        immutable: Some(true),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::kvc;

    #[test]
    fn each_secret_holds_a_fresh_owned_key() {
        let resource = kvc(3, 3, 2, 2);
        let (a, b) = (context_key(&resource), context_key(&resource));
        let key = |s: &Secret| s.string_data.clone().unwrap_or_default()[CONTEXT_KEY].clone();
        assert_eq!(key(&a).len(), 64);
        assert!(key(&a).bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(key(&a), key(&b), "every new cluster gets its own key");
        assert_eq!(a.metadata.name.as_deref(), Some("kv-context-key"));
        assert!(a.metadata.owner_references.is_some());
        assert_eq!(a.immutable, Some(true));
    }
}
