//! The Secrets a KVCluster names: each must carry the opt-in label before the operator mounts it
//! into pods, and three are read because the operator needs their content: the admin token it
//! sends, the CA it trusts when the client port speaks TLS, and the S3 key it writes backup
//! manifests and deletes old backups with.
//!
//! Reading needs `get` on Secrets in the cluster's namespace, granted per namespace through the
//! `kvoperator-secret-reader` ClusterRole (see [`crate::rbac`]); the context key Secret the operator
//! creates itself is never read back.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};

use kvbackup::target::Credentials;

use crate::builders::backup_env::s3_spec;
use crate::builders::secret_mounts::{SecretMount, SecretUse, TLS_CA, TlsPort, secret_mounts};
use crate::crd::{ACCESS_KEY_ID, KVCluster, SECRET_ACCESS_KEY, SECRET_OPT_IN_LABEL};
use crate::nodeadmin::NodeAccess;
use crate::{Error, Result};

/// Checks every Secret the pods of `kvc` would mount, and returns how to reach its nodes.
///
/// Fails, before anything is applied, when a Secret is missing (cert-manager may not have issued
/// it yet), lacks the label, or lacks a key the operator needs.
pub async fn node_access(client: &Client, ns: &str, kvc: &KVCluster) -> Result<NodeAccess> {
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    let mut access = NodeAccess::default();
    for mount in secret_mounts(kvc) {
        let secret = opted_in(&api, ns, &mount).await?;
        for (key, _, _) in &mount.files {
            if value(&secret, key).is_none() {
                return Err(Error::Secret(format!(
                    "Secret {ns}/{} ({}) has no key {key}",
                    mount.secret,
                    mount.used_for.purpose()
                )));
            }
        }
        match mount.used_for {
            SecretUse::AdminToken => access.token = Some(admin_token(&secret, &mount.files[0].0)?),
            SecretUse::Tls(TlsPort::Client) => access.ca_pem = Some(client_ca(&secret)?),
            _ => {}
        }
    }
    Ok(access)
}

async fn opted_in(api: &Api<Secret>, ns: &str, mount: &SecretMount) -> Result<Secret> {
    let hint = if matches!(mount.used_for, SecretUse::Tls(_)) {
        " (with an issuerRef, cert-manager has not issued it yet)"
    } else {
        ""
    };
    labelled(api, ns, &mount.secret, mount.used_for.purpose(), hint).await
}

/// Secret `name`, if it exists and carries the opt-in label.
async fn labelled(
    api: &Api<Secret>,
    ns: &str,
    name: &str,
    purpose: &str,
    hint: &str,
) -> Result<Secret> {
    let Some(secret) = api.get_opt(name).await? else {
        return Err(Error::Secret(format!(
            "Secret {ns}/{name} ({purpose}) not found{hint}"
        )));
    };
    if secret.labels().get(SECRET_OPT_IN_LABEL).map(String::as_str) != Some("true") {
        // Without the opt-in, anyone allowed to create a KVCluster could have any Secret of the
        // namespace mounted into pods of an image of their choosing.
        return Err(Error::Secret(format!(
            "Secret {ns}/{name} ({purpose}) lacks the label {SECRET_OPT_IN_LABEL}=true that allows kvoperator to use it"
        )));
    }
    Ok(secret)
}

/// The S3 access key of `spec.backup` / `spec.restoreFrom`, read from their credentials Secret
/// (which the pods also get their two keys of): `None` when they name none.
///
/// Fails when the Secret is missing, lacks the label, or lacks one of the two keys.
pub async fn s3_credentials(
    client: &Client,
    ns: &str,
    kvc: &KVCluster,
) -> Result<Option<Credentials>> {
    let Some(name) = s3_spec(kvc).and_then(|s| s.credentials_secret.as_ref()) else {
        return Ok(None);
    };
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    let secret = labelled(&api, ns, name, "S3 credentials", "").await?;
    let key = |key: &str| {
        value(&secret, key)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Error::Secret(format!(
                    "Secret {ns}/{name} (S3 credentials) has no UTF-8 key {key}"
                ))
            })
    };
    Ok(Some(Credentials {
        access_key_id: key(ACCESS_KEY_ID)?,
        secret_access_key: key(SECRET_ACCESS_KEY)?,
    }))
}

fn value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
}

/// The token the operator sends: read exactly as the node reads the mounted file; while rotating,
/// the first line is the one sent.
fn admin_token(secret: &Secret, key: &str) -> Result<String> {
    let name = secret.name_any();
    let bytes = value(secret, key)
        .ok_or_else(|| Error::Secret(format!("Secret {name} (admin token) has no key {key}")))?;
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::Secret(format!("key {key} of Secret {name} is not UTF-8")))?;
    let tokens = kvapi::parse_tokens(text)
        .map_err(|e| Error::Secret(format!("key {key} of Secret {name}: {e}")))?;
    tokens
        .first()
        .map(|t| (*t).to_string())
        .ok_or_else(|| Error::Secret(format!("key {key} of Secret {name} holds no token")))
}

/// The CA of the client port's certificate, which the operator trusts alone for https.
fn client_ca(secret: &Secret) -> Result<Vec<u8>> {
    let name = secret.name_any();
    match value(secret, TLS_CA) {
        Some(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {
            Ok(pem.to_vec())
        }
        _ => Err(Error::Secret(format!(
            "Secret {name} (client TLS) has no PEM certificate in {TLS_CA}: kvoperator could not \
             verify the nodes it talks to"
        ))),
    }
}
