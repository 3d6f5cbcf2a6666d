//! The site's cabling map against what each NIC's switch port said over LLDP: the cable in
//! the wrong port, the wrong switch, two nodes' cables crossed, a link where nothing was
//! heard, an interface the map names and the node lacks. The most common rack-integration
//! fault is a cable in the wrong port; it is a fault of the run, named with both ends.

use crate::wire::{Fault, Inventory, NicInfo, Outcome};

/// One line of the map: this node's `interface` (kernel name, MAC or PCI address) goes to
/// `port` of `switch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cable {
    /// The interface.
    pub interface: String,
    /// The switch, by system name (or chassis ID).
    pub switch: String,
    /// Its port, by port ID.
    pub port: String,
}

/// Another node's line of the map, for a port this node's cable landed on: whose it is, and
/// what that node heard on that interface (to tell a swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elsewhere {
    /// The node (its host name, else `node N`).
    pub node: String,
    /// Its line of the map.
    pub cable: Cable,
    /// What its interface heard in its latest run (switch, port).
    pub heard: Option<(String, String)>,
}

/// Whether a link with no LLDP heard is a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Silence {
    /// It is (the default: an unverified cable is not a verified one).
    #[default]
    Fault,
    /// It is not (the suite marks LLDP optional: switches that do not speak it).
    Allowed,
}

/// A node's lines of the map with what the verdict needs beside them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Map {
    /// This node's cables.
    pub cables: Vec<Cable>,
    /// Other nodes' lines for the ports this node's cables landed on.
    pub others: Vec<Elsewhere>,
}

impl Silence {
    /// What the suite says: `expect.lldp.optional` allows it.
    pub fn of(plan: &crate::Plan) -> Silence {
        match plan.expect().and_then(|e| e.lldp.as_ref()) {
            Some(l) if l.optional => Silence::Allowed,
            _ => Silence::Fault,
        }
    }
}

/// The `expect:` outcome with the cabling's folded in (the map's faults are the node's
/// integration faults, shown beside `expect:`'s): a fault outranks an error, which outranks
/// anything else.
pub fn fold(expect: Option<Outcome>, cabling: Outcome) -> Option<Outcome> {
    Some(match (expect, cabling) {
        (e, Outcome::Pass) => return e.or(Some(Outcome::Pass)),
        (Some(Outcome::Fail { mut faults }), Outcome::Fail { faults: more }) => {
            faults.extend(more);
            Outcome::Fail { faults }
        }
        (Some(Outcome::Fail { faults }), _) => Outcome::Fail { faults },
        (Some(Outcome::Error { message }), Outcome::Error { message: more }) => Outcome::Error {
            message: format!("{message}; {more}"),
        },
        (Some(Outcome::Error { message }), c) if !matches!(c, Outcome::Fail { .. }) => {
            Outcome::Error { message }
        }
        (_, c) => c,
    })
}

/// Whether `nic` is the map's `interface`.
fn is(nic: &NicInfo, interface: &str) -> bool {
    nic.name == interface
        || nic.mac.eq_ignore_ascii_case(interface)
        || nic.pci.as_deref() == Some(interface)
}

