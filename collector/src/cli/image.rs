//! `kiln image build`: the RAM image and memtest86+ into the artifacts directory.

use std::path::{Path, PathBuf};
use std::process::Command;

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
}

pub(super) fn run(cmd: ImageCommand) -> anyhow::Result<u8> {
    let ImageCommand::Build(args) = cmd;
    let agent = match args.agent {
        Some(path) => path,
        None => build_static_agent()?,
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
        "kernel + initramfs: {:.1} MB (target ≤ 24 MB)",
        image_total as f64 / 1e6
    );
    Ok(super::EXIT_OK)
}

/// Builds kiln-agent statically (`+crt-static` on x86_64-unknown-linux-gnu) in its own target
/// directory, so it shares nothing with the test build.
fn build_static_agent() -> anyhow::Result<PathBuf> {
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
