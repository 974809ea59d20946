//! A bounded LRU cache of decoded sibling sets, sized in bytes.
//!
//! An entry weighs its key, its record's encoded size (values, dots, the version vector with its
//! actor names) and the in-memory overhead of the decoded form, so a key with a huge vector and
//! few bytes of value costs what it holds.
//!
//! The lock is a plain (non-async) mutex held only for a map operation, never across an await or any
//! I/O. Entries are `Arc`s, so a hit copies a pointer, not the values.

use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use crate::causality::SiblingSet;
use crate::metrics::Metrics;

/// Bytes charged per entry on top of its key and record, for the map node, the key's and the set's
/// allocations and the `Arc`.
const ENTRY_OVERHEAD_BYTES: usize = 128;
/// In-memory bytes of a decoded version-vector entry beyond its encoded bytes: the actor's `String`
/// header, the counter widened to 8 bytes and its share of a B-tree node.
const VECTOR_ENTRY_OVERHEAD_BYTES: usize = 48;

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

    /// The cached set for `key`. Hits and misses are counted per client read by the replica, not
    /// here: writes and merges look keys up too.
    pub fn get(&self, key: &[u8]) -> Option<Arc<SiblingSet>> {
        self.inner
            .lock()
            .entries
            .get(key)
            .map(|(set, _)| set.clone())
    }

    /// Stores `set`, whose record encodes to `encoded_bytes`, under `key`, evicting least recently
    /// used entries to stay within the budget. A set larger than the whole budget is not cached.
    pub fn insert(&self, key: Vec<u8>, set: Arc<SiblingSet>, encoded_bytes: usize) {
        let weight = weight(&key, &set, encoded_bytes);
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

/// The memory an entry holds: its encoded record (which counts every value byte, actor name and
/// counter) plus what decoding adds per sibling and per vector entry.
fn weight(key: &[u8], set: &SiblingSet, encoded_bytes: usize) -> usize {
    ENTRY_OVERHEAD_BYTES
        + key.len()
        + encoded_bytes
        + std::mem::size_of_val(set.siblings())
        + set.context().len() * VECTOR_ENTRY_OVERHEAD_BYTES
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::causality::{Actor, VersionVector};

    fn insert(cache: &ObjectCache, key: &[u8], set: Arc<SiblingSet>) {
        let encoded = crate::storage::codec::encode(&set).len();
        cache.insert(key.to_vec(), set, encoded);
    }

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
        let cache = ObjectCache::new(1500, metrics.clone());
        insert(&cache, b"a", set_of(300));
        insert(&cache, b"b", set_of(300));
        assert!(cache.get(b"a").is_some()); // a is now most recently used
        insert(&cache, b"c", set_of(300));
        assert!(cache.get(b"b").is_none(), "b was least recently used");
        assert!(cache.get(b"a").is_some());
        assert!(cache.get(b"c").is_some());
        assert!(metrics.cache_size_bytes.get() <= 1500);
    }

    #[test]
    fn oversized_sets_are_not_cached_and_replacements_are_recounted() {
        let metrics = Arc::new(Metrics::new());
        let cache = ObjectCache::new(1500, metrics.clone());
        insert(&cache, b"big", set_of(5000));
        assert!(cache.get(b"big").is_none());
        insert(&cache, b"k", set_of(100));
        let one = metrics.cache_size_bytes.get();
        insert(&cache, b"k", set_of(100));
        assert_eq!(metrics.cache_size_bytes.get(), one);
    }

    #[test]
    fn the_version_vector_and_actor_names_weigh_in() {
        let metrics = Arc::new(Metrics::new());
        let cache = ObjectCache::new(1 << 30, metrics.clone());
        // One empty value whose context names 60 long-named actors (the cap is 64).
        let mut context = SiblingSet::default();
        for i in 0..60 {
            let actor = Actor::new(&format!("{i:0>200}"), 1);
            context
                .update(&VersionVector::default(), &actor, None, 0)
                .unwrap();
        }
        let mut set = SiblingSet::default();
        set.update(
            context.context(),
            &Actor::new("kv-0", 1),
            Some(Vec::new()),
            0,
        )
        .unwrap();
        insert(&cache, b"k", Arc::new(set));
        let weight = metrics.cache_size_bytes.get();
        assert!(
            weight > 60 * 200,
            "a vector of 60 actors of 200+ bytes weighs only {weight} bytes"
        );
    }
}
