//! The LLM worker: consumes prompt events, streams replies from an OpenAI-compatible provider,
//! publishes text deltas to JetStream, and reports each finished reply as a command.
#![forbid(unsafe_code)]

pub mod aborts;
pub mod config;
pub mod consumer;
pub mod generation;
pub mod give_up;
pub mod history;
mod live;
pub mod providers;
pub mod report;
pub mod startup;
