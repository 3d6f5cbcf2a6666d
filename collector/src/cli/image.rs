//! `kiln image build`: the RAM image and memtest86+ into the artifacts directory.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::image::{Inputs, build};

#[derive(Debug, Subcommand)]
pub(super) enum ImageCommand {
    /// Build vmlinuz, initramfs.img and memtest86+ into the artifacts directory; the same
    /// inputs give the same bytes.
    Build(BuildArgs),
}

#[derive(Debug, Args)]
pub(super) struct BuildArgs {
    /// Where to write the artifacts.
    #[arg(long, value_name = "DIR", default_value = "kiln-data/artifacts")]
    out: PathBuf,
    /// Where downloaded Debian packages are kept and unpacked.
    #[arg(long, value_name = "DIR", default_value = ".kiln-cache")]
    cache: PathBuf,
    /// A statically linked kiln-agent (default: build one from this source tree).
    #[arg(long, value_name = "FILE")]
    agent: Option<PathBuf>,
    /// A static busybox (default: /bin/busybox from Debian's busybox-static).
    #[arg(long, value_name = "FILE", default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// The Debian kernel package (default: the one linux-image-amd64 depends on).
    #[arg(long, value_name = "PACKAGE")]
    kernel_package: Option<String>,
    /// A directory of firmware files (laid out like /lib/firmware), searched before the
    /// host's for the files the image's modules declare. Repeatable.
    #[arg(long, value_name = "DIR")]
    firmware: Vec<PathBuf>,
    /// A Debian package whose programs an `exec` step may run (`stress-ng`, `fio`, `nvme-cli`,
    /// `ipmitool`, `smartmontools`, …), added with the libraries they need. Repeatable.
    #[arg(long, value_name = "NAME")]
    package: Vec<String>,
}

pub(super) fn run(cmd: ImageCommand) -> anyhow::Result<u8> {
    let ImageCommand::Build(args) = cmd;
    let agent = match args.agent {
        Some(path) => path,
        None => crate::image::static_agent()?,
    };
    anyhow::ensure!(
        args.busybox.exists(),
        "{} is missing: apt-get install busybox-static",
        args.busybox.display()
    );
    let inputs = Inputs {
        cache: args.cache,
        agent,
        busybox: args.busybox,
        kernel_package: args.kernel_package,
        firmware: args.firmware,
        packages: args.package,
        ballast_mib: 0,
    };
    let built = build(&inputs, &args.out)?;
    let mut image_total = 0;
    for (path, size, sha) in &built.files {
        println!(
            "{:<28} {:>10} bytes  sha256 {sha}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            size
        );
        if path.ends_with("vmlinuz") || path.ends_with("initramfs.img") {
            image_total += size;
        }
    }
    println!(
        "stage (kernel + initramfs): {:.1} MB (target ≤ 24 MB)",
        image_total as f64 / 1e6
    );
    if !built
        .files
        .iter()
        .any(|(p, _, _)| p.ends_with(crate::image::PAYLOAD))
    {
        println!("payload: none (nothing beyond the stage; nodes fetch nothing after boot)");
    }
    let parts: Vec<String> = built
        .parts
        .iter()
        .map(|(name, bytes)| format!("{name} {:.1} MB", *bytes as f64 / 1e6))
        .collect();
    println!("parts before compression: {}", parts.join(", "));
    for (package, bytes) in &built.packages {
        println!(
            "package {package}: {:.1} MB with its libraries (before compression)",
            *bytes as f64 / 1e6
        );
    }
    if !built.missing_modules.is_empty() {
        println!(
            "modules this kernel does not have: {}",
            built.missing_modules.join(", ")
        );
    }
    if !built.missing_firmware.is_empty() {
        println!(
            "firmware not found ({} files; add Debian's firmware-* packages or --firmware DIR): {}",
            built.missing_firmware.len(),
            built.missing_firmware.join(", ")
        );
    }
    Ok(super::EXIT_OK)
}
