//! Crash cycles: a `--durability fsync` node is SIGKILLed a hundred times in the middle of a write
//! load and restarted on the same data directory; after every restart each key must still hold its
//! last acknowledged value (or the write that was in flight at the kill), and nothing else.
//!
//! The kill points are drawn from a seeded RNG: the seed is printed first, and `KVCHAOS_SEED=<seed>`
//! replays the same load lengths. Figures are printed with `eprintln!` (see them with `--nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvcluster_tests::{KvClient, NodeProcess, wait_for_status};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// Kill / restart cycles.
const CYCLES: usize = 100;
/// Keys overwritten round-robin by the writer.
const KEYS: usize = 128;
/// Milliseconds of write load before each kill (drawn uniformly, inclusive).
const LOAD_MS: (u64, u64) = (30, 200);
/// Concurrent readers of the read-back after each restart.
const READERS: usize = 8;
/// Request timeout of the clients: far above any correct answer, so a hung node fails the test.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the writer may take to notice the kill.
const WRITER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restarted node may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

fn key_of(i: usize) -> Vec<u8> {
    format!("crash-{i:03}").into_bytes()
}

/// The value of write `seq` (global, increasing) made in `cycle`: ordered like `seq`.
fn value_of(cycle: usize, seq: usize) -> Vec<u8> {
    format!("{cycle:03}-{seq:09}").into_bytes()
}

/// `(cycle, seq)` of a value made by [`value_of`]; `None` for anything else.
fn parse_value(value: &[u8]) -> Option<(usize, usize)> {
    let text = std::str::from_utf8(value).ok()?;
    let (cycle, seq) = text.split_once('-')?;
    let parsed = (cycle.parse().ok()?, seq.parse().ok()?);
    (value_of(parsed.0, parsed.1) == value).then_some(parsed)
}

/// What the test knows about one key.
#[derive(Debug, Default)]
struct KeyState {
    /// Context of the last acknowledged write, or of the read-back after the last restart.
    context: Option<String>,
    /// Seq of the newest value known to be durable: the last acknowledged write, or the newest value
    /// read back after a restart (an in-flight write that landed). Nothing older may be live.
    floor: Option<usize>,
    /// Writes attempted after `floor` without a 204 (the one in flight at the kill): they may or may
    /// not have landed, until the next read-back settles it.
    pending: BTreeSet<usize>,
}

/// State shared by the writer and the checker.
#[derive(Debug, Default)]
struct History {
    keys: Vec<KeyState>,
    /// `(key, cycle)` of every attempted write, indexed by seq.
    attempts: Vec<(usize, usize)>,
    next_key: usize,
    acked: usize,
    /// Outcomes of every write: "204", "HTTP 503", "transport error", ...
    outcomes: BTreeMap<String, usize>,
    /// Answers other than 204 (unexpected from a healthy node), with their key and seq.
    unexpected: Vec<String>,
}

/// What a key read back as: live values and context.
struct ReadBack {
    key: usize,
    status: u16,
    values: Vec<Vec<u8>>,
    context: Option<String>,
}

