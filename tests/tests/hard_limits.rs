//! Hard limits on every input, attacked over real sockets: the global bound on requests in flight,
//! body deadlines on every route (key-value, admin and peer), the peer message limit, the write
//! timeout, and ten thousand held connections that must not slow other clients down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvcluster_tests::kvapi::codes;
use kvcluster_tests::{NodeProcess, RawConn, RawError, RawResponse, metric_sum, skip_or_fail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const MIB: usize = 1024 * 1024;

/// A request with a 10-byte body of which only 5 bytes are sent: the node holds it in flight.
async fn hold_in_flight(node: &NodeProcess, key: &str) -> RawConn {
    let mut conn = RawConn::connect(node.addr()).await;
    let head = format!(
        "PUT /v1/kv/{key}?timeout_ms=30000 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n01234"
    );
    conn.send(head.as_bytes()).await.unwrap();
    conn
}

async fn raw_request(node: &NodeProcess, method: &str, path: &str) -> RawResponse {
    // Peer RPC is served on the peer port only; both ports share the node's bound.
    let address = if path == kvnode::rpc::RPC_PATH {
        node.peer_addr()
    } else {
        node.addr()
    };
    let mut conn = RawConn::connect(address).await;
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
    conn.send(request.as_bytes()).await.unwrap();
    conn.read_response(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: no answer ({e:?})"))
}

#[tokio::test]
async fn requests_beyond_the_in_flight_bound_get_503_with_retry_after() {
    let node = NodeProcess::start(&["--max-requests-in-flight", "3"]);
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(hold_in_flight(&node, &format!("held-{i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Client, admin, peer (on the peer port) and metrics routes alike are refused at once, without
    // queueing.
    for (method, path) in [
        ("GET", "/v1/kv/other"),
        ("PUT", "/v1/kv/other"),
        ("GET", "/admin/v1/status"),
        ("POST", "/internal/v1/rpc"),
        ("GET", "/metrics"),
    ] {
        let started = Instant::now();
        let resp = raw_request(&node, method, path).await;
        let took = started.elapsed();
        assert_eq!(
            resp.status, 503,
            "{method} {path} with 3 of 3 slots taken: {resp:?}"
        );
        assert_eq!(resp.error_body().error, codes::UNAVAILABLE);
        assert_eq!(resp.header("retry-after"), Some("1"), "{resp:?}");
        assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    }
    // Health probes are never refused.
    for path in ["/health/live", "/health/ready"] {
        let resp = raw_request(&node, "GET", path).await;
        assert_eq!(resp.status, 200, "{path} while saturated: {resp:?}");
    }

    // Finishing a held request frees its slot.
    let mut first = held.remove(0);
    first.send(b"56789").await.unwrap();
    let resp = first.read_response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(resp.status, 204, "{resp:?}");
    let (value, _) = node.client().get_one(b"held-0").await;
    assert_eq!(value, b"0123456789");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = node.client().metrics().await;
    let rejected = metric_sum(
        &metrics,
        "kv_requests_rejected_total",
        &[("reason", "in_flight")],
    );
    assert!(
        rejected.is_some_and(|n| n >= 5.0),
        "kv_requests_rejected_total{{reason=\"in_flight\"}} = {rejected:?}"
    );
}

/// Sends `head`, then `trickle` one byte per second, until the node answers or closes; returns what
/// it did and when. Gives up after `give_up`.
async fn trickle(
    address: std::net::SocketAddr,
    head: &[u8],
    trickle: &[u8],
    give_up: Duration,
) -> (Result<RawResponse, RawError>, Duration) {
    let mut conn = RawConn::connect(address).await;
    let started = Instant::now();
    let _ = conn.send(head).await;
    for byte in trickle.iter().cycle() {
        match conn.read_response(Duration::from_secs(1)).await {
            Err(RawError::Timeout) => {}
            outcome => return (outcome, started.elapsed()),
        }
        if started.elapsed() > give_up || conn.send(&[*byte]).await.is_err() {
            break;
        }
    }
    let outcome = conn.read_response(Duration::from_millis(100)).await;
    (outcome, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_a_second_is_cut_off_on_every_route() {
    let node = NodeProcess::start(&["--body-read-timeout", "2s", "--header-read-timeout", "2s"]);
    let give_up = Duration::from_secs(8);
    let node = &node;
    let bodies = [
        ("PUT", "/v1/kv/slow"),
        ("PUT", "/admin/v1/cluster"),
        ("POST", "/internal/v1/rpc"),
    ]
    .map(|(method, path)| {
        let head =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n");
        // Peer RPC is served on the peer port only.
        let address = if path == kvnode::rpc::RPC_PATH {
            node.peer_addr()
        } else {
            node.addr()
        };
        async move {
            let (outcome, after) = trickle(address, head.as_bytes(), b"x", give_up).await;
            (format!("{method} {path} body"), outcome, after)
        }
    });
    let headers = async {
        let head =
            b"POST /internal/v1/rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n\r\n";
        let mut conn = RawConn::connect(node.peer_addr()).await;
        let started = Instant::now();
        let mut outcome = Err(RawError::Timeout);
        for byte in head {
            if conn.send(&[*byte]).await.is_err() {
                outcome = Err(RawError::Closed);
                break;
            }
            match conn.read_response(Duration::from_secs(1)).await {
                Err(RawError::Timeout) => {}
                other => {
                    outcome = other;
                    break;
                }
            }
            if started.elapsed() > give_up {
                break;
            }
        }
        ("peer route headers".to_string(), outcome, started.elapsed())
    };
    let (body_outcomes, header_outcome) = tokio::join!(futures_join_all(bodies), headers);
    for (what, outcome, after) in body_outcomes.into_iter().chain([header_outcome]) {
        let shown = outcome.as_ref().map(|r| r.status);
        println!("{what} trickled at 1 byte/s: {shown:?} after {after:?}");
        match outcome {
            Ok(resp) if resp.status == 408 && what.contains("headers") => {}
            Ok(resp) if resp.status == 408 => {
                assert_eq!(resp.error_body().error, codes::BODY_TIMEOUT, "{what}")
            }
            Err(RawError::Closed) => {}
            other => {
                panic!("{what} trickled at 1 byte/s was not cut off: {other:?} after {after:?}")
            }
        }
        assert!(
            (Duration::from_millis(1500)..Duration::from_millis(4500)).contains(&after),
            "{what}: cut off after {after:?}, expected ~2 s"
        );
    }
    let metrics = node.client().metrics().await;
    let timeouts = metric_sum(
        &metrics,
        "kv_requests_rejected_total",
        &[("reason", "body_timeout")],
    );
    assert_eq!(timeouts, Some(3.0), "body timeouts counted: {timeouts:?}");
    let c = node.client();
    assert_eq!(c.get(b"slow").await.status, 404, "nothing stored");
    c.put_ok(b"after", b"fine", None).await;
}

/// Awaits every future of an array, concurrently.
async fn futures_join_all<F: std::future::Future>(futures: [F; 3]) -> Vec<F::Output> {
    let [a, b, c] = futures;
    let (a, b, c) = tokio::join!(a, b, c);
    vec![a, b, c]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_peer_body_is_refused_early() {
    // With the default caps (64 siblings of 1 MiB) the largest peer message is about 68 MiB: a
    // 100 MiB announcement is refused from its Content-Length alone.
    let node = NodeProcess::start(&[]);
    let mut conn = RawConn::connect(node.peer_addr()).await;
    let started = Instant::now();
    conn.send(
        b"POST /internal/v1/rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 104857600\r\n\r\n",
    )
    .await
    .unwrap();
    let resp = conn.read_response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(resp.error_body().error, codes::VALUE_TOO_LARGE);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(node);

    // With caps of 16 siblings of 64 KiB the limit is about 5.2 MiB: 100 MiB streamed chunked is
    // refused once the limit is passed, and the node's memory does not grow by the body.
    let node = NodeProcess::start(&["--max-value-bytes", "64KiB", "--max-siblings", "16"]);
    let rss_before = node.rss_kib();
    let mut conn = RawConn::connect(node.peer_addr()).await;
    conn.send(
        b"POST /internal/v1/rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let mut frame = b"10000\r\n".to_vec(); // 64 KiB chunks, 1,600 of them: 100 MiB
    frame.extend(std::iter::repeat_n(b'p', 0x10000));
    frame.extend_from_slice(b"\r\n");
    let sent = Arc::new(AtomicU64::new(0));
    let mut writer = conn.take_writer();
    let writer_sent = sent.clone();
    let writer_task = tokio::spawn(async move {
        for _ in 0..1600 {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
            writer_sent.fetch_add(0x10000, Ordering::Relaxed);
        }
    });
    let outcome = conn.read_response(Duration::from_secs(20)).await;
    let sent_at_answer = sent.load(Ordering::Relaxed);
    writer_task.abort();
    match outcome {
        Ok(resp) => {
            assert_eq!(resp.status, 413, "{resp:?}");
            assert_eq!(resp.error_body().error, codes::VALUE_TOO_LARGE);
        }
        Err(RawError::Closed) => {}
        Err(e) => panic!("100 MiB peer body: no refusal after {sent_at_answer} bytes ({e:?})"),
    }
    let rss_after = node.rss_kib();
    println!(
        "peer body refused after {} KiB streamed; node VmRSS {rss_before} -> {rss_after} KiB",
        sent_at_answer / 1024
    );
    assert!(
        sent_at_answer < 24 * MIB as u64,
        "refused only after {sent_at_answer} bytes"
    );
    assert!(
        rss_after < rss_before + 32 * 1024,
        "VmRSS grew from {rss_before} to {rss_after} KiB"
    );
    let live = node
        .client()
        .request("GET", "/health/live", &[], None)
        .await;
    assert_eq!(live.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_at_the_write_timeout() {
    let node = NodeProcess::start(&["--write-timeout", "1s"]);
    let value = vec![b'v'; MIB];
    node.client().put_ok(b"big", &value, None).await;

    // 64 pipelined GETs of 1 MiB each, on a socket with a small receive buffer that is never read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = socket.connect(node.addr()).await.unwrap();
    let requests = "GET /v1/kv/big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(64);
    stream.write_all(requests.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Now read: a node that cut the connection off sent only part of the 64 MiB, then EOF.
    let mut received = 0usize;
    let mut chunk = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + Duration::from_secs(15);
    let ended = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received += n,
        }
    };
    println!(
        "non-reading client: {} KiB delivered before the node closed: {ended}",
        received / 1024
    );
    assert!(
        ended && received < 64 * MIB,
        "a client that did not read for 4 s (--write-timeout 1s) was not cut off: {received} bytes \
         delivered, connection ended: {ended}"
    );
    node.client().get_one(b"big").await;
}

/// This process's soft and hard open-file limits.
fn open_file_limits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default();
    let mut numbers = line
        .split_whitespace()
        .skip(3)
        .map(|n| n.parse().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

/// Raises this process's soft open-file limit (the node inherits it) to `wanted` when the hard
/// limit allows; true when the soft limit is then at least `wanted`.
fn raise_open_file_limit(wanted: u64) -> bool {
    let (soft, hard) = open_file_limits();
    if soft < wanted && hard >= wanted {
        let _ = std::process::Command::new("prlimit")
            .args(["--pid", &std::process::id().to_string()])
            .arg(format!("--nofile={wanted}:{hard}"))
            .status();
    }
    open_file_limits().0 >= wanted
}

/// Latencies of `count` requests, each on a new connection: connect, GET, read the answer.
async fn fresh_connection_latencies(node: &NodeProcess, count: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let mut conn = RawConn::connect(node.addr()).await;
        conn.send(b"GET /v1/kv/probe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let resp = conn
            .read_response(Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("a new client was not served within 3 s: {e:?}"));
        assert_eq!(resp.status, 200, "{resp:?}");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_held_connections_do_not_slow_other_clients() {
    const HELD: usize = 10_000;
    // The test holds 10,000 sockets and so does the node, which inherits the limit.
    if !raise_open_file_limit(HELD as u64 + 2048) {
        skip_or_fail(
            "ten_thousand_held_connections_do_not_slow_other_clients",
            &format!(
                "RLIMIT_NOFILE (soft, hard) is {:?}; 12048 are needed",
                open_file_limits()
            ),
        );
        return;
    }
    let node = NodeProcess::start(&[]);
    node.client().put_ok(b"probe", b"here", None).await;
    let base = fresh_connection_latencies(&node, 200).await;

    // Hold 10,000 connections: half sent nothing, half one request and then stayed open.
    let mut held = Vec::with_capacity(HELD);
    let opened = Instant::now();
    for i in 0..HELD {
        let mut stream = tokio::net::TcpStream::connect(node.addr())
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        if i % 2 == 1 {
            stream
                .write_all(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .unwrap();
        }
        held.push(stream);
    }
    println!("{HELD} connections opened in {:?}", opened.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = fresh_connection_latencies(&node, 200).await;
    let rss = node.rss_kib();
    let (p50_base, p99_base) = (percentile(&base, 50), percentile(&base, 99));
    let (p50_held, p99_held) = (percentile(&loaded, 50), percentile(&loaded, 99));
    println!(
        "new-connection GET latency: p50 {p50_base:?} p99 {p99_base:?} alone; p50 {p50_held:?} \
         p99 {p99_held:?} with {HELD} connections held; node VmRSS {rss} KiB"
    );
    assert!(
        p50_held < p50_base * 5 + Duration::from_millis(5),
        "p50 {p50_held:?} with {HELD} held connections against {p50_base:?} without"
    );
    assert!(
        p99_held < Duration::from_millis(500),
        "p99 {p99_held:?} with {HELD} held connections"
    );
    drop(held);
}
