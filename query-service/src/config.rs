//! Settings of the query service (`OC_*` environment variables).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryConfig {
    /// `OC_QUERY_ADDR`: where the REST and SSE API listens. Port 0 picks a free port.
    pub query_addr: String,
    /// `OC_QUERY_OPS_ADDR`: where /healthz, /readyz and /metrics listen, apart from the API. Loopback by
    /// default: operations endpoints are not for the public.
    pub query_ops_addr: String,
    /// `OC_READER_DATABASE_USER`: the role tenant reads connect as (same server and database
    /// as `OC_DATABASE_URL`); never a superuser or a role with BYPASSRLS.
    pub reader_database_user: String,
    /// `OC_READER_DATABASE_PASSWORD`: its password, if the server asks for one. Never serialised.
    #[serde(skip_serializing)]
    pub reader_database_password: secrecy::SecretString,
    /// `OC_CONSISTENCY_WAIT_MS`: longest a read waits for its consistency token before 503.
    pub consistency_wait_ms: u64,
    /// `OC_SSE_KEEP_ALIVE_SECS`: heartbeat comment interval, below proxies' idle timeouts.
    pub sse_keep_alive_secs: u64,
    /// `OC_SSE_STREAMS_PER_USER`: event streams one user may hold open at once, across every
    /// query instance.
    pub sse_streams_per_user: u32,
    /// `OC_SSE_SESSION_BUFFER`: events buffered per session for slow clients; a client that falls
    /// further behind is disconnected and resumes with Last-Event-ID.
    pub sse_session_buffer: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            query_addr: "127.0.0.1:8082".into(),
            query_ops_addr: "127.0.0.1:9082".into(),
            reader_database_user: "oc_query_reader".into(),
            reader_database_password: secrecy::SecretString::from(""),
            consistency_wait_ms: 5_000,
            sse_keep_alive_secs: 15,
            sse_session_buffer: 1024,
            sse_streams_per_user: 32,
        }
    }
}

impl QueryConfig {
    pub fn consistency_wait(&self) -> Duration {
        Duration::from_millis(self.consistency_wait_ms)
    }
}
