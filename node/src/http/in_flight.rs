//! The global bound on requests in flight: a layer over every route but `/health/*`.
//!
//! A request beyond the bound is answered 503 `unavailable` with `Retry-After: 1` at once: queueing
//! it would only hold its memory and its connection longer while the node is already saturated.
//! Health probes pass untouched, so an overloaded node is not restarted for being busy.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

use super::error_response;
use crate::error::Error;
use crate::metrics::Metrics;

/// The slots of requests in flight, shared by every connection.
pub(super) struct InFlight {
    slots: Arc<Semaphore>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl InFlight {
    /// A bound of `limit` requests at once.
    pub(super) fn new(limit: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(InFlight {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            metrics,
        })
    }
}

/// Runs the request while holding a slot, or refuses it when none is free.
pub(super) async fn bound_in_flight(
    State(bound): State<Arc<InFlight>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with("/health/") {
        return next.run(request).await;
    }
    let Ok(_slot) = bound.slots.clone().try_acquire_owned() else {
        bound
            .metrics
            .requests_rejected
            .with_label_values(&[crate::metrics::REJECTED_IN_FLIGHT])
            .inc();
        let mut response = error_response(&Error::Unavailable(format!(
            "{} requests already in flight; retry shortly",
            bound.limit
        )));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    next.run(request).await
}
