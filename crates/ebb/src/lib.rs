//! ebb's agent and CLI: config, the tick loop, the journal, the HTTP API
//! and its client, the demo and the benchmarks.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod api_types;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod crowd;
pub mod demo;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod journal;
pub mod lab;
pub mod metrics;
pub mod run;
pub mod settings;
