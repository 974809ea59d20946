//! `kvctl bench`: a YCSB-style load (DESIGN.md section 8) against kvcluster or a peer system (etcd, Redis),
//! so that they are measured by one client with the same settings.
//!
//! `--clients` tasks each issue one request at a time, round-robin over the endpoints, until `--duration`
//! has passed or `--max-ops` requests were issued, whichever comes first: as fast as answers come (closed
//! loop) or at a fixed total `--rate` (open loop, latency from the intended send time). On kvcluster a
//! read is a `GET`, a write a `PUT` carrying the causal context of the key's last read or write by the
//! same client, so the load does not pile up blind-write siblings. Latencies go into HdrHistograms
//! (microseconds); errors are counted by kind and are not latencies.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use kvclient::Client;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

mod args;
mod batch;
mod cpu;
mod etcd;
mod garage;
mod keys;
mod load;
mod report;
mod resp;
mod sigv4;
mod stats;
mod target;
mod watch;
mod workload;

pub(crate) use args::BenchArgs;
use args::{DEFAULT_MAX_OPS, MAX_KEYS, MAX_VALUE_SIZE};
use cpu::CpuProbe;
use keys::{KeyChooser, KeyDistribution};
use load::{client_loop, preload};
use report::{format_report, report};
use stats::LoadStats;
use target::{Backend, Target};
use workload::{Schedule, Workload};

use crate::{Access, EXIT_REFUSED, EXIT_UNREACHABLE, local_failure, stderr_line, stdout_bytes};

/// The validated plan of a run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The system under load.
    target: Target,
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
    /// Open-loop rate, operations per second.
    rate: Option<f64>,
    /// Change-feed watchers.
    watchers: u32,
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
        if args.target != Target::Kvcluster {
            return Err(format!("--target {:?} needs --endpoints", args.target));
        }
        endpoints.push(default_endpoint.to_owned());
    }
    let mut normalised = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        normalised.push(match args.target {
            Target::Kvcluster => {
                kvclient::normalise_endpoint(&endpoint).map_err(|e| e.to_string())?
            }
            Target::Etcd | Target::Garage => target::http_base(&endpoint)?,
            Target::Redis => target::redis_address(&endpoint)?,
        });
    }
    if args.batch > 1 && args.target != Target::Kvcluster {
        return Err("--batch needs --target kvcluster".to_owned());
    }
    if args.target == Target::Garage {
        let bucket_ok = args.k2v_bucket.as_deref().is_some_and(|b| {
            !b.is_empty()
                && b.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        });
        if !bucket_ok {
            return Err(
                "--target garage needs --k2v-bucket (lowercase letters, digits, '-', '.')"
                    .to_owned(),
            );
        }
        if args.access_key.is_none() || args.secret_key.is_none() {
            return Err(
                "--target garage needs --access-key and --secret-key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                    .to_owned(),
            );
        }
    }
    if args.watchers > 0 && args.target != Target::Kvcluster {
        return Err("--watchers needs --target kvcluster".to_owned());
    }
    let read_ratio = args.workload.map_or(args.read_ratio, Workload::read_ratio);
    if !(0.0..=1.0).contains(&read_ratio) {
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
        target: args.target,
        endpoints: normalised,
        clients: args.clients.max(1),
        duration: args.duration,
        warmup: args.warmup,
        keys: args.keys,
        value_size,
        read_ratio,
        distribution: args.distribution,
        preload: args.preload,
        preload_timeout: args.preload_timeout,
        max_ops: args.max_ops.unwrap_or(DEFAULT_MAX_OPS),
        timeout: args.timeout,
        batch: args.batch,
        rate: args.rate,
        watchers: args.watchers,
    })
}

