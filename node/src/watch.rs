//! Watch: this node's log of key changes, and the cap on the requests that wait on it.
//!
//! The replica records every key whose stored state it changes (a coordinated write, a replication
//! merge, a delivered hint, an anti-entropy page) in a [`ChangeLog`]: a bounded in-memory ring of
//! `(sequence, key)` that belongs to this process. Waiters are woken through a `watch` channel that
//! holds only the latest sequence, so a slow waiter never makes the node buffer anything: it reads
//! what it missed from the ring, and learns that it fell too far behind when its sequence is no longer
//! there ([`Since::Lost`]). A restarted node starts a new log with a new id, so a cursor of the old
//! process is recognised as lost too, never misread. This module never reads or writes storage.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::error::Error;
use crate::metrics::Metrics;

/// Changes the log keeps: about 4 MiB of keys at 64 bytes each.
pub const DEFAULT_LOG_ENTRIES: usize = 65_536;

/// A position in one node's change log: the log's id and the last sequence read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// The log's id, random per process.
    pub log: u64,
    /// The last sequence read (0 before the first change).
    pub seq: u64,
}

/// The position before the first change of any log (ids are never 0): a reader that never saw a
/// node's log starts there.
pub const START: Position = Position { log: 0, seq: 0 };

/// What changed after a [`Position`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// The keys that changed (in order, repeats possible) and the position after them.
    Changes(Vec<Arc<[u8]>>, Position),
    /// The position is of another log (the node restarted) or older than the ring keeps: changes
    /// may be missing, so the reader must re-read what it follows.
    Lost,
}

struct Ring {
    /// `(sequence, key)`, oldest first; sequences are consecutive.
    entries: VecDeque<(u64, Arc<[u8]>)>,
    last_seq: u64,
}

/// This node's bounded log of changed keys.
pub struct ChangeLog {
    id: u64,
    capacity: usize,
    ring: Mutex<Ring>,
    latest: watch::Sender<u64>,
}

impl ChangeLog {
    /// An empty log keeping the last `capacity` changes, with a fresh random id.
    pub fn new(capacity: usize) -> Self {
        ChangeLog {
            id: rand::random::<u64>() | 1,
            capacity: capacity.max(1),
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                last_seq: 0,
            }),
            latest: watch::channel(0).0,
        }
    }

    /// Records that `key`'s stored state changed, and wakes the waiters.
    pub fn record(&self, key: &[u8]) {
        let seq = {
            let mut ring = self.ring.lock();
            ring.last_seq += 1;
            let seq = ring.last_seq;
            ring.entries.push_back((seq, Arc::from(key)));
            if ring.entries.len() > self.capacity {
                ring.entries.pop_front();
            }
            seq
        };
        self.latest.send_replace(seq);
    }

    /// The position after the latest change: where a reader starts to see only what comes next.
    pub fn head(&self) -> Position {
        Position {
            log: self.id,
            seq: self.ring.lock().last_seq,
        }
    }

    /// The changes after `from` whose key starts with `prefix`, at most `limit` of them (the
    /// returned position stops after the last one returned, so nothing is skipped). [`START`] is
    /// the beginning of whichever log this is: lost once the log has dropped its first change.
    pub fn since(&self, from: Position, prefix: &[u8], limit: usize) -> Since {
        let from = if from == START {
            Position {
                log: self.id,
                seq: 0,
            }
        } else {
            from
        };
        let ring = self.ring.lock();
        let oldest = ring
            .entries
            .front()
            .map_or(ring.last_seq + 1, |(seq, _)| *seq);
        if from.log != self.id || from.seq > ring.last_seq || from.seq + 1 < oldest {
            return Since::Lost;
        }
        let mut keys = Vec::new();
        let mut position = Position {
            log: self.id,
            seq: ring.last_seq,
        };
        let skip = (from.seq + 1 - oldest) as usize;
        for (seq, key) in ring.entries.iter().skip(skip) {
            if key.starts_with(prefix) {
                if keys.len() == limit {
                    position.seq = seq - 1;
                    break;
                }
                keys.push(key.clone());
            }
        }
        Since::Changes(keys, position)
    }

    /// A receiver that is marked changed whenever a change is recorded.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

