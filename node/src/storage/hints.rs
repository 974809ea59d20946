//! Hints: states of keys held for a replica that could not take them, until it can (hinted handoff).
//!
//! Layout of [`HINTS_CF`]: `target id length (u16 BE) ++ target id ++ sequence (u64 BE)` → one format
//! byte then the postcard encoding of a [`Hint`]. Targets are member ids, at most
//! [`kvapi::MAX_MEMBER_ID_BYTES`] long (longer ones are refused before anything is stored), so the
//! length always fits. The sequence is the time the hint was stored, in microseconds since the Unix
//! epoch, made unique and increasing: hints of one target are one contiguous range in the order they
//! were stored, and the expired ones are its front. The per-target counts and bytes and the
//! per-partition counts live in memory (rebuilt by one scan at open, which drops entries that do not
//! decode instead of refusing to start), so caps and backlogs are cheap to check.

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

/// Current hint format: format 2 records inside (siblings with their expiry).
const HINT_FORMAT_VERSION: u8 = 2;
/// Hints stored before siblings carried an expiry; still read, so an upgrade drops none.
const HINT_FORMAT_V1: u8 = 1;
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

/// A hint as stored: its storage key and size, for [`Storage::delete_hints`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldHint {
    /// Its key in [`HINTS_CF`].
    pub storage_key: Vec<u8>,
    /// Bytes of its stored value.
    pub bytes: u64,
    /// The hint.
    pub hint: Hint,
}

/// Most hints, and hint bytes, held for one target; a hint past either is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HintCaps {
    /// Most hints per target.
    pub max_count: u64,
    /// Most bytes of hints per target.
    pub max_bytes: u64,
}

/// Hints held for one target.
#[derive(Debug, Default, Clone, Copy)]
struct TargetTotals {
    count: u64,
    bytes: u64,
}

/// What the ledger counts.
#[derive(Default)]
struct Totals {
    targets: BTreeMap<String, TargetTotals>,
    partitions: BTreeMap<u16, u64>,
}

impl Totals {
    fn add(&mut self, target: &str, partition: u16, bytes: u64) {
        let t = self.targets.entry(target.to_string()).or_default();
        t.count += 1;
        t.bytes += bytes;
        *self.partitions.entry(partition).or_default() += 1;
    }

    fn remove(&mut self, target: &str, partition: u16, bytes: u64) {
        if let Some(t) = self.targets.get_mut(target) {
            t.count = t.count.saturating_sub(1);
            t.bytes = t.bytes.saturating_sub(bytes);
            if t.count == 0 {
                self.targets.remove(target);
            }
        }
        if let Some(n) = self.partitions.get_mut(&partition) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.partitions.remove(&partition);
            }
        }
    }
}

/// In-memory totals of the hints held, and the last sequence number used.
pub(super) struct HintLedger {
    totals: Mutex<Totals>,
    last_sequence: AtomicU64,
    metrics: Arc<Metrics>,
}

impl HintLedger {
    /// Counts the stored hints, deleting (and logging and counting) entries whose key or value does
    /// not decode: a corrupt hint cannot be delivered, and anti-entropy repairs what it carried.
    pub(super) fn load(db: &DB, metrics: Arc<Metrics>) -> Result<Self, Error> {
        let cf = db
            .cf_handle(HINTS_CF)
            .ok_or_else(|| Error::Internal(format!("column family {HINTS_CF} missing")))?;
        let mut totals = Totals::default();
        let mut last = 0;
        let mut corrupt = WriteBatch::default();
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            let decoded = split_hint_key(&key).and_then(|(target, sequence)| {
                decode_hint(&value).map(|hint| (target, sequence, hint))
            });
            match decoded {
                Ok((target, sequence, hint)) => {
                    totals.add(&target, hint.partition, value.len() as u64);
                    last = last.max(sequence);
                }
                Err(e) => {
                    tracing::warn!(key = %escape(&key), error = %e, "dropping a corrupt hint");
                    corrupt.delete_cf(cf, &key);
                }
            }
        }
        if !corrupt.is_empty() {
            metrics.hints_corrupt.inc_by(corrupt.len() as u64);
            db.write(corrupt)?;
        }
        Ok(HintLedger {
            totals: Mutex::new(totals),
            last_sequence: AtomicU64::new(last),
            metrics,
        })
    }

    /// The next sequence number: now in microseconds, or one more than the last when the clock has
    /// not moved past it.
    fn next_sequence(&self) -> u64 {
        let now = now_micros();
        let next = |last: u64| last.saturating_add(1).max(now);
        let last = self
            .last_sequence
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(next(last)))
            .unwrap_or_else(|last| last);
        next(last)
    }
}

