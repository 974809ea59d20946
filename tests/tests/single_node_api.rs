//! The public key-value API of a lone node (N = W = R = 1): reads, writes, deletes, siblings,
//! contexts, keys, query parameters, routes and health.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use kvcluster_tests::kvapi::{CONTEXT_HEADER, codes};
use kvcluster_tests::{KvClient, NodeProcess, RawConn, b64};

#[tokio::test]
async fn put_then_get_returns_value_and_context() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    let put = c.put(b"greeting", b"hello", None).await;
    assert_eq!(put.status, 204, "{put}");
    assert!(put.body.is_empty(), "204 must have no body: {put}");
    let put_ctx = put.expect_context();
    assert!(!put_ctx.is_empty());

    let got = c.get(b"greeting").await;
    assert_eq!(got.status, 200, "{got}");
    assert_eq!(got.body, b"hello");
    assert!(got.context().is_some_and(|c| !c.is_empty()), "{got}");
}

#[tokio::test]
async fn write_with_read_context_replaces_the_value() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    c.put_ok(b"k", b"v1", None).await;
    let (v, ctx) = c.get_one(b"k").await;
    assert_eq!(v, b"v1");
    c.put_ok(b"k", b"v2", Some(&ctx)).await;
    let (v, ctx) = c.get_one(b"k").await;
    assert_eq!(v, b"v2");
    // The context returned by a PUT also supersedes what it wrote.
    let put_ctx = c.put_ok(b"k", b"v3", Some(&ctx)).await;
    c.put_ok(b"k", b"v4", Some(&put_ctx)).await;
    let (v, _) = c.get_one(b"k").await;
    assert_eq!(v, b"v4");
}

#[tokio::test]
async fn absent_key_is_404_not_found_without_context() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    let resp = c.get(b"never-written").await;
    resp.assert_error(404, codes::NOT_FOUND);
    assert_eq!(
        resp.context(),
        None,
        "an absent key has no context header: {resp}"
    );
}

#[tokio::test]
async fn deleted_key_is_404_with_context_and_can_be_written_again() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    c.put_ok(b"doomed", b"alive", None).await;
    let (_, ctx) = c.get_one(b"doomed").await;
    let del = c.delete(b"doomed", Some(&ctx)).await;
    assert_eq!(del.status, 204, "{del}");

    let got = c.get(b"doomed").await;
    assert_eq!(got.status, 404, "a deleted key reads as 404: {got}");
    let tomb_ctx = got.context().unwrap_or_else(|| {
        panic!(
            "a deleted key (only tombstones) answers 404 WITH the {CONTEXT_HEADER} header: {got}"
        )
    });
    assert_eq!(got.error_body().error, codes::NOT_FOUND, "{got}");

    // A write that has seen the tombstone leaves exactly one value.
    c.put_ok(b"doomed", b"reborn", Some(&tomb_ctx)).await;
    let (v, _) = c.get_one(b"doomed").await;
    assert_eq!(v, b"reborn");
}

#[tokio::test]
async fn deleting_an_absent_key_is_204() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    let del = c.delete(b"nothing-here", None).await;
    assert_eq!(del.status, 204, "{del}");
    let got = c.get(b"nothing-here").await;
    assert_eq!(got.status, 404, "{got}");
}

#[tokio::test]
async fn delete_without_context_is_concurrent_with_the_stored_value() {
    // DESIGN §2: a delete is a write of a tombstone, and a write without a context is concurrent with
    // everything stored; the live value therefore survives next to the tombstone. A value next to a
    // concurrent delete is a conflict (docs/decisions.md): 300, so the client sees the delete too.
    let node = NodeProcess::start(&[]);
    let c = node.client();
    c.put_ok(b"k", b"still-here", None).await;
    let del = c.delete(b"k", None).await;
    assert_eq!(del.status, 204, "{del}");
    let json = c.get(b"k").await;
    assert_eq!(
        json.status, 300,
        "a value concurrent with a tombstone is a conflict: {json}"
    );
    let read = json.read_response();
    assert_eq!(
        read.siblings.len(),
        2,
        "value and tombstone are siblings: {json}"
    );
    assert_eq!(
        read.siblings.iter().filter(|s| s.deleted).count(),
        1,
        "{json}"
    );
    assert_eq!(json.live_values(), vec![b"still-here".to_vec()]);
}

