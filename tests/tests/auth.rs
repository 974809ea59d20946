//! Bearer tokens on the client port, attacked over HTTP on real `kvnode` processes: who gets 401, who
//! gets 403, what stays open, how token files are read and rotated, that `kvctl` sends its token, and
//! that no token reaches the node's log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvcluster_tests::kvapi::codes;
use kvcluster_tests::{KvClient, NodeBuilder, NodeProcess, RawConn, kvctl_bin, kvnode_bin};

const ADMIN: &str = "adm-4f1c9e2b7d";
const WRITE: &str = "wrt-8a3e5c1f09";
const READ: &str = "rdo-2b7d4f1c9e";

/// A directory holding the three token files (each with a trailing newline, as `echo` or a
/// Kubernetes Secret written from a file leaves it).
struct Tokens {
    dir: tempfile::TempDir,
}

impl Tokens {
    fn new() -> Self {
        let tokens = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        tokens.write("admin", &format!("{ADMIN}\n"));
        tokens.write("write", &format!("{WRITE}\n"));
        tokens.write("read", &format!("{READ}\n"));
        tokens
    }

    fn path(&self, kind: &str) -> PathBuf {
        self.dir.path().join(kind)
    }

    /// Replaces a token file the way Kubernetes does: a new file renamed over the old one.
    fn write(&self, kind: &str, text: &str) {
        let fresh = self.dir.path().join(format!(".{kind}.new"));
        std::fs::write(&fresh, text).unwrap();
        std::fs::rename(&fresh, self.path(kind)).unwrap();
    }

    fn args(&self) -> Vec<String> {
        ["admin", "write", "read"]
            .iter()
            .flat_map(|kind| {
                [
                    format!("--{kind}-token-file"),
                    self.path(kind).to_string_lossy().into_owned(),
                ]
            })
            .collect()
    }

