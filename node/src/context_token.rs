//! Causal context tokens: the opaque, authenticated form in which a key's version vector travels to
//! clients and back.
//!
//! A token is base64url (no padding) of a format-version byte, the postcard encoding of a
//! [`TokenBody`], and an HMAC-SHA256 tag over the version, the key and the body, made with the
//! cluster's context key. A client can only hand back a vector the cluster issued for that very key:
//! a forged or altered token (inflated counters, foreign actors, `u64::MAX`) fails the tag check and is
//! refused before it can supersede a sibling. The body also carries a short fingerprint of the key, only
//! so that a genuine token pasted onto another key gets a clearer error than "forged".

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::causality::{MAX_ACTORS, VersionVector};
use crate::error::Error;

/// Format version of context tokens; bump it when [`TokenBody`] or the tag input changes. Version 1
/// tokens carried no tag and are refused.
const CONTEXT_TOKEN_VERSION: u8 = 2;

/// Largest token accepted, in encoded characters: bounds the decoder's work on hostile input. A vector
/// at [`MAX_ACTORS`] actors with 63-character node ids fits with room to spare.
pub const MAX_CONTEXT_TOKEN_CHARS: usize = 8 * 1024;

/// Length of the HMAC-SHA256 tag at the end of a token.
const TAG_BYTES: usize = 32;

/// Shortest context key accepted, in bytes.
pub const MIN_CONTEXT_KEY_BYTES: usize = 32;

/// Domain separation of the tag input, so the context key signs nothing else by accident.
const TAG_DOMAIN: &[u8] = b"kvcluster context token v2\0";

/// Why a causal context token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// Not base64url, or not a valid encoding of a context.
    #[error("context token is malformed")]
    Malformed,
    /// Encoded by an unknown format version (1 is the old unauthenticated format).
    #[error(
        "context token has unsupported format version {0}; read the key again for a current context"
    )]
    UnsupportedVersion(u8),
    /// A genuine-looking token, but issued for a different key.
    #[error("context token belongs to a different key")]
    ForeignKey,
    /// The tag does not match: the token was altered, or issued by another cluster (or under a
    /// context key that has since been retired).
    #[error("context token was not issued by this cluster or was altered")]
    Forged,
    /// The vector names more actors than any key may have.
    #[error("context token names more than {MAX_ACTORS} actors")]
    TooManyActors,
}

#[derive(Serialize, Deserialize)]
struct TokenBody {
    key_fingerprint: u32,
    vector: VersionVector,
}

fn key_fingerprint(key: &[u8]) -> u32 {
    // Low 32 bits of xxh3: only to tell "wrong key" from "forged" in the error; the tag is the check.
    xxhash_rust::xxh3::xxh3_64(key) as u32
}

/// Where the context keys come from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `--context-key-file`: shared by every member.
    File,
    /// Generated in this node's data directory: valid on this node only.
    Local,
}

/// The cluster's context keys: the first signs new tokens, every one verifies (so a key can be
/// rotated by listing the new key first and keeping the old one until old tokens have aged out).
pub struct ContextKeys {
    keys: Vec<hmac::Key>,
    source: KeySource,
}

impl std::fmt::Debug for ContextKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("ContextKeys")
            .field("keys", &self.keys.len())
            .field("source", &self.source)
            .finish()
    }
}

