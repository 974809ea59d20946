//! `kvctl bench`: a closed-loop YCSB-style load (DESIGN.md section 8).
//!
//! `--clients` tasks each issue one request at a time, round-robin over the endpoints, until `--duration`
//! has passed or `--max-ops` requests were issued, whichever comes first. A read is a `GET`, a write a `PUT`
//! carrying the causal context of the key's last read or write by the same client, so the load does not pile
//! up blind-write siblings. Latencies go into HdrHistograms (microseconds); errors are counted by kind and are
//! not latencies.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use kvclient::{Client, Error, ReadOptions, ReadResult, WriteOptions};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

mod batch;

use crate::{Access, EXIT_REFUSED, EXIT_UNREACHABLE, local_failure, stderr_line, stdout_bytes};

/// Largest `--keys`.
const MAX_KEYS: u64 = 100_000_000;
/// Largest `--value-size` (the node's default value limit).
const MAX_VALUE_SIZE: u64 = kvapi::DEFAULT_MAX_VALUE_BYTES as u64;
/// Hard cap on the operations of one run when `--max-ops` is absent.
const DEFAULT_MAX_OPS: u64 = 1_000_000_000;
/// Highest latency a histogram tracks, in microseconds (larger values are clamped to it).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// The YCSB zipfian constant (theta).
pub(crate) const ZIPFIAN_THETA: f64 = 0.99;

/// Key popularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// YCSB's scrambled zipfian (theta 0.99): a few hot keys, spread over the key space.
    Zipfian,
}

/// Arguments of `kvctl bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Endpoints to spread the requests over, comma-separated; the global --endpoint when absent.
    #[arg(
        long,
        env = "KVCTL_BENCH_ENDPOINTS",
        value_name = "URL,URL,...",
        value_delimiter = ','
    )]
    pub(crate) endpoints: Vec<String>,

    /// Concurrent clients, each with one request in flight (closed loop).
    #[arg(long, env = "KVCTL_BENCH_CLIENTS", default_value_t = 16, value_name = "COUNT",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) clients: u32,

    /// How long to measure (after the warmup), such as `10s` or `2m`.
    #[arg(long, env = "KVCTL_BENCH_DURATION", default_value = "10s", value_name = "DURATION",
          value_parser = parse_positive_duration)]
    pub(crate) duration: Duration,

    /// Load to run and discard before measuring.
    #[arg(long, env = "KVCTL_BENCH_WARMUP", default_value = "0s", value_name = "DURATION",
          value_parser = parse_duration)]
    pub(crate) warmup: Duration,

    /// Number of distinct keys (`bench-000000` ...).
    #[arg(long, env = "KVCTL_BENCH_KEYS", default_value_t = 10_000, value_name = "COUNT",
          value_parser = clap::value_parser!(u64).range(1..=MAX_KEYS))]
    pub(crate) keys: u64,

    /// Bytes per written value.
    #[arg(long, env = "KVCTL_BENCH_VALUE_SIZE", default_value_t = 100, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(0..=MAX_VALUE_SIZE))]
    pub(crate) value_size: u64,

    /// Fraction of operations that are reads, 0..=1 (0.5 = YCSB A, 0.95 = B, 1 = C).
    #[arg(long, env = "KVCTL_BENCH_READ_RATIO", default_value_t = 0.5, value_name = "RATIO",
          value_parser = parse_ratio)]
    pub(crate) read_ratio: f64,

    /// Key popularity.
    #[arg(
        long,
        env = "KVCTL_BENCH_DISTRIBUTION",
        value_enum,
        default_value = "zipfian"
    )]
    pub(crate) distribution: KeyDistribution,

    /// Write every key once (read for its context, then write; at most --clients at a time) before the load.
    #[arg(long, env = "KVCTL_BENCH_PRELOAD")]
    pub(crate) preload: bool,

    /// Upper bound on the preload's time.
    #[arg(long, env = "KVCTL_BENCH_PRELOAD_TIMEOUT", default_value = "5m", value_name = "DURATION",
          value_parser = parse_positive_duration)]
    pub(crate) preload_timeout: Duration,

    /// Hard cap on the measured operations (the warmup has the same cap); 1e9 when absent.
    #[arg(long, env = "KVCTL_BENCH_MAX_OPS", value_name = "COUNT",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_ops: Option<u64>,

    /// Client-side deadline of one request; a request that takes longer counts as a `timeout` error.
    #[arg(long, env = "KVCTL_BENCH_TIMEOUT", default_value = "5s", value_name = "DURATION",
          value_parser = parse_positive_duration)]
    pub(crate) timeout: Duration,

    /// Operations per request: each request is one `POST /v1/batch` of this many operations on
    /// distinct keys (1: single-key requests). Each item counts as an operation, with its batch's
    /// latency; --max-ops counts requests.
    #[arg(long, env = "KVCTL_BENCH_BATCH", default_value_t = 1, value_name = "K",
          value_parser = clap::value_parser!(u32).range(1..=kvapi::batch::MAX_BATCH_ITEMS as i64))]
    pub(crate) batch: u32,

    /// Print the result as JSON on stdout instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Parses a humantime duration (`0s` allowed).
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 500ms, 10s, 2m)"))
}

