//! The command line of `kvctl bench` and its value parsers.

use std::time::Duration;

use clap::Args;

use super::keys::KeyDistribution;
use super::target::Target;
use super::workload::Workload;

/// Largest `--keys`.
pub(super) const MAX_KEYS: u64 = 100_000_000;
/// Largest `--value-size` (the node's default value limit).
pub(super) const MAX_VALUE_SIZE: u64 = kvapi::DEFAULT_MAX_VALUE_BYTES as u64;
/// Hard cap on the operations of one run when `--max-ops` is absent.
pub(super) const DEFAULT_MAX_OPS: u64 = 1_000_000_000;
/// Largest `--rate`.
const MAX_RATE: f64 = 10_000_000.0;

/// Arguments of `kvctl bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// The system under load.
    #[arg(
        long,
        env = "KVCTL_BENCH_TARGET",
        value_enum,
        default_value = "kvcluster"
    )]
    pub(crate) target: Target,

    /// Endpoints to spread the requests over, comma-separated: kvcluster nodes (the global --endpoint
    /// when absent), etcd members (`http://host:2379`), Redis servers (`host:6379`; each client keeps
    /// one connection to one of them) or Garage nodes' K2V API (`http://host:3904`).
    #[arg(
        long,
        env = "KVCTL_BENCH_ENDPOINTS",
        value_name = "URL,URL,...",
        value_delimiter = ','
    )]
    pub(crate) endpoints: Vec<String>,

    /// Garage: the bucket of the K2V items.
    #[arg(long, env = "KVCTL_BENCH_K2V_BUCKET", value_name = "BUCKET")]
    pub(crate) k2v_bucket: Option<String>,

    /// Garage: the access key id the K2V requests are signed with.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", value_name = "ID")]
    pub(crate) access_key: Option<String>,

    /// Garage: the secret key of --access-key (better given in the environment).
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub(crate) secret_key: Option<SecretText>,

    /// Concurrent clients, each with one request in flight.
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

    /// Fraction of operations that are reads, 0..=1 (0.5 = YCSB A, 0.95 = B, 1 = C); see --workload.
    #[arg(long, env = "KVCTL_BENCH_READ_RATIO", default_value_t = 0.5, value_name = "RATIO",
          value_parser = parse_ratio)]
    pub(crate) read_ratio: f64,

    /// A named mix instead of --read-ratio: `write` (0), `a` (0.5), `b` (0.95) or `c` (1).
    #[arg(
        long,
        env = "KVCTL_BENCH_WORKLOAD",
        value_enum,
        conflicts_with = "read_ratio"
    )]
    pub(crate) workload: Option<Workload>,

    /// Open loop: this many operations per second in total, each due at a fixed time whichever client
    /// is free, with latency counted from that time (no coordinated omission). Closed loop when absent.
    #[arg(long, env = "KVCTL_BENCH_RATE", value_name = "OPS", value_parser = parse_rate)]
    pub(crate) rate: Option<f64>,

    /// A local server process (repeatable): its CPU-seconds (user + system, /proc/PID/stat) over the
    /// measured phase are reported, also per 1,000 operations.
    #[arg(long = "server-pid", value_name = "PID")]
    pub(crate) server_pids: Vec<u32>,

    /// kvcluster: this many long-polls of the change feed of the bench keys (`GET
    /// /v1/watch?prefix=bench-`) alongside the load, each resuming from its cursor; reports the changes
    /// they received per second and their errors.
    #[arg(long, env = "KVCTL_BENCH_WATCHERS", default_value_t = 0, value_name = "K",
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub(crate) watchers: u32,

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

/// A secret given on the command line or in the environment, never shown by `Debug`.
#[derive(Clone)]
pub(crate) struct SecretText(pub(super) String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl std::str::FromStr for SecretText {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<SecretText, Self::Err> {
        Ok(SecretText(text.to_owned()))
    }
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

/// Parses an operation rate within 0 (exclusive) ..= 10 million per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if rate > 0.0 && rate <= MAX_RATE {
        Ok(rate)
    } else {
        Err(format!("{rate} is not within 0 (exclusive) ..= {MAX_RATE}"))
    }
}

/// Parses a ratio within 0..=1.
fn parse_ratio(text: &str) -> Result<f64, String> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

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
}
