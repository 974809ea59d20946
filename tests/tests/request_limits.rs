//! Limits that protect a node from its clients: value size (enforced while streaming), request
//! deadline covering the body, disconnects mid-body, slow headers, idle connections, header size and
//! the connection cap. Raw sockets where the test must control every byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvcluster_tests::kvapi::codes;
use kvcluster_tests::{NodeProcess, RawConn, RawError};
use tokio::io::AsyncWriteExt as _;

/// The node's memory must stay below this while refusing huge bodies.
const RSS_LIMIT_KIB: u64 = 200 * 1024;

const MIB: usize = 1024 * 1024;

async fn assert_serving(node: &NodeProcess) {
    let c = node.client();
    let live = c.request("GET", "/health/live", &[], None).await;
    assert_eq!(live.status, 200, "node stopped serving: {live}");
    c.put_ok(b"still-serving", b"yes", None).await;
    let (v, _) = c.get_one(b"still-serving").await;
    assert_eq!(v, b"yes");
}

#[tokio::test]
async fn value_of_max_value_bytes_is_accepted_and_one_more_is_413() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    let exact: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    c.put_ok(b"exact", &exact, None).await;
    let (v, _) = c.get_one(b"exact").await;
    assert!(v == exact, "1 MiB value read back differently");

    let over = vec![7u8; MIB + 1];
    let resp = c.put(b"over", &over, None).await;
    resp.assert_error(413, codes::VALUE_TOO_LARGE);
    // A fresh client: connection reuse after a refusal is tested on its own below.
    let fresh = node.client();
    assert_eq!(fresh.get(b"over").await.status, 404, "nothing stored");
}

#[tokio::test]
async fn max_value_bytes_flag_sets_the_limit() {
    let node = NodeProcess::start(&["--max-value-bytes", "64KiB"]);
    let c = node.client();
    c.put_ok(b"fits", &vec![1u8; 64 * 1024], None).await;
    let resp = c.put(b"too-big", &vec![1u8; 64 * 1024 + 1], None).await;
    resp.assert_error(413, codes::VALUE_TOO_LARGE);
    let fresh = node.client();
    assert_eq!(fresh.get(b"too-big").await.status, 404);
}

