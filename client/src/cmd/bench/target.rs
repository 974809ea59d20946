//! The systems `kvctl bench` can drive, and each client's connection to them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use kvclient::{Client, ReadOptions, ReadResult, WriteOptions};
use serde::Serialize;

use super::Shared;
use super::garage::{self, K2v};
use super::keys::key_name;
use super::load::remember_error_context;
use super::resp::{Connection, Reply};
use super::stats::error_kind;
use super::{etcd, resp};

/// The system under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Target {
    /// kvcluster nodes (`GET`/`PUT /v1/kv/{key}` with causal contexts).
    Kvcluster,
    /// etcd members through the v3 JSON gateway (`/v3/kv/put`, linearizable `/v3/kv/range`).
    Etcd,
    /// Redis servers (RESP `SET`/`GET`, one connection per client).
    Redis,
    /// Garage nodes through the K2V API (SigV4-signed `InsertItem`/`ReadItem`).
    Garage,
}

/// What a successful read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Got {
    /// A value, with its number of live siblings (1 for systems without siblings).
    Found {
        /// Live siblings.
        live: u64,
    },
    /// No value.
    Missing,
}

/// The shared connection state of a run's target.
#[derive(Debug)]
pub(super) enum Backend {
    /// One kvclient per endpoint (clones share their connection pool).
    Kvcluster(Vec<Client>),
    /// One HTTP client, the members' base URLs.
    Etcd {
        /// The HTTP client.
        http: reqwest::Client,
        /// `http://host:port` of each member.
        bases: Vec<String>,
        /// The value every put sends, base64.
        value_b64: String,
    },
    /// `host:port` of each server.
    Redis(Vec<String>),
    /// The K2V client state.
    Garage(K2v),
}

/// The error kind of an HTTP call that got no (complete) answer.
pub(super) fn http_error_kind(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".to_owned()
    } else if error.is_connect() {
        "connect".to_owned()
    } else {
        "transport".to_owned()
    }
}

/// A plain-HTTP client for a peer system: no proxy, no TLS roots, `timeout` per request.
pub(super) fn plain_http(timeout: Duration) -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .no_proxy()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// A Redis endpoint as `host:port` (`redis://` and a trailing `/` are accepted and dropped).
pub(super) fn redis_address(endpoint: &str) -> Result<String, String> {
    let address = endpoint
        .strip_prefix("redis://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    match address.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() =>
        {
            Ok(address.to_owned())
        }
        _ => Err(format!(
            "Redis endpoint {endpoint:?} is not host:port (or redis://host:port)"
        )),
    }
}

/// An etcd endpoint as `http://host:port` (no https: the bench's peers run on loopback).
pub(super) fn http_base(endpoint: &str) -> Result<String, String> {
    let base = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    if !base.starts_with("http://") {
        return Err(format!(
            "endpoint {endpoint:?}: only http:// is supported for this target"
        ));
    }
    Ok(base.trim_end_matches('/').to_owned())
}

/// One client's connection state.
#[derive(Debug)]
pub(super) enum Conn {
    /// kvcluster: the next endpoint and the causal context last seen per key.
    Kvcluster {
        /// Index of the next endpoint.
        next: usize,
        /// Context per key index.
        contexts: HashMap<u64, String>,
    },
    /// etcd: the next member.
    Etcd {
        /// Index of the next member.
        next: usize,
    },
    /// Garage: the next node and the causality token last seen per key.
    Garage {
        /// Index of the next node.
        next: usize,
        /// Causality token per key index.
        tokens: HashMap<u64, String>,
    },
    /// Redis: the server of this client and its connection, opened on first use and again after an error.
    Redis {
        /// `host:port`.
        address: String,
        /// The open connection.
        connection: Option<Connection>,
    },
}

impl Conn {
    /// The connection state of client `index`.
    pub(super) fn new(shared: &Shared, index: usize, contexts: HashMap<u64, String>) -> Conn {
        match &shared.backend {
            Backend::Kvcluster(clients) => Conn::Kvcluster {
                next: index % clients.len(),
                contexts,
            },
            Backend::Etcd { bases, .. } => Conn::Etcd {
                next: index % bases.len(),
            },
            Backend::Garage(k2v) => Conn::Garage {
                next: index % k2v.bases.len(),
                tokens: HashMap::new(),
            },
            Backend::Redis(addresses) => Conn::Redis {
                address: addresses[index % addresses.len()].clone(),
                connection: None,
            },
        }
    }