/// Overwrites keys round-robin, each write carrying the key's last known context, until `stop` is
/// set or a request fails at the transport level (the kill). Returns how long the first
/// acknowledgement took, if there was one.
async fn writer(
    client: KvClient,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    cycle: usize,
) -> Option<Duration> {
    let started = Instant::now();
    let mut first_ack = None;
    while !stop.load(Ordering::SeqCst) {
        let (i, seq, context) = {
            let mut h = history.lock().unwrap();
            let i = h.next_key % KEYS;
            h.next_key += 1;
            let seq = h.attempts.len();
            h.attempts.push((i, cycle));
            h.keys[i].pending.insert(seq);
            (i, seq, h.keys[i].context.clone())
        };
        let result = client
            .try_put(&key_of(i), &value_of(cycle, seq), context.as_deref())
            .await;
        let mut h = history.lock().unwrap();
        match result {
            Ok(resp) if resp.status == 204 => {
                let k = &mut h.keys[i];
                k.context = Some(resp.expect_context());
                k.floor = Some(seq);
                // The writer is sequential: every pending write of this key is older, and this
                // write's context (from the last ack or read-back) covered all of them that the
                // node could hold. Only a non-204 answer in between could leave one as a sibling,
                // and such answers fail the test on their own.
                k.pending.clear();
                h.acked += 1;
                first_ack.get_or_insert(started.elapsed());
                *h.outcomes.entry("204".to_owned()).or_default() += 1;
            }
            Ok(resp) => {
                *h.outcomes
                    .entry(format!("HTTP {}", resp.status))
                    .or_default() += 1;
                h.unexpected
                    .push(format!("cycle {cycle}, key {i}, seq {seq}: {resp}"));
            }
            Err(_) => {
                *h.outcomes.entry("transport error".to_owned()).or_default() += 1;
                break;
            }
        }
    }
    first_ack
}

