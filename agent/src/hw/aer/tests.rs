use super::*;
use crate::hw::test_sysfs::{device, sysfs};

/// A type 0 header with a capability list — power management at 40h, then PCI Express at
/// 50h with Device Control 0x2810 (no reporting bits, as virtio leaves it) — and extended
/// capabilities: a vendor-specific one at 100h, then AER at 140h with nothing latched and
/// Data Link Protocol errors fatal (the spec's default severities).
fn config_space() -> Vec<u8> {
    let mut c = vec![0u8; 4096];
    c[0x06] = 0x10;
    c[0x34] = 0x40;
    c[0x40..0x42].copy_from_slice(&[0x01, 0x50]);
    c[0x50..0x52].copy_from_slice(&[0x10, 0x00]);
    c[0x58..0x5a].copy_from_slice(&0x2810u16.to_le_bytes());
    c[0x100..0x104].copy_from_slice(&(0x000bu32 | (1 << 16) | (0x140 << 20)).to_le_bytes());
    c[0x140..0x144].copy_from_slice(&(0x0001u32 | (2 << 16)).to_le_bytes());
    c[0x14c..0x150].copy_from_slice(&0x0006_2030u32.to_le_bytes());
    c
}

fn set(config: &mut [u8], at: usize, value: u32) {
    config[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn node(name: &str, config: &[u8]) -> std::path::PathBuf {
    let sys = sysfs(name);
    device(
        &sys,
        "0000:02:00.0",
        &[
            (
                "aer_dev_correctable",
                "RxErr 0\nBadTLP 0\nTOTAL_ERR_COR 0\n",
            ),
            ("aer_dev_nonfatal", "CmpltTO 0\nTOTAL_ERR_NONFATAL 0\n"),
        ],
    );
    std::fs::write(sys.join("bus/pci/devices/0000:02:00.0/config"), config).unwrap();
    sys
}

#[test]
fn new_aer_errors_are_faults_naming_the_device_and_counter() {
    let sys = sysfs("aer");
    let aer_file = "RxErr 0\nBadTLP 0\nBadDLLP 0\nTOTAL_ERR_COR 0\n";
    device(
        &sys,
        "0000:3b:00.0",
        &[
            ("aer_dev_correctable", aer_file),
            ("aer_dev_fatal", "DLP 0\nTOTAL_ERR_FATAL 0\n"),
        ],
    );
    let before = aer(&sys);
    assert!(new_errors(&before, &aer(&sys)).is_empty());
    device(
        &sys,
        "0000:3b:00.0",
        &[(
            "aer_dev_correctable",
            "RxErr 0\nBadTLP 3\nBadDLLP 0\nTOTAL_ERR_COR 3\n",
        )],
    );
    let faults = new_errors(&before, &aer(&sys));
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].code, "pcie.aer.correctable");
    assert_eq!(
        faults[0].message,
        "PCIe device 0000:3b:00.0: new correctable AER errors during the step: BadTLP +3"
    );
    std::fs::remove_dir_all(&sys).unwrap();
}

#[test]
fn an_error_only_the_status_register_latched_is_a_fault_by_its_severity() {
    let mut config = config_space();
    let sys = node("latched", &config);
    let before = aer(&sys);
    assert!(step_errors(&sys, &before).is_empty());
    // RxErr (correctable), Completion Timeout (non-fatal by severity), DLP (fatal).
    set(&mut config, 0x150, 0x1);
    set(&mut config, 0x144, (1 << 14) | (1 << 4));
    std::fs::write(sys.join("bus/pci/devices/0000:02:00.0/config"), &config).unwrap();
    let faults = step_errors(&sys, &before);
    let lines: Vec<_> = faults.iter().map(|f| f.message.as_str()).collect();
    let how = " (latched in its AER status register; the kernel did not count it)";
    assert_eq!(
        lines,
        [
            format!(
                "PCIe device 0000:02:00.0: new correctable AER errors during the step: RxErr{how}"
            ),
            format!("PCIe device 0000:02:00.0: new fatal AER errors during the step: DLP{how}"),
            format!(
                "PCIe device 0000:02:00.0: new nonfatal AER errors during the step: CmpltTO{how}"
            ),
        ]
    );
    assert_eq!(faults[1].code, "pcie.aer.fatal");
    std::fs::remove_dir_all(&sys).unwrap();
}

#[test]
fn an_error_the_kernel_counted_is_said_once() {
    let mut config = config_space();
    let sys = node("counted", &config);
    let before = aer(&sys);
    // The kernel counted it and had not cleared the register yet.
    set(&mut config, 0x144, 1 << 14);
    std::fs::write(sys.join("bus/pci/devices/0000:02:00.0/config"), &config).unwrap();
    device(
        &sys,
        "0000:02:00.0",
        &[("aer_dev_nonfatal", "CmpltTO 1\nTOTAL_ERR_NONFATAL 1\n")],
    );
    let faults = new_errors(&before, &aer(&sys));
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert_eq!(
        faults[0].message,
        "PCIe device 0000:02:00.0: new nonfatal AER errors during the step: CmpltTO +1"
    );
    std::fs::remove_dir_all(&sys).unwrap();
}

