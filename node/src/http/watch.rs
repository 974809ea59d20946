//! Watch routes: a key read that waits for a change (`GET /v1/kv/{key}?wait=`), and the prefix change
//! feed (`GET /v1/watch`).
//!
//! A key watch re-reads the key at R whenever this node's change log names the key, at the key's next
//! expiry, and at least every [`RECHECK`] (the node may hold no replica of the key, so a write made
//! through another node may reach it only through that re-read), and answers as soon as the state is
//! not covered by the context the client sent; at the end of the wait it answers 304.
//!
//! The feed gathers every member's change log ([`crate::watch`]): its cursor is one log position per
//! member, so a change applied by any replica after the cursor is reported, whatever happened between
//! two calls. A position a member no longer holds answers 410 `cursor_gone`: the caller lists again.
//! Every waiting request holds one of the node's `--max-watchers` places.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kvapi::watch::{DEFAULT_FEED_KEYS, FeedResponse, MAX_FEED_KEYS, MAX_WAIT};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::kv::read_answer;
use super::{Node, error_response, insert_context};
use crate::causality::{Dot, SiblingSet, VersionVector};
use crate::error::Error;
use crate::replica::now_ms;
use crate::rpc::{RequestBody, ResponseBody};
use crate::watch::{ChangeLog, Position, START, Since};

/// Longest a key watch goes without re-reading the key.
pub const RECHECK: Duration = Duration::from_secs(1);
/// Extra time a feed gives a member's answer past the wait.
const PEER_MARGIN: Duration = Duration::from_secs(2);
/// Most members one cursor may name.
const MAX_CURSOR_MEMBERS: usize = 1024;

/// Parses `wait`: a humantime duration within 1ms..=[`MAX_WAIT`].
pub fn parse_wait(text: &str) -> Result<Duration, Error> {
    let wait = humantime::parse_duration(text).map_err(|e| {
        Error::BadParameter(format!(
            "wait must be a duration such as 30s, got {text:?}: {e}"
        ))
    })?;
    if wait.is_zero() || wait > MAX_WAIT {
        return Err(Error::BadParameter(format!(
            "wait must be between 1ms and {}, got {}",
            humantime::format_duration(MAX_WAIT),
            humantime::format_duration(wait)
        )));
    }
    Ok(wait)
}

/// A key read that waits for a change.
pub struct KeyWatch {
    /// The key.
    pub key: Arc<[u8]>,
    /// The context the client last saw (empty: any state of the key is new).
    pub seen: VersionVector,
    /// Read quorum of each read.
    pub r: Option<u32>,
    /// How long to wait for a change.
    pub wait: Duration,
    /// Deadline of each read.
    pub read_timeout: Duration,
}

/// Answers `watch` as a read once the key's state is not covered by `watch.seen`, or a value the
/// client saw expires; 304 with the client's context when the wait ends first, or the last read's
/// error if it failed.
pub(super) async fn watch_key(
    node: &Node,
    watch: KeyWatch,
    wants_json: bool,
) -> Result<Response, Error> {
    let _place = node.watchers.admit()?;
    let until = Instant::now() + watch.wait;
    let log = node.replica.changes();
    let mut wake = log.subscribe();
    // The values shown at the first read whose context the client's covers: the client has seen
    // them, so one of them expiring is a change too.
    let mut shown: Option<Vec<Dot>> = None;
    loop {
        // Taken before the read: a change landing during it is still seen below.
        let mut position = log.head();
        let read_at = now_ms();
        let read = node
            .coordinator
            .read(
                watch.key.clone(),
                watch.r,
                Instant::now() + watch.read_timeout,
            )
            .await;
        let mut next_expiry = None;
        let failure = match read {
            Ok(set) => {
                let seen_now = set.as_seen_at(read_at);
                let visible: Vec<Dot> = seen_now.live().map(|s| s.dot.clone()).collect();
                let expired = shown.as_ref().is_some_and(|before| *before != visible);
                if !watch.seen.descends(set.context()) || expired {
                    return Ok(read_answer(node, &watch.key, &seen_now, wants_json));
                }
                shown.get_or_insert(visible);
                next_expiry = expiry_after(&set, read_at);
                None
            }
            Err(e) => Some(e),
        };
        if Instant::now() >= until {
            return match failure {
                Some(e) => Err(e),
                None => Ok(not_modified(node, &watch)),
            };
        }
        let mut wake_at = until.min(Instant::now() + RECHECK);
        if let Some(at) = next_expiry {
            let in_ms = at.saturating_sub(now_ms());
            wake_at = wake_at.min(Instant::now() + Duration::from_millis(in_ms));
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(wake_at) => break,
                changed = wake.changed() => {
                    if changed.is_err() || log_names(log, &mut position, &watch.key) {
                        break;
                    }
                }
            }
        }
    }
}

