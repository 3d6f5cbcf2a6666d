//! Suite files on the node's disk, read through the shared loader.

use std::fs::File;
use std::path::Path;

use kiln_protocol::{Plan, SuiteError};

/// Opens and loads a suite file; every problem is named with `FILE:LINE:COLUMN`.
pub fn load_file(path: &Path) -> Result<Plan, SuiteError> {
    let (_, plan) = read_and_load(path)?;
    Ok(plan)
}

/// The suite file's bytes (read no further than the loader's limit, so a huge file is refused
/// by it rather than read whole) and its plan.
pub fn read_and_load(path: &Path) -> Result<(Vec<u8>, Plan), SuiteError> {
    use std::io::Read;
    let name = path.display().to_string();
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| {
            f.take(kiln_protocol::MAX_SUITE_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|source| SuiteError::Read {
            file: name.clone(),
            source,
        })?;
    let plan = kiln_protocol::load(&name, &bytes)?;
    Ok((bytes, plan))
}
