//! kiln-agent library.
