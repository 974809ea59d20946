//! Causality: dotted version vector sets (DVV sets) with node actors.
//!
//! A key's state is a [`SiblingSet`]: the causally concurrent values (or tombstones) of the key, each
//! tagged with the unique *dot* `(actor, counter)` of the write that created it, plus one version vector
//! that summarises every dot this state has seen. The version vector is also the *causal context* handed
//! to clients. This module owns the algebra only: it never does I/O and never looks at time except
//! through the timestamps callers pass in.
//!
//! Expiry (TTL) is part of a version, not an event of its own: a sibling may carry the absolute time
//! its value expires, fixed by the coordinator when it made the dot. Every copy of a dot carries the
//! same expiry, so merge stays a join on dots and needs no clock; whether a sibling is *dead* (a
//! tombstone, or expired) is a predicate of the sibling and the reader's `now`, monotone in `now`.
//! A merge never makes a value visible at time `t` that neither side shows at `t`, which is why no
//! late copy can bring an expired value back.
//!
//! Why dots and not a plain vector clock per object: with node actors, two clients writing through one
//! coordinator with the same context would get clocks where the second dominates the first, silently
//! dropping a write. Each write here gets a fresh dot, and a write removes exactly the siblings whose dots
//! its context covers, so concurrent writes survive as siblings.
//!
//! Invariant relied on by [`SiblingSet::merge`]: states travel between replicas whole (never as deltas), so
//! whenever a state's vector covers a dot, that state either holds the dot's sibling or has superseded it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most actors one key's version vector may name. A key gains one actor per data-directory
/// incarnation that coordinated a write to it, so a healthy cluster stays far below this; the cap
/// bounds what a buggy or hostile peer can make a key cost (and keeps every context token under
/// [`crate::context_token::MAX_CONTEXT_TOKEN_CHARS`]).
pub const MAX_ACTORS: usize = 64;

/// Why a write cannot be applied to a key's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CausalityError {
    /// The actor's counter for this key is at `u64::MAX`: no fresh dot exists.
    #[error("the version counter of {0:?} on this key is exhausted")]
    CounterExhausted(Actor),
    /// The write would make the key's vector name more than [`MAX_ACTORS`] actors.
    #[error("the key's version vector would name more than {MAX_ACTORS} actors")]
    TooManyActors,
}

/// The identity that stamps writes: a node id plus the incarnation of its data directory, so a node
/// whose data was wiped never reuses a dot it issued before.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor(pub String);

impl Actor {
    /// Builds the actor of `node_id` for the data directory incarnation `incarnation`.
    pub fn new(node_id: &str, incarnation: u32) -> Self {
        Actor(format!("{node_id}.{incarnation:08x}"))
    }
}

/// One write event: the `counter`-th write coordinated by `actor` on a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Who coordinated the write.
    pub actor: Actor,
    /// Per-key, per-actor sequence number, starting at 1.
    pub counter: u64,
}

/// A version vector: for each actor, the highest counter seen. Missing actors count as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<Actor, u64>);

impl VersionVector {
    /// The highest counter of `actor` this vector has seen.
    pub fn get(&self, actor: &Actor) -> u64 {
        self.0.get(actor).copied().unwrap_or(0)
    }

    /// True when the event `dot` is in the past this vector summarises.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.actor) >= dot.counter
    }

    /// True when every event `other` has seen, this vector has seen too.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(actor, &n)| self.get(actor) >= n)
    }

    /// Raises this vector to the pointwise maximum of itself and `other`.
    pub fn join(&mut self, other: &VersionVector) {
        for (actor, &n) in &other.0 {
            self.witness(actor, n);
        }
    }

    /// Records that `actor`'s events up to `counter` have been seen.
    pub fn witness(&mut self, actor: &Actor, counter: u64) {
        let entry = self.0.entry(actor.clone()).or_insert(0);
        *entry = (*entry).max(counter);
    }

    /// The actors this vector names, in order.
    pub fn actors(&self) -> impl Iterator<Item = &Actor> {
        self.0.keys()
    }

    /// Number of actors in the vector.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty vector (nothing seen).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One causally concurrent version of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// The write that created this version.
    pub dot: Dot,
    /// The value, or `None` for a tombstone left by a delete.
    pub value: Option<Vec<u8>>,
    /// Wall-clock milliseconds at the coordinator when written (used for tombstone grace, never for
    /// ordering).
    pub written_at_ms: u64,
    /// Wall-clock milliseconds (the coordinator's clock) from which the value reads as deleted, or
    /// `None` when it never expires. Fixed with the dot: every copy of the dot carries it.
    pub expires_at_ms: Option<u64>,
}

