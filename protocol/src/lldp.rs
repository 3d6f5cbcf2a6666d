//! LLDP (IEEE 802.1AB) frames, read without I/O: what the switch port a NIC is cabled to says
//! about itself. The agent hands every frame it hears (EtherType 0x88cc, on each physical
//! interface) to [`parse`]; the collector compares the neighbour with the site's cabling map.
//!
//! A frame comes from whatever is at the other end of the cable, so nothing in it is trusted:
//! every TLV's length is checked against the frame, texts are clamped and their control
//! characters made visible, and a frame without the three mandatory TLVs (chassis ID, port
//! ID, time to live, in that order) is refused with the reason.

use serde::{Deserialize, Serialize};

/// LLDP's EtherType.
pub const ETHERTYPE: u16 = 0x88cc;

/// 802.1Q's EtherType (a tagged frame carries the LLDP EtherType after the tag).
const VLAN_TAG: u16 = 0x8100;

/// The longest text kept from a TLV (a TLV carries at most 511 bytes).
pub const MAX_TEXT: usize = 255;

/// What a neighbour said about the port a NIC is cabled to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbor {
    /// The switch's chassis ID: a MAC as `aa:bb:…`, a network address, else its text.
    pub chassis_id: String,
    /// The port's ID (`Ethernet1/7`, `xe-0/0/3`, a MAC), as the switch sends it.
    pub port_id: String,
    /// How long the information holds, in seconds.
    pub ttl_s: u16,
    /// The port's description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_description: Option<String>,
    /// The switch's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_name: Option<String>,
    /// The switch's management address (the first one sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_address: Option<String>,
    /// The port's VLAN ID (IEEE 802.1, untagged frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The port's maximum frame size (IEEE 802.3), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_size: Option<u16>,
}

impl Neighbor {
    /// The switch as the map names it: its system name, else its chassis ID.
    pub fn switch(&self) -> &str {
        self.system_name.as_deref().unwrap_or(&self.chassis_id)
    }

    /// Every text, to check or clamp.
    pub fn texts(&self) -> impl Iterator<Item = &String> {
        [&self.chassis_id, &self.port_id].into_iter().chain(
            [
                &self.port_description,
                &self.system_name,
                &self.management_address,
            ]
            .into_iter()
            .flatten(),
        )
    }

    /// Every text, to clamp.
    pub fn texts_mut(&mut self) -> impl Iterator<Item = &mut String> {
        [&mut self.chassis_id, &mut self.port_id].into_iter().chain(
            [
                &mut self.port_description,
                &mut self.system_name,
                &mut self.management_address,
            ]
            .into_iter()
            .flatten(),
        )
    }

    /// The MTU the port's maximum frame size allows (the frame less its Ethernet header,
    /// 802.1Q tag and FCS: 1522 → 1500).
    pub fn mtu(&self) -> Option<u16> {
        self.max_frame_size.map(|f| f.saturating_sub(22))
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LldpError {
    /// Shorter than an Ethernet header.
    #[error("LLDP: frame of {0} bytes is shorter than an Ethernet header")]
    Short(usize),
    /// Another EtherType.
    #[error("LLDP: EtherType {0:#06x} is not LLDP's")]
    NotLldp(u16),
    /// A TLV whose length runs past the frame.
    #[error("LLDP: TLV type {kind} at byte {offset} claims {len} bytes; the frame has {left} left")]
    Truncated {
        kind: u8,
        offset: usize,
        len: usize,
        left: usize,
    },
    /// A mandatory TLV missing or out of its place.
    #[error(
        "LLDP: the frame does not begin with chassis ID, port ID and TTL (found type {found} where type {wanted} belongs)"
    )]
    Mandatory { wanted: u8, found: u8 },
    /// A mandatory TLV too short for its value.
    #[error("LLDP: TLV type {kind} is {len} bytes, too short for its value")]
    Malformed { kind: u8, len: usize },
}

/// The neighbour in an Ethernet frame (destination, source, optional 802.1Q tag, EtherType
/// 0x88cc, the LLDPDU).
pub fn parse(frame: &[u8]) -> Result<Neighbor, LldpError> {
    if frame.len() < 14 {
        return Err(LldpError::Short(frame.len()));
    }
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype == VLAN_TAG && frame.len() >= 18 {
        ethertype = u16::from_be_bytes([frame[16], frame[17]]);
        at = 16;
    }
    if ethertype != ETHERTYPE {
        return Err(LldpError::NotLldp(ethertype));
    }
    parse_pdu(&frame[at + 2..], at + 2)
}

