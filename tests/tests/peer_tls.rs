//! The peer port and TLS against real `kvnode` processes: peer RPC only on the peer port, mutual TLS
//! between peers (no certificate or a foreign CA's is refused at the handshake; a cluster with mTLS
//! replicates; rotated certificates are used by new connections), TLS on the client port with its
//! handshake deadline, and the refusal to run exposed without a guard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvcluster_tests::kvapi::{ClusterConfig, Member};
use kvcluster_tests::tls::{self, Identity, Pki};
use kvcluster_tests::{
    Cluster, ClusterOptions, KvClient, NodeBuilder, NodeProcess, RawConn, free_ports, kvnode_bin,
};
use kvnode::rpc::{self, RequestBody, RpcRequest};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;

const H2: &[&[u8]] = &[b"h2"];

/// A Ping from `sender` of cluster `test`, encoded.
fn ping() -> Vec<u8> {
    rpc::encode(&RpcRequest {
        cluster: "test".into(),
        epoch: 1,
        sender: "kv-0".into(),
        body: RequestBody::Ping,
    })
}

/// A lone node with peer TLS files of `pki` for 127.0.0.1; returns it and its identity.
fn node_with_peer_tls(pki: &Pki) -> (NodeProcess, Identity) {
    let identity = pki.issue("kv-0", "127.0.0.1");
    let node = NodeBuilder::new().args(identity.peer_args(pki)).start();
    (node, identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_answers_404_for_peer_rpc() {
    let node = NodeProcess::start(&[]);
    let on_client_port = node
        .client()
        .request("POST", rpc::RPC_PATH, &[], Some(ping()))
        .await;
    on_client_port.assert_error(404, "not_found");
    let peer_port = KvClient::new(&format!("http://{}", node.peer_addr()));
    let answered = peer_port
        .request("POST", rpc::RPC_PATH, &[], Some(ping()))
        .await;
    assert_eq!(answered.status, 200, "the peer port serves it: {answered}");
    let kv_on_peer_port = peer_port.request("GET", "/v1/kv/k", &[], None).await;
    kv_on_peer_port.assert_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_client_certificate_is_refused_at_the_handshake() {
    let pki = Pki::new("cluster CA");
    let (node, _) = node_with_peer_tls(&pki);
    let anonymous = pki.client_config(None, H2);
    let refused = tls::handshake(node.peer_addr(), anonymous, "127.0.0.1").await;
    let error = refused.expect_err("a client without a certificate completed the handshake");
    eprintln!("no client certificate: {error}");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );

    // Plain HTTP to the TLS peer port gets no answer either.
    let plain = KvClient::with_timeout(
        &format!("http://{}", node.peer_addr()),
        Duration::from_secs(5),
    );
    let outcome = plain
        .try_request("POST", rpc::RPC_PATH, &[], Some(ping()))
        .await;
    assert!(outcome.is_err(), "plain HTTP was answered: {outcome:?}");

    // The control: a certificate of the cluster CA is accepted and its Ping answered.
    let member = pki.issue("kv-9", "127.0.0.1");
    let config = pki.client_config(Some(&member), H2);
    tls::handshake(node.peer_addr(), config.clone(), "127.0.0.1")
        .await
        .expect("a certificate of the cluster CA is accepted");
    let stream = tls::connect(node.peer_addr(), config, "127.0.0.1")
        .await
        .unwrap();
    let uri = format!("https://127.0.0.1{}", rpc::RPC_PATH);
    let (status, _) = tls::request(stream, "POST", &uri, ping()).await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_peer_mtls_replicates_to_every_replica() {
    let pki = Arc::new(Pki::new("cluster CA"));
    let cluster = Cluster::start_with(ClusterOptions::new(3, 3, 3, 1).with_peer_tls(pki)).await;
    assert!(
        cluster.wait_all_peers_alive(Duration::from_secs(10)).await,
        "peers see each other over mutual TLS"
    );
    for i in 0..20 {
        let key = format!("mtls-{i}");
        let resp = cluster
            .client(i % 3)
            .put_with_query(key.as_bytes(), b"over mTLS", "?w=3")
            .await;
        assert_eq!(resp.status, 204, "W=3 write of {key}: {resp}");
        for reader in 0..3 {
            let read = cluster
                .client(reader)
                .get_with_query(key.as_bytes(), "?r=3")
                .await;
            assert_eq!(read.status, 200, "kv-{reader} reads {key}: {read}");
            assert_eq!(read.body, b"over mTLS");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_foreign_ca_cannot_join_read_or_write() {
    let pki = Arc::new(Pki::new("cluster CA"));
    let foreign = Pki::new("foreign CA");
    let cluster =
        Cluster::start_with(ClusterOptions::new(3, 3, 2, 2).with_peer_tls(pki.clone())).await;
    cluster
        .client(0)
        .put_ok(b"guarded", b"original", None)
        .await;

    // A real replica write, signed by another CA: refused at the handshake, nothing changes.
    let intruder = foreign.issue("kv-0", "127.0.0.1");
    let config = pki.client_config(Some(&intruder), H2);
    let target: SocketAddr = cluster.member(1).peer_address.parse().unwrap();
    let refused = tls::handshake(target, config.clone(), "127.0.0.1").await;
    let error = refused.expect_err("a foreign CA's certificate completed the handshake");
    eprintln!("foreign client certificate: {error}");
    let partition = kvnode::ring::partition_of(b"guarded", 256);
    let forged = rpc::encode(&RpcRequest {
        cluster: "test".into(),
        epoch: 1,
        sender: "kv-0".into(),
        body: RequestBody::Merge {
            partition,
            key: b"guarded".to_vec(),
            set: kvnode::causality::SiblingSet::default(),
        },
    });
    if let Ok(stream) = tls::connect(target, config, "127.0.0.1").await {
        let uri = format!("https://127.0.0.1{}", rpc::RPC_PATH);
        let sent = tls::request(stream, "POST", &uri, forged).await;
        assert!(
            sent.is_err(),
            "a foreign peer's Merge was answered: {sent:?}"
        );
    }

    // A fourth node with a foreign certificate: no member accepts it and it accepts no member, so
    // it can neither read nor write through them.
    let (outsider_node, _config_dir) = {
        let i = cluster.len();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("cluster.json");
        std::fs::write(&config_path, serde_json::to_vec(cluster.config()).unwrap()).unwrap();
        let identity = foreign.issue(&format!("kv-{i}"), "127.0.0.1");
        let mut args = identity.peer_args(&foreign);
        args.extend([
            "--node-id".to_string(),
            format!("kv-{i}"),
            "--cluster-config".to_string(),
            config_path.display().to_string(),
            "--context-key-file".to_string(),
            cluster.context_key_path().display().to_string(),
        ]);
        (NodeBuilder::new().args(args).start(), dir)
    };
    let outsider = outsider_node.client();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = outsider.admin_status().await;
    assert!(
        status.peers.iter().all(|p| !p.alive),
        "the outsider reached a member: {:?}",
        status.peers
    );
    let read = outsider.get(b"guarded").await;
    assert!(
        read.status >= 500,
        "the outsider read through the members: {read}"
    );
    let write = outsider.put(b"guarded", b"overwritten", None).await;
    assert!(
        write.status >= 500,
        "the outsider wrote through the members: {write}"
    );

    for i in 0..3 {
        let resp = cluster.client(i).get_with_query(b"guarded", "?r=3").await;
        assert_eq!(resp.status, 200, "kv-{i}: {resp}");
        assert_eq!(
            resp.body, b"original",
            "kv-{i} holds what the cluster wrote"
        );
    }
}

/// A fake member's peer port: requires a client certificate of `pki`'s CA and records the leaf
/// certificate of every client that completes a handshake, then closes the connection.
async fn recording_peer(pki: &Pki) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let identity = pki.issue("kv-fake", "127.0.0.1");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&identity.key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain(), key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            if let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(2), acceptor.accept(tcp)).await
                && let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first())
            {
                record.lock().unwrap().push(leaf.to_vec());
            }
        }
    });
    (addr, seen)
}

