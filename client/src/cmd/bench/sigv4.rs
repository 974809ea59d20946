//! AWS Signature Version 4 (header form), for Garage's K2V API (`kvctl bench --target garage`).
//!
//! Hand-written over `ring` (already the TLS provider) rather than `aws-sigv4`, which brings the AWS
//! SDK's runtime crates for what is two HMAC chains and a canonical string.

use ring::{digest, hmac};

/// Access key id and secret.
#[derive(Clone)]
pub(super) struct Credentials {
    /// Access key id.
    pub(super) access_key: String,
    /// Secret key.
    pub(super) secret_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "Credentials({})", self.access_key)
    }
}

/// One request to sign.
#[derive(Debug)]
pub(super) struct Request<'a> {
    /// `GET`, `PUT`, ...
    pub(super) method: &'a str,
    /// The canonical (already URI-encoded) path.
    pub(super) path: &'a str,
    /// The canonical query string (encoded, sorted by name).
    pub(super) query: &'a str,
    /// Headers to sign: lowercase names, any order.
    pub(super) headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body.
    pub(super) payload_sha256: &'a str,
    /// `YYYYMMDDTHHMMSSZ`, the value of `x-amz-date`.
    pub(super) amz_date: &'a str,
}

/// Lowercase hex.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of `data`.
pub(super) fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// HMAC-SHA256.
fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// The `Authorization` header value of `request`.
pub(super) fn authorization(
    credentials: &Credentials,
    region: &str,
    service: &str,
    request: &Request<'_>,
) -> String {
    let mut headers: Vec<(&str, &str)> = request.headers.to_vec();
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{}\n", value.trim()))
        .collect();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method, request.path, request.query, request.payload_sha256
    );
    let date = request.amz_date.get(..8).unwrap_or(request.amz_date);
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        request.amz_date,
        sha256_hex(canonical_request.as_bytes())
    );
    let key = [date, region, service, "aws4_request"].iter().fold(
        format!("AWS4{}", credentials.secret_key).into_bytes(),
        |key, part| hmac_sha256(&key, part.as_bytes()).as_ref().to_vec(),
    );
    let signature = hex(hmac_sha256(&key, string_to_sign.as_bytes()).as_ref());
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key
    )
}

/// `x-amz-date` of `time`: `YYYYMMDDTHHMMSSZ`.
pub(super) fn amz_date(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace(['-', ':'], "")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The SHA-256 of an empty body.
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn signs_the_aws_test_suite_get_vanilla_request() {
        // AWS Signature Version 4 test suite, get-vanilla.
        let credentials = Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        };
        let request = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &[
                ("x-amz-date", "20150830T123600Z"),
                ("host", "example.amazonaws.com"),
            ],
            payload_sha256: EMPTY,
            amz_date: "20150830T123600Z",
        };
        assert_eq!(
            authorization(&credentials, "us-east-1", "service", &request),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn signs_the_s3_documentation_get_object_example() {
        // Amazon S3 API reference, "Signature calculations for the Authorization header", GET Object.
        let credentials = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        };
        let request = Request {
            method: "GET",
            path: "/test.txt",
            query: "",
            headers: &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_sha256: EMPTY,
            amz_date: "20130524T000000Z",
        };
        let header = authorization(&credentials, "us-east-1", "s3", &request);
        assert!(
            header.ends_with(
                "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
                 Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            ),
            "{header}"
        );
        assert!(!format!("{credentials:?}").contains("wJal"));
    }

    #[test]
    fn dates_and_digests_have_the_aws_format() {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160);
        assert_eq!(amz_date(time), "20150830T123600Z");
        assert_eq!(sha256_hex(b""), EMPTY);
    }
}
