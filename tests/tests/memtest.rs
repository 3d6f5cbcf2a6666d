//! memtest86+ in QEMU with real faults: bits flipped in guest RAM through QEMU's gdbstub while
//! memtest86+ runs must give a fail verdict naming the address; a reset in the middle of the
//! stage must give a fail, never a pass. Small (64 MB) guests keep the runs short.

use std::time::{Duration, Instant};

use kiln_collector::config::Source;
use kiln_collector::config::{Config, NodeAccess};
use kiln_collector::lab::qemu::NodeCommand;
use kiln_collector::memtest::power::Power;
use kiln_tests::{GdbStub, InProcess, free_port, image_dir, scratch};
use serde_json::Value;

const SUITE: &str = "suite: mt\ndescription: memtest only.\nmemtest: {passes: 1, timeout: 8m, stall_timeout: 2m, skip_tests: [10]}\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n";

struct Rig {
    collector: InProcess,
    qemu: std::process::Child,
    qmp: std::path::PathBuf,
    gdb_port: u16,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

fn rig(name: &str) -> Rig {
    let image = image_dir();
    let data = scratch(name);
    std::fs::create_dir_all(data.join("artifacts")).unwrap();
    std::fs::copy(
        image.join("memtest86+x64.bin"),
        data.join("artifacts/memtest86+x64.bin"),
    )
    .expect("image built by .ci/test");
    std::fs::create_dir_all(data.join("suites")).unwrap();
    std::fs::write(data.join("suites/mt.yaml"), SUITE).unwrap();
    let mac = "52:54:00:7e:00:01";
    let console = free_port();
    let qmp = data.join("qmp.sock");
    let nodes = vec![NodeAccess {
        mac: Some(mac.into()),
        rack: None,
        console: Some(Source::Tcp(format!("127.0.0.1:{console}"))),
        power: Some(Power::Qmp(qmp.clone())),
    }];
    let config = Config {
        default_suite: "mt".into(),
        after_verify: kiln_collector::config::AfterVerify::Hold,
        nodes,
        ..Config::default()
    };
    let collector = InProcess::start(config, &data);
    let gdb_port = free_port();
    let qemu = NodeCommand::new("tcg", 64)
        .network(collector.port, "virtio-net-pci", mac)
        .identity("serial=KILNMT01")
        .console_tcp(console)
        .qmp(&qmp)
        .args(["-gdb".to_owned(), format!("tcp:127.0.0.1:{gdb_port}")])
        .command()
        .spawn()
        .expect("qemu-system-x86_64 is installed by .ci/setup");
    Rig {
        collector,
        qemu,
        qmp,
        gdb_port,
    }
}

impl Rig {
    fn run(&self) -> Value {
        self.collector.json("/api/v1/runs/1")
    }

    fn memtest_state(&self) -> Option<String> {
        let run = self.run();
        run["stages"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "memtest")
            .and_then(|s| s["state"].as_str().map(str::to_owned))
    }

    /// Waits until memtest86+ has been running on the node for `settle`.
    fn wait_for_memtest(&self, settle: Duration) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.memtest_state().as_deref() != Some("running") {
            assert!(
                Instant::now() < deadline,
                "the node never reached memtest86+"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        std::thread::sleep(settle);
    }

    fn wait_for_verdict(&self, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let run = self.run();
            if run["verdict"].is_string() {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "no verdict within {limit:?}: {run}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn bits_flipped_in_guest_ram_fail_memtest_with_their_address() {
    let rig = rig("memtest-errors");
    // memtest86+ needs a few seconds to draw its screen and start testing.
    rig.wait_for_memtest(Duration::from_secs(12));
    let mut gdb = GdbStub::connect(rig.gdb_port).unwrap();
    // Flip bits in words inside the tested range (above 4 MB) every few seconds until a verdict
    // comes: a test that writes its pattern over a flip before verifying it never sees that
    // one, so flipping only for a while lost the race now and then.
    let mut flipped = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let run = 'flipping: {
        for round in 0..60u64 {
            for (i, addr) in [0x0210_0000u64, 0x0230_0008, 0x0250_0010]
                .iter()
                .enumerate()
            {
                let value = (0xA5u8 ^ (round as u8) ^ (i as u8)).to_le_bytes();
                // The guest may already have stopped once memtest failed.
                if gdb.write_phys(addr + round * 0x1000, &value).is_err() {
                    break 'flipping rig.wait_for_verdict(Duration::from_secs(60));
                }
                flipped.push(addr + round * 0x1000);
            }
            std::thread::sleep(Duration::from_secs(3));
            let run = rig.run();
            if run["verdict"].is_string() {
                break 'flipping run;
            }
            assert!(Instant::now() < deadline, "no verdict within 240 s: {run}");
        }
        rig.wait_for_verdict(Duration::from_secs(60))
    };
    assert_eq!(run["verdict"], "fail", "{run}");
    let memtest = &run["memtest"];
    assert_eq!(memtest["pass"], false, "{memtest}");
    assert!(
        memtest["detail"]
            .as_str()
            .unwrap()
            .starts_with("memtest86+ found"),
        "{memtest}"
    );
    let rows = memtest["reading"]["error_rows"].as_array().unwrap();
    assert!(!rows.is_empty(), "{memtest}");
    // Every address memtest86+ names is one of the words written (memtest reports the
    // failing word's address, 8-byte aligned; one byte of it was written).
    for row in rows {
        let text = row["address"].as_str().unwrap();
        assert_eq!(text.len(), 12, "{rows:?}");
        let address = u64::from_str_radix(text, 16).unwrap();
        assert!(
            flipped.iter().any(|f| address & !7 == f & !7),
            "memtest86+ named 0x{address:x}, not a flipped word ({flipped:x?})"
        );
    }
    assert!(
        memtest["detail"].as_str().unwrap().contains("first at 0x"),
        "{memtest}"
    );
    assert!(memtest["screen"].as_str().unwrap().contains("Failed!"));
}

#[test]
fn a_reset_in_the_middle_of_memtest_fails_the_stage() {
    let rig = rig("memtest-reboot");
    rig.wait_for_memtest(Duration::from_secs(8));
    rig.collector
        .rt
        .block_on(kiln_collector::memtest::power::qmp(
            &rig.qmp,
            &[serde_json::json!({ "execute": "system_reset" })],
        ))
        .unwrap();
    let run = rig.wait_for_verdict(Duration::from_secs(120));
    assert_eq!(run["verdict"], "fail", "{run}");
    let detail = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "memtest")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.starts_with("unexpected reboot"), "{detail}");
}
