//! Replica: applies a read or a write to this node's copy of a key.
//!
//! A write is a read-modify-write of the key's sibling set. It runs under one of a fixed array of
//! striped mutexes, so two writes of one key never interleave, while the blocking RocksDB work runs on
//! tokio's blocking pool. No lock is ever held across an await. A cache hit is served on the async
//! thread without touching RocksDB or the blocking pool, and so is a write or merge of a cached key
//! whose lock is free when storing it needs neither a sync nor a wait for a RocksDB write stall
//! (durability `periodic`): two thread hand-offs fewer per replica write. Every stored change of a key is recorded in
//! the node's change log (`watch`), which wakes the requests waiting for one.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::causality::{Actor, MAX_ACTORS, SiblingSet, VersionVector};
use crate::context_token::ContextKeys;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::offload::Offload;
use crate::storage::Storage;
use crate::watch::{ChangeLog, DEFAULT_LOG_ENTRIES};

/// Number of lock stripes: enough that unrelated keys rarely contend.
const LOCK_STRIPES: usize = 1024;
/// Largest value a write applies on the async thread (the fast path copies it once, in case it
/// has to fall back to the blocking pool).
const INLINE_MAX_VALUE_BYTES: usize = 16 * 1024;

/// What a client write stores: a value, which may expire, or a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    /// The value, `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// How long after the write the value reads as deleted; `None` never.
    pub ttl: Option<Duration>,
}

impl Mutation {
    /// Stores `value`, expiring `ttl` after the write when given.
    pub fn put(value: Vec<u8>, ttl: Option<Duration>) -> Self {
        Mutation {
            value: Some(value),
            ttl,
        }
    }

    /// Deletes the key (leaves a tombstone).
    pub fn delete() -> Self {
        Mutation {
            value: None,
            ttl: None,
        }
    }
}

/// This node's replica of the data.
pub struct Replica {
    storage: Storage,
    actor: Actor,
    max_siblings: usize,
    contexts: Arc<ContextKeys>,
    stripes: Vec<Mutex<()>>,
    metrics: Arc<Metrics>,
    changes: ChangeLog,
    offload: Offload,
}

impl Replica {
    /// A replica over `storage` that stamps the writes it coordinates as `node_id` (plus the data
    /// directory's incarnation), refuses states of more than `max_siblings` siblings, and issues
    /// context tokens with `contexts`.
    pub fn new(
        storage: Storage,
        node_id: &str,
        max_siblings: usize,
        contexts: Arc<ContextKeys>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let actor = Actor::new(node_id, storage.incarnation());
        Replica {
            storage,
            actor,
            max_siblings,
            contexts,
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            metrics,
            changes: ChangeLog::new(DEFAULT_LOG_ENTRIES),
            offload: Offload::Pool,
        }
    }

    /// This replica with its storage work run as `offload` says.
    pub fn with_offload(mut self, offload: Offload) -> Self {
        self.offload = offload;
        self
    }

    /// The local state of `key` in `partition` (empty when never written), counting one cache hit
    /// or miss: a miss is a read that goes to the blocking pool and RocksDB.
    pub async fn read(
        self: &Arc<Self>,
        partition: u16,
        key: Arc<[u8]>,
    ) -> Result<Arc<SiblingSet>, Error> {
        if let Some(set) = self.storage.cached(partition, &key) {
            self.metrics.cache_hits.inc();
            return Ok(set);
        }
        self.metrics.cache_misses.inc();
        let this = self.clone();
        this.offload
            .run(move || {
                let _guard = this.stripe(&key).lock();
                this.storage.load(partition, &key)
            })
            .await
    }

    /// Coordinates a client write that has seen `context`, and returns the key's new state. An
    /// expiring value gets its absolute expiry here, from this node's clock, with its dot: every
    /// copy of the version carries the same expiry.
    pub async fn write(
        self: &Arc<Self>,
        partition: u16,
        key: Arc<[u8]>,
        context: VersionVector,
        mutation: Mutation,
    ) -> Result<Arc<SiblingSet>, Error> {
        if let Some(done) = self.write_now(partition, &key, &context, &mutation) {
            return done;
        }
        let this = self.clone();
        this.offload
            .run(move || {
                let _guard = this.stripe(&key).lock();
                let current = this.storage.load(partition, &key)?;
                let next = this.apply_write(&key, &current, &context, mutation)?;
                this.storage.store(partition, &key, next.clone())?;
                this.changes.record(&key);
                Ok(next)
            })
            .await
    }

