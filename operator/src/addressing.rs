//! Where each pod's node is reached: the member address written into the ClusterConfig and the
//! address of the operator's admin calls are one and the same.
//!
//! On Kubernetes that is the pod's stable DNS name under the headless Service,
//! `<pod>.<name>-headless.<namespace>.svc:8080`. Tests that run nodes as plain processes on loopback
//! cannot have those names, so the operator takes an override file (`--node-address-override-file`):
//! a JSON object mapping a pod to `host:port`, keyed `"<namespace>/<pod>"` or just `"<pod>"` (the
//! namespaced key wins). Pods the file does not name keep their DNS address. The file is read
//! again at every reconcile, so a test harness may add a node's entry when it starts the process.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::Error;
use crate::builders::NODE_PORT;

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
        let overrides: HashMap<String, String> = serde_json::from_str(&text)
            .map_err(|e| Error::AddressOverride(format!("{}: {e}", path.display())))?;
        Ok(Addresses { overrides })
    }
}

/// A snapshot of the address overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    overrides: HashMap<String, String>,
}

impl Addresses {
    /// Addresses with these overrides (keys as in the override file).
    pub fn with_overrides(overrides: HashMap<String, String>) -> Self {
        Self { overrides }
    }

    /// `host:port` of pod `pod` of the cluster `name` in `namespace`.
    pub fn address(&self, namespace: &str, name: &str, pod: &str) -> String {
        self.overrides
            .get(&format!("{namespace}/{pod}"))
            .or_else(|| self.overrides.get(pod))
            .cloned()
            .unwrap_or_else(|| format!("{pod}.{name}-headless.{namespace}.svc:{NODE_PORT}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn pods_are_reached_by_their_headless_dns_name() {
        let a = Addresses::default();
        assert_eq!(
            a.address("ns", "kv", "kv-2"),
            "kv-2.kv-headless.ns.svc:8080"
        );
    }

    #[test]
    fn namespaced_override_beats_plain_one_and_others_keep_dns() {
        let a = Addresses::with_overrides(HashMap::from([
            ("kv-0".to_string(), "127.0.0.1:7000".to_string()),
            ("ns/kv-0".to_string(), "127.0.0.2:7000".to_string()),
            ("kv-1".to_string(), "127.0.0.1:7001".to_string()),
        ]));
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
        write!(file, r#"{{"kv-0": "127.0.0.1:7000"}}"#)?;
        let source = AddressSource::new(Some(file.path().to_path_buf()));
        assert_eq!(source.load()?.address("ns", "kv", "kv-0"), "127.0.0.1:7000");
        std::fs::write(file.path(), r#"{"kv-0": "127.0.0.1:7100"}"#)?;
        assert_eq!(source.load()?.address("ns", "kv", "kv-0"), "127.0.0.1:7100");
        std::fs::write(file.path(), "not json")?;
        assert!(source.load().is_err());
        Ok(())
    }
}
