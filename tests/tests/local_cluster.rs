//! `kvctl up` as the README runs it: a 3-node cluster on loopback that kvctl reads and writes, that
//! `kvctl bench` drives without errors, and that one SIGTERM stops completely; and the README's
//! failure walk-through: one node killed, the others keep serving at W=2, Enter brings it back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvcluster_tests::{free_block, kvctl, kvctl_bin, kvnode_bin};

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

/// A running `kvctl up`: its process, the endpoints its banner named, and its stderr so far.
struct UpCluster {
    up: StopOnDrop,
    endpoints: Vec<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    data: tempfile::TempDir,
}

impl UpCluster {
    /// Starts `kvctl up --nodes 3` on free ports, with stdin piped, and waits for its banner.
    fn start() -> UpCluster {
        Self::start_with(&[])
    }

    /// [`UpCluster::start`] with `args` before `up` (`--output json`: the banner is one JSON line).
    fn start_with(args: &[&str]) -> UpCluster {
        let data = tempfile::tempdir().unwrap();
        // kvctl up takes consecutive ports, and the peer ports 1000 above them.
        let base = free_block(3, &[0, 1000]);
        let json = args.contains(&"json");
        let mut up = Command::new(kvctl_bin())
            .args(args)
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
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = up.stdout.take().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = up.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(lines).lines().map_while(Result::ok) {
                eprintln!("kvctl up: {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let up = StopOnDrop(up);

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
            if json {
                let banner: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert_eq!(
                    (banner["n"].as_u64(), banner["w"].as_u64()),
                    (Some(3), Some(2))
                );
                for node in banner["nodes"].as_array().unwrap() {
                    endpoints.push(node["endpoint"].as_str().unwrap().to_owned());
                }
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
        UpCluster {
            up,
            endpoints,
            stderr,
            data,
        }
    }

    /// Waits up to 30 s for a stderr line containing `needle`.
    fn wait_for_stderr(&self, needle: &str) {
        let t0 = Instant::now();
        while !self
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "kvctl up never said {needle:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The pid of the kvnode process of node `id` started for `data` (from `/proc/*/cmdline`).
fn node_pid(data: &std::path::Path, id: &str) -> u32 {
    let node_dir = data.join(id);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"--data-dir" && w[1] == node_dir.as_os_str().as_encoded_bytes())
        {
            return pid;
        }
    }
    panic!("no kvnode process for {}", node_dir.display());
}

#[test]
fn kvctl_up_announces_its_nodes_as_json() {
    let cluster = UpCluster::start_with(&["--output", "json"]);
    assert_eq!(cluster.endpoints.len(), 3);
    let put = kvctl(&cluster.endpoints[1], &["put", "k", "v"]);
    assert!(put.status.success(), "{put:?}");
    let get = kvctl(&cluster.endpoints[0], &["-o", "json", "get", "k"]);
    let read: serde_json::Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(
        read["siblings"],
        serde_json::json!([{"value": "v"}]),
        "{get:?}"
    );
}

#[test]
fn kvctl_up_serves_a_three_node_cluster_that_bench_drives_and_sigterm_stops() {
    let cluster = UpCluster::start();
    let endpoints = cluster.endpoints.clone();
    let mut up = cluster.up;

    // Write through one node, read through another; the cluster is N = 3, W = R = 2.
    let put = kvctl(&endpoints[0], &["put", "greeting", "hello"]);
    assert!(put.status.success(), "{put:?}");
    let get = kvctl(&endpoints[2], &["get", "greeting"]);
    assert!(get.status.success(), "{get:?}");
    assert_eq!(get.stdout, b"hello");
    // What `helm test` runs: a fresh key written, read back and deleted.
    let check = kvctl(&endpoints[1], &["check", "--key", "readme"]);
    assert!(check.status.success(), "{check:?}");
    assert!(
        String::from_utf8_lossy(&check.stderr).contains(": ok"),
        "{check:?}"
    );
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
            "--watchers",
            "2",
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
    // The watchers followed the bench keys' change feed while the writes ran.
    let watch = &report["watch"];
    assert_eq!(watch["watchers"], 2, "{watch}");
    assert!(watch["changes"].as_u64().unwrap() > 0, "{watch}");
    assert_eq!(watch["errors"], serde_json::json!({}), "{watch}");

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

#[test]
fn a_killed_node_leaves_the_others_serving_and_enter_restarts_it() {
    let mut cluster = UpCluster::start();
    let endpoints = cluster.endpoints.clone();
    let put = kvctl(&endpoints[0], &["put", "before", "1"]);
    assert!(put.status.success(), "{put:?}");

    // As the README says: stop one node (kill its process).
    let pid = node_pid(cluster.data.path(), "kv-1");
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    cluster.wait_for_stderr("kv-1 exited on its own");
    cluster.wait_for_stderr("press Enter to restart kv-1");
    assert!(
        cluster.up.0.try_wait().unwrap().is_none(),
        "kvctl up stopped the cluster when one node died"
    );
    // Reads and writes at the default quorum of 2 still succeed; W=3 cannot.
    let put = kvctl(&endpoints[0], &["put", "during", "2"]);
    assert!(put.status.success(), "{put:?}");
    let get = kvctl(&endpoints[2], &["get", "before"]);
    assert_eq!(get.stdout, b"1", "{get:?}");
    let all = kvctl(&endpoints[0], &["put", "all", "3", "--w", "3"]);
    assert!(
        !all.status.success(),
        "a W=3 write succeeded with a node down: {all:?}"
    );
    assert!(
        String::from_utf8_lossy(&all.stderr).contains("503"),
        "{all:?}"
    );

    // Enter brings it back on its data, and W=3 works again.
    let stdin = cluster.up.0.stdin.as_mut().unwrap();
    stdin.write_all(b"\n").unwrap();
    stdin.flush().unwrap();
    cluster.wait_for_stderr("kv-1 restarted");
    let t0 = Instant::now();
    loop {
        let all = kvctl(&endpoints[1], &["put", "all", "3", "--w", "3"]);
        if all.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "W=3 still fails after kv-1 restarted: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let get = kvctl(&endpoints[1], &["get", "during"]);
    assert_eq!(get.stdout, b"2", "{get:?}");
}
