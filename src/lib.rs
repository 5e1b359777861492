//! `datanet`: a peer-to-peer daemon for community datasets that pays contributors for the impact
//! of their data. See ARCHITECTURE.md for the map; each module's doc opens with what it owns.

pub mod adapters;
pub mod admission;
pub mod api;
pub mod attribution;
pub mod bench;
pub mod cli;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod identity;
pub mod ids;
pub mod manifest;
pub mod measure;
pub mod merkle;
pub mod net;
pub mod node;
pub mod records;
pub mod sealed;
pub mod sim;
pub mod store;
pub mod testnet;
pub mod trainer;
pub mod wire;
