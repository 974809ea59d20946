//! RocksDB figures users watch, read from RocksDB properties at scrape time.

use prometheus::{IntGauge, IntGaugeVec, Registry};

use super::{gauge_vec, reg};

/// One column family's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnFamilyStats {
    /// Column family name.
    pub name: &'static str,
    /// `rocksdb.total-sst-files-size`.
    pub sst_files_bytes: u64,
    /// `rocksdb.estimate-pending-compaction-bytes`.
    pub pending_compaction_bytes: u64,
    /// `rocksdb.cur-size-all-mem-tables`.
    pub memtable_bytes: u64,
    /// `rocksdb.block-cache-usage` (each column family has its own block cache).
    pub block_cache_usage_bytes: u64,
}

/// A snapshot of the storage engine's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Per column family.
    pub column_families: Vec<ColumnFamilyStats>,
    /// `rocksdb.estimate-live-data-size` of the objects.
    pub live_data_bytes: u64,
    /// `rocksdb.actual-delayed-write-rate` > 0: RocksDB slows writes down (a write stall).
    pub writes_delayed: bool,
    /// `rocksdb.is-write-stopped`: RocksDB stops writes until compaction catches up.
    pub writes_stopped: bool,
}

/// The gauges of [`EngineStats`].
pub(super) struct EngineGauges {
    sst_files_bytes: IntGaugeVec,
    pending_compaction_bytes: IntGaugeVec,
    memtable_bytes: IntGaugeVec,
    block_cache_usage_bytes: IntGaugeVec,
    live_data_bytes: IntGauge,
    writes_delayed: IntGauge,
    writes_stopped: IntGauge,
}

impl EngineGauges {
    pub(super) fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let per_cf = |name: &str, help: &str| gauge_vec(r, name, help, &["column_family"]);
        let gauge = |name: &str, help: &str| reg(r, IntGauge::new(name, help));
        Ok(EngineGauges {
            sst_files_bytes: per_cf(
                "kv_storage_sst_files_bytes",
                "Bytes of RocksDB's SST files, by column family.",
            )?,
            pending_compaction_bytes: per_cf(
                "kv_storage_pending_compaction_bytes",
                "RocksDB's estimate of the bytes compaction must rewrite, by column family.",
            )?,
            memtable_bytes: per_cf(
                "kv_storage_memtable_bytes",
                "Bytes of RocksDB's memtables, by column family.",
            )?,
            block_cache_usage_bytes: per_cf(
                "kv_storage_block_cache_usage_bytes",
                "Bytes held by RocksDB's block cache, by column family.",
            )?,
            live_data_bytes: gauge(
                "kv_storage_live_data_bytes",
                "RocksDB estimate of live object data in bytes.",
            )?,
            writes_delayed: gauge(
                "kv_storage_writes_delayed",
                "1 while RocksDB slows writes down (a write stall), else 0.",
            )?,
            writes_stopped: gauge(
                "kv_storage_writes_stopped",
                "1 while RocksDB stops writes until compaction catches up, else 0.",
            )?,
        })
    }

    pub(super) fn set(&self, stats: &EngineStats) {
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for cf in &stats.column_families {
            let label = [cf.name];
            self.sst_files_bytes
                .with_label_values(&label)
                .set(int(cf.sst_files_bytes));
            self.pending_compaction_bytes
                .with_label_values(&label)
                .set(int(cf.pending_compaction_bytes));
            self.memtable_bytes
                .with_label_values(&label)
                .set(int(cf.memtable_bytes));
            self.block_cache_usage_bytes
                .with_label_values(&label)
                .set(int(cf.block_cache_usage_bytes));
        }
        self.live_data_bytes.set(int(stats.live_data_bytes));
        self.writes_delayed.set(i64::from(stats.writes_delayed));
        self.writes_stopped.set(i64::from(stats.writes_stopped));
    }
}
