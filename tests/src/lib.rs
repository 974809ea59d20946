//! Harness for the kvcluster system tests: start real `kvnode` processes and talk to them over HTTP.
//!
//! - [`NodeProcess`] spawns the `kvnode` binary (found by [`kvnode_bin`]) on a fresh temporary data
//!   directory, waits for its `kvnode listening on http(s)://…` line (after `kvnode peer port on …`), and can SIGKILL, SIGTERM and restart
//!   it on the same data directory. Its stderr goes to `node.log` in the temporary directory; the tail
//!   of that log is printed when a test panics while the node is alive in scope.
//! - [`KvClient`] is a thin reqwest wrapper speaking the `/v1/kv/` API and returning [`Resp`].
//! - [`Cluster`] starts several `kvnode` processes sharing one [`kvapi::ClusterConfig`] file, on ports
//!   chosen before they start, and can stop, kill and restart each of them on the same address.
//! - [`RawConn`] is a hand-written HTTP/1.1 connection over a `TcpStream` for the tests that need
//!   control over every byte (slow headers, partial bodies, huge announcements, connection caps).
//!
//! - [`kube`] runs a real etcd + kube-apiserver on loopback for the operator's integration tests.
//! - [`helm`] renders the Helm chart with the real `helm` and checks the metric names it uses.
//! - [`tls`] makes a cluster CA and node certificates with the `openssl` command, and TLS clients.
//!
//! Every wait here is bounded in time; every address is on loopback: 127.0.0.1, or 127.0.0.11 and up
//! for the chaos tests, inside a network namespace of their own (see [`chaos`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod chaos;
pub mod helm;
pub mod kube;
pub mod kubelet;
pub mod load;
pub mod operator_process;
pub mod ports;
pub mod s3;
pub mod tls;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use percent_encoding::{NON_ALPHANUMERIC, percent_encode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub use kvapi;
use kvapi::{
    ADMIN_CLUSTER, ADMIN_DIGESTS, ADMIN_RING, ADMIN_STATUS, CONTEXT_HEADER, ClusterConfig,
    ErrorBody, Member, NodeStatus, PartitionDigests, ReadResponse, RingView,
};
pub use ports::{free_block, free_ports};

/// The prefix of the line `kvnode` prints on stdout once it serves (`https://` with client TLS).
pub const LISTENING_PREFIX: &str = "kvnode listening on http";

/// The prefix of the line `kvnode` prints with its peer port, before [`LISTENING_PREFIX`].
pub const PEER_PORT_PREFIX: &str = "kvnode peer port on ";

/// How long a node may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a node may take to exit after SIGTERM/SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether this run is in CI (`CI=true` or `CI=1`), where a missing tool fails a test instead of
/// skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// For a test that cannot run here (a tool or root missing, as `message` says): panics in CI, else
/// prints a loud SKIPPED banner naming `test`, and the caller returns.
pub fn skip_or_fail(test: &str, message: &str) {
    if in_ci() {
        panic!("{test}: {message} (CI=true: a missing prerequisite is a failure, not a skip)");
    }
    eprintln!(
        "\n############################################################\n\
         SKIPPED {test}: {message}\n\
         ############################################################\n"
    );
}

/// Path of the `kvnode` binary under test.
///
/// `KVNODE_BIN` when set; otherwise `kvnode` next to the test executable's parent directory
/// (`target/debug/deps/<test>` → `target/debug/kvnode`). Panics with instructions when missing.
pub fn kvnode_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KVNODE_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "KVNODE_BIN={} does not name a file; build it with `cargo build --workspace --bins`",
            bin.display()
        );
        return bin;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        // target/debug/deps/<test> → target/debug/kvnode
        if let Some(profile_dir) = dir.parent() {
            candidates.push(profile_dir.join("kvnode"));
        }
        candidates.push(dir.join("kvnode"));
    }
    for candidate in &candidates {
        if candidate.is_file() {
            return candidate.clone();
        }
    }
    panic!(
        "the kvnode binary was not found (looked at {candidates:?}). The system tests run the real binary: \
         run `cargo build --workspace --bins` first (scripts/test.sh does that), or set KVNODE_BIN."
    );
}

/// How to start a node: extra flags, environment, and whether the harness adds `--listen`.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    add_listen: bool,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeBuilder {
    /// A node with `--data-dir <tmp>/data --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0` and nothing
    /// else.
    pub fn new() -> Self {
        Self {
            args: Vec::new(),
            envs: Vec::new(),
            add_listen: true,
        }
    }

    /// Adds command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the node process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Do not add `--listen 127.0.0.1:0 --peer-listen 127.0.0.1:0` (the node then uses its default
    /// addresses or the caller's flags).
    pub fn without_listen(mut self) -> Self {
        self.add_listen = false;
        self
    }

    /// Starts the node and waits for its listening line.
    pub fn start(self) -> NodeProcess {
        NodeProcess::spawn_new(self)
    }
}

