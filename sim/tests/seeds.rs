//! The simulator over many seeds, and the proof that one seed replays exactly.
#![allow(clippy::expect_used)]

use kvsim::{Settings, simulate};

#[test]
fn one_seed_replays_the_same_trace() {
    let settings = Settings::default();
    let first = simulate(7, &settings).expect("first run");
    let second = simulate(7, &settings).expect("second run");
    assert!(
        first.trace.len() > 100,
        "a trace of {} events",
        first.trace.len()
    );
    if let Some(i) = (0..first.trace.len()).find(|&i| first.trace.get(i) != second.trace.get(i)) {
        panic!(
            "seed 7 diverged at event {i}: {:?} vs {:?}",
            first.trace.get(i),
            second.trace.get(i)
        );
    }
    assert_eq!(first.trace.len(), second.trace.len());
}

/// Seeds `start..start + count` (`KVSIM_SEEDS` scales the count), failing with every bad seed.
fn seeds_keep_every_property(start: u64, count: u64) {
    let count = std::env::var("KVSIM_SEEDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(count, |total| total.div_ceil(4));
    let settings = Settings::default();
    let mut failed = Vec::new();
    for seed in start..start + count {
        let outcome = simulate(seed, &settings).expect("simulation runs");
        if !outcome.violations.is_empty() {
            failed.push(format!(
                "seed {seed}: {:?}\n  replay: scripts/sim.sh --replay {seed}",
                outcome.violations
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

// Four ranges of 50, so the test harness runs them on every core.
#[test]
fn seeds_0_to_50_keep_every_property() {
    seeds_keep_every_property(0, 50);
}

#[test]
fn seeds_1000_to_1050_keep_every_property() {
    seeds_keep_every_property(1000, 50);
}

#[test]
fn seeds_2000_to_2050_keep_every_property() {
    seeds_keep_every_property(2000, 50);
}

#[test]
fn seeds_3000_to_3050_keep_every_property() {
    seeds_keep_every_property(3000, 50);
}
