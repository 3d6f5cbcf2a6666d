//! HTTP throughput: the two endpoints a NIC check measures against, and the client side that
//! measures ([`measure`]). The endpoints are written once, here: `kiln-agent serve-bandwidth`
//! serves them as they are, and the collector merges the same [`router`] into its own behind a
//! check of the caller's run token.
//!
//! `GET /bandwidth/download?bytes=N` streams N bytes; `POST /bandwidth/upload` reads the body
//! to its end and answers `{"bytes": N}`. Neither keeps what it moves in memory. A request
//! with `Upgrade: kiln-bandwidth` (what the NIC check sends) is answered `101` and the bytes
//! then move raw on the socket ([`wire`]): HTTP framing through hyper copies every byte once
//! more than the kernel needs, and at tens of Gb/s that copy is the limit.

mod measure;
mod wire;

pub use measure::{StreamRate, Streams, Way, measure, stream_threads};

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use kiln_protocol::routes;
use serde::{Deserialize, Serialize};

/// Largest download one request may ask for.
pub const MAX_DOWNLOAD: u64 = 64 << 30;
/// Largest upload one request may send.
pub const MAX_UPLOAD: u64 = 64 << 30;
/// Size of the chunks streamed each way.
const CHUNK: usize = 1 << 20;

/// Query of the download endpoint.
#[derive(Debug, Deserialize)]
pub struct DownloadQuery {
    /// Bytes to send.
    pub bytes: u64,
}

/// Answer of the upload endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadReceipt {
    /// Bytes received.
    pub bytes: u64,
}

/// The bandwidth endpoints, to merge into a server's router (of any state: they use none).
/// The upload reads the raw body, counted and dropped chunk by chunk up to [`MAX_UPLOAD`]: a
/// server's limit on request bodies (which applies to bodies read whole) does not apply.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(routes::BANDWIDTH_DOWNLOAD, get(download))
        .route(routes::BANDWIDTH_UPLOAD, post(upload))
}

/// Something a server keeps alive for as long as a connection is open — the collector's
/// connection-limit permit. Put it in a request's extensions and an upgraded bandwidth stream
/// holds it until its socket closes, so raw streams count against the limit like any
/// connection.
#[derive(Clone)]
pub struct ConnectionHold(pub Arc<dyn std::any::Any + Send + Sync>);

/// Limits a server puts on each bandwidth stream of one client (the collector's, from the
/// run's suite): larger requests are refused, and a stream is cut at `until` or when `cancel`
/// turns true (the run closed). Put it in the request's extensions.
#[derive(Clone)]
pub struct StreamLimit {
    /// Most bytes one request may move.
    pub max_bytes: u64,
    /// When any stream of the request ends.
    pub until: tokio::time::Instant,
    /// Turns true when the streams must end now.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

impl StreamLimit {
    /// Waits until the stream must end.
    async fn ended(mut self) {
        tokio::select! {
            _ = tokio::time::sleep_until(self.until) => {}
            _ = self.cancel.wait_for(|cut| *cut) => {}
        }
    }
}

/// Waits until a stream limited by `limit` must end; never, without one.
async fn cut(limit: Option<StreamLimit>) {
    match limit {
        Some(limit) => limit.ended().await,
        None => std::future::pending().await,
    }
}

/// The most bytes a request may move: the service's own limit, or the server's lower one.
fn most(limit: Option<&StreamLimit>, own: u64) -> u64 {
    limit.map_or(own, |l| l.max_bytes.min(own))
}

/// Whether the request asks for the raw stream.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    let has = |name, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, routes::BANDWIDTH_UPGRADE)
}

/// Answers `101` and, once hyper hands the connection over, runs `work` on the raw socket
/// with the bytes that came past the request. `what` names the stream in the log when it
/// ends in an error.
fn switch<W, F>(mut request: Request, what: &'static str, work: W) -> Response
where
    W: FnOnce(tokio::net::TcpStream, bytes::Bytes) -> F + Send + 'static,
    F: Future<Output = std::io::Result<()>> + Send,
{
    let on_upgrade = hyper::upgrade::on(&mut request);
    let hold = request.extensions().get::<ConnectionHold>().cloned();
    let limit = request.extensions().get::<StreamLimit>().cloned();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::warn!(error = %err, "{what}: the upgrade did not happen");
                return;
            }
        };
        let Some((socket, early)) = raw_socket(upgraded) else {
            tracing::error!("{what}: the upgraded connection is not a TCP socket; closed");
            return;
        };
        let result = match wire::ready(&socket) {
            Ok(()) => tokio::select! {
                result = work(socket, early) => result,
                () = cut(limit) => Err(std::io::Error::other("cut off: its deadline passed or its run closed")),
            },
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, "{what} ended");
        }
        drop(hold);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, routes::BANDWIDTH_UPGRADE)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The TCP socket under an upgraded connection, with the bytes hyper had already read past
/// the request. A connection served by `axum::serve` comes wrapped for protocol detection, one
/// served by hyper's HTTP/1 builder (the collector's) does not: both are tried.
fn raw_socket(upgraded: hyper::upgrade::Upgraded) -> Option<(tokio::net::TcpStream, bytes::Bytes)> {
    type Io = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    let (io, early) = match upgraded.downcast::<Io>() {
        Ok(parts) => (parts.io, parts.read_buf),
        Err(upgraded) => {
            let parts = hyper_util::server::conn::auto::upgrade::downcast::<Io>(upgraded).ok()?;
            (parts.io, parts.read_buf)
        }
    };
    Some((io.into_inner(), early))
}

/// One chunk of incompressible bytes for the plain HTTP bodies: the start of the pattern the
/// raw streams send, so both ways send the same bytes.
fn chunk() -> Bytes {
    Bytes::from_static(wire::pattern_bytes(CHUNK))
}

