//! The node's configuration: one struct, built by clap from flags, `KVNODE_*` environment variables
//! and an optional TOML file, in that order of precedence.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use clap::Parser;
use humantime::Duration;
use kvapi::Secret;

use crate::storage::Durability;
use crate::tls::{ClientPortFiles, PeerFiles};

/// Default of `--max-siblings`.
pub const DEFAULT_MAX_SIBLINGS: u16 = 64;

/// kvnode: a kvcluster storage node.
///
/// Every flag has an environment variable twin (KVNODE_<FLAG>, e.g. KVNODE_LISTEN) and a key in the
/// `--config` TOML file (the flag's long name: `cache-size = "64MiB"`). Flags beat the environment,
/// which beats the file.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvnode", version, about, long_about, args_override_self = true)]
pub struct NodeConfig {
    /// Stable id of this node (the StatefulSet pod name on Kubernetes). Stamps the writes it coordinates.
    #[arg(long, env = "KVNODE_NODE_ID", default_value = "kv-0")]
    pub node_id: String,

    /// Address of the client HTTP port (key-value, admin, health and metrics routes). Port 0 picks a
    /// free port (printed at start).
    #[arg(long, env = "KVNODE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Address of the peer port, the only place peer RPC is served (other members reach it at this
    /// node's `peer_address` in the cluster config). Port 0 picks a free port (printed at start).
    #[arg(long, env = "KVNODE_PEER_LISTEN", default_value = "127.0.0.1:7070")]
    pub peer_listen: SocketAddr,

    /// The cluster CA (PEM) for mutual TLS between peers: the peer port accepts only clients with a
    /// certificate it signed, and peers' servers must present one. Give all three --peer-tls-*
    /// files or none (none: the peer port speaks plain HTTP/2). Files are re-read when they change.
    #[arg(long, env = "KVNODE_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,

    /// This node's certificate chain (PEM) for peer TLS, presented as server and as client. Its
    /// names must include the host of this node's `peer_address` (DNS name or IP SAN).
    #[arg(long, env = "KVNODE_PEER_TLS_CERT")]
    pub peer_tls_cert: Option<PathBuf>,

    /// This node's private key (PEM) for peer TLS.
    #[arg(long, env = "KVNODE_PEER_TLS_KEY")]
    pub peer_tls_key: Option<PathBuf>,

    /// Certificate chain (PEM) of the client port: with --tls-key, the client port speaks HTTPS
    /// only (HTTP/1.1 and HTTP/2 by ALPN). Files are re-read when they change.
    #[arg(long, env = "KVNODE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of the client port's certificate.
    #[arg(long, env = "KVNODE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Allow binding a non-loopback client or peer address with neither an admin token nor peer
    /// TLS, where anyone on the network could change the cluster config and send peer messages.
    #[arg(long, env = "KVNODE_INSECURE", num_args = 0..=1, default_value_t = false,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub insecure: bool,

    /// Local address that connections to peers leave from (default: the system's choice). Lets
    /// nodes sharing one host keep distinct source addresses, so firewall rules can tell them apart.
    #[arg(long, env = "KVNODE_PEER_SOURCE_ADDRESS")]
    pub peer_source_address: Option<IpAddr>,

    /// Directory of this node's data (RocksDB lives in its `db` subdirectory).
    #[arg(long, env = "KVNODE_DATA_DIR")]
    pub data_dir: PathBuf,

    /// JSON cluster config (`kvapi::ClusterConfig`) to join. The node persists the config it follows and
    /// uses whichever of the two has the higher epoch; without either it is a one-member cluster.
    #[arg(long, env = "KVNODE_CLUSTER_CONFIG")]
    pub cluster_config: Option<PathBuf>,

    /// File of the cluster's context keys, which authenticate the causal context tokens clients get
    /// and write back: one key per line (at least 32 bytes each), the first signs, every one verifies.
    /// Every member needs the same file. Without it, a key is generated in the data directory and the
    /// node refuses to be part of a cluster of more than one member.
    #[arg(long, env = "KVNODE_CONTEXT_KEY_FILE")]
    pub context_key_file: Option<PathBuf>,

