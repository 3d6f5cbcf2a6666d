//! Loads the kernel modules this machine's hardware asks for, not a blind list: every
//! device's `modalias` (PCI, ACPI, platform, SCSI, the CPU's own for EDAC and hwmon drivers)
//! is matched against the aliases of the modules the image carries — the catalog
//! `kiln image build` writes — and the matches load with their dependencies first.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The catalog's name in the image's module directory.
pub const CATALOG: &str = "kiln.modules";

/// What the image carries.
#[derive(Debug, Default)]
pub struct Catalog {
    modules: Vec<(String, String, Vec<String>)>,
    aliases: Vec<(glob::Pattern, String)>,
    always: Vec<String>,
}

impl Catalog {
    /// Parses the catalog text (see the collector's `image::modules::catalog`).
    pub fn parse(text: &str) -> Result<Catalog, String> {
        let mut c = Catalog::default();
        for (n, line) in text.lines().enumerate() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [] => {}
                ["module", name, file, deps] => c.modules.push((
                    (*name).to_owned(),
                    (*file).to_owned(),
                    deps.split(',')
                        .filter(|d| !d.is_empty() && *d != "-")
                        .map(str::to_owned)
                        .collect(),
                )),
                ["alias", pattern, name] => {
                    let p = glob::Pattern::new(pattern)
                        .map_err(|e| format!("line {}: alias {pattern:?}: {e}", n + 1))?;
                    c.aliases.push((p, (*name).to_owned()));
                }
                ["always", name] => c.always.push((*name).to_owned()),
                _ => return Err(format!("line {}: {line:?} is not a catalog line", n + 1)),
            }
        }
        Ok(c)
    }

    /// The modules `aliases` (the devices' modaliases) ask for, plus those always loaded.
    pub fn wanted(&self, aliases: &[String]) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.always.iter().cloned().collect();
        for alias in aliases {
            for (pattern, name) in &self.aliases {
                if pattern.matches(alias) {
                    out.insert(name.clone());
                }
            }
        }
        out
    }

    /// `names` and their dependencies, dependencies first, each once; a module the catalog
    /// lacks is skipped (built into the kernel).
    pub fn load_order(&self, names: &BTreeSet<String>) -> Vec<(String, String)> {
        fn visit(
            c: &Catalog,
            name: &str,
            seen: &mut BTreeSet<String>,
            out: &mut Vec<(String, String)>,
            depth: usize,
        ) {
            if depth > 32 || !seen.insert(name.to_owned()) {
                return;
            }
            let Some((_, file, deps)) = c.modules.iter().find(|(n, _, _)| n == name) else {
                return;
            };
            for d in deps {
                visit(c, d, seen, out, depth + 1);
            }
            out.push((name.to_owned(), file.clone()));
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for name in names {
            visit(self, name, &mut seen, &mut out, 0);
        }
        out
    }
}

/// Every device's modalias under `sys` (normally `/sys`), and the CPU's.
pub fn device_aliases(sys: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(buses) = std::fs::read_dir(sys.join("bus")) {
        for bus in buses.flatten() {
            let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else {
                continue;
            };
            for d in devices.flatten() {
                if let Some(a) = crate::os::read_trimmed(d.path().join("modalias")) {
                    out.push(a);
                }
            }
        }
    }
    if let Some(cpu) = crate::os::read_trimmed(sys.join("devices/system/cpu/modalias")) {
        out.push(cpu);
    }
    out.sort();
    out.dedup();
    out
}

/// What a loading pass did.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Modules loaded now.
    pub loaded: Vec<String>,
    /// Modules that were loaded already.
    pub present: usize,
    /// Modules that would not load, with why.
    pub failed: Vec<(String, String)>,
}

/// Loads what the hardware under `sys` asks for from the catalog in `dir`.
pub fn load_for_hardware(dir: &Path, sys: &Path) -> Result<Loaded, String> {
    let path = dir.join(CATALOG);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let catalog = Catalog::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let wanted = catalog.wanted(&device_aliases(sys));
    Ok(load_each(&catalog, &wanted, |file| insert(&dir.join(file))))
}

