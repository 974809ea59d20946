//! kvoperator: wiring only. Flags (each with a `KVOPERATOR_*` environment twin), logs, the
//! metrics and health server, leader election, and the controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use clap::Parser;
use kube::api::{Api, ListParams};
use kvoperator::addressing::AddressSource;
use kvoperator::controller::{self, Context, ServiceMonitorMode, Settings};
use kvoperator::crd::KVCluster;
use kvoperator::leader::{LeaderElector, LeaseSettings};
use kvoperator::metrics::Metrics;
use kvoperator::nodeadmin::HttpAdmin;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// kvoperator: reconciles KVCluster resources into kvnode StatefulSets and keeps the running
/// nodes' ring in step with them.
///
/// Connects to Kubernetes like kubectl: in-cluster service account, or KUBECONFIG / ~/.kube/config.
/// Every flag has an environment variable twin (KVOPERATOR_<FLAG>).
#[derive(Debug, Parser)]
#[command(name = "kvoperator", version, about, long_about)]
struct Args {
    /// Watch KVClusters of this namespace only (default: every namespace).
    #[arg(long, env = "KVOPERATOR_NAMESPACE")]
    namespace: Option<String>,

    /// Address of the /metrics and /health server.
    #[arg(long, env = "KVOPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

    /// JSON file mapping pods to node addresses, `{"<namespace>/<pod>" | "<pod>": "host:port"}`,
    /// used for member addresses and admin calls instead of the pods' DNS names (re-read at every
    /// reconcile). For tests that run nodes on loopback.
    #[arg(long, env = "KVOPERATOR_NODE_ADDRESS_OVERRIDE_FILE")]
    node_address_override_file: Option<PathBuf>,

    /// Deadline of one admin call to a node.
    #[arg(long, env = "KVOPERATOR_ADMIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    admin_timeout: Duration,

    /// Requeue delay while a change is in progress (pods starting, data moving).
    #[arg(long, env = "KVOPERATOR_PROGRESS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    progress_interval: Duration,

    /// Requeue delay of a settled cluster (status refresh).
    #[arg(long, env = "KVOPERATOR_RESYNC_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    resync_interval: Duration,

    /// A ring change whose pending partitions have not gone down for this long is reported stalled
    /// (a Warning event and `status.transition.stalled`).
    #[arg(long, env = "KVOPERATOR_RING_CHANGE_STALL_AFTER", default_value = "10m", value_parser = humantime::parse_duration)]
    ring_change_stall_after: Duration,

    /// Whether to apply ServiceMonitors: when the monitoring.coreos.com API exists, always, or never.
    #[arg(
        long,
        env = "KVOPERATOR_SERVICE_MONITOR",
        value_enum,
        default_value = "auto"
    )]
    service_monitor: ServiceMonitorMode,

    /// Elect a leader through a Lease, so several replicas can run (false: reconcile at once).
    #[arg(long, env = "KVOPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,

    /// Name of the leader election Lease.
    #[arg(long, env = "KVOPERATOR_LEASE_NAME", default_value = "kvoperator")]
    lease_name: String,

    /// Namespace of the Lease (default: $POD_NAMESPACE, else "default").
    #[arg(long, env = "KVOPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,

    /// How long a Lease not renewed stays valid.
    #[arg(long, env = "KVOPERATOR_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,

    /// This replica's identity in the Lease and in events (default: $POD_NAME, else the host name
    /// and process id).
    #[arg(long, env = "KVOPERATOR_IDENTITY")]
    identity: Option<String>,

    /// Log format: text or json. The level comes from RUST_LOG (default info).
    #[arg(
        long,
        env = "KVOPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn identity(args: &Args) -> String {
    args.identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "kvoperator".into());
            format!("{host}-{}", std::process::id())
        })
}

async fn metrics_route(State(metrics): State<Metrics>) -> String {
    metrics.render()
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logs(args.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // The backup targets' client (object_store over reqwest) uses rustls' process-wide provider.
    kvbackup::install_crypto_provider();
    let client = kube::Client::try_default().await?;
    // Fail early and clearly when the CRD is not installed.
    Api::<KVCluster>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .map_err(|e| format!("cannot list KVClusters (is crds/kvcluster.yaml installed?): {e}"))?;

    let metrics = Metrics::new()?;
    let app = Router::new()
        .route("/metrics", get(metrics_route))
        .route("/health", get(|| async { "ok" }))
        .with_state(metrics.clone());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    info!(address = %listener.local_addr()?, "serving /metrics and /health");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let id = identity(&args);
    let settings = Settings {
        progress_interval: args.progress_interval,
        resync_interval: args.resync_interval,
        ring_change_stall_after: args.ring_change_stall_after,
        service_monitor: args.service_monitor,
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        HttpAdmin::new(args.admin_timeout),
        AddressSource::new(args.node_address_override_file.clone()),
        metrics,
        settings,
        Some(id.clone()),
    ));
    let namespace = args.namespace.clone();

    if args.leader_election {
        let lease_ns = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let elector = LeaderElector::new(
            client,
            LeaseSettings::new(args.lease_name.clone(), lease_ns, id, args.lease_duration),
        );
        elector
            .run(
                move || {
                    let ctx = ctx.clone();
                    let namespace = namespace.clone();
                    async move {
                        controller::run(ctx, namespace.as_deref(), std::future::pending()).await;
                    }
                },
                shutdown_signal(),
            )
            .await;
    } else {
        controller::run(ctx, namespace.as_deref(), shutdown_signal()).await;
    }
    server.abort();
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_well_formed_and_have_env_twins() {
        Args::command().debug_assert();
        for arg in Args::command().get_arguments() {
            if arg.get_long().is_some() && arg.get_id() != "help" && arg.get_id() != "version" {
                assert!(
                    arg.get_env().is_some(),
                    "--{} has no env twin",
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn defaults_suit_a_deployment() -> Result<(), clap::Error> {
        let args = Args::try_parse_from(["kvoperator"])?;
        assert!(args.leader_election);
        assert_eq!(args.progress_interval, Duration::from_secs(5));
        let args = Args::try_parse_from([
            "kvoperator",
            "--leader-election",
            "false",
            "--node-address-override-file",
            "/tmp/a.json",
        ])?;
        assert!(!args.leader_election);
        assert_eq!(
            args.node_address_override_file,
            Some(PathBuf::from("/tmp/a.json"))
        );
        Ok(())
    }
}