#[test]
fn clearing_writes_the_latched_bits_back_to_their_registers() {
    let config = config_space();
    let sys = node("clear", &config);
    let mut seen = aer(&sys);
    let l = seen.latched.get_mut("0000:02:00.0").unwrap();
    l.correctable = 0x41;
    l.uncorrectable = 0x4000;
    clear_latched(&sys, &seen);
    let after = std::fs::read(sys.join("bus/pci/devices/0000:02:00.0/config")).unwrap();
    assert_eq!(&after[0x150..0x154], &0x41u32.to_le_bytes());
    assert_eq!(&after[0x144..0x148], &0x4000u32.to_le_bytes());
    assert_eq!(
        &after[0x14c..0x150],
        &config[0x14c..0x150],
        "severity untouched"
    );
    assert_eq!(after.len(), 4096);
    std::fs::remove_dir_all(&sys).unwrap();
}

#[test]
fn reporting_is_turned_on_and_old_errors_cleared_before_the_run() {
    let mut config = config_space();
    set(&mut config, 0x150, 1 << 7);
    let sys = node("prepare", &config);
    // No AER counters: not touched.
    device(&sys, "0000:00:1f.0", &[]);
    std::fs::write(sys.join("bus/pci/devices/0000:00:1f.0/config"), &config).unwrap();
    let lines = prepare(&sys);
    assert_eq!(
        lines,
        [
            "PCIe device 0000:02:00.0: error reporting turned on (Device Control 0x2810 -> 0x281f)",
            "PCIe device 0000:00:1f.0: correctable AER errors latched before the run, cleared: BadDLLP",
            "PCIe device 0000:02:00.0: correctable AER errors latched before the run, cleared: BadDLLP",
        ]
    );
    let after = std::fs::read(sys.join("bus/pci/devices/0000:02:00.0/config")).unwrap();
    assert_eq!(&after[0x58..0x5a], &0x281fu16.to_le_bytes());
    let untouched = std::fs::read(sys.join("bus/pci/devices/0000:00:1f.0/config")).unwrap();
    assert_eq!(&untouched[0x58..0x5a], &config[0x58..0x5a]);
    // A config space that cannot be read is said, not skipped.
    std::fs::remove_file(sys.join("bus/pci/devices/0000:02:00.0/config")).unwrap();
    let lines = prepare(&sys);
    assert!(
        lines[0].starts_with("PCIe device 0000:02:00.0: cannot turn error reporting on"),
        "{lines:?}"
    );
    std::fs::remove_dir_all(&sys).unwrap();
}

#[test]
fn hostile_capability_lists_end_the_walk() {
    assert_eq!(device_control_offset(&config_space()), Some(0x58));
    // No list, an empty space, a truncated space.
    let mut c = config_space();
    c[0x06] = 0;
    assert_eq!(device_control_offset(&c), None);
    assert_eq!(device_control_offset(&[]), None);
    assert_eq!(device_control_offset(&config_space()[..0x52]), None);
    // A list that loops on itself, one pointing into the header, one past the end.
    let mut c = config_space();
    c[0x41] = 0x40;
    assert_eq!(device_control_offset(&c), None);
    c[0x41] = 0x08;
    assert_eq!(device_control_offset(&c), None);
    c[0x41] = 0xfc;
    assert_eq!(device_control_offset(&c), None);
    // Only the first 64 bytes (an unprivileged read): no capability reachable.
    assert_eq!(device_control_offset(&config_space()[..64]), None);
}

#[test]
fn hostile_extended_capability_lists_end_the_walk() {
    assert_eq!(latched(&config_space()).map(|l| l.at), Some(0x140));
    // The 256 bytes an unprivileged read gets; a space cut inside the AER registers.
    assert_eq!(latched(&config_space()[..256]), None);
    assert_eq!(latched(&config_space()[..0x150]), None);
    // A list that loops, one that points back into the standard space, one past the end.
    let mut c = config_space();
    set(&mut c, 0x100, 0x000b | (0x100 << 20));
    assert_eq!(latched(&c), None);
    set(&mut c, 0x100, 0x000b | (0x40 << 20));
    assert_eq!(latched(&c), None);
    set(&mut c, 0x100, 0x000b | (0xffc << 20));
    assert_eq!(latched(&c), None);
    // All ones (a device that fell off the bus).
    assert_eq!(latched(&vec![0xff; 4096]), None);
}
