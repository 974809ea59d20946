//! `--workload` (the YCSB mixes) and `--rate` (the open loop's schedule).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;
use tokio::time::Instant;

/// A named mix of reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Workload {
    /// Writes only (read ratio 0).
    Write,
    /// YCSB A: half reads (0.5).
    A,
    /// YCSB B: 95% reads (0.95).
    B,
    /// YCSB C: reads only (1).
    C,
}

impl Workload {
    /// The fraction of reads.
    pub(super) fn read_ratio(self) -> f64 {
        match self {
            Workload::Write => 0.0,
            Workload::A => 0.5,
            Workload::B => 0.95,
            Workload::C => 1.0,
        }
    }
}

/// The open loop's arrival times: operation `n` of the run is due `n / rate` seconds after its start,
/// whichever client is free to send it.
#[derive(Debug)]
pub(super) struct Schedule {
    /// When operation 0 is due.
    start: Instant,
    /// Operations per second, all clients together.
    rate: f64,
    /// The next operation's number.
    next: AtomicU64,
}

impl Schedule {
    /// A schedule of `rate` operations per second from `start`.
    pub(super) fn new(start: Instant, rate: f64) -> Schedule {
        Schedule {
            start,
            rate,
            next: AtomicU64::new(0),
        }
    }

    /// When operation `n` is due.
    pub(super) fn slot(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 / self.rate)
    }

    /// Claims the next operation and returns when it is due.
    pub(super) fn next(&self) -> Instant {
        self.slot(self.next.fetch_add(1, Ordering::Relaxed))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn workloads_map_to_read_ratios() {
        assert_eq!(Workload::Write.read_ratio(), 0.0);
        assert_eq!(Workload::A.read_ratio(), 0.5);
        assert_eq!(Workload::B.read_ratio(), 0.95);
        assert_eq!(Workload::C.read_ratio(), 1.0);
    }

    #[test]
    fn the_schedule_is_fixed_whenever_slots_are_claimed() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 1000.0);
        assert_eq!(schedule.next(), start);
        assert_eq!(schedule.next(), start + Duration::from_millis(1));
        // A late claimer still gets the slot it was due at, not "now": the delay is counted as latency.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(schedule.next(), start + Duration::from_millis(2));
        assert_eq!(schedule.slot(1500), start + Duration::from_millis(1500));
    }
}
