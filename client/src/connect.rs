//! How a [`Client`] connects: its deadline, the bearer token it sends and the CA it trusts for https.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};

use crate::{CONNECT_TIMEOUT, Client, DEFAULT_TIMEOUT, Error, normalise_endpoint};

/// Settings of a [`Client`] beyond its endpoint: the deadline, the bearer token and the CA to trust.
#[derive(Clone)]
pub struct ClientBuilder {
    endpoint: String,
    timeout: Duration,
    token: Option<String>,
    ca_cert_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(Vec::len))
            .finish()
    }
}

impl ClientBuilder {
    pub(crate) fn new(endpoint: &str) -> Self {
        ClientBuilder {
            endpoint: endpoint.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            token: None,
            ca_cert_pem: None,
        }
    }

    /// Overall deadline of requests that set no `timeout_ms` (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bearer token sent with every request (`Authorization: Bearer TOKEN`), read with
    /// [`kvapi::parse_tokens`] like the node reads its token files: surrounding whitespace is trimmed,
    /// and the text must hold exactly one token.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// PEM certificates of the CA(s) that sign the nodes' https certificates: the only ones trusted.
    /// Without it an https endpoint is checked against the system's roots.
    pub fn ca_cert_pem(mut self, pem: Vec<u8>) -> Self {
        self.ca_cert_pem = Some(pem);
        self
    }

    /// The client. Proxy environment variables are ignored: a client talks to cluster nodes directly.
    pub fn build(self) -> Result<Client, Error> {
        let base = normalise_endpoint(&self.endpoint)?;
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.token {
            headers.insert(AUTHORIZATION, bearer_value(token)?);
        }
        let https = base.starts_with("https://");
        let tls = tls_config(self.ca_cert_pem.as_deref(), https)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("kvclient/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .timeout(self.timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .no_proxy()
            .tls_backend_preconfigured(tls)
            .build()?;
        Ok(Client {
            http,
            base,
            timeout: self.timeout,
        })
    }
}

/// The `Authorization` value for `text`, marked sensitive so that no `Debug` output shows it.
fn bearer_value(text: &str) -> Result<HeaderValue, Error> {
    let tokens = kvapi::parse_tokens(text).map_err(Error::BadToken)?;
    let [token] = tokens.as_slice() else {
        return Err(Error::BadToken(format!(
            "expected one token, found {} lines",
            tokens.len()
        )));
    };
    let mut value = HeaderValue::from_str(&format!("{}{token}", kvapi::BEARER_PREFIX))
        .map_err(|_| Error::BadToken("not a valid header value".to_owned()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The TLS client settings: trust the CA(s) of `ca_pem` only, or else the system's roots when an
/// https endpoint needs them (loading them for a plain-http client would cost time for nothing).
/// Always the `ring` provider, so no process-wide default has to be installed.
fn tls_config(ca_pem: Option<&[u8]>, https: bool) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Tls(format!("CA certificate PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls(
                "the CA file holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
            ));
        }
    } else if https {
        let (added, _) =
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if added == 0 {
            return Err(Error::Tls(
                "no system CA certificates found; name the cluster's CA with --cacert".to_owned(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (EC P-256, `openssl req -x509`), only parsed here.
    const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBjjCCATOgAwIBAgIUbGQLrk8K1CuvJYl5JpAXTkpGXN8wCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQa3ZjbGllbnQtdGVzdC1jYTAgFw0yNjExMjgxNjMzMTZaGA8y
MTI2MTEwNDE2MzMxNlowGzEZMBcGA1UEAwwQa3ZjbGllbnQtdGVzdC1jYTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABC0zZaNBvnRqVhPrlW2VQjAB0FXly2qTXFl8
qIDJgvnUJk0rMujESE3xBJoLeo8kknvt2/IsjsSgQ1lspgVzbkSjUzBRMB0GA1Ud
DgQWBBShoJUneHypcJh72m3P0x2tXygO4TAfBgNVHSMEGDAWgBShoJUneHypcJh7
2m3P0x2tXygO4TAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQDv
shANuEdNhp6FoAyt81ZsMkw/6QDoijeSFRyIwv7zgAIhAIIsZi8O/U1Hg5uP+Yr8
tlW5GgkaIDlRMEQofLy6bgmB
-----END CERTIFICATE-----
";

    #[test]
    fn tokens_are_trimmed_sent_as_bearer_and_never_shown() {
        let value = bearer_value("  s3cret-token\r\n").unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer s3cret-token");
        assert!(value.is_sensitive());
        assert!(matches!(bearer_value("\n \n"), Err(Error::BadToken(_))));
        assert!(matches!(bearer_value("one\ntwo"), Err(Error::BadToken(_))));
        assert!(matches!(
            bearer_value("with space"),
            Err(Error::BadToken(_))
        ));
        let builder = Client::builder("127.0.0.1:1").token("s3cret-token");
        assert!(!format!("{builder:?}").contains("s3cret"));
        let client = builder.build().unwrap();
        assert!(!format!("{client:?}").contains("s3cret"));
    }

    #[test]
    fn https_clients_trust_the_given_ca() {
        let client = Client::builder("https://127.0.0.1:1")
            .ca_cert_pem(TEST_CA_PEM.as_bytes().to_vec())
            .build()
            .unwrap();
        assert_eq!(client.endpoint(), "https://127.0.0.1:1");
        // A CA file cut short, or one holding no certificate, is refused before any connection.
        let cut = &TEST_CA_PEM[..TEST_CA_PEM.len() / 2];
        for bad in [cut, "not a certificate\n"] {
            let built = Client::builder("https://127.0.0.1:1")
                .ca_cert_pem(bad.as_bytes().to_vec())
                .build();
            assert!(matches!(built, Err(Error::Tls(_))), "{built:?}");
        }
    }
}
