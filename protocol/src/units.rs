//! Human units in suites: durations (`90s`, `30m`, `4h`) and sizes (`512MiB`, `2GiB`, `80%`).
//!
//! Each type parses from the text a QA engineer writes, prints back the same way, and refuses
//! zero, negative and unit-less values with a message that says what was expected; serde_yaml
//! attaches the file position and document path to that message.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const DURATION_EXPECTED: &str =
    "a positive duration with a unit (ms, s, m, h, d), like 90s, 30m, 4h or 1h30m";
const SIZE_EXPECTED: &str =
    "a positive size with a unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), like 512MiB or 2GiB";
const SIZE_SPEC_EXPECTED: &str =
    "a positive size like 512MiB or 2GiB, or a share of what is available like 80%";

/// A length of time written with units: `500ms`, `90s`, `30m`, `4h`, `1d`, or combined `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The wrapped standard duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// Builds one from whole seconds.
    pub fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
}

/// Why a duration or size did not parse: what was written and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: expected {expected}")]
pub struct UnitError {
    what: &'static str,
    text: String,
    expected: &'static str,
}

impl UnitError {
    fn new(what: &'static str, text: &str, expected: &'static str) -> Self {
        Self {
            what,
            text: text.to_owned(),
            expected,
        }
    }
}

/// Splits `"1h30m"` into `[(1, "h"), (30, "m")]`; `None` when it is not number-unit pairs.
fn number_unit_pairs(text: &str) -> Option<Vec<(f64, &str)>> {
    let mut pairs = Vec::new();
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let number: f64 = rest[..num_end].parse().ok()?;
        rest = rest[num_end..].trim_start();
        let unit_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        pairs.push((number, &rest[..unit_end]));
        rest = rest[unit_end..].trim_start();
    }
    Some(pairs)
}

impl FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::new("duration", text, DURATION_EXPECTED);
        let pairs = number_unit_pairs(text).ok_or_else(err)?;
        let mut total = 0.0_f64;
        for (number, unit) in pairs {
            let scale = match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                "d" => 86_400.0,
                _ => return Err(err()),
            };
            total += number * scale;
        }
        // A year is far past any sane step; the bound also keeps the float conversion exact.
        if !(total > 0.0 && total <= 366.0 * 86_400.0) {
            return Err(err());
        }
        Ok(Self(Duration::from_secs_f64(total)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_millis() != 0 || d.as_secs() == 0 {
            return write!(f, "{}ms", d.as_millis());
        }
        let secs = d.as_secs();
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if m > 0 {
            out.push_str(&format!("{m}m"));
        }
        if s > 0 {
            out.push_str(&format!("{s}s"));
        }
        f.write_str(&out)
    }
}

/// An amount of bytes: `4096`, `512MiB`, `2GiB`, `500GB`. Binary units (KiB, MiB, …, and the
/// short K, M, G, T as fio and QEMU read them) are powers of 1024; KB, MB, GB, TB are powers
/// of 1000, as disk vendors write them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::new("size", text, SIZE_EXPECTED);
        let pairs = number_unit_pairs(text).ok_or_else(err)?;
        let [(number, unit)] = pairs.as_slice() else {
            return Err(err());
        };
        let scale: f64 = match *unit {
            "" | "B" => 1.0,
            "KiB" | "K" | "k" => 1024.0,
            "MiB" | "M" => 1024.0 * 1024.0,
            "GiB" | "G" => 1024.0 * 1024.0 * 1024.0,
            "TiB" | "T" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "TB" => 1e12,
            _ => return Err(err()),
        };
        let bytes = number * scale;
        // 2^60 bytes (an exbibyte) is beyond any node; it keeps the conversion below exact.
        if !(bytes >= 1.0 && bytes <= (1u64 << 60) as f64) {
            return Err(err());
        }
        Ok(Self(bytes.round() as u64))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        // The largest unit the size reaches: exact sizes print whole, others to a tenth.
        for (unit, scale) in UNITS {
            if self.0 >= scale {
                return if self.0.is_multiple_of(scale) {
                    write!(f, "{}{unit}", self.0 / scale)
                } else {
                    write!(f, "{:.1}{unit}", self.0 as f64 / scale as f64)
                };
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Either a fixed size (`2GiB`) or a share of what is available (`80%`: of available memory
/// for a memory step, of free space or device size for a disk step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeSpec {
    /// A fixed amount.
    Fixed(Size),
    /// A percentage in (0, 100].
    Percent(f64),
}

impl SizeSpec {
    /// Resolves against what is available, never past it.
    pub fn resolve(self, available: u64) -> u64 {
        match self {
            SizeSpec::Fixed(size) => size.bytes().min(available),
            SizeSpec::Percent(pct) => ((available as f64) * pct / 100.0) as u64,
        }
    }
}

impl FromStr for SizeSpec {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if let Some(number) = trimmed.strip_suffix('%') {
            let pct: f64 = number
                .trim()
                .parse()
                .map_err(|_| UnitError::new("size", text, SIZE_SPEC_EXPECTED))?;
            if !(pct > 0.0 && pct <= 100.0) {
                return Err(UnitError::new(
                    "percentage",
                    text,
                    "a share above 0% and at most 100%",
                ));
            }
            return Ok(SizeSpec::Percent(pct));
        }
        trimmed
            .parse()
            .map(SizeSpec::Fixed)
            .map_err(|_| UnitError::new("size", text, SIZE_SPEC_EXPECTED))
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeSpec::Fixed(size) => size.fmt(f),
            SizeSpec::Percent(pct) => write!(f, "{pct}%"),
        }
    }
}

