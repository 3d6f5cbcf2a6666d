//! Shared helpers for the cross-crate integration tests (the tests live in `tests/`): QEMU
//! nodes that network-boot from an in-process collector, bounded in time and killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where `.ci/test` builds the RAM image (`kiln image build --out …`), or `KILN_IMAGE_DIR`.
pub fn image_dir() -> PathBuf {
    std::env::var_os("KILN_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/image-artifacts"))
}

/// A fresh scratch directory under `target/test-scratch`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = repo()
        .join("target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// How a virtual node is built.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// QEMU NIC model (`virtio-net-pci`, `e1000`).
    pub nic: String,
    /// Boot with OVMF (UEFI) instead of SeaBIOS.
    pub uefi: bool,
    /// MAC address.
    pub mac: String,
    /// SMBIOS serial.
    pub serial: String,
    /// SMBIOS UUID.
    pub uuid: String,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Where the serial console goes.
    pub console_log: PathBuf,
}

/// A running QEMU guest; killed (by its PID) when dropped.
pub struct Node {
    child: Child,
}

impl Node {
    /// Starts a node whose only network is QEMU user networking restricted to one forward:
    /// 10.0.2.100:80 in the guest reaches the collector on 127.0.0.1:`port`.
    pub fn start(spec: &NodeSpec, port: u16) -> std::io::Result<Node> {
        let netdev = format!(
            "user,id=n0,restrict=on,bootfile=http://10.0.2.100/boot.ipxe,guestfwd=tcp:10.0.2.100:80-cmd:busybox nc 127.0.0.1 {port}"
        );
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-m",
            &spec.mem_mib.to_string(),
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-boot",
            "n",
        ])
        .args(["-netdev", &netdev])
        .args([
            "-device",
            &format!("{},netdev=n0,mac={}", spec.nic, spec.mac),
        ])
        .args([
            "-smbios",
            &format!("type=1,serial={},uuid={}", spec.serial, spec.uuid),
        ])
        .args(["-serial", &format!("file:{}", spec.console_log.display())])
        .args(["-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if spec.uefi {
            cmd.args([
                "-drive",
                "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
            ]);
        }
        Ok(Node {
            child: cmd.spawn()?,
        })
    }

    /// Waits for the guest to power off, up to `limit`; false on timeout.
    pub fn wait(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
