//! The command service: REST writes. Authenticates the caller, runs commands on event-sourced
//! aggregates (cqrs-es on PostgreSQL), and relays committed events to JetStream via the outbox.
#![forbid(unsafe_code)]

pub mod aggregate_cache;
pub mod aggregates;
pub mod catch_up;
pub mod config;
pub mod directory;
pub mod error;
pub mod event_repository;
pub mod executor;
pub mod follow;
pub mod group_commit;
pub mod internal;
pub mod prompt_limits;
pub mod read_ahead;
pub mod read_set;
pub mod relay;
pub mod routes;
pub mod spend;
pub mod spend_alerts;
pub mod startup;
pub mod sync_prompts;
