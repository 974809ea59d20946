//! Storage: the RocksDB engine, the record codec and the object cache in front of them.
//!
//! Layout: column family [`OBJECTS_CF`] maps [`record_key`] (`partition` as big-endian `u16`, then the
//! key) to an encoded sibling set, so a partition is one contiguous key range. Column family [`META_CF`]
//! holds node-local facts such as the data directory's incarnation and transfer progress;
//! [`HINTS_CF`] holds hints for other nodes ([`hints`]). Partition scans and Merkle summaries are in
//! [`scan`]; checkpoints and reading them back, for backups, in [`snapshot`]. Everything here is blocking: the
//! async layers call it from `spawn_blocking`. This module knows nothing about HTTP or quorums.

pub mod cache;
pub mod codec;
pub mod hints;
mod legacy;
pub mod listing;
pub mod scan;
pub mod snapshot;
mod wal_health;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options, WriteBufferManager, WriteOptions,
};

use crate::causality::SiblingSet;
use crate::error::Error;
use crate::metrics::{ColumnFamilyStats, EngineStats, Metrics};
use cache::ObjectCache;
use wal_health::WalHealth;

/// Column family of the key-value records.
pub const OBJECTS_CF: &str = "objects";
/// Column family of node-local metadata.
pub const META_CF: &str = "meta";
/// Column family of hints held for other nodes.
pub const HINTS_CF: &str = "hints";
/// Subdirectory of the data directory that holds RocksDB's files.
pub const DB_DIR: &str = "db";

const INCARNATION_KEY: &[u8] = b"incarnation";

/// The RocksDB key of `key` in `partition`.
pub fn record_key(partition: u16, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// When an acknowledged write reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every write is synced before it is acknowledged.
    Fsync,
    /// The write-ahead log is synced on an interval: a machine crash may lose that interval, a
    /// process crash loses nothing.
    Periodic,
}

/// RocksDB's memory under one bound: a block cache of `bytes` shared by every column family (index
/// and filter blocks included), which memtables are charged to as well, flushed once they hold half.
struct RocksDbMemory {
    table: BlockBasedOptions,
    write_buffers: WriteBufferManager,
}

