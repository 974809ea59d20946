//! The Helm chart (`charts/kvcluster`) checked with the real `helm` and `promtool`: lint, rendering
//! with default and with every option on, the values schema refusing bad values, the CRD and RBAC
//! against their source (operator/src), and the alerts and dashboard naming only real metrics (ours,
//! or the few of others in `EXTERNAL_METRICS`).
//! (`helm_install.rs` installs it into a real API server.) Skipped with a loud message when a tool is
//! missing, unless `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;

use k8s_openapi::api::rbac::v1::PolicyRule;
use kvcluster_tests::helm::{
    ALL_ON_VALUES, CHART, EXTERNAL_METRICS, Helm, cli_tool, documents, foreign_metrics, kinds,
    metric_names, object, output, registered_metrics, stdout_of, unknown_metrics,
};
use kvcluster_tests::kube::{kvoperator_bin, repo_path};
use kvoperator::builders::networkpolicy::OPERATOR_POD_LABEL;
use serde_json::Value;

const NS: &str = "kvs";

fn chart_yaml() -> Value {
    let text = std::fs::read_to_string(repo_path(&format!("{CHART}/Chart.yaml"))).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

fn render(helm: &Helm, args: &[&str]) -> Vec<Value> {
    documents(
        &helm
            .template("kvcluster", NS, args)
            .unwrap_or_else(|e| panic!("helm template {args:?} failed: {e}")),
    )
}

#[test]
fn helm_lint_strict_passes_with_default_and_all_on_values() {
    let Some(helm) = Helm::find("helm_chart::lint") else {
        return;
    };
    for values in [None, Some(ALL_ON_VALUES)] {
        let mut cmd = helm.command();
        cmd.args(["lint", "--strict", CHART]);
        if let Some(v) = values {
            cmd.args(["--values", v]);
        }
        let out = stdout_of(&mut cmd);
        assert!(out.contains("0 chart(s) failed"), "{values:?}: {out}");
        assert!(!out.contains("[WARNING]"), "{values:?}: {out}");
    }
}

#[test]
fn default_values_render_a_restricted_operator_and_nothing_optional() {
    let Some(helm) = Helm::find("helm_chart::defaults") else {
        return;
    };
    let docs = render(&helm, &[]);
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ],
        "default values render the operator, its RBAC, its metrics Service and the dashboard only"
    );
    let deployment = object(&docs, "Deployment", "kvcluster-operator");
    assert_eq!(deployment["metadata"]["namespace"], NS);
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"][OPERATOR_POD_LABEL.0], OPERATOR_POD_LABEL.1,
        "each KVCluster's NetworkPolicy lets the operator through by this label"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "kvcluster-operator");
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["spec"]["containers"][0];
    let app_version = chart_yaml()["appVersion"].as_str().unwrap().to_string();
    assert_eq!(
        app_version,
        env!("CARGO_PKG_VERSION"),
        "the chart's appVersion (the default image tag) follows the workspace version"
    );
    assert_eq!(
        container["image"],
        format!("kvcluster/kvcluster:{app_version}")
    );
    assert_eq!(container["command"][0], "/usr/local/bin/kvoperator");
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/health", "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());

    // Every KVOPERATOR_* variable the chart sets is a flag's environment twin.
    let help = stdout_of(Command::new(kvoperator_bin()).arg("--help"));
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"));
    for name in env.iter().filter(|n| n.starts_with("KVOPERATOR_")) {
        assert!(
            help.contains(&format!("[env: {name}=")),
            "{name} is not a kvoperator flag"
        );
    }

    let service = object(&docs, "Service", "kvcluster-operator");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");

    // The dashboard ConfigMap is labelled for the Grafana sidecar and holds valid JSON.
    let dashboard = object(&docs, "ConfigMap", "kvcluster-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(dashboard["data"]["kvcluster.json"].as_str().unwrap())
        .expect("the dashboard is JSON");
    assert_eq!(json["uid"], "kvcluster");
}