/// The `kvctl` binary next to [`kvnode_bin`].
pub fn kvctl_bin() -> PathBuf {
    let bin = kvnode_bin().with_file_name("kvctl");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build --workspace --all-targets` first",
        bin.display()
    );
    bin
}

/// Runs `kvctl --endpoint ENDPOINT ARGS...` to completion and returns its output.
pub fn kvctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new(kvctl_bin())
        .arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("run kvctl")
}

/// A running (or stopped) `kvnode` process with its own temporary directory.
#[derive(Debug)]
pub struct NodeProcess {
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    log_path: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    addr: SocketAddr,
    peer_addr: SocketAddr,
    https: bool,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    starts: u32,
    paused: bool,
}

impl NodeProcess {
    /// Starts a node with `--data-dir <tmp>/data --listen 127.0.0.1:0` plus `args`.
    pub fn start(args: &[&str]) -> Self {
        NodeBuilder::new().args(args.iter().copied()).start()
    }

    fn spawn_new(builder: NodeBuilder) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvnode-test-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("node.log");
        let mut args = vec![
            "--data-dir".to_owned(),
            data_dir.to_string_lossy().into_owned(),
        ];
        if builder.add_listen {
            args.extend(
                ["--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"].map(String::from),
            );
        }
        args.extend(builder.args);
        let mut node = Self {
            dir,
            data_dir,
            log_path,
            args,
            envs: builder.envs,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            https: false,
            stdout_lines: Arc::new(Mutex::new(Vec::new())),
            starts: 0,
            paused: false,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node is already running");
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        writeln!(
            log,
            "===== harness: start #{} of kvnode {:?}",
            self.starts, self.args
        )
        .expect("write node log");
        let mut cmd = Command::new(kvnode_bin());
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // The node must see exactly the environment the test chose for it.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KVNODE_") {
                cmd.env_remove(key);
            }
        }
        for (key, value) in &self.envs {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().expect("spawn kvnode");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::clone(&self.stdout_lines);
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line.clone());
                if line.starts_with(LISTENING_PREFIX)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line);
                }
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => {
                let url = line["kvnode listening on ".len()..].trim();
                self.https = url.starts_with("https://");
                let addr = url.split_once("://").map_or(url, |(_, a)| a);
                self.addr = addr
                    .parse()
                    .unwrap_or_else(|e| panic!("cannot parse address in {line:?}: {e}"));
                let peer = self
                    .stdout_lines()
                    .iter()
                    .rev()
                    .find_map(|l| l.strip_prefix(PEER_PORT_PREFIX).map(str::to_owned))
                    .unwrap_or_else(|| panic!("no `{PEER_PORT_PREFIX}…` line before {line:?}"));
                self.peer_addr = peer
                    .trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("cannot parse peer address {peer:?}: {e}"));
            }
            Err(err) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                let _ = self.kill9_inner();
                panic!(
                    "kvnode did not print `{LISTENING_PREFIX}…` within {START_TIMEOUT:?} ({err}); exit status: \
                     {status:?}; stdout so far: {:?}\n--- node log tail ---\n{}",
                    self.stdout_lines(),
                    self.log_tail(60)
                );
            }
        }
    }

    /// Address the node announced.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Peer port address the node announced (of its latest start).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// `http://127.0.0.1:PORT` (`https://` when the node serves client TLS).
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A client for this node (default timeout 30 s).
    pub fn client(&self) -> KvClient {
        KvClient::new(&self.base_url())
    }

    /// A plain HTTP client for this node's peer port (peer TLS off), for sending peer messages.
    pub fn peer_client(&self) -> KvClient {
        KvClient::new(&format!("http://{}", self.peer_addr))
    }

    /// The process id, while running.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is not running").id()
    }

    /// The node's `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The temporary directory that holds the data dir and the log.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every line the node printed on stdout, across restarts.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_lines.lock().unwrap().clone()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(child) => child.try_wait().expect("try_wait").is_none(),
        }
    }

    fn kill9_inner(&mut self) -> Option<ExitStatus> {
        self.paused = false;
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGKILL (kill -9) the node and reap it.
    pub fn kill9(&mut self) {
        assert!(self.child.is_some(), "node is not running");
        self.kill9_inner();
    }

    /// Sends `signal` (a name such as `STOP`) to the running process.
    fn signal(&self, signal: &str) {
        let pid = self.pid();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid} failed: {sent}");
    }

    /// SIGSTOP: the process keeps its sockets but runs nothing until [`NodeProcess::resume`].
    pub fn pause(&mut self) {
        assert!(!self.paused, "node is already paused");
        self.signal("STOP");
        self.paused = true;
    }

    /// SIGCONT after [`NodeProcess::pause`].
    pub fn resume(&mut self) {
        assert!(self.paused, "node is not paused");
        self.signal("CONT");
        self.paused = false;
    }

    /// Sends `signal` (a name such as `TERM` or `INT`) and waits, bounded, for the process to exit;
    /// a paused process is resumed first.
    pub fn stop_with(&mut self, signal: &str) -> ExitStatus {
        if self.paused {
            self.resume();
        }
        self.signal(signal);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                self.kill9_inner();
                panic!(
                    "kvnode did not exit within {STOP_TIMEOUT:?} after SIG{signal}\n--- node log tail ---\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait (bounded); returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// Starts the node again with the same arguments and data directory (the port may change).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            assert!(status.success(), "kvnode exited with {status} on SIGTERM");
        }
        self.spawn();
    }

    /// The last `lines` lines of the node's stderr log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Resident memory of the node process, in KiB (from `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        vm_rss_kib(self.pid())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- kvnode log tail ({}) ---\n{}\n--- end of kvnode log ---",
                self.log_path.display(),
                self.log_tail(40)
            );
        }
        self.kill9_inner();
    }
}

/// `VmRSS` of a process in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Percent-encodes every byte of a key except ASCII letters and digits (one path segment).
pub fn encode_key(key: &[u8]) -> String {
    percent_encode(key, NON_ALPHANUMERIC).to_string()
}

/// Standard padded base64, as in [`kvapi::SiblingView::value`].
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard padded base64 (panics on bad input: the node must send valid base64).
pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("sibling value {text:?} is not standard padded base64: {e}"))
}

