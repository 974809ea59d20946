//! The Secrets a node's pod mounts beside its data: bearer tokens and TLS files, each as a
//! read-only volume, and the environment variables that point the node at the files.
//!
//! Whole-volume mounts (no `subPath`): the kubelet refreshes them when the Secret changes, and
//! the node re-reads token files and reloads TLS files when they change, so rotation needs no
//! restart.

use k8s_openapi::api::core::v1::{EnvVar, KeyToPath, SecretVolumeSource, Volume, VolumeMount};
use kube::ResourceExt;

use crate::crd::{CertificateSource, KVCluster, SecretKeyRef};

/// The file of a token in its mount, whatever the Secret's key is called.
pub const TOKEN_FILE: &str = "token";
/// Certificate chain, key and CA in a TLS Secret (cert-manager's and `kubernetes.io/tls`'s keys),
/// also their file names in the mount.
pub const TLS_CERT: &str = "tls.crt";
/// The private key of a TLS Secret.
pub const TLS_KEY: &str = "tls.key";
/// The CA certificate of a TLS Secret.
pub const TLS_CA: &str = "ca.crt";

/// What a mounted Secret is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretUse {
    /// The admin token(s).
    AdminToken,
    /// Read-only data tokens.
    ReadToken,
    /// Read-write data tokens.
    WriteToken,
    /// A port's certificate, key and CA.
    Tls(TlsPort),
}

impl SecretUse {
    /// For messages.
    pub fn purpose(self) -> &'static str {
        match self {
            SecretUse::AdminToken => "admin token",
            SecretUse::ReadToken => "read token",
            SecretUse::WriteToken => "write token",
            SecretUse::Tls(TlsPort::Peer) => "peer TLS",
            SecretUse::Tls(TlsPort::Client) => "client TLS",
        }
    }

    /// The volume's name, and the mount's directory: `/etc/kvcluster-<volume>`.
    pub fn volume(self) -> &'static str {
        match self {
            SecretUse::AdminToken => "admin-token",
            SecretUse::ReadToken => "read-token",
            SecretUse::WriteToken => "write-token",
            SecretUse::Tls(TlsPort::Peer) => "peer-tls",
            SecretUse::Tls(TlsPort::Client) => "client-tls",
        }
    }
}

/// One Secret a node reads from files.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretMount {
    /// What it is for.
    pub used_for: SecretUse,
    /// The Secret's name.
    pub secret: String,
    /// `(key in the Secret, file in the mount, node environment variable)`.
    pub files: Vec<(String, &'static str, &'static str)>,
}

impl SecretMount {
    /// Where the Secret is mounted.
    pub fn dir(&self) -> String {
        format!("/etc/kvcluster-{}", self.used_for.volume())
    }

    /// The Secret as a volume of exactly its listed files; owner and the pod's fsGroup may read
    /// them, nobody may write them.
    pub fn volume(&self) -> Volume {
        Volume {
            name: self.used_for.volume().into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(self.secret.clone()),
                items: Some(
                    self.files
                        .iter()
                        .map(|(key, file, _)| KeyToPath {
                            key: key.clone(),
                            path: (*file).into(),
                            ..KeyToPath::default()
                        })
                        .collect(),
                ),
                default_mode: Some(0o440),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        }
    }

    /// The read-only mount at [`SecretMount::dir`].
    pub fn mount(&self) -> VolumeMount {
        VolumeMount {
            name: self.used_for.volume().into(),
            mount_path: self.dir(),
            read_only: Some(true),
            ..VolumeMount::default()
        }
    }

    /// The node's variables naming the files.
    pub fn env(&self) -> impl Iterator<Item = EnvVar> + '_ {
        self.files.iter().map(|(_, file, var)| EnvVar {
            name: (*var).into(),
            value: Some(format!("{}/{file}", self.dir())),
            ..EnvVar::default()
        })
    }
}

/// Which port a certificate serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPort {
    /// The peer port: mutual TLS between nodes.
    Peer,
    /// The client port.
    Client,
}

impl TlsPort {
    /// `peer` or `client`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPort::Peer => "peer",
            TlsPort::Client => "client",
        }
    }

    /// The port's certificate source in the spec.
    pub fn source(self, kvc: &KVCluster) -> Option<&CertificateSource> {
        match self {
            TlsPort::Peer => kvc.spec.tls.peer.as_ref(),
            TlsPort::Client => kvc.spec.tls.client.as_ref(),
        }
    }
}

