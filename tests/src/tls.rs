//! TLS for the system tests: a cluster CA and node certificates made with the `openssl` command
//! (installed by `scripts/install-deps.sh`), and rustls clients that talk to a node's TLS ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A certificate authority in a temporary directory, and the certificates it issued.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
    issued: AtomicU64,
}

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (scripts/install-deps.sh installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Pki {
    /// A new CA named `name` (P-256 key, valid two days).
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvcluster-pki-")
            .tempdir()
            .expect("create PKI dir");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Self {
            dir,
            issued: AtomicU64::new(0),
        }
    }

    /// The CA certificate, PEM.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A new certificate for `id`, valid for `host` (an IP SAN when it is an IP address, else a DNS
    /// SAN), for both server and client authentication. Every call makes new files and a new key.
    pub fn issue(&self, id: &str, host: &str) -> Identity {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.path();
        let stem = format!("{id}-{n}");
        let san = if host.parse::<std::net::IpAddr>().is_ok() {
            format!("IP:{host}")
        } else {
            format!("DNS:{host}")
        };
        std::fs::write(
            dir.join(format!("{stem}.ext")),
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .expect("write extensions");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{stem}.key"),
                "-out",
                &format!("{stem}.csr"),
                "-subj",
                &format!("/CN={id}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{stem}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &(1000 + n).to_string(),
                "-days",
                "2",
                "-extfile",
                &format!("{stem}.ext"),
                "-out",
                &format!("{stem}.pem"),
            ],
        );
        Identity {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    /// A rustls client that trusts this CA and presents `identity` when given.
    pub fn client_config(&self, identity: Option<&Identity>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.ca()).expect("read CA") {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots);
        let mut config = match identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain(), id.private_key())
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Identity {
    /// `--peer-tls-ca CA --peer-tls-cert CERT --peer-tls-key KEY`.
    pub fn peer_args(&self, pki: &Pki) -> Vec<String> {
        [
            "--peer-tls-ca".to_owned(),
            pki.ca().display().to_string(),
            "--peer-tls-cert".to_owned(),
            self.cert.display().to_string(),
            "--peer-tls-key".to_owned(),
            self.key.display().to_string(),
        ]
        .into()
    }

    /// `--tls-cert CERT --tls-key KEY`.
    pub fn client_port_args(&self) -> Vec<String> {
        [
            "--tls-cert".to_owned(),
            self.cert.display().to_string(),
            "--tls-key".to_owned(),
            self.key.display().to_string(),
        ]
        .into()
    }

    /// The certificate chain, DER.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(&self.cert)
            .expect("read certificate")
            .map(|c| c.expect("certificate PEM"))
            .collect()
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(&self.key).expect("read key")
    }

    /// Replaces the files at `self` with copies of `other`'s, each by an atomic rename (the pair is
    /// not swapped atomically: a node may see the new certificate with the old key for a moment).
    pub fn overwrite_with(&self, other: &Identity) {
        for (from, to) in [(&other.cert, &self.cert), (&other.key, &self.key)] {
            let tmp = to.with_extension("tmp");
            std::fs::copy(from, &tmp).expect("copy");
            std::fs::rename(&tmp, to).expect("rename");
        }
    }
}

/// Opens a TLS connection to `addr` as `server_name` (bounded by 5 s).
pub async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(config).connect(name, tcp).await
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect")))
}

/// How a handshake with `addr` ends: `Err` with the reason when either side refused it. A TLS 1.3
/// server checks the client's certificate after the client has finished its part, so its refusal
/// arrives as an alert on the first read: this waits briefly for one (the server sends nothing
/// else before a request).
pub async fn handshake(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let mut tls = connect(addr, config, server_name).await?;
    let mut probe = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(500), tls.read(&mut probe)).await {
        Err(_) => Ok(()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(0)) => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "closed after the handshake",
        )),
        Ok(Ok(_)) => Ok(()),
    }
}

/// One HTTP request over `stream` (HTTP/2 when ALPN chose `h2`, else HTTP/1.1); returns the status
/// and body.
pub async fn request(
    stream: TlsStream<TcpStream>,
    method: &str,
    uri: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let io = TokioIo::new(stream);
    let response = (if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await
    })
    .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    Ok((status, body))
}
