//! A real Prometheus (Debian `prometheus`) scraping a 3-node local cluster every second, with the
//! chart's alert rules: after a bounded load every dashboard panel query parses and the node panels
//! return data, and `KVNodeDown` fires after a node is killed with SIGKILL and resolves once it is
//! back. The rules are a copy of `charts/kvcluster/files/alerts.yaml` with every `for:` shortened to
//! [`FOR`], so the test takes seconds, not minutes. The operator runs too, against a real
//! kube-apiserver, reconciling a KVCluster that names a missing Secret (so its error series exist
//! as well), and Prometheus scrapes it: the operator panels return data too. Skipped with a loud
//! message when `prometheus` or the Kubernetes test binaries are missing, unless `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use kvcluster_tests::helm::cli_tool;
use kvcluster_tests::kube::{ControlPlane, OperatorProcess, repo_path};
use kvcluster_tests::{Cluster, free_ports, http_client_builder};
use kvoperator::crd::KVCluster;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// The `for:` window of every alert in the rendered copy of the rules.
const FOR: &str = "5s";

/// How long a condition may take to show in Prometheus: several 1 s scrapes and evaluations.
const SETTLE: Duration = Duration::from_secs(30);

/// A running Prometheus, killed and its TSDB removed when dropped (also when the test fails).
struct Prometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `binary` scraping every node of `cluster` and the operator at `operator` each
    /// second, with the chart's rules.
    async fn start(binary: &Path, cluster: &Cluster, operator: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvcluster-prometheus-")
            .tempdir()
            .unwrap();
        let rules =
            std::fs::read_to_string(repo_path("charts/kvcluster/files/alerts.yaml")).unwrap();
        std::fs::write(dir.path().join("rules.yaml"), shorten_for(&rules)).unwrap();
        // The labels the Prometheus Operator would add on Kubernetes, which the rules and the
        // dashboard select on.
        let targets: String = (0..cluster.len())
            .map(|i| {
                format!(
                    "      - targets: ['{}']\n        labels: {{container: kvnode, namespace: local, service: test, pod: {}}}\n",
                    cluster.node(i).addr(),
                    cluster.id(i)
                )
            })
            .collect();
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
             rule_files: [rules.yaml]\n\
             scrape_configs:\n  - job_name: kvnode\n    static_configs:\n{targets}\
             \x20 - job_name: kvoperator\n    static_configs:\n      - targets: ['{operator}']\n        \
             labels: {{container: kvoperator, namespace: kvcluster-system, pod: kvoperator-0}}\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_ports(1)[0];
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .current_dir(dir.path())
            .arg("--config.file=prometheus.yml")
            .arg("--storage.tsdb.path=data")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let prometheus = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            http: http_client_builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        let ready = prometheus
            .poll(|p| async move {
                let url = format!("{}/-/ready", p.base);
                p.http
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            })
            .await;
        assert!(ready, "Prometheus not ready:\n{}", prometheus.log());
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` of the HTTP API; panics unless it answers `"status": "success"`.
    async fn api(&self, path: &str) -> Value {
        let text = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["status"], "success", "{path}: {text}");
        body
    }

    /// The result of instant query `query`.
    async fn query(&self, query: &str) -> Vec<Value> {
        let path = format!(
            "/api/v1/query?query={}",
            utf8_percent_encode(query, NON_ALPHANUMERIC)
        );
        self.api(&path).await["data"]["result"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The state (`pending`, `firing`) of alert `name` for pod `pod`, `None` when inactive.
    async fn alert_state(&self, name: &str, pod: &str) -> Option<String> {
        self.api("/api/v1/alerts").await["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == name && a["labels"]["pod"] == pod)
            .map(|a| a["state"].as_str().unwrap().to_string())
    }

    /// Polls `check` every 500 ms until it holds or [`SETTLE`] passed; whether it held.
    async fn poll<'a, F, Fut>(&'a self, check: F) -> bool
    where
        F: Fn(&'a Self) -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            if check(self).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }
}

/// `rules` with every `for:` window replaced by [`FOR`].
fn shorten_for(rules: &str) -> String {
    rules
        .lines()
        .map(|line| match line.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: {FOR}\n"),
            _ => format!("{line}\n"),
        })
        .collect()
}

/// Each panel's title and queries, with Grafana's variables replaced: the rate interval by `1m`,
/// the others (namespace, cluster) by `.*`.
fn panel_queries() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo_path("charts/kvcluster/dashboards/kvcluster.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            assert!(!expr.contains("$__"), "unknown Grafana variable in {expr}");
            let mut query = String::new();
            let mut rest = expr.as_str();
            while let Some(at) = rest.find('$') {
                query.push_str(&rest[..at]);
                query.push_str(".*");
                rest = rest[at + 1..].trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
            }
            query.push_str(rest);
            queries.push((
                panel["title"].as_str().unwrap_or_default().to_string(),
                query,
            ));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_queries_return_data_and_node_down_fires_and_resolves() {
    let Some(binary) = cli_tool(
        "prometheus::real_prometheus",
        "PROMETHEUS",
        "prometheus",
        "apt-get install prometheus (scripts/install-deps.sh does)",
    ) else {
        return;
    };
    let Some(plane) = ControlPlane::start("prometheus::real_prometheus").await else {
        return;
    };
    let t0 = Instant::now();
    let mut cluster = Cluster::start(3, 3, 2, 2).await;
    // The operator, reconciling one KVCluster whose admin token Secret does not exist: every
    // reconcile fails, so the error panel has a series to show.
    plane.install_kvcluster_crd().await;
    let kubeconfig = plane
        .operator_identity(&kvoperator::rbac::cluster_role())
        .await;
    let operator_address = format!("127.0.0.1:{}", free_ports(1)[0]);
    let mut operator = OperatorProcess::start(
        &kubeconfig,
        &format!("kvoperator-prometheus-{}", std::process::id()),
        &[
            "--leader-election",
            "false",
            "--listen",
            &operator_address,
            "--progress-interval",
            "1s",
            "--admin-timeout",
            "1s",
        ],
        &plane.dir().join("operator.log"),
    );
    let resource: KVCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "kvcluster.io/v1alpha1", "kind": "KVCluster",
        "metadata": {"name": "watched", "namespace": "default"},
        "spec": {"replicas": 1, "replicationFactor": 1, "writeQuorum": 1, "readQuorum": 1,
                 "image": "kvnode:test", "storage": {"size": "1Gi"},
                 "auth": {"adminTokenSecretRef": {"name": "absent"}}}
    }))
    .unwrap();
    Api::<KVCluster>::namespaced(plane.client(), "default")
        .create(&PostParams::default(), &resource)
        .await
        .unwrap();
    let prometheus = Prometheus::start(&binary, &cluster, &operator_address).await;

    // A bounded load through every node: 300 writes and reads, at most 20 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..300 {
        if Instant::now() > deadline {
            break;
        }
        let client = cluster.client(i % cluster.len());
        let key = format!("load-{}", i % 50);
        client.put(key.as_bytes(), b"v", None).await;
        client.get(key.as_bytes()).await;
    }
    eprintln!("load done after {:?}", t0.elapsed());

    // Every query parses (`api` asserts success) and returns data once rates have two samples.
    let queries = panel_queries();
    let all_data = prometheus
        .poll(|p| {
            let queries = &queries;
            async move {
                for (_, query) in queries {
                    if p.query(query).await.is_empty() {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    let mut empty = Vec::new();
    if !all_data {
        for (title, query) in &queries {
            if prometheus.query(query).await.is_empty() {
                empty.push(format!("{title}: {query}"));
            }
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data after {SETTLE:?}: {empty:#?}\noperator log:\n{}",
        operator.log_tail(20)
    );
    assert!(operator.is_running(), "{}", operator.log_tail(20));
    eprintln!(
        "{} panel queries ({} on the operator) return data, after {:?}",
        queries.len(),
        queries
            .iter()
            .filter(|(_, q)| q.contains("kvoperator_"))
            .count(),
        t0.elapsed()
    );

    // kv-2 dies: KVNodeDown fires for it within the shortened `for` (plus scrapes and evaluations).
    let pod = cluster.id(2);
    assert_eq!(prometheus.alert_state("KVNodeDown", &pod).await, None);
    cluster.kill9(2);
    let killed = Instant::now();
    let fired = prometheus
        .poll(|p| {
            let pod = &pod;
            async move { p.alert_state("KVNodeDown", pod).await.as_deref() == Some("firing") }
        })
        .await;
    assert!(fired, "KVNodeDown did not fire for {pod} within {SETTLE:?}");
    let fired_after = killed.elapsed();
    assert!(
        fired_after >= Duration::from_secs(4),
        "KVNodeDown fired {fired_after:?} after the kill, before its for: {FOR} (less a scrape)"
    );
    eprintln!("KVNodeDown fired {fired_after:?} after the kill");

    cluster.restart(2);
    let resolved = prometheus
        .poll(|p| {
            let pod = &pod;
            async move { p.alert_state("KVNodeDown", pod).await.is_none() }
        })
        .await;
    assert!(
        resolved,
        "KVNodeDown still active for {pod} after its restart"
    );
    eprintln!("KVNodeDown resolved; test took {:?}", t0.elapsed());
    operator.stop();
}
