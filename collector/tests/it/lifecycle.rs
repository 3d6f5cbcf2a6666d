//! The run lifecycle.
