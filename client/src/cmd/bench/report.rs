//! The result of a run: the rows per kind of operation, as a table or JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Plan;
use super::Target;
use super::keys::KeyDistribution;
use super::load::PreloadReport;
use super::stats::{LoadStats, OpStats};
use super::watch::WatchReport;

/// One row of the result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OpReport {
    /// `read`, `write` or `total`.
    pub(super) operation: String,
    /// Successful operations.
    pub(super) ops: u64,
    /// Successful operations per second of the measured time.
    pub(super) ops_per_sec: f64,
    /// Median latency, milliseconds.
    pub(super) p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub(super) p99_ms: f64,
    /// 99.9th percentile, milliseconds.
    pub(super) p999_ms: f64,
    /// Largest latency, milliseconds.
    pub(super) max_ms: f64,
    /// Mean latency, milliseconds.
    pub(super) mean_ms: f64,
    /// Failed operations.
    pub(super) errors: u64,
    /// Failed operations by kind.
    pub(super) error_kinds: BTreeMap<String, u64>,
}

impl OpReport {
    /// The row of one kind of operation over `seconds` of measured time.
    pub(super) fn new(operation: &str, stats: &OpStats, seconds: f64) -> OpReport {
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
    /// The system under load.
    pub(super) target: Target,
    /// Open-loop rate, operations per second (`null`: closed loop).
    pub(super) rate: Option<f64>,
    /// Endpoints the load went to.
    pub(super) endpoints: Vec<String>,
    /// Concurrent clients.
    pub(super) clients: u32,
    /// Distinct keys.
    pub(super) keys: u64,
    /// Bytes per value.
    pub(super) value_size: usize,
    /// Fraction of reads.
    pub(super) read_ratio: f64,
    /// Key popularity.
    pub(super) distribution: KeyDistribution,
    /// Configured measured duration, seconds.
    pub(super) duration_s: f64,
    /// Configured warmup, seconds.
    pub(super) warmup_s: f64,
    /// Measured time: from the end of the warmup to the completion of the last measured operation.
    pub(super) elapsed_s: f64,
    /// The preload, when there was one.
    pub(super) preload: Option<PreloadReport>,
    /// `read`, `write` and `total` rows.
    pub(super) operations: Vec<OpReport>,
    /// Successful operations per second, all kinds.
    pub(super) total_ops_per_sec: f64,
    /// Reads of an absent or deleted key.
    pub(super) reads_not_found: u64,
    /// Most live siblings one read returned.
    pub(super) max_siblings: u64,
    /// Reads that returned more than one live sibling.
    pub(super) reads_with_siblings: u64,
    /// The `--server-pid` processes.
    pub(super) server_pids: Vec<u32>,
    /// Their CPU-seconds over the measured phase, together.
    pub(super) server_cpu_s: Option<f64>,
    /// Those CPU-seconds per 1,000 successful operations.
    pub(super) server_cpu_s_per_1000_ops: Option<f64>,
    /// The change-feed watchers, when there were any.
    pub(super) watch: Option<WatchReport>,
}

impl BenchReport {
    /// Adds the servers' CPU-seconds over the measured phase (`None`: not measured).
    pub(super) fn set_server_cpu(&mut self, pids: &[u32], seconds: Option<f64>) {
        self.server_pids = pids.to_vec();
        self.server_cpu_s = seconds;
        let ops = self.operations.get(2).map_or(0, |total| total.ops);
        self.server_cpu_s_per_1000_ops =
            seconds.filter(|_| ops > 0).map(|s| s * 1000.0 / ops as f64);
    }
}

/// Builds the report of a run from the merged statistics.
pub(super) fn report(
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
        target: plan.target,
        rate: plan.rate,
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
        server_pids: Vec::new(),
        server_cpu_s: None,
        server_cpu_s_per_1000_ops: None,
        watch: None,
    }
}

/// The human-readable result: a settings line, the table, then errors by kind and the sibling statistics.
pub(crate) fn format_report(report: &BenchReport) -> String {
    let mut out = format!(
        "{}: {} client(s){}, {} endpoint(s), {} keys ({}), {} B values, read ratio {}, {:.2}s measured{}\n",
        match report.target {
            Target::Kvcluster => "kvcluster",
            Target::Etcd => "etcd",
            Target::Redis => "redis",
            Target::Garage => "garage",
        },
        report.clients,
        match report.rate {
            Some(rate) => format!(" at {rate} ops/s (open loop)"),
            None => String::new(),
        },
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
    if let Some(cpu) = report.server_cpu_s {
        out.push_str(&format!(
            "server CPU: {cpu:.3} s over {} process(es){}\n",
            report.server_pids.len(),
            match report.server_cpu_s_per_1000_ops {
                Some(per) => format!(", {per:.3} CPU-s per 1,000 ops"),
                None => String::new(),
            }
        ));
    }
    if let Some(watch) = &report.watch {
        out.push_str(&format!(
            "watch: {} watcher(s), {} feed answers, {} changes ({:.1}/s), {} error(s)\n",
            watch.watchers,
            watch.calls,
            watch.changes,
            watch.changes_per_sec,
            watch.errors.values().sum::<u64>()
        ));
        for (kind, count) in &watch.errors {
            out.push_str(&format!("watch errors {kind}: {count}\n"));
        }
    }
    let reads = report.operations.first().map_or(0, |r| r.ops);
    if report.target == Target::Kvcluster {
        out.push_str(&format!(
            "siblings: max {} live per read; {} of {reads} reads saw more than one; {} reads found no value\n",
            report.max_siblings, report.reads_with_siblings, report.reads_not_found
        ));
    } else {
        out.push_str(&format!(
            "{} of {reads} reads found no value\n",
            report.reads_not_found
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

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
            target: Target::Kvcluster,
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
            rate: None,
            watchers: 0,
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
            "kvcluster: 4 client(s), 1 endpoint(s), 100 keys (zipfian 0.99), 10 B values, read ratio 0.5, 2.00s measured"
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
    fn server_cpu_and_watchers_are_reported() {
        let mut stats = LoadStats::new().unwrap();
        stats.write = stats_with(&[1000; 500], &[]);
        let mut result = report(&sample_plan(), &stats, 1.0, None);
        result.set_server_cpu(&[7, 8], Some(0.25));
        assert_eq!(result.server_cpu_s_per_1000_ops, Some(0.5));
        result.watch = Some(WatchReport {
            watchers: 2,
            calls: 10,
            changes: 40,
            changes_per_sec: 40.0,
            errors: BTreeMap::from([("410 cursor_gone".to_owned(), 1)]),
        });
        let text = format_report(&result);
        assert!(
            text.contains("server CPU: 0.250 s over 2 process(es), 0.500 CPU-s per 1,000 ops\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "watch: 2 watcher(s), 10 feed answers, 40 changes (40.0/s), 1 error(s)\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["server_cpu_s_per_1000_ops"], 0.5);
        assert_eq!(json["watch"]["changes"], 40);
        // No successful operation: no per-1,000 figure rather than a division by zero.
        let mut empty = report(&sample_plan(), &LoadStats::new().unwrap(), 1.0, None);
        empty.set_server_cpu(&[7], Some(0.25));
        assert_eq!(empty.server_cpu_s_per_1000_ops, None);
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
}
