//! End-to-end tests of the whole system: real services as processes, real PostgreSQL, NATS
//! JetStream, OpenID provider, and a fake LLM provider speaking the OpenAI streaming format.

mod api_fuzz;
mod api_keys;
mod authorization;
mod bad_input;
mod browser;
mod budgets;
mod bus_security;
mod chaos;
mod concurrent_commands;
mod consistency_waits;
mod decisions_from_cache;
mod durability;
mod interest;
mod isolation;
mod limits;
mod nats_cluster;
mod nats_restart;
mod opencode_api;
mod opencode_cli;
mod opencode_sdk;
mod opencode_tui;

mod outages;
mod personal_data;
mod pipeline;
mod poison_events;
mod prompt_limits;
mod provider_faults;
mod provider_streaming;
mod providers;
mod rate_limits;
mod resume;
mod stream_access;
mod tokens;
mod traces;
mod unread_prompts;
mod usage;
mod workspaces;

use std::time::Duration;

/// Generous bound for anything that normally takes milliseconds (CI machines are slow).
pub const WAIT: Duration = Duration::from_secs(30);
