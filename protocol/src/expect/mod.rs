//! The bill of materials (`expect:`) checked against a node's inventory. Every difference is a
//! fault that says exactly what was expected and what was found.

use regex_lite::Regex;

use crate::suite::{
    Expect, ExpectCpu, ExpectDisks, ExpectLldp, ExpectMemory, ExpectNics, ExpectPcie, ExpectSystem,
};
use crate::units::Size;
use crate::wire::{
    CpuInfo, Dimm, DiskInfo, Fault, Inventory, MemoryInfo, NicInfo, PcieLink, SystemInfo,
};

/// Every way `inventory` differs from `expect`. Patterns were checked when the suite loaded;
/// one that still fails to compile is reported as a fault rather than silently matching.
pub fn evaluate(expect: &Expect, inventory: &Inventory) -> Vec<Fault> {
    let mut faults = Vec::new();
    if let Some(system) = &expect.system {
        system_identity(system, &inventory.system, &mut faults);
    }
    if let Some(cpu) = &expect.cpu {
        processors(cpu, &inventory.cpu, &mut faults);
    }
    if let Some(memory) = &expect.memory {
        memory_and_dimms(memory, &inventory.memory, &mut faults);
    }
    disk_groups(&expect.disks, &inventory.disks, &mut faults);
    nic_groups(&expect.nics, &inventory.nics, &mut faults);
    for (i, group) in expect.pcie.iter().enumerate() {
        pcie_group(i, group, &inventory.pcie, &mut faults);
    }
    if let Some(lldp) = &expect.lldp {
        switch_ports(lldp, inventory, &mut faults);
    }
    faults.dedup();
    faults
}

/// `expect.lldp`: what every link's switch port announced.
fn switch_ports(expect: &ExpectLldp, inventory: &Inventory, faults: &mut Vec<Fault>) {
    let Some(secs) = inventory.lldp_listened_s else {
        faults.push(Fault::new(
            "expect.lldp.not_listened",
            "the agent did not listen for LLDP, so expect.lldp could not be checked",
        ));
        return;
    };
    for nic in inventory.nics.iter().filter(|n| n.link_up) {
        let Some(heard) = &nic.lldp else {
            if !expect.optional {
                faults.push(Fault::new(
                    "expect.lldp.silent",
                    format!("{}: no LLDP heard in {secs} s", nic.name),
                ));
            }
            continue;
        };
        let port = format!("{} {}", heard.switch(), heard.port_id);
        if let Some(vlan) = expect.vlan {
            if heard.vlan != Some(vlan) {
                let found = heard
                    .vlan
                    .map_or("announces no VLAN".into(), |v| format!("is on VLAN {v}"));
                faults.push(
                    Fault::new(
                        "expect.lldp.vlan",
                        format!(
                            "{}: switch port {port} {found}; expected VLAN {vlan}",
                            nic.name
                        ),
                    )
                    .with("expected", vlan.to_string())
                    .with(
                        "found",
                        heard.vlan.map(|v| v.to_string()).unwrap_or_default(),
                    ),
                );
            }
        }
        if let Some(least) = expect.min_mtu {
            match heard.mtu() {
                Some(mtu) if u32::from(mtu) >= least => {}
                found => faults.push(Fault::new(
                    "expect.lldp.mtu",
                    format!(
                        "{}: switch port {port} {}; expected MTU ≥ {least}",
                        nic.name,
                        found.map_or("announces no maximum frame size".into(), |m| format!(
                            "allows MTU {m}"
                        ))
                    ),
                )),
            }
        }
    }
}

/// `expect.system`: vendor and product patterns.
fn system_identity(system: &ExpectSystem, sys: &SystemInfo, faults: &mut Vec<Fault>) {
    for (field, pattern, found) in [
        ("vendor", &system.vendor, &sys.vendor),
        ("product", &system.product, &sys.product),
    ] {
        if let Some(pattern) = pattern {
            let found = found.as_deref().unwrap_or("");
            if !matches(pattern, found, faults) {
                faults.push(
                    Fault::new(
                        format!("expect.system.{field}"),
                        format!("expected system {field} matching /{pattern}/, found {found:?}"),
                    )
                    .with("expected", pattern)
                    .with("found", found),
                );
            }
        }
    }
}

/// `expect.cpu`: model pattern, logical CPUs, flags.
fn processors(cpu: &ExpectCpu, have: &CpuInfo, faults: &mut Vec<Fault>) {
    if let Some(pattern) = &cpu.model {
        if !matches(pattern, &have.brand, faults) {
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

/// `expect.memory`: total, the DIMM rules, the DIMM count naming empty slots.
fn memory_and_dimms(memory: &ExpectMemory, have: &MemoryInfo, faults: &mut Vec<Fault>) {
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
    dimm_modules(memory, have.dimms.as_deref(), faults);
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

/// `expect.disks`: each group's count of matching disks.
fn disk_groups(groups: &[ExpectDisks], disks: &[DiskInfo], faults: &mut Vec<Fault>) {
    for (i, group) in groups.iter().enumerate() {
        let found: Vec<&DiskInfo> = disks
            .iter()
            .filter(|d| disk_matches(group, d, faults))
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
}

/// `expect.nics`: each group's count of matching interfaces.
fn nic_groups(groups: &[ExpectNics], nics: &[NicInfo], faults: &mut Vec<Fault>) {
    for (i, group) in groups.iter().enumerate() {
        let found: Vec<&NicInfo> = nics
            .iter()
            .filter(|n| nic_matches(group, n, faults))
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
mod tests;
