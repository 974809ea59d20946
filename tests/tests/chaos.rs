//! Chaos runs: five nodes in a network namespace of their own, a set workload recording every
//! acknowledged write, and one kind of fault per test (partitions, `kill -9`, pauses, ring changes
//! amid partitions and crashes). After healing, no acknowledged element may be missing and every
//! partition's replicas must converge. Each test prints its seed and the command replaying it; see
//! `docs/reliability.md`. Without root or iptables the namespaced tests skip loudly (fail in CI).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use kvcluster_tests::chaos::checker::check_sets;
use kvcluster_tests::chaos::convergence::wait_converged;
use kvcluster_tests::chaos::nemesis::{self, NemesisKind};
use kvcluster_tests::chaos::netns::{one_at_a_time, run_isolated};
use kvcluster_tests::chaos::workload::{RunningLoad, SetLoad, read_final_sets};
use kvcluster_tests::chaos::{self, RunResult, RunSpec};
use kvcluster_tests::{Cluster, ClusterOptions};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `kinds` as test `test` in its own namespace and asserts the run was sound.
fn chaos_run(test: &'static str, kinds: &[NemesisKind], then: impl FnOnce(&RunResult)) {
    run_isolated(test, || {
        let result = runtime().block_on(chaos::run(RunSpec::new(test, kinds, chaos::faults_for())));
        assert_sound(&result);
        then(&result);
    });
}

fn assert_sound(result: &RunResult) {
    let report = &result.report;
    assert!(
        report.acknowledged > 100,
        "too few writes were acknowledged for the run to mean anything: {report}"
    );
    assert!(
        report.lost.is_empty(),
        "acknowledged writes were lost: {report}"
    );
    assert!(
        report.unexpected.is_empty(),
        "the final sets hold elements no client wrote: {report}"
    );
    if let Err(e) = &result.converged {
        panic!("replicas did not converge after healing: {e}");
    }
    let quiet_end = Duration::from_secs(10);
    assert!(
        result.last_ack_before_heal.is_some_and(|d| d <= quiet_end),
        "no write was acknowledged in the last {quiet_end:?} of faults (last: {:?} before the \
         heal): the load stopped before the faults did",
        result.last_ack_before_heal
    );
    assert!(
        result.disagreements.is_empty(),
        "nodes answered different final sets after convergence: {:?}",
        result.disagreements
    );
}

#[test]
fn partitions_lose_no_acknowledged_write() {
    chaos_run(
        "partitions_lose_no_acknowledged_write",
        &[NemesisKind::Partition],
        |result| {
            assert!(
                result.faults.0.len() >= 4,
                "every partition shape was injected: {}",
                result.faults
            );
            // The checker can fail: the recorded history against a final state missing one
            // acknowledged element must name exactly that element.
            let mut finals = result.finals.clone();
            let victim = result
                .history
                .iter()
                .find(|op| op.outcome == chaos::checker::Outcome::Acknowledged)
                .expect("an acknowledged write");
            finals
                .get_mut(&victim.key)
                .expect("its key")
                .remove(&victim.element);
            let report = check_sets(&result.history, &finals);
            assert_eq!(
                report.lost,
                vec![(victim.key.clone(), victim.element)],
                "the checker must flag the one removed acknowledged element: {report}"
            );
        },
    );
}

#[test]
fn crashes_lose_no_acknowledged_write() {
    chaos_run(
        "crashes_lose_no_acknowledged_write",
        &[NemesisKind::Kill],
        |_| {},
    );
}

#[test]
fn pauses_lose_no_acknowledged_write() {
    chaos_run(
        "pauses_lose_no_acknowledged_write",
        &[NemesisKind::Pause],
        |_| {},
    );
}

#[test]
fn ring_changes_amid_partitions_and_crashes_lose_no_acknowledged_write() {
    chaos_run(
        "ring_changes_amid_partitions_and_crashes_lose_no_acknowledged_write",
        &[
            NemesisKind::RingChange,
            NemesisKind::Partition,
            NemesisKind::Kill,
        ],
        |result| {
            assert!(
                result.faults.0.contains_key("ring change"),
                "a ring change happened: {}",
                result.faults
            );
        },
    );
}

