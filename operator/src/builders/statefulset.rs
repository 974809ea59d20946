//! The StatefulSet of kvnode pods.
//!
//! Its replica count is not `spec.replicas` but what the reconciler's plan says: pods are added
//! before they join the ring and removed only after they have left it. The pod template carries no
//! hash of the ConfigMap on purpose: N/W/R changes are pushed to running nodes, never rolled out by
//! restarting them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::secret::{CONTEXT_KEY, context_key_name};
use super::secret_mounts::{SecretMount, secret_mounts};
use super::{
    CLUSTER_JSON, CONFIG_DIR, CONTEXT_KEY_DIR, DATA_DIR, NODE_PORT, PEER_PORT, PEER_PORT_NAME,
    PORT_NAME, configmap_name, headless_service_name, labels, owned_meta, selector_labels,
};
use super::{backup_env, sizing};
use crate::crd::KVCluster;

/// The unprivileged user and group the node runs as (the distroless `nonroot` ids).
pub const RUN_AS_USER: i64 = 65532;
/// Seconds a pod has between SIGTERM and SIGKILL. Members leave the ring (and their data moves)
/// before the operator shrinks the StatefulSet, so this covers only the node's own shutdown:
/// in-flight requests (`KVNODE_SHUTDOWN_GRACE`), hint delivery it can still do, and closing
/// RocksDB cleanly, with room to spare.
pub const TERMINATION_GRACE_SECONDS: i64 = 120;
/// The node's in-flight request grace on SIGTERM, well inside the pod's grace period.
pub const NODE_SHUTDOWN_GRACE: &str = "30s";
/// Name of the data volume claim template (the PVCs are `data-<pod>`).
pub const DATA_VOLUME: &str = "data";

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn node_env(kvc: &KVCluster) -> Vec<EnvVar> {
    let s = &kvc.spec;
    let mut vars = vec![
        EnvVar {
            name: "KVNODE_NODE_ID".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env("KVNODE_LISTEN", format!("0.0.0.0:{NODE_PORT}")),
        env("KVNODE_PEER_LISTEN", format!("0.0.0.0:{PEER_PORT}")),
        env("KVNODE_DATA_DIR", DATA_DIR),
        env(
            "KVNODE_CLUSTER_CONFIG",
            format!("{CONFIG_DIR}/{CLUSTER_JSON}"),
        ),
        env(
            "KVNODE_CONTEXT_KEY_FILE",
            format!("{CONTEXT_KEY_DIR}/{CONTEXT_KEY}"),
        ),
        env("KVNODE_DURABILITY", s.durability.as_str()),
        env("KVNODE_PARTITIONS", s.partitions.to_string()),
        env("KVNODE_SHUTDOWN_GRACE", NODE_SHUTDOWN_GRACE),
    ];
    let (cache, rocksdb) = sizing::memory_budget(kvc);
    if let Some(cache) = cache {
        vars.push(env("KVNODE_CACHE_SIZE", cache));
    }
    if let Some(rocksdb) = rocksdb {
        vars.push(env("KVNODE_ROCKSDB_MEMORY", rocksdb));
    }
    vars.extend(s.node_settings.env().into_iter().map(|(k, v)| env(k, v)));
    let mounts = secret_mounts(kvc);
    vars.extend(mounts.iter().flat_map(SecretMount::env));
    vars.extend(backup_env::env(kvc));
    if s.auth.metrics_need_token {
        vars.push(env("KVNODE_METRICS_AUTH", "true"));
    }
    if s.auth.admin_token_secret_ref.is_none() && s.tls.peer.is_none() {
        // A node bound to 0.0.0.0 with neither an admin token nor peer TLS refuses to start
        // without this: such a cluster relies on the NetworkPolicy alone for its peer port.
        vars.push(env("KVNODE_INSECURE", "true"));
    }
    vars
}

/// A probe of a health route; HTTPS when the client port speaks TLS (the kubelet does not verify
/// the certificate).
fn http_probe(kvc: &KVCluster, path: &str, period: i32, failures: i32) -> Probe {
    let scheme = if kvc.spec.tls.client.is_some() {
        "HTTPS"
    } else {
        "HTTP"
    };
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(PORT_NAME.into()),
            scheme: Some(scheme.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn container(kvc: &KVCluster) -> Container {
    let s = &kvc.spec;
    let mut container = Container {
        name: "kvnode".into(),
        image: Some(s.image.clone()),
        image_pull_policy: s.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec!["kvnode".into()]),
        env: Some(node_env(kvc)),
        ports: Some(vec![
            ContainerPort {
                name: Some(PORT_NAME.into()),
                container_port: i32::from(NODE_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(PEER_PORT_NAME.into()),
                container_port: i32::from(PEER_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        resources: Some(sizing::resources(kvc)),
        // Opening RocksDB after a crash replays the WAL: give it up to 10 minutes before the
        // liveness probe may kill the pod.
        startup_probe: Some(http_probe(kvc, kvapi::HEALTH_LIVE, 5, 120)),
        liveness_probe: Some(http_probe(kvc, kvapi::HEALTH_LIVE, 10, 6)),
        readiness_probe: Some(http_probe(kvc, kvapi::HEALTH_READY, 5, 3)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: DATA_VOLUME.into(),
                mount_path: DATA_DIR.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "context-key".into(),
                mount_path: CONTEXT_KEY_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .extend(secret_mounts(kvc).iter().map(SecretMount::mount));
    container
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

/// The spec's affinity and spread, or the defaults: spread pods over hosts and zones. Both defaults
/// are preferences, not requirements: a one-machine test cluster must still schedule every pod,
/// and the PDB already bounds voluntary disruptions.
fn placement(kvc: &KVCluster) -> (Affinity, Vec<TopologySpreadConstraint>) {
    let (default_affinity, default_spread) = default_placement(kvc);
    let p = &kvc.spec.placement;
    let affinity = p.affinity.clone().unwrap_or(default_affinity);
    let spread = if p.topology_spread_constraints.is_empty() {
        default_spread
    } else {
        p.topology_spread_constraints.clone()
    };
    (affinity, spread)
}

fn default_placement(kvc: &KVCluster) -> (Affinity, Vec<TopologySpreadConstraint>) {
    let selector = LabelSelector {
        match_labels: Some(selector_labels(kvc)),
        ..LabelSelector::default()
    };
    let affinity = Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(selector.clone()),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    };
    let spread = vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "topology.kubernetes.io/zone".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(selector),
        ..TopologySpreadConstraint::default()
    }];
    (affinity, spread)
}

/// The StatefulSet running `replicas` pods.
pub fn build(kvc: &KVCluster, replicas: u32) -> StatefulSet {
    let s = &kvc.spec;
    let (affinity, spread) = placement(kvc);
    let mut pod_spec = PodSpec {
        containers: vec![container(kvc)],
        affinity: Some(affinity),
        topology_spread_constraints: Some(spread),
        node_selector: Some(s.placement.node_selector.clone()).filter(|m| !m.is_empty()),
        tolerations: Some(s.placement.tolerations.clone()).filter(|t| !t.is_empty()),
        priority_class_name: s.placement.priority_class_name.clone(),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        // The node needs no Kubernetes API access.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            fs_group: Some(RUN_AS_USER),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(runtime_default()),
            ..PodSecurityContext::default()
        }),
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: configmap_name(kvc),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "context-key".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(context_key_name(kvc)),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    };
    pod_spec
        .volumes
        .get_or_insert_with(Vec::new)
        .extend(secret_mounts(kvc).iter().map(SecretMount::volume));
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(selector_labels(kvc)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: s.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), s.storage.size.clone())])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    StatefulSet {
        metadata: owned_meta(kvc, kvc.name_any()),
        spec: StatefulSetSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            service_name: Some(headless_service_name(kvc)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(kvc)),
                ..LabelSelector::default()
            },
            // Pods start together: a node waits for no other to be ready, and joining the
            // ring is the operator's job, not the start order's.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            // A scaled-away member has left the ring and its data lives elsewhere; keeping its
            // volume would bring stale data (and deleted keys whose tombstones are purged) back
            // if the cluster grows again. Deleting the resource keeps the volumes.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_scaled: Some("Delete".into()),
                    when_deleted: Some("Retain".into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(kvc)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::kvc;
    use crate::crd::{CertificateSource, Durability, ImagePullPolicy, SecretKeyRef};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod(sts: &StatefulSet) -> PodSpec {
        sts.spec.template.spec.clone().unwrap_or_default()
    }

    fn env_of(c: &Container, name: &str) -> Option<EnvVar> {
        c.env.clone()?.into_iter().find(|e| e.name == name)
    }

    fn value_of(c: &Container, name: &str) -> Option<String> {
        env_of(c, name).and_then(|e| e.value)
    }

    #[test]
    fn replicas_come_from_the_plan_and_pods_are_named_by_the_headless_service() {
        let sts = build(&kvc(3, 3, 2, 2), 5);
        let spec = sts.spec.clone();
        assert_eq!(sts.metadata.name.as_deref(), Some("kv"));
        assert_eq!(spec.replicas, Some(5));
        assert_eq!(spec.service_name.as_deref(), Some("kv-headless"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.selector.match_labels,
            Some(selector_labels(&kvc(3, 3, 2, 2)))
        );
        let template_labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .unwrap_or_default();
        for (k, v) in selector_labels(&kvc(3, 3, 2, 2)) {
            assert_eq!(template_labels.get(&k), Some(&v));
        }
        let retention = spec
            .persistent_volume_claim_retention_policy
            .unwrap_or_default();
        assert_eq!(retention.when_scaled.as_deref(), Some("Delete"));
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    }

    #[test]
    fn node_is_configured_through_its_environment() {
        let mut k = kvc(3, 3, 2, 2);
        k.spec.durability = Durability::Fsync;
        k.spec.cache_size = Some("1Gi".into());
        k.spec.partitions = 1024;
        k.spec.image_pull_policy = Some(ImagePullPolicy::IfNotPresent);
        let p = pod(&build(&k, 3));
        let c = &p.containers[0];
        assert_eq!(c.image.as_deref(), Some("kvnode:test"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(c.command, Some(vec!["kvnode".to_string()]));
        let id = env_of(c, "KVNODE_NODE_ID")
            .and_then(|e| e.value_from)
            .and_then(|v| v.field_ref);
        assert_eq!(id.map(|f| f.field_path).as_deref(), Some("metadata.name"));
        assert_eq!(
            value_of(c, "KVNODE_LISTEN").as_deref(),
            Some("0.0.0.0:8080")
        );
        assert_eq!(
            value_of(c, "KVNODE_PEER_LISTEN").as_deref(),
            Some("0.0.0.0:7070")
        );
        let ports: Vec<(Option<String>, i32)> = c
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name, p.container_port))
            .collect();
        assert_eq!(
            ports,
            [(Some("http".into()), 8080), (Some("peer".into()), 7070)]
        );
        assert_eq!(value_of(c, "KVNODE_DATA_DIR").as_deref(), Some("/data"));
        assert_eq!(
            value_of(c, "KVNODE_CLUSTER_CONFIG").as_deref(),
            Some("/etc/kvcluster/cluster.json")
        );
        assert_eq!(value_of(c, "KVNODE_DURABILITY").as_deref(), Some("fsync"));
        assert_eq!(value_of(c, "KVNODE_CACHE_SIZE").as_deref(), Some("1GiB"));
        assert_eq!(value_of(c, "KVNODE_PARTITIONS").as_deref(), Some("1024"));
        assert_eq!(env_of(c, "KVNODE_ADMIN_TOKEN"), None);
        assert_eq!(
            value_of(c, "KVNODE_INSECURE").as_deref(),
            Some("true"),
            "without a token or peer TLS, a node on 0.0.0.0 starts only when told it may"
        );
    }

    #[test]
    fn admin_token_is_the_named_secret_mounted_as_a_file() {
        let mut k = kvc(3, 3, 2, 2);
        k.spec.auth.admin_token_secret_ref = Some(SecretKeyRef {
            name: "kv-admin".into(),
            key: "admin.txt".into(),
        });
        let p = pod(&build(&k, 3));
        let c = &p.containers[0];
        assert_eq!(env_of(c, "KVNODE_INSECURE"), None);
        // The token itself never appears in the pod spec, not even as a Secret reference in env.
        assert_eq!(env_of(c, "KVNODE_ADMIN_TOKEN"), None);
        assert_eq!(
            value_of(c, "KVNODE_ADMIN_TOKEN_FILE").as_deref(),
            Some("/etc/kvcluster-admin-token/token")
        );
        let volume = p
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "admin-token")
            .and_then(|v| v.secret)
            .unwrap_or_default();
        assert_eq!(volume.secret_name.as_deref(), Some("kv-admin"));
        let items = volume.items.unwrap_or_default();
        assert_eq!(items.len(), 1);
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("admin.txt", "token")
        );
        assert_eq!(volume.default_mode, Some(0o440));
        let mount = c
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.name == "admin-token")
            .unwrap_or_default();
        assert_eq!(mount.mount_path, "/etc/kvcluster-admin-token");
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(
            mount.sub_path, None,
            "a subPath mount never sees a rotated Secret"
        );

        let p = pod(&build(&kvc(3, 3, 2, 2), 3));
        assert!(
            !p.volumes
                .unwrap_or_default()
                .iter()
                .any(|v| v.name == "admin-token")
        );
        assert_eq!(value_of(&p.containers[0], "KVNODE_ADMIN_TOKEN_FILE"), None);
    }

    #[test]
    fn tls_secrets_are_mounted_and_probes_speak_https() {
        let mut k = kvc(3, 3, 2, 2);
        let secret = |name: &str| {
            Some(CertificateSource {
                secret_name: Some(name.into()),
                issuer_ref: None,
            })
        };
        k.spec.tls.peer = secret("peer-certs");
        k.spec.tls.client = secret("client-certs");
        let p = pod(&build(&k, 3));
        let c = &p.containers[0];
        assert_eq!(
            env_of(c, "KVNODE_INSECURE"),
            None,
            "peer TLS guards the node"
        );
        assert_eq!(
            value_of(c, "KVNODE_PEER_TLS_KEY").as_deref(),
            Some("/etc/kvcluster-peer-tls/tls.key")
        );
        assert_eq!(
            value_of(c, "KVNODE_TLS_CERT").as_deref(),
            Some("/etc/kvcluster-client-tls/tls.crt")
        );
        let secrets: Vec<String> = p
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.secret.and_then(|s| s.secret_name))
            .collect();
        assert!(secrets.contains(&"peer-certs".to_string()));
        assert!(secrets.contains(&"client-certs".to_string()));
        for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe] {
            let scheme = probe
                .clone()
                .and_then(|p| p.http_get)
                .and_then(|h| h.scheme);
            assert_eq!(scheme.as_deref(), Some("HTTPS"));
        }
        assert_eq!(value_of(c, "KVNODE_METRICS_AUTH"), None);
        k.spec.auth.metrics_need_token = true;
        let p = pod(&build(&k, 3));
        assert_eq!(
            value_of(&p.containers[0], "KVNODE_METRICS_AUTH").as_deref(),
            Some("true")
        );
    }

    #[test]
    fn probes_use_the_health_routes() {
        let p = pod(&build(&kvc(3, 3, 2, 2), 3));
        let c = &p.containers[0];
        let path = |probe: &Option<Probe>| {
            probe
                .clone()
                .and_then(|p| p.http_get)
                .and_then(|h| h.path)
                .unwrap_or_default()
        };
        assert_eq!(path(&c.liveness_probe), "/health/live");
        assert_eq!(path(&c.readiness_probe), "/health/ready");
        assert_eq!(path(&c.startup_probe), "/health/live");
        let port = c
            .readiness_probe
            .clone()
            .and_then(|p| p.http_get)
            .map(|h| h.port);
        assert_eq!(port, Some(IntOrString::String("http".into())));
    }

    #[test]
    fn pod_passes_the_restricted_pod_security_profile() {
        let p = pod(&build(&kvc(3, 3, 2, 2), 3));
        let psc = p.security_context.clone().unwrap_or_default();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault")
        );
        let sc = p.containers[0].security_context.clone().unwrap_or_default();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(
            sc.seccomp_profile.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault")
        );
        // restricted forbids host namespaces and hostPath volumes
        assert_eq!(p.host_network, None);
        assert_eq!(p.host_pid, None);
        for v in p.volumes.unwrap_or_default() {
            assert!(v.host_path.is_none(), "{} is a hostPath", v.name);
        }
        assert_eq!(
            p.termination_grace_period_seconds,
            Some(TERMINATION_GRACE_SECONDS)
        );
        assert_eq!(p.automount_service_account_token, Some(false));
    }

    #[test]
    fn volumes_hold_data_config_and_a_writable_tmp() {
        let mut k = kvc(3, 3, 2, 2);
        k.spec.storage.size = Quantity("10Gi".into());
        k.spec.storage.storage_class_name = Some("fast".into());
        let sts = build(&k, 3);
        let spec = sts.spec.clone();
        let claims = spec.volume_claim_templates.unwrap_or_default();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
        let cspec = claims[0].spec.clone().unwrap_or_default();
        assert_eq!(cspec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
        assert_eq!(cspec.storage_class_name.as_deref(), Some("fast"));
        let size = cspec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned());
        assert_eq!(size, Some(Quantity("10Gi".into())));

        let p = pod(&sts);
        let mounts: Vec<(String, String)> = p.containers[0]
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.name, m.mount_path))
            .collect();
        assert!(mounts.contains(&("data".into(), "/data".into())));
        assert!(mounts.contains(&("config".into(), "/etc/kvcluster".into())));
        assert!(mounts.contains(&("tmp".into(), "/tmp".into())));
        let cm = p
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find_map(|v| v.config_map)
            .map(|c| c.name);
        assert_eq!(cm.as_deref(), Some("kv-config"));
    }

    #[test]
    fn pods_prefer_distinct_hosts_and_zones() {
        let p = pod(&build(&kvc(3, 3, 2, 2), 3));
        let terms = p
            .affinity
            .and_then(|a| a.pod_anti_affinity)
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution)
            .unwrap_or_default();
        assert_eq!(
            terms[0].pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        let spread = p.topology_spread_constraints.unwrap_or_default();
        assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
        assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
    }

    #[test]
    fn placement_replaces_the_defaults_and_settings_reach_the_node() {
        use k8s_openapi::api::core::v1::Toleration;
        let default = pod(&build(&kvc(3, 3, 2, 2), 3));
        assert_eq!(default.node_selector, None);
        assert_eq!(default.tolerations, None);
        assert!(default.affinity.is_some(), "distinct hosts by default");

        let mut k = kvc(3, 3, 2, 2);
        k.spec.placement.node_selector = [("disk".to_string(), "nvme".to_string())].into();
        k.spec.placement.tolerations = vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("storage".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }];
        k.spec.placement.affinity = Some(Affinity::default());
        k.spec.placement.priority_class_name = Some("storage-critical".into());
        k.spec.node_settings.tombstone_grace = Some("6h".into());
        k.spec.node_settings.max_value_size = Some("4Mi".into());
        k.spec.node_settings.max_requests_in_flight = Some(512);
        let p = pod(&build(&k, 3));
        assert_eq!(
            p.node_selector
                .unwrap_or_default()
                .get("disk")
                .map(String::as_str),
            Some("nvme")
        );
        assert_eq!(p.tolerations.unwrap_or_default().len(), 1);
        assert_eq!(
            p.affinity,
            Some(Affinity::default()),
            "the spec's affinity replaces ours"
        );
        assert_eq!(p.priority_class_name.as_deref(), Some("storage-critical"));
        let c = &p.containers[0];
        assert_eq!(value_of(c, "KVNODE_TOMBSTONE_GRACE").as_deref(), Some("6h"));
        assert_eq!(
            value_of(c, "KVNODE_MAX_VALUE_BYTES").as_deref(),
            Some("4MiB")
        );
        assert_eq!(
            value_of(c, "KVNODE_MAX_REQUESTS_IN_FLIGHT").as_deref(),
            Some("512")
        );
        assert_eq!(
            value_of(c, "KVNODE_HINT_TTL"),
            None,
            "unset: the node's default"
        );
    }

    #[test]
    fn default_resources_make_the_pods_guaranteed_and_size_the_caches() {
        let mut k = kvc(3, 3, 2, 2);
        k.spec.resources = None;
        k.spec.cache_size = None;
        let p = pod(&build(&k, 3));
        let c = &p.containers[0];
        let r = c.resources.clone().unwrap_or_default();
        assert!(r.limits.is_some() && r.requests == r.limits);
        assert_eq!(
            value_of(c, "KVNODE_CACHE_SIZE").as_deref(),
            Some("262144KiB")
        );
        assert_eq!(
            value_of(c, "KVNODE_ROCKSDB_MEMORY").as_deref(),
            Some("262144KiB")
        );
    }
}
