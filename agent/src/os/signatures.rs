//! What a block device holds, read off its first and last MiB: the magic numbers of partition
//! tables, filesystems, swap, volume managers, RAID, encryption and caches, at the offsets
//! their formats fix (as blkid and wipefs find them). A destructive disk step refuses a device
//! that holds any of them unless the suite says `wipe_signatures: true`: an unmounted disk is
//! not an empty one.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of each end of the device is read.
pub const PROBE_BYTES: usize = 1 << 20;

/// A signature found: what it is and where (byte offset from the device's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// What the bytes say the device holds.
    pub what: &'static str,
    /// Byte offset of the magic number on the device.
    pub offset: u64,
}

/// Reads both ends of the device at `path` and probes them.
pub fn probe_device(path: &Path) -> std::io::Result<Option<Found>> {
    let mut file = std::fs::File::open(path)?;
    let size = file.seek(SeekFrom::End(0))?;
    let head_len = (PROBE_BYTES as u64).min(size) as usize;
    let mut head = vec![0u8; head_len];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut head)?;
    let tail_start = size.saturating_sub(PROBE_BYTES as u64);
    let mut tail = vec![0u8; (size - tail_start) as usize];
    file.seek(SeekFrom::Start(tail_start))?;
    file.read_exact(&mut tail)?;
    Ok(probe(&head, &tail, size))
}

fn at(buf: &[u8], offset: usize, magic: &[u8]) -> bool {
    buf.get(offset..offset + magic.len()) == Some(magic)
}

