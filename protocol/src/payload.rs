//! An image's payload (modules, firmware, packages: what the agent fetches after boot) as
//! pieces with their own SHA-256, so that a node may take each piece from any peer and still
//! run nothing it did not verify; and the set of pieces a node holds.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The size of a piece unless a manifest says otherwise.
pub const PIECE_SIZE: u64 = 4 << 20;
/// The most pieces a manifest may list (64 GiB of 4 MiB pieces): a manifest from elsewhere
/// that lists more is refused before anything is allocated for it.
pub const MAX_PIECES: usize = 16_384;

/// Where a run's whole payload came from, as reports show it (stored when its last piece
/// was verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Bytes the collector served.
    pub collector_bytes: u64,
    /// Bytes peers served.
    pub peer_bytes: u64,
    /// How many peers served some.
    pub peers: u32,
    /// Pieces that failed their hash (each from a peer, fetched again elsewhere).
    pub corrupt: u32,
    /// Milliseconds from the first verified piece to the last.
    pub ms: u64,
}

/// One rack's payload: how much the collector served against its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackPayload {
    /// The rack (none: nodes without one).
    pub rack: Option<String>,
    /// Nodes whose payload is complete.
    pub nodes: usize,
    /// Bytes from the collector.
    pub collector_bytes: u64,
    /// Bytes from peers.
    pub peer_bytes: u64,
    /// Pieces that failed their hash.
    pub corrupt: u64,
}

/// The tallies of `nodes` (rack, tally) summed per rack, in rack order.
pub fn by_rack<'a>(
    nodes: impl IntoIterator<Item = (Option<&'a str>, &'a Tally)>,
) -> Vec<RackPayload> {
    let mut racks: std::collections::BTreeMap<Option<&str>, RackPayload> = Default::default();
    for (rack, t) in nodes {
        let r = racks.entry(rack).or_insert_with(|| RackPayload {
            rack: rack.map(str::to_owned),
            nodes: 0,
            collector_bytes: 0,
            peer_bytes: 0,
            corrupt: 0,
        });
        r.nodes += 1;
        r.collector_bytes += t.collector_bytes;
        r.peer_bytes += t.peer_bytes;
        r.corrupt += u64::from(t.corrupt);
    }
    racks.into_values().collect()
}

/// What the collector serves a run over its session: the payload's digest, size and pieces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// SHA-256 of the whole payload, hex: the payload's name.
    pub sha256: String,
    /// Bytes in the payload.
    pub size: u64,
    /// Bytes in each piece but the last.
    pub piece_size: u64,
    /// Each piece's SHA-256, hex, in order.
    pub pieces: Vec<String>,
}

