//! kiln collector library.
