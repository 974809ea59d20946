//! The Helm chart against a real kube-apiserver + etcd on loopback (see `kvcluster_tests::kube`):
//! `helm install` with every option on, the operator's ServiceAccount allowed everything
//! operator/src/rbac.rs asks for and not more, the real operator under it building the chart's
//! KVCluster, the pods admitted under Pod Security "restricted",
//! `kubectl apply --dry-run=server` of the default and all-on renderings, the CRD's rules refusing a bad
//! cluster from values, and `helm uninstall` leaving no object behind. Nothing runs the pods (no
//! kubelet). Skipped with a loud message when a tool is missing, unless `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, PostParams};
use kvcluster_tests::helm::{ALL_ON_VALUES, CHART, Helm, cli_tool, documents, output, stdout_of};
use kvcluster_tests::kube::{ControlPlane, OperatorProcess};
use serde_json::{Value, json};

const NS: &str = "kvs";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:kvs:kvcluster-operator";

/// Stand-ins for the Prometheus Operator's CRDs: the resources exist, their content is not checked.
const MONITORING_CRDS: &[(&str, &str, &str)] = &[
    ("servicemonitors", "ServiceMonitor", "servicemonitor"),
    ("prometheusrules", "PrometheusRule", "prometheusrule"),
];

fn monitoring_crd(plural: &str, kind: &str, singular: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  \
         name: {plural}.monitoring.coreos.com\nspec:\n  group: monitoring.coreos.com\n  scope: Namespaced\n  \
         names: {{plural: {plural}, singular: {singular}, kind: {kind}}}\n  versions:\n  - name: v1\n    \
         served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        \
         x-kubernetes-preserve-unknown-fields: true\n"
    )
}

/// `kubectl --kubeconfig KUBECONFIG ARGS...`.
fn kubectl(bin: &Path, plane: &ControlPlane, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--kubeconfig").arg(plane.kubeconfig()).args(args);
    cmd
}

