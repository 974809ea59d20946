//! On-disk encoding of sibling sets: one format-version byte, then the postcard encoding.
//!
//! Format 2 (current) adds each sibling's expiry; format 1 records still decode (see `legacy`).
//!
//! Decoding is total: any byte string either decodes to a sibling set or yields
//! [`CodecError`], never a panic. postcard caps pre-allocation by the input length, so hostile lengths
//! cannot make it allocate without bound.

use serde::de::DeserializeOwned;

use crate::causality::SiblingSet;
use crate::storage::legacy::SiblingSetV1;

/// Current record format. A reader refuses versions it does not know rather than misreading them.
const RECORD_FORMAT_VERSION: u8 = 2;
/// The format before siblings carried an expiry; still read.
const RECORD_FORMAT_V1: u8 = 1;

/// Bytes one sibling may take beyond its value: its dot (an actor name of up to ~400 bytes and a
/// counter), the value's tag and length, its timestamp and its expiry.
pub const SIBLING_SLACK_BYTES: usize = 512;
/// Bytes the record's version vector and header may take: hundreds of actors.
pub const VECTOR_SLACK_BYTES: usize = 64 * 1024;

/// The per-record byte cap: the largest encoded record a key may legitimately reach with at most
/// `max_siblings` siblings of at most `max_value_bytes` each. With the defaults (64 siblings of
/// 1 MiB) it is 64 × (1 MiB + 512 B) + 64 KiB ≈ 64.1 MiB.
pub fn max_record_bytes(max_siblings: usize, max_value_bytes: usize) -> usize {
    max_siblings
        .saturating_mul(max_value_bytes.saturating_add(SIBLING_SLACK_BYTES))
        .saturating_add(VECTOR_SLACK_BYTES)
}

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
    match version {
        RECORD_FORMAT_VERSION => decode_body(body),
        RECORD_FORMAT_V1 => decode_body::<SiblingSetV1>(body).map(SiblingSet::from),
        other => Err(CodecError::UnknownVersion(other)),
    }
}

/// The record in the current format: `bytes` itself when it is (or does not decode), else
/// re-encoded, so a replica that still stores a format-1 record hashes it as one that stores the same
/// state in format 2 does.
pub fn canonical(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if bytes.first() == Some(&RECORD_FORMAT_VERSION) {
        return std::borrow::Cow::Borrowed(bytes);
    }
    match decode(bytes) {
        Ok(set) => std::borrow::Cow::Owned(encode(&set)),
        Err(_) => std::borrow::Cow::Borrowed(bytes),
    }
}

/// Decodes a postcard body that must be exactly one `T`.
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (value, rest): (T, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| CodecError::Corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Corrupt(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
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
    fn a_record_at_the_caps_fits_the_record_cap() {
        let mut set = SiblingSet::default();
        let actor = Actor::new(&"n".repeat(253), u32::MAX);
        for _ in 0..8 {
            set.update(
                &VersionVector::default(),
                &actor,
                Some(vec![7; 1000]),
                u64::MAX,
            )
            .unwrap();
        }
        let cap = max_record_bytes(8, 1000);
        assert!(encode(&set).len() <= cap, "{} > {cap}", encode(&set).len());
        assert_eq!(max_record_bytes(usize::MAX, 1), usize::MAX, "saturates");
    }

    #[test]
    fn records_round_trip() {
        let set = sample();
        assert_eq!(decode(&encode(&set)).unwrap(), set);
    }

    #[test]
    fn format_1_records_decode_as_values_that_never_expire() {
        // A format-1 record of one sibling, as the previous release wrote it: version byte, vector
        // {"kv-0.00000007": 1}, one sibling (dot, value "v", written at 42).
        let actor = b"kv-0.00000007";
        let mut old = vec![1, 1, actor.len() as u8];
        old.extend_from_slice(actor);
        old.extend_from_slice(&[1, 1, actor.len() as u8]);
        old.extend_from_slice(actor);
        old.extend_from_slice(&[1, 1, 1, b'v', 42]);
        let set = decode(&old).unwrap();
        let only = &set.siblings()[0];
        assert_eq!(only.value.as_deref(), Some(&b"v"[..]));
        assert_eq!((only.written_at_ms, only.expires_at_ms), (42, None));
        assert_eq!(set.context().get(&Actor::new("kv-0", 7)), 1);
        assert_eq!(decode(&encode(&set)).unwrap(), set, "rewritten in format 2");
        assert_eq!(
            canonical(&old).into_owned(),
            encode(&set),
            "hashed as format 2"
        );
        let current = encode(&set);
        assert!(matches!(canonical(&current), std::borrow::Cow::Borrowed(_)));
        assert!(matches!(canonical(&[9, 9]), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn expiry_round_trips() {
        let mut set = sample();
        set.update_expiring(
            &VersionVector::default(),
            &Actor::new("kv-1", 1),
            Some(b"t".to_vec()),
            1,
            Some(u64::MAX),
        )
        .unwrap();
        assert_eq!(decode(&encode(&set)).unwrap(), set);
    }

    #[test]
    fn corrupt_records_are_errors() {
        assert_eq!(decode(&[]), Err(CodecError::Empty));
        assert_eq!(decode(&[3, 0]), Err(CodecError::UnknownVersion(3)));
        assert!(matches!(
            decode(b"\x02garbage"),
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
