//! A record that cannot be decoded is reported as 500 `corrupt_record` for its key only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvcluster_tests::NodeProcess;
use kvcluster_tests::kvapi::codes;

const PARTITIONS: u32 = 256;

/// Overwrites the stored record of `key` with garbage, straight in the stopped node's RocksDB.
fn corrupt(data_dir: &std::path::Path, key: &[u8]) {
    let db_path = data_dir.join("db");
    let opts = rocksdb::Options::default();
    let cfs = rocksdb::DB::list_cf(&opts, &db_path)
        .unwrap_or_else(|e| panic!("list column families of {}: {e}", db_path.display()));
    assert!(
        cfs.iter().any(|cf| cf == kvnode::storage::OBJECTS_CF),
        "column family {:?} not in {cfs:?}",
        kvnode::storage::OBJECTS_CF
    );
    let db = rocksdb::DB::open_cf(&opts, &db_path, &cfs).expect("open the node's RocksDB");
    let cf = db
        .cf_handle(kvnode::storage::OBJECTS_CF)
        .expect("objects column family");
    let partition = kvnode::ring::partition_of(key, PARTITIONS);
    let record_key = kvnode::storage::record_key(partition, key);
    assert!(
        db.get_cf(&cf, &record_key).expect("read record").is_some(),
        "the record of {:?} is not at partition {partition} / record_key {record_key:?}",
        String::from_utf8_lossy(key)
    );
    db.put_cf(&cf, &record_key, b"\xff\x00garbage")
        .expect("write garbage");
    db.flush_cf(&cf).expect("flush");
}

#[tokio::test]
async fn corrupt_record_answers_500_and_other_keys_still_read() {
    let partitions = PARTITIONS.to_string();
    let mut node = NodeProcess::start(&["--partitions", &partitions]);
    let c = node.client();
    c.put_ok(b"victim", b"soon garbage", None).await;
    for i in 0..20 {
        c.put_ok(
            format!("bystander-{i}").as_bytes(),
            format!("fine-{i}").as_bytes(),
            None,
        )
        .await;
    }
    let status = node.stop();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");

    corrupt(node.data_dir(), b"victim");

    node.restart();
    let c = node.client();
    let got = c.get(b"victim").await;
    got.assert_error(500, codes::CORRUPT_RECORD);
    let json = c.get_json(b"victim").await;
    json.assert_error(500, codes::CORRUPT_RECORD);

    for i in 0..20 {
        let (v, _) = c.get_one(format!("bystander-{i}").as_bytes()).await;
        assert_eq!(v, format!("fine-{i}").as_bytes());
    }
    let live = c.request("GET", "/health/live", &[], None).await;
    assert_eq!(live.status, 200, "{live}");
    assert!(
        node.is_running(),
        "a corrupt record must not crash the node"
    );
}
