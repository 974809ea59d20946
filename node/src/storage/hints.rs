//! Hints: states of keys held for a replica that could not take them, until it can (hinted handoff).
//!
//! Layout of [`HINTS_CF`]: `target id length (u16 BE) ++ target id ++ sequence (u64 BE)` → one format
//! byte then the postcard encoding of a [`Hint`]. Hints of one target are one contiguous range in the
//! order they were stored. The per-target counts live in memory (rebuilt by one scan at open), so the
//! backlog is cheap to report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rocksdb::{DB, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use super::{HINTS_CF, Storage};
use crate::causality::SiblingSet;
use crate::error::Error;
use crate::metrics::Metrics;

const HINT_FORMAT_VERSION: u8 = 1;
/// Bytes of a stored hint beside its key and record: format byte, partition and key length.
const HINT_HEADER_BYTES: usize = 8;

/// One key's state, to be merged into the replica the hint names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    /// Partition of the key.
    pub partition: u16,
    /// The key.
    pub key: Vec<u8>,
    /// The state to merge.
    pub set: SiblingSet,
}

/// In-memory count of the hints held per target, and the next sequence number.
pub(super) struct HintLedger {
    pending: Mutex<BTreeMap<String, u64>>,
    next_sequence: AtomicU64,
    metrics: Arc<Metrics>,
}

impl HintLedger {
    /// Counts the stored hints. Sequence numbers continue above both the stored ones and the current
    /// time in microseconds, so they grow across restarts.
    pub(super) fn load(db: &DB, metrics: Arc<Metrics>) -> Result<Self, Error> {
        let cf = db
            .cf_handle(HINTS_CF)
            .ok_or_else(|| Error::Internal(format!("column family {HINTS_CF} missing")))?;
        let mut pending = BTreeMap::new();
        let mut last = 0;
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (key, _) = item?;
            let (target, sequence) = split_hint_key(&key)?;
            *pending.entry(target).or_insert(0) += 1;
            last = last.max(sequence);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let ledger = HintLedger {
            pending: Mutex::new(pending),
            next_sequence: AtomicU64::new(last.max(now) + 1),
            metrics,
        };
        ledger.publish();
        Ok(ledger)
    }

    fn publish(&self) {
        let total: u64 = self.pending.lock().values().sum();
        self.metrics.hints_pending.set(total as i64);
    }
}

impl Storage {
    /// Stores a hint for `target` (synced when durability is `fsync`).
    pub fn store_hint(&self, target: &str, hint: &Hint) -> Result<(), Error> {
        self.wal.check()?;
        let mut value = vec![HINT_FORMAT_VERSION];
        value.extend(postcard::to_allocvec(hint).map_err(|e| Error::Internal(e.to_string()))?);
        // A hint holds one record: the cap of records, plus its key and partition.
        self.check_record_size(
            value
                .len()
                .saturating_sub(hint.key.len() + HINT_HEADER_BYTES),
        )?;
        let sequence = self.hints.next_sequence.fetch_add(1, Ordering::Relaxed);
        self.wal.watch(self.db.put_cf_opt(
            self.cf(HINTS_CF)?,
            hint_key(target, sequence),
            value,
            &self.write_options,
        ))?;
        *self
            .hints
            .pending
            .lock()
            .entry(target.to_string())
            .or_insert(0) += 1;
        self.hints.publish();
        Ok(())
    }

