//! kvnode: the storage node of kvcluster.
//!
//! Data flows one way: [`http`] parses a request → [`coordinator`] runs it across the key's replicas →
//! [`replica`] applies it locally with the rules of [`causality`], or [`rpc`] sends it to a peer →
//! [`storage`] persists it. [`membership`] holds the cluster config and [`ring`] places partitions;
//! [`metrics`] and [`config`] serve every layer. No module reaches back up.

pub mod antientropy;
pub mod backup;
pub mod causality;
pub mod config;
pub mod context_token;
pub mod coordinator;
pub mod error;
pub mod handoff;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod offload;
pub mod open_files;
pub mod replica;
pub mod ring;
pub mod rpc;
pub mod storage;
pub mod supervisor;
pub mod tls;
pub mod transport;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;

use crate::antientropy::AntiEntropy;
use crate::config::NodeConfig;
use crate::context_token::{ContextKeys, KeySource};
use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::handoff::Handoff;
use crate::handoff::transfer::Transfers;
use crate::http::{ConnectionLimits, Node};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::offload::Offload;
use crate::replica::Replica;
use crate::rpc::RpcClient;
use crate::storage::{Durability, Storage};
use crate::supervisor::{Stop, Supervisor};
use crate::tls::{ClientPortFiles, PeerFiles, Reloading, ServerTls};
use crate::transport::Peers;

/// First wait before a background task that panicked is started again (it doubles per restart).
const RESTART_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// A node built but not serving: the request handlers' state and the started background tasks.
pub struct Assembled {
    /// What the client and peer handlers use.
    pub node: Arc<Node>,
    /// The node's background tasks (pings, hand-off, anti-entropy, transfers, WAL sync).
    pub background: Supervisor,
}

/// Makes the peer transport of a node from its membership, metrics and the peer message limit.
pub type PeersFactory<'a> =
    Box<dyn FnOnce(Arc<Membership>, Arc<Metrics>, usize) -> Result<Arc<dyn Peers>, Error> + 'a>;

/// What a node is built with besides its config: its address as a member, its peer transport
/// and where its blocking work runs.
pub struct Wiring<'a> {
    /// This node as the cluster config names it.
    pub member: kvapi::Member,
    /// The peer transport.
    pub peers: PeersFactory<'a>,
    /// Where storage and membership run blocking work.
    pub offload: Offload,
}

