//! Listing across the cluster: one request per node, merged per partition.
//!
//! Every member holding a partition is asked, in one message per node, for its smallest records
//! under the prefix from the page's start key on, across all the partitions it holds. The listing
//! answers once every partition has R answering replicas in each of its replica sets (as a read of
//! one key does). Each answer is complete below its `end` (see `storage::listing`), so the page is
//! final below the smallest `end` of the answers used: there the replicas' states of each key are
//! merged causally, and a key is listed when the merged state holds a live sibling at the
//! coordinator's clock (an expired value reads as deleted, as in a single-key read). The next page
//! starts at the first key not listed.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ANSWER_MARGIN, Coordinator, Tally};
use crate::causality::SiblingSet;
use crate::error::Error;
use crate::metrics::Operation;
use crate::replica::now_ms;
use crate::ring::partition_of;
use crate::rpc::{self, RequestBody, ResponseBody, remaining};
use crate::storage::listing::{ListRange, ListScan};

/// A page to list.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Only keys with this prefix.
    pub prefix: Vec<u8>,
    /// Only keys at or after this one (at or after `prefix`).
    pub start: Vec<u8>,
    /// Most keys in the page.
    pub limit: usize,
    /// Whether values are wanted.
    pub values: bool,
    /// Replicas that must answer per partition, if not the cluster's R.
    pub r: Option<u32>,
}

/// A listed page.
#[derive(Debug, Default)]
pub struct ListedPage {
    /// The live keys and their merged states, in byte order.
    pub keys: Vec<(Vec<u8>, SiblingSet)>,
    /// Where the next page starts, if there is one.
    pub next: Option<Vec<u8>>,
}

/// One node's answer: the node, the partitions it was asked for, its scan.
type NodeReply = (String, Arc<Vec<u16>>, Result<ListScan, Error>);

