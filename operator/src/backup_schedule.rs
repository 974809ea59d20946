//! The decisions of scheduled backups, retention and restores, as pure functions of the spec, the
//! status and the clock; [`crate::backup_jobs`] does the I/O.
//!
//! - A schedule runs the latest slot that passed since the last one it ran
//!   (`status.backup.lastScheduleTime`, else the cluster's creation): slots missed while the
//!   operator was down run once, not once each.
//! - Retention keeps the newest K complete backups of the target and names the rest.
//! - A restore runs once the ring has settled, until it has succeeded for that backup and target.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;

use crate::crd::{RestorePhase, RestoreSpec, RestoreStatus};

/// How long a failed restore waits before it is tried again.
pub const RESTORE_RETRY: Duration = Duration::from_secs(120);

/// A parsed schedule: 5 cron fields (minute first), or 6 with seconds first; in UTC.
pub fn parse(pattern: &str) -> Result<Cron, String> {
    Cron::from_str(pattern).map_err(|e| format!("schedule {pattern:?} is not a cron pattern: {e}"))
}

/// What the schedule asks for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Back up now, for the slot at this time (the latest one that passed).
    Due(DateTime<Utc>),
    /// Nothing before this time.
    Wait(DateTime<Utc>),
}

/// The slot due at `now` when the last backup ran for the slot at `since` (or the schedule
/// started counting then).
pub fn due(cron: &Cron, since: DateTime<Utc>, now: DateTime<Utc>) -> Result<Slot, String> {
    let next = cron
        .find_next_occurrence(&since, false)
        .map_err(|e| format!("no next time for the schedule: {e}"))?;
    if next > now {
        return Ok(Slot::Wait(next));
    }
    // Every slot from `next` to now was missed: only the latest runs.
    let latest = cron
        .find_previous_occurrence(&now, true)
        .map_err(|e| format!("no previous time for the schedule: {e}"))?;
    Ok(Slot::Due(latest.max(next)))
}

/// The id of the backup of the slot at `slot`: `<cluster>-20261128T030000Z`, so a cluster's
/// scheduled backups sort by time and never clash with another cluster's in a shared target.
pub fn backup_id(cluster: &str, slot: DateTime<Utc>) -> String {
    format!("{cluster}-{}", slot.format("%Y%m%dT%H%M%SZ"))
}

/// One backup found in the target: its id, and when it started if it is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its id.
    pub id: String,
    /// `started_unix_ms` of its cluster manifest; `None` when it has none (incomplete).
    pub started_unix_ms: Option<u64>,
}

/// The complete backups beyond the newest `keep`, oldest last. Incomplete ones are not counted
/// and not named: one may be in progress (a failed scheduled backup is deleted by its job).
pub fn to_delete(backups: &[Listed], keep: u32) -> Vec<String> {
    let mut complete: Vec<(u64, &str)> = backups
        .iter()
        .filter_map(|b| b.started_unix_ms.map(|t| (t, b.id.as_str())))
        .collect();
    complete.sort_unstable_by(|a, b| b.cmp(a));
    complete
        .into_iter()
        .skip(keep as usize)
        .map(|(_, id)| id.to_owned())
        .collect()
}

/// Whether to start the restore of `spec` now: once the ring has `settled`, unless it already
/// succeeded for this backup and target, or failed less than [`RESTORE_RETRY`] ago. A restore
/// shown `Running` with no job behind it (the operator restarted) starts again: restoring twice
/// merges the same records again, which changes nothing.
pub fn restore_due(
    spec: &RestoreSpec,
    status: Option<&RestoreStatus>,
    settled: bool,
    now: DateTime<Utc>,
) -> bool {
    if !settled {
        return false;
    }
    let Some(status) = status.filter(|s| s.backup_id == spec.backup_id && s.target == spec.target)
    else {
        return true;
    };
    match status.phase {
        RestorePhase::Succeeded => false,
        RestorePhase::Running => true,
        RestorePhase::Failed => status.start_time.as_ref().is_none_or(|t| {
            let retry = chrono::Duration::from_std(RESTORE_RETRY).unwrap_or(chrono::Duration::MAX);
            from_time(t) + retry <= now
        }),
    }
}

/// A Kubernetes time as chrono's.
pub fn from_time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().unsigned_abs())
        .unwrap_or_default()
}

