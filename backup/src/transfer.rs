//! Moving files and manifests in and out of a target: every file with its SHA-256, every byte under
//! a rate limit, memory bounded by one multipart chunk.

use std::path::Path as LocalPath;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use ring::digest::{Context, SHA256};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::Error;
use crate::manifest::{ClusterManifest, FileEntry};
use crate::target;

/// Size of a multipart chunk; smaller files are one `put`. S3 wants parts of at least 5 MiB.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Bytes read from a local file at a time.
const READ_BYTES: usize = 1024 * 1024;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Paces a transfer to at most `bytes_per_second` on average (0: no limit).
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_second: u64,
    started: Instant,
    moved: u64,
}

impl RateLimit {
    /// A limit starting now.
    pub fn new(bytes_per_second: u64) -> Self {
        RateLimit {
            bytes_per_second,
            started: Instant::now(),
            moved: 0,
        }
    }

    /// Accounts for `bytes` more, sleeping until the average rate is back under the limit.
    pub async fn take(&mut self, bytes: usize) {
        self.moved += bytes as u64;
        if self.bytes_per_second == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.moved as f64 / self.bytes_per_second as f64);
        tokio::time::sleep_until(self.started + due).await;
    }
}

fn io(what: &LocalPath, e: std::io::Error) -> Error {
    Error::Io(format!("{}: {e}", what.display()))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Uploads local file `file` to `to`, paced by `limit`, and returns its manifest entry named
/// `name`.
pub async fn upload_file(
    store: &dyn ObjectStore,
    file: &LocalPath,
    to: &Path,
    name: &str,
    limit: &mut RateLimit,
) -> Result<FileEntry, Error> {
    let mut input = tokio::fs::File::open(file).await.map_err(|e| io(file, e))?;
    let size = input.metadata().await.map_err(|e| io(file, e))?.len();
    let mut sha = Context::new(&SHA256);
    let mut buf = vec![0; READ_BYTES];
    let mut read = 0u64;
    if size <= PART_BYTES as u64 {
        let mut whole = Vec::with_capacity(size as usize);
        loop {
            let n = input.read(&mut buf).await.map_err(|e| io(file, e))?;
            if n == 0 {
                break;
            }
            limit.take(n).await;
            sha.update(&buf[..n]);
            whole.extend_from_slice(&buf[..n]);
        }
        read = whole.len() as u64;
        store.put(to, PutPayload::from(whole)).await?;
    } else {
        let mut writer =
            WriteMultipart::new_with_chunk_size(store.put_multipart(to).await?, PART_BYTES);
        let outcome: Result<(), Error> = async {
            loop {
                let n = input.read(&mut buf).await.map_err(|e| io(file, e))?;
                if n == 0 {
                    return Ok(());
                }
                limit.take(n).await;
                sha.update(&buf[..n]);
                read += n as u64;
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        match outcome {
            Ok(()) => {
                writer.finish().await?;
            }
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        }
    }
    if read != size {
        return Err(Error::Io(format!(
            "{} changed while it was uploaded ({size} bytes, then {read})",
            file.display()
        )));
    }
    Ok(FileEntry {
        name: name.to_string(),
        bytes: read,
        sha256: hex(sha.finish().as_ref()),
    })
}

/// Downloads `from` into local file `file`, paced by `limit`, and checks its size and SHA-256
/// against `entry`: a mismatch is [`Error::Corrupt`] naming the object, its absence
/// [`Error::Missing`].
pub async fn download_verified(
    store: &dyn ObjectStore,
    from: &Path,
    entry: &FileEntry,
    file: &LocalPath,
    limit: &mut RateLimit,
) -> Result<(), Error> {
    let mut stream = store.get(from).await?.into_stream();
    let mut output = tokio::fs::File::create(file)
        .await
        .map_err(|e| io(file, e))?;
    let mut sha = Context::new(&SHA256);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        if bytes > entry.bytes {
            break;
        }
        limit.take(chunk.len()).await;
        sha.update(&chunk);
        output.write_all(&chunk).await.map_err(|e| io(file, e))?;
    }
    output.sync_all().await.map_err(|e| io(file, e))?;
    let corrupt = |detail: String| Error::Corrupt {
        object: from.to_string(),
        detail,
    };
    if bytes != entry.bytes {
        return Err(corrupt(format!(
            "{} bytes where the manifest says {}",
            if bytes > entry.bytes {
                "more".to_string()
            } else {
                bytes.to_string()
            },
            entry.bytes
        )));
    }
    let actual = hex(sha.finish().as_ref());
    if actual != entry.sha256 {
        return Err(corrupt(format!(
            "SHA-256 {actual} where the manifest says {}",
            entry.sha256
        )));
    }
    Ok(())
}

/// Writes `value` as JSON to `to`.
pub async fn put_json<T: Serialize>(
    store: &dyn ObjectStore,
    to: &Path,
    value: &T,
) -> Result<(), Error> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::Io(e.to_string()))?;
    store.put(to, PutPayload::from(bytes)).await?;
    Ok(())
}