async fn download(Query(query): Query<DownloadQuery>, request: Request) -> Response {
    let limit = request.extensions().get::<StreamLimit>().cloned();
    let max = most(limit.as_ref(), MAX_DOWNLOAD);
    if query.bytes > max {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("bytes={} is over the limit of {max}", query.bytes),
        )
            .into_response();
    }
    let total = query.bytes;
    if wants_upgrade(request.headers()) {
        return switch(request, "a raw download", move |socket, _| async move {
            wire::send(&socket, total, None).await.map(drop)
        });
    }
    let chunk = chunk();
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(chunk.len() as u64);
            Some((
                Ok::<Bytes, std::io::Error>(chunk.slice(..n as usize)),
                sent + n,
            ))
        }
    });
    // Cut short (a deadline, a closed run), the body ends before its length: the client sees
    // the stream broke off.
    let stream = stream.take_until(Box::pin(cut(limit)));
    Response::builder()
        .header("content-type", "application/octet-stream")
        .header("content-length", total)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn upload(request: Request) -> Response {
    let limit = request.extensions().get::<StreamLimit>().cloned();
    let max = most(limit.as_ref(), MAX_UPLOAD);
    if wants_upgrade(request.headers()) {
        return switch(
            request,
            "a raw upload",
            move |mut socket, early| async move {
                // Everything the client sends until it shuts its side, then the receipt; past
                // the limit, a line saying so instead (the client shows it).
                let received = early.len() as u64 + wire::receive(&socket, max + 1, None).await?;
                let answer = if received > max {
                    format!("upload is over the limit of {max} bytes\n")
                } else {
                    serde_json::to_string(&UploadReceipt { bytes: received }).unwrap_or_default()
                        + "\n"
                };
                tokio::io::AsyncWriteExt::write_all(&mut socket, answer.as_bytes()).await
            },
        );
    }
    let mut stream = request
        .into_body()
        .into_data_stream()
        .take_until(Box::pin(cut(limit)));
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(data) => {
                bytes += data.len() as u64;
                if bytes > max {
                    return (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("upload is over the limit of {max} bytes"),
                    )
                        .into_response();
                }
            }
            Err(err) => {
                return (StatusCode::BAD_REQUEST, format!("upload broke off: {err}"))
                    .into_response();
            }
        }
    }
    axum::Json(UploadReceipt { bytes }).into_response()
}

/// Serves the endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn download_and_upload_move_bytes_over_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async move {
            let _ = rx.await;
        }));
        // One stream each way, raw after the upgrade.
        for way in [Way::Download, Way::Upload] {
            let one = measure(way, &base, None, Duration::from_millis(300), 1)
                .await
                .unwrap();
            assert_eq!(one.0.len(), 1);
            assert!(one.total_mbps() > 10.0, "{way:?}: {one:?}");
            assert!(
                one.0[0].elapsed >= Duration::from_millis(300),
                "{way:?}: {one:?}"
            );
        }
        // Three streams side by side: three connections, each counted, summed over the
        // longest.
        for way in [Way::Download, Way::Upload] {
            let streams = measure(way, &base, None, Duration::from_millis(300), 3)
                .await
                .unwrap();
            assert_eq!(streams.0.len(), 3, "{way:?}");
            assert!(streams.0.iter().all(|s| s.bytes > 0), "{way:?} {streams:?}");
            let sum: f64 = streams.0.iter().map(StreamRate::mbps).sum();
            let total = streams.total_mbps();
            assert!(
                total <= sum * 1.0001 && total >= sum * 0.5,
                "{total} vs {sum}"
            );
        }
        // Without the upgrade, plain HTTP bodies both ways, counted exactly.
        let client = reqwest::Client::new();
        let receipt: UploadReceipt = client
            .post(format!("{base}/bandwidth/upload"))
            .body(vec![7u8; 2_500_001])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(receipt.bytes, 2_500_001);
        let exact = client
            .get(format!("{base}/bandwidth/download?bytes=3000000"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(exact.len(), 3_000_000);
        // Over the limit (413), and not a number (400).
        for (bytes, status) in [("99999999999999", 413), ("lots", 400)] {
            let refused = client
                .get(format!("{base}/bandwidth/download?bytes={bytes}"))
                .send()
                .await
                .unwrap();
            assert_eq!(refused.status(), status, "bytes={bytes}");
        }
        // Asking for the raw stream does not get round the limit; an upgrade to another
        // protocol is not ours and gets the plain body.
        for (request_line, protocol, answer) in [
            (
                "GET /bandwidth/download?bytes=99999999999999 HTTP/1.1",
                "kiln-bandwidth",
                "HTTP/1.1 413",
            ),
            (
                "GET /bandwidth/download?bytes=10 HTTP/1.1",
                "websocket",
                "HTTP/1.1 200",
            ),
            (
                "GET /bandwidth/download?bytes=10 HTTP/1.1",
                "kiln-bandwidth",
                "HTTP/1.1 101",
            ),
        ] {
            let got = raw_head(&base, request_line, protocol).await;
            assert!(
                got.starts_with(answer),
                "{request_line} as {protocol}: {got}"
            );
            if answer.ends_with("413") {
                assert!(got.contains("over the limit"), "{got}");
            }
        }
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    /// Sends `request_line` asking to upgrade to `protocol` and returns what comes back within
    /// two seconds (or until the server closes), as text.
    async fn raw_head(base: &str, request_line: &str, protocol: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = base.trim_start_matches("http://");
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{request_line}\r\nHost: {addr}\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n"
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut got = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&got[..n]).into_owned()
    }
}
