//! A reproducible newc ("070701") cpio writer: entries sorted by path, every mtime 0, owner
//! root, inode numbers assigned in order — the same inputs give the same bytes.

use std::collections::BTreeMap;

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with its permission bits.
    Dir(u32),
    /// A regular file with its permission bits and contents.
    File(u32, Vec<u8>),
    /// A symbolic link to the target.
    Symlink(String),
    /// A character device (permission bits, major, minor).
    CharDev(u32, u32, u32),
}

/// An archive being assembled.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds `path` (relative, no leading slash), creating missing parent directories (0755).
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/').to_owned();
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, init)| init)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries
                .entry(parent.clone())
                .or_insert(Entry::Dir(0o755));
        }
        self.entries.insert(path, entry);
    }

    /// The archive's bytes, trailer included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data, nlink, (maj, min)): (u32, &[u8], u32, (u32, u32)) = match entry {
                Entry::Dir(perm) => (0o040000 | perm, &[], 2, (0, 0)),
                Entry::File(perm, data) => (0o100000 | perm, data, 1, (0, 0)),
                Entry::Symlink(target) => (0o120777, target.as_bytes(), 1, (0, 0)),
                Entry::CharDev(perm, major, minor) => (0o020000 | perm, &[], 1, (*major, *minor)),
            };
            kiln_protocol::newc::push(
                &mut out,
                ino as u32 + 1,
                mode,
                nlink,
                (maj, min),
                path,
                data,
            );
        }
        kiln_protocol::newc::trailer(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_image_writes_the_agent_reads_back() {
        use kiln_protocol::newc::{Item, read};
        let mut a = Archive::default();
        a.add("usr/bin/fio", Entry::File(0o755, b"ELF fio".to_vec()));
        a.add("usr/lib/x", Entry::Symlink("libx.so.1".into()));
        let bytes = a.to_bytes();
        assert_eq!(
            read(&bytes).unwrap(),
            [
                Item::Dir {
                    path: "usr",
                    mode: 0o755
                },
                Item::Dir {
                    path: "usr/bin",
                    mode: 0o755
                },
                Item::File {
                    path: "usr/bin/fio",
                    mode: 0o755,
                    data: b"ELF fio"
                },
                Item::Dir {
                    path: "usr/lib",
                    mode: 0o755
                },
                Item::Symlink {
                    path: "usr/lib/x",
                    target: "libx.so.1"
                },
            ]
        );
    }

    #[test]
    fn entries_are_sorted_padded_and_parents_created() {
        let mut a = Archive::default();
        a.add("/bin/busybox", Entry::File(0o755, b"ELF".to_vec()));
        a.add("init", Entry::File(0o755, b"#!/bin/sh\n".to_vec()));
        a.add("dev/console", Entry::CharDev(0o600, 5, 1));
        let bytes = a.to_bytes();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        let order: Vec<usize> = [
            "bin\0",
            "bin/busybox\0",
            "dev\0",
            "dev/console\0",
            "init\0",
            "TRAILER!!!\0",
        ]
        .iter()
        .map(|n| text.find(n).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        // Same input, same bytes.
        assert_eq!(bytes, a.to_bytes());
    }

    #[test]
    fn the_kernel_format_is_readable_by_cpio() {
        let mut a = Archive::default();
        a.add("etc/hello", Entry::File(0o644, b"hello\n".to_vec()));
        a.add("bin/sh", Entry::Symlink("busybox".into()));
        let dir = std::env::temp_dir().join(format!("kiln-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "-v"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("GNU cpio is installed by .ci/setup");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&a.to_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("etc/hello") && text.contains("bin/sh -> busybox"),
            "{text}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
