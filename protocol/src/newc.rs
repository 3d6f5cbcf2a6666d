//! The image's payload archive, written and read without I/O: a newc cpio as `kiln image build` writes
//! it (directories, regular files, symbolic links; `TRAILER!!!` at the end). The agent
//! unpacks what [`read`] returns into its RAM root, so the reader refuses whatever could reach
//! outside that root or make what a payload has no business making: an absolute path, a
//! `..`, a device node, a FIFO, a hard link, a name or size that runs past the end.

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<'a> {
    /// A directory with its permission bits.
    Dir { path: &'a str, mode: u32 },
    /// A regular file with its permission bits and bytes.
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    /// A symbolic link (its target is not followed when unpacking).
    Symlink { path: &'a str, target: &'a str },
}

/// Why an archive was refused; each names the byte offset of the entry's header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NewcError {
    /// The bytes end inside an entry.
    #[error("payload archive: entry at byte {offset} runs past the end ({len} bytes)")]
    Truncated { offset: usize, len: usize },
    /// Not `070701`.
    #[error("payload archive: no newc magic at byte {offset}")]
    Magic { offset: usize },
    /// A header field that is not eight hex digits.
    #[error("payload archive: header field {field} at byte {offset} is not hexadecimal")]
    Field { offset: usize, field: usize },
    /// A path that could land outside the root, or is not UTF-8.
    #[error("payload archive: entry at byte {offset}: path {path:?} {why}")]
    Path {
        offset: usize,
        path: String,
        why: &'static str,
    },
    /// A device, FIFO, socket or hard link.
    #[error(
        "payload archive: entry {path:?} at byte {offset} is {what}; a payload holds only directories, files and symbolic links"
    )]
    Kind {
        offset: usize,
        path: String,
        what: &'static str,
    },
    /// No `TRAILER!!!`: the archive was cut.
    #[error("payload archive: no TRAILER!!! entry (cut short?)")]
    NoTrailer,
}

const HEADER: usize = 110;

/// Every entry of `bytes`, in order; the first problem refuses the whole archive.
pub fn read(bytes: &[u8]) -> Result<Vec<Item<'_>>, NewcError> {
    let mut items = Vec::new();
    let mut at = 0usize;
    let len = bytes.len();
    loop {
        let offset = at;
        let header = bytes
            .get(at..at + HEADER)
            .ok_or(NewcError::Truncated { offset, len })?;
        if &header[..6] != b"070701" {
            return Err(NewcError::Magic { offset });
        }
        let field = |i: usize| -> Result<usize, NewcError> {
            let text = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .map_err(|_| NewcError::Field { offset, field: i })?;
            usize::from_str_radix(text, 16).map_err(|_| NewcError::Field { offset, field: i })
        };
        let (mode, nlink, size, namesize) = (field(1)?, field(4)?, field(6)?, field(11)?);
        let name_end = at
            .checked_add(HEADER + namesize)
            .ok_or(NewcError::Truncated { offset, len })?;
        let name = bytes
            .get(at + HEADER..name_end)
            .ok_or(NewcError::Truncated { offset, len })?;
        let name = name.strip_suffix(&[0]).ok_or_else(|| NewcError::Path {
            offset,
            path: String::from_utf8_lossy(name).into_owned(),
            why: "does not end in NUL",
        })?;
        let path = std::str::from_utf8(name).map_err(|_| NewcError::Path {
            offset,
            path: String::from_utf8_lossy(name).into_owned(),
            why: "is not UTF-8",
        })?;
        let data_at = align4(name_end);
        let data_end = data_at
            .checked_add(size)
            .ok_or(NewcError::Truncated { offset, len })?;
        let data = bytes
            .get(data_at..data_end)
            .ok_or(NewcError::Truncated { offset, len })?;
        at = align4(data_end);
        if path == "TRAILER!!!" {
            return Ok(items);
        }
        check_path(offset, path)?;
        let kind = |what| NewcError::Kind {
            offset,
            path: path.to_owned(),
            what,
        };
        let perm = (mode & 0o7777) as u32;
        items.push(match mode & 0o170000 {
            0o040000 => Item::Dir { path, mode: perm },
            0o100000 if nlink > 1 => return Err(kind("a hard link")),
            0o100000 => Item::File {
                path,
                mode: perm,
                data,
            },
            0o120000 => Item::Symlink {
                path,
                target: std::str::from_utf8(data).map_err(|_| NewcError::Path {
                    offset,
                    path: path.to_owned(),
                    why: "has a link target that is not UTF-8",
                })?,
            },
            0o020000 => return Err(kind("a character device")),
            0o060000 => return Err(kind("a block device")),
            0o010000 => return Err(kind("a FIFO")),
            0o140000 => return Err(kind("a socket")),
            _ => return Err(kind("of no known type")),
        });
        if at >= len {
            return Err(NewcError::NoTrailer);
        }
    }
}

