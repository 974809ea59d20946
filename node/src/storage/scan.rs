//! Partition scans: a partition's Merkle summary, and the records of chosen segments of it.
//!
//! The summary is a Merkle tree of two levels. A key falls in one of [`SEGMENTS`] segments by a hash
//! of the key; a leaf is the XOR over its segment's keys of `xxh3(record, seed = xxh3(key))`, so it is
//! independent of write order; the root hashes the leaves. Two replicas compare roots, then leaves,
//! and exchange only the records of the segments that differ. Records are encoded canonically (see
//! `codec`; records of an older format are hashed re-encoded), so equal states hash equally. Summaries are rebuilt by a scan when asked for, never
//! maintained on the write path: see `antientropy` for how the scans are paced.

use rocksdb::{IteratorMode, ReadOptions};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::{OBJECTS_CF, Storage, codec, record_key};
use crate::causality::{SiblingSet, VersionVector};
use crate::error::Error;

/// Leaves of a partition's Merkle summary.
pub const SEGMENTS: usize = 1024;

/// Seed separating the segment hash from the partition hash of the same key.
const SEGMENT_SEED: u64 = 0x6b76_7365_676d_656e;

/// The segment of `key` within its partition.
pub fn segment_of(key: &[u8]) -> u16 {
    (xxh3_64_with_seed(key, SEGMENT_SEED) % SEGMENTS as u64) as u16
}

/// A partition's Merkle summary on one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Hash of all leaves: equal roots mean equal partitions.
    pub root: u64,
    /// One hash per segment.
    pub leaves: Vec<u64>,
    /// Keys in the partition.
    pub keys: u64,
}

impl Summary {
    /// The segments whose leaves differ from `other`'s.
    pub fn differing(&self, other: &[u64]) -> Vec<u16> {
        (0..SEGMENTS)
            .filter(|&i| self.leaves.get(i) != other.get(i))
            .map(|i| i as u16)
            .collect()
    }
}

/// One page of records from [`Storage::scan_segments`].
#[derive(Debug, Default)]
pub struct ScanPage {
    /// `(key, state)` in key order.
    pub records: Vec<(Vec<u8>, SiblingSet)>,
    /// Encoded bytes of those records.
    pub bytes: usize,
    /// Key to continue after, when the scan stopped at its byte budget.
    pub next: Option<Vec<u8>>,
}

impl Storage {
    /// Computes the Merkle summary of `partition` by scanning it.
    pub fn summary(&self, partition: u16) -> Result<Summary, Error> {
        let mut leaves = vec![0u64; SEGMENTS];
        let mut keys = 0;
        for item in self.db.iterator_cf_opt(
            self.cf(OBJECTS_CF)?,
            partition_bounds(partition),
            IteratorMode::From(&partition.to_be_bytes(), rocksdb::Direction::Forward),
        ) {
            let (rkey, value) = item?;
            let key = &rkey[2..];
            let record = codec::canonical(&value);
            leaves[segment_of(key) as usize] ^= xxh3_64_with_seed(&record, xxh3_64(key));
            keys += 1;
        }
        let flat: Vec<u8> = leaves.iter().flat_map(|l| l.to_le_bytes()).collect();
        Ok(Summary {
            root: xxh3_64(&flat),
            leaves,
            keys,
        })
    }

    /// The records of `partition` in the given `segments`, in key order, starting after `after`,
    /// stopping once about `max_bytes` are collected (at least one record per page).
    pub fn scan_segments(
        &self,
        partition: u16,
        segments: &[u16],
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<ScanPage, Error> {
        let mut wanted = vec![false; SEGMENTS];
        for &s in segments {
            if let Some(w) = wanted.get_mut(s as usize) {
                *w = true;
            }
        }
        let start = match after {
            Some(key) => {
                let mut k = record_key(partition, key);
                // The smallest key after `key`.
                k.push(0);
                k
            }
            None => partition.to_be_bytes().to_vec(),
        };
        let mut page = ScanPage::default();
        for item in self.db.iterator_cf_opt(
            self.cf(OBJECTS_CF)?,
            partition_bounds(partition),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            let (rkey, value) = item?;
            let key = &rkey[2..];
            if !wanted[segment_of(key) as usize] {
                continue;
            }
            if page.bytes >= max_bytes {
                page.next = page.records.last().map(|(k, _)| k.clone());
                break;
            }
            // Keys count too: a page of small records with long keys stays within the budget.
            page.bytes += key.len() + value.len();
            page.records.push((key.to_vec(), codec::decode(&value)?));
        }
        Ok(page)
    }

    /// Whether `partition` holds any key here.
    pub fn holds_partition(&self, partition: u16) -> Result<bool, Error> {
        let mut keys = self.db.iterator_cf_opt(
            self.cf(OBJECTS_CF)?,
            partition_bounds(partition),
            IteratorMode::From(&partition.to_be_bytes(), rocksdb::Direction::Forward),
        );
        Ok(keys.next().transpose()?.is_some())
    }

    /// Deletes every key of `partition` (a partition this node no longer holds once a membership
    /// change settled).
    pub fn drop_partition(&self, partition: u16) -> Result<(), Error> {
        let start = partition.to_be_bytes().to_vec();
        let end = match partition.checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            None => vec![0xff, 0xff, 0xff],
        };
        self.wal.check()?;
        self.wal.watch(self.db.delete_range_cf_opt(
            self.cf(OBJECTS_CF)?,
            start,
            end,
            &self.write_options,
        ))?;
        self.cache.remove_prefix(&partition.to_be_bytes());
        Ok(())
    }

