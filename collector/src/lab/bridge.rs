//! `--network bridge`: the lab's nodes on one L2 segment, as in a rack. The lab makes a
//! network namespace of its own and, inside it, a Linux bridge (the rack's switch), one tap
//! per node on it, and a veth pair whose far end is the collector's link (10.77.0.1) —
//! `dnsmasq` answers DHCP there and points iPXE at the collector, and `lldpd` is the switch
//! announcing each tap as its port. The lab's thread enters
//! the namespace before it starts the collector, the BMCs and the VMs, so nothing it starts
//! reaches or is reached from any other network; it leaves and deletes the namespace (taps,
//! bridge and veths go with it) when the lab ends, however it ends.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The collector's address on the lab's segment.
pub const COLLECTOR_IP: &str = "10.77.0.1";

/// Node `i`'s address (from 1), as its DHCP lease gives it.
pub fn node_ip(i: usize) -> String {
    format!("10.77.0.{}", 100 + i)
}

/// The lab switch's LLDP system name.
pub const SWITCH: &str = "leaf-lab-a";

/// The switch port tap `i` is (from 1), as LLDP names it.
pub fn port(i: usize) -> String {
    format!("Ethernet1/{i}")
}

/// Node `i`'s tap (from 1).
pub fn tap(i: usize) -> String {
    format!("tap{i}")
}

/// The `-netdev` of node `i`: its tap, nothing else.
pub fn netdev(i: usize) -> String {
    format!("tap,id=n0,ifname={},script=no,downscript=no", tap(i))
}

/// The namespace, entered; left and deleted on drop.
pub struct Bridge {
    name: String,
    lldpd: Option<Child>,
    /// Where its name is recorded for `kiln lab down`.
    record: std::path::PathBuf,
    home: File,
    dnsmasq: Option<Child>,
}

/// Runs `ip ARGS` (in whatever namespace this thread is in), naming the command on failure.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    iproute2("ip", args)
}