impl Storage {
    /// Stores a hint for `target` (synced when durability is `fsync`), unless `target` is no
    /// possible member id or holds `caps` worth of hints already.
    pub fn store_hint(&self, target: &str, hint: &Hint, caps: HintCaps) -> Result<(), Error> {
        if !kvapi::is_member_id(target) {
            return Err(Error::BadParameter(format!(
                "hint target of {} bytes is not a member id",
                target.len()
            )));
        }
        self.wal.check()?;
        let mut value = vec![HINT_FORMAT_VERSION];
        value.extend(postcard::to_allocvec(hint).map_err(|e| Error::Internal(e.to_string()))?);
        // A hint holds one record: the cap of records, plus its key and partition.
        self.check_record_size(
            value
                .len()
                .saturating_sub(hint.key.len() + HINT_HEADER_BYTES),
        )?;
        let bytes = value.len() as u64;
        {
            // Reserve the room before writing, so concurrent stores cannot overshoot the caps.
            let mut totals = self.hints.totals.lock();
            let held = totals.targets.get(target).copied().unwrap_or_default();
            let refusal = if held.count >= caps.max_count {
                Some(("count", format!("{} hints", held.count)))
            } else if held.bytes.saturating_add(bytes) > caps.max_bytes {
                Some(("bytes", format!("{} bytes of hints", held.bytes)))
            } else {
                None
            };
            if let Some((cap, held)) = refusal {
                self.hints
                    .metrics
                    .hints_refused
                    .with_label_values(&[cap])
                    .inc();
                return Err(Error::Unavailable(format!(
                    "this node already holds {held} for {target}, its cap; \
                     anti-entropy will repair the replica instead"
                )));
            }
            totals.add(target, hint.partition, bytes);
        }
        let sequence = self.hints.next_sequence();
        let written = self.cf(HINTS_CF).and_then(|cf| {
            self.wal.watch(self.db.put_cf_opt(
                cf,
                hint_key(target, sequence),
                value,
                &self.write_options,
            ))
        });
        if written.is_err() {
            self.hints
                .totals
                .lock()
                .remove(target, hint.partition, bytes);
        }
        written
    }

    /// Hints held per target, for targets with at least one.
    pub fn hint_backlog(&self) -> Vec<(String, u64)> {
        self.hints
            .totals
            .lock()
            .targets
            .iter()
            .map(|(t, n)| (t.clone(), n.count))
            .collect()
    }

    /// Total hints held.
    pub fn hints_pending(&self) -> u64 {
        self.hints
            .totals
            .lock()
            .targets
            .values()
            .map(|t| t.count)
            .sum()
    }

    /// Hints held for keys of `partition`, whatever their target.
    pub fn hints_pending_in(&self, partition: u16) -> u64 {
        self.hints
            .totals
            .lock()
            .partitions
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }

