//! `kvctl`, the kvcluster command line (DESIGN.md section 5a).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kvapi::Secret;
use kvclient::{Client, ClientBuilder, Error};
use serde_json::{Value, json};

mod cmd;
mod output;

/// Exit code: the key is absent or deleted.
const EXIT_NOT_FOUND: u8 = 1;
/// Exit code: bad arguments or local input/output, or the node answered with an error.
const EXIT_REFUSED: u8 = 2;
/// Exit code: the node could not be reached, timed out, or broke the wire contract.
const EXIT_UNREACHABLE: u8 = 3;

const AFTER_HELP: &str = "\
Keys and values are opaque bytes, taken from the arguments as given (on Unix they need not be UTF-8).

Exit codes:
  0  success
  1  the key is absent or deleted (get)
  2  bad arguments or local I/O error, or the node answered with an error (printed as `error: STATUS CODE: MESSAGE`)
  3  the node could not be reached, timed out, or sent an answer that breaks the protocol; `up`: a node failed
     to start or died; `bench`: no operation succeeded";

/// Command line for kvcluster, a Dynamo-style replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "kvctl", version, after_help = AFTER_HELP)]
struct Cli {
    /// Base URL of any node of the cluster (http or https; a bare HOST:PORT means http://HOST:PORT).
    #[arg(
        long,
        global = true,
        env = "KVCTL_ENDPOINT",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    endpoint: String,

    /// Bearer token sent with every request, for nodes started with token files. Prefer KVCTL_TOKEN or
    /// --token-file: a value on the command line shows in the process list.
    #[arg(
        long,
        global = true,
        env = "KVCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        conflicts_with = "token_file"
    )]
    token: Option<Secret>,

    /// File holding the bearer token: its first token, read as the node reads its token files (one
    /// per line, trimmed, empty lines ignored).
    #[arg(long, global = true, env = "KVCTL_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// PEM file of the CA that signs the nodes' certificates, the only CA trusted for https
    /// endpoints (without it: the system's roots).
    #[arg(long, global = true, env = "KVCTL_CACERT", value_name = "FILE")]
    cacert: Option<PathBuf>,

    /// What results look like on stdout: `text` for people, or `json`: JSON Lines, one object per
    /// result (a single one, or one per key, change or member as the command goes), errors as an
    /// `{"error": ...}` object on stderr. Exit codes do not change.
    #[arg(
        long,
        short = 'o',
        global = true,
        env = "KVCTL_OUTPUT",
        value_enum,
        default_value_t = output::Output::Text,
        value_name = "FORMAT"
    )]
    output: output::Output,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands (DESIGN.md section 5a).