impl Coordinator {
    /// Lists one page of `query` (see the module documentation), failing with `QuorumNotReached`
    /// when some partition has too few answering replicas before `deadline`.
    pub async fn list(&self, query: ListQuery, deadline: Instant) -> Result<ListedPage, Error> {
        let view = self.membership.view();
        let r = query.r.unwrap_or(view.config.r);
        let mut by_node: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        let mut tallies = Vec::new();
        for partition in 0..view.config.partitions {
            let partition = partition as u16;
            for owner in view.owners(partition) {
                by_node.entry(owner).or_default().push(partition);
            }
            tallies.push(Tally::new(view.replica_sets(partition), r));
        }
        let nodes = by_node.len();
        let (tx, mut rx) = mpsc::channel::<NodeReply>(nodes.max(1));
        let me = self.membership.node_id().to_string();
        for (node, partitions) in by_node {
            let tx = tx.clone();
            let partitions = Arc::new(partitions);
            let local = self.replica.clone();
            let rpc = self.rpc.clone();
            let query = query.clone();
            let local_node = node == me;
            tokio::spawn(async move {
                let result = if local_node {
                    let asked = partitions.clone();
                    local
                        .with_storage(move |s| s.list(&asked, &node_range(&query)))
                        .await
                } else {
                    let range = node_range(&query);
                    let body = RequestBody::List {
                        partitions: partitions.to_vec(),
                        prefix: range.prefix.to_vec(),
                        start: range.start.to_vec(),
                        limit: range.limit as u32,
                        max_bytes: range.max_bytes as u64,
                        values: range.values,
                    };
                    match rpc.call(&node, body, remaining(deadline)).await {
                        Ok(ResponseBody::Listed { records, end }) => Ok(ListScan { records, end }),
                        Ok(other) => Err(other.unexpected()),
                        Err(e) => Err(e),
                    }
                };
                let _ = tx.send((node, partitions, result)).await;
            });
        }
        drop(tx);
        let mut scans = Vec::new();
        let mut data_error = None;
        let mut answered = 0;
        let cutoff = deadline.checked_sub(ANSWER_MARGIN).unwrap_or(deadline);
        while !tallies.iter().all(Tally::met) && answered < nodes {
            match tokio::time::timeout_at(cutoff, rx.recv()).await {
                Ok(Some((node, partitions, Ok(scan)))) => {
                    answered += 1;
                    for &p in partitions.iter() {
                        if let Some(tally) = tallies.get_mut(usize::from(p)) {
                            tally.ack(&node);
                        }
                    }
                    scans.push((partitions, scan));
                }
                Ok(Some((node, _, Err(e)))) => {
                    answered += 1;
                    tracing::debug!(%node, error = %e, "node listing failed");
                    if !e.is_unavailability() && data_error.is_none() {
                        data_error = Some(e);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(missed) = tallies.iter().find_map(Tally::shortfall) {
            self.metrics.quorum_failed(Operation::Get);
            return Err(data_error.unwrap_or(missed));
        }
        Ok(merge_page(&query, view.config.partitions, scans, now_ms()))
    }
}

/// What each node is asked for: a page's worth of records, within a peer message's budget.
fn node_range(query: &ListQuery) -> ListRange<'_> {
    ListRange {
        prefix: &query.prefix,
        start: &query.start,
        limit: query.limit,
        max_bytes: kvapi::list::MAX_LIST_PAGE_BYTES.min(rpc::MAX_BATCH_BYTES),
        values: query.values,
    }
}

/// Merges the nodes' scans into a page: final below the smallest `end`, keys live at `now_ms` only
/// (their states as seen then: an expired value is a tombstone), at most `limit` keys and about a
/// page's bytes. A record a node was not asked for, or outside the range, is ignored, so a confused
/// peer cannot add keys to a partition it does not hold.
fn merge_page(
    query: &ListQuery,
    partitions: u32,
    scans: Vec<(Arc<Vec<u16>>, ListScan)>,
    now_ms: u64,
) -> ListedPage {
    let boundary = scans.iter().filter_map(|(_, s)| s.end.clone()).min();
    let mut merged: BTreeMap<Vec<u8>, SiblingSet> = BTreeMap::new();
    for (asked, scan) in scans {
        for (key, set) in scan.records {
            let in_range = key.starts_with(&query.prefix)
                && key >= query.start
                && boundary.as_ref().is_none_or(|b| key < *b)
                && asked.binary_search(&partition_of(&key, partitions)).is_ok();
            if in_range {
                merged.entry(key).or_default().merge(&set);
            }
        }
    }
    let mut page = ListedPage::default();
    let mut bytes = 0;
    for (key, set) in merged {
        let set = set.as_seen_at(now_ms);
        if set.live().next().is_none() {
            continue;
        }
        let full = page.keys.len() >= query.limit.max(1)
            || (bytes >= kvapi::list::MAX_LIST_PAGE_BYTES && !page.keys.is_empty());
        if full {
            page.next = Some(key);
            return page;
        }
        bytes += key.len()
            + set
                .live()
                .filter_map(|s| s.value.as_ref())
                .map(Vec::len)
                .sum::<usize>();
        page.keys.push((key, set));
    }
    page.next = boundary;
    page
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::causality::{Actor, VersionVector};

    fn query(limit: usize) -> ListQuery {
        ListQuery {
            prefix: b"p".to_vec(),
            start: b"p".to_vec(),
            limit,
            values: false,
            r: None,
        }
    }

    #[test]
    fn a_page_is_final_below_the_smallest_end_and_lists_keys_live_after_merging() {
        let live = SiblingSet::one_write(Some(b"v"));
        let mut deleted = live.clone();
        deleted
            .update(&live.context().clone(), &Actor::new("kv-1", 1), None, 0)
            .unwrap();
        let all = Arc::new(vec![0u16]);
        let scan = |records: Vec<(&[u8], &SiblingSet)>, end: Option<&[u8]>| ListScan {
            records: records
                .into_iter()
                .map(|(k, s)| (k.to_vec(), s.clone()))
                .collect(),
            end: end.map(<[u8]>::to_vec),
        };
        // One replica missed the delete of "pb": merged, "pb" is deleted. "pd" lies past the
        // first node's end, so it waits for the next page; "x" is outside the prefix.
        let scans = vec![
            (
                all.clone(),
                scan(vec![(b"pa", &live), (b"pb", &live)], Some(b"pc")),
            ),
            (
                all.clone(),
                scan(vec![(b"pb", &deleted), (b"pd", &live), (b"x", &live)], None),
            ),
        ];
        let page = merge_page(&query(10), 1, scans, 0);
        let keys: Vec<&[u8]> = page.keys.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![&b"pa"[..]]);
        assert_eq!(page.next.as_deref(), Some(&b"pc"[..]));
        // The limit cuts the page at the first key left out.
        let scans = vec![(
            all,
            scan(vec![(b"pa", &live), (b"pb", &live), (b"pc", &live)], None),
        )];
        let page = merge_page(&query(2), 1, scans, 0);
        assert_eq!(page.keys.len(), 2);
        assert_eq!(page.next.as_deref(), Some(&b"pc"[..]));
        // A record of a partition the node was not asked for is ignored.
        let page = merge_page(
            &query(2),
            1,
            vec![(Arc::new(vec![]), scan(vec![(b"pa", &live)], None))],
            0,
        );
        assert!(page.keys.is_empty() && page.next.is_none());
        // A value past its expiry is not listed; before it, it is.
        let mut expiring = SiblingSet::default();
        expiring
            .update_expiring(
                &VersionVector::default(),
                &Actor::new("kv-0", 1),
                Some(b"v".to_vec()),
                0,
                Some(1000),
            )
            .unwrap();
        let one = |now| {
            let scans = vec![(Arc::new(vec![0u16]), scan(vec![(b"pe", &expiring)], None))];
            merge_page(&query(2), 1, scans, now).keys.len()
        };
        assert_eq!((one(999), one(1000)), (1, 0));
    }
}
