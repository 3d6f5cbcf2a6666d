//! The repository's root and scratch directories, for every test target. One file, included
//! by path (`#[path]`) into the crates' own integration tests too: they cannot depend on
//! `kiln-tests`, which depends on them.

use std::path::{Path, PathBuf};

/// The repository root (every crate's manifest sits one level below it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A fresh, empty directory `target/test-scratch/NAME-PID`; what an earlier run left there is
/// removed first.
pub fn scratch(name: &str) -> PathBuf {
    let dir = repo()
        .join("target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot make the scratch directory {}: {e}", dir.display());
    }
    dir
}
