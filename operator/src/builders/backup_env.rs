//! What a node needs to reach the backup target of `spec.backup` and `spec.restoreFrom`: the S3
//! endpoint and region, the upload rate, and the two keys of the credentials Secret as
//! `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (only those keys: the pod never sees the rest
//! of the Secret).
//!
//! The CEL rule [`crate::crd::SHARED_S3_RULE`] makes both specs name the same S3 settings, so one
//! set of variables serves both.

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};

use crate::crd::{ACCESS_KEY_ID, KVCluster, S3Spec, SECRET_ACCESS_KEY};

/// The S3 settings the nodes use: the schedule's, else the restore's.
pub fn s3_spec(kvc: &KVCluster) -> Option<&S3Spec> {
    let spec = &kvc.spec;
    spec.backup
        .as_ref()
        .map(|b| &b.s3)
        .or_else(|| spec.restore_from.as_ref().map(|r| &r.s3))
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn from_secret(secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: key.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The node's variables for backups and restores (none without either spec).
pub fn env(kvc: &KVCluster) -> Vec<EnvVar> {
    let mut vars = Vec::new();
    if let Some(rate) = kvc.spec.backup.as_ref().and_then(|b| b.rate.as_ref()) {
        // The node reads a byte size: `64Mi` is spelled `64MiB` there.
        let rate = if rate.ends_with('i') {
            format!("{rate}B")
        } else {
            rate.clone()
        };
        vars.push(value("KVNODE_BACKUP_RATE", &rate));
    }
    let Some(s3) = s3_spec(kvc) else {
        return vars;
    };
    if let Some(endpoint) = &s3.endpoint {
        vars.push(value("KVNODE_BACKUP_ENDPOINT", endpoint));
    }
    if let Some(region) = &s3.region {
        vars.push(value("AWS_REGION", region));
    }
    if let Some(secret) = &s3.credentials_secret {
        vars.push(from_secret(secret, ACCESS_KEY_ID));
        vars.push(from_secret(secret, SECRET_ACCESS_KEY));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::kvc;
    use crate::crd::{BackupSpec, RestoreSpec};

    #[test]
    fn nothing_without_backups() {
        assert!(env(&kvc(3, 3, 2, 2)).is_empty());
    }

    #[test]
    fn only_the_two_keys_of_the_secret_reach_the_node() {
        let mut k = kvc(3, 3, 2, 2);
        k.spec.restore_from = Some(RestoreSpec {
            target: "s3://b/p".into(),
            backup_id: "b1".into(),
            s3: S3Spec {
                endpoint: Some("http://minio:9000".into()),
                region: Some("eu-west-1".into()),
                credentials_secret: Some("s3-key".into()),
            },
        });
        let restore_only = env(&k);
        k.spec.backup = Some(BackupSpec {
            schedule: "0 3 * * *".into(),
            target: "s3://b/p".into(),
            s3: k
                .spec
                .restore_from
                .as_ref()
                .map(|r| r.s3.clone())
                .unwrap_or_default(),
            retention: 3,
            rate: Some("16Mi".into()),
        });
        let vars = env(&k);
        assert_eq!(vars.len(), restore_only.len() + 1);
        let get = |name: &str| vars.iter().find(|v| v.name == name).cloned();
        assert_eq!(
            get("KVNODE_BACKUP_RATE").and_then(|v| v.value).as_deref(),
            Some("16MiB")
        );
        assert_eq!(
            get("KVNODE_BACKUP_ENDPOINT")
                .and_then(|v| v.value)
                .as_deref(),
            Some("http://minio:9000")
        );
        let key = get(SECRET_ACCESS_KEY)
            .and_then(|v| v.value_from)
            .and_then(|f| f.secret_key_ref);
        assert_eq!(
            key.map(|k| (k.name, k.key)),
            Some(("s3-key".into(), SECRET_ACCESS_KEY.into()))
        );
        assert_eq!(
            vars.iter().filter(|v| v.value_from.is_some()).count(),
            2,
            "only the two keys come from the Secret"
        );
    }
}