/// The neighbour in an LLDPDU (the frame's payload); `base` is its offset in the frame, for
/// messages.
pub fn parse_pdu(pdu: &[u8], base: usize) -> Result<Neighbor, LldpError> {
    let mut n = Neighbor::default();
    let mut at = 0usize;
    let mut index = 0usize;
    while at < pdu.len() {
        let Some(head) = pdu.get(at..at + 2) else {
            return Err(LldpError::Truncated {
                kind: pdu[at] >> 1,
                offset: base + at,
                len: 2,
                left: pdu.len() - at,
            });
        };
        let kind = head[0] >> 1;
        let len = (usize::from(head[0] & 1) << 8) | usize::from(head[1]);
        let value = pdu.get(at + 2..at + 2 + len).ok_or(LldpError::Truncated {
            kind,
            offset: base + at,
            len,
            left: pdu.len() - at - 2,
        })?;
        at += 2 + len;
        // The first three are chassis ID, port ID, TTL — in that order.
        if let Some(wanted) = [1u8, 2, 3].get(index) {
            if kind != *wanted {
                return Err(LldpError::Mandatory {
                    wanted: *wanted,
                    found: kind,
                });
            }
        }
        index += 1;
        match kind {
            0 => break,
            1 => n.chassis_id = id(kind, value, 4)?,
            2 => n.port_id = id(kind, value, 3)?,
            3 => {
                let ttl: [u8; 2] = value
                    .try_into()
                    .map_err(|_| LldpError::Malformed { kind, len })?;
                n.ttl_s = u16::from_be_bytes(ttl);
            }
            4 => n.port_description = Some(text(value)),
            5 => n.system_name = Some(text(value)),
            8 if n.management_address.is_none() => n.management_address = management(value),
            127 => organizational(value, &mut n),
            _ => {}
        }
    }
    if index < 3 {
        return Err(LldpError::Mandatory {
            wanted: [1u8, 2, 3][index],
            found: 0,
        });
    }
    Ok(n)
}

/// A chassis or port ID: its subtype, then the ID — a MAC for `mac_subtype`, an address for
/// the network-address subtype (5 for chassis, 4 for port), text otherwise.
fn id(kind: u8, value: &[u8], mac_subtype: u8) -> Result<String, LldpError> {
    let (&subtype, rest) = value
        .split_first()
        .filter(|(_, rest)| !rest.is_empty())
        .ok_or(LldpError::Malformed {
            kind,
            len: value.len(),
        })?;
    let address_subtype = if mac_subtype == 4 { 5 } else { 4 };
    Ok(match subtype {
        s if s == mac_subtype && rest.len() == 6 => mac(rest),
        s if s == address_subtype => address(rest).unwrap_or_else(|| hex(rest)),
        _ => text(rest),
    })
}

/// A management address TLV: address length (with its subtype), subtype, address, …
fn management(value: &[u8]) -> Option<String> {
    let len = usize::from(*value.first()?);
    address(value.get(1..1 + len)?)
}

/// An IANA address family byte and the address: IPv4 or IPv6, else none.
fn address(value: &[u8]) -> Option<String> {
    let (&family, addr) = value.split_first()?;
    match (family, addr.len()) {
        (1, 4) => Some(std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string()),
        (2, 16) => {
            let bytes: [u8; 16] = addr.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(bytes).to_string())
        }
        _ => None,
    }
}

/// IEEE 802.1's port VLAN ID and 802.3's maximum frame size; other organizations' TLVs are
/// skipped.
fn organizational(value: &[u8], n: &mut Neighbor) {
    let Some((head, info)) = value.split_at_checked(4) else {
        return;
    };
    let word = |b: &[u8]| -> Option<u16> { Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?)) };
    match head {
        [0x00, 0x80, 0xc2, 1] => n.vlan = word(info).filter(|v| *v != 0),
        [0x00, 0x12, 0x0f, 4] => n.max_frame_size = word(info),
        _ => {}
    }
}

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A TLV's text as kiln shows it: clamped, control characters made visible.
fn text(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX_TEXT * 4)]);
    crate::text::clamp(&crate::text::visible(&s), MAX_TEXT, false)
}

/// Builds an LLDP frame from `tlvs` (type, value) — for tests and the lab's checks.
pub fn frame(src: [u8; 6], tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
    out.extend_from_slice(&src);
    out.extend_from_slice(&ETHERTYPE.to_be_bytes());
    for (kind, value) in tlvs {
        let head = (u16::from(*kind) << 9) | (value.len() as u16 & 0x1ff);
        out.extend_from_slice(&head.to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

#[cfg(test)]
mod tests;
