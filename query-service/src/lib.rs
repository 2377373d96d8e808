//! The query service: REST reads from the read models, and each session's events as a live,
//! resumable SSE stream fanned out from one bus subscription per instance.
#![forbid(unsafe_code)]

pub mod access;
pub mod config;
pub mod consistency;
pub mod hub;
pub mod notifications;
pub mod page;
pub mod routes;
pub mod startup;
pub mod streams;
