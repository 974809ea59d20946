//! Query-string parsing shared by the listing, batch and watch-feed routes: known names only, each at most
//! once, strict percent-decoding, bounded numbers.

use std::time::Duration;

use super::MAX_TIMEOUT_MS;
use crate::error::Error;

/// The `name=value` pairs of `query`, refusing a name outside `known` or given twice.
pub(super) fn pairs<'a>(
    query: Option<&'a str>,
    known: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, Error> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !known.contains(&name) {
            return Err(Error::BadParameter(format!(
                "unknown parameter {:?}; known: {}",
                name.chars().take(64).collect::<String>(),
                known.join(", ")
            )));
        }
        if out.iter().any(|(seen, _)| *seen == name) {
            return Err(Error::BadParameter(format!("{name} given twice")));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// `value` of parameter `name` as an integer in `low..=high`.
pub(super) fn number(name: &str, value: &str, low: u64, high: u64) -> Result<u64, Error> {
    let n: u64 = value.parse().map_err(|_| {
        Error::BadParameter(format!(
            "{name} must be an integer, got {:?}",
            value.chars().take(64).collect::<String>()
        ))
    })?;
    if n < low || n > high {
        return Err(Error::BadParameter(format!(
            "{name} must be between {low} and {high}, got {n}"
        )));
    }
    Ok(n)
}

/// `value` of parameter `name` as `true` or `false`.
pub(super) fn boolean(name: &str, value: &str) -> Result<bool, Error> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::BadParameter(format!("{name} must be true or false"))),
    }
}

/// The bytes of a percent-encoded `value` (`+` is a plus sign), refusing a broken escape.
pub(super) fn bytes(name: &str, value: &str) -> Result<Vec<u8>, Error> {
    match bad_escape(value) {
        Some(i) => Err(Error::BadParameter(format!(
            "{name} has an invalid percent-escape at byte {i}"
        ))),
        None => Ok(percent_encoding::percent_decode(value.as_bytes()).collect()),
    }
}

/// Where `text` holds a `%` not followed by two hex digits, if anywhere.
pub(super) fn bad_escape(text: &str) -> Option<usize> {
    let raw = text.as_bytes();
    raw.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .map(|(i, _)| i)
        .find(|&i| {
            !raw.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        })
}

/// `value` of `r` or `w` as a quorum in 1..=`replication`.
pub(super) fn quorum(name: &str, value: &str, replication: u32) -> Result<u32, Error> {
    Ok(number(name, value, 1, u64::from(replication))? as u32)
}

/// `value` of `timeout_ms` as a deadline of 1..=[`MAX_TIMEOUT_MS`] milliseconds.
pub(super) fn timeout(name: &str, value: &str) -> Result<Duration, Error> {
    Ok(Duration::from_millis(number(
        name,
        value,
        1,
        MAX_TIMEOUT_MS,
    )?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_values_and_escapes_are_checked() {
        let known = ["a", "b"];
        assert_eq!(
            pairs(Some("a=1&b"), &known).unwrap(),
            vec![("a", "1"), ("b", "")]
        );
        assert!(pairs(Some("a=1&a=2"), &known).is_err());
        assert!(pairs(Some("c=1"), &known).is_err());
        assert_eq!(number("n", "5", 1, 9).unwrap(), 5);
        for bad in ["0", "10", "-1", "x", ""] {
            assert!(number("n", bad, 1, 9).is_err(), "{bad}");
        }
        assert_eq!(bytes("p", "a%2Fb+%00").unwrap(), b"a/b+\0");
        assert!(bytes("p", "a%2").is_err() && bytes("p", "%zz").is_err());
        assert!(boolean("v", "true").unwrap() && boolean("v", "yes").is_err());
    }
}