    /// Keys of `partition` whose state holds only siblings dead since before `cutoff_ms`
    /// (tombstones written, or values expired, before it), with the context of each, at most
    /// `limit` of them.
    pub fn expired_tombstones(
        &self,
        partition: u16,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, VersionVector)>, Error> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(
            self.cf(OBJECTS_CF)?,
            partition_bounds(partition),
            IteratorMode::From(&partition.to_be_bytes(), rocksdb::Direction::Forward),
        ) {
            if out.len() >= limit {
                break;
            }
            let (rkey, value) = item?;
            let set = codec::decode(&value)?;
            let expired = !set.siblings().is_empty()
                && set
                    .siblings()
                    .iter()
                    .all(|s| s.dead_since().is_some_and(|since| since < cutoff_ms));
            if expired {
                out.push((rkey[2..].to_vec(), set.context().clone()));
            }
        }
        Ok(out)
    }
}

/// Read options bounding an iterator to one partition's key range.
pub(super) fn partition_bounds(partition: u16) -> ReadOptions {
    let mut options = ReadOptions::default();
    match partition.checked_add(1) {
        Some(next) => options.set_iterate_upper_bound(next.to_be_bytes().to_vec()),
        None => options.set_iterate_upper_bound(vec![0xff, 0xff, 0xff]),
    }
    options
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::causality::Actor;
    use crate::metrics::Metrics;
    use crate::storage::Durability;

    fn set(value: &[u8]) -> Arc<SiblingSet> {
        let mut set = SiblingSet::default();
        set.update(
            &VersionVector::default(),
            &Actor::new("kv-0", 1),
            Some(value.to_vec()),
            0,
        )
        .unwrap();
        Arc::new(set)
    }

    fn open(dir: &std::path::Path) -> Storage {
        Storage::open(
            dir,
            Durability::Periodic,
            1 << 20,
            1 << 20,
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    #[test]
    fn summaries_are_order_independent_and_pinpoint_differences() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(a_dir.path()), open(b_dir.path()));
        for i in 0..200u32 {
            a.store(5, &i.to_be_bytes(), set(b"v")).unwrap();
        }
        for i in (0..200u32).rev() {
            b.store(5, &i.to_be_bytes(), set(b"v")).unwrap();
        }
        // Another partition's data does not leak into partition 5's summary.
        b.store(6, b"other", set(b"x")).unwrap();
        let (sa, sb) = (a.summary(5).unwrap(), b.summary(5).unwrap());
        assert_eq!(sa, sb);
        assert_eq!(sa.keys, 200);
        b.store(5, &7u32.to_be_bytes(), set(b"changed")).unwrap();
        let sb = b.summary(5).unwrap();
        assert_ne!(sa.root, sb.root);
        let differing = sa.differing(&sb.leaves);
        assert_eq!(differing, vec![segment_of(&7u32.to_be_bytes())]);
        let page = b.scan_segments(5, &differing, None, usize::MAX).unwrap();
        assert!(
            page.records
                .iter()
                .any(|(k, s)| k == &7u32.to_be_bytes() && *s == *set(b"changed"))
        );
        assert!(
            page.records
                .iter()
                .all(|(k, _)| segment_of(k) == differing[0])
        );
        // Dropping a partition empties exactly that range, cache included.
        assert!(b.holds_partition(5).unwrap());
        b.drop_partition(5).unwrap();
        assert!(!b.holds_partition(5).unwrap());
        assert!(b.load(5, &7u32.to_be_bytes()).unwrap().is_empty());
        assert_eq!(*b.load(6, b"other").unwrap(), *set(b"x"));
    }

    #[test]
    fn segment_scans_page_by_bytes_and_resume_after_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path());
        for i in 0..300u32 {
            storage.store(0, &i.to_be_bytes(), set(&[0; 100])).unwrap();
        }
        storage
            .store(u16::MAX, b"last", set(b"edge partition"))
            .unwrap();
        let all: Vec<u16> = (0..SEGMENTS as u16).collect();
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = storage
                .scan_segments(0, &all, after.as_deref(), 2_000)
                .unwrap();
            pages += 1;
            seen.extend(page.records.into_iter().map(|(k, _)| k));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert!(pages > 5, "{pages} pages");
        assert_eq!(seen.len(), 300, "every key exactly once");
        seen.dedup();
        assert_eq!(seen.len(), 300);
        let last = storage
            .scan_segments(u16::MAX, &all, None, usize::MAX)
            .unwrap();
        assert_eq!(last.records.len(), 1);
    }
}