/// The leaf certificate a server at `addr` presents to a new connection.
async fn presented_certificate(addr: SocketAddr, pki: &Pki, client: &Identity) -> Vec<u8> {
    let config = pki.client_config(Some(client), H2);
    let stream = tls::connect(addr, config, "127.0.0.1").await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_peer_certificates_are_used_by_new_connections() {
    let pki = Pki::new("cluster CA");
    let (fake_addr, seen) = recording_peer(&pki).await;
    let ports = free_ports(2);
    let me = Member {
        id: "kv-0".into(),
        address: format!("127.0.0.1:{}", ports[0]),
        peer_address: format!("127.0.0.1:{}", ports[1]),
    };
    let config = ClusterConfig {
        cluster: "test".into(),
        epoch: 1,
        members: vec![
            me.clone(),
            Member {
                id: "kv-fake".into(),
                address: "127.0.0.1:1".into(),
                peer_address: fake_addr.to_string(),
            },
        ],
        n: 1,
        w: 1,
        r: 1,
        partitions: 256,
        vnodes: 64,
        sloppy_quorum: true,
        transition_from: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("cluster.json");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let identity = pki.issue("kv-0", "127.0.0.1");
    let mut args = identity.peer_args(&pki);
    args.extend([
        "--node-id".into(),
        "kv-0".into(),
        "--listen".into(),
        me.address.clone(),
        "--peer-listen".into(),
        me.peer_address.clone(),
        "--cluster-config".into(),
        config_path.display().to_string(),
        "--context-key-file".into(),
        kvcluster_tests::write_context_key(dir.path()),
    ]);
    let node = NodeBuilder::new().without_listen().args(args).start();
    let observer = pki.issue("observer", "127.0.0.1");

    let old = identity.chain()[0].to_vec();
    assert_eq!(
        presented_certificate(node.peer_addr(), &pki, &observer).await,
        old
    );
    let saw = |cert: &[u8]| seen.lock().unwrap().iter().any(|c| c == cert);
    wait_until(Duration::from_secs(10), || saw(&old)).await;

    let rotated = pki.issue("kv-0", "127.0.0.1");
    let new = rotated.chain()[0].to_vec();
    assert_ne!(old, new);
    let t0 = Instant::now();
    identity.overwrite_with(&rotated);
    wait_until(Duration::from_secs(10), || saw(&new)).await;
    eprintln!(
        "the node's outgoing connections present the new certificate after {:?}",
        t0.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented_certificate(node.peer_addr(), &pki, &observer).await != new {
        assert!(
            Instant::now() < deadline,
            "the peer port still presents the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the peer port presents the new certificate after {:?}",
        t0.elapsed()
    );
}

async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "not done within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node whose client port speaks TLS with a certificate of `pki` for 127.0.0.1.
fn node_with_client_tls(pki: &Pki, extra: &[&str]) -> NodeProcess {
    let identity = pki.issue("kv-0", "127.0.0.1");
    NodeBuilder::new()
        .args(identity.client_port_args())
        .args(extra.iter().copied())
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_serves_https_over_http1_and_http2_and_refuses_plain_http() {
    let pki = Pki::new("client CA");
    let node = node_with_client_tls(&pki, &[]);
    assert!(
        node.base_url().starts_with("https://"),
        "{}",
        node.base_url()
    );
    for (alpn, key) in [(&b"http/1.1"[..], "one"), (&b"h2"[..], "two")] {
        let config = pki.client_config(None, &[alpn]);
        let uri = format!("https://127.0.0.1/v1/kv/{key}");
        let stream = tls::connect(node.addr(), config.clone(), "127.0.0.1")
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
        let (status, _) = tls::request(stream, "PUT", &uri, b"secret".to_vec())
            .await
            .unwrap();
        assert_eq!(status, 204);
        let stream = tls::connect(node.addr(), config, "127.0.0.1")
            .await
            .unwrap();
        let (status, body) = tls::request(stream, "GET", &uri, Vec::new()).await.unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"secret"[..]));
    }
    let plain = KvClient::with_timeout(&format!("http://{}", node.addr()), Duration::from_secs(5));
    let outcome = plain.try_request("GET", "/v1/kv/one", &[], None).await;
    assert!(outcome.is_err(), "plain HTTP was answered: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_gives_its_slot_back_at_the_handshake_deadline() {
    let pki = Pki::new("client CA");
    let node = node_with_client_tls(
        &pki,
        &[
            "--max-connections",
            "1",
            "--header-read-timeout",
            "1s",
            "--idle-timeout",
            "60s",
        ],
    );
    let silent = RawConn::connect(node.addr()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    let config = pki.client_config(None, &[&b"http/1.1"[..]]);
    let stream = tls::connect(node.addr(), config, "127.0.0.1")
        .await
        .expect("served once the silent connection lost its slot");
    let uri = "https://127.0.0.1/health/live";
    let (status, _) = tls::request(stream, "GET", uri, Vec::new()).await.unwrap();
    let waited = t0.elapsed();
    eprintln!("a second client was served {waited:?} after a silent one took the only slot");
    assert_eq!(status, 200);
    assert!(
        waited >= Duration::from_millis(700),
        "served before the deadline: the cap is not in force ({waited:?})"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_header_and_idle_timeouts_close_connections() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let pki = Pki::new("client CA");
    let node = node_with_client_tls(
        &pki,
        &["--header-read-timeout", "1s", "--idle-timeout", "1s"],
    );
    let config = pki.client_config(None, &[&b"http/1.1"[..]]);
    let mut partial = tls::connect(node.addr(), config.clone(), "127.0.0.1")
        .await
        .unwrap();
    partial
        .write_all(b"GET /v1/kv/k HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = tls::connect(node.addr(), config, "127.0.0.1")
        .await
        .unwrap();
    for (what, stream) in [("partial head", &mut partial), ("idle", &mut idle)] {
        let t0 = Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "{what} connection still open after 5 s");
        eprintln!("{what} TLS connection closed after {:?}", t0.elapsed());
    }
}

#[tokio::test]
async fn an_exposed_node_without_a_guard_refuses_to_start_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(kvnode_bin())
        .args([
            "--listen",
            "0.0.0.0:0",
            "--peer-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("KVNODE_INSECURE")
        .env_remove("KVNODE_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvnode started on 0.0.0.0 with no admin token, no peer TLS and no --insecure");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started exposed: {stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0") && stderr.contains("--insecure"),
        "{stderr}"
    );
    for insecure in [
        NodeBuilder::new().args(["--insecure"]),
        NodeBuilder::new().env("KVNODE_INSECURE", "true"),
    ] {
        let node = insecure
            .without_listen()
            .args(["--listen", "0.0.0.0:0", "--peer-listen", "127.0.0.1:0"])
            .start();
        let local = KvClient::new(&format!("http://127.0.0.1:{}", node.addr().port()));
        let ready = local.request("GET", "/health/ready", &[], None).await;
        assert_eq!(ready.status, 200, "{ready}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_speaks_https_with_the_cluster_ca_and_a_token() {
    let pki = Pki::new("client CA");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("write.token");
    std::fs::write(&token_file, "wrt-e2e-1\n").unwrap();
    let node = node_with_client_tls(&pki, &["--write-token-file", token_file.to_str().unwrap()]);
    let endpoint = node.base_url();
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = kvcluster_tests::kvctl(&endpoint, args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(&[
        "--cacert",
        ca,
        "--token",
        "wrt-e2e-1",
        "put",
        "k",
        "over-tls",
    ]);
    assert!(ok, "put over https: {err}");
    let (ok, out, err) = run(&["--cacert", ca, "--token", "wrt-e2e-1", "get", "k"]);
    assert!(ok, "get over https: {err}");
    assert_eq!(out.trim(), "over-tls");
    // Without the CA the server's certificate is not trusted; without the token the node refuses.
    let (ok, _, err) = run(&["--token", "wrt-e2e-1", "get", "k"]);
    assert!(!ok, "a certificate of an unknown CA was trusted: {err}");
    let (ok, _, err) = run(&["--cacert", ca, "get", "k"]);
    assert!(!ok && err.contains("requires a token"), "{err}");
}
