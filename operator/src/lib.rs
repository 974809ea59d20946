//! kvoperator: reconciles `KVCluster` resources into running kvcluster rings.
//!
//! Not written yet. The resource, builders and reconciler arrive with the operator issue; the crate
//! exists now so the workspace has the layout of `docs/design.md`.
