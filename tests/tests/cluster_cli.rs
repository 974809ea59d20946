//! `kvctl cluster` against real kvnode processes: adding a member waits until the ring settled with
//! it, `status` shows every member, removing it waits until it may be stopped, and bad changes are
//! refused with exit status 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvcluster_tests::{Cluster, kvctl};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_cluster_adds_and_removes_a_member() {
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    for i in 0..200 {
        cluster
            .client(0)
            .put_ok(format!("k{i}").as_bytes(), b"v", None)
            .await;
    }
    let endpoint = cluster.client(0).base().to_string();
    let new = cluster.add_node().await;
    let member = cluster.member(new);

    let refused = kvctl(
        &endpoint,
        &["cluster", "add", "kv-0", "127.0.0.1:1", "127.0.0.1:2"],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("already a member"));

    let added = tokio::task::spawn_blocking({
        let endpoint = endpoint.clone();
        move || {
            kvctl(
                &endpoint,
                &[
                    "cluster",
                    "add",
                    &member.id,
                    &member.address,
                    &member.peer_address,
                    "--timeout",
                    "2m",
                ],
            )
        }
    })
    .await
    .unwrap();
    let out = text(&added.stdout);
    assert!(added.status.success(), "{out}{}", text(&added.stderr));
    assert!(
        out.contains("data is moving") && out.contains("ring settled"),
        "{out}"
    );

    let status = kvctl(&endpoint, &["cluster", "status"]);
    let out = text(&status.stdout);
    assert!(status.status.success(), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("settled")).count(),
        4,
        "{out}"
    );

    let removed = tokio::task::spawn_blocking({
        let endpoint = endpoint.clone();
        let id = cluster.id(new);
        move || kvctl(&endpoint, &["cluster", "remove", &id, "--timeout", "2m"])
    })
    .await
    .unwrap();
    let out = text(&removed.stdout);
    assert!(removed.status.success(), "{out}{}", text(&removed.stderr));
    assert!(out.contains("may be stopped"), "{out}");
    let left = cluster.client(new).admin_status().await;
    assert!(!left.member && left.hints_pending == 0);
    cluster.stop(new);

    // Every key is still readable from the three remaining members.
    for i in 0..200 {
        let resp = cluster.client(i % 3).get(format!("k{i}").as_bytes()).await;
        assert_eq!(resp.status, 200, "k{i}: {resp}");
    }
}