/// A complete HTTP answer, read to the end.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Resp {
    /// The `X-Kv-Context` header, if any.
    pub fn context(&self) -> Option<String> {
        self.headers
            .get(CONTEXT_HEADER)
            .map(|v| v.to_str().expect("context header is ASCII").to_owned())
    }

    /// The `X-Kv-Context` header; panics when missing.
    pub fn expect_context(&self) -> String {
        self.context()
            .unwrap_or_else(|| panic!("no {CONTEXT_HEADER} header in {self}"))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as a kvapi error; panics (showing the body) when it is not one.
    pub fn error_body(&self) -> ErrorBody {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("expected a JSON error body, got {self} ({e})"))
    }

    /// Asserts the status and the JSON error code.
    pub fn assert_error(&self, status: u16, code: &str) -> ErrorBody {
        assert_eq!(self.status, status, "expected {status} {code}, got {self}");
        let body = self.error_body();
        assert_eq!(body.error, code, "expected error code {code}, got {self}");
        body
    }

    /// The body parsed as a JSON read answer.
    pub fn read_response(&self) -> ReadResponse {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("expected a JSON ReadResponse, got {self} ({e})"))
    }

    /// Decoded values of the live (non-tombstone) siblings of a JSON read answer, sorted.
    pub fn live_values(&self) -> Vec<Vec<u8>> {
        let mut values: Vec<Vec<u8>> = self
            .read_response()
            .siblings
            .iter()
            .filter(|s| !s.deleted)
            .map(|s| unb64(&s.value))
            .collect();
        values.sort();
        values
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.text();
        let shown: String = body.chars().take(400).collect();
        write!(
            f,
            "HTTP {} headers={:?} body({} bytes)={:?}",
            self.status,
            self.headers,
            self.body.len(),
            shown
        )
    }
}

/// A reqwest client builder. reqwest is built with rustls and no default crypto provider (kvclient
/// configures its own), so this installs ring's as the process default first.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A reqwest-based client for one node.
#[derive(Debug, Clone)]
pub struct KvClient {
    http: reqwest::Client,
    base: String,
}

impl KvClient {
    /// A client for `base` (`http://host:port`), with a 30 s request timeout.
    pub fn new(base: &str) -> Self {
        Self::with_timeout(base, Duration::from_secs(30))
    }

    /// A client with its own request timeout.
    pub fn with_timeout(base: &str, timeout: Duration) -> Self {
        let http = http_client_builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .expect("build reqwest client");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `/v1/kv/<encoded key>`.
    pub fn kv_path(key: &[u8]) -> String {
        format!("{}{}", kvapi::KV_PREFIX, encode_key(key))
    }

    /// Sends any request; `path` includes the query string. Transport errors are returned.
    pub async fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> reqwest::Result<Resp> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?.to_vec();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    /// Sends any request; panics on a transport error.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        self.try_request(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e:?}"))
    }

    /// `GET /v1/kv/{key}`.
    pub async fn get(&self, key: &[u8]) -> Resp {
        self.request("GET", &Self::kv_path(key), &[], None).await
    }

    /// `GET /v1/kv/{key}` with `Accept: application/json`.
    pub async fn get_json(&self, key: &[u8]) -> Resp {
        self.request(
            "GET",
            &Self::kv_path(key),
            &[("accept", "application/json")],
            None,
        )
        .await
    }

    /// `GET /v1/kv/{key}{query}` with `Accept: application/json`.
    pub async fn get_json_with_query(&self, key: &[u8], query: &str) -> Resp {
        self.request(
            "GET",
            &Self::kv_path_with_query(key, query),
            &[("accept", "application/json")],
            None,
        )
        .await
    }

    /// `PUT /v1/kv/{key}` with an optional context.
    pub async fn put(&self, key: &[u8], value: &[u8], context: Option<&str>) -> Resp {
        self.try_put(key, value, context)
            .await
            .unwrap_or_else(|e| panic!("PUT {:?} failed: {e:?}", Self::kv_path(key)))
    }

    /// `PUT /v1/kv/{key}`, returning transport errors.
    pub async fn try_put(
        &self,
        key: &[u8],
        value: &[u8],
        context: Option<&str>,
    ) -> reqwest::Result<Resp> {
        let headers: Vec<(&str, &str)> = context.map(|c| (CONTEXT_HEADER, c)).into_iter().collect();
        self.try_request("PUT", &Self::kv_path(key), &headers, Some(value.to_vec()))
            .await
    }

    /// `PUT` that must answer 204; returns the new context.
    pub async fn put_ok(&self, key: &[u8], value: &[u8], context: Option<&str>) -> String {
        let resp = self.put(key, value, context).await;
        assert_eq!(
            resp.status,
            204,
            "PUT {} expected 204, got {resp}",
            Self::kv_path(key)
        );
        resp.expect_context()
    }

    /// `DELETE /v1/kv/{key}` with an optional context.
    pub async fn delete(&self, key: &[u8], context: Option<&str>) -> Resp {
        let headers: Vec<(&str, &str)> = context.map(|c| (CONTEXT_HEADER, c)).into_iter().collect();
        self.request("DELETE", &Self::kv_path(key), &headers, None)
            .await
    }

    /// `GET` that must answer 200 with one value; returns (value, context).
    pub async fn get_one(&self, key: &[u8]) -> (Vec<u8>, String) {
        let resp = self.get(key).await;
        assert_eq!(
            resp.status,
            200,
            "GET {} expected 200, got {resp}",
            Self::kv_path(key)
        );
        let ctx = resp.expect_context();
        (resp.body, ctx)
    }

    /// `GET /metrics` as text (must answer 200).
    pub async fn metrics(&self) -> String {
        let resp = self.request("GET", kvapi::METRICS, &[], None).await;
        assert_eq!(resp.status, 200, "GET /metrics: {resp}");
        resp.text()
    }

