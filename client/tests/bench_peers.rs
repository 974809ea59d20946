//! `kvctl bench --target redis|etcd` against a real redis-server and a real single-member etcd on
//! loopback: the load succeeds without errors and the keys it wrote are really in the server.
//! Both servers are required: a missing one fails the test (CI installs them, scripts/install-deps.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Keys the runs preload (all of them must exist afterwards).
const KEYS: u64 = 20;

/// A child process killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free at the time of the call.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `program` (a missing program fails the test with its name).
fn start(program: &str, args: &[&str], dir: &std::path::Path) -> Server {
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {program} (scripts/install-deps.sh installs it): {e}")
        });
    Server(child)
}

/// Sends `request` on a new connection and returns everything the server sent back.
fn exchange(port: u16, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            // Redis keeps the connection open: a complete line is enough.
            Err(_) if answer.ends_with(b"\r\n") => break,
            Err(e) => return Err(e),
        }
        if request.starts_with(b"*") && answer.ends_with(b"\r\n") {
            break;
        }
    }
    Ok(answer)
}

/// An HTTP/1.0 POST of a JSON body; the answer's body.
fn http_post(port: u16, path: &str, body: &str) -> std::io::Result<Value> {
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(port, request.as_bytes())?;
    let text = String::from_utf8_lossy(&answer);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).map_err(|e| std::io::Error::other(format!("{e}: {text}")))
}

/// Waits until `ready` holds, at most 20 s.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} is not ready after 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `kvctl bench ARGS --json` for about a second and returns its report, after checking that
/// operations succeeded without errors.
fn bench(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("bench")
        .args(args)
        .args([
            "--duration",
            "1s",
            "--keys",
            &KEYS.to_string(),
            "--preload",
            "--workload",
            "a",
        ])
        .args(["--clients", "4", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kvctl bench {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["preload"]["written"], KEYS, "{report}");
    for row in report["operations"].as_array().unwrap() {
        assert!(row["ops"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(row["errors"], 0, "{report}");
    }
    assert_eq!(report["reads_not_found"], 0, "{report}");
    report
}

#[test]
fn bench_drives_a_real_redis_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let port_text = port.to_string();
    let _redis = start(
        "redis-server",
        &[
            "--port",
            &port_text,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            ".",
        ],
        dir.path(),
    );
    let ping = b"*1\r\n$4\r\nPING\r\n";
    wait_for("redis-server", || {
        exchange(port, ping).is_ok_and(|a| a.starts_with(b"+PONG"))
    });
    let report = bench(&[
        "--target",
        "redis",
        "--endpoints",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(report["target"], "redis");
    // Every preloaded key is there, with the value's size.
    let dbsize = exchange(port, b"*1\r\n$6\r\nDBSIZE\r\n").unwrap();
    assert_eq!(dbsize, format!(":{KEYS}\r\n").as_bytes());
    // Open loop: the schedule, not the server's speed, sets the number of operations (200/s for 1 s).
    let output = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args([
            "bench",
            "--target",
            "redis",
            "--endpoints",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "--duration",
            "1s",
            "--rate",
            "200",
            "--workload",
            "write",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let open: Value = serde_json::from_slice(&output.stdout).unwrap();
    let ops = open["operations"][1]["ops"].as_u64().unwrap();
    assert!(
        (150..=200).contains(&ops),
        "{ops} writes at 200/s for 1 s: {open}"
    );
    assert_eq!(open["rate"], 200.0);
    let value = exchange(port, b"*2\r\n$3\r\nGET\r\n$12\r\nbench-000000\r\n").unwrap();
    assert!(
        value.starts_with(b"$100\r\n"),
        "{:?}",
        String::from_utf8_lossy(&value)
    );
}

#[test]
fn bench_drives_a_real_etcd_member() {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let _etcd = start(
        "etcd",
        &[
            "--data-dir",
            "etcd",
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("default={peer_url}"),
        ],
        dir.path(),
    );
    wait_for("etcd", || {
        http_post(client, "/v3/kv/range", r#"{"key":"AA=="}"#).is_ok()
    });
    let report = bench(&["--target", "etcd", "--endpoints", &client_url]);
    assert_eq!(report["target"], "etcd");
    // base64 of "bench-" and of "bench." (the end of the prefix range).
    let count = http_post(
        client,
        "/v3/kv/range",
        r#"{"key":"YmVuY2gt","range_end":"YmVuY2gu","count_only":true}"#,
    )
    .unwrap();
    assert_eq!(count["count"], KEYS.to_string(), "{count}");
}
