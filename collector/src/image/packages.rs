//! `kiln image build --package NAME…`: Debian packages added to the RAM image with their
//! shared-library closure, so an `exec` step can run `stress-ng`, `fio`, `nvme`, `ipmitool`,
//! `smartctl` or a vendor tool. The package's programs (`bin`, `sbin`, `usr/bin`,
//! `usr/sbin`) keep their paths; every library they need — read from each ELF file's
//! `DT_NEEDED`, recursively, plus the dynamic loader it names — is taken from the Debian
//! package that holds it (found with `dpkg -S`, fetched with `apt-get download`), never from
//! the build host's own files, so the same packages give the same image.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// Where the loader looks for libraries without an `ld.so.cache` (Debian's multiarch path).
pub const LIB_DIR: &str = "lib/x86_64-linux-gnu";

/// Directories of a package whose files are programs.
const PROGRAM_DIRS: &[&str] = &["bin", "sbin", "usr/bin", "usr/sbin"];

/// Finds the file of a library (or the loader) by name: where it goes in the image, and its
/// bytes.
pub trait Libraries {
    /// `name` is a `DT_NEEDED` entry (`libc.so.6`) or the loader's path.
    fn find(&mut self, name: &str, needed_by: &str) -> anyhow::Result<(String, Vec<u8>)>;
}

/// What one package adds.
#[derive(Debug, Default)]
pub struct Added {
    /// Image path → contents and mode.
    pub files: BTreeMap<String, (u32, Vec<u8>)>,
}

impl Added {
    /// Bytes added.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|(_, b)| b.len() as u64).sum()
    }
}

/// The programs of an unpacked package under `root`: image path → (mode, bytes).
pub fn programs(root: &Path) -> anyhow::Result<BTreeMap<String, (u32, Vec<u8>)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    for dir in PROGRAM_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            // Programs that are links to others in the package are kept as copies: the image
            // has no package manager to keep links consistent, and busybox owns many names.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            out.insert(
                format!("{dir}/{name}"),
                (
                    0o755,
                    std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                ),
            );
        }
    }
    Ok(out)
}

/// Adds to `programs` every library they need, transitively, and the loader.
pub fn with_libraries(
    mut files: BTreeMap<String, (u32, Vec<u8>)>,
    libraries: &mut dyn Libraries,
) -> anyhow::Result<Added> {
    let mut queue: VecDeque<String> = files.keys().cloned().collect();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    while let Some(path) = queue.pop_front() {
        let needs = {
            let (_, bytes) = &files[&path];
            let Ok(elf) = goblin::elf::Elf::parse(bytes) else {
                continue; // a script: nothing to link
            };
            let mut needs: Vec<String> = elf.libraries.iter().map(|l| (*l).to_owned()).collect();
            if let Some(interp) = elf.interpreter {
                needs.push(interp.to_owned());
            }
            needs
        };
        for name in needs {
            if !placed.insert(name.clone()) {
                continue;
            }
            let (at, bytes) = libraries.find(&name, &path)?;
            if !files.contains_key(&at) {
                files.insert(at.clone(), (0o755, bytes));
                queue.push_back(at);
            }
        }
    }
    Ok(Added { files })
}

/// Libraries from Debian's packages: the host's `dpkg -S` says which package holds a library
/// when the host has it installed; otherwise the packages the added one depends on
/// (`apt-cache depends --recurse`) are fetched and searched. Either way the file comes from a
/// package unpacked into the cache.
pub struct FromDebian<'a> {
    /// The cache `kiln image build` keeps packages in.
    pub cache: &'a Path,
    /// The package being added.
    pub package: &'a str,
    /// Its dependency closure, once asked for.
    pub closure: Option<Vec<String>>,
}

impl FromDebian<'_> {
    /// The library `name` in the unpacked packages of the added one's dependencies.
    fn in_dependencies(&mut self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if self.closure.is_none() {
            let out = std::process::Command::new("apt-cache")
                .args([
                    "depends",
                    "--recurse",
                    "--no-recommends",
                    "--no-suggests",
                    "--no-conflicts",
                    "--no-breaks",
                    "--no-replaces",
                    "--no-enhances",
                    self.package,
                ])
                .output()
                .map_err(|e| anyhow::anyhow!("cannot run apt-cache: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut names: Vec<String> = text
                .lines()
                .filter(|l| !l.starts_with(' ') && !l.starts_with('<'))
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty() && l != self.package)
                .collect();
            names.sort();
            names.dedup();
            self.closure = Some(names);
        }
        for package in self.closure.clone().unwrap_or_default() {
            let Ok(root) = super::unpack_package(self.cache, &package) else {
                continue;
            };
            for dir in [
                "lib/x86_64-linux-gnu",
                "usr/lib/x86_64-linux-gnu",
                "lib",
                "usr/lib",
                "lib64",
            ] {
                if let Ok(bytes) = std::fs::read(root.join(dir).join(name)) {
                    return Ok(Some(bytes));
                }
                // Private directories a RUNPATH points into (`…/ceph/libceph-common.so.2`).
                if let Some(found) = find_below(&root.join(dir), name, 3) {
                    return Ok(Some(std::fs::read(found)?));
                }
            }
        }
        Ok(None)
    }
}