    /// Admin bearer token, given literally. Prefer --admin-token-file: a literal shows in the process
    /// list and the environment.
    #[arg(
        long,
        env = "KVNODE_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<Secret>,

    /// File of the admin bearer token: one token per line (several while rotating), trimmed, empty
    /// lines ignored; re-read when it changes. The admin token may use every route. Without any token
    /// configured the admin routes are open; with only data tokens they are closed.
    #[arg(long, env = "KVNODE_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// File of the read-only data tokens (same format): they may GET keys, nothing else. With a read
    /// or write token file, the /v1/kv routes need a token; without, they are open.
    #[arg(long, env = "KVNODE_READ_TOKEN_FILE", value_name = "FILE")]
    pub read_token_file: Option<PathBuf>,

    /// File of the read-write data tokens (same format): they may GET, PUT and DELETE keys.
    #[arg(long, env = "KVNODE_WRITE_TOKEN_FILE", value_name = "FILE")]
    pub write_token_file: Option<PathBuf>,

    /// Require a token on /metrics: the admin token or a data token (otherwise it is open).
    #[arg(long, env = "KVNODE_METRICS_AUTH", action = clap::ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub metrics_auth: bool,

    /// When writes reach the disk: `fsync` syncs each write before acknowledging it; `periodic`
    /// syncs the write-ahead log every --wal-sync-interval (a process crash loses nothing, a machine
    /// crash may lose that interval).
    #[arg(
        long,
        env = "KVNODE_DURABILITY",
        value_enum,
        default_value = "periodic"
    )]
    pub durability: Durability,

    /// WAL sync interval of `periodic` durability.
    #[arg(long, env = "KVNODE_WAL_SYNC_INTERVAL", default_value = "100ms")]
    pub wal_sync_interval: Duration,

    /// Byte budget of the in-memory LRU object cache (0 disables it).
    #[arg(long, env = "KVNODE_CACHE_SIZE", default_value = "256MiB")]
    pub cache_size: ByteSize,

    /// Memory RocksDB may use for its block cache and memtables together: one LRU cache that
    /// memtables are charged to. With --cache-size it bounds the node's caches.
    #[arg(long, env = "KVNODE_ROCKSDB_MEMORY", default_value = "256MiB")]
    pub rocksdb_memory: ByteSize,

    /// Largest value accepted; larger bodies are refused with 413 while streaming.
    #[arg(long, env = "KVNODE_MAX_VALUE_BYTES", default_value = "1MiB")]
    pub max_value_bytes: ByteSize,

    /// Time to live of a value written without `?ttl=`: a duration within 1s..=365days, or `none`
    /// (values never expire). Give every node the same setting: the node that coordinates a write
    /// applies its own.
    #[arg(long, env = "KVNODE_DEFAULT_TTL", default_value = kvapi::ttl::NO_TTL,
          value_parser = kvapi::ttl::parse)]
    pub default_ttl: kvapi::ttl::Expiry,

    /// Most requests waiting for a change at once (`?wait=` reads and change feeds); past it a
    /// watch is refused with 429 `too_many_watchers`. Keep it below --max-requests-in-flight.
    #[arg(long, env = "KVNODE_MAX_WATCHERS", default_value_t = 1024)]
    pub max_watchers: u32,

    /// Most siblings a key may hold; a write past it is refused with 409 and the current context.
    #[arg(long, env = "KVNODE_MAX_SIBLINGS", default_value_t = DEFAULT_MAX_SIBLINGS,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub max_siblings: u16,

    /// Number of partitions of the key space: a power of two, fixed when the data directory is
    /// created.
    #[arg(long, env = "KVNODE_PARTITIONS", default_value_t = crate::ring::DEFAULT_PARTITIONS)]
    pub partitions: u32,

    /// Default deadline of a client request, body upload included (`?timeout_ms=` overrides it).
    #[arg(long, env = "KVNODE_REQUEST_TIMEOUT", default_value = "5s")]
    pub request_timeout: Duration,

    /// Time a client has to send a request's headers before its connection is closed.
    #[arg(long, env = "KVNODE_HEADER_READ_TIMEOUT", default_value = "10s")]
    pub header_read_timeout: Duration,

    /// A connection on which nothing is read for this long is closed. Keep it above the largest
    /// request deadline (`timeout_ms` is capped at 60 s).
    #[arg(long, env = "KVNODE_IDLE_TIMEOUT", default_value = "90s")]
    pub idle_timeout: Duration,

    /// Largest request head (request line plus headers); larger ones get 431.
    #[arg(long, env = "KVNODE_MAX_HEADER_BYTES", default_value = "16KiB")]
    pub max_header_bytes: ByteSize,

    /// Most client connections served at once; more wait in the listen backlog. Idle connections
    /// cost little, so the default is high; it is lowered at start to fit the open-file limit.
    #[arg(long, env = "KVNODE_MAX_CONNECTIONS", default_value_t = 16384,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most requests handled at once (client, admin and peer routes; not /health). Beyond it a
    /// request is answered 503 with `Retry-After: 1` at once instead of queueing.
    #[arg(long, env = "KVNODE_MAX_REQUESTS_IN_FLIGHT", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests_in_flight: u32,

    /// Most concurrent HTTP/2 streams (requests) on one connection.
    #[arg(long, env = "KVNODE_MAX_CONCURRENT_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// Time a request body may take to arrive, on every route; past it the node answers 408 and
    /// closes the connection. Key-value writes also stay within their request deadline.
    #[arg(long, env = "KVNODE_BODY_READ_TIMEOUT", default_value = "10s")]
    pub body_read_timeout: Duration,

    /// A connection whose client takes no response bytes for this long is closed.
    #[arg(long, env = "KVNODE_WRITE_TIMEOUT", default_value = "30s")]
    pub write_timeout: Duration,

    /// On SIGTERM, how long in-flight requests may take to finish before connections are closed;
    /// background tasks (hint delivery, transfers, ...) then get as long to finish their round.
    #[arg(long, env = "KVNODE_SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: Duration,

    /// Pause between anti-entropy sweeps, in which each partition is compared with its other
    /// replicas; `0s` turns periodic sweeps off (membership changes still transfer data).
    #[arg(long, env = "KVNODE_ANTI_ENTROPY_INTERVAL", default_value = "30s")]
    pub anti_entropy_interval: Duration,

    /// Pause after each partition of an anti-entropy sweep, bounding the CPU a sweep takes.
    #[arg(long, env = "KVNODE_ANTI_ENTROPY_PACE", default_value = "5ms")]
    pub anti_entropy_pace: Duration,

    /// Endpoint of an S3-compatible server for `s3://` backup targets (such as
    /// `http://127.0.0.1:9000`); AWS when unset. Credentials and region come from the standard
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_REGION` variables, never from flags.
    #[arg(long, env = "KVNODE_BACKUP_ENDPOINT")]
    pub backup_endpoint: Option<String>,

    /// Most bytes per second a backup uploads, or a restore downloads, so either leaves room for
    /// client requests; `0` is no limit.
    #[arg(long, env = "KVNODE_BACKUP_RATE", default_value = "64MiB")]
    pub backup_rate: ByteSize,

    /// How long a tombstone is kept after every replica holds it, before it is purged. Keep it
    /// above the longest time a node may be down with hints still waiting for it.
    #[arg(long, env = "KVNODE_TOMBSTONE_GRACE", default_value = "1h")]
    pub tombstone_grace: Duration,

    /// A hint not delivered within this long is dropped (anti-entropy repairs what it carried).
    /// Must be shorter than --tombstone-grace; the default is half of it.
    #[arg(long, env = "KVNODE_HINT_TTL")]
    pub hint_ttl: Option<Duration>,

    /// Most hints held for one target; past it hints for that target are refused, and the write
    /// counts one replica less.
    #[arg(long, env = "KVNODE_MAX_HINTS_PER_TARGET", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_hints_per_target: u64,

    /// Most bytes of hints held for one target; past it hints for that target are refused.
    #[arg(
        long,
        env = "KVNODE_MAX_HINT_BYTES_PER_TARGET",
        default_value = "256MiB"
    )]
    pub max_hint_bytes_per_target: ByteSize,

    /// TOML file with defaults for any of the flags above.
    #[arg(long, env = "KVNODE_CONFIG")]
    pub config: Option<PathBuf>,
}

impl NodeConfig {
    /// Parses the process's flags, environment and config file; exits with clap's message (and
    /// status 2) on bad input, or prints help and version.
    pub fn load() -> Self {
        let args: Vec<OsString> = std::env::args_os().collect();
        match Self::from_args(args) {
            Ok(config) => config,
            Err(e) => e.exit(),
        }
    }

    /// Parses `args` (program name first), reading the TOML file named by `--config` if any.
    pub fn from_args(args: Vec<OsString>) -> Result<Self, clap::Error> {
        let file = config_file_flag(&args);
        let mut full = Vec::with_capacity(args.len());
        let mut rest = args.into_iter();
        full.extend(rest.next());
        if let Some(path) = file {
            full.extend(file_args(&path)?);
        }
        full.extend(rest);
        let config = Self::try_parse_from(full)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), clap::Error> {
        let invalid =
            |m: String| clap::Error::raw(clap::error::ErrorKind::ValueValidation, m + "\n");
        crate::ring::validate_partitions(self.partitions).map_err(invalid)?;
        let ttl = self.hint_ttl();
        if ttl.is_zero() || ttl >= *self.tombstone_grace {
            return Err(invalid(format!(
                "--hint-ttl ({}) must be above zero and shorter than --tombstone-grace ({}): a hint \
                 delivered after a tombstone it predates was purged would bring the deleted value back",
                humantime::format_duration(ttl),
                self.tombstone_grace
            )));
        }
        self.peer_tls().map_err(invalid)?;
        self.client_tls().map_err(invalid)?;
        self.check_exposure().map_err(invalid)
    }

    /// The hint TTL: `--hint-ttl`, or half the tombstone grace.
    pub fn hint_ttl(&self) -> std::time::Duration {
        self.hint_ttl
            .map_or_else(|| *self.tombstone_grace / 2, |ttl| *ttl)
    }

    /// Whether the admin routes require a token.
    pub fn admin_token_configured(&self) -> bool {
        let literal = self
            .admin_token
            .as_ref()
            .is_some_and(|t| !t.expose().trim().is_empty());
        literal || self.admin_token_file.is_some()
    }

    /// The peer TLS files, when all three are given; a partial set is an error.
    pub fn peer_tls(&self) -> Result<Option<PeerFiles>, String> {
        match (&self.peer_tls_ca, &self.peer_tls_cert, &self.peer_tls_key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some(PeerFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None, None) => Ok(None),
            _ => Err(
                "peer TLS needs all three of --peer-tls-ca, --peer-tls-cert and \
                      --peer-tls-key (or none of them)"
                    .into(),
            ),
        }
    }

    /// The client port's TLS files, when both are given; one without the other is an error.
    pub fn client_tls(&self) -> Result<Option<ClientPortFiles>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(ClientPortFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            _ => Err("client TLS needs both --tls-cert and --tls-key (or neither)".into()),
        }
    }

    /// Refuses a non-loopback client or peer address when nothing guards the node: no admin token
    /// and no peer TLS, unless `--insecure` accepts that.
    fn check_exposure(&self) -> Result<(), String> {
        let guarded = self.admin_token_configured() || self.peer_tls_ca.is_some();
        if guarded || self.insecure {
            return Ok(());
        }
        match [self.listen, self.peer_listen]
            .into_iter()
            .find(|a| !a.ip().is_loopback())
        {
            None => Ok(()),
            Some(exposed) => Err(format!(
                "refusing to listen on {exposed}, which is not a loopback address, with no admin \
                 token and no peer TLS: anyone who reaches it could rewrite the cluster config and \
                 send peer messages. Set --admin-token and the --peer-tls-* files, or pass \
                 --insecure (KVNODE_INSECURE=true) to run exposed anyway"
            )),
        }
    }
}

/// The `--config` value, found before the full parse so the file can supply required flags (the last
/// occurrence wins, as in the full parse).
fn config_file_flag(args: &[OsString]) -> Option<PathBuf> {
    let mut found = std::env::var_os("KVNODE_CONFIG").map(PathBuf::from);
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        } else if arg == "--config" {
            found = args.next().map(PathBuf::from);
        } else if let Some(path) = arg.strip_prefix("--config=") {
            found = Some(PathBuf::from(path));
        }
    }
    found
}

/// Turns the file's `key = value` lines into `--key=value` arguments placed before the command line,
/// skipping keys whose environment variable is set so the environment wins over the file.
fn file_args(path: &Path) -> Result<Vec<OsString>, clap::Error> {
    let invalid = |m: String| clap::Error::raw(clap::error::ErrorKind::InvalidValue, m + "\n");
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("cannot read config file {}: {e}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|e| {
        invalid(format!(
            "config file {} is not valid TOML: {e}",
            path.display()
        ))
    })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let env = format!("KVNODE_{}", key.to_uppercase().replace('-', "_"));
        if std::env::var_os(env).is_some() {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(invalid(format!(
                    "config key {key:?} must be a string, integer or boolean, got {}",
                    other.type_str()
                )));
            }
        };
        out.push(OsString::from(format!("--{key}={value}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(args: &[&str]) -> Result<NodeConfig, clap::Error> {
        NodeConfig::from_args(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn defaults_need_only_a_data_dir() {
        let c = parse(&["kvnode", "--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.cache_size.as_u64(), 256 * 1024 * 1024);
        assert_eq!(c.max_value_bytes.as_u64(), 1024 * 1024);
        assert_eq!(c.durability, Durability::Periodic);
        assert_eq!(*c.request_timeout, std::time::Duration::from_secs(5));
        assert_eq!(c.max_requests_in_flight, 4096);
        assert_eq!(*c.body_read_timeout, std::time::Duration::from_secs(10));
        assert_eq!(*c.write_timeout, std::time::Duration::from_secs(30));
        assert!(parse(&["kvnode"]).is_err(), "--data-dir is required");
    }

    #[test]
    fn the_file_supplies_defaults_and_flags_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "data-dir = \"/tmp/from-file\"\nmax-siblings = 4\ncache-size = \"1MiB\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = parse(&["kvnode", "--config", f, "--max-siblings", "9"]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/from-file"));
        assert_eq!(c.max_siblings, 9);
        assert_eq!(c.cache_size.as_u64(), 1024 * 1024);
    }

    /// A complete set of peer TLS flags (the files are read only when the node starts).
    const PEER_TLS: [&str; 6] = [
        "--peer-tls-ca",
        "a",
        "--peer-tls-cert",
        "b",
        "--peer-tls-key",
        "c",
    ];

    /// `kvnode --data-dir d` plus `extra`.
    fn with(extra: &[&str]) -> Result<NodeConfig, clap::Error> {
        parse(&[&["kvnode", "--data-dir", "d"][..], extra].concat())
    }

    #[test]
    fn tls_files_come_complete_or_not_at_all() {
        assert_eq!(with(&[]).unwrap().peer_tls(), Ok(None));
        let partial = with(&["--peer-tls-ca", "ca.pem", "--peer-tls-cert", "c.pem"]);
        assert!(partial.unwrap_err().to_string().contains("all three"));
        let full = with(&PEER_TLS);
        assert!(full.unwrap().peer_tls().unwrap().is_some());
        assert!(
            with(&["--tls-cert", "c.pem"])
                .unwrap_err()
                .to_string()
                .contains("--tls-key")
        );
        assert!(
            with(&["--tls-cert", "c", "--tls-key", "k"])
                .unwrap()
                .client_tls()
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn an_exposed_address_needs_a_guard_or_insecure() {
        let refused = with(&["--listen", "0.0.0.0:8080"]).unwrap_err().to_string();
        assert!(
            refused.contains("refusing to listen on 0.0.0.0:8080"),
            "{refused}"
        );
        let refused = with(&["--peer-listen", "10.0.0.1:7070"])
            .unwrap_err()
            .to_string();
        assert!(refused.contains("10.0.0.1:7070"), "{refused}");
        assert!(with(&["--listen", "0.0.0.0:8080", "--insecure"]).is_ok());
        assert!(with(&["--listen", "0.0.0.0:8080", "--insecure=true"]).is_ok());
        assert!(with(&["--listen", "0.0.0.0:8080", "--admin-token", "t"]).is_ok());
        assert!(with(&["--listen", "0.0.0.0:8080", "--admin-token", " \n"]).is_err());
        assert!(with(&[&["--listen", "0.0.0.0:8080"][..], &PEER_TLS[..]].concat()).is_ok());
        assert!(with(&["--listen", "[::1]:8080", "--peer-listen", "127.0.0.2:1"]).is_ok());
    }

    #[test]
    fn the_hint_ttl_defaults_to_half_the_grace_and_must_stay_below_it() {
        let c = parse(&["kvnode", "--data-dir", "d"]).unwrap();
        assert_eq!(c.hint_ttl(), std::time::Duration::from_secs(1800));
        assert_eq!(c.max_hints_per_target, 100_000);
        assert_eq!(c.max_hint_bytes_per_target.as_u64(), 256 * 1024 * 1024);
        let c = parse(&["kvnode", "--data-dir", "d", "--tombstone-grace", "1s"]).unwrap();
        assert_eq!(c.hint_ttl(), std::time::Duration::from_millis(500));
        let equal = parse(&["kvnode", "--data-dir", "d", "--hint-ttl", "1h"]).unwrap_err();
        assert!(
            equal.to_string().contains("shorter than --tombstone-grace"),
            "{equal}"
        );
        assert!(parse(&["kvnode", "--data-dir", "d", "--hint-ttl", "0s"]).is_err());
        assert!(parse(&["kvnode", "--data-dir", "d", "--max-hints-per-target", "0"]).is_err());
    }

    #[test]
    fn token_settings_parse_and_never_show() {
        let c = parse(&[
            "kvnode",
            "--data-dir",
            "d",
            "--admin-token",
            "s3cret-literal",
        ])
        .unwrap();
        assert_eq!(
            c.admin_token.as_ref().map(Secret::expose),
            Some("s3cret-literal")
        );
        assert!(!format!("{c:?}").contains("s3cret-literal"));
        assert!(!c.metrics_auth);
        let c = parse(&["kvnode", "--data-dir", "d", "--metrics-auth"]).unwrap();
        assert!(c.metrics_auth);
        let c = parse(&["kvnode", "--data-dir", "d", "--metrics-auth=false"]).unwrap();
        assert!(!c.metrics_auth);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "metrics-auth = true\nread-token-file = \"/r\"\n").unwrap();
        let c = parse(&[
            "kvnode",
            "--data-dir",
            "d",
            "--config",
            file.to_str().unwrap(),
        ])
        .unwrap();
        assert!(c.metrics_auth);
        assert_eq!(c.read_token_file, Some(PathBuf::from("/r")));
        assert!(
            parse(&[
                "kvnode",
                "--data-dir",
                "d",
                "--admin-token",
                "t",
                "--admin-token-file",
                "f"
            ])
            .is_err()
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(parse(&["kvnode", "--data-dir", "d", "--partitions", "100"]).is_err());
        assert!(parse(&["kvnode", "--data-dir", "d", "--max-siblings", "0"]).is_err());
        assert!(parse(&["kvnode", "--data-dir", "d", "--cache-size", "lots"]).is_err());
        assert!(parse(&["kvnode", "--data-dir", "d", "--durability", "never"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "no-such-setting = 1\n").unwrap();
        let f = file.to_str().unwrap();
        assert!(parse(&["kvnode", "--data-dir", "d", "--config", f]).is_err());
    }
}
