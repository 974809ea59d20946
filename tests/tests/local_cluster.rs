//! `kvctl up` as the README runs it: a 3-node cluster on loopback that kvctl reads and writes, that
//! `kvctl bench` drives without errors, and that one SIGTERM stops completely.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvcluster_tests::{free_ports, kvctl, kvctl_bin, kvnode_bin};

/// Stops `kvctl up` (and so its nodes) with SIGTERM when the test ends, even by panicking: kvctl starts
/// the nodes in their own process group, so killing kvctl outright would orphan them.
struct StopOnDrop(std::process::Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
        }
    }
}

#[test]
fn kvctl_up_serves_a_three_node_cluster_that_bench_drives_and_sigterm_stops() {
    let data = tempfile::tempdir().unwrap();
    // kvctl up takes consecutive ports, and the peer ports 1000 above them: find three free ones
    // in a row whose peer ports are free too.
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let base = (0..50)
        .map(|_| free_ports(1)[0])
        .find(|&p| p < 64000 && (0..3).all(|i| free(p + i) && free(p + 1000 + i)))
        .expect("three consecutive free ports with free peer ports");
    let mut up = Command::new(kvctl_bin())
        .args([
            "up",
            "--nodes",
            "3",
            "--port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(data.path())
        .arg("--kvnode")
        .arg(kvnode_bin())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let mut up = StopOnDrop(up);

    // The banner names every node once all three printed their ready line.
    let mut stdout = BufReader::new(stdout);
    let started = Instant::now();
    let mut endpoints = Vec::new();
    let mut line = String::new();
    while endpoints.len() < 3 && started.elapsed() < Duration::from_secs(60) {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some((id, url)) = line.trim().split_once(" http://")
            && id.starts_with("kv-")
        {
            endpoints.push(format!("http://{url}"));
        }
    }
    assert_eq!(endpoints.len(), 3, "banner did not list three nodes");
    eprintln!("kvctl up ready in {:?}: {endpoints:?}", started.elapsed());

    // Write through one node, read through another; the cluster is N = 3, W = R = 2.
    let put = kvctl(&endpoints[0], &["put", "greeting", "hello"]);
    assert!(put.status.success(), "{put:?}");
    let get = kvctl(&endpoints[2], &["get", "greeting"]);
    assert!(get.status.success(), "{get:?}");
    assert_eq!(get.stdout, b"hello");
    let status = kvctl(&endpoints[1], &["status", "--json"]);
    let status: kvapi::NodeStatus = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        (status.config.n, status.config.w, status.config.r),
        (3, 2, 2)
    );
    assert_eq!(status.config.members.len(), 3);

    // A short, bounded benchmark against all three endpoints.
    let bench = kvctl(
        &endpoints[0],
        &[
            "bench",
            "--endpoints",
            &endpoints.join(","),
            "--clients",
            "4",
            "--duration",
            "2s",
            "--keys",
            "200",
            "--max-ops",
            "20000",
            "--json",
        ],
    );
    assert!(bench.status.success(), "{bench:?}");
    let report: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
    let total = report["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["operation"] == "total")
        .unwrap()
        .clone();
    eprintln!("bench total: {total}");
    assert!(total["ops"].as_u64().unwrap() > 0, "{total}");
    assert_eq!(total["errors"].as_u64().unwrap(), 0, "{total}");

    // SIGTERM stops kvctl and every node it started.
    let pid = up.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopping = Instant::now();
    let code = loop {
        if let Some(code) = up.0.try_wait().unwrap() {
            break code;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(30),
            "kvctl up did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "kvctl up exited with {code}");
    for endpoint in &endpoints {
        let address = endpoint.trim_start_matches("http://");
        assert!(
            std::net::TcpStream::connect(address).is_err(),
            "{address} still accepts connections after kvctl up stopped"
        );
    }
}
