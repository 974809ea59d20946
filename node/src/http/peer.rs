//! `POST /internal/v1/rpc`: a peer's message in, this node's answer out.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use kvapi::{ErrorBody, codes};

use super::peer_checks::{self, Refusal};
use super::{MAX_TIMEOUT_MS, Node, error_parts, error_response, read_value};
use crate::causality::SiblingSet;
use crate::error::Error;
use crate::replica::Mutation;
use crate::rpc::items::Outcome;
use crate::rpc::{self, RequestBody, ResponseBody, RpcRequest, RpcResponse};
use crate::storage::listing::ListRange;
use crate::transport;

/// `POST /internal/v1/rpc`: one peer message in, one answer out.
pub(super) async fn peer_rpc(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::POST {
        return error_response(&Error::MethodNotAllowed {
            method: request.method().to_string(),
            allow: "POST",
        });
    }
    let outcome = async {
        let bytes = read_value(&node, request, node.max_peer_message_bytes).await?;
        let message: RpcRequest = rpc::decode(&bytes)?;
        handle(&node, message)
            .await
            .map(|answer| rpc::encode(&answer))
    };
    match outcome.await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => error_response(&e),
    }
}

/// One decoded peer message in, this node's answer out, after the checks that are not about
/// HTTP; an `Err` is a message from another cluster (answered as an HTTP error).
pub async fn handle(node: &Node, message: RpcRequest) -> Result<RpcResponse, Error> {
    let view = node.membership.view();
    if view.config.epoch > 0 && message.cluster != view.config.cluster {
        return Err(Error::BadConfig(format!(
            "message from cluster {:?}, this node belongs to {:?}",
            message.cluster, view.config.cluster
        )));
    }
    // Checked before anything believes the message, its epoch included.
    if let Err(refusal) = peer_checks::check(
        node.membership.node_id(),
        &view,
        &message,
        node.max_value_bytes,
    ) {
        return Ok(RpcResponse {
            epoch: view.config.epoch,
            body: refused(node, &message, refusal),
        });
    }
    if view.config.any_member(&message.sender).is_some() {
        // A message from a peer proves it is up: end its backoff now rather than at the next ping.
        node.membership
            .record_success(&message.sender, message.epoch);
    }
    if message.epoch > view.config.epoch {
        transport::catch_up(node.rpc.clone(), node.membership.clone(), &message.sender);
    }
    let body = answer_peer(node, message.body).await;
    Ok(RpcResponse {
        epoch: node.membership.view().config.epoch,
        body,
    })
}

