//! A backup target: the object store a URL names, and the layout of a backup inside it.
//!
//! Layout, under the target's prefix: `BACKUP_ID/cluster.json` (written last, so its presence means
//! the backup is complete), `BACKUP_ID/nodes/NODE_ID/manifest.json` and the checkpoint's files
//! beside it as `BACKUP_ID/nodes/NODE_ID/files/NAME`.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;

use crate::Error;

/// Name of a backup's cluster manifest.
pub const CLUSTER_MANIFEST: &str = "cluster.json";
/// Name of a node's manifest.
pub const NODE_MANIFEST: &str = "manifest.json";

/// Settings of S3-compatible targets beyond the URL. What is left out comes from the standard
/// `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT`, ...); credentials are never logged.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Endpoint of an S3-compatible server (`http://127.0.0.1:9000`); AWS itself when `None`.
    pub endpoint: Option<String>,
    /// The bucket's region.
    pub region: Option<String>,
    /// An access key, for a process that serves several targets (the operator) and so cannot take
    /// it from its environment.
    pub credentials: Option<Credentials>,
}

/// An S3 access key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Opens the object store `url` names: `file:///absolute/dir` (created if missing) or
/// `s3://bucket[/prefix]`.
pub fn open(url: &str, s3: &S3Settings) -> Result<Arc<dyn ObjectStore>, Error> {
    if let Some(dir) = url.strip_prefix("file://") {
        if !dir.starts_with('/') {
            return Err(Error::BadTarget(format!(
                "{url}: a file target needs an absolute path (file:///dir)"
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::BadTarget(format!("{url}: {e}")))?;
        // Cleanup removes the folders a delete empties, so a deleted backup is not listed.
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| Error::BadTarget(format!("{url}: {e}")))?
            .with_automatic_cleanup(true);
        return Ok(Arc::new(store));
    }
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(Error::BadTarget(format!(
            "{url}: expected file:///dir or s3://bucket/prefix"
        )));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::BadTarget(format!("{url}: no bucket")));
    }
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(region) = &s3.region {
        builder = builder.with_region(region);
    }
    if let Some(key) = &s3.credentials {
        builder = builder
            .with_access_key_id(&key.access_key_id)
            .with_secret_access_key(&key.secret_access_key);
    }
    let store = builder
        .build()
        .map_err(|e| Error::BadTarget(format!("{url}: {e}")))?;
    let prefix = prefix.trim_matches('/');
    Ok(if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    })
}

/// Refuses a backup id or node id that is not one plain path segment.
pub fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadTarget(format!(
            "{what} {name:?} must be 1-128 characters of A-Z a-z 0-9 - _ ."
        )))
    }
}

/// The folder of backup `id`.
pub fn backup_dir(id: &str) -> Path {
    Path::from(id)
}

/// The cluster manifest of backup `id`.
pub fn cluster_manifest(id: &str) -> Path {
    Path::from_iter([id, CLUSTER_MANIFEST])
}

/// The manifest of node `node` in backup `id`.
pub fn node_manifest(id: &str, node: &str) -> Path {
    Path::from_iter([id, "nodes", node, NODE_MANIFEST])
}

/// The checkpoint file `name` of node `node` in backup `id`.
pub fn node_file(id: &str, node: &str, name: &str) -> Path {
    Path::from_iter([id, "nodes", node, "files", name])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_are_single_segments() {
        assert!(check_name("id", "b-2026.11_28").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_name("id", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            node_file("b1", "kv-0", "000012.sst").as_ref(),
            "b1/nodes/kv-0/files/000012.sst"
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(open("file://relative", &S3Settings::default()).is_err());
        assert!(open("gs://bucket", &S3Settings::default()).is_err());
        assert!(open("s3:///prefix", &S3Settings::default()).is_err());
    }

    #[test]
    fn the_secret_key_never_shows_in_debug_output() {
        let key = Credentials {
            access_key_id: "AKIA1".into(),
            secret_access_key: "s3cret".into(),
        };
        assert!(!format!("{key:?}").contains("s3cret"));
    }
}
