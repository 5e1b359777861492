//! `datanet`: a peer-to-peer daemon for community datasets that pays contributors for the impact
//! of their data. See ARCHITECTURE.md for the map; each module's doc opens with what it owns.

pub mod codec;
pub mod identity;
pub mod ids;
pub mod merkle;
pub mod cli;
pub mod manifest;
pub mod admission;
pub mod store;
pub mod attribution;
pub mod trainer;
pub mod config;
pub mod net;
pub mod daemon;
pub mod api;
