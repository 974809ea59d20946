//! The operator end to end against a real kube-apiserver + etcd on loopback: `kvoperator` runs as
//! its own process under its ServiceAccount's RBAC (a Lease held, every owned object applied
//! server-side, status through the status subresource), and this test plays the parts that are
//! not there: the StatefulSet controller and the kubelets. It turns the StatefulSet's
//! `spec.replicas` into Pods and real `kvnode` processes on 127.0.0.1 (started from the ConfigMap's
//! `cluster.json`), marks a Pod Ready once its node answers `/health/ready`, and stops the node and
//! deletes the Pod when the StatefulSet shrinks.
//!
//! Scenario: 3 pods (N=3, W=2, R=2) under a write load → 5 → 3, then W 2 → 1. Every acknowledged
//! write reads back, the StatefulSet shrinks only after the leaving nodes reported the ring settled
//! without them, and the quorum change reaches the running nodes without restarting them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kvapi::NodeStatus;
use kvcluster_tests::kube::{ControlPlane, OperatorProcess};
use kvcluster_tests::kubelet;
use kvcluster_tests::load::{LoadLimits, WriteLoad};
use kvcluster_tests::{
    KvClient, NodeBuilder, NodeProcess, free_ports, http_client_builder, metric_sum,
    wait_for_status,
};
use kvoperator::crd::{Consistency, KVCluster, KVClusterStatus};
use serde_json::json;

const NS: &str = "kv-scaling";
const NAME: &str = "demo";
/// Highest pod count of the scenario: a loopback port is reserved for each ordinal up front.
const MAX_PODS: u32 = 5;
/// How often the fake StatefulSet controller and kubelets look at the cluster.
const ROUND: Duration = Duration::from_millis(100);
/// Longest wait for one step of the scenario (creation, a scale, a quorum change).
const STEP_TIMEOUT: Duration = Duration::from_secs(90);
/// Keys written before scaling, so there is data to move.
const PRELOAD: usize = 300;
/// The background load: 2 writers, writes 10 ms apart, for at most 150 s.
const LOAD: LoadLimits = LoadLimits {
    writers: 2,
    max_writes_per_writer: 15_000,
    pause: Duration::from_millis(10),
    limit: Duration::from_secs(150),
};

fn pod_name(i: u32) -> String {
    format!("{NAME}-{i}")
}

/// What the fake controllers saw, in the order they saw it. A round reads the StatefulSet first,
/// then every running node's status, then acts; so "node X was settled out of the ring in round
/// r ≤ the round where the StatefulSet first said 3" means its status was read no earlier than
/// the StatefulSet's in that round, and still showed it settled out.
#[derive(Debug, Default)]
struct Timeline {
    round: u64,
    /// `(round, when, replicas)` each time the StatefulSet's `spec.replicas` changed.
    sts_replicas: Vec<(u64, Instant, i32)>,
    /// Nodes seen as ring members at least once.
    was_member: BTreeSet<String>,
    /// First `(round, when)` a former member reported `member=false` on a settled ring.
    left_settled: BTreeMap<String, (u64, Instant)>,
    /// The status each node reported in the round it was stopped, and when.
    stopped: Vec<(String, Instant, Option<NodeStatus>)>,
    /// Pods marked Ready: `(pod, when)`.
    ready: Vec<(String, Instant)>,
    /// Every node process started: `(pod, pid)`.
    started: Vec<(String, u32)>,
}

impl Timeline {
    /// The pids of the processes started for `pod`, in order.
    fn pids_of(&self, pod: &str) -> Vec<u32> {
        self.started
            .iter()
            .filter(|(p, _)| p == pod)
            .map(|(_, pid)| *pid)
            .collect()
    }
}

/// The StatefulSet controller and the kubelets of one KVCluster, as a loop.
struct FakeKubelets {
    client: Client,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
    nodes: BTreeMap<u32, NodeProcess>,
    admin: BTreeMap<u32, KvClient>,
    marked_ready: BTreeSet<u32>,
    timeline: Arc<Mutex<Timeline>>,
}

