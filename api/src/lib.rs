//! The wire contract of kvcluster, shared by the node, the client and the operator.
//!
//! Types and constants only: no I/O, no async, no storage. Anything a client or a node must agree on
//! (route prefixes, header names, JSON bodies, limits) is defined here once.

use serde::{Deserialize, Serialize};

pub mod batch;
pub mod list;
pub mod ttl;
pub mod watch;

/// Prefix of the public key-value routes: `GET|PUT|DELETE /v1/kv/{key}` (key percent-encoded).
pub const KV_PREFIX: &str = "/v1/kv/";
/// Liveness route: answers 200 while the process serves HTTP.
pub const HEALTH_LIVE: &str = "/health/live";
/// Readiness route: answers 200 once storage is open and the ring is known.
pub const HEALTH_READY: &str = "/health/ready";
/// Prometheus text-format metrics.
pub const METRICS: &str = "/metrics";

/// Header that carries the opaque causal context on reads and writes.
pub const CONTEXT_HEADER: &str = "x-kv-context";

/// Scheme of the `Authorization` header value that carries a token: `Authorization: Bearer TOKEN`.
pub const BEARER_PREFIX: &str = "Bearer ";

/// The tokens in the text of a token file (or a Kubernetes Secret, or a `--token` value): one token per
/// line, each trimmed of surrounding whitespace, empty lines ignored. Several lines let a token be
/// rotated by accepting the old and the new one for a while; clients send the first.
///
/// The node, the operator and `kvctl` all read tokens through this one function, so a trailing newline
/// or a CRLF line end means the same thing to each of them. A token is one or more visible ASCII
/// characters (no spaces), the only ones an HTTP header value carries unchanged; text that holds no
/// token, or a line that is not such a token, is refused (the message never quotes the token).
pub fn parse_tokens(text: &str) -> Result<Vec<&str>, String> {
    let mut tokens = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let token = line.trim();
        if token.is_empty() {
            continue;
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "line {} holds a character a bearer token may not have: tokens are visible ASCII without spaces",
                number + 1
            ));
        }
        tokens.push(token);
    }
    if tokens.is_empty() {
        return Err("no token found (one token per line)".into());
    }
    Ok(tokens)
}

/// A secret setting, such as a token given on a command line: holds a string like any other, but its
/// `Debug` form never shows it, so a logged or printed configuration cannot carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Smallest key, in bytes.
pub const MIN_KEY_BYTES: usize = 1;
/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Default largest value, in bytes (1 MiB); a node setting may change it.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Query parameters a key-value request may carry; any other parameter is refused with 400.
pub const QUERY_PARAMS: [&str; 5] = ["r", "w", "timeout_ms", "ttl", "wait"];

/// JSON body of every error answer: `{"error": code, "message": text}` plus optional details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, such as `bad_key` or `value_too_large`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// The key's current causal context, on a 409 (sibling cap) answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// How many replicas answered, on a 503 (quorum not reached) answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replied: Option<u32>,
    /// How many replicas the quorum needed, on a 503 answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<u32>,
}