/// The cap on requests waiting for changes on this node (`--max-watchers`).
pub struct Watchers {
    permits: Arc<Semaphore>,
    max: usize,
    metrics: Arc<Metrics>,
}

/// One admitted watcher; dropping it frees its place.
pub struct WatcherPermit {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for WatcherPermit {
    fn drop(&mut self) {
        self.metrics.watchers.dec();
    }
}

impl Watchers {
    /// Admits at most `max` watchers at once.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Watchers {
            permits: Arc::new(Semaphore::new(max)),
            max,
            metrics,
        }
    }

    /// A place for one more watcher, or [`Error::TooManyWatchers`] when all are taken.
    pub fn admit(&self) -> Result<WatcherPermit, Error> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.watchers.inc();
                Ok(WatcherPermit {
                    _permit: permit,
                    metrics: self.metrics.clone(),
                })
            }
            Err(_) => {
                self.metrics.watchers_refused.inc();
                Err(Error::TooManyWatchers(self.max))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn keys(since: &Since) -> Vec<&[u8]> {
        match since {
            Since::Changes(keys, _) => keys.iter().map(|k| &k[..]).collect(),
            Since::Lost => panic!("lost"),
        }
    }

    #[test]
    fn a_reader_sees_every_change_after_its_position_in_order() {
        let log = ChangeLog::new(8);
        let start = log.head();
        for key in [&b"a/1"[..], b"b/1", b"a/2"] {
            log.record(key);
        }
        let since = log.since(start, b"a/", 10);
        assert_eq!(keys(&since), vec![&b"a/1"[..], b"a/2"]);
        let Since::Changes(_, next) = since else {
            unreachable!()
        };
        assert_eq!(next, log.head());
        assert_eq!(keys(&log.since(next, b"", 10)), Vec::<&[u8]>::new());
    }

    #[test]
    fn a_limit_stops_after_the_last_key_returned_so_nothing_is_skipped() {
        let log = ChangeLog::new(8);
        let start = log.head();
        for key in [&b"k1"[..], b"x", b"k2", b"k3"] {
            log.record(key);
        }
        let Since::Changes(first, next) = log.since(start, b"k", 2) else {
            panic!("lost")
        };
        assert_eq!(first.len(), 2);
        assert_eq!(keys(&log.since(next, b"k", 2)), vec![&b"k3"[..]]);
    }

    #[test]
    fn a_position_fallen_out_of_the_ring_or_of_another_log_is_lost() {
        let log = ChangeLog::new(2);
        let start = log.head();
        for key in [&b"1"[..], b"2", b"3"] {
            log.record(key);
        }
        assert_eq!(
            log.since(start, b"", 10),
            Since::Lost,
            "change 1 was dropped"
        );
        let kept = Position {
            log: start.log,
            seq: 1,
        };
        assert_eq!(keys(&log.since(kept, b"", 10)), vec![&b"2"[..], b"3"]);
        let other = ChangeLog::new(2);
        assert_eq!(other.since(log.head(), b"", 10), Since::Lost);
        assert_eq!(
            log.since(START, b"", 10),
            Since::Lost,
            "the start was dropped"
        );
        other.record(b"first");
        assert_eq!(keys(&other.since(START, b"", 10)), vec![&b"first"[..]]);
        let ahead = Position {
            log: start.log,
            seq: 99,
        };
        assert_eq!(log.since(ahead, b"", 10), Since::Lost);
    }

    #[test]
    fn the_watcher_cap_refuses_past_max_and_frees_on_drop() {
        let watchers = Watchers::new(1, Arc::new(Metrics::new()));
        let first = watchers.admit().unwrap();
        assert!(matches!(watchers.admit(), Err(Error::TooManyWatchers(1))));
        drop(first);
        watchers.admit().unwrap();
    }
}
