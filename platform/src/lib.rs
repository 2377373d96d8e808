//! Plumbing every service shares, written once: configuration, telemetry, PostgreSQL and NATS
//! connections, problem+json errors, operational endpoints, limits shared across instances,
//! callers' statements batched together, the shutdown signal, and the mapping of a stored event
//! to its bus envelope. Who callers are is the `identity` crate's.
#![forbid(unsafe_code)]

/// Every service allocates through jemalloc instead of the C library's malloc, which took about
/// a fifth of the command service's CPU under load (`docs/performance-first-token.md`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
