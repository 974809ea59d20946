//! The items of the batched peer messages (`ReadMany`, `MergeMany`, `CoordinateMany`): many keys
//! in one message, each with an outcome of its own.

use std::time::Duration;

use kvapi::ErrorBody;
use serde::{Deserialize, Serialize};

use crate::causality::{SiblingSet, VersionVector};
use crate::error::Error;
use crate::replica::Mutation;

/// One client write of a `CoordinateMany`, as a `Coordinate` carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Write {
    /// The key.
    pub key: Vec<u8>,
    /// The client's causal context.
    pub context: VersionVector,
    /// The value, `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// How long the value lives, in milliseconds, as `Coordinate`'s `ttl_ms`; `None` never expires.
    pub ttl_ms: Option<u64>,
}

impl Write {
    /// A write of `key` with `context` that stores `mutation`.
    pub fn new(key: Vec<u8>, context: VersionVector, mutation: Mutation) -> Self {
        Write {
            key,
            context,
            ttl_ms: mutation.ttl.map(|ttl| ttl.as_millis() as u64),
            value: mutation.value,
        }
    }

    /// What this write stores.
    pub fn mutation(&self) -> Mutation {
        Mutation {
            value: self.value.clone(),
            ttl: self.ttl_ms.map(Duration::from_millis),
        }
    }
}

/// The outcome of one item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    /// The key's state (a read, a coordinated write).
    State(SiblingSet),
    /// Merged and persisted.
    Merged,
    /// Failed as a client request would: the HTTP status and error body.
    Failed {
        /// HTTP status of the failure.
        status: u16,
        /// Its JSON error body.
        #[serde(with = "super::as_json")]
        error: ErrorBody,
    },
}

impl Outcome {
    /// The outcome of a local result.
    pub fn of(result: Result<Outcome, Error>) -> Outcome {
        result.unwrap_or_else(|e| {
            let (status, error) = crate::http::error_parts(&e);
            Outcome::Failed {
                status: status.as_u16(),
                error,
            }
        })
    }

    /// Back to a result: a failure becomes the remote error it was.
    pub fn into_result(self) -> Result<Outcome, Error> {
        match self {
            Outcome::Failed { status, error } => Err(Error::Remote {
                status,
                body: error,
            }),
            other => Ok(other),
        }
    }
}
