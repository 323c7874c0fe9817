//! Reading a patient's claims data from CMS: the search for each type ([`search`]), every page of it
//! ([`paging`]), the pipeline that hands each entry once to the caller and to connect ([`pipeline`]),
//! and the admin sync over every authorized patient ([`sync`]).

pub mod paging;
pub mod pipeline;
pub mod search;
pub mod sync;
