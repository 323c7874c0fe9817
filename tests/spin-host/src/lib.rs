//! A Spin-compatible host for tests and local use: it runs the real `.wasm` components from the real
//! `spin.toml` the way `spin up` does — a fresh instance per request, `allowed_outbound_hosts` enforced,
//! variables resolved and scoped per component, key-value stores kept by the host — because the Spin CLI
//! cannot be installed where these tests run.

pub mod allowed_hosts;
pub mod kv;
pub mod manifest;
pub mod outbound;
pub mod routes;
pub mod runtime;
pub mod runtime_config;
pub mod server;
pub mod variables;

pub use runtime::{App, HostOptions};
pub use server::{serve, RunningHost};
