//! Bearer tokens on the client port: which token may use which route.
//!
//! Three kinds of token, each read from a file of one token per line ([`kvapi::parse_tokens`]):
//! admin (every route), read-write data and read-only data. The rules, applied by [`require`] in
//! front of every route:
//!
//! - `/health/*` and the peer route are always open (peers authenticate on their own terms);
//! - `/metrics` is open, or with `--metrics-auth` needs the admin token or a data token;
//! - `/admin/v1/*` needs the admin token once any token is configured (a data token gets 403);
//! - every other route (the `/v1/kv` data routes) needs a data or admin token once a data token is
//!   configured, and a read-only token may only `GET` (anything else gets 403).
//!
//! Tokens are kept only as SHA-256 digests and a presented token is compared digest against digest
//! in constant time, over every configured token, so neither the tokens' contents nor their lengths
//! show in the answer time. No token, digest or `Authorization` header is ever logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use parking_lot::RwLock;
use subtle::{Choice, ConstantTimeEq};

use super::error_response;
use crate::config::NodeConfig;
use crate::error::Error;
use crate::supervisor::Stop;

/// How often the token files are read again, so a rotated token takes effect without a restart.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// SHA-256 of a token: the only form in which the node keeps it.
type Digest = [u8; 32];

fn digest(token: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token).as_ref());
    out
}

/// The tokens in force, by kind.
#[derive(Default, PartialEq, Eq)]
struct TokenSet {
    admin: Vec<Digest>,
    write: Vec<Digest>,
    read: Vec<Digest>,
}

impl TokenSet {
    fn is_empty(&self) -> bool {
        self.admin.is_empty() && !self.has_data_tokens()
    }

    fn has_data_tokens(&self) -> bool {
        !self.write.is_empty() || !self.read.is_empty()
    }

    /// What `offered` may do: compared against every configured token, without stopping at the
    /// first match.
    fn grant(&self, offered: Option<&[u8]>) -> Grant {
        let Some(offered) = offered else {
            return Grant::None;
        };
        let offered = digest(offered);
        let matches = |digests: &[Digest]| {
            digests
                .iter()
                .fold(Choice::from(0), |found, d| found | d.ct_eq(&offered))
        };
        let (admin, write, read) = (
            matches(&self.admin),
            matches(&self.write),
            matches(&self.read),
        );
        if bool::from(admin) {
            Grant::Admin
        } else if bool::from(write) {
            Grant::Write
        } else if bool::from(read) {
            Grant::Read
        } else {
            Grant::None
        }
    }
}

/// What a presented token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    /// No token, or one that is not configured.
    None,
    /// A read-only data token.
    Read,
    /// A read-write data token.
    Write,
    /// The admin token.
    Admin,
}

/// The routes, as far as tokens are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteClass {
    /// Health probes and the peer route.
    Open,
    /// `/metrics`.
    Metrics,
    /// `/admin/v1/*`.
    Admin,
    /// The key-value routes, and any path that is no known route.
    Data,
}

fn classify(path: &str) -> RouteClass {
    if path.starts_with("/health/") || path == crate::rpc::RPC_PATH {
        RouteClass::Open
    } else if path == kvapi::METRICS {
        RouteClass::Metrics
    } else if path.starts_with("/admin/") {
        RouteClass::Admin
    } else {
        RouteClass::Data
    }
}

/// The token files (or the literal admin token) to read, by kind.
#[derive(Debug, Clone, Default)]
struct Sources {
    admin_literal: Option<kvapi::Secret>,
    admin: Option<PathBuf>,
    write: Option<PathBuf>,
    read: Option<PathBuf>,
}

impl Sources {
    fn read(&self) -> Result<TokenSet, Error> {
        let mut admin = read_token_file(self.admin.as_deref())?;
        if let Some(literal) = &self.admin_literal {
            admin.extend(
                kvapi::parse_tokens(literal.expose())
                    .map_err(|e| Error::BadToken(format!("--admin-token: {e}")))?
                    .into_iter()
                    .map(|t| digest(t.as_bytes())),
            );
        }
        Ok(TokenSet {
            admin,
            write: read_token_file(self.write.as_deref())?,
            read: read_token_file(self.read.as_deref())?,
        })
    }

    fn has_files(&self) -> bool {
        self.admin.is_some() || self.write.is_some() || self.read.is_some()
    }
}