/// Appends one entry — header, NUL-terminated name, data, each padded to four bytes — as
/// the kernel and [`read`] take it; `rdev` is a device node's (major, minor).
pub fn push(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(align4(out.len()), 0);
    out.extend_from_slice(data);
    out.resize(align4(out.len()), 0);
}

/// Appends the closing `TRAILER!!!` entry.
pub fn trailer(out: &mut Vec<u8>) {
    push(out, 0, 0, 1, (0, 0), "TRAILER!!!", b"");
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// A path stays under the root: relative, no `..`, no empty or `.` component.
fn check_path(offset: usize, path: &str) -> Result<(), NewcError> {
    let bad = |why| {
        Err(NewcError::Path {
            offset,
            path: path.to_owned(),
            why,
        })
    };
    if path.is_empty() {
        return bad("is empty");
    }
    if path.starts_with('/') {
        return bad("is absolute");
    }
    if path.contains('\0') {
        return bad("holds a NUL");
    }
    if path.split('/').any(|c| c == "..") {
        return bad("climbs out with ..");
    }
    if path.split('/').any(|c| c.is_empty() || c == ".") {
        return bad("has an empty or . component");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(u32, u32, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (mode, nlink, name, data) in entries {
            push(&mut out, 1, *mode, *nlink, (0, 0), name, data);
        }
        trailer(&mut out);
        out
    }

    #[test]
    fn directories_files_and_links_are_read_in_order() {
        let bytes = archive(&[
            (0o040755, 2, "usr", b""),
            (0o100755, 1, "usr/stress", b"ELF!x"),
            (0o120777, 1, "usr/s", b"stress"),
        ]);
        assert_eq!(
            read(&bytes).unwrap(),
            [
                Item::Dir {
                    path: "usr",
                    mode: 0o755
                },
                Item::File {
                    path: "usr/stress",
                    mode: 0o755,
                    data: b"ELF!x"
                },
                Item::Symlink {
                    path: "usr/s",
                    target: "stress"
                },
            ]
        );
    }

    #[test]
    fn hostile_archives_are_refused_with_the_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                archive(&[(0o100644, 1, "../etc/passwd", b"x")]),
                "climbs out",
            ),
            (archive(&[(0o100644, 1, "a/../../x", b"x")]), "climbs out"),
            (archive(&[(0o100644, 1, "/etc/shadow", b"x")]), "absolute"),
            (archive(&[(0o100644, 1, "a//b", b"x")]), "empty or ."),
            (archive(&[(0o100644, 1, "", b"x")]), "is empty"),
            (
                archive(&[(0o020600, 1, "dev/mem", b"")]),
                "character device",
            ),
            (archive(&[(0o060600, 1, "dev/sda", b"")]), "block device"),
            (archive(&[(0o010644, 1, "fifo", b"")]), "FIFO"),
            (archive(&[(0o100644, 2, "hard", b"x")]), "hard link"),
            (b"070702".repeat(20), "no newc magic"),
            (
                archive(&[(0o100644, 1, "f", b"abc")])[..120].to_vec(),
                "runs past",
            ),
            (
                {
                    let mut a = Vec::new();
                    push(&mut a, 1, 0o100644, 1, (0, 0), "f", b"abc");
                    a
                },
                "TRAILER",
            ),
            (
                b"07070100000001ZZZZZZZZ"
                    .iter()
                    .chain([b'0'; 100].iter())
                    .copied()
                    .collect(),
                "field 1",
            ),
            (Vec::new(), "runs past"),
        ];
        for (bytes, says) in cases {
            let err = read(&bytes).unwrap_err().to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
        // A size field that claims more than there is, even near usize::MAX, is refused.
        let mut huge = archive(&[(0o100644, 1, "f", b"abc")]);
        huge[6 + 8 * 6..14 + 8 * 6].copy_from_slice(b"FFFFFFFF");
        assert!(matches!(read(&huge), Err(NewcError::Truncated { .. })));
    }
}