/// The file `name` somewhere below `dir`, at most `depth` directories down.
fn find_below(dir: &Path, name: &str, depth: usize) -> Option<std::path::PathBuf> {
    if depth == 0 {
        return None;
    }
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let path = e.path();
        if e.file_type().ok()?.is_dir() {
            if let Some(found) = find_below(&path, name, depth - 1) {
                return Some(found);
            }
        } else if e.file_name() == name {
            return Some(path);
        }
    }
    None
}

impl Libraries for FromDebian<'_> {
    fn find(&mut self, name: &str, needed_by: &str) -> anyhow::Result<(String, Vec<u8>)> {
        let candidates: Vec<String> = if name.starts_with('/') {
            vec![name.to_owned()]
        } else {
            [
                "/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu",
                "/lib",
                "/usr/lib",
            ]
            .iter()
            .map(|d| format!("{d}/{name}"))
            .collect()
        };
        for path in &candidates {
            // usr-merged systems record either spelling; ask for both.
            let spellings = [
                path.clone(),
                path.replacen("/usr/lib/", "/lib/", 1),
                path.replacen("/lib/", "/usr/lib/", 1),
            ];
            for spelling in spellings {
                let Ok(out) = std::process::Command::new("dpkg")
                    .args(["-S", &spelling])
                    .output()
                else {
                    anyhow::bail!("cannot run dpkg -S to find the package of {name}");
                };
                if !out.status.success() {
                    continue;
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let Some(package) = text.lines().next().and_then(|l| l.split(':').next()) else {
                    continue;
                };
                let root = super::unpack_package(self.cache, package.trim())?;
                for inside in [
                    spelling.trim_start_matches('/'),
                    path.trim_start_matches('/'),
                ] {
                    let file = root.join(inside);
                    if let Ok(bytes) = std::fs::read(&file) {
                        let at = if name.starts_with('/') {
                            name.trim_start_matches('/').to_owned()
                        } else {
                            format!("{LIB_DIR}/{name}")
                        };
                        return Ok((at, bytes));
                    }
                }
            }
        }
        if !name.starts_with('/') {
            if let Some(bytes) = self.in_dependencies(name)? {
                return Ok((format!("{LIB_DIR}/{name}"), bytes));
            }
        }
        anyhow::bail!(
            "{name}, needed by {needed_by}, is in no package {} depends on, nor installed on this host",
            self.package
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Libraries from the build host's own directories (no download), for the closure test.
    struct Host;

    impl Libraries for Host {
        fn find(&mut self, name: &str, _: &str) -> anyhow::Result<(String, Vec<u8>)> {
            let path = if name.starts_with('/') {
                PathBuf::from(name)
            } else {
                ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"]
                    .iter()
                    .map(|d| Path::new(d).join(name))
                    .find(|p| p.exists())
                    .ok_or_else(|| anyhow::anyhow!("{name} not on this host"))?
            };
            let at = if name.starts_with('/') {
                name.trim_start_matches('/').to_owned()
            } else {
                format!("{LIB_DIR}/{name}")
            };
            Ok((at, std::fs::read(path)?))
        }
    }

    #[test]
    fn a_programs_closure_has_its_libraries_transitively_and_the_loader() {
        // `git` from the host: needs libpcre2, libz and libc, and names the loader.
        let mut files = BTreeMap::new();
        files.insert(
            "usr/bin/git".to_owned(),
            (0o755, std::fs::read("/usr/bin/git").unwrap()),
        );
        files.insert(
            "usr/bin/script.sh".to_owned(),
            (0o755, b"#!/bin/sh\necho hi\n".to_vec()),
        );
        let added = with_libraries(files, &mut Host).unwrap();
        let names: Vec<&str> = added.files.keys().map(String::as_str).collect();
        assert!(names.contains(&"lib64/ld-linux-x86-64.so.2"), "{names:?}");
        assert!(
            names.contains(&"lib/x86_64-linux-gnu/libc.so.6"),
            "{names:?}"
        );
        assert!(
            names.contains(&"lib/x86_64-linux-gnu/libz.so.1"),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("lib/x86_64-linux-gnu/libpcre2")),
            "{names:?}"
        );
        assert!(added.bytes() > 1_000_000);
        // A library nowhere to be found is an error that names it and who needs it.
        struct Nowhere;
        impl Libraries for Nowhere {
            fn find(&mut self, name: &str, by: &str) -> anyhow::Result<(String, Vec<u8>)> {
                anyhow::bail!("{name}, needed by {by}, is nowhere")
            }
        }
        let mut files = BTreeMap::new();
        files.insert(
            "usr/bin/git".to_owned(),
            (0o755, std::fs::read("/usr/bin/git").unwrap()),
        );
        let err = with_libraries(files, &mut Nowhere).unwrap_err().to_string();
        assert!(err.contains("needed by usr/bin/git"), "{err}");
    }
}
