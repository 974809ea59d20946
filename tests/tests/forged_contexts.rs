//! Attacks on causal context tokens against real nodes: a client may only write back a context the
//! cluster issued for that key. Forged, altered, foreign and oversized tokens get 400 `bad_context`
//! and no acknowledged write is lost, on one node and across a cluster sharing one context key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kvcluster_tests::kvapi::codes;
use kvcluster_tests::{Cluster, KvClient, NodeProcess, write_context_key};
use kvnode::causality::{Actor, VersionVector};
use serde::{Deserialize, Serialize};

/// The body of a context token as the node encodes it (postcard), so an attacker's token differs from
/// a genuine one only where the attack says.
#[derive(Serialize, Deserialize)]
struct TokenBody {
    key_fingerprint: u32,
    vector: VersionVector,
}

/// Reads the (unencrypted) body of a genuine token: what an attacker learns from any context.
fn body_of(token: &str) -> TokenBody {
    let bytes = URL_SAFE_NO_PAD.decode(token).unwrap();
    postcard::from_bytes(&bytes[1..bytes.len() - 32]).unwrap()
}

fn vector(actors: &[Actor], counter: u64) -> VersionVector {
    let mut v = VersionVector::default();
    for a in actors {
        v.witness(a, counter);
    }
    v
}

