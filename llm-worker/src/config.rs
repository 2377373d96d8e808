//! Settings of the LLM worker (`OC_*` environment variables).

use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerConfig {
    /// `OC_WORKER_ADDR`: where /healthz, /readyz and /metrics listen.
    pub worker_addr: String,
    /// `OC_PROVIDER_BASE_URL`: an OpenAI-compatible API base (…/v1).
    pub provider_base_url: String,
    /// `OC_PROVIDER_MODEL`: the model every prompt is answered with, for now.
    pub provider_model: String,
    /// `OC_PROVIDER_API_KEY`: sent as a bearer token; empty sends none. Never serialised.
    #[serde(skip_serializing)]
    pub provider_api_key: SecretString,
    /// `OC_WORKER_CONCURRENCY`: replies generated at once by this instance.
    pub worker_concurrency: usize,
    /// `OC_PROVIDER_CONNECT_TIMEOUT_MS`: TCP/TLS connect to the provider.
    pub provider_connect_timeout_ms: u64,
    /// `OC_PROVIDER_FIRST_TOKEN_TIMEOUT_MS`: from request to the first streamed chunk.
    pub provider_first_token_timeout_ms: u64,
    /// `OC_PROVIDER_IDLE_TIMEOUT_MS`: longest silence between two chunks.
    pub provider_idle_timeout_ms: u64,
    /// `OC_DELTA_COALESCE_MS`: text arriving within this window after a published delta is sent
    /// as one delta. The first delta of a reply is never held back. 25 ms keeps a reply's text
    /// coming forty times a second, more often than a screen shows it change, while storing and
    /// fanning out half to a third as many messages as a delta per token (docs/performance.md).
    pub delta_coalesce_ms: u64,
    /// `OC_WORKER_MAX_DELIVER`: attempts at a prompt before it is given up as failed.
    pub worker_max_deliver: i64,
    /// `OC_MAX_REPLY_BYTES`: a reply that grows past this many bytes of text is stopped and ends
    /// with `finish: "length"`. Keeps every event and command well under NATS's 1 MiB payload
    /// limit (the final text travels in one message).
    pub max_reply_bytes: usize,
    /// `OC_WORKER_ACK_WAIT_SECS`: how long a silent worker keeps a prompt before JetStream hands
    /// it to another worker (a live worker sends progress well within it).
    pub worker_ack_wait_secs: u64,
    /// `OC_WORKER_CONTEXT_BYTES`: most text (history and prompt, as stored) sent with a prompt;
    /// older turns are left out. About 4 bytes a token: the default suits 100k-token models.
    pub worker_context_bytes: usize,
    /// `OC_WORKER_PUBLISH_PATIENCE_SECS`: how long a reply waits for NATS to take its next live
    /// event (a restart, a cluster's leader election) before it ends as failed.
    pub worker_publish_patience_secs: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            worker_addr: "127.0.0.1:8084".into(),
            provider_base_url: "http://127.0.0.1:8090/v1".into(),
            provider_model: "fake-model".into(),
            provider_api_key: SecretString::from(""),
            worker_concurrency: 32,
            provider_connect_timeout_ms: 5_000,
            provider_first_token_timeout_ms: 60_000,
            provider_idle_timeout_ms: 30_000,
            delta_coalesce_ms: 25,
            worker_max_deliver: 5,
            worker_ack_wait_secs: 30,
            max_reply_bytes: 512 * 1024,
            worker_context_bytes: 400_000,
            worker_publish_patience_secs: 60,
        }
    }
}

impl WorkerConfig {
    pub fn coalesce(&self) -> Duration {
        Duration::from_millis(self.delta_coalesce_ms)
    }

    pub fn publish_patience(&self) -> Duration {
        Duration::from_secs(self.worker_publish_patience_secs)
    }
}