#[test]
fn every_option_on_renders_every_object() {
    let Some(helm) = Helm::find("helm_chart::all_on") else {
        return;
    };
    let docs = render(&helm, &["--values", ALL_ON_VALUES]);
    let kinds: BTreeSet<String> = kinds(&docs).into_iter().collect();
    for kind in [
        "KVCluster",
        "NetworkPolicy",
        "PrometheusRule",
        "ServiceMonitor",
        "Pod",
    ] {
        assert!(kinds.contains(kind), "{kind} missing: {kinds:?}");
    }
    let deployment = object(&docs, "Deployment", "kvcluster-operator");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(
        env.contains(r#""KVOPERATOR_LEADER_ELECTION","value":"true""#),
        "{env}"
    );
    assert!(
        deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object(),
        "two replicas spread over nodes"
    );

    let reader = docs
        .iter()
        .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == "apps")
        .expect("the secret reader bound in namespace apps");
    assert_eq!(
        reader["roleRef"]["name"],
        "kvcluster-operator-secret-reader"
    );
    // The chart's own cluster names a backup credentials Secret, read in the release namespace.
    let release_reader = docs
        .iter()
        .find(|d| {
            d["kind"] == "RoleBinding"
                && d["metadata"]["name"] == "kvcluster-operator-secret-reader"
                && d["metadata"]["namespace"] != "apps"
        })
        .expect("the secret reader bound in the release namespace");
    assert_eq!(release_reader["metadata"]["namespace"], NS);

    let cluster = object(&docs, "KVCluster", "demo");
    assert_eq!(cluster["spec"]["writeQuorum"], 2);
    assert_eq!(cluster["spec"]["storage"]["size"], "1Gi");
    assert_eq!(
        cluster["spec"]["monitoring"]["labels"]["release"],
        "kube-prometheus-stack"
    );

    // The helm test reaches the cluster's client Service (operator/src/builders/service.rs: named
    // after the resource, port 8080) and runs `kvctl check` (put, get, delete; the image has no shell).
    let test = object(&docs, "Pod", "kvcluster-test");
    assert_eq!(test["metadata"]["annotations"]["helm.sh/hook"], "test");
    let container = &test["spec"]["containers"][0];
    assert!(
        container["env"]
            .to_string()
            .contains(r#""KVCTL_ENDPOINT","value":"http://demo.kvs.svc:8080""#),
        "{container}"
    );
    assert_eq!(container["command"][0], "/usr/local/bin/kvctl");
    assert_eq!(container["command"][1], "check");

    let policy = object(&docs, "NetworkPolicy", "kvcluster-operator");
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
}

/// `--set` arguments with a bad value, and what helm's refusal must say.
const BAD_VALUES: &[(&str, &str)] = &[
    ("operator.replicas=3", "at '/operator/replicas': maximum"),
    (
        "operator.replicas=2,operator.leaderElection=false",
        "at '/operator/leaderElection': value must be true",
    ),
    (
        "operator.logFormat=xml",
        "at '/operator/logFormat': value must be one of 'text', 'json'",
    ),
    (
        "cluster.partitions=100",
        "at '/cluster/partitions': value must be one of 1, 2, 4",
    ),
    (
        "cluster.storage.size=ten",
        "at '/cluster/storage/size': 'ten' does not match pattern",
    ),
    (
        "cluster.replicationFactor=16",
        "at '/cluster/replicationFactor': maximum",
    ),
    ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
    (
        "metrics.serviceMontor.enabled=true",
        "'serviceMontor' not allowed",
    ),
];

#[test]
fn the_values_schema_refuses_bad_values_with_a_clear_message() {
    let Some(helm) = Helm::find("helm_chart::schema") else {
        return;
    };
    for (set, needle) in BAD_VALUES {
        let refusal = match helm.template("kvcluster", NS, &["--set", set]) {
            Ok(_) => panic!("--set {set}: helm rendered it"),
            Err(e) => e,
        };
        eprintln!("--set {set}: {refusal}");
        assert!(
            refusal.contains("values don't meet the specifications of the schema"),
            "--set {set}: {refusal}"
        );
        assert!(
            refusal.contains(needle),
            "--set {set}: no {needle:?} in {refusal}"
        );
    }
}

#[test]
fn the_charts_crd_is_the_generated_crd() {
    let chart_copy = std::fs::read_to_string(repo_path(&format!("{CHART}/crds/kvcluster.yaml")))
        .expect("the chart's CRD");
    let crd = std::fs::read_to_string(repo_path("crds/kvcluster.yaml")).unwrap();
    assert!(
        chart_copy == crd,
        "charts/kvcluster/crds/kvcluster.yaml differs from crds/kvcluster.yaml: run `cargo run -p kvoperator --bin crdgen`"
    );
    assert_eq!(crd, kvoperator::generate::crd_yaml().unwrap());
}

fn rules_of(doc: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(doc["rules"].clone()).unwrap()
}

fn sorted(rules: Vec<PolicyRule>) -> Vec<String> {
    let mut rules: Vec<String> = rules
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    rules.sort();
    rules
}

#[test]
fn the_charts_rbac_is_rbac_rs() {
    let Some(helm) = Helm::find("helm_chart::rbac") else {
        return;
    };
    let docs = render(&helm, &["--values", ALL_ON_VALUES]);
    let cluster = rules_of(object(&docs, "ClusterRole", "kvcluster-operator"));
    let lease = rules_of(object(&docs, "Role", "kvcluster-operator-leader-election"));
    assert!(
        lease
            .iter()
            .all(|r| r.api_groups == Some(vec!["coordination.k8s.io".into()])),
        "only the Lease rules are narrowed to the release namespace: {lease:?}"
    );
    let mut rendered = cluster;
    rendered.extend(lease);
    assert_eq!(
        sorted(rendered),
        sorted(kvoperator::rbac::rules()),
        "the chart's rules differ from operator/src/rbac.rs: run `cargo run -p kvoperator --bin crdgen`"
    );
    let reader = rules_of(object(
        &docs,
        "ClusterRole",
        "kvcluster-operator-secret-reader",
    ));
    assert_eq!(
        sorted(reader),
        sorted(kvoperator::rbac::secret_reader_role().rules.unwrap())
    );
    // Every binding names the operator's ServiceAccount.
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        assert_eq!(doc["subjects"][0]["name"], "kvcluster-operator", "{doc}");
        assert_eq!(doc["subjects"][0]["namespace"], NS, "{doc}");
    }
}

