//! bluebutton-spin's models and rules. Everything here runs natively: the world is reached only through
//! the [`ports`], which the components implement with Spin ([`spin`], feature `spin`) and unit tests with
//! in-memory fakes ([`testing`], feature `testing`).
//!
//! The layers, each importing only those before it:
//! - [`ports`], [`error`], [`config`], [`keys`], [`retry`], [`fhir`], [`upstream`], [`crypto`]: the
//!   ground;
//! - [`store`]: sealed records with lifetimes, chunked blobs and ordered logs in the key-value store;
//! - [`audit`]: the accounting of disclosures, every event a FHIR AuditEvent;
//! - [`auth`]: the beneficiary's authorization, sessions and their tokens, and the admin key;
//! - [`connect`]: delivery to LinuxForHealth connect, its outbox and dead letters;
//! - [`cms`]: reading from CMS, every page, and the admin sync that hands it to connect;
//! - [`http`]: requests, responses, problem documents, health and one handler per route;
//! - [`openapi`]: the OpenAPI document, for the `docs` component only (feature `openapi`).

pub mod audit;
pub mod auth;
pub mod cms;
pub mod config;
pub mod connect;
pub mod crypto;
pub mod error;
pub mod fhir;
pub mod http;
pub mod keys;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod ports;
pub mod retry;
#[cfg(feature = "spin")]
pub mod spin;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod upstream;

pub use error::Error;
