//! Where each pod's node is reached: the member addresses written into the ClusterConfig (the
//! client `address`, which is also where the operator's admin calls go, and the `peer_address`).
//!
//! On Kubernetes both are the pod's stable DNS name under the headless Service, on the client port
//! and the peer port: `<pod>.<name>-headless.<namespace>.svc:8080` and `…:7070`. Tests that run
//! nodes as plain processes on loopback cannot have those names, so the operator takes an override
//! file (`--node-address-override-file`): a JSON object mapping a pod to
//! `{"address": "host:port", "peer_address": "host:port"}`, keyed `"<namespace>/<pod>"` or just
//! `"<pod>"` (the namespaced key wins). Pods the file does not name keep their DNS addresses. The
//! file is read again at every reconcile, so a test harness may add a node's entry when it starts
//! the process.

use std::collections::HashMap;
use std::path::PathBuf;

use kvapi::Member;
use serde::Deserialize;

use crate::Error;
use crate::builders::{NODE_PORT, PEER_PORT};

/// The two addresses of one node, as an override file gives them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeAddresses {
    /// Client `host:port`.
    pub address: String,
    /// Peer `host:port`.
    pub peer_address: String,
}

/// Where addresses come from: DNS names, optionally overridden from a file.
#[derive(Debug, Clone, Default)]
pub struct AddressSource {
    override_file: Option<PathBuf>,
}

impl AddressSource {
    /// Addresses from DNS names, overridden by the entries of `override_file` when given.
    pub fn new(override_file: Option<PathBuf>) -> Self {
        Self { override_file }
    }

    /// The addresses as of now (reads the override file, if any).
    pub fn load(&self) -> Result<Addresses, Error> {
        let Some(path) = &self.override_file else {
            return Ok(Addresses::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::AddressOverride(format!("{}: {e}", path.display())))?;
        let overrides: HashMap<String, NodeAddresses> = serde_json::from_str(&text)
            .map_err(|e| Error::AddressOverride(format!("{}: {e}", path.display())))?;
        Ok(Addresses { overrides })
    }
}

/// A snapshot of the address overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    overrides: HashMap<String, NodeAddresses>,
}

impl Addresses {
    /// Addresses with these overrides (keys as in the override file).
    pub fn with_overrides(overrides: HashMap<String, NodeAddresses>) -> Self {
        Self { overrides }
    }

    /// Both addresses of pod `pod` of the cluster `name` in `namespace`.
    fn of(&self, namespace: &str, name: &str, pod: &str) -> NodeAddresses {
        self.overrides
            .get(&format!("{namespace}/{pod}"))
            .or_else(|| self.overrides.get(pod))
            .cloned()
            .unwrap_or_else(|| {
                let host = format!("{pod}.{name}-headless.{namespace}.svc");
                NodeAddresses {
                    address: format!("{host}:{NODE_PORT}"),
                    peer_address: format!("{host}:{PEER_PORT}"),
                }
            })
    }

    /// Client `host:port` of pod `pod` of the cluster `name` in `namespace` (admin calls go there).
    pub fn address(&self, namespace: &str, name: &str, pod: &str) -> String {
        self.of(namespace, name, pod).address
    }

    /// The member entry of pod `pod` of the cluster `name` in `namespace`.
    pub fn member(&self, namespace: &str, name: &str, pod: &str) -> Member {
        let NodeAddresses {
            address,
            peer_address,
        } = self.of(namespace, name, pod);
        Member {
            id: pod.to_string(),
            address,
            peer_address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn on(address: &str) -> NodeAddresses {
        NodeAddresses {
            address: address.to_string(),
            peer_address: format!("{address}0"),
        }
    }

    #[test]
    fn pods_are_reached_by_their_headless_dns_name() {
        let a = Addresses::default();
        assert_eq!(
            a.member("ns", "kv", "kv-2"),
            Member {
                id: "kv-2".into(),
                address: "kv-2.kv-headless.ns.svc:8080".into(),
                peer_address: "kv-2.kv-headless.ns.svc:7070".into(),
            }
        );
    }

    #[test]
    fn namespaced_override_beats_plain_one_and_others_keep_dns() {
        let a = Addresses::with_overrides(HashMap::from([
            ("kv-0".to_string(), on("127.0.0.1:7000")),
            ("ns/kv-0".to_string(), on("127.0.0.2:7000")),
            ("kv-1".to_string(), on("127.0.0.1:7001")),
        ]));
        assert_eq!(a.member("ns", "kv", "kv-0").peer_address, "127.0.0.2:70000");
        assert_eq!(a.address("ns", "kv", "kv-0"), "127.0.0.2:7000");
        assert_eq!(a.address("other", "kv", "kv-0"), "127.0.0.1:7000");
        assert_eq!(a.address("ns", "kv", "kv-1"), "127.0.0.1:7001");
        assert_eq!(
            a.address("ns", "kv", "kv-2"),
            "kv-2.kv-headless.ns.svc:8080"
        );
    }

    #[test]
    fn override_file_is_read_at_every_load() -> Result<(), Box<dyn std::error::Error>> {
        let mut file = tempfile::NamedTempFile::new()?;
        write!(
            file,
            r#"{{"kv-0": {{"address": "127.0.0.1:7000", "peer_address": "127.0.0.1:8000"}}}}"#
        )?;
        let source = AddressSource::new(Some(file.path().to_path_buf()));
        assert_eq!(source.load()?.address("ns", "kv", "kv-0"), "127.0.0.1:7000");
        std::fs::write(
            file.path(),
            r#"{"kv-0": {"address": "127.0.0.1:7100", "peer_address": "127.0.0.1:8100"}}"#,
        )?;
        assert_eq!(source.load()?.address("ns", "kv", "kv-0"), "127.0.0.1:7100");
        assert_eq!(
            source.load()?.member("ns", "kv", "kv-0").peer_address,
            "127.0.0.1:8100"
        );
        std::fs::write(file.path(), "not json")?;
        assert!(source.load().is_err());
        Ok(())
    }
}