/// Why a manifest or a piece is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// The manifest does not describe a payload that could exist.
    #[error("the manifest is refused: {0}")]
    Manifest(String),
    /// No such piece.
    #[error("piece {index} is beyond the payload's {count} pieces")]
    Beyond {
        /// The index asked for.
        index: usize,
        /// Pieces there are.
        count: usize,
    },
    /// The bytes are not the piece the manifest names.
    #[error("piece {index} does not match its SHA-256 ({why})")]
    Mismatch {
        /// The piece.
        index: usize,
        /// Its length or its digest, what differs.
        why: String,
    },
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Manifest {
    /// The manifest of `payload` cut into pieces of `piece_size` bytes.
    pub fn of(payload: &[u8], piece_size: u64) -> Manifest {
        let size = piece_size.max(1) as usize;
        Manifest {
            sha256: hex(&Sha256::digest(payload)),
            size: payload.len() as u64,
            piece_size: size as u64,
            pieces: payload
                .chunks(size)
                .map(|p| hex(&Sha256::digest(p)))
                .collect(),
        }
    }

    /// Checks that the manifest could describe a payload: sizes and piece count agree, every
    /// digest is 64 hex digits, within [`MAX_PIECES`].
    pub fn check(&self) -> Result<(), PieceError> {
        let bad = |why: String| Err(PieceError::Manifest(why));
        if self.piece_size == 0 {
            return bad("piece_size is 0".into());
        }
        if self.pieces.len() > MAX_PIECES {
            return bad(format!(
                "{} pieces; at most {MAX_PIECES}",
                self.pieces.len()
            ));
        }
        let expected = self.size.div_ceil(self.piece_size);
        if expected != self.pieces.len() as u64 {
            return bad(format!(
                "{} bytes in pieces of {} make {expected} pieces, not {}",
                self.size,
                self.piece_size,
                self.pieces.len()
            ));
        }
        let digest = |d: &str| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit());
        if !digest(&self.sha256) || !self.pieces.iter().all(|p| digest(p)) {
            return bad("a digest is not 64 hex digits".into());
        }
        Ok(())
    }

    /// Bytes in piece `index`.
    pub fn piece_len(&self, index: usize) -> Result<u64, PieceError> {
        if index >= self.pieces.len() {
            return Err(PieceError::Beyond {
                index,
                count: self.pieces.len(),
            });
        }
        let start = index as u64 * self.piece_size;
        Ok(self.piece_size.min(self.size - start))
    }

    /// Where piece `index` starts in the payload.
    pub fn piece_offset(&self, index: usize) -> Result<u64, PieceError> {
        self.piece_len(index)?;
        Ok(index as u64 * self.piece_size)
    }

    /// Whether `bytes` are piece `index`, as the manifest names it.
    pub fn verify(&self, index: usize, bytes: &[u8]) -> Result<(), PieceError> {
        let len = self.piece_len(index)?;
        if bytes.len() as u64 != len {
            return Err(PieceError::Mismatch {
                index,
                why: format!("{} bytes, {len} expected", bytes.len()),
            });
        }
        let got = hex(&Sha256::digest(bytes));
        if got != self.pieces[index] {
            return Err(PieceError::Mismatch {
                index,
                why: format!("sha256 {got}"),
            });
        }
        Ok(())
    }
}

/// Where a granted piece comes from, as the agent is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// The collector (`GET …/payload/pieces/N` with the run's session token).
    Collector,
    /// A peer: its node and where its agent serves pieces (`HOST:PORT`).
    Peer {
        /// The peer's node.
        node: i64,
        /// Where it serves.
        addr: String,
    },
}

/// One piece a node may fetch now, and from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The piece.
    pub piece: usize,
    /// Its source.
    pub from: Source,
}

/// Body of `POST …/payload/grants`: what the node holds, and where it serves pieces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsRequest {
    /// The pieces it holds (verified).
    pub have: Pieces,
    /// The port its agent serves pieces on, when it serves (peers reach it at the address
    /// its session comes from).
    #[serde(default)]
    pub port: Option<u16>,
}

/// How a granted fetch ended, as the agent says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The piece arrived and matched its SHA-256.
    Verified,
    /// The transfer broke off or stalled past its deadline.
    Broken,
    /// The bytes failed the piece's SHA-256: the source is reported.
    Corrupt,
}

/// Body of `POST …/payload/done`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoneRequest {
    /// The grant it ends.
    pub grant: Grant,
    /// How.
    pub outcome: Outcome,
}

/// Which pieces a node holds, one bit each.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Pieces {
    /// Pieces in the payload.
    pub count: usize,
    /// The bits, 64 pieces a word.
    pub words: Vec<u64>,
}

impl Pieces {
    /// None of `count` pieces.
    pub fn none(count: usize) -> Pieces {
        Pieces {
            count,
            words: vec![0; count.div_ceil(64)],
        }
    }

    /// All of `count` pieces (the collector, or a node done).
    pub fn all(count: usize) -> Pieces {
        let mut p = Pieces::none(count);
        for i in 0..count {
            p.set(i);
        }
        p
    }

