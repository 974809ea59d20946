//! The reconciler: observe, plan, apply, push, report.
//!
//! One reconcile reads the StatefulSet, the ConfigMap and the pods, asks every pod's node for its
//! status, lets [`crate::plan::plan`] decide, then applies every owned object with server-side
//! apply, pushes a config or drains nodes when the plan says so, records events, and writes the
//! status. It never decides anything itself: a reconcile with the same observations always does
//! the same thing, which is what the mocked-API tests check request by request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kvapi::ClusterConfig;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::addressing::AddressSource;
use crate::builders::secret_mounts::TlsPort;
use crate::builders::{
    self, FIELD_MANAGER, certificate, cluster_name, configmap, configmap_name, networkpolicy, pdb,
    pod_name, secret, service, servicemonitor, statefulset, volumes,
};
use crate::crd::{KVCluster, VolumeStatus};
use crate::metrics::Metrics;
use crate::nodeadmin::{NodeAccess, NodeAdmin, PutOutcome};
use crate::plan::{self, Desired, Observed, Plan, PodView};
use crate::status::{self, Counts};
use crate::{Error, Result};
use crate::{backup_jobs, secrets};

/// Whether to apply a ServiceMonitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ServiceMonitorMode {
    /// When the `monitoring.coreos.com` API group is served (checked every few minutes).
    #[default]
    Auto,
    /// Always (fails when the CRD is missing).
    Always,
    /// Never.
    Never,
}

/// Timing and feature settings of the reconciler.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Requeue delay while waiting on something that changes soon (pods starting, data moving).
    pub progress_interval: Duration,
    /// Requeue delay of a cluster that needs nothing.
    pub resync_interval: Duration,
    /// First retry delay after an error; doubles per consecutive error of one resource.
    pub error_backoff: Duration,
    /// Longest retry delay after errors.
    pub max_error_backoff: Duration,
    /// Whether to apply ServiceMonitors.
    pub service_monitor: ServiceMonitorMode,
    /// How long a ring change may make no progress before it is reported stalled.
    pub ring_change_stall_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            progress_interval: Duration::from_secs(5),
            resync_interval: Duration::from_secs(60),
            error_backoff: Duration::from_secs(1),
            max_error_backoff: Duration::from_secs(120),
            service_monitor: ServiceMonitorMode::Auto,
            ring_change_stall_after: Duration::from_secs(600),
        }
    }
}

/// How long the answer of "is the ServiceMonitor API served" is trusted.
const MONITORING_CHECK_TTL: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context<A: NodeAdmin> {
    /// The Kubernetes client.
    pub client: Client,
    /// How the nodes are called.
    pub admin: A,
    /// Where the nodes are.
    pub addresses: AddressSource,
    /// Records Kubernetes events.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Timing and features.
    pub settings: Settings,
    failures: Mutex<HashMap<ObjectRef<KVCluster>, u32>>,
    monitoring: Mutex<Option<(Instant, bool)>>,
    jobs: backup_jobs::Jobs,
}

impl<A: NodeAdmin> Context<A> {
    /// A context whose events are reported as `kvoperator` by `instance`.
    pub fn new(
        client: Client,
        admin: A,
        addresses: AddressSource,
        metrics: Metrics,
        settings: Settings,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "kvoperator".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            admin,
            addresses,
            metrics,
            settings,
            failures: Mutex::new(HashMap::new()),
            monitoring: Mutex::new(None),
            jobs: backup_jobs::Jobs::default(),
        }
    }

    fn backoff(&self, obj: ObjectRef<KVCluster>) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(obj).or_insert(0);
        *n = n.saturating_add(1);
        error_backoff(&self.settings, *n)
    }

    fn reset_backoff(&self, obj: &ObjectRef<KVCluster>) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(obj);
    }

    async fn monitoring_served(&self) -> Result<bool> {
        match self.settings.service_monitor {
            ServiceMonitorMode::Never => return Ok(false),
            ServiceMonitorMode::Always => return Ok(true),
            ServiceMonitorMode::Auto => {}
        }
        {
            let cached = self.monitoring.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, served)) = *cached
                && at.elapsed() < MONITORING_CHECK_TTL
            {
                return Ok(served);
            }
        }
        let groups = self.client.list_api_groups().await?;
        let served = groups
            .groups
            .iter()
            .any(|g| g.name == servicemonitor::GROUP);
        *self.monitoring.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), served));
        Ok(served)
    }
}

/// Retry delay after the `failures`-th consecutive error: doubling from `error_backoff`, capped.
pub fn error_backoff(settings: &Settings, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    settings
        .error_backoff
        .saturating_mul(factor)
        .min(settings.max_error_backoff)
}