#[tokio::test]
async fn connection_after_a_413_is_closed_or_still_usable() {
    // A keep-alive client that got a 413 for a body the node did not read must not have its next
    // request on that connection fail: the node either says `Connection: close` (and closes) or
    // discards the rest of the body and serves the next request.
    let node = NodeProcess::start(&["--max-value-bytes", "64KiB"]);
    let mut conn = RawConn::connect(node.addr()).await;
    let len = 64 * 1024 + 1;
    let mut request =
        format!("PUT /v1/kv/too-big HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len}\r\n\r\n")
            .into_bytes();
    request.extend(std::iter::repeat_n(b'b', len));
    // The node may stop reading early.
    let _ = conn.send(&request).await;
    let resp = conn
        .read_response(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("no 413 for a {len}-byte body: {e:?}"));
    assert_eq!(resp.status, 413, "{resp:?}");
    let closing = resp
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if closing {
        conn.wait_closed(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("`Connection: close` but still open: {e:?}"));
        return;
    }
    let sent = conn
        .send(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let next = conn.read_response(Duration::from_secs(5)).await;
    assert!(
        sent.is_ok() && next.as_ref().is_ok_and(|r| r.status == 200),
        "413 answer without `Connection: close` (headers {:?}), yet the next request on the same \
         keep-alive connection failed: send {sent:?}, answer {next:?}",
        resp.headers
    );
}

/// Sends `head`, then `frame` up to 1,024 times (counting `payload` body bytes per frame) while waiting
/// up to `wait` for the answer. Returns the answer and the body bytes sent when it came.
async fn stream_until_answered(
    node: &NodeProcess,
    head: &[u8],
    frame: Vec<u8>,
    payload: u64,
    wait: Duration,
) -> (Result<kvcluster_tests::RawResponse, RawError>, u64) {
    let mut conn = RawConn::connect(node.addr()).await;
    conn.send(head).await.unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let mut writer = conn.take_writer();
    let writer_sent = Arc::clone(&sent);
    let writer_task = tokio::spawn(async move {
        for _ in 0..1024 {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
            writer_sent.fetch_add(payload, Ordering::Relaxed);
        }
    });
    let resp = conn.read_response(wait).await;
    let sent_at_answer = sent.load(Ordering::Relaxed);
    writer_task.abort();
    (resp, sent_at_answer)
}

#[tokio::test]
async fn ten_gib_body_is_refused_without_buffering() {
    let node = NodeProcess::start(&[]);
    let mut conn = RawConn::connect(node.addr()).await;
    let started = Instant::now();
    conn.send(
        b"PUT /v1/kv/huge HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10737418240\r\n\
          Content-Type: application/octet-stream\r\n\r\n",
    )
    .await
    .unwrap();
    // Send no body at all: the announcement alone must be refused.
    let resp = conn
        .read_response(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| {
            panic!("a 10 GiB Content-Length must be refused at once with 413, got {e:?}")
        });
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(resp.error_body().error, codes::VALUE_TOO_LARGE);
    assert!(elapsed < Duration::from_secs(2), "refusal took {elapsed:?}");

    // The same while the client keeps streaming (at most 256 MiB): refused, memory stays flat.
    let (resp, sent) = stream_until_answered(
        &node,
        b"PUT /v1/kv/huge2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10737418240\r\n\r\n",
        vec![b'x'; 256 * 1024],
        256 * 1024,
        Duration::from_secs(10),
    )
    .await;
    let sent_mib = sent / MIB as u64;
    match resp {
        Ok(resp) => {
            assert_eq!(resp.status, 413, "{resp:?}");
            assert_eq!(resp.error_body().error, codes::VALUE_TOO_LARGE);
        }
        Err(RawError::Closed) => {} // refused by closing; the node must still serve below.
        Err(e) => panic!("streaming 10 GiB: no refusal after {sent_mib} MiB sent ({e:?})"),
    }
    let rss = node.rss_kib();
    println!("10 GiB announcements refused; {sent_mib} MiB streamed; node VmRSS {rss} KiB");
    assert!(
        rss < RSS_LIMIT_KIB,
        "node VmRSS {rss} KiB after refusing 10 GiB bodies"
    );
    let c = node.client();
    assert_eq!(c.get(b"huge").await.status, 404);
    assert_eq!(c.get(b"huge2").await.status, 404);
    assert_serving(&node).await;
}

#[tokio::test]
async fn chunked_body_growing_past_the_limit_is_refused() {
    let node = NodeProcess::start(&["--max-value-bytes", "1MiB"]);
    let mut frame = b"10000\r\n".to_vec(); // 64 KiB chunks, at most 64 MiB of body
    frame.extend(std::iter::repeat_n(b'c', 0x10000));
    frame.extend_from_slice(b"\r\n");
    let (resp, sent_at_answer) = stream_until_answered(
        &node,
        b"PUT /v1/kv/chunky HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        frame,
        0x10000,
        Duration::from_secs(15),
    )
    .await;
    match resp {
        Ok(resp) => {
            assert_eq!(resp.status, 413, "{resp:?}");
            assert_eq!(resp.error_body().error, codes::VALUE_TOO_LARGE);
        }
        // A reset can overtake the 413 when the node closes with body bytes unread.
        Err(RawError::Closed) => println!("chunked body refused by closing the connection"),
        Err(e) => panic!("no refusal after {sent_at_answer} chunked bytes: {e:?}"),
    }
    println!(
        "chunked body refused after the client sent {} KiB",
        sent_at_answer / 1024
    );
    assert!(
        sent_at_answer < 24 * MIB as u64,
        "the refusal must come after ~1 MiB, not after {sent_at_answer} bytes"
    );
    let rss = node.rss_kib();
    assert!(rss < RSS_LIMIT_KIB, "node VmRSS {rss} KiB");
    assert_eq!(node.client().get(b"chunky").await.status, 404);
    assert_serving(&node).await;
}

#[tokio::test]
async fn deadline_covers_reading_the_body() {
    let node = NodeProcess::start(&[]);
    let mut conn = RawConn::connect(node.addr()).await;
    let started = Instant::now();
    conn.send(
        b"PUT /v1/kv/slow-body?timeout_ms=300 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    match conn.read_response(Duration::from_secs(2)).await {
        Ok(resp) => {
            assert_eq!(
                resp.status, 504,
                "deadline passed while reading the body: {resp:?}"
            );
            assert_eq!(resp.error_body().error, codes::DEADLINE_EXCEEDED);
            let elapsed = started.elapsed();
            assert!(
                elapsed < Duration::from_millis(1500),
                "504 after {elapsed:?}"
            );
        }
        Err(RawError::Closed) => {} // closing the connection is allowed too
        Err(RawError::Timeout) => {
            // Finish the body to show what the node would have done.
            let _ = conn.send(&[b'z'; 90]).await;
            let late = conn.read_response(Duration::from_secs(3)).await;
            panic!(
                "PUT ?timeout_ms=300 with 10 of 100 body bytes: no answer and connection open after 2 s; \
                 after the rest of the body the node answered {late:?}"
            );
        }
        Err(e) => panic!("{e:?}"),
    }
    // Complete the body now: it must not be stored either.
    let _ = conn.send(&[b'z'; 90]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = node.client().get(b"slow-body").await;
    assert_eq!(
        got.status, 404,
        "nothing is stored for a timed-out write: {got}"
    );
    assert_serving(&node).await;
}

#[tokio::test]
async fn client_disconnecting_mid_body_stores_nothing() {
    let node = NodeProcess::start(&[]);
    for i in 0..20 {
        let mut conn = RawConn::connect(node.addr()).await;
        let request = format!(
            "PUT /v1/kv/partial-{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n0123456789"
        );
        conn.send(request.as_bytes()).await.unwrap();
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(conn);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = node.client();
    for i in 0..20 {
        let got = c.get(format!("partial-{i}").as_bytes()).await;
        assert_eq!(got.status, 404, "partial-{i}: {got}");
    }
    assert_serving(&node).await;
}

#[tokio::test]
async fn slow_headers_are_cut_off_while_others_are_served() {
    let node = NodeProcess::start(&["--header-read-timeout", "1s"]);
    let request = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";

    let others = {
        let c = node.client();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            for _ in 0..10 {
                let t = Instant::now();
                let resp = c.request("GET", "/health/live", &[], None).await;
                assert_eq!(resp.status, 200, "{resp}");
                latencies.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            latencies
        })
    };

    let mut slow = RawConn::connect(node.addr()).await;
    let started = Instant::now();
    let mut closed_after = None;
    for byte in request.iter() {
        if slow.send(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        // The 300 ms pause between bytes doubles as the watch for the server closing.
        if slow.wait_closed(Duration::from_millis(300)).await.is_ok() {
            closed_after = Some(started.elapsed());
            break;
        }
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let closed_after = closed_after.unwrap_or_else(|| {
        panic!(
            "a client sending headers one byte per 300 ms was not cut off within {:?} \
             (--header-read-timeout 1s)",
            started.elapsed()
        )
    });
    println!("slow-header connection closed after {closed_after:?}");
    assert!(
        closed_after >= Duration::from_millis(700) && closed_after <= Duration::from_millis(3500),
        "expected the cut-off ~1-3 s after the first byte, got {closed_after:?}"
    );
    let latencies = tokio::time::timeout(Duration::from_secs(20), others)
        .await
        .expect("other clients finished")
        .expect("other clients' task");
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(1),
        "other clients were held up: slowest {slowest:?}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let node = NodeProcess::start(&["--idle-timeout", "1s"]);
    let mut conn = RawConn::connect(node.addr()).await;
    conn.send(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let resp = conn.read_response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(resp.status, 200);
    let idle_since = Instant::now();
    conn.wait_closed(Duration::from_secs(6))
        .await
        .unwrap_or_else(|e| {
            panic!("idle connection still open after 6 s ({e:?}); --idle-timeout 1s")
        });
    let idle = idle_since.elapsed();
    println!("idle connection closed after {idle:?}");
    assert!(
        idle <= Duration::from_millis(3500),
        "closed after {idle:?}, expected ~1-3 s"
    );
}

#[tokio::test]
async fn keep_alive_connection_outlives_a_short_pause_by_default() {
    // Counterpart of the idle test: with the default idle timeout (60 s) the same connection is
    // still usable after 2 s.
    let node = NodeProcess::start(&[]);
    let mut conn = RawConn::connect(node.addr()).await;
    for round in 0..2 {
        conn.send(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let resp = conn
            .read_response(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert_eq!(resp.status, 200);
        if round == 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

#[tokio::test]
async fn oversized_headers_are_refused_and_the_node_keeps_serving() {
    let node = NodeProcess::start(&[]);
    // 8 KiB of headers is within the 16 KiB default.
    let mut ok = RawConn::connect(node.addr()).await;
    let request = format!(
        "GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(8 * 1024)
    );
    ok.send(request.as_bytes()).await.unwrap();
    let resp = ok.read_response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(resp.status, 200);

    let mut big = RawConn::connect(node.addr()).await;
    let request = format!(
        "GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(64 * 1024)
    );
    // The node may close before reading everything.
    let _ = big.send(request.as_bytes()).await;
    match big.read_response(Duration::from_secs(5)).await {
        Ok(resp) => assert!(
            resp.status == 431 || resp.status == 400,
            "64 KiB of headers must be refused, got {resp:?}"
        ),
        Err(RawError::Closed) => {}
        Err(e) => panic!("64 KiB of headers: no refusal ({e:?})"),
    }
    assert_serving(&node).await;
}

#[tokio::test]
async fn connection_cap_holds_the_third_connection_until_a_slot_frees() {
    let node = NodeProcess::start(&["--max-connections", "2"]);
    let get = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut first = RawConn::connect(node.addr()).await;
    let mut second = RawConn::connect(node.addr()).await;
    for conn in [&mut first, &mut second] {
        conn.send(get).await.unwrap();
        let resp = conn.read_response(Duration::from_secs(5)).await.unwrap();
        assert_eq!(resp.status, 200);
    }

    let mut third = RawConn::connect(node.addr()).await;
    third.send(get).await.unwrap();
    match third.read_response(Duration::from_secs(1)).await {
        Err(RawError::Timeout) => {}
        other => panic!(
            "with --max-connections 2 and two open connections, a third must get no answer; got {other:?}"
        ),
    }

    drop(first);
    let resp = third
        .read_response(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| {
            panic!("the third connection was not served after a slot freed: {e:?}")
        });
    assert_eq!(resp.status, 200);

    // The second connection still works.
    second.send(get).await.unwrap();
    let resp = second.read_response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(resp.status, 200);
}
