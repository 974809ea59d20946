//! Hostile-but-authenticated peers and operators: real `kvnode` processes get peer messages and admin
//! configs a buggy or compromised member could send (out-of-range partitions, huge hint targets,
//! purges from non-owners, epoch jumps, hints past their caps or their TTL) and must refuse them
//! without losing data or their ability to restart and change membership.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvcluster_tests::kvapi::{ClusterConfig, Member, codes};
use kvcluster_tests::{Cluster, ClusterOptions, NodeProcess, metric_sum};
use kvnode::causality::{Actor, SiblingSet, VersionVector};
use kvnode::metrics::Metrics;
use kvnode::ring::partition_of;
use kvnode::rpc::items::Write;
use kvnode::rpc::{self, RequestBody, ResponseBody, RpcRequest, RpcResponse};
use kvnode::storage::hints::{Hint, HintCaps};
use kvnode::storage::{Durability, Storage};

const PARTITIONS: u32 = 256;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one peer message to the node behind `client` as member `sender` at `epoch`, and returns
/// the answer. Every test goes through here, so moving peers to their own (mTLS) port changes this
/// function only.
async fn send_peer(
    node: &NodeProcess,
    sender: &str,
    epoch: u64,
    body: RequestBody,
) -> ResponseBody {
    let message = rpc::encode(&RpcRequest {
        cluster: "test".into(),
        epoch,
        sender: sender.into(),
        body,
    });
    let resp = node
        .peer_client()
        .request("POST", rpc::RPC_PATH, &[], Some(message))
        .await;
    assert_eq!(resp.status, 200, "{resp}");
    let answer: RpcResponse = rpc::decode(&resp.body).expect("an RpcResponse");
    answer.body
}

/// Asserts `answer` is a 400 `bad_rpc` refusal whose message mentions `about`.
fn assert_refused(answer: &ResponseBody, about: &str) {
    match answer {
        ResponseBody::Failed { status, error } => {
            assert_eq!(
                (*status, error.error.as_str()),
                (400, codes::BAD_RPC),
                "{error:?}"
            );
            assert!(
                error.message.contains(about),
                "{:?} lacks {about:?}",
                error.message
            );
        }
        other => panic!("expected a refusal mentioning {about:?}, got {other:?}"),
    }
}

/// The first key (`{prefix}-{i}`) that falls in `partition`.
fn key_in(partition: u16, prefix: &str) -> Vec<u8> {
    (0u32..)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .find(|k| partition_of(k, PARTITIONS) == partition)
        .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A state of one value (or, with `None`, one tombstone) written at `written_at_ms`.
fn state(value: Option<&[u8]>, written_at_ms: u64) -> SiblingSet {
    let mut set = SiblingSet::default();
    set.update(
        &VersionVector::default(),
        &Actor::new("kv-0", 0x7e57),
        value.map(<[u8]>::to_vec),
        written_at_ms,
    )
    .unwrap();
    set
}

/// The preference list of every partition, as node `via` sees it.
async fn owners(cluster: &Cluster, via: usize) -> Vec<Vec<String>> {
    cluster
        .client(via)
        .admin_ring()
        .await
        .partitions
        .into_iter()
        .map(|p| p.replicas)
        .collect()
}

/// The first partition whose preference list is exactly `wanted` (in any order).
async fn partition_owned_by(cluster: &Cluster, wanted: &[usize]) -> u16 {
    let mut wanted: Vec<String> = wanted.iter().map(|&i| cluster.id(i)).collect();
    wanted.sort();
    owners(cluster, 0)
        .await
        .into_iter()
        .position(|mut list| {
            list.sort();
            list == wanted
        })
        .expect("a partition with that preference list") as u16
}

async fn metric(cluster: &Cluster, i: usize, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&cluster.client(i).metrics().await, name, labels).unwrap_or(0.0)
}

/// This node's state of `key` in `partition`, read as a peer would.
async fn peer_read(cluster: &Cluster, i: usize, partition: u16, key: &[u8]) -> SiblingSet {
    let body = RequestBody::Read {
        partition,
        key: key.to_vec(),
    };
    match send_peer(cluster.node(i), &cluster.id(1), 1, body).await {
        ResponseBody::State(set) => set,
        other => panic!("read answered {other:?}"),
    }
}