    /// The fast path of [`Replica::write`], on the async thread: taken when the key's lock is free,
    /// its state is cached, the value is small and storing needs no wait (see
    /// [`Storage::try_store_now`]). `None` when it is not taken; nothing has changed then.
    fn write_now(
        &self,
        partition: u16,
        key: &[u8],
        context: &VersionVector,
        mutation: &Mutation,
    ) -> Option<Result<Arc<SiblingSet>, Error>> {
        if mutation
            .value
            .as_ref()
            .is_some_and(|v| v.len() > INLINE_MAX_VALUE_BYTES)
        {
            return None;
        }
        let _guard = self.stripe(key).try_lock()?;
        let current = self.storage.cached(partition, key)?;
        let stored = self
            .apply_write(key, &current, context, mutation.clone())
            .and_then(|next| {
                let now = self.storage.try_store_now(partition, key, next.clone())?;
                Ok(now.then_some(next))
            })
            .transpose()?;
        if stored.is_ok() {
            self.changes.record(key);
        }
        Some(stored)
    }

    /// The state after a client write to `current` (the caller holds the key's lock), or the
    /// sibling cap's refusal.
    fn apply_write(
        &self,
        key: &[u8],
        current: &SiblingSet,
        context: &VersionVector,
        mutation: Mutation,
    ) -> Result<Arc<SiblingSet>, Error> {
        let siblings = current.siblings_after_update(context);
        if siblings > self.max_siblings {
            self.metrics.sibling_cap_rejections.inc();
            return Err(Error::TooManySiblings {
                siblings: current.siblings().len(),
                cap: self.max_siblings,
                context: self.contexts.encode(key, current.context()),
            });
        }
        let mut next = current.clone();
        let now = now_ms();
        let expires_at = mutation
            .ttl
            .map(|ttl| now.saturating_add(ttl.as_millis() as u64));
        next.update_expiring(context, &self.actor, mutation.value, now, expires_at)?;
        Ok(Arc::new(next))
    }

    /// Merges another replica's state of `key` into the local one (replication, read repair) and
    /// returns the merged state. Writes nothing when the merge changes nothing.
    pub async fn merge(
        self: &Arc<Self>,
        partition: u16,
        key: Arc<[u8]>,
        remote: SiblingSet,
    ) -> Result<Arc<SiblingSet>, Error> {
        if let Some(done) = self.merge_now(partition, &key, &remote) {
            return done;
        }
        let this = self.clone();
        this.offload
            .run(move || {
                let _guard = this.stripe(&key).lock();
                let current = this.storage.load(partition, &key)?;
                let Some(merged) = this.apply_merge(&current, &remote)? else {
                    return Ok(current);
                };
                this.storage.store(partition, &key, merged.clone())?;
                this.changes.record(&key);
                Ok(merged)
            })
            .await
    }

