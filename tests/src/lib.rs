//! Shared helpers for the cross-crate integration tests (the tests live in `tests/`).