/// Reads the JSON object at `from`.
pub async fn get_json<T: DeserializeOwned>(
    store: &dyn ObjectStore,
    from: &Path,
) -> Result<T, Error> {
    let bytes = store.get(from).await?.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        object: from.to_string(),
        detail: e.to_string(),
    })
}

/// A backup found in a target.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The backup id (its folder).
    pub id: String,
    /// Its cluster manifest, or `None` when the backup never completed.
    pub manifest: Option<ClusterManifest>,
}

/// Every backup folder in the target, complete or not, sorted by id.
pub async fn list(store: &dyn ObjectStore) -> Result<Vec<Listing>, Error> {
    let listed = store.list_with_delimiter(None).await?;
    let mut out = Vec::new();
    for prefix in listed.common_prefixes {
        let Some(id) = prefix.filename().map(str::to_string) else {
            continue;
        };
        let manifest = match get_json(store, &target::cluster_manifest(&id)).await {
            Ok(m) => Some(m),
            Err(Error::Missing(_)) => None,
            Err(e) => return Err(e),
        };
        out.push(Listing { id, manifest });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Deletes every object of backup `id` (its cluster manifest first, so a half-deleted backup is
/// never listed as complete) and returns how many there were.
pub async fn delete(store: &dyn ObjectStore, id: &str) -> Result<u64, Error> {
    let manifest = target::cluster_manifest(id);
    let mut objects: Vec<Path> = store
        .list(Some(&target::backup_dir(id)))
        .map(|meta| meta.map(|m| m.location))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    if objects.is_empty() {
        return Err(Error::Missing(target::backup_dir(id).to_string()));
    }
    objects.sort_by_key(|p| *p != manifest);
    for object in &objects {
        store.delete(object).await?;
    }
    Ok(objects.len() as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::target::{S3Settings, open};

    #[tokio::test]
    async fn a_round_trip_verifies_and_a_flipped_byte_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(
            &format!("file://{}/t", dir.path().display()),
            &S3Settings::default(),
        )
        .unwrap();
        let local = dir.path().join("f");
        // Past one part, so the multipart path runs too.
        let data: Vec<u8> = (0..PART_BYTES + 12345).map(|i| (i % 251) as u8).collect();
        std::fs::write(&local, &data).unwrap();
        let to = target::node_file("b", "kv-0", "f");
        let mut limit = RateLimit::new(0);
        let entry = upload_file(store.as_ref(), &local, &to, "f", &mut limit)
            .await
            .unwrap();
        assert_eq!(entry.bytes, data.len() as u64);
        let back = dir.path().join("back");
        download_verified(store.as_ref(), &to, &entry, &back, &mut limit)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), data);

        let mut flipped = data.clone();
        flipped[7] ^= 1;
        store.put(&to, PutPayload::from(flipped)).await.unwrap();
        let err = download_verified(store.as_ref(), &to, &entry, &back, &mut limit)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { object, .. } if object == "b/nodes/kv-0/files/f"),
            "{err}"
        );
        let gone = target::node_file("b", "kv-0", "nope");
        let err = download_verified(store.as_ref(), &gone, &entry, &back, &mut limit)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("b/nodes/kv-0/files/nope"), "{err}");
        assert_eq!(delete(store.as_ref(), "b").await.unwrap(), 1);
        assert!(list(store.as_ref()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_rate_limit_paces() {
        let mut limit = RateLimit::new(1_000_000);
        let started = Instant::now();
        limit.take(200_000).await;
        assert!(started.elapsed() >= Duration::from_millis(190));
    }
}