#[derive(Debug, Subcommand)]
enum Command {
    /// Read a key
    ///
    /// One live value is written to stdout as raw bytes, with `context: TOKEN` on stderr. Several
    /// concurrent values (siblings) are listed on stdout as `sibling N: VALUE` lines (lossy UTF-8) followed
    /// by `context: TOKEN`: write the resolved value back with `put --context TOKEN`. An absent or deleted
    /// key prints `not found` (and the context of a deleted key) on stderr and exits with 1.
    Get(cmd::kv::GetArgs),
    /// Write a value
    ///
    /// Prints the key's new causal context on stdout.
    Put(cmd::kv::PutArgs),
    /// Delete a key
    ///
    /// Writes a tombstone; prints nothing on success.
    Delete(cmd::kv::DeleteArgs),
    /// List the keys under a prefix
    ///
    /// Follows the listing's pages to the end: keys in byte order on stdout, one per line as raw
    /// bytes (with --values, `KEY = VALUE` lines per live value instead). Not a snapshot: a key
    /// acknowledged before the listing began and not deleted is listed (when W + R > N).
    List(cmd::list::ListArgs),
    /// Start a local cluster in the foreground
    ///
    /// Starts --nodes kvnode processes on loopback: node kv-i listens on 127.0.0.1:(PORT+i), keeps its data in
    /// DIR/kv-i and its log in DIR/kv-i.log, and reads DIR/cluster.json (written with N = min(3, nodes) and
    /// majority W = R; an existing one with the same members is reused, so a restart keeps its epoch). Prints
    /// the endpoints once every node is ready. Ctrl-C or SIGTERM stops the nodes (SIGTERM, SIGKILL after 15 s)
    /// and exits 0. A node that fails to start stops the others and exits 3; a node that dies later is
    /// reported while the others keep serving, and Enter restarts it on its data.
    Up(cmd::up::UpArgs),
    /// Show the partition map of the node at --endpoint
    ///
    /// One line per partition (its preference list), then per member: partitions held as a replica and as
    /// the first of the list, and its share of the replica slots against the fair share.
    Ring(cmd::admin::RingArgs),
    /// Show the cluster as the node at --endpoint sees it
    ///
    /// The node id, epoch, N/W/R, the members and each peer's liveness.
    Status(cmd::admin::StatusArgs),
    /// Change the cluster's members or settings, and follow the change
    ///
    /// `add` and `remove` start a membership change and wait until the data moved and every member
    /// reports the settled ring; `remove` then drains the removed node. `status` shows every member's
    /// epoch, transfer progress (partitions received / to receive) and hints held.
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCommand),
    /// Back up the cluster to object storage, list, delete and restore backups
    ///
    /// `create` asks every member to checkpoint and upload its data and writes the cluster manifest
    /// when all succeeded; `restore` merges a backup into the cluster at --endpoint, whatever its
    /// size, through the replicas' causal merge (restoring twice changes nothing).
    #[command(subcommand)]
    Backup(cmd::backup::BackupCommand),
    /// Run a benchmark against kvcluster, etcd, Redis or Garage K2V
    ///
    /// --clients tasks each keep one request in flight, round-robin over --endpoints, for --duration (after
    /// --warmup) or --max-ops operations: as fast as answers come (closed loop) or at --rate operations per
    /// second (open loop, latency from when each was due). Writes carry the context (Garage: causality
    /// token) of the client's last read or write of the key. Prints per-operation throughput and latency
    /// percentiles (HdrHistogram), errors by kind, sibling statistics and, with --server-pid, the servers'
    /// CPU-seconds per 1,000 operations; errors are not counted as latencies.
    Bench(cmd::bench::BenchArgs),
    /// Check that the cluster works: write a fresh key, read it back, delete it
    ///
    /// Exits 0 when the value read is the value written and the key is gone after its delete (what
    /// `helm test` runs).
    Check(cmd::check::CheckArgs),
    /// Follow a key, or every key under a prefix, and print each change
    ///
    /// `kvctl watch KEY` long-polls the key (`GET /v1/kv/KEY?wait=`) and prints its value (`deleted`,
    /// or `siblings: N`) each time it changes; `kvctl watch --prefix P` follows the change feed
    /// (`GET /v1/watch`) and prints each changed key. Exits 1 when the feed's cursor is gone
    /// (changes may have been missed: list again).
    Watch(cmd::watch::WatchArgs),
    /// Print a shell completion script
    ///
    /// For example `kvctl completions bash > /etc/bash_completion.d/kvctl`, or
    /// `source <(kvctl completions zsh)`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return refuse(&format!("cannot start the async runtime: {e}"));
        }
    };
    runtime.block_on(run(cli))
}

/// How kvctl reaches the nodes: the bearer token and the CA to trust, each read once.
pub(crate) struct Access {
    token: Option<Secret>,
    ca_cert_pem: Option<Vec<u8>>,
}

