//! The bill of materials against inventories built to differ in one way each.

use super::*;
use crate::suite::{ExpectCpu, ExpectMemory, ExpectSystem};
use crate::wire::{CpuInfo, Dimm, MemoryInfo, SystemInfo};

fn node() -> Inventory {
    Inventory {
        system: SystemInfo {
            vendor: Some("QEMU".into()),
            ..Default::default()
        },
        cpu: CpuInfo {
            brand: "QEMU Virtual CPU version 2.5+".into(),
            logical: 2,
            flags: vec!["sse2".into(), "avx2".into()],
            ..Default::default()
        },
        memory: MemoryInfo {
            total_bytes: 256 << 20,
            dimms: Some(vec![
                Dimm {
                    locator: "A1".into(),
                    size_bytes: Some(128 << 20),
                    ..Default::default()
                },
                Dimm {
                    locator: "B2".into(),
                    size_bytes: None,
                    ..Default::default()
                },
            ]),
        },
        disks: vec![DiskInfo {
            name: "vda".into(),
            size_bytes: 1 << 30,
            ..Default::default()
        }],
        nics: vec![],
        kernel: None,
        boot_id: None,
        sel: vec![],
        pcie: vec![],
        absent: vec![],
        lldp_listened_s: None,
    }
}

#[test]
fn a_matching_node_has_no_faults() {
    let expect = Expect {
        cpu: Some(ExpectCpu {
            min_logical: Some(2),
            flags: vec!["avx2".into()],
            model: Some("QEMU".into()),
        }),
        disks: vec![ExpectDisks {
            count: 1,
            model: None,
            min_size: Some(Size(512 << 20)),
            rotational: None,
        }],
        ..Default::default()
    };
    assert_eq!(evaluate(&expect, &node()), vec![]);
}

#[test]
fn too_few_cpus_is_named_exactly() {
    let expect = Expect {
        cpu: Some(ExpectCpu {
            min_logical: Some(64),
            ..Default::default()
        }),
        ..Default::default()
    };
    let faults = evaluate(&expect, &node());
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].code, "expect.cpu.min_logical");
    assert_eq!(faults[0].message, "expected ≥ 64 logical CPUs, found 2");
}