    /// Hints held per target, for targets with at least one.
    pub fn hint_backlog(&self) -> Vec<(String, u64)> {
        self.hints
            .pending
            .lock()
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| (t.clone(), *n))
            .collect()
    }

    /// Total hints held.
    pub fn hints_pending(&self) -> u64 {
        self.hints.pending.lock().values().sum()
    }

    /// The oldest hints for `target`, at most `max_count` of them and about `max_bytes` in all, with
    /// their storage keys (for [`Storage::delete_hints`]). A hint that does not decode is returned
    /// as an error rather than skipped.
    pub fn hints_for(
        &self,
        target: &str,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Vec<u8>, Hint)>, Error> {
        let prefix = hint_key(target, 0);
        let prefix = &prefix[..prefix.len() - 8];
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in self.db.iterator_cf(self.cf(HINTS_CF)?, mode) {
            let (key, value) = item?;
            if !key.starts_with(prefix) || out.len() >= max_count || bytes >= max_bytes {
                break;
            }
            bytes += value.len();
            out.push((key.to_vec(), decode_hint(&value)?));
        }
        Ok(out)
    }

    /// Deletes delivered hints of `target` by their storage keys.
    pub fn delete_hints(&self, target: &str, keys: &[Vec<u8>]) -> Result<(), Error> {
        let cf = self.cf(HINTS_CF)?;
        let mut batch = WriteBatch::default();
        for key in keys {
            batch.delete_cf(cf, key);
        }
        self.wal.check()?;
        self.wal
            .watch(self.db.write_opt(batch, &self.write_options))?;
        let mut pending = self.hints.pending.lock();
        if let Some(n) = pending.get_mut(target) {
            *n = n.saturating_sub(keys.len() as u64);
        }
        drop(pending);
        self.hints.publish();
        Ok(())
    }
}

fn hint_key(target: &str, sequence: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + target.len() + 8);
    key.extend_from_slice(&(target.len() as u16).to_be_bytes());
    key.extend_from_slice(target.as_bytes());
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

fn split_hint_key(key: &[u8]) -> Result<(String, u64), Error> {
    let corrupt = || Error::Corrupt("malformed hint key".into());
    let (length, rest) = key.split_at_checked(2).ok_or_else(corrupt)?;
    let length = u16::from_be_bytes([length[0], length[1]]) as usize;
    let (target, sequence) = rest.split_at_checked(length).ok_or_else(corrupt)?;
    let sequence: [u8; 8] = sequence.try_into().map_err(|_| corrupt())?;
    let target = String::from_utf8(target.to_vec()).map_err(|_| corrupt())?;
    Ok((target, u64::from_be_bytes(sequence)))
}

fn decode_hint(bytes: &[u8]) -> Result<Hint, Error> {
    match bytes.split_first() {
        Some((&HINT_FORMAT_VERSION, body)) => postcard::from_bytes(body)
            .map_err(|e| Error::Corrupt(format!("hint does not decode: {e}"))),
        Some((version, _)) => Err(Error::Corrupt(format!(
            "hint has unknown format version {version}"
        ))),
        None => Err(Error::Corrupt("hint is empty".into())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::causality::{Actor, VersionVector};
    use crate::storage::Durability;

    fn hint(i: u8) -> Hint {
        let mut set = SiblingSet::default();
        set.update(
            &VersionVector::default(),
            &Actor::new("kv-0", 1),
            Some(vec![i]),
            0,
        );
        Hint {
            partition: 1,
            key: vec![i],
            set,
        }
    }

    #[test]
    fn hints_are_kept_per_target_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            Storage::open(
                dir.path(),
                Durability::Fsync,
                1 << 20,
                Arc::new(Metrics::new()),
            )
            .unwrap()
        };
        {
            let storage = open();
            for i in 0..5 {
                storage.store_hint("kv-1", &hint(i)).unwrap();
            }
            // A target whose id is a prefix of another's stays separate.
            storage.store_hint("kv-10", &hint(9)).unwrap();
        }
        let storage = open();
        assert_eq!(storage.hints_pending(), 6);
        assert_eq!(
            storage.hint_backlog(),
            vec![("kv-1".to_string(), 5), ("kv-10".to_string(), 1)]
        );
        let first = storage.hints_for("kv-1", 3, usize::MAX).unwrap();
        let keys: Vec<u8> = first.iter().map(|(_, h)| h.key[0]).collect();
        assert_eq!(keys, vec![0, 1, 2]);
        let storage_keys: Vec<Vec<u8>> = first.into_iter().map(|(k, _)| k).collect();
        storage.delete_hints("kv-1", &storage_keys).unwrap();
        storage.store_hint("kv-1", &hint(7)).unwrap();
        let rest: Vec<u8> = storage
            .hints_for("kv-1", 10, usize::MAX)
            .unwrap()
            .iter()
            .map(|(_, h)| h.key[0])
            .collect();
        assert_eq!(rest, vec![3, 4, 7], "new hints come after older ones");
        assert_eq!(storage.hints_pending(), 4);
    }
}
