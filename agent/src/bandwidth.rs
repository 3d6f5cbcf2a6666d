//! HTTP throughput: the two endpoints a NIC check measures against, and the client side that
//! measures. The endpoints are written once, here: `kiln-agent serve-bandwidth` serves them
//! as they are, and the collector merges the same [`router`] into its own behind a check of
//! the caller's run token.
//!
//! `GET /bandwidth/download?bytes=N` streams N bytes; `POST /bandwidth/upload` reads the body
//! to its end and answers `{"bytes": N}`. Neither keeps what it moves in memory.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::http::StatusCode;
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

/// One chunk of incompressible bytes, shared by every response.
fn chunk() -> Bytes {
    static CHUNK_BYTES: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    CHUNK_BYTES
        .get_or_init(|| {
            let words = (0..CHUNK / 8).map(|i| crate::rng::splitmix64(i as u64));
            Bytes::from(words.flat_map(u64::to_le_bytes).collect::<Vec<u8>>())
        })
        .clone()
}

async fn download(Query(query): Query<DownloadQuery>) -> Response {
    if query.bytes > MAX_DOWNLOAD {
        return (
            StatusCode::BAD_REQUEST,
            format!("bytes={} is over the limit of {MAX_DOWNLOAD}", query.bytes),
        )
            .into_response();
    }
    let total = query.bytes;
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
    Response::builder()
        .header("content-type", "application/octet-stream")
        .header("content-length", total)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn upload(body: Body) -> Response {
    let mut stream = body.into_data_stream();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(data) => {
                bytes += data.len() as u64;
                if bytes > MAX_UPLOAD {
                    return (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("upload is over the limit of {MAX_UPLOAD} bytes"),
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

/// Runtime threads for `streams` streams on this node: half the CPUs at most, because the
/// kernel's receive and transmit work for the streams (softirq, checksums, copies) needs as
/// much CPU again, and a runtime thread per CPU starves it (measured on 2 CPUs over veth: two
/// threads moved less than one). Used by the measuring side and by `serve-bandwidth`.
pub fn stream_threads(streams: usize) -> usize {
    streams
        .min(crate::os::affinity::allowed_cpus().len() / 2)
        .max(1)
}

/// Moves bytes `way` with `streams` connections side by side for about `duration`. Each
/// stream has its own client, so its own TCP connection; the runtime's worker threads spread
/// them over the CPUs.
pub async fn measure(
    way: Way,
    base: &str,
    token: Option<&str>,
    duration: Duration,
    streams: usize,
) -> anyhow::Result<Streams> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams.max(1) {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        let base = base.to_owned();
        let token = token.map(str::to_owned);
        tasks.spawn(async move {
            match way {
                Way::Download => measure_download(&client, &base, token.as_deref(), duration).await,
                Way::Upload => measure_upload(&client, &base, token.as_deref(), duration).await,
            }
        });
    }
    let mut rates = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        rates.push(joined.map_err(|e| anyhow::anyhow!("a stream's task failed: {e}"))??);
    }
    Ok(Streams(rates))
}

/// Receives from `base` for about `duration` on one connection.
pub async fn measure_download(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    duration: Duration,
) -> anyhow::Result<StreamRate> {
    let started = Instant::now();
    let mut received = 0u64;
    while started.elapsed() < duration {
        // Ask for more than the duration can move at 100 Gb/s; the loop stops reading in time.
        let want = ((duration.as_secs_f64() * 12.5e9) as u64).clamp(1 << 20, MAX_DOWNLOAD);
        let url = format!(
            "{}{}?bytes={want}",
            base.trim_end_matches('/'),
            routes::BANDWIDTH_DOWNLOAD
        );
        let mut request = client.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let mut response = request.send().await?.error_for_status()?;
        while let Some(chunk) = response.chunk().await? {
            received += chunk.len() as u64;
            if started.elapsed() >= duration {
                break;
            }
        }
    }
    Ok(StreamRate {
        bytes: received,
        elapsed: started.elapsed(),
    })
}

/// Sends to `base` for about `duration` on one connection; the bytes as the server counted
/// them.
pub async fn measure_upload(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    duration: Duration,
) -> anyhow::Result<StreamRate> {
    let chunk = chunk();
    let started = Instant::now();
    let stream = futures_util::stream::unfold((), move |()| {
        let chunk = chunk.clone();
        async move { (started.elapsed() < duration).then_some((Ok::<Bytes, std::io::Error>(chunk), ())) }
    });
    let url = format!("{}{}", base.trim_end_matches('/'), routes::BANDWIDTH_UPLOAD);
    let mut request = client.post(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let receipt: UploadReceipt = request
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(StreamRate {
        bytes: receipt.bytes,
        elapsed: started.elapsed(),
    })
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

    #[tokio::test]
    async fn download_and_upload_move_bytes_over_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async move {
            let _ = rx.await;
        }));
        let client = reqwest::Client::new();
        let down = measure_download(&client, &base, None, Duration::from_millis(300))
            .await
            .unwrap()
            .mbps();
        let up = measure_upload(&client, &base, None, Duration::from_millis(300))
            .await
            .unwrap()
            .mbps();
        assert!(down > 10.0 && up > 10.0, "down {down} up {up} Mb/s");
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
        let exact = client
            .get(format!("{base}/bandwidth/download?bytes=3000000"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(exact.len(), 3_000_000);
        let refused = client
            .get(format!("{base}/bandwidth/download?bytes=99999999999999"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400);
        let malformed = client
            .get(format!("{base}/bandwidth/download?bytes=lots"))
            .send()
            .await
            .unwrap();
        assert_eq!(malformed.status(), 400);
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
