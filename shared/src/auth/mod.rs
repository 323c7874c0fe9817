//! Who may act, and with what: the beneficiary's authorization at CMS ([`oauth`]), the opaque session a
//! caller holds ([`session`]) with the CMS tokens sealed at rest ([`crypto`]) and refreshed early
//! ([`tokens`]), and the operator's admin key ([`admin`]).

pub mod admin;
pub mod crypto;
pub mod oauth;
pub mod session;
pub mod tokens;
