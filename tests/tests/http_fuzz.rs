//! Generated garbage on the HTTP request path of a real node: random methods, paths, headers and
//! bodies, sent over raw TCP. Every request must get a well-formed HTTP answer (or a closed
//! connection) within the header-read timeout plus a margin, never a 5xx other than 503, and the node
//! must stay alive and healthy. `FUZZ_HTTP_CASES` sets the number of requests (default 300; the
//! fuzz command `scripts/fuzz.sh` runs far more).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kvcluster_tests::NodeProcess;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Longest wait for an answer: the node's header-read timeout (1 s here) plus a margin.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_string()),
        Just("PUT".to_string()),
        Just("DELETE".to_string()),
        Just("POST".to_string()),
        Just("HEAD".to_string()),
        "[A-Z]{1,12}",
        "[ -~]{0,16}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("v1".to_string()),
        Just("kv".to_string()),
        Just("admin".to_string()),
        Just("internal".to_string()),
        Just("..".to_string()),
        Just("%".to_string()),
        Just("%zz".to_string()),
        Just("%00".to_string()),
        "[ -~]{0,24}",
        "(%[0-9A-F]{2}){0,40}",
    ];
    let query = prop_oneof![
        Just(String::new()),
        Just("?r=0".to_string()),
        Just("?w=99999999999999999999".to_string()),
        Just("?timeout_ms=-1".to_string()),
        "\\?[ -~]{0,40}",
    ];
    (prop::collection::vec(segment, 0..6), query)
        .prop_map(|(segments, query)| format!("/{}{query}", segments.join("/")))
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        Just("content-length".to_string()),
        Just("transfer-encoding".to_string()),
        Just("x-kv-context".to_string()),
        Just("accept".to_string()),
        Just("authorization".to_string()),
        Just("connection".to_string()),
        "[a-zA-Z-]{1,20}",
        "[ -~]{0,20}",
    ];
    let value = prop_oneof![
        Just("chunked".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        Just("application/json".to_string()),
        "[0-9]{0,12}",
        "[ -~]{0,60}",
        "[A-Za-z0-9_-]{0,200}",
    ];
    prop::collection::vec((name, value), 0..8)
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        method(),
        path(),
        prop_oneof![
            Just("HTTP/1.1"),
            Just("HTTP/1.0"),
            Just("HTTP/9.9"),
            Just("")
        ],
        headers(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(method, path, version, headers, body)| {
            let mut out = format!("{method} {path} {version}\r\nhost: fuzz\r\n").into_bytes();
            for (name, value) in headers {
                out.extend(format!("{name}: {value}\r\n").into_bytes());
            }
            out.extend(b"\r\n");
            out.extend(body);
            out
        })
}

/// Sends `bytes` on a fresh connection, half-closes it, and returns what the node answered.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The node may answer and close before reading everything: a failed write is not a failure.
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    match tokio::time::timeout(ANSWER_TIMEOUT, stream.read_to_end(&mut answer)).await {
        Ok(_) => Ok(answer),
        Err(_) => Err(format!(
            "no end of answer within {ANSWER_TIMEOUT:?}; got {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        )),
    }
}

#[test]
fn random_requests_get_well_formed_answers_and_never_crash_the_node() {
    let mut node = NodeProcess::start(&["--header-read-timeout", "1s", "--idle-timeout", "2s"]);
    let addr = node.addr();
    let cases: u32 = std::env::var("FUZZ_HTTP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    let outcome = runner.run(&request(), |bytes| {
        let answer = runtime.block_on(exchange(addr, &bytes));
        let answer = answer.map_err(TestCaseError::fail)?;
        if answer.is_empty() {
            // Closing without an answer is allowed only for bytes that are not a request at all.
            *statuses.borrow_mut().entry("closed".into()).or_default() += 1;
            return Ok(());
        }
        let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| head.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .ok_or_else(|| TestCaseError::fail(format!("not an HTTP answer: {head:?}")))?
            .to_string();
        prop_assert!(
            !status.starts_with('5') || status == "503",
            "server error {status} for {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        );
        *statuses.borrow_mut().entry(status).or_default() += 1;
        Ok(())
    });
    eprintln!(
        "{cases} generated requests; answers by status: {:?}",
        statuses.borrow()
    );
    if let Err(e) = outcome {
        panic!("{e}\n--- node log ---\n{}", node.log_tail(30));
    }
    assert!(node.is_running(), "the node died:\n{}", node.log_tail(30));
    // A plain client: the fuzzer half-closes its connections, which hyper may answer by closing.
    let live = runtime.block_on(node.client().request("GET", "/health/live", &[], None));
    assert_eq!(
        live.status, 200,
        "the node is not healthy after the fuzzing: {live}"
    );
}
