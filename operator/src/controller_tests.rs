//! The reconciler against a mocked API server (tower-test) and fake nodes: every request of a
//! reconcile, in order, for first creation, scale up, scale down and a quorum change.
//!
//! A scenario answers each request as the API server would and fails when a request is missing,
//! extra or different, so a change in the reconciler's I/O shows up here first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use kvapi::{ClusterConfig, NodeStatus};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

use super::*;
use crate::builders::fixtures::kvc;
use crate::crd::SECRET_OPT_IN_LABEL;
use crate::nodeadmin::{AdminError, NodeAccess, NodeAdmin, PutOutcome};
use crate::plan::tests::{config, status_with};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// What the fake nodes were asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Status(String),
    Put(String, u64, Vec<String>, (u32, u32, u32)),
    Drain(String),
}

/// Nodes keyed by address; a node without a status does not answer.
#[derive(Default)]
struct FakeNodes {
    statuses: Mutex<HashMap<String, NodeStatus>>,
    calls: Mutex<Vec<Call>>,
}

impl FakeNodes {
    fn with(statuses: Vec<NodeStatus>) -> Self {
        let nodes = FakeNodes::default();
        {
            let mut map = nodes.statuses.lock().unwrap_or_else(|e| e.into_inner());
            for s in statuses {
                map.insert(addr(&s.node_id), s);
            }
        }
        nodes
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, call: Call) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }
}

fn addr(id: &str) -> String {
    format!("{id}.kv-headless.ns.svc:8080")
}

impl NodeAdmin for FakeNodes {
    fn get_status<'a>(
        &'a self,
        address: &'a str,
        _access: &'a NodeAccess,
    ) -> BoxFuture<'a, Result<NodeStatus, AdminError>> {
        Box::pin(async move {
            self.record(Call::Status(address.into()));
            let statuses = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
            statuses
                .get(address)
                .cloned()
                .ok_or_else(|| AdminError::Unreachable(address.into()))
        })
    }

    fn put_config<'a>(
        &'a self,
        address: &'a str,
        _access: &'a NodeAccess,
        config: &'a ClusterConfig,
    ) -> BoxFuture<'a, Result<PutOutcome, AdminError>> {
        Box::pin(async move {
            let ids = config.members.iter().map(|m| m.id.clone()).collect();
            self.record(Call::Put(
                address.into(),
                config.epoch,
                ids,
                (config.n, config.w, config.r),
            ));
            Ok(PutOutcome::Installed(Box::new(config.clone())))
        })
    }

    fn drain<'a>(
        &'a self,
        address: &'a str,
        _access: &'a NodeAccess,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            self.record(Call::Drain(address.into()));
            Ok(())
        })
    }
}

/// The mocked API server's side of the connection.
struct ApiServer {
    handle: ApiHandle,
    kvc: KVCluster,
}