impl Access {
    /// Reads `--token`/`--token-file` and `--cacert`.
    fn load(cli: &Cli) -> Result<Access, String> {
        let token = match (&cli.token, &cli.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read --token-file {}: {e}", path.display()))?;
                let tokens = kvapi::parse_tokens(&text)
                    .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
                tokens.first().map(|t| Secret::from((*t).to_owned()))
            }
            (None, None) => None,
        };
        let ca_cert_pem = match &cli.cacert {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("cannot read --cacert {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(Access { token, ca_cert_pem })
    }

    /// A client builder for `endpoint` with the token and the CA.
    pub(crate) fn client(&self, endpoint: &str) -> ClientBuilder {
        let mut builder = Client::builder(endpoint);
        if let Some(token) = &self.token {
            builder = builder.token(token.expose());
        }
        if let Some(pem) = &self.ca_cert_pem {
            builder = builder.ca_cert_pem(pem.clone());
        }
        builder
    }
}

/// Runs one command and returns the process exit code.
async fn run(cli: Cli) -> ExitCode {
    output::choose(cli.output);
    let access = match Access::load(&cli) {
        Ok(access) => access,
        Err(e) => return refuse(&e),
    };
    let command = match cli.command {
        Command::Completions { shell } => return completions(shell),
        Command::Up(args) => return cmd::up::run(args).await,
        Command::Bench(mut args) => {
            args.json |= output::json();
            return cmd::bench::run(&cli.endpoint, &access, args).await;
        }
        other => other,
    };
    let client = match access.client(&cli.endpoint).build() {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    match command {
        Command::Get(args) => cmd::kv::get(&client, args).await,
        Command::Put(args) => cmd::kv::put(&client, args).await,
        Command::Delete(args) => cmd::kv::delete(&client, args).await,
        Command::List(args) => cmd::list::run(&client, args).await,
        Command::Ring(args) => cmd::admin::ring(&client, args).await,
        Command::Status(args) => cmd::admin::status(&client, args).await,
        Command::Cluster(command) => cmd::cluster::run(&client, command).await,
        Command::Check(args) => cmd::check::run(&client, args).await,
        Command::Watch(args) => cmd::watch::run(&client, args).await,
        Command::Backup(command) => cmd::backup::run(&client, command).await,
        Command::Up(_) | Command::Bench(_) | Command::Completions { .. } => {
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

/// Writes the completion script of `shell` to stdout.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kvctl", &mut script);
    match stdout_bytes(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => local_failure(&e),
    }
}

/// Prints a client error (with its causes) on stderr and picks the exit code.
fn fail(error: &Error) -> ExitCode {
    let mut message = match error.status() {
        Some(401) => format!(
            "the node requires a token (--token or KVCTL_TOKEN) and got none it accepts: {error}"
        ),
        // The node's message says what: "403 forbidden: this token may not write: it is read-only".
        _ => error.to_string(),
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        // reqwest repeats itself along the chain: print each distinct cause once.
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(&format!(": {text}"));
        }
        source = cause.source();
    }
    match error {
        Error::Server { status, body } => {
            let mut details = serde_json::to_value(body).unwrap_or_else(|_| json!({}));
            if let Value::Object(fields) = &mut details {
                fields.remove("message");
                if let Some(code) = fields.remove("error") {
                    fields.insert("code".into(), code);
                }
                fields.insert("status".into(), Value::from(*status));
            }
            report_error(&message, details);
            // A 409 (sibling cap) carries the key's context so the caller can resolve and write back.
            if let (Some(context), false) = (&body.context, output::json()) {
                stderr_line(&format!("context: {context}"));
            }
            ExitCode::from(EXIT_REFUSED)
        }
        Error::BadEndpoint { .. }
        | Error::InvalidKey(_)
        | Error::InvalidContext(_)
        | Error::BadToken(_)
        | Error::Tls(_) => refuse(&message),
        Error::Http(e) if e.is_builder() => refuse(&message),
        Error::Http(_) | Error::InvalidResponse(_) | Error::DeadlineExceeded { .. } => {
            error_line(&message);
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

/// Prints an error line and returns the "refused" exit code.
pub(crate) fn refuse(message: &str) -> ExitCode {
    error_line(message);
    ExitCode::from(EXIT_REFUSED)
}

/// Prints an error on stderr: `error: MESSAGE`, or `{"error": {"message": ...}}` with --output json.
pub(crate) fn error_line(message: &str) {
    report_error(message, json!({}));
}

/// [`error_line`] with more fields for the JSON object (the status and code of a node's answer).
fn report_error(message: &str, details: Value) {
    if !output::json() {
        stderr_line(&format!("error: {message}"));
        return;
    }
    let mut error = serde_json::Map::new();
    error.insert("message".into(), Value::from(message));
    if let Value::Object(details) = details {
        error.extend(details);
    }
    output::error_line(&json!({ "error": error }));
}

/// Reports a failure to write the output (a closed pipe, a full disk).
fn local_failure(error: &std::io::Error) -> ExitCode {
    refuse(&format!("writing to stdout: {error}"))
}

/// Writes bytes to stdout exactly as given, and flushes.
fn stdout_bytes(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// Writes one line to stderr; a failure to do so is ignored (there is nowhere left to report it).
fn stderr_line(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// The bytes of a command-line argument: exactly as given on Unix, lossy UTF-8 elsewhere.
fn os_bytes(arg: OsString) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        arg.into_vec()
    }
    #[cfg(not(unix))]
    {
        arg.to_string_lossy().into_owned().into_bytes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn completion_scripts_name_every_subcommand() {
        use clap::CommandFactory as _;
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kvctl", &mut script);
            let script = String::from_utf8(script).unwrap();
            for sub in [
                "get",
                "put",
                "delete",
                "cluster",
                "bench",
                "up",
                "completions",
            ] {
                assert!(script.contains(sub), "{shell}: no {sub}");
            }
        }
    }
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn bench(extra: &[&str]) -> Result<cmd::bench::BenchArgs, clap::Error> {
        let mut argv = vec!["kvctl", "bench"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Bench(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn bench_arguments_are_validated() {
        let args = bench(&[]).unwrap();
        assert_eq!(args.clients, 16);
        assert_eq!(args.duration, std::time::Duration::from_secs(10));
        assert_eq!(
            (args.keys, args.value_size, args.read_ratio),
            (10_000, 100, 0.5)
        );
        let plan = cmd::bench::plan(&args, "127.0.0.1:9000/").unwrap();
        assert_eq!(
            format!("{plan:?}").matches("http://127.0.0.1:9000").count(),
            1
        );

        let args = bench(&[
            "--endpoints",
            "http://127.0.0.1:18080,127.0.0.1:18081",
            "--read-ratio",
            "0.95",
            "--distribution",
            "uniform",
            "--duration",
            "1m",
            "--max-ops",
            "100",
        ])
        .unwrap();
        assert_eq!(args.endpoints.len(), 2);
        assert!(cmd::bench::plan(&args, "unused").is_ok());

        for bad in [
            &["--read-ratio", "1.5"][..],
            &["--read-ratio", "-0.5"],
            &["--read-ratio", "x"],
            &["--clients", "0"],
            &["--duration", "0s"],
            &["--duration", "soon"],
            &["--keys", "0"],
            &["--max-ops", "0"],
            &["--distribution", "pareto"],
            &["--value-size", "2000000"],
        ] {
            assert!(bench(bad).is_err(), "{bad:?} accepted");
        }
        let args = bench(&["--endpoints", "ftp://x:1"]).unwrap();
        assert!(cmd::bench::plan(&args, "unused").is_err());

        // Peer targets: their own endpoint syntax, no default endpoint, no kvcluster-only options.
        let args = bench(&["--target", "redis", "--endpoints", "127.0.0.1:6379"]).unwrap();
        assert!(cmd::bench::plan(&args, "unused").is_ok());
        for bad in [
            &["--target", "redis"][..],
            &["--target", "redis", "--endpoints", "http://127.0.0.1:6379"],
            &["--target", "etcd", "--endpoints", "https://127.0.0.1:2379"],
            &[
                "--target",
                "etcd",
                "--endpoints",
                "127.0.0.1:2379",
                "--batch",
                "10",
            ],
            &["--target", "redis", "--endpoints", "h:1", "--watchers", "2"],
        ] {
            let args = bench(bad).unwrap();
            assert!(
                cmd::bench::plan(&args, "unused").is_err(),
                "{bad:?} planned"
            );
        }
        for bad in [
            &["--workload", "a", "--read-ratio", "0.3"][..],
            &["--workload", "d"],
            &["--rate", "0"],
            &["--rate", "-5"],
            &["--rate", "1e9"],
            &["--target", "mongodb"],
            &["--watchers", "5000"],
            &["--server-pid", "me"],
        ] {
            assert!(bench(bad).is_err(), "{bad:?} accepted");
        }
        let args = bench(&["--target", "garage", "--endpoints", "127.0.0.1:3904"]).unwrap();
        assert!(
            cmd::bench::plan(&args, "unused").is_err(),
            "no bucket, no key"
        );
        let args = bench(&[
            "--target",
            "garage",
            "--endpoints",
            "127.0.0.1:3904",
            "--k2v-bucket",
            "bench",
            "--access-key",
            "GK1",
            "--secret-key",
            "s3cret",
        ])
        .unwrap();
        assert!(cmd::bench::plan(&args, "unused").is_ok());
        assert!(!format!("{args:?}").contains("s3cret"));
        let args = bench(&[
            "--target",
            "garage",
            "--endpoints",
            "h:1",
            "--k2v-bucket",
            "Bad/Name",
        ])
        .unwrap();
        assert!(cmd::bench::plan(&args, "unused").is_err());
        let args = bench(&["--workload", "write", "--rate", "250.5"]).unwrap();
        assert_eq!(args.rate, Some(250.5));
        assert!(
            format!("{:?}", cmd::bench::plan(&args, "h:1").unwrap()).contains("read_ratio: 0.0")
        );
    }

    #[test]
    fn token_arguments_are_read_once_and_never_shown() {
        let cli = Cli::try_parse_from(["kvctl", "--token", "s3cret", "status"]).unwrap();
        assert!(!format!("{cli:?}").contains("s3cret"));
        let access = Access::load(&cli).unwrap();
        assert_eq!(access.token.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(!format!("{:?}", access.client("127.0.0.1:1")).contains("s3cret"));

        let dir = std::env::temp_dir().join(format!("kvctl-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "\n  first-token \r\nsecond-token\n").unwrap();
        let path = file.to_str().unwrap();
        let cli = Cli::try_parse_from(["kvctl", "--token-file", path, "get", "k"]).unwrap();
        let access = Access::load(&cli).unwrap();
        assert_eq!(
            access.token.as_ref().map(Secret::expose),
            Some("first-token")
        );
        std::fs::write(&file, "\n\n").unwrap();
        let cli = Cli::try_parse_from(["kvctl", "--token-file", path, "get", "k"]).unwrap();
        assert!(Access::load(&cli).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            Cli::try_parse_from(["kvctl", "--token", "a", "--token-file", "f", "get", "k"])
                .is_err()
        );
    }

    #[test]
    fn up_arguments_have_defaults() {
        let cli = Cli::try_parse_from(["kvctl", "up", "--kvnode", "/bin/kvnode"]).unwrap();
        let Command::Up(args) = cli.command else {
            panic!("not up")
        };
        assert_eq!((args.nodes, args.port), (3, 8080));
        assert_eq!(args.data_dir, std::path::PathBuf::from("./kvdata"));
        assert_eq!(args.cluster, "local");
        assert!(Cli::try_parse_from(["kvctl", "up", "--nodes", "0"]).is_err());
        assert!(Cli::try_parse_from(["kvctl", "ring", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["kvctl", "status", "--json"]).is_ok());
    }
}