#[test]
fn dimm_shortfall_names_the_empty_slot() {
    let expect = Expect {
        memory: Some(ExpectMemory {
            dimms: Some(2),
            min_total: Some(Size(1 << 30)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let faults = evaluate(&expect, &node());
    let messages: Vec<&str> = faults.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "expected ≥ 1GiB memory, found 256MiB",
            "expected 2 DIMMs, found 1: slot B2 empty"
        ]
    );
    // A table without an empty slot (QEMU's one DIMM): the populated slots are named.
    let mut full = node();
    full.memory
        .dimms
        .as_mut()
        .unwrap()
        .retain(|d| d.size_bytes.is_some());
    let faults = evaluate(&expect, &full);
    assert_eq!(
        faults.last().unwrap().message,
        "expected 2 DIMMs, found 1 (in A1); the DIMM table lists no empty slot"
    );
}

#[test]
fn dimm_size_speed_and_part_are_checked_on_every_populated_slot() {
    let mut inv = node();
    let dimms = inv.memory.dimms.as_mut().unwrap();
    dimms[0].speed_mts = Some(2933);
    dimms[0].part = Some("M393A4K40DB3-CWE".into());
    dimms.push(Dimm {
        locator: "C1".into(),
        size_bytes: Some(64 << 20),
        speed_mts: None,
        part: Some("HMA84GR7CJR4N-XN".into()),
        ..Default::default()
    });
    let expect = Expect {
        memory: Some(ExpectMemory {
            dimm_size: Some(Size(128 << 20)),
            min_dimm_speed_mts: Some(3200),
            dimm_part: Some("^M393A4K40".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let messages: Vec<String> = evaluate(&expect, &inv)
        .into_iter()
        .map(|f| f.message)
        .collect();
    assert_eq!(
        messages,
        [
            "expected every DIMM to be 128MiB: C1 is 64MiB",
            "expected every DIMM at ≥ 3200 MT/s: A1 runs at 2933 MT/s, C1 does not say its speed",
            "expected every DIMM part number matching /^M393A4K40/: C1 has \"HMA84GR7CJR4N-XN\"",
        ]
    );
    // A table of empty slots only: each rule a fault, not a vacuous pass.
    let mut empty = inv.clone();
    for d in empty.memory.dimms.as_mut().unwrap() {
        d.size_bytes = None;
    }
    assert_eq!(evaluate(&expect, &empty).len(), 3);
    // Without a DIMM table each rule set is a fault of its own, never a silent pass.
    inv.memory.dimms = None;
    let codes: Vec<String> = evaluate(&expect, &inv)
        .into_iter()
        .map(|f| f.code)
        .collect();
    assert_eq!(
        codes,
        [
            "expect.memory.dimm_size",
            "expect.memory.min_dimm_speed_mts",
            "expect.memory.dimm_part"
        ]
    );
}

#[test]
fn a_downtrained_pcie_link_is_named_with_what_it_could_do() {
    let mut inv = node();
    let link = |address: &str, class: &str, width, speed| PcieLink {
        address: address.into(),
        class: class.into(),
        driver: Some("mlx5_core".into()),
        current_width: Some(width),
        max_width: Some(16),
        current_speed_gts: Some(speed),
        max_speed_gts: Some(16.0),
        ..Default::default()
    };
    inv.pcie = vec![
        link("0000:3b:00.0", "0200", 16, 16.0),
        link("0000:5e:00.0", "0200", 8, 8.0),
        link("0000:00:1f.2", "0106", 1, 2.5),
    ];
    let expect = Expect {
        pcie: vec![ExpectPcie {
            class: Some("02".into()),
            driver: Some("^mlx5".into()),
            count: Some(2),
            min_width: Some(16),
            min_speed_gts: Some(16.0),
            ..Default::default()
        }],
        ..Default::default()
    };
    let messages: Vec<String> = evaluate(&expect, &inv)
        .into_iter()
        .map(|f| f.message)
        .collect();
    assert_eq!(
        messages,
        [
            "0000:5e:00.0 (mlx5_core, class 0200): link trained at x8 at 8 GT/s of x16; expected ≥ x16",
            "0000:5e:00.0 (mlx5_core, class 0200): link trained at x8 at 8 GT/s; expected ≥ 16 GT/s",
        ]
    );
    // The slot: a port that allows less than asked, and a device with no port at all.
    let mut slots = inv.clone();
    slots.pcie[0].port = Some("0000:3a:00.0".into());
    slots.pcie[0].port_max_width = Some(8);
    slots.pcie[0].port_max_speed_gts = Some(16.0);
    let slot_rule = Expect {
        pcie: vec![ExpectPcie {
            class: Some("02".into()),
            min_slot_width: Some(16),
            min_slot_speed_gts: Some(8.0),
            ..Default::default()
        }],
        ..Default::default()
    };
    let messages: Vec<String> = evaluate(&slot_rule, &slots)
        .into_iter()
        .map(|f| f.message)
        .collect();
    assert_eq!(
        messages,
        [
            "0000:3b:00.0 (mlx5_core, class 0200): its slot is narrower than x16: port 0000:3a:00.0 allows x8 at 16 GT/s (the device trained at x16 at 16 GT/s)",
            "0000:5e:00.0 (mlx5_core, class 0200): its slot is narrower than x16: no port above it reports a link (the device trained at x8 at 8 GT/s)",
            "0000:5e:00.0 (mlx5_core, class 0200): its slot is slower than 8 GT/s: no port above it reports a link (the device trained at x8 at 8 GT/s)",
        ]
    );
    // No device at all, and no count asked: still a fault, never a vacuous pass.
    let mut none = inv.clone();
    none.pcie.clear();
    let mut no_count = expect.clone();
    no_count.pcie[0].count = None;
    assert_eq!(
        evaluate(&no_count, &none)[0].message,
        "expected PCIe devices of class 02 with driver /^mlx5/, found none"
    );
    // A missing device is counted.
    inv.pcie.remove(0);
    let faults = evaluate(&expect, &inv);
    assert_eq!(
        faults[0].message,
        "expected 2 PCIe devices of class 02 with driver /^mlx5/, found 1 (0000:5e:00.0)"
    );
}

#[test]
fn missing_flags_disks_nics_and_vendor_are_all_reported() {
    let expect = Expect {
        system: Some(ExpectSystem {
            vendor: Some("^Dell".into()),
            product: None,
        }),
        cpu: Some(ExpectCpu {
            flags: vec!["avx512f".into(), "sse2".into()],
            ..Default::default()
        }),
        disks: vec![ExpectDisks {
            count: 2,
            model: Some("NVMe".into()),
            min_size: None,
            rotational: Some(false),
        }],
        nics: vec![ExpectNics {
            count: 2,
            min_speed_mbps: Some(25000),
            driver: None,
        }],
        ..Default::default()
    };
    let faults = evaluate(&expect, &node());
    let codes: Vec<&str> = faults.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(
        codes,
        [
            "expect.system.vendor",
            "expect.cpu.flags",
            "expect.disks[0]",
            "expect.nics[0]"
        ]
    );
    assert_eq!(faults[1].message, "missing CPU flags: avx512f");
    assert_eq!(
        faults[2].message,
        "expected 2 disks with model /NVMe/, solid-state, found 0"
    );
    assert_eq!(
        faults[3].message,
        "expected 2 NICs with link ≥ 25000 Mb/s, found 0"
    );
}

#[test]
fn unknown_dimm_table_is_a_fault_not_a_pass() {
    let mut inv = node();
    inv.memory.dimms = None;
    let expect = Expect {
        memory: Some(ExpectMemory {
            dimms: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(evaluate(&expect, &inv)[0].code, "expect.memory.dimms");
}

#[test]
fn switch_ports_must_announce_the_vlan_and_frame_size_asked_for() {
    use crate::lldp::Neighbor;
    use crate::suite::ExpectLldp;
    let port = |vlan: Option<u16>, frame: Option<u16>| Neighbor {
        chassis_id: "c".into(),
        port_id: "Ethernet1/7".into(),
        ttl_s: 120,
        system_name: Some("leaf-r12-a".into()),
        vlan,
        max_frame_size: frame,
        ..Default::default()
    };
    let nic = |name: &str, heard: Option<Neighbor>| crate::wire::NicInfo {
        name: name.into(),
        mac: "52:54:00:00:00:01".into(),
        link_up: true,
        lldp: heard,
        ..Default::default()
    };
    let mut inv = node();
    inv.lldp_listened_s = Some(35);
    inv.nics = vec![
        nic("eth0", Some(port(Some(120), Some(9022)))),
        nic("eth1", Some(port(Some(121), Some(1522)))),
        nic("eth2", None),
    ];
    let mut down = nic("eth3", None);
    down.link_up = false;
    inv.nics.push(down);
    let expect = Expect {
        lldp: Some(ExpectLldp {
            optional: false,
            vlan: Some(120),
            min_mtu: Some(9000),
        }),
        ..Expect::default()
    };
    let said: Vec<String> = evaluate(&expect, &inv)
        .into_iter()
        .map(|f| format!("{}: {}", f.code, f.message))
        .collect();
    assert_eq!(
        said,
        [
            "expect.lldp.vlan: eth1: switch port leaf-r12-a Ethernet1/7 is on VLAN 121; expected VLAN 120",
            "expect.lldp.mtu: eth1: switch port leaf-r12-a Ethernet1/7 allows MTU 1500; expected MTU ≥ 9000",
            "expect.lldp.silent: eth2: no LLDP heard in 35 s",
        ]
    );
    // Optional: silence is allowed, a wrong VLAN is not; never listening is never a pass.
    let optional = Expect {
        lldp: Some(ExpectLldp {
            optional: true,
            ..expect.lldp.clone().unwrap()
        }),
        ..Expect::default()
    };
    assert_eq!(evaluate(&optional, &inv).len(), 2);
    inv.lldp_listened_s = None;
    assert_eq!(
        evaluate(&optional, &inv)[0].code,
        "expect.lldp.not_listened"
    );
    // A port that announces nothing of the kind is said so.
    inv.lldp_listened_s = Some(35);
    inv.nics = vec![nic("eth0", Some(port(None, None)))];
    let said: Vec<String> = evaluate(&expect, &inv)
        .into_iter()
        .map(|f| f.message)
        .collect();
    assert_eq!(
        said,
        [
            "eth0: switch port leaf-r12-a Ethernet1/7 announces no VLAN; expected VLAN 120",
            "eth0: switch port leaf-r12-a Ethernet1/7 announces no maximum frame size; expected MTU ≥ 9000",
        ]
    );
}