    /// `/v1/kv/<encoded key>` followed by `query` (such as `?w=2`; empty for none).
    pub fn kv_path_with_query(key: &[u8], query: &str) -> String {
        format!("{}{query}", Self::kv_path(key))
    }

    /// `GET /v1/kv/{key}{query}`, returning transport errors.
    pub async fn try_get_with_query(&self, key: &[u8], query: &str) -> reqwest::Result<Resp> {
        self.try_request("GET", &Self::kv_path_with_query(key, query), &[], None)
            .await
    }

    /// `GET /v1/kv/{key}{query}`; panics on a transport error.
    pub async fn get_with_query(&self, key: &[u8], query: &str) -> Resp {
        self.try_get_with_query(key, query)
            .await
            .unwrap_or_else(|e| {
                panic!("GET {} failed: {e:?}", Self::kv_path_with_query(key, query))
            })
    }

    /// `PUT /v1/kv/{key}{query}` without a context, returning transport errors.
    pub async fn try_put_with_query(
        &self,
        key: &[u8],
        value: &[u8],
        query: &str,
    ) -> reqwest::Result<Resp> {
        self.try_request(
            "PUT",
            &Self::kv_path_with_query(key, query),
            &[],
            Some(value.to_vec()),
        )
        .await
    }

    /// `PUT /v1/kv/{key}{query}` without a context; panics on a transport error.
    pub async fn put_with_query(&self, key: &[u8], value: &[u8], query: &str) -> Resp {
        self.try_put_with_query(key, value, query)
            .await
            .unwrap_or_else(|e| {
                panic!("PUT {} failed: {e:?}", Self::kv_path_with_query(key, query))
            })
    }

    /// `GET /admin/v1/cluster`, parsed (must answer 200).
    pub async fn admin_cluster(&self) -> ClusterConfig {
        let resp = self.request("GET", ADMIN_CLUSTER, &[], None).await;
        assert_eq!(
            resp.status, 200,
            "GET {ADMIN_CLUSTER} on {}: {resp}",
            self.base
        );
        serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
            panic!(
                "GET {ADMIN_CLUSTER} on {}: not a ClusterConfig ({e}): {resp}",
                self.base
            )
        })
    }

    /// `GET /admin/v1/cluster`, `None` on a transport error or a non-200 answer.
    pub async fn try_admin_cluster(&self) -> Option<ClusterConfig> {
        self.try_admin_get(ADMIN_CLUSTER).await
    }

    /// `PUT /admin/v1/cluster` with `config` as JSON.
    pub async fn put_admin_cluster(&self, config: &ClusterConfig) -> Resp {
        self.try_put_admin_cluster(config)
            .await
            .unwrap_or_else(|e| panic!("PUT {ADMIN_CLUSTER} on {} failed: {e:?}", self.base))
    }

    /// `PUT /admin/v1/cluster`, returning transport errors.
    pub async fn try_put_admin_cluster(&self, config: &ClusterConfig) -> reqwest::Result<Resp> {
        let body = serde_json::to_vec(config).expect("serialize ClusterConfig");
        self.try_request(
            "PUT",
            ADMIN_CLUSTER,
            &[("content-type", "application/json")],
            Some(body),
        )
        .await
    }

    /// `GET /admin/v1/ring`, parsed (must answer 200).
    pub async fn admin_ring(&self) -> RingView {
        let resp = self.request("GET", ADMIN_RING, &[], None).await;
        assert_eq!(
            resp.status, 200,
            "GET {ADMIN_RING} on {}: {resp}",
            self.base
        );
        serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
            panic!(
                "GET {ADMIN_RING} on {}: not a RingView ({e}): {resp}",
                self.base
            )
        })
    }

    /// `GET /admin/v1/status`, parsed (must answer 200).
    pub async fn admin_status(&self) -> NodeStatus {
        let resp = self.request("GET", ADMIN_STATUS, &[], None).await;
        assert_eq!(
            resp.status, 200,
            "GET {ADMIN_STATUS} on {}: {resp}",
            self.base
        );
        serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
            panic!(
                "GET {ADMIN_STATUS} on {}: not a NodeStatus ({e}): {resp}",
                self.base
            )
        })
    }

    /// `GET /admin/v1/status`, `None` on a transport error, a non-200 answer or an unparsable body.
    pub async fn try_admin_status(&self) -> Option<NodeStatus> {
        self.try_admin_get(ADMIN_STATUS).await
    }

    /// `GET /admin/v1/ring`, `None` on a transport error, a non-200 answer or an unparsable body.
    pub async fn try_admin_ring(&self) -> Option<RingView> {
        self.try_admin_get(ADMIN_RING).await
    }

    /// `GET /admin/v1/digests`, `None` on a transport error, a non-200 answer or an unparsable body.
    pub async fn try_admin_digests(&self) -> Option<PartitionDigests> {
        self.try_admin_get(ADMIN_DIGESTS).await
    }

    async fn try_admin_get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let resp = self.try_request("GET", path, &[], None).await.ok()?;
        if resp.status != 200 {
            return None;
        }
        serde_json::from_slice(&resp.body).ok()
    }
}

