//! Suite files on the collector's disk, read through the shared loader.

use std::fs::File;
use std::path::Path;

use kiln_protocol::{Plan, SuiteError};

/// Opens and loads a suite file; every problem is named with `FILE:LINE:COLUMN`.
pub fn load_file(path: &Path) -> Result<Plan, SuiteError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| SuiteError::Read {
        file: name.clone(),
        source,
    })?;
    kiln_protocol::load_reader(&name, file)
}

/// The suites kiln ships, written into `DATA/suites/` on first start.
pub const SHIPPED: &[(&str, &str)] = &[
    ("smoke", include_str!("../../suites/smoke.yaml")),
    ("lab", include_str!("../../suites/lab.yaml")),
    ("burn-in", include_str!("../../suites/burn-in.yaml")),
    ("memory-only", include_str!("../../suites/memory-only.yaml")),
];