#[tokio::test]
async fn two_writes_with_one_context_both_survive() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    c.put_ok(b"cart", b"base", None).await;
    let (_, ctx) = c.get_one(b"cart").await;

    // Two clients read the same context and both write through the same node.
    c.put_ok(b"cart", b"from-alice", Some(&ctx)).await;
    c.put_ok(b"cart", b"from-bob", Some(&ctx)).await;

    let got = c.get(b"cart").await;
    assert_eq!(
        got.status, 300,
        "two writes with the same context must both survive: {got}"
    );
    assert_eq!(
        got.header("content-type")
            .as_deref()
            .map(|t| t.starts_with("application/json")),
        Some(true),
        "300 is JSON: {got}"
    );
    assert_eq!(
        got.live_values(),
        vec![b"from-alice".to_vec(), b"from-bob".to_vec()],
        "both values, and not the superseded base: {got}"
    );
    let read = got.read_response();
    assert!(read.siblings.iter().all(|s| !s.deleted), "{got}");
    assert!(!read.context.is_empty());
}

#[tokio::test]
async fn two_writes_without_context_both_survive() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    c.put_ok(b"k", b"one", None).await;
    c.put_ok(b"k", b"two", None).await;
    let got = c.get(b"k").await;
    assert_eq!(got.status, 300, "{got}");
    assert_eq!(got.live_values(), vec![b"one".to_vec(), b"two".to_vec()]);
}

#[tokio::test]
async fn write_with_context_of_a_300_read_resolves_siblings() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    c.put_ok(b"k", b"a", None).await;
    c.put_ok(b"k", b"b", None).await;
    c.put_ok(b"k", b"c", None).await;
    let got = c.get(b"k").await;
    assert_eq!(got.status, 300, "{got}");
    assert_eq!(got.live_values().len(), 3, "{got}");
    let ctx = got.read_response().context;
    if let Some(header) = got.context() {
        assert_eq!(
            header, ctx,
            "a 300's header context equals its JSON context"
        );
    }

    c.put_ok(b"k", b"merged", Some(&ctx)).await;
    let (v, _) = c.get_one(b"k").await;
    assert_eq!(v, b"merged");
    let json = c.get_json(b"k").await;
    assert_eq!(json.status, 200, "{json}");
    assert_eq!(json.read_response().siblings.len(), 1, "{json}");
}

#[tokio::test]
async fn accept_json_gets_the_json_form_for_one_value() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    let value = b"\xff\x00binary\x01";
    c.put_ok(b"bin", value, None).await;
    let json = c.get_json(b"bin").await;
    assert_eq!(json.status, 200, "{json}");
    let read = json.read_response();
    assert_eq!(read.siblings.len(), 1, "{json}");
    assert_eq!(
        read.siblings[0].value,
        b64(value),
        "standard padded base64: {json}"
    );
    assert!(!read.siblings[0].deleted);
    assert!(!read.context.is_empty());
}

#[tokio::test]
async fn sibling_values_are_standard_padded_base64() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    // "a" needs padding ("YQ=="); 0xfb 0xff needs the standard (not URL-safe) alphabet ("+/8=").
    c.put_ok(b"k", b"a", None).await;
    c.put_ok(b"k", b"\xfb\xff", None).await;
    let got = c.get(b"k").await;
    assert_eq!(got.status, 300, "{got}");
    let mut encoded: Vec<String> = got
        .read_response()
        .siblings
        .into_iter()
        .map(|s| s.value)
        .collect();
    encoded.sort();
    assert_eq!(encoded, vec!["+/8=".to_owned(), "YQ==".to_owned()], "{got}");
}

#[tokio::test]
async fn empty_value_round_trips() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    c.put_ok(b"empty", b"", None).await;
    let got = c.get(b"empty").await;
    assert_eq!(got.status, 200, "an empty value is a value: {got}");
    assert!(got.body.is_empty(), "{got}");
    assert!(got.context().is_some());
}

