//! The KVCluster CRD and the operator's RBAC against a real kube-apiserver + etcd on loopback
//! (see `kvcluster_tests::kube`): the API server itself evaluates the OpenAPI bounds, the CEL rules
//! (the `oldSelf` transition rule included) and the RBAC rules. Skipped with a loud message when the
//! binaries are missing, unless `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use kvcluster_tests::kube::{ControlPlane, client_from_kubeconfig, repo_path};
use kvoperator::crd::KVCluster;
use kvoperator::crd::SECRET_OPT_IN_LABEL;
use serde_json::{Value, json};

fn yaml_file(path: &std::path::Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn kvcluster_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kvcluster.io", "v1alpha1", "KVCluster"),
        "kvclusters",
    )
}

/// The API server's refusal of a request, as `(code, message)`; panics when it was accepted.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) -> (u16, String) {
    match result {
        Ok(obj) => panic!("{what}: the API server accepted it: {obj:?}"),
        Err(kube::Error::Api(status)) => (status.code, status.message.clone()),
        Err(e) => panic!("{what}: not an API refusal: {e}"),
    }
}

/// What must refuse each file of `operator/examples/invalid/`, and a piece of the message the API
/// server gives. A file missing here fails the test, so a new bad example gets checked too.
fn expected_refusal(file: &str) -> (&'static str, &'static str) {
    match file {
        "n-above-replicas.yaml" => ("CEL", "replicationFactor (N) must not exceed replicas"),
        "w-above-n.yaml" => (
            "CEL",
            "writeQuorum (W) must not exceed replicationFactor (N)",
        ),
        "r-above-n.yaml" => (
            "CEL",
            "readQuorum (R) must not exceed replicationFactor (N)",
        ),
        "zero-replicas.yaml" => ("schema", "spec.replicas: Invalid value"),
        "partitions-not-power-of-two.yaml" => ("schema", "spec.partitions: Unsupported value"),
        "unknown-durability.yaml" => ("schema", "spec.durability: Unsupported value"),
        "negative-storage-size.yaml" => (
            "CEL",
            "storage.size must be a positive quantity such as 10Gi",
        ),
        "hint-ttl-above-tombstone-grace.yaml" => {
            ("CEL", "hintTtl must be shorter than tombstoneGrace")
        }
        "tls-secret-and-issuer.yaml" => ("CEL", "set exactly one of secretName and issuerRef"),
        "metrics-token-without-data-token.yaml" => (
            "CEL",
            "metricsNeedToken needs readTokenSecretRef or writeTokenSecretRef",
        ),
        "backup-retention-zero.yaml" => ("schema", "spec.backup.retention: Invalid value"),
        "restore-without-backup-id.yaml" => ("schema", "spec.restoreFrom.backupId: Required value"),
        "backup-bad-target.yaml" => (
            "CEL",
            "target must be s3://bucket[/prefix] or file:///absolute/dir",
        ),
        "backup-and-restore-differ-in-s3.yaml" => {
            ("CEL", "backup.s3 and restoreFrom.s3 must be the same")
        }
        other => panic!(
            "operator/examples/invalid/{other} has no expected refusal in this test: add it to expected_refusal"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_enforces_the_kvcluster_schema_and_cel_rules() {
    let Some(plane) = ControlPlane::start("operator_apiserver::schema").await else {
        return;
    };
    plane.install_kvcluster_crd().await;
    let client = plane.client();
    let kvcs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &kvcluster_resource());
    let pp = PostParams::default();

    // Every bad example is refused, each for its own reason.
    let dir = repo_path("operator/examples/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read examples/invalid")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "expected the bad examples in {dir:?}");
    for path in &files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        let first = text.lines().next().unwrap_or_default();
        let (kind, needle) = expected_refusal(&file);
        assert!(
            first.starts_with(&format!(
                "# Refused by {}",
                if kind == "CEL" { "CEL" } else { "the schema" }
            )),
            "{file}: first line {first:?} does not say it is refused by {kind}"
        );
        if kind == "CEL" {
            // The comment quotes the rule's message.
            assert!(first.contains(needle), "{file}: {first:?} vs {needle:?}");
        }
        let obj: DynamicObject = serde_json::from_value(yaml_file(path)).unwrap();
        let (code, message) = refusal(kvcs.create(&pp, &obj).await, &file);
        eprintln!("{file}: refused ({code}): {message}");
        assert_eq!(code, 422, "{file}: {message}");
        assert!(
            message.contains(needle),
            "{file}: refusal does not mention {needle:?}: {message}"
        );
    }

    // The good example is accepted as it is.
    let example = yaml_file(&repo_path("operator/examples/kvcluster.yaml"));
    let obj: DynamicObject = serde_json::from_value(example.clone()).unwrap();
    let created = kvcs
        .create(&pp, &obj)
        .await
        .expect("the example is accepted");
    assert_eq!(created.name_any(), "demo");
    let typed: Api<KVCluster> = Api::namespaced(client.clone(), "default");
    let demo = typed.get("demo").await.expect("typed read of the example");
    assert_eq!(demo.spec.replicas, 5);
    assert_eq!(demo.spec.partitions, 256);

    // Bounds of numbers and sizes, on top of the example.
    let with_spec = |name: &str, patch: Value| -> DynamicObject {
        let mut doc = example.clone();
        doc["metadata"]["name"] = json!(name);
        for (k, v) in patch.as_object().unwrap() {
            doc["spec"][k] = v.clone();
        }
        serde_json::from_value(doc).unwrap()
    };
    for (name, patch, needle) in [
        (
            "negative-replicas",
            json!({"replicas": -1}),
            "spec.replicas",
        ),
        (
            "too-many-replicas",
            json!({"replicas": 257}),
            "less than or equal to 256",
        ),
        (
            "zero-n",
            json!({"replicationFactor": 0}),
            "spec.replicationFactor",
        ),
        (
            "n-sixteen",
            json!({"replicas": 20, "replicationFactor": 16}),
            "less than or equal to 15",
        ),
        ("zero-w", json!({"writeQuorum": 0}), "spec.writeQuorum"),
        ("negative-r", json!({"readQuorum": -2}), "spec.readQuorum"),
        ("bad-cache", json!({"cacheSize": "lots"}), "spec.cacheSize"),
        ("empty-image", json!({"image": ""}), "spec.image"),
        (
            "bad-size",
            json!({"storage": {"size": "ten gigs"}}),
            "spec.storage.size: Invalid value: \"ten gigs\": storage.size must be a positive quantity",
        ),
        (
            "zero-size",
            json!({"storage": {"size": "0"}}),
            "storage.size must be a positive quantity",
        ),
        (
            "negative-int-size",
            json!({"storage": {"size": -5}}),
            "storage.size must be a positive quantity",
        ),
        (
            "partitions-zero",
            json!({"partitions": 0}),
            "spec.partitions",
        ),
    ] {
        let (code, message) = refusal(kvcs.create(&pp, &with_spec(name, patch)).await, name);
        eprintln!("{name}: refused ({code}): {message}");
        assert!(
            message.contains(needle),
            "{name}: refusal does not mention {needle:?}: {message}"
        );
    }

    // W ≤ N, R ≤ N, N ≤ replicas hold on updates too, not just on create.
    for (what, patch, needle) in [
        (
            "W > N",
            json!({"spec": {"writeQuorum": 4}}),
            "writeQuorum (W) must not exceed",
        ),
        (
            "R > N",
            json!({"spec": {"readQuorum": 4}}),
            "readQuorum (R) must not exceed",
        ),
        (
            "N > replicas",
            json!({"spec": {"replicas": 2}}),
            "replicationFactor (N) must not exceed replicas",
        ),
    ] {
        let (code, message) = refusal(
            kvcs.patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
                .await,
            what,
        );
        eprintln!("update {what}: refused ({code}): {message}");
        assert!(message.contains(needle), "{what}: {message}");
    }

    // partitions is immutable (a transition rule: self == oldSelf).
    let (code, message) = refusal(
        kvcs.patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"partitions": 512}})),
        )
        .await,
        "partitions 256 -> 512",
    );
    eprintln!("update partitions: refused ({code}): {message}");
    assert_eq!(code, 422);
    assert!(
        message.contains("partitions is immutable"),
        "partitions change: {message}"
    );
    // An update that keeps partitions (and changes what may change) is accepted.
    let updated = kvcs
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"partitions": 256, "replicas": 7, "writeQuorum": 1}})),
        )
        .await
        .expect("an update keeping partitions is accepted");
    assert_eq!(updated.data["spec"]["replicas"], json!(7));
    assert_eq!(updated.data["spec"]["partitions"], json!(256));
    // Server-side apply of the same document, by a client, is accepted and keeps the fields.
    let mut applied = example.clone();
    applied["spec"]["replicas"] = json!(3);
    let applied = kvcs
        .patch(
            "demo",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&applied),
        )
        .await
        .expect("server-side apply of the example");
    assert_eq!(applied.data["spec"]["replicas"], json!(3));

    // A cluster made without partitions gets the default, which is then immutable too.
    let mut no_partitions = example.clone();
    no_partitions["metadata"]["name"] = json!("defaulted");
    no_partitions["spec"]
        .as_object_mut()
        .unwrap()
        .remove("partitions");
    let obj: DynamicObject = serde_json::from_value(no_partitions).unwrap();
    let created = kvcs
        .create(&pp, &obj)
        .await
        .expect("create without partitions");
    assert_eq!(
        created.data["spec"]["partitions"],
        json!(256),
        "{created:?}"
    );
    let (_, message) = refusal(
        kvcs.patch(
            "defaulted",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"partitions": 1024}})),
        )
        .await,
        "defaulted partitions change",
    );
    assert!(message.contains("partitions is immutable"), "{message}");

    // The status subresource: a spec change through /status is ignored, status is written.
    let status = kvcs
        .patch_status(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"replicas": 9}, "status": {"readyReplicas": 2, "ringEpoch": 4}}),
            ),
        )
        .await
        .expect("status patch");
    assert_eq!(status.data["status"]["ringEpoch"], json!(4));
    assert_eq!(status.data["spec"]["replicas"], json!(3));

    // The scale subresource (`kubectl scale kvc demo --replicas 7`), under the same rules.
    let scale = typed
        .get_scale("demo")
        .await
        .expect("the scale subresource");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    let to = |replicas: i32| json!({"spec": {"replicas": replicas}});
    typed
        .patch_scale("demo", &PatchParams::default(), &Patch::Merge(&to(7)))
        .await
        .expect("scale to 7");
    assert_eq!(typed.get("demo").await.unwrap().spec.replicas, 7);
    let (code, message) = refusal(
        typed
            .patch_scale("demo", &PatchParams::default(), &Patch::Merge(&to(2)))
            .await,
        "scale below N",
    );
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("replicationFactor (N) must not exceed replicas"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_deployment_manifest_is_accepted() {
    let Some(plane) = ControlPlane::start("operator_apiserver::deployment").await else {
        return;
    };
    let client = plane.client();
    let text = std::fs::read_to_string(repo_path("tests/e2e/operator.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let mut kinds = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap().to_string();
        let pp = PostParams::default();
        let result = match kind.as_str() {
            "Namespace" => Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
                .create(&pp, &serde_json::from_value(doc).unwrap())
                .await
                .map(|_| ()),
            "ServiceAccount" => Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
                client.clone(),
                "kvcluster-system",
            )
            .create(&pp, &serde_json::from_value(doc).unwrap())
            .await
            .map(|_| ()),
            "ClusterRoleBinding" => {
                Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(client.clone())
                    .create(&pp, &serde_json::from_value(doc).unwrap())
                    .await
                    .map(|_| ())
            }
            "Deployment" => Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
                client.clone(),
                "kvcluster-system",
            )
            .create(&pp, &serde_json::from_value(doc).unwrap())
            .await
            .map(|_| ()),
            other => panic!("tests/e2e/operator.yaml: unexpected kind {other}"),
        };
        result.unwrap_or_else(|e| panic!("tests/e2e/operator.yaml: {kind} refused: {e}"));
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRoleBinding",
            "Deployment"
        ]
    );
}