/// Deserializes any of the unit types from a YAML string or (where it means bytes) an integer.
struct UnitVisitor<T> {
    expected: &'static str,
    integers: bool,
    _marker: std::marker::PhantomData<T>,
}

impl<T> Visitor<'_> for UnitVisitor<T>
where
    T: FromStr<Err = UnitError>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        if self.integers {
            self.visit_str(&v.to_string())
        } else {
            Err(E::invalid_type(de::Unexpected::Unsigned(v), &self))
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        if self.integers && v >= 0 {
            self.visit_str(&v.to_string())
        } else {
            Err(E::invalid_type(de::Unexpected::Signed(v), &self))
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Err(E::invalid_type(de::Unexpected::Float(v), &self))
    }
}

macro_rules! unit_serde {
    ($ty:ty, $name:literal, $expected:expr, $integers:expr, $pattern:literal, $examples:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_any(UnitVisitor {
                    expected: $expected,
                    integers: $integers,
                    _marker: std::marker::PhantomData,
                })
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                let examples: &[&str] = $examples;
                json_schema!({
                    "type": "string",
                    "description": format!("Expected: {}.", $expected),
                    "pattern": $pattern,
                    "examples": examples,
                })
            }
        }
    };
}

unit_serde!(
    HumanDuration,
    "Duration",
    DURATION_EXPECTED,
    false,
    r"^\s*([0-9]+(\.[0-9]+)?\s*(ms|s|m|min|h|d)\s*)+$",
    &["90s", "30m", "4h", "1h30m"]
);
unit_serde!(
    Size,
    "Size",
    SIZE_EXPECTED,
    true,
    r"^\s*[0-9]+(\.[0-9]+)?\s*(B|K|k|M|G|T|KiB|MiB|GiB|TiB|KB|kB|MB|GB|TB)?\s*$",
    &["4096", "512MiB", "2GiB", "500GB"]
);
unit_serde!(
    SizeSpec,
    "SizeOrShare",
    SIZE_SPEC_EXPECTED,
    true,
    r"^\s*[0-9]+(\.[0-9]+)?\s*(%|B|K|k|M|G|T|KiB|MiB|GiB|TiB|KB|kB|MB|GB|TB)?\s*$",
    &["512MiB", "2GiB", "80%"]
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse_with_units() {
        let cases = [
            ("90s", 90_000),
            ("30m", 1_800_000),
            ("4h", 14_400_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("1.5s", 1500),
            ("2d", 172_800_000),
        ];
        for (text, ms) in cases {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.0.as_millis(), ms, "{text}");
        }
    }

    #[test]
    fn durations_without_units_or_zero_are_refused() {
        for text in ["90", "", "s", "0s", "-5s", "5 parsecs", "1h-30m", "400d"] {
            let err = text.parse::<HumanDuration>().unwrap_err().to_string();
            assert!(
                err.contains("expected a positive duration"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        let cases = [
            ("4096", 4096),
            ("512MiB", 512 << 20),
            ("2GiB", 2 << 30),
            ("2G", 2 << 30),
            ("500GB", 500_000_000_000),
            ("1.5KiB", 1536),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<Size>().unwrap().0, bytes, "{text}");
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        for text in ["0", "0MiB", "12XB", "-1GiB", "GiB", "1GiB2MiB", "2EiB"] {
            assert!(text.parse::<Size>().is_err(), "{text} parsed");
        }
    }

    #[test]
    fn shares_must_be_within_0_and_100() {
        assert_eq!("80%".parse::<SizeSpec>().unwrap(), SizeSpec::Percent(80.0));
        assert_eq!(
            "100%".parse::<SizeSpec>().unwrap(),
            SizeSpec::Percent(100.0)
        );
        for text in ["0%", "120%", "-5%", "abc%"] {
            assert!(text.parse::<SizeSpec>().is_err(), "{text} parsed");
        }
        let err = "120%".parse::<SizeSpec>().unwrap_err().to_string();
        assert!(err.contains("at most 100%"), "{err}");
    }

    #[test]
    fn share_resolves_against_available() {
        assert_eq!(SizeSpec::Percent(50.0).resolve(1000), 500);
        assert_eq!(SizeSpec::Fixed(Size(4096)).resolve(1000), 1000);
    }

    proptest! {
        #[test]
        fn duration_display_round_trips(secs in 1u64..(300 * 86_400)) {
            let d = HumanDuration::from_secs(secs);
            prop_assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
        }

        #[test]
        fn size_display_round_trips_for_whole_units(n in 1u64..4096, shift in prop::sample::select(vec![0u32, 10, 20, 30])) {
            let size = Size(n << shift);
            let shown = size.to_string();
            if !shown.contains('.') {
                prop_assert_eq!(shown.parse::<Size>().unwrap(), size);
            }
            prop_assert!(shown.len() <= 9, "{shown}");
        }

        #[test]
        fn size_parser_never_panics(text in ".{0,24}") {
            let _ = text.parse::<SizeSpec>();
            let _ = text.parse::<HumanDuration>();
        }
    }
}
