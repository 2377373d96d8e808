//! Wiring: the consumer loop plus a small HTTP server for health, readiness and metrics.

use std::net::TcpListener;

use platform::config::CommonConfig;
use platform::{bus, http};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProjectorConfig {
    /// `OC_PROJECTOR_ADDR`: where /healthz, /readyz and /metrics listen.
    pub projector_addr: String,
    /// `OC_PROJECTOR_MAX_ATTEMPTS`: deliveries of an event whose projection fails (for a reason
    /// other than a database outage) before it is parked in `parked_events`.
    pub projector_max_attempts: u64,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self { projector_addr: "127.0.0.1:8083".into(), projector_max_attempts: 4 }
    }
}

pub async fn run(
    common: CommonConfig,
    cfg: ProjectorConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Every statement of the projector joins a batch of keys to the read models: its pool's
    // connections plan them as index probes (`platform::db::KEYED_BATCH_PLANS`).
    let batch_pool = platform::db::keyed_batch_pool;
    let platform::startup::Foundation { metrics, db: pool, nats, js, .. } =
        platform::startup::foundation(&common, "projector", batch_pool).await?;
    let ready = http::readiness(pool.clone(), nats);
    let spec = http::ServerSpec {
        ops_listener: None,
        listener: TcpListener::bind(&cfg.projector_addr)?,
        metrics,
        ready,
        shutdown_grace_secs: common.shutdown_grace_secs,
        workers: Some(1),
        http2_cleartext: false,
        shutdown: shutdown.clone(),
    };
    let server = tokio::spawn(http::serve(spec, |_| {})?);

    bus::report_consumer_lag(js.clone(), crate::consumer::CONSUMER, shutdown.clone());
    // Keep consuming across NATS outages: re-create the consumer after a failure. The consumer
    // returns Ok only at shutdown.
    platform::retry::until_stopped("projector consumer", &shutdown, || async {
        bus::ensure_stream(&js, &common).await?;
        let policy = crate::consumer::Parking { max_attempts: cfg.projector_max_attempts.max(1) };
        crate::consumer::run(js.clone(), pool.clone(), policy, shutdown.clone()).await
    })
    .await;
    let _ = server.await;
    Ok(())
}
