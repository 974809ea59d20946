//! Durability edges, against real kvnode processes:
//!
//! - a failed sync of the write-ahead log makes the node unready and refuse writes until it is
//!   restarted, with either durability. The failure is injected by an `LD_PRELOAD` shim (compiled
//!   here with the system `cc`) whose `fsync`/`fdatasync` fail with `EIO` while a trigger file
//!   exists;
//! - with `--durability fsync` every acknowledged write is preceded by a sync of the WAL, and the
//!   rename that installs a cluster config is followed by an fsync of its directory. `strace`
//!   attached to the node records the syscalls with their wall-clock times and the paths of their
//!   file descriptors, and the test matches them against the writes it saw acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvcluster_tests::kvapi::codes;
use kvcluster_tests::{NodeBuilder, NodeProcess, metric_sum, skip_or_fail};

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void) {
    const char *trigger = getenv("KV_TEST_FAIL_SYNC_WHILE");
    return trigger && access(trigger, F_OK) == 0;
}

int fsync(int fd) {
    static int (*real)(int);
    if (failing()) { errno = EIO; return -1; }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (failing()) { errno = EIO; return -1; }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
"#;

/// Compiles the sync-failing shim into `dir`; `None` (after skip_or_fail) without a C compiler.
fn build_shim(dir: &Path) -> Option<PathBuf> {
    let source = dir.join("failsync.c");
    let library = dir.join("failsync.so");
    std::fs::write(&source, SHIM).unwrap();
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status();
    match built {
        Ok(status) if status.success() => Some(library),
        other => {
            skip_or_fail(
                "durability_edges",
                &format!("cannot compile the LD_PRELOAD shim with cc: {other:?}"),
            );
            None
        }
    }
}

/// Waits (bounded) until `/health/ready` answers `status`.
async fn wait_ready_status(node: &NodeProcess, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let resp = node
            .client()
            .request("GET", "/health/ready", &[], None)
            .await;
        if resp.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/health/ready still {} after {within:?}, expected {status}: {resp}",
            resp.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a node with the shim under `durability`, trips the trigger, and checks that the node
/// turns unready, refuses writes (also once the disk "recovers") and serves again after a restart.
async fn sync_failure_is_final_until_restart(durability: &str) {
    let tools = tempfile::tempdir().unwrap();
    let Some(shim) = build_shim(tools.path()) else {
        return;
    };
    let trigger = tools.path().join("fail-syncs");
    let mut node = NodeBuilder::new()
        .args(["--durability", durability, "--wal-sync-interval", "50ms"])
        .env("LD_PRELOAD", shim.to_str().unwrap())
        .env("KV_TEST_FAIL_SYNC_WHILE", trigger.to_str().unwrap())
        .start();
    let c = node.client();
    c.put_ok(b"before", b"synced", None).await;
    wait_ready_status(&node, 200, Duration::from_secs(2)).await;

    std::fs::write(&trigger, b"").unwrap();
    // This write dirties the log: with `fsync` its own sync fails, with `periodic` the next tick's.
    let during = c.put(b"during", b"maybe", None).await;
    println!("write while syncs fail ({durability}): {during}");
    if durability == "fsync" {
        during.assert_error(503, codes::UNAVAILABLE);
    }
    wait_ready_status(&node, 503, Duration::from_secs(5)).await;
    let ready = c.request("GET", "/health/ready", &[], None).await;
    assert!(ready.text().contains("write-ahead log"), "{ready}");

    std::fs::remove_file(&trigger).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The disk works again, but nothing written since the failure is trusted: still refused.
    let refused = c.put(b"after", b"no", None).await;
    let body = refused.assert_error(503, codes::UNAVAILABLE);
    assert!(body.message.contains("write-ahead log"), "{}", body.message);
    let deleted = c.delete(b"before", None).await;
    deleted.assert_error(503, codes::UNAVAILABLE);
    wait_ready_status(&node, 503, Duration::from_secs(1)).await;
    let (value, _) = c.get_one(b"before").await;
    assert_eq!(value, b"synced", "reads are still served");
    let failures = metric_sum(&c.metrics().await, "kv_wal_sync_failures_total", &[]);
    assert!(
        failures.is_some_and(|n| n >= 1.0),
        "kv_wal_sync_failures_total = {failures:?}"
    );

    node.kill9();
    node.restart();
    wait_ready_status(&node, 200, Duration::from_secs(2)).await;
    let c = node.client();
    c.put_ok(b"after", b"yes", None).await;
    assert_eq!(c.get_one(b"before").await.0, b"synced");
}

#[tokio::test]
async fn a_failed_periodic_wal_sync_makes_the_node_unready_and_refuse_writes() {
    sync_failure_is_final_until_restart("periodic").await;
}

#[tokio::test]
async fn a_failed_fsync_write_makes_the_node_unready_and_refuse_writes() {
    sync_failure_is_final_until_restart("fsync").await;
}

/// One traced syscall: wall-clock start, name, and the path of its first file descriptor or the
/// raw argument text.
#[derive(Debug)]
struct Call {
    at: f64,
    name: String,
    args: String,
}

/// Parses `strace -f -ttt -y` output lines such as
/// `1234  1700000000.123456 fdatasync(13</tmp/x/db/000004.log>) = 0` (and `<unfinished ...>` halves).
fn parse_trace(text: &str) -> Vec<Call> {
    text.lines()
        .filter_map(|line| {
            // strace pads the pid column: split on runs of spaces.
            let (_pid, rest) = line.trim_start().split_once(' ')?;
            let (at, rest) = rest.trim_start().split_once(' ')?;
            let at: f64 = at.parse().ok()?;
            if rest.starts_with('<') || rest.starts_with("---") || rest.starts_with("+++") {
                return None; // a resumed call or a signal: its start line was already counted
            }
            let (name, args) = rest.split_once('(')?;
            Some(Call {
                at,
                name: name.to_string(),
                args: args.to_string(),
            })
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn fsync_durability_syncs_the_wal_before_each_ack_and_the_config_directory_after_a_rename() {
    if Command::new("strace").arg("-V").output().is_err() {
        skip_or_fail(
            "fsync trace test",
            "strace is not installed (scripts/install-deps.sh installs it)",
        );
        return;
    }
    let node = NodeProcess::start(&["--durability", "fsync"]);
    let c = node.client();
    c.put_ok(b"warm-up", b"x", None).await;
    let trace_path = node.temp_dir().join("strace.txt");
    let log_path = node.temp_dir().join("strace.log");
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-ttt",
            "-y",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
        ])
        .arg("-o")
        .arg(&trace_path)
        .args(["-p", &node.pid().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .expect("spawn strace");
    // strace reports each attached thread on stderr; once the first is, the rest follow at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("attached")
    {
        assert!(
            strace.try_wait().unwrap().is_none(),
            "strace exited: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "strace did not attach within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Sequential writes: each one's [sent, acknowledged] window must contain a WAL sync.
    let mut windows = Vec::new();
    for i in 0..20 {
        let sent = unix_now();
        c.put_ok(format!("traced-{i}").as_bytes(), b"value", None)
            .await;
        windows.push((i, sent, unix_now()));
    }
    // A new config: written to a temporary file, renamed over cluster.json, directory synced.
    let mut config = c.admin_cluster().await;
    config.epoch += 1;
    assert_eq!(c.put_admin_cluster(&config).await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // SIGINT makes strace detach and flush its output.
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while strace.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = strace.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = strace.wait();
    let text = std::fs::read_to_string(&trace_path).unwrap();
    let calls = parse_trace(&text);
    let db_dir = node.data_dir().join("db");
    let db_dir = db_dir.to_str().unwrap();
    let wal_syncs: Vec<f64> = calls
        .iter()
        .filter(|c| c.name == "fdatasync" || c.name == "fsync")
        .filter(|c| c.args.contains(db_dir) && c.args.contains(".log>"))
        .map(|c| c.at)
        .collect();
    println!(
        "{} traced calls, {} WAL syncs for 20 acknowledged writes",
        calls.len(),
        wal_syncs.len()
    );
    for (i, sent, acked) in &windows {
        assert!(
            wal_syncs.iter().any(|t| t >= sent && t <= acked),
            "write {i} was acknowledged without a sync of the WAL between its request ({sent:.6}) \
             and its answer ({acked:.6}); WAL syncs at {wal_syncs:?}"
        );
    }

    let data_dir = node.data_dir().to_str().unwrap().to_string();
    let renamed = calls
        .iter()
        .position(|c| c.name.starts_with("rename") && c.args.contains("cluster.json.tmp"))
        .unwrap_or_else(|| panic!("no rename of cluster.json.tmp traced:\n{text}"));
    let directory = format!("<{data_dir}>");
    let dir_synced = calls[renamed..]
        .iter()
        .any(|c| c.name == "fsync" && c.args.contains(&directory));
    assert!(
        dir_synced,
        "the rename of the cluster config was not followed by an fsync of {data_dir}:\n{}",
        text.lines()
            .filter(|l| !l.contains(".log>"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
