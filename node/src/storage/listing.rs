//! Listing scans: the records under a key prefix across several partitions, in key byte order, the
//! smallest first, bounded in count and bytes.
//!
//! Keys are stored under their partition, so a prefix is spread over every partition. The scan
//! visits the partitions one at a time and keeps the smallest keys seen in a sorted map: once the map
//! is over its count or byte budget it drops its largest key, and that key becomes the scan's `end`.
//! Every key below `end` in the scanned partitions is then in the map (a partition's scan stops at
//! its first key at or past `end`, and only keys at or past it were dropped), so the answer is
//! complete up to `end` (exclusive), or complete outright when nothing was dropped. One iterator is
//! open at a time, and the map holds at most `limit + 1` records.

use std::collections::BTreeMap;

use rocksdb::{Direction, IteratorMode};

use super::scan::partition_bounds;
use super::{OBJECTS_CF, Storage, codec, record_key};
use crate::causality::SiblingSet;
use crate::error::Error;

/// What to list.
#[derive(Debug, Clone)]
pub struct ListRange<'a> {
    /// Only keys that start with these bytes.
    pub prefix: &'a [u8],
    /// Only keys at or after this one (a key at or after `prefix`).
    pub start: &'a [u8],
    /// Most records in the answer.
    pub limit: usize,
    /// Bytes of keys and records in the answer before its last record.
    pub max_bytes: usize,
    /// Whether values are kept; without, every value is emptied (see
    /// [`SiblingSet::without_values`]).
    pub values: bool,
}

/// The answer of [`Storage::list`].
#[derive(Debug, Default)]
pub struct ListScan {
    /// `(key, state)` in key order, tombstones included.
    pub records: Vec<(Vec<u8>, SiblingSet)>,
    /// Every key of the range below this one is in `records`; `None` when every key is.
    pub end: Option<Vec<u8>>,
}

impl Storage {
    /// The smallest keys of `range` held in `partitions`, with their states.
    pub fn list(&self, partitions: &[u16], range: &ListRange<'_>) -> Result<ListScan, Error> {
        let from = range.start.max(range.prefix);
        let mut kept: BTreeMap<Vec<u8>, (SiblingSet, usize)> = BTreeMap::new();
        let mut bytes = 0;
        let mut end: Option<Vec<u8>> = None;
        for &partition in partitions {
            let start = record_key(partition, from);
            let iterator = self.db.iterator_cf_opt(
                self.cf(OBJECTS_CF)?,
                partition_bounds(partition),
                IteratorMode::From(&start, Direction::Forward),
            );
            for item in iterator {
                let (rkey, value) = item?;
                let key = &rkey[2..];
                if !key.starts_with(range.prefix) || end.as_deref().is_some_and(|e| key >= e) {
                    break;
                }
                let set = codec::decode(&value)?;
                let (set, size) = if range.values {
                    (set, key.len() + value.len())
                } else {
                    let values: usize = set
                        .live()
                        .filter_map(|s| s.value.as_ref())
                        .map(Vec::len)
                        .sum();
                    (
                        set.without_values(),
                        key.len() + value.len().saturating_sub(values),
                    )
                };
                kept.insert(key.to_vec(), (set, size));
                bytes += size;
                while kept.len() > range.limit.max(1) || (bytes > range.max_bytes && kept.len() > 1)
                {
                    if let Some((largest, (_, size))) = kept.pop_last() {
                        bytes -= size;
                        end = Some(largest);
                    }
                }
            }
        }
        Ok(ListScan {
            records: kept.into_iter().map(|(k, (set, _))| (k, set)).collect(),
            end,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;
    use crate::ring::partition_of;
    use crate::storage::Durability;

    fn set(value: Option<&[u8]>) -> Arc<SiblingSet> {
        Arc::new(SiblingSet::one_write(value))
    }

    fn range(prefix: &[u8], start: &[u8], limit: usize, max_bytes: usize) -> ListRange<'static> {
        ListRange {
            prefix: prefix.to_vec().leak(),
            start: start.to_vec().leak(),
            limit,
            max_bytes,
            values: false,
        }
    }

    /// Pages through `partitions` as a coordinator does: each page resumes at the last `end`.
    fn pages(
        storage: &Storage,
        partitions: &[u16],
        limit: usize,
        max_bytes: usize,
    ) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        let mut start = b"p/".to_vec();
        for _ in 0..1000 {
            let scan = storage
                .list(partitions, &range(b"p/", &start, limit, max_bytes))
                .unwrap();
            if let Some(end) = &scan.end {
                assert!(scan.records.iter().all(|(k, _)| k < end));
            }
            seen.extend(scan.records.into_iter().map(|(k, _)| k));
            match scan.end {
                Some(end) => start = end,
                None => return seen,
            }
        }
        panic!("listing did not finish");
    }

    #[test]
    fn a_paged_scan_gives_every_key_under_the_prefix_once_in_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(
            dir.path(),
            Durability::Periodic,
            1 << 20,
            1 << 20,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let mut expected = Vec::new();
        for i in 0..500u32 {
            let key = format!("p/{i:05}").into_bytes();
            storage
                .store(partition_of(&key, 16), &key, set(Some(&[7; 50])))
                .unwrap();
            expected.push(key);
            let other = format!("q/{i}").into_bytes();
            storage
                .store(partition_of(&other, 16), &other, set(Some(b"x")))
                .unwrap();
        }
        let tomb = b"p/tomb".to_vec();
        storage
            .store(partition_of(&tomb, 16), &tomb, set(None))
            .unwrap();
        expected.push(tomb);
        expected.sort();
        let all: Vec<u16> = (0..16).collect();
        for (limit, max_bytes) in [
            (1, usize::MAX),
            (7, usize::MAX),
            (1000, usize::MAX),
            (1000, 300),
        ] {
            assert_eq!(
                pages(&storage, &all, limit, max_bytes),
                expected,
                "limit {limit}"
            );
        }
        // Only the partitions asked for are scanned; values are emptied unless asked for.
        let first = storage
            .list(&[3], &range(b"p/", b"", 1000, usize::MAX))
            .unwrap();
        assert!(first.end.is_none());
        assert!(first.records.iter().all(|(k, _)| partition_of(k, 16) == 3));
        assert!(first.records.iter().all(|(_, s)| {
            s.siblings()
                .iter()
                .all(|s| s.value.as_ref().is_none_or(Vec::is_empty))
        }));
        let with = storage
            .list(
                &[3],
                &ListRange {
                    values: true,
                    ..range(b"p/", b"", 1, usize::MAX)
                },
            )
            .unwrap();
        assert!(
            with.records[0]
                .1
                .live()
                .all(|s| s.value.as_deref() == Some(&[7; 50][..]))
        );
    }
}
