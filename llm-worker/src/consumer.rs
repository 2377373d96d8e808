//! The prompt consumer: a durable pull consumer shared by all worker instances. A message is
//! fetched only when a generation slot is free, one at a time, so nothing waits in a local
//! buffer while its ack deadline runs out (and gets generated twice).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use schemas::subjects;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::generation::Worker;

pub const CONSUMER: &str = "llm-worker";

pub async fn run(
    worker: Worker,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let stream = worker.js.get_stream(subjects::STREAM).await?;
    let consumer = stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.into()),
                filter_subject: subjects::ALL_PROMPTS.into(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(worker.cfg.worker_ack_wait_secs),
                max_deliver: worker.cfg.worker_max_deliver,
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await?;
    let slots = Arc::new(Semaphore::new(worker.cfg.worker_concurrency));
    let result = loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            p = slots.clone().acquire_owned() => p?,
        };
        if shutdown.is_cancelled() {
            break Ok(());
        }
        match next_message(&consumer, &shutdown).await {
            Ok(Some(msg)) => {
                let (worker, stop) = (worker.clone(), shutdown.clone());
                metrics::gauge!("worker_busy_slots").increment(1.0);
                tokio::spawn(async move {
                    worker.handle(msg, &stop).await;
                    metrics::gauge!("worker_busy_slots").decrement(1.0);
                    drop(permit);
                });
            }
            Ok(None) => {}
            Err(e) => break Err(e),
        }
    };
    // Finish the replies in hand: wait until every slot is free again, up to the grace period.
    let all = u32::try_from(worker.cfg.worker_concurrency).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, slots.acquire_many(all)).await;
    result
}

/// How long one pull request waits at the server for a prompt. It bounds how long a stopping
/// worker takes to hand its pull back; an idle worker makes one request per period.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// One prompt, or None if none arrived within [`PULL_WAIT`] or shutdown began.
///
/// A waiting pull (`batch`), not a `fetch`: `fetch` is "no wait", so an idle worker would ask
/// again and again without pause and keep a core busy.
async fn next_message(
    consumer: &jetstream::consumer::PullConsumer,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<jetstream::Message>> {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(PULL_WAIT)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("pull failed: {e}"))?;
    let item = tokio::select! {
        item = batch.next() => item,
        _ = shutdown.cancelled() => {
            // The pull stays open at the server until it expires; a prompt it delivers now must
            // go straight back, not wait out its ack deadline in an inbox nobody reads.
            while let Some(item) = batch.next().await {
                if let Ok(msg) = item {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                }
            }
            return Ok(None);
        }
    };
    match item {
        Some(Ok(msg)) => Ok(Some(msg)),
        Some(Err(e)) => {
            // A status instead of a message (say, the server had too many waiting pulls): pause
            // a moment, so that one the server keeps sending cannot make this loop spin.
            tracing::debug!(error = %e, "pull returned no message");
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(None)
        }
        None => Ok(None),
    }
}
