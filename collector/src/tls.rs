//! The management listener's TLS: its certificate (the configured one, or one made
//! self-signed at first start under `DATA/tls/`), the fingerprint a client pins on first use
//! (as SSH does with host keys), and the client that speaks only to a server showing the
//! certificate it pinned.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The server side: the rustls configuration and its certificate's fingerprint.
pub struct ServerTls {
    /// What the listener accepts connections with.
    pub config: Arc<rustls::ServerConfig>,
    /// `sha256:` and the hex digest of the certificate it shows.
    pub fingerprint: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate's fingerprint: `sha256:` and the hex digest of its DER bytes.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", crate::store::queries::sha256_hex(der))
}

/// Where a self-signed certificate and its key are kept.
fn generated(data: &Path) -> (PathBuf, PathBuf) {
    let dir = data.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// The listener's TLS from `cert` and `key` (PEM files), or, when they are not configured,
/// from `DATA/tls/`, made self-signed (for `localhost`, `127.0.0.1` and `::1`) the first time.
pub fn server(data: &Path, configured: Option<(&Path, &Path)>) -> anyhow::Result<ServerTls> {
    let (cert, key) = match configured {
        Some((cert, key)) => (cert.to_path_buf(), key.to_path_buf()),
        None => {
            let (cert, key) = generated(data);
            if !cert.exists() || !key.exists() {
                make_self_signed(&cert, &key)?;
            }
            (cert, key)
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the certificate: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    let first = chain
        .first()
        .ok_or_else(|| anyhow::anyhow!("{}: no certificate in the file", cert.display()))?;
    let fingerprint = fingerprint(first);
    let private = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the private key: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            anyhow::anyhow!(
                "{} and {} do not make a certificate: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(ServerTls {
        config: Arc::new(config),
        fingerprint,
    })
}

fn make_self_signed(cert: &Path, key: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| anyhow::anyhow!("cannot make a self-signed certificate: {e}"))?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    std::io::Write::write_all(&mut file, made.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert, made.cert.pem())
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    tracing::info!(cert = %cert.display(), "made a self-signed certificate for the management listener");
    Ok(())
}

/// What a pinned client saw of the server's certificate.
pub type Seen = Arc<Mutex<Option<String>>>;

/// Accepts exactly the certificate whose fingerprint is `pin` (any, when there is none yet:
/// the first use), and records what it was shown in `seen`.
#[derive(Debug)]
struct Pinned {
    pin: Option<String>,
    seen: Seen,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let shown = fingerprint(end_entity);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(shown.clone());
        match &self.pin {
            Some(pin) if *pin != shown => Err(rustls::Error::General(format!(
                "the server's certificate is {shown}, not the pinned {pin}"
            ))),
            _ => Ok(rustls::client::danger::ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a pinned request got: its status and body, or why it got nothing.
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text (lossy: an answer is shown, never trusted).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            anyhow::anyhow!(
                "the answer ({}) is not the JSON expected: {e}: {}",
                self.status,
                kiln_protocol::text::clamp(&self.text(), 200, false)
            )
        })
    }
}

/// Sends `request` (built with any reqwest client; only its method, URL, headers and body are
/// used) over HTTPS to a server that must show the certificate `pin` names — or any, without
/// a pin (the first use). `seen` records what the server showed, either way. HTTP/1.1, one
/// connection, bounded by `timeout`.
pub async fn send_pinned(
    request: reqwest::Request,
    pin: Option<String>,
    seen: &Seen,
    timeout: std::time::Duration,
) -> anyhow::Result<Answer> {
    use http_body_util::BodyExt;
    let url = request.url().clone();
    let host = url
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let provider = provider();
    let verifier = Pinned {
        pin,
        seen: seen.clone(),
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone()).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let mut builder = hyper::Request::builder()
        .method(request.method().clone())
        .uri(
            url.path().to_owned()
                + url
                    .query()
                    .map(|q| format!("?{q}"))
                    .as_deref()
                    .unwrap_or(""),
        )
        .header(hyper::header::HOST, format!("{host}:{port}"));
    for (key, value) in request.headers() {
        builder = builder.header(key, value);
    }
    let body = request
        .body()
        .and_then(reqwest::Body::as_bytes)
        .map(bytes::Bytes::copy_from_slice)
        .unwrap_or_default();
    let hyper_request = builder.body(http_body_util::Full::new(body))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let response = sender.send_request(hyper_request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes().to_vec();
        Ok::<_, anyhow::Error>(Answer {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("{url}: no answer within {}s", timeout.as_secs()))?
}

/// GETs `url` from a collector whose certificate is `pin` (a benchmark's or a test's reader
/// of the management listener), within a minute.
pub async fn get_pinned(url: &str, pin: &str) -> anyhow::Result<Answer> {
    let request = reqwest::Client::new().get(url).build()?;
    send_pinned(
        request,
        Some(pin.to_owned()),
        &Seen::default(),
        std::time::Duration::from_secs(60),
    )
    .await
}

/// The pins a CLI keeps: one line per collector, `host:port sha256:…`.
pub struct KnownCollectors {
    path: PathBuf,
}

impl KnownCollectors {
    /// `$KILN_KNOWN_COLLECTORS`, else `~/.config/kiln/known_collectors`.
    pub fn default_place() -> KnownCollectors {
        let path = std::env::var_os("KILN_KNOWN_COLLECTORS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home =
                    std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
                home.join(".config/kiln/known_collectors")
            });
        KnownCollectors { path }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pin for `authority` (`host:port`), if one is kept.
    pub fn pin(&self, authority: &str) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        text.lines().find_map(|line| {
            let (who, pin) = line.split_once(' ')?;
            (who == authority).then(|| pin.trim().to_owned())
        })
    }

    /// Keeps `pin` for `authority`.
    pub fn add(&self, authority: &str, pin: &str) -> anyhow::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.push_str(&format!("{authority} {pin}\n"));
        std::fs::write(&self.path, text)
            .map_err(|e| anyhow::anyhow!("{}: cannot keep the pin: {e}", self.path.display()))
    }
}
