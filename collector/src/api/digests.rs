//! The artifacts' sha256, remembered by (path, size, mtime): each file is hashed once per
//! change, on a blocking thread, never whole on an async worker for each request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// sha256 of files, remembered by (path, size, mtime) so each is hashed once per change.
#[derive(Default)]
pub struct Digests {
    known: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

impl Digests {
    /// The file's sha256 (hashing it on a blocking thread when unknown).
    pub async fn of(&self, path: &Path) -> std::io::Result<String> {
        let meta = tokio::fs::metadata(path).await?;
        let (size, mtime) = (meta.len(), meta.modified()?);
        if let Some((s, m, d)) = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
        {
            if *s == size && *m == mtime {
                return Ok(d.clone());
            }
        }
        let owned = path.to_owned();
        let digest = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            use sha2::Digest;
            let mut file = std::fs::File::open(&owned)?;
            let mut hasher = sha2::Sha256::new();
            std::io::copy(&mut file, &mut hasher)?;
            Ok(hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect())
        })
        .await
        .map_err(std::io::Error::other)??;
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_owned(), (size, mtime, digest.clone()));
        Ok(digest)
    }
}