/// Whether `log` names `key` after `position`, which moves past what was read (a position the log
/// lost counts as naming it: the key may have changed).
fn log_names(log: &ChangeLog, position: &mut Position, key: &[u8]) -> bool {
    loop {
        match log.since(*position, key, MAX_FEED_KEYS) {
            Since::Lost => return true,
            Since::Changes(keys, next) => {
                *position = next;
                if keys.iter().any(|k| **k == *key) {
                    return true;
                }
                if keys.len() < MAX_FEED_KEYS {
                    return false;
                }
            }
        }
    }
}

/// The earliest expiry of a live sibling of `set` after `now`.
fn expiry_after(set: &SiblingSet, now: u64) -> Option<u64> {
    set.siblings()
        .iter()
        .filter(|s| !s.is_tombstone())
        .filter_map(|s| s.expires_at_ms)
        .filter(|&at| at > now)
        .min()
}

fn not_modified(node: &Node, watch: &KeyWatch) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    let context = node.replica.contexts().encode(&watch.key, &watch.seen);
    insert_context(response.headers_mut(), &context);
    response
}

/// One member's position in each member's change log.
type Cursor = BTreeMap<String, Position>;

/// Query of a feed request, validated.
#[derive(Debug, Default, PartialEq, Eq)]
struct FeedParams {
    prefix: Vec<u8>,
    cursor: Option<Cursor>,
    wait: Option<Duration>,
    limit: Option<usize>,
}

/// `GET /v1/watch?prefix=P[&cursor=C][&wait=W][&limit=L]`.
pub(super) async fn feed(State(node): State<Arc<Node>>, request: Request) -> Response {
    if request.method() != Method::GET {
        return error_response(&Error::MethodNotAllowed {
            method: request.method().to_string(),
            allow: "GET",
        });
    }
    match answer_feed(&node, request.uri().query()).await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn answer_feed(node: &Node, query: Option<&str>) -> Result<FeedResponse, Error> {
    let params = parse_feed(query)?;
    let limit = params.limit.unwrap_or(DEFAULT_FEED_KEYS);
    let view = node.membership.view();
    let members: Vec<String> = view.all_members().iter().map(|m| m.id.clone()).collect();
    let Some(cursor) = params.cursor else {
        // A new feed starts at every member's head: list the prefix after this, then follow.
        let heads = gather(
            node,
            &members,
            &params.prefix,
            &Cursor::new(),
            Duration::ZERO,
            0,
        )
        .await?;
        return Ok(FeedResponse {
            cursor: encode_cursor(&heads.0),
            keys: Vec::new(),
        });
    };
    let _place = node.watchers.admit()?;
    let wait = params.wait.unwrap_or(Duration::ZERO);
    let (positions, keys) = gather(node, &members, &params.prefix, &cursor, wait, limit).await?;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut unique: Vec<Vec<u8>> = keys;
    unique.sort();
    unique.dedup();
    Ok(FeedResponse {
        cursor: encode_cursor(&positions),
        keys: unique.iter().map(|k| engine.encode(k)).collect(),
    })
}

/// Asks every member for its changes after its position in `cursor` (a member it does not name
/// starts at the beginning of its log; with `limit` 0 every member answers its head), and returns
/// the new positions and the keys, as soon as one member has changes or the wait is over. A member
/// that does not answer keeps its position, so its changes come in a later call.
async fn gather(
    node: &Node,
    members: &[String],
    prefix: &[u8],
    cursor: &Cursor,
    wait: Duration,
    limit: usize,
) -> Result<(Cursor, Vec<Vec<u8>>), Error> {
    let (tx, mut rx) = mpsc::channel(members.len().max(1));
    let me = node.membership.node_id().to_string();
    let mut asks = AbortOnDrop(Vec::new());
    for member in members {
        let after = match (limit, cursor.get(member)) {
            (0, _) => None,
            (_, Some(position)) => Some(*position),
            (_, None) => Some(START),
        };
        let body = RequestBody::Changes {
            prefix: prefix.to_vec(),
            after,
            wait_ms: wait.as_millis() as u64,
            limit: limit as u32,
        };
        let tx = tx.clone();
        let member = member.clone();
        asks.0.push(if member == me {
            let replica = node.replica.clone();
            tokio::spawn(async move {
                let answer = local_changes(replica.changes(), body).await;
                let _ = tx.send((member, answer)).await;
            })
        } else {
            let rpc = node.rpc.clone();
            tokio::spawn(async move {
                let answer = match rpc.call(&member, body, wait + PEER_MARGIN).await {
                    Ok(ResponseBody::Changes { keys, position }) => Ok((keys, position)),
                    Ok(other) => Err(other.unexpected()),
                    Err(e) => Err(e),
                };
                let _ = tx.send((member, answer)).await;
            })
        });
    }
    drop(tx);
    let mut positions: Cursor = cursor
        .iter()
        .filter(|(m, _)| members.contains(m))
        .map(|(m, p)| (m.clone(), *p))
        .collect();
    let mut keys = Vec::new();
    while let Some((member, answer)) = rx.recv().await {
        match answer {
            Ok((changed, position)) => {
                positions.insert(member, position);
                keys.extend(changed);
            }
            Err(Error::CursorGone(m)) => return Err(Error::CursorGone(m)),
            Err(Error::Remote { status: 410, body }) => {
                return Err(Error::CursorGone(body.message));
            }
            Err(e) => tracing::debug!(%member, error = %e, "no changes from member"),
        }
        if !keys.is_empty() {
            // Answers already in are kept; members still waiting keep their positions.
            while let Ok((member, Ok((changed, position)))) = rx.try_recv() {
                positions.insert(member, position);
                keys.extend(changed);
            }
            break;
        }
    }
    Ok((positions, keys))
}

/// Stops the members' asks still waiting once a feed has its answer: their positions were not
/// advanced, so nothing they would have said is lost.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for ask in &self.0 {
            ask.abort();
        }
    }
}

