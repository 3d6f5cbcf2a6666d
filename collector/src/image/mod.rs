//! `kiln image build`: the RAM image nodes boot, in two parts. The **stage** iPXE loads —
//! Debian's kernel and an initramfs with a static `kiln-agent`, busybox, the NIC and disk
//! modules with their firmware and a small `/init`, a reproducible gzip'd newc cpio — and the
//! **payload** (`payload.img`, a plain newc cpio: every `--package` with its libraries) that
//! the agent fetches after boot in verified pieces, from peers first ([`crate::tracker`]),
//! and unpacks into its RAM root before any step runs. Plus memtest86+ from Debian's package.
//! Everything lands as plain files in the artifacts directory.

pub mod cpio;
mod modules;
pub mod packages;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use cpio::{Archive, Entry};

/// Modules the image carries: common server NICs and disk controllers, and the lab's
/// virtio and e1000 devices. Their dependencies are added automatically.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "mlx5_core",
    "bnxt_en",
    "tg3",
    "nvme",
    "ahci",
    "sd_mod",
    "megaraid_sas",
    "mpt3sas",
];

/// What real servers need besides, where Debian's kernel has them (each is listed when it
/// does not): more NIC and storage drivers, EDAC memory controllers, hwmon sensors, IPMI.
pub const SERVER_MODULES: &[&str] = &[
    "bnx2x",
    "qede",
    "sfc",
    "igc",
    "r8169",
    "mlx4_en",
    "smartpqi",
    "hpsa",
    "mpi3mr",
    "aacraid",
    "skx_edac",
    "i10nm_edac",
    "amd64_edac",
    "sb_edac",
    "ie31200_edac",
    "pnd2_edac",
    "coretemp",
    "k10temp",
    "ipmi_si",
    "ipmi_devintf",
    "ipmi_ssif",
];

/// Modules no device asks for by alias, loaded on every node: the IPMI character device.
pub const ALWAYS_MODULES: &[&str] = &["ipmi_devintf"];

/// Where the build host keeps firmware files (Debian's `firmware-*` packages).
pub const HOST_FIRMWARE: &[&str] = &["/lib/firmware", "/usr/lib/firmware"];

/// Inputs of an image.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Where downloaded and unpacked packages are kept.
    pub cache: PathBuf,
    /// The static kiln-agent binary.
    pub agent: PathBuf,
    /// A static busybox binary.
    pub busybox: PathBuf,
    /// Debian kernel package, e.g. `linux-image-6.1.0-56-amd64` (resolved from
    /// `linux-image-amd64` when absent).
    pub kernel_package: Option<String>,
    /// Directories searched for the firmware files the modules declare, before the host's
    /// ([`HOST_FIRMWARE`]).
    pub firmware: Vec<PathBuf>,
    /// Debian packages whose programs (with their libraries) the payload carries.
    pub packages: Vec<String>,
    /// MiB of incompressible filler in the payload (`opt/kiln/ballast.bin`), so that a lab
    /// boots with a payload the size of a real site's firmware and tools.
    pub ballast_mib: u32,
}

/// The payload's file in the artifacts directory.
pub const PAYLOAD: &str = "payload.img";

/// Where the ballast lies in the payload.
pub const BALLAST: &str = "opt/kiln/ballast.bin";

/// What was built.
#[derive(Debug, Clone)]
pub struct Built {
    /// Files written, with size and sha256.
    pub files: Vec<(PathBuf, u64, String)>,
    /// What each part of the image weighs before compression: kernel, agent, busybox,
    /// modules, firmware.
    pub parts: Vec<(&'static str, u64)>,
    /// Server modules this kernel does not have.
    pub missing_modules: Vec<String>,
    /// Firmware files modules declare that were found nowhere.
    pub missing_firmware: Vec<String>,
    /// Each added package and the bytes it (with the libraries it brought first) added.
    pub packages: Vec<(String, u64)>,
}

/// Builds the image into `out`.
pub fn build(inputs: &Inputs, out: &Path) -> anyhow::Result<Built> {
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    let package = match &inputs.kernel_package {
        Some(p) => p.clone(),
        None => resolve_kernel_package()?,
    };
    let kernel_root = unpack_package(&inputs.cache, &package)?;
    let version = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_owned();
    let vmlinuz = kernel_root.join(format!("boot/vmlinuz-{version}"));
    anyhow::ensure!(
        vmlinuz.exists(),
        "{} has no boot/vmlinuz-{version}",
        package
    );
    let module_dir = kernel_root.join(format!("lib/modules/{version}"));
    let mut modules = modules::resolve(&module_dir, MODULES)?;
    let (server, missing_modules) = modules::resolve_available(&module_dir, SERVER_MODULES)?;
    for m in server {
        if !modules.contains(&m) {
            modules.push(m);
        }
    }

    let mut archive = Archive::default();
    base_tree(&mut archive, inputs)?;
    let (module_bytes, firmware_bytes, missing_firmware) =
        modules_and_firmware(&mut archive, &modules, &inputs.firmware)?;
    let mut payload = Archive::default();
    let added_packages = add_packages(&mut payload, inputs)?;
    if inputs.ballast_mib > 0 {
        payload.add(BALLAST, Entry::File(0o644, ballast(inputs.ballast_mib)));
    }
    archive.add(
        &format!("lib/modules/{}", "kiln.modules"),
        Entry::File(
            0o644,
            modules::catalog(&modules, ALWAYS_MODULES)?.into_bytes(),
        ),
    );

    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&archive.to_bytes())?;
    let initramfs = gz.finish()?;

