//! Validation of a peer message before it is dispatched: every field a peer sends is checked as if
//! the peer were hostile. Transport security (who may connect at all) is elsewhere; this is about a
//! member that is authenticated but buggy or compromised, or on another config than ours.
//!
//! Rules (a refusal names its rule as the `reason` of `kv_peer_messages_refused_total`):
//! - `epoch_jump`: the sender's epoch is more than [`MAX_EPOCH_JUMP`] past ours;
//! - `not_member`: the sender is not a member of the current ring or the one being left, for every
//!   message but those a non-member sends in normal operation: `Ping` and `FetchConfig` (a node
//!   behind or removed catches up with them), `Read`, `Changes`, `Coordinate` and `Merge` and the
//!   batched forms `List`, `ReadMany`, `CoordinateMany` and `MergeMany` (any node coordinates reads,
//!   feeds and listings, forwards writes, and repairs what it read), `DeliverHints` (a removed member hands off
//!   the hints it still holds);
//! - `partition`: a partition outside the ring's partition count;
//! - `key`: a key that is empty, longer than [`MAX_KEY_BYTES`], or not of the partition it is sent
//!   with (keys are stored under their partition, so a mislabelled key would be unreachable);
//! - `segment`: a Merkle segment outside `0..SEGMENTS`, or more segments than there are;
//! - `value`, `quorum`, `ttl`: a forwarded write's value above the value limit, its `w` outside
//!   1..=N, or its ttl outside the `?ttl=` bounds (or on a delete);
//! - `changes`: a change-feed request whose prefix, wait or limit is past the feed's bounds;
//! - `batch`: a batched message of more items than a client batch may hold;
//! - `limit`: a listing's limit outside 1..=1000 (its partitions must be increasing and in range,
//!   its prefix and start key no longer than a key);
//! - `hint_target`: a hint for something that is not a member id, not a member, or this node;
//! - `not_owner`: delivered hints of a partition this node does not hold, or a tombstone purge for
//!   a partition that the sender and this node do not both hold in the settled current ring.

use kvapi::MAX_KEY_BYTES;

use crate::membership::{MAX_EPOCH_JUMP, View, epoch_within_reach};
use crate::ring::partition_of;
use crate::rpc::{RequestBody, RpcRequest};
use crate::storage::scan::SEGMENTS;

/// Why a peer message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The rule broken, a metric label.
    pub reason: &'static str,
    /// What the sender is told.
    pub message: String,
}

fn refuse(reason: &'static str, message: String) -> Refusal {
    Refusal { reason, message }
}