impl ContextKeys {
    /// Keys from raw secrets, the signing key first. Each must be at least
    /// [`MIN_CONTEXT_KEY_BYTES`] long.
    pub fn new(secrets: &[&[u8]], source: KeySource) -> Result<Self, String> {
        if secrets.is_empty() {
            return Err("no context key given".into());
        }
        if let Some(short) = secrets.iter().find(|s| s.len() < MIN_CONTEXT_KEY_BYTES) {
            return Err(format!(
                "a context key must be at least {MIN_CONTEXT_KEY_BYTES} bytes, got {}",
                short.len()
            ));
        }
        let keys = secrets
            .iter()
            .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s))
            .collect();
        Ok(ContextKeys { keys, source })
    }

    /// Reads the keys from `path`: one key per line, the first signs, blank lines and surrounding
    /// whitespace ignored (as Kubernetes Secrets and editors leave them).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read context key file {}: {e}", path.display()))?;
        let lines: Vec<&[u8]> = text
            .split(|&b| b == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|line| !line.is_empty())
            .collect();
        Self::new(&lines, KeySource::File)
            .map_err(|e| format!("context key file {}: {e}", path.display()))
    }

    /// Where the keys came from.
    pub fn source(&self) -> KeySource {
        self.source
    }

    /// Refuses a cluster of several members when these keys are this node's own: tokens it issues
    /// would be refused by every other member, and theirs by it.
    pub fn check_cluster(&self, config: &kvapi::ClusterConfig) -> Result<(), Error> {
        if self.source == KeySource::Local && config.members.len() > 1 {
            return Err(Error::BadConfig(format!(
                "cluster {:?} has {} members but this node has no --context-key-file: every member \
                 needs the same context key file",
                config.cluster,
                config.members.len()
            )));
        }
        Ok(())
    }

    /// Encodes the context `vector` of `key` as an authenticated token.
    pub fn encode(&self, key: &[u8], vector: &VersionVector) -> String {
        self.seal(
            key,
            &TokenBody {
                key_fingerprint: key_fingerprint(key),
                vector: vector.clone(),
            },
        )
    }

    /// The token of `body` for `key`: version byte, body, tag.
    fn seal(&self, key: &[u8], body: &TokenBody) -> String {
        let mut bytes = vec![CONTEXT_TOKEN_VERSION];
        // Serialising plain structs into a Vec cannot fail.
        bytes.extend(postcard::to_allocvec(body).unwrap_or_default());
        let tag = hmac::sign(&self.keys[0], &tag_input(key, &bytes));
        bytes.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a token made by [`ContextKeys::encode`] for `key` with any of these keys, refusing
    /// garbage, unknown versions, tokens of other keys and anything whose tag does not verify.
    pub fn decode(&self, key: &[u8], token: &str) -> Result<VersionVector, ContextError> {
        let token = token.trim();
        if token.len() > MAX_CONTEXT_TOKEN_CHARS {
            return Err(ContextError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| ContextError::Malformed)?;
        let &version = bytes.first().ok_or(ContextError::Malformed)?;
        if version != CONTEXT_TOKEN_VERSION {
            return Err(ContextError::UnsupportedVersion(version));
        }
        let split = bytes
            .len()
            .checked_sub(TAG_BYTES)
            .filter(|&at| at > 1)
            .ok_or(ContextError::Malformed)?;
        let (signed, tag) = bytes.split_at(split);
        let input = tag_input(key, signed);
        let genuine = self
            .keys
            .iter()
            .any(|k| hmac::verify(k, &input, tag).is_ok());
        // The body is decoded only to name the failure; nothing in it is trusted before the tag is.
        let body: Option<TokenBody> = match postcard::take_from_bytes(&signed[1..]) {
            Ok((body, [])) => Some(body),
            _ => None,
        };
        match (genuine, body) {
            (true, Some(body)) if body.vector.len() > MAX_ACTORS => {
                Err(ContextError::TooManyActors)
            }
            (true, Some(body)) => Ok(body.vector),
            (true, None) => Err(ContextError::Malformed),
            (false, Some(body)) if body.key_fingerprint != key_fingerprint(key) => {
                Err(ContextError::ForeignKey)
            }
            (false, _) => Err(ContextError::Forged),
        }
    }
}

impl ContextKeys {
    /// An HMAC-SHA256 tag of `data` under `domain` with the signing key, for the other opaque tokens
    /// the cluster hands out (listing cursors). `domain` must differ from every other use.
    pub fn tag(&self, domain: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&self.keys[0], &[domain, data].concat())
            .as_ref()
            .to_vec()
    }

    /// Whether `tag` is [`ContextKeys::tag`] of `data` under `domain` with any of the keys.
    pub fn verify(&self, domain: &[u8], data: &[u8], tag: &[u8]) -> bool {
        let input = [domain, data].concat();
        self.keys
            .iter()
            .any(|k| hmac::verify(k, &input, tag).is_ok())
    }
}