/// Runs an iproute2 `program` with `args`, naming the command on failure.
fn iproute2(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {program} (iproute2): {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Slows tap `i`'s traffic towards its node to `mbps` (a token bucket on the switch port,
/// with 10 ms of burst): the node's receive side, which its partners' uploads and its own
/// downloads cross. Its sending side stays as is: policing a port's ingress needs a kernel
/// action module (`act_police`) that not every host has.
pub fn limit(i: usize, mbps: u32) -> anyhow::Result<()> {
    let burst = (u64::from(mbps) * 1_250).max(16_000).to_string();
    let rate = format!("{mbps}mbit");
    let tap = tap(i);
    iproute2(
        "tc",
        &[
            "qdisc", "replace", "dev", &tap, "root", "tbf", "rate", &rate, "burst", &burst,
            "latency", "200ms",
        ],
    )
}

/// Moves the calling thread into the network namespace behind `ns` (a file of /proc or
/// /run/netns).
fn enter(ns: &File, what: &str) -> anyhow::Result<()> {
    // SAFETY: setns takes a file descriptor this function borrows for the call, and changes
    // only the calling thread's network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    anyhow::ensure!(
        rc == 0,
        "cannot enter {what}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

impl Bridge {
    /// Makes the namespace with its bridge, `nodes` taps and the collector's veth, and moves
    /// this thread into it. Must run before the lab starts any thread or process that should
    /// live inside (they inherit the namespace).
    pub fn up(dir: &Path, nodes: usize) -> anyhow::Result<Bridge> {
        let name = format!("kiln-lab-{}", std::process::id());
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| anyhow::anyhow!("cannot open this thread's network namespace: {e}"))?;
        // A namespace a killed lab left behind is deleted by `kiln lab down`.
        std::fs::write(dir.join("netns"), &name)?;
        ip(&["netns", "add", &name])
            .map_err(|e| anyhow::anyhow!("{e:#}; the bridge network needs root (CAP_NET_ADMIN)"))?;
        let bridge = Bridge {
            name,
            lldpd: None,
            record: dir.join("netns"),
            home,
            dnsmasq: None,
        };
        let ns = File::open(format!("/run/netns/{}", bridge.name))
            .map_err(|e| anyhow::anyhow!("/run/netns/{}: {e}", bridge.name))?;
        enter(&ns, &format!("network namespace {}", bridge.name))?;
        ip(&["link", "set", "lo", "up"])?;
        ip(&["link", "add", "br0", "type", "bridge"])?;
        ip(&["link", "set", "br0", "up"])?;
        ip(&[
            "link", "add", "col0", "type", "veth", "peer", "name", "col0-br",
        ])?;
        ip(&["link", "set", "col0-br", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{COLLECTOR_IP}/24"), "dev", "col0"])?;
        ip(&["link", "set", "col0", "up"])?;
        for i in 1..=nodes {
            let tap = tap(i);
            ip(&["tuntap", "add", &tap, "mode", "tap"])?;
            ip(&["link", "set", &tap, "master", "br0", "up"])?;
        }
        Ok(bridge)
    }

    /// Starts `dnsmasq` on the collector's link: node `i` (by its MAC) gets
    /// [`node_ip`]`(i)`, and iPXE (DHCP option 175) gets the collector's `boot.ipxe` on `port`.
    pub fn dhcp(&mut self, dir: &Path, macs: &[String], port: u16) -> anyhow::Result<()> {
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=col0",
            "--bind-interfaces",
            "--user=root",
            "--group=root",
            "--log-dhcp",
            "--dhcp-option=3",
            "--dhcp-option=6",
            "--dhcp-match=set:ipxe,175",
        ])
        .arg("--dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,1h")
        .arg(format!(
            "--dhcp-boot=tag:ipxe,http://{COLLECTOR_IP}:{port}/boot.ipxe"
        ))
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.join("dnsmasq.leases").display()
        ));
        for (i, mac) in macs.iter().enumerate() {
            cmd.arg(format!("--dhcp-host={mac},{}", node_ip(i + 1)));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("dnsmasq.log"))?);
        super::die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!("cannot start dnsmasq: {e} (apt-get install dnsmasq-base)")
        })?;
        std::fs::write(dir.join("dnsmasq.pid"), format!("{}\n", child.id()))?;
        self.dnsmasq = Some(child);
        // dnsmasq says on stderr when it could not bind or parse: give it a moment to.
        std::thread::sleep(std::time::Duration::from_millis(300));
        if let Some(status) = self
            .dnsmasq
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            let log = std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default();
            anyhow::bail!("dnsmasq stopped at once ({status}): {}", log.trim());
        }
        Ok(())
    }

    /// Starts `lldpd` as the rack's switch: it announces itself as [`SWITCH`] on every tap,
    /// tap N as port `Ethernet1/N` (what [`port`] names), every 5 s.
    pub fn switch(&mut self, dir: &Path, nodes: usize) -> anyhow::Result<()> {
        let mut conf =
            format!("configure system hostname {SWITCH}\nconfigure lldp tx-interval 5\n");
        for i in 1..=nodes {
            conf.push_str(&format!(
                "configure ports {} lldp portidsubtype local {} description \"lab port {i}\"\n",
                tap(i),
                port(i)
            ));
        }
        let conf_file = dir.join("lldpd.conf");
        std::fs::write(&conf_file, conf)?;
        let taps: Vec<String> = (1..=nodes).map(tap).collect();
        let mut cmd = Command::new("lldpd");
        cmd.args(["-d", "-I", &taps.join(",")])
            .arg("-O")
            .arg(&conf_file)
            .arg("-u")
            .arg(dir.join("lldpd.socket"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("lldpd.log"))?);
        super::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start lldpd: {e} (apt-get install lldpd)"))?;
        std::fs::write(dir.join("lldpd.pid"), format!("{}\n", child.id()))?;
        self.lldpd = Some(child);
        Ok(())
    }

    /// How many DHCP leases dnsmasq acknowledged (from its log).
    pub fn acks(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("dnsmasq.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("DHCPACK"))
            .count()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for mut child in [self.dnsmasq.take(), self.lldpd.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = enter(&self.home, "the lab's own network namespace");
        if ip(&["netns", "del", &self.name]).is_ok() {
            let _ = std::fs::remove_file(&self.record);
        }
    }
}

/// Deletes the namespace a killed lab left in `dir` (by the name it recorded), and stops
/// its dnsmasq (by the PID it recorded, when that process is a dnsmasq).
pub fn down(dir: &Path) -> usize {
    let mut stopped = 0;
    for program in ["dnsmasq", "lldpd"] {
        let record = dir.join(format!("{program}.pid"));
        let Ok(pid) = std::fs::read_to_string(&record) else {
            continue;
        };
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(program.as_bytes()) {
                // SAFETY: kill has no memory preconditions; the PID is one this lab recorded
                // and was just seen to be that program.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                stopped += 1;
            }
        }
        let _ = std::fs::remove_file(&record);
    }
    if let Ok(name) = std::fs::read_to_string(dir.join("netns")) {
        let name = name.trim();
        if name.starts_with("kiln-lab-") && Path::new("/run/netns").join(name).exists() {
            let _ = ip(&["netns", "del", name]);
            stopped += 1;
        }
        let _ = std::fs::remove_file(dir.join("netns"));
    }
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_has_its_own_tap_and_address_and_nothing_else() {
        assert_eq!(netdev(3), "tap,id=n0,ifname=tap3,script=no,downscript=no");
        assert!(
            !netdev(3).contains("user"),
            "a bridged node has no user network"
        );
        assert_eq!(node_ip(1), "10.77.0.101");
        assert_ne!(node_ip(1), COLLECTOR_IP);
    }
}