/// The Secret holding `port`'s certificate: the one named in the spec, or the one cert-manager
/// issues for the operator's `Certificate` (`<name>-<port>-tls`).
pub fn tls_secret_name(kvc: &KVCluster, port: TlsPort) -> Option<String> {
    let source = port.source(kvc)?;
    Some(
        source
            .secret_name
            .clone()
            .unwrap_or_else(|| format!("{}-{}-tls", kvc.name_any(), port.as_str())),
    )
}

fn token(
    used_for: SecretUse,
    var: &'static str,
    sref: Option<&SecretKeyRef>,
) -> Option<SecretMount> {
    let sref = sref?;
    Some(SecretMount {
        used_for,
        secret: sref.name.clone(),
        files: vec![(sref.key.clone(), TOKEN_FILE, var)],
    })
}

/// Every Secret the pods of `kvc` mount.
pub fn secret_mounts(kvc: &KVCluster) -> Vec<SecretMount> {
    let auth = &kvc.spec.auth;
    let tls = |port: TlsPort, files: &[(&'static str, &'static str)]| {
        tls_secret_name(kvc, port).map(|secret| SecretMount {
            used_for: SecretUse::Tls(port),
            secret,
            files: files
                .iter()
                .map(|(file, var)| ((*file).to_string(), *file, *var))
                .collect(),
        })
    };
    [
        token(
            SecretUse::AdminToken,
            "KVNODE_ADMIN_TOKEN_FILE",
            auth.admin_token_secret_ref.as_ref(),
        ),
        token(
            SecretUse::ReadToken,
            "KVNODE_READ_TOKEN_FILE",
            auth.read_token_secret_ref.as_ref(),
        ),
        token(
            SecretUse::WriteToken,
            "KVNODE_WRITE_TOKEN_FILE",
            auth.write_token_secret_ref.as_ref(),
        ),
        tls(
            TlsPort::Peer,
            &[
                (TLS_CERT, "KVNODE_PEER_TLS_CERT"),
                (TLS_KEY, "KVNODE_PEER_TLS_KEY"),
                (TLS_CA, "KVNODE_PEER_TLS_CA"),
            ],
        ),
        tls(
            TlsPort::Client,
            &[(TLS_CERT, "KVNODE_TLS_CERT"), (TLS_KEY, "KVNODE_TLS_KEY")],
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::kvc;
    use crate::crd::IssuerRef;

    #[test]
    fn nothing_is_mounted_without_auth_or_tls() {
        assert!(secret_mounts(&kvc(3, 3, 2, 2)).is_empty());
    }

    #[test]
    fn tokens_and_certificates_become_files_the_node_is_pointed_at() {
        let mut k = kvc(3, 3, 2, 2);
        k.spec.auth.write_token_secret_ref = Some(SecretKeyRef {
            name: "apps".into(),
            key: "rw".into(),
        });
        k.spec.tls.peer = Some(CertificateSource {
            secret_name: None,
            issuer_ref: Some(IssuerRef {
                name: "ca".into(),
                kind: "Issuer".into(),
                group: "cert-manager.io".into(),
            }),
        });
        let mounts = secret_mounts(&k);
        assert_eq!(mounts.len(), 2);
        let write = &mounts[0];
        assert_eq!(write.secret, "apps");
        let volume = write.volume().secret.unwrap_or_default();
        let items = volume.items.unwrap_or_default();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("rw", "token")
        );
        assert_eq!(volume.default_mode, Some(0o440));
        let env: Vec<_> = write.env().collect();
        assert_eq!(env[0].name, "KVNODE_WRITE_TOKEN_FILE");
        assert_eq!(
            env[0].value.as_deref(),
            Some("/etc/kvcluster-write-token/token")
        );
        assert_eq!(write.mount().read_only, Some(true));
        assert_eq!(write.mount().sub_path, None);
        // cert-manager's Secret is named after the cluster.
        let peer = &mounts[1];
        assert_eq!(peer.secret, "kv-peer-tls");
        let vars: Vec<_> = peer
            .env()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect();
        assert!(vars.contains(&(
            "KVNODE_PEER_TLS_CA".into(),
            "/etc/kvcluster-peer-tls/ca.crt".into()
        )));
        assert_eq!(vars.len(), 3);
    }
}