    let mut files = Vec::new();
    files.push(write(&out.join("vmlinuz"), &read(&vmlinuz)?)?);
    files.push(write(&out.join("initramfs.img"), &initramfs)?);
    let memtest_root = unpack_package(&inputs.cache, "memtest86+")?;
    for name in ["memtest86+x64.bin", "memtest86+x64.efi"] {
        let src = memtest_root.join("boot").join(name);
        files.push(write(&out.join(name), &read(&src)?)?);
    }
    let payload_bytes = if payload.is_empty() {
        // A payload of an earlier build would be served with this image's stage.
        match std::fs::remove_file(out.join(PAYLOAD)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                anyhow::bail!("cannot remove {}: {e}", out.join(PAYLOAD).display())
            }
            _ => 0,
        }
    } else {
        let bytes = payload.to_bytes();
        files.push(write(&out.join(PAYLOAD), &bytes)?);
        bytes.len() as u64
    };
    let parts = vec![
        ("kernel", read(&vmlinuz)?.len() as u64),
        ("kiln-agent", std::fs::metadata(&inputs.agent)?.len()),
        ("busybox", std::fs::metadata(&inputs.busybox)?.len()),
        ("modules", module_bytes),
        ("firmware", firmware_bytes),
        ("payload", payload_bytes),
    ];
    Ok(Built {
        files,
        parts,
        missing_modules,
        missing_firmware,
        packages: added_packages,
    })
}

/// The image's skeleton: directories, device nodes, /init and its DHCP script, busybox and
/// the agent.
fn base_tree(archive: &mut Archive, inputs: &Inputs) -> anyhow::Result<()> {
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "etc",
        "root",
        "lib/modules",
    ] {
        archive.add(dir, Entry::Dir(0o755));
    }
    archive.add("dev/console", Entry::CharDev(0o600, 5, 1));
    archive.add("dev/null", Entry::CharDev(0o666, 1, 3));
    archive.add("init", Entry::File(0o755, INIT.as_bytes().to_vec()));
    archive.add(
        "etc/udhcpc.script",
        Entry::File(0o755, UDHCPC.as_bytes().to_vec()),
    );
    archive.add("bin/busybox", Entry::File(0o755, read(&inputs.busybox)?));
    archive.add("bin/kiln-agent", Entry::File(0o755, read(&inputs.agent)?));
    Ok(())
}

/// Every module (in load order, listed in `etc/kiln-modules`) and the firmware files each
/// declares, from `firmware` or the build host; returns module bytes, firmware bytes and the
/// firmware files not found.
fn modules_and_firmware(
    archive: &mut Archive,
    modules: &[PathBuf],
    firmware: &[PathBuf],
) -> anyhow::Result<(u64, u64, Vec<String>)> {
    let mut order = String::new();
    let mut module_bytes = 0u64;
    let mut firmware_bytes = 0u64;
    let mut missing_firmware = Vec::new();
    let firmware_dirs: Vec<PathBuf> = firmware
        .iter()
        .cloned()
        .chain(HOST_FIRMWARE.iter().map(PathBuf::from))
        .collect();
    let mut firmware_added = std::collections::BTreeSet::new();
    for m in modules {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow::anyhow!("bad module path {}", m.display()))?;
        let bytes = read(m)?;
        module_bytes += bytes.len() as u64;
        for fw in modules::modinfo(&bytes, "firmware") {
            if fw.contains("..") || fw.starts_with('/') || !firmware_added.insert(fw.clone()) {
                continue;
            }
            match firmware_dirs
                .iter()
                .map(|d| d.join(&fw))
                .find(|p| p.is_file())
            {
                Some(found) => {
                    let data = read(&found)?;
                    firmware_bytes += data.len() as u64;
                    let mut dir = String::from("lib/firmware");
                    archive.add(&dir, Entry::Dir(0o755));
                    if let Some(parent) = Path::new(&fw).parent() {
                        for part in parent.components() {
                            dir.push('/');
                            dir.push_str(&part.as_os_str().to_string_lossy());
                            archive.add(&dir, Entry::Dir(0o755));
                        }
                    }
                    archive.add(&format!("lib/firmware/{fw}"), Entry::File(0o644, data));
                }
                None => {
                    missing_firmware.push(format!("{fw} (for {})", name.trim_end_matches(".ko")))
                }
            }
        }
        archive.add(&format!("lib/modules/{name}"), Entry::File(0o644, bytes));
        order.push_str(name);
        order.push('\n');
    }
    archive.add("etc/kiln-modules", Entry::File(0o644, order.into_bytes()));
    Ok((module_bytes, firmware_bytes, missing_firmware))
}

