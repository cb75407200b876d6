//! handoff: one master accepts, workers serve.
//!
//! (crate docs: see README; expanded below once the master lands)

pub mod config;
pub mod control;
pub mod listener;
pub mod master;
pub mod policy;
pub mod proxy;
pub mod sys;
pub mod wire;
pub mod worker;
