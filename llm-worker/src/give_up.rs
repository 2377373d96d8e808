//! Prompts JetStream stopped delivering: when every allowed delivery of a prompt ended without an
//! ack (its workers died), the server publishes a max-deliveries advisory. A worker takes it and
//! ends the reply as failed, so the session does not stay busy for ever.
//!
//! The advisory is a plain NATS message, lost if no worker were subscribed the instant it is
//! sent; so a small stream of its own keeps it, and the workers share a durable consumer of that
//! stream: an advisory waits for a worker, and is acked only once the reply has been ended.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures::StreamExt;
use schemas::subjects;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::consumer::CONSUMER;
use crate::generation::Worker;

const ADVISORY_CONSUMER: &str = "llm-worker-give-up";
/// Attempts at ending one reply before the advisory is dropped (with an error logged).
const MAX_ATTEMPTS: i64 = 10;

#[derive(Deserialize)]
struct Advisory {
    stream_seq: u64,
    deliveries: u64,
}

/// End, as failed, every reply whose prompt ran out of deliveries; the advisories are kept in a
/// stream of `replicas` copies until a worker has done so.
pub async fn listen(
    worker: Worker,
    replicas: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let subject =
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{CONSUMER}", subjects::STREAM);
    worker
        .js
        .create_or_update_stream(stream::Config {
            name: subjects::WORKER_ADVISORY_STREAM.into(),
            subjects: vec![subject],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            num_replicas: replicas.max(1),
            ..Default::default()
        })
        .await?;
    let stream = worker.js.get_stream(subjects::WORKER_ADVISORY_STREAM).await?;
    let consumer = stream
        .get_or_create_consumer(
            ADVISORY_CONSUMER,
            pull::Config {
                durable_name: Some(ADVISORY_CONSUMER.into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                // Ending a reply retries its command for up to two minutes.
                ack_wait: Duration::from_secs(180),
                max_deliver: MAX_ATTEMPTS,
                ..Default::default()
            },
        )
        .await?;
    let mut advisories = consumer.messages().await?;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = advisories.next() => match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "advisory consumer error");
                    continue;
                }
                None => anyhow::bail!("advisory consumer ended"),
            },
        };
        match handle(&worker, &msg.payload, &shutdown).await {
            Ok(()) => {
                let _ = msg.ack().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot give up on an undelivered prompt; will retry");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
            }
        }
    }
}

async fn handle(
    worker: &Worker,
    payload: &[u8],
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let advisory: Advisory = serde_json::from_slice(payload)?;
    let stream = worker.js.get_stream(subjects::STREAM).await?;
    let prompt = stream.get_raw_message(advisory.stream_seq).await?;
    let attempts = u32::try_from(advisory.deliveries).unwrap_or(u32::MAX);
    worker.give_up(&prompt.subject, &prompt.payload, attempts, shutdown).await
}
