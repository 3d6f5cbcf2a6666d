//! Suite files on the node's disk, read through the shared loader.

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
