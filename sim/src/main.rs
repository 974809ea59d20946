//! `kvsim [SEEDS] [START]` runs seeds START.. and prints each failing seed with its replay
//! command; `kvsim --replay SEED` prints that seed's full trace and violations.

use std::process::ExitCode;
use std::time::Instant;

use kvsim::{Settings, simulate};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = Settings::default();
    if args.first().map(String::as_str) == Some("--replay") {
        let Some(seed) = args.get(1).and_then(|s| s.parse::<u64>().ok()) else {
            eprintln!("usage: kvsim --replay SEED");
            return ExitCode::from(2);
        };
        return match simulate(seed, &settings) {
            Ok(outcome) => {
                for line in &outcome.trace {
                    println!("{line}");
                }
                for v in &outcome.violations {
                    println!("VIOLATION {v}");
                }
                if outcome.violations.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("seed {seed}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let number = |i: usize, default: u64| match args.get(i) {
        Some(s) => s.parse::<u64>().map_err(|_| format!("not a number: {s:?}")),
        None => Ok(default),
    };
    let (seeds, start) = match (number(0, 100), number(1, 0)) {
        (Ok(seeds), Ok(start)) => (seeds, start),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("usage: kvsim [SEEDS] [START] | kvsim --replay SEED ({e})");
            return ExitCode::from(2);
        }
    };
    let began = Instant::now();
    let mut failed = 0u64;
    for seed in start..start.saturating_add(seeds) {
        let violations = match simulate(seed, &settings) {
            Ok(outcome) => outcome.violations,
            Err(e) => vec![format!("the simulation could not run: {e}")],
        };
        if !violations.is_empty() {
            failed += 1;
            println!("FAILED seed {seed}: {}", violations.join("; "));
            println!("  replay: scripts/sim.sh --replay {seed}  (PROFILE=debug for a debug build)");
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    println!(
        "{seeds} seeds from {start}: {failed} failed, {seconds:.1} s, {:.0} seeds/minute",
        seeds as f64 * 60.0 / seconds.max(1e-9)
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
