//! Wiring: the consumer loop plus a small HTTP server for health, readiness and metrics.

use std::net::TcpListener;
use std::time::Duration;

use platform::config::CommonConfig;
use platform::{bus, db, http};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProjectorConfig {
    /// `OC_PROJECTOR_ADDR`: where /healthz, /readyz and /metrics listen.
    pub projector_addr: String,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self { projector_addr: "127.0.0.1:8083".into() }
    }
}

pub async fn run(
    common: CommonConfig,
    cfg: ProjectorConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if common.run_migrations {
        db::migrate_with_retry(&common.database_url, 30).await?;
    }
    let metrics = platform::telemetry::init_metrics("projector")?;
    let pool = db::pool(&common)?;
    let nats = bus::connect(&common, "projector").await?;
    let js = bus::jetstream(nats.clone());
    let ready = http::readiness(pool.clone(), nats);
    let listener = TcpListener::bind(&cfg.projector_addr)?;
    let spec = http::ServerSpec {
        listener,
        metrics,
        ready,
        shutdown_grace_secs: common.shutdown_grace_secs,
        workers: Some(1),
    };
    let server = http::serve(spec, |_| {})?;
    let handle = server.handle();
    let server = tokio::spawn(server);

    bus::report_consumer_lag(js.clone(), crate::consumer::CONSUMER, shutdown.clone());
    // Keep consuming across NATS outages: re-create the consumer after a failure.
    while !shutdown.is_cancelled() {
        if let Err(e) = bus::ensure_stream(&js, &common).await {
            tracing::warn!(error = %e, "stream not available yet");
        } else if let Err(e) =
            crate::consumer::run(js.clone(), pool.clone(), shutdown.clone()).await
        {
            tracing::warn!(error = %e, "projector consumer failed; restarting");
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    handle.stop(true).await;
    let _ = server.await;
    Ok(())
}
