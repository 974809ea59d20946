use super::*;

#[test]
fn every_metric_is_exposed_with_its_name() {
    let metrics = Metrics::new();
    metrics.observe_request(Operation::Put, 204, 0.001);
    metrics.quorum_failed(Operation::Delete);
    metrics.read_siblings.observe(2.0);
    metrics
        .requests_rejected
        .with_label_values(&["in_flight"])
        .inc();
    metrics.observe_peer_rpc("kv-1", "read", 0.002, Some("timeout"));
    metrics.refresh(
        7,
        &["kv-1"],
        &[("kv-2".to_string(), 3)],
        Some(&EngineStats {
            column_families: vec![ColumnFamilyStats {
                name: "objects",
                sst_files_bytes: 10,
                ..Default::default()
            }],
            live_data_bytes: 5,
            writes_delayed: false,
            writes_stopped: true,
        }),
    );
    let text = metrics.render();
    for name in [
        "kv_requests_total{operation=\"put\",status=\"204\"} 1",
        "kv_quorum_failures_total{operation=\"delete\"} 1",
        "kv_quorum_failures_total{operation=\"get\"} 0",
        "kv_request_duration_seconds_bucket",
        "kv_cache_hits_total",
        "kv_cache_misses_total",
        "kv_cache_size_bytes",
        "kv_read_siblings_bucket",
        "kv_sibling_cap_rejections_total",
        "kv_merge_cap_rejections_total",
        "kv_storage_live_data_bytes 5",
        "kv_storage_sst_files_bytes{column_family=\"objects\"} 10",
        "kv_storage_writes_stopped 1",
        "kv_storage_writes_delayed 0",
        "kv_read_repairs_total",
        "kv_hints_pending{target=\"kv-1\"} 0",
        "kv_hints_pending{target=\"kv-2\"} 3",
        "kv_hints_delivered_total",
        "kv_antientropy_keys_repaired_total",
        "kv_antientropy_last_sweep_timestamp_seconds",
        "kv_antientropy_last_sweep_duration_seconds",
        "kv_transfer_partitions_gained",
        "kv_transfer_partitions_pending",
        "kv_tombstones_purged_total",
        "kv_watchers 0",
        "kv_watchers_refused_total 0",
        "kv_hints_expired_total",
        "kv_hints_corrupt_total",
        "kv_requests_rejected_total{reason=\"in_flight\"} 1",
        "kv_wal_sync_failures_total 0",
        "kv_peer_rpc_duration_seconds_count{peer=\"kv-1\",rpc=\"read\"} 1",
        "kv_peer_rpc_errors_total{error=\"timeout\",peer=\"kv-1\",rpc=\"read\"} 1",
        "kv_ring_epoch 7",
        "kv_build_info{commit=",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    #[cfg(target_os = "linux")]
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
}

#[test]
fn series_of_departed_peers_and_empty_foreign_targets_are_dropped() {
    let metrics = Metrics::new();
    metrics.observe_peer_rpc("kv-1", "ping", 0.001, None);
    metrics.observe_peer_rpc("kv-9", "ping", 0.001, Some("connection"));
    metrics.refresh(1, &["kv-1", "kv-9"], &[("kv-8".to_string(), 2)], None);
    assert!(
        metrics
            .render()
            .contains("kv_hints_pending{target=\"kv-8\"} 2")
    );
    metrics.refresh(2, &["kv-1"], &[], None);
    let text = metrics.render();
    assert!(text.contains("peer=\"kv-1\""), "{text}");
    assert!(!text.contains("kv-9"), "departed peer kept:\n{text}");
    assert!(
        !text.contains("kv-8"),
        "a target without hints kept:\n{text}"
    );
}