/// The answer to one peer message; a failure travels back as [`ResponseBody::Failed`].
async fn answer_peer(node: &Node, body: RequestBody) -> ResponseBody {
    let result = match body {
        RequestBody::Ping => Ok(ResponseBody::Pong),
        RequestBody::FetchConfig => Ok(ResponseBody::Config(node.membership.view().config.clone())),
        RequestBody::Read { partition, key } => node
            .replica
            .read(partition, key.into())
            .await
            .map(|set| ResponseBody::State(SiblingSet::clone(&set))),
        RequestBody::Merge {
            partition,
            key,
            set,
        } => match check_owner(node, partition) {
            Ok(()) => node
                .replica
                .merge(partition, key.into(), set)
                .await
                .map(|_| ResponseBody::Merged),
            Err(e) => Err(e),
        },
        RequestBody::MergeBatch { partition, records } => match check_owner(node, partition) {
            Ok(()) => node
                .replica
                .merge_many(partition, records)
                .await
                .map(ResponseBody::Changed),
            Err(e) => Err(e),
        },
        RequestBody::StoreHint { target, hint } => node
            .handoff
            .store(target, hint)
            .await
            .map(|()| ResponseBody::Merged),
        RequestBody::DeliverHints(hints) => node
            .handoff
            .accept(hints)
            .await
            .map(|()| ResponseBody::Merged),
        RequestBody::Summary { partition } => node
            .replica
            .with_storage(move |s| s.summary(partition))
            .await
            .map(|summary| ResponseBody::Summary(summary.leaves)),
        RequestBody::FetchSegments {
            partition,
            segments,
            after,
            max_bytes,
        } => {
            // A peer's budget is honoured up to a batch, so no answer outgrows the message limit.
            let budget = usize::try_from(max_bytes)
                .unwrap_or(usize::MAX)
                .min(rpc::MAX_BATCH_BYTES);
            node.replica
                .with_storage(move |s| {
                    s.scan_segments(partition, &segments, after.as_deref(), budget)
                })
                .await
                .map(|page| ResponseBody::Records {
                    records: page.records,
                    next: page.next,
                })
        }
        RequestBody::PurgeTombstones { partition, keys } => node
            .replica
            .purge_tombstones(partition, keys)
            .await
            .map(ResponseBody::Changed),
        RequestBody::TransferProgress => {
            let (epoch, done) = node.transfers.progress();
            Ok(ResponseBody::Progress { epoch, done })
        }
        body @ RequestBody::Changes { .. } => {
            super::watch::local_changes(node.replica.changes(), body)
                .await
                .map(|(keys, position)| ResponseBody::Changes { keys, position })
        }
        RequestBody::HintsPending { partition } => Ok(ResponseBody::HintsPending(
            node.replica.storage().hints_pending_in(partition),
        )),
        RequestBody::List {
            partitions,
            prefix,
            start,
            limit,
            max_bytes,
            values,
        } => {
            // A peer's budget is honoured up to a batch, so no answer outgrows the message limit.
            let max_bytes = usize::try_from(max_bytes)
                .unwrap_or(usize::MAX)
                .min(rpc::MAX_BATCH_BYTES);
            node.replica
                .with_storage(move |s| {
                    let range = ListRange {
                        prefix: &prefix,
                        start: &start,
                        limit: limit as usize,
                        max_bytes,
                        values,
                    };
                    s.list(&partitions, &range)
                })
                .await
                .map(|scan| ResponseBody::Listed {
                    records: scan.records,
                    end: scan.end,
                })
        }
        RequestBody::ReadMany(keys) => Ok(ResponseBody::Outcomes(
            node.coordinator.read_local(keys).await,
        )),
        RequestBody::MergeMany(hints) => Ok(ResponseBody::Outcomes(
            node.coordinator.merge_local(hints).await,
        )),
        RequestBody::CoordinateMany {
            writes,
            w,
            timeout_ms,
        } => {
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(timeout_ms.min(MAX_TIMEOUT_MS));
            let results = node.coordinator.write_many(writes, w, deadline, true).await;
            Ok(ResponseBody::Outcomes(
                results
                    .into_iter()
                    .map(|r| Outcome::of(r.map(|set| Outcome::State(SiblingSet::clone(&set)))))
                    .collect(),
            ))
        }
        RequestBody::Coordinate {
            key,
            context,
            value,
            w,
            timeout_ms,
            ttl_ms,
        } => {
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(timeout_ms.min(MAX_TIMEOUT_MS));
            let mutation = Mutation {
                value,
                ttl: ttl_ms.map(Duration::from_millis),
            };
            node.coordinator
                .write(key.into(), context, mutation, w, deadline, true)
                .await
                .map(|set| ResponseBody::State(SiblingSet::clone(&set)))
        }
    };
    result.unwrap_or_else(|e| {
        let (status, error) = error_parts(&e);
        ResponseBody::Failed {
            status: status.as_u16(),
            error,
        }
    })
}

/// Counts and logs a refused message; the answer is a 400 `bad_rpc` the sender can read.
fn refused(node: &Node, message: &RpcRequest, refusal: Refusal) -> ResponseBody {
    node.metrics
        .peer_messages_refused
        .with_label_values(&[refusal.reason])
        .inc();
    tracing::warn!(
        sender = %message.sender.chars().take(80).collect::<String>(),
        reason = refusal.reason,
        message = %refusal.message,
        "refused a peer message"
    );
    ResponseBody::Failed {
        status: 400,
        error: ErrorBody {
            error: codes::BAD_RPC.to_string(),
            message: format!("peer message refused: {}", refusal.message),
            context: None,
            replied: None,
            required: None,
        },
    }
}

/// Refuses replica writes for a partition this node does not hold at its epoch: the sender follows
/// an older config, and the answer's epoch makes it catch up.
fn check_owner(node: &Node, partition: u16) -> Result<(), Error> {
    let view = node.membership.view();
    if view.is_owner(node.membership.node_id(), partition) {
        Ok(())
    } else {
        Err(Error::NotOwner(format!(
            "{} does not hold partition {partition} at epoch {}",
            node.membership.node_id(),
            view.config.epoch
        )))
    }
}
