//! `kvctl bench --batch K`: each client request is one `POST /v1/batch` of K operations on distinct
//! keys (reads and writes mixed by --read-ratio), instead of one single-key request. Every item is
//! counted as one operation, with its batch's latency.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kvapi::batch::{BatchItem, BatchOp};
use kvclient::{BatchOptions, Client};
use rand::RngExt;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use super::Shared;
use super::keys::key_name;
use super::stats::{LoadStats, error_kind};

/// Sends one batch and records each item's outcome, its latency counted from `started` (when it was due).
pub(super) async fn step(
    shared: &Shared,
    client: &Client,
    rng: &mut SmallRng,
    contexts: &mut HashMap<u64, String>,
    started: Instant,
    measuring: bool,
    stats: &mut LoadStats,
) {
    let plan = &shared.plan;
    let value = STANDARD.encode(&shared.value);
    let mut chosen: Vec<(u64, bool)> = Vec::with_capacity(plan.batch as usize);
    let mut items = Vec::with_capacity(plan.batch as usize);
    // Distinct keys: two blind writes of one key in one batch would only make siblings.
    for _ in 0..plan.batch {
        let key_index = shared.chooser.next(rng);
        if chosen.iter().any(|(k, _)| *k == key_index) {
            continue;
        }
        let read = rng.random_bool(plan.read_ratio);
        chosen.push((key_index, read));
        items.push(BatchItem {
            op: if read { BatchOp::Get } else { BatchOp::Put },
            key: STANDARD.encode(key_name(key_index)),
            value: (!read).then(|| value.clone()),
            context: if read {
                None
            } else {
                contexts.get(&key_index).cloned()
            },
            ttl: None,
        });
    }
    let outcome = client.batch(items, &BatchOptions::default()).await;
    let elapsed = started.elapsed();
    let results = match outcome {
        Ok(results) => results,
        Err(e) => {
            if measuring {
                for (_, read) in chosen {
                    let op = if read {
                        &mut stats.read
                    } else {
                        &mut stats.write
                    };
                    op.error(error_kind(&e));
                }
            }
            return;
        }
    };
    for ((key_index, read), result) in chosen.into_iter().zip(results) {
        let context = result
            .context
            .clone()
            .or_else(|| result.error.as_ref().and_then(|e| e.context.clone()));
        if let Some(context) = context {
            contexts.insert(key_index, context);
        }
        if !measuring {
            continue;
        }
        let op = if read {
            &mut stats.read
        } else {
            &mut stats.write
        };
        match &result.error {
            Some(error) => op.error(format!("{} {}", result.status, error.error)),
            None => {
                op.record(elapsed);
                if read && result.status == 404 {
                    stats.not_found += 1;
                }
                let live = result
                    .siblings
                    .iter()
                    .flatten()
                    .filter(|s| !s.deleted)
                    .count() as u64;
                stats.max_siblings = stats.max_siblings.max(live);
                if live > 1 {
                    stats.multi_sibling_reads += 1;
                }
            }
        }
    }
    stats.last_done = Some(Instant::now());
}