    fn node(&self) -> NodeProcess {
        NodeBuilder::new().args(self.args()).start()
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn call(
    c: &KvClient,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> kvcluster_tests::Resp {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth
        .iter()
        .map(|value| ("authorization", value.as_str()))
        .collect();
    let body = (method == "PUT").then(|| b"v".to_vec());
    c.request(method, path, &headers, body).await
}

fn assert_unauthorized(resp: &kvcluster_tests::Resp) {
    resp.assert_error(401, codes::UNAUTHORIZED);
    assert_eq!(
        resp.header("www-authenticate").as_deref(),
        Some("Bearer"),
        "{resp}"
    );
}

#[tokio::test]
async fn data_routes_need_a_token_and_a_read_token_cannot_write() {
    let tokens = Tokens::new();
    let node = tokens.node();
    let c = node.client();
    let key = "/v1/kv/k";

    // No token, an unknown token, a token with another scheme: 401 on every data route.
    for method in ["GET", "PUT", "DELETE"] {
        assert_unauthorized(&call(&c, method, key, None).await);
        assert_unauthorized(&call(&c, method, key, Some("not-a-token")).await);
        assert_unauthorized(&call(&c, method, key, Some(&format!("{READ}x"))).await);
    }
    let basic = c
        .request(
            "GET",
            key,
            &[("authorization", &format!("Basic {WRITE}"))],
            None,
        )
        .await;
    assert_unauthorized(&basic);

    // The write token writes and reads.
    let put = call(&c, "PUT", key, Some(WRITE)).await;
    assert_eq!(put.status, 204, "{put}");
    let get = call(&c, "GET", key, Some(WRITE)).await;
    assert_eq!((get.status, get.body.as_slice()), (200, &b"v"[..]), "{get}");

    // The read token reads, and may neither write nor delete: the value stays.
    let get = call(&c, "GET", key, Some(READ)).await;
    assert_eq!(get.status, 200, "{get}");
    for method in ["PUT", "DELETE"] {
        let refused = call(&c, method, key, Some(READ)).await;
        let body = refused.assert_error(403, codes::FORBIDDEN);
        assert!(body.message.contains("may not write"), "{refused}");
    }
    let after = c
        .request(
            "GET",
            key,
            &[
                ("authorization", &bearer(READ)),
                ("accept", "application/json"),
            ],
            None,
        )
        .await;
    assert_eq!(after.live_values(), [b"v".to_vec()], "{after}");

    // The admin token may use the data routes too; the write token deletes.
    assert_eq!(call(&c, "PUT", key, Some(ADMIN)).await.status, 204);
    assert_eq!(call(&c, "DELETE", key, Some(WRITE)).await.status, 204);

    // Health stays open; metrics are open by default.
    for path in ["/health/live", "/health/ready", "/metrics"] {
        let open = call(&c, "GET", path, None).await;
        assert_eq!(open.status, 200, "{path}: {open}");
    }
}

#[tokio::test]
async fn admin_routes_take_only_the_admin_token() {
    let tokens = Tokens::new();
    let node = tokens.node();
    let c = node.client();
    for path in ["/admin/v1/status", "/admin/v1/ring", "/admin/v1/cluster"] {
        assert_unauthorized(&call(&c, "GET", path, None).await);
        assert_unauthorized(&call(&c, "GET", path, Some("wrong")).await);
        for data in [READ, WRITE] {
            let refused = call(&c, "GET", path, Some(data)).await;
            let body = refused.assert_error(403, codes::FORBIDDEN);
            assert!(body.message.contains("admin"), "{refused}");
        }
        let ok = call(&c, "GET", path, Some(ADMIN)).await;
        assert_eq!(ok.status, 200, "{path}: {ok}");
    }
    // A data token cannot change the cluster config: refused before the body is looked at.
    let status = call(&c, "GET", "/admin/v1/cluster", Some(ADMIN)).await;
    let mut config: kvcluster_tests::kvapi::ClusterConfig =
        serde_json::from_slice(&status.body).unwrap();
    config.epoch += 1;
    config.w = 1;
    let body = serde_json::to_vec(&config).unwrap();
    let refused = c
        .request(
            "PUT",
            "/admin/v1/cluster",
            &[("authorization", &bearer(WRITE))],
            Some(body.clone()),
        )
        .await;
    refused.assert_error(403, codes::FORBIDDEN);
    let drained = call(&c, "POST", "/admin/v1/drain", Some(WRITE)).await;
    drained.assert_error(403, codes::FORBIDDEN);
    let unchanged = call(&c, "GET", "/admin/v1/cluster", Some(ADMIN)).await;
    let unchanged: kvcluster_tests::kvapi::ClusterConfig =
        serde_json::from_slice(&unchanged.body).unwrap();
    assert_eq!(unchanged.epoch, config.epoch - 1);
    let accepted = c
        .request(
            "PUT",
            "/admin/v1/cluster",
            &[("authorization", &bearer(ADMIN))],
            Some(body),
        )
        .await;
    assert_eq!(accepted.status, 200, "{accepted}");
}

#[tokio::test]
async fn metrics_auth_closes_metrics_but_not_health() {
    let tokens = Tokens::new();
    let node = NodeBuilder::new()
        .args(tokens.args())
        .args(["--metrics-auth", "true"])
        .start();
    let c = node.client();
    assert_unauthorized(&call(&c, "GET", "/metrics", None).await);
    assert_unauthorized(&call(&c, "GET", "/metrics", Some("wrong")).await);
    for token in [READ, WRITE, ADMIN] {
        let ok = call(&c, "GET", "/metrics", Some(token)).await;
        assert_eq!(ok.status, 200, "{ok}");
        assert!(ok.text().contains("kv_"), "{ok}");
    }
    for path in ["/health/live", "/health/ready"] {
        assert_eq!(call(&c, "GET", path, None).await.status, 200, "{path}");
    }
}

#[tokio::test]
async fn token_files_are_trimmed_and_may_hold_several_tokens() {
    let tokens = Tokens::new();
    // CRLF ends, blank lines, surrounding spaces and tabs: what editors and Secrets leave behind.
    tokens.write(
        "write",
        &format!("\n  {WRITE}\t\r\n\r\nwrt-second-5e6f\n\n"),
    );
    tokens.write("admin", &format!("{ADMIN}\r\n"));
    let node = tokens.node();
    let c = node.client();
    for token in [WRITE, "wrt-second-5e6f"] {
        assert_eq!(
            call(&c, "PUT", "/v1/kv/k", Some(token)).await.status,
            204,
            "{token}"
        );
    }
    // The whole token and nothing but: a prefix or an extension of it is not a token.
    assert_unauthorized(&call(&c, "PUT", "/v1/kv/k", Some(&WRITE[..WRITE.len() - 1])).await);
    assert_unauthorized(&call(&c, "PUT", "/v1/kv/k", Some(&format!("{WRITE}\tx"))).await);
    assert_eq!(
        call(&c, "GET", "/admin/v1/status", Some(ADMIN))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_literal_admin_token_is_trimmed_like_a_file() {
    let node = NodeBuilder::new()
        .env("KVNODE_ADMIN_TOKEN", &format!("{ADMIN}\n"))
        .start();
    let c = node.client();
    assert_eq!(
        call(&c, "GET", "/admin/v1/status", Some(ADMIN))
            .await
            .status,
        200
    );
    assert_unauthorized(&call(&c, "GET", "/admin/v1/status", None).await);
    // Only an admin token configured: the data routes stay open, as before tokens existed.
    assert_eq!(call(&c, "PUT", "/v1/kv/k", None).await.status, 204);
}

#[tokio::test]
async fn rotated_token_files_take_effect_without_a_restart() {
    let tokens = Tokens::new();
    let node = tokens.node();
    let c = node.client();
    let new = "wrt-rotated-31c7";
    assert_unauthorized(&call(&c, "PUT", "/v1/kv/k", Some(new)).await);
    // Step 1: old and new side by side. Step 2: the old one removed.
    tokens.write("write", &format!("{WRITE}\n{new}\n"));
    wait_for_status(&c, new, 204).await;
    assert_eq!(call(&c, "PUT", "/v1/kv/k", Some(WRITE)).await.status, 204);
    tokens.write("write", &format!("{new}\n"));
    wait_for_status(&c, WRITE, 401).await;
    assert_eq!(call(&c, "PUT", "/v1/kv/k", Some(new)).await.status, 204);
    // A file emptied by mistake keeps the tokens in force instead of opening or closing the node.
    tokens.write("write", "\n");
    tokio::time::sleep(kvnode::http::auth::RELOAD_INTERVAL * 2).await;
    assert_eq!(call(&c, "PUT", "/v1/kv/k", Some(new)).await.status, 204);
    assert_unauthorized(&call(&c, "PUT", "/v1/kv/k", None).await);
}

/// Waits (bounded) until a PUT with `token` answers `status`.
async fn wait_for_status(c: &KvClient, token: &str, status: u16) {
    let deadline = Instant::now() + kvnode::http::auth::RELOAD_INTERVAL * 3;
    loop {
        let resp = call(c, "PUT", "/v1/kv/k", Some(token)).await;
        if resp.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {resp} instead of {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs kvnode with `args` and expects it to refuse to start, naming `expected` on stderr.
fn assert_refuses_to_start(args: &[&str], expected: &str) {
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(kvnode_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KVNODE_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvnode {args:?} still runs after 10 s: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "kvnode {args:?} exited with {status}");
    assert!(
        stderr.contains(expected),
        "stderr {stderr:?} lacks {expected:?}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).is_empty(),
        "kvnode {args:?} started serving"
    );
}

#[test]
fn a_token_file_without_a_token_stops_the_start() {
    let tokens = Tokens::new();
    tokens.write("read", "\n  \r\n");
    let empty = tokens.path("read");
    let empty = empty.to_str().unwrap();
    assert_refuses_to_start(&["--read-token-file", empty], "no token found");
    let missing = tokens.path("missing");
    assert_refuses_to_start(
        &["--write-token-file", missing.to_str().unwrap()],
        "cannot read",
    );
    tokens.write("read", "two words\n");
    assert_refuses_to_start(&["--read-token-file", empty], "line 1");
    assert_refuses_to_start(&["--metrics-auth"], "--metrics-auth needs");
}

/// Runs kvctl against `endpoint` with exactly the KVCTL_* environment given.
fn kvctl_with(endpoint: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(kvctl_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KVCTL_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied())
        .arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn kvctl_sends_its_token_and_says_when_one_is_needed() {
    let tokens = Tokens::new();
    let node = tokens.node();
    let endpoint = node.base_url();

    let put = kvctl_with(&endpoint, &[], &["put", "k", "v1", "--token", WRITE]);
    assert!(put.status.success(), "{}", stderr(&put));
    let put = kvctl_with(&endpoint, &[("KVCTL_TOKEN", WRITE)], &["put", "k", "v2"]);
    assert!(put.status.success(), "{}", stderr(&put));
    let file = tokens.path("write");
    let get = kvctl_with(
        &endpoint,
        &[],
        &["--token-file", file.to_str().unwrap(), "get", "k"],
    );
    assert!(get.status.success(), "{}", stderr(&get));
    // Two blind writes: two siblings.
    let siblings = String::from_utf8_lossy(&get.stdout);
    assert!(
        siblings.contains("v1") && siblings.contains("v2"),
        "{siblings}"
    );

    // Without a token: the clear message and a non-zero exit, for data and admin commands alike.
    for args in [
        &["get", "k"][..],
        &["put", "k", "v3"],
        &["status"],
        &["ring"],
    ] {
        let refused = kvctl_with(&endpoint, &[], args);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&refused)
        );
        assert!(
            stderr(&refused).contains("the node requires a token (--token or KVCTL_TOKEN)"),
            "{args:?}: {}",
            stderr(&refused)
        );
    }
    // The wrong kind of token: 403, with what the token may not do.
    let refused = kvctl_with(&endpoint, &[("KVCTL_TOKEN", READ)], &["put", "k", "v3"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("this token may not write"),
        "{}",
        stderr(&refused)
    );
    let refused = kvctl_with(&endpoint, &[("KVCTL_TOKEN", WRITE)], &["status"]);
    assert!(
        stderr(&refused).contains("this token may not use the admin routes"),
        "{}",
        stderr(&refused)
    );

    // The admin commands with the admin token, including `cluster status`, which asks every member.
    for args in [&["status"][..], &["ring"], &["cluster", "status"]] {
        let ok = kvctl_with(&endpoint, &[("KVCTL_TOKEN", ADMIN)], args);
        assert!(ok.status.success(), "{args:?}: {}", stderr(&ok));
    }
    let bench = kvctl_with(
        &endpoint,
        &[("KVCTL_TOKEN", WRITE)],
        &[
            "bench",
            "--clients",
            "2",
            "--duration",
            "1s",
            "--keys",
            "10",
            "--json",
        ],
    );
    assert!(bench.status.success(), "{}", stderr(&bench));
    let report = String::from_utf8_lossy(&bench.stdout);
    assert!(
        !report.contains("unauthorized") && !report.contains("forbidden"),
        "{report}"
    );
}

fn read_log(node: &NodeProcess) -> String {
    std::fs::read_to_string(node.temp_dir().join("node.log")).unwrap()
}

#[tokio::test]
async fn no_token_reaches_the_log() {
    let tokens = Tokens::new();
    // The literal goes in the environment: the harness writes the command line into the log.
    let literal = "adm-literal-0c9d8e";
    let node = NodeBuilder::new()
        .args(["--write-token-file", tokens.path("write").to_str().unwrap()])
        .args(["--read-token-file", tokens.path("read").to_str().unwrap()])
        .env("KVNODE_ADMIN_TOKEN", literal)
        .env("RUST_LOG", "trace")
        .start();
    let c = node.client();
    let wrong = "wrong-token-77aa";
    for token in [WRITE, READ, literal, wrong] {
        for method in ["GET", "PUT", "DELETE"] {
            call(&c, method, "/v1/kv/k", Some(token)).await;
        }
        call(&c, "GET", "/admin/v1/status", Some(token)).await;
        call(&c, "PUT", "/admin/v1/cluster", Some(token)).await;
    }
    // A request cut off in its head ends its connection with an error, logged at debug.
    let mut raw = RawConn::connect(node.addr()).await;
    raw.send(format!("PUT /v1/kv/k HTTP/1.1\r\nauthorization: Bearer {WRITE}\r\n").as_bytes())
        .await
        .unwrap();
    drop(raw);
    // A reload, and a reload that fails, are logged: without the tokens.
    tokens.write("write", &format!("{WRITE}\nwrt-reloaded-19ab\n"));
    tokio::time::sleep(kvnode::http::auth::RELOAD_INTERVAL * 2).await;
    tokens.write("write", "bad token line\n");
    tokio::time::sleep(kvnode::http::auth::RELOAD_INTERVAL * 2).await;
    let log = read_log(&node);
    assert!(
        log.contains("connection ended with an error"),
        "no debug line in:\n{log}"
    );
    assert!(log.contains("token files changed"), "{log}");
    assert!(log.contains("token files not reloaded"), "{log}");
    for secret in [
        WRITE,
        READ,
        literal,
        wrong,
        "wrt-reloaded-19ab",
        "bad token line",
    ] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
}
