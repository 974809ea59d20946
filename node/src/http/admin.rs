//! Health, metrics and the `/admin/v1/` routes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Node, error_response, method_not_allowed, read_value};
use crate::error::Error;

pub(super) async fn live(request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return method_not_allowed(request.method());
    }
    (StatusCode::OK, "live\n").into_response()
}

pub(super) async fn ready(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return method_not_allowed(request.method());
    }
    if node.replica.storage().wal_failed() {
        error_response(&Error::Unavailable(
            "a sync of the write-ahead log failed; restart the node".into(),
        ))
    } else if node.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        error_response(&Error::Unavailable("node is not ready".into()))
    }
}

pub(super) async fn metrics(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return method_not_allowed(request.method());
    }
    let storage = node.replica.storage();
    let engine = storage
        .engine_stats()
        .inspect_err(|e| tracing::warn!(error = %e, "cannot read RocksDB's figures"))
        .ok();
    let view = node.membership.view();
    let me = node.membership.node_id();
    let peers: Vec<&str> = view
        .all_members()
        .into_iter()
        .map(|m| m.id.as_str())
        .filter(|id| *id != me)
        .collect();
    node.metrics.refresh(
        view.config.epoch,
        &peers,
        &storage.hint_backlog(),
        engine.as_ref(),
    );
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        node.metrics.render(),
    )
        .into_response()
}

/// `GET` reads the cluster config; `PUT` installs a newer one (409 when not newer).
pub(super) async fn admin_cluster(State(node): State<Arc<Node>>, request: Request) -> Response {
    let outcome = async {
        match *request.method() {
            Method::GET => Ok(axum::Json(node.membership.view().config.clone()).into_response()),
            Method::PUT => {
                let bytes = read_value(&node, request, 1024 * 1024).await?;
                let config: kvapi::ClusterConfig = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::BadConfig(format!("not a cluster config: {e}")))?;
                let offered = config.epoch;
                node.replica.contexts().check_cluster(&config)?;
                if node.membership.propose_on_blocking_pool(config).await? {
                    Ok(axum::Json(node.membership.view().config.clone()).into_response())
                } else {
                    Err(Error::StaleEpoch {
                        offered,
                        current: node.membership.view().config.epoch,
                    })
                }
            }
            ref other => Err(Error::MethodNotAllowed {
                method: other.to_string(),
                allow: "GET, PUT",
            }),
        }
    };
    outcome.await.unwrap_or_else(|e| error_response(&e))
}

/// `GET`: partition → preference list under the current config.
pub(super) async fn admin_ring(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::GET {
        return method_not_allowed(request.method());
    }
    let view = node.membership.view();
    let partitions = (0..view.ring.partitions())
        .map(|p| kvapi::PartitionView {
            partition: p,
            replicas: view
                .ring
                .preference_list(p as u16)
                .map(String::from)
                .collect(),
        })
        .collect();
    axum::Json(kvapi::RingView {
        epoch: view.config.epoch,
        partitions,
    })
    .into_response()
}

/// `GET /admin/v1/digests`: the Merkle root of every partition holding a record here.
pub(super) async fn admin_digests(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::GET {
        return method_not_allowed(request.method());
    }
    let view = node.membership.view();
    let replica = node.replica.clone();
    let partitions = view.ring.partitions();
    let scanned = tokio::task::spawn_blocking(move || {
        let mut digests = Vec::new();
        for partition in 0..partitions {
            // Partition numbers are below 65,536, so they fit the on-disk u16.
            let p = partition as u16;
            let summary = replica.storage().summary(p)?;
            if summary.keys > 0 {
                digests.push(kvapi::PartitionDigest {
                    partition: p.into(),
                    root: format!("{:016x}", summary.root),
                    keys: summary.keys,
                });
            }
        }
        Ok::<_, Error>(digests)
    })
    .await;
    match scanned.map_err(Error::from).and_then(|digests| digests) {
        Ok(partitions) => axum::Json(kvapi::PartitionDigests {
            node_id: node.membership.node_id().to_string(),
            epoch: view.config.epoch,
            partitions,
        })
        .into_response(),
        Err(e) => error_response(&e),
    }
}

/// This node's view of the cluster, its hints and its transfers.
fn node_status(node: &Node) -> kvapi::NodeStatus {
    let view = node.membership.view();
    let node_id = node.membership.node_id().to_string();
    kvapi::NodeStatus {
        member: view.config.member(&node_id).is_some(),
        node_id,
        config: view.config.clone(),
        peers: node.membership.peer_statuses(),
        hints_pending: node.replica.storage().hints_pending(),
        draining: node.handoff.draining(),
        transfer: node.transfers.status(),
    }
}

/// `GET`: this node's view of the cluster.
pub(super) async fn admin_status(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::GET {
        return method_not_allowed(request.method());
    }
    axum::Json(node_status(&node)).into_response()
}

/// `POST`: start handing off everything this node holds (hints at once); answers 202 with the
/// status, in which `draining` and `hints_pending` show the progress.
pub(super) async fn admin_drain(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::POST {
        return error_response(&Error::MethodNotAllowed {
            method: request.method().to_string(),
            allow: "POST",
        });
    }
    node.handoff.drain();
    (StatusCode::ACCEPTED, axum::Json(node_status(&node))).into_response()
}

/// `POST`: back this node up (a [`kvapi::BackupRequest`]); answers the [`kvapi::BackupReport`]
/// once every file is uploaded.
pub(super) async fn admin_backup(State(node): State<Arc<Node>>, request: Request) -> Response {
    let outcome = async {
        let request: kvapi::BackupRequest = json_post(&node, request).await?;
        node.backups.take(request).await
    };
    match outcome.await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `POST`: merge one node's checkpoint of a backup into the cluster (a [`kvapi::RestoreRequest`]);
/// answers the [`kvapi::RestoreReport`] when done.
pub(super) async fn admin_restore(State(node): State<Arc<Node>>, request: Request) -> Response {
    let outcome = async {
        let request: kvapi::RestoreRequest = json_post(&node, request).await?;
        node.backups.restore(request).await
    };
    match outcome.await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `POST`: hold (or with 0, resume) hint delivery; answers once no delivery is in flight.
pub(super) async fn admin_handoff_hold(
    State(node): State<Arc<Node>>,
    request: Request,
) -> Response {
    const MOST: u64 = 24 * 60 * 60 * 1000;
    let outcome = async {
        let hold: kvapi::HandoffHold = json_post(&node, request).await?;
        if hold.millis > MOST {
            return Err(Error::BadBody(format!(
                "a hold of {} ms is longer than a day",
                hold.millis
            )));
        }
        node.handoff
            .hold_delivery(std::time::Duration::from_millis(hold.millis))
            .await;
        Ok(hold)
    };
    match outcome.await {
        Ok(hold) => axum::Json(hold).into_response(),
        Err(e) => error_response(&e),
    }
}

/// The JSON body of a `POST` (64 KiB at most).
async fn json_post<T: serde::de::DeserializeOwned>(
    node: &Node,
    request: Request,
) -> Result<T, Error> {
    if request.method() != Method::POST {
        return Err(Error::MethodNotAllowed {
            method: request.method().to_string(),
            allow: "POST",
        });
    }
    let bytes = read_value(node, request, 64 * 1024).await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::BadBody(format!("not a JSON request: {e}")))
}