/// A token as an attacker makes it: version byte, the body with the genuine key fingerprint, and a tag
/// of random bytes (or, for `version` 1, the old untagged format, which the node once accepted).
fn forged_token(version: u8, genuine: &TokenBody, v: &VersionVector) -> String {
    let body = TokenBody {
        key_fingerprint: genuine.key_fingerprint,
        vector: v.clone(),
    };
    let mut bytes = vec![version];
    bytes.extend(postcard::to_allocvec(&body).unwrap());
    if version >= 2 {
        bytes.extend((0..32).map(|_| rand::random::<u8>()));
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

async fn assert_refused(client: &KvClient, key: &[u8], token: &str, what: &str) {
    let put = client.put(key, b"overwritten", Some(token)).await;
    assert_eq!(put.status, 400, "PUT with {what}: {put}");
    assert_eq!(put.error_body().error, codes::BAD_CONTEXT, "{what}: {put}");
    let del = client.delete(key, Some(token)).await;
    assert_eq!(del.status, 400, "DELETE with {what}: {del}");
    assert_eq!(del.error_body().error, codes::BAD_CONTEXT, "{what}: {del}");
}

#[tokio::test]
async fn forged_contexts_are_refused_and_lose_nothing() {
    let node = NodeProcess::start(&["--max-header-bytes", "1MiB"]);
    let c = node.client();
    c.put_ok(b"k", b"acknowledged", None).await;
    let (_, genuine) = c.get_one(b"k").await;
    let body = body_of(&genuine);
    let me: Vec<Actor> = body.vector.actors().cloned().collect();
    assert_eq!(me.len(), 1, "one write, one actor");

    // The wrap-around attack: the node's own actor at u64::MAX, in the old untagged format and in the
    // current one with a made-up tag.
    let max = vector(&me, u64::MAX);
    assert_refused(
        &c,
        b"k",
        &forged_token(1, &body, &max),
        "an untagged u64::MAX context",
    )
    .await;
    assert_refused(
        &c,
        b"k",
        &forged_token(2, &body, &max),
        "a u64::MAX context",
    )
    .await;
    // Inflating a counter just enough to supersede the stored sibling.
    let inflated = vector(&me, 1_000);
    assert_refused(
        &c,
        b"k",
        &forged_token(2, &body, &inflated),
        "an inflated context",
    )
    .await;
    // A genuine token with one byte of its body changed.
    let mut bytes = URL_SAFE_NO_PAD.decode(&genuine).unwrap();
    let last_body_byte = bytes.len() - 33;
    bytes[last_body_byte] ^= 0x01;
    assert_refused(&c, b"k", &URL_SAFE_NO_PAD.encode(bytes), "an altered token").await;
    // 10,000 actors: refused before any of them is looked at.
    let many: Vec<Actor> = (0..10_000).map(|i| Actor::new("kv-x", i)).collect();
    let huge = forged_token(2, &body, &vector(&many, 1));
    assert_refused(&c, b"k", &huge, "10,000 actors").await;

    let (value, _) = c.get_one(b"k").await;
    assert_eq!(
        value, b"acknowledged",
        "a refused write must change nothing"
    );
    // The genuine context still resolves the key.
    c.put_ok(b"k", b"resolved", Some(&genuine)).await;
    assert_eq!(c.get_one(b"k").await.0, b"resolved");
}

#[tokio::test]
async fn a_context_of_another_cluster_is_refused() {
    let ours = NodeProcess::start(&[]);
    let theirs = NodeProcess::start(&[]);
    ours.client().put_ok(b"k", b"ours", None).await;
    theirs.client().put_ok(b"k", b"theirs", None).await;
    // Their node issued the token for the same key name, with its own key.
    let (_, foreign) = theirs.client().get_one(b"k").await;
    assert_refused(&ours.client(), b"k", &foreign, "another cluster's context").await;
    assert_eq!(ours.client().get_one(b"k").await.0, b"ours");
}

#[tokio::test]
async fn a_lone_node_keeps_its_context_key_across_restarts() {
    let mut node = NodeProcess::start(&[]);
    node.client().put_ok(b"k", b"v1", None).await;
    let (_, ctx) = node.client().get_one(b"k").await;
    node.restart();
    node.client().put_ok(b"k", b"v2", Some(&ctx)).await;
    assert_eq!(node.client().get_one(b"k").await.0, b"v2");
}

#[tokio::test]
async fn every_member_accepts_the_contexts_of_every_other() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    cluster.client(0).put_ok(b"k", b"v1", None).await;
    let (_, ctx) = cluster.client(1).get_one(b"k").await;
    cluster.client(2).put_ok(b"k", b"v2", Some(&ctx)).await;
    let (value, _) = cluster.client(0).get_one(b"k").await;
    assert_eq!(
        value, b"v2",
        "a context from kv-1 resolved the key through kv-2"
    );
}

#[tokio::test]
async fn a_node_without_a_shared_context_key_refuses_a_cluster_of_several() {
    // At start: a two-member config and no key file.
    let dir = tempfile::tempdir().unwrap();
    let config = kvcluster_tests::kvapi::ClusterConfig {
        cluster: "test".into(),
        epoch: 1,
        members: vec![
            kvcluster_tests::kvapi::Member {
                id: "kv-0".into(),
                address: "127.0.0.1:1".into(),
                peer_address: "127.0.0.1:3".into(),
            },
            kvcluster_tests::kvapi::Member {
                id: "kv-1".into(),
                address: "127.0.0.1:2".into(),
                peer_address: "127.0.0.1:4".into(),
            },
        ],
        n: 2,
        w: 1,
        r: 1,
        partitions: 256,
        vnodes: 64,
        sloppy_quorum: true,
        transition_from: None,
    };
    let path = dir.path().join("cluster.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let output = std::process::Command::new(kvcluster_tests::kvnode_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
            "--node-id",
            "kv-0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--cluster-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--context-key-file"), "{stderr}");

    // Through the admin API: a lone node without a key file refuses to grow.
    let lone = NodeProcess::start(&[]);
    let mut grown = lone.client().admin_cluster().await;
    grown.epoch += 1;
    grown.members.push(stranger(&grown.members[0]));
    let answer = lone.client().put_admin_cluster(&grown).await;
    answer.assert_error(400, codes::BAD_CONFIG);

    // With a key file it may.
    let keyed = NodeProcess::start(&["--context-key-file", &write_context_key(dir.path())]);
    let mut grown = keyed.client().admin_cluster().await;
    grown.epoch += 1;
    grown.members.push(stranger(&grown.members[0]));
    let answer = keyed.client().put_admin_cluster(&grown).await;
    assert!(answer.status < 300, "{answer}");
}

/// A member that does not run: a copy of `like` under another id and address.
fn stranger(like: &kvcluster_tests::kvapi::Member) -> kvcluster_tests::kvapi::Member {
    let mut member = like.clone();
    member.id = "kv-9".into();
    member.address = "127.0.0.1:9".into();
    member.peer_address = "127.0.0.1:10".into();
    member
}
