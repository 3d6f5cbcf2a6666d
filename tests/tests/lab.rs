//! The lab end to end (`kiln lab up`, in process), under TCG through the real boot chain.
//!
//! - Basic profile: two QEMU nodes through memtest86+ (test #10 deselected) and the RAM
//!   image. Node A runs the lab suite and must pass; node B's suite expects 64 CPUs and must
//!   fail with exactly that fault. Checked from the collector's SQLite file and the lab's
//!   JSON report.
//! - Server profile: seven q35 nodes with NVMe, SATA, a BMC (ipmi_sim), PCIe root ports and
//!   a DIMM table. One stays clean and must pass; into each other one a real fault goes
//!   while its memory step runs (NVMe critical warning, corrected machine check, fatal
//!   machine check, BMC event log entry, PCIe AER error) or from power-on (the NIC's slot
//!   narrowed, and a suite that wants two DIMMs), and each must fail naming its fault.
//!
//! - Power cycles: two server nodes cold-cycled three times through QMP. One must pass
//!   with four boot ids; the other has its SCSI disk pulled before cycle 2 and must fail
//!   naming cycle 2 and the disk's serial.
//!
//! - Bridge network with a payload: four nodes on one Linux bridge in a namespace of the
//!   lab's, DHCP from dnsmasq, a 48 MiB payload fetched in verified pieces from each other
//!   and the collector; a rogue host on the segment serving wrong bytes, and node 2 killed
//!   as soon as it has served a piece. The other three must pass, having caught the rogue's
//!   pieces by their hash, with bytes from peers and none from the rogue.
//!
//! - Bridge network, a rack: four nodes, the lab's lldpd as the switch and the lab's map
//!   imported, every NIC measured against another node (`target: peer`); nodes 2 and 3 have
//!   their cables crossed (each VM on the other's tap). Every node is paired and measured
//!   both ways; 1 and 4 pass; 2 and 3 fail, each naming the other and both ports. A 64 MiB
//!   payload reaches all four with the collector serving at most two copies.
//!
//! Bounded: each lab gives up after 14 minutes and stops every process it started.

use kiln_collector::lab::{LabOptions, Network, Profile, up};
use kiln_tests::{image_dir, repo, scratch};