/// Calls `f` and returns the API server's HTTP code (200 for success).
async fn code_of<T>(f: impl std::future::Future<Output = Result<T, kube::Error>>) -> u16 {
    match f.await {
        Ok(_) => 200,
        Err(kube::Error::Api(status)) => status.code,
        Err(e) => panic!("not an API answer: {e}"),
    }
}

/// POST to a pod's `exec` subresource (as `kubectl exec` falls back to); the API server checks
/// `create` on `pods/exec` before it looks for the pod.
async fn exec_code(client: &Client, ns: &str, pod: &str) -> u16 {
    let request = http::Request::post(format!(
        "/api/v1/namespaces/{ns}/pods/{pod}/exec?command=true&stdout=true"
    ))
    .body(Vec::new())
    .unwrap();
    match client.request_text(request).await {
        Ok(_) => 200,
        Err(kube::Error::Api(status)) => status.code,
        Err(e) => panic!("exec: not an API answer: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_service_account_gets_exactly_its_rbac() {
    let Some(plane) = ControlPlane::start("operator_apiserver::rbac").await else {
        return;
    };
    plane.install_kvcluster_crd().await;
    let admin = plane.client();
    let ns = "default";

    // The ClusterRole as rendered to operator/rbac.yaml, and the same as kvoperator::rbac builds.
    let role_doc = yaml_file(&repo_path("operator/rbac.yaml"));
    let role: ClusterRole = serde_json::from_value(role_doc).unwrap();
    assert_eq!(
        role.rules,
        kvoperator::rbac::cluster_role().rules,
        "operator/rbac.yaml is not what kvoperator::rbac builds"
    );
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("create the ClusterRole");
    plane.create_service_account(ns, "kvoperator").await;
    plane
        .bind_cluster_role("kvoperator", ns, "kvoperator")
        .await;

    // The per-namespace Secret reader, as rendered and as built.
    let reader_doc = yaml_file(&repo_path("operator/rbac-secret-reader.yaml"));
    let reader: ClusterRole = serde_json::from_value(reader_doc).unwrap();
    assert_eq!(reader.rules, kvoperator::rbac::secret_reader_role().rules);
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &reader)
        .await
        .expect("create the secret reader ClusterRole");

    // Fixtures, made by the admin.
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("admin-token".into()),
            labels: Some([(SECRET_OPT_IN_LABEL.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        string_data: Some([("token".to_string(), "s3cret".to_string())].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let example = yaml_file(&repo_path("operator/examples/kvcluster.yaml"));
    let kvc: KVCluster = serde_json::from_value(example).unwrap();
    Api::<KVCluster>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &kvc)
        .await
        .unwrap();

    let kubeconfig = plane.service_account_kubeconfig(ns, "kvoperator").await;
    let sa = client_from_kubeconfig(&kubeconfig).await;

    // Allowed: what the operator does.
    let kvcs: Api<KVCluster> = Api::all(sa.clone());
    let list = kvcs
        .list(&ListParams::default())
        .await
        .expect("list kvclusters in every namespace");
    assert_eq!(list.items.len(), 1);
    let kvcs_ns: Api<KVCluster> = Api::namespaced(sa.clone(), ns);
    kvcs_ns
        .patch_status(
            "demo",
            &PatchParams::apply("kvoperator").force(),
            &Patch::Apply(&json!({
                "apiVersion": "kvcluster.io/v1alpha1", "kind": "KVCluster",
                "status": {"ringEpoch": 1, "readyReplicas": 0}
            })),
        )
        .await
        .expect("apply the status");
    let leases: Api<Lease> = Api::namespaced(sa.clone(), ns);
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("kvoperator".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("test".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let mut lease = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create a lease");
    lease.spec.as_mut().unwrap().holder_identity = Some("test-2".into());
    leases
        .replace("kvoperator", &PostParams::default(), &lease)
        .await
        .expect("update the lease");
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "demo-config"}, "data": {"cluster.json": "{}"}
    });
    Api::<ConfigMap>::namespaced(sa.clone(), ns)
        .patch(
            "demo-config",
            &PatchParams::apply("kvoperator"),
            &Patch::Apply(&cm),
        )
        .await
        .expect("server-side apply creates a ConfigMap");
    Api::<Pod>::namespaced(sa.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list pods");
    // Secrets: none can be read until the reader is bound in the namespace, and then only there.
    plane.create_namespace("elsewhere", &[]).await;
    let elsewhere_secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("not-given".into()),
            ..Default::default()
        },
        string_data: Some([("token".to_string(), "other".to_string())].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(admin.clone(), "elsewhere")
        .create(&PostParams::default(), &elsewhere_secret)
        .await
        .unwrap();
    assert_eq!(
        code_of(Api::<Secret>::namespaced(sa.clone(), ns).get("admin-token")).await,
        403,
        "the ClusterRole alone reads no Secret"
    );
    plane
        .bind_cluster_role_in("kvoperator-secret-reader", ns, ns, "kvoperator")
        .await;
    // The authorizer learns of a new binding from a watch: allow it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let got = loop {
        match Api::<Secret>::namespaced(sa.clone(), ns)
            .get("admin-token")
            .await
        {
            Ok(secret) => break secret,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("waiting for the RoleBinding to take effect: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("get the admin token Secret where the reader is bound: {e}"),
        }
    };
    assert_eq!(
        code_of(Api::<Secret>::namespaced(sa.clone(), "elsewhere").get("not-given")).await,
        403,
        "a Secret of a namespace the operator was not given stays unreadable"
    );
    assert_eq!(
        code_of(Api::<Secret>::namespaced(admin.clone(), "elsewhere").get("not-given")).await,
        200,
        "the admin reaches it"
    );
    assert!(got.data.is_some_and(|d| d.contains_key("token")));
    let context_key = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("demo-context-key".into()),
            ..Default::default()
        },
        string_data: Some([("context.key".to_string(), "k".repeat(64))].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(sa.clone(), ns)
        .create(&PostParams::default(), &context_key)
        .await
        .expect("create the context key Secret");
    Api::<StatefulSet>::all(sa.clone())
        .list(&ListParams::default())
        .await
        .expect("list statefulsets");

    // Forbidden: everything else. Each is compared with the admin's answer, to show the request
    // itself would work and only RBAC refuses it.
    let sa_secrets: Api<Secret> = Api::namespaced(sa.clone(), ns);
    assert_eq!(
        code_of(sa_secrets.list(&ListParams::default())).await,
        403,
        "listing Secrets (rather than getting the one named) must be forbidden"
    );
    assert_eq!(
        code_of(sa_secrets.delete("admin-token", &DeleteParams::default())).await,
        403
    );
    let sa_sts: Api<StatefulSet> = Api::namespaced(sa.clone(), ns);
    assert_eq!(
        code_of(sa_sts.delete("demo", &DeleteParams::default())).await,
        403,
        "deleting StatefulSets must be forbidden"
    );
    let admin_sts: Api<StatefulSet> = Api::namespaced(admin.clone(), ns);
    assert_eq!(
        code_of(admin_sts.delete("demo", &DeleteParams::default())).await,
        404,
        "the admin reaches the (missing) StatefulSet"
    );
    assert_eq!(exec_code(&sa, ns, "demo-0").await, 403, "pods/exec");
    assert_eq!(
        exec_code(&admin, ns, "demo-0").await,
        404,
        "the admin's exec reaches the (missing) pod"
    );
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let pod: Pod = serde_json::from_value(pod).unwrap();
    assert_eq!(
        code_of(Api::<Pod>::namespaced(sa.clone(), ns).create(&PostParams::default(), &pod)).await,
        403,
        "creating pods"
    );
    assert_eq!(
        code_of(Api::<Pod>::namespaced(sa.clone(), ns).delete("x", &DeleteParams::default())).await,
        403,
        "deleting pods"
    );
    assert_eq!(
        code_of(kvcs_ns.patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 3}}))
        ))
        .await,
        403,
        "the operator must not change a KVCluster's spec"
    );
    assert_eq!(
        code_of(kvcs_ns.delete("demo", &DeleteParams::default())).await,
        403,
        "deleting KVClusters"
    );
    assert_eq!(
        code_of(leases.delete("kvoperator", &DeleteParams::default())).await,
        403,
        "deleting the Lease"
    );
    assert_eq!(
        code_of(Api::<ClusterRole>::all(sa.clone()).list(&ListParams::default())).await,
        403,
        "reading RBAC"
    );
    assert_eq!(
        code_of(
            Api::<ConfigMap>::namespaced(sa.clone(), ns)
                .delete("demo-config", &DeleteParams::default())
        )
        .await,
        403,
        "deleting ConfigMaps"
    );
    eprintln!("RBAC: every allowed call worked and every other was refused with 403");
}
