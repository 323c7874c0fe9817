//! The end-to-end suite: the real components from the real `spin.toml`, on `spin-host` (or the real Spin
//! CLI when `SPIN_BIN` names it), with CMS and LinuxForHealth connect played by their emulators. One test
//! binary; one module per concern.

mod app;
mod audit;
mod auth;
mod browser;
mod connect;
mod delivery;
mod demo;
mod deploy;
mod docs;
mod faults;
mod fhir;
mod fuzz;
mod load;
mod replicas;
mod security;
mod state;
mod v3;