fn le32(buf: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        buf.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

/// Whether an uberblock of either byte order starts at `offset`.
fn zfs_at(buf: &[u8], offset: usize) -> bool {
    let m = le32(buf, offset);
    m == Some(ZFS_MAGIC) || m == Some(ZFS_MAGIC.swap_bytes())
}

/// The first signature in `head` (the device's first bytes) or `tail` (its last bytes, the
/// device being `size` bytes long).
pub fn probe(head: &[u8], tail: &[u8], size: u64) -> Option<Found> {
    probe_head(head).or_else(|| probe_tail(tail, size))
}

/// The first signature in the device's first bytes.
fn probe_head(head: &[u8]) -> Option<Found> {
    let found = |what, offset: usize| {
        Some(Found {
            what,
            offset: offset as u64,
        })
    };
    // Encrypted and cached devices first: they say the most about what is on top.
    if at(head, 0, b"LUKS\xba\xbe") {
        return found("a LUKS encrypted volume", 0);
    }
    // LUKS2 keeps a second header (magic `SKUL`) after the first, at the first one's size:
    // it outlives a wiped first header, and cryptsetup can restore the volume from it.
    for offset in LUKS2_SECONDARY {
        if at(head, offset, b"SKUL\xba\xbe") {
            return found("a LUKS2 encrypted volume (its second header)", offset);
        }
    }
    if at(head, 4096 + 24, &BCACHE_MAGIC) {
        return found("a bcache device", 4096 + 24);
    }
    if at(head, 512, b"LABELONE") && at(head, 512 + 24, b"LVM2 001") {
        return found("an LVM2 physical volume", 512);
    }
    for offset in [0usize, 4096] {
        if le32(head, offset) == Some(MD_MAGIC) {
            return found("an md RAID member (superblock 1.1/1.2)", offset);
        }
    }
    // LBA 1: byte 512 with 512-byte sectors, 4096 on a 4Kn disk.
    for offset in [512usize, 4096] {
        if at(head, offset, b"EFI PART") {
            return found("a GPT partition table", offset);
        }
    }
    if at(head, 0, b"XFSB") {
        return found("an XFS filesystem", 0);
    }
    if at(head, 0x10040, b"_BHRfS_M") {
        return found("a btrfs filesystem", 0x10040);
    }
    if at(head, 1024 + 56, &[0x53, 0xef]) && head.len() > 2048 {
        return found("an ext2/3/4 filesystem", 1024 + 56);
    }
    for page in [4096usize, 8192, 16384, 65536] {
        for magic in [&b"SWAPSPACE2"[..], &b"SWAP-SPACE"[..]] {
            if at(head, page - 10, magic) {
                return found("a swap area", page - 10);
            }
        }
    }
    if at(head, 3, b"NTFS    ") {
        return found("an NTFS filesystem", 3);
    }
    if at(head, 82, b"FAT32   ") || at(head, 54, b"FAT16   ") || at(head, 54, b"FAT12   ") {
        return found(
            "a FAT filesystem",
            if at(head, 82, b"FAT32   ") { 82 } else { 54 },
        );
    }
    if at(head, 32769, b"CD001") {
        return found("an ISO 9660 image", 32769);
    }
    // ZFS labels 0 and 1: each label's uberblock array (its second half) of slots of 1 KiB
    // or a larger power of two.
    for label in [0, ZFS_LABEL as usize] {
        for slot in (label + ZFS_LABEL as usize / 2..label + ZFS_LABEL as usize).step_by(1024) {
            if zfs_at(head, slot) {
                return found("a ZFS pool member", slot);
            }
        }
    }
    if at(head, 510, &[0x55, 0xaa]) {
        return found("an MBR partition table or boot sector", 510);
    }
    None
}

/// The first signature in `tail`, the last bytes of a device `size` bytes long.
fn probe_tail(tail: &[u8], size: u64) -> Option<Found> {
    let tail_base = size - tail.len() as u64;
    let found_tail = |what, offset: usize| {
        Some(Found {
            what,
            offset: tail_base + offset as u64,
        })
    };
    // Where device offset `at` lies in `tail`, if it does.
    let in_tail = |at: u64| {
        at.checked_sub(tail_base)
            .map(|o| o as usize)
            .filter(|&o| o < tail.len())
    };
    // The end of the device, where each format places its copy by the device's own size,
    // aligned in device offsets (a disk's size need not be a multiple of 4 KiB): GPT's
    // backup header in the last LBA, md 0.90/1.0 superblocks, ZFS labels 2 and 3.
    for lba in [512u64, 4096] {
        if let Some(offset) = size.checked_sub(lba).and_then(in_tail) {
            if at(tail, offset, b"EFI PART") {
                return found_tail("a GPT backup partition table", offset);
            }
        }
    }
    // md 0.90 sits 64 KiB-aligned, 1.0 4 KiB-aligned, both near the end: every 4 KiB
    // boundary of the tail is looked at.
    let first = ((4096 - tail_base % 4096) % 4096) as usize;
    for offset in (first..tail.len()).step_by(4096) {
        if le32(tail, offset) == Some(MD_MAGIC) {
            return found_tail("an md RAID member (superblock 0.90/1.0)", offset);
        }
    }
    // ZFS sizes its labels by the device rounded down to 256 KiB: labels 2 and 3 are the last
    // two 256 KiB of that, each with its uberblock array in its second half.
    let labelled = size & !(ZFS_LABEL - 1);
    for label in [2 * ZFS_LABEL, ZFS_LABEL] {
        let Some(start) = labelled.checked_sub(label) else {
            continue;
        };
        for slot in (start + ZFS_LABEL / 2..start + ZFS_LABEL).step_by(1024) {
            if in_tail(slot).is_some_and(|offset| zfs_at(tail, offset)) {
                return Some(Found {
                    what: "a ZFS pool member",
                    offset: slot,
                });
            }
        }
    }
    None
}

const MD_MAGIC: u32 = 0xa92b_4efc;
/// A ZFS label's size; a device holds four, two at each end.
const ZFS_LABEL: u64 = 256 * 1024;
/// Where LUKS2's second header may start: the first header's size, 16 KiB to 4 MiB (those
/// past the first MiB are not read).
const LUKS2_SECONDARY: [usize; 6] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
];
const ZFS_MAGIC: u32 = 0x00ba_b10c;
const BCACHE_MAGIC: [u8; 16] = [
    0xc6, 0x85, 0x73, 0xf6, 0x4e, 0x1a, 0x45, 0xca, 0x82, 0x65, 0xf5, 0x7f, 0x48, 0xba, 0x6d, 0x81,
];

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 64 << 20;

    fn blank() -> (Vec<u8>, Vec<u8>) {
        (vec![0u8; PROBE_BYTES], vec![0u8; PROBE_BYTES])
    }

    fn with(offset: usize, magic: &[u8]) -> Option<Found> {
        let (mut head, tail) = blank();
        head[offset..offset + magic.len()].copy_from_slice(magic);
        probe(&head, &tail, SIZE)
    }

    #[test]
    fn a_blank_device_holds_nothing() {
        let (head, tail) = blank();
        assert_eq!(probe(&head, &tail, SIZE), None);
        // A device written with kiln's own pattern is not any of these either.
        let pattern: Vec<u8> = (0..PROBE_BYTES).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(probe(&pattern, &pattern, SIZE), None);
    }

    #[test]
    fn every_known_signature_is_named_with_its_offset() {
        let cases: Vec<(usize, Vec<u8>, &str)> = vec![
            (0, b"LUKS\xba\xbe".to_vec(), "LUKS"),
            (4096 + 24, BCACHE_MAGIC.to_vec(), "bcache"),
            (512, b"EFI PART".to_vec(), "GPT"),
            (0, b"XFSB".to_vec(), "XFS"),
            (0x10040, b"_BHRfS_M".to_vec(), "btrfs"),
            (1024 + 56, vec![0x53, 0xef], "ext2/3/4"),
            (4086, b"SWAPSPACE2".to_vec(), "swap"),
            (3, b"NTFS    ".to_vec(), "NTFS"),
            (82, b"FAT32   ".to_vec(), "FAT"),
            (32769, b"CD001".to_vec(), "ISO 9660"),
            (4096, MD_MAGIC.to_le_bytes().to_vec(), "md RAID"),
            (
                128 * 1024 + 5 * 1024,
                ZFS_MAGIC.to_le_bytes().to_vec(),
                "ZFS",
            ),
            (510, vec![0x55, 0xaa], "MBR"),
        ];
        for (offset, magic, name) in cases {
            let found = with(offset, &magic).unwrap_or_else(|| panic!("{name} not found"));
            assert!(found.what.contains(name), "{name}: {found:?}");
            assert_eq!(found.offset, offset as u64, "{name}");
        }
        let (mut head, tail) = blank();
        head[512..520].copy_from_slice(b"LABELONE");
        head[536..544].copy_from_slice(b"LVM2 001");
        assert!(probe(&head, &tail, SIZE).unwrap().what.contains("LVM2"));
    }

    #[test]
    fn signatures_at_the_end_of_the_device_are_found_too() {
        let (head, mut tail) = blank();
        let n = tail.len();
        tail[n - 512..n - 504].copy_from_slice(b"EFI PART");
        let found = probe(&head, &tail, SIZE).unwrap();
        assert!(found.what.contains("GPT backup"));
        assert_eq!(found.offset, SIZE - 512);
        let (head, mut tail) = blank();
        tail[n - 65536..n - 65532].copy_from_slice(&MD_MAGIC.to_le_bytes());
        assert!(probe(&head, &tail, SIZE).unwrap().what.contains("0.90"));
    }

    /// The last MiB of a device `size` bytes long with `magic` at device offset `at`.
    fn tail_with(size: u64, at: u64, magic: &[u8]) -> Option<Found> {
        let (head, mut tail) = blank();
        let o = (at - (size - PROBE_BYTES as u64)) as usize;
        tail[o..o + magic.len()].copy_from_slice(magic);
        probe(&head, &tail, size)
    }

    #[test]
    fn the_end_of_a_device_is_read_at_device_offsets_whatever_its_size() {
        // An odd number of 512-byte sectors: not a multiple of 4 KiB, nor of 256 KiB.
        let sectors = (SIZE >> 9) + 3;
        let size = sectors << 9;
        // md 1.0: 8 KiB from the end, down to a 4 KiB boundary (mdadm's placement).
        let md = ((sectors - 16) & !7) << 9;
        let found = tail_with(size, md, &MD_MAGIC.to_le_bytes()).expect("md 1.0 missed");
        assert_eq!(found.offset, md);
        // md 0.90: the last whole 64 KiB of the device, less 64 KiB.
        let md090 = (size & !0xffff) - 0x10000;
        assert_eq!(
            tail_with(size, md090, &MD_MAGIC.to_le_bytes()).map(|f| f.offset),
            Some(md090)
        );
        // ZFS label 3 of a device rounded down to 256 KiB, an uberblock 7 KiB into its array.
        let label3 = (size & !(ZFS_LABEL - 1)) - ZFS_LABEL;
        let slot = label3 + ZFS_LABEL / 2 + 7 * 1024;
        let found = tail_with(size, slot, &ZFS_MAGIC.to_le_bytes()).expect("ZFS label 3 missed");
        assert_eq!((found.what, found.offset), ("a ZFS pool member", slot));
        // And label 2, big-endian.
        let slot2 = label3 - ZFS_LABEL + ZFS_LABEL / 2;
        assert!(tail_with(size, slot2, &ZFS_MAGIC.to_be_bytes()).is_some());
        // GPT's backup header in the last 512-byte LBA.
        let found = tail_with(size, size - 512, b"EFI PART").expect("GPT backup missed");
        assert_eq!(found.offset, size - 512);
    }

    #[test]
    fn a_4kn_disks_gpt_a_luks2_second_header_and_zfs_label_1_are_found() {
        let found = with(4096, b"EFI PART").expect("GPT at LBA 1 of a 4Kn disk");
        assert_eq!((found.what, found.offset), ("a GPT partition table", 4096));
        let found = tail_with(SIZE, SIZE - 4096, b"EFI PART").expect("4Kn GPT backup");
        assert!(found.what.contains("backup"), "{found:?}");
        assert_eq!(found.offset, SIZE - 4096);
        // ZFS label 1, the first one wiped.
        let slot = ZFS_LABEL as usize + ZFS_LABEL as usize / 2 + 3 * 4096;
        assert_eq!(
            with(slot, &ZFS_MAGIC.to_le_bytes()).map(|f| f.offset),
            Some(slot as u64)
        );
        for offset in LUKS2_SECONDARY {
            let found = with(offset, b"SKUL\xba\xbe").expect("LUKS2 second header");
            assert!(found.what.contains("LUKS2"), "{found:?}");
            assert_eq!(found.offset, offset as u64);
        }
    }
}