    /// The fast path of [`Replica::merge`], taken as [`Replica::write_now`]'s is.
    fn merge_now(
        &self,
        partition: u16,
        key: &[u8],
        remote: &SiblingSet,
    ) -> Option<Result<Arc<SiblingSet>, Error>> {
        let _guard = self.stripe(key).try_lock()?;
        let current = self.storage.cached(partition, key)?;
        let merged = match self.apply_merge(&current, remote) {
            Ok(Some(merged)) => merged,
            Ok(None) => return Some(Ok(current)),
            Err(e) => return Some(Err(e)),
        };
        match self.storage.try_store_now(partition, key, merged.clone()) {
            Ok(true) => {
                self.changes.record(key);
                Some(Ok(merged))
            }
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// The merge of `remote` into `current` (the caller holds the key's lock): `None` when it
    /// changes nothing, or the bounds' refusal.
    fn apply_merge(
        &self,
        current: &SiblingSet,
        remote: &SiblingSet,
    ) -> Result<Option<Arc<SiblingSet>>, Error> {
        let mut merged = SiblingSet::clone(current);
        merged.merge(remote);
        if merged == *current {
            return Ok(None);
        }
        self.check_bounds(&merged)?;
        Ok(Some(Arc::new(merged)))
    }

    /// Merges a batch of states of keys in `partition` (anti-entropy, transfers, hint delivery) and
    /// returns how many keys changed here.
    pub async fn merge_many(
        self: &Arc<Self>,
        partition: u16,
        records: Vec<(Vec<u8>, SiblingSet)>,
    ) -> Result<u64, Error> {
        let this = self.clone();
        this.offload
            .run(move || {
                let mut changed = 0;
                for (key, remote) in records {
                    let _guard = this.stripe(&key).lock();
                    let current = this.storage.load(partition, &key)?;
                    let merged = match this.apply_merge(&current, &remote) {
                        Ok(Some(merged)) => merged,
                        Ok(None) => continue,
                        // One oversized key must not stall the rest of the batch; it stays as it is here.
                        Err(e) => {
                            tracing::warn!(partition, error = %e, "merge of one key refused");
                            continue;
                        }
                    };
                    this.storage.store(partition, &key, merged)?;
                    this.changes.record(&key);
                    changed += 1;
                }
                Ok(changed)
            })
            .await
    }

    /// Deletes the keys of `partition` whose state is still exactly the dead siblings (tombstones
    /// and expired values, by this node's clock) that `context` names (tombstone garbage
    /// collection), and returns how many were deleted. A key written since has a different context
    /// and is kept; so is one whose value has not expired yet by this node's clock.
    pub async fn purge_tombstones(
        self: &Arc<Self>,
        partition: u16,
        keys: Vec<(Vec<u8>, VersionVector)>,
    ) -> Result<u64, Error> {
        let this = self.clone();
        this.offload
            .run(move || {
                let mut purged = 0;
                for (key, context) in keys {
                    let _guard = this.stripe(&key).lock();
                    let current = this.storage.load(partition, &key)?;
                    if current.all_dead_at(now_ms()) && *current.context() == context {
                        this.storage.remove(partition, &key)?;
                        purged += 1;
                    }
                }
                Ok(purged)
            })
            .await
    }

    /// The log of the keys whose stored state changed here.
    pub fn changes(&self) -> &ChangeLog {
        &self.changes
    }

    /// The keys that issue and check context tokens.
    pub fn contexts(&self) -> &ContextKeys {
        &self.contexts
    }

    /// Refuses a merged state past the caps a coordinated write obeys: more siblings than
    /// `max_siblings` or a vector naming more than [`MAX_ACTORS`] actors. Only a buggy or hostile peer,
    /// or concurrent writes through different coordinators at the cap, produce one; the local state
    /// stays, and a client read (which merges replicas in memory) still sees and can resolve them all.
    fn check_bounds(&self, merged: &SiblingSet) -> Result<(), Error> {
        let (siblings, actors) = (merged.siblings().len(), merged.context().len());
        if siblings > self.max_siblings || actors > MAX_ACTORS {
            self.metrics.merge_cap_rejections.inc();
            return Err(Error::BadPeerMessage(format!(
                "merged state would hold {siblings} siblings (cap {}) and {actors} actors (cap {MAX_ACTORS})",
                self.max_siblings
            )));
        }
        Ok(())
    }

    /// Runs `work` on the local storage on the blocking pool (scans, summaries, hints).
    pub async fn with_storage<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Storage) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let this = self.clone();
        this.offload.run(move || work(&this.storage)).await
    }

    /// The local storage, for cheap non-blocking questions (hint counts).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Syncs the write-ahead log (periodic durability).
    pub async fn sync_wal(self: &Arc<Self>) -> Result<(), Error> {
        let this = self.clone();
        this.offload.run(move || this.storage.sync_wal()).await
    }

    fn stripe(&self, key: &[u8]) -> &Mutex<()> {
        let index = xxhash_rust::xxh3::xxh3_64(key) as usize % LOCK_STRIPES;
        &self.stripes[index]
    }
}

