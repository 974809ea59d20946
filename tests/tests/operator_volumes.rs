//! Growing a cluster's volumes on a real kube-apiserver: the operator asks for a larger
//! `storage.size` on each PVC (the StatefulSet's claim template cannot change), the API server's
//! resize admission lets the claim of an expandable storage class grow and refuses the other, and
//! the status and a Warning event say which. This test plays the StatefulSet controller and the
//! provisioner: it makes the bound claims and volumes, and finishes a resize by raising the
//! claim's capacity. No kvnode runs: volumes are applied whatever the nodes say.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kvcluster_tests::kube::{ControlPlane, OperatorProcess, eventually};
use kvoperator::crd::KVCluster;
use serde_json::{Value, json};

const NS: &str = "kv-volumes";
const NAME: &str = "grow";
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn object<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

/// A bound claim `data-grow-<i>` of `class` and its volume, as the StatefulSet controller and a
/// provisioner would leave them, 1Gi each.
async fn bound_claim(client: &kube::Client, i: u32, class: &str) {
    let claim = format!("data-{NAME}-{i}");
    let volume = format!("pv-{NAME}-{i}");
    Api::<PersistentVolume>::all(client.clone())
        .create(
            &PostParams::default(),
            &object(json!({
                "metadata": {"name": volume},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                         "storageClassName": class, "hostPath": {"path": format!("/tmp/{volume}")},
                         "claimRef": {"namespace": NS, "name": claim}}
            })),
        )
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    claims
        .create(
            &PostParams::default(),
            &object(json!({
                "metadata": {"name": claim, "labels": {
                    "app.kubernetes.io/name": "kvnode", "app.kubernetes.io/instance": NAME}},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                         "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}}
            })),
        )
        .await
        .unwrap();
    set_claim_status(&claims, &claim, "1Gi").await;
}

async fn set_claim_status(claims: &Api<PersistentVolumeClaim>, claim: &str, capacity: &str) {
    let status = json!({"status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"],
                                   "capacity": {"storage": capacity}}});
    claims
        .patch_status(claim, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

fn requested(claim: &PersistentVolumeClaim) -> String {
    claim
        .spec
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap()["storage"]
        .0
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_larger_storage_size_grows_the_claims_the_storage_class_lets_grow() {
    let Some(plane) = ControlPlane::start("operator_volumes").await else {
        return;
    };
    plane.install_kvcluster_crd().await;
    let admin = plane.client();
    plane.create_restricted_namespace(NS).await;
    let kubeconfig = plane
        .operator_identity(&kvoperator::rbac::cluster_role())
        .await;
    let classes: Api<StorageClass> = Api::all(admin.clone());
    for (name, expandable) in [("expandable", true), ("fixed", false)] {
        classes
            .create(
                &PostParams::default(),
                &object(
                    json!({"metadata": {"name": name}, "provisioner": "kvcluster.test/none",
                               "allowVolumeExpansion": expandable}),
                ),
            )
            .await
            .unwrap();
    }
    let mut operator = OperatorProcess::start(
        &kubeconfig,
        &format!("kvoperator-volumes-{}", std::process::id()),
        &[
            "--leader-election",
            "false",
            "--listen",
            "127.0.0.1:0",
            "--progress-interval",
            "1s",
            "--resync-interval",
            "2s",
            "--admin-timeout",
            "1s",
        ],
        &plane.dir().join("operator.log"),
    );

    let kvcs: Api<KVCluster> = Api::namespaced(admin.clone(), NS);
    let resource: KVCluster = object(json!({
        "apiVersion": "kvcluster.io/v1alpha1", "kind": "KVCluster",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"replicas": 2, "replicationFactor": 2, "writeQuorum": 1, "readQuorum": 1,
                 "image": "kvnode:test", "storage": {"size": "1Gi", "storageClassName": "expandable"}}
    }));
    kvcs.create(&PostParams::default(), &resource)
        .await
        .unwrap();
    let statefulsets: Api<StatefulSet> = Api::namespaced(admin.clone(), NS);
    eventually("the StatefulSet", STEP_TIMEOUT, || async {
        statefulsets.get_opt(NAME).await.unwrap()
    })
    .await;
    // One claim the storage class lets grow, one it does not (a class changed after creation).
    bound_claim(&admin, 0, "expandable").await;
    bound_claim(&admin, 1, "fixed").await;

    let grow = json!({"spec": {"storage": {"size": "2Gi"}}});
    kvcs.patch(NAME, &PatchParams::default(), &Patch::Merge(&grow))
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), NS);
    let status = eventually("the volumes' status", STEP_TIMEOUT, || async {
        let kvc = kvcs.get(NAME).await.unwrap();
        kvc.status?.volumes.filter(|v| !v.refused.is_empty())
    })
    .await;
    eprintln!("status.volumes: {status:?}");
    assert_eq!(status.size, "2Gi");
    assert!(
        status.refused.len() == 1 && status.refused[0].starts_with("data-grow-1: "),
        "{status:?}"
    );
    assert!(
        status.expanding.contains(&"data-grow-0".to_string()),
        "{status:?}"
    );
    assert_eq!(requested(&claims.get("data-grow-0").await.unwrap()), "2Gi");
    assert_eq!(requested(&claims.get("data-grow-1").await.unwrap()), "1Gi");
    // The StatefulSet keeps its claim template (immutable), and is still applied.
    let sts = statefulsets.get(NAME).await.unwrap();
    let template = &sts.spec.volume_claim_templates.unwrap()[0];
    assert_eq!(requested(template), "1Gi");
    let warned = eventually("a VolumeExpansionRefused event", STEP_TIMEOUT, || async {
        Api::<Event>::namespaced(admin.clone(), NS)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("VolumeExpansionRefused"))
    })
    .await;
    assert_eq!(warned.type_.as_deref(), Some("Warning"));
    assert!(warned.note.unwrap_or_default().contains("data-grow-1"));

    // The resize of data-grow-0 finishes: it leaves the status's expanding list.
    set_claim_status(&claims, "data-grow-0", "2Gi").await;
    eventually("data-grow-0 done", STEP_TIMEOUT, || async {
        let v = kvcs.get(NAME).await.unwrap().status?.volumes?;
        (!v.expanding.contains(&"data-grow-0".to_string())).then_some(())
    })
    .await;

    // A volume never shrinks: the API server refuses a smaller size.
    let shrink = json!({"spec": {"storage": {"size": "1Gi"}}});
    let refused = kvcs
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&shrink))
        .await
        .expect_err("a smaller storage.size was accepted");
    assert!(
        refused.to_string().contains("storage.size cannot shrink"),
        "{refused}"
    );
    assert!(operator.is_running(), "{}", operator.log_tail(30));
    operator.stop();
}
