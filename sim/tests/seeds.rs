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

#[test]
fn many_seeds_keep_every_property() {
    let seeds: u64 = std::env::var("KVSIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let settings = Settings::default();
    let mut failed = Vec::new();
    for seed in 0..seeds {
        let outcome = simulate(seed, &settings).expect("simulation runs");
        if !outcome.violations.is_empty() {
            failed.push(format!("seed {seed}: {:?}", outcome.violations));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
