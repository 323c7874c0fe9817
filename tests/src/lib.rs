//! Test infrastructure for bluebutton-spin: a Spin-compatible host that runs the real `.wasm` components
//! from the real `spin.toml`, and emulators of the two services we do not own (CMS Blue Button 2.0 and
//! LinuxForHealth connect).

pub mod beneficiary;
pub mod cms_sandbox;
pub mod connect_sandbox;
pub mod host;
pub mod support;
