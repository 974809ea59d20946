//! Registers under concurrent load on a fault-free cluster with W + R > N (N = 3, W = R = 2): a read
//! that starts after a write was acknowledged returns that write's value or a later one, and never a
//! value that was not written.
//!
//! One writer per key writes 1, 2, 3, … (each write carrying the context of the writer's previous
//! write) through random nodes while several readers read random keys through random nodes. The
//! history (acknowledgement instants of the writes, start instants and values of the reads) is checked
//! afterwards by [`check`], a pure function with its own test on hand-made histories. Figures are
//! printed with `eprintln!` (see them with `--nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kvcluster_tests::{Cluster, KvClient};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// Registers (keys).
const KEYS: usize = 4;
/// Concurrent readers.
const READERS: usize = 4;
/// The load stops after this long...
const RUN_FOR: Duration = Duration::from_secs(8);
/// ...or after this many writes per key...
const MAX_WRITES_PER_KEY: u64 = 400;
/// ...and this many reads per reader, whichever comes first.
const MAX_READS_PER_READER: usize = 600;

fn key_of(i: usize) -> Vec<u8> {
    format!("register-{i}").into_bytes()
}

/// One attempted write: `value` on register `key`, acknowledged (204) at `acked` if at all.
#[derive(Debug, Clone)]
struct WriteOp {
    key: usize,
    value: u64,
    started: Instant,
    acked: Option<Instant>,
}

/// One completed read of register `key`: its live values (empty for 404).
#[derive(Debug, Clone)]
struct ReadOp {
    key: usize,
    via: usize,
    started: Instant,
    finished: Instant,
    values: Vec<Vec<u8>>,
}

/// Checks a history; returns one line per violation (empty: the history is correct).
///
/// - Every value a read returns is a decimal integer that was attempted on that key by a write that
///   started before the read finished.
/// - The largest integer among a read's values is at least the largest value acknowledged on that key
///   before the read started (a read returning nothing while such a value exists is stale too).
fn check(writes: &[WriteOp], reads: &[ReadOp]) -> Vec<String> {
    let mut started: HashMap<(usize, u64), Instant> = HashMap::new();
    let mut acked: BTreeMap<usize, Vec<(Instant, u64)>> = BTreeMap::new();
    for w in writes {
        started.insert((w.key, w.value), w.started);
        if let Some(at) = w.acked {
            acked.entry(w.key).or_default().push((at, w.value));
        }
    }
    let mut violations = Vec::new();
    for (n, r) in reads.iter().enumerate() {
        let shown: Vec<String> = r
            .values
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let mut newest = None;
        for value in &r.values {
            let parsed = std::str::from_utf8(value)
                .ok()
                .and_then(|t| t.parse::<u64>().ok());
            match parsed.and_then(|v| started.get(&(r.key, v)).map(|s| (v, s))) {
                Some((v, s)) if *s <= r.finished => newest = newest.max(Some(v)),
                Some(_) => violations.push(format!(
                    "read #{n} of key {} via kv-{} returned {shown:?}: a value whose write started \
                     after the read finished",
                    r.key, r.via
                )),
                None => violations.push(format!(
                    "read #{n} of key {} via kv-{} returned {shown:?}: a value never written",
                    r.key, r.via
                )),
            }
        }
        let required = acked
            .get(&r.key)
            .into_iter()
            .flatten()
            .filter(|(at, _)| *at < r.started)
            .map(|(_, v)| *v)
            .max();
        if let Some(required) = required
            && newest.is_none_or(|n| n < required)
        {
            violations.push(format!(
                "stale read #{n} of key {} via kv-{}: returned {shown:?} (largest {newest:?}), but \
                 {required} was acknowledged before the read started",
                r.key, r.via
            ));
        }
    }
    violations
}

/// Writes 1, 2, 3, … to register `key` through random nodes until `deadline` or the count bound.
async fn writer(clients: Vec<KvClient>, key: usize, seed: u64, deadline: Instant) -> Vec<WriteOp> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut context: Option<String> = None;
    let mut ops = Vec::new();
    for value in 1..=MAX_WRITES_PER_KEY {
        if Instant::now() >= deadline {
            break;
        }
        let via = rng.random_range(0..clients.len());
        let started = Instant::now();
        let result = clients[via]
            .try_put(
                &key_of(key),
                value.to_string().as_bytes(),
                context.as_deref(),
            )
            .await;
        let acked = match result {
            Ok(resp) if resp.status == 204 => {
                context = Some(resp.expect_context());
                Some(Instant::now())
            }
            Ok(resp) => {
                eprintln!("write {value} of key {key} via kv-{via}: {resp}");
                None
            }
            Err(e) => {
                eprintln!("write {value} of key {key} via kv-{via}: {e}");
                None
            }
        };
        ops.push(WriteOp {
            key,
            value,
            started,
            acked,
        });
    }
    ops
}

