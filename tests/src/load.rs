//! A bounded background load of writes to unique keys that records every acknowledged write, for
//! the tests that change a ring under load and then read every acknowledged write back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::KvClient;

/// A write: `(key, value)`.
pub type Write = (Vec<u8>, Vec<u8>);

/// How much load, and for how long at most.
#[derive(Debug, Clone, Copy)]
pub struct LoadLimits {
    /// Concurrent writers.
    pub writers: usize,
    /// Writes per writer, at most.
    pub max_writes_per_writer: usize,
    /// Pause between one writer's writes.
    pub pause: Duration,
    /// Longest time the load may run.
    pub limit: Duration,
}

/// Writers of unique keys `load-{writer}-{n}` running in the background until [`WriteLoad::finish`].
pub struct WriteLoad {
    acked: Arc<Mutex<Vec<Write>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl WriteLoad {
    /// Writes `preload` keys `pre-{i}` through `clients` in turn (each must be acknowledged), then
    /// starts the writers, which use `clients` in turn too. Failed writes (a 503 during a ring
    /// change, say) are counted, not retried.
    pub async fn start(clients: &[KvClient], preload: usize, limits: LoadLimits) -> Self {
        let mut preloaded = Vec::with_capacity(preload);
        for i in 0..preload {
            let key = format!("pre-{i}").into_bytes();
            let value = format!("pre-value-{i}").into_bytes();
            clients[i % clients.len()].put_ok(&key, &value, None).await;
            preloaded.push((key, value));
        }
        let acked = Arc::new(Mutex::new(preloaded));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..limits.writers)
            .map(|w| {
                let clients = clients.to_vec();
                let acked = acked.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut failed = 0;
                    for n in 0..limits.max_writes_per_writer {
                        if stop.load(Ordering::Acquire) || started.elapsed() > limits.limit {
                            break;
                        }
                        let key = format!("load-{w}-{n}").into_bytes();
                        let value = format!("value-{w}-{n}").into_bytes();
                        match clients[n % clients.len()].try_put(&key, &value, None).await {
                            Ok(resp) if resp.status == 204 => {
                                acked.lock().unwrap().push((key, value));
                            }
                            _ => failed += 1,
                        }
                        tokio::time::sleep(limits.pause).await;
                    }
                    failed
                })
            })
            .collect();
        Self { acked, stop, tasks }
    }

    /// Writes acknowledged so far, the preloaded ones included.
    pub fn acknowledged(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the writers; returns every acknowledged write and the count of failed ones.
    pub async fn finish(self) -> (Vec<Write>, u64) {
        self.stop.store(true, Ordering::Release);
        let mut failed = 0;
        for task in self.tasks {
            failed += task.await.expect("a writer panicked");
        }
        let acked = self.acked.lock().unwrap().clone();
        (acked, failed)
    }
}
