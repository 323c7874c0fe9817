//! Delivery to LinuxForHealth connect: resources in CMS order, in Bundles kept under a byte budget
//! ([`delivery`]); what connect cannot take now waits in the [`outbox`]; what it refuses is kept as a
//! [`dead_letters`] entry, never dropped.

pub mod dead_letters;
pub mod delivery;
pub mod outbox;
pub mod replay;

pub use delivery::{Delivery, DeliveryResult};
