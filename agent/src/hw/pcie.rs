//! PCIe devices from sysfs: each device's trained link (speed and width) against what it and
//! its slot can do — a NIC or GPU trained at x8 instead of x16, or a generation lower, is a
//! classic rack fault. Their AER errors are [`super::aer`]'s.

use std::path::Path;

use kiln_protocol::wire::PcieLink;

/// Every PCIe device under `sys` (normally `/sys`) that reports a link.
pub fn links(sys: &Path) -> Vec<PcieLink> {
    let dir = sys.join("bus/pci/devices");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<PcieLink> = entries
        .flatten()
        .filter_map(|e| {
            let d = e.path();
            let read = |f: &str| crate::os::read_trimmed(d.join(f));
            let width = |f: &str| read(f).and_then(|w| w.trim_start_matches('x').parse().ok());
            let max_width: u32 = width("max_link_width").filter(|&w| w > 0)?;
            let port = upstream_port(&d);
            let port_read = |f: &str| {
                port.as_ref()
                    .and_then(|p| crate::os::read_trimmed(p.join(f)))
            };
            Some(PcieLink {
                address: e.file_name().to_string_lossy().into_owned(),
                class: read("class")
                    .map(|c| c.trim_start_matches("0x").chars().take(4).collect())
                    .unwrap_or_default(),
                vendor_device: match (read("vendor"), read("device")) {
                    (Some(v), Some(d)) => Some(format!(
                        "{}:{}",
                        v.trim_start_matches("0x"),
                        d.trim_start_matches("0x")
                    )),
                    _ => None,
                },
                driver: crate::os::link_name(d.join("driver")),
                current_speed_gts: read("current_link_speed").and_then(|s| speed(&s)),
                max_speed_gts: read("max_link_speed").and_then(|s| speed(&s)),
                current_width: width("current_link_width"),
                max_width: Some(max_width),
                port_max_width: port_read("max_link_width")
                    .and_then(|w| w.trim_start_matches('x').parse().ok()),
                port_max_speed_gts: port_read("max_link_speed").and_then(|s| speed(&s)),
                port: port
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned()),
            })
        })
        .collect();
    out.sort_by(|a, b| a.address.cmp(&b.address));
    out
}

/// The port above a device: the PCI device its sysfs directory sits in (`…/0000:00:03.0/
/// 0000:02:00.0`), when that port reports a link. A device right on the root bus (its parent
/// is `pci0000:00`) has none.
fn upstream_port(device: &Path) -> Option<std::path::PathBuf> {
    let real = std::fs::canonicalize(device).ok()?;
    let parent = real.parent()?;
    let name = parent.file_name()?.to_str()?;
    let is_address = name.len() == 12 && name.as_bytes()[4] == b':' && name.as_bytes()[10] == b'.';
    (is_address && parent.join("max_link_width").exists()).then(|| parent.to_path_buf())
}

/// `8.0 GT/s PCIe` → 8.0; `Unknown` → None.
fn speed(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::test_sysfs::{device, sysfs};

    #[test]
    fn links_report_trained_and_maximum_speed_and_width() {
        let sys = sysfs("links");
        // As the kernel writes them (drivers/pci/pci-sysfs.c).
        device(
            &sys,
            "0000:3b:00.0",
            &[
                ("class", "0x020000\n"),
                ("vendor", "0x15b3\n"),
                ("device", "0x1017\n"),
                ("current_link_speed", "8.0 GT/s PCIe\n"),
                ("max_link_speed", "16.0 GT/s PCIe\n"),
                ("current_link_width", "8\n"),
                ("max_link_width", "16\n"),
            ],
        );
        // A host bridge without a link.
        device(&sys, "0000:00:00.0", &[("class", "0x060000\n")]);
        let l = links(&sys);
        assert_eq!(l.len(), 1);
        let nic = &l[0];
        assert_eq!(nic.address, "0000:3b:00.0");
        assert_eq!(nic.class, "0200");
        assert_eq!(nic.vendor_device.as_deref(), Some("15b3:1017"));
        assert_eq!((nic.current_width, nic.max_width), (Some(8), Some(16)));
        assert_eq!(
            (nic.current_speed_gts, nic.max_speed_gts),
            (Some(8.0), Some(16.0))
        );
        std::fs::remove_dir_all(&sys).unwrap();
    }

    #[test]
    fn a_device_names_the_port_above_it_and_what_that_slot_allows() {
        // As sysfs lays it out: bus/pci/devices/* are links into the device tree, where a
        // device behind a root port sits in the port's directory.
        let sys = sysfs("slot");
        let tree = sys.join("devices/pci0000:00");
        let port = tree.join("0000:00:03.0");
        let nic = port.join("0000:02:00.0");
        std::fs::create_dir_all(&nic).unwrap();
        for (dir, class, width, speed) in [
            (&port, "0x060400", "1", "2.5 GT/s PCIe"),
            (&nic, "0x020000", "1", "2.5 GT/s PCIe"),
        ] {
            std::fs::write(dir.join("class"), class).unwrap();
            std::fs::write(dir.join("max_link_width"), width).unwrap();
            std::fs::write(dir.join("current_link_width"), width).unwrap();
            std::fs::write(dir.join("max_link_speed"), speed).unwrap();
        }
        let devices = sys.join("bus/pci/devices");
        std::fs::create_dir_all(&devices).unwrap();
        std::os::unix::fs::symlink(&port, devices.join("0000:00:03.0")).unwrap();
        std::os::unix::fs::symlink(&nic, devices.join("0000:02:00.0")).unwrap();
        let l = links(&sys);
        assert_eq!(l.len(), 2);
        // The root port hangs off the host bridge: no port above it.
        assert_eq!(l[0].address, "0000:00:03.0");
        assert_eq!(l[0].port, None);
        assert_eq!(l[1].port.as_deref(), Some("0000:00:03.0"));
        assert_eq!(
            (l[1].port_max_width, l[1].port_max_speed_gts),
            (Some(1), Some(2.5))
        );
        std::fs::remove_dir_all(&sys).unwrap();
    }
}
