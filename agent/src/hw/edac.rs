//! EDAC memory error counters (`/sys/devices/system/edac/mc`): per memory controller and,
//! where the driver knows them, per DIMM with the firmware's label, so a corrected or
//! uncorrected error during a step is blamed on a slot, not only counted.

use std::path::Path;

use crate::os::{read_trimmed, read_u64};

/// Counters of one DIMM (or chip-select row, on drivers that only know those).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimmCounts {
    /// The firmware's label (`CPU_SrcID#0_MC#0_Chan#1_DIMM#0`, `DIMM_B2`) or the sysfs name.
    pub label: String,
    /// Where EDAC found it (`mc0/dimm3`).
    pub location: String,
    /// Corrected errors.
    pub ce: u64,
    /// Uncorrected errors.
    pub ue: u64,
}

/// Every controller's totals and every DIMM's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edac {
    /// Memory controllers found.
    pub controllers: usize,
    /// Corrected errors over all controllers.
    pub ce: u64,
    /// Uncorrected errors over all controllers.
    pub ue: u64,
    /// Per DIMM, where known.
    pub dimms: Vec<DimmCounts>,
}

/// Reads the counters under `dir` (normally `/sys/devices/system/edac/mc`); `None` when no
/// EDAC driver is loaded.
pub fn read(dir: &Path) -> Option<Edac> {
    let mut controllers: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("mc"))
        .map(|e| e.path())
        .collect();
    controllers.sort();
    let mut out = Edac::default();
    for mc in &controllers {
        let (Some(ce), Some(ue)) = (read_u64(mc.join("ce_count")), read_u64(mc.join("ue_count")))
        else {
            continue;
        };
        out.controllers += 1;
        out.ce += ce;
        out.ue += ue;
        let mc_name = mc
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut units: Vec<_> = std::fs::read_dir(mc)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("dimm") || n.starts_with("rank")
                })
            })
            .collect();
        units.sort();
        for unit in units {
            let name = unit
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (Some(ce), Some(ue)) = (
                read_u64(unit.join("dimm_ce_count")),
                read_u64(unit.join("dimm_ue_count")),
            ) else {
                continue;
            };
            let location = format!("{mc_name}/{name}");
            out.dimms.push(DimmCounts {
                label: read_trimmed(unit.join("dimm_label"))
                    .or_else(|| read_trimmed(unit.join("dimm_location")))
                    .unwrap_or_else(|| location.clone()),
                location,
                ce,
                ue,
            });
        }
    }
    (out.controllers > 0).then_some(out)
}

/// The DIMMs whose counters grew from `before` to `after`: (DIMM, corrected, uncorrected).
pub fn grew<'a>(before: &Edac, after: &'a Edac) -> Vec<(&'a DimmCounts, u64, u64)> {
    after
        .dimms
        .iter()
        .filter_map(|d| {
            let was = before.dimms.iter().find(|b| b.location == d.location);
            let (ce0, ue0) = was.map_or((0, 0), |b| (b.ce, b.ue));
            let (ce, ue) = (d.ce.saturating_sub(ce0), d.ue.saturating_sub(ue0));
            (ce > 0 || ue > 0).then_some((d, ce, ue))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn per_dimm_counters_carry_the_firmware_label_and_growth_is_blamed_on_the_slot() {
        let dir = std::env::temp_dir().join(format!("kiln-edac-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // As skx_edac/i10nm_edac lay them out.
        write(&dir, "mc0/ce_count", "0\n");
        write(&dir, "mc0/ue_count", "0\n");
        write(&dir, "mc0/dimm0/dimm_ce_count", "0\n");
        write(&dir, "mc0/dimm0/dimm_ue_count", "0\n");
        write(
            &dir,
            "mc0/dimm0/dimm_label",
            "CPU_SrcID#0_MC#0_Chan#0_DIMM#0\n",
        );
        write(&dir, "mc0/dimm3/dimm_ce_count", "0\n");
        write(&dir, "mc0/dimm3/dimm_ue_count", "0\n");
        write(&dir, "mc0/dimm3/dimm_label", "DIMM_B2\n");
        let before = read(&dir).unwrap();
        assert_eq!(
            (before.controllers, before.ce, before.dimms.len()),
            (1, 0, 2)
        );
        write(&dir, "mc0/ce_count", "5\n");
        write(&dir, "mc0/dimm3/dimm_ce_count", "5\n");
        let after = read(&dir).unwrap();
        assert_eq!(after.ce, 5);
        let g = grew(&before, &after);
        assert_eq!(g.len(), 1);
        assert_eq!(
            (
                g[0].0.label.as_str(),
                g[0].0.location.as_str(),
                g[0].1,
                g[0].2
            ),
            ("DIMM_B2", "mc0/dimm3", 5, 0)
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read(&dir), None, "no EDAC driver, no counters");
    }
}
