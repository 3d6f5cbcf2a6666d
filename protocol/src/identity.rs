//! Which identifiers may name a node. Boards ship with placeholders where a UUID or serial
//! should be — all zeros, all `F`, AMI's `03000200-0400-0500-0006-000700080009`, "To Be
//! Filled By O.E.M.", "0123456789" — shared by every board of a model: such a value never
//! identifies a node (two machines would merge into one), wherever it comes from.

use crate::wire::NodeIdentity;

/// Serials boards report instead of one, compared without case and surrounding space.
const PLACEHOLDER_SERIALS: &[&str] = &[
    "0",
    "none",
    "n/a",
    "na",
    "null",
    "unknown",
    "oem",
    "not specified",
    "not applicable",
    "not available",
    "default string",
    "system serial number",
    "chassis serial number",
    "base board serial number",
    "serial number",
    "to be filled by o.e.m.",
    "to be filled by oem",
    "0123456789",
    "1234567890",
    "123456789",
    "01234567890",
];

/// UUIDs vendors ship as a pattern rather than a value.
const PLACEHOLDER_UUIDS: &[&str] = &["12345678-1234-5678-90ab-cddeefaabbcc"];

/// Whether `uuid` is a placeholder: every hex digit the same (all zeros, all `F`), every
/// byte below 0x10 (the `03000200-0400-0500-0006-000700080009` family and its byte orders:
/// a real UUID has 16 such bytes with odds of 16⁻¹⁶), or a known pattern.
pub fn placeholder_uuid(uuid: &str) -> bool {
    let hex: Vec<u8> = uuid
        .bytes()
        .filter(|b| *b != b'-')
        .map(|b| b.to_ascii_lowercase())
        .collect();
    let same = hex.windows(2).all(|w| w[0] == w[1]);
    let small_bytes = hex.len() == 32 && hex.chunks(2).all(|byte| byte[0] == b'0');
    same || small_bytes
        || PLACEHOLDER_UUIDS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(uuid.trim()))
}

/// Whether `serial` is a placeholder: a known phrase, any text saying "filled by", or one
/// character repeated (`00000000`, `XXXXXXXX`, `........`).
pub fn placeholder_serial(serial: &str) -> bool {
    let s = serial.trim().to_ascii_lowercase();
    let mut chars = s.chars();
    let first = chars.next();
    first.is_none()
        || chars.all(|c| Some(c) == first)
        || s.contains("filled by")
        || PLACEHOLDER_SERIALS.contains(&s.as_str())
}

impl NodeIdentity {
    /// The identity without placeholder UUIDs and serials (MACs are the NICs' own).
    pub fn without_placeholders(mut self) -> NodeIdentity {
        self.uuid = self.uuid.filter(|u| !placeholder_uuid(u));
        self.serial = self.serial.filter(|s| !placeholder_serial(s));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_uuids_never_identify_and_real_ones_do() {
        for p in [
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "03000200-0400-0500-0006-000700080009",
            "00020003-0004-0005-0006-000700080009",
            "01010101-0101-0101-0101-010101010101",
            "12345678-1234-5678-90AB-CDDEEFAABBCC",
            "",
        ] {
            assert!(placeholder_uuid(p), "{p}");
        }
        for real in [
            "6f1a0c4e-0000-4000-8000-000000000001",
            "4c4c4544-0051-3510-8052-b4c04f4e4d32",
            "2a3b7e10-9c1d-11ef-8f5a-0242ac120002",
        ] {
            assert!(!placeholder_uuid(real), "{real}");
        }
    }

    #[test]
    fn placeholder_serials_never_identify_and_real_ones_do() {
        for p in [
            "To Be Filled By O.E.M.",
            "  to be filled by o.e.m.  ",
            "Default string",
            "System Serial Number",
            "0123456789",
            "Not Specified",
            "0",
            "00000000",
            "XXXXXXXXXX",
            "........",
            "Chassis Serial Number",
            "N/A",
            "",
            "   ",
        ] {
            assert!(placeholder_serial(p), "{p:?}");
        }
        for real in ["SN-1", "CZJ94301PX", "J30012345", "7X12A0B3CN"] {
            assert!(!placeholder_serial(real), "{real}");
        }
        let id = NodeIdentity {
            macs: vec!["52:54:00:00:00:01".into()],
            uuid: Some("03000200-0400-0500-0006-000700080009".into()),
            serial: Some("Default string".into()),
        }
        .without_placeholders();
        assert_eq!((id.uuid, id.serial), (None, None));
        assert_eq!(id.macs, ["52:54:00:00:00:01"]);
    }
}