impl FakeKubelets {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn round(&mut self) {
        let now = Instant::now();
        let round = {
            let mut t = self.timeline.lock().unwrap();
            t.round += 1;
            t.round
        };
        let sts = Api::<StatefulSet>::namespaced(self.client.clone(), NS)
            .get_opt(NAME)
            .await
            .expect("read the StatefulSet");
        let Some(sts) = sts else { return };
        let replicas = sts.spec.replicas.unwrap_or(0);
        {
            let mut t = self.timeline.lock().unwrap();
            if t.sts_replicas.last().is_none_or(|(_, _, r)| *r != replicas) {
                eprintln!("kubelets: StatefulSet replicas = {replicas} (round {round})");
                t.sts_replicas.push((round, now, replicas));
            }
        }
        // Every running node's status, read after the StatefulSet.
        let mut statuses: BTreeMap<u32, Option<NodeStatus>> = BTreeMap::new();
        for (&i, client) in &self.admin {
            statuses.insert(i, client.try_admin_status().await);
        }
        {
            let mut t = self.timeline.lock().unwrap();
            for status in statuses.values().flatten() {
                let id = status.node_id.clone();
                if status.member {
                    t.was_member.insert(id);
                } else if t.was_member.contains(&id)
                    && !status.config.in_transition()
                    && !t.left_settled.contains_key(&id)
                {
                    t.left_settled.insert(id, (round, now));
                }
            }
        }
        let replicas = u32::try_from(replicas).unwrap_or(0);
        for i in 0..replicas.min(MAX_PODS) {
            self.ensure_pod_and_node(i, &sts).await;
        }
        let leaving: Vec<u32> = self
            .nodes
            .keys()
            .copied()
            .filter(|i| *i >= replicas)
            .collect();
        for i in leaving {
            let mut status = statuses.get(&i).cloned().flatten();
            if status.is_none() {
                // One slow answer must not hide the node's state: ask again (still after the
                // StatefulSet read of this round).
                for _ in 0..10 {
                    status = self.admin[&i].try_admin_status().await;
                    if status.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if let Some(s) = &status {
                    let mut t = self.timeline.lock().unwrap();
                    if !s.member && !s.config.in_transition() && t.was_member.contains(&s.node_id) {
                        t.left_settled
                            .entry(s.node_id.clone())
                            .or_insert((round, now));
                    }
                }
            }
            let mut node = self.nodes.remove(&i).unwrap();
            self.admin.remove(&i);
            self.marked_ready.remove(&i);
            let exit = tokio::task::block_in_place(|| node.stop());
            assert!(
                exit.success(),
                "{} exited with {exit} on SIGTERM",
                pod_name(i)
            );
            eprintln!("kubelets: stopped {} ({exit})", pod_name(i));
            self.timeline
                .lock()
                .unwrap()
                .stopped
                .push((pod_name(i), Instant::now(), status));
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            match self.pods().delete(&pod_name(i), &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => panic!("delete pod {}: {e}", pod_name(i)),
            }
        }
    }