/// chrono's time as Kubernetes'.
pub fn to_time(t: DateTime<Utc>) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_slot_is_due_once_it_passed_and_not_before() {
        let daily = parse("0 3 * * *").unwrap();
        let since = at("2026-12-01T03:00:00Z");
        assert_eq!(
            due(&daily, since, at("2026-12-02T02:59:59Z")),
            Ok(Slot::Wait(at("2026-12-02T03:00:00Z")))
        );
        assert_eq!(
            due(&daily, since, at("2026-12-02T03:00:01Z")),
            Ok(Slot::Due(at("2026-12-02T03:00:00Z")))
        );
        // Having run that slot, the next is a day later.
        assert_eq!(
            due(
                &daily,
                at("2026-12-02T03:00:00Z"),
                at("2026-12-02T03:00:05Z")
            ),
            Ok(Slot::Wait(at("2026-12-03T03:00:00Z")))
        );
    }

    #[test]
    fn slots_missed_while_the_operator_was_down_run_once() {
        let hourly = parse("0 * * * *").unwrap();
        // Down from 01:10 to 05:30: four slots passed, the latest (05:00) is the one due.
        let due_now = due(
            &hourly,
            at("2026-12-01T01:00:00Z"),
            at("2026-12-01T05:30:00Z"),
        );
        assert_eq!(due_now, Ok(Slot::Due(at("2026-12-01T05:00:00Z"))));
        // Once it ran, nothing more is due until 06:00.
        assert_eq!(
            due(
                &hourly,
                at("2026-12-01T05:00:00Z"),
                at("2026-12-01T05:30:00Z")
            ),
            Ok(Slot::Wait(at("2026-12-01T06:00:00Z")))
        );
    }

    #[test]
    fn six_fields_count_seconds_and_bad_patterns_are_named() {
        let every5s = parse("*/5 * * * * *").unwrap();
        assert_eq!(
            due(
                &every5s,
                at("2026-12-01T00:00:05Z"),
                at("2026-12-01T00:00:07Z")
            ),
            Ok(Slot::Wait(at("2026-12-01T00:00:10Z")))
        );
        let err = parse("every day").unwrap_err();
        assert!(err.contains("\"every day\""), "{err}");
        assert!(parse("61 * * * *").is_err());
    }

    #[test]
    fn ids_sort_by_slot() {
        let a = backup_id("kv", at("2026-12-01T09:00:00Z"));
        let b = backup_id("kv", at("2026-12-01T10:00:00Z"));
        assert_eq!(a, "kv-20261201T090000Z");
        assert!(a < b);
        assert!(kvbackup::target::check_name("backup id", &a).is_ok());
    }

    #[test]
    fn retention_keeps_the_newest_complete_backups_and_never_names_incomplete_ones() {
        let listed = |id: &str, t: Option<u64>| Listed {
            id: id.into(),
            started_unix_ms: t,
        };
        let backups = [
            listed("b3", Some(300)),
            listed("b1", Some(100)),
            listed("partial", None),
            listed("b4", Some(400)),
            listed("b2", Some(200)),
        ];
        assert_eq!(to_delete(&backups, 2), vec!["b2", "b1"]);
        assert_eq!(to_delete(&backups, 4), Vec::<String>::new());
        assert_eq!(to_delete(&backups, 1), vec!["b3", "b2", "b1"]);
    }

    #[test]
    fn a_restore_runs_once_settled_until_it_succeeded() {
        let spec = RestoreSpec {
            target: "file:///b".into(),
            backup_id: "b1".into(),
            s3: Default::default(),
        };
        let now = at("2026-12-01T10:00:00Z");
        let status = |phase, started: &str| RestoreStatus {
            backup_id: "b1".into(),
            target: "file:///b".into(),
            phase,
            checkpoints_done: 0,
            checkpoints_total: 0,
            records: 0,
            message: String::new(),
            start_time: Some(to_time(at(started))),
            completion_time: None,
        };
        assert!(
            !restore_due(&spec, None, false, now),
            "not before the ring settles"
        );
        assert!(restore_due(&spec, None, true, now));
        let done = status(RestorePhase::Succeeded, "2026-12-01T09:00:00Z");
        assert!(!restore_due(&spec, Some(&done), true, now), "never twice");
        let other = RestoreSpec {
            backup_id: "b2".into(),
            ..spec.clone()
        };
        assert!(
            restore_due(&other, Some(&done), true, now),
            "a new backup id restores"
        );
        let lost = status(RestorePhase::Running, "2026-12-01T09:59:00Z");
        assert!(
            restore_due(&spec, Some(&lost), true, now),
            "a lost job restarts"
        );
        let failed = status(RestorePhase::Failed, "2026-12-01T09:59:00Z");
        assert!(
            !restore_due(&spec, Some(&failed), true, now),
            "waits to retry"
        );
        let failed = status(RestorePhase::Failed, "2026-12-01T09:57:00Z");
        assert!(restore_due(&spec, Some(&failed), true, now));
    }
}
