//! TLS: the rustls configurations of the client port and of the peer port, built from PEM files and
//! built again when those files change.
//!
//! - Client port (`--tls-cert`, `--tls-key`): server-only TLS, HTTP/1.1 and HTTP/2 by ALPN.
//! - Peer port (`--peer-tls-ca`, `--peer-tls-cert`, `--peer-tls-key`): mutual TLS. The server
//!   requires a client certificate signed by the cluster CA; the client verifies the server's
//!   certificate against the same CA and the host of the member's `peer_address` (a DNS name, or an
//!   IP address matched against the certificate's IP SANs). One certificate and key serve both ends.
//!
//! [`Reloading`] checks the files' modification times every [`RELOAD_INTERVAL`]; when one changed
//! it builds the configuration again and new connections use it. A set of files that does not load
//! (a rotation caught half-written, a key that does not match its certificate) is logged and the
//! previous configuration stays in force until the files load again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::Error;
use crate::supervisor::Stop;

/// How often certificate and key files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The ALPN protocols of the client port: HTTP/2 preferred, HTTP/1.1 accepted.
const CLIENT_PORT_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// Peers speak HTTP/2 only.
const PEER_ALPN: &[u8] = b"h2";

/// The TLS files of the client port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPortFiles {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

/// The TLS files of the peer port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFiles {
    /// The cluster CA, PEM: peers' certificates must chain to it.
    pub ca: PathBuf,
    /// This node's certificate chain, PEM, presented as server and as client.
    pub cert: PathBuf,
    /// This node's private key, PEM.
    pub key: PathBuf,
}

/// The two ends of mutual TLS between peers.
pub struct PeerTls {
    /// Accepts peers that present a certificate of the cluster CA.
    pub server: Arc<ServerConfig>,
    /// Connects to peers, presenting this node's certificate.
    pub client: Arc<ClientConfig>,
}

/// A server configuration as the connection loop takes it: the one in force at each accept.
pub type ServerTls = Arc<dyn Fn() -> Arc<ServerConfig> + Send + Sync>;

/// A value built from files, built again when one of them changes (see the module doc).
pub struct Reloading<T> {
    paths: Vec<PathBuf>,
    build: fn(&[PathBuf]) -> Result<T, String>,
    current: RwLock<Loaded<T>>,
}

struct Loaded<T> {
    value: Arc<T>,
    stamps: Vec<Option<(SystemTime, u64)>>,
    generation: u64,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the value from `paths` now; a failure is a startup error naming the files.
    pub fn open(
        paths: Vec<PathBuf>,
        build: fn(&[PathBuf]) -> Result<T, String>,
    ) -> Result<Arc<Self>, Error> {
        let stamps = stamps(&paths);
        let value = build(&paths).map_err(Error::Unavailable)?;
        Ok(Arc::new(Reloading {
            paths,
            build,
            current: RwLock::new(Loaded {
                value: Arc::new(value),
                stamps,
                generation: 0,
            }),
        }))
    }

    /// The value in force.
    pub fn current(&self) -> Arc<T> {
        self.current.read().value.clone()
    }

    /// Counts the reloads: a holder of something made from an older value can tell it is stale.
    pub fn generation(&self) -> u64 {
        self.current.read().generation
    }

    /// Builds the value again if a file changed since the last load; returns whether it did.
    pub fn refresh(&self) -> bool {
        let stamps = stamps(&self.paths);
        if stamps == self.current.read().stamps {
            return false;
        }
        match (self.build)(&self.paths) {
            Ok(value) => {
                let mut current = self.current.write();
                current.value = Arc::new(value);
                current.stamps = stamps;
                current.generation += 1;
                tracing::info!(files = ?self.paths, "reloaded TLS files");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "changed TLS files do not load; keeping the previous ones");
                false
            }
        }
    }

    /// Calls [`Reloading::refresh`] every [`RELOAD_INTERVAL`] until shutdown.
    pub async fn watch(self: Arc<Self>, mut stop: Stop) {
        let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while stop.unless_stopped(ticks.tick()).await.is_some() {
            self.refresh();
        }
    }
}

/// Modification time and length of each file (`None` when it cannot be read now).
fn stamps(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// The crypto provider of every configuration: ring (never aws-lc, a heavy C build).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

impl ClientPortFiles {
    /// The files in the order [`ClientPortFiles::build`] takes them.
    pub fn paths(&self) -> Vec<PathBuf> {
        vec![self.cert.clone(), self.key.clone()]
    }

    /// The client port's server configuration from `[cert, key]`.
    pub fn build(paths: &[PathBuf]) -> Result<ServerConfig, String> {
        let [cert, key] = paths else {
            return Err("the client port takes a certificate and a key".into());
        };
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
        config.alpn_protocols = CLIENT_PORT_ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

impl PeerFiles {
    /// The files in the order [`PeerFiles::build`] takes them.
    pub fn paths(&self) -> Vec<PathBuf> {
        vec![self.ca.clone(), self.cert.clone(), self.key.clone()]
    }

    /// Both ends of peer mutual TLS from `[ca, cert, key]`.
    pub fn build(paths: &[PathBuf]) -> Result<PeerTls, String> {
        let [ca, cert, key] = paths else {
            return Err("peer TLS takes a CA, a certificate and a key".into());
        };
        let roots = roots(ca)?;
        let chain = certificates(cert)?;
        let key_der = private_key(key)?;
        let mismatch = |e: rustls::Error| format!("{} and {}: {e}", cert.display(), key.display());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(mismatch)?;
        server.alpn_protocols = vec![PEER_ALPN.to_vec()];
        // No ALPN here: the peer client's connector sets `h2` itself (and refuses a preset list).
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key_der)
            .map_err(mismatch)?;
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// A client configuration for plain-HTTP peers: never used for a handshake (their URIs are
/// `http://`), it only gives the connector the one type it has with TLS.
pub fn plain_peer_client() -> Result<Arc<ClientConfig>, Error> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(e.to_string()))?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn missing_or_empty_files_are_refused_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem");
        let refused = ClientPortFiles::build(&[empty.clone(), missing.clone()]).unwrap_err();
        assert!(
            refused.contains("empty.pem holds no PEM certificate"),
            "{refused}"
        );
        let refused = PeerFiles::build(&[missing, empty.clone(), empty])
            .map(|_| ())
            .unwrap_err();
        assert!(refused.contains("missing.pem"), "{refused}");
    }

    #[test]
    fn unchanged_files_are_not_reloaded_and_broken_ones_keep_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("value");
        std::fs::write(&file, "1").unwrap();
        let read = |paths: &[PathBuf]| {
            let text = std::fs::read_to_string(&paths[0]).map_err(|e| e.to_string())?;
            text.parse::<u32>().map_err(|e| e.to_string())
        };
        let cell = Reloading::open(vec![file.clone()], read).unwrap();
        assert_eq!((*cell.current(), cell.generation()), (1, 0));
        assert!(!cell.refresh(), "nothing changed");
        std::fs::write(&file, "not a number").unwrap();
        assert!(!cell.refresh(), "a broken file is not taken");
        assert_eq!(*cell.current(), 1);
        std::fs::write(&file, "22").unwrap();
        assert!(cell.refresh());
        assert_eq!((*cell.current(), cell.generation()), (22, 1));
    }
}