/// The checker can fail on a real run: with N=1, wiping the only replica's data directory mid-run
/// loses acknowledged elements, and the checker must say so.
#[test]
fn wiping_the_only_replica_is_reported_as_lost_writes() {
    let _turn = one_at_a_time();
    runtime().block_on(async {
        let mut cluster = Cluster::start_with(ClusterOptions::new(1, 1, 1, 1)).await;
        let load = SetLoad {
            clients: 2,
            keys: 3,
            max_ops_per_client: 5_000,
            seed: chaos::seed("wiping_the_only_replica_is_reported_as_lost_writes"),
        };
        let nodes = vec![cluster.client(0).clone()];
        let deadline = Instant::now() + Duration::from_secs(30);
        let running = RunningLoad::start(&load, nodes.clone(), vec![0], deadline);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::block_in_place(|| cluster.wipe(0));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let history = running.finish().await;
        let (finals, _) = read_final_sets(&nodes, &[0], load.keys, 1).await;
        let report = check_sets(&history, &finals);
        eprintln!("N=1, only replica wiped mid-run: {report}");
        assert!(
            !report.lost.is_empty(),
            "the wipe destroyed acknowledged elements, yet the checker reported none lost: {report}"
        );
        assert!(report.unexpected.is_empty(), "{report}");
    });
}

/// Regression: after a partition heals, a peer must be reachable at once. Requests across a cut
/// link leave the pooled connection waiting on TCP's retransmission backoff; before the fix every
/// RPC over it kept timing out for seconds after the heal, until HTTP/2 keep-alive closed it.
#[test]
fn a_healed_link_carries_requests_at_once() {
    run_isolated("a_healed_link_carries_requests_at_once", || {
        runtime().block_on(async {
            let cluster = Cluster::start_with(
                ClusterOptions::new(3, 3, 3, 1)
                    .strict()
                    .on_hosts(chaos::FIRST_HOST)
                    .args(["--anti-entropy-interval", "0s"]),
            )
            .await;
            let hosts = cluster.hosts();
            let via = cluster.client(0);
            // W=3 through kv-0 needs kv-1: every write crosses the link 0-1.
            let write = |i: u32| async move {
                via.try_put_with_query(format!("link-{i}").as_bytes(), b"v", "?w=3&timeout_ms=1000")
                    .await
                    .map(|r| r.status)
            };
            for i in 0..20 {
                assert_eq!(write(i).await.ok(), Some(204), "write {i} before the cut");
            }
            nemesis::cut_links(&hosts, &[(0, 1)]);
            let cut = Instant::now();
            let mut i = 100;
            while cut.elapsed() < Duration::from_secs(7) {
                let status = write(i).await.ok();
                assert_ne!(status, Some(204), "a W=3 write succeeded across a cut link");
                i += 1;
            }
            nemesis::heal_links();
            let healed = Instant::now();
            let took = loop {
                if write(i).await.ok() == Some(204) {
                    break healed.elapsed();
                }
                assert!(
                    healed.elapsed() < Duration::from_secs(20),
                    "no W=3 write succeeded within 20 s of the heal"
                );
                i += 1;
            };
            eprintln!("first W=3 write across the healed link succeeded {took:?} after the heal");
            assert!(
                took < Duration::from_millis(1500),
                "the healed link carried no request for {took:?}: a stale connection was reused"
            );
        });
    });
}

/// The convergence check can fail: replicas that differ (one missed writes, and nothing repairs
/// it) must not be reported converged.
#[test]
fn replicas_that_differ_are_not_reported_converged() {
    let _turn = one_at_a_time();
    runtime().block_on(async {
        let mut cluster = Cluster::start_with(
            ClusterOptions::new(3, 3, 2, 2)
                .strict()
                .args(["--anti-entropy-interval", "0s"]),
        )
        .await;
        let nodes: Vec<_> = (0..3).map(|i| cluster.client(i).clone()).collect();
        cluster.stop(2);
        for i in 0..20 {
            cluster
                .client(0)
                .put_ok(format!("diverge-{i}").as_bytes(), b"v", None)
                .await;
        }
        tokio::task::block_in_place(|| cluster.restart(2));
        let verdict = wait_converged(&nodes, &[0, 1, 2], 60, Duration::from_secs(3)).await;
        eprintln!("diverged replicas: {verdict:?}");
        assert!(
            verdict.is_err(),
            "kv-2 missed 20 writes and nothing repaired them, yet the check reported convergence"
        );
        // And it passes once they agree: reads at r=3 repair kv-2.
        for i in 0..20 {
            let resp = cluster
                .client(0)
                .get_with_query(format!("diverge-{i}").as_bytes(), "?r=3")
                .await;
            assert_eq!(resp.status, 200, "{resp}");
        }
        let agreed = wait_converged(&nodes, &[0, 1, 2], 60, Duration::from_secs(10)).await;
        assert!(
            agreed.is_ok(),
            "read repair brought kv-2 up to date, yet the check did not report convergence: {agreed:?}"
        );
    });
}
