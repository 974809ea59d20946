//! Decoders of the format-1 records and hints, written before siblings carried an expiry.
//!
//! A format-1 sibling is a sibling without `expires_at_ms`; it decodes as a value that never
//! expires. Nothing writes format 1 any more: a record is rewritten in the current format the next
//! time the key changes.

use serde::Deserialize;

use crate::causality::{Dot, Sibling, SiblingSet, VersionVector};
use crate::storage::hints::Hint;

/// A sibling as format 1 stored it.
#[derive(Deserialize)]
struct SiblingV1 {
    dot: Dot,
    value: Option<Vec<u8>>,
    written_at_ms: u64,
}

/// A sibling set as format 1 stored it.
#[derive(Deserialize)]
pub(super) struct SiblingSetV1 {
    seen: VersionVector,
    siblings: Vec<SiblingV1>,
}

impl From<SiblingSetV1> for SiblingSet {
    fn from(old: SiblingSetV1) -> Self {
        let siblings = old
            .siblings
            .into_iter()
            .map(|s| Sibling {
                dot: s.dot,
                value: s.value,
                written_at_ms: s.written_at_ms,
                expires_at_ms: None,
            })
            .collect();
        SiblingSet::from_parts(old.seen, siblings)
    }
}

/// A hint as format 1 stored it.
#[derive(Deserialize)]
pub(super) struct HintV1 {
    partition: u16,
    key: Vec<u8>,
    set: SiblingSetV1,
}

impl From<HintV1> for Hint {
    fn from(old: HintV1) -> Self {
        Hint {
            partition: old.partition,
            key: old.key,
            set: old.set.into(),
        }
    }
}