/// Answers a `Changes` request from this node's `log`: the changes after the position (its head
/// when none), waiting up to the request's wait for the first.
pub(super) async fn local_changes(
    log: &ChangeLog,
    body: RequestBody,
) -> Result<(Vec<Vec<u8>>, Position), Error> {
    let RequestBody::Changes {
        prefix,
        after,
        wait_ms,
        limit,
    } = body
    else {
        return Err(Error::Internal("not a changes request".into()));
    };
    let until = Instant::now() + Duration::from_millis(wait_ms).min(MAX_WAIT);
    let mut wake = log.subscribe();
    let Some(mut position) = after else {
        return Ok((Vec::new(), log.head()));
    };
    loop {
        match log.since(position, &prefix, (limit as usize).min(MAX_FEED_KEYS)) {
            Since::Lost => {
                return Err(Error::CursorGone(
                    "this node restarted or dropped changes since the cursor".into(),
                ));
            }
            Since::Changes(keys, next) => {
                position = next;
                if !keys.is_empty() || Instant::now() >= until {
                    return Ok((keys.iter().map(|k| k.to_vec()).collect(), position));
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            changed = wake.changed() => {
                if changed.is_err() {
                    return Ok((Vec::new(), position));
                }
            }
        }
    }
}

fn encode_cursor(cursor: &Cursor) -> String {
    let bytes = postcard::to_allocvec(cursor).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_cursor(text: &str) -> Result<Cursor, Error> {
    let bad =
        |why: String| Error::BadParameter(format!("cursor is not one this cluster issued: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| bad(e.to_string()))?;
    let (cursor, rest): (Cursor, &[u8]) =
        postcard::take_from_bytes(&bytes).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} trailing bytes", rest.len())));
    }
    if cursor.len() > MAX_CURSOR_MEMBERS {
        return Err(bad(format!("{} members", cursor.len())));
    }
    Ok(cursor)
}

/// The feed's parameters.
const FEED_PARAMS: [&str; 4] = ["prefix", "cursor", "wait", "limit"];

fn parse_feed(query: Option<&str>) -> Result<FeedParams, Error> {
    let mut params = FeedParams::default();
    for (name, value) in super::query::pairs(query, &FEED_PARAMS)? {
        match name {
            "prefix" => {
                params.prefix = super::query::bytes(name, value)?;
                if params.prefix.len() > kvapi::MAX_KEY_BYTES {
                    return Err(Error::BadParameter(format!(
                        "prefix must be at most {} bytes",
                        kvapi::MAX_KEY_BYTES
                    )));
                }
            }
            "cursor" => params.cursor = Some(decode_cursor(value)?),
            "wait" => params.wait = Some(parse_wait(value)?),
            _ => {
                params.limit =
                    Some(super::query::number(name, value, 1, MAX_FEED_KEYS as u64)? as usize)
            }
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn feed_parameters_are_validated() {
        let mut cursor = Cursor::new();
        cursor.insert("kv-0".into(), Position { log: 3, seq: 9 });
        let token = encode_cursor(&cursor);
        let query = format!("prefix=a%2F&cursor={token}&wait=2s&limit=5");
        assert_eq!(
            parse_feed(Some(&query)).unwrap(),
            FeedParams {
                prefix: b"a/".to_vec(),
                cursor: Some(cursor),
                wait: Some(Duration::from_secs(2)),
                limit: Some(5),
            }
        );
        for bad in [
            "cursor=!!",
            "cursor=AAAA",
            "wait=61s",
            "wait=0s",
            "limit=0",
            "limit=10001",
            "prefix=a&prefix=b",
            "colour=red",
        ] {
            assert!(
                matches!(parse_feed(Some(bad)), Err(Error::BadParameter(_))),
                "{bad} accepted"
            );
        }
    }
}
