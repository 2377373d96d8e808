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
/// (`OC_DATABASE_URL` sets `database_url`). `OC_<KEY>_FILE` names a file holding the value
/// instead (how Docker and Kubernetes hand over secrets: `OC_PROVIDER_KEKS_FILE=/run/secrets/…`);
/// one trailing newline is ignored.
pub fn load<T: Serialize + DeserializeOwned + Default>() -> anyhow::Result<T> {
    Figment::from(Serialized::defaults(T::default()))
        .merge(Env::prefixed("OC_"))
        .merge(Serialized::defaults(from_files(std::env::vars())?))
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

/// The values of `OC_<KEY>_FILE` variables, read from their files, by key.
fn from_files(
    vars: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut values = std::collections::BTreeMap::new();
    for (name, path) in vars {
        let Some(key) = name.strip_prefix("OC_").and_then(|k| k.strip_suffix("_FILE")) else {
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {name}={path}: {e}"))?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        values.insert(key.to_lowercase(), text.strip_suffix('\r').unwrap_or(text).to_owned());
    }
    Ok(values)
}

/// Settings every service has.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CommonConfig {
    /// `OC_DATABASE_URL`: the PostgreSQL holding the event store and read models.
    pub database_url: String,
    /// `OC_DATABASE_POOL_SIZE`: connections per pool.
    pub database_pool_size: usize,
    /// `OC_NATS_URL`: the NATS server (2.10+ with JetStream); several comma separated for a
    /// cluster.
    pub nats_url: String,
    /// `OC_NATS_USER`, `OC_NATS_PASSWORD`: this service's own NATS account, where the server
    /// requires one (each service has its own, with only the permissions it needs: see
    /// compose/nats/). Unset: connect without credentials (the development default).
    pub nats_user: Option<String>,
    #[serde(skip_serializing)]
    pub nats_password: Option<SecretString>,
    /// `OC_STREAM_REPLICAS`: copies of the event stream (and of the durable consumers, which
    /// follow it) kept by a NATS cluster: 1 on a single server, 3 on a cluster of three.
    pub stream_replicas: usize,
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
    /// `OC_HTTP2_CLEARTEXT`: the command and query APIs also take cleartext HTTP/2 with prior
    /// knowledge, for a front that multiplexes upstream (Envoy, HAProxy, Caddy): thousands of
    /// event streams then share a few connections instead of holding a socket each. Off by
    /// default, and only for a trusted front: HTTP/2's own limits per connection (concurrent
    /// streams, header list size) are then the `h2` crate's defaults, which are far looser
    /// than HTTP/1.1's limits per request.
    pub http2_cleartext: bool,
}

impl Default for CommonConfig {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:5432/opencode".into(),
            database_pool_size: 16,
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_user: None,
            nats_password: None,
            stream_replicas: 1,
            stream_max_age_secs: 7 * 24 * 3600,
            stream_duplicate_window_secs: 600,
            run_migrations: true,
            log_format: "pretty".into(),
            shutdown_grace_secs: 20,
            http2_cleartext: false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_can_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("oc-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keks");
        std::fs::write(&path, "k1:abc\n").unwrap();
        let vars = [
            ("OC_PROVIDER_KEKS_FILE".to_owned(), path.display().to_string()),
            ("OC_NATS_URL".to_owned(), "nats://x".to_owned()),
            ("HOME_FILE".to_owned(), "/nonexistent".to_owned()),
        ];
        let values = from_files(vars.into_iter()).unwrap();
        assert_eq!(values.get("provider_keks").map(String::as_str), Some("k1:abc"));
        assert_eq!(values.len(), 1);
        let missing = [("OC_X_FILE".to_owned(), "/nonexistent/x".to_owned())];
        assert!(from_files(missing.into_iter()).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