/// Adds a node to `cluster` and waits until the ring settled with it: membership still changes.
async fn membership_still_changes(cluster: &mut Cluster, from_epoch: u64) {
    let members: Vec<usize> = (0..cluster.len()).collect();
    let added = cluster.add_node().await;
    // The cluster's config now names the added node.
    let grown = cluster.config_at(from_epoch + 1);
    let resp = cluster.write_config(0, &grown).await;
    assert_eq!(
        resp.status, 200,
        "a normal membership change was refused: {resp}"
    );
    let all: Vec<usize> = members.into_iter().chain([added]).collect();
    let settled = cluster
        .wait_settled(&all, grown.epoch + 1, SETTLE_TIMEOUT)
        .await;
    assert!(
        settled.is_some(),
        "the ring did not settle with the added node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hint_for_a_huge_target_is_refused_and_the_node_still_restarts() {
    let mut cluster = Cluster::start(2, 2, 1, 1).await;
    let partition = 7;
    let hint = Hint {
        partition,
        key: key_in(partition, "h"),
        set: state(Some(b"v"), now_ms()),
    };
    let body = RequestBody::StoreHint {
        target: "x".repeat(70_000),
        hint: hint.clone(),
    };
    let answer = send_peer(cluster.node(0), &cluster.id(1), 1, body).await;
    assert_refused(&answer, "hint target refused");
    for (target, about) in [
        (cluster.id(0), "for itself"),
        ("kv-9".into(), "not a member"),
    ] {
        let body = RequestBody::StoreHint {
            target,
            hint: hint.clone(),
        };
        assert_refused(
            &send_peer(cluster.node(0), &cluster.id(1), 1, body).await,
            about,
        );
    }
    assert_eq!(cluster.client(0).admin_status().await.hints_pending, 0);
    let refused = metric(
        &cluster,
        0,
        "kv_peer_messages_refused_total",
        &[("reason", "hint_target")],
    )
    .await;
    assert_eq!(refused, 3.0);
    cluster.stop(0);
    cluster.restart(0);
    let resp = cluster.client(0).get(b"after-restart").await;
    assert_eq!(resp.status, 404, "the node serves again: {resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_stored_hint_is_dropped_at_start_instead_of_stopping_the_node() {
    let mut cluster = Cluster::start(2, 2, 1, 1).await;
    cluster.stop(0);
    {
        let db_path = cluster.node(0).data_dir().join("db");
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, &db_path).unwrap();
        let db = rocksdb::DB::open_cf(&opts, &db_path, &cfs).unwrap();
        let cf = db.cf_handle(kvnode::storage::HINTS_CF).unwrap();
        // What a 70,000-byte target left behind when its length was stored as a u16.
        let mut key = (70_000u32 as u16).to_be_bytes().to_vec();
        key.extend(std::iter::repeat_n(b'x', 70_000));
        key.extend(1u64.to_be_bytes());
        db.put_cf(&cf, &key, b"\x01garbage").unwrap();
        db.flush_cf(&cf).unwrap();
    }
    cluster.restart(0);
    assert_eq!(cluster.client(0).admin_status().await.hints_pending, 0);
    assert_eq!(
        metric(&cluster, 0, "kv_hints_corrupt_total", &[]).await,
        1.0
    );
    cluster
        .client(0)
        .put_ok(b"still-serving", b"yes", None)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_range_partitions_foreign_keys_and_strangers_are_refused() {
    let cluster = Cluster::start(2, 2, 1, 1).await;
    let c = cluster.client(0);
    let me = cluster.id(1);
    let hint = |partition| Hint {
        partition,
        key: b"k".to_vec(),
        set: state(Some(b"v"), now_ms()),
    };
    let cases = [
        (
            RequestBody::StoreHint {
                target: cluster.id(1),
                hint: hint(65_535),
            },
            "partition 65535 is out of range",
        ),
        (
            RequestBody::DeliverHints(vec![hint(65_535)]),
            "partition 65535 is out of range",
        ),
        (
            RequestBody::Merge {
                partition: 300,
                key: b"k".to_vec(),
                set: state(Some(b"forged"), now_ms()),
            },
            "partition 300 is out of range",
        ),
        (
            RequestBody::MergeBatch {
                partition: 256,
                records: vec![(b"k".to_vec(), state(Some(b"forged"), now_ms()))],
            },
            "partition 256 is out of range",
        ),
        (
            RequestBody::Merge {
                partition: partition_of(b"k", PARTITIONS).wrapping_add(1) % 256,
                key: b"k".to_vec(),
                set: state(Some(b"forged"), now_ms()),
            },
            "was sent as one of partition",
        ),
        (
            RequestBody::FetchSegments {
                partition: 1,
                segments: vec![5000],
                after: None,
                max_bytes: 1 << 20,
            },
            "segments must be",
        ),
    ];
    for (body, about) in cases {
        assert_refused(&send_peer(cluster.node(0), &me, 1, body).await, about);
    }
    let stranger = send_peer(
        cluster.node(0),
        "kv-99",
        1,
        RequestBody::Summary { partition: 1 },
    )
    .await;
    assert_refused(&stranger, "is not a member");
    let resp = c.get(b"k").await;
    assert_eq!(resp.status, 404, "no forged write landed: {resp}");
    let refused = metric(&cluster, 0, "kv_peer_messages_refused_total", &[]).await;
    assert_eq!(refused, 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_messages_past_their_bounds_are_refused_whole() {
    let cluster = Cluster::start(2, 2, 1, 1).await;
    let me = cluster.id(1);
    let key = b"k".to_vec();
    let partition = partition_of(&key, PARTITIONS);
    let write = |ttl_ms| Write {
        key: key.clone(),
        context: VersionVector::default(),
        value: Some(b"forged".to_vec()),
        ttl_ms,
    };
    let list = |partitions: Vec<u16>, limit| RequestBody::List {
        partitions,
        prefix: Vec::new(),
        start: Vec::new(),
        limit,
        max_bytes: 1 << 20,
        values: true,
    };
    let over = kvapi::batch::MAX_BATCH_ITEMS + 1;
    let cases = [
        (
            RequestBody::ReadMany(vec![(partition, key.clone()); over]),
            "above the batch limit",
        ),
        (
            RequestBody::MergeMany(vec![
                Hint {
                    partition,
                    key: key.clone(),
                    set: state(Some(b"forged"), now_ms()),
                };
                over
            ]),
            "above the batch limit",
        ),
        (
            RequestBody::CoordinateMany {
                writes: vec![write(None); over],
                w: None,
                timeout_ms: 1000,
            },
            "above the batch limit",
        ),
        (
            RequestBody::CoordinateMany {
                writes: vec![write(Some(10))],
                w: None,
                timeout_ms: 1000,
            },
            "ttl of 10 ms",
        ),
        (list(vec![0, 1], 1001), "limit must be in 1..=1000"),
        (list(vec![0, 1], 0), "limit must be in 1..=1000"),
        (list(vec![1, 0], 10), "must be increasing"),
        (list(vec![0, 256], 10), "partition 256 is out of range"),
    ];
    for (body, about) in cases {
        assert_refused(&send_peer(cluster.node(0), &me, 1, body).await, about);
    }
    assert_eq!(
        cluster.client(0).get(b"k").await.status,
        404,
        "no forged write landed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_from_a_non_owner_is_refused_and_the_tombstone_survives() {
    let cluster = Cluster::start(3, 2, 2, 1).await;
    let partition = partition_owned_by(&cluster, &[0, 1]).await;
    let dead = key_in(partition, "dead");
    let live = key_in(partition, "live");
    cluster.client(0).put_ok(&live, b"alive", None).await;
    cluster.client(0).put_ok(&dead, b"doomed", None).await;
    let (_, context) = cluster.client(0).get_one(&dead).await;
    assert_eq!(
        cluster.client(0).delete(&dead, Some(&context)).await.status,
        204
    );
    let tombstone = peer_read(&cluster, 0, partition, &dead).await;
    assert!(tombstone.siblings().iter().all(|s| s.is_tombstone()));
    let live_state = peer_read(&cluster, 0, partition, &live).await;
    let body = RequestBody::PurgeTombstones {
        partition,
        keys: vec![
            (dead.clone(), tombstone.context().clone()),
            (live.clone(), live_state.context().clone()),
        ],
    };
    // kv-2 is a member but does not hold the partition.
    let answer = send_peer(cluster.node(0), &cluster.id(2), 1, body).await;
    assert_refused(&answer, "needs the sender and kv-0 to both hold it");
    assert_eq!(
        peer_read(&cluster, 0, partition, &dead).await,
        tombstone,
        "the tombstone was purged on a non-owner's word"
    );
    let (value, _) = cluster.client(0).get_one(&live).await;
    assert_eq!(value, b"alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_epoch_jump_in_a_ping_is_refused_and_membership_still_changes() {
    let mut cluster = Cluster::start(2, 2, 1, 1).await;
    let answer = send_peer(cluster.node(0), &cluster.id(1), u64::MAX, RequestBody::Ping).await;
    assert_refused(&answer, "past this node's epoch 1");
    let answer = send_peer(cluster.node(0), &cluster.id(1), 1 + 1001, RequestBody::Ping).await;
    assert_refused(&answer, "past this node's epoch 1");
    assert_eq!(
        metric(
            &cluster,
            0,
            "kv_peer_messages_refused_total",
            &[("reason", "epoch_jump")]
        )
        .await,
        2.0
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.client(0).admin_cluster().await.epoch, 1);
    membership_still_changes(&mut cluster, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_configs_with_far_epochs_or_too_many_members_are_refused() {
    let mut cluster = Cluster::start(1, 1, 1, 1).await;
    let c = cluster.client(0).clone();
    let refused = |config: ClusterConfig, about: &'static str| {
        let c = c.clone();
        async move {
            let resp = c.put_admin_cluster(&config).await;
            let body = resp.assert_error(400, codes::BAD_CONFIG);
            assert!(body.message.contains(about), "{resp}");
        }
    };
    refused(
        cluster.config_at(u64::MAX),
        "above the highest allowed epoch",
    )
    .await;
    refused(cluster.config_at(1 + 1001), "jumps more than 1000").await;
    let mut crowded = cluster.config_at(2);
    crowded.members = (0..1000)
        .map(|i| Member {
            id: format!("kv-{i}"),
            address: format!("127.0.0.1:{}", 10_000 + i),
            peer_address: format!("127.0.0.1:{}", 20_000 + i),
        })
        .collect();
    refused(crowded, "at most 256").await;
    let mut long_id = cluster.config_at(2);
    long_id.members[0].id = "k".repeat(70_000);
    refused(long_id, "ids are 1..=63 bytes").await;
    assert_eq!(c.admin_cluster().await.epoch, 1);
    membership_still_changes(&mut cluster, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_hint_holder_refuses_and_the_write_misses_its_quorum() {
    let cap = 3;
    let mut cluster = Cluster::start_with(
        ClusterOptions::new(3, 2, 2, 1).args(["--max-hints-per-target", &cap.to_string()]),
    )
    .await;
    // Keys held by kv-0 and kv-1: with kv-1 down, kv-2 is the only fallback.
    let partition = partition_owned_by(&cluster, &[0, 1]).await;
    cluster.kill9(1);
    for i in 0..cap {
        let resp = cluster
            .client(0)
            .put(&key_in(partition, &format!("w{i}")), b"v", None)
            .await;
        assert_eq!(resp.status, 204, "write {i} within the cap: {resp}");
    }
    assert_eq!(cluster.client(2).admin_status().await.hints_pending, cap);
    let resp = cluster
        .client(0)
        .put(&key_in(partition, "over"), b"v", None)
        .await;
    let body = resp.assert_error(503, codes::QUORUM_NOT_REACHED);
    assert_eq!((body.replied, body.required), (Some(1), Some(2)), "{resp}");
    assert_eq!(cluster.client(2).admin_status().await.hints_pending, cap);
    assert_eq!(
        metric(&cluster, 2, "kv_hints_refused_total", &[("cap", "count")]).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hints_past_their_ttl_are_dropped_and_counted() {
    let mut cluster = Cluster::start_with(ClusterOptions::new(3, 2, 2, 1).args([
        "--hint-ttl",
        "2s",
        "--anti-entropy-interval",
        "0s",
    ]))
    .await;
    let partition = partition_owned_by(&cluster, &[0, 1]).await;
    cluster.kill9(1);
    for i in 0..2 {
        let resp = cluster
            .client(0)
            .put(&key_in(partition, &format!("t{i}")), b"v", None)
            .await;
        assert_eq!(resp.status, 204, "{resp}");
    }
    assert_eq!(cluster.client(2).admin_status().await.hints_pending, 2);
    let expired = cluster
        .wait_status(2, Duration::from_secs(10), |s| s.hints_pending == 0)
        .await;
    assert!(expired.is_some(), "hints outlived their TTL");
    assert_eq!(
        metric(&cluster, 2, "kv_hints_expired_total", &[]).await,
        2.0
    );
}

/// Stores `hint` for `target` straight into the storage of stopped node `i`, past every peer check:
/// a hint its target will not take (the key is not of the partition it names), so it stays pending
/// until its TTL.
fn plant_undeliverable_hint(cluster: &Cluster, i: usize, target: &str, partition: u16) {
    let storage = Storage::open(
        cluster.node(i).data_dir(),
        Durability::Fsync,
        0,
        8 << 20,
        Arc::new(Metrics::new()),
    )
    .expect("open the stopped node's storage");
    let other = (partition + 1) % PARTITIONS as u16;
    let hint = Hint {
        partition,
        key: key_in(other, "mislabelled"),
        set: state(Some(b"late"), now_ms()),
    };
    let caps = HintCaps {
        max_count: 1,
        max_bytes: 1 << 20,
    };
    storage
        .store_hint(target, &hint, caps)
        .expect("store the hint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tombstone_is_not_purged_while_a_hint_for_its_partition_is_pending() {
    let mut cluster = Cluster::start_with(ClusterOptions::new(4, 2, 1, 1).args([
        "--anti-entropy-interval",
        "200ms",
        "--hint-ttl",
        "8s",
        "--tombstone-grace",
        "9s",
    ]))
    .await;
    let partition = partition_owned_by(&cluster, &[0, 1]).await;
    // kv-2, which does not hold the partition, holds a hint of it for kv-1 that kv-1 refuses. It is
    // planted first: a tombstone merged earlier may rightly be purged before the hint exists.
    cluster.stop(2);
    plant_undeliverable_hint(&cluster, 2, &cluster.id(1), partition);
    let planted = Instant::now();
    cluster.restart(2);
    assert_eq!(cluster.client(2).admin_status().await.hints_pending, 1);
    // Then a tombstone written long ago, on both owners: past any grace.
    let dead = key_in(partition, "dead");
    let tombstone = state(None, 1_000);
    for i in [0, 1] {
        let body = RequestBody::Merge {
            partition,
            key: dead.clone(),
            set: tombstone.clone(),
        };
        let answer = send_peer(cluster.node(i), &cluster.id(2), 1, body).await;
        assert!(matches!(answer, ResponseBody::Merged), "{answer:?}");
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        planted.elapsed() < Duration::from_secs(7),
        "the hint may have expired already"
    );
    let purged = metric(&cluster, 0, "kv_tombstones_purged_total", &[]).await
        + metric(&cluster, 1, "kv_tombstones_purged_total", &[]).await;
    assert_eq!(
        purged, 0.0,
        "a tombstone was purged while a hint for its partition was pending"
    );
    assert_eq!(peer_read(&cluster, 0, partition, &dead).await, tombstone);
    assert_eq!(cluster.client(2).admin_status().await.hints_pending, 1);

    // Once the hint expired, the purge goes ahead.
    let t0 = Instant::now();
    while !peer_read(&cluster, 0, partition, &dead).await.is_empty() {
        assert!(
            t0.elapsed() < SETTLE_TIMEOUT,
            "the tombstone was never purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        metric(&cluster, 2, "kv_hints_expired_total", &[]).await,
        1.0
    );
}
