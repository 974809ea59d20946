//! Checkpoints of the store (backups) and reading one back (restores).
//!
//! A checkpoint is RocksDB's: a consistent copy of every column family at one instant, made of hard
//! links to the immutable SST files plus a fresh copy of the rest, after a flush of the memtables.
//! A [`Snapshot`] opens one read-only and pages through its records and hints, which a restore
//! merges into the cluster like any replica's state.

use std::path::Path;

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{DB, Direction, IteratorMode, Options};

use super::hints::decode_hint;
use super::{HINTS_CF, META_CF, OBJECTS_CF, Storage, codec};
use crate::causality::SiblingSet;
use crate::error::Error;

impl Storage {
    /// Writes a consistent checkpoint of every column family into `dir`, which must not exist.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), Error> {
        Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }
}

/// Which states of a snapshot to page through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The records the node held as a replica.
    Records,
    /// The states it held as hints for other replicas (acknowledged writes that may live nowhere
    /// else).
    Hints,
}

/// One page of a snapshot: `(key, state)` pairs and where the next page starts.
pub struct Page {
    /// Keys (without partition) and their states.
    pub states: Vec<(Vec<u8>, SiblingSet)>,
    /// The storage key to resume after, `None` at the end.
    pub next: Option<Vec<u8>>,
}

/// A checkpoint opened read-only.
pub struct Snapshot {
    db: DB,
}

impl Snapshot {
    /// Opens the checkpoint in `dir` read-only.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let db = DB::open_cf_for_read_only(
            &Options::default(),
            dir,
            [OBJECTS_CF, META_CF, HINTS_CF],
            false,
        )?;
        Ok(Snapshot { db })
    }

    /// The states of `source` after storage key `after` (from the start when `None`), up to about
    /// `max_bytes` of encoded states (always at least one). A state that does not decode is an
    /// error naming it: the backup then holds a record its node could not read either.
    pub fn page(
        &self,
        source: Source,
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<Page, Error> {
        let name = match source {
            Source::Records => OBJECTS_CF,
            Source::Hints => HINTS_CF,
        };
        let cf = self
            .db
            .cf_handle(name)
            .ok_or_else(|| Error::Corrupt(format!("checkpoint has no column family {name}")))?;
        let mode = after.map_or(IteratorMode::Start, |key| {
            IteratorMode::From(key, Direction::Forward)
        });
        let mut states = Vec::new();
        let mut bytes = 0;
        let mut last = None;
        for item in self.db.iterator_cf(cf, mode) {
            let (key, value) = item?;
            if after == Some(&key[..]) {
                continue;
            }
            if !states.is_empty() && bytes + value.len() > max_bytes {
                return Ok(Page { states, next: last });
            }
            bytes += key.len() + value.len();
            let named = |e: String| {
                Error::Corrupt(format!("{name} entry {} of the checkpoint: {e}", hex(&key)))
            };
            states.push(match source {
                Source::Records => {
                    let set = codec::decode(&value).map_err(|e| named(e.to_string()))?;
                    (key.get(2..).unwrap_or_default().to_vec(), set)
                }
                Source::Hints => {
                    let hint = decode_hint(&value).map_err(|e| named(e.to_string()))?;
                    (hint.key, hint.set)
                }
            });
            last = Some(key.to_vec());
        }
        Ok(Page { states, next: None })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(64).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::causality::{Actor, VersionVector};
    use crate::metrics::Metrics;
    use crate::storage::Durability;

    #[test]
    fn pages_of_a_checkpoint_hold_every_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(
            dir.path(),
            Durability::Fsync,
            1 << 20,
            8 << 20,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let actor = Actor::new("kv-0", 1);
        for i in 0..100u16 {
            let mut set = SiblingSet::default();
            set.update(&VersionVector::default(), &actor, Some(vec![7; 100]), 0)
                .unwrap();
            storage
                .store(i % 4, format!("k{i:03}").as_bytes(), Arc::new(set))
                .unwrap();
        }
        let copy = dir.path().join("checkpoint");
        storage.checkpoint(&copy).unwrap();
        // Written after the checkpoint: not in it.
        storage
            .store(0, b"later", Arc::new(SiblingSet::default()))
            .unwrap();
        let snapshot = Snapshot::open(&copy).unwrap();
        let (mut keys, mut after, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = snapshot
                .page(Source::Records, after.as_deref(), 1000)
                .unwrap();
            pages += 1;
            keys.extend(page.states.into_iter().map(|(k, _)| k));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        keys.sort();
        let expected: Vec<Vec<u8>> = (0..100).map(|i| format!("k{i:03}").into_bytes()).collect();
        assert_eq!(keys, expected);
        assert!(pages > 5, "small pages: {pages}");
        assert!(
            snapshot
                .page(Source::Hints, None, 1000)
                .unwrap()
                .states
                .is_empty()
        );
    }
}