/// Reads every key back (JSON form) with [`READERS`] concurrent readers.
async fn read_back(client: &KvClient) -> Vec<ReadBack> {
    let queue = Arc::new(Mutex::new((0..KEYS).collect::<Vec<_>>()));
    let mut tasks = Vec::new();
    for _ in 0..READERS {
        let (client, queue) = (client.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let Some(i) = queue.lock().unwrap().pop() else {
                    break;
                };
                let resp = client.get_json(&key_of(i)).await;
                let values = match resp.status {
                    200 | 300 => resp.live_values(),
                    404 => Vec::new(),
                    _ => panic!("read-back of key {i}: expected 200, 300 or 404, got {resp}"),
                };
                out.push(ReadBack {
                    key: i,
                    status: resp.status,
                    values,
                    context: resp.context(),
                });
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(KEYS);
    for task in tasks {
        all.extend(task.await.expect("read-back task"));
    }
    all
}

/// Checks the read-back of one cycle against the history, then makes it the new known state:
/// returns (violations, in-flight writes found landed).
fn check_and_settle(h: &mut History, reads: Vec<ReadBack>, cycle: usize) -> (Vec<String>, usize) {
    let mut violations = Vec::new();
    let mut landed = 0;
    for read in reads {
        let i = read.key;
        let k = &h.keys[i];
        let shown: Vec<String> = read
            .values
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let what = || {
            format!(
                "cycle {cycle}, key {i}: HTTP {} live {shown:?}; last durable seq {:?}, pending {:?}",
                read.status, k.floor, k.pending
            )
        };
        let mut newest = None;
        for value in &read.values {
            let Some((vcycle, seq)) = parse_value(value) else {
                violations.push(format!("never-written value: {}", what()));
                continue;
            };
            if h.attempts.get(seq) != Some(&(i, vcycle)) {
                violations.push(format!("never-written value: {}", what()));
            } else if k.floor.is_some_and(|f| seq < f) {
                violations.push(format!("value older than the last durable one: {}", what()));
            } else if Some(seq) != k.floor && !k.pending.contains(&seq) {
                violations.push(format!(
                    "value of a write that had not landed before reappeared: {}",
                    what()
                ));
            } else {
                newest = newest.max(Some(seq));
            }
        }
        if let Some(floor) = k.floor
            && newest.is_none_or(|n| n < floor)
        {
            violations.push(format!("LOST acknowledged write: {}", what()));
        }
        if newest.is_some_and(|n| k.floor.is_none_or(|f| n > f)) {
            landed += 1;
        }
        let k = &mut h.keys[i];
        k.floor = k.floor.max(newest);
        k.pending.clear();
        k.context = read.context;
    }
    (violations, landed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_kill9_cycles_lose_no_fsynced_write() {
    let seed = kvcluster_tests::chaos::seed("hundred_kill9_cycles_lose_no_fsynced_write");
    eprintln!(
        "crash cycles: {CYCLES} cycles, {KEYS} keys, {}..={} ms of load per cycle",
        LOAD_MS.0, LOAD_MS.1
    );
    let mut rng = SmallRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut node = NodeProcess::start(&["--durability", "fsync"]);
    let mut client = KvClient::with_timeout(&node.base_url(), CLIENT_TIMEOUT);
    let history = Arc::new(Mutex::new(History {
        keys: (0..KEYS).map(|_| KeyState::default()).collect(),
        ..History::default()
    }));

    let mut restart_times = Vec::with_capacity(CYCLES);
    let mut read_back_time = Duration::ZERO;
    let mut landed_total = 0;
    let mut violations = Vec::new();
    let mut min_acked_in_cycle = usize::MAX;
    let mut first_acks = Vec::with_capacity(CYCLES);
    let mut cycles_without_ack = 0;
    for cycle in 0..CYCLES {
        let acked_before = history.lock().unwrap().acked;
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(writer(client.clone(), history.clone(), stop.clone(), cycle));
        let load = Duration::from_millis(rng.random_range(LOAD_MS.0..=LOAD_MS.1));
        tokio::time::sleep(load).await;
        assert!(
            !task.is_finished(),
            "cycle {cycle}: the writer stopped before the kill (after {load:?}); outcomes {:?}",
            history.lock().unwrap().outcomes
        );
        node.kill9();
        stop.store(true, Ordering::SeqCst);
        let first_ack = tokio::time::timeout(WRITER_STOP_TIMEOUT, task)
            .await
            .unwrap_or_else(|_| {
                panic!("cycle {cycle}: the writer did not stop within {WRITER_STOP_TIMEOUT:?} of the kill")
            })
            .expect("writer task");
        match first_ack {
            Some(t) => first_acks.push(t),
            None => cycles_without_ack += 1,
        }
        min_acked_in_cycle = min_acked_in_cycle.min(history.lock().unwrap().acked - acked_before);

        let t = Instant::now();
        tokio::task::block_in_place(|| node.restart());
        client = KvClient::with_timeout(&node.base_url(), CLIENT_TIMEOUT);
        assert!(
            wait_for_status(
                &client,
                kvcluster_tests::kvapi::HEALTH_READY,
                200,
                READY_TIMEOUT
            )
            .await,
            "cycle {cycle}: the restarted node was not ready within {READY_TIMEOUT:?}"
        );
        restart_times.push(t.elapsed());

        let t = Instant::now();
        let reads = read_back(&client).await;
        read_back_time += t.elapsed();
        let (found, landed) = check_and_settle(&mut history.lock().unwrap(), reads, cycle);
        landed_total += landed;
        if !found.is_empty() {
            eprintln!(
                "cycle {cycle} (load {load:?}): {} violations, first: {}",
                found.len(),
                found[0]
            );
        }
        violations.extend(found);
    }

    let total = started.elapsed();
    // The node's own complaints across all its lives, for the record (not asserted).
    let log = std::fs::read_to_string(node.temp_dir().join("node.log")).unwrap_or_default();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    eprintln!(
        "node log: {} lines, {} WARN/ERROR lines{}",
        log.lines().count(),
        complaints.len(),
        complaints
            .iter()
            .take(5)
            .map(|l| format!("\n  {l}"))
            .collect::<String>()
    );
    let h = history.lock().unwrap();
    let attempted = h.attempts.len();
    let lost = violations.iter().filter(|v| v.starts_with("LOST")).count();
    restart_times.sort();
    let mean_restart = restart_times.iter().sum::<Duration>() / CYCLES as u32;
    eprintln!(
        "crash cycles: {CYCLES} cycles in {total:?} (seed {seed}); writes attempted {attempted}, acknowledged \
         {}, fewest acknowledged in a cycle {min_acked_in_cycle}; in-flight writes found landed {landed_total}; \
         outcomes {:?}; lost {lost}; violations {}; restart mean {mean_restart:?}, median {:?}, max {:?}; \
         read-back mean {:?}; first acknowledgement of a cycle (after ready) mean {:?}, max {:?}, \
         {cycles_without_ack} cycles killed before their first acknowledgement",
        h.acked,
        h.outcomes,
        violations.len(),
        restart_times[CYCLES / 2],
        restart_times[CYCLES - 1],
        read_back_time / CYCLES as u32,
        first_acks.iter().sum::<Duration>() / first_acks.len().max(1) as u32,
        first_acks.iter().max().copied().unwrap_or_default(),
    );
    assert!(
        violations.is_empty(),
        "{} violations after {CYCLES} kill -9 cycles (lost {lost}); replay with KVCHAOS_SEED={seed}. \
         First 10:\n{}",
        violations.len(),
        violations[..violations.len().min(10)].join("\n")
    );
    assert!(
        h.unexpected.is_empty(),
        "writes answered neither 204 nor a transport error (first 10; replay with KVCHAOS_SEED={seed}):\n{}",
        h.unexpected[..h.unexpected.len().min(10)].join("\n")
    );
    assert!(
        h.acked >= CYCLES,
        "expected at least one acknowledged write per cycle on average, got {} in {CYCLES} cycles",
        h.acked
    );
}

#[test]
fn values_parse_back_and_sort_like_their_seq() {
    assert_eq!(parse_value(&value_of(7, 1234)), Some((7, 1234)));
    assert!(value_of(0, 9) < value_of(0, 10));
    assert_eq!(parse_value(b"07-1234"), None);
    assert_eq!(parse_value(b"garbage"), None);
}

#[test]
fn the_read_back_check_flags_lost_stale_and_never_written_values() {
    let read = |key, values: &[Vec<u8>]| ReadBack {
        key,
        status: if values.is_empty() { 404 } else { 200 },
        values: values.to_vec(),
        context: None,
    };
    let history = || {
        let mut h = History {
            keys: (0..2).map(|_| KeyState::default()).collect(),
            ..History::default()
        };
        // Key 0: seq 0 and 1 acknowledged, seq 2 in flight at the kill. Key 1: seq 3 acknowledged.
        h.attempts = vec![(0, 0), (0, 0), (0, 0), (1, 0)];
        h.keys[0].floor = Some(1);
        h.keys[0].pending.insert(2);
        h.keys[1].floor = Some(3);
        h
    };
    for good in [value_of(0, 1), value_of(0, 2)] {
        let mut h = history();
        let (found, _) = check_and_settle(
            &mut h,
            vec![read(0, &[good]), read(1, &[value_of(0, 3)])],
            0,
        );
        assert_eq!(found, Vec::<String>::new());
    }
    let mut h = history();
    let (found, landed) = check_and_settle(&mut h, vec![read(0, &[value_of(0, 2)])], 0);
    assert_eq!((found.len(), landed, h.keys[0].floor), (0, 1, Some(2)));
    // Seq 2 landed, so from now on seq 1 is stale.
    let (found, _) = check_and_settle(&mut h, vec![read(0, &[value_of(0, 1)])], 1);
    assert!(found.len() == 2 && found[0].contains("older"), "{found:?}");

    let cases: [(ReadBack, &str); 4] = [
        (read(0, &[value_of(0, 0)]), "older"),
        (read(1, &[]), "LOST"),
        (read(1, &[value_of(0, 4)]), "never-written"),
        (read(1, &[value_of(0, 0)]), "never-written"), // written, but on another key
    ];
    for (bad, expected) in cases {
        let mut h = history();
        let (found, _) = check_and_settle(&mut h, vec![bad], 0);
        assert!(
            found.first().is_some_and(|f| f.contains(expected))
                && found.last().is_some_and(|f| f.starts_with("LOST")),
            "expected a {expected:?} violation (and the write counted lost), got {found:?}"
        );
    }
}