/// Whether the operator's ServiceAccount may `verb` `resource` (`group`) in `namespace`.
async fn allowed(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(SERVICE_ACCOUNT.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{NS}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                namespace: Some(namespace.into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

/// Creates `pod` with `dryRun=All`: admission (Pod Security included) runs, nothing is stored.
async fn dry_run_pod(client: &Client, pod: &Value) -> Result<(), String> {
    let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(&pp, &pod)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_grants_what_the_operator_needs_and_uninstalls_cleanly() {
    const TEST: &str = "helm_install::install";
    let Some(helm) = Helm::find(TEST) else {
        return;
    };
    let Some(kubectl_bin) = cli_tool(
        TEST,
        "KUBECTL",
        "kubectl",
        "`eval \"$(scripts/kube/install.sh)\"` fetches it",
    ) else {
        return;
    };
    let Some(plane) = ControlPlane::start(TEST).await else {
        return;
    };
    let client = plane.client();
    let dir = plane.dir().to_path_buf();
    for (plural, kind, singular) in MONITORING_CRDS {
        let path = write(
            &dir,
            &format!("{plural}.yaml"),
            &monitoring_crd(plural, kind, singular),
        );
        plane.install_crd(&path).await;
    }
    plane
        .create_namespace(NS, &[("pod-security.kubernetes.io/enforce", "restricted")])
        .await;
    plane.create_namespace("apps", &[]).await;
    // The all-on values' spec.backup names this Secret; without it the operator applies nothing.
    let s3_key: Secret = serde_json::from_value(json!({
        "metadata": {"name": "demo-s3", "labels": {"kvcluster.io/operator-access": "true"}},
        "stringData": {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo-secret"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &s3_key)
        .await
        .unwrap();
    let helm_in = |args: &[&str]| {
        let mut cmd = helm.command();
        cmd.args(args).arg("--kubeconfig").arg(plane.kubeconfig());
        cmd
    };

    // Install with every option on: the CRD from crds/, then every object, the KVCluster included.
    stdout_of(&mut helm_in(&[
        "install",
        "kvcluster",
        CHART,
        "--namespace",
        NS,
        "--values",
        ALL_ON_VALUES,
    ]));
    let manifest = stdout_of(&mut helm_in(&[
        "get",
        "manifest",
        "kvcluster",
        "--namespace",
        NS,
    ]));
    let manifest_file = write(&dir, "manifest.yaml", &manifest);
    let listed = stdout_of(&mut kubectl(
        &kubectl_bin,
        &plane,
        &["get", "-o", "name", "-f", manifest_file.to_str().unwrap()],
    ));
    let objects: Vec<&str> = listed.lines().collect();
    eprintln!("installed: {objects:?}");
    assert_eq!(objects.len(), documents(&manifest).len(), "{listed}");
    for needle in [
        "deployment.apps/kvcluster-operator",
        "kvcluster.kvcluster.io/demo",
        "prometheusrule.monitoring.coreos.com/kvcluster",
        "servicemonitor.monitoring.coreos.com/kvcluster-operator",
        "networkpolicy.networking.k8s.io/kvcluster-operator",
    ] {
        assert!(objects.contains(&needle), "{needle} missing: {listed}");
    }

    // The ServiceAccount may do everything rbac.rs lists: Leases in the release namespace only,
    // the rest in any namespace.
    for rule in kvoperator::rbac::rules() {
        let group = &rule.api_groups.as_ref().unwrap()[0];
        let namespace = if group == "coordination.k8s.io" {
            NS
        } else {
            "apps"
        };
        for resource in rule.resources.as_ref().unwrap() {
            for verb in &rule.verbs {
                assert!(
                    allowed(&client, verb, group, resource, namespace).await,
                    "the chart's ServiceAccount may not {verb} {resource}.{group} in {namespace}"
                );
            }
        }
    }
    // ...and not more.
    for (verb, group, resource, namespace) in [
        ("get", "coordination.k8s.io", "leases", "default"),
        ("get", "", "secrets", "default"),
        ("list", "", "secrets", "apps"),
        ("delete", "apps", "statefulsets", "apps"),
        ("create", "", "pods/exec", "apps"),
    ] {
        assert!(
            !allowed(&client, verb, group, resource, namespace).await,
            "the chart's ServiceAccount may {verb} {resource}.{group} in {namespace}"
        );
    }
    assert!(
        allowed(&client, "get", "", "secrets", "apps").await,
        "rbac.secretReaderNamespaces binds the secret reader in apps"
    );
    assert!(
        allowed(&client, "get", "", "secrets", NS).await,
        "the chart's cluster names a backup Secret: the reader is bound in the release namespace"
    );

    // The operator's pod and the helm test pod pass Pod Security "restricted" (enforced on kvs);
    // the same pod without its container security context does not.
    let deployments = stdout_of(&mut kubectl(
        &kubectl_bin,
        &plane,
        &[
            "get",
            "deployment",
            "kvcluster-operator",
            "-n",
            NS,
            "-o",
            "json",
        ],
    ));
    let deployment: Value = serde_json::from_str(&deployments).unwrap();
    let template = &deployment["spec"]["template"];
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "operator-pod", "namespace": NS, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    });
    dry_run_pod(&client, &pod)
        .await
        .unwrap_or_else(|e| panic!("the operator's pod is refused: {e}"));
    pod["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("securityContext");
    let refusal = dry_run_pod(&client, &pod)
        .await
        .expect_err("admitted without securityContext");
    assert!(refusal.contains("violates PodSecurity"), "{refusal}");
    let hooks = stdout_of(&mut helm_in(&[
        "get",
        "hooks",
        "kvcluster",
        "--namespace",
        NS,
    ]));
    let test_pod = documents(&hooks)
        .into_iter()
        .find(|d| d["kind"] == "Pod")
        .expect("the helm test pod");
    dry_run_pod(&client, &test_pod)
        .await
        .unwrap_or_else(|e| panic!("the helm test pod is refused: {e}"));

    // The real operator under the chart's ServiceAccount takes the Lease (in the release namespace)
    // and builds the KVCluster the chart created. No pod ever runs, so it stops there.
    let sa_kubeconfig = plane
        .service_account_kubeconfig(NS, "kvcluster-operator")
        .await;
    let mut operator = OperatorProcess::start(
        &sa_kubeconfig,
        "chart-operator",
        &[
            "--lease-namespace",
            NS,
            "--lease-name",
            "kvcluster-operator",
            "--listen",
            "127.0.0.1:0",
            "--progress-interval",
            "1s",
        ],
        &dir.join("operator.log"),
    );
    let built = [
        "lease/kvcluster-operator",
        "secret/demo-context-key",
        "configmap/demo-config",
        "service/demo",
        "service/demo-headless",
        "statefulset/demo",
        "poddisruptionbudget/demo",
        "networkpolicy/demo",
        "servicemonitor/demo",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut args = vec!["get", "-n", NS, "-o", "name"];
        args.extend(built);
        if output(&mut kubectl(&kubectl_bin, &plane, &args))
            .status
            .success()
        {
            break;
        }
        assert!(
            operator.is_running(),
            "kvoperator exited:\n{}",
            operator.log_tail(40)
        );
        assert!(
            Instant::now() < deadline,
            "the operator did not build {built:?} within 60 s:\n{}",
            operator.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let holder = stdout_of(&mut kubectl(
        &kubectl_bin,
        &plane,
        &[
            "get",
            "lease/kvcluster-operator",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    ));
    assert_eq!(holder, "chart-operator");
    operator.stop();
    let log = operator.log();
    assert!(
        !log.contains("forbidden"),
        "the operator was refused something:\n{log}"
    );

    // The renderings of another release, default and all-on, pass a server-side dry run with
    // strict field validation, and the CRD's rules refuse a cluster whose W exceeds N.
    for (name, args) in [
        ("default", vec![]),
        ("all-on", vec!["--values", ALL_ON_VALUES]),
    ] {
        let rendered = helm
            .template("other", "apps", &args)
            .unwrap_or_else(|e| panic!("helm template {name}: {e}"));
        let file = write(&dir, &format!("{name}.yaml"), &rendered);
        stdout_of(&mut kubectl(
            &kubectl_bin,
            &plane,
            &[
                "apply",
                "--dry-run=server",
                "--validate=strict",
                "-f",
                file.to_str().unwrap(),
            ],
        ));
    }
    let bad = helm
        .template(
            "other",
            "apps",
            &[
                "--set",
                "cluster.enabled=true,cluster.replicationFactor=2,cluster.writeQuorum=3",
                "--show-only",
                "templates/kvcluster.yaml",
            ],
        )
        .unwrap_or_else(|e| panic!("helm template: {e}"));
    let file = write(&dir, "bad.yaml", &bad);
    let out = output(&mut kubectl(
        &kubectl_bin,
        &plane,
        &["apply", "--dry-run=server", "-f", file.to_str().unwrap()],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "W > N accepted");
    assert!(
        stderr.contains("writeQuorum (W) must not exceed replicationFactor (N)"),
        "{stderr}"
    );

    // Uninstall leaves none of the release's objects; the CRD stays (Helm never deletes crds/). (What
    // the operator built is owned by the KVCluster: the garbage collector, which this control plane
    // does not run, removes it.)
    stdout_of(&mut helm_in(&[
        "uninstall",
        "kvcluster",
        "--namespace",
        NS,
        "--wait",
    ]));
    let left = stdout_of(&mut kubectl(
        &kubectl_bin,
        &plane,
        &[
            "get",
            "--ignore-not-found",
            "-o",
            "name",
            "-f",
            manifest_file.to_str().unwrap(),
        ],
    ));
    assert!(
        left.trim().is_empty(),
        "left behind after uninstall: {left}"
    );
    stdout_of(&mut kubectl(
        &kubectl_bin,
        &plane,
        &["get", "crd", "kvclusters.kvcluster.io"],
    ));
}
