//! One way to write a virtual node's QEMU command line, shared by the lab and the tests: the
//! accelerator and memory, the only network a node gets (user networking restricted to one
//! forward, 10.0.2.100:80 → the collector on 127.0.0.1), its NIC with Debian's iPXE ROM, its
//! SMBIOS identity, serial console, QMP socket, and what else the caller adds.

use std::path::Path;
use std::process::{Command, Stdio};

/// A QEMU command line being built; [`NodeCommand::command`] gives the process to start.
#[derive(Debug, Clone)]
pub struct NodeCommand {
    args: Vec<String>,
}

impl NodeCommand {
    /// A node with `mem_mib` of memory under `accel` (`tcg`, or `kvm` where KVM really runs
    /// guests), no display, booting from the network, no monitor on stdio.
    pub fn new(accel: &str, mem_mib: u32) -> NodeCommand {
        NodeCommand {
            args: [
                "-accel",
                accel,
                "-m",
                &mem_mib.to_string(),
                "-display",
                "none",
                "-boot",
                "n",
                "-monitor",
                "none",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }

    /// Adds arguments as they are.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, args: I) -> NodeCommand {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The `-netdev` value of the one network a node has: user networking with `restrict=on`
    /// and a single forward from 10.0.2.100:80 to the collector on 127.0.0.1:`port` (the DHCP
    /// bootfile points iPXE at it). Nothing else is reachable from the guest.
    pub fn netdev(port: u16) -> String {
        format!(
            "user,id=n0,restrict=on,bootfile=http://10.0.2.100/boot.ipxe,guestfwd=tcp:10.0.2.100:80-cmd:busybox nc 127.0.0.1 {port}"
        )
    }

    /// That network with a NIC of `model` (`virtio-net-pci`, `e1000`) on it.
    pub fn network(self, port: u16, model: &str, mac: &str) -> NodeCommand {
        self.nic(&Self::netdev(port), model, mac)
    }

    /// A NIC of `model` on the network `netdev` (a `-netdev` value with `id=n0`).
    pub fn nic(self, netdev: &str, model: &str, mac: &str) -> NodeCommand {
        self.args([
            "-netdev".to_owned(),
            netdev.to_owned(),
            "-device".to_owned(),
            format!("{model},netdev=n0,mac={mac}"),
        ])
    }

    /// SMBIOS system identity (type 1).
    pub fn identity(self, fields: &str) -> NodeCommand {
        self.args(["-smbios".to_owned(), format!("type=1,{fields}")])
    }

    /// The serial console on a TCP socket the collector reads.
    pub fn console_tcp(self, port: u16) -> NodeCommand {
        self.args([
            "-serial".to_owned(),
            format!("tcp:127.0.0.1:{port},server=on,wait=off"),
        ])
    }

    /// The serial console into a file.
    pub fn console_file(self, path: &Path) -> NodeCommand {
        self.args(["-serial".to_owned(), format!("file:{}", path.display())])
    }

    /// A QMP socket (the lab's power driver; fault injection).
    pub fn qmp(self, path: &Path) -> NodeCommand {
        self.args([
            "-qmp".to_owned(),
            format!("unix:{},server=on,wait=off", path.display()),
        ])
    }

    /// UEFI firmware (Debian's OVMF) instead of SeaBIOS.
    pub fn uefi(self) -> NodeCommand {
        self.args([
            "-drive",
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
        ])
    }

    /// The process, with no standard input or output.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_reaches_only_the_collector() {
        let cmd = NodeCommand::new("tcg", 256)
            .network(8080, "virtio-net-pci", "52:54:00:00:00:01")
            .identity("serial=S1")
            .console_tcp(9000);
        let args: Vec<String> = cmd
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let netdev = &args[args.iter().position(|a| a == "-netdev").unwrap() + 1];
        assert!(netdev.contains("restrict=on"), "{netdev}");
        assert!(
            netdev.ends_with("guestfwd=tcp:10.0.2.100:80-cmd:busybox nc 127.0.0.1 8080"),
            "{netdev}"
        );
        assert_eq!(netdev.matches("guestfwd=").count(), 1, "{netdev}");
        assert!(args.contains(&"virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01".to_owned()));
        assert!(args.contains(&"tcp:127.0.0.1:9000,server=on,wait=off".to_owned()));
        assert_eq!(&args[..2], ["-accel", "tcg"]);
    }
}
