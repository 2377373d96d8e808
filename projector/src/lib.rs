//! The projector: builds the PostgreSQL read models from domain events on JetStream, and can
//! rebuild them from the event store.
#![forbid(unsafe_code)]

pub mod audit;
pub mod consumer;
pub mod event_store;
pub mod projection;
pub mod rebuild;
pub mod sessions;
pub mod startup;
pub mod usage;
pub mod workspaces;