/// Checks `message`, received by node `me` under `view`, where values may be up to
/// `max_value_bytes`.
pub(super) fn check(
    me: &str,
    view: &View,
    message: &RpcRequest,
    max_value_bytes: usize,
) -> Result<(), Refusal> {
    let epoch = view.config.epoch;
    if !epoch_within_reach(epoch, message.epoch) {
        return Err(refuse(
            "epoch_jump",
            format!(
                "epoch {} is more than {MAX_EPOCH_JUMP} past this node's epoch {epoch}",
                message.epoch
            ),
        ));
    }
    if needs_member(&message.body) && view.config.any_member(&message.sender).is_none() {
        return Err(refuse(
            "not_member",
            format!(
                "sender {:?} is not a member at epoch {epoch}",
                shortened(&message.sender)
            ),
        ));
    }
    let partitions = view.config.partitions;
    match &message.body {
        RequestBody::Ping | RequestBody::FetchConfig | RequestBody::TransferProgress => Ok(()),
        RequestBody::Read { partition, key } | RequestBody::Merge { partition, key, .. } => {
            keyed(partitions, *partition, key)
        }
        RequestBody::Coordinate {
            key,
            value,
            w,
            ttl_ms,
            ..
        } => {
            key_length(key)?;
            ttl(*ttl_ms, value.is_some())?;
            value_size(value.as_deref(), max_value_bytes)?;
            quorum(view, *w)
        }
        RequestBody::StoreHint { target, hint } => {
            hint_target(me, view, target)?;
            keyed(partitions, hint.partition, &hint.key)
        }
        RequestBody::DeliverHints(hints) => hints.iter().try_for_each(|hint| {
            keyed(partitions, hint.partition, &hint.key)?;
            if view.is_owner(me, hint.partition) {
                Ok(())
            } else {
                Err(refuse(
                    "not_owner",
                    format!(
                        "hints for partition {} delivered to {me}, which does not hold it at epoch {epoch}",
                        hint.partition
                    ),
                ))
            }
        }),
        RequestBody::Summary { partition } | RequestBody::HintsPending { partition } => {
            in_range(partitions, *partition)
        }
        RequestBody::FetchSegments {
            partition,
            segments,
            after,
            ..
        } => {
            in_range(partitions, *partition)?;
            if segments.len() > SEGMENTS || segments.iter().any(|&s| usize::from(s) >= SEGMENTS) {
                return Err(refuse(
                    "segment",
                    format!("segments must be at most {SEGMENTS} numbers below {SEGMENTS}"),
                ));
            }
            after
                .as_ref()
                .map_or(Ok(()), |key| keyed(partitions, *partition, key))
        }
        RequestBody::Changes {
            prefix,
            wait_ms,
            limit,
            ..
        } => {
            let bounded = prefix.len() <= MAX_KEY_BYTES
                && *wait_ms <= kvapi::watch::MAX_WAIT.as_millis() as u64
                && *limit as usize <= kvapi::watch::MAX_FEED_KEYS;
            if bounded {
                Ok(())
            } else {
                Err(refuse(
                    "changes",
                    "a changes request past the prefix, wait or limit bounds".to_string(),
                ))
            }
        }
        RequestBody::List {
            partitions: asked,
            prefix,
            start,
            limit,
            ..
        } => {
            if !asked.windows(2).all(|w| w[0] < w[1]) {
                return Err(refuse(
                    "partition",
                    "a listing's partitions must be increasing".to_string(),
                ));
            }
            asked.iter().try_for_each(|&p| in_range(partitions, p))?;
            if prefix.len() > MAX_KEY_BYTES || start.len() > MAX_KEY_BYTES {
                return Err(refuse(
                    "key",
                    format!("a listing's prefix and start must be at most {MAX_KEY_BYTES} bytes"),
                ));
            }
            if !(1..=kvapi::list::MAX_LIST_LIMIT as u32).contains(limit) {
                return Err(refuse(
                    "limit",
                    format!(
                        "a listing's limit must be in 1..={}, got {limit}",
                        kvapi::list::MAX_LIST_LIMIT
                    ),
                ));
            }
            Ok(())
        }
        RequestBody::ReadMany(keys) => {
            batch_size(keys.len())?;
            keys.iter()
                .try_for_each(|(partition, key)| keyed(partitions, *partition, key))
        }
        RequestBody::MergeMany(hints) => {
            batch_size(hints.len())?;
            hints
                .iter()
                .try_for_each(|hint| keyed(partitions, hint.partition, &hint.key))
        }
        RequestBody::CoordinateMany { writes, w, .. } => {
            batch_size(writes.len())?;
            writes.iter().try_for_each(|write| {
                key_length(&write.key)?;
                ttl(write.ttl_ms, write.value.is_some())?;
                value_size(write.value.as_deref(), max_value_bytes)
            })?;
            quorum(view, *w)
        }
        RequestBody::MergeBatch { partition, records } => records
            .iter()
            .try_for_each(|(key, _)| keyed(partitions, *partition, key)),
        RequestBody::PurgeTombstones { partition, keys } => {
            in_range(partitions, *partition)?;
            let both_own = view.ring.owns(me, *partition) && view.ring.owns(&message.sender, *partition);
            if view.config.in_transition() || !both_own {
                return Err(refuse(
                    "not_owner",
                    format!(
                        "a purge of partition {partition} needs the sender and {me} to both hold it \
                         in the settled ring of epoch {epoch}"
                    ),
                ));
            }
            keys.iter()
                .try_for_each(|(key, _)| keyed(partitions, *partition, key))
        }
    }
}

/// Whether only a member may send `body` (see the module's rules).
fn needs_member(body: &RequestBody) -> bool {
    !matches!(
        body,
        RequestBody::Ping
            | RequestBody::FetchConfig
            | RequestBody::Read { .. }
            | RequestBody::Changes { .. }
            | RequestBody::Coordinate { .. }
            | RequestBody::Merge { .. }
            | RequestBody::List { .. }
            | RequestBody::ReadMany(_)
            | RequestBody::CoordinateMany { .. }
            | RequestBody::MergeMany(_)
            | RequestBody::DeliverHints(_)
    )
}

