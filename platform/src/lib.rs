//! Plumbing every service shares, written once: configuration, telemetry, PostgreSQL and NATS
//! connections, bearer-token authentication, problem+json errors, operational endpoints, the
//! shutdown signal, and the mapping of a stored event to its bus envelope.
#![forbid(unsafe_code)]

pub mod api_keys;
pub mod auth;
pub mod bus;
pub mod config;
pub mod db;
pub mod http;
pub mod limits;
pub mod login;
pub mod problem;
pub mod retry;
pub mod shutdown;
pub mod startup;
pub mod stored_event;
pub mod telemetry;
pub mod users;