    /// Pod `i` exists, its node runs, and the Pod is Ready once the node is.
    async fn ensure_pod_and_node(&mut self, i: u32, sts: &StatefulSet) {
        let name = pod_name(i);
        if !self.nodes.contains_key(&i) {
            // The kubelet mounts the ConfigMap as it is when the pod starts.
            let cm = Api::<ConfigMap>::namespaced(self.client.clone(), NS)
                .get(&format!("{NAME}-config"))
                .await
                .expect("the ConfigMap exists before the StatefulSet");
            let json = cm.data.unwrap_or_default()["cluster.json"].clone();
            let config_path = self.dir.path().join(format!("{name}.cluster.json"));
            std::fs::write(&config_path, json).unwrap();
            // And the context key Secret the operator created, as the pod's secret volume.
            let secret = Api::<Secret>::namespaced(self.client.clone(), NS)
                .get(&format!("{NAME}-context-key"))
                .await
                .expect("the context key Secret exists before the StatefulSet");
            let key = secret.data.unwrap_or_default()["context.key"].0.clone();
            let key_path = self.dir.path().join(format!("{name}.context.key"));
            std::fs::write(&key_path, key).unwrap();
            let port = self.ports[i as usize];
            let builder = NodeBuilder::new().without_listen().args([
                "--node-id".to_string(),
                name.clone(),
                "--listen".to_string(),
                format!("127.0.0.1:{port}"),
                "--peer-listen".to_string(),
                format!("127.0.0.1:{}", peer_port(&self.ports, i as usize)),
                "--cluster-config".to_string(),
                config_path.display().to_string(),
                "--context-key-file".to_string(),
                key_path.display().to_string(),
                "--cache-size".to_string(),
                "16MiB".to_string(),
            ]);
            let node = tokio::task::block_in_place(|| builder.start());
            eprintln!(
                "kubelets: started {name} on {} (pid {})",
                node.addr(),
                node.pid()
            );
            self.timeline
                .lock()
                .unwrap()
                .started
                .push((name.clone(), node.pid()));
            self.admin.insert(
                i,
                KvClient::with_timeout(&node.base_url(), Duration::from_secs(2)),
            );
            self.nodes.insert(i, node);
            kubelet::create_pod(&self.client, sts, i).await;
        }
        if !self.marked_ready.contains(&i)
            && wait_for_status(
                &self.admin[&i],
                kvapi::HEALTH_READY,
                200,
                Duration::from_millis(1),
            )
            .await
        {
            kubelet::mark_ready(&self.client, NS, &name).await;
            self.marked_ready.insert(i);
            self.timeline
                .lock()
                .unwrap()
                .ready
                .push((name.clone(), Instant::now()));
            eprintln!("kubelets: {name} Ready");
        }
    }
}

/// Runs the fake controllers until `stop` is set; returns them (with their nodes) at the end.
fn spawn_kubelets(
    mut kubelets: FakeKubelets,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<FakeKubelets> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Acquire) {
            kubelets.round().await;
            tokio::time::sleep(ROUND).await;
        }
        kubelets
    })
}

fn condition<'a>(kvc: &'a KVCluster, type_: &str) -> Option<&'a str> {
    kvc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// Polls the KVCluster until `pred` holds, at most [`STEP_TIMEOUT`]; returns it and the time taken.
