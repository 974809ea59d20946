//! On-disk encoding of sibling sets: one format-version byte, then the postcard encoding.
//!
//! Decoding is total: any byte string either decodes to a sibling set or yields
//! [`CodecError`], never a panic. postcard caps pre-allocation by the input length, so hostile lengths
//! cannot make it allocate without bound.

use crate::causality::SiblingSet;

/// Current record format. A reader refuses versions it does not know rather than misreading them.
const RECORD_FORMAT_VERSION: u8 = 1;

/// A stored record that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The record is empty.
    #[error("record is empty")]
    Empty,
    /// The record was written by an unknown format version.
    #[error("record has unknown format version {0}")]
    UnknownVersion(u8),
    /// The record's body does not decode.
    #[error("record body is corrupt: {0}")]
    Corrupt(String),
}

/// Encodes a sibling set for storage.
pub fn encode(set: &SiblingSet) -> Vec<u8> {
    let mut out = vec![RECORD_FORMAT_VERSION];
    // postcard cannot fail to serialise these plain types into a Vec.
    out.extend(postcard::to_allocvec(set).unwrap_or_default());
    out
}

/// Decodes a stored record.
pub fn decode(bytes: &[u8]) -> Result<SiblingSet, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != RECORD_FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let (set, rest): (SiblingSet, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| CodecError::Corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Corrupt(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::causality::{Actor, VersionVector};
    use proptest::prelude::*;

    fn sample() -> SiblingSet {
        let mut set = SiblingSet::default();
        let actor = Actor::new("kv-0", 7);
        set.update(&VersionVector::default(), &actor, Some(b"v".to_vec()), 42)
            .unwrap();
        set.update(&VersionVector::default(), &actor, None, 43)
            .unwrap();
        set
    }

    #[test]
    fn records_round_trip() {
        let set = sample();
        assert_eq!(decode(&encode(&set)).unwrap(), set);
    }

    #[test]
    fn corrupt_records_are_errors() {
        assert_eq!(decode(&[]), Err(CodecError::Empty));
        assert_eq!(decode(&[2, 0]), Err(CodecError::UnknownVersion(2)));
        assert!(matches!(
            decode(b"\x01garbage"),
            Err(CodecError::Corrupt(_))
        ));
        let mut truncated = encode(&sample());
        truncated.pop();
        assert!(matches!(decode(&truncated), Err(CodecError::Corrupt(_))));
        let mut trailing = encode(&sample());
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(CodecError::Corrupt(_))));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(index in 0usize..64, bit in 0u8..8) {
            let mut bytes = encode(&sample());
            let i = index % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = decode(&bytes);
        }
    }
}
