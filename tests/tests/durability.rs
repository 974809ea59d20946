//! Acknowledged writes survive process death: kill -9 with `--durability fsync`, and a clean
//! SIGTERM with the default periodic durability.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kvcluster_tests::{KvClient, NodeProcess};
use tokio::sync::Mutex;

const KEYS: usize = 10_000;
const WRITERS: usize = 16;

fn key_of(i: usize) -> Vec<u8> {
    format!("durable-{i:05}").into_bytes()
}

fn value_of(i: usize) -> Vec<u8> {
    // Distinct, of varying length (20..=420 bytes), binary.
    let mut v = format!("v{i}:").into_bytes();
    v.extend((0..(20 + i % 400)).map(|j| ((i * 31 + j * 7) % 256) as u8));
    v
}

/// Reads every index in `indices` back with `WRITERS` concurrent readers; returns the mismatches.
async fn read_back(client: &KvClient, indices: Vec<usize>, must_exist: bool) -> Vec<String> {
    let queue = Arc::new(Mutex::new(indices));
    let problems = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (client, queue, problems) = (client.clone(), queue.clone(), problems.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(i) = queue.lock().await.pop() else {
                    break;
                };
                let got = client.get(&key_of(i)).await;
                let problem = match got.status {
                    200 if got.body == value_of(i) => None,
                    200 => Some(format!("key {i}: wrong value ({} bytes)", got.body.len())),
                    404 if !must_exist => None,
                    _ => Some(format!("key {i}: {got}")),
                };
                if let Some(p) = problem {
                    problems.lock().await.push(p);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("reader task");
    }
    Arc::try_unwrap(problems)
        .expect("readers done")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_fsync_writes_survive_kill_9() {
    // Every write is acknowledged, then kill -9.
    fsync_writes_then_kill_9(KEYS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_writes_in_flight_at_kill_9_lose_no_acknowledged_write() {
    // Kill -9 while the last tenth of the writes is still in flight.
    fsync_writes_then_kill_9(KEYS * 9 / 10).await;
}

/// Writes `KEYS` keys with `WRITERS` concurrent writers to a `--durability fsync` node, SIGKILLs it once
/// `kill_at` writes are acknowledged (or all writers are done), restarts it on the same data dir and
/// reads back every acknowledged write.
async fn fsync_writes_then_kill_9(kill_at: usize) {
    let mut node = NodeProcess::start(&["--durability", "fsync"]);
    let client = KvClient::with_timeout(&node.base_url(), Duration::from_secs(30));

    let next = Arc::new(AtomicUsize::new(0));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::with_capacity(KEYS)));
    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (client, next, acked_count, acked, outcomes) = (
            client.clone(),
            next.clone(),
            acked_count.clone(),
            acked.clone(),
            outcomes.clone(),
        );
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= KEYS {
                    break;
                }
                let outcome = match client.try_put(&key_of(i), &value_of(i), None).await {
                    Ok(resp) if resp.status == 204 => {
                        acked.lock().await.push(i);
                        acked_count.fetch_add(1, Ordering::SeqCst);
                        "204".to_owned()
                    }
                    Ok(resp) => format!("HTTP {}", resp.status),
                    Err(_) => "transport error".to_owned(),
                };
                *outcomes.lock().await.entry(outcome).or_default() += 1;
            }
        }));
    }

    let watch_deadline = Instant::now() + Duration::from_secs(300);
    while acked_count.load(Ordering::SeqCst) < kill_at && !writers.iter().all(|w| w.is_finished()) {
        assert!(
            Instant::now() < watch_deadline,
            "only {} writes acknowledged in 300 s",
            acked_count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let acked_before_kill = acked_count.load(Ordering::SeqCst);
    node.kill9();
    let killed_after = started.elapsed();
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(60), writer)
            .await
            .expect("writers end after the kill")
            .expect("writer task");
    }
    let acked: Vec<usize> = acked.lock().await.clone();
    let outcomes = outcomes.lock().await.clone();
    let attempted = next.load(Ordering::SeqCst).min(KEYS);
    println!(
        "fsync durability: {attempted} writes attempted, {} acknowledged ({acked_before_kill} when kill -9 \
         was sent after {killed_after:?}); outcomes {outcomes:?}",
        acked.len()
    );
    assert!(
        acked.len() >= kill_at,
        "expected at least {kill_at} acknowledged writes before the kill, got {}; outcomes {outcomes:?}",
        acked.len()
    );

    node.restart();
    let client = KvClient::with_timeout(&node.base_url(), Duration::from_secs(30));
    let problems = read_back(&client, acked.clone(), true).await;
    println!(
        "after restart: {} of {} acknowledged keys read back with their exact value",
        acked.len() - problems.len(),
        acked.len()
    );
    assert!(
        problems.is_empty(),
        "{} acknowledged writes lost or damaged after kill -9 (first 20): {:?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );

    // Writes that were not acknowledged may or may not be there, but never damaged.
    let mut sorted = acked.clone();
    sorted.sort_unstable();
    let unacked: Vec<usize> = (0..attempted)
        .filter(|i| sorted.binary_search(i).is_err())
        .collect();
    let count = unacked.len();
    let problems = read_back(&client, unacked, false).await;
    assert!(
        problems.is_empty(),
        "unacknowledged writes read back damaged: {problems:?}"
    );
    println!("{count} unacknowledged keys checked: each absent or exact");
}

#[tokio::test]
async fn periodic_durability_keeps_data_across_sigterm_restart() {
    let mut node = NodeProcess::start(&["--durability", "periodic"]);
    let c = node.client();
    for i in 0..500 {
        c.put_ok(&key_of(i), &value_of(i), None).await;
    }
    // Siblings and tombstones are state too.
    c.put_ok(b"siblings", b"left", None).await;
    c.put_ok(b"siblings", b"right", None).await;
    let (_, ctx) = c.get_one(&key_of(0)).await;
    assert_eq!(c.delete(&key_of(0), Some(&ctx)).await.status, 204);

    let status = node.stop();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
    node.restart();
    let c = node.client();

    let problems = read_back(&c, (1..500).collect(), true).await;
    assert!(
        problems.is_empty(),
        "lost after a clean restart: {problems:?}"
    );
    let deleted = c.get(&key_of(0)).await;
    assert_eq!(deleted.status, 404, "{deleted}");
    assert!(
        deleted.context().is_some(),
        "the tombstone survives: {deleted}"
    );
    let siblings = c.get(b"siblings").await;
    assert_eq!(siblings.status, 300, "{siblings}");
    assert_eq!(
        siblings.live_values(),
        vec![b"left".to_vec(), b"right".to_vec()]
    );
}