/// Reconciles one resource (the Controller's callback).
pub async fn reconcile<A: NodeAdmin>(kvc: Arc<KVCluster>, ctx: Arc<Context<A>>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&kvc, &ctx).await;
    ctx.metrics
        .observe(&kvc, started.elapsed(), result.as_ref().err());
    if result.is_ok() {
        ctx.reset_backoff(&ObjectRef::from(kvc.as_ref()));
    }
    result
}

/// Requeues a failed resource with a per-resource exponential backoff.
pub fn error_policy<A: NodeAdmin>(
    kvc: Arc<KVCluster>,
    error: &Error,
    ctx: Arc<Context<A>>,
) -> Action {
    let delay = ctx.backoff(ObjectRef::from(kvc.as_ref()));
    warn!(name = %kvc.name_any(), namespace = ?kvc.namespace(), %error, ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn reconcile_inner<A: NodeAdmin>(kvc: &KVCluster, ctx: &Context<A>) -> Result<Action> {
    let ns = kvc
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    if kvc.uid().is_none() {
        return Err(Error::MissingField("metadata.uid"));
    }
    let name = kvc.name_any();
    let client = &ctx.client;
    // cert-manager issues the Secrets the next step reads.
    apply_certificates(client, kvc, &ns).await?;
    let access = secrets::node_access(client, &ns, kvc).await?;
    let jobs_ctx = backup_jobs::JobContext {
        client: client.clone(),
        recorder: ctx.recorder.clone(),
    };
    let s3_key = match secrets::s3_credentials(client, &ns, kvc).await {
        Ok(key) => key,
        Err(e) => {
            // The pods would get the Secret's keys: nothing is applied without it.
            backup_jobs::report_blocked(&jobs_ctx, kvc, &ns, &e.to_string(), true).await;
            return Err(e);
        }
    };

    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let sts = sts_api.get_opt(&name).await?;
    let cm = cm_api.get_opt(&configmap_name(kvc)).await?;
    let pods = pod_api
        .list(&ListParams::default().labels(&builders::selector_string(kvc)))
        .await?;

    let addresses = ctx.addresses.load()?;
    let spec = &kvc.spec;
    let desired = Desired {
        cluster: cluster_name(kvc),
        members: (0..spec.replicas)
            .map(|i| addresses.member(&ns, &name, &pod_name(kvc, i)))
            .collect(),
        n: spec.replication_factor,
        w: spec.write_quorum,
        r: spec.read_quorum,
        partitions: spec.partitions,
    };
    let mut views: Vec<PodView> = pods
        .items
        .iter()
        .filter_map(|p| {
            let id = p.name_any();
            let ordinal = plan::ordinal(&name, &id)?;
            Some(PodView {
                address: addresses.address(&ns, &name, &id),
                ordinal,
                ready: pod_ready(p),
                status: None,
                id,
            })
        })
        .collect();
    views.sort_by_key(|v| v.ordinal);
    let answers = futures::future::join_all(
        views
            .iter()
            .map(|v| ctx.admin.get_status(&v.address, &access)),
    )
    .await;
    for (view, answer) in views.iter_mut().zip(answers) {
        match answer {
            Ok(s) => view.status = Some(s),
            Err(e) => debug!(pod = %view.id, error = %e, "node status unavailable"),
        }
    }

    let observed = Observed {
        name: name.clone(),
        desired,
        statefulset_replicas: sts
            .as_ref()
            .and_then(|s| s.spec.replicas)
            .map(|r| u32::try_from(r).unwrap_or(0)),
        pods: views,
        stored_config: cm.as_ref().and_then(configmap::stored_config),
    };
    let plan = plan::plan(&observed);
    info!(
        name, namespace = ns, phase = ?plan.phase, epoch = plan.ring.epoch(),
        statefulset = plan.statefulset_replicas, push = plan.push.is_some(), "{}", plan.message
    );

    let volumes = apply_objects(ctx, kvc, &ns, &plan, sts.as_ref()).await?;
    if let Some(config) = &plan.push {
        push_config(ctx, &observed.pods, &access, config).await?;
    }
    for id in &plan.drain {
        if let Some(pod) = observed.pods.iter().find(|p| &p.id == id)
            && let Err(e) = ctx.admin.drain(&pod.address, &access).await
        {
            warn!(pod = %id, error = %e, "drain failed");
        }
    }
    let counts = Counts {
        replicas: plan.statefulset_replicas,
        ready_replicas: u32::try_from(observed.pods.iter().filter(|p| p.ready).count())
            .unwrap_or(0),
        generation: kvc.metadata.generation,
        spec_nwr: (spec.replication_factor, spec.write_quorum, spec.read_quorum),
        selector: builders::selector_string(kvc),
        volumes,
    };
    let new_status = status::build(
        &plan,
        counts,
        kvc.status.as_ref(),
        Timestamp::now(),
        ctx.settings.ring_change_stall_after,
    );
    let warnings = status::warning_events(kvc.status.as_ref(), &new_status);
    publish_events(ctx, kvc, &plan, warnings).await;

    let patch = json!({
        "apiVersion": KVCluster::api_version(&()),
        "kind": KVCluster::kind(&()),
        "status": new_status,
    });
    Api::<KVCluster>::namespaced(client.clone(), &ns)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.metrics
        .observe_status(&ns, &name, &new_status, plan.ring.unavailable_members.len());

    let next_backup = backup_jobs::reconcile(
        &ctx.jobs,
        &jobs_ctx,
        kvc,
        &plan,
        &observed.pods,
        &access,
        s3_key,
    )
    .await;
    let interval = if plan.waiting || plan.push.is_some() {
        ctx.settings.progress_interval
    } else {
        ctx.settings.resync_interval
    };
    Ok(Action::requeue(next_backup.map_or(interval, |next| {
        interval.min(next + Duration::from_millis(100))
    })))
}

async fn apply_objects<A: NodeAdmin>(
    ctx: &Context<A>,
    kvc: &KVCluster,
    ns: &str,
    plan: &Plan,
    existing: Option<&StatefulSet>,
) -> Result<Option<VolumeStatus>> {
    let client = &ctx.client;
    ensure_context_key(client, kvc, ns).await?;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let cm = configmap::build(kvc, &plan.config_map)?;
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(&configmap_name(kvc), &pp, &Patch::Apply(&cm))
        .await?;
    let svc_api: Api<Service> = Api::namespaced(client.clone(), ns);
    for svc in [service::headless(kvc), service::client(kvc)] {
        svc_api
            .patch(&svc.name_any(), &pp, &Patch::Apply(&svc))
            .await?;
    }
    let mut sts = statefulset::build(kvc, plan.statefulset_replicas);
    volumes::keep_claim_templates(&mut sts, existing);
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .patch(&sts.name_any(), &pp, &Patch::Apply(&sts))
        .await?;
    let volumes = expand_volumes(client, kvc, ns, existing).await?;
    let budget = pdb::build(kvc);
    Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
        .patch(&budget.name_any(), &pp, &Patch::Apply(&budget))
        .await?;
    if kvc.spec.network_policy.enabled {
        let policy = networkpolicy::build(kvc);
        Api::<NetworkPolicy>::namespaced(client.clone(), ns)
            .patch(&policy.name_any(), &pp, &Patch::Apply(&policy))
            .await?;
    }
    if kvc.spec.monitoring.enabled && ctx.monitoring_served().await? {
        let sm = servicemonitor::build(kvc);
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &servicemonitor::api_resource())
            .patch(&sm.name_any(), &pp, &Patch::Apply(&sm))
            .await?;
    }
    Ok(volumes)
}

/// When `storage.size` grew past the StatefulSet's claim template, asks for it on every PVC of the
/// cluster that has less, and reports those still smaller and those the API server refused.
async fn expand_volumes(
    client: &Client,
    kvc: &KVCluster,
    ns: &str,
    existing: Option<&StatefulSet>,
) -> Result<Option<VolumeStatus>> {
    let size = &kvc.spec.storage.size;
    let template = existing
        .and_then(|s| s.spec.volume_claim_templates.as_ref())
        .and_then(|t| t.first())
        .cloned()
        .map(|c| vec![c]);
    if template.is_none_or(|t| volumes::to_expand(&t, size).is_empty()) {
        return Ok(None);
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let claims = api
        .list(&ListParams::default().labels(&builders::selector_string(kvc)))
        .await?
        .items;
    let mut refused = Vec::new();
    for claim in volumes::to_expand(&claims, size) {
        let name = claim.name_any();
        let patch = volumes::expansion_patch(size);
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => info!(pvc = %name, size = %size.0, "volume expansion requested"),
            Err(kube::Error::Api(status)) if matches!(status.code, 403 | 422) => {
                warn!(pvc = %name, message = %status.message, "volume expansion refused");
                refused.push(format!("{name}: {}", status.message));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(VolumeStatus {
        size: size.0.clone(),
        expanding: volumes::expanding(&claims, size),
        refused,
    }))
}

/// Applies the cert-manager `Certificate` of each port whose TLS names an issuer.
async fn apply_certificates(client: &Client, kvc: &KVCluster, ns: &str) -> Result<()> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let api =
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &certificate::api_resource());
    for port in [TlsPort::Peer, TlsPort::Client] {
        let Some(cert) = certificate::build(kvc, port) else {
            continue;
        };
        match api.patch(&cert.name_any(), &pp, &Patch::Apply(&cert)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Err(Error::Secret(format!(
                    "spec.tls.{}.issuerRef needs cert-manager, whose Certificate resource is not \
                     installed in this cluster",
                    port.as_str()
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Creates the context key Secret unless it exists. Never patched: a changed key would make every
/// context token clients hold invalid.
async fn ensure_context_key(client: &Client, kvc: &KVCluster, ns: &str) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api
        .create(&PostParams::default(), &secret::context_key(kvc))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Pushes `config` to every node that answered, in ordinal order. The same epoch goes to all, so
/// a node that already has it from a peer just answers `stale_epoch`.
async fn push_config<A: NodeAdmin>(
    ctx: &Context<A>,
    pods: &[PodView],
    access: &NodeAccess,
    config: &ClusterConfig,
) -> Result<()> {
    let mut accepted = 0;
    let mut errors = Vec::new();
    for pod in pods.iter().filter(|p| p.status.is_some()) {
        match ctx.admin.put_config(&pod.address, access, config).await {
            Ok(PutOutcome::Installed(c)) => {
                accepted += 1;
                debug!(pod = %pod.id, epoch = c.epoch, transition = c.in_transition(), "config installed");
            }
            Ok(PutOutcome::StaleEpoch) => accepted += 1,
            Ok(PutOutcome::TransitionInProgress) => {
                debug!(pod = %pod.id, "node still in a transition");
            }
            Err(e) => {
                warn!(pod = %pod.id, error = %e, "config push failed");
                errors.push(format!("{}: {e}", pod.id));
            }
        }
    }
    ctx.metrics.pushes.inc();
    if accepted == 0 && !errors.is_empty() {
        return Err(Error::Push(errors.join("; ")));
    }
    Ok(())
}

/// Events this reconcile adds to the plan's: a ring change that finished since the last status.
///
/// The last status either showed the change in progress (`transition`), or, when the whole change
/// ran between two reconciles, shows an older epoch with other members.
pub fn completion_event(kvc: &KVCluster, plan: &Plan) -> Option<plan::PlannedEvent> {
    let before = kvc.status.as_ref()?;
    let config = plan.ring.config.as_ref()?;
    if plan.ring.in_transition {
        return None;
    }
    let note = match &before.transition {
        Some(t) => format!(
            "ring change from epoch {} to {} complete, ring at epoch {}",
            t.from_epoch, t.to_epoch, config.epoch
        ),
        None => {
            let now: Vec<&str> = config.members.iter().map(|m| m.id.as_str()).collect();
            if before.ring_epoch == 0 || before.ring_epoch >= config.epoch || before.members == now
            {
                return None;
            }
            format!(
                "ring change complete: members [{}] → [{}], ring at epoch {}",
                before.members.join(","),
                now.join(","),
                config.epoch
            )
        }
    };
    Some(plan::PlannedEvent {
        reason: "RingChangeCompleted".into(),
        note,
        warning: false,
    })
}

async fn publish_events<A: NodeAdmin>(
    ctx: &Context<A>,
    kvc: &KVCluster,
    plan: &Plan,
    warnings: Vec<plan::PlannedEvent>,
) {
    let reference = kvc.object_ref(&());
    let events = plan
        .events
        .iter()
        .cloned()
        .chain(completion_event(kvc, plan))
        .chain(warnings);
    for e in events {
        let event = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.clone(),
            note: Some(e.note.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            warn!(reason = %e.reason, error = %err, "could not record event");
        }
    }
}

/// Runs the controller until `shutdown` resolves: watches KVClusters (in `namespace`, or all) and
/// the objects they own.
pub async fn run<A: NodeAdmin>(
    ctx: Arc<Context<A>>,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=kvoperator");
    let controller = Controller::new(
        api::<KVCluster>(&client, namespace),
        watcher::Config::default(),
    );
    ctx.metrics.follow(controller.store());
    // Backup jobs run beside the controller: when it stops (leadership lost), they stop.
    let _jobs = AbortJobsOnDrop(ctx.clone());
    controller
        .owns(api::<StatefulSet>(&client, namespace), owned.clone())
        .owns(api::<Service>(&client, namespace), owned.clone())
        .owns(api::<ConfigMap>(&client, namespace), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, namespace), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(name = %obj.name, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}

struct AbortJobsOnDrop<A: NodeAdmin>(Arc<Context<A>>);

impl<A: NodeAdmin> Drop for AbortJobsOnDrop<A> {
    fn drop(&mut self) {
        self.0.jobs.abort_all();
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