    /// Whether it holds piece `i`.
    pub fn has(&self, i: usize) -> bool {
        i < self.count && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Marks piece `i` held (ignored beyond the payload).
    pub fn set(&mut self, i: usize) {
        if i < self.count {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    /// Pieces held.
    pub fn held(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether every piece is held.
    pub fn complete(&self) -> bool {
        self.held() == self.count
    }

    /// The pieces `self` holds that `other` does not and that `busy` does not mark: what
    /// `self` could give `other` now.
    pub fn could_give<'a>(
        &'a self,
        other: &'a Pieces,
        busy: &'a Pieces,
    ) -> impl Iterator<Item = usize> + 'a {
        self.words
            .iter()
            .zip(&other.words)
            .zip(&busy.words)
            .enumerate()
            .flat_map(|(w, ((a, b), c))| {
                let mut bits = a & !b & !c;
                std::iter::from_fn(move || {
                    (bits != 0).then(|| {
                        let bit = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        w * 64 + bit
                    })
                })
            })
    }

    /// Checks a bitfield from elsewhere: `count` pieces in as many words, no bit beyond.
    pub fn check(&self, count: usize) -> Result<(), String> {
        if self.count != count || self.words.len() != count.div_ceil(64) {
            return Err(format!(
                "a bitfield of {} pieces in {} words; the payload has {count}",
                self.count,
                self.words.len()
            ));
        }
        let spare = self.words.len() * 64 - count;
        if spare > 0 && self.words.last().is_some_and(|w| w >> (64 - spare) != 0) {
            return Err("bits beyond the payload's last piece".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racks_add_up_their_nodes_and_nodes_without_a_rack_stand_apart() {
        let t = |c, p, corrupt| Tally {
            collector_bytes: c,
            peer_bytes: p,
            peers: 1,
            corrupt,
            ms: 1,
        };
        let (a, b, c) = (t(10, 30, 0), t(0, 40, 2), t(40, 0, 0));
        let racks = by_rack([(Some("r2"), &a), (None, &c), (Some("r2"), &b)]);
        assert_eq!(racks.len(), 2);
        assert_eq!(racks[0].rack, None);
        assert_eq!((racks[0].nodes, racks[0].collector_bytes), (1, 40));
        assert_eq!(
            (
                racks[1].nodes,
                racks[1].collector_bytes,
                racks[1].peer_bytes,
                racks[1].corrupt
            ),
            (2, 10, 70, 2)
        );
        assert!(by_rack([]).is_empty());
    }

    #[test]
    fn pieces_verify_and_anything_else_is_refused() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let m = Manifest::of(&payload, 4096);
        assert_eq!(m.pieces.len(), 3);
        assert_eq!(m.check(), Ok(()));
        assert_eq!(m.piece_len(2), Ok(10_000 - 8192));
        assert!(m.verify(0, &payload[..4096]).is_ok());
        assert!(m.verify(2, &payload[8192..]).is_ok());
        // A piece from elsewhere in the payload, a short one, one beyond the payload.
        assert!(matches!(
            m.verify(1, &payload[..4096]),
            Err(PieceError::Mismatch { index: 1, .. })
        ));
        assert!(matches!(
            m.verify(0, &payload[..4095]),
            Err(PieceError::Mismatch { .. })
        ));
        assert_eq!(
            m.verify(3, b"x").unwrap_err().to_string(),
            "piece 3 is beyond the payload's 3 pieces"
        );
        // A manifest that cannot be: its pieces do not add up, a digest is not one, too many.
        let mut bad = m.clone();
        bad.size = 20_000;
        assert!(
            bad.check()
                .unwrap_err()
                .to_string()
                .contains("make 5 pieces, not 3")
        );
        let mut bad = m.clone();
        bad.pieces[1] = "zz".into();
        assert!(bad.check().is_err());
        let mut bad = m.clone();
        bad.piece_size = 0;
        assert!(bad.check().is_err());
        let huge = Manifest {
            size: (MAX_PIECES as u64 + 1) * 4096,
            pieces: vec!["0".repeat(64); MAX_PIECES + 1],
            ..m.clone()
        };
        assert!(huge.check().unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn a_bitfield_says_what_one_node_could_give_another() {
        let mut a = Pieces::none(130);
        let mut b = Pieces::none(130);
        for i in [0, 5, 64, 129] {
            a.set(i);
        }
        b.set(5);
        let mut busy = Pieces::none(130);
        busy.set(64);
        assert_eq!(a.could_give(&b, &busy).collect::<Vec<_>>(), [0, 129]);
        assert_eq!(a.held(), 4);
        assert!(Pieces::all(130).complete());
        assert!(a.check(130).is_ok());
        assert!(a.check(131).is_err());
        let mut stray = Pieces::none(130);
        stray.words[2] |= 1 << 10;
        assert!(stray.check(130).unwrap_err().contains("beyond"));
        // Beyond the payload: ignored, never a panic.
        a.set(500);
        assert!(!a.has(500));
    }
}
