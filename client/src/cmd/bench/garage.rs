//! `kvctl bench --target garage`: Garage's K2V API, SigV4-signed (region `garage`, service `k2v`):
//! `InsertItem` (`PUT /BUCKET/KEY?sort_key=v`) and `ReadItem` (`GET`, JSON answer). Each bench key is its
//! own partition key, so the load spreads over Garage's partitions as it does over kvcluster's. A write
//! carries the causality token of the same client's last read or write of the key, as kvcluster's
//! writes carry their context, so the load does not pile up concurrent values.

use std::collections::HashMap;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

use super::sigv4::{self, Credentials};
use super::target::{Got, http_error_kind};

/// The header of K2V's causality token.
const CAUSALITY: &str = "x-garage-causality-token";
/// The sort key of every bench item.
const SORT_KEY: &str = "v";
/// The SigV4 region of Garage's default configuration.
const REGION: &str = "garage";

/// What every K2V request of a run needs.
#[derive(Debug)]
pub(super) struct K2v {
    /// The HTTP client.
    pub(super) http: reqwest::Client,
    /// `http://host:port` of each node's K2V API.
    pub(super) bases: Vec<String>,
    /// The bucket.
    pub(super) bucket: String,
    /// The key the requests are signed with.
    pub(super) credentials: Credentials,
}

/// The path and host of one item's request at `base`.
fn target(base: &str, bucket: &str, key: &str) -> (String, String) {
    let host = base.strip_prefix("http://").unwrap_or(base).to_owned();
    // Bench keys and bucket names are URI-safe as they are (letters, digits, `-`).
    (format!("/{bucket}/{key}"), host)
}

/// The signed headers of one request.
fn signed(
    k2v: &K2v,
    method: &str,
    path: &str,
    host: &str,
    body: &[u8],
) -> Result<HeaderMap, String> {
    let date = sigv4::amz_date(SystemTime::now());
    let payload = sigv4::sha256_hex(body);
    let query = format!("sort_key={SORT_KEY}");
    let headers = [
        ("host", host),
        ("x-amz-content-sha256", payload.as_str()),
        ("x-amz-date", date.as_str()),
    ];
    let authorization = sigv4::authorization(
        &k2v.credentials,
        REGION,
        "k2v",
        &sigv4::Request {
            method,
            path,
            query: &query,
            headers: &headers,
            payload_sha256: &payload,
            amz_date: &date,
        },
    );
    let mut map = HeaderMap::new();
    for (name, value) in [
        ("x-amz-content-sha256", payload.as_str()),
        ("x-amz-date", date.as_str()),
        ("authorization", authorization.as_str()),
    ] {
        let value = HeaderValue::from_str(value).map_err(|_| "client".to_owned())?;
        map.insert(name, value);
    }
    Ok(map)
}

/// Live values of a `ReadItem` JSON answer (tombstones are `null`).
pub(super) fn live_values(body: &[u8]) -> Result<u64, String> {
    let values: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| format!("invalid response: {e}"))?;
    for value in values.iter().filter_map(Value::as_str) {
        STANDARD
            .decode(value)
            .map_err(|e| format!("invalid response: value is not base64: {e}"))?;
    }
    Ok(values.iter().filter(|v| !v.is_null()).count() as u64)
}

/// Reads `key` (index `index`) at `base`, keeping its causality token.
pub(super) async fn get(
    k2v: &K2v,
    base: &str,
    key: &str,
    index: u64,
    tokens: &mut HashMap<u64, String>,
) -> Result<Got, String> {
    let (path, host) = target(base, &k2v.bucket, key);
    let headers = signed(k2v, "GET", &path, &host, b"")?;
    let response = k2v
        .http
        .get(format!("{base}{path}?sort_key={SORT_KEY}"))
        .headers(headers)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| http_error_kind(&e))?;
    let status = response.status().as_u16();
    if let Some(token) = response
        .headers()
        .get(CAUSALITY)
        .and_then(|v| v.to_str().ok())
    {
        tokens.insert(index, token.to_owned());
    }
    let body = response.bytes().await.map_err(|e| http_error_kind(&e))?;
    match status {
        200 => match live_values(&body)? {
            0 => Ok(Got::Missing),
            live => Ok(Got::Found { live }),
        },
        204 | 404 => Ok(Got::Missing),
        other => Err(format!("{other}")),
    }
}

/// Inserts `value` under `key` at `base`, with the key's last causality token.
pub(super) async fn put(
    k2v: &K2v,
    base: &str,
    key: &str,
    value: bytes::Bytes,
    token: Option<&str>,
) -> Result<(), String> {
    let (path, host) = target(base, &k2v.bucket, key);
    let headers = signed(k2v, "PUT", &path, &host, &value)?;
    let mut request = k2v
        .http
        .put(format!("{base}{path}?sort_key={SORT_KEY}"))
        .headers(headers)
        .body(value);
    if let Some(token) = token {
        request = request.header(CAUSALITY, token);
    }
    let response = request.send().await.map_err(|e| http_error_kind(&e))?;
    let status = response.status();
    // Read the body so the connection can be reused.
    response.bytes().await.map_err(|e| http_error_kind(&e))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{}", status.as_u16()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn read_answers_count_live_values() {
        assert_eq!(live_values(br#"["dmFs"]"#).unwrap(), 1);
        assert_eq!(live_values(br#"["dmFs", null, "eA=="]"#).unwrap(), 2);
        assert_eq!(live_values(br#"[null]"#).unwrap(), 0);
        assert!(live_values(b"{}").is_err());
        assert!(live_values(br#"["***"]"#).is_err());
    }

    #[test]
    fn requests_are_signed_for_k2v_in_region_garage() {
        let k2v = K2v {
            http: super::super::target::plain_http(std::time::Duration::from_secs(1)).unwrap(),
            bases: vec!["http://127.0.0.1:3904".into()],
            bucket: "bench".into(),
            credentials: Credentials {
                access_key: "GK1".into(),
                secret_key: "s".into(),
            },
        };
        let (path, host) = target(&k2v.bases[0], &k2v.bucket, "bench-000001");
        assert_eq!(
            (path.as_str(), host.as_str()),
            ("/bench/bench-000001", "127.0.0.1:3904")
        );
        let headers = signed(&k2v, "PUT", &path, &host, b"x").unwrap();
        let authorization = headers["authorization"].to_str().unwrap();
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=GK1/"),
            "{authorization}"
        );
        assert!(authorization.contains("/garage/k2v/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="));
        assert_eq!(
            headers["x-amz-content-sha256"],
            sigv4::sha256_hex(b"x").as_str()
        );
    }
}