impl ApiServer {
    /// Takes the next request, checks its method and path, and returns its JSON body.
    async fn expect(
        &mut self,
        method: Method,
        path: &str,
    ) -> Result<(String, Value, SendResponse<Response<Body>>), Box<dyn std::error::Error>> {
        let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request()).await;
        let Ok(Some((request, send))) = next else {
            return Err(format!("no request came; expected {method} {path}").into());
        };
        let uri = request.uri().to_string();
        assert_eq!(
            (request.method(), request.uri().path()),
            (&method, path),
            "unexpected request {uri}"
        );
        let bytes = request.into_body().collect_bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        Ok((uri, body, send))
    }

    fn reply(send: SendResponse<Response<Body>>, status: StatusCode, body: &Value) -> TestResult {
        let bytes = serde_json::to_vec(body)?;
        send.send_response(Response::builder().status(status).body(Body::from(bytes))?);
        Ok(())
    }

    async fn get_not_found(&mut self, path: &str) -> TestResult {
        let (_, _, send) = self.expect(Method::GET, path).await?;
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "not found", "reason": "NotFound", "code": 404});
        Self::reply(send, StatusCode::NOT_FOUND, &status)
    }

    async fn get(&mut self, path: &str, object: Value) -> TestResult {
        let (_, _, send) = self.expect(Method::GET, path).await?;
        Self::reply(send, StatusCode::OK, &object)
    }

    /// The pod list: `(ordinal, ready)` per pod.
    async fn list_pods(&mut self, pods: &[(u32, bool)]) -> TestResult {
        let (uri, _, send) = self
            .expect(Method::GET, "/api/v1/namespaces/ns/pods")
            .await?;
        assert!(
            uri.contains("labelSelector=app.kubernetes.io%2Finstance%3Dkv%2Capp.kubernetes.io%2Fname%3Dkvnode"),
            "{uri}"
        );
        let items: Vec<Value> = pods
            .iter()
            .map(|(i, ready)| {
                json!({
                    "metadata": {"name": format!("kv-{i}"), "namespace": "ns"},
                    "status": {"conditions": [{"type": "Ready", "status": if *ready { "True" } else { "False" }}]}
                })
            })
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items});
        Self::reply(send, StatusCode::OK, &list)
    }

    /// A server-side apply: checks the field manager and echoes the object back.
    async fn apply(&mut self, path: &str) -> Result<Value, Box<dyn std::error::Error>> {
        let (uri, body, send) = self.expect(Method::PATCH, path).await?;
        assert!(uri.contains("fieldManager=kvoperator"), "{uri}");
        assert!(uri.contains("force=true"), "{uri}");
        Self::reply(send, StatusCode::OK, &body)?;
        Ok(body)
    }

    /// Every owned object, in the reconciler's order; returns (ConfigMap, StatefulSet, PDB).
    async fn apply_owned(&mut self) -> Result<(Value, Value, Value), Box<dyn std::error::Error>> {
        self.create_context_key().await?;
        let cm = self
            .apply("/api/v1/namespaces/ns/configmaps/kv-config")
            .await?;
        let headless = self
            .apply("/api/v1/namespaces/ns/services/kv-headless")
            .await?;
        assert_eq!(headless["spec"]["clusterIP"], "None");
        let client = self.apply("/api/v1/namespaces/ns/services/kv").await?;
        assert_eq!(client["spec"]["type"], "ClusterIP");
        let sts = self
            .apply("/apis/apps/v1/namespaces/ns/statefulsets/kv")
            .await?;
        let pdb = self
            .apply("/apis/policy/v1/namespaces/ns/poddisruptionbudgets/kv")
            .await?;
        let policy = self
            .apply("/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/kv")
            .await?;
        assert_eq!(policy["spec"]["policyTypes"][0], "Ingress");
        for obj in [&cm, &headless, &client, &sts, &pdb, &policy] {
            assert_eq!(obj["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        }
        Ok((cm, sts, pdb))
    }

    /// The context key Secret's creation, answered "already exists" (what every reconcile but the
    /// first sees), after checking the Secret.
    async fn create_context_key(&mut self) -> TestResult {
        let (_, body, send) = self
            .expect(Method::POST, "/api/v1/namespaces/ns/secrets")
            .await?;
        assert_eq!(body["metadata"]["name"], "kv-context-key", "{body}");
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let key = body["stringData"]["context.key"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(key.len(), 64, "{body}");
        let exists = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "AlreadyExists", "code": 409, "message": "secrets \"kv-context-key\" already exists"});
        Self::reply(send, StatusCode::CONFLICT, &exists)
    }

    /// An event with `reason`.
    async fn event(&mut self, reason: &str) -> Result<Value, Box<dyn std::error::Error>> {
        let (_, body, send) = self
            .expect(Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events")
            .await?;
        assert_eq!(body["reason"], reason, "{body}");
        assert_eq!(body["regarding"]["kind"], "KVCluster");
        assert_eq!(body["regarding"]["name"], "kv");
        assert_eq!(body["reportingController"], "kvoperator");
        Self::reply(send, StatusCode::CREATED, &body)?;
        Ok(body)
    }

    /// The status apply; returns the status written.
    async fn status(&mut self) -> Result<Value, Box<dyn std::error::Error>> {
        let (uri, body, send) = self
            .expect(
                Method::PATCH,
                "/apis/kvcluster.io/v1alpha1/namespaces/ns/kvclusters/kv/status",
            )
            .await?;
        assert!(uri.contains("fieldManager=kvoperator"), "{uri}");
        assert_eq!(body["apiVersion"], "kvcluster.io/v1alpha1");
        assert_eq!(body["kind"], "KVCluster");
        let mut obj = serde_json::to_value(&self.kvc)?;
        obj["status"] = body["status"].clone();
        Self::reply(send, StatusCode::OK, &obj)?;
        Ok(body["status"].clone())
    }

    /// No request is left.
    async fn done(mut self) -> TestResult {
        let extra =
            tokio::time::timeout(Duration::from_millis(100), self.handle.next_request()).await;
        if let Ok(Some((request, _))) = extra {
            return Err(
                format!("unexpected request {} {}", request.method(), request.uri()).into(),
            );
        }
        Ok(())
    }
}

fn context(nodes: FakeNodes, monitor: ServiceMonitorMode) -> (Arc<Context<FakeNodes>>, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let settings = Settings {
        service_monitor: monitor,
        ..Settings::default()
    };
    let metrics = Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}"));
    let ctx = Context::new(
        client,
        nodes,
        AddressSource::default(),
        metrics,
        settings,
        Some("test".into()),
    );
    (Arc::new(ctx), handle)
}

fn sts_json(replicas: u32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
           "metadata": {"name": "kv", "namespace": "ns"},
           "spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": "kv-headless"}})
}