#[tokio::test]
async fn keys_are_opaque_bytes_in_one_path_segment() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    let long = vec![b'k'; 1024];
    let keys: Vec<Vec<u8>> = vec![
        b"a/b".to_vec(),
        b"a%2Fb".to_vec(),
        b"\xff\xfe\x00\x01".to_vec(),
        b"with space".to_vec(),
        b"%".to_vec(),
        b"?query&not=param".to_vec(),
        "café".as_bytes().to_vec(),
        b"x".to_vec(),
        long.clone(),
    ];
    for (i, key) in keys.iter().enumerate() {
        c.put_ok(key, format!("value-{i}").as_bytes(), None).await;
    }
    for (i, key) in keys.iter().enumerate() {
        let (v, _) = c.get_one(key).await;
        assert_eq!(
            v,
            format!("value-{i}").as_bytes(),
            "key {:?} read back another key's value",
            String::from_utf8_lossy(key)
        );
    }
    // Only the path segment encoding matters: lowercase hex escapes name the same key.
    let lower = c.request("GET", "/v1/kv/%ff%fe%00%01", &[], None).await;
    assert_eq!(lower.status, 200, "{lower}");
    assert_eq!(lower.body, b"value-2");
    // An unescaped `/` is taken literally (docs/api.md): `/v1/kv/a/b` names the same key as
    // `/v1/kv/a%2Fb`.
    let unescaped = c.request("GET", "/v1/kv/a/b", &[], None).await;
    assert_eq!(unescaped.status, 200, "{unescaped}");
    assert_eq!(unescaped.body, b"value-0");
}

#[tokio::test]
async fn bad_keys_are_400_bad_key() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    let too_long = KvClient::kv_path(&[b'k'; 1025]);
    for method in ["GET", "PUT", "DELETE"] {
        let body = (method == "PUT").then(|| b"v".to_vec());
        let empty = c.request(method, "/v1/kv/", &[], body.clone()).await;
        empty.assert_error(400, codes::BAD_KEY);
        let long = c.request(method, &too_long, &[], body.clone()).await;
        long.assert_error(400, codes::BAD_KEY);
    }
    // Invalid escapes, sent byte for byte (an HTTP library might "fix" them).
    for path in ["/v1/kv/%zz", "/v1/kv/abc%2", "/v1/kv/%g1"] {
        for method in ["GET", "PUT"] {
            let mut conn = RawConn::connect(node.addr()).await;
            let body = if method == "PUT" { "v" } else { "" };
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.send(request.as_bytes()).await.unwrap();
            let resp = conn
                .read_response(Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: no answer ({e:?})"));
            assert_eq!(resp.status, 400, "{method} {path}");
            assert_eq!(resp.error_body().error, codes::BAD_KEY, "{method} {path}");
        }
    }
    // Nothing was stored under the 1025-byte key's 1024-byte prefix.
    let prefix = c.get(&[b'k'; 1024]).await;
    assert_eq!(prefix.status, 404, "{prefix}");
}

#[tokio::test]
async fn query_parameters_are_validated() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    c.put_ok(b"k", b"v", None).await;
    let bad = [
        ("GET", "?foo=1"),
        ("GET", "?w=1"),
        ("GET", "?r=2"),
        ("GET", "?r=0"),
        ("GET", "?r=abc"),
        ("GET", "?r=-1"),
        ("GET", "?timeout_ms=0"),
        ("GET", "?timeout_ms=60001"),
        ("GET", "?timeout_ms=soon"),
        ("PUT", "?r=1"),
        ("PUT", "?w=2"),
        ("PUT", "?w=0"),
        ("PUT", "?w=x"),
        ("PUT", "?timeout_ms=0"),
        ("PUT", "?bogus"),
        ("DELETE", "?r=1"),
        ("DELETE", "?w=2"),
        ("DELETE", "?timeout_ms=100000"),
    ];
    for (method, query) in bad {
        let body = (method == "PUT").then(|| b"changed".to_vec());
        let path = format!("/v1/kv/k{query}");
        let resp = c.request(method, &path, &[], body).await;
        assert_eq!(
            resp.status, 400,
            "{method} {path} must be refused with 400: {resp}"
        );
        assert_eq!(
            resp.error_body().error,
            codes::BAD_PARAMETER,
            "{method} {path}: {resp}"
        );
    }
    // None of the refused writes or deletes took effect.
    let (v, ctx) = c.get_one(b"k").await;
    assert_eq!(v, b"v");

    let good = c
        .request("GET", "/v1/kv/k?r=1&timeout_ms=60000", &[], None)
        .await;
    assert_eq!(good.status, 200, "{good}");
    let good = c
        .request(
            "PUT",
            "/v1/kv/k?w=1&timeout_ms=1",
            &[(CONTEXT_HEADER, &ctx)],
            Some(b"v2".to_vec()),
        )
        .await;
    // timeout_ms=1 is valid; a node this fast may answer 204, a slow one 504.
    assert!(
        good.status == 204 || good.status == 504,
        "timeout_ms=1 is in range: {good}"
    );
    let good = c
        .request(
            "PUT",
            "/v1/kv/k2?w=1&timeout_ms=5000",
            &[],
            Some(b"x".to_vec()),
        )
        .await;
    assert_eq!(good.status, 204, "{good}");
    let good = c.request("DELETE", "/v1/kv/k2?w=1", &[], None).await;
    assert_eq!(good.status, 204, "{good}");
}