/// Error codes used in [`ErrorBody::error`].
pub mod codes {
    /// The key is empty, too long, or not valid percent-encoding.
    pub const BAD_KEY: &str = "bad_key";
    /// A query parameter is unknown or out of range.
    pub const BAD_PARAMETER: &str = "bad_parameter";
    /// The `X-Kv-Context` token is malformed, of an unknown version or for another key.
    pub const BAD_CONTEXT: &str = "bad_context";
    /// 429: every watcher place of the node is taken.
    pub const TOO_MANY_WATCHERS: &str = "too_many_watchers";
    /// 410: a change-feed cursor is too old or of a restarted node: list again.
    pub const CURSOR_GONE: &str = "cursor_gone";
    /// The key does not exist or is deleted.
    pub const NOT_FOUND: &str = "not_found";
    /// The route exists but not for this method.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// The key already holds the maximum number of siblings: resolve them first.
    pub const TOO_MANY_SIBLINGS: &str = "too_many_siblings";
    /// The key's causal history is at a bound (actors named, or an exhausted counter).
    pub const CAUSAL_LIMIT: &str = "causal_limit";
    /// The request body exceeds the value size limit.
    pub const VALUE_TOO_LARGE: &str = "value_too_large";
    /// The request body could not be read (client disconnected or sent a broken body).
    pub const BAD_BODY: &str = "bad_body";
    /// Fewer replicas than the quorum answered.
    pub const QUORUM_NOT_REACHED: &str = "quorum_not_reached";
    /// The request deadline passed.
    pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
    /// The request body did not arrive within the body read timeout.
    pub const BODY_TIMEOUT: &str = "body_timeout";
    /// The key's stored record would exceed the per-record byte cap.
    pub const RECORD_TOO_LARGE: &str = "record_too_large";
    /// Stored data could not be decoded.
    pub const CORRUPT_RECORD: &str = "corrupt_record";
    /// The node is not ready or is shutting down.
    pub const UNAVAILABLE: &str = "unavailable";
    /// A cluster config was refused as invalid or incompatible.
    pub const BAD_CONFIG: &str = "bad_config";
    /// A cluster config was not newer than the node's current one.
    pub const STALE_EPOCH: &str = "stale_epoch";
    /// A membership change was asked for while another one is still in progress.
    pub const TRANSITION_IN_PROGRESS: &str = "transition_in_progress";
    /// The route needs a bearer token and none, or an unknown one, was sent (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The bearer token is valid but not for this route or method, such as a read-only token on a
    /// write or a data token on an admin route (403).
    pub const FORBIDDEN: &str = "forbidden";
    /// A peer message could not be decoded (such as an unknown format version).
    pub const BAD_RPC: &str = "bad_rpc";
    /// A backup or restore failed: an object is missing or corrupt, or the target refused (the
    /// message names the object).
    pub const BACKUP_FAILED: &str = "backup_failed";
    /// Anything else that went wrong inside the node.
    pub const INTERNAL: &str = "internal";
}

/// JSON form of a read: the key's causal context and every sibling (live or deleted).
///
/// Served with status 300 when several siblings are live, and whenever the client sends
/// `Accept: application/json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResponse {
    /// Opaque causal context to send back with the next write of this key.
    pub context: String,
    /// The causally concurrent values of the key.
    pub siblings: Vec<SiblingView>,
}

/// One sibling of a key in the JSON read form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingView {
    /// The value, base64 (standard alphabet, padded); empty for a tombstone.
    pub value: String,
    /// True for a tombstone left by a delete.
    pub deleted: bool,
}

/// Admin route of the cluster configuration: `GET` reads it, `PUT` replaces it with a higher epoch.
pub const ADMIN_CLUSTER: &str = "/admin/v1/cluster";
/// Admin route of the partition map: `GET` gives partition → preference list.
pub const ADMIN_RING: &str = "/admin/v1/ring";
/// Admin route of this node's view: `GET` gives a [`NodeStatus`].
pub const ADMIN_STATUS: &str = "/admin/v1/status";
/// Admin route of this node's partition digests: `GET` gives a [`PartitionDigests`]; replicas of a
/// partition hold identical data when their digests of it are equal (barring a 64-bit hash collision).
pub const ADMIN_DIGESTS: &str = "/admin/v1/digests";
/// Admin route that makes a node hand off everything it holds: `POST` starts it (idempotent), and
/// [`NodeStatus::draining`] and [`NodeStatus::hints_pending`] show the progress.
pub const ADMIN_DRAIN: &str = "/admin/v1/drain";
/// Admin route that makes a node checkpoint its data and upload it: `POST` a [`BackupRequest`],
/// answered with a [`BackupReport`] once every file is uploaded.
pub const ADMIN_BACKUP: &str = "/admin/v1/backup";
/// Admin route that makes a node merge one node's checkpoint of a backup into the cluster's current
/// replicas: `POST` a [`RestoreRequest`], answered with a [`RestoreReport`] when done.
pub const ADMIN_RESTORE: &str = "/admin/v1/restore";

/// Admin route that holds this node's hint delivery: `POST` a [`HandoffHold`] (zero resumes),
/// answered once no delivery is in flight. A cluster backup holds it on every member first.
pub const ADMIN_HANDOFF_HOLD: &str = "/admin/v1/handoff/hold";

