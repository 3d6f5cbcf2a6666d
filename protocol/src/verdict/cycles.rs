//! Power cycles that must change nothing: each boot's inventory against the first boot's —
//! DIMMs (slot, size, part), PCIe links (trained width and speed), disks (serial, size), NICs
//! (MAC, speed), the CPU count — and each boot proven by a boot id no earlier boot had. Every
//! difference is a line naming the cycle and what changed ("cycle 4: 0000:3b:00.0 trained
//! x8, was x16").

use std::collections::BTreeMap;

use crate::wire::Inventory;

/// What changed between the first boot's inventory and cycle `cycle`'s, one line each.
pub fn drift(cycle: u32, first: &Inventory, now: &Inventory) -> Vec<String> {
    let mut out = Vec::new();
    let mut say = |what: String| out.push(format!("cycle {cycle}: {what}"));
    if now.cpu.logical != first.cpu.logical {
        say(format!(
            "{} logical CPUs, was {}",
            now.cpu.logical, first.cpu.logical
        ));
    }
    let size = |b: Option<u64>| b.map_or_else(|| "unknown size".to_owned(), size_of);
    let dimms = |inv: &Inventory| -> BTreeMap<String, String> {
        inv.memory
            .dimms
            .iter()
            .flatten()
            .filter(|d| d.size_bytes.is_some_and(|s| s > 0))
            .map(|d| {
                let slot = match &d.bank {
                    Some(bank) => format!("{} ({bank})", d.locator),
                    None => d.locator.clone(),
                };
                let part = d.part.as_deref().unwrap_or("no part number");
                (slot, format!("{} {part}", size(d.size_bytes)))
            })
            .collect()
    };
    compare(&dimms(first), &dimms(now), "DIMM", &mut say);
    let links = |inv: &Inventory| -> BTreeMap<String, String> {
        inv.pcie
            .iter()
            .map(|l| {
                let width = l.current_width.map_or("x?".into(), |w| format!("x{w}"));
                let speed = l
                    .current_speed_gts
                    .map_or("? GT/s".into(), |s| format!("{s} GT/s"));
                (l.address.clone(), format!("trained {width} at {speed}"))
            })
            .collect()
    };
    compare(&links(first), &links(now), "PCIe device", &mut say);
    let disks = |inv: &Inventory| -> BTreeMap<String, String> {
        inv.disks
            .iter()
            .map(|d| {
                let id = d.serial.clone().unwrap_or_else(|| format!("({})", d.name));
                (id, format!("{} as {}", size_of(d.size_bytes), d.name))
            })
            .collect()
    };
    compare(&disks(first), &disks(now), "disk", &mut say);
    let nics = |inv: &Inventory| -> BTreeMap<String, String> {
        inv.nics
            .iter()
            .map(|n| {
                let speed = n
                    .speed_mbps
                    .map_or("no link speed".into(), |s| format!("{s} Mb/s"));
                (n.mac.clone(), speed)
            })
            .collect()
    };
    compare(&nics(first), &nics(now), "NIC", &mut say);
    out
}

/// Each key gone, appeared or changed between `was` and `now`.
fn compare(
    was: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
    what: &str,
    say: &mut impl FnMut(String),
) {
    for (key, old) in was {
        match now.get(key) {
            None => say(format!("{what} {key} is gone (was {old})")),
            Some(new) if new != old => say(format!("{what} {key}: {new}, was {old}")),
            Some(_) => {}
        }
    }
    for (key, new) in now {
        if !was.contains_key(key) {
            say(format!("{what} {key} appeared ({new})"));
        }
    }
}

fn size_of(bytes: u64) -> String {
    crate::units::Size(bytes).to_string()
}

