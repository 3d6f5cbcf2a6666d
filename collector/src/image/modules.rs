//! Kernel modules with their dependencies resolved from each module's own `.modinfo`
//! (`depends=`), since the package ships no `modules.dep`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Module name as the kernel spells it (dashes are underscores).
fn canonical(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

/// The `depends=` list inside a module file.
pub fn depends(bytes: &[u8]) -> Vec<String> {
    modinfo(bytes, "depends")
        .first()
        .map(|d| {
            d.split(',')
                .filter(|s| !s.is_empty())
                .map(canonical)
                .collect()
        })
        .unwrap_or_default()
}

/// Every value of `key=` in a module's `.modinfo` strings (`alias`, `firmware` repeat).
pub fn modinfo(bytes: &[u8], key: &str) -> Vec<String> {
    let needle = format!("{key}=");
    let needle = needle.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = bytes[from..]
        .windows(needle.len())
        .position(|w| w == needle)
    {
        let start = from + at;
        // A key starts a string: the byte before it ends the previous one (or the file).
        if start == 0 || bytes[start - 1] == 0 {
            let rest = &bytes[start + needle.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        }
        from = start + needle.len();
    }
    out
}

/// The catalog `kiln-agent modules` loads from, one line per fact: `module NAME FILE DEPS`
/// (DEPS comma-separated, `-` for none), `alias PATTERN NAME` for each device alias the module
/// declares, `always NAME` for modules no device asks for.
pub fn catalog(files: &[PathBuf], always: &[&str]) -> anyhow::Result<String> {
    let mut out = String::new();
    for path in files {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow::anyhow!("bad module path {}", path.display()))?;
        let name = canonical(file);
        let deps = depends(&bytes);
        let deps = if deps.is_empty() {
            "-".to_owned()
        } else {
            deps.join(",")
        };
        out.push_str(&format!("module {name} {file} {deps}\n"));
        for alias in modinfo(&bytes, "alias") {
            if !alias.contains(char::is_whitespace) {
                out.push_str(&format!("alias {alias} {name}\n"));
            }
        }
        if always.iter().any(|a| canonical(a) == name) {
            out.push_str(&format!("always {name}\n"));
        }
    }
    Ok(out)
}

/// Every `.ko` under `dir`, by canonical name.
fn index(dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", d.display()))?
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| n.ends_with(".ko"))
            {
                found.insert(canonical(name), path);
            }
        }
    }
    Ok(found)
}

/// [`resolve`] for modules a kernel may lack: those it has (with their dependencies), and
/// the names of those it has not.
pub fn resolve_available(
    dir: &Path,
    wanted: &[&str],
) -> anyhow::Result<(Vec<PathBuf>, Vec<String>)> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut missing = Vec::new();
    for name in wanted {
        match resolve(dir, &[name]) {
            Ok(found) => {
                for f in found {
                    if !files.contains(&f) {
                        files.push(f);
                    }
                }
            }
            Err(_) => missing.push((*name).to_owned()),
        }
    }
    Ok((files, missing))
}

/// The files of `wanted` and all their dependencies, dependencies first (load order).
/// Modules built into the kernel (listed in `modules.builtin`) need no file.
pub fn resolve(dir: &Path, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let all = index(dir)?;
    let builtin: HashSet<String> = std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(canonical)
        .collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        name: &str,
        all: &BTreeMap<String, PathBuf>,
        builtin: &HashSet<String>,
        seen: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
        depth: usize,
    ) -> anyhow::Result<()> {
        if !seen.insert(name.to_owned()) || builtin.contains(name) {
            return Ok(());
        }
        anyhow::ensure!(depth < 32, "module dependencies of {name} loop");
        let path = all.get(name).ok_or_else(|| {
            anyhow::anyhow!("module {name} is neither in the kernel package nor built in")
        })?;
        let bytes = std::fs::read(path)?;
        for dep in depends(&bytes) {
            visit(&dep, all, builtin, seen, order, depth + 1)?;
        }
        order.push(path.clone());
        Ok(())
    }
    for name in wanted {
        visit(&canonical(name), &all, &builtin, &mut seen, &mut order, 0)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_are_read_from_modinfo() {
        let bytes = b"\x7fELF....license=GPL\0depends=virtio,virtio_ring\0vermagic=6.1\0";
        assert_eq!(depends(bytes), ["virtio", "virtio_ring"]);
        assert!(depends(b"depends=\0").is_empty());
    }

    #[test]
    fn the_catalog_lists_files_dependencies_aliases_and_modules_always_loaded() {
        let dir = std::env::temp_dir().join(format!("kiln-catalog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let nvme = dir.join("nvme.ko");
        std::fs::write(
            &nvme,
            b"\x7fELF\0alias=pci:v*d*sv*sd*bc01sc08i02*\0depends=nvme-core\0alias=pci:v0000106Bd00002001sv*sd*bc*sc*i*\0firmware=x.bin\0",
        )
        .unwrap();
        let devintf = dir.join("ipmi_devintf.ko");
        std::fs::write(&devintf, b"depends=ipmi_msghandler\0").unwrap();
        let text = catalog(&[nvme.clone(), devintf], &["ipmi_devintf"]).unwrap();
        assert_eq!(
            text,
            "module nvme nvme.ko nvme_core\n\
             alias pci:v*d*sv*sd*bc01sc08i02* nvme\n\
             alias pci:v0000106Bd00002001sv*sd*bc*sc*i* nvme\n\
             module ipmi_devintf ipmi_devintf.ko ipmi_msghandler\n\
             always ipmi_devintf\n"
        );
        assert_eq!(
            modinfo(&std::fs::read(&nvme).unwrap(), "firmware"),
            ["x.bin"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let dir = std::env::temp_dir().join(format!("kiln-modules-{}", std::process::id()));
        let k = dir.join("kernel/drivers");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("virtio_net.ko"), b"depends=virtio,net_failover\0").unwrap();
        std::fs::write(k.join("net_failover.ko"), b"depends=failover\0").unwrap();
        std::fs::write(k.join("failover.ko"), b"depends=\0").unwrap();
        std::fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko\n",
        )
        .unwrap();
        let order = resolve(&dir, &["virtio_net", "failover"]).unwrap();
        let names: Vec<String> = order
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["failover.ko", "net_failover.ko", "virtio_net.ko"]);
        assert!(
            resolve(&dir, &["nonexistent"])
                .unwrap_err()
                .to_string()
                .contains("neither in the kernel package")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
