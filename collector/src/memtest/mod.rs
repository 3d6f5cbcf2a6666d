//! memtest86+ before Linux: reading its serial console. memtest86+ mirrors its screen to the
//! serial port as VT100; [`screen::MemtestScreen`] keeps the 80×25 screen and reads the
//! results off it.

pub mod capture;
pub mod leases;
pub mod power;
pub mod screen;
pub mod stage;

/// The memtest86+ serial transcripts kept in the repository (`tests/fixtures`), for the unit
/// tests of the screen parser and the capture.
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/memtest86plus-6.10")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