/// `POST /admin/v1/handoff/hold`: how long to hold hint delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffHold {
    /// Milliseconds, at most a day; 0 resumes delivery at once.
    pub millis: u64,
}

/// `POST /admin/v1/backup`: where to upload, under which backup id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    /// Target URL: `file:///dir` or `s3://bucket/prefix` (the node's `--backup-endpoint` and
    /// `AWS_*` environment give the S3 endpoint and credentials).
    pub target: String,
    /// The backup's id: 1-128 characters of `A-Z a-z 0-9 - _ .`.
    pub backup_id: String,
}

/// A node's answer to [`BackupRequest`]: its manifest is in the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupReport {
    /// The node.
    pub node_id: String,
    /// Path of its manifest inside the target.
    pub manifest: String,
    /// Files uploaded.
    pub files: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Time taken, in milliseconds.
    pub millis: u64,
}

/// `POST /admin/v1/restore`: merge node `node_id`'s checkpoint of backup `backup_id` into the
/// cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// Target URL, as in [`BackupRequest`].
    pub target: String,
    /// The backup.
    pub backup_id: String,
    /// Whose checkpoint to restore (a member of the backed-up cluster).
    pub node_id: String,
}

/// What a restore of one checkpoint did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Whose checkpoint it was.
    pub node_id: String,
    /// Records read from the checkpoint, tombstones included.
    pub records: u64,
    /// Hints read from the checkpoint (states held for another replica), merged like records.
    pub hints: u64,
    /// Merges into replicas that changed their state (0 when the cluster already held it all).
    pub changed: u64,
    /// Bytes downloaded and verified.
    pub bytes: u64,
    /// Time taken, in milliseconds.
    pub millis: u64,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Stable node id (the StatefulSet pod name on Kubernetes).
    pub id: String,
    /// `host:port` of the member's client HTTP port (the key-value and admin routes).
    pub address: String,
    /// `host:port` of the member's peer port (`kvnode --peer-listen`), where the other members send
    /// peer RPC. With peer TLS, the host is also the name the member's certificate must carry.
    /// Required: a config whose member lacks it is refused by [`ClusterConfig::validate`] (it
    /// defaults to empty only so that the refusal can say what is missing).
    #[serde(default)]
    pub peer_address: String,
}

/// Most members a ring may have (in the current ring and, during a change, in the ring being left).
pub const MAX_MEMBERS: usize = 256;
/// Longest member id, in bytes: a DNS label (a StatefulSet pod name is one).
pub const MAX_MEMBER_ID_BYTES: usize = 63;
/// Longest member address (`host:port`), in bytes: a DNS name of 253 bytes, a colon and a port.
pub const MAX_ADDRESS_BYTES: usize = 259;
/// Most tokens a ring may place (members × vnodes), so a config cannot make nodes allocate and sort
/// an unbounded ring.
pub const MAX_RING_TOKENS: u64 = 256 * 1024;
/// Highest epoch a config may carry: far above any real count of changes (one per change), and low
/// enough that `epoch + 1` never overflows and JSON readers that use doubles read it exactly.
pub const MAX_EPOCH: u64 = (1 << 53) - 1;

/// The one source of truth about a cluster; the highest `epoch` wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Name of the cluster; nodes refuse configs and peers of another cluster.
    pub cluster: String,
    /// Version of this config; every change increments it.
    pub epoch: u64,
    /// The members of the ring.
    pub members: Vec<Member>,
    /// Replicas per key (N).
    pub n: u32,
    /// Default write quorum (W), 1..=N.
    pub w: u32,
    /// Default read quorum (R), 1..=N.
    pub r: u32,
    /// Partitions of the key space: a power of two, fixed for the cluster's life.
    pub partitions: u32,
    /// Tokens per member on the hash ring.
    pub vnodes: u32,
    /// Sloppy quorum: when a replica is unreachable, a write may count a hint stored on a healthy
    /// node outside the preference list. `false` is strict quorum: only real replicas count.
    #[serde(default = "sloppy_quorum_default")]
    pub sloppy_quorum: bool,
    /// The ring being left while a membership change is in progress; `None` when the ring is settled.
    /// Nodes set it themselves when they accept a config whose members or N differ from theirs, and
    /// clear it (with a new epoch) once every moved partition is complete on its new owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition_from: Option<PriorRing>,
}