fn same(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// The map's lines for this node against its inventory: pass, or a fault per cable that is
/// not where the map says; an error when LLDP was never listened for (nothing was checked).
pub fn outcome(map: &[Cable], inv: &Inventory, silence: Silence, others: &[Elsewhere]) -> Outcome {
    if map.is_empty() {
        return Outcome::Pass;
    }
    let Some(listened) = inv.lldp_listened_s else {
        return Outcome::Error {
            message: "the agent did not listen for LLDP, so the cabling map could not be checked"
                .into(),
        };
    };
    let mut faults = Vec::new();
    for cable in map {
        let Some(nic) = inv.nics.iter().find(|n| is(n, &cable.interface)) else {
            let have: Vec<&str> = inv.nics.iter().map(|n| n.name.as_str()).collect();
            faults.push(Fault::new(
                "cabling.no_interface",
                format!(
                    "the map cables {} to {} {}, but this node has no such interface (it has {})",
                    cable.interface,
                    cable.switch,
                    cable.port,
                    if have.is_empty() {
                        "none".into()
                    } else {
                        have.join(", ")
                    }
                ),
            ));
            continue;
        };
        let name = if nic.name == cable.interface {
            nic.name.clone()
        } else {
            format!("{} ({})", nic.name, cable.interface)
        };
        if !nic.link_up {
            faults.push(Fault::new(
                "cabling.no_link",
                format!(
                    "{name} has no link; the map says {} {}",
                    cable.switch, cable.port
                ),
            ));
            continue;
        }
        let Some(heard) = &nic.lldp else {
            if silence == Silence::Fault {
                faults.push(Fault::new(
                    "cabling.no_lldp",
                    format!(
                        "{name}: no LLDP heard in {listened} s, so its cable is unverified; the map says {} {}",
                        cable.switch, cable.port
                    ),
                ));
            }
            continue;
        };
        let switch_ok =
            same(heard.switch(), &cable.switch) || same(&heard.chassis_id, &cable.switch);
        if switch_ok && same(&heard.port_id, &cable.port) {
            continue;
        }
        let found = format!("{} {}", heard.switch(), heard.port_id);
        let wanted = if switch_ok {
            cable.port.clone()
        } else {
            format!("{} {}", cable.switch, cable.port)
        };
        let owner = others
            .iter()
            .find(|o| same(&o.cable.switch, heard.switch()) && same(&o.cable.port, &heard.port_id));
        let swapped = owner.filter(|o| {
            o.heard
                .as_ref()
                .is_some_and(|(s, p)| same(s, &cable.switch) && same(p, &cable.port))
        });
        faults.push(match (swapped, owner) {
            (Some(o), _) => Fault::new(
                "cabling.swapped",
                format!(
                    "{name} is swapped with {} {}: it is cabled to {found}; the map says {wanted}",
                    o.node, o.cable.interface
                ),
            ),
            (None, Some(o)) => Fault::new(
                "cabling.wrong_port",
                format!(
                    "{name} is cabled to {found}; the map says {wanted} (and gives {found} to {} {})",
                    o.node, o.cable.interface
                ),
            ),
            (None, None) => Fault::new(
                "cabling.wrong_port",
                format!("{name} is cabled to {found}; the map says {wanted}"),
            ),
        });
    }
    if faults.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail { faults }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lldp::Neighbor;

    fn nic(name: &str, mac: &str, heard: Option<(&str, &str)>) -> NicInfo {
        NicInfo {
            name: name.into(),
            mac: mac.into(),
            link_up: true,
            lldp: heard.map(|(s, p)| Neighbor {
                chassis_id: "aa:bb:cc:00:00:01".into(),
                port_id: p.into(),
                ttl_s: 120,
                system_name: Some(s.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cable(interface: &str, switch: &str, port: &str) -> Cable {
        Cable {
            interface: interface.into(),
            switch: switch.into(),
            port: port.into(),
        }
    }

    fn node(nics: Vec<NicInfo>) -> Inventory {
        Inventory {
            nics,
            lldp_listened_s: Some(35),
            ..Default::default()
        }
    }

    fn messages(o: &Outcome) -> Vec<String> {
        match o {
            Outcome::Fail { faults } => faults
                .iter()
                .map(|f| format!("{}: {}", f.code, f.message))
                .collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn cables_where_the_map_says_pass_by_name_mac_or_pci_address() {
        let mut by_pci = nic(
            "eth2",
            "52:54:00:00:00:03",
            Some(("leaf-r12-b", "Ethernet1/7")),
        );
        by_pci.pci = Some("0000:3b:00.1".into());
        let inv = node(vec![
            nic(
                "eth0",
                "52:54:00:00:00:01",
                Some(("Leaf-R12-A", "ethernet1/7")),
            ),
            nic(
                "eth1",
                "52:54:00:00:00:02",
                Some(("leaf-r12-a", "Ethernet1/8")),
            ),
            by_pci,
        ]);
        let map = [
            cable("eth0", "leaf-r12-a", "Ethernet1/7"),
            cable("52:54:00:00:00:02", "leaf-r12-a", "Ethernet1/8"),
            cable("0000:3b:00.1", "leaf-r12-b", "Ethernet1/7"),
        ];
        assert_eq!(outcome(&map, &inv, Silence::Fault, &[]), Outcome::Pass);
        assert_eq!(
            outcome(&[], &Inventory::default(), Silence::Fault, &[]),
            Outcome::Pass
        );
    }

    #[test]
    fn a_cable_in_the_wrong_port_names_both_ports_and_whose_port_it_is() {
        let inv = node(vec![nic(
            "eth1",
            "52:54:00:00:00:02",
            Some(("leaf-r12-a", "Ethernet1/8")),
        )]);
        let map = [cable("eth1", "leaf-r12-a", "Ethernet1/7")];
        assert_eq!(
            messages(&outcome(&map, &inv, Silence::Fault, &[])),
            [
                "cabling.wrong_port: eth1 is cabled to leaf-r12-a Ethernet1/8; the map says Ethernet1/7"
            ]
        );
        let other = Elsewhere {
            node: "R12U09".into(),
            cable: cable("eth1", "leaf-r12-a", "Ethernet1/8"),
            heard: None,
        };
        assert_eq!(
            messages(&outcome(
                &map,
                &inv,
                Silence::Fault,
                std::slice::from_ref(&other)
            )),
            [
                "cabling.wrong_port: eth1 is cabled to leaf-r12-a Ethernet1/8; the map says Ethernet1/7 (and gives leaf-r12-a Ethernet1/8 to R12U09 eth1)"
            ]
        );
        // The other node heard this node's port: the two cables are crossed.
        let crossed = Elsewhere {
            heard: Some(("leaf-r12-a".into(), "Ethernet1/7".into())),
            ..other
        };
        assert_eq!(
            messages(&outcome(&map, &inv, Silence::Fault, &[crossed])),
            [
                "cabling.swapped: eth1 is swapped with R12U09 eth1: it is cabled to leaf-r12-a Ethernet1/8; the map says Ethernet1/7"
            ]
        );
        // Another switch altogether is named in full.
        let inv = node(vec![nic(
            "eth1",
            "52:54:00:00:00:02",
            Some(("leaf-r13-a", "Ethernet1/7")),
        )]);
        assert_eq!(
            messages(&outcome(&map, &inv, Silence::Fault, &[])),
            [
                "cabling.wrong_port: eth1 is cabled to leaf-r13-a Ethernet1/7; the map says leaf-r12-a Ethernet1/7"
            ]
        );
    }

    #[test]
    fn the_cablings_outcome_folds_into_expects_the_worst_first() {
        let fail = |code: &str| Outcome::Fail {
            faults: vec![Fault::new(code, "m")],
        };
        let error = |m: &str| Outcome::Error { message: m.into() };
        assert_eq!(fold(None, Outcome::Pass), Some(Outcome::Pass));
        assert_eq!(
            fold(Some(fail("expect.cpu")), Outcome::Pass),
            Some(fail("expect.cpu"))
        );
        assert_eq!(
            fold(None, fail("cabling.no_lldp")),
            Some(fail("cabling.no_lldp"))
        );
        assert_eq!(
            messages(&fold(Some(fail("a")), fail("b")).unwrap()),
            ["a: m", "b: m"]
        );
        assert_eq!(fold(Some(fail("a")), error("deaf")), Some(fail("a")));
        assert_eq!(fold(Some(error("x")), fail("b")), Some(fail("b")));
        assert_eq!(fold(Some(error("x")), error("y")), Some(error("x; y")));
        assert_eq!(fold(Some(Outcome::Pass), error("y")), Some(error("y")));
    }

    #[test]
    fn silence_no_link_a_missing_interface_and_no_listening_are_never_a_pass() {
        let mut down = nic("eth2", "52:54:00:00:00:03", None);
        down.link_up = false;
        let inv = node(vec![nic("eth1", "52:54:00:00:00:02", None), down]);
        let map = [
            cable("eth1", "leaf-r12-a", "Ethernet1/7"),
            cable("eth2", "leaf-r12-b", "Ethernet1/7"),
            cable("eth9", "leaf-r12-b", "Ethernet1/9"),
        ];
        assert_eq!(
            messages(&outcome(&map, &inv, Silence::Fault, &[])),
            [
                "cabling.no_lldp: eth1: no LLDP heard in 35 s, so its cable is unverified; the map says leaf-r12-a Ethernet1/7",
                "cabling.no_link: eth2 has no link; the map says leaf-r12-b Ethernet1/7",
                "cabling.no_interface: the map cables eth9 to leaf-r12-b Ethernet1/9, but this node has no such interface (it has eth1, eth2)",
            ]
        );
        // LLDP optional: silence is allowed, nothing else is.
        assert_eq!(
            messages(&outcome(&map, &inv, Silence::Allowed, &[])).len(),
            2
        );
        let deaf = Inventory {
            lldp_listened_s: None,
            ..inv
        };
        assert!(matches!(
            outcome(&map, &deaf, Silence::Allowed, &[]),
            Outcome::Error { .. }
        ));
    }
}
