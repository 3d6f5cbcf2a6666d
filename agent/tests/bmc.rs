//! The BMC sensor reader against a real BMC: OpenIPMI's `ipmi_sim` (package `openipmi`,
//! which `.ci/setup` installs), reached over RMCP on 127.0.0.1 — the same requests the agent
//! sends over `/dev/ipmi0` in the RAM image, from a BMC whose repository each test writes:
//! empty, malformed, two thousand sensors long, or stopped mid-read.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_agent::hw::sensors::{read, repository};

/// A running `ipmi_sim` with one LAN channel on a loopback port, killed on drop.
struct Sim {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `ipmi_sim` whose BMC runs `emu` (its sensors and SDRs) after the MC is added.
fn sim(name: &str, emu: &str) -> Sim {
    let dir = std::env::temp_dir().join(format!("kiln-bmc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.join("lan.conf"),
        format!(
            "name \"kiln-test\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n    allowed_auths_callback straight\n    allowed_auths_user straight\n    allowed_auths_operator straight\n    allowed_auths_admin straight\n    guid a123456789abcdefa123456789abcdef\n  endlan\n  user 2 true \"kiln\" \"kiln\" admin 10 straight\n"
        ),
    )
    .unwrap();
    let mut file = std::fs::File::create(dir.join("bmc.emu")).unwrap();
    write!(
        file,
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\n{emu}mc_enable 0x20\n"
    )
    .unwrap();
    let child = Command::new("ipmi_sim")
        .arg("-c")
        .arg(dir.join("lan.conf"))
        .arg("-f")
        .arg(dir.join("bmc.emu"))
        .arg("-s")
        .arg(&dir)
        .arg("-n")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ipmi_sim (package openipmi)");
    let sim = Sim { child, port, dir };
    // It reads its emu file before it answers; give it until it does.
    let deadline = Instant::now() + Duration::from_secs(90);
    while let Err(e) = connect(&sim) {
        assert!(
            Instant::now() < deadline,
            "ipmi_sim never answered on {port}: {e}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sim
}

fn connect(sim: &Sim) -> Result<ipmi_rs::rmcp::Rmcp, String> {
    let mut rmcp = ipmi_rs::rmcp::Rmcp::new(("127.0.0.1", sim.port), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    rmcp.activate(false, Some("kiln"), Some(b"kiln"))
        .map_err(|e| format!("{e:?}"))?;
    Ok(rmcp)
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(120)
}

#[test]
fn an_empty_repository_is_said_by_a_real_bmc() {
    let sim = sim("empty", "");
    let mut bmc = connect(&sim).unwrap();
    let err = repository(&mut bmc, later()).unwrap_err();
    assert!(err.starts_with("Get SDR 0x0000: "), "{err}");
}

/// A full sensor record for an inlet temperature sensor `number` (°C, M = 1, upper critical
/// 42), as `main_sdr_add` takes it: its bytes in hex.
fn inlet_record(number: u8) -> String {
    let name = format!("Inlet {number}");
    let mut r = vec![0u8; 48];
    r[2] = 0x51;
    r[3] = 0x01;
    r[5] = 0x20;
    r[7] = number;
    r[8] = 0x37;
    r[10] = 0x63;
    r[12] = 0x01;
    r[13] = 0x01;
    r[18] = 0x10;
    r[21] = 1;
    r[24] = 1;
    r[37] = 42;
    r[47] = 0xc0 | name.len() as u8;
    r.extend_from_slice(name.as_bytes());
    r[4] = (r.len() - 5) as u8;
    hex(&r)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:#04x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sensor itself, reading `raw`, with scanning on.
fn inlet_sensor(number: u8, raw: u8) -> String {
    format!(
        "sensor_add 0x20 0 {number} 0x01 0x01\n\
         sensor_set_event_support 0x20 0 {number} enable scanning per-state 000000000000000 000000000000000 000000000000000 000000000000000\n\
         sensor_set_value 0x20 0 {number} {raw} 0\n\
         main_sdr_add 0x20 {}\n",
        inlet_record(number)
    )
}

#[test]
fn a_malformed_record_is_named_and_the_rest_are_read() {
    // A full sensor record that ends after 15 bytes, between two good ones.
    let short = hex(&[
        0, 0, 0x51, 0x01, 10, 0x20, 0, 9, 0x37, 0, 0, 0, 0x01, 0x01, 0,
    ]);
    let sim = sim(
        "malformed",
        &format!(
            "{}main_sdr_add 0x20 {short}\n{}",
            inlet_sensor(1, 24),
            inlet_sensor(2, 50)
        ),
    );
    let mut bmc = connect(&sim).unwrap();
    let repo = repository(&mut bmc, later()).unwrap();
    let names: Vec<&str> = repo.sensors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Inlet 1", "Inlet 2"]);
    assert_eq!(repo.problems.len(), 1, "{:?}", repo.problems);
    // ipmi_sim hands the short record back longer than its header says (padded): either way
    // it is named, not read as a sensor.
    assert!(
        repo.problems[0].starts_with("SDR record 0x0002: its header says 10 bytes follow"),
        "{:?}",
        repo.problems
    );
    // And the good ones read, converted as the BMC states them.
    assert_eq!(read(&mut bmc, &repo.sensors[0]), Ok(24));
    assert_eq!(
        repo.sensors[1].value(read(&mut bmc, &repo.sensors[1]).unwrap()),
        50.0
    );
}

/// Two thousand: `ipmi_sim` rewrites its whole repository file on every `main_sdr_add`, so
/// loading takes the square of the count (1,000 in 3 s here; 5,000 not within a minute). The
/// walk's bounds at 5,000 and 9,000 are the unit tests' (`hw::sensors`).
#[test]
fn two_thousand_sensors_are_walked() {
    let emu: String = (0..2000)
        .map(|i| format!("main_sdr_add 0x20 {}\n", inlet_record((i % 250) as u8 + 1)))
        .collect();
    let sim = sim("many", &emu);
    let mut bmc = connect(&sim).unwrap();
    let repo = repository(&mut bmc, later()).unwrap();
    assert_eq!(repo.sensors.len(), 2000, "{:?}", repo.problems);
    assert!(repo.problems.is_empty(), "{:?}", repo.problems);
}

#[test]
fn a_bmc_that_stops_answering_times_out_and_says_so() {
    let sim = sim("stopped", &inlet_sensor(1, 24));
    let mut bmc = connect(&sim).unwrap();
    let repo = repository(&mut bmc, later()).unwrap();
    // SAFETY: kill has no memory preconditions; the PID is the simulator this test started.
    unsafe { libc::kill(sim.child.id() as i32, libc::SIGSTOP) };
    let asked = Instant::now();
    let err = read(&mut bmc, &repo.sensors[0]).unwrap_err();
    let waited = asked.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(sim.child.id() as i32, libc::SIGCONT) };
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    assert!(!err.is_empty());
    let err = repository(&mut bmc, Instant::now() - Duration::from_secs(1));
    // A deadline already past: the walk ends at once with its reason, whatever the BMC does.
    assert!(err.is_ok_and(|r| r.problems[0].contains("took too long")));
}