/// Opens storage and membership and starts the background tasks of a node: everything but the
/// listeners, so a simulator can build nodes over an in-process network.
pub fn assemble(config: &NodeConfig, wiring: Wiring<'_>) -> Result<Assembled, Error> {
    let auth = Arc::new(http::auth::Authorizer::load(config)?);
    let metrics = Arc::new(Metrics::new());
    let max_value_bytes = usize::try_from(config.max_value_bytes.as_u64()).unwrap_or(usize::MAX);
    let max_record_bytes =
        storage::codec::max_record_bytes(usize::from(config.max_siblings), max_value_bytes);
    let storage = Storage::open(
        &config.data_dir,
        config.durability,
        usize::try_from(config.cache_size.as_u64()).unwrap_or(usize::MAX),
        usize::try_from(config.rocksdb_memory.as_u64()).unwrap_or(usize::MAX),
        metrics.clone(),
    )?
    .with_record_cap(max_record_bytes);
    let max_peer_message_bytes = rpc::max_message_bytes(max_record_bytes);
    storage.pin_setting("partitions", config.partitions)?;
    let contexts = Arc::new(match &config.context_key_file {
        Some(path) => ContextKeys::from_file(path).map_err(Error::BadConfig)?,
        None => ContextKeys::new(&[&storage.local_secret("context_key")?], KeySource::Local)
            .map_err(Error::Internal)?,
    });
    let replica = Arc::new(
        Replica::new(
            storage,
            &config.node_id,
            usize::from(config.max_siblings),
            contexts.clone(),
            metrics.clone(),
        )
        .with_offload(wiring.offload),
    );
    let membership = Arc::new(
        Membership::load(
            wiring.member,
            &config.data_dir,
            config.cluster_config.as_deref(),
            config.partitions,
        )?
        .with_offload(wiring.offload),
    );
    contexts.check_cluster(&membership.view().config)?;
    membership.on_gain({
        let replica = replica.clone();
        Box::new(move |partitions| {
            for &p in partitions {
                if replica.storage().holds_partition(p)? {
                    replica.storage().drop_partition(p)?;
                }
            }
            Ok(())
        })
    });
    let rpc = (wiring.peers)(membership.clone(), metrics.clone(), max_peer_message_bytes)?;
    let handoff = Handoff::new(
        membership.clone(),
        replica.clone(),
        rpc.clone(),
        metrics.clone(),
        handoff::Settings {
            ttl: config.hint_ttl(),
            caps: storage::hints::HintCaps {
                max_count: config.max_hints_per_target,
                max_bytes: config.max_hint_bytes_per_target.as_u64(),
            },
        },
    );
    let antientropy = AntiEntropy::new(
        membership.clone(),
        replica.clone(),
        rpc.clone(),
        metrics.clone(),
        antientropy::Settings {
            interval: Some(*config.anti_entropy_interval).filter(|d| !d.is_zero()),
            pace: *config.anti_entropy_pace,
            tombstone_grace: *config.tombstone_grace,
        },
    );
    let transfers = Transfers::new(
        membership.clone(),
        replica.clone(),
        rpc.clone(),
        antientropy.clone(),
        metrics.clone(),
    );
    let mut background = Supervisor::new(metrics.clone(), RESTART_BACKOFF);
    {
        let (rpc, membership) = (rpc.clone(), membership.clone());
        background.spawn("peer_pings", move |stop| {
            transport::ping_peers(rpc.clone(), membership.clone(), stop)
        });
    }
    background.spawn_method("hint_delivery", handoff.clone(), Handoff::deliver_forever);
    background.spawn_method("anti_entropy", antientropy.clone(), AntiEntropy::run);
    background.spawn_method("transfers", transfers.clone(), Transfers::run);
    if auth.watches_files() {
        background.spawn_method(
            "token_reload",
            auth.clone(),
            http::auth::Authorizer::reload_forever,
        );
    }
    let backups = Arc::new(backup::Backups::new(
        backup::Settings {
            data_dir: config.data_dir.clone(),
            s3: kvbackup::target::S3Settings {
                endpoint: config.backup_endpoint.clone(),
                ..kvbackup::target::S3Settings::default()
            },
            bytes_per_second: config.backup_rate.as_u64(),
        },
        replica.clone(),
        membership.clone(),
        rpc.clone(),
    ));
    let watchers = watch::Watchers::new(config.max_watchers as usize, metrics.clone());
    let node = Arc::new(Node {
        coordinator: Coordinator::new(
            membership.clone(),
            replica.clone(),
            rpc.clone(),
            handoff.clone(),
            metrics.clone(),
        ),
        replica: replica.clone(),
        membership,
        rpc,
        handoff,
        transfers,
        metrics,
        max_value_bytes,
        default_ttl: config.default_ttl.duration(),
        watchers,
        request_timeout: *config.request_timeout,
        body_read_timeout: *config.body_read_timeout,
        max_peer_message_bytes,
        max_requests_in_flight: config.max_requests_in_flight as usize,
        auth,
        backups,
        ready: AtomicBool::new(false),
    });
    if config.durability == Durability::Periodic {
        let (replica, interval) = (replica, *config.wal_sync_interval);
        background.spawn("wal_sync", move |stop| {
            sync_wal_periodically(replica.clone(), interval, stop)
        });
    }
    Ok(Assembled { node, background })
}

