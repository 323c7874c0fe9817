//! bluebutton-spin's models and rules. Everything here runs natively: the world is reached only through
//! the ports in [`ports`], which the components implement with Spin ([`spin`]) and tests with fakes
//! ([`testing`]).

pub mod admin;
pub mod api;
pub mod config;
pub mod connect;
pub mod crypto;
pub mod fetch;
pub mod fhir;
pub mod handlers;
pub mod oauth;
pub mod ports;
pub mod problem;
pub mod retry;
pub mod session;
pub mod testing;
pub mod tokens;
pub mod web;

#[cfg(feature = "spin")]
pub mod spin;

pub use problem::{Error, Problem};
