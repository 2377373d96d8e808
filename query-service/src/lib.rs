//! The query service: REST reads from the read models, and each session's events as a live,
//! resumable SSE stream fanned out from one feed per watched session per instance; and the part
//! of OpenCode's own API its stock clients read (`routes/opencode.rs`, `opencode_events.rs`).
#![forbid(unsafe_code)]

pub mod access;
pub mod config;
pub mod consistency;
pub mod hub;
pub mod opencode_events;
pub mod page;
pub mod receipts;
pub mod routes;
pub mod startup;
pub mod streams;
