//! The bill of materials (`expect:`) checked against a node's inventory. Every difference is a
//! fault that says exactly what was expected and what was found.

use regex_lite::Regex;

use crate::suite::{Expect, ExpectDisks, ExpectMemory, ExpectNics, ExpectPcie};
use crate::units::Size;
use crate::wire::{Dimm, DiskInfo, Fault, Inventory, NicInfo, PcieLink};

/// Every way `inventory` differs from `expect`. Patterns were checked when the suite loaded;
/// one that still fails to compile is reported as a fault rather than silently matching.
pub fn evaluate(expect: &Expect, inventory: &Inventory) -> Vec<Fault> {
    let mut faults = Vec::new();
    if let Some(system) = &expect.system {
        let sys = &inventory.system;
        for (field, pattern, found) in [
            ("vendor", &system.vendor, &sys.vendor),
            ("product", &system.product, &sys.product),
        ] {
            if let Some(pattern) = pattern {
                let found = found.as_deref().unwrap_or("");
                if !matches(pattern, found, &mut faults) {
                    faults.push(
                        Fault::new(
                            format!("expect.system.{field}"),
                            format!(
                                "expected system {field} matching /{pattern}/, found {found:?}"
                            ),
                        )
                        .with("expected", pattern)
                        .with("found", found),
                    );
                }
            }
        }
    }
    if let Some(cpu) = &expect.cpu {
        let have = &inventory.cpu;
        if let Some(pattern) = &cpu.model {
            if !matches(pattern, &have.brand, &mut faults) {
                faults.push(
                    Fault::new(
                        "expect.cpu.model",
                        format!(
                            "expected CPU model matching /{pattern}/, found {:?}",
                            have.brand
                        ),
                    )
                    .with("expected", pattern)
                    .with("found", &have.brand),
                );
            }
        }
        if let Some(min) = cpu.min_logical {
            if have.logical < min {
                faults.push(
                    Fault::new(
                        "expect.cpu.min_logical",
                        format!("expected ≥ {min} logical CPUs, found {}", have.logical),
                    )
                    .with("expected", min)
                    .with("found", have.logical),
                );
            }
        }
        let missing: Vec<&str> = cpu
            .flags
            .iter()
            .filter(|f| !have.flags.iter().any(|h| h == *f))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            faults.push(
                Fault::new(
                    "expect.cpu.flags",
                    format!("missing CPU flags: {}", missing.join(", ")),
                )
                .with("missing", missing.join(" ")),
            );
        }
    }
    if let Some(memory) = &expect.memory {
        let have = &inventory.memory;
        if let Some(min) = memory.min_total {
            if have.total_bytes < min.bytes() {
                faults.push(
                    Fault::new(
                        "expect.memory.min_total",
                        format!("expected ≥ {min} memory, found {}", Size(have.total_bytes)),
                    )
                    .with("expected_bytes", min.bytes())
                    .with("found_bytes", have.total_bytes),
                );
            }
        }
        dimm_modules(memory, have.dimms.as_deref(), &mut faults);
        if let Some(want) = memory.dimms {
            match &have.dimms {
                None => faults.push(Fault::new(
                    "expect.memory.dimms",
                    format!("expected {want} DIMMs, but this node offers no DIMM table (no SMBIOS memory devices)"),
                )),
                Some(slots) => {
                    let populated = slots.iter().filter(|d| d.size_bytes.is_some()).count();
                    if populated != want as usize {
                        let empty: Vec<&str> = slots
                            .iter()
                            .filter(|d| d.size_bytes.is_none())
                            .map(|d| d.locator.as_str())
                            .collect();
                        let detail = match empty.as_slice() {
                            // No empty slot to blame: name where the modules are.
                            [] => format!(
                                " (in {}); the DIMM table lists no empty slot",
                                slots
                                    .iter()
                                    .map(|d| d.locator.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                            [one] => format!(": slot {one} empty"),
                            many => format!(": slots {} empty", many.join(", ")),
                        };
                        faults.push(
                            Fault::new(
                                "expect.memory.dimms",
                                format!("expected {want} DIMMs, found {populated}{detail}"),
                            )
                            .with("expected", want)
                            .with("found", populated),
                        );
                    }
                }
            }
        }
    }
    for (i, group) in expect.disks.iter().enumerate() {
        let found: Vec<&DiskInfo> = inventory
            .disks
            .iter()
            .filter(|d| disk_matches(group, d, &mut faults))
            .collect();
        if found.len() != group.count as usize {
            faults.push(
                Fault::new(
                    format!("expect.disks[{i}]"),
                    format!(
                        "expected {} disk{} {}, found {}{}",
                        group.count,
                        plural(group.count as usize),
                        describe_disks(group),
                        found.len(),
                        list(found.iter().map(|d| d.name.as_str()))
                    ),
                )
                .with("expected", group.count)
                .with("found", found.len()),
            );
        }
    }
    for (i, group) in expect.nics.iter().enumerate() {
        let found: Vec<&NicInfo> = inventory
            .nics
            .iter()
            .filter(|n| nic_matches(group, n, &mut faults))
            .collect();
        if found.len() != group.count as usize {
            faults.push(
                Fault::new(
                    format!("expect.nics[{i}]"),
                    format!(
                        "expected {} NIC{} {}, found {}{}",
                        group.count,
                        plural(group.count as usize),
                        describe_nics(group),
                        found.len(),
                        list(found.iter().map(|n| n.name.as_str()))
                    ),
                )
                .with("expected", group.count)
                .with("found", found.len()),
            );
        }
    }
    for (i, group) in expect.pcie.iter().enumerate() {
        pcie_group(i, group, &inventory.pcie, &mut faults);
    }
    faults.dedup();
    faults
}

/// One `expect.pcie` group: the devices it selects, their count, and each one's link.
fn pcie_group(i: usize, group: &ExpectPcie, links: &[PcieLink], faults: &mut Vec<Fault>) {
    let code = format!("expect.pcie[{i}]");
    let mut selected = Vec::new();
    for l in links {
        let class = group.class.as_ref().is_none_or(|c| {
            l.class
                .to_ascii_lowercase()
                .starts_with(&c.to_ascii_lowercase())
        });
        let driver = group
            .driver
            .as_ref()
            .is_none_or(|p| matches(p, l.driver.as_deref().unwrap_or(""), faults));
        if class && driver {
            selected.push(l);
        }
    }
    let what = match (&group.class, &group.driver) {
        (Some(c), Some(d)) => format!("PCIe devices of class {c} with driver /{d}/"),
        (Some(c), None) => format!("PCIe devices of class {c}"),
        (None, Some(d)) => format!("PCIe devices with driver /{d}/"),
        (None, None) => "PCIe devices".to_owned(),
    };
    if group.count.is_none() && selected.is_empty() {
        // Link rules over no device would hold vacuously: a device asked for and not found
        // is a fault.
        faults.push(Fault::new(
            code.clone(),
            format!("expected {what}, found none"),
        ));
    }
    if let Some(want) = group.count {
        if selected.len() != want as usize {
            faults.push(
                Fault::new(
                    code.clone(),
                    format!(
                        "expected {want} {what}, found {}{}",
                        selected.len(),
                        list(selected.iter().map(|l| l.address.as_str()))
                    ),
                )
                .with("expected", want)
                .with("found", selected.len()),
            );
        }
    }
    for l in selected {
        let name = match &l.driver {
            Some(d) => format!("{} ({d}, class {})", l.address, l.class),
            None => format!("{} (class {})", l.address, l.class),
        };
        let link = format!(
            "x{} at {} GT/s",
            l.current_width.map_or("?".to_owned(), |w| w.to_string()),
            l.current_speed_gts
                .map_or("?".to_owned(), |s| s.to_string())
        );
        if let Some(min) = group.min_width {
            if l.current_width.is_none_or(|w| w < min) {
                let of = l.max_width.map(|m| format!(" of x{m}")).unwrap_or_default();
                faults.push(
                    Fault::new(
                        format!("{code}.min_width"),
                        format!("{name}: link trained at {link}{of}; expected ≥ x{min}"),
                    )
                    .with("device", &l.address),
                );
            }
        }
        if let Some(min) = group.min_speed_gts {
            if l.current_speed_gts.is_none_or(|s| s < min) {
                faults.push(
                    Fault::new(
                        format!("{code}.min_speed_gts"),
                        format!("{name}: link trained at {link}; expected ≥ {min} GT/s"),
                    )
                    .with("device", &l.address),
                );
            }
        }
        if group.min_slot_width.is_some() || group.min_slot_speed_gts.is_some() {
            let slot = match (&l.port, l.port_max_width, l.port_max_speed_gts) {
                (Some(port), width, speed) => format!(
                    "port {port} allows x{} at {} GT/s",
                    width.map_or("?".to_owned(), |w| w.to_string()),
                    speed.map_or("?".to_owned(), |s| s.to_string())
                ),
                (None, ..) => "no port above it reports a link".to_owned(),
            };
            if let Some(min) = group.min_slot_width {
                if l.port_max_width.is_none_or(|w| w < min) {
                    faults.push(
                        Fault::new(
                            format!("{code}.min_slot_width"),
                            format!("{name}: its slot is narrower than x{min}: {slot} (the device trained at {link})"),
                        )
                        .with("device", &l.address)
                        .with("port", l.port.as_deref().unwrap_or("")),
                    );
                }
            }
            if let Some(min) = group.min_slot_speed_gts {
                if l.port_max_speed_gts.is_none_or(|s| s < min) {
                    faults.push(
                        Fault::new(
                            format!("{code}.min_slot_speed_gts"),
                            format!("{name}: its slot is slower than {min} GT/s: {slot} (the device trained at {link})"),
                        )
                        .with("device", &l.address)
                        .with("port", l.port.as_deref().unwrap_or("")),
                    );
                }
            }
        }
    }
}

/// Size, speed and part number of every populated DIMM; each rule that cannot be checked
/// (no DIMM table, a module that does not say) is a fault too.
fn dimm_modules(memory: &ExpectMemory, dimms: Option<&[Dimm]>, faults: &mut Vec<Fault>) {
    let rules = [
        ("dimm_size", memory.dimm_size.is_some()),
        ("min_dimm_speed_mts", memory.min_dimm_speed_mts.is_some()),
        ("dimm_part", memory.dimm_part.is_some()),
    ];
    let Some(dimms) = dimms else {
        for (rule, _) in rules.iter().filter(|(_, set)| *set) {
            faults.push(Fault::new(
                format!("expect.memory.{rule}"),
                format!(
                    "{rule} set, but this node offers no DIMM table (no SMBIOS memory devices)"
                ),
            ));
        }
        return;
    };
    let populated = || dimms.iter().filter(|d| d.size_bytes.is_some());
    if populated().next().is_none() {
        // Rules over every module hold vacuously over none: that is no pass.
        for (rule, _) in rules.iter().filter(|(_, set)| *set) {
            faults.push(Fault::new(
                format!("expect.memory.{rule}"),
                format!("{rule} set, but the DIMM table lists no installed module"),
            ));
        }
        return;
    }
    if let Some(want) = memory.dimm_size {
        let off: Vec<String> = populated()
            .filter(|d| d.size_bytes != Some(want.bytes()))
            .map(|d| format!("{} is {}", d.locator, Size(d.size_bytes.unwrap_or(0))))
            .collect();
        if !off.is_empty() {
            faults.push(
                Fault::new(
                    "expect.memory.dimm_size",
                    format!("expected every DIMM to be {want}: {}", off.join(", ")),
                )
                .with("expected_bytes", want.bytes()),
            );
        }
    }
    if let Some(min) = memory.min_dimm_speed_mts {
        let off: Vec<String> = populated()
            .filter(|d| d.speed_mts.is_none_or(|s| s < min))
            .map(|d| match d.speed_mts {
                Some(s) => format!("{} runs at {s} MT/s", d.locator),
                None => format!("{} does not say its speed", d.locator),
            })
            .collect();
        if !off.is_empty() {
            faults.push(
                Fault::new(
                    "expect.memory.min_dimm_speed_mts",
                    format!("expected every DIMM at ≥ {min} MT/s: {}", off.join(", ")),
                )
                .with("expected", min),
            );
        }
    }
    if let Some(pattern) = &memory.dimm_part {
        let mut off = Vec::new();
        for d in populated() {
            let part = d.part.as_deref().unwrap_or("");
            if !matches(pattern, part, faults) {
                off.push(format!("{} has {part:?}", d.locator));
            }
        }
        if !off.is_empty() {
            faults.push(
                Fault::new(
                    "expect.memory.dimm_part",
                    format!(
                        "expected every DIMM part number matching /{pattern}/: {}",
                        off.join(", ")
                    ),
                )
                .with("expected", pattern),
            );
        }
    }
}

fn matches(pattern: &str, text: &str, faults: &mut Vec<Fault>) -> bool {
    match Regex::new(pattern) {
        Ok(re) => re.is_match(text),
        Err(err) => {
            faults.push(Fault::new(
                "expect.pattern",
                format!("pattern /{pattern}/ does not compile: {err}"),
            ));
            false
        }
    }
}

fn disk_matches(group: &ExpectDisks, disk: &DiskInfo, faults: &mut Vec<Fault>) -> bool {
    group
        .model
        .as_ref()
        .is_none_or(|p| matches(p, disk.model.as_deref().unwrap_or(""), faults))
        && group
            .min_size
            .is_none_or(|min| disk.size_bytes >= min.bytes())
        && group.rotational.is_none_or(|r| disk.rotational == r)
}

fn nic_matches(group: &ExpectNics, nic: &NicInfo, faults: &mut Vec<Fault>) -> bool {
    group
        .driver
        .as_ref()
        .is_none_or(|p| matches(p, nic.driver.as_deref().unwrap_or(""), faults))
        && group
            .min_speed_mbps
            .is_none_or(|min| nic.speed_mbps.is_some_and(|s| s >= min))
}

fn describe_disks(group: &ExpectDisks) -> String {
    let mut parts = Vec::new();
    if let Some(model) = &group.model {
        parts.push(format!("model /{model}/"));
    }
    if let Some(min) = group.min_size {
        parts.push(format!("≥ {min}"));
    }
    match group.rotational {
        Some(true) => parts.push("rotational".to_owned()),
        Some(false) => parts.push("solid-state".to_owned()),
        None => {}
    }
    if parts.is_empty() {
        "of any kind".to_owned()
    } else {
        format!("with {}", parts.join(", "))
    }
}

fn describe_nics(group: &ExpectNics) -> String {
    let mut parts = Vec::new();
    if let Some(driver) = &group.driver {
        parts.push(format!("driver /{driver}/"));
    }
    if let Some(min) = group.min_speed_mbps {
        parts.push(format!("link ≥ {min} Mb/s"));
    }
    if parts.is_empty() {
        "of any kind".to_owned()
    } else {
        format!("with {}", parts.join(", "))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" ({})", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
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
            sel: vec![],
            pcie: vec![],
            absent: vec![],
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
}