fn read_token_file(path: Option<&Path>) -> Result<Vec<Digest>, Error> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::BadToken(format!("cannot read {}: {e}", path.display())))?;
    let tokens = kvapi::parse_tokens(&text)
        .map_err(|e| Error::BadToken(format!("{}: {e}", path.display())))?;
    Ok(tokens.into_iter().map(|t| digest(t.as_bytes())).collect())
}

/// Decides, for every request, whether its bearer token allows it.
pub struct Authorizer {
    sources: Sources,
    tokens: RwLock<Arc<TokenSet>>,
    metrics_auth: bool,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("sources", &self.sources)
            .field("metrics_auth", &self.metrics_auth)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// Reads the token files the config names. A named file that cannot be read or holds no token,
    /// and `--metrics-auth` with no token to use, are errors: the node must not start open by mistake.
    pub fn load(config: &NodeConfig) -> Result<Self, Error> {
        let sources = Sources {
            admin_literal: config.admin_token.clone(),
            admin: config.admin_token_file.clone(),
            write: config.write_token_file.clone(),
            read: config.read_token_file.clone(),
        };
        let tokens = sources.read()?;
        if config.metrics_auth && tokens.is_empty() {
            return Err(Error::BadToken(
                "--metrics-auth needs an admin, read or write token to be configured".into(),
            ));
        }
        Ok(Self {
            sources,
            tokens: RwLock::new(Arc::new(tokens)),
            metrics_auth: config.metrics_auth,
        })
    }

    /// Whether any token comes from a file, so that [`Authorizer::reload_forever`] has work to do.
    pub fn watches_files(&self) -> bool {
        self.sources.has_files()
    }

    /// Reads the token files again every [`RELOAD_INTERVAL`] and installs what changed. A file that
    /// became unreadable or empty keeps the tokens in force (and is reported once): a half-written
    /// Secret must not lock every client out or open the node.
    pub async fn reload_forever(self: Arc<Self>, mut stop: Stop) {
        let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_problem: Option<String> = None;
        while stop.unless_stopped(ticks.tick()).await.is_some() {
            match self.sources.read() {
                Ok(fresh) => {
                    last_problem = None;
                    let changed = **self.tokens.read() != fresh;
                    if changed {
                        tracing::info!(
                            admin = fresh.admin.len(),
                            write = fresh.write.len(),
                            read = fresh.read.len(),
                            "token files changed: new tokens in force"
                        );
                        *self.tokens.write() = Arc::new(fresh);
                    }
                }
                Err(e) => {
                    let problem = e.to_string();
                    if last_problem.as_ref() != Some(&problem) {
                        tracing::warn!(error = %problem, "token files not reloaded; the tokens in force stay");
                        last_problem = Some(problem);
                    }
                }
            }
        }
    }

