//! The measuring side of a NIC check: N streams side by side, each its own TCP connection to
//! the bandwidth endpoints, upgraded to a raw stream (`Upgrade: kiln-bandwidth`) and moved
//! through [`super::wire`] — zero-copy sends, receives counted in the kernel.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use hyper_util::rt::TokioIo;
use kiln_protocol::routes;

use super::{MAX_DOWNLOAD, UploadReceipt, wire};

/// What one stream moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamRate {
    /// Bytes moved (as the receiving side counted them).
    pub bytes: u64,
    /// How long the stream ran.
    pub elapsed: Duration,
}

impl StreamRate {
    /// Mb/s.
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Streams running side by side, each on its own connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Streams(pub Vec<StreamRate>);

impl Streams {
    /// All streams together, Mb/s: every byte over the longest stream's time.
    pub fn total_mbps(&self) -> f64 {
        let bytes: u64 = self.0.iter().map(|s| s.bytes).sum();
        let longest = self.0.iter().map(|s| s.elapsed).max().unwrap_or_default();
        bytes as f64 * 8.0 / longest.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// From the target to this node.
    Download,
    /// From this node to the target.
    Upload,
}

/// Runtime threads for a process that serves or measures `streams` streams: half the CPUs at
/// most, because the kernel's receive and transmit work for the streams (softirq, checksums)
/// needs as much CPU again, and a thread per stream starves it (measured on 2 CPUs over veth:
/// two threads moved less than one).
pub fn stream_threads(streams: usize) -> usize {
    streams
        .min(crate::os::affinity::allowed_cpus().len() / 2)
        .max(1)
}

/// Moves bytes `way` with `streams` connections side by side for about `duration`, against
/// the bandwidth endpoints under `base` (`http://host:port[/prefix]`), on the calling
/// runtime's threads.
pub async fn measure(
    way: Way,
    base: &str,
    token: Option<&str>,
    duration: Duration,
    streams: usize,
) -> anyhow::Result<Streams> {
    let target = Target::parse(base)?;
    // Every stream's connection first, so the streams start moving bytes together.
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..streams.max(1) {
        let target = target.clone();
        let token = token.map(str::to_owned);
        opening.spawn(async move { target.open(way, token.as_deref(), duration).await });
    }
    let mut sockets = Vec::new();
    while let Some(opened) = opening.join_next().await {
        sockets.push(opened.map_err(|e| anyhow::anyhow!("a stream's task failed: {e}"))??);
    }
    let mut moving = tokio::task::JoinSet::new();
    for (socket, early) in sockets {
        moving.spawn(async move { run(way, socket, early, duration).await });
    }
    let mut rates = Vec::new();
    while let Some(joined) = moving.join_next().await {
        rates.push(joined.map_err(|e| anyhow::anyhow!("a stream's task failed: {e}"))??);
    }
    Ok(Streams(rates))
}

/// One stream's bytes; `early` are download bytes that came with the upgrade's answer.
async fn run(
    way: Way,
    mut socket: TcpStream,
    early: u64,
    duration: Duration,
) -> anyhow::Result<StreamRate> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let until = Some(started + duration);
    match way {
        Way::Download => {
            let bytes = early
                + wire::receive(&socket, u64::MAX, until)
                    .await
                    .map_err(|e| anyhow::anyhow!("download broke off: {e}"))?;
            Ok(StreamRate {
                bytes,
                elapsed: started.elapsed(),
            })
        }
        Way::Upload => {
            let sent = wire::send(&socket, super::MAX_UPLOAD, until)
                .await
                .map_err(|e| anyhow::anyhow!("upload broke off: {e}"))?;
            socket.shutdown().await?;
            // The receipt: one line, once the target has read everything sent.
            let mut answer = Vec::new();
            tokio::time::timeout(
                wire::IO_TIMEOUT,
                (&mut socket).take(4096).read_to_end(&mut answer),
            )
            .await
            .map_err(|_| {
                anyhow::anyhow!("no receipt for the upload within {:?}", wire::IO_TIMEOUT)
            })?
            .map_err(|e| anyhow::anyhow!("no receipt for the upload: {e}"))?;
            let text = String::from_utf8_lossy(&answer);
            let receipt: UploadReceipt = serde_json::from_str(text.trim()).map_err(|_| {
                anyhow::anyhow!(
                    "the target did not acknowledge the upload: {:?}",
                    text.trim()
                )
            })?;
            // TCP delivers every byte or breaks: a count that differs is a target that
            // lost bytes after taking them, or not the kiln endpoint.
            anyhow::ensure!(
                receipt.bytes == sent,
                "the target counted {} bytes of the {sent} sent",
                receipt.bytes
            );
            Ok(StreamRate {
                bytes: receipt.bytes,
                elapsed: started.elapsed(),
            })
        }
    }
}

/// Where the bandwidth endpoints are.
#[derive(Debug, Clone)]
struct Target {
    /// Host and port to connect to (no brackets around an IPv6 address).
    host: String,
    port: u16,
    /// `Host:` header.
    authority: String,
    /// Path prefix before the routes, without a trailing `/`.
    prefix: String,
}

impl Target {
    fn parse(base: &str) -> anyhow::Result<Target> {
        let url = reqwest::Url::parse(base)
            .map_err(|e| anyhow::anyhow!("bandwidth target {base:?} is not a URL: {e}"))?;
        anyhow::ensure!(
            url.scheme() == "http",
            "bandwidth target {base:?}: only http:// is measured (the bytes go raw after an HTTP upgrade)"
        );
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("bandwidth target {base:?} has no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        Ok(Target {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            authority: format!("{host}:{port}"),
            prefix: url.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Connects, asks for the upgrade and hands back the raw socket, with the count of
    /// download bytes already read past the answer.
    async fn open(
        &self,
        way: Way,
        token: Option<&str>,
        duration: Duration,
    ) -> anyhow::Result<(TcpStream, u64)> {
        let what = format!("bandwidth target {}{}", self.authority, self.prefix);
        tokio::time::timeout(wire::IO_TIMEOUT, self.upgrade(way, token, duration))
            .await
            .map_err(|_| anyhow::anyhow!("{what} did not answer within {:?}", wire::IO_TIMEOUT))?
            .map_err(|e| anyhow::anyhow!("{what}: {e:#}"))
    }

    async fn upgrade(
        &self,
        way: Way,
        token: Option<&str>,
        duration: Duration,
    ) -> anyhow::Result<(TcpStream, u64)> {
        use axum::http::{Method, StatusCode, header};
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, String>(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let (method, path) = match way {
            // More than the duration can move at 100 Gb/s: the stream stops reading in time.
            Way::Download => {
                let want = ((duration.as_secs_f64() * 12.5e9) as u64).clamp(1 << 20, MAX_DOWNLOAD);
                (
                    Method::GET,
                    format!("{}{}?bytes={want}", self.prefix, routes::BANDWIDTH_DOWNLOAD),
                )
            }
            Way::Upload => (
                Method::POST,
                format!("{}{}", self.prefix, routes::BANDWIDTH_UPLOAD),
            ),
        };
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, routes::BANDWIDTH_UPGRADE);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = sender.send_request(request.body(String::new())?).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 4096)
                .await
                .unwrap_or_default();
            anyhow::bail!("{status}: {}", String::from_utf8_lossy(&body).trim());
        }
        let upgraded = hyper::upgrade::on(response).await?;
        let parts = upgraded
            .downcast::<TokioIo<tokio::net::TcpStream>>()
            .map_err(|_| anyhow::anyhow!("the upgraded connection is not a TCP socket"))?;
        let socket = parts.io.into_inner();
        wire::ready(&socket)?;
        Ok((socket, parts.read_buf.len() as u64))
    }
}
