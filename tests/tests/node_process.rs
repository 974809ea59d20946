//! The `kvnode` process: its stdout line, signals, flags, environment twins and config file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvcluster_tests::kvapi::codes;
use kvcluster_tests::{NodeBuilder, NodeProcess, PEER_PORT_PREFIX, kvnode_bin};

#[tokio::test]
async fn prints_exactly_the_peer_port_and_listening_lines_on_stdout() {
    let mut node = NodeProcess::start(&[]);
    let c = node.client();
    c.put_ok(b"k", b"v", None).await;
    assert_eq!(c.get(b"k").await.status, 200);
    assert_eq!(c.get(b"absent").await.status, 404);
    let status = node.stop();
    assert!(status.success(), "{status}");
    let lines = node.stdout_lines();
    assert_eq!(
        lines,
        vec![
            format!("{PEER_PORT_PREFIX}{}", node.peer_addr()),
            format!("kvnode listening on http://{}", node.addr())
        ],
        "stdout carries exactly the peer port and the listening line; logs go to stderr"
    );
    assert!(node.addr().ip().is_loopback());
    assert_ne!(node.addr().port(), 0, "the real port is announced");
}

#[tokio::test]
async fn sigterm_and_sigint_stop_cleanly_with_exit_0() {
    for signal in ["TERM", "INT"] {
        let mut node = NodeProcess::start(&[]);
        node.client().put_ok(b"k", b"v", None).await;
        let status = node.stop_with(signal);
        assert_eq!(status.code(), Some(0), "SIG{signal}: {status}");
    }
}

#[tokio::test]
async fn missing_data_dir_is_refused() {
    let mut child = Command::new(kvnode_bin())
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("KVNODE_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvnode");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvnode without --data-dir kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "--data-dir is required: {status}");
}

#[tokio::test]
async fn config_file_sets_max_siblings() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "max-siblings = 2\n").unwrap();
    let node = NodeProcess::start(&["--config", config.to_str().unwrap()]);
    let c = node.client();
    c.put_ok(b"k", b"a", None).await;
    c.put_ok(b"k", b"b", None).await;
    c.put(b"k", b"c", None)
        .await
        .assert_error(409, codes::TOO_MANY_SIBLINGS);
}

#[tokio::test]
async fn env_twin_sets_max_siblings() {
    let node = NodeBuilder::new().env("KVNODE_MAX_SIBLINGS", "2").start();
    let c = node.client();
    c.put_ok(b"k", b"a", None).await;
    c.put_ok(b"k", b"b", None).await;
    c.put(b"k", b"c", None)
        .await
        .assert_error(409, codes::TOO_MANY_SIBLINGS);
}

#[tokio::test]
async fn env_twin_sets_listen_address() {
    let node = NodeBuilder::new()
        .without_listen()
        .env("KVNODE_LISTEN", "127.0.0.1:0")
        .start();
    assert_ne!(
        node.addr().port(),
        8080,
        "KVNODE_LISTEN=127.0.0.1:0 must not use the default port"
    );
    node.client().put_ok(b"k", b"v", None).await;
}

#[tokio::test]
async fn default_max_siblings_is_64() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    for i in 0..64 {
        c.put_ok(b"k", format!("v{i}").as_bytes(), None).await;
    }
    let got = c.get(b"k").await;
    assert_eq!(got.status, 300);
    assert_eq!(got.live_values().len(), 64);
    c.put(b"k", b"v64", None)
        .await
        .assert_error(409, codes::TOO_MANY_SIBLINGS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_edited_without_a_new_epoch_is_named_in_the_log() {
    let mut cluster = kvcluster_tests::Cluster::start(1, 1, 1, 1).await;
    cluster.stop(0);
    let path = cluster.config_path().to_path_buf();
    let mut config: kvcluster_tests::kvapi::ClusterConfig =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config.sloppy_quorum = !config.sloppy_quorum;
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    cluster.restart(0);
    let status = cluster.client(0).admin_status().await;
    assert_ne!(
        status.config.sloppy_quorum, config.sloppy_quorum,
        "the persisted config is followed"
    );
    let log = cluster.node(0).log_tail(40);
    assert!(
        log.contains("differs from the config this node persisted at the same epoch"),
        "{log}"
    );
}
