//! `--output`: what kvctl prints on stdout, text for people or JSON Lines for programs.
//!
//! With `--output json` every result is one JSON object per line on stdout: a single object for
//! a command with one answer, one per item for those that stream (list, watch, the members of a
//! backup or restore, the steps of a cluster change). Errors are one `{"error": ...}` object on
//! stderr. Progress lines meant for people stay text on stderr.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::stdout_bytes;

/// The output format of every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum Output {
    /// Text for people.
    #[default]
    Text,
    /// JSON Lines: one object per result line on stdout, errors as an object on stderr.
    Json,
}

/// The format chosen on the command line, set once before any command runs.
static CHOSEN: OnceLock<Output> = OnceLock::new();

/// Chooses the format for the rest of the process; a second choice is ignored.
pub(crate) fn choose(output: Output) {
    let _ = CHOSEN.set(output);
}

/// True when the results are to be JSON.
pub(crate) fn json() -> bool {
    CHOSEN.get().copied().unwrap_or_default() == Output::Json
}

/// Writes `value` as one line of JSON on stdout.
pub(crate) fn line(value: &Value) -> std::io::Result<()> {
    let mut text = value.to_string();
    text.push('\n');
    stdout_bytes(text.as_bytes())
}

/// Writes one result on stdout: the `text` line, or `object` as a JSON line.
pub(crate) fn emit(text: &str, object: Value) -> std::io::Result<()> {
    if json() {
        line(&object)
    } else {
        stdout_bytes(format!("{text}\n").as_bytes())
    }
}

/// Writes `value` as one line of JSON on stderr (an error); a failure to do so is ignored.
pub(crate) fn error_line(value: &Value) {
    crate::stderr_line(&value.to_string());
}

/// Keys and values are bytes: `name` holds them as a string when they are UTF-8, and
/// `name_base64` holds their base64 otherwise, so no byte is lost or altered.
pub(crate) fn put_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(name.to_owned(), Value::from(text)),
        Err(_) => object.insert(
            format!("{name}_base64"),
            Value::from(STANDARD.encode(bytes)),
        ),
    };
}

/// An object holding only `name` as bytes (see [`put_bytes`]).
pub(crate) fn bytes_object(name: &str, bytes: &[u8]) -> Map<String, Value> {
    let mut object = Map::new();
    put_bytes(&mut object, name, bytes);
    object
}

/// A read (of `get` or `watch`) as one object: `{"key", "found", "siblings": [{"value"}],
/// "context"}`, the live values only (a deleted key is not found, with the context of its
/// tombstones).
pub(crate) fn read(key: &[u8], read: &kvclient::ReadResult) -> Value {
    let mut object = bytes_object("key", key);
    let siblings: Vec<Value> = read
        .live()
        .map(|s| Value::Object(bytes_object("value", &s.value)))
        .collect();
    object.insert("found".into(), Value::from(!siblings.is_empty()));
    object.insert("siblings".into(), Value::Array(siblings));
    object.insert(
        "context".into(),
        read.context().map_or(Value::Null, Value::from),
    );
    Value::Object(object)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_text_when_utf8_and_base64_otherwise() {
        let text = bytes_object("key", "caf\u{e9}".as_bytes());
        assert_eq!(Value::Object(text), serde_json::json!({"key": "caf\u{e9}"}));
        let binary = bytes_object("value", &[0xff, 0x00, 0x41]);
        assert_eq!(
            Value::Object(binary),
            serde_json::json!({"value_base64": "/wBB"})
        );
        let empty = bytes_object("value", b"");
        assert_eq!(Value::Object(empty), serde_json::json!({"value": ""}));
    }
}
