//! The real boot chain under QEMU (TCG): Debian's iPXE ROM fetches `boot.ipxe` from a running
//! collector, chains to the node's script, boots the RAM image (kernel + initramfs from the
//! artifacts), and the agent in it registers the node, posts its inventory and runs the suite.
//! Each guest is bounded in time and killed on failure.

use std::path::Path;
use std::time::Duration;

use kiln_collector::config::Config;
use kiln_tests::InProcess;
use kiln_tests::{Node, NodeSpec, image_dir, scratch};
use serde_json::Value;

/// A guest boots in about 15 s under TCG; OVMF adds some. The bound leaves room for a busy CI.
const BOOT_LIMIT: Duration = Duration::from_secs(240);

/// The boot chain is under test, not the balance of two TCG vCPUs on a host busy with other
/// guests: the per-core spread may be anything (a fault would still fail the step).
const SUITE: &str = "suite: boot-test\ndescription: Network-boot test.\nsteps:\n  - name: cpu\n    cpu: {duration: 2s, workloads: [integer], degraded: {max_core_spread_pct: 100}}\n";

/// Whether the collector reads the guest's serial console (the file QEMU writes it to).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Console {
    Read,
    NotRead,
}

fn boot_and_check(name: &str, nic: &str, uefi: bool, n: u8, driver: &str, read: Console) {
    let image = image_dir();
    assert!(
        image.join("initramfs.img").exists() && image.join("vmlinuz").exists(),
        "no RAM image in {}: build it with `kiln image build --out {}` (.ci/test does)",
        image.display(),
        image.display()
    );
    let data = scratch(name);
    std::fs::create_dir_all(data.join("artifacts")).unwrap();
    for file in ["vmlinuz", "initramfs.img"] {
        std::fs::copy(image.join(file), data.join("artifacts").join(file)).unwrap();
    }
    std::fs::create_dir_all(data.join("suites")).unwrap();
    std::fs::write(data.join("suites/boot-test.yaml"), SUITE).unwrap();
    let mac = format!("52:54:00:4b:00:{n:02x}");
    let console_log = data.join("console.log");
    let nodes = match read {
        Console::Read => vec![kiln_collector::config::NodeAccess {
            mac: Some(mac.clone()),
            rack: None,
            console: Some(kiln_collector::config::Source::File(console_log.clone())),
            power: None,
        }],
        Console::NotRead => Vec::new(),
    };
    let config = Config {
        default_suite: "boot-test".into(),
        after_verify: kiln_collector::config::AfterVerify::Poweroff,
        nodes,
        ..Config::default()
    };

    let collector = InProcess::start(config, &data);

    let serial = format!("KILNTEST{n:02}");
    let spec = NodeSpec {
        nic: nic.into(),
        uefi,
        mac: mac.clone(),
        serial: serial.clone(),
        uuid: format!("6f1a0c4e-0000-4000-8000-0000000000{n:02x}"),
        mem_mib: 512,
        console_log: console_log.clone(),
    };
    let mut node =
        Node::start(&spec, collector.port).expect("qemu-system-x86_64 is installed by .ci/setup");
    let powered_off = node.wait(BOOT_LIMIT);
    let console = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
    let tail: String = console
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        powered_off,
        "the guest did not finish within {BOOT_LIMIT:?}; console tail:\n{tail}"
    );

    let nodes: Vec<Value> = serde_json::from_value(collector.json("/api/v1/nodes")).unwrap();
    let node_row = nodes
        .iter()
        .find(|r| r["serial"] == serial.as_str())
        .unwrap_or_else(|| panic!("node {serial} not registered: {nodes:?}\n{tail}"));
    assert_eq!(node_row["macs"], spec.mac, "{node_row}");
    // Passed, and vouched for by its console where the collector reads it; without that, the
    // same run is only unattested.
    match read {
        Console::Read => {
            assert_eq!(node_row["verdict"], "pass", "{node_row}\n{tail}");
            assert!(console_text_has_attestation(&spec.console_log, node_row));
        }
        Console::NotRead => {
            assert_eq!(node_row["verdict"], "unattested", "{node_row}\n{tail}");
            assert!(
                node_row["faults"]
                    .to_string()
                    .contains("unattested: no console capture"),
                "{node_row}"
            );
        }
    }
    let run = collector.json(&format!("/api/v1/runs/{}", node_row["run_id"]));
    let inventory = &run["inventory"];
    assert_eq!(inventory["system"]["serial"], serial.as_str(), "{run}");
    assert_eq!(inventory["system"]["vendor"], "QEMU");
    let nics = inventory["nics"].as_array().unwrap();
    assert!(
        nics.iter()
            .any(|n| n["mac"] == spec.mac.as_str() && n["driver"] == driver),
        "{nics:?}"
    );
    assert!(run["log_lines"].as_i64().unwrap() > 0);
    // Root filesystem entirely in RAM: the agent saw no mounted disk, and /init said so.
    assert!(console.contains("kiln: RAM image up"), "{tail}");
    drop(collector);
    let _ = std::fs::remove_dir_all(Path::new(&data).join("artifacts"));
}

/// The agent wrote its run's attestation on the serial console.
fn console_text_has_attestation(log: &Path, row: &Value) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(kiln_protocol::attest::parse)
        .any(|claim| Some(claim.run) == row["run_id"].as_i64())
}

#[test]
fn a_bios_node_with_virtio_boots_the_image_and_reports() {
    boot_and_check(
        "boot-virtio",
        "virtio-net-pci",
        false,
        1,
        "virtio_net",
        Console::Read,
    );
}

#[test]
fn a_bios_node_with_e1000_whose_console_is_not_read_is_unattested() {
    boot_and_check("boot-e1000", "e1000", false, 2, "e1000", Console::NotRead);
}

#[test]
fn a_uefi_node_boots_the_image_and_reports() {
    assert!(
        Path::new("/usr/share/OVMF/OVMF_CODE.fd").exists(),
        "OVMF is installed by .ci/setup (apt-get install ovmf)"
    );
    boot_and_check(
        "boot-uefi",
        "virtio-net-pci",
        true,
        3,
        "virtio_net",
        Console::Read,
    );
}

#[test]
fn the_image_build_is_reproducible_and_within_its_size_target() {
    let agent = kiln_tests::repo().join("target/image/x86_64-unknown-linux-gnu/release/kiln-agent");
    assert!(
        agent.exists(),
        "the static kiln-agent is built by `kiln image build` (.ci/test runs it)"
    );
    let inputs = kiln_collector::image::Inputs {
        cache: kiln_tests::repo().join(".kiln-cache"),
        agent,
        busybox: "/bin/busybox".into(),
        kernel_package: None,
        firmware: Vec::new(),
        packages: Vec::new(),
        ballast_mib: 0,
    };
    let dir = scratch("image-twice");
    let first = kiln_collector::image::build(&inputs, &dir.join("a")).unwrap();
    let second = kiln_collector::image::build(&inputs, &dir.join("b")).unwrap();
    let digests = |b: &kiln_collector::image::Built| {
        b.files
            .iter()
            .map(|(p, _, d)| (p.file_name().unwrap().to_owned(), d.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        digests(&first),
        digests(&second),
        "two builds from the same inputs differ"
    );
    let image: u64 = first
        .files
        .iter()
        .filter(|(p, _, _)| p.ends_with("vmlinuz") || p.ends_with("initramfs.img"))
        .map(|(_, s, _)| s)
        .sum();
    assert!(
        image <= 24_000_000,
        "kernel + initramfs are {image} bytes; the target is 24 MB"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
