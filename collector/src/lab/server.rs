//! The lab's server profile (`kiln lab up --profile server`): nodes that have what a rack
//! server has, so the RAM image's native readers meet real (emulated) hardware — a q35
//! machine with PCIe root ports, an NVMe disk behind one of them, a SATA disk on the
//! chipset's AHCI, the NIC behind another root port with AER, an IPMI BMC (OpenIPMI's
//! `ipmi_sim`, one per node, reached over `ipmi-bmc-extern` + KCS), and SMBIOS tables with
//! serials and a DIMM entry.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// A node's BMC: the `ipmi_sim` process and its console (its standard input), through which
/// events are added to its System Event Log.
pub struct Bmc {
    child: Child,
    console: ChildStdin,
    /// The TCP port QEMU's `ipmi-bmc-extern` connects to.
    pub port: u16,
}

impl Bmc {
    /// Starts `ipmi_sim` for node `i` with its configuration and state under `dir`: a BMC at
    /// IPMB address 20h with a System Event Log, serving the system interface on
    /// 127.0.0.1:`port` with the VM codec QEMU speaks; no LAN channel.
    pub fn start(dir: &Path, i: usize, port: u16) -> anyhow::Result<Bmc> {
        let state = dir.join(format!("node-{i}-bmc"));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state)?;
        let conf = state.join("lan.conf");
        std::fs::write(
            &conf,
            format!(
                "name \"kiln-lab-{i}\"\nset_working_mc 0x20\n  serial 15 127.0.0.1 {port} codec VM\n"
            ),
        )?;
        let emu = state.join("bmc.emu");
        // mc_add: IPMB 20h, device id 0, no device SDRs, revision 3, firmware 9.08, IPMI
        // 2.0 support bits 9fh, manufacturer 1291h (as OpenIPMI's example); a 1000-entry SEL;
        // the sensors and their repository.
        std::fs::write(
            &emu,
            format!(
                "mc_setbmc 0x20\n\
                 mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\n\
                 sel_enable 0x20 1000 0x0a\n\
                 {}\
                 mc_enable 0x20\n",
                sensor_lines()
            ),
        )?;
        // Its console echo and complaints, for when it misbehaves.
        let log = state.join("ipmi_sim.log");
        let mut cmd = Command::new("ipmi_sim");
        cmd.arg("-c")
            .arg(&conf)
            .arg("-f")
            .arg(&emu)
            .arg("-s")
            .arg(&state)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?);
        super::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start ipmi_sim (package openipmi): {e}"))?;
        let console = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("ipmi_sim has no console"))?;
        // QEMU's chardev reconnects, but only every few seconds: wait for the listener. Not
        // by connecting to it: ipmi_sim greets whoever connects as its VM, and a probe that
        // hangs up kills it with SIGPIPE.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !listening(port) {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "ipmi_sim for node {i} exited ({status}); see {}",
                    log.display()
                );
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "ipmi_sim for node {i} did not listen on 127.0.0.1:{port} within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(Bmc {
            child,
            console,
            port,
        })
    }

    /// The process id (recorded with the VMs', so `kiln lab down` stops it too).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Types one line on the simulator's console.
    pub fn command(&mut self, line: &str) -> anyhow::Result<()> {
        self.console
            .write_all(line.as_bytes())
            .and_then(|()| self.console.flush())
            .map_err(|e| anyhow::anyhow!("ipmi_sim console: {e}"))
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether something listens on 127.0.0.1:`port` (from `/proc/net/tcp`: local address
/// `0100007F:PORT`, state 0A).
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/thread-self/net/tcp").is_ok_and(|table| {
        table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

/// One sensor of the lab's BMC: a linear threshold sensor, raw byte × `m` in its unit.
struct LabSensor {
    number: u8,
    name: &'static str,
    /// IPMI entity (table 43-13) and sensor type (table 42-3).
    entity: u8,
    sensor_type: u8,
    /// IPMI base unit (table 43-15).
    unit: u8,
    m: u8,
    /// The raw reading at power-on.
    raw: u8,
    /// Raw lower and upper critical thresholds, 0 for none.
    low: u8,
    high: u8,
}

/// The lab BMC's sensors: inlet and CPU temperature, two fans, a PSU's input power.
const SENSORS: [LabSensor; 5] = [
    LabSensor {
        number: 1,
        name: "Inlet Temp",
        entity: 0x37,
        sensor_type: 0x01,
        unit: 1,
        m: 1,
        raw: 24,
        low: 0,
        high: 42,
    },
    LabSensor {
        number: 2,
        name: "CPU Temp",
        entity: 0x03,
        sensor_type: 0x01,
        unit: 1,
        m: 1,
        raw: 45,
        low: 0,
        high: 95,
    },
    LabSensor {
        number: FAN1,
        name: "FAN1",
        entity: 0x1d,
        sensor_type: 0x04,
        unit: 18,
        m: 50,
        raw: 96,
        low: 20,
        high: 0,
    },
    LabSensor {
        number: 4,
        name: "FAN2",
        entity: 0x1d,
        sensor_type: 0x04,
        unit: 18,
        m: 50,
        raw: 98,
        low: 20,
        high: 0,
    },
    LabSensor {
        number: PSU1,
        name: "PSU1 Input Power",
        entity: 0x0a,
        sensor_type: 0x08,
        unit: 6,
        m: 10,
        raw: 35,
        low: 0,
        high: 100,
    },
];

/// The power supplies' redundancy sensor (`psu-redundancy-lost` sets its state 1).
pub const PSU_REDUNDANCY: u8 = 6;

/// FAN1's sensor number (`fan-fail` stops it).
pub const FAN1: u8 = 3;
/// The PSU input power sensor's number (`psu-watts` sets it).
pub const PSU1: u8 = 5;
/// Watts per raw step of the PSU sensor, and the most it reads.
pub const PSU_WATTS_STEP: u32 = 10;

/// `ipmi_sim` commands that add each sensor, set its thresholds and value, and add its full
/// sensor record (IPMI 2.0 table 43-1) to the main SDR repository.
fn sensor_lines() -> String {
    let mut out = String::new();
    for s in &SENSORS {
        let n = s.number;
        // Enabled thresholds, UNR…LNC from the left; values in the same order.
        let enabled = format!("0{}00{}0", u8::from(s.high != 0), u8::from(s.low != 0));
        out += &format!(
            "sensor_add 0x20 0 {n} {:#04x} 0x01\n\
             sensor_set_threshold 0x20 0 {n} settable {enabled} 0 {} 0 0 {} 0\n\
             sensor_set_event_support 0x20 0 {n} enable scanning per-state 000000000000000 000000000000000 000000000000000 000000000000000\n\
             sensor_set_value 0x20 0 {n} {} 0\n\
             main_sdr_add 0x20 {}\n",
            s.sensor_type,
            s.high,
            s.low,
            s.raw,
            bytes(&full_record(s))
        );
    }
    // The supplies' redundancy: a state sensor (power unit 09h, redundancy states 0Bh) in a
    // compact record, fully redundant (state 0) at power-on.
    let name = "PS Redundancy";
    let mut r = vec![0u8; 32];
    r[2] = 0x51;
    r[3] = 0x02;
    r[5] = 0x20;
    r[7] = PSU_REDUNDANCY;
    r[8] = 0x13;
    r[9] = 1;
    r[10] = 0x63;
    r[12] = 0x09;
    r[13] = 0x0b;
    r[31] = 0xc0 | name.len() as u8;
    r.extend_from_slice(name.as_bytes());
    r[4] = (r.len() - 5) as u8;
    let n = PSU_REDUNDANCY;
    out += &format!(
        "sensor_add 0x20 0 {n} 0x09 0x0b\n\
         sensor_set_event_support 0x20 0 {n} enable scanning per-state 000000000000000 000000000000000 000000000000000 000000000000000\n\
         sensor_set_bit_clr_rest 0x20 0 {n} 0 1 0\n\
         main_sdr_add 0x20 {}\n",
        bytes(&r)
    );
    out
}

fn bytes(record: &[u8]) -> String {
    record
        .iter()
        .map(|b| format!("{b:#04x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The console line that asserts state `bit` of sensor `number` alone, with an event.
pub fn sensor_state_line(number: u8, bit: u8) -> String {
    format!("sensor_set_bit_clr_rest 0x20 0 {number} {bit} 1 1\n")
}

/// A full sensor record for `s`: owner 20h LUN 0, threshold type, unsigned, linear, M = `m`,
/// the critical thresholds it has readable, an 8-bit ASCII name.
fn full_record(s: &LabSensor) -> Vec<u8> {
    let mut r = vec![0u8; 48];
    r[2] = 0x51;
    r[3] = 0x01;
    r[5] = 0x20;
    r[7] = s.number;
    r[8] = s.entity;
    r[9] = 1;
    // Initialization: scanning and events enabled; capabilities: thresholds readable.
    r[10] = 0x63;
    r[11] = 0x48;
    r[12] = s.sensor_type;
    r[13] = 0x01;
    r[18] = if s.low != 0 { 0x02 } else { 0 } | if s.high != 0 { 0x10 } else { 0 };
    r[21] = s.unit;
    r[24] = s.m;
    r[34] = 0xff;
    r[37] = s.high;
    r[40] = s.low;
    r[47] = 0xc0 | s.name.len() as u8;
    r.extend_from_slice(s.name.as_bytes());
    r[4] = (r.len() - 5) as u8;
    r
}

/// The console line that sets sensor `number` to `raw`, with an event if it crosses.
pub fn sensor_set_line(number: u8, raw: u8) -> String {
    format!("sensor_set_value 0x20 0 {number} {raw} 1\n")
}

/// A server node's disks: NVMe and SATA scratch images.
pub struct Disks {
    /// Behind root port 1 as `nvme0` (serial KILNNVMEnn).
    pub nvme: PathBuf,
    /// On the chipset's AHCI (serial KILNSATAnn).
    pub sata: PathBuf,
    /// For a node its suite power-cycles: on a virtio-scsi controller as `scsi0` (serial
    /// KILNSCSInn, product "KILN SCSI"). A SCSI disk leaves at once on `device_del`, with no
    /// guest to ask, as a disk lost between two power cycles does.
    pub scsi: Option<PathBuf>,
}

/// The QEMU id of the disk `drop-disk` removes.
pub const DROPPED_DISK: &str = "scsi0";

/// The QEMU arguments that make node `i` a server: machine, root ports, disks, NIC, BMC and
/// DIMM table. `narrow_slot` limits the NIC's root port to x1 at 2.5 GT/s.
pub fn qemu_args(
    i: usize,
    mac: &str,
    netdev: &str,
    disks: &Disks,
    bmc_port: u16,
    narrow_slot: bool,
) -> Vec<String> {
    let nic_port = if narrow_slot {
        "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2,x-width=1,x-speed=2_5"
    } else {
        "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2"
    };
    [
        "-machine",
        "q35",
        "-netdev",
        netdev,
        "-device",
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1",
        "-device",
        nic_port,
        "-device",
        &format!("virtio-net-pci,netdev=n0,mac={mac},bus=rp2,id=nic0,aer=on"),
        "-drive",
        &format!(
            "if=none,id=nvm,format=qcow2,file={}",
            disks.nvme.display()
        ),
        "-device",
        &format!("nvme,id=nvme0,serial=KILNNVME{i:02},drive=nvm,bus=rp1"),
        "-drive",
        &format!(
            "if=none,id=sata,format=qcow2,file={}",
            disks.sata.display()
        ),
        "-device",
        &format!("ide-hd,drive=sata,bus=ide.0,serial=KILNSATA{i:02}"),
        "-chardev",
        &format!("socket,id=ipmi0,host=127.0.0.1,port={bmc_port},reconnect=2"),
        "-device",
        "ipmi-bmc-extern,chardev=ipmi0,id=bmc0",
        "-device",
        "isa-ipmi-kcs,bmc=bmc0",
        "-smbios",
        &format!("type=2,manufacturer=kiln,product=lab-board,serial=KILNBRD{i:02}"),
        "-smbios",
        &format!("type=3,manufacturer=kiln,serial=KILNCHS{i:02},asset=KILN-ASSET-{i:02}"),
        "-smbios",
        &format!(
            "type=17,loc_pfx=DIMM,bank=P0_CH0,manufacturer=kiln,serial=KILNDIMM{i:02},asset=KILN-DIMM-{i:02},part=KILN-DDR4-LAB,speed=3200"
        ),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(disks.scsi.iter().flat_map(|scsi| {
        [
            "-device".to_owned(),
            "virtio-scsi-pci,id=vscsi,bus=pcie.0".to_owned(),
            "-drive".to_owned(),
            format!("if=none,id=scsi,format=qcow2,file={}", scsi.display()),
            "-device".to_owned(),
            format!(
                "scsi-hd,id={DROPPED_DISK},drive=scsi,bus=vscsi.0,serial=KILNSCSI{i:02},product=KILN SCSI"
            ),
        ]
    }))
    .collect()
}
