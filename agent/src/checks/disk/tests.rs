//! The disk check's engine, safety rules and health readers, against files and fake sysfs trees.

use super::*;
use crate::stop::Interrupt;
use std::os::unix::fs::FileExt;

fn stop() -> Stop {
    Stop::new(Duration::from_secs(60), Interrupt::new())
}

fn scratch(dir: &Path, bytes: u64) -> Job {
    Job {
        path: dir.join("scratch.bin"),
        bytes,
        scratch: true,
        smart_device: None,
        // Several I/Os in flight, as on a real device: blocks finish out of order.
        queue_depth: 4,
        engine: IoEngine::Uring,
    }
}

/// Both engines: io_uring (where this kernel has it) and threads.
const ENGINES: [IoEngine; 2] = [IoEngine::Uring, IoEngine::Threads];

fn tempdir(name: &str) -> PathBuf {
    // Under the target directory, on a real disk filesystem (tmpfs refuses O_DIRECT).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_clean_file_verifies_and_is_removed_by_either_engine() {
    let dir = tempdir("clean");
    for engine in ENGINES {
        let job = Job {
            engine,
            ..scratch(&dir, 8 << 20)
        };
        let moved = AtomicU64::new(0);
        let run = job
            .run(1 << 20, 7, &stop(), &NoInjection, &|b| {
                moved.fetch_add(b, Ordering::Relaxed);
            })
            .unwrap();
        assert_eq!(run.engine, engine, "this kernel has io_uring");
        assert_eq!(run.mismatch_count, 0);
        assert_eq!(run.latencies.len(), 16);
        assert_eq!(
            moved.into_inner(),
            16 << 20,
            "progress counts each byte written and read"
        );
        assert!(run.write_mbps() > 0.0 && run.read_mbps() > 0.0);
        assert!(!job.path.exists(), "scratch file left behind");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_queue_depth_follows_the_device_and_the_buffers_it_would_pin() {
    let sys = tempdir("queue-sys");
    let queue = |dev: &str, rotational: u64, nr: u64| {
        let q = sys.join(format!("block/{dev}/queue"));
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join("rotational"), format!("{rotational}\n")).unwrap();
        std::fs::write(q.join("nr_requests"), format!("{nr}\n")).unwrap();
    };
    queue("nvme0n1", 0, 1023);
    queue("sda", 1, 64);
    queue("vdb", 0, 8);
    // virtio-blk says rotational whatever the host keeps it on.
    queue("vda", 1, 256);
    std::fs::create_dir_all(sys.join("block/vda/device")).unwrap();
    std::os::unix::fs::symlink(
        "../../../bus/virtio/drivers/virtio_blk",
        sys.join("block/vda/device/driver"),
    )
    .unwrap();
    let sys_path = sys.to_str().unwrap();
    let depth = |dev: &str, block: usize| {
        default_queue_depth(sys_path, Some(Path::new(&format!("/dev/{dev}"))), block)
    };
    assert_eq!(depth("nvme0n1", 128 << 10).0, 32);
    assert_eq!(depth("sda", 1 << 20).0, 4);
    assert!(depth("sda", 1 << 20).1.contains("rotational"));
    let (d, why) = depth("vda", 256 << 10);
    assert_eq!(d, 32, "{why}");
    assert!(why.contains("virtual disk (virtio_blk"), "{why}");
    // A queue that takes 8 requests gets 8, not 32.
    assert_eq!(depth("vdb", 1 << 20).0, 8);
    // 1 MiB blocks: 16 in flight are 16 MiB, the most a chosen depth keeps in flight.
    let (d, why) = depth("nvme0n1", 1 << 20);
    assert_eq!(d, 16);
    assert!(
        why.contains("16MiB of blocks at most are in flight"),
        "{why}"
    );
    assert!(why.contains("solid-state"), "{why}");
    // 64 MiB blocks: one at a time.
    assert_eq!(depth("nvme0n1", 64 << 20).0, 1);
    // No device found (a file system over the network, a tmpfs): a middle depth, said so.
    let (d, why) = default_queue_depth(sys_path, None, 1 << 20);
    assert_eq!(d, 16);
    assert!(why.contains("not in sysfs"), "{why}");
    std::fs::remove_dir_all(sys).unwrap();
}

struct CorruptBlocks<'a>(&'a [u64]);

impl Injection for CorruptBlocks<'_> {
    fn after_write(&self, path: &Path, block_size: usize) {
        let file = OpenOptions::new().write(true).open(path).unwrap();
        for block in self.0 {
            file.write_all_at(&[0xff; 16], block * block_size as u64 + 4096)
                .unwrap();
        }
        file.sync_data().unwrap();
    }
}