/// What the tag covers: a domain label, the key (length-prefixed) and the version byte plus body.
fn tag_input(key: &[u8], signed: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(TAG_DOMAIN.len() + 4 + key.len() + signed.len());
    input.extend_from_slice(TAG_DOMAIN);
    input.extend_from_slice(&(key.len() as u32).to_be_bytes());
    input.extend_from_slice(key);
    input.extend_from_slice(signed);
    input
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::causality::{Actor, SiblingSet};
    use proptest::prelude::*;

    fn keys(secret: u8) -> ContextKeys {
        ContextKeys::new(&[&[secret; 32]], KeySource::Local).unwrap()
    }

    fn vector(actors: usize, counter: u64) -> VersionVector {
        let mut v = VersionVector::default();
        for i in 0..actors {
            v.witness(&Actor::new(&format!("kv-{i}"), 1), counter);
        }
        v
    }

    /// A correctly tagged token around an arbitrary body, as a holder of `keys` could make one.
    fn token_with(keys: &ContextKeys, key: &[u8], fingerprint: u32, v: &VersionVector) -> String {
        let body = TokenBody {
            key_fingerprint: fingerprint,
            vector: v.clone(),
        };
        keys.seal(key, &body)
    }

    #[test]
    fn a_token_round_trips_and_is_bound_to_its_key() {
        let k = keys(1);
        let mut set = SiblingSet::default();
        set.update(
            &VersionVector::default(),
            &Actor::new("kv-3", 1),
            Some(vec![1]),
            0,
        )
        .unwrap();
        let token = k.encode(b"k", set.context());
        assert_eq!(k.decode(b"k", &token).unwrap(), *set.context());
        assert_eq!(k.decode(b"other", &token), Err(ContextError::ForeignKey));
    }

    #[test]
    fn a_token_of_another_cluster_or_an_altered_one_is_forged() {
        let token = keys(1).encode(b"k", &vector(2, 7));
        assert_eq!(keys(2).decode(b"k", &token), Err(ContextError::Forged));
        // Same body, counters inflated to u64::MAX, tag copied from the genuine token.
        let genuine = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let tag = &genuine[genuine.len() - TAG_BYTES..];
        let mut forged = vec![CONTEXT_TOKEN_VERSION];
        forged.extend(
            postcard::to_allocvec(&TokenBody {
                key_fingerprint: key_fingerprint(b"k"),
                vector: vector(2, u64::MAX),
            })
            .unwrap(),
        );
        forged.extend_from_slice(tag);
        assert_eq!(
            keys(1).decode(b"k", &URL_SAFE_NO_PAD.encode(forged)),
            Err(ContextError::Forged)
        );
    }

    #[test]
    fn a_fingerprint_collision_does_not_move_a_token_to_another_key() {
        // An attacker who finds a key with the victim's fingerprint still cannot reuse its token:
        // the tag covers the whole key.
        let k = keys(1);
        let token = token_with(&k, b"mine", key_fingerprint(b"victim"), &vector(1, 5));
        assert_eq!(k.decode(b"victim", &token), Err(ContextError::Forged));
    }

    #[test]
    fn rotation_signs_with_the_first_key_and_accepts_every_listed_key() {
        let old = keys(1);
        let both = ContextKeys::new(&[&[2; 32], &[1; 32]], KeySource::File).unwrap();
        let from_old = old.encode(b"k", &vector(1, 3));
        assert_eq!(both.decode(b"k", &from_old).unwrap(), vector(1, 3));
        let from_new = both.encode(b"k", &vector(1, 4));
        assert_eq!(keys(2).decode(b"k", &from_new).unwrap(), vector(1, 4));
        assert_eq!(old.decode(b"k", &from_new), Err(ContextError::Forged));
    }

    #[test]
    fn short_keys_and_empty_key_files_are_refused() {
        assert!(ContextKeys::new(&[&[0; 31]], KeySource::File).is_err());
        assert!(ContextKeys::new(&[], KeySource::File).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "\n  \n").unwrap();
        assert!(ContextKeys::from_file(&path).is_err());
        std::fs::write(&path, format!("{}\n", "a".repeat(64))).unwrap();
        let from_file = ContextKeys::from_file(&path).unwrap();
        let trimmed = ContextKeys::new(&["a".repeat(64).as_bytes()], KeySource::File).unwrap();
        let token = trimmed.encode(b"k", &vector(1, 1));
        assert_eq!(from_file.decode(b"k", &token).unwrap(), vector(1, 1));
    }

    #[test]
    fn a_genuine_token_with_too_many_actors_is_refused() {
        let k = keys(1);
        let token = token_with(&k, b"k", key_fingerprint(b"k"), &vector(MAX_ACTORS + 1, 1));
        assert_eq!(k.decode(b"k", &token), Err(ContextError::TooManyActors));
    }

    #[test]
    fn the_decoder_refuses_garbage() {
        let k = keys(1);
        assert_eq!(k.decode(b"k", ""), Err(ContextError::Malformed));
        assert_eq!(k.decode(b"k", "!!!"), Err(ContextError::Malformed));
        assert_eq!(
            k.decode(b"k", &URL_SAFE_NO_PAD.encode([9, 0])),
            Err(ContextError::UnsupportedVersion(9))
        );
        assert_eq!(
            k.decode(b"k", &URL_SAFE_NO_PAD.encode([1, 0, 0])),
            Err(ContextError::UnsupportedVersion(1))
        );
        assert_eq!(
            k.decode(b"k", &URL_SAFE_NO_PAD.encode([2, 0xff])),
            Err(ContextError::Malformed)
        );
        let mut token = k.encode(b"k", &VersionVector::default());
        token.push('A');
        token.push('A');
        assert_eq!(k.decode(b"k", &token), Err(ContextError::Forged));
        let huge = "A".repeat(MAX_CONTEXT_TOKEN_CHARS + 1);
        assert_eq!(k.decode(b"k", &huge), Err(ContextError::Malformed));
    }

    #[test]
    fn a_vector_at_the_actor_cap_fits_in_a_token() {
        let mut v = VersionVector::default();
        for i in 0..MAX_ACTORS {
            v.witness(&Actor::new(&format!("{i:0>63}"), u32::MAX), u64::MAX);
        }
        let token = keys(1).encode(b"k", &v);
        assert!(token.len() <= MAX_CONTEXT_TOKEN_CHARS, "{}", token.len());
        assert_eq!(keys(1).decode(b"k", &token).unwrap(), v);
    }

    proptest! {
        #[test]
        fn the_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let token = URL_SAFE_NO_PAD.encode(&bytes);
            let _ = keys(1).decode(b"k", &token);
        }
    }
}
