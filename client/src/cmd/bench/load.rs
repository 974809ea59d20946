//! The load itself: the clients' loop (closed or open), and the preload.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kvclient::Error;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use super::stats::LoadStats;
use super::target::{Conn, Got};
use super::{Shared, Target, batch};

/// One client: issues operations until the end of the run or the operation cap, each as soon as the
/// previous one is answered (closed loop) or at its slot of the shared schedule (open loop, `--rate`).
/// Latency runs from when the operation was due, so a stalled server is not hidden by sending less.
pub(super) async fn client_loop(
    shared: Arc<Shared>,
    index: usize,
    contexts: HashMap<u64, String>,
    seed: u64,
) -> Result<LoadStats, String> {
    let mut stats = LoadStats::new()?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let plan = &shared.plan;
    let mut conn = Conn::new(&shared, index, contexts);
    loop {
        let due = match &shared.schedule {
            Some(schedule) => {
                let due = schedule.next();
                if due >= shared.end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        if Instant::now() >= shared.end {
            break;
        }
        let measuring = due >= shared.measure_start;
        if measuring {
            if shared.measured_issued.fetch_add(1, Ordering::Relaxed) >= plan.max_ops {
                break;
            }
        } else if shared.warmup_issued.fetch_add(1, Ordering::Relaxed) >= plan.max_ops {
            // Warmup cap reached: wait for the measured phase.
            tokio::time::sleep_until(shared.measure_start).await;
            continue;
        }
        if plan.batch > 1 {
            if let Some((client, contexts)) = conn.kvcluster(&shared) {
                batch::step(
                    &shared, client, &mut rng, contexts, due, measuring, &mut stats,
                )
                .await;
            }
            continue;
        }
        let key_index = shared.chooser.next(&mut rng);
        let read = rng.random_bool(plan.read_ratio);
        let outcome = if read {
            conn.read(&shared, key_index).await
        } else {
            conn.write(&shared, key_index).await.map(|()| Got::Missing)
        };
        if !measuring {
            continue;
        }
        let done = Instant::now();
        let op = if read {
            &mut stats.read
        } else {
            &mut stats.write
        };
        match outcome {
            Ok(got) => {
                op.record(done.saturating_duration_since(due));
                if read {
                    stats.saw(got);
                }
            }
            Err(kind) => op.error(kind),
        }
        stats.last_done = Some(done);
    }
    Ok(stats)
}

/// Keeps the context a 409 (sibling cap) answer carries, so the next write of the key resolves.
pub(super) fn remember_error_context(contexts: &mut HashMap<u64, String>, key: u64, error: &Error) {
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
    pub(super) written: u64,
    /// Keys that failed, by error kind.
    pub(super) errors: BTreeMap<String, u64>,
    /// Whether the preload stopped at its time bound before writing every key.
    pub(super) timed_out: bool,
    /// Seconds it took.
    pub(super) seconds: f64,
}

/// Writes every key once, at most `plan.clients` at a time; on kvcluster and Garage each write follows a
/// read for its context or causality token (so a rerun supersedes the old value instead of adding a sibling). Returns the report and
/// the contexts.
pub(super) async fn preload(shared: &Arc<Shared>) -> (PreloadReport, HashMap<u64, String>) {
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
            let mut conn = Conn::new(&shared, worker, HashMap::new());
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= shared.plan.keys || Instant::now() >= deadline {
                    break;
                }
                if matches!(shared.plan.target, Target::Kvcluster | Target::Garage)
                    && let Err(kind) = conn.read(&shared, index).await
                {
                    *errors.entry(kind).or_default() += 1;
                    continue;
                }
                match conn.write(&shared, index).await {
                    Ok(()) => written += 1,
                    Err(kind) => *errors.entry(kind).or_default() += 1,
                }
            }
            (written, errors, conn.into_contexts())
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::stats::error_kind;
    use super::*;

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
