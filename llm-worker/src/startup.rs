//! Wiring: the prompt consumer, the abort listener, and health/readiness/metrics endpoints.

use std::net::TcpListener;
use std::time::Duration;

use platform::config::CommonConfig;
use platform::{bus, db, http};
use tokio_util::sync::CancellationToken;

use crate::aborts::Aborts;
use crate::config::WorkerConfig;
use crate::consumer;
use crate::generation::Worker;
use crate::provider::Provider;

pub async fn run(
    common: CommonConfig,
    cfg: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if common.run_migrations {
        db::migrate_with_retry(&common.database_url, 30).await?;
    }
    let metrics = platform::telemetry::init_metrics("llm-worker")?;
    let pool = db::pool(&common)?;
    let nats = bus::connect(&common, "llm-worker").await?;
    let js = bus::jetstream(nats.clone());
    let ready = http::readiness(pool.clone(), nats.clone());
    let listener = TcpListener::bind(&cfg.worker_addr)?;
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

    let aborts = Aborts::default();
    let listener = tokio::spawn(aborts.clone().listen(nats.clone(), shutdown.clone()));
    let worker =
        Worker { js: js.clone(), nats, pool, provider: Provider::new(cfg.clone())?, aborts, cfg };
    bus::report_consumer_lag(js.clone(), consumer::CONSUMER, shutdown.clone());
    let give_up = tokio::spawn(crate::give_up::listen(worker.clone(), shutdown.clone()));
    while !shutdown.is_cancelled() {
        let outcome = match bus::ensure_stream(&js, &common).await {
            Ok(()) => {
                consumer::run(worker.clone(), shutdown.clone(), common.shutdown_grace()).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "prompt consumer failed; restarting");
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
    let _ = listener.await;
    let _ = give_up.await;
    handle.stop(true).await;
    let _ = server.await;
    Ok(())
}
