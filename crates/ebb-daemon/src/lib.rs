//! ebb's agent: the config, the tick loop, the journal, the HTTP API and its
//! client. The `ebb` binary runs it and talks to it; the lab (`ebb-lab`)
//! drives it on real guests.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod api_types;
pub mod check;
pub mod client;
pub mod clock;
pub mod config;
pub mod doctor;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod routes;
pub mod run;
pub mod settings;
pub mod web;
pub mod words;
