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

/// One power cycle as the collector stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct Boot {
    /// Its number, from 1.
    pub cycle: u32,
    /// The inventory its agent reported, once it did.
    pub inventory: Option<Inventory>,
    /// Where its boot stands with the node's console.
    pub console: super::linux::Console,
}

/// What the stored cycles say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    /// The latest cycle has not reported (or its console has not vouched for it) yet.
    Waiting,
    /// Every cycle so far found the first boot's hardware: power-cycle the node for this one.
    Next(u32),
    /// All `count` cycles found the first boot's hardware, each a boot of its own.
    Pass,
    /// What failed, one line each, naming the cycle.
    Fail(Vec<String>),
}

/// Judges a run's power cycles from what was stored: the first boot's inventory and each
/// cycle's, in order. Never a pass without `count` cycles, each reported, each vouched for
/// by the console where it is read, each with a boot id of its own and no drift.
pub fn judge(count: u32, first: Option<&Inventory>, boots: &[Boot]) -> Judged {
    use super::linux::Console;
    let Some(first) = first else {
        return Judged::Fail(vec![
            "the first boot reported no inventory: there is nothing to compare the cycles with"
                .into(),
        ]);
    };
    let mut lines = Vec::new();
    let mut ids = vec![first.boot_id.as_deref()];
    for (i, boot) in boots.iter().enumerate() {
        let last = i + 1 == boots.len();
        if boot.cycle as usize != i + 1 {
            lines.push(format!(
                "cycle {} was stored where cycle {} belongs: the record is not trustworthy",
                boot.cycle,
                i + 1
            ));
            break;
        }
        let Some(inventory) = &boot.inventory else {
            if last {
                break;
            }
            lines.push(format!("cycle {}: no inventory was reported", boot.cycle));
            continue;
        };
        if boot.console == Console::Awaited && !last {
            lines.push(format!(
                "cycle {}: the node's console never showed this boot's attestation",
                boot.cycle
            ));
        }
        lines.extend(drift(boot.cycle, first, inventory));
        ids.push(inventory.boot_id.as_deref());
    }
    lines.extend(boots_with_first(&ids));
    let Some(latest) = boots.last() else {
        return if lines.is_empty() {
            Judged::Next(1)
        } else {
            Judged::Fail(lines)
        };
    };
    if !lines.is_empty() {
        return Judged::Fail(lines);
    }
    if latest.inventory.is_none() || latest.console == Console::Awaited {
        return Judged::Waiting;
    }
    if latest.cycle >= count {
        Judged::Pass
    } else {
        Judged::Next(latest.cycle + 1)
    }
}

/// [`boots`], and a first boot without an id: the cycles cannot be told from it.
fn boots_with_first(ids: &[Option<&str>]) -> Vec<String> {
    let mut out = Vec::new();
    if ids.len() > 1 && ids[0].is_none() {
        out.push("the first boot reported no boot id: a cycle cannot be told from it".to_owned());
    }
    out.extend(boots(ids));
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

    fn boot(cycle: u32, id: Option<&str>, console: Console) -> Boot {
        let mut inv = node();
        inv.boot_id = id.map(str::to_owned);
        Boot {
            cycle,
            inventory: id.map(|_| inv),
            console,
        }
    }

    use crate::verdict::linux::Console;

    #[test]
    fn cycles_pass_only_when_every_one_reported_a_new_boot_of_the_same_machine() {
        let mut first = node();
        first.boot_id = Some("a".into());
        let read = Console::Attested;
        assert_eq!(judge(3, Some(&first), &[]), Judged::Next(1));
        assert_eq!(
            judge(3, Some(&first), &[boot(1, Some("b"), read)]),
            Judged::Next(2)
        );
        // Reported but not yet vouched for by the console, or not reported yet: wait.
        assert_eq!(
            judge(3, Some(&first), &[boot(1, Some("b"), Console::Awaited)]),
            Judged::Waiting
        );
        assert_eq!(
            judge(3, Some(&first), &[boot(1, None, read)]),
            Judged::Waiting
        );
        let three = [
            boot(1, Some("b"), read),
            boot(2, Some("c"), Console::NotRead),
            boot(3, Some("d"), read),
        ];
        assert_eq!(judge(3, Some(&first), &three), Judged::Pass);
        // The same id twice: the second "cycle" was no boot.
        let again = [boot(1, Some("b"), read), boot(2, Some("b"), read)];
        assert_eq!(
            judge(3, Some(&first), &again),
            Judged::Fail(vec![
                "cycle 2: boot id b is cycle 1's: the node did not boot again".into()
            ])
        );
        // A disk gone in cycle 2 names the cycle and the serial.
        let mut gone = boot(2, Some("c"), read);
        gone.inventory.as_mut().unwrap().disks.clear();
        let Judged::Fail(lines) = judge(3, Some(&first), &[boot(1, Some("b"), read), gone]) else {
            panic!("a lost disk must fail")
        };
        assert_eq!(
            lines,
            ["cycle 2: disk S5XNNA0R is gone (was 3.5TiB as nvme0n1)"]
        );
    }

    #[test]
    fn hostile_or_broken_records_never_pass() {
        let mut first = node();
        first.boot_id = Some("a".into());
        let read = Console::Attested;
        assert!(matches!(judge(1, None, &[]), Judged::Fail(_)));
        // Out of order, or a hole in the record.
        assert!(matches!(
            judge(2, Some(&first), &[boot(2, Some("b"), read)]),
            Judged::Fail(_)
        ));
        assert!(matches!(
            judge(
                3,
                Some(&first),
                &[boot(1, None, read), boot(2, Some("c"), read)]
            ),
            Judged::Fail(_)
        ));
        // An earlier cycle the console never vouched for.
        assert!(matches!(
            judge(
                3,
                Some(&first),
                &[
                    boot(1, Some("b"), Console::Awaited),
                    boot(2, Some("c"), read)
                ]
            ),
            Judged::Fail(_)
        ));
        // No boot id at the first boot: nothing tells the cycles from it.
        first.boot_id = None;
        assert!(matches!(
            judge(1, Some(&first), &[boot(1, Some("b"), read)]),
            Judged::Fail(_)
        ));
        // More cycles reported than asked for still pass only if each is proven.
        first.boot_id = Some("a".into());
        assert_eq!(
            judge(1, Some(&first), &[boot(1, Some("b"), read)]),
            Judged::Pass
        );
    }
}
