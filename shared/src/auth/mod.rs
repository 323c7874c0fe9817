//! Who may act, and with what: the beneficiary's authorization at CMS ([`oauth`]) with its pending
//! `state` ([`state`]), the opaque session a caller holds ([`session`]) with the CMS tokens refused to
//! no one twice ([`tokens`]), and the operator's admin key ([`admin`]).

pub mod admin;
pub mod oauth;
pub mod session;
pub mod state;
pub mod tokens;
