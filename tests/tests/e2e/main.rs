//! End-to-end tests of the whole system: real services as processes, real PostgreSQL, NATS
//! JetStream, OpenID provider, and a fake LLM provider speaking the OpenAI streaming format.

mod admissions;
mod api_fuzz;
mod api_keys;
mod authorization;
mod bad_input;
mod browser;
mod budgets;
mod bus_security;
mod chaos;
mod concurrent_commands;
mod connection_capacity;
mod consistency_waits;
mod decisions_from_cache;
mod durability;
mod group_commits;
mod http2;
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

use e2e_tests::System;
use e2e_tests::api::Created;
use e2e_tests::system::Service;

/// Generous bound for anything that normally takes milliseconds (CI machines are slow).
pub const WAIT: Duration = Duration::from_secs(30);

/// Alice's organization and workspace with Bob a member of both, and a second command-service
/// instance beside the system's first, for what one instance commits and another must see.
pub struct BobOnTwoInstances {
    // Field order is drop order: the second instance stops before the system.
    pub second: Service,
    pub system: System,
    pub alice: String,
    pub bob: String,
    pub ws: Created,
    bob_id: String,
}

impl BobOnTwoInstances {
    /// The instances do not follow each other's commits on the bus, so what one committed
    /// reaches the other's decisions only through its commit's check, the path under test.
    pub async fn start() -> Self {
        let system = System::start_with(e2e_tests::SystemOptions {
            service_env: vec![("OC_FOLLOW_COMMITS", "false".into())],
            ..Default::default()
        })
        .await;
        let second = system.start_command(false).await;
        let alice = system.token("alice").await;
        let bob = system.token("bob").await;
        let org = system.create_org(&alice, "Acme").await;
        let ws = system.create_workspace(&alice, &org.id, "main").await;
        let bob_id = system.add_member(&alice, &org.id, &bob, "member", Some(&ws.id)).await;
        Self { second, system, alice, bob, ws, bob_id }
    }

    /// Alice removes Bob from the workspace, or adds him back, through the first instance.
    pub async fn set_bob_in_workspace(&self, member: bool) {
        let url = format!(
            "{}/workspace/{}/member/{}",
            self.system.command_url(),
            self.ws.id,
            self.bob_id
        );
        let http = &self.system.http;
        let request = match member {
            true => http.put(url).json(&serde_json::json!({ "role": "member" })),
            false => http.delete(url),
        };
        let done = request.bearer_auth(&self.alice).send().await.unwrap();
        assert!(done.status().is_success(), "{done:?}");
    }
}
