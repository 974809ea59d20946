//! Scheduled backups, retention and `spec.restoreFrom` on a real kube-apiserver, with real
//! `kvnode` processes started from the pod template (this test plays the StatefulSet controller
//! and the kubelets, see `kubelet.rs`) and a real S3-compatible server (`s3s-fs`).
//!
//! - Cluster `source` (3 pods) backs up every few seconds into `s3://backups/source` with the key
//!   of an opted-in Secret (the nodes get its two keys as variables, the operator reads it to write
//!   manifests); with retention 2, older backups are deleted, with events.
//! - Cluster `copy` (2 pods) names the last backup in `restoreFrom`: once its ring settles, the
//!   operator restores it once, and every key written into `source` reads back from `copy`.
//! - Cluster `refused` names a credentials Secret without the opt-in label: no StatefulSet, and
//!   `status.backup.lastFailure` says why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kvbackup::target::{Credentials, S3Settings};
use kvcluster_tests::kube::{ControlPlane, OperatorProcess, eventually};
use kvcluster_tests::{NodeProcess, free_ports, kubelet, s3};
use kvoperator::crd::{KVCluster, RestorePhase, SECRET_OPT_IN_LABEL};
use serde_json::{Value, json};

const NS: &str = "kv-backup";
const STEP_TIMEOUT: Duration = Duration::from_secs(90);
/// Keys written into `source` before the backup that `copy` restores.
const KEYS: usize = 300;

fn secret(name: &str, labelled: bool) -> Secret {
    let labels = labelled.then(|| BTreeMap::from([(SECRET_OPT_IN_LABEL.into(), "true".into())]));
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels,
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".into(), s3::ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), s3::SECRET_KEY.into()),
            ("unrelated".into(), "not for the pods".into()),
        ])),
        ..Secret::default()
    }
}

fn cluster(name: &str, replicas: u32, n: u32, extra: Value) -> KVCluster {
    let mut spec = json!({"replicas": replicas, "replicationFactor": n, "writeQuorum": 1,
                          "readQuorum": 1, "partitions": 16, "image": "kvnode:test",
                          "storage": {"size": "1Gi"}, "cacheSize": "16Mi"});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "kvcluster.io/v1alpha1", "kind": "KVCluster",
        "metadata": {"name": name, "namespace": NS}, "spec": spec
    }))
    .unwrap()
}