/// Parses a humantime duration greater than zero.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        Err("must be greater than zero".to_owned())
    } else {
        Ok(duration)
    }
}

/// Parses a ratio within 0..=1.
pub(crate) fn parse_ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("{ratio} is not within 0..=1"))
    }
}

/// The bench key of index `i`.
pub(crate) fn key_name(i: u64) -> String {
    format!("bench-{i:06}")
}

/// YCSB's `ZipfianGenerator` (Gray et al., "Quickly generating billion-record synthetic databases", SIGMOD
/// 1994): item 0 is the most popular, item `i` has a probability proportional to `1 / (i + 1)^theta`.
#[derive(Debug, Clone)]
pub(crate) struct Zipfian {
    /// Number of items: samples are within `0..items`.
    items: u64,
    /// `1 / (1 - theta)`.
    alpha: f64,
    /// `zeta(items, theta)`.
    zetan: f64,
    /// `(1 - (2 / items)^(1 - theta)) / (1 - zeta(2, theta) / zetan)`.
    eta: f64,
    /// `1 + 0.5^theta`: the cumulative weight of items 0 and 1 (over zetan).
    two_items: f64,
}

impl Zipfian {
    /// A generator over `0..items` (`items` ≥ 1), computing `zeta(items, theta)` in O(items). (The bench
    /// itself uses [`ScrambledZipfian`].)
    #[cfg(test)]
    fn new(items: u64, theta: f64) -> Zipfian {
        Zipfian::with_zetan(items, theta, zeta(items, theta))
    }

    /// A generator over `0..items` with a precomputed `zeta(items, theta)`.
    pub(crate) fn with_zetan(items: u64, theta: f64, zetan: f64) -> Zipfian {
        let items = items.max(1);
        let zeta2 = zeta(2, theta);
        let eta = if items <= 2 {
            // Samples below two never reach the formula that uses eta.
            0.0
        } else {
            (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        };
        Zipfian {
            items,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
            two_items: 1.0 + 0.5f64.powf(theta),
        }
    }

    /// The next sample, within `0..items`.
    pub(crate) fn sample(&self, rng: &mut impl RngExt) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < self.two_items {
            return 1.min(self.items - 1);
        }
        let spread = self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha);
        // `as` saturates (and maps NaN to 0); clamp to the range against rounding at u → 1.
        (spread as u64).min(self.items - 1)
    }
}

/// `sum_{i=1..=n} 1 / i^theta`.
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// YCSB's `ScrambledZipfianGenerator`: a zipfian over ten billion items (theta 0.99, its zeta precomputed
/// as YCSB does), hashed with FNV-1a 64 onto `0..items`, so the popular keys are spread over the key
/// space instead of being the first ones.
#[derive(Debug, Clone)]
pub(crate) struct ScrambledZipfian {
    /// Number of keys.
    items: u64,
    /// The underlying generator over [`ScrambledZipfian::ITEM_COUNT`] items.
    inner: Zipfian,
}

impl ScrambledZipfian {
    /// Items of the underlying generator (YCSB's `ITEM_COUNT`).
    const ITEM_COUNT: u64 = 10_000_000_000;
    /// `zeta(ITEM_COUNT, 0.99)`, YCSB's `ZETAN`.
    const ZETAN: f64 = 26.469_028_201_783_02;

    /// A generator over `0..items` (`items` ≥ 1) with theta 0.99.
    pub(crate) fn new(items: u64) -> ScrambledZipfian {
        ScrambledZipfian {
            items: items.max(1),
            inner: Zipfian::with_zetan(Self::ITEM_COUNT, ZIPFIAN_THETA, Self::ZETAN),
        }
    }

    /// The next sample, within `0..items`.
    pub(crate) fn sample(&self, rng: &mut impl RngExt) -> u64 {
        fnv1a_64(self.inner.sample(rng)) % self.items
    }

    /// The key the underlying generator's most popular item lands on.
    #[cfg(test)]
    fn hottest(&self) -> u64 {
        fnv1a_64(0) % self.items
    }
}

/// YCSB's `Utils.fnvhash64`: FNV-1a over the 8 little-endian bytes of `value`, made non-negative as a
/// Java `long` (`Math.abs`).
pub(crate) fn fnv1a_64(value: u64) -> u64 {
    const OFFSET_BASIS: u64 = 0xCBF2_9CE4_8422_2325;
    const PRIME: u64 = 1_099_511_628_211;
    let mut hash = OFFSET_BASIS;
    for byte in value.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // Math.abs on a Java long; Long.MIN_VALUE stays itself, whose bits are 1 << 63.
    (hash as i64).unsigned_abs()
}

/// Picks the key of each operation.
#[derive(Debug, Clone)]
enum KeyChooser {
    /// Uniform over `0..keys`.
    Uniform(u64),
    /// Scrambled zipfian over the keys.
    Zipfian(ScrambledZipfian),
}

