//! Waiting for changes: a key read that answers once the key changes, and the prefix change feed.

use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::ACCEPT;

use super::{
    Client, Error, ReadOptions, ReadResult, context_header, context_value, is_json, key_url,
    parse_found, parse_not_found, server_error,
};
use kvapi::CONTEXT_HEADER;
use kvapi::watch::{FeedResponse, WATCH};

/// One answer of the change feed ([`Client::changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Where the next call resumes.
    pub cursor: String,
    /// Keys under the prefix that changed since the cursor sent; read them for their state.
    pub keys: Vec<Vec<u8>>,
}

impl Client {
    /// Reads `key` once its state is not covered by `context` (the context of the caller's last
    /// read; `None` waits for the key to exist), waiting up to `wait` (at most
    /// [`kvapi::watch::MAX_WAIT`]). `Ok(None)` when nothing changed within the wait (304).
    pub async fn watch(
        &self,
        key: &[u8],
        context: Option<&str>,
        wait: Duration,
        opts: &ReadOptions,
    ) -> Result<Option<ReadResult>, Error> {
        let mut query = opts.query();
        query.push(if query.is_empty() { '?' } else { '&' });
        query.push_str(&format!("wait={}ms", wait.as_millis()));
        let url = key_url(&self.base, key, &query)?;
        let mut request = self
            .http
            .get(url)
            .header(ACCEPT, "application/json")
            .timeout(wait.saturating_add(self.request_timeout(opts.timeout_ms)));
        if let Some(context) = context {
            request = request.header(CONTEXT_HEADER, context_value(context)?);
        }
        let response = request.send().await?;
        let status = response.status();
        let header_context = context_header(response.headers())?;
        let json = is_json(response.headers());
        let body = response.bytes().await?;
        match status {
            StatusCode::NOT_MODIFIED => Ok(None),
            StatusCode::OK | StatusCode::MULTIPLE_CHOICES => {
                parse_found(status, json, header_context, &body).map(Some)
            }
            StatusCode::NOT_FOUND => parse_not_found(header_context, &body).map(Some),
            other => Err(server_error(other, &body)),
        }
    }

    /// One call of the change feed of `prefix`: without `cursor` it answers at once with a cursor
    /// at the present (list the prefix after that call, then follow from the cursor); with one it
    /// answers the keys changed since, waiting up to `wait` for the first. A cursor the cluster no
    /// longer follows fails with status 410 (`cursor_gone`): list again and start a new feed.
    pub async fn changes(
        &self,
        prefix: &[u8],
        cursor: Option<&str>,
        wait: Duration,
    ) -> Result<Changes, Error> {
        // The prefix is percent-encoded like a key; a cursor is base64url, safe in a URL as it is.
        let mut url = format!("{}{WATCH}?prefix={}", self.base, super::encode_key(prefix));
        if let Some(cursor) = cursor {
            url.push_str(&format!(
                "&cursor={cursor}&wait={}ms",
                wait.as_millis().max(1)
            ));
        }
        let response = self
            .http
            .get(url)
            .timeout(wait.saturating_add(self.timeout))
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status != StatusCode::OK {
            return Err(server_error(status, &body));
        }
        let answer: FeedResponse = serde_json::from_slice(&body)
            .map_err(|e| Error::InvalidResponse(format!("feed answer: {e}")))?;
        let engine = base64::engine::general_purpose::STANDARD;
        let keys = answer
            .keys
            .iter()
            .map(|k| engine.decode(k))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::InvalidResponse(format!("feed key: {e}")))?;
        Ok(Changes {
            cursor: answer.cursor,
            keys,
        })
    }
}