/// Opens storage, binds the client and peer listeners, prints `kvnode peer port on ADDR` and then
/// `kvnode listening on http://ADDR` (`https://` with client TLS) on stdout and serves until
/// `shutdown` resolves; then drains connections and syncs the write-ahead log.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    // The object-store client's TLS (backups to https targets) uses the process default provider.
    kvbackup::install_crypto_provider();
    let listener = bind(config.listen).await?;
    let peer_listener = bind(config.peer_listen).await?;
    let address = local_address(&listener)?;
    let peer_address = local_address(&peer_listener)?;
    if let Some(source) = config.peer_source_address {
        // An address this host does not have would make every peer look unreachable: refuse it.
        std::net::TcpListener::bind((source, 0)).map_err(|e| {
            Error::Unavailable(format!(
                "--peer-source-address {source} is not usable here: {e}"
            ))
        })?;
    }
    let peer_tls = match config.peer_tls().map_err(Error::BadConfig)? {
        Some(files) => Some(Reloading::open(files.paths(), PeerFiles::build)?),
        None => None,
    };
    let client_tls = match config.client_tls().map_err(Error::BadConfig)? {
        Some(files) => Some(Reloading::open(files.paths(), ClientPortFiles::build)?),
        None => None,
    };
    let source = config.peer_source_address;
    let tls = peer_tls.clone();
    let wiring = Wiring {
        member: kvapi::Member {
            id: config.node_id.clone(),
            address: address.to_string(),
            peer_address: peer_address.to_string(),
        },
        peers: Box::new(move |membership, metrics, max_bytes| {
            let client: Arc<dyn Peers> =
                RpcClient::new(membership, metrics, source, max_bytes, tls)?;
            Ok(client)
        }),
        offload: Offload::Pool,
    };
    let Assembled {
        node,
        mut background,
    } = assemble(&config, wiring)?;
    if let Some(files) = peer_tls.clone() {
        background.spawn_method("peer_tls_reload", files, Reloading::watch);
    }
    if let Some(files) = client_tls.clone() {
        background.spawn_method("client_tls_reload", files, Reloading::watch);
    }
    node.ready.store(true, Ordering::Release);
    tracing::info!(node_id = %config.node_id, %address, %peer_address, "serving");
    let scheme = if client_tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("kvnode peer port on {peer_address}");
    println!("kvnode listening on {scheme}://{address}");
    let limits = ConnectionLimits {
        header_read_timeout: *config.header_read_timeout,
        idle_timeout: *config.idle_timeout,
        max_header_bytes: usize::try_from(config.max_header_bytes.as_u64()).unwrap_or(usize::MAX),
        max_connections: open_files::fit_connections(config.max_connections as usize),
        max_concurrent_streams: config.max_concurrent_streams,
        write_timeout: *config.write_timeout,
        shutdown_grace: *config.shutdown_grace,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let (client_router, peer_router) = http::routers(node.clone());
    let client_port = http::serve(
        listener,
        client_router,
        limits.clone(),
        client_tls.map(|t| -> ServerTls { Arc::new(move || t.current()) }),
        until_stopped(),
    );
    let peer_port = http::serve(
        peer_listener,
        peer_router,
        limits,
        peer_tls.map(|t| -> ServerTls { Arc::new(move || t.current().server.clone()) }),
        until_stopped(),
    );
    let signal = async {
        shutdown.await;
        node.ready.store(false, Ordering::Release);
        tracing::info!("shutting down");
        let _ = stop.send(true);
    };
    tokio::join!(client_port, peer_port, signal);
    background.shutdown(*config.shutdown_grace).await;
    node.replica.sync_wal().await
}

async fn bind(address: std::net::SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(address)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {address}: {e}")))
}

fn local_address(listener: &TcpListener) -> Result<std::net::SocketAddr, Error> {
    listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))
}

/// Syncs the write-ahead log every `interval` until a sync fails; storage then refuses writes and
/// the node reports itself unready until restarted (a retried sync proves nothing).
async fn sync_wal_periodically(
    replica: Arc<Replica>,
    interval: std::time::Duration,
    mut stop: Stop,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.unless_stopped(ticks.tick()).await.is_some() {
        if let Err(e) = replica.sync_wal().await {
            tracing::error!(error = %e, "periodic WAL sync failed; the node refuses writes until restarted");
            return;
        }
    }
}
