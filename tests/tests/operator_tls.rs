//! The operator secures a cluster from `spec.tls` and `spec.auth`, against a real kube-apiserver
//! and real `kvnode` processes: this test plays the StatefulSet controller, the kubelets (each
//! node starts from the pod template's environment and volumes, see `kubelet.rs`) and cert-manager
//! (it signs the `Certificate` the operator asks for, with a test CA).
//!
//! The cluster: 3 pods, peer mTLS from a cert-manager issuer, client-port TLS from a Secret of the
//! user's, admin, read and write tokens, `/metrics` behind a token. It must settle (so the operator
//! reached every node over https with the admin token), take a write that needs every replica over
//! peer mTLS, and refuse what the tokens and TLS forbid. A second cluster naming a Secret without
//! the opt-in label gets no StatefulSet until the label is added. Placement, default resources and
//! node settings from the spec reach the pods the API server admits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kvcluster_tests::kube::{ControlPlane, OperatorProcess, eventually, repo_path};
use kvcluster_tests::tls::{self, Identity, Pki};
use kvcluster_tests::{NodeProcess, free_ports, kubelet};
use kvoperator::builders::certificate;
use kvoperator::crd::{KVCluster, SECRET_OPT_IN_LABEL};
use serde_json::json;

const NS: &str = "kv-tls";
const NAME: &str = "secure";
const PODS: usize = 3;
/// Longest wait for the cluster to settle, or for the operator to act.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);
const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "read-token-0123456789";
const WRITER: &str = "write-token-0123456789";

fn secret(name: &str, labelled: bool, data: &[(&str, Vec<u8>)]) -> Secret {
    let labels = labelled.then(|| BTreeMap::from([(SECRET_OPT_IN_LABEL.into(), "true".into())]));
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels,
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_string(), k8s_openapi::ByteString(v.clone())))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn tls_data(pki: &Pki, id: &Identity) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("tls.crt", std::fs::read(&id.cert).unwrap()),
        ("tls.key", std::fs::read(&id.key).unwrap()),
        ("ca.crt", std::fs::read(pki.ca()).unwrap()),
    ]
}

/// The HTTP status of a refusal (`None` for a success or no answer).
fn refused<T>(result: Result<T, kvclient::Error>) -> Option<u16> {
    result.err().and_then(|e| e.status())
}