    /// The oldest hints for `target`, at most `max_count` of them and about `max_bytes` in all. A
    /// hint that does not decode is returned as an error rather than skipped.
    pub fn hints_for(
        &self,
        target: &str,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<HeldHint>, Error> {
        self.scan_hints(target, |_, count, bytes| {
            count < max_count && bytes < max_bytes as u64
        })
    }

    /// Deletes up to `limit` hints of `target` stored before `stored_before_us` (microseconds since
    /// the Unix epoch), counting them as expired; returns how many.
    pub fn drop_expired_hints(
        &self,
        target: &str,
        stored_before_us: u64,
        limit: usize,
    ) -> Result<u64, Error> {
        let expired = self.scan_hints(target, |sequence, count, _| {
            sequence < stored_before_us && count < limit
        })?;
        self.delete_hints(target, &expired)?;
        let count = expired.len() as u64;
        self.hints.metrics.hints_expired.inc_by(count);
        Ok(count)
    }

    /// Deletes delivered (or expired) hints of `target`.
    pub fn delete_hints(&self, target: &str, hints: &[HeldHint]) -> Result<(), Error> {
        if hints.is_empty() {
            return Ok(());
        }
        let cf = self.cf(HINTS_CF)?;
        let mut batch = WriteBatch::default();
        for held in hints {
            batch.delete_cf(cf, &held.storage_key);
        }
        self.wal.check()?;
        self.wal
            .watch(self.db.write_opt(batch, &self.write_options))?;
        let mut totals = self.hints.totals.lock();
        for held in hints {
            totals.remove(target, held.hint.partition, held.bytes);
        }
        Ok(())
    }

    /// `target`'s hints in stored order while `more(sequence, hints taken, bytes taken)` holds.
    fn scan_hints(
        &self,
        target: &str,
        more: impl Fn(u64, usize, u64) -> bool,
    ) -> Result<Vec<HeldHint>, Error> {
        let prefix = hint_key(target, 0);
        let prefix = &prefix[..prefix.len() - 8];
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in self.db.iterator_cf(self.cf(HINTS_CF)?, mode) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            let (_, sequence) = split_hint_key(&key)?;
            if !more(sequence, out.len(), bytes) {
                break;
            }
            bytes += value.len() as u64;
            out.push(HeldHint {
                storage_key: key.to_vec(),
                bytes: value.len() as u64,
                hint: decode_hint(&value)?,
            });
        }
        Ok(out)
    }
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Targets are member ids (checked before storing), so their length fits the `u16` prefix.
fn hint_key(target: &str, sequence: u64) -> Vec<u8> {
    let length = u16::try_from(target.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(2 + target.len() + 8);
    key.extend_from_slice(&length.to_be_bytes());
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

pub(super) fn decode_hint(bytes: &[u8]) -> Result<Hint, Error> {
    match bytes.split_first() {
        Some((&HINT_FORMAT_VERSION, body)) => postcard::from_bytes(body)
            .map_err(|e| Error::Corrupt(format!("hint does not decode: {e}"))),
        Some((&HINT_FORMAT_V1, body)) => postcard::from_bytes::<super::legacy::HintV1>(body)
            .map(Hint::from)
            .map_err(|e| Error::Corrupt(format!("hint does not decode: {e}"))),
        Some((version, _)) => Err(Error::Corrupt(format!(
            "hint has unknown format version {version}"
        ))),
        None => Err(Error::Corrupt("hint is empty".into())),
    }
}

/// The first 64 bytes of a storage key, printable, for a log line.
fn escape(key: &[u8]) -> String {
    key.iter()
        .take(64)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
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
        )
        .unwrap();
        Hint {
            partition: 1,
            key: vec![i],
            set,
        }
    }

    const UNCAPPED: HintCaps = HintCaps {
        max_count: u64::MAX,
        max_bytes: u64::MAX,
    };

    fn open(dir: &std::path::Path) -> Storage {
        Storage::open(
            dir,
            Durability::Fsync,
            1 << 20,
            1 << 20,
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    #[test]
    fn hints_are_kept_per_target_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = open(dir.path());
            for i in 0..5 {
                storage.store_hint("kv-1", &hint(i), UNCAPPED).unwrap();
            }
            // A target whose id is a prefix of another's stays separate.
            storage.store_hint("kv-10", &hint(9), UNCAPPED).unwrap();
        }
        let storage = open(dir.path());
        assert_eq!(storage.hints_pending(), 6);
        assert_eq!(storage.hints_pending_in(1), 6);
        assert_eq!(
            storage.hint_backlog(),
            vec![("kv-1".to_string(), 5), ("kv-10".to_string(), 1)]
        );
        let first = storage.hints_for("kv-1", 3, usize::MAX).unwrap();
        let keys: Vec<u8> = first.iter().map(|h| h.hint.key[0]).collect();
        assert_eq!(keys, vec![0, 1, 2]);
        storage.delete_hints("kv-1", &first).unwrap();
        storage.store_hint("kv-1", &hint(7), UNCAPPED).unwrap();
        let rest: Vec<u8> = storage
            .hints_for("kv-1", 10, usize::MAX)
            .unwrap()
            .iter()
            .map(|h| h.hint.key[0])
            .collect();
        assert_eq!(rest, vec![3, 4, 7], "new hints come after older ones");
        assert_eq!(storage.hints_pending(), 4);
        assert_eq!(storage.hints_pending_in(1), 4);
        assert_eq!(storage.hints_pending_in(2), 0);
    }

    #[test]
    fn caps_refuse_hints_past_the_count_or_the_bytes_of_a_target() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path());
        let two = HintCaps {
            max_count: 2,
            max_bytes: u64::MAX,
        };
        storage.store_hint("kv-1", &hint(0), two).unwrap();
        storage.store_hint("kv-1", &hint(1), two).unwrap();
        assert!(matches!(
            storage.store_hint("kv-1", &hint(2), two),
            Err(Error::Unavailable(_))
        ));
        storage.store_hint("kv-2", &hint(2), two).unwrap();
        let small = HintCaps {
            max_count: u64::MAX,
            max_bytes: 1,
        };
        assert!(storage.store_hint("kv-3", &hint(3), small).is_err());
        assert_eq!(storage.hints_pending(), 3);
        let long = "k".repeat(70_000);
        assert!(matches!(
            storage.store_hint(&long, &hint(4), UNCAPPED),
            Err(Error::BadParameter(_))
        ));
    }

    #[test]
    fn expired_hints_are_dropped_in_stored_order() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path());
        storage.store_hint("kv-1", &hint(0), UNCAPPED).unwrap();
        let cutoff = now_micros() + 1;
        std::thread::sleep(std::time::Duration::from_millis(2));
        storage.store_hint("kv-1", &hint(1), UNCAPPED).unwrap();
        assert_eq!(storage.drop_expired_hints("kv-1", cutoff, 100).unwrap(), 1);
        let left = storage.hints_for("kv-1", 10, usize::MAX).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].hint.key, vec![1]);
    }

    #[test]
    fn a_corrupt_hint_is_dropped_at_open_instead_of_failing_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = open(dir.path());
            storage.store_hint("kv-1", &hint(0), UNCAPPED).unwrap();
            let cf = storage.cf(HINTS_CF).unwrap();
            // The key a 70,000-byte target got before lengths were checked: truncated to u16.
            let mut truncated = (70_000u32 as u16).to_be_bytes().to_vec();
            truncated.extend(std::iter::repeat_n(b'x', 70_000));
            truncated.extend(7u64.to_be_bytes());
            storage.db.put_cf(cf, &truncated, [1, 2, 3]).unwrap();
            storage
                .db
                .put_cf(cf, hint_key("kv-2", 9), [HINT_FORMAT_VERSION, 0xff])
                .unwrap();
        }
        let storage = open(dir.path());
        assert_eq!(storage.hint_backlog(), vec![("kv-1".to_string(), 1)]);
        let reopened = open_again(storage, dir.path());
        assert_eq!(reopened.hints_pending(), 1, "the corrupt entries are gone");
    }

    fn open_again(storage: Storage, dir: &std::path::Path) -> Storage {
        drop(storage);
        open(dir)
    }
}