/// Loads `wanted` in dependency order with `insert`; a module whose dependency did not load
/// is not tried (it could only fail, with a misleading error), and says which one.
fn load_each(
    catalog: &Catalog,
    wanted: &BTreeSet<String>,
    mut insert: impl FnMut(&str) -> Result<bool, String>,
) -> Loaded {
    let mut out = Loaded::default();
    for (name, file) in catalog.load_order(wanted) {
        let deps = catalog
            .modules
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, d)| d.clone())
            .unwrap_or_default();
        if let Some(dep) = deps
            .iter()
            .find(|d| out.failed.iter().any(|(f, _)| f == *d))
        {
            out.failed.push((
                name,
                format!("not tried: it needs {dep}, which did not load"),
            ));
            continue;
        }
        match insert(&file) {
            Ok(true) => out.loaded.push(name),
            Ok(false) => out.present += 1,
            Err(e) => out.failed.push((name, e)),
        }
    }
    out
}

/// `finit_module` of one file: `Ok(false)` when it was loaded already.
fn insert(file: &Path) -> Result<bool, String> {
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let params = c"";
    // SAFETY: a valid fd and a NUL-terminated empty parameter string that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        _ => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG_TEXT: &str = "\
module nvme_core nvme-core.ko -
module nvme nvme.ko nvme_core
alias pci:v*d*sv*sd*bc01sc08i02* nvme
module skx_edac skx_edac.ko -
alias cpu:type:x86,ven0000fam0006mod0055:feature:* skx_edac
module e1000 e1000.ko -
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
module ipmi_msghandler ipmi_msghandler.ko -
module ipmi_devintf ipmi_devintf.ko ipmi_msghandler
always ipmi_devintf
";

    #[test]
    fn only_what_the_devices_ask_for_loads_with_dependencies_first() {
        let c = Catalog::parse(CATALOG_TEXT).unwrap();
        let aliases = vec![
            "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02".to_owned(),
            "cpu:type:x86,ven0000fam0006mod0055:feature:,0000,0001,0002".to_owned(),
        ];
        let wanted = c.wanted(&aliases);
        assert_eq!(
            wanted.iter().map(String::as_str).collect::<Vec<_>>(),
            ["ipmi_devintf", "nvme", "skx_edac"]
        );
        let order: Vec<String> = c.load_order(&wanted).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            order,
            [
                "ipmi_msghandler",
                "ipmi_devintf",
                "nvme_core",
                "nvme",
                "skx_edac"
            ]
        );
        assert!(
            !order.contains(&"e1000".to_owned()),
            "no e1000 on this machine"
        );
    }

    #[test]
    fn a_module_whose_dependency_failed_is_not_tried() {
        let c = Catalog::parse(
            "module edac_mce_amd edac_mce_amd.ko -\nmodule amd64_edac amd64_edac.ko edac_mce_amd\nalias cpu:* amd64_edac\n",
        )
        .unwrap();
        let wanted = c.wanted(&["cpu:type:x86".to_owned()]);
        let mut tried = Vec::new();
        let done = load_each(&c, &wanted, |file| {
            tried.push(file.to_owned());
            Err("No such device (os error 19)".to_owned())
        });
        assert_eq!(tried, ["edac_mce_amd.ko"]);
        assert_eq!(
            done.failed,
            [
                (
                    "edac_mce_amd".to_owned(),
                    "No such device (os error 19)".to_owned()
                ),
                (
                    "amd64_edac".to_owned(),
                    "not tried: it needs edac_mce_amd, which did not load".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn modaliases_are_read_from_every_bus_and_the_cpu() {
        let sys = std::env::temp_dir().join(format!("kiln-modalias-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&sys);
        for (dir, alias) in [
            (
                "bus/pci/devices/0000:00:02.0",
                "pci:v00008086d0000100Esv0000sd0000bc02sc00i00",
            ),
            ("bus/acpi/devices/IPI0001:00", "acpi:IPI0001:"),
            (
                "devices/system/cpu",
                "cpu:type:x86,ven0000fam0006mod0055:feature:,0000",
            ),
        ] {
            std::fs::create_dir_all(sys.join(dir)).unwrap();
            std::fs::write(sys.join(dir).join("modalias"), format!("{alias}\n")).unwrap();
        }
        let found = device_aliases(&sys);
        assert_eq!(found.len(), 3);
        assert!(found.contains(&"acpi:IPI0001:".to_owned()));
        std::fs::remove_dir_all(&sys).unwrap();
    }

    #[test]
    fn a_bad_catalog_line_is_named() {
        let err = Catalog::parse("module x\n").unwrap_err();
        assert_eq!(err, "line 1: \"module x\" is not a catalog line");
        assert!(
            load_for_hardware(Path::new("/nonexistent"), Path::new("/sys"))
                .unwrap_err()
                .contains("/nonexistent/kiln.modules")
        );
    }
}