fn rewrap(token: &str, edit: impl Fn(&mut Vec<u8>)) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    for engine in [URL_SAFE_NO_PAD, URL_SAFE, STANDARD] {
        if let Ok(mut bytes) = engine.decode(token) {
            edit(&mut bytes);
            return Some(engine.encode(bytes));
        }
    }
    None
}

#[tokio::test]
async fn malformed_contexts_are_400_bad_context() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    c.put_ok(b"k", b"original", None).await;
    let (_, ctx) = c.get_one(b"k").await;

    let mut bad = vec![
        "garbage".to_owned(),
        "!!!not base64!!!".to_owned(),
        "A".to_owned(),
        ctx[..ctx.len() / 2].to_owned(),
    ];
    match rewrap(&ctx, |b| b[0] = b[0].wrapping_add(0x7f)) {
        Some(token) => bad.push(token),
        None => panic!("context {ctx:?} is not base64url as DESIGN §2 says"),
    }
    // An unknown leading version byte.
    if let Some(token) = rewrap(&ctx, |b| b.insert(0, 0xee)) {
        bad.push(token);
    }
    for token in &bad {
        let put = c.put(b"k", b"overwritten", Some(token)).await;
        assert_eq!(put.status, 400, "PUT with context {token:?}: {put}");
        assert_eq!(
            put.error_body().error,
            codes::BAD_CONTEXT,
            "PUT with context {token:?}: {put}"
        );
        let del = c.delete(b"k", Some(token)).await;
        assert_eq!(del.status, 400, "DELETE with context {token:?}: {del}");
        assert_eq!(
            del.error_body().error,
            codes::BAD_CONTEXT,
            "DELETE {token:?}"
        );
    }
    let (v, _) = c.get_one(b"k").await;
    assert_eq!(v, b"original", "refused writes must not be stored");
}

#[tokio::test]
async fn context_of_another_key_is_400_bad_context() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    c.put_ok(b"alpha", b"a", None).await;
    c.put_ok(b"beta", b"b", None).await;
    let (_, alpha_ctx) = c.get_one(b"alpha").await;

    let put = c.put(b"beta", b"stolen", Some(&alpha_ctx)).await;
    put.assert_error(400, codes::BAD_CONTEXT);
    let del = c.delete(b"beta", Some(&alpha_ctx)).await;
    del.assert_error(400, codes::BAD_CONTEXT);
    // Also for a key that does not exist yet.
    let fresh = c.put(b"gamma", b"g", Some(&alpha_ctx)).await;
    fresh.assert_error(400, codes::BAD_CONTEXT);

    let (v, _) = c.get_one(b"beta").await;
    assert_eq!(v, b"b");
    assert_eq!(c.get(b"gamma").await.status, 404);
}

