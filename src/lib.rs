//! handoff: one master accepts, workers serve.
//!
//! (crate docs: see README; expanded below once the master lands)

pub mod sys;
pub mod wire;
pub mod worker;
pub mod config;
pub mod listener;
pub mod policy;
pub mod master;
pub mod bench;