    /// The kvcluster client to use next and the contexts, or `None` for another target.
    pub(super) fn kvcluster<'a>(
        &'a mut self,
        shared: &'a Shared,
    ) -> Option<(&'a Client, &'a mut HashMap<u64, String>)> {
        match (self, &shared.backend) {
            (Conn::Kvcluster { next, contexts }, Backend::Kvcluster(clients)) => {
                let client = &clients[*next];
                *next = (*next + 1) % clients.len();
                Some((client, contexts))
            }
            _ => None,
        }
    }

    /// The contexts a kvcluster client has seen (empty for other targets).
    pub(super) fn into_contexts(self) -> HashMap<u64, String> {
        match self {
            Conn::Kvcluster { contexts, .. } => contexts,
            _ => HashMap::new(),
        }
    }

    /// Reads key `index`; the error is its kind.
    pub(super) async fn read(&mut self, shared: &Shared, index: u64) -> Result<Got, String> {
        let key = key_name(index);
        if let Some((client, contexts)) = self.kvcluster(shared) {
            return match client.get(key.as_bytes(), &ReadOptions::default()).await {
                Ok(result) => {
                    if let Some(context) = result.context() {
                        contexts.insert(index, context.to_owned());
                    }
                    Ok(match &result {
                        ReadResult::Found { .. } => Got::Found {
                            live: result.live().count() as u64,
                        },
                        ReadResult::NotFound { .. } => Got::Missing,
                    })
                }
                Err(e) => {
                    remember_error_context(contexts, index, &e);
                    Err(error_kind(&e))
                }
            };
        }
        match (self, &shared.backend) {
            (Conn::Etcd { next }, Backend::Etcd { http, bases, .. }) => {
                let base = &bases[*next];
                *next = (*next + 1) % bases.len();
                etcd::get(http, base, &key).await
            }
            (Conn::Garage { next, tokens }, Backend::Garage(k2v)) => {
                let base = &k2v.bases[*next];
                *next = (*next + 1) % k2v.bases.len();
                garage::get(k2v, base, &key, index, tokens).await
            }
            (
                Conn::Redis {
                    address,
                    connection,
                },
                _,
            ) => match redis(address, connection, shared, &[b"GET", key.as_bytes()]).await? {
                Reply::Bulk(_) => Ok(Got::Found { live: 1 }),
                Reply::Nil => Ok(Got::Missing),
                other => Err(unexpected(&other)),
            },
            _ => Err("client".to_owned()),
        }
    }

    /// Writes the run's value to key `index`; the error is its kind.
    pub(super) async fn write(&mut self, shared: &Shared, index: u64) -> Result<(), String> {
        let key = key_name(index);
        if let Some((client, contexts)) = self.kvcluster(shared) {
            let context = contexts.get(&index).map(String::as_str);
            return match client
                .put(
                    key.as_bytes(),
                    shared.value.clone(),
                    context,
                    &WriteOptions::default(),
                )
                .await
            {
                Ok(context) => {
                    contexts.insert(index, context);
                    Ok(())
                }
                Err(e) => {
                    remember_error_context(contexts, index, &e);
                    Err(error_kind(&e))
                }
            };
        }
        match (self, &shared.backend) {
            (
                Conn::Etcd { next },
                Backend::Etcd {
                    http,
                    bases,
                    value_b64,
                },
            ) => {
                let base = &bases[*next];
                *next = (*next + 1) % bases.len();
                etcd::put(http, base, &key, value_b64).await
            }
            (Conn::Garage { next, tokens }, Backend::Garage(k2v)) => {
                let base = &k2v.bases[*next];
                *next = (*next + 1) % k2v.bases.len();
                let token = tokens.get(&index).map(String::as_str);
                garage::put(k2v, base, &key, shared.value.clone(), token).await
            }
            (
                Conn::Redis {
                    address,
                    connection,
                },
                _,
            ) => {
                match redis(
                    address,
                    connection,
                    shared,
                    &[b"SET", key.as_bytes(), &shared.value],
                )
                .await?
                {
                    Reply::Simple(ok) if ok == "OK" => Ok(()),
                    other => Err(unexpected(&other)),
                }
            }
            _ => Err("client".to_owned()),
        }
    }
}

/// One Redis command within the request timeout; drops the connection after any failure (its state is
/// then unknown), so the next command reconnects.
async fn redis(
    address: &str,
    connection: &mut Option<Connection>,
    shared: &Shared,
    args: &[&[u8]],
) -> Result<Reply, String> {
    let call = async {
        if connection.is_none() {
            *connection = Some(
                resp::Connection::connect(address)
                    .await
                    .map_err(|_| "connect".to_owned())?,
            );
        }
        match connection.as_mut() {
            Some(open) => open.call(args).await,
            None => Err("connect".to_owned()),
        }
    };
    let outcome = match tokio::time::timeout(shared.plan.timeout, call).await {
        Ok(outcome) => outcome,
        Err(_) => Err("timeout".to_owned()),
    };
    if outcome.is_err() {
        *connection = None;
    }
    outcome
}

/// The error kind of a reply a command does not expect.
fn unexpected(reply: &Reply) -> String {
    match reply {
        Reply::Error(message) => {
            // The error's first word (`ERR`, `OOM`, `READONLY`, ...).
            format!("redis {}", message.split(' ').next().unwrap_or("error"))
        }
        _ => "invalid response".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_per_target() {
        assert_eq!(
            redis_address("redis://127.0.0.1:6379/").unwrap(),
            "127.0.0.1:6379"
        );
        assert_eq!(redis_address("localhost:7000").unwrap(), "localhost:7000");
        assert!(redis_address("127.0.0.1").is_err());
        assert!(redis_address(":6379").is_err());
        assert!(redis_address("h:port").is_err());
        assert!(redis_address("http://127.0.0.1:6379").is_err());
        assert_eq!(
            http_base("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(http_base("http://h:1/").unwrap(), "http://h:1");
        assert!(http_base("https://h:1").is_err());
        assert_eq!(
            unexpected(&Reply::Error("OOM no memory".into())),
            "redis OOM"
        );
        assert_eq!(unexpected(&Reply::Integer(1)), "invalid response");
    }
}