fn cm_json(config: &ClusterConfig) -> Result<Value, serde_json::Error> {
    Ok(json!({"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "kv-config", "namespace": "ns"},
              "data": {"cluster.json": serde_json::to_string(config)?}}))
}

fn stored(cm: &Value) -> Result<ClusterConfig, serde_json::Error> {
    serde_json::from_str(cm["data"]["cluster.json"].as_str().unwrap_or_default())
}

fn ids(n: u32) -> Vec<String> {
    (0..n).map(|i| format!("kv-{i}")).collect()
}

fn id_refs(ids: &[String]) -> Vec<&str> {
    ids.iter().map(String::as_str).collect()
}

/// Nodes `0..count` all on `cfg`.
fn nodes_on(count: u32, cfg: &ClusterConfig) -> Vec<NodeStatus> {
    (0..count)
        .map(|i| status_with(&format!("kv-{i}"), cfg.clone()))
        .collect()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

async fn finish(
    task: tokio::task::JoinHandle<crate::Result<Action>>,
) -> Result<Action, Box<dyn std::error::Error>> {
    Ok(tokio::time::timeout(Duration::from_secs(5), task).await???)
}

#[tokio::test]
async fn first_creation_applies_everything_with_the_first_config() -> TestResult {
    let (ctx, handle) = context(FakeNodes::default(), ServiceMonitorMode::Never);
    let resource = kvc(3, 3, 2, 2);
    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    let mut api = ApiServer {
        handle,
        kvc: resource,
    };

    api.get_not_found("/apis/apps/v1/namespaces/ns/statefulsets/kv")
        .await?;
    api.get_not_found("/api/v1/namespaces/ns/configmaps/kv-config")
        .await?;
    api.list_pods(&[]).await?;
    let (cm, sts, pdb) = api.apply_owned().await?;
    let first = stored(&cm)?;
    assert_eq!(first, config(1, &["kv-0", "kv-1", "kv-2"], 3, 2, 2));
    assert_eq!(first.cluster, "ns/kv");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let event = api.event("Created").await?;
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .contains("[kv-0,kv-1,kv-2]")
    );
    let status = api.status().await?;
    assert_eq!(status["phase"], "Creating");
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["readyReplicas"], 0);
    assert_eq!(status["ringEpoch"], 0);
    assert_eq!(status["consistency"], "Strong");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(&status, "Progressing")["status"], "True");
    assert_eq!(condition(&status, "Available")["status"], "False");
    api.done().await?;

    assert_eq!(finish(task).await?, Action::requeue(Duration::from_secs(5)));
    assert!(ctx.admin.calls().is_empty(), "no pod, no admin call");
    Ok(())
}

