//! What keeps the destructive disk check off disks that hold anything: targets resolved
//! from the system's block devices, and every refusal rule (mounts, partitions, holders,
//! signatures) checked before a byte is written.

use super::{DiskTarget, Path, read_trimmed};

/// Where the kernel's views of disks live; tests point it at a fake tree.
pub struct System {
    /// sysfs mount point.
    pub sys: String,
    /// Contents of /proc/self/mountinfo.
    pub mountinfo: String,
    /// Contents of /proc/swaps.
    pub swaps: String,
}

impl System {
    /// This host.
    pub fn live() -> Self {
        Self {
            sys: "/sys".into(),
            mountinfo: std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            swaps: std::fs::read_to_string("/proc/swaps").unwrap_or_default(),
        }
    }

    fn block(&self, name: &str) -> String {
        format!("{}/class/block/{name}", self.sys)
    }

    /// Whole disks that can hold data (not loop, RAM, optical, or stacked devices).
    pub fn whole_disks(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(format!("{}/block", self.sys))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.retain(|n| {
            !["loop", "ram", "zram", "sr", "dm-", "md", "nbd", "fd"]
                .iter()
                .any(|p| n.starts_with(p))
        });
        names.sort();
        names
    }

    fn partitions(&self, disk: &str) -> Vec<String> {
        let mut parts: Vec<String> = std::fs::read_dir(self.block(disk))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().join("partition").exists())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        parts.sort();
        parts
    }

    fn holders(&self, name: &str) -> Vec<String> {
        std::fs::read_dir(format!("{}/holders", self.block(name)))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Mount points whose device is `major:minor`.
    fn mounts_of(&self, dev: &str) -> Vec<String> {
        self.mountinfo
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.get(2) == Some(&dev))
                    .then(|| fields.get(4).map(|m| m.to_string()))
                    .flatten()
            })
            .collect()
    }
}

/// The whole disks a target names.
pub fn resolve_target(target: &DiskTarget, system: &System) -> anyhow::Result<Vec<String>> {
    let disks = system.whole_disks();
    let named = |path: &str| -> anyhow::Result<String> {
        let name = path.strip_prefix("/dev/").unwrap_or(path).to_owned();
        if !Path::new(&system.block(&name)).exists() {
            anyhow::bail!(
                "refused: {path} is not a block device on this node; nothing was written"
            );
        }
        Ok(name)
    };
    let found = match target {
        DiskTarget::All => disks,
        DiskTarget::Path(path) => vec![named(path)?],
        DiskTarget::Glob(pattern) => {
            let pattern = glob::Pattern::new(pattern)
                .map_err(|err| anyhow::anyhow!("bad glob {pattern:?}: {err}"))?;
            disks
                .into_iter()
                .filter(|d| pattern.matches(&format!("/dev/{d}")))
                .collect()
        }
        DiskTarget::Model(regex) => {
            let re = regex_lite::Regex::new(regex)
                .map_err(|err| anyhow::anyhow!("bad model pattern {regex:?}: {err}"))?;
            disks
                .into_iter()
                .filter(|d| {
                    read_trimmed(format!("{}/device/model", system.block(d)))
                        .is_some_and(|m| re.is_match(&m))
                })
                .collect()
        }
    };
    if found.is_empty() && !matches!(target, DiskTarget::All) {
        anyhow::bail!("refused: no disk matches {target:?}; nothing was written");
    }
    Ok(found)
}

/// Why `disk` must not be overwritten, or `None` when it is safe: a partition rather than a
/// whole disk, mounted (itself or any partition), swap, the root device, holding partitions,
/// or used by device-mapper (LVM) or md (RAID).
pub fn refusal(disk: &str, system: &System) -> Option<String> {
    let base = system.block(disk);
    if !Path::new(&base).exists() {
        return Some("no such block device".into());
    }
    if Path::new(&base).join("partition").exists() {
        return Some("is a partition; expected a whole disk".into());
    }
    let parts = system.partitions(disk);
    let mut devices = vec![disk.to_owned()];
    devices.extend(parts.iter().cloned());
    for dev in &devices {
        if let Some(majmin) = read_trimmed(format!("{}/dev", system.block(dev))) {
            let mounts = system.mounts_of(&majmin);
            if mounts.iter().any(|m| m == "/") {
                return Some(format!(
                    "holds the root filesystem (/dev/{dev} is mounted at /)"
                ));
            }
            if let Some(m) = mounts.first() {
                return Some(format!("is mounted (/dev/{dev} at {m})"));
            }
        }
        if system
            .swaps
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some(&format!("/dev/{dev}")))
        {
            return Some(format!("is in use as swap (/dev/{dev})"));
        }
        let holders = system.holders(dev);
        if let Some(h) = holders.first() {
            let what = if h.starts_with("md") {
                "a RAID member"
            } else {
                "used by device-mapper (LVM or crypt)"
            };
            return Some(format!("is {what}: /dev/{dev} is held by {h}"));
        }
    }
    if !parts.is_empty() {
        return Some(format!(
            "holds partitions ({}); expected a blank disk",
            parts.join(", ")
        ));
    }
    None
}
