//! The kernel polls each CPU's machine-check banks only every 5 minutes by default, so a
//! corrected error could be logged long after the step that caused it. During a step the agent
//! lowers the poll interval (`/sys/devices/system/machinecheck/machinecheck*/check_interval`,
//! seconds) and puts the old value back afterwards, so the error is logged — and blamed — in
//! the step that caused it.

use std::path::{Path, PathBuf};

/// Where the kernel exposes the machine-check poll intervals.
pub const MACHINECHECK: &str = "/sys/devices/system/machinecheck";

/// Poll interval during steps, seconds.
pub const STEP_INTERVAL_SECS: u32 = 1;

/// The lowered intervals; dropping it restores them.
pub struct FastPoll {
    saved: Vec<(PathBuf, String)>,
}

impl FastPoll {
    /// Sets every CPU's interval under `dir` to `secs`. `Ok(None)` when the kernel exposes no
    /// machine-check devices (not x86, or a VM without MCE); an error when they are there but
    /// cannot be written (not root).
    pub fn start(dir: &Path, secs: u32) -> Result<Option<FastPoll>, String> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(None);
        };
        let mut poll = FastPoll { saved: Vec::new() };
        for e in entries.flatten() {
            let file = e.path().join("check_interval");
            let Ok(old) = std::fs::read_to_string(&file) else {
                continue;
            };
            std::fs::write(&file, secs.to_string())
                .map_err(|err| format!("{}: {err}", file.display()))?;
            poll.saved.push((file, old.trim().to_owned()));
        }
        Ok((!poll.saved.is_empty()).then_some(poll))
    }
}

impl Drop for FastPoll {
    fn drop(&mut self) {
        for (file, old) in &self.saved {
            // Nothing to do if it fails: the kernel keeps polling, only more often.
            let _ = std::fs::write(file, old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_lowered_for_the_step_and_restored_after() {
        let dir = std::env::temp_dir().join(format!("kiln-mce-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for cpu in 0..2 {
            let d = dir.join(format!("machinecheck{cpu}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("check_interval"), "300\n").unwrap();
        }
        let read = |cpu: u32| {
            std::fs::read_to_string(dir.join(format!("machinecheck{cpu}/check_interval"))).unwrap()
        };
        {
            let poll = FastPoll::start(&dir, 1).unwrap();
            assert!(poll.is_some());
            assert_eq!((read(0).as_str(), read(1).as_str()), ("1", "1"));
        }
        assert_eq!((read(0).as_str(), read(1).as_str()), ("300", "300"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(FastPoll::start(&dir, 1).unwrap().is_none());
    }
}