impl KeyChooser {
    /// A chooser for `keys` keys.
    fn new(distribution: KeyDistribution, keys: u64) -> KeyChooser {
        match distribution {
            KeyDistribution::Uniform => KeyChooser::Uniform(keys.max(1)),
            KeyDistribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::new(keys)),
        }
    }

    /// The next key index.
    fn next(&self, rng: &mut SmallRng) -> u64 {
        match self {
            KeyChooser::Uniform(keys) => rng.random_range(0..*keys),
            KeyChooser::Zipfian(zipf) => zipf.sample(rng),
        }
    }
}

/// The outcome statistics of one kind of operation.
#[derive(Debug, Clone)]
struct OpStats {
    /// Latencies of successful operations, in microseconds.
    latency: Histogram<u64>,
    /// Failed operations by kind.
    errors: BTreeMap<String, u64>,
}

impl OpStats {
    /// Empty statistics.
    fn new() -> Result<OpStats, String> {
        Ok(OpStats {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .map_err(|e| format!("cannot create a histogram: {e}"))?,
            errors: BTreeMap::new(),
        })
    }

    /// Adds another client's statistics.
    fn merge(&mut self, other: &OpStats) {
        // Same bounds on both sides: addition cannot fail.
        let _ = self.latency.add(&other.latency);
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
    }

    /// Records one successful operation.
    fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(micros.max(1));
    }

    /// Records one failed operation.
    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }
}

/// What one client (or all of them, merged) measured.
#[derive(Debug, Clone)]
struct LoadStats {
    /// Reads.
    read: OpStats,
    /// Writes.
    write: OpStats,
    /// Successful reads of an absent or deleted key.
    not_found: u64,
    /// Most live siblings one read returned.
    max_siblings: u64,
    /// Reads that returned more than one live sibling.
    multi_sibling_reads: u64,
    /// When the last measured operation completed.
    last_done: Option<Instant>,
}

impl LoadStats {
    /// Empty statistics.
    fn new() -> Result<LoadStats, String> {
        Ok(LoadStats {
            read: OpStats::new()?,
            write: OpStats::new()?,
            not_found: 0,
            max_siblings: 0,
            multi_sibling_reads: 0,
            last_done: None,
        })
    }

    /// Adds another client's statistics.
    fn merge(&mut self, other: &LoadStats) {
        self.read.merge(&other.read);
        self.write.merge(&other.write);
        self.not_found += other.not_found;
        self.max_siblings = self.max_siblings.max(other.max_siblings);
        self.multi_sibling_reads += other.multi_sibling_reads;
        self.last_done = self.last_done.max(other.last_done);
    }
}

/// The error kind an operation is counted under: `STATUS CODE` for an error answer, `timeout`, `connect`
/// or `transport` for a request that got no answer, `invalid response` for a broken one.
pub(crate) fn error_kind(error: &Error) -> String {
    match error {
        Error::Server { status, body } => format!("{status} {}", body.error),
        Error::Http(e) if e.is_timeout() => "timeout".to_owned(),
        Error::DeadlineExceeded { .. } => "timeout".to_owned(),
        Error::Http(e) if e.is_connect() => "connect".to_owned(),
        Error::Http(_) => "transport".to_owned(),
        Error::InvalidResponse(_) => "invalid response".to_owned(),
        Error::BadEndpoint { .. }
        | Error::InvalidKey(_)
        | Error::InvalidContext(_)
        | Error::BadToken(_)
        | Error::Tls(_) => "client".to_owned(),
    }
}

/// The validated plan of a run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Normalised endpoints.
    endpoints: Vec<String>,
    /// Concurrent clients.
    clients: u32,
    /// Measured duration.
    duration: Duration,
    /// Discarded warmup.
    warmup: Duration,
    /// Distinct keys.
    keys: u64,
    /// Bytes per value.
    value_size: usize,
    /// Fraction of reads.
    read_ratio: f64,
    /// Key popularity.
    distribution: KeyDistribution,
    /// Whether to preload.
    preload: bool,
    /// Bound of the preload's time.
    preload_timeout: Duration,
    /// Cap on the measured operations.
    max_ops: u64,
    /// Per-request client deadline.
    timeout: Duration,
    /// Operations per request.
    batch: u32,
}

/// Checks the arguments and builds the plan (`default_endpoint` is the global `--endpoint`).
pub(crate) fn plan(args: &BenchArgs, default_endpoint: &str) -> Result<Plan, String> {
    let mut endpoints: Vec<String> = args
        .endpoints
        .iter()
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        endpoints.push(default_endpoint.to_owned());
    }
    let mut normalised = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        normalised.push(kvclient::normalise_endpoint(&endpoint).map_err(|e| e.to_string())?);
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return Err(format!(
            "--read-ratio {} is not within 0..=1",
            args.read_ratio
        ));
    }
    if args.duration.is_zero() {
        return Err("--duration must be greater than zero".to_owned());
    }
    if args.keys == 0 || args.keys > MAX_KEYS {
        return Err(format!("--keys must be within 1..={MAX_KEYS}"));
    }
    let value_size = usize::try_from(args.value_size)
        .ok()
        .filter(|size| *size as u64 <= MAX_VALUE_SIZE)
        .ok_or_else(|| format!("--value-size must be at most {MAX_VALUE_SIZE}"))?;
    Ok(Plan {
        endpoints: normalised,
        clients: args.clients.max(1),
        duration: args.duration,
        warmup: args.warmup,
        keys: args.keys,
        value_size,
        read_ratio: args.read_ratio,
        distribution: args.distribution,
        preload: args.preload,
        preload_timeout: args.preload_timeout,
        max_ops: args.max_ops.unwrap_or(DEFAULT_MAX_OPS),
        timeout: args.timeout,
        batch: args.batch,
    })
}