/// Reads random registers through random nodes until `deadline` or the count bound; returns the
/// completed reads and the number of failed ones.
async fn reader(clients: Vec<KvClient>, seed: u64, deadline: Instant) -> (Vec<ReadOp>, usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut ops = Vec::new();
    let mut failed = 0;
    for _ in 0..MAX_READS_PER_READER {
        if Instant::now() >= deadline {
            break;
        }
        let key = rng.random_range(0..KEYS);
        let via = rng.random_range(0..clients.len());
        let started = Instant::now();
        let result = clients[via]
            .try_request(
                "GET",
                &KvClient::kv_path(&key_of(key)),
                &[("accept", "application/json")],
                None,
            )
            .await;
        let finished = Instant::now();
        let values = match result {
            Ok(resp) if resp.status == 200 || resp.status == 300 => resp.live_values(),
            Ok(resp) if resp.status == 404 => Vec::new(),
            Ok(resp) => {
                eprintln!("read of key {key} via kv-{via}: {resp}");
                failed += 1;
                continue;
            }
            Err(e) => {
                eprintln!("read of key {key} via kv-{via}: {e}");
                failed += 1;
                continue;
            }
        };
        ops.push(ReadOp {
            key,
            via,
            started,
            finished,
            values,
        });
    }
    (ops, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_an_acknowledged_write_sees_it_or_a_later_one() {
    let seed =
        kvcluster_tests::chaos::seed("a_read_after_an_acknowledged_write_sees_it_or_a_later_one");
    let cluster = Cluster::start(3, 3, 2, 2).await;
    let clients: Vec<KvClient> = (0..cluster.len())
        .map(|i| cluster.client(i).clone())
        .collect();

    let t0 = Instant::now();
    let deadline = t0 + RUN_FOR;
    let mut writes = Vec::new();
    let mut writer_tasks = Vec::new();
    for key in 0..KEYS {
        writer_tasks.push(tokio::spawn(writer(
            clients.clone(),
            key,
            seed.wrapping_add(key as u64),
            deadline,
        )));
    }
    let mut reader_tasks = Vec::new();
    for r in 0..READERS {
        reader_tasks.push(tokio::spawn(reader(
            clients.clone(),
            seed.wrapping_add(1000 + r as u64),
            deadline,
        )));
    }
    // Each task stops at the deadline; the last request may take up to the client timeout (15 s).
    let join_within = RUN_FOR + Duration::from_secs(30);
    for task in writer_tasks {
        let ops = tokio::time::timeout(join_within, task)
            .await
            .expect("a writer did not finish within its bound")
            .expect("writer task");
        writes.extend(ops);
    }
    let mut reads = Vec::new();
    let mut failed_reads = 0;
    for task in reader_tasks {
        let (ops, failed) = tokio::time::timeout(join_within, task)
            .await
            .expect("a reader did not finish within its bound")
            .expect("reader task");
        reads.extend(ops);
        failed_reads += failed;
    }
    let elapsed = t0.elapsed();

    let violations = check(&writes, &reads);
    let acked = writes.iter().filter(|w| w.acked.is_some()).count();
    let with_siblings = reads.iter().filter(|r| r.values.len() > 1).count();
    let not_found = reads.iter().filter(|r| r.values.is_empty()).count();
    eprintln!(
        "registers: {KEYS} keys, {READERS} readers, {elapsed:?}: writes attempted {}, acknowledged {acked}; \
         reads checked {} ({with_siblings} with siblings, {not_found} not found), failed {failed_reads}; \
         violations {}",
        writes.len(),
        reads.len(),
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "{} violations of read-after-acknowledged-write (seed {seed}; first 10):\n{}",
        violations.len(),
        violations[..violations.len().min(10)].join("\n")
    );
    assert!(
        acked >= 10 * KEYS && reads.len() >= 100,
        "expected a real load (at least {} acknowledged writes and 100 reads), got {acked} and {}",
        10 * KEYS,
        reads.len()
    );
}

#[test]
fn the_checker_flags_stale_and_never_written_reads() {
    let t = Instant::now();
    let at = |ms: u64| t + Duration::from_millis(ms);
    let write = |key, value, started, acked: Option<u64>| WriteOp {
        key,
        value,
        started: at(started),
        acked: acked.map(at),
    };
    let read = |key, started, finished, values: &[&str]| ReadOp {
        key,
        via: 0,
        started: at(started),
        finished: at(finished),
        values: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
    };
    let writes = [
        write(0, 1, 0, Some(10)),
        write(0, 2, 20, Some(30)),
        write(0, 3, 40, None), // never acknowledged: may or may not be seen
        write(1, 1, 0, Some(5)),
    ];
    let good = [
        read(0, 0, 1, &[]),           // before any acknowledgement: nothing is fine
        read(0, 15, 16, &["1"]),      // after 1 was acknowledged
        read(0, 25, 35, &["2"]),      // concurrent with the write of 2
        read(0, 31, 32, &["2"]),      // after 2 was acknowledged
        read(0, 41, 42, &["3"]),      // an unacknowledged write may be seen
        read(0, 41, 42, &["2", "3"]), // siblings: the largest counts
        read(1, 6, 7, &["1"]),
    ];
    assert_eq!(check(&writes, &good), Vec::<String>::new());

    let stale = [read(0, 31, 32, &["1"])];
    let found = check(&writes, &stale);
    assert!(
        found.len() == 1 && found[0].starts_with("stale read"),
        "a read of 1 started after 2 was acknowledged must be flagged stale, got {found:?}"
    );
    let empty = [read(1, 6, 7, &[])];
    let found = check(&writes, &empty);
    assert!(
        found.len() == 1 && found[0].starts_with("stale read"),
        "a 404 after an acknowledged write must be flagged stale, got {found:?}"
    );
    let phantom = [read(0, 31, 32, &["2", "7"]), read(1, 1, 2, &["one"])];
    let found = check(&writes, &phantom);
    assert!(
        found.len() == 2 && found.iter().all(|v| v.contains("never written")),
        "values 7 and \"one\" were never written and must be flagged, got {found:?}"
    );
    let early = [read(0, 31, 35, &["2", "3"])];
    let found = check(&writes, &early);
    assert!(
        found.len() == 1 && found[0].contains("started after the read finished"),
        "a read that finished before the write of 3 started cannot return 3, got {found:?}"
    );
}