/// Whether each boot happened: `ids[0]` is the first boot's, `ids[k]` cycle k's. A missing
/// id, or one an earlier boot had, is a line naming the cycle: that boot is not proven.
pub fn boots(ids: &[Option<&str>]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, id) in ids.iter().enumerate().skip(1) {
        match id {
            None => out.push(format!(
                "cycle {k}: no boot id was reported, so the power cycle is not proven"
            )),
            Some(id) => {
                if let Some(earlier) = ids[..k].iter().position(|e| e == &Some(*id)) {
                    let when = match earlier {
                        0 => "the first boot".to_owned(),
                        e => format!("cycle {e}"),
                    };
                    out.push(format!(
                        "cycle {k}: boot id {id} is {when}'s: the node did not boot again"
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Dimm, DiskInfo, NicInfo, PcieLink};

    fn node() -> Inventory {
        let mut inv = Inventory::default();
        inv.cpu.logical = 64;
        inv.memory.dimms = Some(vec![Dimm {
            locator: "DIMM A1".into(),
            bank: Some("P0_CH0".into()),
            size_bytes: Some(32 << 30),
            part: Some("M393A4K40EB3".into()),
            ..Default::default()
        }]);
        inv.pcie = vec![PcieLink {
            address: "0000:3b:00.0".into(),
            current_width: Some(16),
            current_speed_gts: Some(16.0),
            ..Default::default()
        }];
        inv.disks = vec![DiskInfo {
            name: "nvme0n1".into(),
            serial: Some("S5XNNA0R".into()),
            size_bytes: 3_840_755_982_336,
            ..Default::default()
        }];
        inv.nics = vec![NicInfo {
            name: "eth0".into(),
            mac: "b8:59:9f:00:00:01".into(),
            speed_mbps: Some(25_000),
            ..Default::default()
        }];
        inv
    }

    #[test]
    fn the_same_machine_after_a_cycle_has_no_drift() {
        let mut again = node();
        // What may change between boots and is no drift: the kernel's view of free memory,
        // interface names, the boot id.
        again.memory.total_bytes += 4096;
        again.nics[0].name = "enp59s0".into();
        again.boot_id = Some("b".into());
        assert!(drift(1, &node(), &again).is_empty());
    }

    #[test]
    fn each_change_names_the_cycle_and_the_part() {
        let mut now = node();
        now.cpu.logical = 62;
        now.pcie[0].current_width = Some(8);
        now.disks.clear();
        now.nics[0].speed_mbps = Some(10_000);
        now.memory.dimms.as_mut().unwrap()[0].size_bytes = Some(16 << 30);
        now.nics.push(NicInfo {
            mac: "b8:59:9f:00:00:02".into(),
            ..Default::default()
        });
        assert_eq!(
            drift(4, &node(), &now),
            [
                "cycle 4: 62 logical CPUs, was 64",
                "cycle 4: DIMM DIMM A1 (P0_CH0): 16GiB M393A4K40EB3, was 32GiB M393A4K40EB3",
                "cycle 4: PCIe device 0000:3b:00.0: trained x8 at 16 GT/s, was trained x16 at 16 GT/s",
                "cycle 4: disk S5XNNA0R is gone (was 3.5TiB as nvme0n1)",
                "cycle 4: NIC b8:59:9f:00:00:01: 10000 Mb/s, was 25000 Mb/s",
                "cycle 4: NIC b8:59:9f:00:00:02 appeared (no link speed)",
            ]
        );
    }

    #[test]
    fn a_boot_is_proven_only_by_a_boot_id_no_earlier_boot_had() {
        assert!(boots(&[Some("a"), Some("b"), Some("c")]).is_empty());
        assert_eq!(
            boots(&[Some("a"), Some("b"), Some("a"), None, Some("b")]),
            [
                "cycle 2: boot id a is the first boot's: the node did not boot again",
                "cycle 3: no boot id was reported, so the power cycle is not proven",
                "cycle 4: boot id b is cycle 1's: the node did not boot again",
            ]
        );
        // A first boot without an id proves nothing either way; the cycles after it do.
        assert!(boots(&[None, Some("b")]).is_empty());
        assert!(boots(&[]).is_empty());
    }
}