impl Sibling {
    /// True for a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// True when this sibling reads as deleted at `now_ms`: a tombstone, or a value whose expiry has
    /// come.
    pub fn is_dead_at(&self, now_ms: u64) -> bool {
        self.dead_since().is_some_and(|since| since <= now_ms)
    }

    /// From when this sibling reads as deleted: a tombstone from its write, an expiring value from
    /// its expiry, a plain value never. Tombstone grace counts from here.
    pub fn dead_since(&self) -> Option<u64> {
        if self.is_tombstone() {
            Some(self.written_at_ms)
        } else {
            self.expires_at_ms
        }
    }
}

/// The full causal state of one key: concurrent siblings plus the vector of everything seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingSet {
    seen: VersionVector,
    siblings: Vec<Sibling>,
}

impl SiblingSet {
    /// The siblings, live and tombstones, in dot order.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// The siblings that hold a value.
    pub fn live(&self) -> impl Iterator<Item = &Sibling> {
        self.siblings.iter().filter(|s| !s.is_tombstone())
    }

    /// This state with every value emptied, dots, tombstones and context kept: it merges and tells
    /// a live key from a deleted one as the full state does, at a fraction of the bytes.
    pub fn without_values(mut self) -> Self {
        for s in &mut self.siblings {
            if let Some(value) = &mut s.value {
                value.clear();
            }
        }
        self
    }

    /// The causal context of this state: every event it has seen.
    pub fn context(&self) -> &VersionVector {
        &self.seen
    }

    /// True when the key has never been written here.
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty() && self.seen.is_empty()
    }

    /// True when the key holds siblings and every one of them is dead at `now_ms`.
    pub fn all_dead_at(&self, now_ms: u64) -> bool {
        !self.siblings.is_empty() && self.siblings.iter().all(|s| s.is_dead_at(now_ms))
    }

    /// This state as a reader sees it at `now_ms`: each expired value shown as a tombstone of its
    /// dot. For answers only; what is stored and merged keeps the value and its expiry.
    pub fn as_seen_at(&self, now_ms: u64) -> SiblingSet {
        let mut seen = self.clone();
        for s in &mut seen.siblings {
            if s.is_dead_at(now_ms) {
                s.value = None;
            }
        }
        seen
    }

    /// A state from its parts (decoding older record formats); the siblings are put in dot order.
    pub(crate) fn from_parts(seen: VersionVector, mut siblings: Vec<Sibling>) -> Self {
        siblings.sort_by(|a, b| a.dot.cmp(&b.dot));
        SiblingSet { seen, siblings }
    }

    /// Applies a client write coordinated by `actor`: the siblings that `context` has seen are
    /// superseded, every other sibling survives, and the new version gets a fresh dot.
    ///
    /// `value` is `None` for a delete. Returns the new dot, or an error (and changes nothing) when no
    /// fresh dot exists or the vector would outgrow [`MAX_ACTORS`].
    pub fn update(
        &mut self,
        context: &VersionVector,
        actor: &Actor,
        value: Option<Vec<u8>>,
        written_at_ms: u64,
    ) -> Result<Dot, CausalityError> {
        self.update_expiring(context, actor, value, written_at_ms, None)
    }

    /// [`SiblingSet::update`] for a value that reads as deleted from `expires_at_ms` on.
    pub fn update_expiring(
        &mut self,
        context: &VersionVector,
        actor: &Actor,
        value: Option<Vec<u8>>,
        written_at_ms: u64,
        expires_at_ms: Option<u64>,
    ) -> Result<Dot, CausalityError> {
        let counter = self
            .seen
            .get(actor)
            .max(context.get(actor))
            .checked_add(1)
            .ok_or_else(|| CausalityError::CounterExhausted(actor.clone()))?;
        let mut seen = self.seen.clone();
        seen.join(context);
        seen.witness(actor, counter);
        if seen.len() > MAX_ACTORS {
            return Err(CausalityError::TooManyActors);
        }
        let dot = Dot {
            actor: actor.clone(),
            counter,
        };
        self.siblings.retain(|s| !context.covers(&s.dot));
        self.seen = seen;
        self.siblings.push(Sibling {
            dot: dot.clone(),
            value,
            written_at_ms,
            expires_at_ms,
        });
        self.siblings.sort_by(|a, b| a.dot.cmp(&b.dot));
        Ok(dot)
    }

    /// Number of siblings `update(context, ..)` would leave, without changing anything.
    pub fn siblings_after_update(&self, context: &VersionVector) -> usize {
        self.siblings
            .iter()
            .filter(|s| !context.covers(&s.dot))
            .count()
            + 1
    }

    /// Merges another replica's state of the same key into this one (a join: commutative,
    /// associative, idempotent). A sibling survives unless the other side has seen its dot and no
    /// longer holds it, which means the other side superseded it.
    pub fn merge(&mut self, other: &SiblingSet) {
        let mut merged: BTreeMap<&Dot, &Sibling> = BTreeMap::new();
        for s in &self.siblings {
            if other.holds(&s.dot) || !other.seen.covers(&s.dot) {
                merged.insert(&s.dot, s);
            }
        }
        for s in &other.siblings {
            if self.holds(&s.dot) || !self.seen.covers(&s.dot) {
                merged.entry(&s.dot).or_insert(s);
            }
        }
        let siblings = merged.into_values().cloned().collect();
        self.seen.join(&other.seen);
        self.siblings = siblings;
    }

    fn holds(&self, dot: &Dot) -> bool {
        self.siblings.iter().any(|s| &s.dot == dot)
    }
}