#[test]
fn corrupted_blocks_are_reported_with_their_offsets_by_either_engine_in_block_order() {
    let dir = tempdir("corrupt");
    for engine in ENGINES {
        let job = Job {
            engine,
            queue_depth: 8,
            ..scratch(&dir, 16 << 20)
        };
        let run = job
            .run(1 << 20, 9, &stop(), &CorruptBlocks(&[11, 2]), &|_| {})
            .unwrap();
        assert_eq!(run.mismatch_count, 2, "{engine:?}");
        let m = &run.mismatches[0];
        assert_eq!(
            (m.block, m.offset, m.first_bad_word, m.bad_words),
            (2, 2 << 20, 512, 2)
        );
        assert_eq!(m.actual, u64::MAX);
        assert_eq!(run.mismatches[1].block, 11);
        let faults = run.faults(&job.path);
        assert!(faults[0].message.contains("block 2 (offset 2097152) read back wrong: 2 of 131072 words differ, first at byte +4096"), "{}", faults[0].message);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Cuts the file short after the write: the blocks past the cut cannot be read back.
struct Truncate(u64);

impl Injection for Truncate {
    fn after_write(&self, path: &Path, _: usize) {
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(self.0)
            .unwrap();
    }
}

#[test]
fn a_block_that_cannot_be_read_back_is_an_error_naming_it_and_the_pass_ends() {
    let dir = tempdir("short");
    for engine in ENGINES {
        let job = Job {
            engine,
            queue_depth: 8,
            ..scratch(&dir, 16 << 20)
        };
        // Blocks 0-9 are whole, 10 is cut in half, 11-15 are gone: several I/Os in flight fail
        // at once, and every one must be reaped before the error comes back.
        let err = job
            .run(
                1 << 20,
                3,
                &stop(),
                &Truncate((10 << 20) + (1 << 19)),
                &|_| {},
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("read of block 1"), "{engine:?}: {err}");
        assert!(err.contains(&job.path.display().to_string()), "{err}");
        assert!(!job.path.exists(), "scratch file left behind");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_misdirected_block_names_the_block_it_holds() {
    let seed = 5;
    let n = 512;
    let mut words: Vec<u64> = (0..n).map(|k| expected_word(seed, 3, k, n)).collect();
    assert!(verify_block(&words, seed, 3, 4096).is_none());
    let m = verify_block(&words, seed, 4, 4096).unwrap();
    assert_eq!(m.holds_block, Some(3));
    words[0] = 4;
    assert_eq!(
        verify_block(&words, seed, 4, 4096).unwrap().holds_block,
        None
    );
}

/// A fake sysfs with a disk `sdb` (partition `sdb1`) and a blank disk `sdc`.
fn fake_system(mountinfo: &str) -> (System, PathBuf) {
    let root = tempdir("sysfs");
    for (name, dev) in [("sdb", "8:16"), ("sdc", "8:32")] {
        let dir = root.join("class/block").join(name);
        std::fs::create_dir_all(dir.join("holders")).unwrap();
        std::fs::write(dir.join("dev"), dev).unwrap();
        std::fs::write(dir.join("size"), "2097152").unwrap();
        std::fs::create_dir_all(root.join("block").join(name)).unwrap();
    }
    let part = root.join("class/block/sdb/sdb1");
    std::fs::create_dir_all(part.join("holders")).unwrap();
    std::fs::write(part.join("partition"), "1").unwrap();
    std::fs::write(part.join("dev"), "8:17").unwrap();
    // As in sysfs, the partition is also listed at class/block/ through a link.
    std::os::unix::fs::symlink(&part, root.join("class/block/sdb1")).unwrap();
    let system = System {
        sys: root.display().to_string(),
        mountinfo: mountinfo.to_owned(),
        swaps: "Filename Type Size Used Priority\n".into(),
    };
    (system, root)
}

#[test]
fn mounted_root_partitioned_and_held_disks_are_refused() {
    let (system, root) = fake_system("22 1 8:17 / /data rw,relatime - ext4 /dev/sdb1 rw\n");
    assert_eq!(
        refusal("sdb", &system).unwrap(),
        "is mounted (/dev/sdb1 at /data)"
    );
    assert_eq!(
        refusal("sdb1", &system).unwrap(),
        "is a partition; expected a whole disk"
    );
    assert_eq!(refusal("sdc", &system), None);

    let system = System {
        mountinfo: "22 1 8:32 / / rw - ext4 /dev/sdc rw\n".into(),
        ..system
    };
    assert_eq!(
        refusal("sdc", &system).unwrap(),
        "holds the root filesystem (/dev/sdc is mounted at /)"
    );

    let system = System {
        mountinfo: String::new(),
        ..system
    };
    assert_eq!(
        refusal("sdb", &system).unwrap(),
        "holds partitions (sdb1); expected a blank disk"
    );
    std::fs::create_dir_all(root.join("class/block/sdc/holders/md0")).unwrap();
    assert_eq!(
        refusal("sdc", &system).unwrap(),
        "is a RAID member: /dev/sdc is held by md0"
    );
    std::fs::remove_dir_all(root.join("class/block/sdc/holders/md0")).unwrap();
    std::fs::create_dir_all(root.join("class/block/sdc/holders/dm-0")).unwrap();
    assert!(refusal("sdc", &system).unwrap().contains("device-mapper"));
    let system = System {
        swaps: "Filename Type\n/dev/sdc partition 1 0 -2\n".into(),
        ..system
    };
    assert_eq!(
        refusal("sdc", &system).unwrap(),
        "is in use as swap (/dev/sdc)"
    );
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn targets_resolve_by_path_glob_and_all() {
    let (system, root) = fake_system("");
    assert_eq!(
        resolve_target(&DiskTarget::All, &system).unwrap(),
        ["sdb", "sdc"]
    );
    assert_eq!(
        resolve_target(&DiskTarget::Glob("/dev/sd[c-z]".into()), &system).unwrap(),
        ["sdc"]
    );
    assert_eq!(
        resolve_target(&DiskTarget::Path("/dev/sdc".into()), &system).unwrap(),
        ["sdc"]
    );
    let err = resolve_target(&DiskTarget::Path("/dev/sdz".into()), &system)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/dev/sdz is not a block device"), "{err}");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn smart_json_yields_health_and_counters() {
    let json: serde_json::Value = serde_json::from_str(
        r#"{"smart_status":{"passed":false},"ata_smart_attributes":{"table":[{"id":5,"raw":{"value":12}},{"id":197,"raw":{"value":3}}]}}"#,
    )
    .unwrap();
    let mut out = CheckOutput::default();
    read_smart(&json, Path::new("/dev/sdb"), &mut out);
    assert_eq!(out.faults[0].code, "disk.smart_failed");
    let m: Vec<(&str, f64)> = out
        .metrics
        .iter()
        .map(|m| (m.name.as_str(), m.value))
        .collect();
    assert_eq!(m, [("reallocated_sectors", 12.0), ("pending_sectors", 3.0)]);
}

#[test]
fn native_nvme_health_names_the_warning_and_counts_media_errors() {
    let h = crate::hw::nvme::Health {
        critical_warning: 0b100,
        temperature_k: 320,
        available_spare_pct: 90,
        percentage_used: 3,
        media_errors: 2,
        ..Default::default()
    };
    let mut out = CheckOutput::default();
    read_nvme(&h, Path::new("/dev/nvme0n1"), &mut out);
    assert_eq!(out.faults[0].code, "disk.nvme_critical_warning");
    assert_eq!(
        out.faults[0].message,
        "/dev/nvme0n1: NVMe critical warning 0x04: reliability degraded by media or internal errors"
    );
    let get = |n: &str| out.metrics.iter().find(|m| m.name == n).map(|m| m.value);
    assert_eq!(get("media_errors"), Some(2.0));
    assert_eq!(get("temp_c"), Some(46.9));
    assert_eq!(get("available_spare"), Some(90.0));
}

#[test]
fn native_ata_smart_fails_on_the_drives_verdict_and_a_failing_attribute() {
    use crate::hw::ata::{Attribute, Smart};
    let attr = |id, value, threshold, raw| Attribute {
        id,
        value,
        worst: value,
        threshold: Some(threshold),
        prefail: true,
        raw,
    };
    let s = Smart {
        passed: Some(false),
        attributes: vec![attr(5, 30, 36, 0x0001_0000_0007), attr(197, 100, 0, 4)],
    };
    let mut out = CheckOutput::default();
    read_ata(&s, Path::new("/dev/sda"), &mut out);
    let codes: Vec<&str> = out.faults.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(codes, ["disk.smart_failed", "disk.smart_attribute_failing"]);
    assert!(
        out.faults[1]
            .message
            .contains("attribute 5 (reallocated sectors) is at 30")
    );
    let get = |n: &str| out.metrics.iter().find(|m| m.name == n).map(|m| m.value);
    // Only the low 32 bits of a raw counter count.
    assert_eq!(get("reallocated_sectors"), Some(7.0));
    assert_eq!(get("pending_sectors"), Some(4.0));
    assert_eq!(get("udma_crc_errors"), None);
}