/// The state the clients of a run share.
#[derive(Debug)]
struct Shared {
    /// The plan.
    plan: Plan,
    /// The target's shared connection state.
    backend: Backend,
    /// The open loop's schedule (`None`: closed loop).
    schedule: Option<Schedule>,
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

/// Runs `kvctl bench`.
pub(crate) async fn run(default_endpoint: &str, access: &Access, args: BenchArgs) -> ExitCode {
    let plan = match plan(&args, default_endpoint) {
        Ok(plan) => plan,
        Err(e) => {
            stderr_line(&format!("error: {e}"));
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    let mut seed_rng = SmallRng::seed_from_u64(rand::random());
    let value: Vec<u8> = (0..plan.value_size)
        .map(|_| seed_rng.random_range(b'a'..=b'z'))
        .collect();
    let backend = match plan.target {
        Target::Kvcluster => {
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
            Backend::Kvcluster(clients)
        }
        Target::Etcd => match target::plain_http(plan.timeout) {
            Ok(http) => Backend::Etcd {
                http,
                bases: plan.endpoints.clone(),
                value_b64: base64::engine::general_purpose::STANDARD.encode(&value),
            },
            Err(e) => {
                stderr_line(&format!("error: {e}"));
                return ExitCode::from(EXIT_REFUSED);
            }
        },
        Target::Redis => Backend::Redis(plan.endpoints.clone()),
        Target::Garage => match target::plain_http(plan.timeout) {
            Ok(http) => Backend::Garage(garage::K2v {
                http,
                bases: plan.endpoints.clone(),
                bucket: args.k2v_bucket.clone().unwrap_or_default(),
                credentials: sigv4::Credentials {
                    access_key: args.access_key.clone().unwrap_or_default(),
                    secret_key: args.secret_key.clone().map(|s| s.0).unwrap_or_default(),
                },
            }),
            Err(e) => {
                stderr_line(&format!("error: {e}"));
                return ExitCode::from(EXIT_REFUSED);
            }
        },
    };
    let cpu = if args.server_pids.is_empty() {
        None
    } else {
        match CpuProbe::new(&args.server_pids) {
            Ok(probe) => Some(probe),
            Err(e) => {
                stderr_line(&format!("error: {e}"));
                return ExitCode::from(EXIT_REFUSED);
            }
        }
    };
    let mut shared = Shared {
        chooser: KeyChooser::new(plan.distribution, plan.keys),
        plan: plan.clone(),
        backend,
        schedule: None,
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

    // Every client starts from the preload's contexts. Copied before the clock starts: for many
    // keys and clients the copies take seconds, which would otherwise be counted as measured time
    // (a short run then measured nothing).
    let mut client_contexts: Vec<HashMap<u64, String>> =
        (0..plan.clients).map(|_| contexts.clone()).collect();
    drop(contexts);
    let start = Instant::now();
    shared.measure_start = start + plan.warmup;
    shared.end = shared.measure_start + plan.duration;
    shared.schedule = plan.rate.map(|rate| Schedule::new(start, rate));
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
            client_contexts.pop().unwrap_or_default(),
            seed_rng.random(),
        ));
    }
    let mut watchers = tokio::task::JoinSet::new();
    for index in 0..plan.watchers as usize {
        watchers.spawn(watch::watcher(Arc::clone(&shared), index));
    }
    // The servers' CPU time at the start of the measured phase.
    let cpu_start = cpu.clone().map(|probe| {
        let at = shared.measure_start;
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            probe.seconds()
        })
    });
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
    let mut watch_report = (plan.watchers > 0).then(|| watch::WatchReport {
        watchers: plan.watchers,
        ..Default::default()
    });
    while let Ok(Some(joined)) = tokio::time::timeout_at(hard_stop, watchers.join_next()).await {
        if let (Some(total), Ok(one)) = (watch_report.as_mut(), joined) {
            total.merge(&one);
        }
    }
    watchers.abort_all();
    let elapsed = merged
        .last_done
        .map(|done| done.saturating_duration_since(shared.measure_start))
        .unwrap_or(plan.duration)
        .as_secs_f64();
    let server_cpu = match (cpu, cpu_start) {
        (Some(probe), Some(start)) => {
            let before = start
                .await
                .map_err(|e| e.to_string())
                .and_then(|reading| reading);
            match before.and_then(|before| Ok(probe.seconds()? - before)) {
                Ok(seconds) => Some(seconds),
                Err(e) => {
                    stderr_line(&format!("warning: server CPU not measured: {e}"));
                    None
                }
            }
        }
        _ => None,
    };
    let mut result = report(&plan, &merged, elapsed, preload_report);
    result.set_server_cpu(&args.server_pids, server_cpu);
    if let Some(mut watch) = watch_report {
        watch.changes_per_sec = if elapsed > 0.0 {
            watch.changes as f64 / elapsed
        } else {
            0.0
        };
        result.watch = Some(watch);
    }
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
