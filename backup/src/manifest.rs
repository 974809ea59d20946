//! The manifests: a node's (its checkpoint's files and where it stood when it took it) and a
//! cluster's (the members' manifests, complete only when every member succeeded).

use serde::{Deserialize, Serialize};

/// Format version of both manifests.
pub const FORMAT: u32 = 1;

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the contents, lowercase hex.
    pub sha256: String,
}

/// What one node uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeManifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The backup.
    pub backup_id: String,
    /// The node that took the checkpoint.
    pub node_id: String,
    /// Its data directory's incarnation.
    pub incarnation: u32,
    /// Its cluster config epoch when it took the checkpoint.
    pub epoch: u64,
    /// The cluster's partition count.
    pub partitions: u32,
    /// When the checkpoint was taken, milliseconds since the Unix epoch.
    pub checkpoint_unix_ms: u64,
    /// Every file of the checkpoint.
    pub files: Vec<FileEntry>,
}

impl NodeManifest {
    /// Bytes of all files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// A complete cluster backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterManifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The backup.
    pub backup_id: String,
    /// The cluster's name.
    pub cluster: String,
    /// Recorded before any member was asked: every write acknowledged before it is in the backup.
    pub started_unix_ms: u64,
    /// When the last member finished.
    pub finished_unix_ms: u64,
    /// Member ids at the start.
    pub members: Vec<String>,
    /// Each member's manifest.
    pub nodes: Vec<NodeManifest>,
}

impl ClusterManifest {
    /// Bytes of all members' files.
    pub fn bytes(&self) -> u64 {
        self.nodes.iter().map(NodeManifest::bytes).sum()
    }
}
