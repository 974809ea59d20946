//! The parts of Kubernetes the operator tests play themselves: the StatefulSet controller making a
//! Pod from the template, the kubelet materialising its ConfigMap and Secret volumes as files and
//! starting the container's `kvnode` with the template's environment (values from Secrets
//! included), and marking the Pod Ready.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Pod, PodSpec, Secret, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::NodeBuilder;

/// Creates Pod `ordinal` from the StatefulSet's template, as the StatefulSet controller does: its
/// labels, the pod-name label, hostname and subdomain, the claim of the volume template, and the
/// StatefulSet as controller. The API server validates it (a namespace's Pod Security profile
/// too). Does nothing when the Pod exists.
pub async fn create_pod(client: &Client, sts: &StatefulSet, ordinal: u32) {
    let ns = sts.namespace().expect("StatefulSet namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let name = format!("{}-{ordinal}", sts.name_any());
    if pods.get_opt(&name).await.unwrap().is_some() {
        return;
    }
    let spec = sts.spec.clone();
    let template = spec.template;
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert("statefulset.kubernetes.io/pod-name".into(), name.clone());
    labels.insert("apps.kubernetes.io/pod-index".into(), ordinal.to_string());
    let mut pod_spec: PodSpec = template.spec.clone().expect("template spec");
    pod_spec.hostname = Some(name.clone());
    pod_spec.subdomain = spec.service_name.clone();
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    for claim in spec.volume_claim_templates.unwrap_or_default() {
        let claim_name = claim.metadata.name.clone().expect("claim template name");
        volumes.push(Volume {
            name: claim_name.clone(),
            persistent_volume_claim: Some(
                k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                    claim_name: format!("{claim_name}-{name}"),
                    read_only: None,
                },
            ),
            ..Volume::default()
        });
    }
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "StatefulSet".into(),
                name: sts.name_any(),
                uid: sts.uid().expect("StatefulSet uid"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    };
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name} from the StatefulSet template: {e}"));
}

/// Marks Pod `ns/name` Running and Ready, as its kubelet would once the readiness probe passed.
pub async fn mark_ready(client: &Client, ns: &str, name: &str) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let ready = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [ready("Initialized"), ready("ContainersReady"), ready("Ready"), ready("PodScheduled")],
    }});
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("mark {name} Ready: {e}"));
}

/// Writes `items` of `data` (all of it when `items` is empty) under `dir`.
fn write_files(dir: &Path, data: &[(String, Vec<u8>)], items: &[KeyToPath], what: &str) {
    std::fs::create_dir_all(dir).unwrap();
    if items.is_empty() {
        for (key, value) in data {
            std::fs::write(dir.join(key), value).unwrap();
        }
        return;
    }
    for item in items {
        let value = data
            .iter()
            .find(|(k, _)| *k == item.key)
            .unwrap_or_else(|| {
                panic!(
                    "{what} has no key {} (the kubelet would not start the pod)",
                    item.key
                )
            });
        std::fs::write(dir.join(&item.path), &value.1).unwrap();
    }
}

/// The `kvnode` of Pod `pod` as its kubelet would start it from the StatefulSet's template: every
/// ConfigMap and Secret volume written under `dir/<pod>/<volume>/`, and the container's environment
/// with each mount path rewritten to that directory. The caller adds the loopback `--listen` and
/// `--peer-listen` flags (flags beat the environment); the data volume is the harness's own.
pub async fn node_from_template(
    client: &Client,
    sts: &StatefulSet,
    pod: &str,
    dir: &Path,
) -> NodeBuilder {
    let ns = sts.namespace().expect("StatefulSet namespace");
    let spec = sts.spec.template.spec.clone().expect("template spec");
    let container = &spec.containers[0];
    let volumes = spec.volumes.clone().unwrap_or_default();
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in container.volume_mounts.clone().unwrap_or_default() {
        let Some(volume) = volumes.iter().find(|v| v.name == mount.name) else {
            continue; // the data volume, from the claim template
        };
        let local = dir.join(pod).join(&mount.name);
        std::fs::create_dir_all(&local).unwrap();
        if let Some(source) = &volume.config_map {
            let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get(&source.name)
                .await
                .unwrap_or_else(|e| panic!("ConfigMap {} of {pod}: {e}", source.name));
            let data: Vec<(String, Vec<u8>)> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            write_files(
                &local,
                &data,
                &source.items.clone().unwrap_or_default(),
                &source.name,
            );
        } else if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().expect("secret volume name");
            let secret = Api::<Secret>::namespaced(client.clone(), &ns)
                .get(&name)
                .await
                .unwrap_or_else(|e| panic!("Secret {name} of {pod}: {e}"));
            let data: Vec<(String, Vec<u8>)> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            write_files(
                &local,
                &data,
                &source.items.clone().unwrap_or_default(),
                &name,
            );
        }
        mounts.push((mount.mount_path.clone(), local));
    }
    let mut builder = NodeBuilder::new().without_listen();
    for var in container.env.clone().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => mounts
                .iter()
                .find_map(|(path, local)| {
                    value
                        .strip_prefix(path.as_str())
                        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                        .map(|rest| format!("{}{rest}", local.display()))
                })
                .unwrap_or_else(|| value.clone()),
            (None, Some(from))
                if from
                    .field_ref
                    .as_ref()
                    .is_some_and(|f| f.field_path == "metadata.name") =>
            {
                pod.to_string()
            }
            (None, Some(from)) if from.secret_key_ref.is_some() => {
                let selector = from.secret_key_ref.clone().expect("secretKeyRef");
                let secret = Api::<Secret>::namespaced(client.clone(), &ns)
                    .get(&selector.name)
                    .await
                    .unwrap_or_else(|e| panic!("Secret {} of {pod}: {e}", selector.name));
                let bytes = secret
                    .data
                    .unwrap_or_default()
                    .remove(&selector.key)
                    .unwrap_or_else(|| {
                        panic!(
                            "Secret {} has no key {} (the kubelet would not start {pod})",
                            selector.name, selector.key
                        )
                    });
                String::from_utf8(bytes.0).expect("a UTF-8 Secret value")
            }
            _ => panic!("the fake kubelet cannot resolve env {}", var.name),
        };
        builder = builder.env(&var.name, &value);
    }
    builder
}
