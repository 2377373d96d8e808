//! Configuration shared by every service, read from `OC_`-prefixed environment variables.
//!
//! Every key has a documented default that works on a developer machine (`make up`), so a
//! service starts with no configuration at all; production sets the ones it needs. Invalid
//! values stop the service at start rather than at first use.

use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Serialized};
use secrecy::SecretString;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Read a configuration struct from its defaults overlaid with `OC_*` environment variables
/// (`OC_DATABASE_URL` sets `database_url`).
pub fn load<T: Serialize + DeserializeOwned + Default>() -> anyhow::Result<T> {
    Figment::from(Serialized::defaults(T::default()))
        .merge(Env::prefixed("OC_"))
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

/// Settings every service has.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CommonConfig {
    /// `OC_DATABASE_URL`: the PostgreSQL holding the event store and read models.
    pub database_url: String,
    /// `OC_DATABASE_POOL_SIZE`: connections per pool.
    pub database_pool_size: usize,
    /// `OC_NATS_URL`: the NATS server (2.10+ with JetStream).
    pub nats_url: String,
    /// `OC_STREAM_MAX_AGE_SECS`: how long JetStream keeps events; SSE clients that fall further
    /// behind are told to reload. The event store keeps everything regardless.
    pub stream_max_age_secs: u64,
    /// `OC_STREAM_DUPLICATE_WINDOW_SECS`: how long JetStream remembers message ids for dedup.
    pub stream_duplicate_window_secs: u64,
    /// `OC_RUN_MIGRATIONS`: apply pending migrations at start (idempotent, locked).
    pub run_migrations: bool,
    /// `OC_LOG_FORMAT`: `pretty` or `json`.
    pub log_format: String,
    /// `OC_SHUTDOWN_GRACE_SECS`: how long work in hand may take to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
}

impl Default for CommonConfig {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:5432/opencode".into(),
            database_pool_size: 16,
            nats_url: "nats://127.0.0.1:4222".into(),
            stream_max_age_secs: 7 * 24 * 3600,
            stream_duplicate_window_secs: 600,
            run_migrations: true,
            log_format: "pretty".into(),
            shutdown_grace_secs: 20,
        }
    }
}

impl CommonConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// A secret read from configuration, never printed.
pub type Secret = SecretString;