/// The state the clients of a run share.
#[derive(Debug)]
struct Shared {
    /// The plan.
    plan: Plan,
    /// One client per endpoint (clones share their connection pool).
    clients: Vec<Client>,
    /// Key popularity.
    chooser: KeyChooser,
    /// The value every write sends.
    value: Bytes,
    /// When measuring starts (the end of the warmup).
    measure_start: Instant,
    /// When the clients stop issuing operations.
    end: Instant,
    /// Warmup operations issued.
    warmup_issued: AtomicU64,
    /// Measured operations issued.
    measured_issued: AtomicU64,
}

/// One closed-loop client: issues operations until the end of the run or the operation cap.
async fn client_loop(
    shared: Arc<Shared>,
    index: usize,
    mut contexts: HashMap<u64, String>,
    seed: u64,
) -> Result<LoadStats, String> {
    let mut stats = LoadStats::new()?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let plan = &shared.plan;
    let mut endpoint = index % shared.clients.len();
    loop {
        let now = Instant::now();
        if now >= shared.end {
            break;
        }
        let measuring = now >= shared.measure_start;
        if measuring {
            if shared.measured_issued.fetch_add(1, Ordering::Relaxed) >= plan.max_ops {
                break;
            }
        } else if shared.warmup_issued.fetch_add(1, Ordering::Relaxed) >= plan.max_ops {
            // Warmup cap reached: wait for the measured phase.
            tokio::time::sleep_until(shared.measure_start).await;
            continue;
        }
        let client = &shared.clients[endpoint];
        endpoint = (endpoint + 1) % shared.clients.len();
        if plan.batch > 1 {
            batch::step(
                &shared,
                client,
                &mut rng,
                &mut contexts,
                measuring,
                &mut stats,
            )
            .await;
            continue;
        }
        let key_index = shared.chooser.next(&mut rng);
        let key = key_name(key_index);
        let read = rng.random_bool(plan.read_ratio);
        let started = Instant::now();
        if read {
            let outcome = client.get(key.as_bytes(), &ReadOptions::default()).await;
            let elapsed = started.elapsed();
            match outcome {
                Ok(result) => {
                    if measuring {
                        stats.read.record(elapsed);
                        match &result {
                            ReadResult::Found { .. } => {
                                let live = result.live().count() as u64;
                                stats.max_siblings = stats.max_siblings.max(live);
                                if live > 1 {
                                    stats.multi_sibling_reads += 1;
                                }
                            }
                            ReadResult::NotFound { .. } => stats.not_found += 1,
                        }
                    }
                    if let Some(context) = result.context() {
                        contexts.insert(key_index, context.to_owned());
                    }
                }
                Err(e) => {
                    remember_error_context(&mut contexts, key_index, &e);
                    if measuring {
                        stats.read.error(error_kind(&e));
                    }
                }
            }
        } else {
            let context = contexts.get(&key_index).map(String::as_str);
            let outcome = client
                .put(
                    key.as_bytes(),
                    shared.value.clone(),
                    context,
                    &WriteOptions::default(),
                )
                .await;
            let elapsed = started.elapsed();
            match outcome {
                Ok(context) => {
                    if measuring {
                        stats.write.record(elapsed);
                    }
                    contexts.insert(key_index, context);
                }
                Err(e) => {
                    remember_error_context(&mut contexts, key_index, &e);
                    if measuring {
                        stats.write.error(error_kind(&e));
                    }
                }
            }
        }
        if measuring {
            stats.last_done = Some(Instant::now());
        }
    }
    Ok(stats)
}

/// Keeps the context a 409 (sibling cap) answer carries, so the next write of the key resolves.
fn remember_error_context(contexts: &mut HashMap<u64, String>, key: u64, error: &Error) {
    if let Error::Server { body, .. } = error
        && let Some(context) = &body.context
    {
        contexts.insert(key, context.clone());
    }
}

/// What the preload did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PreloadReport {
    /// Keys written.
    written: u64,
    /// Keys that failed, by error kind.
    errors: BTreeMap<String, u64>,
    /// Whether the preload stopped at its time bound before writing every key.
    timed_out: bool,
    /// Seconds it took.
    seconds: f64,
}

