//! `kvctl bench --target etcd`: etcd's v3 JSON gateway, `POST /v3/kv/put` and `POST /v3/kv/range`
//! (linearizable, etcd's default), with keys and values base64-encoded as the gateway wants.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::target::{Got, http_error_kind};

/// The body of a put.
pub(super) fn put_body(key: &str, value_b64: &str) -> String {
    json!({ "key": STANDARD.encode(key), "value": value_b64 }).to_string()
}

/// The body of a single-key range.
pub(super) fn range_body(key: &str) -> String {
    json!({ "key": STANDARD.encode(key) }).to_string()
}

/// What a range answer says about the key: found (with its value) or absent.
pub(super) fn parse_range(body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid response: {e}"))?;
    match answer.get("kvs").and_then(Value::as_array) {
        None => Ok(None),
        Some(kvs) => match kvs.first() {
            None => Ok(None),
            Some(kv) => {
                // An empty value is left out of the JSON.
                let value = kv.get("value").and_then(Value::as_str).unwrap_or("");
                STANDARD
                    .decode(value)
                    .map(Some)
                    .map_err(|e| format!("invalid response: value is not base64: {e}"))
            }
        },
    }
}

/// Sends one gateway call and returns the answer's body, or the error kind.
async fn call(http: &reqwest::Client, url: String, body: String) -> Result<bytes::Bytes, String> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| http_error_kind(&e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| http_error_kind(&e))?;
    if !status.is_success() {
        return Err(format!("{}", status.as_u16()));
    }
    Ok(body)
}

/// Puts `key` at the etcd member `base` (`http://host:port`).
pub(super) async fn put(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    value_b64: &str,
) -> Result<(), String> {
    call(http, format!("{base}/v3/kv/put"), put_body(key, value_b64))
        .await
        .map(drop)
}

/// Reads `key` from the etcd member `base`.
pub(super) async fn get(http: &reqwest::Client, base: &str, key: &str) -> Result<Got, String> {
    let body = call(http, format!("{base}/v3/kv/range"), range_body(key)).await?;
    Ok(match parse_range(&body)? {
        Some(_) => Got::Found { live: 1 },
        None => Got::Missing,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_base64_keys_and_values() {
        let put: Value = serde_json::from_str(&put_body("bench-000001", "dmFs")).unwrap();
        assert_eq!(put, json!({"key": "YmVuY2gtMDAwMDAx", "value": "dmFs"}));
        let range: Value = serde_json::from_str(&range_body("k")).unwrap();
        assert_eq!(range, json!({"key": "aw=="}));
    }

    #[test]
    fn range_answers_say_found_or_absent() {
        // As etcd 3.4's gateway answers (int64 fields as strings).
        let found = br#"{"header":{"cluster_id":"1","member_id":"2","revision":"5","raft_term":"2"},
            "kvs":[{"key":"aw==","create_revision":"5","mod_revision":"5","version":"1","value":"dmFs"}],
            "count":"1"}"#;
        assert_eq!(parse_range(found).unwrap(), Some(b"val".to_vec()));
        let absent =
            br#"{"header":{"cluster_id":"1","member_id":"2","revision":"5","raft_term":"2"}}"#;
        assert_eq!(parse_range(absent).unwrap(), None);
        let empty_value = br#"{"kvs":[{"key":"aw=="}],"count":"1"}"#;
        assert_eq!(parse_range(empty_value).unwrap(), Some(vec![]));
        assert!(parse_range(b"not json").is_err());
        assert!(parse_range(br#"{"kvs":[{"value":"***"}]}"#).is_err());
    }
}
