//! A bounded LRU cache of decoded sibling sets, sized in bytes.
//!
//! The lock is a plain (non-async) mutex held only for a map operation, never across an await or any
//! I/O. Entries are `Arc`s, so a hit copies a pointer, not the values.

use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use crate::causality::SiblingSet;
use crate::metrics::Metrics;

/// Bytes charged per entry on top of keys and values, for the map, the `Arc` and sibling headers.
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// LRU cache from storage key to sibling set with a byte budget.
pub struct ObjectCache {
    inner: Mutex<Inner>,
    capacity_bytes: usize,
    metrics: Arc<Metrics>,
}

struct Inner {
    entries: LruCache<Vec<u8>, (Arc<SiblingSet>, usize)>,
    bytes: usize,
}

impl ObjectCache {
    /// A cache holding at most `capacity_bytes` (0 disables caching).
    pub fn new(capacity_bytes: usize, metrics: Arc<Metrics>) -> Self {
        ObjectCache {
            inner: Mutex::new(Inner {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity_bytes,
            metrics,
        }
    }

    /// The cached set for `key`, counting a hit or a miss.
    pub fn get(&self, key: &[u8]) -> Option<Arc<SiblingSet>> {
        let found = self
            .inner
            .lock()
            .entries
            .get(key)
            .map(|(set, _)| set.clone());
        match found {
            Some(_) => self.metrics.cache_hits.inc(),
            None => self.metrics.cache_misses.inc(),
        }
        found
    }

    /// Stores `set` under `key`, evicting least recently used entries to stay within the budget.
    /// A set larger than the whole budget is not cached.
    pub fn insert(&self, key: Vec<u8>, set: Arc<SiblingSet>) {
        let weight = weight(&key, &set);
        let mut inner = self.inner.lock();
        if let Some((_, old)) = inner.entries.pop(&key) {
            inner.bytes -= old;
        }
        if weight <= self.capacity_bytes {
            inner.bytes += weight;
            inner.entries.put(key, (set, weight));
            while inner.bytes > self.capacity_bytes {
                match inner.entries.pop_lru() {
                    Some((_, (_, evicted))) => inner.bytes -= evicted,
                    None => break,
                }
            }
        }
        self.metrics.cache_size_bytes.set(inner.bytes as i64);
    }

    /// Drops every key starting with `prefix` (a partition's range) from the cache.
    pub fn remove_prefix(&self, prefix: &[u8]) {
        let mut inner = self.inner.lock();
        let doomed: Vec<Vec<u8>> = inner
            .entries
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            if let Some((_, old)) = inner.entries.pop(&key) {
                inner.bytes -= old;
            }
        }
        self.metrics.cache_size_bytes.set(inner.bytes as i64);
    }

    /// Drops `key` from the cache.
    pub fn remove(&self, key: &[u8]) {
        let mut inner = self.inner.lock();
        if let Some((_, old)) = inner.entries.pop(key) {
            inner.bytes -= old;
        }
        self.metrics.cache_size_bytes.set(inner.bytes as i64);
    }
}

fn weight(key: &[u8], set: &SiblingSet) -> usize {
    let values: usize = set
        .siblings()
        .iter()
        .map(|s| s.value.as_ref().map_or(0, Vec::len) + s.dot.actor.0.len() + 32)
        .sum();
    ENTRY_OVERHEAD_BYTES + key.len() + values
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::causality::{Actor, VersionVector};

    fn set_of(bytes: usize) -> Arc<SiblingSet> {
        let mut set = SiblingSet::default();
        set.update(
            &VersionVector::default(),
            &Actor::new("kv-0", 1),
            Some(vec![0; bytes]),
            0,
        )
        .unwrap();
        Arc::new(set)
    }

    #[test]
    fn stays_within_budget_and_evicts_least_recently_used() {
        let metrics = Arc::new(Metrics::new());
        let cache = ObjectCache::new(1000, metrics.clone());
        cache.insert(b"a".to_vec(), set_of(300));
        cache.insert(b"b".to_vec(), set_of(300));
        assert!(cache.get(b"a").is_some()); // a is now most recently used
        cache.insert(b"c".to_vec(), set_of(300));
        assert!(cache.get(b"b").is_none(), "b was least recently used");
        assert!(cache.get(b"a").is_some());
        assert!(cache.get(b"c").is_some());
        assert!(metrics.cache_size_bytes.get() <= 1000);
        assert_eq!(metrics.cache_hits.get(), 3);
        assert_eq!(metrics.cache_misses.get(), 1);
    }

    #[test]
    fn oversized_sets_are_not_cached_and_replacements_are_recounted() {
        let metrics = Arc::new(Metrics::new());
        let cache = ObjectCache::new(1000, metrics.clone());
        cache.insert(b"big".to_vec(), set_of(5000));
        assert!(cache.get(b"big").is_none());
        cache.insert(b"k".to_vec(), set_of(100));
        let one = metrics.cache_size_bytes.get();
        cache.insert(b"k".to_vec(), set_of(100));
        assert_eq!(metrics.cache_size_bytes.get(), one);
    }
}
