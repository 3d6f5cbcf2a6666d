//! Boot artifacts (kernel, initramfs, memtest86+) served as plain files from
//! `DATA/artifacts/`: GET and HEAD, single byte ranges, ETag = sha256, and a JSON listing.
//! No request can name a file outside that directory: `..`, absolute paths, encoded dots and
//! symlinks that lead out are all refused.

use std::io::SeekFrom;
use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::api::{ApiError, AppState};

/// Resolves a request path inside `root`, or says why it may not be served.
pub fn resolve(root: &Path, requested: &str) -> Result<PathBuf, ApiError> {
    let refused = || ApiError::NotFound(format!("no artifact {requested:?}"));
    if requested.is_empty() || requested.contains('\0') || requested.contains('\\') {
        return Err(refused());
    }
    let relative = Path::new(requested);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(refused());
    }
    let root = root
        .canonicalize()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("artifacts directory: {e}")))?;
    let full = root.join(relative).canonicalize().map_err(|_| refused())?;
    // A symlink may point anywhere; only what stays inside the directory is served.
    if !full.starts_with(&root) || !full.is_file() {
        return Err(refused());
    }
    Ok(full)
}

/// `GET|HEAD /artifacts/{*path}`.
pub async fn serve(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    UrlPath(path): UrlPath<String>,
) -> Result<Response, ApiError> {
    let full = resolve(&state.data.join("artifacts"), &path)?;
    let digest = state
        .digests
        .of(&full)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let etag = format!("\"{digest}\"");
    let size = tokio::fs::metadata(&full)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .len();
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(spec) => match parse_range(spec, size) {
            Some(r) => Some(r),
            None => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                )
                    .into_response());
            }
        },
    };
    let (status, start, len) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag);
    if range.is_some() {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    if method == Method::HEAD {
        return builder
            .body(Body::empty())
            .map_err(|e| ApiError::Internal(e.into()));
    }
    let mut file = tokio::fs::File::open(&full)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let stream = futures_util::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; (left.min(256 * 1024)) as usize];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(buf)),
                    (file, left - n as u64),
                ))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    builder
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::Internal(e.into()))
}

/// Parses one `bytes=` range against `size`; `None` when it cannot be satisfied.
pub fn parse_range(spec: &str, size: u64) -> Option<(u64, u64)> {
    let spec = spec.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 {
                return None;
            }
            (size.saturating_sub(n), size - 1)
        }
        (s, "") => (s.parse().ok()?, size - 1),
        (s, e) => (s.parse().ok()?, e.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

/// One listed artifact.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// Path under `artifacts/`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256.
    pub sha256: String,
}

/// `GET /artifacts/`: every file with its size and sha256.
pub async fn list(State(state): State<AppState>) -> Result<axum::Json<Vec<Listed>>, ApiError> {
    let root = state.data.join("artifacts");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
        {
            let path = entry.path();
            let kind = entry
                .file_type()
                .await
                .map_err(|e| ApiError::Internal(e.into()))?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let name = path
                    .strip_prefix(&root)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                if name.ends_with(".partial") {
                    continue;
                }
                let sha256 = state
                    .digests
                    .of(&path)
                    .await
                    .map_err(|e| ApiError::Internal(e.into()))?;
                out.push(Listed {
                    name,
                    size: entry
                        .metadata()
                        .await
                        .map_err(|e| ApiError::Internal(e.into()))?
                        .len(),
                    sha256,
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_and_bounded() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=990-2000", 1000), Some((990, 999)));
        assert_eq!(parse_range("bytes=1000-", 1000), None);
        assert_eq!(parse_range("bytes=5-1", 1000), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
    }

    #[test]
    fn nothing_outside_the_directory_resolves() {
        let base = std::env::temp_dir().join(format!("kiln-artifacts-{}", std::process::id()));
        let root = base.join("artifacts");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("vmlinuz"), b"k").unwrap();
        std::fs::write(root.join("sub/x"), b"x").unwrap();
        std::fs::write(base.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(base.join("secret"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink(root.join("vmlinuz"), root.join("alias")).unwrap();
        assert!(resolve(&root, "vmlinuz").is_ok());
        assert!(resolve(&root, "sub/x").is_ok());
        assert!(
            resolve(&root, "alias").is_ok(),
            "a link that stays inside is fine"
        );
        for bad in [
            "../secret",
            "sub/../../secret",
            "/etc/passwd",
            "escape",
            "sub",
            "",
            "./vmlinuz",
            "a\0b",
        ] {
            assert!(resolve(&root, bad).is_err(), "{bad:?} resolved");
        }
        std::fs::remove_dir_all(base).unwrap();
    }
}