/// Sum of the samples of metric `name` whose labels include every pair of `labels`; `None` when no
/// sample matches. Histogram series are addressed by their full names (`…_count`, `…_bucket`).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (sample_name, sample_labels, rest) = match (line.find('{'), line.rfind('}')) {
            (Some(open), Some(close)) if open < close => (
                &line[..open],
                parse_labels(&line[open + 1..close]),
                &line[close + 1..],
            ),
            _ => {
                let (n, r) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
                (n, Vec::new(), r)
            }
        };
        if sample_name != name
            || !labels
                .iter()
                .all(|(k, v)| sample_labels.iter().any(|(lk, lv)| lk == k && lv == v))
        {
            continue;
        }
        let value: f64 = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unparsable metric sample {line:?}"));
        *sum.get_or_insert(0.0) += value;
    }
    sum
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                other => value.push(other),
            }
        }
        out.push((key.trim().to_owned(), value));
    }
}

/// Why a [`RawConn`] read ended without a response.
#[derive(Debug)]
pub enum RawError {
    /// Nothing (or not enough) arrived in time.
    Timeout,
    /// The peer closed the connection (EOF or reset) before a complete response.
    Closed,
    /// Unparsable bytes.
    Malformed(String),
}

/// A response read by [`RawConn`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body (chunked encoding removed).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A header value by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as a kvapi error body.
    pub fn error_body(&self) -> ErrorBody {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON error body, got HTTP {} {:?} ({e})",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A raw HTTP/1.1 client connection on which the test writes exact bytes.
#[derive(Debug)]
pub struct RawConn {
    reader: tokio::net::tcp::OwnedReadHalf,
    writer: Option<tokio::net::tcp::OwnedWriteHalf>,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects (bounded by 5 s).
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (reader, writer) = stream.into_split();
        Self {
            reader,
            writer: Some(writer),
            buf: Vec::new(),
        }
    }

    /// Writes all bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let writer = self.writer.as_mut().expect("writer was taken");
        writer.write_all(bytes).await?;
        writer.flush().await
    }

    /// Takes the write half, to write from another task while this one reads.
    pub fn take_writer(&mut self) -> tokio::net::tcp::OwnedWriteHalf {
        self.writer.take().expect("writer was taken")
    }

    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<(), RawError> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.reader.read(&mut chunk)).await {
            Err(_) => Err(RawError::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) => Err(RawError::Closed),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    /// Waits until the peer closes the connection (EOF or reset), discarding any bytes; `Err(Timeout)`
    /// when it is still open after `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<(), RawError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.fill(deadline).await {
                Err(RawError::Closed) => return Ok(()),
                Err(e) => return Err(e),
                Ok(()) => self.buf.clear(),
            }
        }
    }

    /// Reads one complete response (Content-Length, chunked, or until EOF), within `timeout`.
    pub async fn read_response(&mut self, timeout: Duration) -> Result<RawResponse, RawError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let head_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos;
            }
            self.fill(deadline).await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RawError::Malformed(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        self.buf.drain(..head_end + 4);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let no_body = (100..200).contains(&status) || status == 204 || status == 304;
        let body = if no_body {
            Vec::new()
        } else if let Some(len) = get("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| RawError::Malformed(format!("content-length {len:?}")))?;
            while self.buf.len() < len {
                self.fill(deadline).await?;
            }
            self.buf.drain(..len).collect()
        } else if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(pos) = find(&self.buf, b"\r\n") {
                        break pos;
                    }
                    self.fill(deadline).await?;
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| RawError::Malformed(format!("chunk size {size_text:?}")))?;
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    // Trailers end with an empty line.
                    loop {
                        if let Some(pos) = find(&self.buf, b"\r\n") {
                            let empty = pos == 0;
                            self.buf.drain(..pos + 2);
                            if empty {
                                break;
                            }
                        } else {
                            self.fill(deadline).await?;
                        }
                    }
                    break;
                }
                while self.buf.len() < size + 2 {
                    self.fill(deadline).await?;
                }
                body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
            }
            body
        } else {
            loop {
                match self.fill(deadline).await {
                    Ok(()) => {}
                    Err(RawError::Closed) => break,
                    Err(e) => return Err(e),
                }
            }
            std::mem::take(&mut self.buf)
        };
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Request timeout of the clients a [`Cluster`] hands out: long enough for any correct answer (the
/// node's own deadline is 5 s), short enough that a hung request fails the test rather than stalls it.
pub const CLUSTER_CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long [`Cluster::start`] waits for every node to be ready.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long [`Cluster::start`] waits for every node to see every peer alive before it carries on
/// anyway (printing a warning: the tests that depend on liveness assert it themselves).
pub const CLUSTER_PEERS_TIMEOUT: Duration = Duration::from_secs(5);

/// How [`Cluster::start_with`] starts a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Nodes to start.
    pub nodes: usize,
    /// Replication factor N.
    pub n: u32,
    /// Write quorum W.
    pub w: u32,
    /// Read quorum R.
    pub r: u32,
    /// Sloppy quorum with hinted handoff (`false`: strict quorum, no hints).
    pub sloppy_quorum: bool,
    /// Extra flags for every node, such as `--anti-entropy-interval 1s`.
    pub node_args: Vec<String>,
    /// When set, node `i` listens on host `first_host + i`, port [`HOST_PORT`], and connects to its
    /// peers from that address (`--peer-source-address`), so firewall rules can tell nodes apart.
    /// Otherwise every node is on 127.0.0.1 with a free port.
    pub first_host: Option<Ipv4Addr>,
    /// Mutual TLS between the nodes: each gets a certificate of this CA for its host.
    pub peer_tls: Option<Arc<tls::Pki>>,
    /// Extra environment of every node, such as object-store credentials.
    pub node_env: Vec<(String, String)>,
}

impl ClusterOptions {
    /// `nodes` nodes with N/W/R, sloppy quorum and default node flags.
    pub fn new(nodes: usize, n: u32, w: u32, r: u32) -> Self {
        Self {
            nodes,
            n,
            w,
            r,
            sloppy_quorum: true,
            node_args: Vec::new(),
            first_host: None,
            peer_tls: None,
            node_env: Vec::new(),
        }
    }

