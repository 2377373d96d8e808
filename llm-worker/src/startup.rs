//! Wiring: the prompt consumer, the abort listener, and health/readiness/metrics endpoints.

use std::net::TcpListener;

use platform::config::CommonConfig;
use platform::{bus, http};
use tokio_util::sync::CancellationToken;

use crate::aborts::Aborts;
use crate::config::WorkerConfig;
use crate::consumer;
use crate::generation::Worker;
use crate::providers::Provider;

pub async fn run(
    common: CommonConfig,
    cfg: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let platform::startup::Foundation { metrics, db: pool, nats, nats_losses, js } =
        platform::startup::foundation(&common, "llm-worker", platform::db::pool).await?;
    let ready = http::readiness(pool.clone(), nats.clone());
    let spec = http::ServerSpec {
        ops_listener: None,
        listener: TcpListener::bind(&cfg.worker_addr)?,
        metrics,
        ready,
        shutdown_grace_secs: common.shutdown_grace_secs,
        workers: Some(1),
        http2_cleartext: false,
        shutdown: shutdown.clone(),
    };
    let server = tokio::spawn(http::serve(spec, |_| {})?);

    let aborts = Aborts::default();
    let listener = tokio::spawn(aborts.clone().listen(nats.clone(), nats_losses, shutdown.clone()));
    let worker = Worker {
        keks: platform::config::load::<identity::ProviderKeysConfig>()?.keks()?,
        js: js.clone(),
        nats,
        pool,
        provider: Provider::new(cfg.clone())?,
        aborts,
        history: Default::default(),
        cfg,
    };
    bus::report_consumer_lag(js.clone(), consumer::CONSUMER, shutdown.clone());
    let give_up = {
        let (worker, shutdown, replicas) =
            (worker.clone(), shutdown.clone(), common.stream_replicas);
        // `listen` returns Ok only at shutdown.
        tokio::spawn(async move {
            platform::retry::until_stopped("max-deliveries advisories", &shutdown, || {
                crate::give_up::listen(worker.clone(), replicas, shutdown.clone())
            })
            .await
        })
    };
    // The consumer returns Ok only at shutdown (after finishing the replies in hand).
    platform::retry::until_stopped("prompt consumer", &shutdown, || async {
        bus::ensure_stream(&js, &common).await?;
        consumer::run(worker.clone(), shutdown.clone(), common.shutdown_grace()).await
    })
    .await;
    let _ = listener.await;
    let _ = give_up.await;
    let _ = server.await;
    Ok(())
}