async fn wait_kvc(
    api: &Api<KVCluster>,
    what: &str,
    pred: impl Fn(&KVCluster) -> bool,
) -> (KVCluster, Duration) {
    let t0 = Instant::now();
    loop {
        let kvc = api.get(NAME).await.expect("get the KVCluster");
        if pred(&kvc) {
            return (kvc, t0.elapsed());
        }
        assert!(
            t0.elapsed() < STEP_TIMEOUT,
            "{what}: not reached within {STEP_TIMEOUT:?}; status: {}",
            serde_json::to_string_pretty(&kvc.status).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Settled on `members` pods, up to date with the spec, every condition as a healthy cluster has it.
fn settled_with(kvc: &KVCluster, members: usize) -> bool {
    let Some(status) = &kvc.status else {
        return false;
    };
    status.observed_generation == kvc.metadata.generation
        && status.members.len() == members
        && status.ready_replicas as usize >= members
        && condition(kvc, "Available") == Some("True")
        && condition(kvc, "RingSettled") == Some("True")
        && condition(kvc, "Progressing") == Some("False")
}

fn assert_owned(meta: &ObjectMeta, what: &str, owner_uid: &str) {
    let owners = meta.owner_references.clone().unwrap_or_default();
    assert!(
        owners.iter().any(|o| o.kind == "KVCluster"
            && o.name == NAME
            && o.uid == owner_uid
            && o.controller == Some(true)),
        "{what} is not controlled by the KVCluster: {owners:?}"
    );
    let managers = meta.managed_fields.clone().unwrap_or_default();
    assert!(
        managers
            .iter()
            .any(|m| m.manager.as_deref() == Some("kvoperator")
                && m.operation.as_deref() == Some("Apply")),
        "{what} was not server-side applied by kvoperator: {:?}",
        managers
            .iter()
            .map(|m| (&m.manager, &m.operation, &m.subresource))
            .collect::<Vec<_>>()
    );
}

/// The peer port of fake pod `i`: `ports` holds the client ports of every pod, then their peer ports.
/// Waits (bounded) until the operator's per-cluster metrics say what the settled `status` says:
/// its phase, every member ready, its epoch, no ring change in progress.
async fn assert_cluster_metrics(operator: &OperatorProcess, status: &KVClusterStatus) {
    let url = format!("http://{}/metrics", operator.metrics_address());
    let phase = format!("{:?}", status.phase.unwrap());
    let cluster = [("kvcluster_namespace", NS), ("kvcluster_name", NAME)];
    let with_phase = [cluster[0], cluster[1], ("phase", phase.as_str())];
    let members = status.members.len() as f64;
    let want = [
        ("kvoperator_cluster_phase", &with_phase[..], 1.0),
        ("kvoperator_cluster_members", &cluster[..], members),
        ("kvoperator_cluster_members_ready", &cluster[..], members),
        (
            "kvoperator_cluster_ring_epoch",
            &cluster[..],
            status.ring_epoch as f64,
        ),
        (
            "kvoperator_cluster_ring_change_age_seconds",
            &cluster[..],
            0.0,
        ),
    ];
    let http = http_client_builder().build().unwrap();
    let t0 = Instant::now();
    loop {
        let text = http.get(&url).send().await.unwrap().text().await.unwrap();
        let wrong: Vec<_> = want
            .iter()
            .filter(|(name, labels, value)| metric_sum(&text, name, labels) != Some(*value))
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the operator's metrics disagree with the status on {wrong:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn peer_port(ports: &[u16], i: usize) -> u16 {
    ports[MAX_PODS as usize + i]
}

fn write_overrides(path: &Path, ports: &[u16]) {
    let map: HashMap<String, serde_json::Value> = (0..MAX_PODS as usize)
        .map(|i| {
            let addresses = json!({
                "address": format!("127.0.0.1:{}", ports[i]),
                "peer_address": format!("127.0.0.1:{}", peer_port(ports, i)),
            });
            (format!("{NS}/{NAME}-{i}"), addresses)
        })
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&map).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_scales_a_ring_3_to_5_to_3_under_load_and_changes_quorums_in_place() {
    let test_start = Instant::now();
    let Some(plane) = ControlPlane::start("operator_scaling").await else {
        return;
    };
    let api_ready = plane.startup();
    plane.install_kvcluster_crd().await;
    let admin = plane.client();
    // Pods made from the template must pass the Pod Security "restricted" profile.
    plane.create_restricted_namespace(NS).await;

    // The operator's identity: its ServiceAccount bound to the ClusterRole of operator/rbac.yaml.
    let sa_kubeconfig = plane
        .operator_identity(&kvoperator::rbac::cluster_role())
        .await;

    // Loopback addresses for every ordinal the scenario uses, known to the operator up front (on
    // Kubernetes they would be the pods' DNS names, which exist before the pods do).
    // Client ports, then peer ports.
    let ports = free_ports(2 * MAX_PODS as usize);
    let overrides: PathBuf = plane.dir().join("node-addresses.json");
    write_overrides(&overrides, &ports);

    let identity = format!("kvoperator-test-{}", std::process::id());
    let mut operator = OperatorProcess::start(
        &sa_kubeconfig,
        &identity,
        &[
            "--leader-election",
            "true",
            "--lease-namespace",
            "default",
            "--listen",
            "127.0.0.1:0",
            "--node-address-override-file",
            overrides.to_str().unwrap(),
            "--progress-interval",
            "1s",
            "--admin-timeout",
            "2s",
        ],
        &plane.dir().join("operator.log"),
    );

    // It leads through a Lease that names it.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "default");
    let t0 = Instant::now();
    loop {
        if let Some(lease) = leases.get_opt("kvoperator").await.unwrap()
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(identity.as_str())
        {
            break;
        }
        assert!(
            operator.is_running(),
            "kvoperator exited:\n{}",
            operator.log_tail(40)
        );
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no Lease held by {identity}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "kvoperator holds Lease default/kvoperator as {identity} after {:?}",
        t0.elapsed()
    );

    let kubelets = FakeKubelets {
        client: admin.clone(),
        ports: ports.clone(),
        dir: tempfile::Builder::new()
            .prefix("kvcluster-kubelets-")
            .tempdir()
            .unwrap(),
        nodes: BTreeMap::new(),
        admin: BTreeMap::new(),
        marked_ready: BTreeSet::new(),
        timeline: Arc::new(Mutex::new(Timeline::default())),
    };
    let timeline = kubelets.timeline.clone();
    let stop_kubelets = Arc::new(AtomicBool::new(false));
    let kubelets_task = spawn_kubelets(kubelets, stop_kubelets.clone());

    // Create: 3 pods, N=3 W=2 R=2.
    let kvcs: Api<KVCluster> = Api::namespaced(admin.clone(), NS);
    let resource: KVCluster = serde_json::from_value(json!({
        "apiVersion": "kvcluster.io/v1alpha1", "kind": "KVCluster",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"replicas": 3, "replicationFactor": 3, "writeQuorum": 2, "readQuorum": 2,
                 "image": "kvnode:test", "storage": {"size": "1Gi"}, "cacheSize": "16Mi"}
    }))
    .unwrap();
    let created = kvcs
        .create(&PostParams::default(), &resource)
        .await
        .unwrap();
    let uid = created.uid().unwrap();
    let (kvc, create_time) =
        wait_kvc(&kvcs, "created and settled on 3", |k| settled_with(k, 3)).await;
    let status = kvc.status.clone().unwrap();
    eprintln!(
        "created: 3 members settled at epoch {} in {create_time:?}; phase {:?}",
        status.ring_epoch, status.phase
    );
    assert_eq!(status.members, vec!["demo-0", "demo-1", "demo-2"]);
    assert_eq!(status.consistency, Some(Consistency::Strong));
    assert_cluster_metrics(&operator, &status).await;

    // Every owned object, server-side applied by kvoperator and controlled by the resource.
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get("demo-config")
        .await
        .unwrap();
    assert_owned(&cm.metadata, "ConfigMap demo-config", &uid);
    for svc in ["demo-headless", "demo"] {
        let svc = Api::<Service>::namespaced(admin.clone(), NS)
            .get(svc)
            .await
            .unwrap();
        assert_owned(&svc.metadata, &format!("Service {}", svc.name_any()), &uid);
    }
    let sts = Api::<StatefulSet>::namespaced(admin.clone(), NS)
        .get(NAME)
        .await
        .unwrap();
    assert_owned(&sts.metadata, "StatefulSet demo", &uid);
    assert_eq!(sts.spec.replicas, Some(3));
    let pdb = Api::<PodDisruptionBudget>::namespaced(admin.clone(), NS)
        .get(NAME)
        .await
        .unwrap();
    assert_owned(&pdb.metadata, "PodDisruptionBudget demo", &uid);
    // The status is written through the status subresource, by kvoperator.
    let status_managers: Vec<_> = kvc
        .managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() == Some("kvoperator"))
        .map(|m| m.subresource.clone())
        .collect();
    assert_eq!(
        status_managers,
        vec![Some("status".to_string())],
        "kvoperator must write only the status subresource of the KVCluster"
    );
    // The ConfigMap's ring is what the nodes run, at the loopback addresses.
    let stored: kvapi::ClusterConfig =
        serde_json::from_str(&cm.data.unwrap()["cluster.json"]).unwrap();
    assert_eq!(stored.epoch, status.ring_epoch);
    assert_eq!(stored.members[0].address, format!("127.0.0.1:{}", ports[0]));

    // Data, then a load that runs through the changes.
    let stable: Vec<KvClient> = ports[..3]
        .iter()
        .map(|p| KvClient::with_timeout(&format!("http://127.0.0.1:{p}"), Duration::from_secs(15)))
        .collect();
    let load = WriteLoad::start(&stable, PRELOAD, LOAD).await;

    // Scale up 3 → 5.
    let epoch_3 = status.ring_epoch;
    kvcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    let (kvc, up_time) = wait_kvc(&kvcs, "scaled up to 5", |k| {
        settled_with(k, 5) && k.status.as_ref().unwrap().ring_epoch > epoch_3
    })
    .await;
    let epoch_5 = kvc.status.as_ref().unwrap().ring_epoch;
    eprintln!(
        "3 -> 5: settled at epoch {epoch_5} in {up_time:?}; {} writes acknowledged so far",
        load.acknowledged()
    );
    assert_eq!(
        kvc.status.as_ref().unwrap().members,
        vec!["demo-0", "demo-1", "demo-2", "demo-3", "demo-4"]
    );
    assert_cluster_metrics(&operator, kvc.status.as_ref().unwrap()).await;

    // Scale down 5 → 3.
    kvcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    let (kvc, down_time) = wait_kvc(&kvcs, "scaled down to 3", |k| {
        settled_with(k, 3)
            && k.status.as_ref().unwrap().ring_epoch > epoch_5
            && k.status.as_ref().unwrap().replicas == 3
            && timeline.lock().unwrap().stopped.len() == 2
    })
    .await;
    let epoch_back = kvc.status.as_ref().unwrap().ring_epoch;
    eprintln!(
        "5 -> 3: settled at epoch {epoch_back}, StatefulSet shrunk and pods gone in {down_time:?}"
    );

    // The StatefulSet shrank only after both leaving nodes reported the ring settled without them.
    {
        let t = timeline.lock().unwrap();
        let (shrink_round, shrink_at, _) = *t
            .sts_replicas
            .iter()
            .skip_while(|(_, _, r)| *r != 5)
            .find(|(_, _, r)| *r == 3)
            .expect("the harness saw the StatefulSet at 5, then at 3");
        for id in ["demo-3", "demo-4"] {
            let (round, at) = *t
                .left_settled
                .get(id)
                .unwrap_or_else(|| panic!("{id} never reported leaving a settled ring: {t:?}"));
            eprintln!(
                "{id}: settled out of the ring in round {round} ({:?} before the StatefulSet was seen at 3, round {shrink_round})",
                shrink_at.saturating_duration_since(at)
            );
            assert!(
                round <= shrink_round && at <= shrink_at,
                "the StatefulSet shrank (round {shrink_round}) before {id} reported the ring settled without it (round {round})"
            );
        }
        for (id, _, status) in &t.stopped {
            let s = status
                .as_ref()
                .unwrap_or_else(|| panic!("{id} did not answer before it was stopped"));
            assert!(!s.member, "{id} stopped while a member: {s:?}");
            assert!(!s.config.in_transition(), "{id} stopped mid-transition");
            assert_eq!(s.config.epoch, epoch_back, "{id} stopped on another epoch");
            assert_eq!(s.hints_pending, 0, "{id} stopped with hints pending");
        }
    }

    // Every acknowledged write reads back with R=2 through the remaining nodes.
    let (acked, failed) = load.finish().await;
    let mut lost = Vec::new();
    for (n, (key, value)) in acked.iter().enumerate() {
        let resp = stable[n % 3].get_json_with_query(key, "?r=2").await;
        let found = (resp.status == 200 || resp.status == 300)
            && resp.live_values().iter().any(|v| v == value);
        if !found {
            lost.push(String::from_utf8_lossy(key).into_owned());
        }
    }
    eprintln!(
        "load: {} writes acknowledged ({} preloaded), {failed} not; {} lost",
        acked.len(),
        PRELOAD,
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, such as {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );

    // W 2 → 1: pushed to the running nodes, no restart.
    let pids =
        |t: &Timeline| -> Vec<Vec<u32>> { (0..3).map(|i| t.pids_of(&pod_name(i))).collect() };
    let pids_before = pids(&timeline.lock().unwrap());
    for (i, p) in pids_before.iter().enumerate() {
        assert_eq!(
            p.len(),
            1,
            "{} was started more than once: {p:?}",
            pod_name(i as u32)
        );
    }
    let t0 = Instant::now();
    kvcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"writeQuorum": 1}})),
    )
    .await
    .unwrap();
    loop {
        let mut all = true;
        for client in &stable {
            all &= client
                .try_admin_cluster()
                .await
                .is_some_and(|c| c.w == 1 && c.r == 2 && c.n == 3);
        }
        if all {
            break;
        }
        assert!(t0.elapsed() < STEP_TIMEOUT, "the nodes never got w=1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quorum_time = t0.elapsed();
    let (kvc, _) = wait_kvc(&kvcs, "W=1 reported", |k| {
        settled_with(k, 3) && k.status.as_ref().unwrap().consistency == Some(Consistency::Eventual)
    })
    .await;
    // Same processes: none started since, each still alive and answering with the new quorum.
    assert_eq!(
        pids(&timeline.lock().unwrap()),
        pids_before,
        "a quorum change must not restart nodes"
    );
    for (i, p) in pids_before.iter().enumerate() {
        assert!(
            Path::new(&format!("/proc/{}", p[0])).exists(),
            "{} (pid {}) is gone",
            pod_name(i as u32),
            p[0]
        );
    }
    eprintln!(
        "W 2 -> 1: every node at w=1 after {quorum_time:?} (epoch {}), same pids {pids_before:?}",
        kvc.status.as_ref().unwrap().ring_epoch
    );

    // Events for each ring change, recorded on the resource.
    let events = Api::<Event>::namespaced(admin.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    let reasons: BTreeSet<String> = events
        .items
        .iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("KVCluster") && r.name.as_deref() == Some(NAME)
            })
        })
        .filter_map(|e| e.reason.clone())
        .collect();
    eprintln!("events on the KVCluster: {reasons:?}");
    for reason in [
        "Created",
        "RingChangeStarted",
        "RingChangeCompleted",
        "MembersStopped",
        "QuorumsChanged",
    ] {
        assert!(reasons.contains(reason), "no {reason} event: {reasons:?}");
    }
    for e in &events.items {
        if e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("KVCluster") {
            assert_eq!(e.reporting_controller.as_deref(), Some("kvoperator"));
            assert_eq!(e.reporting_instance.as_deref(), Some(identity.as_str()));
        }
    }

    // Still the leader; still running.
    let lease = leases.get("kvoperator").await.unwrap();
    assert_eq!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some(identity.as_str())
    );
    assert!(operator.is_running());
    let log = operator.log();
    assert!(
        !log.contains("could not record event"),
        "events were refused:\n{}",
        operator.log_tail(40)
    );

    stop_kubelets.store(true, Ordering::Release);
    let kubelets = kubelets_task.await.unwrap();
    operator.stop();
    drop(kubelets);
    eprintln!(
        "timings: kube-apiserver ready {api_ready:?}; create {create_time:?}; 3->5 {up_time:?}; 5->3 {down_time:?}; \
         W change {quorum_time:?}; whole test {:?}",
        test_start.elapsed()
    );
}