fn sloppy_quorum_default() -> bool {
    true
}

/// The ring a transition moves away from: who held the data before, with which N.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorRing {
    /// Epoch of the last config of the old ring.
    pub epoch: u64,
    /// Members of the old ring.
    pub members: Vec<Member>,
    /// Replicas per key in the old ring.
    pub n: u32,
}

impl ClusterConfig {
    /// Checks the config's own consistency: quorums within 1..=N, 1..=[`MAX_MEMBERS`] members with
    /// unique DNS-label ids, unique bounded addresses and a peer address each, a power-of-two partition
    /// count, 1..=4096 vnodes and at most [`MAX_RING_TOKENS`] tokens, an epoch up to [`MAX_EPOCH`].
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster.is_empty() {
            return Err("cluster name is empty".into());
        }
        if self.epoch > MAX_EPOCH {
            return Err(format!(
                "epoch {} is above the highest allowed epoch {MAX_EPOCH}",
                self.epoch
            ));
        }
        if self.n == 0 {
            return Err("n must be at least 1".into());
        }
        if !(1..=self.n).contains(&self.w) || !(1..=self.n).contains(&self.r) {
            return Err(format!(
                "w ({}) and r ({}) must be between 1 and n ({})",
                self.w, self.r, self.n
            ));
        }
        if !self.partitions.is_power_of_two() || self.partitions > 1 << 16 {
            return Err(format!(
                "partitions must be a power of two up to 65536, got {}",
                self.partitions
            ));
        }
        if self.vnodes == 0 || self.vnodes > 4096 {
            return Err(format!("vnodes must be 1..=4096, got {}", self.vnodes));
        }
        validate_members(&self.members, self.vnodes)?;
        if let Some(prior) = &self.transition_from {
            validate_members(&prior.members, self.vnodes)
                .map_err(|e| format!("transition_from: {e}"))?;
            if prior.n == 0 || prior.epoch >= self.epoch {
                return Err(format!(
                    "transition_from must have n >= 1 and an epoch below {}",
                    self.epoch
                ));
            }
        }
        Ok(())
    }

    /// Whether a membership change is in progress.
    pub fn in_transition(&self) -> bool {
        self.transition_from.is_some()
    }

    /// The member with id `id`, in the current ring or the one being left.
    pub fn any_member(&self, id: &str) -> Option<&Member> {
        self.member(id).or_else(|| {
            self.transition_from
                .as_ref()
                .and_then(|p| p.members.iter().find(|m| m.id == id))
        })
    }

    /// The member with id `id`, if it is one.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

fn validate_members(members: &[Member], vnodes: u32) -> Result<(), String> {
    if members.is_empty() {
        return Err("a cluster needs at least one member".into());
    }
    if members.len() > MAX_MEMBERS {
        return Err(format!(
            "{} members, at most {MAX_MEMBERS} are allowed",
            members.len()
        ));
    }
    let tokens = members.len() as u64 * u64::from(vnodes);
    if tokens > MAX_RING_TOKENS {
        return Err(format!(
            "{} members x {vnodes} vnodes = {tokens} ring tokens, at most {MAX_RING_TOKENS} are allowed",
            members.len()
        ));
    }
    for (i, m) in members.iter().enumerate() {
        if m.id.is_empty() || m.address.is_empty() {
            return Err(format!("member {i} has an empty id or address"));
        }
        if !is_member_id(&m.id) {
            return Err(format!(
                "member {i} has id {:?}: ids are 1..={MAX_MEMBER_ID_BYTES} bytes of a-z, 0-9 and '-', \
                 not starting or ending with '-' (a DNS label)",
                truncated(&m.id)
            ));
        }
        check_address(&m.id, "address", &m.address)?;
        check_address(&m.id, "peer_address", &m.peer_address)?;
        if m.peer_address.is_empty() {
            return Err(format!(
                "member {} has no peer_address: every member needs the host:port of its peer port \
                 (kvnode --peer-listen)",
                m.id
            ));
        }
        if members[..i]
            .iter()
            .any(|o| o.id == m.id || o.address == m.address || o.peer_address == m.peer_address)
        {
            return Err(format!("member {} appears twice", m.id));
        }
    }
    Ok(())
}