/// A forwarded write's value within the value limit.
fn value_size(value: Option<&[u8]>, max_value_bytes: usize) -> Result<(), Refusal> {
    match value {
        Some(value) if value.len() > max_value_bytes => Err(refuse(
            "value",
            format!(
                "value of {} bytes is above the limit of {max_value_bytes}",
                value.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// A forwarded write's ttl within the `?ttl=` bounds, and only on a put.
fn ttl(ttl_ms: Option<u64>, put: bool) -> Result<(), Refusal> {
    match ttl_ms {
        Some(ms)
            if !put
                || !(kvapi::ttl::MIN_TTL..=kvapi::ttl::MAX_TTL)
                    .contains(&std::time::Duration::from_millis(ms)) =>
        {
            Err(refuse(
                "ttl",
                format!("ttl of {ms} ms is outside the bounds, or given for a delete"),
            ))
        }
        _ => Ok(()),
    }
}

/// A forwarded write's `w` within 1..=N (of either ring during a transition).
fn quorum(view: &View, w: Option<u32>) -> Result<(), Refusal> {
    let n = view
        .config
        .n
        .max(view.config.transition_from.as_ref().map_or(0, |p| p.n));
    match w {
        Some(w) if !(1..=n).contains(&w) => {
            Err(refuse("quorum", format!("w = {w} is outside 1..={n}")))
        }
        _ => Ok(()),
    }
}

/// A batched message of at most a client batch's items.
fn batch_size(items: usize) -> Result<(), Refusal> {
    if items <= kvapi::batch::MAX_BATCH_ITEMS {
        Ok(())
    } else {
        Err(refuse(
            "batch",
            format!(
                "{items} items is above the batch limit of {}",
                kvapi::batch::MAX_BATCH_ITEMS
            ),
        ))
    }
}

fn in_range(partitions: u32, partition: u16) -> Result<(), Refusal> {
    if u32::from(partition) < partitions {
        Ok(())
    } else {
        Err(refuse(
            "partition",
            format!("partition {partition} is out of range: the ring has {partitions}"),
        ))
    }
}

fn key_length(key: &[u8]) -> Result<(), Refusal> {
    if (1..=MAX_KEY_BYTES).contains(&key.len()) {
        Ok(())
    } else {
        Err(refuse(
            "key",
            format!("key of {} bytes is outside 1..={MAX_KEY_BYTES}", key.len()),
        ))
    }
}

/// A key sent with `partition`: the partition in range, the key's length bounded, and the key of
/// that partition.
fn keyed(partitions: u32, partition: u16, key: &[u8]) -> Result<(), Refusal> {
    in_range(partitions, partition)?;
    key_length(key)?;
    let actual = partition_of(key, partitions);
    if actual == partition {
        Ok(())
    } else {
        Err(refuse(
            "key",
            format!("a key of partition {actual} was sent as one of partition {partition}"),
        ))
    }
}

fn hint_target(me: &str, view: &View, target: &str) -> Result<(), Refusal> {
    let problem = if !kvapi::is_member_id(target) {
        Some(format!("{} bytes are not a member id", target.len()))
    } else if target == me {
        Some("a node does not hold hints for itself".to_string())
    } else if view.config.any_member(target).is_none() {
        Some(format!(
            "{target} is not a member at epoch {}",
            view.config.epoch
        ))
    } else {
        None
    };
    problem.map_or(Ok(()), |p| {
        Err(refuse("hint_target", format!("hint target refused: {p}")))
    })
}

/// At most 80 characters of a peer-supplied string, for a message about it.
fn shortened(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kvapi::{ClusterConfig, Member};

    use super::*;
    use crate::causality::{SiblingSet, VersionVector};
    use crate::storage::hints::Hint;

    fn view() -> View {
        View::new(ClusterConfig {
            cluster: "c".into(),
            epoch: 5,
            members: (0..4)
                .map(|i| Member {
                    id: format!("kv-{i}"),
                    address: format!("127.0.0.1:{}", 9000 + i),
                    peer_address: format!("127.0.0.1:{}", 10_000 + i),
                })
                .collect(),
            n: 2,
            w: 1,
            r: 1,
            partitions: 256,
            vnodes: 64,
            sloppy_quorum: true,
            transition_from: None,
        })
    }

    fn message(sender: &str, epoch: u64, body: RequestBody) -> RpcRequest {
        RpcRequest {
            cluster: "c".into(),
            epoch,
            sender: sender.into(),
            body,
        }
    }

    fn reason(view: &View, sender: &str, epoch: u64, body: RequestBody) -> Option<&'static str> {
        check("kv-0", view, &message(sender, epoch, body), 1024)
            .err()
            .map(|r| r.reason)
    }

    fn key_of(partition: u16) -> Vec<u8> {
        (0u32..)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| partition_of(k, 256) == partition)
            .unwrap()
    }

    fn hint(partition: u16) -> Hint {
        Hint {
            partition,
            key: key_of(partition),
            set: SiblingSet::default(),
        }
    }

    #[test]
    fn epochs_members_partitions_keys_and_segments_are_checked() {
        let v = view();
        assert_eq!(
            reason(&v, "kv-1", 5 + MAX_EPOCH_JUMP, RequestBody::Ping),
            None
        );
        assert_eq!(
            reason(&v, "kv-1", u64::MAX, RequestBody::Ping),
            Some("epoch_jump")
        );
        assert_eq!(reason(&v, "stranger", 5, RequestBody::Ping), None);
        let summary = |partition| RequestBody::Summary { partition };
        assert_eq!(reason(&v, "stranger", 5, summary(1)), Some("not_member"));
        assert_eq!(reason(&v, "kv-1", 5, summary(255)), None);
        assert_eq!(reason(&v, "kv-1", 5, summary(256)), Some("partition"));
        let merge = |partition, key: Vec<u8>| RequestBody::Merge {
            partition,
            key,
            set: SiblingSet::default(),
        };
        assert_eq!(reason(&v, "stranger", 5, merge(3, key_of(3))), None);
        assert_eq!(reason(&v, "kv-1", 5, merge(4, key_of(3))), Some("key"));
        assert_eq!(reason(&v, "kv-1", 5, merge(3, Vec::new())), Some("key"));
        assert_eq!(
            reason(&v, "kv-1", 5, merge(3, vec![b'k'; 1025])),
            Some("key")
        );
        let fetch = |segments| RequestBody::FetchSegments {
            partition: 3,
            segments,
            after: None,
            max_bytes: 1,
        };
        assert_eq!(reason(&v, "kv-1", 5, fetch(vec![0, 1023])), None);
        assert_eq!(reason(&v, "kv-1", 5, fetch(vec![1024])), Some("segment"));
        let coordinate = |w, value| RequestBody::Coordinate {
            key: b"k".to_vec(),
            context: VersionVector::default(),
            value,
            w,
            timeout_ms: 1,
            ttl_ms: None,
        };
        assert_eq!(
            reason(&v, "kv-1", 5, coordinate(Some(2), Some(vec![0; 1024]))),
            None
        );
        assert_eq!(
            reason(&v, "kv-1", 5, coordinate(Some(0), None)),
            Some("quorum")
        );
        assert_eq!(
            reason(&v, "kv-1", 5, coordinate(None, Some(vec![0; 1025]))),
            Some("value")
        );
        let with_ttl = |ttl_ms, value| match coordinate(None, value) {
            RequestBody::Coordinate {
                key,
                context,
                value,
                w,
                timeout_ms,
                ..
            } => RequestBody::Coordinate {
                key,
                context,
                value,
                w,
                timeout_ms,
                ttl_ms: Some(ttl_ms),
            },
            other => other,
        };
        assert_eq!(reason(&v, "kv-1", 5, with_ttl(1000, Some(vec![1]))), None);
        assert_eq!(
            reason(&v, "kv-1", 5, with_ttl(999, Some(vec![1]))),
            Some("ttl")
        );
        assert_eq!(reason(&v, "kv-1", 5, with_ttl(1000, None)), Some("ttl"));
    }

    #[test]
    fn hints_and_purges_are_checked_against_the_ring() {
        let v = view();
        let store = |target: &str, partition| RequestBody::StoreHint {
            target: target.into(),
            hint: hint(partition),
        };
        assert_eq!(reason(&v, "kv-1", 5, store("kv-2", 7)), None);
        assert_eq!(reason(&v, "kv-1", 5, store("kv-0", 7)), Some("hint_target"));
        assert_eq!(reason(&v, "kv-1", 5, store("kv-9", 7)), Some("hint_target"));
        assert_eq!(
            reason(&v, "kv-1", 5, store(&"k".repeat(70_000), 7)),
            Some("hint_target")
        );
        let mut out_of_range = hint(7);
        out_of_range.partition = u16::MAX;
        let body = RequestBody::StoreHint {
            target: "kv-2".into(),
            hint: out_of_range,
        };
        assert_eq!(reason(&v, "kv-1", 5, body), Some("partition"));

        let owned = (0..256u16).find(|&p| v.ring.owns("kv-0", p)).unwrap();
        let foreign = (0..256u16).find(|&p| !v.ring.owns("kv-0", p)).unwrap();
        let deliver = |p| RequestBody::DeliverHints(vec![hint(p)]);
        assert_eq!(reason(&v, "kv-1", 5, deliver(owned)), None);
        assert_eq!(reason(&v, "kv-1", 5, deliver(foreign)), Some("not_owner"));

        let co_owner = v
            .ring
            .preference_list(owned)
            .find(|m| *m != "kv-0")
            .unwrap()
            .to_string();
        let outsider = v
            .config
            .members
            .iter()
            .map(|m| m.id.clone())
            .find(|m| !v.ring.owns(m, owned))
            .unwrap();
        let purge = |partition| RequestBody::PurgeTombstones {
            partition,
            keys: vec![(key_of(partition), VersionVector::default())],
        };
        assert_eq!(reason(&v, &co_owner, 5, purge(owned)), None);
        assert_eq!(reason(&v, &outsider, 5, purge(owned)), Some("not_owner"));
        assert_eq!(reason(&v, &co_owner, 5, purge(foreign)), Some("not_owner"));
    }
}
