//! Shared helpers for the cross-crate integration tests (the tests live in `tests/`): QEMU
//! nodes that network-boot from an in-process collector, bounded in time and killed on drop.

pub mod modgraph;
mod paths;

pub use paths::{repo, scratch};

use std::path::{Path, PathBuf};
use std::process::Child;

use kiln_collector::lab::qemu::NodeCommand;
use std::time::{Duration, Instant};

/// A collector in this process on 127.0.0.1, both listeners, on a runtime of its own:
/// nodes boot from `port`; runs are read from the management listener, pinned to its
/// certificate. Stopped on drop.
pub struct InProcess {
    /// The runtime it serves on (tests block on their own reads here too).
    pub rt: tokio::runtime::Runtime,
    /// The boot listener's port.
    pub port: u16,
    ops: String,
    pin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl InProcess {
    /// Opens the collector on `data` with `config` and serves it.
    pub fn start(config: kiln_collector::config::Config, data: &Path) -> InProcess {
        let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
        let listeners = rt
            .block_on(kiln_collector::server::Listeners::loopback())
            .expect("listeners on 127.0.0.1");
        let port = listeners.boot.local_addr().map(|a| a.port()).unwrap_or(0);
        let ops = listeners
            .management
            .local_addr()
            .map(|a| format!("https://{a}"))
            .unwrap_or_default();
        let collector = kiln_collector::server::Collector::open(config, data)
            .unwrap_or_else(|e| panic!("the collector does not open {}: {e:#}", data.display()));
        let pin = collector.tls.fingerprint.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(collector.serve(listeners, async move {
            let _ = stopped.await;
        }));
        InProcess {
            rt,
            port,
            ops,
            pin,
            stop: Some(stop),
        }
    }

    /// The JSON the management listener answers to GET `path`.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let answer = self
            .rt
            .block_on(kiln_collector::tls::get_pinned(
                &format!("{}{path}", self.ops),
                &self.pin,
            ))
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
        answer
            .json()
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A port free on 127.0.0.1 at this moment.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Where `.ci/test` builds the RAM image (`kiln image build --out …`), or `KILN_IMAGE_DIR`.
pub fn image_dir() -> PathBuf {
    std::env::var_os("KILN_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/image-artifacts"))
}

/// The lab as the VM tests run it: `nodes` under TCG on the built RAM image, 256 MiB of RAM
/// and disk each, at most 14 minutes, no progress bars, everything else as `kiln lab up` has
/// it. A test names what it changes and takes the rest (`..lab_options(…)`).
pub fn lab_options(dir: &Path, nodes: usize, suite: PathBuf) -> kiln_collector::lab::LabOptions {
    kiln_collector::lab::LabOptions {
        dir: dir.to_owned(),
        nodes,
        suite,
        suite_for: Vec::new(),
        mem_mib: 256,
        disk_mib: 256,
        uefi: false,
        image: Some(image_dir()),
        accel: "tcg".into(),
        timeout: std::time::Duration::from_secs(14 * 60),
        bars: false,
        profile: Default::default(),
        inject: Vec::new(),
        network: Default::default(),
        payload_mib: 0,
        rogue_peer: false,
        collectors: Default::default(),
    }
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
        let mut node = NodeCommand::new("tcg", spec.mem_mib)
            .args(["-smp", "2", "-no-reboot"])
            .network(port, &spec.nic, &spec.mac)
            .identity(&format!("serial={},uuid={}", spec.serial, spec.uuid))
            .console_file(&spec.console_log);
        if spec.uefi {
            node = node.uefi();
        }
        let mut cmd = node.command();
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

/// Writes guest *physical* memory through QEMU's gdbstub (`-gdb tcp:…`): the stub is switched
/// to physical addressing with `Qqemu.PhyMemMode:1`, the guest is stopped for the writes and
/// continued after. This is how the memtest tests put real bit errors into RAM under test.
pub struct GdbStub {
    stream: std::net::TcpStream,
}

impl GdbStub {
    /// Connects (retrying while QEMU starts) and switches to physical memory.
    pub fn connect(port: u16) -> std::io::Result<GdbStub> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut stub = GdbStub { stream };
        stub.command("?")?;
        stub.command("Qqemu.PhyMemMode:1")?;
        stub.command("c_nowait")?;
        Ok(stub)
    }

    fn send(&mut self, payload: &str) -> std::io::Result<()> {
        use std::io::Write;
        let sum = payload.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        write!(self.stream, "${payload}#{sum:02x}")
    }

    /// Reads one reply packet's payload (acknowledging it).
    fn reply(&mut self) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut byte = [0u8; 1];
        let mut payload = Vec::new();
        // Skip acks and anything before the packet start.
        loop {
            self.stream.read_exact(&mut byte)?;
            if byte[0] == b'$' {
                break;
            }
        }
        loop {
            self.stream.read_exact(&mut byte)?;
            if byte[0] == b'#' {
                break;
            }
            payload.push(byte[0]);
        }
        let mut sum = [0u8; 2];
        self.stream.read_exact(&mut sum)?;
        self.stream.write_all(b"+")?;
        Ok(String::from_utf8_lossy(&payload).into_owned())
    }

    /// Sends a command and waits for its reply; `c_nowait` continues without waiting.
    fn command(&mut self, payload: &str) -> std::io::Result<String> {
        if payload == "c_nowait" {
            self.send("c")?;
            return Ok(String::new());
        }
        self.send(payload)?;
        self.reply()
    }

    /// Stops the guest, writes `bytes` at physical address `addr`, and lets it run on.
    pub fn write_phys(&mut self, addr: u64, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.stream.write_all(&[0x03])?; // interrupt: the guest stops and a stop reply follows
        while !self.reply()?.starts_with(['T', 'S']) {}
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.send(&format!("M{addr:x},{:x}:{hex}", bytes.len()))?;
        // Stale stop replies may still be queued; the write's own answer is OK or Exx.
        let answer = loop {
            let r = self.reply()?;
            if r == "OK" || r.starts_with('E') {
                break r;
            }
        };
        if answer != "OK" {
            return Err(std::io::Error::other(format!(
                "gdbstub refused the write: {answer}"
            )));
        }
        self.command("c_nowait")?;
        Ok(())
    }
}