/// `--package`: each Debian package's programs with their shared-library closure; returns
/// each package's added bytes.
fn add_packages(archive: &mut Archive, inputs: &Inputs) -> anyhow::Result<Vec<(String, u64)>> {
    let mut added_packages = Vec::new();
    let mut placed = std::collections::BTreeSet::new();
    for package in &inputs.packages {
        let root = unpack_package(&inputs.cache, package)?;
        let programs = packages::programs(&root)?;
        anyhow::ensure!(
            !programs.is_empty(),
            "package {package} has no programs (bin, sbin, usr/bin, usr/sbin) to add"
        );
        let added = packages::with_libraries(
            programs,
            &mut packages::FromDebian {
                cache: &inputs.cache,
                package,
                closure: None,
            },
        )
        .map_err(|e| anyhow::anyhow!("package {package}: {e:#}"))?;
        let mut bytes = 0;
        for (path, (mode, data)) in added.files {
            if placed.insert(path.clone()) {
                bytes += data.len() as u64;
                archive.add(&path, Entry::File(mode, data));
            }
        }
        added_packages.push((package.clone(), bytes));
    }
    Ok(added_packages)
}

/// A payload of ballast alone, for an image built elsewhere.
pub fn write_ballast(out: &Path, mib: u32) -> anyhow::Result<(PathBuf, u64, String)> {
    let mut payload = Archive::default();
    payload.add(BALLAST, Entry::File(0o644, ballast(mib)));
    write(&out.join(PAYLOAD), &payload.to_bytes())
}

/// `mib` MiB that no compressor shrinks and every build repeats (a xorshift stream from a
/// fixed seed).
fn ballast(mib: u32) -> Vec<u8> {
    let mut x: u64 = 0x6b69_6c6e_6261_6c6c;
    let mut out = Vec::with_capacity((mib as usize) << 20);
    while out.len() < (mib as usize) << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

/// Writes through a temporary file and a rename (a node never downloads half a file).
fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<(PathBuf, u64, String)> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok((
        path.to_owned(),
        bytes.len() as u64,
        crate::store::queries::sha256_hex(bytes),
    ))
}

/// The versioned kernel package `linux-image-amd64` depends on.
fn resolve_kernel_package() -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run apt-cache: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("cannot find the kernel package linux-image-amd64 depends on; run `apt-get update` first, or pass --kernel-package"))
}

/// Downloads a Debian package with `apt-get download` into the cache (once) and unpacks it
/// with `dpkg -x` (once); nothing is installed on the host.
pub fn unpack_package(cache: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let root = cache.join("unpacked").join(package);
    if root.join(".complete").exists() {
        return Ok(root);
    }
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let find_deb = || -> Option<PathBuf> {
        let prefix = format!("{}_", package.replace('+', "%2b"));
        let plain = format!("{package}_");
        std::fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    (n.starts_with(&plain) || n.starts_with(&prefix)) && n.ends_with(".deb")
                })
            })
    };
    let deb = match find_deb() {
        Some(deb) => deb,
        None => {
            let status = Command::new("apt-get")
                .arg("download")
                .arg(package)
                .current_dir(&debs)
                .status()
                .map_err(|e| anyhow::anyhow!("cannot run apt-get: {e}"))?;
            anyhow::ensure!(
                status.success(),
                "`apt-get download {package}` failed; run `apt-get update` first"
            );
            find_deb().ok_or_else(|| {
                anyhow::anyhow!(
                    "apt-get download {package} left no .deb in {}",
                    debs.display()
                )
            })?
        }
    };
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let status = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run dpkg: {e}"))?;
    anyhow::ensure!(status.success(), "dpkg -x {} failed", deb.display());
    std::fs::write(root.join(".complete"), b"")?;
    Ok(root)
}

/// The image's `/init`: mounts, modules, network (DHCP), then `kiln-agent boot`; when the agent
/// ends, power off, reboot or hold as the plan said.
pub const INIT: &str = include_str!("../../../ipxe/image/init");

/// busybox udhcpc's event script (passed with `-s`): configures the address and route.
pub const UDHCPC: &str = include_str!("../../../ipxe/image/udhcpc.script");

/// Builds kiln-agent statically (`+crt-static` on x86_64-unknown-linux-gnu) in its own target
/// directory, so it shares nothing with the test build; needs this source tree.
pub fn static_agent() -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        Path::new("agent/Cargo.toml").exists(),
        "no kiln source tree here to build kiln-agent from; pass --agent FILE (a static kiln-agent)"
    );
    let target_dir = PathBuf::from("target/image");
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "kiln-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run cargo: {e}"))?;
    anyhow::ensure!(status.success(), "building the static kiln-agent failed");
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release/kiln-agent"))
}
