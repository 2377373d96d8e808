//! Plumbing every service shares, written once: configuration, telemetry, PostgreSQL and NATS
//! connections, problem+json errors, operational endpoints, limits shared across instances,
//! callers' statements batched together, the shutdown signal, and the mapping of a stored event
//! to its bus envelope. Who callers are is the `identity` crate's.
#![forbid(unsafe_code)]

pub mod batching;
pub mod bus;
pub mod config;
pub mod db;
pub mod http;
pub mod limits;
pub mod notifications;
pub mod problem;
pub mod retry;
pub mod shutdown;
pub mod startup;
pub mod stored_event;
pub mod telemetry;
pub mod trace_context;
