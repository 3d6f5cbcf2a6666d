//! A small HTTPS client on rustls for the one call that needs it (a BMC's Redfish reset): one
//! request, `Connection: close`, bounded in time and in what it reads, the certificate always
//! checked — against the system roots, or against a given CA file alone. It keeps TLS out of
//! every other HTTP client of the collector.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server answered.
pub(super) struct Answer {
    /// The status code.
    pub status: u16,
    /// The start of the body (at most 64 KiB of the answer is read).
    pub body: String,
}

/// POSTs the JSON `body` to `url` (`https://host[:port]/path`) with Basic authorization.
pub(super) async fn post_json(
    url: &str,
    (user, password): (&str, &str),
    ca_file: Option<&Path>,
    body: &str,
) -> anyhow::Result<Answer> {
    use rustls::pki_types::pem::PemObject;
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow::anyhow!("{url}: expected https://"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let path = format!("/{path}");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (
            h.trim_matches(['[', ']']),
            p.parse::<u16>()
                .map_err(|_| anyhow::anyhow!("{url}: bad port"))?,
        ),
        _ => (authority.trim_matches(['[', ']']), 443),
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca.display()))?
            {
                roots.add(cert.map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            base64(format!("{user}:{password}").as_bytes()),
            body.len()
        );
        tls.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // Bounded: the status line and a little of the body are all that matter.
        let _ = (&mut tls).take(64 * 1024).read_to_end(&mut response).await;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("POST {url}: no answer within 30 s"))?
        .map_err(|e| anyhow::anyhow!("POST {url}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("POST {url}: no HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok(Answer { status, body })
}

/// Standard base64 (for the Basic authorization header).
pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
