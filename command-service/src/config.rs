//! Settings of the command service (`OC_*` environment variables; see platform::config for the
//! shared ones).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandConfig {
    /// `OC_COMMAND_ADDR`: where the REST API listens. Port 0 picks a free port.
    pub command_addr: String,
    /// `OC_COMMAND_OPS_ADDR`: where /healthz, /readyz and /metrics listen, apart from the API. Loopback by
    /// default: operations endpoints are not for the public.
    pub command_ops_addr: String,
    /// `OC_RATE_LIMIT_PER_MINUTE`: commands a user may send per minute, across every instance.
    pub rate_limit_per_minute: u32,
    /// `OC_RATE_LIMIT_BURST`: how many of them may come at once.
    pub rate_limit_burst: u32,
    /// `OC_API_KEY_RATE_LIMIT_PER_MINUTE`: commands one API key may send per minute (counted
    /// against its owner too).
    pub api_key_rate_limit_per_minute: u32,
    /// `OC_API_KEY_RATE_LIMIT_BURST`: how many of them may come at once.
    pub api_key_rate_limit_burst: u32,
    /// `OC_PROVIDER_ALLOW_PRIVATE_URLS`: let provider connections point at loopback and private
    /// addresses (a self-hosted model server on the same network). Off by default: a member's
    /// own connection must not turn the worker into a probe of the internal network.
    pub provider_allow_private_urls: bool,
    /// `OC_RELAY_ENABLED`: run the outbox relay in this instance. Several instances may; one
    /// publishes at a time.
    pub relay_enabled: bool,
    /// `OC_FOLLOW_COMMITS`: keep this instance's aggregate states current with every
    /// instance's commits as the bus carries them (`crate::follow`). Off, a state another
    /// instance moved on is caught by the commit's check alone, and the command decided again.
    pub follow_commits: bool,
    /// `OC_SPEND_RESERVATION_TTL_SECS`: how long what a prompt holds under its budgets is kept
    /// at most. A completed reply releases its own at once; this only frees what a prompt held
    /// when its instance died before the prompt committed (or a reply that ran longer).
    pub spend_reservation_ttl_secs: u64,
    /// `OC_SYNC_PROMPT_WAIT_SECS`: longest a synchronous prompt (OpenCode's
    /// `POST /session/{id}/message`) waits for its reply before answering 504 (the reply goes on).
    pub sync_prompt_wait_secs: u64,
}

impl Default for CommandConfig {
    fn default() -> Self {
        Self {
            command_addr: "127.0.0.1:8081".into(),
            command_ops_addr: "127.0.0.1:9081".into(),
            relay_enabled: true,
            follow_commits: true,
            provider_allow_private_urls: false,
            rate_limit_per_minute: 600,
            rate_limit_burst: 60,
            api_key_rate_limit_per_minute: 300,
            api_key_rate_limit_burst: 30,
            spend_reservation_ttl_secs: 3600,
            sync_prompt_wait_secs: 600,
        }
    }
}