#[cfg(test)]
impl SiblingSet {
    /// The state after one blind write of `value` (`None`: a delete) by `kv-0`, for tests.
    pub(crate) fn one_write(value: Option<&[u8]>) -> SiblingSet {
        let mut set = SiblingSet::default();
        let written = set.update(
            &VersionVector::default(),
            &Actor::new("kv-0", 1),
            value.map(<[u8]>::to_vec),
            0,
        );
        assert!(written.is_ok(), "a first write always gets a dot");
        set
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn actor(i: u8) -> Actor {
        Actor::new(&format!("kv-{i}"), 1)
    }

    fn values(set: &SiblingSet) -> Vec<Option<Vec<u8>>> {
        set.siblings().iter().map(|s| s.value.clone()).collect()
    }

    #[test]
    fn two_writes_with_one_context_both_survive() {
        let a = actor(0);
        let mut set = SiblingSet::default();
        set.update(&VersionVector::default(), &a, Some(b"base".to_vec()), 0)
            .unwrap();
        let ctx = set.context().clone();
        set.update(&ctx, &a, Some(b"one".to_vec()), 0).unwrap();
        set.update(&ctx, &a, Some(b"two".to_vec()), 0).unwrap();
        assert_eq!(
            values(&set),
            vec![Some(b"one".to_vec()), Some(b"two".to_vec())]
        );
        let resolved = set.context().clone();
        set.update(&resolved, &a, Some(b"merged".to_vec()), 0)
            .unwrap();
        assert_eq!(values(&set), vec![Some(b"merged".to_vec())]);
    }

    #[test]
    fn write_without_context_is_concurrent_with_everything() {
        let mut set = SiblingSet::default();
        set.update(&VersionVector::default(), &actor(0), Some(b"x".to_vec()), 0)
            .unwrap();
        set.update(&VersionVector::default(), &actor(0), Some(b"y".to_vec()), 0)
            .unwrap();
        assert_eq!(set.siblings().len(), 2);
    }

    #[test]
    fn delete_leaves_a_tombstone_with_context() {
        let a = actor(0);
        let mut set = SiblingSet::default();
        set.update(&VersionVector::default(), &a, Some(b"x".to_vec()), 0)
            .unwrap();
        let ctx = set.context().clone();
        set.update(&ctx, &a, None, 0).unwrap();
        assert_eq!(set.live().count(), 0);
        assert_eq!(set.siblings().len(), 1);
        assert!(set.context().get(&a) == 2);
    }

    #[test]
    fn merge_keeps_concurrent_writes_of_two_coordinators() {
        let mut left = SiblingSet::default();
        let mut right = SiblingSet::default();
        left.update(&VersionVector::default(), &actor(0), Some(b"l".to_vec()), 0)
            .unwrap();
        right
            .update(&VersionVector::default(), &actor(1), Some(b"r".to_vec()), 0)
            .unwrap();
        left.merge(&right);
        assert_eq!(left.siblings().len(), 2);
    }

    #[test]
    fn merge_drops_what_the_other_side_superseded() {
        let mut old = SiblingSet::default();
        old.update(
            &VersionVector::default(),
            &actor(0),
            Some(b"v1".to_vec()),
            0,
        )
        .unwrap();
        let mut new = old.clone();
        let ctx = new.context().clone();
        new.update(&ctx, &actor(1), Some(b"v2".to_vec()), 0)
            .unwrap();
        old.merge(&new);
        assert_eq!(values(&old), vec![Some(b"v2".to_vec())]);
    }

    #[test]
    fn an_exhausted_counter_refuses_the_write_instead_of_wrapping() {
        let a = actor(0);
        let mut set = SiblingSet::default();
        set.update(&VersionVector::default(), &a, Some(b"kept".to_vec()), 0)
            .unwrap();
        let mut exhausted = VersionVector::default();
        exhausted.witness(&a, u64::MAX);
        let before = set.clone();
        assert_eq!(
            set.update(&exhausted, &a, Some(b"x".to_vec()), 0),
            Err(CausalityError::CounterExhausted(a))
        );
        assert_eq!(set, before, "a refused write changes nothing");
    }

    #[test]
    fn a_write_that_would_outgrow_the_actor_cap_is_refused() {
        let mut set = SiblingSet::default();
        for i in 0..MAX_ACTORS {
            let a = Actor::new(&format!("kv-{i}"), 1);
            set.update(&VersionVector::default(), &a, None, 0).unwrap();
        }
        let ctx = set.context().clone();
        let before = set.clone();
        let newcomer = Actor::new("kv-new", 1);
        assert_eq!(
            set.update(&ctx, &newcomer, Some(vec![1]), 0),
            Err(CausalityError::TooManyActors)
        );
        assert_eq!(set, before);
        // An actor already named may still write, and resolve every sibling.
        set.update(&ctx, &actor(0), Some(vec![2]), 0).unwrap();
        assert_eq!(set.siblings().len(), 1);
    }

    // ---- property tests -------------------------------------------------------------------------

    /// A replica-level operation in a random history.
    #[derive(Debug, Clone)]
    enum Op {
        /// Replica `replica` coordinates a write with the context of its own latest read.
        WriteWithReadContext { replica: usize, tombstone: bool },
        /// Replica `replica` coordinates a blind write (no context).
        BlindWrite { replica: usize },
        /// Replica `replica` coordinates a write with its read context that expires `ttl` ticks
        /// after it is written (each operation is one tick).
        ExpiringWrite { replica: usize, ttl: u64 },
        /// Replica `to` merges the whole state of replica `from`.
        Sync { from: usize, to: usize },
    }

    const REPLICAS: usize = 3;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..REPLICAS, any::<bool>())
                .prop_map(|(replica, tombstone)| Op::WriteWithReadContext { replica, tombstone }),
            (0..REPLICAS).prop_map(|replica| Op::BlindWrite { replica }),
            (0..REPLICAS, 0..8u64).prop_map(|(replica, ttl)| Op::ExpiringWrite { replica, ttl }),
            (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    /// The dots of the values `set` shows at `now`.
    fn visible(set: &SiblingSet, now: u64) -> Vec<Dot> {
        set.as_seen_at(now).live().map(|s| s.dot.clone()).collect()
    }

    /// Runs a history and returns the replicas' states plus every dot ever written.
    fn run(ops: &[Op]) -> (Vec<SiblingSet>, Vec<Dot>) {
        let mut replicas = vec![SiblingSet::default(); REPLICAS];
        let mut written = Vec::new();
        let mut next_value = 0u32;
        for (tick, op) in ops.iter().enumerate() {
            let tick = tick as u64;
            match op {
                Op::WriteWithReadContext { replica, tombstone } => {
                    let ctx = replicas[*replica].context().clone();
                    next_value += 1;
                    let value = (!tombstone).then(|| next_value.to_be_bytes().to_vec());
                    written.push(
                        replicas[*replica]
                            .update(&ctx, &actor(*replica as u8), value, 0)
                            .unwrap(),
                    );
                }
                Op::BlindWrite { replica } => {
                    next_value += 1;
                    let value = Some(next_value.to_be_bytes().to_vec());
                    written.push(
                        replicas[*replica]
                            .update(&VersionVector::default(), &actor(*replica as u8), value, 0)
                            .unwrap(),
                    );
                }
                Op::ExpiringWrite { replica, ttl } => {
                    let ctx = replicas[*replica].context().clone();
                    next_value += 1;
                    let value = Some(next_value.to_be_bytes().to_vec());
                    written.push(
                        replicas[*replica]
                            .update_expiring(
                                &ctx,
                                &actor(*replica as u8),
                                value,
                                tick,
                                Some(tick + ttl),
                            )
                            .unwrap(),
                    );
                }
                Op::Sync { from, to } => {
                    let source = replicas[*from].clone();
                    replicas[*to].merge(&source);
                }
            }
        }
        (replicas, written)
    }

    fn canonical(set: &SiblingSet) -> (VersionVector, Vec<Sibling>) {
        (set.seen.clone(), set.siblings.clone())
    }

    proptest! {
        #[test]
        fn merge_is_commutative(ops in prop::collection::vec(op(), 0..40), a in 0..REPLICAS, b in 0..REPLICAS) {
            let (r, _) = run(&ops);
            let mut ab = r[a].clone();
            ab.merge(&r[b]);
            let mut ba = r[b].clone();
            ba.merge(&r[a]);
            prop_assert_eq!(canonical(&ab), canonical(&ba));
        }

        #[test]
        fn merge_is_associative_and_idempotent(ops in prop::collection::vec(op(), 0..40)) {
            let (r, _) = run(&ops);
            let mut left = r[0].clone();
            left.merge(&r[1]);
            left.merge(&r[2]);
            let mut bc = r[1].clone();
            bc.merge(&r[2]);
            let mut right = r[0].clone();
            right.merge(&bc);
            prop_assert_eq!(canonical(&left), canonical(&right));
            let mut twice = left.clone();
            twice.merge(&left);
            prop_assert_eq!(canonical(&twice), canonical(&left));
        }

        #[test]
        fn no_unseen_sibling_is_ever_dropped(ops in prop::collection::vec(op(), 0..60)) {
            // Every written dot is either still held by the fully merged state, or superseded by a
            // write whose context had seen it: after merging all replicas, a dot that is absent must be
            // covered by the context of some sibling-producing write that saw it. We check the
            // observable consequence: the merged state holds every dot that no later write's context
            // covered.
            let mut replicas = vec![SiblingSet::default(); REPLICAS];
            let mut superseded: Vec<Dot> = Vec::new();
            let mut written: Vec<Dot> = Vec::new();
            for op in &ops {
                match op {
                    Op::WriteWithReadContext { replica, tombstone } => {
                        let ctx = replicas[*replica].context().clone();
                        superseded.extend(written.iter().filter(|d| ctx.covers(d)).cloned());
                        let value = (!tombstone).then(|| vec![1]);
                        written.push(replicas[*replica].update(&ctx, &actor(*replica as u8), value, 0).unwrap());
                    }
                    Op::ExpiringWrite { replica, ttl } => {
                        let ctx = replicas[*replica].context().clone();
                        superseded.extend(written.iter().filter(|d| ctx.covers(d)).cloned());
                        written.push(replicas[*replica].update_expiring(
                            &ctx, &actor(*replica as u8), Some(vec![3]), 0, Some(*ttl)).unwrap());
                    }
                    Op::BlindWrite { replica } => {
                        written.push(replicas[*replica].update(
                            &VersionVector::default(), &actor(*replica as u8), Some(vec![2]), 0).unwrap());
                    }
                    Op::Sync { from, to } => {
                        let source = replicas[*from].clone();
                        replicas[*to].merge(&source);
                    }
                }
            }
            let mut all = SiblingSet::default();
            for r in &replicas {
                all.merge(r);
            }
            for dot in &written {
                if !superseded.contains(dot) {
                    prop_assert!(all.holds(dot), "dot {:?} lost", dot);
                }
            }
            // And nothing superseded comes back.
            for dot in &superseded {
                prop_assert!(!all.holds(dot), "superseded dot {:?} resurrected", dot);
            }
        }

        #[test]
        fn write_with_read_context_supersedes_exactly_what_the_read_saw(ops in prop::collection::vec(op(), 0..40), replica in 0..REPLICAS) {
            let (mut r, _) = run(&ops);
            let read = r[replica].clone();
            let ctx = read.context().clone();
            // Concurrently, another replica's state arrives before the write (something the read did
            // not see).
            let other = (replica + 1) % REPLICAS;
            r[other].update(&VersionVector::default(), &actor(other as u8), Some(b"late".to_vec()), 0).unwrap();
            let late = r[other].clone();
            r[replica].merge(&late);
            let before: Vec<Dot> = r[replica].siblings().iter().map(|s| s.dot.clone()).collect();
            let dot = r[replica].update(&ctx, &actor(replica as u8), Some(b"new".to_vec()), 0).unwrap();
            let after: Vec<Dot> = r[replica].siblings().iter().map(|s| s.dot.clone()).collect();
            for d in &before {
                let seen_by_read = read.siblings().iter().any(|s| &s.dot == d);
                prop_assert_eq!(after.contains(d), !seen_by_read, "dot {:?}", d);
            }
            prop_assert!(after.contains(&dot));
        }

        #[test]
        fn a_merge_shows_no_value_that_neither_side_shows(
            ops in prop::collection::vec(op(), 0..40), a in 0..REPLICAS, b in 0..REPLICAS, now in 0..48u64,
        ) {
            // The no-resurrection law: whatever copy arrives (a hint, a read repair, an anti-entropy
            // page), the merged state shows at `now` only values one of the two sides showed at `now`.
            let (r, _) = run(&ops);
            let mut merged = r[a].clone();
            merged.merge(&r[b]);
            let either: Vec<Dot> = visible(&r[a], now).into_iter().chain(visible(&r[b], now)).collect();
            for dot in visible(&merged, now) {
                prop_assert!(either.contains(&dot), "merge revived {:?} at {}", dot, now);
            }
        }

        #[test]
        fn expiry_never_unexpires(
            ops in prop::collection::vec(op(), 0..40), a in 0..REPLICAS, b in 0..REPLICAS,
            now in 0..48u64, later in 0..16u64,
        ) {
            // A value dead at `now` stays dead at every later time, in its state and in every merge
            // of that state with another replica's.
            let (r, _) = run(&ops);
            let mut merged = r[a].clone();
            merged.merge(&r[b]);
            let dead: Vec<Dot> = r[a].siblings().iter().filter(|s| s.is_dead_at(now)).map(|s| s.dot.clone()).collect();
            for set in [&r[a], &merged] {
                for dot in visible(set, now + later) {
                    prop_assert!(!dead.contains(&dot), "{:?} came back at {}", dot, now + later);
                }
            }
            let seen = r[a].as_seen_at(now);
            prop_assert_eq!(seen.context(), r[a].context(), "expiry keeps the context");
            prop_assert_eq!(seen.siblings().len(), r[a].siblings().len(), "expiry keeps the dots");
        }
    }

    #[test]
    fn an_expired_value_reads_as_a_tombstone_a_write_with_its_context_supersedes() {
        let a = actor(0);
        let mut set = SiblingSet::default();
        set.update_expiring(
            &VersionVector::default(),
            &a,
            Some(b"x".to_vec()),
            10,
            Some(20),
        )
        .unwrap();
        assert_eq!(set.as_seen_at(19).live().count(), 1);
        assert_eq!(set.as_seen_at(20).live().count(), 0);
        assert!(set.all_dead_at(20) && !set.all_dead_at(19));
        assert_eq!(set.siblings()[0].dead_since(), Some(20));
        let ctx = set.as_seen_at(25).context().clone();
        set.update(&ctx, &a, Some(b"y".to_vec()), 25).unwrap();
        assert_eq!(values(&set), vec![Some(b"y".to_vec())]);
        assert_eq!(set.siblings()[0].dead_since(), None);
    }
}
