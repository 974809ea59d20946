//! Time to live of a written value: the `ttl` query parameter and its bounds.

use std::time::Duration;

/// Shortest time to live a write may ask for.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest time to live a write may ask for: 365 days.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// The `ttl` value that asks for no expiry, overriding a node's default.
pub const NO_TTL: &str = "none";

/// A `ttl` as a write asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The value never expires ([`NO_TTL`]).
    Never,
    /// The value reads as deleted this long after the write.
    After(Duration),
}

impl Expiry {
    /// The time to live, `None` for [`Expiry::Never`].
    pub fn duration(self) -> Option<Duration> {
        match self {
            Expiry::Never => None,
            Expiry::After(ttl) => Some(ttl),
        }
    }
}

impl std::fmt::Display for Expiry {
    /// The `ttl` parameter's text: [`NO_TTL`] or milliseconds (`1500ms`), which [`parse`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expiry::Never => f.write_str(NO_TTL),
            Expiry::After(ttl) => write!(f, "{}ms", ttl.as_millis()),
        }
    }
}

/// Parses a time to live as the `ttl` parameter takes it: a humantime duration (`30s`, `2h 5m`)
/// within [`MIN_TTL`]`..=`[`MAX_TTL`], or [`NO_TTL`] for none. The error says what is accepted.
pub fn parse(text: &str) -> Result<Expiry, String> {
    if text == NO_TTL {
        return Ok(Expiry::Never);
    }
    let ttl = humantime::parse_duration(text).map_err(|e| {
        format!("ttl must be a duration such as 30s or 2h, or {NO_TTL}, got {text:?}: {e}")
    })?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(format!(
            "ttl must be between {} and {}, got {}",
            humantime::format_duration(MIN_TTL),
            humantime::format_duration(MAX_TTL),
            humantime::format_duration(ttl)
        ));
    }
    Ok(Expiry::After(ttl))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ttls_parse_within_bounds() {
        assert_eq!(
            parse("30s").unwrap(),
            Expiry::After(Duration::from_secs(30))
        );
        assert_eq!(parse("1s").unwrap(), Expiry::After(MIN_TTL));
        assert_eq!(parse("365days").unwrap(), Expiry::After(MAX_TTL));
        assert_eq!(parse("none").unwrap(), Expiry::Never);
        for expiry in [Expiry::Never, Expiry::After(Duration::from_millis(1500))] {
            assert_eq!(parse(&expiry.to_string()).unwrap(), expiry, "round trip");
        }
        for bad in ["", "soon", "999ms", "0s", "366days", "-1s", "30"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