/// Refuses an address longer than [`MAX_ADDRESS_BYTES`] or with bytes no host:port has.
fn check_address(id: &str, field: &str, address: &str) -> Result<(), String> {
    if address.len() > MAX_ADDRESS_BYTES || !address.bytes().all(is_address_byte) {
        return Err(format!(
            "member {id} has {field} {:?}: addresses are up to {MAX_ADDRESS_BYTES} bytes of \
             letters, digits and '.-_:[]'",
            truncated(address)
        ));
    }
    Ok(())
}

/// Whether `id` may name a member: a DNS label (1..=63 bytes of `a-z`, `0-9`, `-`, with a letter or
/// digit at each end), so it is safe in logs, metrics, file names and storage keys.
pub fn is_member_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_MEMBER_ID_BYTES
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn is_address_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b".-_:[]".contains(&b)
}

/// At most 80 characters of `text`, for error messages about oversized input.
fn truncated(text: &str) -> String {
    text.chars().take(80).collect()
}

/// `GET /admin/v1/ring`: the preference list of every partition under the node's current config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingView {
    /// Epoch of the config the ring was computed from.
    pub epoch: u64,
    /// One entry per partition, in partition order.
    pub partitions: Vec<PartitionView>,
}

/// One partition of a [`RingView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionView {
    /// The partition number.
    pub partition: u32,
    /// Member ids holding it, in preference order.
    pub replicas: Vec<String>,
}

/// `GET /admin/v1/digests`: the Merkle root of every partition a node holds data of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDigests {
    /// The answering node's id.
    pub node_id: String,
    /// Epoch of the node's config when it answered.
    pub epoch: u64,
    /// Partitions with at least one record (tombstones included), in partition order.
    pub partitions: Vec<PartitionDigest>,
}

/// One partition of [`PartitionDigests`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDigest {
    /// The partition number.
    pub partition: u32,
    /// The root of the partition's Merkle summary, 16 hex digits.
    pub root: String,
    /// Records in the partition, tombstones included.
    pub keys: u64,
}

/// `GET /admin/v1/status`: one node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The answering node's id.
    pub node_id: String,
    /// Whether the node is a member of its current config.
    pub member: bool,
    /// The node's current config.
    pub config: ClusterConfig,
    /// Liveness of every other member, as this node sees it.
    pub peers: Vec<PeerStatus>,
    /// Hints this node holds for other nodes, not yet delivered.
    #[serde(default)]
    pub hints_pending: u64,
    /// Whether `POST /admin/v1/drain` was called: the node delivers its hints at once.
    #[serde(default)]
    pub draining: bool,
    /// This node's part of the membership change in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferStatus>,
}

/// What one node still has to receive during a membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStatus {
    /// Epoch of the ring being left.
    pub from_epoch: u64,
    /// Epoch of the config that started the change.
    pub to_epoch: u64,
    /// Partitions this node gains in the change.
    pub partitions_total: u32,
    /// Of those, the ones complete here.
    pub partitions_done: u32,
    /// Keys received so far, over all partitions.
    pub keys_received: u64,
    /// Bytes of records received so far, over all partitions.
    pub bytes_received: u64,
    /// Per-partition progress of the partitions not yet complete.
    pub pending: Vec<PartitionTransfer>,
}

/// Progress of one partition a node gains in a membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTransfer {
    /// The partition.
    pub partition: u32,
    /// Old owners this node must synchronise the partition with.
    pub sources: Vec<String>,
    /// Old owners it has synchronised with so far.
    pub synced: Vec<String>,
}