#[test]
fn two_lab_nodes_pass_and_fail_through_memtest_and_linux() {
    let image = image_dir();
    assert!(
        image.join("memtest86+x64.bin").exists(),
        "no image in {}: `kiln image build --out {}` (.ci/test does)",
        image.display(),
        image.display()
    );
    let dir = scratch("lab-e2e");
    let lab = std::fs::read_to_string(repo().join("suites/lab.yaml")).unwrap();
    let greedy = lab.replace(
        "  cpu:\n    min_logical: 1\n",
        "  cpu:\n    min_logical: 64\n",
    );
    assert_ne!(
        greedy, lab,
        "the lab suite's expect block changed; update this test"
    );
    std::fs::write(dir.join("needs-64-cpus.yaml"), greedy).unwrap();
    let opts = LabOptions {
        suite_for: vec![(2, dir.join("needs-64-cpus.yaml"))],
        disk_mib: 1024,
        ..kiln_tests::lab_options(&dir, 2, repo().join("suites/lab.yaml"))
    };
    let report = up(&opts).unwrap();

    let (a, b) = (&report.nodes[0], &report.nodes[1]);
    assert_eq!(a.verdict, "pass", "{a:?}");
    assert_eq!(a.memtest.as_deref(), Some("pass"));
    assert!(a.memtest_passes.unwrap_or(0) >= 1, "{a:?}");
    assert_eq!(a.steps, "4/4", "{a:?}");
    assert!(a.faults.is_empty(), "{a:?}");
    assert_eq!(b.verdict, "fail", "{b:?}");
    assert_eq!(b.memtest.as_deref(), Some("pass"));
    assert_eq!(
        b.faults,
        ["expect: expected ≥ 64 logical CPUs, found 1"],
        "{b:?}"
    );

    // The same from the JSON report on disk and the SQLite file.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        json["nodes"][1]["faults"][0],
        "expect: expected ≥ 64 logical CPUs, found 1"
    );
    let db = rusqlite::Connection::open(report.data.join("kiln.sqlite")).unwrap();
    let runs: i64 = db
        .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 2);
    for (run, verdict) in [(a.run_id.unwrap(), "pass"), (b.run_id.unwrap(), "fail")] {
        let stored: String = db
            .query_row("SELECT verdict FROM runs WHERE id = ?1", [run], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(stored, verdict);
        let stages: Vec<(String, String, String)> = db
            .prepare("SELECT name, state, verdict FROM stages WHERE run_id = ?1 ORDER BY name")
            .unwrap()
            .query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            stages,
            [
                ("linux".into(), "done".into(), verdict.into()),
                ("memtest".into(), "done".into(), "pass".into())
            ]
        );
        let logs: i64 = db
            .query_row(
                "SELECT count(*) FROM events WHERE run_id = ?1 AND kind = 'log'",
                [run],
                |r| r.get(0),
            )
            .unwrap();
        assert!(logs > 0, "run {run} has no log lines");
        let reading: String = db
            .query_row(
                "SELECT reading FROM memtest_results WHERE run_id = ?1",
                [run],
                |r| r.get(0),
            )
            .unwrap();
        let reading: serde_json::Value = serde_json::from_str(&reading).unwrap();
        assert!(
            reading["passes"].as_u64().unwrap() >= 1 && reading["errors"] == 0,
            "{reading}"
        );
        // The console was followed into Linux: the RAM image's own first line is in the tail.
        let tail: Option<Vec<u8>> = db
            .query_row("SELECT console_tail FROM runs WHERE id = ?1", [run], |r| {
                r.get(0)
            })
            .unwrap();
        let tail = String::from_utf8_lossy(&tail.unwrap_or_default()).into_owned();
        assert!(
            tail.contains("kiln: RAM image up"),
            "run {run}: no Linux console in the tail ({} bytes)",
            tail.len()
        );
        // Its console vouched for it: the agent's attestation was read there.
        let (watched, attested): (bool, Option<i64>) = db
            .query_row(
                "SELECT console_watched, attested_ms FROM runs WHERE id = ?1",
                [run],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(watched && attested.is_some(), "run {run} was not attested");
        assert!(tail.contains(&format!("kiln-attest run={run} ")), "{tail}");
    }
    let fault_code: String = db
        .query_row(
            "SELECT expect FROM runs WHERE id = ?1",
            [b.run_id.unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        fault_code.contains("\"code\":\"expect.cpu.min_logical\""),
        "{fault_code}"
    );
    assert!(
        !dir.join("pids").exists(),
        "the lab left processes recorded"
    );
}

#[test]
fn server_nodes_fail_naming_each_injected_fault_and_a_clean_one_passes() {
    let image = image_dir();
    assert!(
        image.join("vmlinuz").exists(),
        "no image in {}: `kiln image build --out {}` (.ci/test does)",
        image.display(),
        image.display()
    );
    let dir = scratch("lab-server-e2e");
    let suite = std::fs::read_to_string(repo().join("suites/lab-server.yaml")).unwrap();
    let two_dimms = suite.replace("    dimms: 1\n", "    dimms: 2\n");
    assert_ne!(
        two_dimms, suite,
        "the server suite's DIMM count changed; update this test"
    );
    std::fs::write(dir.join("two-dimms.yaml"), two_dimms).unwrap();
    let inject = [
        "2:nvme-warning@memory",
        "2:fan-fail@memory",
        "3:mce@memory",
        "3:psu-watts=900@memory",
        "3:psu-redundancy-lost@memory",
        "4:mce-fatal@memory",
        "5:sel@memory",
        "6:aer@memory",
        "6:aer-correctable@memory",
        "7:narrow-slot",
    ]
    .map(|i| i.parse().unwrap())
    .to_vec();
    let opts = LabOptions {
        suite_for: vec![(7, dir.join("two-dimms.yaml"))],
        mem_mib: 512,
        profile: Profile::Server,
        inject,
        ..kiln_tests::lab_options(&dir, 7, repo().join("suites/lab-server.yaml"))
    };
    let report = up(&opts).unwrap();
    let n = &report.nodes;
    for node in &n[1..] {
        assert!(
            !node.injected.is_empty() && node.injected.iter().all(|i| !i.contains("FAILED")),
            "{node:?}"
        );
    }

    // The clean node: every source read, nothing wrong.
    assert_eq!(n[0].verdict, "pass", "{:?}", n[0]);
    assert_eq!(n[0].steps, "7/7", "{:?}", n[0]);
    assert!(n[0].faults.is_empty(), "{:?}", n[0]);

    let only = |i: usize, want: &str| {
        assert_eq!(n[i].verdict, "fail", "{:?}", n[i]);
        assert_eq!(n[i].faults, [want], "{:?}", n[i]);
    };
    // The BMC's sensors, set while the memory step ran: that step fails naming the sensor,
    // its reading and its threshold (the BMC's for the fan, the suite's for the PSU), and so
    // does every later step, the fan still stopped.
    let has = |i: usize, want: &[&str]| {
        assert_eq!(n[i].verdict, "fail", "{:?}", n[i]);
        for w in want {
            assert!(n[i].faults.iter().any(|f| f == w), "{w} not in {:?}", n[i]);
        }
    };
    has(
        1,
        &[
            "memory: BMC sensor FAN1: 0 RPM, at or below its lower critical threshold 1000 RPM",
            "nvme: /dev/nvme0n1: NVMe critical warning 0x04: reliability degraded by media or internal errors",
            "sata: BMC sensor FAN1: 0 RPM, at or below its lower critical threshold 1000 RPM",
        ],
    );
    has(
        2,
        &[
            "memory: kernel: machine check on CPU 0, bank 1, status 0x9c0000000000009f, address 0x12345000 (corrected)",
            "memory: BMC sensor PSU1 Input Power: 900 W, above the suite's max_psu_watts 800 W",
            "memory: BMC sensor PS Redundancy: redundancy lost",
        ],
    );
    // The fatal one: failed at once from the console, not after the heartbeat as lost contact.
    only(
        3,
        "the node's kernel panicked; the console shows machine check on CPU 0, bank 9, status 0xbd000000000000c0, address 0x2000000 (Uncorrected error without MCA Recovery); kernel panic: Fatal local machine check",
    );
    let panicked = n[3].secs_to_verdict.unwrap() - n[3].secs_to_agent_report.unwrap();
    assert!(
        panicked < 30.0,
        "the panic took {panicked:.0}s to fail the run"
    );
    assert_eq!(n[4].verdict, "fail", "{:?}", n[4]);
    assert_eq!(n[4].faults.len(), 1, "{:?}", n[4]);
    assert!(
        n[4].faults[0].starts_with(
            "memory: BMC event log, new during the step: Memory sensor #1: Uncorrectable ECC"
        ),
        "{:?}",
        n[4]
    );
    // Both AER errors. QEMU 7.2 never sends a correctable error's message (whatever the
    // device's reporting bits): the agent reads it from the NIC's AER status register.
    assert_eq!(n[5].verdict, "fail", "{:?}", n[5]);
    assert_eq!(
        n[5].faults,
        [
            "memory: PCIe device 0000:02:00.0: new correctable AER errors during the step: RxErr (latched in its AER status register; the kernel did not count it)",
            "memory: PCIe device 0000:02:00.0: new nonfatal AER errors during the step: CmpltTO +1",
        ],
        "{:?}",
        n[5]
    );
    assert_eq!(n[6].verdict, "fail", "{:?}", n[6]);
    assert_eq!(
        n[6].faults,
        [
            "expect: expected 2 DIMMs, found 1 (in DIMM 0); the DIMM table lists no empty slot",
            "expect: 0000:02:00.0 (virtio-pci, class 0200): its slot is narrower than x8: port 0000:00:03.0 allows x1 at 2.5 GT/s (the device trained at x1 at 2.5 GT/s)",
            "expect: 0000:02:00.0 (virtio-pci, class 0200): its slot is slower than 8 GT/s: port 0000:00:03.0 allows x1 at 2.5 GT/s (the device trained at x1 at 2.5 GT/s)",
        ],
        "{:?}",
        n[6]
    );

    // The clean node's inventory came from the native readers: the DIMM table, both
    // disks' health, the PCIe links with their slots, and no source absent.
    let db = rusqlite::Connection::open(report.data.join("kiln.sqlite")).unwrap();
    // Its combined group: every member ran, passed and was measured.
    let members: Vec<(String, String, String)> = db
        .prepare("SELECT name, outcome, report FROM steps WHERE run_id = ?1 AND name LIKE 'combined-%' ORDER BY step")
        .unwrap()
        .query_map([n[0].run_id.unwrap()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "combined-memory",
            "combined-cpu",
            "combined-sata",
            "combined-nic"
        ]
    );
    for (name, outcome, report) in &members {
        assert_eq!(outcome, "pass", "{name}: {report}");
        let metric = match name.as_str() {
            "combined-memory" => "\"gbps\"",
            "combined-cpu" => "\"ops_per_sec\"",
            "combined-sata" => "\"write_mbps\"",
            _ => "\"download_mbps\"",
        };
        assert!(report.contains(metric), "{name} has no {metric}: {report}");
    }
    // Its BMC's sensors were read while every step ran and stored as series.
    let sweeps: Vec<String> = db
        .prepare("SELECT body FROM events WHERE run_id = ?1 AND kind = 'sensors'")
        .unwrap()
        .query_map([n[0].run_id.unwrap()], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for step in 0..3 {
        assert!(
            sweeps
                .iter()
                .any(|s| s.contains(&format!("\"step\":{step},"))),
            "no sensor readings during step {step}: {sweeps:?}"
        );
    }
    assert!(
        sweeps[0].contains(r#"{"name":"Inlet Temp","class":"inlet","value":24.0,"high":42.0}"#),
        "{}",
        sweeps[0]
    );
    let inventory: String = db
        .query_row(
            "SELECT inventory FROM runs WHERE id = ?1",
            [n[0].run_id.unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    let inventory: serde_json::Value = serde_json::from_str(&inventory).unwrap();
    assert_eq!(
        inventory["memory"]["dimms"][0]["part"], "KILN-DDR4-LAB",
        "{inventory}"
    );
    assert_eq!(inventory["system"]["serial"], "KILNLAB01", "{inventory}");
    let nic = inventory["pcie"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["class"] == "0200")
        .unwrap_or_else(|| panic!("no NIC link in {inventory}"));
    assert_eq!(nic["port_max_width"], 32, "{nic}");
    assert!(
        inventory["absent"].as_array().is_none_or(|a| a
            .iter()
            .all(|s| !s.as_str().unwrap_or("").contains("SMART"))),
        "{inventory}"
    );
    assert!(
        !dir.join("pids").exists(),
        "the lab left processes recorded"
    );
}

/// Four basic nodes on the bridge network running `suite` with a payload of `payload_mib`
/// (memory for it besides) and one injection.
#[test]
fn power_cycles_find_the_same_machine_and_name_the_disk_pulled_before_cycle_two() {
    let image = image_dir();
    assert!(
        image.join("vmlinuz").exists(),
        "no image in {}",
        image.display()
    );
    let dir = scratch("lab-cycles-e2e");
    let opts = LabOptions {
        mem_mib: 512,
        profile: Profile::Server,
        inject: vec!["2:drop-disk@cycle2".parse().unwrap()],
        ..kiln_tests::lab_options(&dir, 2, repo().join("suites/lab-cycles.yaml"))
    };
    let report = up(&opts).unwrap();
    let n = &report.nodes;
    assert_eq!(n[0].verdict, "pass", "{:?}", n[0]);
    assert_eq!(n[1].verdict, "fail", "{:?}", n[1]);
    assert_eq!(
        n[1].faults,
        ["cycles: cycle 2: disk KILNSCSI02 is gone (was 256MiB as sdb)"],
        "{:?}",
        n[1]
    );
    assert!(
        n[1].injected
            .iter()
            .any(|i| i.starts_with("drop-disk during cycle2")),
        "{:?}",
        n[1]
    );
    let db = rusqlite::Connection::open(report.data.join("kiln.sqlite")).unwrap();
    let run_of = |mac: &str| -> i64 {
        db.query_row(
            "SELECT r.id FROM runs r JOIN node_macs m ON m.node_id = r.node_id WHERE m.mac = ?1",
            [mac],
            |r| r.get(0),
        )
        .unwrap()
    };
    let (clean, pulled) = (run_of("52:54:00:6b:00:01"), run_of("52:54:00:6b:00:02"));
    // The clean node: the first boot and three cycles, four boot ids, each cycle vouched for
    // by the node's own console.
    let first: String = db
        .query_row(
            "SELECT json_extract(inventory, '$.boot_id') FROM runs WHERE id = ?1",
            [clean],
            |r| r.get(0),
        )
        .unwrap();
    let cycles: Vec<(String, Option<i64>)> = db
        .prepare("SELECT boot_id, attested_ms FROM power_cycles WHERE run_id = ?1 ORDER BY cycle")
        .unwrap()
        .query_map([clean], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(cycles.len(), 3, "{cycles:?}");
    let mut ids: Vec<&str> = cycles.iter().map(|(id, _)| id.as_str()).collect();
    ids.push(&first);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        4,
        "four boots, four boot ids: {cycles:?} and {first}"
    );
    assert!(cycles.iter().all(|(_, at)| at.is_some()), "{cycles:?}");
    // The other stopped at cycle 2: nothing more was owed once it failed.
    let reached: i64 = db
        .query_row(
            "SELECT max(cycle) FROM power_cycles WHERE run_id = ?1",
            [pulled],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reached, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

fn bridged(dir: &std::path::Path, suite: &str, payload_mib: u32, inject: &[&str]) -> LabOptions {
    LabOptions {
        mem_mib: 256 + 2 * payload_mib,
        profile: Profile::Basic,
        inject: inject.iter().map(|i| i.parse().unwrap()).collect(),
        network: Network::Bridge,
        payload_mib,
        ..kiln_tests::lab_options(dir, 4, repo().join(suite))
    }
}

#[test]
fn bridged_nodes_share_the_payload_past_a_rogue_peer_and_a_killed_one() {
    let dir = scratch("lab-bridge");
    let payload_mib = 48;
    // Node 2 starts first (the lab holds the others until it has half the pieces) and stays
    // up serving while they boot and fetch: its CPU step runs 90 s rather than 5 s.
    let slow = dir.join("lab-payload-slow.yaml");
    let text = std::fs::read_to_string(repo().join("suites/lab-payload.yaml")).unwrap();
    assert_eq!(text.matches("duration: 5s").count(), 1);
    std::fs::write(&slow, text.replace("duration: 5s", "duration: 90s")).unwrap();
    let opts = LabOptions {
        rogue_peer: true,
        collectors: Default::default(),
        suite_for: vec![(2, slow)],
        ..bridged(
            &dir,
            "suites/lab-payload.yaml",
            payload_mib,
            &["2:kill-peer"],
        )
    };
    let report = up(&opts).unwrap();
    let n = &report.nodes;
    assert!(
        n[1].injected
            .iter()
            .any(|i| i.starts_with("kill-peer: killed")),
        "node 2 was never killed: {:?}",
        n[1]
    );
    assert_ne!(n[1].verdict, "pass", "{:?}", n[1]);
    for node in [&n[0], &n[2], &n[3]] {
        assert_eq!(node.verdict, "pass", "{node:?}");
        assert_eq!(node.steps, "4/4", "{node:?}");
    }
    let payload = report.payload.as_ref().expect("the lab served a payload");
    assert_eq!(payload.bytes >> 20, payload_mib as u64, "{payload:?}");
    // The collector's fallback covers what the rogue and the killed node failed to serve (2.2
    // copies seen here); the two-copy line is the clean rack run's.
    assert!(
        payload.peer_bytes > 0,
        "no byte came from a peer: {payload:?}"
    );
    // Whoever the rogue was granted to caught it by the hash, and named it.
    let caught: Vec<&str> = payload
        .nodes
        .iter()
        .filter(|p| {
            p.corrupt
                .iter()
                .any(|(peer, _)| peer.starts_with("the rogue peer"))
        })
        .map(|p| p.name.as_str())
        .collect();
    assert!(
        !caught.is_empty(),
        "no node was granted the rogue: {payload:?}"
    );
    // The rogue served no verified byte to anyone, and no node's bytes are short of the whole.
    for p in &payload.nodes {
        assert!(
            p.peers
                .iter()
                .all(|(peer, _)| !peer.starts_with("the rogue")),
            "{p:?}"
        );
        if p.name != "lab-node-2" {
            let got = p.collector_bytes + p.peers.iter().map(|(_, b)| b).sum::<u64>();
            assert_eq!(got, payload.bytes, "{p:?}");
        }
    }
    // Nothing of the namespace is left.
    let netns = std::path::Path::new("/run/netns").join(format!("kiln-lab-{}", std::process::id()));
    assert!(!netns.exists(), "{} is left", netns.display());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Node 4's switch port is slowed to 40 Mb/s (the suite wants 200) and nodes 2 and 3 have their
/// cables crossed: the slow node misses with its partner and again with a third node, and
/// alone carries the fault; the crossed nodes fail naming each other, and only for that.
#[test]
fn a_bridged_rack_pairs_its_nodes_blames_the_slow_one_and_names_crossed_cables() {
    let dir = scratch("lab-rack");
    let opts = bridged(
        &dir,
        "suites/lab-rack.yaml",
        64,
        &["2:swap-cable=3", "4:slow-nic=40"],
    );
    let report = up(&opts).unwrap();
    let n = &report.nodes;
    // The payload reached every node, the collector serving at most two copies of it.
    let payload = report.payload.as_ref().expect("the lab served a payload");
    assert!(
        payload.collector_copies() <= 2.0 && payload.peer_bytes > 0,
        "the collector served {:.2} copies: {payload:?}",
        payload.collector_copies()
    );
    for p in &payload.nodes {
        let got = p.collector_bytes + p.peers.iter().map(|(_, b)| b).sum::<u64>();
        assert_eq!(got, payload.bytes, "{p:?}");
    }
    // Every node's NIC was measured against other nodes, both ways, at once.
    for node in n {
        assert!(!node.pairs.is_empty(), "{node:?}");
        for line in &node.pairs {
            assert!(
                line.starts_with("nic-paired: with lab-node-")
                    && !line.contains(&format!("with {},", node.name))
                    && !line.contains("download -")
                    && !line.contains("upload -"),
                "{line}"
            );
        }
    }
    // The slow node: missed with two partners, and the fault is its own.
    let slow = &n[3];
    assert_eq!(slow.verdict, "fail", "{slow:?}");
    assert_eq!(
        slow.pairs.len(),
        2,
        "retested against a third node: {slow:?}"
    );
    assert!(slow.pairs.iter().all(|l| l.ends_with("missed")), "{slow:?}");
    assert!(
        slow.faults
            .iter()
            .any(|f| f.contains("missed its thresholds with 2 partners")),
        "{slow:?}"
    );
    // Its partners were cleared: each met the thresholds with another node.
    for node in &n[..3] {
        assert_eq!(node.steps, "3/3", "every step passed: {node:?}");
        assert!(node.pairs.iter().any(|l| l.ends_with("met")), "{node:?}");
    }
    assert_eq!(n[0].verdict, "pass", "{:?}", n[0]);
    for (node, other, found, wanted) in [(&n[1], 3, 3, 2), (&n[2], 2, 2, 3)] {
        assert_eq!(node.verdict, "fail", "{node:?}");
        assert_eq!(
            node.faults,
            [format!(
                "cabling: eth0 ({}) is swapped with lab-node-{other} 52:54:00:6b:00:{other:02x}: it is cabled to leaf-lab-a Ethernet1/{found}; the map says Ethernet1/{wanted}",
                node.mac
            )],
            "{node:?}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}
