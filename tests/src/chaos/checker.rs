//! The set checker: which acknowledged elements the final state lost, and which elements it holds
//! that no client ever wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What a client learnt of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (204): the element must survive.
    Acknowledged,
    /// Refused before it could apply (the read before it failed): the element was never sent.
    Failed,
    /// Sent, but the answer was an error or never came: the element may or may not survive.
    Indeterminate,
}

/// One attempt to add `element` to the set at `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetOp {
    /// The key of the set.
    pub key: String,
    /// The unique element added.
    pub element: u64,
    /// What the client learnt.
    pub outcome: Outcome,
    /// When the operation ended, from the start of the workload.
    pub at: std::time::Duration,
}

/// The verdict on a history against the final sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetReport {
    /// Writes attempted (sent to a node).
    pub attempted: usize,
    /// Writes acknowledged.
    pub acknowledged: usize,
    /// Writes whose outcome is unknown.
    pub indeterminate: usize,
    /// Indeterminate writes whose element is in the final state.
    pub indeterminate_present: usize,
    /// Operations that failed before sending their write.
    pub failed: usize,
    /// Acknowledged `(key, element)` pairs missing from the final state.
    pub lost: Vec<(String, u64)>,
    /// `(key, element)` pairs in the final state that no write ever carried to that key.
    pub unexpected: Vec<(String, u64)>,
}

impl SetReport {
    /// No acknowledged element lost, and nothing invented.
    pub fn is_valid(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty()
    }
}

impl fmt::Display for SetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "writes attempted {}, acknowledged {}, indeterminate {} ({} of them present), not sent {}; \
             acknowledged writes lost: {}{}; unexpected elements: {}{}",
            self.attempted,
            self.acknowledged,
            self.indeterminate,
            self.indeterminate_present,
            self.failed,
            self.lost.len(),
            sample(&self.lost),
            self.unexpected.len(),
            sample(&self.unexpected),
        )
    }
}

fn sample(pairs: &[(String, u64)]) -> String {
    if pairs.is_empty() {
        String::new()
    } else {
        let shown: Vec<String> = pairs
            .iter()
            .take(10)
            .map(|(k, e)| format!("{k}:{e}"))
            .collect();
        format!(" (first: {})", shown.join(" "))
    }
}

/// Checks `history` against `finals`, the final set of each key (absent = empty).
pub fn check_sets(history: &[SetOp], finals: &BTreeMap<String, BTreeSet<u64>>) -> SetReport {
    let empty = BTreeSet::new();
    let present = |op: &SetOp| finals.get(&op.key).unwrap_or(&empty).contains(&op.element);
    let mut report = SetReport::default();
    let mut sent: BTreeSet<(&str, u64)> = BTreeSet::new();
    for op in history {
        match op.outcome {
            Outcome::Failed => report.failed += 1,
            Outcome::Acknowledged | Outcome::Indeterminate => {
                report.attempted += 1;
                sent.insert((&op.key, op.element));
            }
        }
        match op.outcome {
            Outcome::Acknowledged => {
                report.acknowledged += 1;
                if !present(op) {
                    report.lost.push((op.key.clone(), op.element));
                }
            }
            Outcome::Indeterminate => {
                report.indeterminate += 1;
                report.indeterminate_present += usize::from(present(op));
            }
            Outcome::Failed => {}
        }
    }
    for (key, elements) in finals {
        for &element in elements {
            if !sent.contains(&(key.as_str(), element)) {
                report.unexpected.push((key.clone(), element));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, element: u64, outcome: Outcome) -> SetOp {
        SetOp {
            key: key.to_owned(),
            element,
            outcome,
            at: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn flags_a_lost_acknowledgement_and_an_invented_element_only() {
        let history = vec![
            op("a", 1, Outcome::Acknowledged),
            op("a", 2, Outcome::Acknowledged),
            op("a", 3, Outcome::Indeterminate),
            op("b", 4, Outcome::Indeterminate),
            op("b", 5, Outcome::Failed),
        ];
        let finals = BTreeMap::from([
            ("a".to_owned(), BTreeSet::from([1, 3])),
            ("b".to_owned(), BTreeSet::from([9])),
        ]);
        let report = check_sets(&history, &finals);
        assert_eq!(report.lost, vec![("a".to_owned(), 2)]);
        assert_eq!(report.unexpected, vec![("b".to_owned(), 9)]);
        assert_eq!(
            (report.attempted, report.acknowledged, report.indeterminate),
            (4, 2, 2)
        );
        assert_eq!((report.indeterminate_present, report.failed), (1, 1));
        assert!(!report.is_valid());
    }

    #[test]
    fn an_element_written_to_another_key_is_unexpected() {
        let history = vec![op("a", 1, Outcome::Acknowledged)];
        let finals = BTreeMap::from([
            ("a".to_owned(), BTreeSet::from([1])),
            ("b".to_owned(), BTreeSet::from([1])),
        ]);
        assert_eq!(
            check_sets(&history, &finals).unexpected,
            vec![("b".to_owned(), 1)]
        );
    }
}