/// Liveness of one peer in a [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Peer id.
    pub id: String,
    /// Peer address.
    pub address: String,
    /// Whether the last exchange with the peer succeeded.
    pub alive: bool,
    /// Milliseconds since the last successful exchange, if there was one.
    pub last_seen_ms_ago: Option<u64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config(members: usize) -> ClusterConfig {
        ClusterConfig {
            cluster: "c".into(),
            epoch: 1,
            members: (0..members)
                .map(|i| Member {
                    id: format!("kv-{i}"),
                    address: format!("10.0.{}.{}:8080", i / 256, i % 256),
                    peer_address: format!("10.0.{}.{}:7070", i / 256, i % 256),
                })
                .collect(),
            n: 1,
            w: 1,
            r: 1,
            partitions: 256,
            vnodes: 64,
            sloppy_quorum: true,
            transition_from: None,
        }
    }

    #[test]
    fn member_count_ids_addresses_tokens_and_epochs_are_bounded() {
        assert!(config(MAX_MEMBERS).validate().is_ok());
        let refused = config(MAX_MEMBERS + 1).validate().unwrap_err();
        assert!(refused.contains("at most 256"), "{refused}");
        let mut dense = config(MAX_MEMBERS);
        dense.vnodes = 4096;
        assert!(dense.validate().unwrap_err().contains("ring tokens"));
        for bad in ["", "-kv", "kv-", "Kv-0", "kv_0", "kv.0", &"k".repeat(64)] {
            let mut c = config(1);
            c.members[0].id = bad.into();
            assert!(c.validate().is_err(), "id {bad:?} accepted");
        }
        let mut c = config(1);
        c.members[0].id = "k".repeat(63);
        assert!(c.validate().is_ok());
        for bad in ["a b:1", "a\n:1", &format!("{}:1", "a".repeat(300))] {
            let mut c = config(1);
            c.members[0].address = bad.into();
            assert!(c.validate().is_err(), "address {bad:?} accepted");
        }
        let mut c = config(1);
        c.members[0].address = "[::1]:8080".into();
        assert!(c.validate().is_ok());
        let mut c = config(1);
        c.epoch = MAX_EPOCH;
        assert!(c.validate().is_ok());
        c.epoch = u64::MAX;
        assert!(c.validate().unwrap_err().contains("highest allowed epoch"));
    }

    #[test]
    fn tokens_are_trimmed_one_per_line() {
        assert_eq!(parse_tokens("abc\n"), Ok(vec!["abc"]));
        assert_eq!(parse_tokens("  abc\r\n\n\t def \n"), Ok(vec!["abc", "def"]));
        assert_eq!(parse_tokens("a-b_c.d~e+f/g=="), Ok(vec!["a-b_c.d~e+f/g=="]));
    }

    #[test]
    fn text_without_a_usable_token_is_refused() {
        for bad in ["", "\n", " \r\n \t\n"] {
            assert!(parse_tokens(bad).is_err(), "{bad:?}");
        }
        for bad in ["two words", "caf\u{e9}", "tab\tinside", "nul\0"] {
            let error = parse_tokens(bad).unwrap_err();
            assert!(error.contains("line 1"), "{error}");
            assert!(
                !error.contains(bad),
                "the message quotes the token: {error}"
            );
        }
        assert!(
            parse_tokens("good\nbad one\n")
                .unwrap_err()
                .contains("line 2")
        );
    }

    #[test]
    fn secrets_do_not_show() {
        let secret = Secret::from("hunter2".to_owned());
        assert_eq!(secret.expose(), "hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    fn config_json(members: &str) -> String {
        format!(
            r#"{{"cluster":"c","epoch":1,"members":[{members}],"n":1,"w":1,"r":1,
                "partitions":256,"vnodes":64}}"#
        )
    }

    #[test]
    fn a_member_without_a_peer_address_is_refused_by_name() {
        let old = config_json(r#"{"id":"kv-0","address":"h:8080"}"#);
        let config: ClusterConfig = serde_json::from_str(&old).unwrap();
        let refused = config.validate().unwrap_err();
        assert!(refused.contains("kv-0 has no peer_address"), "{refused}");
        let new = config_json(r#"{"id":"kv-0","address":"h:8080","peer_address":"h:7070"}"#);
        let config: ClusterConfig = serde_json::from_str(&new).unwrap();
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn two_members_may_not_share_a_peer_address() {
        let twins = config_json(
            r#"{"id":"kv-0","address":"h:8080","peer_address":"h:7070"},
               {"id":"kv-1","address":"h:8081","peer_address":"h:7070"}"#,
        );
        let config: ClusterConfig = serde_json::from_str(&twins).unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("kv-1 appears twice")
        );
    }
}