/// Starts the pods of StatefulSet `name` as the kubelets would, on `ports` (client ports, then
/// peer ports), and marks each Ready once its node answers.
async fn run_pods(client: &Client, name: &str, ports: &[u16], dir: &Path) -> Vec<NodeProcess> {
    let sts = eventually(&format!("the StatefulSet {name}"), STEP_TIMEOUT, || async {
        Api::<StatefulSet>::namespaced(client.clone(), NS)
            .get_opt(name)
            .await
            .unwrap()
    })
    .await;
    let pods = ports.len() / 2;
    let mut nodes = Vec::new();
    for i in 0..pods {
        let pod = format!("{name}-{i}");
        kubelet::create_pod(client, &sts, i as u32).await;
        let builder = kubelet::node_from_template(client, &sts, &pod, dir)
            .await
            .args([
                "--listen".to_string(),
                format!("127.0.0.1:{}", ports[i]),
                "--peer-listen".to_string(),
                format!("127.0.0.1:{}", ports[pods + i]),
            ]);
        let node = tokio::task::block_in_place(|| builder.start());
        let probe = kvclient::Client::builder(&node.base_url())
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

async fn settled(kvcs: &Api<KVCluster>, name: &str, members: usize) {
    eventually(&format!("{name} settled"), STEP_TIMEOUT, || async {
        let status = kvcs.get(name).await.unwrap().status?;
        let ok = |t: &str| {
            status
                .conditions
                .iter()
                .any(|c| c.type_ == t && c.status == "True")
        };
        (status.members.len() == members && ok("Available") && ok("RingSettled")).then_some(())
    })
    .await;
}

async fn events(client: &Client, name: &str, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_backups_are_retained_and_restore_into_a_new_cluster() {
    let Some(plane) = ControlPlane::start("operator_backup").await else {
        return;
    };
    let Some(store) = s3::start("operator_backup").await else {
        return;
    };
    plane.install_kvcluster_crd().await;
    let admin = plane.client();
    plane.create_restricted_namespace(NS).await;
    let kubeconfig = plane
        .operator_identity(&kvoperator::rbac::cluster_role())
        .await;
    plane
        .grant_secret_reader(&kvoperator::rbac::secret_reader_role(), NS)
        .await;
    let secrets = Api::<Secret>::namespaced(admin.clone(), NS);
    for s in [secret("s3-key", true), secret("s3-unlabelled", false)] {
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }

    // The pods' addresses: loopback ports in place of their DNS names.
    let (source_ports, copy_ports) = {
        let ports = free_ports(10);
        (ports[..6].to_vec(), ports[6..].to_vec())
    };
    let mut overrides: HashMap<String, Value> = HashMap::new();
    for (name, ports) in [("source", &source_ports), ("copy", &copy_ports)] {
        let pods = ports.len() / 2;
        for i in 0..pods {
            overrides.insert(
                format!("{NS}/{name}-{i}"),
                json!({"address": format!("127.0.0.1:{}", ports[i]),
                       "peer_address": format!("127.0.0.1:{}", ports[pods + i])}),
            );
        }
    }
    let overrides_path = plane.dir().join("node-addresses.json");
    std::fs::write(&overrides_path, serde_json::to_vec(&overrides).unwrap()).unwrap();
    let mut operator = OperatorProcess::start(
        &kubeconfig,
        &format!("kvoperator-backup-{}", std::process::id()),
        &[
            "--leader-election",
            "false",
            "--listen",
            "127.0.0.1:0",
            "--node-address-override-file",
            overrides_path.to_str().unwrap(),
            "--progress-interval",
            "1s",
            "--resync-interval",
            "2s",
            "--admin-timeout",
            "2s",
        ],
        &plane.dir().join("operator.log"),
    );

    let s3_spec = json!({"endpoint": store.endpoint, "region": "us-east-1",
                         "credentialsSecret": "s3-key"});
    let kvcs: Api<KVCluster> = Api::namespaced(admin.clone(), NS);
    // Every 3 seconds (six fields: seconds first), keeping the last 2.
    let source = cluster(
        "source",
        3,
        3,
        json!({"backup": {"schedule": "*/3 * * * * *", "target": "s3://backups/source",
                          "s3": s3_spec, "retention": 2, "rate": "8Mi"}}),
    );
    kvcs.create(&PostParams::default(), &source).await.unwrap();
    let dir = tempfile::Builder::new()
        .prefix("kvcluster-kubelets-")
        .tempdir()
        .unwrap();
    let source_nodes = run_pods(&admin, "source", &source_ports, dir.path()).await;
    settled(&kvcs, "source", 3).await;
    // Only the two keys of the Secret reach the node's environment.
    let sts = Api::<StatefulSet>::namespaced(admin.clone(), NS)
        .get("source")
        .await
        .unwrap();
    let env = sts.spec.template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let from_secret: Vec<&str> = env
        .iter()
        .filter(|e| {
            e.value_from
                .as_ref()
                .is_some_and(|f| f.secret_key_ref.is_some())
        })
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(from_secret, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);

    let writer = kvclient::Client::new(&source_nodes[0].base_url()).unwrap();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("user/{i:04}")).collect();
    for key in &keys {
        writer
            .put(
                key.as_bytes(),
                format!("value of {key}").into_bytes(),
                None,
                &kvclient::WriteOptions::default(),
            )
            .await
            .unwrap();
    }
    let written = k8s_openapi::jiff::Timestamp::now();

    // A backup that started after the writes completes, and retention deletes older ones.
    let backup = eventually("a backup after the writes", STEP_TIMEOUT, || async {
        let status = kvcs.get("source").await.unwrap().status?.backup?;
        let last = status.last_successful?;
        (status.last_schedule_time.as_ref()?.0 > written).then_some(last)
    })
    .await;
    eprintln!(
        "backup {} complete: {} bytes in {} s",
        backup.id, backup.bytes, backup.seconds
    );
    assert!(backup.bytes > 0);
    let deleted = eventually("a retention deletion", STEP_TIMEOUT, || async {
        let notes = events(&admin, "source", "BackupDeleted").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    eprintln!("retention: {deleted:?}");
    assert!(deleted[0].contains("retention (2 kept)"), "{deleted:?}");
    assert!(!events(&admin, "source", "BackupStarted").await.is_empty());
    assert!(!events(&admin, "source", "BackupSucceeded").await.is_empty());
    // Stop the schedule (a slot once a year) so that retention keeps the backup to restore, then
    // count what is in the bucket: never more than 2 complete backups once retention ran.
    let yearly = json!({"spec": {"backup": {"schedule": "0 0 1 1 *"}}});
    kvcs.patch("source", &PatchParams::default(), &Patch::Merge(&yearly))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bucket = kvbackup::target::open(
        "s3://backups/source",
        &S3Settings {
            endpoint: Some(store.endpoint.clone()),
            region: Some("us-east-1".into()),
            credentials: Some(Credentials {
                access_key_id: s3::ACCESS_KEY.into(),
                secret_access_key: s3::SECRET_KEY.into(),
            }),
        },
    )
    .unwrap();
    let listed = kvbackup::transfer::list(bucket.as_ref()).await.unwrap();
    let complete: Vec<&str> = listed
        .iter()
        .filter(|b| b.manifest.is_some())
        .map(|b| b.id.as_str())
        .collect();
    eprintln!("in the bucket: {complete:?}");
    assert!(complete.len() <= 2, "{complete:?}");
    let last = kvcs
        .get("source")
        .await
        .unwrap()
        .status
        .unwrap()
        .backup
        .unwrap()
        .last_successful
        .unwrap();
    assert!(
        complete.contains(&last.id.as_str()),
        "{complete:?} vs {}",
        last.id
    );

    // A new cluster of another size, restored from that backup once its ring settles.
    let copy = cluster(
        "copy",
        2,
        2,
        json!({"restoreFrom": {"target": "s3://backups/source", "backupId": last.id,
                               "s3": s3_spec}}),
    );
    kvcs.create(&PostParams::default(), &copy).await.unwrap();
    let copy_nodes = run_pods(&admin, "copy", &copy_ports, dir.path()).await;
    settled(&kvcs, "copy", 2).await;
    let restored = eventually("the restore", STEP_TIMEOUT, || async {
        let restore = kvcs.get("copy").await.unwrap().status?.restore?;
        assert_ne!(restore.phase, RestorePhase::Failed, "{}", restore.message);
        (restore.phase == RestorePhase::Succeeded).then_some(restore)
    })
    .await;
    eprintln!(
        "restored: {} ({} of {} checkpoints, {} records)",
        restored.message, restored.checkpoints_done, restored.checkpoints_total, restored.records
    );
    assert_eq!(restored.checkpoints_done, 3);
    assert_eq!(restored.checkpoints_total, 3);
    assert!(restored.records >= KEYS as u64, "{restored:?}");
    assert_eq!(events(&admin, "copy", "RestoreSucceeded").await.len(), 1);
    let reader = kvclient::Client::new(&copy_nodes[1].base_url()).unwrap();
    for key in &keys {
        match reader
            .get(key.as_bytes(), &kvclient::ReadOptions::default())
            .await
            .unwrap()
        {
            kvclient::ReadResult::Found { siblings, .. } => {
                assert!(
                    siblings
                        .iter()
                        .any(|s| s.value.as_slice() == format!("value of {key}").as_bytes()),
                    "{key}: {siblings:?}"
                );
            }
            kvclient::ReadResult::NotFound { .. } => panic!("{key} missing from the copy"),
        }
    }
    // Restored once: more reconciles later, still one restore.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(events(&admin, "copy", "RestoreStarted").await.len(), 1);

    // A credentials Secret without the opt-in label: nothing applied, and the status says why.
    let refused = cluster(
        "refused",
        1,
        1,
        json!({"backup": {"schedule": "0 3 * * *", "target": "s3://backups/refused",
                          "s3": {"endpoint": store.endpoint, "credentialsSecret": "s3-unlabelled"}}}),
    );
    kvcs.create(&PostParams::default(), &refused).await.unwrap();
    let failure = eventually("the refusal in status", STEP_TIMEOUT, || async {
        kvcs.get("refused")
            .await
            .unwrap()
            .status?
            .backup?
            .last_failure
    })
    .await;
    assert!(
        failure.message.contains(
            "s3-unlabelled (S3 credentials) lacks the label kvcluster.io/operator-access=true"
        ),
        "{}",
        failure.message
    );
    assert!(
        Api::<StatefulSet>::namespaced(admin.clone(), NS)
            .get_opt("refused")
            .await
            .unwrap()
            .is_none(),
        "a StatefulSet with an unlabelled Secret's keys was applied"
    );
    assert!(operator.is_running(), "{}", operator.log_tail(40));
    operator.stop();
    drop((source_nodes, copy_nodes));
}