/// Starts every pod of the StatefulSet `NAME` as the kubelets would, and marks each Ready once its
/// node answers `/health/ready` over https.
async fn run_pods(client: &Client, ports: &[u16], dir: &Path, ca: &[u8]) -> Vec<NodeProcess> {
    let sts = eventually("the StatefulSet", STEP_TIMEOUT, || async {
        Api::<StatefulSet>::namespaced(client.clone(), NS)
            .get_opt(NAME)
            .await
            .unwrap()
    })
    .await;
    let mut nodes = Vec::new();
    for i in 0..PODS {
        let pod = format!("{NAME}-{i}");
        kubelet::create_pod(client, &sts, i as u32).await;
        let builder = kubelet::node_from_template(client, &sts, &pod, dir)
            .await
            .args([
                "--listen".to_string(),
                format!("127.0.0.1:{}", ports[i]),
                "--peer-listen".to_string(),
                format!("127.0.0.1:{}", ports[PODS + i]),
                "--cache-size".to_string(),
                "16MiB".to_string(),
            ]);
        let node = tokio::task::block_in_place(|| builder.start());
        assert!(
            node.base_url().starts_with("https://"),
            "{pod} serves https"
        );
        let probe = kvclient::Client::builder(&node.base_url())
            .ca_cert_pem(ca.to_vec())
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        eventually(&format!("{pod} ready"), STEP_TIMEOUT, || async {
            probe.admin_get(kvapi::HEALTH_READY).await.ok()
        })
        .await;
        kubelet::mark_ready(client, NS, &pod).await;
        nodes.push(node);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_runs_a_cluster_with_tls_and_tokens_and_uses_only_opted_in_secrets() {
    let Some(plane) = ControlPlane::start("operator_tls").await else {
        return;
    };
    plane.install_kvcluster_crd().await;
    plane
        .install_crd(&repo_path("tests/fixtures/certificate-crd.yaml"))
        .await;
    let admin = plane.client();
    plane.create_restricted_namespace(NS).await;
    // The operator's RBAC as shipped: the ClusterRole, and the Secret reader bound in NS only.
    let sa_kubeconfig = plane
        .operator_identity(&kvoperator::rbac::cluster_role())
        .await;
    plane
        .grant_secret_reader(&kvoperator::rbac::secret_reader_role(), NS)
        .await;

    // The pods' addresses: loopback ports in place of their DNS names.
    let ports = free_ports(2 * PODS);
    let overrides: HashMap<String, serde_json::Value> = (0..PODS)
        .map(|i| {
            let addresses = json!({
                "address": format!("127.0.0.1:{}", ports[i]),
                "peer_address": format!("127.0.0.1:{}", ports[PODS + i]),
            });
            (format!("{NS}/{NAME}-{i}"), addresses)
        })
        .collect();
    let overrides_path = plane.dir().join("node-addresses.json");
    std::fs::write(&overrides_path, serde_json::to_vec(&overrides).unwrap()).unwrap();

    // The user's Secrets: the client port's certificate and the three tokens, all opted in, and one
    // unrelated Secret without the label. Certificates name 127.0.0.1, where the pods listen here.
    let pki = Pki::new("operator-tls");
    let client_cert = pki.issue("client-port", "127.0.0.1");
    let secrets = Api::<Secret>::namespaced(admin.clone(), NS);
    for s in [
        secret("client-certs", true, &tls_data(&pki, &client_cert)),
        secret(
            "admin",
            true,
            &[("token", format!("{ADMIN}\n").into_bytes())],
        ),
        secret("readers", true, &[("token", READER.as_bytes().to_vec())]),
        secret("writers", true, &[("token", WRITER.as_bytes().to_vec())]),
        secret("db-password", false, &[("token", b"hunter2".to_vec())]),
    ] {
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }

    let priority: k8s_openapi::api::scheduling::v1::PriorityClass = serde_json::from_value(json!({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "kv-critical"}, "value": 1000000
    }))
    .unwrap();
    Api::<k8s_openapi::api::scheduling::v1::PriorityClass>::all(admin.clone())
        .create(&PostParams::default(), &priority)
        .await
        .unwrap();
    let mut operator = OperatorProcess::start(
        &sa_kubeconfig,
        &format!("kvoperator-tls-{}", std::process::id()),
        &[
            "--leader-election",
            "false",
            "--listen",
            "127.0.0.1:0",
            "--node-address-override-file",
            overrides_path.to_str().unwrap(),
            "--progress-interval",
            "1s",
            "--admin-timeout",
            "2s",
        ],
        &plane.dir().join("operator.log"),
    );

    let kvcs: Api<KVCluster> = Api::namespaced(admin.clone(), NS);
    let resource: KVCluster = serde_json::from_value(json!({
        "apiVersion": "kvcluster.io/v1alpha1", "kind": "KVCluster",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"replicas": PODS, "replicationFactor": 3, "writeQuorum": 2, "readQuorum": 2,
                 "image": "kvnode:test", "storage": {"size": "1Gi"}, "cacheSize": "16Mi",
                 "tls": {"peer": {"issuerRef": {"name": "test-ca"}},
                         "client": {"secretName": "client-certs"}},
                 "placement": {"nodeSelector": {"kubernetes.io/os": "linux"},
                               "tolerations": [{"key": "dedicated", "operator": "Equal",
                                                "value": "storage", "effect": "NoSchedule"}],
                               "priorityClassName": "kv-critical"},
                 "nodeSettings": {"antiEntropyPace": "10ms", "tombstoneGrace": "2h"},
                 "auth": {"adminTokenSecretRef": {"name": "admin"},
                          "readTokenSecretRef": {"name": "readers"},
                          "writeTokenSecretRef": {"name": "writers"},
                          "metricsNeedToken": true}}
    }))
    .unwrap();
    kvcs.create(&PostParams::default(), &resource)
        .await
        .unwrap();

    // cert-manager's part: the operator asks for the peer certificate; sign it into its Secret.
    let certificates =
        Api::<DynamicObject>::namespaced_with(admin.clone(), NS, &certificate::api_resource());
    let cert_name = format!("{NAME}-peer-tls");
    let requested = eventually("the peer Certificate", STEP_TIMEOUT, || async {
        certificates.get_opt(&cert_name).await.unwrap()
    })
    .await;
    let spec = &requested.data["spec"];
    assert_eq!(spec["secretName"], cert_name.as_str());
    assert_eq!(spec["issuerRef"]["name"], "test-ca");
    assert_eq!(spec["issuerRef"]["kind"], "Issuer");
    let names: Vec<&str> = spec["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(names.contains(&"*.secure-headless.kv-tls.svc"), "{names:?}");
    assert!(
        spec["usages"]
            .as_array()
            .unwrap()
            .contains(&json!("client auth"))
    );
    assert!(
        certificates
            .get_opt(&format!("{NAME}-client-tls"))
            .await
            .unwrap()
            .is_none(),
        "the client port uses the user's Secret: no Certificate"
    );
    let template_labels: BTreeMap<String, String> =
        serde_json::from_value(spec["secretTemplate"]["labels"].clone()).unwrap();
    let peer_identity = pki.issue("peers", "127.0.0.1");
    let mut issued = secret(&cert_name, false, &tls_data(&pki, &peer_identity));
    issued.metadata.labels = Some(template_labels);
    secrets
        .create(&PostParams::default(), &issued)
        .await
        .unwrap();

    // The kubelets' part.
    let ca = std::fs::read(pki.ca()).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("kvcluster-kubelets-")
        .tempdir()
        .unwrap();
    let nodes = run_pods(&admin, &ports, dir.path(), &ca).await;

    // Settled: the operator read every node's status and pushed the ring, over https with the token.
    let t0 = Instant::now();
    let settled = eventually("the cluster settled", STEP_TIMEOUT, || async {
        let kvc = kvcs.get(NAME).await.unwrap();
        let status = kvc.status.clone()?;
        let condition = |t: &str| {
            status
                .conditions
                .iter()
                .any(|c| c.type_ == t && c.status == "True")
        };
        (status.members.len() == PODS && condition("Available") && condition("RingSettled"))
            .then_some(status)
    })
    .await;
    eprintln!(
        "settled at epoch {} after {:?}",
        settled.ring_epoch,
        t0.elapsed()
    );
    assert!(operator.is_running(), "{}", operator.log_tail(40));
    let sts = Api::<StatefulSet>::namespaced(admin.clone(), NS)
        .get(NAME)
        .await
        .unwrap();
    let pod_spec = sts.spec.template.spec.unwrap();
    // Placement, sizing and node settings reach the pods (made through the API server, which checks
    // the priority class exists).
    assert_eq!(pod_spec.priority_class_name.as_deref(), Some("kv-critical"));
    assert_eq!(pod_spec.tolerations.as_ref().map(Vec::len), Some(1));
    let resources = pod_spec.containers[0].resources.clone().unwrap();
    assert!(
        resources.limits.is_some() && resources.requests == resources.limits,
        "Guaranteed QoS by default: {resources:?}"
    );
    let env = pod_spec.containers[0].env.clone().unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(value("KVNODE_ANTI_ENTROPY_PACE").as_deref(), Some("10ms"));
    assert_eq!(value("KVNODE_ROCKSDB_MEMORY").as_deref(), Some("262144KiB"));
    assert!(
        !env.iter().any(|e| e.name == "KVNODE_INSECURE"),
        "a cluster with peer TLS and an admin token runs without --insecure"
    );

    // What the tokens and TLS allow and forbid, on a real node.
    let https = |token: Option<&str>, i: usize| {
        let mut b = kvclient::Client::builder(&nodes[i].base_url())
            .ca_cert_pem(ca.clone())
            .timeout(Duration::from_secs(5));
        if let Some(t) = token {
            b = b.token(t);
        }
        b.build().unwrap()
    };
    let put = kvclient::WriteOptions {
        w: Some(3),
        ..Default::default()
    };
    // Every replica acknowledges: the peers talk over mTLS with the issued certificate.
    https(Some(WRITER), 0)
        .put(b"k", b"v".to_vec(), None, &put)
        .await
        .expect("a write with the write token, acknowledged by all 3 replicas");
    let read = https(Some(READER), 2)
        .get(b"k", &kvclient::ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        read.live().map(|s| s.value.clone()).collect::<Vec<_>>(),
        [b"v".to_vec()]
    );
    assert_eq!(
        refused(
            https(Some(READER), 1)
                .put(b"k", b"x".to_vec(), None, &put)
                .await
        ),
        Some(403),
        "a read token cannot write"
    );
    assert_eq!(
        refused(https(None, 1).get(b"k", &Default::default()).await),
        Some(401)
    );
    assert_eq!(refused(https(None, 1).status().await), Some(401));
    assert_eq!(
        refused(https(Some(WRITER), 1).status().await),
        Some(403),
        "a data token is no admin token"
    );
    assert_eq!(
        refused(https(None, 1).admin_get(kvapi::METRICS).await),
        Some(401),
        "metricsNeedToken"
    );
    https(Some(READER), 1)
        .admin_get(kvapi::METRICS)
        .await
        .expect("metrics with the read token");
    // Plain http gets no answer from a TLS port, and a peer without a certificate no handshake.
    let plain = kvclient::Client::with_timeout(
        &format!("http://{}", nodes[0].addr()),
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(plain.admin_get(kvapi::HEALTH_LIVE).await.is_err());
    let no_cert = pki.client_config(None, &[b"h2"]);
    assert!(
        tls::handshake(nodes[0].peer_addr(), no_cert, "127.0.0.1")
            .await
            .is_err(),
        "the peer port demands a certificate"
    );

    // A cluster naming a Secret without the opt-in label: nothing is applied for it.
    let mut other = resource.clone();
    other.metadata = ObjectMeta {
        name: Some("other".into()),
        namespace: Some(NS.into()),
        ..ObjectMeta::default()
    };
    other.spec.tls = Default::default();
    other.spec.auth = Default::default();
    other.spec.auth.read_token_secret_ref = Some(kvoperator::crd::SecretKeyRef {
        name: "db-password".into(),
        key: "token".into(),
    });
    kvcs.create(&PostParams::default(), &other).await.unwrap();
    let statefulsets = Api::<StatefulSet>::namespaced(admin.clone(), NS);
    eventually(
        "the operator refusing db-password",
        STEP_TIMEOUT,
        || async {
            operator
                .log()
                .contains(
                    "db-password (read token) lacks the label kvcluster.io/operator-access=true",
                )
                .then_some(())
        },
    )
    .await;
    assert!(
        statefulsets.get_opt("other").await.unwrap().is_none(),
        "a StatefulSet mounting an unlabelled Secret was applied"
    );
    // The label is the only obstacle: with it, the cluster is built.
    let label = json!({"metadata": {"labels": {SECRET_OPT_IN_LABEL: "true"}}});
    secrets
        .patch(
            "db-password",
            &PatchParams::default(),
            &Patch::Merge(&label),
        )
        .await
        .unwrap();
    let built = eventually("the StatefulSet of other", STEP_TIMEOUT, || async {
        statefulsets.get_opt("other").await.unwrap()
    })
    .await;
    assert_eq!(built.name_any(), "other");

    operator.stop();
    drop(nodes);
}
