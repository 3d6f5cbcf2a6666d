//! The bandwidth endpoints NIC steps measure against: a download of N bytes and an upload
//! that is counted, neither kept in memory. Only an open run's agent may use them (its session
//! token): anyone else could use the collector to flood the boot network.

use axum::body::Body;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;

/// Largest transfer either way in one request.
const MAX_BYTES: u64 = 64 << 30;

#[derive(Deserialize)]
pub(super) struct Size {
    bytes: u64,
}

fn chunk() -> Bytes {
    static CHUNK: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    // Incompressible content: bytes of a simple LCG.
    CHUNK
        .get_or_init(|| {
            let mut x = 0x2545_F491_4F6C_DD1Du64;
            Bytes::from(
                (0..1 << 20)
                    .map(|_| {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        (x >> 56) as u8
                    })
                    .collect::<Vec<u8>>(),
            )
        })
        .clone()
}

pub(super) async fn download(_run: super::OpenRunSession, Query(size): Query<Size>) -> Response {
    if size.bytes > MAX_BYTES {
        return (
            StatusCode::BAD_REQUEST,
            format!("bytes={} is over the limit of {MAX_BYTES}", size.bytes),
        )
            .into_response();
    }
    let total = size.bytes;
    let stream = futures_util::stream::unfold(0u64, move |sent| async move {
        if sent >= total {
            return None;
        }
        let piece = chunk();
        let n = (total - sent).min(piece.len() as u64);
        Some((
            Ok::<Bytes, std::io::Error>(piece.slice(..n as usize)),
            sent + n,
        ))
    });
    (
        [("content-length", total.to_string())],
        Body::from_stream(stream),
    )
        .into_response()
}

pub(super) async fn upload(_run: super::OpenRunSession, body: Body) -> Response {
    let mut stream = body.into_data_stream();
    let mut bytes = 0u64;
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(data) => {
                bytes += data.len() as u64;
                if bytes > MAX_BYTES {
                    return (StatusCode::PAYLOAD_TOO_LARGE, "upload over the limit")
                        .into_response();
                }
            }
            Err(err) => {
                return (StatusCode::BAD_REQUEST, format!("upload broke off: {err}"))
                    .into_response();
            }
        }
    }
    axum::Json(serde_json::json!({ "bytes": bytes })).into_response()
}