fn rocksdb_memory(bytes: usize) -> RocksDbMemory {
    let cache = Cache::new_lru_cache(bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    RocksDbMemory {
        table,
        write_buffers: WriteBufferManager::new_write_buffer_manager_with_cache(
            bytes / 2,
            false,
            cache,
        ),
    }
}

/// The local store of sibling sets.
pub struct Storage {
    db: DB,
    cache: ObjectCache,
    write_options: WriteOptions,
    /// `write_options` that fail rather than wait for a write stall; `None` when every write syncs.
    no_wait_options: Option<WriteOptions>,
    incarnation: u32,
    hints: hints::HintLedger,
    max_record_bytes: usize,
    wal: WalHealth,
}

impl Storage {
    /// Opens (creating if needed) the store under `data_dir`, with an object cache of
    /// `cache_bytes` and RocksDB's block cache and memtables within `rocksdb_bytes`.
    pub fn open(
        data_dir: &Path,
        durability: Durability,
        cache_bytes: usize,
        rocksdb_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.increase_parallelism(2);
        let memory = rocksdb_memory(rocksdb_bytes);
        options.set_write_buffer_manager(&memory.write_buffers);
        let column_family = |compress: bool| {
            let mut cf = Options::default();
            if compress {
                cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            cf.set_block_based_table_factory(&memory.table);
            cf.set_write_buffer_manager(&memory.write_buffers);
            cf
        };
        let db = DB::open_cf_descriptors(
            &options,
            data_dir.join(DB_DIR),
            [
                ColumnFamilyDescriptor::new(OBJECTS_CF, column_family(true)),
                ColumnFamilyDescriptor::new(META_CF, column_family(false)),
                ColumnFamilyDescriptor::new(HINTS_CF, column_family(false)),
            ],
        )?;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(durability == Durability::Fsync);
        let no_wait_options = (durability == Durability::Periodic).then(|| {
            let mut options = WriteOptions::default();
            options.set_no_slowdown(true);
            options
        });
        let incarnation = load_or_create_incarnation(&db)?;
        let hints = hints::HintLedger::load(&db, metrics.clone())?;
        Ok(Storage {
            db,
            cache: ObjectCache::new(cache_bytes, metrics.clone()),
            write_options,
            no_wait_options,
            incarnation,
            hints,
            max_record_bytes: codec::max_record_bytes(
                usize::from(crate::config::DEFAULT_MAX_SIBLINGS),
                kvapi::DEFAULT_MAX_VALUE_BYTES,
            ),
            wal: WalHealth::new(metrics),
        })
    }

    /// Sets the per-record byte cap (see [`codec::max_record_bytes`]; the cap of the default
    /// settings until then): a write or merge that would store a larger record is refused.
    pub fn with_record_cap(mut self, max_record_bytes: usize) -> Self {
        self.max_record_bytes = max_record_bytes;
        self
    }

    /// True once a sync or write of the write-ahead log has failed: the node then refuses writes
    /// until it is restarted.
    pub fn wal_failed(&self) -> bool {
        self.wal.failed()
    }

    /// A random number fixed when this data directory was created: a wiped node gets a new one, so
    /// its new writes never reuse the dots of its old ones.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// Records `value` as the data directory's `setting` on first use, and refuses to continue when
    /// it was created with a different value (such as another partition count, which would make
    /// stored keys unreachable).
    pub fn pin_setting(&self, setting: &str, value: u32) -> Result<(), Error> {
        let meta = self.cf(META_CF)?;
        let key = format!("setting/{setting}");
        match self.db.get_cf(meta, &key)? {
            Some(bytes) if bytes.as_slice() == value.to_be_bytes() => Ok(()),
            Some(bytes) => Err(Error::Unavailable(format!(
                "data directory was created with {setting} = {}, not {value}",
                bytes
                    .as_slice()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_or_else(|_| "an unreadable value".to_string(), |v| v.to_string())
            ))),
            None => {
                let mut sync = WriteOptions::default();
                sync.set_sync(true);
                Ok(self.db.put_cf_opt(meta, key, value.to_be_bytes(), &sync)?)
            }
        }
    }

    /// The cached set of `key` without touching RocksDB, if it is cached.
    pub fn cached(&self, partition: u16, key: &[u8]) -> Option<Arc<SiblingSet>> {
        self.cache.get(&record_key(partition, key))
    }

    /// The stored set of `key` (empty when absent), from the cache or from RocksDB.
    ///
    /// Callers must hold the key's write lock when the result may be inserted into the cache, so a
    /// slow reader never caches a value older than a concurrent write: see `replica`.
    pub fn load(&self, partition: u16, key: &[u8]) -> Result<Arc<SiblingSet>, Error> {
        let rkey = record_key(partition, key);
        if let Some(set) = self.cache.get(&rkey) {
            return Ok(set);
        }
        let (set, encoded_bytes) = match self.db.get_pinned_cf(self.cf(OBJECTS_CF)?, &rkey)? {
            Some(bytes) => (Arc::new(codec::decode(&bytes)?), bytes.len()),
            None => (Arc::new(SiblingSet::default()), 0),
        };
        self.cache.insert(rkey, set.clone(), encoded_bytes);
        Ok(set)
    }

    /// Persists `set` as the state of `key` (synced first when durability is `fsync`). A record
    /// past the per-record cap is refused, and so is every write once the log has failed.
    pub fn store(&self, partition: u16, key: &[u8], set: Arc<SiblingSet>) -> Result<(), Error> {
        self.put(partition, key, set, &self.write_options, false)
            .map(drop)
    }

    /// [`Storage::store`] when that needs no wait: no sync (durability `periodic`) and no RocksDB
    /// write stall (`no_slowdown`). `Ok(false)` when it would wait: nothing was written, and the
    /// caller stores from the blocking pool instead. For the async threads' fast path.
    pub fn try_store_now(
        &self,
        partition: u16,
        key: &[u8],
        set: Arc<SiblingSet>,
    ) -> Result<bool, Error> {
        match &self.no_wait_options {
            Some(options) => self.put(partition, key, set, options, true),
            None => Ok(false),
        }
    }

    /// Writes the record of `set` with `options`, then caches it; `Ok(false)` when `no_wait` and
    /// RocksDB answered that the write would have to wait.
    fn put(
        &self,
        partition: u16,
        key: &[u8],
        set: Arc<SiblingSet>,
        options: &WriteOptions,
        no_wait: bool,
    ) -> Result<bool, Error> {
        self.wal.check()?;
        let encoded = codec::encode(&set);
        let encoded_bytes = encoded.len();
        self.check_record_size(encoded_bytes)?;
        let rkey = record_key(partition, key);
        match self
            .db
            .put_cf_opt(self.cf(OBJECTS_CF)?, &rkey, encoded, options)
        {
            Err(e) if no_wait && e.kind() == rocksdb::ErrorKind::Incomplete => return Ok(false),
            outcome => self.wal.watch(outcome)?,
        }
        self.cache.insert(rkey, set, encoded_bytes);
        Ok(true)
    }

    /// Refuses a record of `bytes` encoded bytes when it exceeds the per-record cap.
    pub fn check_record_size(&self, bytes: usize) -> Result<(), Error> {
        if bytes > self.max_record_bytes {
            return Err(Error::RecordTooLarge {
                bytes,
                limit: self.max_record_bytes,
            });
        }
        Ok(())
    }

    /// Deletes `key` (tombstone garbage collection); the caller holds the key's write lock.
    pub fn remove(&self, partition: u16, key: &[u8]) -> Result<(), Error> {
        self.wal.check()?;
        let rkey = record_key(partition, key);
        self.wal.watch(
            self.db
                .delete_cf_opt(self.cf(OBJECTS_CF)?, &rkey, &self.write_options),
        )?;
        self.cache.remove(&rkey);
        Ok(())
    }

    /// Reads a node-local metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.db.get_cf(self.cf(META_CF)?, key)?)
    }

    /// Writes (synced) or, with `None`, deletes a node-local metadata value.
    pub fn set_meta(&self, key: &str, value: Option<&[u8]>) -> Result<(), Error> {
        self.wal.check()?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let meta = self.cf(META_CF)?;
        self.wal.watch(match value {
            Some(v) => self.db.put_cf_opt(meta, key, v, &sync),
            None => self.db.delete_cf_opt(meta, key, &sync),
        })
    }

    /// A random 32-byte secret named `name`, created (synced) on first use and kept with the data.
    pub fn local_secret(&self, name: &str) -> Result<Vec<u8>, Error> {
        if let Some(secret) = self.meta(name)? {
            return Ok(secret);
        }
        let secret: [u8; 32] = rand::random();
        self.set_meta(name, Some(&secret))?;
        Ok(secret.to_vec())
    }

    /// Syncs the write-ahead log to disk (the periodic durability tick). A failure is final: see
    /// [`Storage::wal_failed`].
    pub fn sync_wal(&self) -> Result<(), Error> {
        self.wal.check()?;
        self.wal.watch(self.db.flush_wal(true))
    }

    /// RocksDB's figures for `/metrics`: in-memory properties, cheap to read.
    pub fn engine_stats(&self) -> Result<EngineStats, Error> {
        let mut column_families = Vec::new();
        for name in [OBJECTS_CF, META_CF, HINTS_CF] {
            let cf = self.cf(name)?;
            let int = |property: &str| -> Result<u64, Error> {
                Ok(self.db.property_int_value_cf(cf, property)?.unwrap_or(0))
            };
            column_families.push(ColumnFamilyStats {
                name,
                sst_files_bytes: int("rocksdb.total-sst-files-size")?,
                pending_compaction_bytes: int("rocksdb.estimate-pending-compaction-bytes")?,
                memtable_bytes: int("rocksdb.cur-size-all-mem-tables")?,
                block_cache_usage_bytes: int("rocksdb.block-cache-usage")?,
            });
        }
        let db_int = |property: &str| -> Result<u64, Error> {
            Ok(self.db.property_int_value(property)?.unwrap_or(0))
        };
        Ok(EngineStats {
            column_families,
            live_data_bytes: self
                .db
                .property_int_value_cf(self.cf(OBJECTS_CF)?, "rocksdb.estimate-live-data-size")?
                .unwrap_or(0),
            writes_delayed: db_int("rocksdb.actual-delayed-write-rate")? > 0,
            writes_stopped: db_int("rocksdb.is-write-stopped")? > 0,
        })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, Error> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Internal(format!("column family {name} missing")))
    }
}

