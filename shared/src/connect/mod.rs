//! Delivery to LinuxForHealth connect ([`delivery`]): resources repaired where R4 needs it ([`repair`]),
//! in Bundles under a byte budget, paced and read answer by answer ([`outcome`]); what connect cannot take
//! now waits in the [`outbox`]; what it refuses is kept in [`dead_letters`]; and the sync's [`cursor`]
//! moves only past what is delivered, queued or dead-lettered.

pub mod cursor;
pub mod dead_letters;
pub mod delivery;
pub mod outbox;
mod outcome;
pub mod repair;

pub use delivery::{Delivery, DeliveryResult};
