//! A Spin-compatible host for tests and local use: it runs the real `.wasm` components from the real
//! `spin.toml` the way `spin up` (3.6) does — a fresh instance per request, `allowed_outbound_hosts`
//! enforced, variables resolved and scoped per component, key-value stores kept by the host (in Spin's
//! SQLite layout under the state directory, or on Redis with the commands Spin's Redis store sends),
//! component output logged there — so the app can be run and tested where the Spin CLI is not installed.
//! The end-to-end suite runs the same tests on it and on the real Spin CLI (`SPIN_BIN`); where they
//! differ, Spin is right.

pub mod allowed_hosts;
pub mod kv;
pub mod manifest;
pub mod outbound;
pub mod redis_server;
pub mod routes;
pub mod runtime;
pub mod runtime_config;
pub mod server;
pub mod stdio;
pub mod variables;

pub use runtime::{App, HostOptions, StateDir, StatePaths, DEFAULT_STORE_FILE};
pub use server::{serve, RunningHost};
pub use stdio::{Captured, Output};
