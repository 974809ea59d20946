//! Backup and restore against real kvnode processes and a real S3-compatible server (`s3s-fs`,
//! installed by `scripts/install-deps.sh`) or a local directory.
//!
//! - every write acknowledged before `kvctl backup create` started, under a bounded write load
//!   during it, reads back from a cluster of another size after `kvctl backup restore`;
//! - restoring again onto live data (keys overwritten since, with their context) changes nothing;
//! - deletes come back as tombstones with their causal context, not as absent keys;
//! - a corrupt or missing object stops the restore with an error naming it;
//! - a cluster backup holds hint delivery (so a hint cannot fall between two checkpoints), and
//!   the hints in the backup are restored.
//!
//! Key count: `KVCLUSTER_BACKUP_KEYS` (default 5,000, which keeps each test near a minute on two
//! cores). The issue's 100,000 keys:
//! `KVCLUSTER_BACKUP_KEYS=100000 cargo test --workspace --locked --test backup -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvcluster_tests::{Cluster, ClusterOptions, KvClient, s3};
use tokio::task::JoinSet;

/// Keys written before the backup.
fn key_count() -> usize {
    std::env::var("KVCLUSTER_BACKUP_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
}

/// Concurrent writers and readers.
const CLIENTS: usize = 16;
/// Upper bounds of the write load that runs during the backup.
const LOAD_MAX_WRITES: usize = 50_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(120);
/// Backups are paced so that the load overlaps them.
const BACKUP_RATE: &str = "1MiB";

fn value_of(key: &str) -> Vec<u8> {
    let mut value = format!("value of {key} ").into_bytes();
    value.resize(200, b'.');
    value
}

/// Writes `keys` through the cluster's nodes, `CLIENTS` at a time; panics on a failed write.
async fn write_all(clients: &[KvClient], keys: Vec<String>) {
    let keys = Arc::new(keys);
    let mut tasks = JoinSet::new();
    for c in 0..CLIENTS {
        let (keys, client) = (keys.clone(), clients[c % clients.len()].clone());
        tasks.spawn(async move {
            for key in keys.iter().skip(c).step_by(CLIENTS) {
                client.put_ok(key.as_bytes(), &value_of(key), None).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("writer");
    }
}

/// Asserts that every key reads back with its value among the live siblings.
async fn read_back(clients: &[KvClient], keys: Vec<String>) {
    let keys = Arc::new(keys);
    let mut tasks = JoinSet::new();
    for c in 0..CLIENTS {
        let (keys, client) = (keys.clone(), clients[c % clients.len()].clone());
        tasks.spawn(async move {
            for key in keys.iter().skip(c).step_by(CLIENTS) {
                let resp = client.get_json(key.as_bytes()).await;
                assert!(
                    resp.status == 200 || resp.status == 300,
                    "acknowledged write of {key} lost after restore: {resp}"
                );
                assert!(
                    resp.live_values().contains(&value_of(key)),
                    "{key} lost its acknowledged value: {resp}"
                );
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("reader");
    }
}

/// A bounded write load: writes `load-N` keys until `stop` (or its count or time bound) and returns
/// each acknowledged key with the time of its acknowledgement.
fn start_load(clients: &[KvClient], stop: Arc<AtomicBool>) -> JoinSet<Vec<(String, Instant)>> {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for c in 0..4 {
        let (client, stop) = (clients[c % clients.len()].clone(), stop.clone());
        tasks.spawn(async move {
            let mut acked = Vec::new();
            for i in (c..LOAD_MAX_WRITES).step_by(4) {
                if stop.load(Ordering::Relaxed) || started.elapsed() > LOAD_MAX_TIME {
                    break;
                }
                let key = format!("load-{i:06}");
                if let Ok(resp) = client.try_put(key.as_bytes(), &value_of(&key), None).await
                    && resp.status == 204
                {
                    acked.push((key, Instant::now()));
                }
            }
            acked
        });
    }
    tasks
}

/// Runs kvctl with `env` and returns (success, stdout, stderr).
fn kvctl(endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = Command::new(kvcluster_tests::kvctl_bin())
        .arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run kvctl");
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    eprintln!("$ kvctl {}\n{out}{err}", args.join(" "));
    (output.status.success(), out, err)
}

/// The cluster's partition digests, node by node, to compare before and after a restore.
async fn digests(cluster: &Cluster) -> Vec<Vec<(u32, String, u64)>> {
    let mut all = Vec::new();
    for i in 0..cluster.len() {
        let digests = cluster
            .client(i)
            .try_admin_digests()
            .await
            .expect("digests");
        all.push(
            digests
                .partitions
                .into_iter()
                .map(|p| (p.partition, p.root, p.keys))
                .collect(),
        );
    }
    all
}

fn clients(cluster: &Cluster) -> Vec<KvClient> {
    (0..cluster.len())
        .map(|i| cluster.client(i).clone())
        .collect()
}

/// Backs up `source` under write load into `target`, restores into `dest` (twice, the second time
/// after overwriting keys there), and checks what must hold. `env` carries the object store's
/// settings for kvctl.
async fn backup_and_restore(
    source: &Cluster,
    dest: &Cluster,
    target: &str,
    env: &[(&str, &str)],
) -> String {
    let keys: Vec<String> = (0..key_count()).map(|i| format!("key-{i:06}")).collect();
    let started = Instant::now();
    write_all(&clients(source), keys.clone()).await;
    eprintln!("wrote {} keys in {:.1?}", keys.len(), started.elapsed());
    // Deletes with their context: they must come back as tombstones, not as absent keys.
    let deleted: Vec<String> = keys.iter().take(20).cloned().collect();
    for key in &deleted {
        let (_, context) = source.client(0).get_one(key.as_bytes()).await;
        assert_eq!(
            source
                .client(0)
                .delete(key.as_bytes(), Some(&context))
                .await
                .status,
            204
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = start_load(&clients(source), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let backup_started = Instant::now();
    let endpoint = source.node(0).base_url();
    let (ok, out, err) = {
        let (endpoint, target, env): (String, String, Vec<(String, String)>) = (
            endpoint.clone(),
            target.to_owned(),
            env.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            kvctl(
                &endpoint,
                &["backup", "create", "--target", &target, "--id", "b1"],
                &env,
            )
        })
        .await
        .expect("kvctl")
    };
    let backup_time = backup_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut load_acked = Vec::new();
    while let Some(done) = load.join_next().await {
        load_acked.extend(done.expect("load"));
    }
    assert!(ok, "backup failed: {err}");
    let summary = out
        .lines()
        .find(|l| l.contains("complete:"))
        .unwrap_or_default()
        .to_owned();
    let before: Vec<String> = load_acked
        .iter()
        .filter(|(_, at)| *at < backup_started)
        .map(|(k, _)| k.clone())
        .collect();
    let during = load_acked.len() - before.len();
    eprintln!(
        "BACKUP {target}: {summary} ({} keys, {backup_time:.1?} wall); load: {} writes acknowledged \
         before the start, {during} during the backup",
        keys.len(),
        before.len()
    );
    assert!(
        during > 0,
        "the write load did not overlap the backup: the test would not show that writes during it are harmless"
    );

    let dest_endpoint = dest.node(0).base_url();
    let restore = |dest_endpoint: String| {
        let (target, env): (String, Vec<(String, String)>) = (
            target.to_owned(),
            env.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            kvctl(
                &dest_endpoint,
                &["backup", "restore", "b1", "--target", &target],
                &env,
            )
        })
    };
    let restore_started = Instant::now();
    let (ok, _, err) = restore(dest_endpoint.clone()).await.expect("kvctl");
    assert!(ok, "restore failed: {err}");
    eprintln!(
        "RESTORE into {} nodes: {:.1?}",
        dest.len(),
        restore_started.elapsed()
    );

    let live: Vec<String> = keys[deleted.len()..].to_vec();
    read_back(&clients(dest), live.clone()).await;
    read_back(&clients(dest), before).await;
    for key in &deleted {
        let resp = dest.client(0).get_json(key.as_bytes()).await;
        assert_eq!(resp.status, 404, "deleted {key} came back: {resp}");
        assert!(
            resp.context().is_some(),
            "deleted {key} was restored without its tombstone (no context): {resp}"
        );
    }

    // Live data since the restore: overwrite some keys with their context. Restoring again must
    // neither bring the old values back nor change anything else.
    let overwritten: Vec<String> = live.iter().take(50).cloned().collect();
    for key in &overwritten {
        let (_, context) = dest.client(0).get_one(key.as_bytes()).await;
        dest.client(0)
            .put_ok(key.as_bytes(), b"newer", Some(&context))
            .await;
    }
    let digests_before = digests(dest).await;
    let (ok, out, err) = restore(dest_endpoint).await.expect("kvctl");
    assert!(ok, "second restore failed: {err}");
    assert!(
        out.contains(" 0 replica merges changed data"),
        "a second restore changed data: {out}"
    );
    assert_eq!(
        digests(dest).await,
        digests_before,
        "a second restore changed the replicas"
    );
    for key in &overwritten {
        let (value, _) = dest.client(0).get_one(key.as_bytes()).await;
        assert_eq!(
            value, b"newer",
            "restoring again brought back {key}'s old value"
        );
    }
    summary
}

fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("KVCTL_S3_ENDPOINT", endpoint.to_owned()),
    ]
}

fn options(nodes: usize, n: u32, w: u32, r: u32, env: &[(&str, String)]) -> ClusterOptions {
    let mut options = ClusterOptions::new(nodes, n, w, r).args(["--backup-rate", BACKUP_RATE]);
    for (key, value) in env {
        options = options.env(key, value);
    }
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_backup_under_load_restores_every_acknowledged_write_into_a_smaller_cluster() {
    let test = "s3_backup_under_load_restores_every_acknowledged_write_into_a_smaller_cluster";
    let Some(s3) = s3::start(test).await else {
        return;
    };
    let env = s3_env(&s3.endpoint);
    let node_env: Vec<(&str, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .cloned()
        .chain([("KVNODE_BACKUP_ENDPOINT", s3.endpoint.clone())])
        .collect();
    let source = Cluster::start_with(options(3, 3, 2, 2, &node_env)).await;
    let dest = Cluster::start_with(options(2, 2, 1, 2, &node_env)).await;
    let kvctl_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    backup_and_restore(&source, &dest, "s3://backups/kv", &kvctl_env).await;
    let (ok, out, _) = kvctl(
        &source.node(0).base_url(),
        &["backup", "list", "--target", "s3://backups/kv"],
        &kvctl_env,
    );
    assert!(
        ok && out.contains("b1") && out.contains("complete"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_backup_restores_into_a_larger_cluster_and_a_bad_object_is_named() {
    let dir = tempfile::tempdir().expect("target dir");
    let target = format!("file://{}", dir.path().display());
    // N = 1: each key lives on one node only, so the restore reads back every key only when it
    // merges the union of all members' checkpoints.
    let source = Cluster::start_with(options(3, 1, 1, 1, &[])).await;
    let dest = Cluster::start_with(options(4, 3, 2, 2, &[])).await;
    backup_and_restore(&source, &dest, &target, &[]).await;

    let files = dir.path().join("b1/nodes/kv-1/files");
    let sst = largest_file(&files);
    let name = sst
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let mut bytes = std::fs::read(&sst).expect("read sst");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&sst, &bytes).expect("corrupt sst");
    let endpoint = dest.node(0).base_url();
    let (ok, _, err) = kvctl(
        &endpoint,
        &["backup", "restore", "b1", "--target", &target],
        &[],
    );
    assert!(!ok, "a restore of a corrupt object succeeded");
    assert!(
        err.contains(&format!("b1/nodes/kv-1/files/{name} is corrupt")),
        "the error does not name the corrupt object {name}: {err}"
    );

    std::fs::remove_file(&sst).expect("remove sst");
    let (ok, _, err) = kvctl(
        &endpoint,
        &["backup", "restore", "b1", "--target", &target],
        &[],
    );
    assert!(!ok, "a restore with a missing object succeeded");
    assert!(
        err.contains(&format!("b1/nodes/kv-1/files/{name}")) && err.contains("missing"),
        "the error does not name the missing object {name}: {err}"
    );

    let (ok, out, _) = kvctl(
        &endpoint,
        &["backup", "delete", "b1", "--target", &target],
        &[],
    );
    assert!(ok, "{out}");
    let (ok, out, _) = kvctl(&endpoint, &["backup", "list", "--target", &target], &[]);
    assert!(
        ok && !out.contains("b1"),
        "a deleted backup is still listed: {out}"
    );
    assert!(
        !dir.path().join("b1").exists(),
        "a deleted backup left its folder behind"
    );
}

fn largest_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("checkpoint files")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .expect("a file")
}

/// Hints held by the live nodes among the first `live` of `cluster`.
async fn hints_pending(cluster: &Cluster, live: usize) -> u64 {
    let mut total = 0;
    for i in 0..live {
        total += cluster.client(i).admin_status().await.hints_pending;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_backup_holds_hint_delivery_and_restores_the_hints() {
    let dir = tempfile::tempdir().expect("target dir");
    let target = format!("file://{}", dir.path().display());
    let mut source = Cluster::start_with(options(3, 2, 2, 1, &[])).await;
    // With kv-2 down, writes to its keys are acknowledged with a hint on a fallback.
    source.stop(2);
    let keys: Vec<String> = (0..300).map(|i| format!("hinted-{i:04}")).collect();
    write_all(
        &[source.client(0).clone(), source.client(1).clone()],
        keys.clone(),
    )
    .await;
    let held = hints_pending(&source, 2).await;
    assert!(held > 0, "no hints were stored while kv-2 was down");

    // Hold delivery, bring kv-2 back: the hints must stay where they are until released.
    for i in 0..2 {
        let resp = source
            .client(i)
            .request(
                "POST",
                kvapi::ADMIN_HANDOFF_HOLD,
                &[("content-type", "application/json")],
                Some(br#"{"millis": 60000}"#.to_vec()),
            )
            .await;
        assert_eq!(resp.status, 200, "{resp}");
    }
    source.restart(2);
    assert!(
        source.wait_all_peers_alive(Duration::from_secs(10)).await,
        "kv-2 did not come back"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        hints_pending(&source, 2).await,
        held,
        "hints were delivered while delivery was held"
    );

    let endpoint = source.node(0).base_url();
    let (ok, _, err) = kvctl(
        &endpoint,
        &["backup", "create", "--target", &target, "--id", "b1"],
        &[],
    );
    assert!(ok, "backup failed: {err}");
    // The backup released the hold: the hints reach kv-2.
    let deadline = Instant::now() + Duration::from_secs(30);
    while hints_pending(&source, 3).await > 0 {
        assert!(
            Instant::now() < deadline,
            "hints still pending 30 s after the backup released delivery"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let dest = Cluster::start_with(options(1, 1, 1, 1, &[])).await;
    let (ok, out, err) = kvctl(
        &dest.node(0).base_url(),
        &["backup", "restore", "b1", "--target", &target],
        &[],
    );
    assert!(ok, "restore failed: {err}");
    let restored_hints: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("restored backup b1: "))
        .and_then(|l| l.split(" records and ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no totals in {out}"));
    assert_eq!(
        restored_hints, held,
        "the backup's hints were not all restored"
    );
    read_back(&clients(&dest), keys).await;
}