/// The rendered PrometheusRule's rules.
fn alert_rules(docs: &[Value]) -> &Value {
    &object(docs, "PrometheusRule", "kvcluster")["spec"]
}

#[test]
fn the_alert_rules_pass_promtool() {
    let Some(helm) = Helm::find("helm_chart::promtool") else {
        return;
    };
    let Some(promtool) = cli_tool(
        "helm_chart::promtool",
        "PROMTOOL",
        "promtool",
        "apt-get install prometheus (scripts/install-deps.sh does)",
    ) else {
        return;
    };
    let docs = render(&helm, &["--values", ALL_ON_VALUES]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, serde_json::to_string(alert_rules(&docs)).unwrap()).unwrap();
    let out = output(Command::new(promtool).arg("check").arg("rules").arg(&file));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules: {text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn the_alerts_and_the_dashboard_name_only_real_metrics() {
    let Some(helm) = Helm::find("helm_chart::metric_names") else {
        return;
    };
    let registered = registered_metrics();
    assert!(
        registered.contains("kv_requests_total")
            && registered.contains("kvoperator_reconcile_errors_total"),
        "the source scan found {registered:?}"
    );
    assert_eq!(
        unknown_metrics("rate(kv_no_such_thing_total[5m])", &registered),
        ["kv_no_such_thing_total"],
        "the check catches a made-up name"
    );

    assert_eq!(
        foreign_metrics(
            "sum by (pod) (rate(node_made_up_total{a=\"b\"}[5m])) > 0.5 and on (pod) up == 1"
        ),
        BTreeSet::from(["node_made_up_total".to_string(), "up".to_string()]),
        "the check finds metrics of others"
    );

    let docs = render(&helm, &["--values", ALL_ON_VALUES]);
    let mut exprs: Vec<(String, String)> = Vec::new();
    for group in alert_rules(&docs)["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            exprs.push((
                format!("alert {}", rule["alert"]),
                rule["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    let dashboard: Value = serde_json::from_str(
        object(&docs, "ConfigMap", "kvcluster-dashboard")["data"]["kvcluster.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push((
                format!("panel {}", panel["title"]),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    // Metrics of others only from the allowed list (the variables' `label_values` are Grafana's,
    // not PromQL, and use ours alone).
    for (what, expr) in &exprs {
        let mut foreign = foreign_metrics(expr);
        foreign.retain(|name| !EXTERNAL_METRICS.contains(&name.as_str()));
        assert!(
            foreign.is_empty(),
            "{what} uses metrics that are neither ours nor in EXTERNAL_METRICS: {foreign:?} in {expr}"
        );
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            exprs.push((format!("variable {}", variable["name"]), query.to_string()));
        }
    }
    assert!(exprs.len() > 20, "{exprs:?}");
    let mut used = BTreeSet::new();
    for (what, expr) in &exprs {
        assert!(
            unknown_metrics(expr, &registered).is_empty(),
            "{what} names metrics no code registers: {:?} in {expr}",
            unknown_metrics(expr, &registered)
        );
        used.extend(metric_names(expr));
    }
    eprintln!(
        "{} expressions use {} metrics: {used:?}",
        exprs.len(),
        used.len()
    );
}

#[test]
fn notes_give_the_next_three_commands() {
    let Some(helm) = Helm::find("helm_chart::notes") else {
        return;
    };
    for (values, wants) in [
        (
            None,
            "helm upgrade kvcluster charts/kvcluster -n kvs --reuse-values --set cluster.enabled=true",
        ),
        (Some(ALL_ON_VALUES), "helm test kvcluster -n kvs"),
    ] {
        let mut cmd = helm.command();
        cmd.args([
            "install",
            "kvcluster",
            CHART,
            "--namespace",
            NS,
            "--dry-run=client",
        ]);
        if let Some(v) = values {
            cmd.args(["--values", v]);
        }
        let out = stdout_of(&mut cmd);
        let notes = out
            .split("NOTES:")
            .nth(1)
            .unwrap_or_else(|| panic!("no NOTES: {out}"));
        assert!(
            notes.contains("kubectl -n kvs rollout status deployment/kvcluster-operator"),
            "{notes}"
        );
        assert!(notes.contains(wants), "{values:?}: {notes}");
        for step in ["1. ", "2. ", "3. "] {
            assert!(notes.contains(step), "{notes}");
        }
    }
}