/// Writes every key once, at most `plan.clients` at a time, each after a read for its context (so a
/// rerun supersedes the old value instead of adding a sibling). Returns the report and the contexts.
async fn preload(shared: &Arc<Shared>) -> (PreloadReport, HashMap<u64, String>) {
    let started = Instant::now();
    let deadline = started + shared.plan.preload_timeout;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..shared.plan.clients as usize {
        let shared = Arc::clone(shared);
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let mut written = 0u64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut contexts = HashMap::new();
            let client = &shared.clients[worker % shared.clients.len()];
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= shared.plan.keys || Instant::now() >= deadline {
                    break;
                }
                let key = key_name(index);
                let context = match client.get(key.as_bytes(), &ReadOptions::default()).await {
                    Ok(read) => read.context().map(str::to_owned),
                    Err(e) => {
                        *errors.entry(error_kind(&e)).or_default() += 1;
                        continue;
                    }
                };
                match client
                    .put(
                        key.as_bytes(),
                        shared.value.clone(),
                        context.as_deref(),
                        &WriteOptions::default(),
                    )
                    .await
                {
                    Ok(context) => {
                        written += 1;
                        contexts.insert(index, context);
                    }
                    Err(e) => *errors.entry(error_kind(&e)).or_default() += 1,
                }
            }
            (written, errors, contexts)
        });
    }
    let mut report = PreloadReport {
        written: 0,
        errors: BTreeMap::new(),
        timed_out: false,
        seconds: 0.0,
    };
    let mut contexts = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((written, errors, worker_contexts)) = joined {
            report.written += written;
            for (kind, count) in errors {
                *report.errors.entry(kind).or_default() += count;
            }
            contexts.extend(worker_contexts);
        }
    }
    report.timed_out = next.load(Ordering::Relaxed) < shared.plan.keys;
    report.seconds = started.elapsed().as_secs_f64();
    (report, contexts)
}

/// One row of the result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OpReport {
    /// `read`, `write` or `total`.
    operation: String,
    /// Successful operations.
    ops: u64,
    /// Successful operations per second of the measured time.
    ops_per_sec: f64,
    /// Median latency, milliseconds.
    p50_ms: f64,
    /// 99th percentile, milliseconds.
    p99_ms: f64,
    /// 99.9th percentile, milliseconds.
    p999_ms: f64,
    /// Largest latency, milliseconds.
    max_ms: f64,
    /// Mean latency, milliseconds.
    mean_ms: f64,
    /// Failed operations.
    errors: u64,
    /// Failed operations by kind.
    error_kinds: BTreeMap<String, u64>,
}

