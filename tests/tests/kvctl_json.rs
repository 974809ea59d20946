//! `kvctl --output json` against real kvnode processes: every command prints JSON Lines on stdout
//! that say what the text output says (bytes that are not UTF-8 in base64, never altered), errors
//! as one `{"error": ...}` object on stderr, and the exit codes do not change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvcluster_tests::{Cluster, kvctl};
use serde_json::{Value, json};

/// Runs `kvctl --output json ARGS...`; returns the exit code, stdout's JSON lines and stderr.
fn kvctl_json(endpoint: &str, args: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let mut argv = vec!["--output", "json"];
    argv.extend_from_slice(args);
    let output = kvctl(endpoint, &argv);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines = stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("kvctl {args:?}: not a JSON line ({e}): {line:?}"))
        })
        .collect();
    (output.status.code(), lines, stderr)
}

/// The only JSON line of a command that succeeded.
fn only(endpoint: &str, args: &[&str]) -> Value {
    let (code, lines, stderr) = kvctl_json(endpoint, args);
    assert_eq!(code, Some(0), "kvctl {args:?}: {stderr}");
    assert_eq!(lines.len(), 1, "kvctl {args:?}: {lines:?}");
    lines.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_speaks_json_lines() {
    let cluster = Cluster::start(3, 3, 2, 2).await;
    let endpoint = cluster.client(0).base().to_string();

    // put, get, siblings, delete.
    let put = only(&endpoint, &["put", "greeting", "hello"]);
    assert_eq!(put["key"], "greeting");
    let context = put["context"].as_str().expect("a context").to_owned();
    let read = only(&endpoint, &["get", "greeting"]);
    assert_eq!(
        (&read["found"], &read["siblings"]),
        (&json!(true), &json!([{"value": "hello"}]))
    );
    only(&endpoint, &["put", "greeting", "hi"]);
    let both = only(&endpoint, &["get", "greeting"]);
    let mut values: Vec<&str> = both["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"].as_str().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, ["hello", "hi"], "{both}");
    let resolved = both["context"].as_str().unwrap();
    let deleted = only(&endpoint, &["delete", "greeting", "--context", resolved]);
    assert_eq!(deleted, json!({"key": "greeting", "deleted": true}));
    let (code, lines, _) = kvctl_json(&endpoint, &["get", "greeting"]);
    assert_eq!(code, Some(1), "a deleted key still exits 1");
    assert_eq!(
        (&lines[0]["found"], &lines[0]["siblings"]),
        (&json!(false), &json!([]))
    );
    assert!(
        lines[0]["context"].is_string(),
        "a tombstone keeps its context"
    );
    let (code, lines, _) = kvctl_json(&endpoint, &["get", "never-written"]);
    assert_eq!(code, Some(1));
    assert_eq!(lines[0]["context"], Value::Null);
    assert_ne!(context, resolved);

    // Bytes that are not UTF-8 come back in base64, exactly.
    cluster
        .client(0)
        .put_ok(b"binary", &[0xff, 0x00, 0x41], None)
        .await;
    let read = only(&endpoint, &["get", "binary"]);
    assert_eq!(read["siblings"], json!([{"value_base64": "/wBB"}]));

    // list: one line per key, values when asked.
    for i in 0..3 {
        only(&endpoint, &["put", &format!("fruit/{i}"), &format!("v{i}")]);
    }
    let (code, keys, stderr) =
        kvctl_json(&endpoint, &["list", "--prefix", "fruit/", "--limit", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        keys,
        vec![
            json!({"key": "fruit/0"}),
            json!({"key": "fruit/1"}),
            json!({"key": "fruit/2"})
        ]
    );
    let (_, listed, _) = kvctl_json(&endpoint, &["list", "--prefix", "fruit/1", "--values"]);
    assert_eq!(
        listed,
        vec![json!({"key": "fruit/1", "values": [{"value": "v1"}]})]
    );

    // watch: the current state first, as the object get prints.
    let watched = only(&endpoint, &["watch", "fruit/2", "--count", "1"]);
    assert_eq!(watched["siblings"], json!([{"value": "v2"}]));

    // ring, status, cluster status, check.
    let ring = only(&endpoint, &["ring"]);
    assert!(ring["epoch"].is_u64(), "{ring}");
    let status = only(&endpoint, &["status"]);
    assert_eq!(
        status["config"]["members"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    let (code, members, stderr) = kvctl_json(&endpoint, &["cluster", "status"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(
        members.iter().all(|m| m["ring"] == "settled"),
        "{members:?}"
    );
    let check = only(&endpoint, &["check"]);
    assert_eq!(check["ok"], true);

    // backup create and list on a local directory.
    let dir = tempfile::tempdir().unwrap();
    let target = format!("file://{}", dir.path().display());
    let (code, lines, stderr) = kvctl_json(
        &endpoint,
        &["backup", "create", "--target", &target, "--id", "b1"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        lines.len(),
        4,
        "a line per member, then the backup: {lines:?}"
    );
    assert_eq!(lines[3]["backup"], "b1");
    assert_eq!(lines[3]["complete"], true);
    let listed = only(&endpoint, &["backup", "list", "--target", &target]);
    assert_eq!(
        (&listed["id"], &listed["complete"]),
        (&json!("b1"), &json!(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_on_stderr_with_the_same_exit_codes() {
    let cluster = Cluster::start(1, 1, 1, 1).await;
    let endpoint = cluster.client(0).base().to_string();

    // The node refuses: its status and code are in the object.
    let (code, lines, stderr) = kvctl_json(&endpoint, &["put", "k", "v", "--w", "9"]);
    assert_eq!(code, Some(2));
    assert!(lines.is_empty(), "nothing on stdout: {lines:?}");
    let error: Value = serde_json::from_str(stderr.trim()).expect("stderr is one JSON object");
    assert_eq!(error["error"]["status"], 400, "{error}");
    assert!(error["error"]["code"].is_string(), "{error}");
    assert!(error["error"]["message"].is_string(), "{error}");

    // Nobody answers: exit 3, still one object.
    let (code, _, stderr) = kvctl_json("http://127.0.0.1:1", &["get", "k"]);
    assert_eq!(code, Some(3));
    let error: Value = serde_json::from_str(stderr.trim()).expect("stderr is one JSON object");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:1"),
        "{error}"
    );

    // Bad local input.
    let (code, _, stderr) = kvctl_json(&endpoint, &["watch", "k", "--wait", "2m"]);
    assert_eq!(code, Some(2));
    let error: Value = serde_json::from_str(stderr.trim()).expect("stderr is one JSON object");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--wait"),
        "{error}"
    );
}
