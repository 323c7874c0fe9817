//! Spin-compatible host.