    /// Sets an environment variable of every node.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.node_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Gives every node a certificate of `pki`'s CA and turns peer mutual TLS on.
    pub fn with_peer_tls(mut self, pki: Arc<tls::Pki>) -> Self {
        self.peer_tls = Some(pki);
        self
    }

    /// Puts node `i` on its own loopback host `first + i` (see [`ClusterOptions::first_host`]).
    pub fn on_hosts(mut self, first: Ipv4Addr) -> Self {
        self.first_host = Some(first);
        self
    }

    /// Adds node flags.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.node_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Turns sloppy quorum (and so hints) off.
    pub fn strict(mut self) -> Self {
        self.sloppy_quorum = false;
        self
    }
}

/// The client port of every node placed on a host of its own ([`ClusterOptions::first_host`]).
pub const HOST_PORT: u16 = 7000;
/// The peer port of every node placed on a host of its own.
pub const PEER_HOST_PORT: u16 = 7070;

/// Member `kv-{i}`: on host `first_host + i` when given, else on free ports of 127.0.0.1.
fn new_member(i: usize, first_host: Option<Ipv4Addr>) -> Member {
    let (address, peer_address) = match first_host {
        Some(first) => {
            let host = Ipv4Addr::from(u32::from(first) + i as u32);
            (
                format!("{host}:{HOST_PORT}"),
                format!("{host}:{PEER_HOST_PORT}"),
            )
        }
        None => {
            let ports = free_ports(2);
            (
                format!("127.0.0.1:{}", ports[0]),
                format!("127.0.0.1:{}", ports[1]),
            )
        }
    };
    Member {
        id: format!("kv-{i}"),
        address,
        peer_address,
    }
}

/// The host part of `member`'s `host:port` address.
fn host_of(member: &Member) -> &str {
    member
        .address
        .rsplit_once(':')
        .map_or(member.address.as_str(), |(host, _)| host)
}

/// Starts the node of `member` on its addresses with the cluster file at `config_path`; with
/// `own_host`, its peer connections leave from its own address; with `peer_tls`, it gets a
/// certificate of that CA for its host.
fn member_node(
    member: &Member,
    config_path: &Path,
    node_args: &[String],
    node_env: &[(String, String)],
    own_host: bool,
    peer_tls: Option<&tls::Pki>,
) -> NodeProcess {
    let mut builder = NodeBuilder::new().without_listen().args([
        "--node-id".to_owned(),
        member.id.clone(),
        "--listen".to_owned(),
        member.address.clone(),
        "--peer-listen".to_owned(),
        member.peer_address.clone(),
        "--cluster-config".to_owned(),
        config_path.to_string_lossy().into_owned(),
    ]);
    if own_host {
        builder = builder.args(["--peer-source-address", host_of(member)]);
    }
    if let Some(pki) = peer_tls {
        let host = member
            .peer_address
            .rsplit_once(':')
            .map_or(member.peer_address.as_str(), |(host, _)| host);
        builder = builder.args(pki.issue(&member.id, host).peer_args(pki));
    }
    for (key, value) in node_env {
        builder = builder.env(key, value);
    }
    builder.args(node_args.iter().cloned()).start()
}

/// Writes a fresh random context key file `context.key` into `dir` (with a trailing newline, as
/// editors and Secrets leave one) and returns its path, for `--context-key-file`.
pub fn write_context_key(dir: &Path) -> String {
    let key: [u8; 32] = rand::random();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("context.key");
    std::fs::write(&path, format!("{hex}\n")).expect("write context key");
    path.to_string_lossy().into_owned()
}