#[tokio::test]
async fn service_monitor_is_applied_when_its_api_is_served() -> TestResult {
    let (ctx, handle) = context(FakeNodes::default(), ServiceMonitorMode::Auto);
    let resource = kvc(3, 3, 2, 2);
    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    let mut api = ApiServer {
        handle,
        kvc: resource,
    };
    api.get_not_found("/apis/apps/v1/namespaces/ns/statefulsets/kv")
        .await?;
    api.get_not_found("/api/v1/namespaces/ns/configmaps/kv-config")
        .await?;
    api.list_pods(&[]).await?;
    api.apply_owned().await?;
    let groups = json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "monitoring.coreos.com", "versions": [{"groupVersion": "monitoring.coreos.com/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "monitoring.coreos.com/v1", "version": "v1"}}]});
    api.get("/apis", groups).await?;
    let sm = api
        .apply("/apis/monitoring.coreos.com/v1/namespaces/ns/servicemonitors/kv")
        .await?;
    assert_eq!(sm["kind"], "ServiceMonitor");
    api.event("Created").await?;
    api.status().await?;
    api.done().await?;
    finish(task).await?;
    Ok(())
}

#[tokio::test]
async fn scale_up_grows_the_statefulset_then_pushes_the_new_members() -> TestResult {
    let ring = config(2, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
    let (ctx, handle) = context(
        FakeNodes::with(nodes_on(3, &ring)),
        ServiceMonitorMode::Never,
    );
    let resource = kvc(5, 3, 2, 2);

    // Round 1: three pods, spec asks for five: grow, push nothing.
    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    let mut api = ApiServer {
        handle,
        kvc: resource.clone(),
    };
    api.get("/apis/apps/v1/namespaces/ns/statefulsets/kv", sts_json(3))
        .await?;
    api.get(
        "/api/v1/namespaces/ns/configmaps/kv-config",
        cm_json(&config(1, &["kv-0", "kv-1", "kv-2"], 3, 2, 2))?,
    )
    .await?;
    api.list_pods(&[(0, true), (1, true), (2, true)]).await?;
    let (cm, sts, _) = api.apply_owned().await?;
    assert_eq!(
        stored(&cm)?,
        ring,
        "the ConfigMap follows the nodes' epoch, not the spec"
    );
    assert_eq!(sts["spec"]["replicas"], 5);
    let status = api.status().await?;
    assert_eq!(status["phase"], "ScalingUp");
    assert_eq!(status["ringEpoch"], 2);
    assert_eq!(status["members"], json!(["kv-0", "kv-1", "kv-2"]));
    assert_eq!(finish(task).await?, Action::requeue(Duration::from_secs(5)));
    assert!(!ctx.admin.calls().iter().any(|c| matches!(c, Call::Put(..))));

    // Round 2: the new pods are ready and answer: push epoch 3 with five members to all five.
    {
        let mut statuses = ctx.admin.statuses.lock().unwrap_or_else(|e| e.into_inner());
        for s in nodes_on(5, &ring) {
            statuses.insert(addr(&s.node_id), s);
        }
    }
    ctx.admin
        .calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    api.get("/apis/apps/v1/namespaces/ns/statefulsets/kv", sts_json(5))
        .await?;
    api.get(
        "/api/v1/namespaces/ns/configmaps/kv-config",
        cm_json(&ring)?,
    )
    .await?;
    api.list_pods(&[(0, true), (1, true), (2, true), (3, true), (4, true)])
        .await?;
    let (_, sts, _) = api.apply_owned().await?;
    assert_eq!(sts["spec"]["replicas"], 5);
    let event = api.event("RingChangeStarted").await?;
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .contains("epoch 2 → 3"),
        "{event}"
    );
    let status = api.status().await?;
    assert_eq!(status["phase"], "ScalingUp");
    api.done().await?;
    finish(task).await?;

    let five = ids(5);
    let puts: Vec<Call> = (0..5)
        .map(|i| Call::Put(addr(&format!("kv-{i}")), 3, five.clone(), (3, 2, 2)))
        .collect();
    let calls = ctx.admin.calls();
    assert_eq!(
        &calls[5..],
        &puts[..],
        "statuses first, then the same config to every node"
    );
    assert_eq!(id_refs(&five).len(), 5);
    Ok(())
}

#[tokio::test]
async fn scale_down_pushes_first_and_shrinks_only_when_settled_and_drained() -> TestResult {
    let five = config(5, &["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"], 3, 2, 2);
    let (ctx, handle) = context(
        FakeNodes::with(nodes_on(5, &five)),
        ServiceMonitorMode::Never,
    );
    let resource = kvc(3, 3, 2, 2);
    let all_ready = [(0, true), (1, true), (2, true), (3, true), (4, true)];

    // Round 1: push the three-member ring; keep all five pods.
    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    let mut api = ApiServer {
        handle,
        kvc: resource.clone(),
    };
    api.get("/apis/apps/v1/namespaces/ns/statefulsets/kv", sts_json(5))
        .await?;
    api.get(
        "/api/v1/namespaces/ns/configmaps/kv-config",
        cm_json(&five)?,
    )
    .await?;
    api.list_pods(&all_ready).await?;
    let (_, sts, _) = api.apply_owned().await?;
    assert_eq!(
        sts["spec"]["replicas"], 5,
        "leaving pods stay while their data moves"
    );
    api.event("RingChangeStarted").await?;
    let status = api.status().await?;
    assert_eq!(status["phase"], "ScalingDown");
    finish(task).await?;
    let calls = ctx.admin.calls();
    assert!(
        calls.contains(&Call::Put(addr("kv-0"), 6, ids(3), (3, 2, 2))),
        "{calls:?}"
    );

    // Round 2: the nodes settled on epoch 7 without kv-3 and kv-4, but kv-3 still holds hints.
    let three = config(7, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
    {
        let mut statuses = ctx.admin.statuses.lock().unwrap_or_else(|e| e.into_inner());
        for mut s in nodes_on(5, &three) {
            if s.node_id == "kv-3" {
                s.hints_pending = 4;
            }
            statuses.insert(addr(&s.node_id), s);
        }
    }
    ctx.admin
        .calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    api.get("/apis/apps/v1/namespaces/ns/statefulsets/kv", sts_json(5))
        .await?;
    api.get(
        "/api/v1/namespaces/ns/configmaps/kv-config",
        cm_json(&five)?,
    )
    .await?;
    api.list_pods(&all_ready).await?;
    let (cm, sts, _) = api.apply_owned().await?;
    assert_eq!(stored(&cm)?, three);
    assert_eq!(sts["spec"]["replicas"], 5);
    let status = api.status().await?;
    assert_eq!(status["phase"], "ScalingDown");
    finish(task).await?;
    assert_eq!(ctx.admin.calls().last(), Some(&Call::Drain(addr("kv-3"))));

    // Round 3: hints delivered: shrink the StatefulSet to three.
    {
        let mut statuses = ctx.admin.statuses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = statuses.get_mut(&addr("kv-3")) {
            s.hints_pending = 0;
            s.draining = true;
        }
    }
    ctx.admin
        .calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    api.get("/apis/apps/v1/namespaces/ns/statefulsets/kv", sts_json(5))
        .await?;
    api.get(
        "/api/v1/namespaces/ns/configmaps/kv-config",
        cm_json(&three)?,
    )
    .await?;
    api.list_pods(&all_ready).await?;
    let (_, sts, _) = api.apply_owned().await?;
    assert_eq!(sts["spec"]["replicas"], 3);
    let event = api.event("MembersStopped").await?;
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .contains("StatefulSet 5 → 3"),
        "{event}"
    );
    let status = api.status().await?;
    assert_eq!(status["phase"], "ScalingDown");
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["ringEpoch"], 7);
    assert_eq!(condition(&status, "RingSettled")["status"], "True");
    api.done().await?;
    finish(task).await?;
    assert!(
        ctx.admin
            .calls()
            .iter()
            .all(|c| matches!(c, Call::Status(_)))
    );
    Ok(())
}

#[tokio::test]
async fn quorum_change_is_pushed_to_running_nodes_without_touching_pods() -> TestResult {
    let ring = config(4, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
    let (ctx, handle) = context(
        FakeNodes::with(nodes_on(3, &ring)),
        ServiceMonitorMode::Never,
    );
    let resource = kvc(3, 3, 1, 3);
    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    let mut api = ApiServer {
        handle,
        kvc: resource,
    };
    api.get("/apis/apps/v1/namespaces/ns/statefulsets/kv", sts_json(3))
        .await?;
    api.get(
        "/api/v1/namespaces/ns/configmaps/kv-config",
        cm_json(&ring)?,
    )
    .await?;
    api.list_pods(&[(0, true), (1, true), (2, true)]).await?;
    let (cm, sts, pdb) = api.apply_owned().await?;
    assert_eq!(stored(&cm)?, ring);
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(
        sts["spec"]["template"],
        serde_json::to_value(statefulset::build(&kvc(3, 3, 2, 2), 3).spec.template)?,
        "the pod template does not depend on W and R: no restart"
    );
    assert_eq!(
        pdb["spec"]["maxUnavailable"], 0,
        "R = N: no voluntary eviction keeps reads whole"
    );
    let event = api.event("QuorumsChanged").await?;
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .contains("W 2 → 1, R 2 → 3"),
        "{event}"
    );
    let status = api.status().await?;
    assert_eq!(status["phase"], "Reconfiguring");
    api.done().await?;
    finish(task).await?;

    let want: Vec<Call> = (0..3)
        .map(|i| Call::Status(addr(&format!("kv-{i}"))))
        .chain((0..3).map(|i| Call::Put(addr(&format!("kv-{i}")), 5, ids(3), (3, 1, 3))))
        .collect();
    assert_eq!(ctx.admin.calls(), want);
    Ok(())
}

#[tokio::test]
async fn settled_cluster_reports_running_and_requeues_slowly() -> TestResult {
    let ring = config(4, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
    let (ctx, handle) = context(
        FakeNodes::with(nodes_on(3, &ring)),
        ServiceMonitorMode::Never,
    );
    let mut resource = kvc(3, 3, 2, 2);
    // the last status still showed a transition: its completion gets an event
    resource.status = Some(crate::crd::KVClusterStatus {
        transition: Some(crate::crd::TransitionStatus {
            from_epoch: 2,
            to_epoch: 3,
            partitions_pending: 5,
            ..Default::default()
        }),
        ..Default::default()
    });
    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    let mut api = ApiServer {
        handle,
        kvc: resource,
    };
    api.get("/apis/apps/v1/namespaces/ns/statefulsets/kv", sts_json(3))
        .await?;
    api.get(
        "/api/v1/namespaces/ns/configmaps/kv-config",
        cm_json(&ring)?,
    )
    .await?;
    api.list_pods(&[(0, true), (1, true), (2, true)]).await?;
    api.apply_owned().await?;
    api.event("RingChangeCompleted").await?;
    let status = api.status().await?;
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["readyReplicas"], 3);
    assert_eq!(
        status.get("transition"),
        None,
        "a settled ring has no transition"
    );
    for (t, want) in [
        ("Available", "True"),
        ("Progressing", "False"),
        ("Degraded", "False"),
        ("RingSettled", "True"),
    ] {
        assert_eq!(condition(&status, t)["status"], want, "{t}");
    }
    api.done().await?;
    assert_eq!(
        finish(task).await?,
        Action::requeue(Duration::from_secs(60))
    );
    // The status just written is what the per-cluster metrics say.
    let metrics = ctx.metrics.render();
    let labels = r#"kvcluster_name="kv",kvcluster_namespace="ns""#;
    for line in [
        format!(r#"kvoperator_cluster_phase{{{labels},phase="Running"}} 1"#),
        format!("kvoperator_cluster_members_ready{{{labels}}} 3"),
        format!("kvoperator_cluster_ring_epoch{{{labels}}} 4"),
        format!("kvoperator_cluster_ring_change_age_seconds{{{labels}}} 0"),
    ] {
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    }
    Ok(())
}

#[tokio::test]
async fn an_admin_token_secret_without_the_opt_in_label_is_refused_before_anything_is_applied()
-> TestResult {
    let (ctx, handle) = context(FakeNodes::default(), ServiceMonitorMode::Never);
    let mut resource = kvc(3, 3, 2, 2);
    resource.spec.auth.admin_token_secret_ref = Some(crate::crd::SecretKeyRef {
        name: "db-password".into(),
        key: "token".into(),
    });
    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    let mut api = ApiServer {
        handle,
        kvc: resource,
    };
    // Some other Secret of the namespace, named by whoever wrote the resource.
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db-password", "namespace": "ns"}, "data": {"token": "aHVudGVyMg=="}});
    api.get("/api/v1/namespaces/ns/secrets/db-password", secret)
        .await?;
    let result = tokio::time::timeout(Duration::from_secs(5), task).await??;
    let Err(error) = result else {
        return Err("reconcile went on with an unlabelled Secret".into());
    };
    assert_eq!(error.metric_label(), "secret");
    assert!(error.to_string().contains(SECRET_OPT_IN_LABEL), "{error}");
    api.done().await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_api_call_fails_the_reconcile_and_backs_off() -> TestResult {
    let (ctx, handle) = context(FakeNodes::default(), ServiceMonitorMode::Never);
    let resource = Arc::new(kvc(3, 3, 2, 2));
    let task = tokio::spawn(reconcile(resource.clone(), ctx.clone()));
    let mut api = ApiServer {
        handle,
        kvc: (*resource).clone(),
    };
    let (_, _, send) = api
        .expect(Method::GET, "/apis/apps/v1/namespaces/ns/statefulsets/kv")
        .await?;
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "forbidden", "reason": "Forbidden", "code": 403});
    ApiServer::reply(send, StatusCode::FORBIDDEN, &status)?;
    let result = tokio::time::timeout(Duration::from_secs(5), task).await??;
    let Err(error) = result else {
        return Err("reconcile succeeded".into());
    };
    assert_eq!(error.metric_label(), "kube");
    let first = error_policy(resource.clone(), &error, ctx.clone());
    let second = error_policy(resource.clone(), &error, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(1)));
    assert_eq!(second, Action::requeue(Duration::from_secs(2)));
    assert!(
        ctx.metrics
            .render()
            .contains(r#"kvoperator_reconcile_errors_total{error="kube",kvcluster_name="kv",kvcluster_namespace="ns"} 1"#)
    );
    assert_eq!(resource.name_any(), "kv");
    Ok(())
}

/// A plan for a ring settled on `cfg` with pods `kv-0..count`.
fn settled_plan(count: u32, cfg: &ClusterConfig) -> Plan {
    let ids: Vec<String> = (0..count).map(|i| format!("kv-{i}")).collect();
    let pods = nodes_on(count, cfg)
        .into_iter()
        .enumerate()
        .map(|(i, s)| plan::PodView {
            id: ids[i].clone(),
            ordinal: u32::try_from(i).unwrap_or(0),
            address: s.config.members[i].address.clone(),
            ready: true,
            status: Some(s),
        })
        .collect();
    plan::plan(&Observed {
        name: "kv".into(),
        desired: Desired {
            cluster: cfg.cluster.clone(),
            members: cfg.members.clone(),
            n: cfg.n,
            w: cfg.w,
            r: cfg.r,
            partitions: cfg.partitions,
        },
        statefulset_replicas: Some(count),
        pods,
        stored_config: None,
    })
}

#[test]
fn a_ring_change_completed_between_two_reconciles_still_gets_its_event() {
    let three = config(6, &["kv-0", "kv-1", "kv-2"], 3, 2, 2);
    let p = settled_plan(3, &three);
    assert!(p.ring.settled());
    let mut resource = kvc(3, 3, 2, 2);
    // the last status saw five members at epoch 4 and no change in progress
    resource.status = Some(crate::crd::KVClusterStatus {
        ring_epoch: 4,
        members: (0..5).map(|i| format!("kv-{i}")).collect(),
        ..Default::default()
    });
    let event = completion_event(&resource, &p).map(|e| (e.reason, e.note));
    assert_eq!(
        event,
        Some((
            "RingChangeCompleted".to_string(),
            "ring change complete: members [kv-0,kv-1,kv-2,kv-3,kv-4] → [kv-0,kv-1,kv-2], ring at epoch 6"
                .to_string()
        ))
    );
    // once the status shows the new ring (or only quorums changed), nothing more
    resource.status = Some(crate::crd::KVClusterStatus {
        ring_epoch: 5,
        members: vec!["kv-0".into(), "kv-1".into(), "kv-2".into()],
        ..Default::default()
    });
    assert_eq!(completion_event(&resource, &p), None);
    resource.status = Some(crate::crd::KVClusterStatus::default());
    assert_eq!(completion_event(&resource, &p), None, "a new cluster");
}

#[test]
fn error_backoff_doubles_up_to_the_cap() {
    let s = Settings::default();
    let delays: Vec<u64> = (1..=10).map(|n| error_backoff(&s, n).as_secs()).collect();
    assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 64, 120, 120, 120]);
    assert_eq!(error_backoff(&s, u32::MAX), Duration::from_secs(120));
}