    /// Whether a request with `method` on `path` and these headers may go on.
    fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Error> {
        let tokens = self.tokens.read().clone();
        let class = classify(path);
        let grant = || tokens.grant(bearer_token(headers));
        match class {
            RouteClass::Open => Ok(()),
            RouteClass::Metrics if !self.metrics_auth => Ok(()),
            RouteClass::Metrics => match grant() {
                Grant::None => Err(Error::Unauthorized),
                Grant::Read | Grant::Write | Grant::Admin => Ok(()),
            },
            RouteClass::Admin if tokens.is_empty() => Ok(()),
            RouteClass::Admin => match grant() {
                Grant::None => Err(Error::Unauthorized),
                Grant::Read | Grant::Write => Err(Error::Forbidden("use the admin routes")),
                Grant::Admin => Ok(()),
            },
            RouteClass::Data if !tokens.has_data_tokens() => Ok(()),
            RouteClass::Data => match grant() {
                Grant::None => Err(Error::Unauthorized),
                Grant::Read if *method != Method::GET && *method != Method::HEAD => {
                    Err(Error::Forbidden("write: it is read-only"))
                }
                Grant::Read | Grant::Write | Grant::Admin => Ok(()),
            },
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (scheme case-insensitive), if any.
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = kvapi::BEARER_PREFIX.len();
    if value.len() <= scheme
        || !value[..scheme].eq_ignore_ascii_case(kvapi::BEARER_PREFIX.as_bytes())
    {
        return None;
    }
    Some(value[scheme..].trim_ascii())
}

/// The layer in front of every route: refuses a request its token does not allow, with 401 (and
/// `WWW-Authenticate: Bearer`) or 403.
pub(super) async fn require(
    State(authorizer): State<Arc<Authorizer>>,
    request: Request,
    next: Next,
) -> Response {
    match authorizer.check(request.method(), request.uri().path(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            let mut response = error_response(&e);
            if let Error::Unauthorized = e {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn set(admin: &[&str], write: &[&str], read: &[&str]) -> TokenSet {
        let digests = |ts: &[&str]| ts.iter().map(|t| digest(t.as_bytes())).collect();
        TokenSet {
            admin: digests(admin),
            write: digests(write),
            read: digests(read),
        }
    }

    fn authorizer(tokens: TokenSet, metrics_auth: bool) -> Authorizer {
        Authorizer {
            sources: Sources::default(),
            tokens: RwLock::new(Arc::new(tokens)),
            metrics_auth,
        }
    }

    fn with_token(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(token).unwrap());
        headers
    }

    #[test]
    fn tokens_are_kept_and_compared_as_fixed_size_digests() {
        let tokens = set(&["a"], &[&"w".repeat(10_000)], &["r"]);
        assert!(
            [&tokens.admin, &tokens.write, &tokens.read]
                .iter()
                .all(|ds| ds.iter().all(|d| d.len() == 32))
        );
        assert_eq!(tokens.grant(Some(b"a")), Grant::Admin);
        assert_eq!(
            tokens.grant(Some("w".repeat(10_000).as_bytes())),
            Grant::Write
        );
        assert_eq!(tokens.grant(Some(b"r")), Grant::Read);
        assert_eq!(tokens.grant(Some(b"r ")), Grant::None);
        assert_eq!(tokens.grant(Some(b"")), Grant::None);
        assert_eq!(tokens.grant(None), Grant::None);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_required() {
        assert_eq!(bearer_token(&with_token("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer_token(&with_token("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer_token(&with_token("Basic abc")), None);
        assert_eq!(bearer_token(&with_token("Bearer ")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn the_rules() {
        let auth = authorizer(set(&["a"], &["w"], &["r"]), false);
        let ok = |m: Method, p: &str, t: &str| auth.check(&m, p, &with_token(t)).is_ok();
        let code = |m: Method, p: &str, t: &str| match auth.check(&m, p, &with_token(t)) {
            Ok(()) => "ok",
            Err(Error::Unauthorized) => "401",
            Err(Error::Forbidden(_)) => "403",
            Err(_) => "other",
        };
        assert!(ok(Method::GET, "/health/ready", "Bearer nope"));
        assert!(ok(Method::GET, "/metrics", "Bearer nope"));
        assert!(ok(Method::POST, crate::rpc::RPC_PATH, "Bearer nope"));
        assert_eq!(code(Method::GET, "/v1/kv/k", "Bearer nope"), "401");
        assert_eq!(code(Method::GET, "/v1/kv/k", "Bearer r"), "ok");
        assert_eq!(code(Method::PUT, "/v1/kv/k", "Bearer r"), "403");
        assert_eq!(code(Method::DELETE, "/v1/kv/k", "Bearer r"), "403");
        assert_eq!(code(Method::PUT, "/v1/kv/k", "Bearer w"), "ok");
        assert_eq!(code(Method::PUT, "/v1/kv/k", "Bearer a"), "ok");
        assert_eq!(code(Method::GET, "/admin/v1/status", "Bearer w"), "403");
        assert_eq!(code(Method::GET, "/admin/v1/status", "Bearer r"), "403");
        assert_eq!(code(Method::GET, "/admin/v1/status", "Bearer a"), "ok");
        assert_eq!(code(Method::GET, "/admin/v1/status", "Bearer x"), "401");
        assert_eq!(code(Method::GET, "/no/such/route", "Bearer x"), "401");

        let metrics = authorizer(set(&["a"], &[], &["r"]), true);
        assert!(
            metrics
                .check(&Method::GET, "/metrics", &HeaderMap::new())
                .is_err()
        );
        assert!(
            metrics
                .check(&Method::GET, "/metrics", &with_token("Bearer r"))
                .is_ok()
        );

        let admin_only = authorizer(set(&["a"], &[], &[]), false);
        assert!(
            admin_only
                .check(&Method::PUT, "/v1/kv/k", &HeaderMap::new())
                .is_ok()
        );
        assert!(
            admin_only
                .check(&Method::GET, "/admin/v1/ring", &HeaderMap::new())
                .is_err()
        );

        let none = authorizer(TokenSet::default(), false);
        assert!(
            none.check(&Method::PUT, "/admin/v1/cluster", &HeaderMap::new())
                .is_ok()
        );
    }
}