/// This node's wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::context_token::KeySource;
    use crate::storage::Durability;

    fn replica(dir: &std::path::Path, max_siblings: usize) -> Arc<Replica> {
        let metrics = Arc::new(Metrics::new());
        let storage =
            Storage::open(dir, Durability::Periodic, 1 << 20, 1 << 20, metrics.clone()).unwrap();
        let contexts = ContextKeys::new(&[&[7; 32]], KeySource::Local).unwrap();
        Arc::new(Replica::new(
            storage,
            "kv-0",
            max_siblings,
            Arc::new(contexts),
            metrics,
        ))
    }

    #[tokio::test]
    async fn concurrent_blind_writes_all_survive() {
        let dir = tempfile::tempdir().unwrap();
        let replica = replica(dir.path(), 64);
        let key: Arc<[u8]> = Arc::from(&b"k"[..]);
        let writes = (0..32u8).map(|i| {
            let replica = replica.clone();
            let key = key.clone();
            tokio::spawn(async move {
                replica
                    .write(
                        0,
                        key,
                        VersionVector::default(),
                        Mutation::put(vec![i], None),
                    )
                    .await
            })
        });
        for w in futures_join(writes).await {
            w.unwrap().unwrap();
        }
        assert_eq!(replica.read(0, key).await.unwrap().siblings().len(), 32);
    }

    #[tokio::test]
    async fn the_sibling_cap_refuses_blind_writes_but_not_resolving_ones() {
        let dir = tempfile::tempdir().unwrap();
        let replica = replica(dir.path(), 2);
        let key: Arc<[u8]> = Arc::from(&b"k"[..]);
        for i in 0..2u8 {
            replica
                .write(
                    0,
                    key.clone(),
                    VersionVector::default(),
                    Mutation::put(vec![i], None),
                )
                .await
                .unwrap();
        }
        let refused = replica
            .write(
                0,
                key.clone(),
                VersionVector::default(),
                Mutation::put(vec![9], None),
            )
            .await;
        assert!(matches!(
            refused,
            Err(Error::TooManySiblings {
                siblings: 2,
                cap: 2,
                ..
            })
        ));
        let ctx = replica
            .read(0, key.clone())
            .await
            .unwrap()
            .context()
            .clone();
        let resolved = replica
            .write(0, key, ctx, Mutation::put(vec![7], None))
            .await
            .unwrap();
        assert_eq!(resolved.siblings().len(), 1);
    }

    #[tokio::test]
    async fn a_merge_past_the_sibling_cap_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let replica = replica(dir.path(), 2);
        let key: Arc<[u8]> = Arc::from(&b"k"[..]);
        replica
            .write(
                0,
                key.clone(),
                VersionVector::default(),
                Mutation::put(vec![1], None),
            )
            .await
            .unwrap();
        let mut remote = SiblingSet::default();
        for i in 0..2 {
            let peer = Actor::new(&format!("peer-{i}"), 1);
            remote
                .update(&VersionVector::default(), &peer, Some(vec![i]), 0)
                .unwrap();
        }
        let refused = replica.merge(0, key.clone(), remote.clone()).await;
        assert!(
            matches!(refused, Err(Error::BadPeerMessage(_))),
            "{refused:?}"
        );
        assert_eq!(
            replica
                .merge_many(0, vec![(key.to_vec(), remote)])
                .await
                .unwrap(),
            0
        );
        assert_eq!(replica.read(0, key).await.unwrap().siblings().len(), 1);
    }

    #[tokio::test]
    async fn merges_and_hints_past_the_record_cap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let cap = crate::storage::codec::max_record_bytes(2, 100);
        let storage = Storage::open(
            dir.path(),
            Durability::Periodic,
            1 << 20,
            1 << 20,
            metrics.clone(),
        )
        .unwrap()
        .with_record_cap(cap);
        let contexts = ContextKeys::new(&[&[7; 32]], KeySource::Local).unwrap();
        let replica = Arc::new(Replica::new(
            storage,
            "kv-0",
            2,
            Arc::new(contexts),
            metrics,
        ));
        let key: Arc<[u8]> = Arc::from(&b"k"[..]);
        let mut remote = SiblingSet::default();
        let peer = Actor::new("kv-1", 1);
        remote
            .update(&VersionVector::default(), &peer, Some(vec![1; cap]), 0)
            .unwrap();
        let refused = replica.merge(0, key.clone(), remote.clone()).await;
        assert!(
            matches!(refused, Err(Error::RecordTooLarge { .. })),
            "{refused:?}"
        );
        let refused = replica
            .merge_many(0, vec![(key.to_vec(), remote.clone())])
            .await;
        assert!(
            matches!(refused, Err(Error::RecordTooLarge { .. })),
            "{refused:?}"
        );
        let hint = crate::storage::hints::Hint {
            partition: 0,
            key: key.to_vec(),
            set: remote,
        };
        let uncapped = crate::storage::hints::HintCaps {
            max_count: u64::MAX,
            max_bytes: u64::MAX,
        };
        let refused = replica.storage().store_hint("kv-2", &hint, uncapped);
        assert!(
            matches!(refused, Err(Error::RecordTooLarge { .. })),
            "{refused:?}"
        );
        assert!(replica.read(0, key.clone()).await.unwrap().is_empty());
        assert_eq!(replica.storage().hints_pending(), 0);
        // Within the cap, the same paths store.
        let mut small = SiblingSet::default();
        small
            .update(&VersionVector::default(), &peer, Some(vec![1; 100]), 0)
            .unwrap();
        replica.merge(0, key.clone(), small).await.unwrap();
    }

    async fn futures_join<T>(
        handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
    ) -> Vec<Result<T, tokio::task::JoinError>> {
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await);
        }
        out
    }
}