/// Several `kvnode` processes forming one cluster (`kv-0`, `kv-1`, … on ports picked up front).
///
/// Node `i` runs `kvnode --node-id kv-i --listen 127.0.0.1:PORTi --peer-listen 127.0.0.1:PEERi
/// --data-dir <its tmp>/data
/// --cluster-config <cluster tmp>/cluster.json` with its own temporary directory, so a restart comes back
/// on the same address and data directory. Each node has one pooled [`KvClient`] (15 s timeout) that
/// stays valid across restarts. Dropping the cluster SIGKILLs every node still running.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    config_path: PathBuf,
    nodes: Vec<NodeProcess>,
    clients: Vec<KvClient>,
    node_args: Vec<String>,
    node_env: Vec<(String, String)>,
    first_host: Option<Ipv4Addr>,
    peer_tls: Option<Arc<tls::Pki>>,
    // Holds the config file; declared last so the nodes are dropped (killed) first.
    _config_dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n_nodes` nodes of cluster `test` at epoch 1 with replication `n`, quorums `w`/`r`, 256
    /// partitions and 64 vnodes; waits until each is ready and (bounded, see [`CLUSTER_PEERS_TIMEOUT`])
    /// until each sees every peer alive.
    pub async fn start(n_nodes: usize, n: u32, w: u32, r: u32) -> Self {
        Self::start_with(ClusterOptions::new(n_nodes, n, w, r)).await
    }

    /// Like [`Cluster::start`] with the quorum mode and extra node flags of `options`.
    pub async fn start_with(options: ClusterOptions) -> Self {
        let ClusterOptions {
            nodes: n_nodes,
            n,
            w,
            r,
            sloppy_quorum,
            node_args,
            first_host,
            peer_tls,
            node_env,
        } = options;
        assert!(n_nodes > 0, "a cluster needs at least one node");
        let t0 = Instant::now();
        let members: Vec<Member> = (0..n_nodes).map(|i| new_member(i, first_host)).collect();
        let config = ClusterConfig {
            cluster: "test".to_owned(),
            epoch: 1,
            members,
            n,
            w,
            r,
            partitions: 256,
            vnodes: 64,
            sloppy_quorum,
            transition_from: None,
        };
        let config_dir = tempfile::Builder::new()
            .prefix("kvcluster-test-")
            .tempdir()
            .expect("create cluster temp dir");
        let config_path = config_dir.path().join("cluster.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config).expect("serialize ClusterConfig"),
        )
        .expect("write cluster config");
        let key_path = write_context_key(config_dir.path());
        let mut node_args = node_args;
        node_args.extend(["--context-key-file".to_owned(), key_path]);

        let mut nodes = Vec::with_capacity(n_nodes);
        let mut clients = Vec::with_capacity(n_nodes);
        for member in &config.members {
            let node = member_node(
                member,
                &config_path,
                &node_args,
                &node_env,
                first_host.is_some(),
                peer_tls.as_deref(),
            );
            assert_eq!(
                node.addr().to_string(),
                member.address,
                "{} announced another address than its --listen",
                member.id
            );
            clients.push(KvClient::with_timeout(
                &node.base_url(),
                CLUSTER_CLIENT_TIMEOUT,
            ));
            nodes.push(node);
        }
        let cluster = Self {
            config,
            config_path,
            nodes,
            clients,
            node_args,
            node_env,
            first_host,
            peer_tls,
            _config_dir: config_dir,
        };
        for (i, client) in cluster.clients.iter().enumerate() {
            assert!(
                wait_for_status(client, kvapi::HEALTH_READY, 200, CLUSTER_READY_TIMEOUT).await,
                "kv-{i} was not ready within {CLUSTER_READY_TIMEOUT:?}"
            );
        }
        let ready = t0.elapsed();
        let all_alive = cluster.wait_all_peers_alive(CLUSTER_PEERS_TIMEOUT).await;
        if all_alive {
            eprintln!(
                "cluster of {n_nodes} (N={n} W={w} R={r}): ready after {ready:?}, all peers alive after {:?}",
                t0.elapsed()
            );
        } else {
            eprintln!(
                "WARNING: cluster of {n_nodes}: ready after {ready:?}, but not every node saw every peer alive \
                 within {CLUSTER_PEERS_TIMEOUT:?}"
            );
        }
        cluster
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The config the cluster was started with (epoch 1).
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Path of the context key file every node was started with (see [`write_context_key`]).
    pub fn context_key_path(&self) -> PathBuf {
        self.config_path.with_file_name("context.key")
    }

    /// Path of the config file every node was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The initial config with another `epoch` (and otherwise the same fields), to edit and install.
    pub fn config_at(&self, epoch: u64) -> ClusterConfig {
        ClusterConfig {
            epoch,
            ..self.config.clone()
        }
    }

    /// Id of node `i` (`kv-i`).
    pub fn id(&self, i: usize) -> String {
        self.config.members[i].id.clone()
    }

    /// Node `i`'s process.
    pub fn node(&self, i: usize) -> &NodeProcess {
        &self.nodes[i]
    }

    /// Node `i`'s process, mutably.
    pub fn node_mut(&mut self, i: usize) -> &mut NodeProcess {
        &mut self.nodes[i]
    }

    /// Node `i`'s pooled client (valid across restarts: the address does not change).
    pub fn client(&self, i: usize) -> &KvClient {
        &self.clients[i]
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    /// SIGSTOP node `i`: it keeps its sockets but answers nothing until [`Cluster::resume`].
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].pause();
    }

    /// SIGCONT node `i` after [`Cluster::pause`].
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].resume();
    }

    /// SIGTERM node `i`, wait (bounded) for it to exit, and assert it exited with status 0.
    pub fn stop(&mut self, i: usize) {
        let status = self.nodes[i].stop();
        assert!(
            status.success(),
            "kv-{i} exited with {status} on SIGTERM\n--- log tail ---\n{}",
            self.nodes[i].log_tail(40)
        );
    }

    /// Starts node `i` again (stopping it first with SIGTERM if it runs) with the same flags, address
    /// and data directory; returns once it printed its listening line.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
        assert_eq!(
            self.nodes[i].addr().to_string(),
            self.config.members[i].address,
            "kv-{i} came back on another address"
        );
    }

    /// Starts one more node, `kv-{len}` placed like the others, with the cluster's initial config
    /// file (so it knows its peers' addresses) and the cluster's node flags; it is not a member until
    /// a config naming it is installed. Returns its index.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let member = new_member(i, self.first_host);
        let node = member_node(
            &member,
            &self.config_path,
            &self.node_args,
            &self.node_env,
            self.first_host.is_some(),
            self.peer_tls.as_deref(),
        );
        let client = KvClient::with_timeout(&node.base_url(), CLUSTER_CLIENT_TIMEOUT);
        assert!(
            wait_for_status(&client, kvapi::HEALTH_READY, 200, CLUSTER_READY_TIMEOUT).await,
            "kv-{i} was not ready within {CLUSTER_READY_TIMEOUT:?}"
        );
        self.config.members.push(member);
        self.nodes.push(node);
        self.clients.push(client);
        i
    }

    /// The member entry of node `i`.
    pub fn member(&self, i: usize) -> Member {
        self.config.members[i].clone()
    }

    /// The host part of every node's address, in node order (for firewall rules).
    pub fn hosts(&self) -> Vec<String> {
        self.config
            .members
            .iter()
            .map(|m| host_of(m).to_owned())
            .collect()
    }

    /// Stops node `i` (SIGTERM), deletes its data directory, and starts it again empty.
    pub fn wipe(&mut self, i: usize) {
        self.stop(i);
        std::fs::remove_dir_all(self.nodes[i].data_dir()).expect("wipe the data directory");
        self.restart(i);
    }

    /// Polls every node in `nodes` until all report the same settled config (no transition) at
    /// `epoch` or later; returns that config, or `None` after `timeout`.
    pub async fn wait_settled(
        &self,
        nodes: &[usize],
        epoch: u64,
        timeout: Duration,
    ) -> Option<ClusterConfig> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut configs = Vec::new();
            for &i in nodes {
                configs.push(self.clients[i].try_admin_cluster().await);
            }
            if let Some(Some(first)) = configs.first()
                && first.epoch >= epoch
                && first.transition_from.is_none()
                && configs.iter().all(|c| c.as_ref() == Some(first))
            {
                return Some(first.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `PUT /admin/v1/cluster` with `config` through node `via`.
    pub async fn write_config(&self, via: usize, config: &ClusterConfig) -> Resp {
        self.clients[via].put_admin_cluster(config).await
    }

    /// Polls node `i`'s `GET /admin/v1/cluster` until its epoch is at least `epoch`, at most `timeout`;
    /// returns the config and how long it took, or `None` on timeout.
    pub async fn wait_epoch(
        &self,
        i: usize,
        epoch: u64,
        timeout: Duration,
    ) -> Option<(ClusterConfig, Duration)> {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        loop {
            if let Some(config) = self.clients[i].try_admin_cluster().await
                && config.epoch >= epoch
            {
                return Some((config, t0.elapsed()));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls node `i`'s `GET /admin/v1/status` until `pred` holds for it, at most `timeout`; returns the
    /// time it took, or `None` on timeout.
    pub async fn wait_status(
        &self,
        i: usize,
        timeout: Duration,
        pred: impl Fn(&NodeStatus) -> bool,
    ) -> Option<Duration> {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        loop {
            if let Some(status) = self.clients[i].try_admin_status().await
                && pred(&status)
            {
                return Some(t0.elapsed());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `i` reports peer `peer` with the given liveness; returns the time it took.
    pub async fn wait_peer_alive(
        &self,
        i: usize,
        peer: usize,
        alive: bool,
        timeout: Duration,
    ) -> Option<Duration> {
        let peer_id = self.id(peer);
        self.wait_status(i, timeout, |s| {
            s.peers.iter().any(|p| p.id == peer_id && p.alive == alive)
        })
        .await
    }

    /// Waits until every running node reports every other member alive; false on timeout.
    pub async fn wait_all_peers_alive(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for i in 0..self.nodes.len() {
            let others: Vec<String> = (0..self.nodes.len())
                .filter(|j| *j != i)
                .map(|j| self.id(j))
                .collect();
            let left = deadline.saturating_duration_since(Instant::now());
            let ok = self
                .wait_status(i, left, |s| {
                    others
                        .iter()
                        .all(|id| s.peers.iter().any(|p| &p.id == id && p.alive))
                })
                .await;
            if ok.is_none() {
                return false;
            }
        }
        true
    }
}

/// Polls `GET path` until it answers `status`, at most `timeout`; returns whether it did.
pub async fn wait_for_status(
    client: &KvClient,
    path: &str,
    status: u16,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(resp) = client.try_request("GET", path, &[], None).await
            && resp.status == status
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_matches_name_and_labels() {
        let text = "# HELP kv_requests_total Requests.\n\
                    # TYPE kv_requests_total counter\n\
                    kv_requests_total{operation=\"put\",status=\"204\"} 3\n\
                    kv_requests_total{operation=\"get\",status=\"200\"} 5\n\
                    kv_requests_total{status=\"204\",operation=\"put\",node=\"a,b\"} 2\n\
                    kv_requests_total_extra 100\n\
                    kv_cache_hits_total 7\n";
        assert_eq!(
            metric_sum(
                text,
                "kv_requests_total",
                &[("operation", "put"), ("status", "204")]
            ),
            Some(5.0)
        );
        assert_eq!(metric_sum(text, "kv_requests_total", &[]), Some(10.0));
        assert_eq!(metric_sum(text, "kv_cache_hits_total", &[]), Some(7.0));
        assert_eq!(metric_sum(text, "kv_cache_misses_total", &[]), None);
        assert_eq!(
            metric_sum(text, "kv_requests_total", &[("operation", "delete")]),
            None
        );
    }

    #[test]
    fn encode_key_escapes_everything_but_alphanumerics() {
        assert_eq!(encode_key(b"a/b c\xff"), "a%2Fb%20c%FF");
    }

    #[tokio::test]
    async fn raw_conn_reads_length_and_chunked_responses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket
                .write_all(
                    b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\n\r\nhello\
                      HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n\
                      HTTP/1.1 204 No Content\r\n\r\n",
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let mut conn = RawConn::connect(addr).await;
        let first = conn.read_response(Duration::from_secs(2)).await.unwrap();
        assert_eq!((first.status, first.body.as_slice()), (413, &b"hello"[..]));
        let second = conn.read_response(Duration::from_secs(2)).await.unwrap();
        assert_eq!(
            (second.status, second.body.as_slice()),
            (200, &b"abcde"[..])
        );
        let third = conn.read_response(Duration::from_secs(2)).await.unwrap();
        assert_eq!(third.status, 204);
        assert!(matches!(
            conn.read_response(Duration::from_millis(100)).await,
            Err(RawError::Timeout)
        ));
        assert!(conn.wait_closed(Duration::from_secs(2)).await.is_ok());
        server.await.unwrap();
    }
}