fn load_or_create_incarnation(db: &DB) -> Result<u32, Error> {
    let meta = db
        .cf_handle(META_CF)
        .ok_or_else(|| Error::Internal(format!("column family {META_CF} missing")))?;
    if let Some(bytes) = db.get_cf(meta, INCARNATION_KEY)? {
        let raw: [u8; 4] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::Corrupt("incarnation record is not 4 bytes".into()))?;
        return Ok(u32::from_be_bytes(raw));
    }
    let incarnation: u32 = rand::random();
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.put_cf_opt(meta, INCARNATION_KEY, incarnation.to_be_bytes(), &sync)?;
    Ok(incarnation)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::causality::{Actor, VersionVector};

    fn open(dir: &Path) -> Storage {
        open_with(dir, Durability::Fsync)
    }

    fn open_with(dir: &Path, durability: Durability) -> Storage {
        Storage::open(dir, durability, 1 << 20, 1 << 20, Arc::new(Metrics::new())).unwrap()
    }

    #[test]
    fn records_and_incarnation_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = SiblingSet::default();
        set.update(
            &VersionVector::default(),
            &Actor::new("kv-0", 1),
            Some(b"v".to_vec()),
            0,
        )
        .unwrap();
        let incarnation = {
            let storage = open(dir.path());
            storage.store(3, b"k", Arc::new(set.clone())).unwrap();
            storage.incarnation()
        };
        let storage = open(dir.path());
        assert_eq!(storage.incarnation(), incarnation);
        assert_eq!(*storage.load(3, b"k").unwrap(), set);
        assert!(
            storage.load(4, b"k").unwrap().is_empty(),
            "partitions are separate ranges"
        );
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path());
        let cf = storage.cf(OBJECTS_CF).unwrap();
        storage
            .db
            .put_cf(cf, record_key(0, b"bad"), b"\x01\xff\xff")
            .unwrap();
        assert!(matches!(storage.load(0, b"bad"), Err(Error::Corrupt(_))));
    }

    #[test]
    fn only_periodic_durability_stores_without_waiting() {
        let mut set = SiblingSet::default();
        let actor = Actor::new("kv-0", 1);
        set.update(&VersionVector::default(), &actor, Some(b"v".to_vec()), 0)
            .unwrap();
        let set = Arc::new(set);
        let dir = tempfile::tempdir().unwrap();
        let synced = open(dir.path());
        assert!(
            !synced.try_store_now(0, b"k", set.clone()).unwrap(),
            "a write that must be synced never runs on an async thread"
        );
        assert!(
            synced.load(0, b"k").unwrap().is_empty(),
            "nothing was written"
        );
        drop(synced);
        let dir = tempfile::tempdir().unwrap();
        let periodic = open_with(dir.path(), Durability::Periodic);
        assert!(periodic.try_store_now(0, b"k", set.clone()).unwrap());
        assert_eq!(periodic.load(0, b"k").unwrap(), set);
        drop(periodic);
        let reopened = open_with(dir.path(), Durability::Periodic);
        assert_eq!(
            reopened.load(0, b"k").unwrap(),
            set,
            "in RocksDB, not only cached"
        );
    }

    #[test]
    fn record_keys_sort_by_partition_first() {
        assert!(record_key(1, b"zzz") < record_key(2, b"a"));
        assert_eq!(record_key(0x0102, b"k"), vec![1, 2, b'k']);
    }
}