#[tokio::test]
async fn sibling_cap_refuses_with_409_and_a_resolving_context() {
    let node = NodeProcess::start(&["--max-siblings", "4"]);
    let c = node.client();
    for i in 0..4 {
        c.put_ok(b"hot", format!("s{i}").as_bytes(), None).await;
    }
    let got = c.get(b"hot").await;
    assert_eq!(got.status, 300, "{got}");
    assert_eq!(got.live_values().len(), 4, "{got}");

    let refused = c.put(b"hot", b"s4", None).await;
    let body = refused.assert_error(409, codes::TOO_MANY_SIBLINGS);
    let ctx = body
        .context
        .unwrap_or_else(|| panic!("409 must carry the current context in JSON: {refused}"));
    assert!(!ctx.is_empty());

    // The refused write was not stored.
    let got = c.get(b"hot").await;
    assert_eq!(got.status, 300, "{got}");
    assert_eq!(got.live_values().len(), 4, "{got}");
    assert!(!got.live_values().contains(&b"s4".to_vec()));

    // Writing with the 409's context resolves the key.
    c.put_ok(b"hot", b"resolved", Some(&ctx)).await;
    let (v, _) = c.get_one(b"hot").await;
    assert_eq!(v, b"resolved");

    let metrics = c.metrics().await;
    let rejections = kvcluster_tests::metric_sum(&metrics, "kv_sibling_cap_rejections_total", &[])
        .unwrap_or_else(|| panic!("no kv_sibling_cap_rejections_total in\n{metrics}"));
    assert!(rejections >= 1.0, "rejections = {rejections}");
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    for (method, path) in [
        ("POST", "/v1/kv/x"),
        ("PATCH", "/v1/kv/x"),
        ("POST", "/health/live"),
    ] {
        let resp = c.request(method, path, &[], Some(b"body".to_vec())).await;
        resp.assert_error(405, codes::METHOD_NOT_ALLOWED);
        let allow = resp
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: 405 without Allow header: {resp}"));
        if path.starts_with("/v1/kv/") {
            for m in ["GET", "PUT", "DELETE"] {
                assert!(
                    allow.contains(m),
                    "{method} {path}: Allow {allow:?} lacks {m}"
                );
            }
        } else {
            assert!(allow.contains("GET"), "{method} {path}: Allow {allow:?}");
        }
    }
    assert_eq!(
        c.get(b"x").await.status,
        404,
        "a refused POST stored nothing"
    );
}

#[tokio::test]
async fn unknown_route_is_404_json() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    for path in ["/", "/nope", "/v2/kv/x", "/health"] {
        let resp = c.request("GET", path, &[], None).await;
        assert_eq!(resp.status, 404, "GET {path}: {resp}");
        let body = resp.error_body();
        assert!(!body.error.is_empty(), "GET {path}: {resp}");
    }
}

#[tokio::test]
async fn health_endpoints_answer_200() {
    let node = NodeProcess::start(&[]);
    let c = node.client();
    let live = c.request("GET", "/health/live", &[], None).await;
    assert_eq!(live.status, 200, "{live}");
    let ready = c.request("GET", "/health/ready", &[], None).await;
    assert_eq!(
        ready.status, 200,
        "ready once the listening line is printed: {ready}"
    );
}

#[tokio::test]
async fn peer_messages_of_an_unknown_version_are_refused_clearly() {
    use kvnode::rpc::{self, RequestBody, ResponseBody, RpcRequest, RpcResponse};
    let node = NodeProcess::start(&[]);
    let c = KvClient::new(&format!("http://{}", node.peer_addr()));
    let ping = rpc::encode(&RpcRequest {
        cluster: "local".into(),
        epoch: 0,
        sender: "a-test".into(),
        body: RequestBody::Ping,
    });
    let answered = c
        .request("POST", rpc::RPC_PATH, &[], Some(ping.clone()))
        .await;
    assert_eq!(answered.status, 200, "{answered}");
    let pong: RpcResponse = rpc::decode(&answered.body).unwrap();
    assert!(matches!(pong.body, ResponseBody::Pong), "{pong:?}");

    let mut future = ping;
    future[0] = rpc::RPC_VERSION + 98;
    let refused = c.request("POST", rpc::RPC_PATH, &[], Some(future)).await;
    let body = refused.assert_error(400, codes::BAD_RPC);
    assert!(
        body.message.contains(&format!(
            "unsupported message version {}",
            rpc::RPC_VERSION + 98
        )),
        "{refused}"
    );
    let garbage = c
        .request(
            "POST",
            rpc::RPC_PATH,
            &[],
            Some(vec![rpc::RPC_VERSION, 0xff, 0xff]),
        )
        .await;
    garbage.assert_error(400, codes::BAD_RPC);
    node.client().put_ok(b"still-serving", b"yes", None).await;
}