impl OpReport {
    /// The row of one kind of operation over `seconds` of measured time.
    fn new(operation: &str, stats: &OpStats, seconds: f64) -> OpReport {
        let h = &stats.latency;
        let ms = |micros: u64| micros as f64 / 1000.0;
        let ops = h.len();
        let (p50, p99, p999, max, mean) = if ops == 0 {
            (0.0, 0.0, 0.0, 0.0, 0.0)
        } else {
            (
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max()),
                h.mean() / 1000.0,
            )
        };
        OpReport {
            operation: operation.to_owned(),
            ops,
            ops_per_sec: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            p50_ms: p50,
            p99_ms: p99,
            p999_ms: p999,
            max_ms: max,
            mean_ms: mean,
            errors: stats.errors.values().sum(),
            error_kinds: stats.errors.clone(),
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BenchReport {
    /// Endpoints the load went to.
    endpoints: Vec<String>,
    /// Concurrent clients.
    clients: u32,
    /// Distinct keys.
    keys: u64,
    /// Bytes per value.
    value_size: usize,
    /// Fraction of reads.
    read_ratio: f64,
    /// Key popularity.
    distribution: KeyDistribution,
    /// Configured measured duration, seconds.
    duration_s: f64,
    /// Configured warmup, seconds.
    warmup_s: f64,
    /// Measured time: from the end of the warmup to the completion of the last measured operation.
    elapsed_s: f64,
    /// The preload, when there was one.
    preload: Option<PreloadReport>,
    /// `read`, `write` and `total` rows.
    operations: Vec<OpReport>,
    /// Successful operations per second, all kinds.
    total_ops_per_sec: f64,
    /// Reads of an absent or deleted key.
    reads_not_found: u64,
    /// Most live siblings one read returned.
    max_siblings: u64,
    /// Reads that returned more than one live sibling.
    reads_with_siblings: u64,
}

/// Builds the report of a run from the merged statistics.
fn report(
    plan: &Plan,
    stats: &LoadStats,
    elapsed: f64,
    preload: Option<PreloadReport>,
) -> BenchReport {
    let mut total = stats.read.clone();
    total.merge(&stats.write);
    let operations = vec![
        OpReport::new("read", &stats.read, elapsed),
        OpReport::new("write", &stats.write, elapsed),
        OpReport::new("total", &total, elapsed),
    ];
    BenchReport {
        endpoints: plan.endpoints.clone(),
        clients: plan.clients,
        keys: plan.keys,
        value_size: plan.value_size,
        read_ratio: plan.read_ratio,
        distribution: plan.distribution,
        duration_s: plan.duration.as_secs_f64(),
        warmup_s: plan.warmup.as_secs_f64(),
        elapsed_s: elapsed,
        preload,
        total_ops_per_sec: operations[2].ops_per_sec,
        operations,
        reads_not_found: stats.not_found,
        max_siblings: stats.max_siblings,
        reads_with_siblings: stats.multi_sibling_reads,
    }
}

/// The human-readable result: a settings line, the table, then errors by kind and the sibling statistics.
pub(crate) fn format_report(report: &BenchReport) -> String {
    let mut out = format!(
        "{} client(s), {} endpoint(s), {} keys ({}), {} B values, read ratio {}, {:.2}s measured{}\n",
        report.clients,
        report.endpoints.len(),
        report.keys,
        match report.distribution {
            KeyDistribution::Uniform => "uniform",
            KeyDistribution::Zipfian => "zipfian 0.99",
        },
        report.value_size,
        report.read_ratio,
        report.elapsed_s,
        if report.warmup_s > 0.0 {
            format!(" after {:.2}s warmup", report.warmup_s)
        } else {
            String::new()
        }
    );
    if let Some(preload) = &report.preload {
        let errors: u64 = preload.errors.values().sum();
        out.push_str(&format!(
            "preload: {} keys written in {:.2}s, {errors} error(s){}\n",
            preload.written,
            preload.seconds,
            if preload.timed_out {
                " (stopped at --preload-timeout)"
            } else {
                ""
            }
        ));
    }
    out.push_str(&format!(
        "{:<9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        "operation", "ops", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
    ));
    for row in &report.operations {
        out.push_str(&format!(
            "{:<9} {:>9} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7}\n",
            row.operation,
            row.ops,
            row.ops_per_sec,
            row.p50_ms,
            row.p99_ms,
            row.p999_ms,
            row.max_ms,
            row.errors
        ));
    }
    out.push_str(&format!("total: {:.1} ops/s\n", report.total_ops_per_sec));
    for row in &report.operations[..report.operations.len().min(2)] {
        for (kind, count) in &row.error_kinds {
            out.push_str(&format!("{} errors {kind}: {count}\n", row.operation));
        }
    }
    let reads = report.operations.first().map_or(0, |r| r.ops);
    out.push_str(&format!(
        "siblings: max {} live per read; {} of {reads} reads saw more than one; {} reads found no value\n",
        report.max_siblings, report.reads_with_siblings, report.reads_not_found
    ));
    out
}

/// Runs `kvctl bench`.
pub(crate) async fn run(default_endpoint: &str, access: &Access, args: BenchArgs) -> ExitCode {
    let plan = match plan(&args, default_endpoint) {
        Ok(plan) => plan,
        Err(e) => {
            stderr_line(&format!("error: {e}"));
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    // One connection pool and TLS setup, shared by a client per endpoint.
    let mut clients: Vec<Client> = Vec::with_capacity(plan.endpoints.len());
    for endpoint in &plan.endpoints {
        let client = match clients.first() {
            Some(first) => first.at(endpoint),
            None => access.client(endpoint).timeout(plan.timeout).build(),
        };
        match client {
            Ok(client) => clients.push(client),
            Err(e) => return crate::fail(&e),
        }
    }
    let mut seed_rng = SmallRng::seed_from_u64(rand::random());
    let value: Vec<u8> = (0..plan.value_size)
        .map(|_| seed_rng.random_range(b'a'..=b'z'))
        .collect();
    let mut shared = Shared {
        chooser: KeyChooser::new(plan.distribution, plan.keys),
        plan: plan.clone(),
        clients,
        value: Bytes::from(value),
        measure_start: Instant::now(),
        end: Instant::now(),
        warmup_issued: AtomicU64::new(0),
        measured_issued: AtomicU64::new(0),
    };

    let (preload_report, contexts) = if plan.preload {
        if !args.json {
            stderr_line(&format!("preloading {} keys ...", plan.keys));
        }
        let shared_for_preload = Arc::new(shared);
        let (report, contexts) = preload(&shared_for_preload).await;
        shared = match Arc::try_unwrap(shared_for_preload) {
            Ok(shared) => shared,
            Err(_) => {
                stderr_line("error: the preload did not release its state");
                return ExitCode::from(EXIT_REFUSED);
            }
        };
        if report.written == 0 {
            stderr_line(&format!(
                "error: the preload wrote no key (errors: {:?})",
                report.errors
            ));
            return ExitCode::from(EXIT_UNREACHABLE);
        }
        (Some(report), contexts)
    } else {
        (None, HashMap::new())
    };

    let start = Instant::now();
    shared.measure_start = start + plan.warmup;
    shared.end = shared.measure_start + plan.duration;
    let shared = Arc::new(shared);
    if !args.json {
        stderr_line(&format!(
            "running {} client(s) for {}{} ...",
            plan.clients,
            humantime::format_duration(plan.duration),
            if plan.warmup.is_zero() {
                String::new()
            } else {
                format!(" after {} warmup", humantime::format_duration(plan.warmup))
            }
        ));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..plan.clients as usize {
        tasks.spawn(client_loop(
            Arc::clone(&shared),
            index,
            contexts.clone(),
            seed_rng.random(),
        ));
    }
    let mut merged = match LoadStats::new() {
        Ok(stats) => stats,
        Err(e) => {
            stderr_line(&format!("error: {e}"));
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    // Each client stops issuing at `end` and its last request is bounded by the request timeout.
    let hard_stop = shared.end + plan.timeout + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(hard_stop, tasks.join_next()).await {
            Ok(Some(Ok(Ok(stats)))) => merged.merge(&stats),
            Ok(Some(Ok(Err(e)))) => {
                stderr_line(&format!("error: {e}"));
                return ExitCode::from(EXIT_REFUSED);
            }
            Ok(Some(Err(e))) => {
                stderr_line(&format!("error: a client task failed: {e}"));
                return ExitCode::from(EXIT_REFUSED);
            }
            Ok(None) => break,
            Err(_) => {
                stderr_line("warning: some clients did not finish in time; their results are lost");
                tasks.abort_all();
                break;
            }
        }
    }
    let elapsed = merged
        .last_done
        .map(|done| done.saturating_duration_since(shared.measure_start))
        .unwrap_or(plan.duration)
        .as_secs_f64();
    let result = report(&plan, &merged, elapsed, preload_report);
    let text = if args.json {
        match serde_json::to_string_pretty(&result) {
            Ok(json) => format!("{json}\n"),
            Err(e) => {
                stderr_line(&format!("error: encoding the result: {e}"));
                return ExitCode::from(EXIT_REFUSED);
            }
        }
    } else {
        format_report(&result)
    };
    if let Err(e) = stdout_bytes(text.as_bytes()) {
        return local_failure(&e);
    }
    let ok = result.operations.get(2).map_or(0, |total| total.ops);
    if ok == 0 {
        stderr_line("error: no operation succeeded");
        return ExitCode::from(EXIT_UNREACHABLE);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_samples_stay_in_range_and_favour_key_zero() {
        let mut rng = SmallRng::seed_from_u64(7);
        for items in [1u64, 2, 3, 10, 1000] {
            let zipf = Zipfian::new(items, ZIPFIAN_THETA);
            let mut counts = vec![0u64; items as usize];
            for _ in 0..200_000 {
                let sample = zipf.sample(&mut rng);
                assert!(sample < items, "{sample} out of 0..{items}");
                counts[sample as usize] += 1;
            }
            let max = counts.iter().copied().max().unwrap();
            assert_eq!(counts[0], max, "{items} items: {counts:?}");
            if items >= 10 {
                // Popularity falls with the rank.
                assert!(counts[0] > counts[1] && counts[1] > counts[9], "{counts:?}");
            }
        }
    }

    #[test]
    fn zipfian_probabilities_match_theory() {
        let items = 1000u64;
        let zipf = Zipfian::new(items, ZIPFIAN_THETA);
        let mut rng = SmallRng::seed_from_u64(11);
        let draws = 400_000u64;
        let mut counts = vec![0u64; items as usize];
        for _ in 0..draws {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        // P(0) = 1 / zeta(1000, 0.99) ≈ 0.134; P(1) = 2^-0.99 / zeta ≈ 0.067.
        let zetan = zeta(items, ZIPFIAN_THETA);
        for rank in [0usize, 1] {
            let expected = 1.0 / ((rank + 1) as f64).powf(ZIPFIAN_THETA) / zetan;
            let observed = counts[rank] as f64 / draws as f64;
            assert!(
                (observed - expected).abs() < 0.01,
                "rank {rank}: {observed} vs {expected}"
            );
        }
        // The top 10% of the keys get most of the load; uniform would give them 10%.
        let top: u64 = counts[..100].iter().sum();
        assert!(top as f64 / draws as f64 > 0.6, "{top}");
    }

    #[test]
    fn scrambled_zipfian_is_skewed_but_spread() {
        let keys = 10_000u64;
        let zipf = ScrambledZipfian::new(keys);
        let mut rng = SmallRng::seed_from_u64(3);
        let draws = 200_000u64;
        let mut counts = vec![0u64; keys as usize];
        for _ in 0..draws {
            let sample = zipf.sample(&mut rng);
            assert!(sample < keys);
            counts[sample as usize] += 1;
        }
        let hottest = counts
            .iter()
            .enumerate()
            .max_by_key(|(_, c)| **c)
            .map(|(i, _)| i as u64)
            .unwrap();
        assert_eq!(hottest, zipf.hottest());
        assert_ne!(hottest, 0, "scrambling moves the hot key away from index 0");
        // Far above the uniform 1/keys share: about 1/zeta(1e10) ≈ 3.8% of the draws.
        let share = counts[hottest as usize] as f64 / draws as f64;
        assert!(share > 0.03 && share < 0.05, "{share}");
        // And the popular keys are not clustered at the start of the key space.
        let first_tenth: u64 = counts[..1000].iter().sum();
        assert!((first_tenth as f64 / draws as f64) < 0.3, "{first_tenth}");
        let single = ScrambledZipfian::new(1);
        assert_eq!(single.sample(&mut rng), 0);
    }

    #[test]
    fn fnv_matches_ycsb() {
        // YCSB's Utils.fnvhash64(0) and (1), from its Java implementation.
        let basis = 0xCBF2_9CE4_8422_2325u64;
        let mut expected = basis;
        for _ in 0..8 {
            expected = expected.wrapping_mul(1_099_511_628_211);
        }
        assert_eq!(fnv1a_64(0), (expected as i64).unsigned_abs());
        assert_ne!(fnv1a_64(1), fnv1a_64(0));
        assert!(fnv1a_64(u64::MAX) < 1 << 63 || fnv1a_64(u64::MAX) == 1 << 63);
    }

    #[test]
    fn uniform_keys_cover_the_range() {
        let chooser = KeyChooser::new(KeyDistribution::Uniform, 10);
        let mut rng = SmallRng::seed_from_u64(5);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[chooser.next(&mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(key_name(1), "bench-000001");
        assert_eq!(key_name(1_234_567), "bench-1234567");
    }

    #[test]
    fn ratios_and_durations_are_checked() {
        assert_eq!(parse_ratio("0").unwrap(), 0.0);
        assert_eq!(parse_ratio("1").unwrap(), 1.0);
        assert_eq!(parse_ratio(" 0.95").unwrap(), 0.95);
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("NaN").is_err());
        assert!(parse_ratio("half").is_err());
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(
            parse_positive_duration("1m 30s").unwrap(),
            Duration::from_secs(90)
        );
        assert!(parse_duration("ten").is_err());
    }

    fn stats_with(latencies_us: &[u64], errors: &[(&str, u64)]) -> OpStats {
        let mut stats = OpStats::new().unwrap();
        for us in latencies_us {
            stats.record(Duration::from_micros(*us));
        }
        for (kind, count) in errors {
            for _ in 0..*count {
                stats.error((*kind).to_owned());
            }
        }
        stats
    }

    fn sample_plan() -> Plan {
        Plan {
            endpoints: vec!["http://127.0.0.1:8080".into()],
            clients: 4,
            duration: Duration::from_secs(2),
            warmup: Duration::ZERO,
            keys: 100,
            value_size: 10,
            read_ratio: 0.5,
            distribution: KeyDistribution::Zipfian,
            preload: false,
            preload_timeout: Duration::from_secs(1),
            max_ops: 10,
            timeout: Duration::from_secs(1),
            batch: 1,
        }
    }

    #[test]
    fn reports_merge_and_format() {
        let mut stats = LoadStats::new().unwrap();
        let mut one = LoadStats::new().unwrap();
        one.read = stats_with(&[1000, 2000, 3000, 4000], &[("503 quorum_not_reached", 2)]);
        one.max_siblings = 2;
        one.multi_sibling_reads = 1;
        let mut two = LoadStats::new().unwrap();
        two.write = stats_with(&[10_000, 20_000], &[("timeout", 1)]);
        two.not_found = 3;
        stats.merge(&one);
        stats.merge(&two);
        let result = report(&sample_plan(), &stats, 2.0, None);
        assert_eq!(result.operations[0].ops, 4);
        assert_eq!(result.operations[1].ops, 2);
        assert_eq!(result.operations[2].ops, 6);
        assert_eq!(result.operations[2].errors, 3);
        assert_eq!(result.total_ops_per_sec, 3.0);
        let text = format_report(&result);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "4 client(s), 1 endpoint(s), 100 keys (zipfian 0.99), 10 B values, read ratio 0.5, 2.00s measured"
        );
        assert_eq!(
            lines[1],
            "operation       ops      ops/s    p50 ms    p99 ms  p99.9 ms    max ms  errors"
        );
        assert_eq!(
            lines[2],
            "read              4        2.0     2.000     4.001     4.001     4.001       2"
        );
        assert_eq!(
            lines[3],
            "write             2        1.0    10.007    20.015    20.015    20.015       1"
        );
        assert!(lines[4].starts_with("total             6        3.0"));
        assert_eq!(lines[5], "total: 3.0 ops/s");
        assert_eq!(lines[6], "read errors 503 quorum_not_reached: 2");
        assert_eq!(lines[7], "write errors timeout: 1");
        assert_eq!(
            lines[8],
            "siblings: max 2 live per read; 1 of 4 reads saw more than one; 3 reads found no value"
        );
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["operations"][0]["operation"], "read");
        assert_eq!(json["distribution"], "zipfian");
        assert_eq!(json["max_siblings"], 2);
    }

    #[test]
    fn empty_reports_have_zero_rows() {
        let stats = LoadStats::new().unwrap();
        let result = report(&sample_plan(), &stats, 0.0, None);
        assert!(
            result
                .operations
                .iter()
                .all(|r| r.ops == 0 && r.p99_ms == 0.0)
        );
        assert!(format_report(&result).contains("total: 0.0 ops/s"));
    }

    #[test]
    fn error_kinds_name_status_and_code() {
        let error = Error::Server {
            status: 503,
            body: kvapi::ErrorBody {
                error: "quorum_not_reached".into(),
                message: "1 of 2".into(),
                context: None,
                replied: Some(1),
                required: Some(2),
            },
        };
        assert_eq!(error_kind(&error), "503 quorum_not_reached");
        assert_eq!(
            error_kind(&Error::InvalidResponse("x".into())),
            "invalid response"
        );
        let mut contexts = HashMap::new();
        let conflict = Error::Server {
            status: 409,
            body: kvapi::ErrorBody {
                error: "too_many_siblings".into(),
                message: "resolve".into(),
                context: Some("ctx".into()),
                replied: None,
                required: None,
            },
        };
        remember_error_context(&mut contexts, 4, &conflict);
        assert_eq!(contexts.get(&4).map(String::as_str), Some("ctx"));
    }
}
