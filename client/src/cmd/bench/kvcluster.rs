//! The kvcluster load: closed-loop clients and the preload, over `kvclient`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kvclient::{Error, ReadOptions, ReadResult, WriteOptions};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use super::keys::key_name;
use super::stats::{LoadStats, error_kind};
use super::{Shared, batch};

/// One closed-loop client: issues operations until the end of the run or the operation cap.
pub(super) async fn client_loop(
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

/// Writes every key once, at most `plan.clients` at a time, each after a read for its context (so a
/// rerun supersedes the old value instead of adding a sibling). Returns the report and the contexts.
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn error_kinds_name_status_and_code() {
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
